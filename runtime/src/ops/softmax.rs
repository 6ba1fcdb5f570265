//! Softmax along an axis, integer only: `e = exp(max - q)` from a table (u32, 2^20 = 1), then each
//! code `zo + round(r * e / sum)`: probabilities in steps of `1 / r` from the output's zero point,
//! where `r = round(1 / output scale)`. int8 or int16 on either side; int8 to int8 with `r = 255`
//! and zero point -128 (every file before int16 softmax) runs [`softmax::softmax`], any other
//! [`softmax::softmax_any`] (the same integers where both apply).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
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
    steps: softmax::Steps,
    /// int8 to int8 in steps of 1/255 from -128 along the last axis (or with a table above 1):
    /// [`softmax::softmax`] runs
    classic: bool,
}

pub fn prepare<'a>(r: &Softmax<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    let a = r.axis as usize;
    if input.dims != output.dims || input.rank != output.rank || a >= input.rank() {
        return Err(cx.err("softmax shapes or axis"));
    }
    // r = round(1 / scale), at least 1 and at most MAX_STEPS
    let inv = 1.0 / output.scale as f64;
    if !(0.5..softmax::MAX_STEPS as f64 + 0.5).contains(&inv) {
        return Err(cx.err("softmax output scale out of range"));
    }
    let steps = softmax::Steps { r: (inv + 0.5) as u64, zo: output.zero, hi: output.dtype.code_range().1 };
    let wide = input.dtype == DType::I16;
    let exp_table = cx.blob(&r.exp_table, if wide { 2048 } else { 1024 })?;
    let classic = input.dtype == DType::I8
        && output.dtype == DType::I8
        && steps == (softmax::Steps { r: 255, zo: -128, hi: 127 });
    if !classic && !softmax::exp_table_ok(exp_table) {
        return Err(cx.err("softmax exp table entry above 1"));
    }
    let d = &input.dims()[..input.rank()];
    if d[a] as u64 >= 1 << 32 {
        return Err(cx.err("softmax row too long"));
    }
    // over an outer axis the general kernel's column blocks run (the same integers) unless the
    // table is one only the classic kernel takes
    let inner: usize = d[a + 1..].iter().product();
    let classic = classic && (inner == 1 || !softmax::exp_table_ok(exp_table));
    Ok(Plan {
        outer: d[..a].iter().product(),
        len: d[a],
        inner,
        input,
        output,
        exp_table,
        steps,
        classic,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        crate::with_io!(io.ints(&self.input)?, out_ints(o, self.output.dtype)?, |x, y| {
            // slices along the outer axes split across threads; each computed as in one call
            let per = self.len * self.inner;
            ex.par_rows(self.outer, per, 3 * y.len(), y, |o0, no, part| {
                let xs = x.get(o0 * per..(o0 + no) * per).ok_or(crate::Error::BufferLength { expected: (o0 + no) * per, got: x.len() })?;
                let shape = (no, self.len, self.inner);
                on_tier(ex.tier, || {
                    match (self.classic, bytemuck::try_cast_slice::<_, i8>(xs), bytemuck::try_cast_slice_mut::<_, i8>(part)) {
                        (true, Ok(xs), Ok(part)) => softmax::softmax(xs, no, self.len, self.inner, self.exp_table, part),
                        _ => softmax::softmax_any(xs, shape, self.exp_table, self.steps, part),
                    }
                })
            })
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

    /// int16 inputs (the two-level exp table), int16 outputs (steps of 1/65535) and int8 outputs in
    /// finer steps than 1/255 (probabilities that never reach 1), against float, on every tier and
    /// thread count; and the general rule equals the original one on int8 rows.
    #[test]
    fn softmax_of_int16_codes_and_fine_steps_matches_the_float_reference() {
        let mut rng = Rng::new(16);
        let cases = [(DType::I16, DType::I16, 1.0), (DType::I16, DType::I8, 1.0), (DType::I8, DType::I16, 1.0), (DType::I8, DType::I8, 0.3)];
        for (case, &(din, dout, pmax)) in cases.iter().cycle().take(12).enumerate() {
            let (outer, len, inner) = if case >= 8 { (260, 64 + case, 1) } else { (1 + case % 3, 5 + 11 * case, 1 + case % 2) };
            let n = outer * len * inner;
            // real scores in a spread of about 12 (int8: 255 steps, int16: 65535)
            let qx = params(din, -6.0, uni(&mut rng, 2.0, 6.0));
            let real_x: Vec<f32> = (0..n).map(|_| uni(&mut rng, -6.0, 6.0)).collect();
            let xq: Vec<i32> = real_x.iter().map(|&v| quant(v, qx, din)).collect();
            let sx = qx.0 as f64;
            let mut table: Vec<i32> = (0..256).map(|d| ((-(d as f64) * sx).exp() * (1u64 << 20) as f64).round() as i32).collect();
            if din == DType::I16 {
                table.extend((0..256).map(|d| ((-(256.0 * d as f64) * sx).exp() * (1u64 << 20) as f64).round() as i32));
            }
            let mut real = vec![0f32; n];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * len + j) * inner + i;
                    let v = |j: usize| (xq[at(j)] - qx.1) as f64 * sx;
                    let mx = (0..len).map(v).fold(f64::MIN, f64::max);
                    let sum: f64 = (0..len).map(|j| (v(j) - mx).exp()).sum();
                    for j in 0..len {
                        real[at(j)] = ((v(j) - mx).exp() / sum) as f32;
                    }
                }
            }
            let (lo, hi) = dout.code_range();
            let qo = (pmax / (hi - lo) as f32, lo);
            let mut results = vec![];
            for tier in tiers() {
                let mut b = Bench::new();
                let shape = [outer as u32, len as u32, inner as u32];
                let input = b.tensor(din, &shape, qx.0, qx.1);
                let output = b.tensor(dout, &shape, qo.0, qo.1);
                match din {
                    DType::I16 => b.put_i16(&input, &xq.iter().map(|&v| v as i16).collect::<Vec<_>>()),
                    _ => b.put_i8(&input, &xq.iter().map(|&v| v as i8).collect::<Vec<_>>()),
                }
                let exp_table = b.i32s(&table);
                let rec = Op::Softmax(Softmax { input, output: output.clone(), axis: 1, exp_table });
                let mut b2 = b.clone();
                b.run_with(rec.clone(), tier);
                results.push(get_ints(&mut b, &output));
                b2.run_threads(rec, tier, 2);
                results.push(get_ints(&mut b2, &output));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}: tiers or thread counts differ");
            let worst = worst(&results[0], &real, qo, dout);
            assert!(worst <= 1, "case {case} {din:?}->{dout:?}: worst {worst} codes");
        }
        // the general rule on int8 rows with steps of 1/255 from -128 is the original rule
        for case in 0..40 {
            let (outer, len) = (1 + case % 3, 1 + (rng.next_u64() % 600) as usize);
            let x = codes(&mut rng, outer * len);
            let sx = uni(&mut rng, 0.005, 0.1) as f64;
            let table: Vec<u8> = (0..256).flat_map(|d| (((-(d as f64) * sx).exp() * (1u64 << 20) as f64).round() as u32).to_le_bytes()).collect();
            let (mut a, mut g) = (vec![0i8; x.len()], vec![0i8; x.len()]);
            crate::kernels::reference::softmax::softmax(&x, outer, len, 1, &table, &mut a).unwrap();
            let st = crate::kernels::reference::softmax::Steps { r: 255, zo: -128, hi: 127 };
            crate::kernels::reference::softmax::softmax_any(&x, (outer, len, 1), &table, st, &mut g).unwrap();
            assert_eq!(a, g, "case {case}");
        }
    }
}
