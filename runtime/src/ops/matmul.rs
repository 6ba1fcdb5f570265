//! MatMul: int8 × int8 product of two activations (attention scores and values) with zero points on
//! both operands and per-tensor requantization.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_i8, View};
use crate::format::{DType, MatMul, TRef};
use crate::kernels::reference::matmul::MatMulDims;
use crate::kernels::{packed, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Multiplier {
    a: View,
    b: View,
    output: View,
    d: MatMulDims,
    mult: i32,
    shift: u8,
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
    Ok(Multiplier {
        a,
        b,
        output,
        d: MatMulDims {
            batch: [b0 as usize, b1 as usize],
            m: g.m as usize,
            n: g.n as usize,
            k: g.k as usize,
            a_s: u(g.a_strides),
            b_s: u(g.b_strides),
            o_s: u(g.o_strides),
        },
        mult: r.requant.mult,
        shift: r.requant.shift,
    })
}

impl PreparedOp for Multiplier {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        packed::matmul(
            ex.tier,
            io.i8(&self.a)?,
            self.a.zero,
            io.i8(&self.b)?,
            self.b.zero,
            &self.d,
            self.mult,
            self.shift,
            self.output.zero,
            out_i8(o),
        )
    }
    fn work(&self) -> u64 {
        let d = &self.d;
        [d.batch[0], d.batch[1], d.m, d.n, d.k]
            .iter()
            .fold(1u64, |a, &b| a.saturating_mul(b as u64))
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// Attention products: batches, zero points on both operands, `B` read transposed or not.
    #[test]
    fn matmul_with_zero_points_matches_the_float_reference_on_every_tier() {
        let mut rng = Rng::new(3);
        for case in 0..12 {
            let (b0, m, n, k) = (
                1 + case % 3,
                1 + (rng.next_u64() % 7) as usize,
                1 + (rng.next_u64() % 7) as usize,
                1 + (rng.next_u64() % 40) as usize,
            );
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
                });
                b.run_with(rec, tier);
                results.push(get_ints(&mut b, &to));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}: tiers differ");
            let worst = worst(&results[0], &real, qo, DType::I8);
            assert!(worst <= 1, "case {case}: worst difference {worst} codes");
        }
    }
}
