//! Quantize: f32 values to integer codes with the output's scale and zero point (round half to even).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{DType, Quantize, TRef};
use crate::kernels::{reference::eltwise, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Quantizer {
    input: View,
    output: View,
}
pub type Plan<'a> = Quantizer;

pub fn prepare<'a>(r: &Quantize<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.view(&r.input, DType::F32)?;
    let output = cx.int(&r.output)?;
    cx.same_numel(&input, &output)?;
    cx.disjoint(&output, &[&input])?;
    Ok(Quantizer { input, output })
}

impl PreparedOp for Quantizer {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let x = io.f32(&self.input)?;
        let (s, z) = (self.output.scale, self.output.zero);
        crate::with_out!(out_ints(o, self.output.dtype)?, |y| eltwise::quantize(x, s, z, y))
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    #[test]
    fn quantize_then_dequantize_round_trips_within_half_a_step() {
        for (dt, tol) in [(DType::I8, 0.5), (DType::I16, 0.5)] {
            let mut b = Bench::new();
            let mut rng = Rng::new(3);
            let x: Vec<f32> = (0..97).map(|_| uni(&mut rng, -2.0, 3.0)).collect();
            let (s, z) = params(dt, -2.0, 3.0);
            let f = b.tensor(DType::F32, &[97], 1.0, 0);
            let q = b.tensor(dt, &[97], s, z);
            let back = b.tensor(DType::F32, &[97], 1.0, 0);
            b.put_f32(&f, &x);
            b.run(Op::Quantize(Quantize { input: f.clone(), output: q.clone() }));
            b.run(Op::Dequantize(Dequantize { input: q, output: back.clone() }));
            for (a, y) in x.iter().zip(b.get_f32(&back)) {
                assert!((a - y).abs() <= tol * s * 1.0001, "{dt:?}: {a} -> {y}");
            }
        }
    }
}
