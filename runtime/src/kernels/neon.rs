//! AArch64 kernels. Both tiers compute the conv GEMM as dot products over a transposed im2col
//! (`colT[p][k]`, k contiguous), so weights and inputs stream through 16-byte vectors:
//! - `Neon` (Armv8.0, e.g. Cortex-A72 / Raspberry Pi 4): SMULL/SMULL2 into i16 products (exact: weights
//!   are in [-127, 127]), SADALP into i32 lanes;
//! - `NeonDot` (Armv8.2 dotprod, Cortex-A76/A78: Pi 5, Jetson Orin): SDOT, written with `asm!` because
//!   the intrinsics are not stable; only ever called after detection.
//!
//! The scalar kernel accumulates in wrapping i32; wrapping addition is associative and commutative, so
//! any order of the same products gives the same bits. Each tier therefore equals the scalar kernel bit
//! for bit (tests in this module compare them on random shapes).
use core::arch::aarch64::*;

/// `sum_k a[k] * b[k]` in wrapping i32, Armv8.0 NEON.
#[inline]
pub fn dot_i8_neon(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let mut k = 0;
    let mut total: i32 = 0;
    // SAFETY: loads stay within `a[..n]` and `b[..n]` (k + 16 <= n); NEON is baseline on aarch64.
    unsafe {
        let mut acc = vdupq_n_s32(0);
        while k + 16 <= n {
            let va = vld1q_s8(a.as_ptr().add(k));
            let vb = vld1q_s8(b.as_ptr().add(k));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(va), vget_low_s8(vb)));
            acc = vpadalq_s16(acc, vmull_high_s8(va, vb));
            k += 16;
        }
        total = total.wrapping_add(vaddvq_s32(acc));
    }
    super::dot_scalar(&a[k..n], &b[k..n], total)
}

/// `sum_k a[k] * b[k]` in wrapping i32 with SDOT. Only call when the CPU has dotprod.
#[inline]
pub fn dot_i8_sdot(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let mut k = 0;
    let mut total: i32 = 0;
    // SAFETY: loads stay within `a[..n]`, `b[..n]`; the caller checked the dotprod feature.
    unsafe {
        let mut acc = vdupq_n_s32(0);
        while k + 16 <= n {
            let va = vld1q_s8(a.as_ptr().add(k));
            let vb = vld1q_s8(b.as_ptr().add(k));
            core::arch::asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                acc = inout(vreg) acc,
                a = in(vreg) va,
                b = in(vreg) vb,
                options(pure, nomem, nostack, preserves_flags)
            );
            k += 16;
        }
        total = total.wrapping_add(vaddvq_s32(acc));
    }
    super::dot_scalar(&a[k..n], &b[k..n], total)
}

/// Adds the scalar tails (`k0..`) and reduces the lanes of a 4×4 tile of accumulators.
///
/// # Safety
/// NEON is baseline on aarch64; no memory is touched beyond the slices.
#[inline(always)]
unsafe fn finish_block(
    acc: [[int32x4_t; 4]; 4],
    w: [&[i8]; 4],
    x: [&[i8]; 4],
    k0: usize,
) -> [[i32; 4]; 4] {
    let mut out = [[0i32; 4]; 4];
    for r in 0..4 {
        for c in 0..4 {
            // SAFETY: a register reduction.
            let lanes = unsafe { vaddvq_s32(acc[r][c]) };
            out[r][c] = super::dot_scalar(&w[r][k0..], &x[c][k0..], lanes);
        }
    }
    out
}

/// [`super::dot_block`] with Armv8.0 NEON: per 16 k, 8 loads and 16 × (SMULL, SMULL2, 2 SADALP).
/// All slices have the same length (the caller truncates them).
#[inline(never)]
pub fn dot_block_neon(w: [&[i8]; 4], x: [&[i8]; 4]) -> [[i32; 4]; 4] {
    let n = w[0].len();
    let mut k = 0;
    // SAFETY: every load reads 16 bytes at `k` with k + 16 <= n, the length of all eight slices.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 4]; 4];
        while k + 16 <= n {
            let wv = w.map(|s| vld1q_s8(s.as_ptr().add(k)));
            let xv = x.map(|s| vld1q_s8(s.as_ptr().add(k)));
            for r in 0..4 {
                for c in 0..4 {
                    let lo = vmull_s8(vget_low_s8(wv[r]), vget_low_s8(xv[c]));
                    let hi = vmull_high_s8(wv[r], xv[c]);
                    acc[r][c] = vpadalq_s16(vpadalq_s16(acc[r][c], lo), hi);
                }
            }
            k += 16;
        }
        finish_block(acc, w, x, k)
    }
}

/// [`super::dot_block`] with SDOT: per 16 k, 8 loads and 16 SDOT (256 multiply-accumulates). Only
/// call when the CPU has dotprod. All slices have the same length (the caller truncates them).
#[inline(never)]
pub fn dot_block_sdot(w: [&[i8]; 4], x: [&[i8]; 4]) -> [[i32; 4]; 4] {
    let n = w[0].len();
    let mut k = 0;
    // SAFETY: loads as in `dot_block_neon`; the caller checked the dotprod feature.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 4]; 4];
        while k + 16 <= n {
            let wv = w.map(|s| vld1q_s8(s.as_ptr().add(k)));
            let xv = x.map(|s| vld1q_s8(s.as_ptr().add(k)));
            for r in 0..4 {
                for c in 0..4 {
                    core::arch::asm!(
                        ".arch_extension dotprod",
                        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
                        acc = inout(vreg) acc[r][c],
                        a = in(vreg) wv[r],
                        b = in(vreg) xv[c],
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
            }
            k += 16;
        }
        finish_block(acc, w, x, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(state: &mut u64) -> i8 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 24) as u8 as i8
    }

    fn scalar(a: &[i8], b: &[i8]) -> i32 {
        a.iter()
            .zip(b)
            .fold(0i32, |s, (&x, &y)| s.wrapping_add(x as i32 * y as i32))
    }

    #[test]
    fn neon_dot_equals_scalar() {
        let mut s = 0x1234_5678_9abc_def1u64;
        for len in (0..300).chain([1023, 4096, 9999]) {
            let a: Vec<i8> = (0..len).map(|_| rnd(&mut s).max(-127)).collect();
            let b: Vec<i8> = (0..len).map(|_| rnd(&mut s)).collect();
            assert_eq!(dot_i8_neon(&a, &b), scalar(&a, &b), "len {len}");
        }
    }

    #[test]
    fn sdot_equals_scalar_when_available() {
        if !std::arch::is_aarch64_feature_detected!("dotprod") {
            eprintln!("no dotprod on this CPU: SDOT tier not exercised");
            return;
        }
        let mut s = 0x0fed_cba9_8765_4321u64;
        for len in (0..300).chain([1023, 4096, 9999]) {
            let a: Vec<i8> = (0..len).map(|_| rnd(&mut s).max(-127)).collect();
            let b: Vec<i8> = (0..len).map(|_| rnd(&mut s)).collect();
            assert_eq!(dot_i8_sdot(&a, &b), scalar(&a, &b), "len {len}");
        }
    }
}
