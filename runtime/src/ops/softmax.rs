//! Softmax along an axis, integer only: `e = exp_table[max - q]` (u32, 2^20 = 1),
//! `q_out = round(255 * e / sum) - 128` (output scale 1/255, zero point -128).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_i8, View};
use crate::format::{DType, Softmax, TRef};
use crate::kernels::{on_tier, reference::softmax, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    /// the tensor as `[outer][len][inner]` around the axis
    outer: usize,
    len: usize,
    inner: usize,
    exp_table: &'a [u8],
}

pub fn prepare<'a>(r: &Softmax<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.view(&r.input, DType::I8)?;
    let output = cx.view(&r.output, DType::I8)?;
    cx.disjoint(&output, &[&input])?;
    let a = r.axis as usize;
    if input.dims != output.dims || input.rank != output.rank || a >= input.rank() {
        return Err(cx.err("softmax shapes or axis"));
    }
    let d = &input.dims()[..input.rank()];
    Ok(Plan {
        outer: d[..a].iter().product(),
        len: d[a],
        inner: d[a + 1..].iter().product(),
        input,
        output,
        exp_table: cx.blob(&r.exp_table, 1024)?,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let x = io.i8(&self.input)?;
        let y = out_i8(o);
        // slices along the outer axes split across threads; each computed as in one call
        let per = self.len * self.inner;
        ex.par_rows(self.outer, per, 3 * y.len(), y, |o0, no, part| {
            let xs = x.get(o0 * per..(o0 + no) * per).ok_or(crate::Error::BufferLength { expected: (o0 + no) * per, got: x.len() })?;
            on_tier(ex.tier, || softmax::softmax(xs, no, self.len, self.inner, self.exp_table, part))
        })
    }
    fn work(&self) -> u64 {
        3 * self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    #[test]
    fn softmax_matches_the_float_reference_along_any_axis() {
        let mut rng = Rng::new(6);
        for case in 0..7 {
            // the last case is large enough to split across threads
            let (outer, len, inner) = if case == 6 { (300, 300, 1) } else { (1 + case % 2, 3 + case * 5, 1 + case % 3) };
            let x = codes(&mut rng, outer * len * inner);
            let sx = uni(&mut rng, 0.01, 0.08);
            let table: Vec<i32> = (0..256)
                .map(|d| ((-(d as f64) * sx as f64).exp() * (1u64 << 20) as f64).round() as i32)
                .collect();
            let mut real = vec![0f32; x.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * len + j) * inner + i;
                    let mx = (0..len).map(|j| x[at(j)] as f32 * sx).fold(f32::MIN, f32::max);
                    let e = |j: usize| ((x[at(j)] as f32 * sx - mx) as f64).exp();
                    let sum: f64 = (0..len).map(e).sum();
                    for j in 0..len {
                        real[at(j)] = (e(j) / sum) as f32;
                    }
                }
            }
            let mut b = Bench::new();
            let shape = [outer as u32, len as u32, inner as u32];
            let input = b.tensor(DType::I8, &shape, sx, 0);
            let output = b.tensor(DType::I8, &shape, 1.0 / 255.0, -128);
            b.put_i8(&input, &x);
            let exp_table = b.i32s(&table);
            let rec = Op::Softmax(Softmax { input, output: output.clone(), axis: 1, exp_table });
            let mut b2 = b.clone();
            b.run(rec.clone());
            let got = get_ints(&mut b, &output);
            // split across two threads: the same bytes
            b2.run_threads(rec, Tier::Scalar, 2);
            assert_eq!(get_ints(&mut b2, &output), got, "case {case}: thread counts differ");
            let worst = worst(&got, &real, (1.0 / 255.0, -128), DType::I8);
            assert!(worst <= 1, "case {case}: worst {worst} codes");
        }
    }
}
