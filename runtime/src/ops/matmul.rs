//! MatMul: the product of two activations (attention scores and values) with zero points on both
//! operands and per-tensor requantization. Per batch, `A`'s rows are staged and `B` is packed as the
//! product engine's weights (`n` rows of depth `k`); the engine's raw sums `sum a·b` take the zero
//! points by expansion, `sum (a-za)(b-zb) = sum ab - zb sum a - za sum b + k za zb`.
//!
//! All int8: the expansion in wrapping i32 (the ring of the specification's loop, so the same bits)
//! inside the engine's epilogue. Any int16 operand or output (a protected attention): `A` staged as
//! int16, an int16 `B` packed as two int8 planes (`stage::pack_operand_i16`, `b = 256 h + l +
//! 128`), the engine's exact sums recombined and the expansion done in i64 here, then the
//! engine's requantization rule ([`Epilogue::code_of`], exact).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_i8, out_ints, View};
use crate::format::{DType, MatMul, MatMulGeom, TRef};
use crate::kernels::gemm::{self, Epilogue, Finish, Pixels, Product, Requants, RowConsts, Tile};
use crate::kernels::reference::Code;
use crate::kernels::{stage, Exec};
use crate::{Error, Result};
use core::ops::Range;

/// Geometry: batch sizes, m, n, k, and element strides (batch0, batch1, row, col) of A, B, out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulDims {
    pub batch: [usize; 2],
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_s: [usize; 4],
    pub b_s: [usize; 4],
    pub o_s: [usize; 4],
}

impl MatMulDims {
    /// The geometry of a record (its checks are `prepare`'s).
    pub fn of(g: &MatMulGeom) -> MatMulDims {
        let u = |s: [u32; 4]| s.map(|v| v as usize);
        MatMulDims {
            batch: g.batch.map(|v| v as usize),
            m: g.m as usize,
            n: g.n as usize,
            k: g.k as usize,
            a_s: u(g.a_strides),
            b_s: u(g.b_strides),
            o_s: u(g.o_strides),
        }
    }
}

/// Scratch parts, each 16-byte aligned: staged `A` (room for i16), packed `B` (room for two planes
/// when `wide`), the row sums of `A` and of `B` (i32; i64 when `wide`).
fn parts(d: &MatMulDims, wide: bool) -> [usize; 4] {
    let a = |v: usize| v.div_ceil(16) * 16;
    let k4 = gemm::pad4(d.k);
    let w = if wide { 2 } else { 1 };
    [a(d.m * k4 * 2), a(w * gemm::pad4(d.n) * k4), a(4 * w * d.m), a(4 * w * d.n)]
}

/// Arena scratch of a product; `wide` when an operand or the output is int16.
pub fn scratch_bytes(d: &MatMulDims, wide: bool) -> usize {
    parts(d, wide).iter().sum()
}

/// Pixels of `A` and packed rows of `B` per engine call of the wide path (its recombination and
/// code buffers, 12 KiB, are on the stack).
const WIDE_PIXELS: usize = 64;
const WIDE_ROWS: usize = 16;

#[derive(Debug, Clone)]
pub struct Multiplier {
    a: View,
    b: View,
    output: View,
    d: MatMulDims,
    mult: i32,
    shift: u8,
    scratch: Range<usize>,
    /// an operand or the output is int16
    wide: bool,
}
pub type Plan<'a> = Multiplier;

pub fn prepare<'a>(r: &MatMul<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let a = cx.int(&r.a)?;
    let b = cx.int(&r.b)?;
    let output = cx.int(&r.output)?;
    let wide = [&a, &b, &output].iter().any(|v| v.dtype == DType::I16);
    cx.disjoint(&output, &[&a, &b])?;
    cx.requant(&r.requant)?;
    let g = &r.geom;
    let [b0, b1] = g.batch;
    cx.fits(&[b0, b1, g.m, g.k], &g.a_strides, a.numel())?;
    cx.fits(&[b0, b1, g.k, g.n], &g.b_strides, b.numel())?;
    cx.distinct(&[b0, b1, g.m, g.n], &g.o_strides, output.numel())?;
    let d = MatMulDims::of(g);
    let k4 = gemm::pad4(d.k) as u64;
    if (d.m as u64 + 2 * gemm::pad4(d.n) as u64) * k4 * 2 > u32::MAX as u64 {
        return Err(cx.err("matmul too large"));
    }
    let scratch = cx.scratch(r.scratch, scratch_bytes(&d, wide), &[&a, &b, &output])?;
    Ok(Multiplier {
        a,
        b,
        output,
        d,
        mult: r.requant.mult,
        shift: r.requant.shift,
        scratch,
        wide,
    })
}

impl PreparedOp for Multiplier {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, s, io) = carve(arena, self.output.range(), Some(self.scratch.clone()))?;
        let s = s.ok_or(misaligned())?;
        if self.wide {
            return crate::with_in!(io.ints(&self.a)?, |x| crate::with_in!(io.ints(&self.b)?, |y| {
                crate::with_out!(out_ints(o, self.output.dtype)?, |out| self.batches(ex, x, y, out, s, Self::batch_wide))
            }));
        }
        self.batches(ex, io.i8(&self.a)?, io.i8(&self.b)?, out_i8(o), s, Self::batch)
    }
    fn work(&self) -> u64 {
        let d = &self.d;
        let planes = if self.wide && self.b.dtype == DType::I16 { 2 } else { 1 };
        [d.batch[0], d.batch[1], d.m, planes * d.n, gemm::pad4(d.k)]
            .iter()
            .fold(1u64, |a, &b| a.saturating_mul(b as u64))
    }
    fn output(&self) -> &View {
        &self.output
    }
}

/// One batch's product: the operands, the output, the offsets of the batch in each, the scratch.
type BatchFn<A, B, U> = fn(&Multiplier, Exec, &[A], &[B], &mut [U], [usize; 3], &mut [u8]) -> Result<()>;

impl Multiplier {
    /// Runs `f` on every batch.
    fn batches<A: Code, B: Code, U: Code>(&self, ex: Exec, x: &[A], y: &[B], out: &mut [U], s: &mut [u8], f: BatchFn<A, B, U>) -> Result<()> {
        let d = &self.d;
        for i0 in 0..d.batch[0] {
            for i1 in 0..d.batch[1] {
                let at = |st: &[usize; 4]| i0 * st[0] + i1 * st[1];
                let base = [at(&d.a_s), at(&d.b_s), at(&d.o_s)];
                f(self, ex, x, y, out, base, s)?;
            }
        }
        Ok(())
    }

    /// One batch: stage `A`, pack `B`, sum their rows, run the engine, correct for the zero points
    /// and requantize.
    fn batch(&self, ex: Exec, x: &[i8], y: &[i8], out: &mut [i8], [ab, bb, ob]: [usize; 3], s: &mut [u8]) -> Result<()> {
        let d = &self.d;
        let (m, n, k, k4) = (d.m, d.n, d.k, gemm::pad4(d.k));
        let [pa, pb, psa, _] = parts(d, false);
        let (sa_b, rest) = s.split_at_mut(pa);
        let (wb, sums) = rest.split_at_mut(pb);
        let (sum_a, sum_b) = sums.split_at_mut(psa);
        let sum_a: &mut [i32] = bytemuck::try_cast_slice_mut(&mut sum_a[..4 * m]).map_err(|_| misaligned())?;
        let bias = &mut sum_b[..4 * n];
        let xa = x.get(ab..).ok_or(bounds())?;
        let yb = y.get(bb..).ok_or(bounds())?;
        let w: &mut [i8] = bytemuck::cast_slice_mut(&mut wb[..gemm::pad4(n) * k4]);
        crate::kernels::on_tier(ex.tier, || stage::pack_operand(yb, n, k, [d.b_s[2], d.b_s[3]], w))?;
        // sum (a-za)(b-zb) = sum ab - zb sum a - za sum b + k za zb: the terms of B's rows (the
        // engine's rows) go into the row bias, those of A's rows (its pixels) into the pixel term
        let (za, zb) = (self.a.zero, self.b.zero);
        let kzz = (k as i32).wrapping_mul(za).wrapping_mul(zb);
        // B's row sums from its packed blocks (zero padding adds nothing; wrapping sums in any
        // order are equal)
        for (g, blocks) in w.chunks_exact(4 * k4).enumerate() {
            let mut rs = [0i32; 4];
            for blk in blocks.chunks_exact(16) {
                for (i, r) in rs.iter_mut().enumerate() {
                    *r = r.wrapping_add(blk[4 * i..4 * i + 4].iter().map(|&v| v as i32).sum::<i32>());
                }
            }
            for (i, &sum) in rs.iter().enumerate() {
                if let Some(bv) = bias.get_mut(4 * (4 * g + i)..4 * (4 * g + i) + 4) {
                    bv.copy_from_slice(&kzz.wrapping_sub(za.wrapping_mul(sum)).to_le_bytes());
                }
            }
        }
        let out = out.get_mut(ob..).ok_or(bounds())?;
        let q = (self.mult, self.shift, self.output.zero);
        if stage::stage_elem(ex.tier, 1) == 2 {
            let st: &mut [i16] = bytemuck::try_cast_slice_mut(&mut sa_b[..m * k4 * 2]).map_err(|_| misaligned())?;
            crate::kernels::on_tier(ex.tier, || stage::rows(ex.tier, xa, m, k, [d.a_s[2], d.a_s[3]], st))?;
            crate::kernels::on_tier(ex.tier, || row_sums(st, k4, zb, false, sum_a));
            product(ex, d, w, st, bias, sum_a, q, out)
        } else {
            let st: &mut [i8] = bytemuck::cast_slice_mut(&mut sa_b[..m * k4]);
            crate::kernels::on_tier(ex.tier, || stage::rows(ex.tier, xa, m, k, [d.a_s[2], d.a_s[3]], st))?;
            let flipped = stage::flips(ex.tier, 1);
            crate::kernels::on_tier(ex.tier, || row_sums(st, k4, zb, flipped, sum_a));
            product(ex, d, w, st, bias, sum_a, q, out)
        }
    }

    /// One batch with an int16 operand or output: `A` staged as int16, `B` packed (two planes if
    /// int16), the row sums of both in i64, then [`Self::wide_part`] over `A`'s rows, split across
    /// threads when the output is token-major.
    fn batch_wide<A: Code, B: Code, U: Code>(&self, ex: Exec, x: &[A], y: &[B], out: &mut [U], [ab, bb, ob]: [usize; 3], s: &mut [u8]) -> Result<()> {
        let d = &self.d;
        let (m, n, k, k4) = (d.m, d.n, d.k, gemm::pad4(d.k));
        let [pa, pb, psa, _] = parts(d, true);
        let (sa_b, rest) = s.split_at_mut(pa);
        let (wb, sums) = rest.split_at_mut(pb);
        let (sum_a, sum_b) = sums.split_at_mut(psa);
        let sum_a: &mut [i64] = bytemuck::try_cast_slice_mut(&mut sum_a[..8 * m]).map_err(|_| misaligned())?;
        let sum_b: &mut [i64] = bytemuck::try_cast_slice_mut(&mut sum_b[..8 * n]).map_err(|_| misaligned())?;
        let xa = x.get(ab..).ok_or(bounds())?;
        let yb = y.get(bb..).ok_or(bounds())?;
        let st: &mut [i16] = bytemuck::try_cast_slice_mut(&mut sa_b[..m * k4 * 2]).map_err(|_| misaligned())?;
        // staging checks that every element of A is in bounds, packing every element of B
        crate::kernels::on_tier(ex.tier, || stage::rows(ex.tier, xa, m, k, [d.a_s[2], d.a_s[3]], st))?;
        let planes = if core::mem::size_of::<B>() == 2 { 2 } else { 1 };
        let w: &mut [i8] = bytemuck::cast_slice_mut(&mut wb[..planes * gemm::pad4(n) * k4]);
        let bs = [d.b_s[2], d.b_s[3]];
        match (bytemuck::try_cast_slice::<B, i8>(yb), bytemuck::try_cast_slice::<B, i16>(yb)) {
            (Ok(y8), _) if planes == 1 => stage::pack_operand(y8, n, k, bs, w)?,
            (_, Ok(y16)) => stage::pack_operand_i16(y16, n, k, bs, w)?,
            _ => return Err(misaligned()),
        }
        // sum (a-za)(b-zb) = sum ab - zb sum a - za sum b + k za zb, where an int16 B's planes give
        // sum ab - 128 sum a: each pixel's term `(128 or 0 - zb) sum a` and each row's
        // `k za zb - za sum b`, every one below 2^62 in magnitude (k < 2^31)
        let (za, zb) = (self.a.zero as i64, self.b.zero as i64);
        let by_a = if planes == 2 { 128 - zb } else { -zb };
        crate::kernels::on_tier(ex.tier, || {
            operand_sums(xa, (m, k), [d.a_s[2], d.a_s[3]], sum_a)?;
            operand_sums(yb, (n, k), [bs[1], bs[0]], sum_b)
        })?;
        for v in sum_a.iter_mut() {
            *v *= by_a;
        }
        for v in sum_b.iter_mut() {
            *v = k as i64 * za * zb - za * *v;
        }
        let (st, sum_a, sum_b, w) = (&*st, &*sum_a, &*sum_b, &*w);
        let out = out.get_mut(ob..).ok_or(bounds())?;
        let macs = m.saturating_mul(planes * n).saturating_mul(k4);
        let part = |m0: usize, nm: usize, part: &mut [U]| self.wide_part(ex, (st, w, planes), (sum_a, sum_b), (m0, nm), part);
        if d.o_s[3] == 1 && d.o_s[2] >= n {
            ex.par_rows(m, d.o_s[2], macs, out, part)
        } else {
            part(0, m, out)
        }
    }

    /// Rows `m0..m0 + nm` of `A` (written to `part`, row `m0` first): for every [`WIDE_PIXELS`] of
    /// them and every [`WIDE_ROWS`] packed rows of `B`, one engine call for the exact sums, each
    /// output row's planes recombined (`256 h + l` per int16 row), then the pixel's and the row's
    /// zero-point terms (`by_pixel`, `by_row`) and the epilogue's exact rule ([`wide_codes`], or
    /// [`Epilogue::code_of`] for a row it cannot take).
    fn wide_part<U: Code>(&self, ex: Exec, (st, w, planes): (&[i16], &[i8], usize), (by_pixel, by_row): (&[i64], &[i64]), (m0, nm): (usize, usize), part: &mut [U]) -> Result<()> {
        let d = &self.d;
        let (n, k4) = (d.n, gemm::pad4(d.k));
        let rows = planes * gemm::pad4(n);
        let epi = Epilogue { bias: &[], requant: Requants::Uniform { mult: self.mult, shift: self.shift }, col: &[], zo: self.output.zero, lo: U::MIN, hi: U::MAX, by_pixel: false };
        let consts = RowConsts { bias: 0, mult: self.mult, shift: self.shift.clamp(1, 62) };
        // the fast rule's terms must stay below 2^59 each (see `wide_codes`)
        let small = |v: &[i64]| v.iter().all(|t| t.unsigned_abs() < 1 << 59);
        let terms_small = small(by_row) && by_pixel.get(m0..m0 + nm).is_some_and(small);
        let mut comb = [[0i64; WIDE_PIXELS]; WIDE_ROWS];
        let mut codes = [[0i32; WIDE_PIXELS]; WIDE_ROWS];
        for p0 in (m0..m0 + nm).step_by(WIDE_PIXELS) {
            let np = WIDE_PIXELS.min(m0 + nm - p0);
            let col = by_pixel.get(p0..p0 + np).ok_or(bounds())?;
            let prod = Product {
                w,
                n: rows,
                stage: st.get(p0 * k4..(p0 + np) * k4).ok_or(bounds())?,
                px: Pixels::rows(np, k4, k4),
                exact: true,
                full_range: true,
                wsum: u64::MAX,
            };
            for r0 in (0..rows).step_by(WIDE_ROWS) {
                let r1 = (r0 + WIDE_ROWS).min(rows);
                // output rows of this call: `first..first + nr`
                let (first, nr) = (r0 / planes, ((r1 - r0) / planes).min(n.saturating_sub(r0 / planes)));
                for c in comb.iter_mut().take(nr) {
                    c[..np].fill(0);
                }
                gemm::run_rows(ex.tier, &prod, (r0, r1), Finish::Sums, |t: &Tile| {
                    for (i, sums) in t.sums.iter().enumerate().take(t.rows) {
                        let local = (t.r0 + i).wrapping_sub(r0);
                        // an int16 B's 8-row groups: the high planes of 4 rows, then their low planes
                        let (slot, f) = if planes == 2 { (local / 8 * 4 + local % 4, if local % 8 < 4 { 256 } else { 1 }) } else { (local, 1) };
                        if let Some(c) = comb.get_mut(slot) {
                            for (v, &s) in c.iter_mut().skip(t.p0).zip(sums.iter().take(t.cols)) {
                                *v += f * s;
                            }
                        }
                    }
                })?;
                for (s, (c, out)) in comb.iter().zip(codes.iter_mut()).take(nr).enumerate() {
                    let r = first + s;
                    let row = *by_row.get(r).ok_or(bounds())?;
                    let rule = (self.mult, consts.shift, self.output.zero, U::MIN, U::MAX);
                    if !(terms_small && crate::kernels::on_tier(ex.tier, || wide_codes(&c[..np], col, row, rule, &mut out[..np]))) {
                        for ((o, &v), &cv) in out[..np].iter_mut().zip(&c[..np]).zip(col) {
                            // a sum beyond i64 (no real product reaches it) is taken in i128
                            // and saturates
                            let v = v.checked_add(cv).and_then(|v| v.checked_add(row)).unwrap_or_else(|| {
                                (v as i128 + cv as i128 + row as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
                            });
                            *o = epi.code_of(&consts, usize::MAX, v, true);
                        }
                    }
                }
                // written pixel by pixel when a pixel's rows are contiguous (a token-major output),
                // otherwise row by row
                let at = |j: usize, s: usize| (p0 + j - m0) * d.o_s[2] + (first + s) * d.o_s[3];
                if d.o_s[3] == 1 {
                    for j in 0..np {
                        let dst = part.get_mut(at(j, 0)..at(j, 0) + nr).ok_or(bounds())?;
                        for (o, c) in dst.iter_mut().zip(&codes) {
                            *o = U::sat(c[j] as i64);
                        }
                    }
                } else {
                    for (s, c) in codes.iter().enumerate().take(nr) {
                        for (j, &v) in c[..np].iter().enumerate() {
                            *part.get_mut(at(j, s)).ok_or(bounds())? = U::sat(v as i64);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The sum of each of the `rows` rows of an operand (`depth` values each, value `q` of row `r` at
/// `x[r * s[0] + q * s[1]]`) into `out`, in i64: along contiguous rows, or over contiguous runs
/// across the rows (plain loops the compiler vectorizes), otherwise element by element.
#[inline(always)]
fn operand_sums<T: Code>(x: &[T], (rows, depth): (usize, usize), s: [usize; 2], out: &mut [i64]) -> Result<()> {
    let out = out.get_mut(..rows).ok_or(bounds())?;
    if s[1] == 1 {
        for (r, o) in out.iter_mut().enumerate() {
            *o = x.get(r * s[0]..r * s[0] + depth).ok_or(bounds())?.iter().map(|v| v.get() as i64).sum();
        }
    } else if s[0] == 1 {
        out.fill(0);
        for q in 0..depth {
            for (o, v) in out.iter_mut().zip(x.get(q * s[1]..q * s[1] + rows).ok_or(bounds())?) {
                *o += v.get() as i64;
            }
        }
    } else {
        for (r, o) in out.iter_mut().enumerate() {
            *o = 0;
            for q in 0..depth {
                *o += x.get(r * s[0] + q * s[1]).ok_or(bounds())?.get() as i64;
            }
        }
    }
    Ok(())
}

/// The exact requantization of one output row of the wide path, `code = clamp(floor((v mult +
/// 2^(shift - 1)) / 2^shift) + zo, lo, hi)` with `v = sums[j] + col[j] + row`
/// ([`Epilogue::code_of`]'s exact rule), in i64 only and in a loop the compiler vectorizes: with
/// `v = 2^31 vh + vl` (`0 <= vl < 2^31`), `v mult + 2^(shift - 1) = 2^31 a + b` where `a = vh mult`
/// and `b = vl mult + 2^(shift - 1)` (|a| < 2^61, |b| < 2^63 for |v| < 2^61), so the floor is `(a +
/// (b >> 31)) >> (shift - 31)` for shifts of 31 and more and `a 2^(31 - shift) + (b >> shift)`
/// below (saturating: a result that large clamps to the same code). The caller keeps `col` and
/// `row` below 2^59 in magnitude; a sum of 2^60 or more makes this return `false` (the row's codes
/// are then not all written by this rule).
#[inline(always)]
fn wide_codes(sums: &[i64], col: &[i64], row: i64, (mult, shift, zo, lo, hi): (i32, u8, i32, i32, i32), out: &mut [i32]) -> bool {
    let (m, shift) = (mult as i64, shift.clamp(1, 62) as u32);
    let half = 1i64 << (shift - 1);
    let (zo, lo, hi) = (zo as i64, lo as i64, hi as i64);
    let big = if shift >= 31 {
        wide_rule(sums, col, (row, m, half), (zo, lo, hi), out, |a, b| a.wrapping_add(b >> 31) >> (shift - 31))
    } else {
        wide_rule(sums, col, (row, m, half), (zo, lo, hi), out, |a, b| a.saturating_mul(1 << (31 - shift)).saturating_add(b >> shift))
    };
    big == 0
}

/// [`wide_codes`]'s loop with its final step `f(a, b)`; nonzero when a sum is 2^60 or more.
#[inline(always)]
fn wide_rule(sums: &[i64], col: &[i64], (row, m, half): (i64, i64, i64), (zo, lo, hi): (i64, i64, i64), out: &mut [i32], f: impl Fn(i64, i64) -> i64) -> u64 {
    let mut big = 0u64;
    for ((o, &s), &c) in out.iter_mut().zip(sums).zip(col) {
        big |= s.unsigned_abs() >> 60;
        let v = s.wrapping_add(c).wrapping_add(row);
        let (vh, vl) = (v >> 31, v & 0x7fff_ffff);
        let y = f(vh.wrapping_mul(m), vl.wrapping_mul(m).wrapping_add(half));
        *o = y.saturating_add(zo).clamp(lo, hi) as i32;
    }
    big
}

/// The engine over one batch's staged `A` and packed `B`. With a token-major output (each row of
/// `A` writes one contiguous run) the rows of `A` are split across threads, with a channel-major
/// one (each row of `B` does) the rows of `B`, each part run exactly as in one call; otherwise one
/// call.
#[allow(clippy::too_many_arguments)]
fn product<S: Code>(ex: Exec, d: &MatMulDims, w: &[i8], st: &[S], bias: &[u8], sum_a: &[i32], q: (i32, u8, i32), out: &mut [i8]) -> Result<()> {
    let (m, n, k4) = (d.m, d.n, gemm::pad4(d.k));
    let macs = m.saturating_mul(n).saturating_mul(k4);
    if d.o_s[3] == 1 && d.o_s[2] >= n {
        ex.par_rows(m, d.o_s[2], macs, out, |m0, nm, part| {
            let prod = Product {
                w,
                n,
                stage: st.get(m0 * k4..(m0 + nm) * k4).ok_or(bounds())?,
                px: Pixels::rows(nm, k4, k4),
                exact: false,
                full_range: true,
                wsum: u64::MAX,
            };
            let col = sum_a.get(m0..m0 + nm).ok_or(bounds())?;
            let mut res = Ok(());
            gemm::run_rows(ex.tier, &prod, (0, gemm::pad4(n)), Finish::Codes(&epilogue(bias, col, q).by_pixel()), |t| {
                if res.is_ok() {
                    res = t.write(part, 0, 1, d.o_s[2]);
                }
            })?;
            res
        })
    } else if d.o_s[2] == 1 && d.o_s[3] >= m {
        // a channel-major output (each row of B writes one contiguous run): B's rows split
        let prod = Product { w, n, stage: st, px: Pixels::rows(m, k4, k4), exact: false, full_range: true, wsum: u64::MAX };
        let epi = epilogue(bias, sum_a, q);
        ex.par_rows(n, d.o_s[3], macs, out, |r0, nr, part| {
            let mut res = Ok(());
            gemm::run_rows(ex.tier, &prod, (r0, gemm::pad4(r0 + nr)), Finish::Codes(&epi), |t| {
                if res.is_ok() {
                    res = t.write(part, r0, d.o_s[3], 1);
                }
            })?;
            res
        })
    } else {
        let prod = Product { w, n, stage: st, px: Pixels::rows(m, k4, k4), exact: false, full_range: true, wsum: u64::MAX };
        let mut res = Ok(());
        gemm::run_rows(ex.tier, &prod, (0, gemm::pad4(n)), Finish::Codes(&epilogue(bias, sum_a, q)), |t| {
            if res.is_ok() {
                res = t.write(out, 0, d.o_s[3], d.o_s[2]);
            }
        })?;
        res
    }
}

/// The epilogue once A's row sums (its pixel terms, `col`) are known: uniform requantization to
/// int8 codes.
fn epilogue<'e>(bias: &'e [u8], col: &'e [i32], (mult, shift, zo): (i32, u8, i32)) -> Epilogue<'e> {
    Epilogue { bias, requant: Requants::Uniform { mult, shift }, col, zo, lo: -128, hi: 127, by_pixel: false }
}

/// `-zb * sum(row)` of each staged row of A (depth `k4`, zero padded), wrapping. Inlined into
/// [`crate::kernels::on_tier`]'s call, so that the sums vectorize for the tier.
#[inline(always)]
fn row_sums<T: Code>(st: &[T], k4: usize, zb: i32, flipped: bool, out: &mut [i32]) {
    for (sv, row) in out.iter_mut().zip(st.chunks_exact(k4.max(1))) {
        let sum = if flipped {
            // codes staged as `x ^ 0x80` (`stage::flips`): as unsigned bytes `x + 128`
            let u = row.iter().fold(0i32, |acc, v| acc.wrapping_add(v.get() as u8 as i32));
            u.wrapping_sub((128 * k4) as i32)
        } else {
            row.iter().fold(0i32, |acc, v| acc.wrapping_add(v.get()))
        };
        *sv = zb.wrapping_mul(sum).wrapping_neg();
    }
}

fn bounds() -> Error {
    Error::BufferLength { expected: 0, got: 0 }
}

fn misaligned() -> Error {
    Error::Invalid {
        op: u32::MAX,
        what: "a tensor view is misaligned",
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// The wide path's vectorizable requantization against the epilogue's exact rule: every
    /// shift, multipliers of either sign (`i32::MIN` too), sums and terms small and near the
    /// rule's bounds, int8 and int16 code ranges; a sum of 2^60 or more is refused, not miscomputed.
    #[test]
    fn wide_codes_equal_the_exact_epilogue_rule() {
        use crate::kernels::gemm::{Epilogue, Requants, RowConsts};
        let mut rng = Rng::new(23);
        let mut pick = |bits: u32| {
            let v = (rng.next_u64() >> (64 - bits.clamp(1, 63))) as i64;
            if rng.next_u64() & 1 == 0 { v } else { -v }
        };
        for case in 0..4000 {
            let shift = 1 + (case % 62) as u8;
            let mult = match case % 7 {
                0 => i32::MIN,
                1 => i32::MAX,
                2 => 0,
                _ => pick(31) as i32,
            };
            let (lo, hi) = if case % 2 == 0 { (-128, 127) } else { (-32768, 32767) };
            let zo = pick(15) as i32 % (hi + 1);
            let row = pick((case % 60) as u32);
            let col: Vec<i64> = (0..37).map(|_| pick(1 + (case % 59) as u32)).collect();
            let sums: Vec<i64> = (0..37).map(|j| if j == 5 && case % 11 == 0 { 1 << 60 } else { pick(1 + (case * 7 % 60) as u32) }).collect();
            let mut got = vec![0i32; 37];
            let ok = super::wide_codes(&sums, &col, row, (mult, shift, zo, lo, hi), &mut got);
            assert_eq!(ok, case % 11 != 0, "case {case}: the bound");
            if !ok {
                continue;
            }
            let epi = Epilogue { bias: &[], requant: Requants::Uniform { mult, shift }, col: &[], zo, lo, hi, by_pixel: false };
            let consts = RowConsts { bias: 0, mult, shift: shift.clamp(1, 62) };
            for j in 0..37 {
                let want = epi.code_of(&consts, usize::MAX, sums[j] + col[j] + row, true);
                assert_eq!(got[j], want, "case {case} element {j}: shift {shift} mult {mult} v {}", sums[j] + col[j] + row);
            }
        }
    }

    /// Attention products: batches, zero points on both operands, `B` read transposed or not, the
    /// output token- or channel-major; all eight combinations of int8 and int16 operands and output
    /// (an int16 `B` as two planes) against float, on every tier and two threads, shapes whose row
    /// count is not a multiple of 4 and ones large enough to split.
    #[test]
    fn matmul_with_zero_points_matches_the_float_reference_on_every_tier() {
        let mut rng = Rng::new(17);
        let t = [DType::I8, DType::I16];
        let combos: Vec<[DType; 3]> = (0..8).map(|c| [t[c & 1], t[(c >> 1) & 1], t[c >> 2]]).collect();
        for case in 0..26 {
            // the last two: int8 throughout, large and channel-major
            let [da, db, dout] = if case >= 24 { [DType::I8; 3] } else { combos[case % 8] };
            let (b0, m, n, k) = if case >= 16 { (2, 56 + case, 45 + case, 70) } else { (
                1 + case % 2,
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 11) as usize,
                1 + (rng.next_u64() % 40) as usize,
            ) };
            let qa = params(da, uni(&mut rng, -2.0, -0.1), uni(&mut rng, 0.1, 2.0));
            let qb = params(db, uni(&mut rng, -2.0, -0.1), uni(&mut rng, 0.1, 2.0));
            let (range_a, range_b) = (da.code_range(), db.code_range());
            let pick = |rng: &mut Rng, (lo, hi): (i32, i32)| lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32;
            let a: Vec<i32> = (0..b0 * m * k).map(|_| pick(&mut rng, range_a)).collect();
            let bv: Vec<i32> = (0..b0 * k * n).map(|_| pick(&mut rng, range_b)).collect();
            let b_s = if case % 2 == 0 { [k * n, 0, n, 1] } else { [k * n, 0, 1, k] };
            // token-major output (split by the rows of A), or channel-major (by those of B)
            let o_s = if case % 3 == 2 || case >= 24 { [m * n, 0, 1, m] } else { [m * n, 0, n, 1] };
            let deq = |c: i32, q: (f32, i32)| (c - q.1) as f64 * q.0 as f64;
            let mut real = vec![0f32; b0 * m * n];
            for bb in 0..b0 {
                for i in 0..m {
                    for j in 0..n {
                        let acc: f64 = (0..k).map(|l| deq(a[bb * m * k + i * k + l], qa) * deq(bv[bb * b_s[0] + l * b_s[2] + j * b_s[3]], qb)).sum();
                        real[bb * m * n + i * o_s[2] + j * o_s[3]] = acc as f32;
                    }
                }
            }
            let qo = out_params(&real, dout);
            let u = |s: [usize; 4]| s.map(|v| v as u32);
            let mut results = vec![];
            for tier in tiers() {
                let mut b = Bench::new();
                let ta = b.tensor(da, &[(b0 * m * k) as u32], qa.0, qa.1);
                let tb = b.tensor(db, &[(b0 * k * n) as u32], qb.0, qb.1);
                let to = b.tensor(dout, &[(b0 * m * n) as u32], qo.0, qo.1);
                for (tt, v) in [(&ta, &a), (&tb, &bv)] {
                    match tt.dtype {
                        DType::I16 => b.put_i16(tt, &v.iter().map(|&c| c as i16).collect::<Vec<_>>()),
                        _ => b.put_i8(tt, &v.iter().map(|&c| c as i8).collect::<Vec<_>>()),
                    }
                }
                let dims = super::MatMulDims { batch: [b0, 1], m, n, k, a_s: [m * k, 0, k, 1], b_s, o_s };
                let wide = [da, db, dout].contains(&DType::I16);
                let scratch = b.scratch(super::scratch_bytes(&dims, wide) as u32);
                let rec = Op::MatMul(MatMul {
                    a: ta,
                    b: tb,
                    output: to.clone(),
                    geom: MatMulGeom { batch: [b0 as u32, 1], m: m as u32, n: n as u32, k: k as u32, a_strides: u([m * k, 0, k, 1]), b_strides: u(b_s), o_strides: u(o_s) },
                    requant: requant_of(qa.0 as f64 * qb.0 as f64 / qo.0 as f64),
                    scratch,
                });
                let snapshot = b.clone();
                b.run_with(rec.clone(), tier);
                results.push(get_ints(&mut b, &to));
                let mut b2 = snapshot;
                b2.run_threads(rec, tier, 2);
                results.push(get_ints(&mut b2, &to));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}: tiers or thread counts differ");
            let worst = worst(&results[0], &real, qo, dout);
            assert!(worst <= 1, "case {case} {da:?}x{db:?}->{dout:?}: worst difference {worst} codes");
        }
    }
}
