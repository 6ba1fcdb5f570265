//! AVX-512 paths of non-GEMM ops, used where a std build detects the features ([`super::ops_isa`];
//! the tier need not be `Avx512Vnni`): int8 table lookups ([`lut8`], VBMI), the int8 softmax's row sums and code
//! tables ([`SoftmaxTables`]), int8 element-wise binary rows ([`binary8`]), the int16 table's
//! interpolation ([`lut16`]) and GroupNorm's exact sums and affine rule on int8 and int16 codes
//! ([`moments8`], [`moments16`], [`gn_affine`]; [`super::x86_avx2_ops`] has these four for AVX2).
//! Each computes the same integers as the scalar code
//! it stands in for; the selftest and unit tests compare them.
use core::arch::x86_64::*;

/// `out[i] = table[x[i] + 128]` (int8 codes through a 256-entry table) for the whole 64-byte chunks
/// of `x`, with AVX-512 VBMI: the index is `x ^ 0x80` ([`lookup256`]). Returns how many values it
/// wrote.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 VBMI.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub unsafe fn lut8(x: &[i8], table: &[u8], out: &mut [i8]) -> usize {
    if table.len() < 256 {
        return 0;
    }
    let n = x.len().min(out.len()) / 64 * 64;
    // SAFETY: `table` holds 256 bytes; every chunk read and written lies below `n`
    unsafe {
        let t: [__m512i; 4] = core::array::from_fn(|k| {
            _mm512_loadu_si512(table.as_ptr().add(64 * k) as *const __m512i)
        });
        let flip = _mm512_set1_epi8(-128);
        for i in (0..n).step_by(64) {
            let idx = _mm512_xor_si512(
                _mm512_loadu_si512(x.as_ptr().add(i) as *const __m512i),
                flip,
            );
            _mm512_storeu_si512(out.as_mut_ptr().add(i) as *mut __m512i, lookup256(&t, idx));
        }
    }
    n
}

/// `table[idx]` for 64 byte indices into a 256-byte table held in four registers: two `vpermi2b`
/// look each index up in the table's halves (bits 0-6) and its top bit picks the half.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[inline]
fn lookup256(t: &[__m512i; 4], idx: __m512i) -> __m512i {
    let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
    let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
    _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi)
}

/// The exp tables of an int8 softmax ([`super::reference::softmax::softmax`]) as AVX-512 reads
/// them: the entries' three low bytes as byte planes (for [`exp_sum8`]; only when every entry is
/// below 2^24) and the entries as f64 in reverse order (`rev[j] = exp[255 - j]`, for
/// [`softmax_codes8`]).
pub struct SoftmaxTables {
    planes: Option<[[u8; 256]; 3]>,
    rev: [f64; 256],
}

impl SoftmaxTables {
    /// The tables of `exp` (u32 entries as u64), or `None` when the CPU lacks AVX-512 F, BW, DQ
    /// or VBMI (std builds detect them; other builds never take this path).
    pub fn new(exp: &[u64; 256]) -> Option<SoftmaxTables> {
        #[cfg(feature = "std")]
        let ok = crate::kernels::ops_isa() == crate::kernels::OpsIsa::Avx512
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vbmi");
        #[cfg(not(feature = "std"))]
        let ok = false;
        if !ok {
            return None;
        }
        let planes = exp
            .iter()
            .all(|&e| e < 1 << 24)
            .then(|| core::array::from_fn(|k| core::array::from_fn(|d| (exp[d] >> (8 * k)) as u8)));
        Some(SoftmaxTables {
            planes,
            rev: core::array::from_fn(|j| exp[255 - j] as f64),
        })
    }

    /// `sum(exp[mx - x[i]])` over the whole 64-byte chunks of `x` (every `x[i] <= mx`): returns
    /// how many values it summed (0 without byte planes) and their sum. Each plane's bytes are
    /// looked up like [`lut8`] (the index `mx - x` as a byte) and added by `vpsadbw` into u64 lanes;
    /// the planes are recombined as `s0 + 2^8 s1 + 2^16 s2`: the same integer as a scalar sum.
    pub fn exp_sum(&self, x: &[i8], mx: i8) -> (usize, u64) {
        match &self.planes {
            // SAFETY: `new` detected the features
            Some(p) => unsafe { exp_sum8(x, mx, p) },
            None => (0, 0),
        }
    }

    /// `code[v + 128] = min(trunc(f64(510 e + sum) * inv + lift), 255) - 128` with `e = exp[mx -
    /// v]`, for every `v` in `mn..=mx`: the scalar quotient's operations (an exact integer in f64,
    /// one rounded product, one rounded sum, truncation), 8 codes per step.
    pub fn codes(
        &self,
        (mn, mx): (i8, i8),
        sum: u64,
        (inv, lift): (f64, f64),
        code: &mut [i8; 256],
    ) {
        // SAFETY: `new` detected the features
        unsafe { softmax_codes8(&self.rev, (mn, mx), sum, (inv, lift), code) }
    }
}

/// See [`SoftmaxTables::exp_sum`].
///
/// # Safety
/// AVX-512 F, BW and VBMI.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn exp_sum8(x: &[i8], mx: i8, planes: &[[u8; 256]; 3]) -> (usize, u64) {
    let n = x.len() / 64 * 64;
    if n == 0 {
        return (0, 0);
    }
    // SAFETY: every plane holds 256 bytes; every chunk read lies below `n`
    unsafe {
        let t: [[__m512i; 4]; 3] = core::array::from_fn(|k| {
            core::array::from_fn(|q| {
                _mm512_loadu_si512(planes[k].as_ptr().add(64 * q) as *const __m512i)
            })
        });
        let top = _mm512_set1_epi8(mx);
        let zero = _mm512_setzero_si512();
        let mut acc = [zero; 3];
        for i in (0..n).step_by(64) {
            let v = _mm512_loadu_si512(x.as_ptr().add(i) as *const __m512i);
            // mx - v in 0..=255, as a byte
            let idx = _mm512_sub_epi8(top, v);
            for k in 0..3 {
                let b = lookup256(&t[k], idx);
                acc[k] = _mm512_add_epi64(acc[k], _mm512_sad_epu8(b, zero));
            }
        }
        let s: [u64; 3] = core::array::from_fn(|k| _mm512_reduce_add_epi64(acc[k]) as u64);
        (n, s[0] + (s[1] << 8) + (s[2] << 16))
    }
}

/// See [`SoftmaxTables::codes`].
///
/// # Safety
/// AVX-512 F and DQ.
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn softmax_codes8(
    rev: &[f64; 256],
    (mn, mx): (i8, i8),
    sum: u64,
    (inv, lift): (f64, f64),
    code: &mut [i8; 256],
) {
    if mn > mx {
        return;
    }
    let (first, count) = (
        (mn as i32 + 128) as usize,
        (mx as i32 - mn as i32 + 1) as usize,
    );
    // v = mn + i reads rev[255 - (mx - v)] = rev[base + i]
    let base = 255 - (mx as i32 - mn as i32) as usize;
    let (k510, s, inv, lift) = (
        _mm512_set1_pd(510.0),
        _mm512_set1_pd(sum as f64),
        _mm512_set1_pd(inv),
        _mm512_set1_pd(lift),
    );
    let (max, off) = (_mm512_set1_epi64(255), _mm512_set1_epi64(128));
    for i in (0..count).step_by(8) {
        let m: __mmask8 = if count - i >= 8 {
            0xff
        } else {
            (1u8 << (count - i)) - 1
        };
        // SAFETY: the masked lanes read `rev[base + i..base + count]` (`base + count = 256`) and
        // write `code[first + i..first + count]` (`first + count <= 256`)
        unsafe {
            let e = _mm512_maskz_loadu_pd(m, rev.as_ptr().add(base + i));
            let q = _mm512_add_pd(
                _mm512_mul_pd(_mm512_add_pd(_mm512_mul_pd(e, k510), s), inv),
                lift,
            );
            let q = _mm512_sub_epi64(_mm512_min_epi64(_mm512_cvttpd_epi64(q), max), off);
            _mm512_mask_cvtepi64_storeu_epi8(code.as_mut_ptr().add(first + i), m, q);
        }
    }
}

/// One run of an int8 binary op's operand: its codes, or one broadcast value (code minus zero).
#[derive(Clone, Copy)]
pub enum Side<'a> {
    Run(&'a [i8], i32),
    Scalar(i32),
}

/// `out[i] = sat8(((combine(x_i, y_i) + round) >> shift) + zo)` for whole chunks of 8, with `x_i`,
/// `y_i` the operands' codes minus their zero points, `combine` `ma x + mb y` (`kind` 0), `ma x -
/// mb y` (1) or `ma (x y)` (2): the scalar i64 rule of [`super::eltwise`] (products by
/// `vpmuldq`, the arithmetic shift and the saturating narrowing native on 512 bits). `coef` is
/// `[ma, mb, round, shift, zo]`. Returns how many values it wrote.
///
/// # Safety
/// AVX-512 F, BW and DQ; each run holds at least `out.len()` codes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq")]
pub unsafe fn binary8(x: Side<'_>, y: Side<'_>, out: &mut [i8], kind: u8, coef: [i64; 5]) -> usize {
    let n = out.len() / 8 * 8;
    let [ma, mb, round, _, zo] = coef.map(|c| _mm512_set1_epi64(c));
    let count = _mm_cvtsi64_si128(coef[3]);
    // SAFETY: every load of a run and every store lies below `n <= out.len()`
    unsafe {
        let side = |s: Side<'_>, i: usize| match s {
            Side::Run(v, z) => _mm512_sub_epi64(
                _mm512_cvtepi8_epi64(_mm_loadl_epi64(v.as_ptr().add(i) as *const __m128i)),
                _mm512_set1_epi64(z as i64),
            ),
            Side::Scalar(c) => _mm512_set1_epi64(c as i64),
        };
        for i in (0..n).step_by(8) {
            let (a, b) = (side(x, i), side(y, i));
            let v = match kind {
                0 => _mm512_add_epi64(_mm512_mul_epi32(a, ma), _mm512_mul_epi32(b, mb)),
                1 => _mm512_sub_epi64(_mm512_mul_epi32(a, ma), _mm512_mul_epi32(b, mb)),
                _ => _mm512_mul_epi32(_mm512_mul_epi32(a, b), ma),
            };
            let r = _mm512_add_epi64(_mm512_sra_epi64(_mm512_add_epi64(v, round), count), zo);
            _mm_storel_epi64(
                out.as_mut_ptr().add(i) as *mut __m128i,
                _mm512_cvtsepi64_epi8(r),
            );
        }
    }
    n
}

/// GroupNorm's exact sums of int8 codes (`sum(d)`, `sum(d^2)`, `d = x - zx`), 32 per step with
/// `vpmaddwd` into i32 lanes, widened to i64 every 8192 steps (a lane adds at most 2 * 255^2 per
/// step). Returns how many values it summed and the two sums.
///
/// # Safety
/// AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn moments8(x: &[i8], zx: i32) -> (usize, i64, i64) {
    let n = x.len() / 32 * 32;
    let (z, one) = (_mm512_set1_epi16(zx as i16), _mm512_set1_epi16(1));
    let (mut sum, mut sumsq) = (0i64, 0i64);
    for c in (0..n).step_by(32 * 8192) {
        let (mut s, mut q) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for i in (c..n.min(c + 32 * 8192)).step_by(32) {
            // SAFETY: 32 codes read below `n`; `x - zx` fits i16 (both in the int8 range)
            unsafe {
                let v =
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i));
                let d = _mm512_sub_epi16(v, z);
                s = _mm512_add_epi32(s, _mm512_madd_epi16(d, one));
                q = _mm512_add_epi32(q, _mm512_madd_epi16(d, d));
            }
        }
        // i32 lanes: |s| <= 8192 * 510, q <= 8192 * 130050 < 2^31
        sum += _mm512_reduce_add_epi64(_mm512_add_epi64(
            _mm512_cvtepi32_epi64(_mm512_castsi512_si256(s)),
            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(s)),
        ));
        sumsq += _mm512_reduce_add_epi64(_mm512_add_epi64(
            _mm512_cvtepi32_epi64(_mm512_castsi512_si256(q)),
            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(q)),
        ));
    }
    (n, sum, sumsq)
}

/// Sixteen i32 lanes from two vectors of eight i64 values (the even lanes' and the odd lanes'),
/// each value's bits 16..47: `v >> 16` where that fits i32, for any rounding already added.
///
/// # Safety
/// AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn shifted_lanes(even: __m512i, odd: __m512i) -> __m512i {
    _mm512_mask_blend_epi32(
        0xaaaa,
        _mm512_srli_epi64::<16>(even),
        _mm512_slli_epi64::<16>(odd),
    )
}

/// Sixteen i32 lanes stored as codes `i..i + 16` of `out`, int16 (`O16`) or int8, by saturating
/// narrowing (the clamp to the code range).
///
/// # Safety
/// AVX-512 F and BW; the 16 codes are inside `out`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn store_codes<const O16: bool>(out: *mut u8, i: usize, r: __m512i) {
    // SAFETY: the caller's
    unsafe {
        if O16 {
            _mm256_storeu_si256(out.add(2 * i) as *mut __m256i, _mm512_cvtsepi32_epi16(r));
        } else {
            _mm_storeu_si128(out.add(i) as *mut __m128i, _mm512_cvtsepi32_epi8(r));
        }
    }
}

/// The affine rule's lanes for 16 codes `v` sign-extended to i32: the low 32 bits of
/// `(d * a32 + bm) >> 16`, logical, `d = v - zx`, before the clamp (`vpmuldq` on the even and the
/// odd lanes, then [`shifted_lanes`]).
///
/// # Safety
/// AVX-512 F.
#[target_feature(enable = "avx512f")]
unsafe fn affine_lanes(v: __m512i, z: __m512i, a: __m512i, b: __m512i) -> __m512i {
    let d = _mm512_sub_epi32(v, z);
    let even = _mm512_add_epi64(_mm512_mul_epi32(d, a), b);
    let odd = _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64::<32>(d), a), b);
    // SAFETY: the same features as this function
    unsafe { shifted_lanes(even, odd) }
}

/// GroupNorm's affine rule (`super::reference::norm::gn_affine_i32`: the low 32 bits of `(d * a32 +
/// bm) >> 16`, logical, clamped to the output's range) for `len` int8 or int16 (`I16`) codes to
/// int8 or int16 (`O16`) codes, 16 per step: [`affine_lanes`], the saturating narrowing as the
/// clamp. Returns how many values it wrote.
///
/// # Safety
/// AVX-512 F and BW; `x` and `out` hold `len` codes of their widths.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn gn_affine<const I16: bool, const O16: bool>(
    x: *const u8,
    out: *mut u8,
    len: usize,
    zx: i32,
    a32: i32,
    bm: i64,
) -> usize {
    let n = len / 16 * 16;
    let (z, a, b) = (
        _mm512_set1_epi32(zx),
        _mm512_set1_epi64(a32 as i64),
        _mm512_set1_epi64(bm),
    );
    for i in (0..n).step_by(16) {
        // SAFETY: 16 codes read and written below `n`
        unsafe {
            let v = if I16 {
                _mm512_cvtepi16_epi32(_mm256_loadu_si256(x.add(2 * i) as *const __m256i))
            } else {
                _mm512_cvtepi8_epi32(_mm_loadu_si128(x.add(i) as *const __m128i))
            };
            store_codes::<O16>(out, i, affine_lanes(v, z, a, b));
        }
    }
    n
}

/// The int16 table's linear interpolation (`super::reference::eltwise::lut_16`: `u = x + 32768`,
/// `(p[u >> 8] * (256 - f) + p[(u >> 8) + 1] * f + 2^15) >> 16` with `f = u & 255`, saturated) for
/// `len` int16 codes to int8 or int16 (`O16`) codes, 16 per step: the two points by `vpgatherdd`,
/// the sums in i64 by `vpmuldq` on the even and the odd lanes (|sum| < 2^40, and the shifted value
/// fits i32, so its bits 16..47 are the value), the saturating narrowing as the clamp. Returns how
/// many values it wrote.
///
/// # Safety
/// AVX-512 F and BW; `out` holds `len` codes of its width.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn lut16<const O16: bool>(
    x: &[i16],
    points: &[i32; 257],
    out: *mut u8,
    len: usize,
) -> usize {
    let n = x.len().min(len) / 16 * 16;
    let (bias, low, full) = (
        _mm512_set1_epi32(32768),
        _mm512_set1_epi32(255),
        _mm512_set1_epi32(256),
    );
    let (one, half) = (_mm512_set1_epi32(1), _mm512_set1_epi64(1 << 15));
    for i in (0..n).step_by(16) {
        // SAFETY: 16 codes read and written below `n`; the indices are 0..=256 of `points`
        unsafe {
            let x = x.as_ptr().add(i) as *const __m256i;
            let u = _mm512_add_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256(x)), bias);
            let at = _mm512_srli_epi32::<8>(u);
            let f = _mm512_and_si512(u, low);
            let g = _mm512_sub_epi32(full, f);
            let p0 = _mm512_i32gather_epi32::<4>(at, points.as_ptr() as *const _);
            let p1 =
                _mm512_i32gather_epi32::<4>(_mm512_add_epi32(at, one), points.as_ptr() as *const _);
            let even = _mm512_add_epi64(_mm512_mul_epi32(p0, g), _mm512_mul_epi32(p1, f));
            let hi = _mm512_add_epi64(
                _mm512_mul_epi32(_mm512_srli_epi64::<32>(p0), _mm512_srli_epi64::<32>(g)),
                _mm512_mul_epi32(_mm512_srli_epi64::<32>(p1), _mm512_srli_epi64::<32>(f)),
            );
            let r = shifted_lanes(_mm512_add_epi64(even, half), _mm512_add_epi64(hi, half));
            store_codes::<O16>(out, i, r);
        }
    }
    n
}

/// GroupNorm's exact sums of int16 codes (`sum(d)`, `sum(d^2)`, `d = x - zx`, |d| < 2^17), 16 per
/// step: `d` in i32 lanes (4096 steps add at most 2^29 to a lane), `d^2` by `vpmuldq` on the even
/// and the odd lanes into i64 lanes. Returns how many values it summed and the two sums.
///
/// # Safety
/// AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn moments16(x: &[i16], zx: i32) -> (usize, i64, i64) {
    let n = x.len() / 16 * 16;
    let z = _mm512_set1_epi32(zx);
    let (mut sum, mut q) = (0i64, _mm512_setzero_si512());
    for c in (0..n).step_by(16 * 4096) {
        let mut s = _mm512_setzero_si512();
        for i in (c..n.min(c + 16 * 4096)).step_by(16) {
            // SAFETY: 16 codes read below `n`
            unsafe {
                let v =
                    _mm512_cvtepi16_epi32(_mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i));
                let d = _mm512_sub_epi32(v, z);
                let odd = _mm512_srli_epi64::<32>(d);
                s = _mm512_add_epi32(s, d);
                q = _mm512_add_epi64(q, _mm512_mul_epi32(d, d));
                q = _mm512_add_epi64(q, _mm512_mul_epi32(odd, odd));
            }
        }
        sum += _mm512_reduce_add_epi64(_mm512_add_epi64(
            _mm512_cvtepi32_epi64(_mm512_castsi512_si256(s)),
            _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(s)),
        ));
    }
    // an i64 lane adds at most 2^35 per step: exact for any slice that fits in memory
    (n, sum, _mm512_reduce_add_epi64(q))
}

/// A 16 x 64 byte transpose for staging int8 codes: 16 channels (`src + c * ch_stride`, 64
/// pixels each) to 64 pixels of 16 channels, the pixels `16 l..16 l + 16` at `lanes[l]` (each
/// `px_stride` after the previous); every code flipped (`x ^ 0x80`) where `flip`. Four stages of
/// in-lane unpacks (bytes, words, dwords, qwords) leave each 128-bit lane holding one pixel's 16
/// channels: lane `l` of register `8 h + 4 g + 2 f + e` is pixel `16 l + 8 h + 4 g + 2 f + e`.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW; the 1024 reads and 1024 writes must be in bounds.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn transpose16x64_b(
    src: *const i8,
    ch_stride: usize,
    lanes: [*mut i8; 4],
    px_stride: usize,
    flip: bool,
) {
    let f = _mm512_set1_epi8(if flip { -128 } else { 0 });
    let mut r = [_mm512_setzero_si512(); 16];
    for (c, x) in r.iter_mut().enumerate() {
        // SAFETY: the caller's bounds
        let v = unsafe { _mm512_loadu_si512(src.add(c * ch_stride) as *const __m512i) };
        *x = _mm512_xor_si512(v, f);
    }
    // (loops over arrays, not closures: closures would not inherit this function's features)
    // channel pairs: register 2 i + h holds pixels 8 h..8 h + 8 of each lane
    let mut s = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        s[2 * i] = _mm512_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
        s[2 * i + 1] = _mm512_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
    }
    // channel quads: register 4 j + 2 h + g, pixels 8 h + 4 g..
    for j in 0..4 {
        for h in 0..2 {
            let (a, b) = (s[4 * j + h], s[4 * j + 2 + h]);
            r[4 * j + 2 * h] = _mm512_unpacklo_epi16(a, b);
            r[4 * j + 2 * h + 1] = _mm512_unpackhi_epi16(a, b);
        }
    }
    // 8 channels: register 8 k + 2 m + f (m = 2 h + g), pixels 4 m + 2 f..
    for k in 0..2 {
        for m in 0..4 {
            let (a, b) = (r[8 * k + m], r[8 * k + 4 + m]);
            s[8 * k + 2 * m] = _mm512_unpacklo_epi32(a, b);
            s[8 * k + 2 * m + 1] = _mm512_unpackhi_epi32(a, b);
        }
    }
    // 16 channels: register 2 n + e (n = 2 m + f), pixel 2 n + e of each lane
    for n in 0..8 {
        let (a, b) = (s[n], s[8 + n]);
        r[2 * n] = _mm512_unpacklo_epi64(a, b);
        r[2 * n + 1] = _mm512_unpackhi_epi64(a, b);
    }
    for (p, &x) in r.iter().enumerate() {
        for (l, &y) in lanes4(x).iter().enumerate() {
            // SAFETY: the caller's bounds
            unsafe { _mm_storeu_si128(lanes[l].add(p * px_stride) as *mut __m128i, y) };
        }
    }
}

/// The four 128-bit lanes of `x`, lowest first.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn lanes4(x: __m512i) -> [__m128i; 4] {
    [
        _mm512_castsi512_si128(x),
        _mm512_extracti32x4_epi32::<1>(x),
        _mm512_extracti32x4_epi32::<2>(x),
        _mm512_extracti32x4_epi32::<3>(x),
    ]
}
