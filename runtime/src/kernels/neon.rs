//! AArch64 tiles of the product engine ([`super::gemm`]), over an int8 stage (int8 activations).
//!
//! A weight block is one 16-byte vector: 4 rows x 4 depth. A pixel's 4 staged depth values are
//! loaded replicated into all four 32-bit lanes (`LD1R`). Then:
//! - `NeonDot` (Armv8.2 dotprod: Cortex-A76/A78, Pi 5 and Orin): `SDOT` adds, per 32-bit lane `r`,
//!   the dot product of row `r`'s 4 weights with the pixel's 4 values: one instruction, 16
//!   multiply-accumulates, and each lane is an output row. Tiles of 8 rows x 8 pixels. Written with
//!   `asm!` (the intrinsics are not stable) and only run after detection;
//! - `Neon` (Armv8.0: Cortex-A72, Pi 4): `SMULL`/`SMLAL` multiply two blocks into i16 lanes (exact:
//!   weights are in [-127, 127], checked at load, so two products stay within i16), `SADALP` adds
//!   lane pairs into i32; the lane pairs of each row are added at the end. Tiles of 8 rows x 4
//!   pixels.
//!
//! Accumulation is wrapping i32, like the specification. Int16 activations run the scalar tiles.
//! An attention operand packed at run time may hold -128 (`Product::full_range`): the Armv8.0 tile
//! then multiplies one block per i16 accumulation.
use super::gemm::{finish_sums, Finish, Pixels, Product, Tile, BLOCK};
use super::reference::Code;
use super::Tier;
use core::arch::aarch64::*;

/// Rows `r0..r1` of `prod` (multiples of 4) over every pixel with the tiles of `tier`.
pub fn product_rows<T: Code>(
    tier: Tier,
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    let stage: &[i8] = match bytemuck::try_cast_slice(prod.stage) {
        Ok(s) if core::mem::size_of::<T>() == 1 => s,
        _ => return super::gemm::scalar_fallback(prod, (r0, r1), finish, out),
    };
    let mut t = Tile::new();
    let px = &prod.px;
    let k4 = px.k4();
    let mut r = r0;
    while r < r1 {
        let two = r + 2 * BLOCK <= r1;
        let w0 = &prod.w[(r / BLOCK) * BLOCK * k4..];
        let w1 = if two { &prod.w[(r / BLOCK + 1) * BLOCK * k4..] } else { w0 };
        let rows = if two { 2 * BLOCK } else { BLOCK };
        if tier == Tier::NeonDot {
            for p0 in (0..px.count).step_by(8) {
                let bases = px.bases(p0);
                // SAFETY: dotprod was detected for this tier; every read is in bounds
                // (`Product::check` bounds the pixels' extent and the weights).
                let s = unsafe { tile_sdot(w0, w1, stage, bases, px) };
                emit(&s, (r, rows, p0, px.count), finish, &mut t, out);
            }
        } else {
            for p0 in (0..px.count).step_by(4) {
                let bases = px.bases(p0);
                // SAFETY: NEON is baseline on aarch64; reads as above.
                let s = unsafe { tile_neon(w0, w1, stage, bases, px, prod.full_range) };
                emit(&s, (r, rows, p0, px.count), finish, &mut t, out);
            }
        }
        r += rows;
    }
}

fn emit<const NP: usize>(
    s: &[[i32; NP]; 2 * BLOCK],
    (r, rows, p0, count): (usize, usize, usize, usize),
    finish: Finish<'_>,
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    (t.r0, t.p0, t.rows, t.cols) = (r, p0, rows, NP.min(count - p0));
    for i in 0..rows {
        for j in 0..NP {
            t.sums[i][j] = s[i][j] as i64;
        }
    }
    finish_sums(t, finish, false);
    out(t);
}

/// Loads 16 bytes at `*p` and steps `*p` past them (one post-indexed `LDR`).
///
/// # Safety
/// 16 bytes at `*p` must be readable.
#[inline(always)]
unsafe fn load_post(p: &mut *const i8) -> int8x16_t {
    let v: int8x16_t;
    // SAFETY: the caller guarantees the bytes are readable
    unsafe {
        core::arch::asm!("ldr {v:q}, [{p}], #16", v = out(vreg) v, p = inout(reg) *p,
            options(nostack, preserves_flags, readonly))
    };
    v
}

/// Loads the 4 bytes at `*p` into every 32-bit lane and steps `*p` past them (post-indexed `LD1R`).
///
/// # Safety
/// 4 bytes at `*p` must be readable.
#[inline(always)]
unsafe fn splat4_post(p: &mut *const i8) -> int8x16_t {
    let v: int8x16_t;
    // SAFETY: the caller guarantees the bytes are readable
    unsafe {
        core::arch::asm!("ld1r {{{v:v}.4s}}, [{p}], #4", v = out(vreg) v, p = inout(reg) *p,
            options(nostack, preserves_flags, readonly))
    };
    v
}

/// The stage offset of every kernel tap, in the weights' depth order.
#[inline(always)]
fn for_each_tap(px: &Pixels, mut f: impl FnMut(usize)) {
    for ky in 0..px.kh {
        for kx in 0..px.kw {
            f(ky * px.tap_row + kx * px.c4);
        }
    }
}

/// 8 rows x 8 pixels with SDOT.
#[inline(never)]
unsafe fn tile_sdot(w0: &[i8], w1: &[i8], x: &[i8], bases: [usize; 8], px: &Pixels) -> [[i32; 8]; 8] {
    let (wp0, wp1, xp) = (w0.as_ptr(), w1.as_ptr(), x.as_ptr());
    // SAFETY (whole function): loads of block `q` of the two weight rows and of 4 staged bytes per
    // pixel are in bounds (see `product_rows`); the caller checked the dotprod feature.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 8]; 2];
        // one pointer per pixel, stepped by 4 per block (post-indexed loads)
        let (mut pa, mut pb) = (wp0, wp1);
        for_each_tap(px, |tap| {
            let mut xs: [*const i8; 8] = core::array::from_fn(|j| xp.add(bases[j] + tap));
            for _ in 0..px.c4 / BLOCK {
                let wa = load_post(&mut pa);
                let wb = load_post(&mut pb);
                for j in 0..8 {
                    let xv = splat4_post(&mut xs[j]);
                    core::arch::asm!(
                        ".arch_extension dotprod",
                        "sdot {a:v}.4s, {w:v}.16b, {x:v}.16b",
                        "sdot {b:v}.4s, {v:v}.16b, {x:v}.16b",
                        a = inout(vreg) acc[0][j],
                        b = inout(vreg) acc[1][j],
                        w = in(vreg) wa,
                        v = in(vreg) wb,
                        x = in(vreg) xv,
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
            }
        });
        let mut s = [[0i32; 8]; 8];
        for j in 0..8 {
            for (b, a) in acc.iter().enumerate() {
                let mut lanes = [0i32; 4];
                vst1q_s32(lanes.as_mut_ptr(), a[j]);
                for i in 0..BLOCK {
                    s[b * BLOCK + i][j] = lanes[i];
                }
            }
        }
        s
    }
}

/// 8 rows x 4 pixels with SMULL/SMLAL/SADALP, two blocks per i16 accumulation (one when the
/// weights may hold -128: two products of -128 x -128 would overflow i16).
#[inline(never)]
unsafe fn tile_neon(w0: &[i8], w1: &[i8], x: &[i8], bases: [usize; 4], px: &Pixels, full_range: bool) -> [[i32; 4]; 8] {
    let (wp0, wp1, xp) = (w0.as_ptr(), w1.as_ptr(), x.as_ptr());
    // SAFETY (whole function): as in `tile_sdot`; NEON is baseline on aarch64.
    unsafe {
        // per block and pixel: rows 0-1 and rows 2-3, each as lane pairs
        let mut lo = [[vdupq_n_s32(0); 4]; 2];
        let mut hi = [[vdupq_n_s32(0); 4]; 2];
        // blocks (w, x) and (v, y) of pixel j: products into i16 lanes (two per lane), lane pairs
        // added into i32 (one asm block per pixel keeps the temporaries few and the accumulators
        // in their registers)
        let mac = |lo: &mut [[int32x4_t; 4]; 2], hi: &mut [[int32x4_t; 4]; 2], j: usize, w: [int8x16_t; 2], x: int8x16_t, v: [int8x16_t; 2], y: int8x16_t| {
            let [l0, l1] = &mut lo[..] else { unreachable!() };
            let [h0, h1] = &mut hi[..] else { unreachable!() };
            core::arch::asm!(
                "smull  {t0:v}.8h, {w0:v}.8b,  {x:v}.8b",
                "smull2 {t1:v}.8h, {w0:v}.16b, {x:v}.16b",
                "smull  {t2:v}.8h, {w1:v}.8b,  {x:v}.8b",
                "smull2 {t3:v}.8h, {w1:v}.16b, {x:v}.16b",
                "smlal  {t0:v}.8h, {v0:v}.8b,  {y:v}.8b",
                "smlal2 {t1:v}.8h, {v0:v}.16b, {y:v}.16b",
                "smlal  {t2:v}.8h, {v1:v}.8b,  {y:v}.8b",
                "smlal2 {t3:v}.8h, {v1:v}.16b, {y:v}.16b",
                "sadalp {l0:v}.4s, {t0:v}.8h",
                "sadalp {h0:v}.4s, {t1:v}.8h",
                "sadalp {l1:v}.4s, {t2:v}.8h",
                "sadalp {h1:v}.4s, {t3:v}.8h",
                w0 = in(vreg) w[0], w1 = in(vreg) w[1], v0 = in(vreg) v[0], v1 = in(vreg) v[1],
                x = in(vreg) x, y = in(vreg) y,
                l0 = inout(vreg) l0[j], h0 = inout(vreg) h0[j], l1 = inout(vreg) l1[j], h1 = inout(vreg) h1[j],
                t0 = out(vreg) _, t1 = out(vreg) _, t2 = out(vreg) _, t3 = out(vreg) _,
                options(pure, nomem, nostack, preserves_flags)
            );
        };
        let zero = vdupq_n_s8(0);
        let (mut pa, mut pb) = (wp0, wp1);
        for_each_tap(px, |tap| {
            let mut xs: [*const i8; 4] = core::array::from_fn(|j| xp.add(bases[j] + tap));
            let blocks = px.c4 / BLOCK;
            let mut b = 0;
            while b < blocks {
                // blocks b and b + 1 (consecutive in the packed weights), or b alone with zero
                // weights as its partner: at the end of a tap, or for full-range weights
                let two = !full_range && b + 1 < blocks;
                let w0 = load_post(&mut pa);
                let v0 = if two { load_post(&mut pa) } else { zero };
                let w1 = load_post(&mut pb);
                let v1 = if two { load_post(&mut pb) } else { zero };
                for j in 0..4 {
                    let x = splat4_post(&mut xs[j]);
                    let y = if two { splat4_post(&mut xs[j]) } else { x };
                    mac(&mut lo, &mut hi, j, [w0, w1], x, [v0, v1], y);
                }
                b += 1 + two as usize;
            }
        });
        let mut s = [[0i32; 4]; 8];
        for j in 0..4 {
            for k in 0..2 {
                let rows = vpaddq_s32(lo[k][j], hi[k][j]);
                let mut lanes = [0i32; 4];
                vst1q_s32(lanes.as_mut_ptr(), rows);
                for i in 0..BLOCK {
                    s[k * BLOCK + i][j] = lanes[i];
                }
            }
        }
        s
    }
}
