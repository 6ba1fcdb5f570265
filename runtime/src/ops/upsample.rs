//! Upsample: nearest-neighbour upsampling by integer factors, `out[i] = in[i / (out_dim / in_dim)]`
//! per axis.
use super::{movement_pair, Cx, PreparedOp};
use crate::arena::{carve, out_f32, out_i16, out_i8, View};
use crate::format::{DType, TRef, Upsample};
use crate::kernels::{on_tier, reference::movement, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Repeat {
    input: View,
    output: View,
}
pub type Plan<'a> = Repeat;

pub fn prepare<'a>(r: &Upsample<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let (input, output) = movement_pair(cx, &r.input, &r.output)?;
    if input.rank != output.rank {
        return Err(cx.err("upsample rank"));
    }
    if input.dims.iter().zip(&output.dims).any(|(a, b)| b % a != 0) {
        return Err(cx.err("upsample factors must be integers"));
    }
    Ok(Repeat { input, output })
}

impl PreparedOp for Repeat {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let r = self.input.rank();
        let (id, od) = (self.input.dims(), self.output.dims());
        let (id, od) = (&id[..r], &od[..r]);
        on_tier(ex.tier, || match self.input.dtype {
            DType::I8 => movement::upsample(io.i8(&self.input)?, id, out_i8(o), od),
            DType::I16 => movement::upsample(io.i16(&self.input)?, id, out_i16(o)?, od),
            DType::F32 => movement::upsample(io.f32(&self.input)?, id, out_f32(o)?, od),
        })
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
    fn upsample_repeats_the_nearest_value_in_every_element_type() {
        for dt in [DType::I8, DType::I16, DType::F32] {
            let mut b = Bench::new();
            let x = b.tensor(dt, &[1, 1, 2, 2], 1.0, 0);
            let y = b.tensor(dt, &[1, 1, 4, 4], 1.0, 0);
            b.put_f32(&x, &[0.0; 4]);
            match dt {
                DType::I8 => b.put_i8(&x, &[1, 2, 3, 4]),
                DType::I16 => b.put_i16(&x, &[1, 2, 3, 4]),
                DType::F32 => b.put_f32(&x, &[1.0, 2.0, 3.0, 4.0]),
            }
            b.run(Op::Upsample(Upsample { input: x, output: y.clone() }));
            let got: Vec<i32> = match dt {
                DType::F32 => b.get_f32(&y).iter().map(|&v| v as i32).collect(),
                _ => get_ints(&mut b, &y),
            };
            assert_eq!(got, [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4], "{dt:?}");
        }
    }
}
