//! FBinary: an f32 binary function with broadcasting (timestep path).
use super::{broadcast_strides, Cx, PreparedOp};
use crate::arena::{carve, out_f32, View};
use crate::format::{BinaryFn, DType, FBinary, TRef, MAX_RANK};
use crate::kernels::{contiguous_strides, extent, walk, Exec};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct Function {
    a: View,
    b: View,
    output: View,
    func: BinaryFn,
    sa: [usize; MAX_RANK],
    sb: [usize; MAX_RANK],
    so: [usize; MAX_RANK],
}
pub type Plan<'a> = Function;

pub fn prepare<'a>(r: &FBinary<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let a = cx.view(&r.a, DType::F32)?;
    let b = cx.view(&r.b, DType::F32)?;
    let output = cx.view(&r.output, DType::F32)?;
    cx.disjoint(&output, &[&a, &b])?;
    cx.broadcasts(&a, &output)?;
    cx.broadcasts(&b, &output)?;
    Ok(Function {
        sa: broadcast_strides(&a, &output)?,
        sb: broadcast_strides(&b, &output)?,
        so: contiguous_strides(&output.dims()[..output.rank()]),
        a,
        b,
        output,
        func: r.func,
    })
}

impl PreparedOp for Function {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let (x, y, o) = (io.f32(&self.a)?, io.f32(&self.b)?, out_f32(o)?);
        let d = self.output.dims();
        let shape = &d[..self.output.rank()];
        if extent(shape, &self.sa, 0) > x.len()
            || extent(shape, &self.sb, 0) > y.len()
            || extent(shape, &self.so, 0) > o.len()
        {
            return Err(Error::BufferLength {
                expected: extent(shape, &self.so, 0),
                got: o.len(),
            });
        }
        walk(shape, [&self.sa, &self.sb, &self.so], [0, 0, 0], |[i, j, k]| {
            o[k] = apply(self.func, x[i], y[j])
        });
        Ok(())
    }
    fn work(&self) -> u64 {
        2 * self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

/// The function itself.
pub fn apply(func: BinaryFn, a: f32, b: f32) -> f32 {
    match func {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => a.max(b),
        BinaryFn::Min => a.min(b),
        BinaryFn::Pow => libm::powf(a, b),
    }
}
