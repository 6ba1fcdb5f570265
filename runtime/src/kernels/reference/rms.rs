//! RMS norm over the channel axis (denoising-diffusion-pytorch's `F.normalize(x, dim=1) * g`):
//! [`rms_norm`], one rule at every x86 level, its positions' scales eight at a time by AVX2.
use super::norm::rint;
use super::Code;
use crate::kernels::{check_len, le_f32};
use crate::{Error, Result};

/// RMS norm over the channel axis of `[n, c, s]` codes, at every one of the `s` positions of the
/// images `images` (written to `out`, image `images.start` first): the exact sum of squares
/// `ss = sum_c (x - zx)^2` in i64; the position's scale `r = 1 / sqrt(ss * (sx^2 / c) + eps)` in
/// f32 (0 where `ss * (sx^2 / c) + eps` is not positive and finite: an all-zero position with
/// `eps = 0` gives `b_c`); then per element `rint((x - zx) * (a_c * r) + b_c)` in f32, clamped to
/// U's range (NaN, from a non-finite affine, to U's minimum), with `a_c = gamma_c * sx / so` and
/// `b_c = beta_c / so + zo` (`affine`: gamma[c], beta[c]).
///
/// One rule at every x86 level: the AVX2 build of the same loops ([`crate::kernels::ops_isa`])
/// changes no rounding (no contraction into FMA; `rint`, the square root and the conversions are
/// exact IEEE operations).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm<T: Code, U: Code>(
    x: &[T],
    (n, c, s): (usize, usize, usize),
    (zx, sx): (i32, f32),
    eps: f32,
    affine: &[u8],
    (so, zo): (f32, i32),
    images: core::ops::Range<usize>,
    out: &mut [U],
) -> Result<()> {
    let per = c * s;
    check_len(n * per, x.len())?;
    if images.start > images.end || images.end > n {
        return Err(Error::Unsupported("rms norm images outside the tensor"));
    }
    check_len((images.end - images.start) * per, out.len())?;
    check_len(c * 8, affine.len())?;
    if zx < T::MIN || zx > T::MAX {
        return Err(Error::Unsupported(
            "rms norm zero point outside the code range",
        ));
    }
    let x = &x[images.start * per..images.end * per];
    let call = RmsCall {
        c,
        s,
        zx,
        sx,
        eps,
        so,
        zo,
    };
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if !matches!(crate::kernels::ops_isa(), crate::kernels::OpsIsa::Scalar) {
        // SAFETY: `ops_isa` found AVX2 on this CPU
        unsafe { rms_norm_avx2(&call, x, affine, out) };
        return Ok(());
    }
    rms_norm_rule(&call, x, affine, out);
    Ok(())
}

/// The geometry and quantization of one [`rms_norm`] call (checked by it).
struct RmsCall {
    c: usize,
    s: usize,
    zx: i32,
    sx: f32,
    eps: f32,
    so: f32,
    zo: i32,
}

/// [`rms_norm_rule`] built for AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
unsafe fn rms_norm_avx2<T: Code, U: Code>(k: &RmsCall, x: &[T], affine: &[u8], out: &mut [U]) {
    rms_norm_at::<T, U, true>(k, x, affine, out)
}

/// Positions per block of [`rms_norm`]: their sums of squares and scales stay on the stack.
const RMS_BLOCK: usize = 64;

/// [`rms_norm`]'s rule over whole images (`x` and `out` hold the same images; lengths checked).
fn rms_norm_rule<T: Code, U: Code>(k: &RmsCall, x: &[T], affine: &[u8], out: &mut [U]) {
    rms_norm_at::<T, U, false>(k, x, affine, out)
}

/// A position's scale `1 / sqrt(ss * inv + eps)`, 0 where the radicand is not positive and finite
/// (the rule).
#[inline(always)]
fn rms_scale(q: i64, inv: f32, eps: f32) -> f32 {
    let den = q as f32 * inv + eps;
    if den > 0.0 && den.is_finite() {
        1.0 / libm::sqrtf(den)
    } else {
        0.0
    }
}

/// [`rms_scale`] of every sum of squares in `ss`. `AVX2`: the caller runs on a CPU with AVX2, and
/// eight positions whose sums are below 2^31 take one vector each ([`rms_scales_avx2`]).
#[inline(always)]
fn rms_scales<const AVX2: bool>(ss: &[i64], (inv, eps): (f32, f32), r: &mut [f32]) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if AVX2 {
        // SAFETY: the caller runs on a CPU with AVX2 (`AVX2`)
        done = unsafe { rms_scales_avx2(ss, (inv, eps), r) };
    }
    for (rv, &q) in r.iter_mut().zip(ss).skip(done) {
        *rv = rms_scale(q, inv, eps);
    }
}

/// [`rms_scale`] eight positions at a time, while their sums are below 2^31: the sums convert to
/// f32 as i32 (`vcvtdq2ps` rounds to nearest even as `i64 as f32` does), then the product, the
/// sum, the square root and the quotient are the scalar rule's correctly rounded IEEE operations
/// one by one (none contracted), and the comparisons `0 < den < inf` select them. Returns how many
/// positions were done (a multiple of 8; the caller does the rest by the rule).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
unsafe fn rms_scales_avx2(ss: &[i64], (inv, eps): (f32, f32), r: &mut [f32]) -> usize {
    use core::arch::x86_64::*;
    let mut done = 0;
    let (vi, ve) = (_mm256_set1_ps(inv), _mm256_set1_ps(eps));
    let (one, zero, inf) = (
        _mm256_set1_ps(1.0),
        _mm256_setzero_ps(),
        _mm256_set1_ps(f32::INFINITY),
    );
    // the low halves of four i64 lanes, in order, in the low 128 bits
    let lows = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (q8, r8) in ss.chunks_exact(8).zip(r.chunks_exact_mut(8)) {
        if q8.iter().any(|&q| q as u64 >= 1 << 31) {
            break;
        }
        // SAFETY: eight sums read and eight scales written inside the chunks
        unsafe {
            let a = _mm256_loadu_si256(q8.as_ptr() as *const __m256i);
            let b = _mm256_loadu_si256(q8.as_ptr().add(4) as *const __m256i);
            let a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(a, lows));
            let b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, lows));
            let q = _mm256_cvtepi32_ps(_mm256_set_m128i(b, a));
            let den = _mm256_add_ps(_mm256_mul_ps(q, vi), ve);
            let v = _mm256_div_ps(one, _mm256_sqrt_ps(den));
            let ok = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(den, zero),
                _mm256_cmp_ps::<_CMP_LT_OQ>(den, inf),
            );
            _mm256_storeu_ps(r8.as_mut_ptr(), _mm256_and_ps(ok, v));
        }
        done += 8;
    }
    done
}

/// [`rms_norm_rule`] with the scales of [`rms_scales`].
#[inline(always)]
fn rms_norm_at<T: Code, U: Code, const AVX2: bool>(
    k: &RmsCall,
    x: &[T],
    affine: &[u8],
    out: &mut [U],
) {
    let RmsCall {
        c,
        s,
        zx,
        sx,
        eps,
        so,
        zo,
    } = *k;
    let per = (c * s).max(1);
    let inv = sx * sx / c.max(1) as f32;
    let (lo, hi) = (U::MIN as f32, U::MAX as f32);
    for (xi, oi) in x.chunks_exact(per).zip(out.chunks_exact_mut(per)) {
        for p0 in (0..s).step_by(RMS_BLOCK) {
            let np = RMS_BLOCK.min(s - p0);
            let mut ss = [0i64; RMS_BLOCK];
            for ch in 0..c {
                for (a, &v) in ss.iter_mut().zip(&xi[ch * s + p0..ch * s + p0 + np]) {
                    let d = (v.get() - zx) as i64;
                    *a += d * d;
                }
            }
            let mut r = [0f32; RMS_BLOCK];
            rms_scales::<AVX2>(&ss[..np], (inv, eps), &mut r[..np]);
            for ch in 0..c {
                let a = le_f32(affine, ch) * sx / so;
                let b = le_f32(affine, c + ch) / so + zo as f32;
                let (src, dst) = (&xi[ch * s + p0..][..np], &mut oi[ch * s + p0..][..np]);
                for ((d, &v), &rv) in dst.iter_mut().zip(src).zip(&r[..np]) {
                    // `max` then `min` take NaN to `lo`; the result is integral and in i32 range
                    let y = rint((v.get() - zx) as f32 * (a * rv) + b).max(lo).min(hi);
                    // SAFETY: finite, integral and within U's range (see above)
                    *d = U::wrap(unsafe { y.to_int_unchecked::<i32>() } as i64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The AVX2 build of the RMS norm's loops equals its rule bit for bit: int8 and int16 either
    /// side, positions fewer and more than a block (and than the eight of a vector of scales), eps
    /// 0 with every seventh position all zero (scale 0 beside others in the same vector), int16
    /// sums of squares above 2^31 (the vector stops there), and affines with NaN and infinite
    /// entries (which the op's check lets through).
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn rms_norm_avx2_build_equals_the_rule() {
        use super::{rms_norm_avx2, rms_norm_rule, RmsCall};
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut seed = 21u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as u32
        };
        for case in 0..40 {
            let (c, s) = (1 + next() as usize % 20, 1 + next() as usize % 200);
            let wide = case % 2 == 1;
            let zx = if wide {
                next() as i32 % 2000 - 1000
            } else {
                next() as i32 % 40 - 20
            };
            let x: Vec<i16> = (0..c * s)
                .map(|k| match (k % s % 7 == 0 && case % 4 == 0, wide) {
                    (true, _) => zx as i16,
                    (false, true) => next() as u16 as i16,
                    (false, false) => next() as u8 as i8 as i16,
                })
                .collect();
            let mut aff: Vec<f32> = (0..2 * c)
                .map(|_| (next() % 3000) as f32 / 1000.0 - 1.5)
                .collect();
            if case % 5 == 0 {
                aff[0] = f32::NAN;
                aff[2 * c - 1] = f32::INFINITY;
            }
            let affine: Vec<u8> = aff.iter().flat_map(|v| v.to_le_bytes()).collect();
            let k = RmsCall {
                c,
                s,
                zx,
                sx: 1e-3 + (next() % 1000) as f32 * 1e-4,
                eps: if case % 4 == 0 { 0.0 } else { 1e-6 },
                so: 1e-3 + (next() % 1000) as f32 * 1e-4,
                zo: next() as i32 % 20 - 10,
            };
            let (mut a, mut b) = (vec![0i16; c * s], vec![0i16; c * s]);
            if wide {
                rms_norm_rule(&k, &x, &affine, &mut a);
                // SAFETY: AVX2 was just detected
                unsafe { rms_norm_avx2(&k, &x, &affine, &mut b) };
            } else {
                let x8: Vec<i8> = x.iter().map(|&v| v as i8).collect();
                let (mut a8, mut b8) = (vec![0i8; c * s], vec![0i8; c * s]);
                rms_norm_rule(&k, &x8, &affine, &mut a8);
                // SAFETY: AVX2 was just detected
                unsafe { rms_norm_avx2(&k, &x8, &affine, &mut b8) };
                a = a8.iter().map(|&v| v as i16).collect();
                b = b8.iter().map(|&v| v as i16).collect();
            }
            assert_eq!(a, b, "case {case}: c {c} s {s}");
        }
    }
}
