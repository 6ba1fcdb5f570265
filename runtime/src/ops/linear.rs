//! Linear: a product with constant weights `[n][k]` over strided activations (linear layers, 1×1
//! convolutions of channel-major tokens), int32 bias with the zero point folded in, per-n requant.
use super::conv2d::rows;
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, Ints, View};
use crate::format::{Linear, TRef};
use crate::kernels::reference::{linear as reference, weight_bytes, Weights};
use crate::kernels::{check_len, packed, Exec, Tier};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    m: usize,
    n: usize,
    k: usize,
    a_s: [usize; 2],
    o_s: [usize; 2],
    weights: Weights<'a>,
    bias: &'a [u8],
    requant: &'a [u8],
}

pub fn prepare<'a>(r: &Linear<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    let g = &r.geom;
    cx.fits(&[g.m, g.k], &g.a_strides, input.numel())?;
    cx.distinct(&[g.m, g.n], &g.o_strides, output.numel())?;
    let (n, k) = (g.n as usize, g.k as usize);
    if n as u64 * k as u64 > u32::MAX as u64 {
        return Err(cx.err("linear weights too large"));
    }
    if r.weight_bits != 8 && r.weight_bits != 4 {
        return Err(cx.err("weights must be 8 or 4 bits"));
    }
    let w = cx.blob(&r.weights, weight_bytes(r.weight_bits, n, k))?;
    Ok(Plan {
        input,
        output,
        m: g.m as usize,
        n,
        k,
        a_s: g.a_strides.map(|s| s as usize),
        o_s: g.o_strides.map(|s| s as usize),
        weights: Weights::from_blob(r.weight_bits, w),
        bias: cx.blob(&r.bias, n * 4)?,
        requant: cx.requant_table(&r.requant, n)?,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let (m, n, k, a_s, o_s) = (self.m, self.n, self.k, self.a_s, self.o_s);
        let (bias, rq, zo) = (self.bias, self.requant, self.output.zero);
        // SIMD tiers: int8 input rows (strided ones packed) and int8 weights -> dot products
        if let (true, Ints::I8(x), Weights::I8(w8)) =
            (ex.tier != Tier::Scalar, io.ints(&self.input)?, self.weights)
        {
            let macs = m.saturating_mul(n).saturating_mul(k);
            return crate::with_out!(out_ints(o, self.output.dtype)?, |y| {
                if o_s[1] == 1 && o_s[0] >= n {
                    // rows of the output (tokens) split across threads
                    ex.par_rows(m, o_s[0], macs, y, |r0, nr, part| {
                        let a = x.get(r0 * a_s[0]..).ok_or(Error::BufferLength {
                            expected: r0 * a_s[0],
                            got: x.len(),
                        })?;
                        packed::linear_dot(ex.tier, a, nr, n, k, a_s, o_s, w8, bias, rq, zo, part)
                    })
                } else if o_s[0] == 1 && o_s[1] >= m {
                    // channel-major output: output channels split across threads
                    check_len(n * k, w8.len())?;
                    ex.par_rows(n, o_s[1], macs, y, |r0, nr, part| {
                        packed::linear_dot(
                            ex.tier,
                            x,
                            m,
                            nr,
                            k,
                            a_s,
                            o_s,
                            &w8[r0 * k..(r0 + nr) * k],
                            rows(bias, r0, nr, 4)?,
                            rows(rq, r0, nr, 8)?,
                            zo,
                            part,
                        )
                    })
                } else {
                    packed::linear_dot(ex.tier, x, m, n, k, a_s, o_s, w8, bias, rq, zo, y)
                }
            });
        }
        let w = self.weights;
        crate::with_io!(io.ints(&self.input)?, out_ints(o, self.output.dtype)?, |x, y| {
            reference::linear(x, m, n, k, a_s, o_s, w, bias, rq, zo, y)
        })
    }
    fn work(&self) -> u64 {
        (self.m as u64 * self.n as u64).saturating_mul(self.k as u64)
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// Token-major (`A [m][k]`, out `[m][n]`) and channel-major (`A [k][m]`, out `[n][m]`: a 1×1
    /// conv of NCHW features) layouts, 8- and 4-bit weights, int8 and int16 activations.
    #[test]
    fn linear_matches_the_float_reference_in_both_layouts_on_every_tier() {
        let mut rng = Rng::new(2);
        for case in 0..16 {
            let (m, n, k) = (
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 40) as usize,
            );
            let (bits, dt) = [(8, DType::I8), (4, DType::I8), (8, DType::I16)][case % 3];
            let (a_s, o_s) = if case % 2 == 0 { ([k, 1], [n, 1]) } else { ([1, m], [1, m]) };
            let qmax = if bits == 4 { 7 } else { 127 };
            let wq: Vec<i8> = (0..n * k)
                .map(|_| ((rng.next_u64() % (2 * qmax + 1)) as i32 - qmax as i32) as i8)
                .collect();
            let ws: Vec<f32> = (0..n).map(|_| uni(&mut rng, 0.001, 0.02)).collect();
            let bias: Vec<f32> = (0..n).map(|_| uni(&mut rng, -0.5, 0.5)).collect();
            let qx = params(dt, -2.0, 3.0);
            let ar: Vec<f32> = (0..m * k).map(|_| uni(&mut rng, -2.0, 3.0)).collect();
            let aq: Vec<f32> = ar.iter().map(|&v| (quant(v, qx, dt) - qx.1) as f32 * qx.0).collect();
            let mut real = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut acc = bias[j] as f64;
                    for l in 0..k {
                        acc += aq[i * a_s[0] + l * a_s[1]] as f64 * (ws[j] * wq[j * k + l] as f32) as f64;
                    }
                    real[i * o_s[0] + j * o_s[1]] = acc as f32;
                }
            }
            let qo = out_params(&real, dt);
            let (bq, rq) = fold(&wq, &ws, &bias, qx, qo.0);
            let mut results = vec![];
            for tier in tiers() {
                let mut b = Bench::new();
                let input = b.tensor(dt, &[(m * k) as u32], qx.0, qx.1);
                let output = b.tensor(dt, &[(m * n) as u32], qo.0, qo.1);
                put_real(&mut b, &input, &ar);
                let weights = if bits == 4 { b.array(&pack4(&wq, n, k)) } else { b.i8s(&wq) };
                let u = |s: [usize; 2]| s.map(|v| v as u32);
                let rec = Op::Linear(Linear {
                    input,
                    output: output.clone(),
                    geom: LinearGeom {
                        m: m as u32,
                        n: n as u32,
                        k: k as u32,
                        a_strides: u(a_s),
                        o_strides: u(o_s),
                    },
                    weight_bits: bits,
                    weights,
                    bias: b.i32s(&bq),
                    requant: b.requants(&rq),
                });
                b.run_with(rec, tier);
                results.push(get_ints(&mut b, &output));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}: tiers differ");
            let worst = worst(&results[0], &real, qo, dt);
            assert!(worst <= 1, "case {case}: worst difference {worst} codes");
        }
    }
}
