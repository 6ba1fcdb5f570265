//! Slice: the contiguous range `[start, start + out_len)` along one axis.
use super::{gather, movement_pair, Cx, PreparedOp};
use crate::arena::{carve, View};
use crate::format::{Slice, TRef, MAX_RANK};
use crate::kernels::{contiguous_strides, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Cut {
    input: View,
    output: View,
    si: [usize; MAX_RANK],
    so: [usize; MAX_RANK],
    base: usize,
}
pub type Plan<'a> = Cut;

pub fn prepare<'a>(r: &Slice<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let (input, output) = movement_pair(cx, &r.input, &r.output)?;
    let (a, rank) = (r.axis as usize, input.rank());
    if output.rank() != rank || a >= rank {
        return Err(cx.err("slice rank or axis"));
    }
    for d in 0..rank {
        let ok = if d == a {
            r.start as u64 + output.dims[d] as u64 <= input.dims[d] as u64
        } else {
            input.dims[d] == output.dims[d]
        };
        if !ok {
            return Err(cx.err("slice bounds"));
        }
    }
    let si = contiguous_strides(&input.dims()[..rank]);
    Ok(Cut {
        base: r.start as usize * si[a],
        si,
        so: contiguous_strides(&output.dims()[..rank]),
        input,
        output,
    })
}

impl PreparedOp for Cut {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let d = self.output.dims();
        let shape = &d[..self.output.rank()];
        gather(&io, &self.input, o, shape, &self.si, self.base, &self.so)
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
