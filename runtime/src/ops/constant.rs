//! Const: copies a constant (integer codes or f32 values) from the blob into the arena.
use super::{Cx, PreparedOp};
use crate::arena::{carve, View};
use crate::format::{Const, TRef};
use crate::kernels::{check_len, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    output: View,
    data: &'a [u8],
}

pub fn prepare<'a>(r: &Const<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let output = cx.any(&r.output)?;
    let data = cx.blob(&r.data, output.range().len())?;
    Ok(Plan { output, data })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, _) = carve(arena, self.output.range(), None)?;
        check_len(o.len(), self.data.len())?;
        o.copy_from_slice(self.data);
        Ok(())
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}
