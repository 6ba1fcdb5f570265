//! AArch64 NEON forms of the element-wise work around the product engine: the stage transposes,
//! the tile writes, GroupNorm's sums and affine, and int8 table lookups. Each computes exactly what
//! its scalar rule computes (`kernels::check` compares them on random inputs).
use super::reference::Code;
use core::arch::aarch64::*;

/// `dst[p * ds + c] = src[c * ss + p]` for an 8 x 8 block of bytes: three rounds of zips.
///
/// # Safety
/// The 8 rows of 8 bytes at `src` (stride `ss`) must be readable, those at `dst` (stride `ds`)
/// writable.
#[inline(always)]
pub(crate) unsafe fn transpose8x8_b(src: *const i8, ss: usize, dst: *mut i8, ds: usize) {
    // SAFETY: the caller's
    unsafe {
        let r: [int8x8_t; 8] = core::array::from_fn(|c| vld1_s8(src.add(c * ss)));
        // pairs of channels interleaved, then quads, then all 8 (each zip doubles the run)
        let z1: [int8x8x2_t; 4] = core::array::from_fn(|k| vzip_s8(r[2 * k], r[2 * k + 1]));
        let h = |v: int8x8_t| vreinterpret_s16_s8(v);
        let z2 = [
            vzip_s16(h(z1[0].0), h(z1[1].0)),
            vzip_s16(h(z1[0].1), h(z1[1].1)),
            vzip_s16(h(z1[2].0), h(z1[3].0)),
            vzip_s16(h(z1[2].1), h(z1[3].1)),
        ];
        let w = |v: int16x4_t| vreinterpret_s32_s16(v);
        // z2[0]: pixels 0-1 and 2-3 of channels 0-3, z2[1]: pixels 4-7; z2[2], z2[3]: channels 4-7
        let px = [
            vzip_s32(w(z2[0].0), w(z2[2].0)),
            vzip_s32(w(z2[0].1), w(z2[2].1)),
            vzip_s32(w(z2[1].0), w(z2[3].0)),
            vzip_s32(w(z2[1].1), w(z2[3].1)),
        ];
        for (k, pair) in px.iter().enumerate() {
            vst1_s8(dst.add(2 * k * ds), vreinterpret_s8_s32(pair.0));
            vst1_s8(dst.add((2 * k + 1) * ds), vreinterpret_s8_s32(pair.1));
        }
    }
}

/// [`transpose8x8_b`] for 16-bit codes.
///
/// # Safety
/// As for [`transpose8x8_b`], with rows of 8 i16.
#[inline(always)]
pub(crate) unsafe fn transpose8x8_h(src: *const i16, ss: usize, dst: *mut i16, ds: usize) {
    // SAFETY: the caller's
    unsafe {
        let t = transpose_h(core::array::from_fn(|c| vld1q_s16(src.add(c * ss))));
        for (p, v) in t.iter().enumerate() {
            vst1q_s16(dst.add(p * ds), *v);
        }
    }
}

/// The transpose of 8 vectors of 8 i16 (`out[p][c] = r[c][p]`): three rounds of zips.
#[inline(always)]
fn transpose_h(r: [int16x8_t; 8]) -> [int16x8_t; 8] {
    // SAFETY: NEON is baseline on aarch64
    unsafe {
        // [k][0]: lanes 0-3 of vectors 2k, 2k + 1 interleaved; [k][1]: lanes 4-7
        let z1: [[int16x8_t; 2]; 4] = core::array::from_fn(|k| {
            [
                vzip1q_s16(r[2 * k], r[2 * k + 1]),
                vzip2q_s16(r[2 * k], r[2 * k + 1]),
            ]
        });
        let w = |v: int16x8_t| vreinterpretq_s32_s16(v);
        // [g][q]: lanes 2q, 2q + 1 of vectors 4g .. 4g + 4
        let z2: [[int32x4_t; 4]; 2] = core::array::from_fn(|g| {
            let (a, b) = (z1[2 * g], z1[2 * g + 1]);
            [
                vzip1q_s32(w(a[0]), w(b[0])),
                vzip2q_s32(w(a[0]), w(b[0])),
                vzip1q_s32(w(a[1]), w(b[1])),
                vzip2q_s32(w(a[1]), w(b[1])),
            ]
        });
        let mut out = [vdupq_n_s16(0); 8];
        for q in 0..4 {
            let (lo, hi) = (
                vreinterpretq_s64_s32(z2[0][q]),
                vreinterpretq_s64_s32(z2[1][q]),
            );
            out[2 * q] = vreinterpretq_s16_s64(vzip1q_s64(lo, hi));
            out[2 * q + 1] = vreinterpretq_s16_s64(vzip2q_s64(lo, hi));
        }
        out
    }
}

/// Writes a tile's codes (`codes[pixel][row]`, saturated to the output's `bytes`-byte code type)
/// as 8 rows of `cols` (8 or 4) consecutive pixels: row `i` at `dst + i * rs` elements.
///
/// # Safety
/// The 8 rows of `cols` elements of `bytes` (1 or 2) bytes must be writable.
#[inline(always)]
pub(crate) unsafe fn write_rows8(
    codes: &[[i32; 8]; 8],
    cols: usize,
    dst: *mut u8,
    rs: usize,
    bytes: usize,
) {
    // SAFETY: the caller's; `codes` rows hold 8 i32
    unsafe {
        let px: [int16x8_t; 8] = core::array::from_fn(|j| {
            let c = codes[j].as_ptr();
            vcombine_s16(vqmovn_s32(vld1q_s32(c)), vqmovn_s32(vld1q_s32(c.add(4))))
        });
        let rows = transpose_h(px);
        for (i, v) in rows.iter().enumerate() {
            match (bytes, cols) {
                (2, 8) => vst1q_s16((dst as *mut i16).add(i * rs), *v),
                (2, _) => vst1_s16((dst as *mut i16).add(i * rs), vget_low_s16(*v)),
                (_, 8) => vst1_s8((dst as *mut i8).add(i * rs), vqmovn_s16(*v)),
                _ => vst1_lane_s32::<0>(
                    (dst as *mut i8).add(i * rs) as *mut i32,
                    vreinterpret_s32_s8(vqmovn_s16(*v)),
                ),
            }
        }
    }
}

/// Writes pixel `j`'s 8 row codes of a tile to 8 consecutive elements at `dst + j * ps`, for the
/// tile's `cols` pixels.
///
/// # Safety
/// As for [`write_rows8`], for `cols` runs of 8 elements.
#[inline(always)]
pub(crate) unsafe fn write_pixels8(
    codes: &[[i32; 8]; 8],
    cols: usize,
    dst: *mut u8,
    ps: usize,
    bytes: usize,
) {
    // SAFETY: the caller's
    unsafe {
        for (j, c) in codes.iter().enumerate().take(cols) {
            let v = vcombine_s16(
                vqmovn_s32(vld1q_s32(c.as_ptr())),
                vqmovn_s32(vld1q_s32(c.as_ptr().add(4))),
            );
            if bytes == 2 {
                vst1q_s16((dst as *mut i16).add(j * ps), v);
            } else {
                vst1_s8((dst as *mut i8).add(j * ps), vqmovn_s16(v));
            }
        }
    }
}

/// GroupNorm's per-element affine (see `reference::norm::gn_affine_i32`, the rule) on whole runs
/// of 8 values: `SMULL` by the multiplier, the offset added in i64, `SHRN` keeps bits 16..48 (the
/// low half of the shifted value), then the clamp and the narrowing. Returns how many it did.
pub(crate) fn gn_affine<T: Code, U: Code>(
    x: &[T],
    out: &mut [U],
    zx: i32,
    a32: i32,
    bm: i64,
) -> usize {
    const _: () = assert!(super::reference::norm::GN_FRAC_BITS == 16);
    let n = x.len().min(out.len()) / 8 * 8;
    let (tb, ub) = (core::mem::size_of::<T>(), core::mem::size_of::<U>());
    if tb > 2 || ub > 2 || n == 0 {
        return 0;
    }
    // SAFETY: NEON is baseline on aarch64; every load and store is within the first `n` elements
    // of `x` and `out`; T and U are i8 or i16 (1- or 2-byte codes)
    unsafe {
        let (a, b, z) = (vdup_n_s32(a32), vdupq_n_s64(bm), vdupq_n_s32(zx));
        let (lo, hi) = (vdupq_n_s32(U::MIN), vdupq_n_s32(U::MAX));
        let (xp, op) = (x.as_ptr() as *const u8, out.as_mut_ptr() as *mut u8);
        for i in (0..n).step_by(8) {
            let v: int16x8_t = if tb == 1 {
                vmovl_s8(vld1_s8(xp.add(i) as *const i8))
            } else {
                vld1q_s16(xp.add(2 * i) as *const i16)
            };
            let d = [
                vsubq_s32(vmovl_s16(vget_low_s16(v)), z),
                vsubq_s32(vmovl_high_s16(v), z),
            ];
            let r = d.map(|d| {
                let l = vshrn_n_s64::<16>(vaddq_s64(vmull_s32(vget_low_s32(d), a), b));
                let h = vshrn_n_s64::<16>(vaddq_s64(vmull_s32(vget_high_s32(d), a), b));
                vminq_s32(vmaxq_s32(vcombine_s32(l, h), lo), hi)
            });
            let c = vcombine_s16(vmovn_s32(r[0]), vmovn_s32(r[1]));
            if ub == 1 {
                vst1_s8(op.add(i) as *mut i8, vmovn_s16(c));
            } else {
                vst1q_s16(op.add(2 * i) as *mut i16, c);
            }
        }
    }
    n
}

/// `out[i] = table[x[i] + 128]` on whole runs of 16: the 256-byte table as four groups of four
/// registers, one `TBL` and three `TBX` (an index outside a group leaves the lane). Returns how
/// many it did.
pub(crate) fn lut8(x: &[i8], table: &[u8], out: &mut [i8]) -> usize {
    let n = x.len().min(out.len()) / 16 * 16;
    if table.len() < 256 || n == 0 {
        return 0;
    }
    // SAFETY: NEON is baseline on aarch64; the table is 256 bytes, the loads and stores within
    // the first `n` elements
    unsafe {
        let t = table.as_ptr();
        let g: [uint8x16x4_t; 4] = core::array::from_fn(|k| vld1q_u8_x4(t.add(64 * k)));
        let (flip, step) = (vdupq_n_u8(0x80), vdupq_n_u8(64));
        for i in (0..n).step_by(16) {
            // x + 128 as an unsigned byte
            let mut idx = veorq_u8(vld1q_u8(x.as_ptr().add(i) as *const u8), flip);
            let mut r = vqtbl4q_u8(g[0], idx);
            for gk in &g[1..] {
                idx = vsubq_u8(idx, step);
                r = vqtbx4q_u8(r, *gk, idx);
            }
            vst1q_u8(out.as_mut_ptr().add(i) as *mut u8, r);
        }
    }
    n
}

/// Exact `sum(x - zx)` and `sum((x - zx)^2)` of int8 codes over whole runs of 16 (`zx` in the
/// int8 range, so each difference and square fits i16 and i32): `SSUBL`, `SADALP`, `SMLAL`.
/// Returns how many values it did and the two sums.
pub(crate) fn moments8(x: &[i8], zx: i32) -> (usize, i64, i64) {
    let n = x.len() / 16 * 16;
    if !(-128..=127).contains(&zx) {
        return (0, 0, 0);
    }
    let (mut sum, mut sumsq) = (0i64, 0i64);
    // SAFETY: NEON is baseline on aarch64; loads within the first `n` values
    unsafe {
        let z = vdup_n_s8(zx as i8);
        // at most 1024 runs per flush: a lane's sum of squares stays below 2^31
        for chunk in (0..n).step_by(16 * 1024) {
            let end = (chunk + 16 * 1024).min(n);
            let (mut s, mut q0, mut q1) = (vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0));
            for i in (chunk..end).step_by(16) {
                let v = vld1q_s8(x.as_ptr().add(i));
                let d0 = vsubl_s8(vget_low_s8(v), z);
                let d1 = vsubl_s8(vget_high_s8(v), z);
                s = vpadalq_s16(vpadalq_s16(s, d0), d1);
                q0 = vmlal_s16(
                    vmlal_high_s16(q0, d0, d0),
                    vget_low_s16(d0),
                    vget_low_s16(d0),
                );
                q1 = vmlal_s16(
                    vmlal_high_s16(q1, d1, d1),
                    vget_low_s16(d1),
                    vget_low_s16(d1),
                );
            }
            sum += vaddlvq_s32(s);
            sumsq += vaddlvq_s32(q0) + vaddlvq_s32(q1);
        }
    }
    (n, sum, sumsq)
}

/// Exact `sum(x - zx)` and `sum((x - zx)^2)` of int16 codes over whole runs of 8 (`zx` in the
/// int16 range, so each difference fits i32 and each square i64): `SSUBL`/`SSUBL2`, `ADD`,
/// `SMLAL`/`SMLAL2` into i64 lanes. Returns how many values it did and the two sums.
pub(crate) fn moments16(x: &[i16], zx: i32) -> (usize, i64, i64) {
    let n = x.len() / 8 * 8;
    let Ok(z16) = i16::try_from(zx) else {
        return (0, 0, 0);
    };
    let mut sum = 0i64;
    // SAFETY: NEON is baseline on aarch64; loads within the first `n` values
    let sumsq = unsafe {
        let (z, zq) = (vdup_n_s16(z16), vdupq_n_s16(z16));
        let (mut q0, mut q1) = (vdupq_n_s64(0), vdupq_n_s64(0));
        // at most 4096 runs per flush: a lane adds below 2^18 per run, so its sum stays below 2^30
        for chunk in (0..n).step_by(8 * 4096) {
            let end = (chunk + 8 * 4096).min(n);
            let mut s = vdupq_n_s32(0);
            for i in (chunk..end).step_by(8) {
                let v = vld1q_s16(x.as_ptr().add(i));
                let d0 = vsubl_s16(vget_low_s16(v), z);
                let d1 = vsubl_high_s16(v, zq);
                s = vaddq_s32(s, vaddq_s32(d0, d1));
                q0 = vmlal_high_s32(vmlal_s32(q0, vget_low_s32(d0), vget_low_s32(d0)), d0, d0);
                q1 = vmlal_high_s32(vmlal_s32(q1, vget_low_s32(d1), vget_low_s32(d1)), d1, d1);
            }
            sum += vaddlvq_s32(s);
        }
        // an i64 lane adds below 2^35 per run: exact for any slice that fits in memory
        vaddvq_s64(vaddq_s64(q0, q1))
    };
    (n, sum, sumsq)
}

/// 4-bit weights to int8 on whole runs of 16 bytes (32 codes), as
/// [`super::gemm::unpack4_scalar`]: the low nibble by `SHL` then `SSHR`, the high one by `SSHR`,
/// stored interleaved by `ST2`. Returns how many bytes of `src` it did.
pub(crate) fn unpack4(src: &[u8], dst: &mut [i8]) -> usize {
    let n = src.len().min(dst.len() / 2) / 16 * 16;
    // SAFETY: NEON is baseline on aarch64; bytes i..i + 16 of `src` and codes 2i..2i + 32 of `dst`
    // are within `n`
    unsafe {
        for i in (0..n).step_by(16) {
            let v = vld1q_s8(src.as_ptr().add(i) as *const i8);
            let lo = vshrq_n_s8::<4>(vshlq_n_s8::<4>(v));
            let hi = vshrq_n_s8::<4>(v);
            vst2q_s8(dst.as_mut_ptr().add(2 * i), int8x16x2_t(lo, hi));
        }
    }
    n
}
