//! RmsNorm over the channel axis 1 of NC... (`F.normalize(x, dim=1) * g` as UNets of the
//! denoising-diffusion-pytorch family spell RMSNorm): the exact integer sum of squares of every
//! position's channels, then each element scaled by its position's reciprocal RMS and its channel's
//! gamma in f32, plus beta. Images split across threads.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{RmsNorm, TRef};
use crate::kernels::{on_tier, reference::rms, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    eps: f32,
    affine: &'a [u8],
}

pub fn prepare<'a>(r: &RmsNorm<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    if input.dims != output.dims || input.rank != output.rank || input.rank < 2 {
        return Err(cx.err("rms norm shapes"));
    }
    if !(r.eps.is_finite() && r.eps >= 0.0) {
        return Err(cx.err("rms norm eps"));
    }
    Ok(Plan {
        affine: cx.blob(&r.affine, input.dim(1) * 8)?,
        input,
        output,
        eps: r.eps,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let d = self.input.dims();
        // every dimension is positive and their product fits u32 (checked by prepare)
        let s: usize = d[2..self.input.rank()].iter().product();
        let (i, out) = (&self.input, &self.output);
        let (n, c) = (d[0], d[1]);
        crate::with_io!(io.ints(i)?, out_ints(o, out.dtype)?, |x, y| {
            ex.par_rows(n, c * s, 2 * x.len(), y, |r0, nr, part| {
                on_tier(ex.tier, || {
                    rms::rms_norm(
                        x,
                        (n, c, s),
                        (i.zero, i.scale),
                        self.eps,
                        self.affine,
                        (out.scale, out.zero),
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

    /// Against the float RMS norm (within one code), the same bytes on every tier and with two
    /// threads; int8 and int16 either side; the last case has an all-zero position and `eps = 0`,
    /// which gives each channel's beta. (The kernel's x86 level follows `ops_isa`, not the tier:
    /// `rms`'s `rms_norm_avx2_build_equals_the_rule` compares the two builds.)
    #[test]
    fn rms_norm_matches_the_float_reference() {
        let mut rng = Rng::new(11);
        for case in 0..12 {
            let din = if case % 3 == 1 { DType::I16 } else { DType::I8 };
            let dout = if case % 4 == 2 { DType::I16 } else { DType::I8 };
            let (n, c, s) = (1 + case % 2, 1 + case * 5 % 23, 3 + case * 37 % 150);
            let last = case == 11;
            let qx = params(din, uni(&mut rng, -3.0, -0.5), uni(&mut rng, 0.5, 3.0));
            let (lo, hi) = din.code_range();
            let mut x: Vec<i32> = (0..n * c * s).map(|_| lo + (rng.next_u64() % (hi - lo + 1) as u64) as i32).collect();
            if last {
                for ch in 0..c {
                    x[ch * s + 1] = qx.1;
                }
            }
            let gamma: Vec<f32> = (0..c).map(|_| uni(&mut rng, -1.5, 1.5)).collect();
            let beta: Vec<f32> = (0..c).map(|_| uni(&mut rng, -0.5, 0.5)).collect();
            let eps = if last { 0.0 } else { 1e-6f32 };
            let val = |i: usize| (qx.0 * (x[i] - qx.1) as f32) as f64;
            let mut real = vec![0f32; n * c * s];
            for img in 0..n {
                for p in 0..s {
                    let at = |ch: usize| img * c * s + ch * s + p;
                    let ms = (0..c).map(|ch| val(at(ch)).powi(2)).sum::<f64>() / c as f64;
                    let r = if ms + eps as f64 > 0.0 { 1.0 / (ms + eps as f64).sqrt() } else { 0.0 };
                    for ch in 0..c {
                        real[at(ch)] = (val(at(ch)) * r * gamma[ch] as f64 + beta[ch] as f64) as f32;
                    }
                }
            }
            let qo = out_params(&real, dout);
            let mut b = Bench::new();
            let shape = [n as u32, c as u32, s as u32];
            let input = b.tensor(din, &shape, qx.0, qx.1);
            let output = b.tensor(dout, &shape, qo.0, qo.1);
            put_codes(&mut b, &input, din, &x);
            let mut aff = gamma.clone();
            aff.extend(&beta);
            let affine = b.f32s(&aff);
            let rec = Op::RmsNorm(RmsNorm { input, output: output.clone(), eps, affine });
            let mut first = None;
            for tier in tiers() {
                let mut bt = b.clone();
                bt.run_with(rec.clone(), tier);
                let got = get_ints(&mut bt, &output);
                let w = worst(&got, &real, qo, dout);
                assert!(w <= 1, "case {case} {tier:?}: worst {w} codes");
                assert_eq!(*first.get_or_insert(got.clone()), got, "case {case}: {tier:?} differs");
            }
            let mut b2 = b.clone();
            b2.run_threads(rec, Tier::Scalar, 2);
            assert_eq!(first.as_ref(), Some(&get_ints(&mut b2, &output)), "case {case}: threads differ");
            if last {
                let got = first.unwrap_or_default();
                for ch in 0..c {
                    assert_eq!(got[ch * s + 1], quant(beta[ch], qo, dout), "case {case}: channel {ch}");
                }
            }
        }
    }

    /// Hostile records: random shapes either side, eps (negative, NaN, infinite), affine lengths
    /// and values (NaN, infinite), scales and zero points: the check refuses the record or the
    /// run succeeds; nothing panics (`--profile hostile` has overflow checks).
    #[test]
    fn any_accepted_record_runs_and_none_panics() {
        let mut rng = Rng::new(17);
        let odd = [0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e-30, 1e30, 3.0];
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..1500 {
            let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
            let dt = |k: usize| if k.is_multiple_of(2) { DType::I8 } else { DType::I16 };
            let (din, dout) = (dt(pick(2)), dt(pick(2)));
            let (c, s) = (1 + pick(9) as u32, 1 + pick(70) as u32);
            let cy = if pick(8) == 0 { c + 1 } else { c };
            let rank_x: Vec<u32> = if pick(10) == 0 { vec![c] } else { vec![1, c, s] };
            let mut b = Bench::new();
            let zx = if pick(10) == 0 { 70_000 } else { pick(200) as i32 - 100 };
            let input = b.tensor(din, &rank_x, odd[pick(odd.len())].abs().max(1e-3), zx);
            let output = b.tensor(dout, &[1, cy, s], odd[pick(odd.len())].abs().max(1e-6), pick(50) as i32 - 25);
            let n_aff = if pick(6) == 0 { pick(20) } else { 2 * c as usize };
            let aff: Vec<f32> = (0..n_aff).map(|_| if pick(5) == 0 { odd[pick(odd.len())] } else { uni(&mut Rng::new(case), -2.0, 2.0) }).collect();
            let affine = b.f32s(&aff);
            let eps = odd[pick(odd.len())];
            let x: Vec<i8> = (0..b.bytes().len()).map(|_| pick(256) as i8).collect();
            b.bytes().copy_from_slice(bytemuck::cast_slice(&x));
            let rec = Op::RmsNorm(RmsNorm { input, output, eps, affine });
            match b.try_run(rec) {
                Ok(()) => accepted += 1,
                Err(crate::Error::Invalid { .. }) => refused += 1,
                Err(e) => panic!("case {case}: {e}"),
            }
        }
        assert!(accepted > 100 && refused > 100, "{accepted} accepted, {refused} refused");
    }

    fn put_codes(b: &mut Bench, t: &TRef, dtype: DType, x: &[i32]) {
        match dtype {
            DType::I16 => b.put_i16(t, &x.iter().map(|&v| v as i16).collect::<Vec<_>>()),
            _ => b.put_i8(t, &x.iter().map(|&v| v as i8).collect::<Vec<_>>()),
        }
    }
}
