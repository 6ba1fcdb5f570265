//! Reshape: the same elements in the same order under another shape (a copy; quantization unchanged).
use super::{movement_pair, Cx, PreparedOp};
use crate::arena::{carve, View};
use crate::format::{Reshape, TRef};
use crate::kernels::{check_len, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Reshaper {
    input: View,
    output: View,
}
pub type Plan<'a> = Reshaper;

pub fn prepare<'a>(r: &Reshape<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let (input, output) = movement_pair(cx, &r.input, &r.output)?;
    cx.same_numel(&input, &output)?;
    Ok(Reshaper { input, output })
}

impl PreparedOp for Reshaper {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let x = io.bytes(self.input.range())?;
        check_len(o.len(), x.len())?;
        o.copy_from_slice(x);
        Ok(())
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
