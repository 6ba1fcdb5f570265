//! AArch64 tiles of the product engine for int16 activations ([`super::neon`] has the int8 ones
//! and the row groups, epilogue and loads these share): SMLAL by element on both tiers, and on the
//! dotprod tier SDOT over the split stage (`stage::split_i16`).
use super::gemm::{Finish, Pixels, Product, Tile, BLOCK};
use super::neon::{emit, emit_wide, for_each_tap, groups, load_post};
use super::reference::Code;
use core::arch::aarch64::*;

/// Int16 activations, both tiers: 8 x 8 tiles of `tile_i16`.
pub(super) fn rows_i16<T: Code>(
    prod: &Product<'_, T>,
    stage: &[i16],
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    let mut t = Tile::new();
    let px = &prod.px;
    let col = super::gemm::col_max(finish);
    for g in groups(prod, (r0, r1), finish) {
        // exact sums: in i32 lanes when they provably fit, else widened into i64
        let wide = g.wide(prod, col, finish);
        for p0 in (0..px.count).step_by(8) {
            let at = (g.r, g.rows, p0, px.count);
            if wide {
                let mut total = [[0i64; 8]; 8];
                // SAFETY: NEON is baseline on aarch64; reads as in `product_rows`.
                unsafe { tile_i16::<true>(g.w0, g.w1, stage, px.bases(p0), px, &mut total) };
                emit_wide(&total, &[0; 8], at, finish, &mut t, out);
            } else {
                // SAFETY: as above
                let s = unsafe {
                    tile_i16::<false>(g.w0, g.w1, stage, px.bases(p0), px, &mut [[0; 8]; 8])
                };
                emit(&s, at, finish, g.epi.as_ref(), &mut t, out);
            }
        }
    }
}

/// Int16 activations on the dotprod tier: 8 x 4 tiles of `tile_i16_dot` over the split stage.
pub(super) fn rows_i16_dot<T: Code>(
    prod: &Product<'_, T>,
    stage: &[i8],
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    let mut t = Tile::new();
    let px = &prod.px;
    let k4 = px.k4();
    let col = super::gemm::col_max(finish);
    for g in groups(prod, (r0, r1), finish) {
        let wide = g.wide(prod, col, finish);
        // the split stage's offset: 128 times each row's weight sum
        let wsum: [i64; 8] = core::array::from_fn(|i| {
            let w = if i < BLOCK { g.w0 } else { g.w1 };
            w[..BLOCK * k4]
                .chunks_exact(BLOCK * BLOCK)
                .map(|blk| {
                    blk[(i % BLOCK) * BLOCK..][..BLOCK]
                        .iter()
                        .map(|&v| v as i64)
                        .sum::<i64>()
                })
                .sum::<i64>()
                * 128
        });
        let corr: [int32x4_t; 2] = core::array::from_fn(|b| {
            let c: [i32; 4] = core::array::from_fn(|i| wsum[b * BLOCK + i] as i32);
            // SAFETY: `c` holds 4 i32
            unsafe { vld1q_s32(c.as_ptr()) }
        });
        for p0 in (0..px.count).step_by(4) {
            let at = (g.r, g.rows, p0, px.count);
            if wide {
                let mut total = [[0i64; 4]; 8];
                // SAFETY: dotprod was detected for this tier; reads as in `product_rows` (the
                // split stage has the same bytes as the i16 one)
                unsafe { tile_i16_dot::<true>(g.w0, g.w1, stage, px.bases(p0), px, &mut total) };
                emit_wide(&total, &wsum, at, finish, &mut t, out);
            } else {
                // SAFETY: as above
                let mut s = unsafe {
                    tile_i16_dot::<false>(g.w0, g.w1, stage, px.bases(p0), px, &mut [[0; 4]; 8])
                };
                for (v, c) in s.iter_mut().zip(corr) {
                    for v in v.iter_mut() {
                        // SAFETY: NEON is baseline on aarch64
                        *v = unsafe { vaddq_s32(*v, c) };
                    }
                }
                emit(&s, at, finish, g.epi.as_ref(), &mut t, out);
            }
        }
    }
}

/// Blocks an i32 lane of the int16 tile accumulates before it is widened: 64 blocks of 4 products
/// of at most 2^15 * 2^7 stay below 2^31.
const WIDEN_EVERY: usize = 64;

/// 8 rows x 8 pixels over int16 activations with `SMLAL`/`SMLAL2` by element. Returns the wrapping
/// i32 sums (`[b][j]`: rows `4 b ..`, pixel `j`); with `WIDE` adds the exact sums into
/// `total[row][pixel]` instead (every `WIDEN_EVERY` blocks and at the end of each tap).
#[inline(never)]
unsafe fn tile_i16<const WIDE: bool>(
    w0: &[i8],
    w1: &[i8],
    x: &[i16],
    bases: [usize; 8],
    px: &Pixels,
    total: &mut [[i64; 8]; 8],
) -> [[int32x4_t; 8]; 2] {
    let (mut pa, mut pb, xp) = (w0.as_ptr(), w1.as_ptr(), x.as_ptr());
    // SAFETY (whole function): as in `tile_sdot` (a pair of blocks is read only when both are in
    // the tap; a tap's last odd block is copied into a zero-padded buffer first).
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 8]; 2];
        // weights of a pair of blocks: per depth position d, rows 0-3 of the first block in the
        // low half and of the second in the high half, as i16
        let split = |p: *const i8| -> [int16x8_t; 4] {
            let v = vld4_s8(p);
            [vmovl_s8(v.0), vmovl_s8(v.1), vmovl_s8(v.2), vmovl_s8(v.3)]
        };
        // pixel j's 8 staged values x times both row groups' weights: 16 `SMLAL(2)` by element in
        // one asm block (the accumulators stay in registers across the unrolled pixels)
        let mac = |a: &mut int32x4_t,
                   b: &mut int32x4_t,
                   w: &[int16x8_t; 4],
                   v: &[int16x8_t; 4],
                   x: int16x8_t| {
            core::arch::asm!(
                "smlal  {a:v}.4s, {w0:v}.4h, {x:v}.h[0]",
                "smlal  {b:v}.4s, {v0:v}.4h, {x:v}.h[0]",
                "smlal  {a:v}.4s, {w1:v}.4h, {x:v}.h[1]",
                "smlal  {b:v}.4s, {v1:v}.4h, {x:v}.h[1]",
                "smlal  {a:v}.4s, {w2:v}.4h, {x:v}.h[2]",
                "smlal  {b:v}.4s, {v2:v}.4h, {x:v}.h[2]",
                "smlal  {a:v}.4s, {w3:v}.4h, {x:v}.h[3]",
                "smlal  {b:v}.4s, {v3:v}.4h, {x:v}.h[3]",
                "smlal2 {a:v}.4s, {w0:v}.8h, {x:v}.h[4]",
                "smlal2 {b:v}.4s, {v0:v}.8h, {x:v}.h[4]",
                "smlal2 {a:v}.4s, {w1:v}.8h, {x:v}.h[5]",
                "smlal2 {b:v}.4s, {v1:v}.8h, {x:v}.h[5]",
                "smlal2 {a:v}.4s, {w2:v}.8h, {x:v}.h[6]",
                "smlal2 {b:v}.4s, {v2:v}.8h, {x:v}.h[6]",
                "smlal2 {a:v}.4s, {w3:v}.8h, {x:v}.h[7]",
                "smlal2 {b:v}.4s, {v3:v}.8h, {x:v}.h[7]",
                a = inout(vreg) *a, b = inout(vreg) *b,
                w0 = in(vreg) w[0], w1 = in(vreg) w[1], w2 = in(vreg) w[2], w3 = in(vreg) w[3],
                v0 = in(vreg) v[0], v1 = in(vreg) v[1], v2 = in(vreg) v[2], v3 = in(vreg) v[3],
                x = in(vreg_low16) x,
                options(pure, nomem, nostack, preserves_flags)
            );
        };
        let mut flush = |acc: &mut [[int32x4_t; 8]; 2]| {
            if WIDE {
                for (b, group) in acc.iter_mut().enumerate() {
                    for (j, a) in group.iter_mut().enumerate() {
                        let mut lanes = [0i32; 4];
                        vst1q_s32(lanes.as_mut_ptr(), *a);
                        for i in 0..BLOCK {
                            total[b * BLOCK + i][j] += lanes[i] as i64;
                        }
                        *a = vdupq_n_s32(0);
                    }
                }
            }
        };
        let blocks = px.c4 / BLOCK;
        for_each_tap(px, |tap| {
            let xs: [*const i16; 8] = core::array::from_fn(|j| xp.add(bases[j] + tap));
            let mut b = 0;
            let mut since = 0;
            while b + 2 <= blocks {
                let (wa, wb) = (split(pa), split(pb));
                (pa, pb) = (pa.add(2 * BLOCK * BLOCK), pb.add(2 * BLOCK * BLOCK));
                let [a0, a1] = &mut acc;
                for j in 0..8 {
                    let xv = vld1q_s16(xs[j].add(b * BLOCK));
                    mac(&mut a0[j], &mut a1[j], &wa, &wb, xv);
                }
                b += 2;
                since += 2;
                if WIDE && since >= WIDEN_EVERY {
                    flush(&mut acc);
                    since = 0;
                }
            }
            if b < blocks {
                // the tap's last block alone: its partner is zero
                let mut bufa = [0i8; 2 * BLOCK * BLOCK];
                let mut bufb = [0i8; 2 * BLOCK * BLOCK];
                core::ptr::copy_nonoverlapping(pa, bufa.as_mut_ptr(), BLOCK * BLOCK);
                core::ptr::copy_nonoverlapping(pb, bufb.as_mut_ptr(), BLOCK * BLOCK);
                (pa, pb) = (pa.add(BLOCK * BLOCK), pb.add(BLOCK * BLOCK));
                let (wa, wb) = (split(bufa.as_ptr()), split(bufb.as_ptr()));
                let [a0, a1] = &mut acc;
                for j in 0..8 {
                    let xv = vcombine_s16(vld1_s16(xs[j].add(b * BLOCK)), vdup_n_s16(0));
                    mac(&mut a0[j], &mut a1[j], &wa, &wb, xv);
                }
            }
            flush(&mut acc);
        });
        acc
    }
}

/// Blocks the split int16 tile accumulates before it widens: each half's lane then holds at most
/// 1024 x 4 products of 128 x 127, far below 2^31.
const DOT_WIDEN_EVERY: usize = 1024;

/// 8 rows x 4 pixels over a split int16 stage (`stage::split_i16`) with `SDOT` by element: per
/// pixel and pair of blocks one 16-byte load (low bytes and high bytes of both blocks) and 8
/// `SDOT`s into a low and a high accumulator, combined as `256 high + low` (the caller adds the
/// stage's offset, `128 * sum(w)` per row). Returns the wrapping i32 sums (`[b][j]`); with `WIDE`
/// adds the exact sums into `total[row][pixel]` instead.
#[inline(never)]
unsafe fn tile_i16_dot<const WIDE: bool>(
    w0: &[i8],
    w1: &[i8],
    x: &[i8],
    bases: [usize; 4],
    px: &Pixels,
    total: &mut [[i64; 4]; 8],
) -> [[int32x4_t; 4]; 2] {
    let (mut pa, mut pb, xp) = (w0.as_ptr(), w1.as_ptr(), x.as_ptr());
    // SAFETY (whole function): the caller checked dotprod; a pixel's bytes of a block are
    // `2 * 4` at twice its i16 offset, in bounds as the i16 stage was (`Product::check`)
    unsafe {
        let mut lo = [[vdupq_n_s32(0); 4]; 2];
        let mut hi = [[vdupq_n_s32(0); 4]; 2];
        let mut flush = |lo: &mut [[int32x4_t; 4]; 2], hi: &mut [[int32x4_t; 4]; 2]| {
            if WIDE {
                for b in 0..2 {
                    for j in 0..4 {
                        let (mut l, mut h) = ([0i32; 4], [0i32; 4]);
                        vst1q_s32(l.as_mut_ptr(), lo[b][j]);
                        vst1q_s32(h.as_mut_ptr(), hi[b][j]);
                        for i in 0..BLOCK {
                            total[b * BLOCK + i][j] += 256 * h[i] as i64 + l[i] as i64;
                        }
                        (lo[b][j], hi[b][j]) = (vdupq_n_s32(0), vdupq_n_s32(0));
                    }
                }
            }
        };
        let blocks = px.c4 / BLOCK;
        let mut since = 0;
        for_each_tap(px, |tap| {
            let mut xs: [*const i8; 4] = core::array::from_fn(|j| xp.add(2 * (bases[j] + tap)));
            for _ in 0..blocks / 2 {
                let wa = vld1q_s8_x2(pa);
                let wb = vld1q_s8_x2(pb);
                (pa, pb) = (pa.add(2 * BLOCK * BLOCK), pb.add(2 * BLOCK * BLOCK));
                let ([l0, l1], [h0, h1]) = (&mut lo, &mut hi);
                for j in 0..4 {
                    let xv = load_post(&mut xs[j]);
                    core::arch::asm!(
                        ".arch_extension dotprod",
                        "sdot {la:v}.4s, {w0:v}.16b, {x:v}.4b[0]",
                        "sdot {ha:v}.4s, {w0:v}.16b, {x:v}.4b[1]",
                        "sdot {lb:v}.4s, {v0:v}.16b, {x:v}.4b[0]",
                        "sdot {hb:v}.4s, {v0:v}.16b, {x:v}.4b[1]",
                        "sdot {la:v}.4s, {w1:v}.16b, {x:v}.4b[2]",
                        "sdot {ha:v}.4s, {w1:v}.16b, {x:v}.4b[3]",
                        "sdot {lb:v}.4s, {v1:v}.16b, {x:v}.4b[2]",
                        "sdot {hb:v}.4s, {v1:v}.16b, {x:v}.4b[3]",
                        la = inout(vreg) l0[j], ha = inout(vreg) h0[j],
                        lb = inout(vreg) l1[j], hb = inout(vreg) h1[j],
                        w0 = in(vreg) wa.0, w1 = in(vreg) wa.1, v0 = in(vreg) wb.0, v1 = in(vreg) wb.1,
                        x = in(vreg) xv,
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
                since += 2;
                if WIDE && since >= DOT_WIDEN_EVERY {
                    flush(&mut lo, &mut hi);
                    since = 0;
                }
            }
            if blocks % 2 == 1 {
                // the tap's last block: its 8 bytes (low, then high) per pixel
                let wa = load_post(&mut pa);
                let wb = load_post(&mut pb);
                let ([l0, l1], [h0, h1]) = (&mut lo, &mut hi);
                for j in 0..4 {
                    let xv = vcombine_s8(vld1_s8(xs[j]), vdup_n_s8(0));
                    core::arch::asm!(
                        ".arch_extension dotprod",
                        "sdot {la:v}.4s, {w0:v}.16b, {x:v}.4b[0]",
                        "sdot {ha:v}.4s, {w0:v}.16b, {x:v}.4b[1]",
                        "sdot {lb:v}.4s, {v0:v}.16b, {x:v}.4b[0]",
                        "sdot {hb:v}.4s, {v0:v}.16b, {x:v}.4b[1]",
                        la = inout(vreg) l0[j], ha = inout(vreg) h0[j],
                        lb = inout(vreg) l1[j], hb = inout(vreg) h1[j],
                        w0 = in(vreg) wa, v0 = in(vreg) wb,
                        x = in(vreg) xv,
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
                since += 1;
                if WIDE && since >= DOT_WIDEN_EVERY {
                    flush(&mut lo, &mut hi);
                    since = 0;
                }
            }
        });
        flush(&mut lo, &mut hi);
        // 256 high + low, wrapping (exact when the sums fit i32, which is when this is used)
        core::array::from_fn(|b| {
            core::array::from_fn(|j| vaddq_s32(vshlq_n_s32::<8>(hi[b][j]), lo[b][j]))
        })
    }
}
