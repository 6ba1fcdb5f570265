//! Broadcast: the input repeated along its size-1 dimensions to the output's shape.
use super::{broadcast_strides, gather, movement_pair, Cx, PreparedOp};
use crate::arena::{carve, View};
use crate::format::{Broadcast, TRef, MAX_RANK};
use crate::kernels::{contiguous_strides, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Repeat {
    input: View,
    output: View,
    si: [usize; MAX_RANK],
    so: [usize; MAX_RANK],
}
pub type Plan<'a> = Repeat;

pub fn prepare<'a>(r: &Broadcast<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let (input, output) = movement_pair(cx, &r.input, &r.output)?;
    cx.broadcasts(&input, &output)?;
    Ok(Repeat {
        si: broadcast_strides(&input, &output)?,
        so: contiguous_strides(&output.dims()[..output.rank()]),
        input,
        output,
    })
}

impl PreparedOp for Repeat {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let d = self.output.dims();
        gather(&io, &self.input, o, &d[..self.output.rank()], &self.si, 0, &self.so)
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
