//! AVX2 paths of GroupNorm's sums and affine rule and of the int16 tables' interpolation, for CPUs
//! without AVX-512 (and under `cap_ops_isa`): the same integers as the scalar rules, 8 or 16 codes
//! per step where [`super::x86_avx512_ops`] takes 16 or 32. The selftest and `kernels::check`
//! compare them with the direct loops.
use core::arch::x86_64::*;

/// The sum of four i64 lanes.
#[target_feature(enable = "avx2")]
fn sum64(v: __m256i) -> i64 {
    let h = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    _mm_cvtsi128_si64(h) + _mm_extract_epi64::<1>(h)
}

/// The sum of eight i32 lanes, as i64.
#[target_feature(enable = "avx2")]
fn sum32(v: __m256i) -> i64 {
    sum64(_mm256_add_epi64(
        _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
        _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v)),
    ))
}

/// GroupNorm's exact sums of int8 codes (`sum(d)`, `sum(d^2)`, `d = x - zx`), 16 per step with
/// `vpmaddwd` into i32 lanes, widened to i64 every 8192 steps (a lane adds at most 2 * 255^2 per
/// step). Returns how many values it summed and the two sums.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn moments8(x: &[i8], zx: i32) -> (usize, i64, i64) {
    let n = x.len() / 16 * 16;
    let (z, one) = (_mm256_set1_epi16(zx as i16), _mm256_set1_epi16(1));
    let (mut sum, mut sumsq) = (0i64, 0i64);
    for c in (0..n).step_by(16 * 8192) {
        let (mut s, mut q) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for i in (c..n.min(c + 16 * 8192)).step_by(16) {
            // SAFETY: 16 codes read below `n`; `x - zx` fits i16 (both in the int8 range)
            let v = unsafe { _mm_loadu_si128(x.as_ptr().add(i) as *const __m128i) };
            let d = _mm256_sub_epi16(_mm256_cvtepi8_epi16(v), z);
            s = _mm256_add_epi32(s, _mm256_madd_epi16(d, one));
            q = _mm256_add_epi32(q, _mm256_madd_epi16(d, d));
        }
        // i32 lanes: |s| <= 8192 * 510, q <= 8192 * 130050 < 2^31
        sum += sum32(s);
        sumsq += sum32(q);
    }
    (n, sum, sumsq)
}

/// GroupNorm's exact sums of int16 codes (`|d| < 2^17`), 8 per step: `d` in i32 lanes (4096 steps
/// add at most 2^29 to a lane), `d^2` by `vpmuldq` on the even and the odd lanes into i64 lanes
/// (at most 2^35 per step: exact for any slice that fits in memory).
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn moments16(x: &[i16], zx: i32) -> (usize, i64, i64) {
    let n = x.len() / 8 * 8;
    let z = _mm256_set1_epi32(zx);
    let (mut sum, mut q) = (0i64, _mm256_setzero_si256());
    for c in (0..n).step_by(8 * 4096) {
        let mut s = _mm256_setzero_si256();
        for i in (c..n.min(c + 8 * 4096)).step_by(8) {
            // SAFETY: 8 codes read below `n`
            let v = unsafe { _mm_loadu_si128(x.as_ptr().add(i) as *const __m128i) };
            let d = _mm256_sub_epi32(_mm256_cvtepi16_epi32(v), z);
            let odd = _mm256_srli_epi64::<32>(d);
            s = _mm256_add_epi32(s, d);
            q = _mm256_add_epi64(q, _mm256_mul_epi32(d, d));
            q = _mm256_add_epi64(q, _mm256_mul_epi32(odd, odd));
        }
        sum += sum32(s);
    }
    (n, sum, sum64(q))
}

/// Eight i32 lanes from the even lanes' and the odd lanes' i64 values: each value's bits 16..47
/// (`v >> 16` where that fits i32).
#[target_feature(enable = "avx2")]
fn shifted_lanes(even: __m256i, odd: __m256i) -> __m256i {
    _mm256_blend_epi32::<0xaa>(_mm256_srli_epi64::<16>(even), _mm256_slli_epi64::<16>(odd))
}

/// Eight i32 lanes loaded from codes `i..i + 8` of `x`, int16 (`I16`) or int8, sign-extended.
///
/// # Safety
/// AVX2; the 8 codes are inside `x`.
#[target_feature(enable = "avx2")]
unsafe fn load_codes<const I16: bool>(x: *const u8, i: usize) -> __m256i {
    // SAFETY: the caller's
    unsafe {
        if I16 {
            _mm256_cvtepi16_epi32(_mm_loadu_si128(x.add(2 * i) as *const __m128i))
        } else {
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(x.add(i) as *const __m128i))
        }
    }
}

/// Eight i32 lanes stored as codes `i..i + 8` of `out`, int16 (`O16`) or int8, by saturating packs
/// (i32 to i16, then i16 to i8: the same as one clamp to the code range).
///
/// # Safety
/// AVX2; the 8 codes are inside `out`.
#[target_feature(enable = "avx2")]
unsafe fn store_codes<const O16: bool>(out: *mut u8, i: usize, r: __m256i) {
    let w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
    // SAFETY: the caller's
    unsafe {
        if O16 {
            _mm_storeu_si128(out.add(2 * i) as *mut __m128i, w);
        } else {
            _mm_storel_epi64(out.add(i) as *mut __m128i, _mm_packs_epi16(w, w));
        }
    }
}

/// GroupNorm's affine rule (`super::reference::norm::gn_affine_i32`: the low 32 bits of `(d * a32 +
/// bm) >> 16`, logical, clamped to the output's range) for `len` int8 or int16 (`I16`) codes to
/// int8 or int16 (`O16`) codes, 8 per step: `vpmuldq` on the even and the odd lanes, the saturating
/// packs as the clamp. Returns how many values it wrote.
///
/// # Safety
/// AVX2; `x` and `out` hold `len` codes of their widths.
#[target_feature(enable = "avx2")]
pub unsafe fn gn_affine<const I16: bool, const O16: bool>(
    x: *const u8,
    out: *mut u8,
    len: usize,
    zx: i32,
    a32: i32,
    bm: i64,
) -> usize {
    let n = len / 8 * 8;
    let (z, a, b) = (
        _mm256_set1_epi32(zx),
        _mm256_set1_epi64x(a32 as i64),
        _mm256_set1_epi64x(bm),
    );
    for i in (0..n).step_by(8) {
        // SAFETY: 8 codes read and written below `n`
        unsafe {
            let d = _mm256_sub_epi32(load_codes::<I16>(x, i), z);
            let even = _mm256_add_epi64(_mm256_mul_epi32(d, a), b);
            let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64::<32>(d), a), b);
            store_codes::<O16>(out, i, shifted_lanes(even, odd));
        }
    }
    n
}

/// The int16 table's linear interpolation (`super::reference::eltwise::lut_16`: `u = x + 32768`,
/// `(p[u >> 8] * (256 - f) + p[(u >> 8) + 1] * f + 2^15) >> 16` with `f = u & 255`, saturated) for
/// `len` int16 codes to int8 or int16 (`O16`) codes, 8 per step: the two points by `vpgatherdd`,
/// the sums in i64 by `vpmuldq` (|sum| < 2^40, and the shifted value fits i32), the saturating
/// packs as the clamp. Returns how many values it wrote.
///
/// # Safety
/// AVX2; `out` holds `len` codes of its width.
#[target_feature(enable = "avx2")]
pub unsafe fn lut16<const O16: bool>(
    x: &[i16],
    points: &[i32; 257],
    out: *mut u8,
    len: usize,
) -> usize {
    let n = x.len().min(len) / 8 * 8;
    let (bias, low, full) = (
        _mm256_set1_epi32(32768),
        _mm256_set1_epi32(255),
        _mm256_set1_epi32(256),
    );
    let (one, half) = (_mm256_set1_epi32(1), _mm256_set1_epi64x(1 << 15));
    let p = points.as_ptr();
    for i in (0..n).step_by(8) {
        // SAFETY: 8 codes read and written below `n`; the indices are 0..=256 of `points`
        unsafe {
            let u = _mm256_add_epi32(load_codes::<true>(x.as_ptr() as *const u8, i), bias);
            let at = _mm256_srli_epi32::<8>(u);
            let f = _mm256_and_si256(u, low);
            let g = _mm256_sub_epi32(full, f);
            let p0 = _mm256_i32gather_epi32::<4>(p, at);
            let p1 = _mm256_i32gather_epi32::<4>(p, _mm256_add_epi32(at, one));
            let even = _mm256_add_epi64(_mm256_mul_epi32(p0, g), _mm256_mul_epi32(p1, f));
            let odd = _mm256_add_epi64(
                _mm256_mul_epi32(_mm256_srli_epi64::<32>(p0), _mm256_srli_epi64::<32>(g)),
                _mm256_mul_epi32(_mm256_srli_epi64::<32>(p1), _mm256_srli_epi64::<32>(f)),
            );
            let r = shifted_lanes(_mm256_add_epi64(even, half), _mm256_add_epi64(odd, half));
            store_codes::<O16>(out, i, r);
        }
    }
    n
}
