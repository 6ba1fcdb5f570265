//! GroupNorm with exact integer statistics and a fixed-point per-channel affine.
use super::Code;
use crate::kernels::{check_len, le_f32, OpsIsa};
use crate::{Error, Result};

/// Fixed-point fraction bits of the GroupNorm per-channel affine.
pub const GN_FRAC_BITS: u8 = 16;

/// The fixed-point multiplier and offset of `a*(x - zx) + b` with `GN_FRAC_BITS` fraction bits,
/// the rounding of the shift folded into the offset: `|am| < 2^40`, `|bm| < 2^50`.
#[inline(always)]
fn fixed_affine(a: f32, b: f32) -> (i64, i64) {
    let one = (1i64 << GN_FRAC_BITS) as f32;
    let am = rint(a * one).clamp(-1.0e12, 1.0e12) as i64;
    let bm = rint(b * one).clamp(-1.0e15, 1.0e15) as i64;
    (am, bm + (1i64 << (GN_FRAC_BITS - 1)))
}

/// The affine's rule for one code: `(d*am + bm) >> GN_FRAC_BITS`, saturated to U
/// (`|d| < 2^17`, so the sum stays below 2^58: exact in i64).
#[inline(always)]
fn affine_one<T: Code, U: Code>(v: T, zx: i32, am: i64, bm: i64) -> U {
    U::sat(((v.get() - zx) as i64 * am + bm) >> GN_FRAC_BITS)
}

/// Round to the nearest integer, ties to even: `libm::rintf` in the default rounding mode, written
/// so that loops over it vectorize. Below 2^23 in magnitude, adding 2^23 leaves an ulp of 1, so the
/// addition rounds (ties to even: 2^23 is even) and the subtraction is exact; from 2^23 up (and
/// NaN) the value is already integral.
#[inline(always)]
pub(super) fn rint(v: f32) -> f32 {
    const BIG: f32 = 8_388_608.0; // 2^23
    let m = f32::from_bits(v.to_bits() & 0x7fff_ffff);
    if m < BIG {
        f32::from_bits(((m + BIG) - BIG).to_bits() | (v.to_bits() & 0x8000_0000))
    } else {
        v
    }
}

/// `out = zo + a*(x - zx) + b` per element in fixed point with `GN_FRAC_BITS` fraction bits
/// (`zo` is folded into `b`), with the x86 level `isa` (from [`crate::kernels::ops_isa`]).
#[inline(always)]
fn gn_affine<T: Code, U: Code>(x: &[T], out: &mut [U], zx: i32, (a, b): (f32, f32), isa: OpsIsa) {
    let (am, bm) = fixed_affine(a, b);
    if let Ok(a32) = i32::try_from(am) {
        if (a32.unsigned_abs() as i64) * (T::MAX - T::MIN) as i64 + bm.abs() < 1i64 << 46 {
            // the usual case: |d * am + bm| < 2^46, so the shifted value fits i32 and is the low
            // half of the logical shift (a form the compiler vectorizes on x86: sign-extended
            // 32x32 products, then 32-bit clamps; NEON has no 64-bit vector multiply, so aarch64
            // runs the same rule with `SMULL`); it equals `affine_one`
            // SAFETY: `isa` comes from `ops_isa` (the caller's)
            unsafe { affine_i32_on(x, out, zx, a32, bm, isa) };
            return;
        }
    }
    for (dst, &v) in out.iter_mut().zip(x) {
        *dst = affine_one(v, zx, am, bm);
    }
}

/// The rule of [`gn_affine`]'s usual case (multiplier `a32`, rounding folded into `bm`): the low 32
/// bits of `(d * a32 + bm) >> GN_FRAC_BITS`, clamped to U's range.
#[inline(always)]
pub(crate) fn gn_affine_i32<T: Code, U: Code>(x: &[T], out: &mut [U], zx: i32, a32: i32, bm: i64) {
    for (dst, &v) in out.iter_mut().zip(x) {
        let d = v.get() - zx;
        let r = ((d as i64 * a32 as i64 + bm) as u64 >> GN_FRAC_BITS) as u32 as i32;
        *dst = U::sat(r.clamp(U::MIN, U::MAX) as i64);
    }
}

/// [`gn_affine_i32`] with NEON on aarch64, AVX-512 or AVX2 on x86-64 at the level `isa` (checked
/// against it by `kernels::check`).
///
/// # Safety
/// `isa` is at most [`crate::kernels::ops_isa`] (the level's kernels need its features).
#[inline(always)]
pub(crate) unsafe fn affine_i32_on<T: Code, U: Code>(
    x: &[T],
    out: &mut [U],
    zx: i32,
    a32: i32,
    bm: i64,
    isa: OpsIsa,
) {
    let _ = isa;
    #[cfg(target_arch = "aarch64")]
    let done = crate::kernels::neon_ops::gn_affine(x, out, zx, a32, bm);
    // x86-64, int8 or int16 codes in and out, AVX-512 BW or AVX2: 16 or 8 per step, the same rule
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let done = affine_x86(x, out, zx, a32, bm, isa);
    #[cfg(not(any(target_arch = "aarch64", all(target_arch = "x86_64", feature = "std"))))]
    let done = 0;
    gn_affine_i32(&x[done..], &mut out[done..], zx, a32, bm);
}

/// [`affine_i32_on`] on x86-64 with AVX-512 BW or AVX2 for int8 and int16 codes: how many values
/// it wrote, 0 for other types or levels.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[inline(always)]
fn affine_x86<T: Code, U: Code>(
    x: &[T],
    out: &mut [U],
    zx: i32,
    a32: i32,
    bm: i64,
    isa: OpsIsa,
) -> usize {
    use crate::kernels::{is_i16, is_i8, x86_avx2_ops as v2, x86_avx512_ops as v5};
    type Affine = unsafe fn(*const u8, *mut u8, usize, i32, i32, i64) -> usize;
    let width = |i8: bool, i16: bool| if i8 { Some(0) } else { i16.then_some(1) };
    let (Some(i16_in), Some(i16_out)) = (
        width(is_i8::<T>(), is_i16::<T>()),
        width(is_i8::<U>(), is_i16::<U>()),
    ) else {
        return 0;
    };
    // by input width, then output width
    let kernels: [Affine; 4] = match isa {
        OpsIsa::Avx512 => [
            v5::gn_affine::<false, false>,
            v5::gn_affine::<false, true>,
            v5::gn_affine::<true, false>,
            v5::gn_affine::<true, true>,
        ],
        OpsIsa::Avx2 => [
            v2::gn_affine::<false, false>,
            v2::gn_affine::<false, true>,
            v2::gn_affine::<true, false>,
            v2::gn_affine::<true, true>,
        ],
        OpsIsa::Scalar => return 0,
    };
    let (src, dst) = (x.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8);
    // SAFETY: the level's features were detected (`affine_i32_on`'s caller); `x` and `out` hold
    // `len` codes of these widths
    unsafe { kernels[2 * i16_in + i16_out](src, dst, x.len().min(out.len()), zx, a32, bm) }
}

/// Exact sum and sum of squares of `x - zx` (`zx` in the code range: |d| < 2^17), at the CPU's
/// level (`group_norm` takes the level once per call and runs [`moments_on`]).
#[cfg(test)]
pub(crate) fn moments<T: Code>(x: &[T], zx: i32) -> (i64, i64) {
    // SAFETY: the level is the CPU's
    unsafe { moments_on(x, zx, crate::kernels::ops_isa()) }
}

/// Exact sum and sum of squares of `x - zx` (`zx` in the code range: |d| < 2^17) with the x86
/// level `isa`.
///
/// # Safety
/// `isa` is at most [`crate::kernels::ops_isa`] (the level's kernels need its features).
#[inline(always)]
pub(crate) unsafe fn moments_on<T: Code>(x: &[T], zx: i32, isa: OpsIsa) -> (i64, i64) {
    let _ = isa;
    // aarch64, int8 codes: 16 at a time with widening NEON arithmetic (the same exact sums)
    #[cfg(target_arch = "aarch64")]
    if let Ok(x8) = bytemuck::try_cast_slice::<T, i8>(x) {
        if core::mem::size_of::<T>() == 1 {
            let (done, sum, sumsq) = crate::kernels::neon_ops::moments8(x8, zx);
            let (s, q) = moments_scalar(&x[done..], zx);
            return (sum + s, sumsq + q);
        }
    }
    // aarch64, int16 codes: 8 at a time, d in i32 and d^2 in i64 lanes (the same exact sums)
    #[cfg(target_arch = "aarch64")]
    if let Ok(x16) = bytemuck::try_cast_slice::<T, i16>(x) {
        if crate::kernels::is_i16::<T>() {
            let (done, sum, sumsq) = crate::kernels::neon_ops::moments16(x16, zx);
            let (s, q) = moments_scalar(&x[done..], zx);
            return (sum + s, sumsq + q);
        }
    }
    // x86-64, int8 or int16 codes, AVX-512 BW or AVX2 (std builds detect them): 32 or 16 int8
    // codes, 16 or 8 int16 codes per step, the same exact sums
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        use crate::kernels::{is_i16, is_i8, x86_avx2_ops as v2, x86_avx512_ops as v5};
        // SAFETY (both): the level's features are the CPU's (`moments_on`'s caller)
        let wide = if let (true, Ok(x8)) = (is_i8::<T>(), bytemuck::try_cast_slice::<T, i8>(x)) {
            match isa {
                OpsIsa::Avx512 => Some(unsafe { v5::moments8(x8, zx) }),
                OpsIsa::Avx2 => Some(unsafe { v2::moments8(x8, zx) }),
                OpsIsa::Scalar => None,
            }
        } else if let (true, Ok(x16)) = (is_i16::<T>(), bytemuck::try_cast_slice::<T, i16>(x)) {
            match isa {
                OpsIsa::Avx512 => Some(unsafe { v5::moments16(x16, zx) }),
                OpsIsa::Avx2 => Some(unsafe { v2::moments16(x16, zx) }),
                OpsIsa::Scalar => None,
            }
        } else {
            None
        };
        if let Some((done, sum, sumsq)) = wide {
            let (s, q) = moments_scalar(&x[done..], zx);
            return (sum + s, sumsq + q);
        }
    }
    moments_scalar(x, zx)
}

#[inline(always)]
fn moments_scalar<T: Code>(x: &[T], zx: i32) -> (i64, i64) {
    let (mut sum, mut sumsq) = (0i64, 0i64);
    // 4096 values of |d| < 2^17 sum below 2^29 in i32
    for chunk in x.chunks(4096) {
        let (mut s, mut q) = (0i32, 0i64);
        for &v in chunk {
            let d = v.get() - zx;
            s += d;
            q += d as i64 * d as i64;
        }
        sum += s as i64;
        sumsq += q;
    }
    (sum, sumsq)
}

/// GroupNorm of `[n][c][s]` int8 codes, for the (image, group) rows `rows` (their outputs in `out`:
/// threads split the rows). Statistics are exact integer sums per group; the per-channel
/// affine `q_out = zo + a_c*(q - zx) + b_c` is evaluated in f32 once per channel and applied per element
/// in 16-bit fixed point. With `ch_scales` (f32 per channel: a split concat whose parts keep their own
/// scales) the sums are exact per channel and combined with each channel's scale.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn group_norm<T: Code, U: Code>(
    x: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    zx: i32,
    sx: f32,
    ch_scales: Option<&[u8]>,
    eps: f32,
    affine: &[u8],
    so: f32,
    zo: i32,
    rows: core::ops::Range<usize>,
    out: &mut [U],
) -> Result<()> {
    check_len(n * c * s, x.len())?;
    // `rows` are (image, group) pairs, `image * groups + group`; `out` holds theirs
    if rows.start > rows.end || groups == 0 || rows.end > n * groups {
        return Err(Error::Unsupported("groupnorm rows outside the tensor"));
    }
    check_len((rows.end - rows.start) * (c / groups) * s, out.len())?;
    check_len(c * 8, affine.len())?;
    if zx < T::MIN || zx > T::MAX {
        return Err(Error::Unsupported(
            "groupnorm zero point outside the code range",
        ));
    }
    if groups == 0 || c % groups != 0 {
        return Err(Error::Unsupported("groups must divide channels"));
    }
    let cg = c / groups;
    let count = (cg * s) as i64; // <= x.len(), checked above
                                 // where row r's values start in `out`
    let at = |r: usize| (r - rows.start) * cg * s;
    if count == 0 {
        return Ok(());
    }
    // the x86 level of the sums and the affine, once per call (not per group or channel)
    let isa = crate::kernels::ops_isa();
    if let Some(sc) = ch_scales {
        check_len(c * 4, sc.len())?;
        if (0..c).any(|ch| !(le_f32(sc, ch) > 0.0 && le_f32(sc, ch).is_finite())) {
            return Err(Error::Unsupported(
                "groupnorm channel scales must be positive",
            ));
        }
        for r in rows.clone() {
            let (ni, g) = (r / groups, r % groups);
            {
                let start = (ni * c + g * cg) * s;
                // exact integer sums per channel, combined in f64 with the channel scales
                let (mut m1, mut m2) = (0f64, 0f64);
                for cc in 0..cg {
                    let o = start + cc * s;
                    // SAFETY: the level is the CPU's
                    let (sum, sumsq) = unsafe { moments_on(&x[o..o + s], zx, isa) };
                    let sc_c = le_f32(sc, g * cg + cc) as f64;
                    m1 += sc_c * sum as f64;
                    m2 += sc_c * sc_c * sumsq as f64;
                }
                let mean = m1 / count as f64;
                let var = (m2 / count as f64 - mean * mean).max(0.0);
                let rstd = 1.0 / libm::sqrtf(var as f32 + eps);
                for cc in 0..cg {
                    let ch = g * cg + cc;
                    let (gamma, beta) = (le_f32(affine, ch), le_f32(affine, c + ch));
                    let sc_c = le_f32(sc, ch);
                    let a = gamma * rstd * sc_c / so;
                    let b = (beta - gamma * rstd * mean as f32) / so + zo as f32;
                    let (o, p) = (start + cc * s, at(r) + cc * s);
                    gn_affine(&x[o..o + s], &mut out[p..p + s], zx, (a, b), isa);
                }
            }
        }
        return Ok(());
    }
    for r in rows.clone() {
        let (ni, g) = (r / groups, r % groups);
        {
            let start = (ni * c + g * cg) * s;
            let xs = &x[start..start + cg * s];
            // SAFETY: the level is the CPU's
            let (sum, sumsq) = unsafe { moments_on(xs, zx, isa) };
            // exact numerator of the variance in code units: (n*sumsq - sum^2) / n^2
            let num = count as i128 * sumsq as i128 - sum as i128 * sum as i128;
            let var_q = num as f32 / (count as f32 * count as f32);
            let mean_q = sum as f32 / count as f32;
            let rstd = 1.0 / libm::sqrtf(var_q * sx * sx + eps);
            // channel ch's `a` and `b` (the output's zero point folded in)
            let coeffs = |ch: usize| {
                let (gamma, beta) = (le_f32(affine, ch), le_f32(affine, c + ch));
                let a = gamma * rstd * sx / so;
                (a, (beta - gamma * rstd * sx * mean_q) / so + zo as f32)
            };
            if s == 1 {
                // LayerNorm (a token per row, one value per channel): each channel's affine is
                // applied to one code, so it is computed inline rather than per call
                let dst = &mut out[at(r)..at(r) + cg];
                for (cc, (d, &v)) in dst.iter_mut().zip(xs).enumerate() {
                    let (a, b) = coeffs(g * cg + cc);
                    let (am, bm) = fixed_affine(a, b);
                    *d = affine_one(v, zx, am, bm);
                }
                continue;
            }
            for cc in 0..cg {
                let (a, b) = coeffs(g * cg + cc);
                let (o, p) = (start + cc * s, at(r) + cc * s);
                gn_affine(&x[o..o + s], &mut out[p..p + s], zx, (a, b), isa);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The vectorizable `rint` is `libm::rintf`: around every power of two up to 2^25, at halves
    /// and their neighbours, at the extremes, and on a million random bit patterns.
    #[test]
    fn rint_is_libm_rintf() {
        let mut v = vec![
            0.0f32,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        for e in 0..26 {
            let p = (1u32 << e) as f32;
            for d in [-1.5f32, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5] {
                for x in [p + d, p * 1.5 + d, 0.5 * p + d] {
                    for y in [
                        x,
                        f32::from_bits(x.to_bits() + 1),
                        f32::from_bits(x.to_bits().max(1) - 1),
                    ] {
                        v.extend([y, -y]);
                    }
                }
            }
        }
        let mut seed = 7u64;
        v.extend((0..1_000_000).map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            f32::from_bits((seed >> 32) as u32)
        }));
        for x in v {
            assert_eq!(super::rint(x).to_bits(), libm::rintf(x).to_bits(), "{x:e}");
        }
    }

    /// The per-code rule the LayerNorm path applies (`affine_one`) equals the per-channel path
    /// (`gn_affine`: its i32 and SIMD forms, or its i64 form) for every code, multipliers and
    /// offsets from tiny to past the i32 form's limits, int8 and int16 in and out (every pairing).
    #[test]
    fn layer_norm_rule_equals_the_channel_path() {
        use super::Code;
        fn check<T: Code, U: Code>(codes: &[T], zx: i32, a: f32, b: f32) {
            let (am, bm) = super::fixed_affine(a, b);
            let mut out = vec![U::default(); codes.len()];
            super::gn_affine(codes, &mut out, zx, (a, b), crate::kernels::ops_isa());
            for (i, (&x, &y)) in codes.iter().zip(&out).enumerate() {
                let want: U = super::affine_one(x, zx, am, bm);
                assert_eq!(want.get(), y.get(), "a {a} b {b} zx {zx} code #{i}");
            }
        }
        let codes8: Vec<i8> = (-128..=127).collect();
        let codes16: Vec<i16> = (-32768..=32767).step_by(7).chain([32767]).collect();
        for a in [0.0f32, 1e-6, 0.37, -2.5, 13.0, 300.0, -4.0e4, 7.0e5, 3.0e7] {
            for b in [0.0f32, -0.5, 0.5, 1.5, -100.25, 3.0e4, -9.0e9] {
                for zx in [-128, 0, 5, 127] {
                    check::<i8, i8>(&codes8, zx, a, b);
                    check::<i16, i16>(&codes16, zx, a, b);
                    check::<i8, i16>(&codes8, zx, a, b);
                    check::<i16, i8>(&codes16, zx, a, b);
                }
            }
        }
    }

    /// Runs of `n` codes, every `every`-th random and the others at the extreme farthest from
    /// `zx` (the largest squares; all of them where `every` is 0), summed against a direct loop.
    fn long_rows_are_exact<T: super::Code>(
        cases: &[(i32, usize, usize)],
        mut next: impl FnMut() -> T,
    ) {
        for &(zx, n, every) in cases {
            let far = T::sat(if zx > 0 { T::MIN } else { T::MAX } as i64);
            let x: Vec<T> = (0..n)
                .map(|i| {
                    if every > 0 && i % every == 0 {
                        next()
                    } else {
                        far
                    }
                })
                .collect();
            let want = x.iter().fold((0i64, 0i64), |(s, q), v| {
                let d = v.get() as i64 - zx as i64;
                (s + d, q + d * d)
            });
            assert_eq!(super::moments(&x, zx), want, "zx {zx}, {n} codes");
        }
    }

    /// The int8 sums past the AVX-512 path's widening interval (8192 steps of 32 codes).
    #[test]
    fn moments_of_long_int8_rows_are_exact() {
        let mut seed = 13u64;
        let cases = [(127, 700_001, 0), (-128, 262_144, 3), (3, 600_037, 2)];
        long_rows_are_exact::<i8>(&cases, || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as i8
        });
    }

    /// The int16 sums past the vector paths' flush interval (4096 runs; |d| up to 65535).
    #[test]
    fn moments_of_long_int16_rows_are_exact() {
        let mut seed = 17u64;
        let cases = [(32767, 300_001, 0), (-32768, 131_072, 3), (-7, 200_023, 2)];
        long_rows_are_exact::<i16>(&cases, || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as i16
        });
    }
}
