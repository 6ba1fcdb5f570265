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
//! - int16 activations (both tiers; the tiles are in [`super::neon_i16`]): `LD4` splits two consecutive weight blocks into four vectors,
//!   one per depth position (lanes: the 4 rows of each block), `SXTL` widens them to i16, and
//!   `SMLAL`/`SMLAL2` by element multiply them by one staged value of the pixel into i32 lanes (one
//!   lane per row). Tiles of 8 rows x 8 pixels.
//!
//! Accumulation is wrapping i32, like the specification. Int16 sums are exact: rows whose sums
//! provably fit i32 ([`super::gemm::fits_i32`]) accumulate in i32 lanes; others add their lanes
//! into i64 every 64 blocks. An attention operand packed at run time may hold -128
//! (`Product::full_range`): the Armv8.0 tile then multiplies one block per i16 accumulation.
//!
//! The epilogue runs on the accumulator vectors (rows in lanes): bias and pixel term added in
//! wrapping i32, `SMULL` by the rows' multipliers into i64, `SRSHL` (a rounding right shift,
//! computed without overflow), a saturating narrow, the zero point added with saturation and the
//! clamp. Every step equals the specification's rule (see `Epi`).
use super::gemm::{finish_sums, fits_i32, Epilogue, Finish, Pixels, Product, Tile, BLOCK};
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
    if let Ok(stage) = bytemuck::try_cast_slice::<T, i16>(prod.stage) {
        if core::mem::size_of::<T>() == 2 {
            if tier == Tier::NeonDot {
                // staged as split bytes (`stage::split_i16`)
                return super::neon_i16::rows_i16_dot(
                    prod,
                    bytemuck::cast_slice(stage),
                    (r0, r1),
                    finish,
                    out,
                );
            }
            return super::neon_i16::rows_i16(prod, stage, (r0, r1), finish, out);
        }
    }
    let stage: &[i8] = match bytemuck::try_cast_slice(prod.stage) {
        Ok(s) if core::mem::size_of::<T>() == 1 => s,
        _ => return super::gemm::scalar_fallback(prod, (r0, r1), finish, out),
    };
    let mut t = Tile::new();
    let px = &prod.px;
    for g in groups(prod, (r0, r1), finish) {
        if tier == Tier::NeonDot {
            for p0 in (0..px.count).step_by(8) {
                // SAFETY: dotprod was detected for this tier; every read is in bounds
                // (`Product::check` bounds the pixels' extent and the weights).
                let s = unsafe { tile_sdot(g.w0, g.w1, stage, px.bases(p0), px) };
                emit(
                    &s,
                    (g.r, g.rows, p0, px.count),
                    finish,
                    g.epi.as_ref(),
                    &mut t,
                    out,
                );
            }
        } else {
            for p0 in (0..px.count).step_by(4) {
                // SAFETY: NEON is baseline on aarch64; reads as above.
                let s = unsafe { tile_neon(g.w0, g.w1, stage, px.bases(p0), px, prod.full_range) };
                emit(
                    &s,
                    (g.r, g.rows, p0, px.count),
                    finish,
                    g.epi.as_ref(),
                    &mut t,
                    out,
                );
            }
        }
    }
}

/// One group of (up to) 8 output rows: its first row, its row count, the packed weights of its
/// two blocks of 4 rows (the first again when there is one) and its epilogue's constants.
pub(super) struct Group<'w> {
    pub(super) r: usize,
    pub(super) rows: usize,
    pub(super) w0: &'w [i8],
    pub(super) w1: &'w [i8],
    pub(super) epi: Option<Epi>,
}

impl Group<'_> {
    /// Whether this group's int16 sums need i64 (exact sums that may not fit i32).
    pub(super) fn wide<T: Code>(
        &self,
        prod: &Product<'_, T>,
        col: u64,
        finish: Finish<'_>,
    ) -> bool {
        let n = BLOCK * prod.px.k4();
        prod.exact
            && !(self.epi.is_some()
                && fits_i32(prod.wsum, col, &self.w0[..n], &self.w1[..n], finish, self.r))
    }
}

/// The row groups of rows `r0..r1` of `prod`.
pub(super) fn groups<'w, 'p, 'f, T: Code>(
    prod: &'w Product<'p, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'f>,
) -> impl Iterator<Item = Group<'w>> + use<'w, 'p, 'f, T> {
    let k4 = prod.px.k4();
    (r0..r1).step_by(2 * BLOCK).map(move |r| {
        // 8 rows, or the last 4 (both blocks then the same)
        let two = r + 2 * BLOCK <= r1;
        let w0 = &prod.w[(r / BLOCK) * BLOCK * k4..];
        let w1 = if two {
            &prod.w[(r / BLOCK + 1) * BLOCK * k4..]
        } else {
            w0
        };
        Group {
            r,
            rows: if two { 2 * BLOCK } else { BLOCK },
            w0,
            w1,
            epi: Epi::new(finish, r),
        }
    })
}

/// Delivers a tile whose exact sums (`total[row][pixel]`, plus `add[row]`) need the scalar epilogue.
pub(super) fn emit_wide<const NP: usize>(
    total: &[[i64; NP]; 8],
    add: &[i64; 8],
    (r, rows, p0, count): (usize, usize, usize, usize),
    finish: Finish<'_>,
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    (t.r0, t.p0, t.rows, t.cols) = (r, p0, rows, NP.min(count - p0));
    for i in 0..rows {
        for j in 0..NP {
            t.sums[i][j] = total[i][j] + add[i];
        }
    }
    finish_sums(t, finish, true);
    out(t);
}

/// The epilogue's constants of 8 rows as vectors (rows in lanes): bias, multiplier, the negated
/// shifts as i64 pairs (for `SRSHL`), zero point and clamp bounds.
pub(super) struct Epi {
    bias: [int32x4_t; 2],
    mult: [int32x4_t; 2],
    nshift: [int64x2_t; 4],
    zo: int32x4_t,
    lo: int32x4_t,
    hi: int32x4_t,
}

impl Epi {
    fn new(finish: Finish<'_>, r: usize) -> Option<Epi> {
        let Finish::Codes(e) = finish else {
            return None;
        };
        let rows: [_; 8] = core::array::from_fn(|i| e.row(r + i));
        let v32 = |f: &dyn Fn(usize) -> i32| -> [int32x4_t; 2] {
            let a: [i32; 8] = core::array::from_fn(f);
            // SAFETY: `a` holds 8 i32
            unsafe { [vld1q_s32(a.as_ptr()), vld1q_s32(a.as_ptr().add(4))] }
        };
        let n: [i64; 8] = core::array::from_fn(|i| -(rows[i].shift as i64));
        // SAFETY: `n` holds 8 i64; NEON is baseline on aarch64
        unsafe {
            Some(Epi {
                bias: v32(&|i| rows[i].bias),
                mult: v32(&|i| rows[i].mult),
                nshift: core::array::from_fn(|k| vld1q_s64(n.as_ptr().add(2 * k))),
                zo: vdupq_n_s32(e.zo),
                lo: vdupq_n_s32(e.lo),
                hi: vdupq_n_s32(e.hi),
            })
        }
    }

    /// Codes of rows `4 b .. 4 b + 4` from their wrapping i32 sums `acc` and the pixel term `col`:
    /// `clamp(round_shift((acc + bias + col) * mult, shift) + zo, lo, hi)`. The product of an i32
    /// by an i32 is exact in i64, `SRSHL` adds the rounding bit without overflow, and a result
    /// beyond i32 saturates to a value the clamp maps to the same bound (|zo| < 2^16).
    #[inline(always)]
    fn codes(&self, acc: int32x4_t, b: usize, col: i32) -> int32x4_t {
        // SAFETY: NEON is baseline on aarch64
        unsafe {
            let v = vaddq_s32(vaddq_s32(acc, self.bias[b]), vdupq_n_s32(col));
            let lo = vrshlq_s64(
                vmull_s32(vget_low_s32(v), vget_low_s32(self.mult[b])),
                self.nshift[2 * b],
            );
            let hi = vrshlq_s64(vmull_high_s32(v, self.mult[b]), self.nshift[2 * b + 1]);
            let n = vqaddq_s32(vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi)), self.zo);
            vminq_s32(vmaxq_s32(n, self.lo), self.hi)
        }
    }
}

/// Delivers a tile from its accumulators (`s[b][j]`: rows `4 b ..`, pixel `j`): codes through the
/// vector epilogue, or the sums.
pub(super) fn emit<const NP: usize>(
    s: &[[int32x4_t; NP]; 2],
    (r, rows, p0, count): (usize, usize, usize, usize),
    finish: Finish<'_>,
    epi: Option<&Epi>,
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    (t.r0, t.p0, t.rows, t.cols) = (r, p0, rows, NP.min(count - p0));
    match (epi, finish) {
        (Some(c), Finish::Codes(e)) => {
            for j in 0..t.cols {
                let col = pixel_term(e, p0 + j);
                for b in 0..rows / BLOCK {
                    // SAFETY: a row of codes holds 8 i32
                    unsafe {
                        vst1q_s32(
                            t.codes[j].as_mut_ptr().add(b * BLOCK),
                            c.codes(s[b][j], b, col),
                        )
                    };
                }
            }
        }
        _ => {
            for (b, group) in s.iter().enumerate().take(rows / BLOCK) {
                for (j, &a) in group.iter().enumerate() {
                    let mut lanes = [0i32; 4];
                    // SAFETY: `lanes` holds 4 i32
                    unsafe { vst1q_s32(lanes.as_mut_ptr(), a) };
                    for i in 0..BLOCK {
                        t.sums[b * BLOCK + i][j] = lanes[i] as i64;
                    }
                }
            }
            finish_sums(t, finish, false);
        }
    }
    out(t);
}

#[inline(always)]
fn pixel_term(e: &Epilogue<'_>, p: usize) -> i32 {
    e.col.get(p).copied().unwrap_or(0)
}

/// Loads 16 bytes at `*p` and steps `*p` past them (one post-indexed `LDR`).
///
/// # Safety
/// 16 bytes at `*p` must be readable.
#[inline(always)]
pub(super) unsafe fn load_post(p: &mut *const i8) -> int8x16_t {
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
pub(super) fn for_each_tap(px: &Pixels, mut f: impl FnMut(usize)) {
    for ky in 0..px.kh {
        for kx in 0..px.kw {
            f(ky * px.tap_row + kx * px.c4);
        }
    }
}

/// 8 rows x 8 pixels with SDOT.
#[inline(never)]
unsafe fn tile_sdot(
    w0: &[i8],
    w1: &[i8],
    x: &[i8],
    bases: [usize; 8],
    px: &Pixels,
) -> [[int32x4_t; 8]; 2] {
    let (wp0, wp1, xp) = (w0.as_ptr(), w1.as_ptr(), x.as_ptr());
    // SAFETY (whole function): loads of block `q` of the two weight rows and of 4 staged bytes per
    // pixel are in bounds (see `product_rows`); the caller checked the dotprod feature.
    unsafe {
        let mut acc = [[vdupq_n_s32(0); 8]; 2];
        // one pointer per pixel, stepped by 4 per block (post-indexed loads)
        let (mut pa, mut pb) = (wp0, wp1);
        for_each_tap(px, |tap| {
            let mut xs: [*const i8; 8] = core::array::from_fn(|j| xp.add(bases[j] + tap));
            let blocks = px.c4 / BLOCK;
            // four blocks at a time: each pixel's 16 staged bytes in one load, used by element
            for _ in 0..blocks / 4 {
                let wa = vld1q_s8_x4(pa);
                let wb = vld1q_s8_x4(pb);
                (pa, pb) = (pa.add(4 * BLOCK * BLOCK), pb.add(4 * BLOCK * BLOCK));
                for j in 0..8 {
                    let xv = load_post(&mut xs[j]);
                    core::arch::asm!(
                        ".arch_extension dotprod",
                        "sdot {a:v}.4s, {w0:v}.16b, {x:v}.4b[0]",
                        "sdot {b:v}.4s, {v0:v}.16b, {x:v}.4b[0]",
                        "sdot {a:v}.4s, {w1:v}.16b, {x:v}.4b[1]",
                        "sdot {b:v}.4s, {v1:v}.16b, {x:v}.4b[1]",
                        "sdot {a:v}.4s, {w2:v}.16b, {x:v}.4b[2]",
                        "sdot {b:v}.4s, {v2:v}.16b, {x:v}.4b[2]",
                        "sdot {a:v}.4s, {w3:v}.16b, {x:v}.4b[3]",
                        "sdot {b:v}.4s, {v3:v}.16b, {x:v}.4b[3]",
                        a = inout(vreg) acc[0][j],
                        b = inout(vreg) acc[1][j],
                        w0 = in(vreg) wa.0, w1 = in(vreg) wa.1, w2 = in(vreg) wa.2, w3 = in(vreg) wa.3,
                        v0 = in(vreg) wb.0, v1 = in(vreg) wb.1, v2 = in(vreg) wb.2, v3 = in(vreg) wb.3,
                        x = in(vreg) xv,
                        options(pure, nomem, nostack, preserves_flags)
                    );
                }
            }
            for _ in 0..blocks % 4 {
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
        acc
    }
}

/// 8 rows x 4 pixels with SMULL/SMLAL/SADALP, two blocks per i16 accumulation (one when the
/// weights may hold -128: two products of -128 x -128 would overflow i16).
#[inline(never)]
unsafe fn tile_neon(
    w0: &[i8],
    w1: &[i8],
    x: &[i8],
    bases: [usize; 4],
    px: &Pixels,
    full_range: bool,
) -> [[int32x4_t; 4]; 2] {
    let (wp0, wp1, xp) = (w0.as_ptr(), w1.as_ptr(), x.as_ptr());
    // SAFETY (whole function): as in `tile_sdot`; NEON is baseline on aarch64.
    unsafe {
        // per block and pixel: rows 0-1 and rows 2-3, each as lane pairs
        let mut lo = [[vdupq_n_s32(0); 4]; 2];
        let mut hi = [[vdupq_n_s32(0); 4]; 2];
        // blocks (w, x) and (v, y) of pixel j: products into i16 lanes (two per lane), lane pairs
        // added into i32 (one asm block per pixel keeps the temporaries few and the accumulators
        // in their registers)
        let mac = |lo: &mut [[int32x4_t; 4]; 2],
                   hi: &mut [[int32x4_t; 4]; 2],
                   j: usize,
                   w: [int8x16_t; 2],
                   x: int8x16_t,
                   v: [int8x16_t; 2],
                   y: int8x16_t| {
            let [l0, l1] = &mut lo[..] else {
                unreachable!()
            };
            let [h0, h1] = &mut hi[..] else {
                unreachable!()
            };
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
        // the lane pairs of each row added: rows 4 k .. 4 k + 4 of pixel j
        core::array::from_fn(|k| core::array::from_fn(|j| vpaddq_s32(lo[k][j], hi[k][j])))
    }
}
