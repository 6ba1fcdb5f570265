//! FConcat: f32 concat along an axis (timestep path).
use super::concat::check_parts;
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_f32, View};
use crate::format::{DType, FConcat, TRef, MAX_CONCAT};
use crate::kernels::{contiguous_strides, reference::movement, Exec};
use crate::Result;
use heapless::Vec as HVec;

#[derive(Debug, Clone)]
pub struct Joiner {
    inputs: HVec<View, MAX_CONCAT>,
    output: View,
    axis: usize,
}
pub type Plan<'a> = Joiner;

pub fn prepare<'a>(r: &FConcat<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let output = cx.view(&r.output, DType::F32)?;
    let mut inputs = HVec::new();
    for t in r.inputs.iter() {
        inputs
            .push(cx.view(t, DType::F32)?)
            .map_err(|_| cx.err("too many concat inputs"))?;
    }
    check_parts(cx, &inputs, &output, r.axis)?;
    Ok(Joiner {
        inputs,
        output,
        axis: r.axis as usize,
    })
}

impl PreparedOp for Joiner {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let o = out_f32(o)?;
        let r = self.output.rank();
        let so = contiguous_strides(&self.output.dims()[..r]);
        let mut at = 0usize;
        for t in self.inputs.iter() {
            let td = t.dims();
            let st = contiguous_strides(&td[..r]);
            let base = at * so[self.axis];
            movement::strided_map(io.f32(t)?, &td[..r], &st, 0, o, &so, base, |v: f32| v)?;
            at += td[self.axis];
        }
        Ok(())
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
