//! FGather: f32 rows picked from a `rows x cols` table by an index tensor of whole numbers (a
//! class-label embedding on the timestep path): `output[i, :] = table[round(index[i]), :]`.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_f32, View};
use crate::format::{DType, FGather, TRef};
use crate::kernels::{check_len, le_f32, Exec};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    index: View,
    output: View,
    rows: usize,
    cols: usize,
    table: &'a [u8],
}

pub fn prepare<'a>(r: &FGather<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let index = cx.view(&r.index, DType::F32)?;
    let output = cx.view(&r.output, DType::F32)?;
    cx.disjoint(&output, &[&index])?;
    if r.rows == 0 || output.numel() as u64 != index.numel() as u64 * r.cols as u64 {
        return Err(cx.err("gather shapes"));
    }
    let bytes = (r.rows as u64)
        .checked_mul(r.cols as u64)
        .and_then(|v| v.checked_mul(4))
        .filter(|&v| v <= cx.blob.len() as u64)
        .ok_or(cx.err("gather table outside the blob"))?;
    Ok(Plan {
        index,
        output,
        rows: r.rows as usize,
        cols: r.cols as usize,
        table: cx.blob(&r.table, bytes as usize)?,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let o = out_f32(o)?;
        let idx = io.f32(&self.index)?;
        let (rows, cols, tab) = (self.rows, self.cols, self.table);
        check_len(idx.len() * cols, o.len())?;
        for (k, &v) in idx.iter().enumerate() {
            let r = libm::rintf(v);
            if !(r >= 0.0 && (r as usize) < rows) {
                return Err(Error::Input("class label outside the embedding table"));
            }
            let r = r as usize;
            for c in 0..cols {
                o[k * cols + c] = le_f32(tab, r * cols + c);
            }
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
