//! Transpose: an axis permutation, `out.shape[i] = in.shape[perm[i]]`.
use super::{gather, movement_pair, Cx, PreparedOp};
use crate::arena::{carve, View};
use crate::format::{TRef, Transpose, MAX_RANK};
use crate::kernels::{contiguous_strides, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Permute {
    input: View,
    output: View,
    /// input strides in output axis order
    sp: [usize; MAX_RANK],
    so: [usize; MAX_RANK],
}
pub type Plan<'a> = Permute;

pub fn prepare<'a>(r: &Transpose<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let (input, output) = movement_pair(cx, &r.input, &r.output)?;
    let rank = input.rank();
    if r.perm.len() != rank || output.rank() != rank {
        return Err(cx.err("transpose rank"));
    }
    let si = contiguous_strides(&input.dims()[..rank]);
    let mut sp = [0usize; MAX_RANK];
    let mut seen = [false; MAX_RANK];
    for (o, &p) in r.perm.iter().enumerate() {
        let p = p as usize;
        if p >= rank || seen[p] || output.dims[o] != input.dims[p] {
            return Err(cx.err("transpose permutation"));
        }
        seen[p] = true;
        sp[o] = si[p];
    }
    Ok(Permute {
        so: contiguous_strides(&output.dims()[..rank]),
        input,
        output,
        sp,
    })
}

impl PreparedOp for Permute {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let d = self.output.dims();
        gather(&io, &self.input, o, &d[..self.output.rank()], &self.sp, 0, &self.so)
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
