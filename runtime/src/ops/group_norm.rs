//! GroupNorm over NC... (channel axis 1): exact integer statistics per group, then the per-channel
//! affine `q_out = zo + a_c*(q - zx) + b_c` in 16-bit fixed point. LayerNorm runs as a one-group
//! GroupNorm per token. A split concat's channels keep their own scales (`in_scales`).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{GroupNorm, TRef};
use crate::kernels::{le_f32, on_tier, reference::norm, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    groups: usize,
    eps: f32,
    affine: &'a [u8],
    in_scales: Option<&'a [u8]>,
}

pub fn prepare<'a>(r: &GroupNorm<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    if input.dims != output.dims || input.rank != output.rank || input.rank < 2 {
        return Err(cx.err("groupnorm shapes"));
    }
    let c = input.dim(1);
    if r.groups == 0 || c % r.groups as usize != 0 || !(r.eps.is_finite() && r.eps >= 0.0) {
        return Err(cx.err("groupnorm groups or eps"));
    }
    let in_scales = match &r.in_scales {
        Some(b) => {
            let sc = cx.blob(b, c * 4)?;
            if (0..c).any(|ch| !(le_f32(sc, ch) > 0.0 && le_f32(sc, ch).is_finite())) {
                return Err(cx.err("groupnorm channel scales must be finite and positive"));
            }
            Some(sc)
        }
        None => None,
    };
    Ok(Plan {
        input,
        output,
        groups: r.groups as usize,
        eps: r.eps,
        affine: cx.blob(&r.affine, c * 8)?,
        in_scales,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let d = self.input.dims();
        // every dimension is positive and their product fits u32 (checked by prepare)
        let s: usize = d[2..self.input.rank()].iter().product();
        let (i, out) = (&self.input, &self.output);
        // (image, group) rows split across threads; each computed as in one call
        let (rows, per) = (d[0] * self.groups, d[1] / self.groups.max(1) * s);
        crate::with_io!(io.ints(i)?, out_ints(o, out.dtype)?, |x, y| {
            ex.par_rows(rows, per, 2 * x.len(), y, |r0, nr, part| {
                on_tier(ex.tier, || {
                    norm::group_norm(
                        x,
                        d[0],
                        d[1],
                        s,
                        self.groups,
                        i.zero,
                        i.scale,
                        self.in_scales,
                        self.eps,
                        self.affine,
                        out.scale,
                        out.zero,
                        r0..r0 + nr,
                        part,
                    )
                })
            })
        })
    }
    fn work(&self) -> u64 {
        2 * self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// Cases 6..12: a split concat's input, every channel with its own scale and zero point 0;
    /// cases 12..16: int16 input, int8 output; cases 16..: int16 input and output.
    #[test]
    fn group_norm_matches_the_float_reference() {
        let mut rng = Rng::new(5);
        for case in 0..20 {
            let (split, din) = (case >= 6 && case < 12, if case >= 12 { DType::I16 } else { DType::I8 });
            let dout = if case >= 16 { DType::I16 } else { DType::I8 };
            // the last case is large enough to split across threads
            let (groups, cg, s) = if case == 15 { (8, 2, 9000) } else { (1 + case % 3, 1 + case % 4, 7 + case * 3) };
            let c = groups * cg;
            let mut qx = params(din, uni(&mut rng, -3.0, -0.5), uni(&mut rng, 0.5, 3.0));
            let scl: Vec<f32> = (0..c)
                .map(|_| if split { uni(&mut rng, 0.01, 0.1) } else { qx.0 })
                .collect();
            if split {
                qx.1 = 0;
            }
            let (lo, hi) = din.code_range();
            let x: Vec<i32> = (0..c * s).map(|_| lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32).collect();
            let gamma: Vec<f32> = (0..c).map(|_| uni(&mut rng, 0.5, 1.5)).collect();
            let beta: Vec<f32> = (0..c).map(|_| uni(&mut rng, -0.5, 0.5)).collect();
            let eps = 1e-5f32;
            let val = |i: usize| (scl[i / s] * (x[i] - qx.1) as f32) as f64;
            let mut real = vec![0f32; c * s];
            for g in 0..groups {
                let r = g * cg * s..(g + 1) * cg * s;
                let mean = r.clone().map(val).sum::<f64>() / r.len() as f64;
                let var = r.clone().map(|i| (val(i) - mean).powi(2)).sum::<f64>() / r.len() as f64;
                for i in r {
                    let ch = i / s;
                    real[i] = ((val(i) - mean) / (var + eps as f64).sqrt() * gamma[ch] as f64
                        + beta[ch] as f64) as f32;
                }
            }
            let qo = out_params(&real, dout);
            let mut b = Bench::new();
            let input = b.tensor(din, &[1, c as u32, s as u32], qx.0, qx.1);
            let output = b.tensor(dout, &[1, c as u32, s as u32], qo.0, qo.1);
            match din {
                DType::I16 => b.put_i16(&input, &x.iter().map(|&v| v as i16).collect::<Vec<_>>()),
                _ => b.put_i8(&input, &x.iter().map(|&v| v as i8).collect::<Vec<_>>()),
            }
            let mut aff = gamma.clone();
            aff.extend(&beta);
            let affine = b.f32s(&aff);
            let in_scales = split.then(|| b.f32s(&scl));
            let rec = Op::GroupNorm(GroupNorm {
                input,
                output: output.clone(),
                groups: groups as u32,
                eps,
                affine,
                in_scales,
            });
            let mut b2 = b.clone();
            b.run(rec.clone());
            let got = get_ints(&mut b, &output);
            // split across two threads: the same bytes
            b2.run_threads(rec, Tier::Scalar, 2);
            assert_eq!(get_ints(&mut b2, &output), got, "case {case}: thread counts differ");
            let worst = worst(&got, &real, qo, dout);
            assert!(worst <= 1, "case {case}: worst {worst} codes");
        }
    }
}
