//! MatMul: int8 × int8 product of two activations (attention scores and values) with zero points on
//! both operands and per-tensor requantization. Per batch, `A`'s rows are staged and `B` is packed as
//! the product engine's weights (`n` rows of depth `k`); the engine's raw sums `sum a·b` take the
//! zero points by expansion, `sum (a-za)(b-zb) = sum ab - zb sum a - za sum b + k za zb`, all in
//! wrapping i32: the ring of the specification's loop, so the same bits.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_i8, View};
use crate::format::{DType, MatMul, TRef};
use crate::kernels::gemm::{self, Epilogue, Finish, Pixels, Product, Requants};
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

/// Scratch parts, each 16-byte aligned: staged `A` (room for i16), packed `B`, the row sums of `A`
/// and of `B` (i32).
fn parts(d: &MatMulDims) -> [usize; 4] {
    let a = |v: usize| v.div_ceil(16) * 16;
    let k4 = gemm::pad4(d.k);
    [a(d.m * k4 * 2), a(gemm::pad4(d.n) * k4), a(4 * d.m), a(4 * d.n)]
}

pub fn scratch_bytes(d: &MatMulDims) -> usize {
    parts(d).iter().sum()
}

#[derive(Debug, Clone)]
pub struct Multiplier {
    a: View,
    b: View,
    output: View,
    d: MatMulDims,
    mult: i32,
    shift: u8,
    scratch: Range<usize>,
}
pub type Plan<'a> = Multiplier;

pub fn prepare<'a>(r: &MatMul<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let a = cx.view(&r.a, DType::I8)?;
    let b = cx.view(&r.b, DType::I8)?;
    let output = cx.view(&r.output, DType::I8)?;
    cx.disjoint(&output, &[&a, &b])?;
    cx.requant(&r.requant)?;
    let g = &r.geom;
    let [b0, b1] = g.batch;
    cx.fits(&[b0, b1, g.m, g.k], &g.a_strides, a.numel())?;
    cx.fits(&[b0, b1, g.k, g.n], &g.b_strides, b.numel())?;
    cx.distinct(&[b0, b1, g.m, g.n], &g.o_strides, output.numel())?;
    let u = |s: [u32; 4]| s.map(|v| v as usize);
    let d = MatMulDims {
        batch: [b0 as usize, b1 as usize],
        m: g.m as usize,
        n: g.n as usize,
        k: g.k as usize,
        a_s: u(g.a_strides),
        b_s: u(g.b_strides),
        o_s: u(g.o_strides),
    };
    let k4 = gemm::pad4(d.k) as u64;
    if (d.m as u64 + gemm::pad4(d.n) as u64) * k4 * 2 > u32::MAX as u64 {
        return Err(cx.err("matmul too large"));
    }
    let scratch = cx.scratch(r.scratch, scratch_bytes(&d), &[&a, &b, &output])?;
    Ok(Multiplier {
        a,
        b,
        output,
        d,
        mult: r.requant.mult,
        shift: r.requant.shift,
        scratch,
    })
}

impl PreparedOp for Multiplier {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, s, io) = carve(arena, self.output.range(), Some(self.scratch.clone()))?;
        let s = s.ok_or(misaligned())?;
        let (x, y, out) = (io.i8(&self.a)?, io.i8(&self.b)?, out_i8(o));
        let d = &self.d;
        for i0 in 0..d.batch[0] {
            for i1 in 0..d.batch[1] {
                let at = |st: &[usize; 4]| i0 * st[0] + i1 * st[1];
                let base = [at(&d.a_s), at(&d.b_s), at(&d.o_s)];
                self.batch(ex, x, y, out, base, s)?;
            }
        }
        Ok(())
    }
    fn work(&self) -> u64 {
        let d = &self.d;
        [d.batch[0], d.batch[1], d.m, d.n, gemm::pad4(d.k)]
            .iter()
            .fold(1u64, |a, &b| a.saturating_mul(b as u64))
    }
    fn output(&self) -> &View {
        &self.output
    }
}

impl Multiplier {
    /// One batch: stage `A`, pack `B`, sum their rows, run the engine, correct for the zero points
    /// and requantize.
    fn batch(&self, ex: Exec, x: &[i8], y: &[i8], out: &mut [i8], [ab, bb, ob]: [usize; 3], s: &mut [u8]) -> Result<()> {
        let d = &self.d;
        let (m, n, k, k4) = (d.m, d.n, d.k, gemm::pad4(d.k));
        let [pa, pb, psa, _] = parts(d);
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
            row_sums(st, k4, zb, sum_a);
            product(ex, d, w, st, bias, sum_a, q, out)
        } else {
            let st: &mut [i8] = bytemuck::cast_slice_mut(&mut sa_b[..m * k4]);
            crate::kernels::on_tier(ex.tier, || stage::rows(ex.tier, xa, m, k, [d.a_s[2], d.a_s[3]], st))?;
            row_sums(st, k4, zb, sum_a);
            product(ex, d, w, st, bias, sum_a, q, out)
        }
    }
}

/// The engine over one batch's staged `A` and packed `B`. With a token-major output (each row of
/// `A` writes one contiguous run) the rows of `A` are split across threads, each part run exactly
/// as in one call; otherwise one call.
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
            gemm::run_rows(ex.tier, &prod, (0, gemm::pad4(n)), Finish::Codes(&epilogue(bias, col, q)), |t| {
                if res.is_ok() {
                    res = t.write(part, 0, 1, d.o_s[2]);
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
    Epilogue { bias, requant: Requants::Uniform { mult, shift }, col, zo, lo: -128, hi: 127 }
}

/// `-zb * sum(row)` of each staged row of A (depth `k4`, zero padded), wrapping.
fn row_sums<T: Code>(st: &[T], k4: usize, zb: i32, out: &mut [i32]) {
    for (sv, row) in out.iter_mut().zip(st.chunks_exact(k4.max(1))) {
        let sum = row.iter().fold(0i32, |acc, v| acc.wrapping_add(v.get()));
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

    /// Attention products: batches, zero points on both operands, `B` read transposed or not.
    #[test]
    fn matmul_with_zero_points_matches_the_float_reference_on_every_tier() {
        let mut rng = Rng::new(3);
        for case in 0..13 {
            // the last case is large enough to split across threads
            let (b0, m, n, k) = if case == 12 { (2, 72, 64, 70) } else { (
                1 + case % 3,
                1 + (rng.next_u64() % 7) as usize,
                1 + (rng.next_u64() % 7) as usize,
                1 + (rng.next_u64() % 40) as usize,
            ) };
            let qa = params(DType::I8, uni(&mut rng, -2.0, -0.1), uni(&mut rng, 0.1, 2.0));
            let qb = params(DType::I8, uni(&mut rng, -2.0, -0.1), uni(&mut rng, 0.1, 2.0));
            let a = codes(&mut rng, b0 * m * k);
            let bv = codes(&mut rng, b0 * k * n);
            // B stored [k][n] (case even) or [n][k] (odd)
            let b_s = if case % 2 == 0 { [k * n, 0, n, 1] } else { [k * n, 0, 1, k] };
            let deq = |c: i8, q: (f32, i32)| (c as i32 - q.1) as f64 * q.0 as f64;
            let mut real = vec![0f32; b0 * m * n];
            for bb in 0..b0 {
                for i in 0..m {
                    for j in 0..n {
                        let acc: f64 = (0..k)
                            .map(|l| {
                                deq(a[bb * m * k + i * k + l], qa)
                                    * deq(bv[bb * b_s[0] + l * b_s[2] + j * b_s[3]], qb)
                            })
                            .sum();
                        real[bb * m * n + i * n + j] = acc as f32;
                    }
                }
            }
            let qo = out_params(&real, DType::I8);
            let u = |s: [usize; 4]| s.map(|v| v as u32);
            let mut results = vec![];
            for tier in tiers() {
                let mut b = Bench::new();
                let ta = b.tensor(DType::I8, &[(b0 * m * k) as u32], qa.0, qa.1);
                let tb = b.tensor(DType::I8, &[(b0 * k * n) as u32], qb.0, qb.1);
                let to = b.tensor(DType::I8, &[(b0 * m * n) as u32], qo.0, qo.1);
                b.put_i8(&ta, &a);
                b.put_i8(&tb, &bv);
                let dims = super::MatMulDims {
                    batch: [b0, 1],
                    m,
                    n,
                    k,
                    a_s: [m * k, 0, k, 1],
                    b_s,
                    o_s: [m * n, 0, n, 1],
                };
                let scratch = b.scratch(super::scratch_bytes(&dims) as u32);
                let rec = Op::MatMul(MatMul {
                    a: ta,
                    b: tb,
                    output: to.clone(),
                    geom: MatMulGeom {
                        batch: [b0 as u32, 1],
                        m: m as u32,
                        n: n as u32,
                        k: k as u32,
                        a_strides: u([m * k, 0, k, 1]),
                        b_strides: u(b_s),
                        o_strides: u([m * n, 0, n, 1]),
                    },
                    requant: requant_of(qa.0 as f64 * qb.0 as f64 / qo.0 as f64),
                    scratch,
                });
                let snapshot = b.clone();
                b.run_with(rec.clone(), tier);
                results.push(get_ints(&mut b, &to));
                // two threads: the same bytes
                let mut b2 = snapshot;
                b2.run_threads(rec, tier, 2);
                results.push(get_ints(&mut b2, &to));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}: tiers or thread counts differ");
            let worst = worst(&results[0], &real, qo, DType::I8);
            assert!(worst <= 1, "case {case}: worst difference {worst} codes");
        }
    }
}
