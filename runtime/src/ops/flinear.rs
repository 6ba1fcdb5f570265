//! FLinear: an f32 product with int8 per-n weights, `out = (sum_k a*wq[n,k]) * scale[n] + bias[n]`
//! (the time MLP and the per-block time projections).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_f32, View};
use crate::format::{DType, FLinear, TRef};
use crate::kernels::{reference::float, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    m: usize,
    n: usize,
    k: usize,
    a_s: [usize; 2],
    o_s: [usize; 2],
    weights: &'a [i8],
    scales: &'a [u8],
    bias: &'a [u8],
}

pub fn prepare<'a>(r: &FLinear<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.view(&r.input, DType::F32)?;
    let output = cx.view(&r.output, DType::F32)?;
    cx.disjoint(&output, &[&input])?;
    let g = &r.geom;
    cx.fits(&[g.m, g.k], &g.a_strides, input.numel())?;
    cx.distinct(&[g.m, g.n], &g.o_strides, output.numel())?;
    let (n, k) = (g.n as usize, g.k as usize);
    if n as u64 * k as u64 > u32::MAX as u64 {
        return Err(cx.err("linear weights too large"));
    }
    Ok(Plan {
        input,
        output,
        m: g.m as usize,
        n,
        k,
        a_s: g.a_strides.map(|s| s as usize),
        o_s: g.o_strides.map(|s| s as usize),
        weights: bytemuck::cast_slice(cx.blob(&r.weights, n * k)?),
        scales: cx.blob(&r.scales, n * 4)?,
        bias: cx.blob(&r.bias, n * 4)?,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let (x, y) = (io.f32(&self.input)?, out_f32(o)?);
        crate::kernels::on_tier(ex.tier, || float::linear_f32(
            x,
            self.m,
            self.n,
            self.k,
            self.a_s,
            self.o_s,
            self.weights,
            self.scales,
            self.bias,
            y,
        ))
    }
    fn work(&self) -> u64 {
        (self.m as u64 * self.n as u64).saturating_mul(self.k as u64)
    }
    fn output(&self) -> &View {
        &self.output
    }
}
