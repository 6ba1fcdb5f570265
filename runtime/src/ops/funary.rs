//! FUnary: an f32 function of the timestep path (sin, cos, exp, log, sqrt, SiLU, ...), elementwise.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_f32, View};
use crate::format::{DType, FUnary, TRef, UnaryFn};
use crate::kernels::{check_len, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Function {
    input: View,
    output: View,
    func: UnaryFn,
}
pub type Plan<'a> = Function;

pub fn prepare<'a>(r: &FUnary<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.view(&r.input, DType::F32)?;
    let output = cx.view(&r.output, DType::F32)?;
    cx.same_numel(&input, &output)?;
    cx.disjoint(&output, &[&input])?;
    Ok(Function {
        input,
        output,
        func: r.func,
    })
}

impl PreparedOp for Function {
    fn run(&self, arena: &mut [u8], _: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let x = io.f32(&self.input)?;
        let o = out_f32(o)?;
        check_len(x.len(), o.len())?;
        for (d, &v) in o.iter_mut().zip(x) {
            *d = apply(self.func, v);
        }
        Ok(())
    }
    fn work(&self) -> u64 {
        8 * self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

/// The function itself (the compiler evaluates it with this too, for tables and the time path).
pub fn apply(func: UnaryFn, v: f32) -> f32 {
    match func {
        UnaryFn::Sin => libm::sinf(v),
        UnaryFn::Cos => libm::cosf(v),
        UnaryFn::Exp => libm::expf(v),
        UnaryFn::Ln => libm::logf(v),
        UnaryFn::Sqrt => libm::sqrtf(v),
        UnaryFn::Rsqrt => 1.0 / libm::sqrtf(v),
        UnaryFn::Recip => 1.0 / v,
        UnaryFn::Neg => -v,
        UnaryFn::Abs => libm::fabsf(v),
        UnaryFn::Square => v * v,
        UnaryFn::Silu => v / (1.0 + libm::expf(-v)),
        UnaryFn::Sigmoid => 1.0 / (1.0 + libm::expf(-v)),
        UnaryFn::Tanh => libm::tanhf(v),
        UnaryFn::Erf => libm::erff(v),
        UnaryFn::Gelu => 0.5 * v * (1.0 + libm::erff(v * core::f32::consts::FRAC_1_SQRT_2)),
        UnaryFn::Identity => v,
    }
}

