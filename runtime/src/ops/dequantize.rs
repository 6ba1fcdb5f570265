//! Dequantize: integer codes to f32 (`scale * (code - zero)`).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_f32, View};
use crate::format::{DType, Dequantize, TRef};
use crate::kernels::{reference::eltwise, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Dequantizer {
    input: View,
    output: View,
}
pub type Plan<'a> = Dequantizer;

pub fn prepare<'a>(r: &Dequantize<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.view(&r.output, DType::F32)?;
    cx.same_numel(&input, &output)?;
    cx.disjoint(&output, &[&input])?;
    Ok(Dequantizer { input, output })
}

impl PreparedOp for Dequantizer {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let y = out_f32(o)?;
        let (s, z) = (self.input.scale, self.input.zero);
        crate::with_in!(io.ints(&self.input)?, |x| eltwise::dequantize(x, s, z, y))
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
