//! Lut: any unary function of integer codes (SiLU, GELU, sigmoid, a constant folded in) as a table.
//! int8 input: 256 entries, `out = table[in + 128]`, int8 or little-endian i16 by the output type.
//! int16 input: 257 i32 entries `T[k]` = 256 x output code at input `256k - 32768`, linearly
//! interpolated: `out = round_shift(T[i]*(256-f) + T[i+1]*f, 16)` with `i, f` the high and low bytes
//! of `in + 32768`.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, Ints, IntsMut, View};
use crate::format::{DType, Lut, TRef};
use crate::kernels::{on_tier, reference::eltwise, Exec};
use crate::Result;

/// Table bytes of a LUT for the given input and output types.
pub fn table_bytes(input: DType, output: DType) -> usize {
    match (input, output) {
        (DType::I16, _) => 257 * 4,
        (_, DType::I16) => 512,
        _ => 256,
    }
}

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    table: &'a [u8],
}

pub fn prepare<'a>(r: &Lut<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.same_numel(&input, &output)?;
    cx.disjoint(&output, &[&input])?;
    let table = cx.blob(&r.table, table_bytes(input.dtype, output.dtype))?;
    Ok(Plan {
        input,
        output,
        table,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let t = self.table;
        let (x, y) = (io.ints(&self.input)?, out_ints(o, self.output.dtype)?);
        // runs of RUN elements split across threads (each element on its own: the same bytes)
        const RUN: usize = 4096;
        let n = self.output.numel();
        let part = |o0: usize, len: usize| o0 * RUN..o0 * RUN + len;
        let short = || crate::Error::BufferLength { expected: n, got: 0 };
        match (x, y) {
            (Ints::I8(x), IntsMut::I8(y)) => ex.par_rows(n.div_ceil(RUN), RUN, 2 * n, y, |o0, _, y| {
                on_tier(ex.tier, || eltwise::lut(x.get(part(o0, y.len())).ok_or(short())?, t, y))
            }),
            (Ints::I8(x), IntsMut::I16(y)) => ex.par_rows(n.div_ceil(RUN), RUN, 2 * n, y, |o0, _, y| {
                on_tier(ex.tier, || eltwise::lut_8_16(x.get(part(o0, y.len())).ok_or(short())?, t, y))
            }),
            (Ints::I16(x), IntsMut::I8(y)) => ex.par_rows(n.div_ceil(RUN), RUN, 2 * n, y, |o0, _, y| {
                on_tier(ex.tier, || eltwise::lut_16(x.get(part(o0, y.len())).ok_or(short())?, t, y))
            }),
            (Ints::I16(x), IntsMut::I16(y)) => ex.par_rows(n.div_ceil(RUN), RUN, 2 * n, y, |o0, _, y| {
                on_tier(ex.tier, || eltwise::lut_16(x.get(part(o0, y.len())).ok_or(short())?, t, y))
            }),
        }
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::funary::apply;
    use crate::ops::testutil::*;

    /// The table a compiler builds for `f` from input codes to output codes (every kind).
    fn table(f: impl Fn(f32) -> f32, qi: (f32, i32), qo: (f32, i32), din: DType, dout: DType) -> Vec<u8> {
        let (omin, omax) = dout.code_range();
        let code = |c: i32| (f(qi.0 * (c - qi.1) as f32) / qo.0) as f64 + qo.1 as f64;
        match (din, dout) {
            (DType::I16, _) => (0..=256)
                .flat_map(|k| {
                    let v = code(k * 256 - 32768).clamp(omin as f64, omax as f64);
                    ((v * 256.0).round() as i32).to_le_bytes()
                })
                .collect(),
            (_, DType::I16) => (-128..=127)
                .flat_map(|c| (code(c).round().clamp(omin as f64, omax as f64) as i16).to_le_bytes())
                .collect(),
            _ => (-128..=127).map(|c| code(c).round().clamp(-128.0, 127.0) as i8 as u8).collect(),
        }
    }

    /// SiLU through every input/output type pair against the float function: within one code for
    /// tables of int8 inputs, within 0.5% of the range for the interpolated int16 tables.
    #[test]
    fn silu_tables_match_the_float_function() {
        let silu = |v: f32| apply(UnaryFn::Silu, v);
        for (din, dout) in [(DType::I8, DType::I8), (DType::I8, DType::I16), (DType::I16, DType::I8), (DType::I16, DType::I16)] {
            let qi = params(din, -8.0, 8.0);
            let qo = params(dout, -0.2785, 8.0);
            let (lo, hi) = din.code_range();
            let step = if din == DType::I16 { 7 } else { 1 };
            // every code, repeated: enough values to split across threads
            let xs: Vec<i32> = (lo..=hi).step_by(step).cycle().take(140_000).collect();
            let n = xs.len() as u32;
            let mut b = Bench::new();
            let input = b.tensor(din, &[n], qi.0, qi.1);
            let output = b.tensor(dout, &[n], qo.0, qo.1);
            match din {
                DType::I16 => b.put_i16(&input, &xs.iter().map(|&v| v as i16).collect::<Vec<_>>()),
                _ => b.put_i8(&input, &xs.iter().map(|&v| v as i8).collect::<Vec<_>>()),
            }
            let t = b.array(&table(silu, qi, qo, din, dout));
            let rec = Op::Lut(Lut { input, output: output.clone(), table: t });
            let mut b2 = b.clone();
            b.run(rec.clone());
            let got = get_ints(&mut b, &output);
            b2.run_threads(rec, Tier::Scalar, 2);
            assert_eq!(get_ints(&mut b2, &output), got, "{din:?} -> {dout:?}: thread counts differ");
            let real: Vec<f32> = xs.iter().map(|&c| silu(qi.0 * (c - qi.1) as f32)).collect();
            let worst = worst(&got, &real, qo, dout);
            let tol = if din == DType::I16 && dout == DType::I16 { 330 } else { 1 };
            assert!(worst <= tol, "{din:?} -> {dout:?}: worst {worst} codes");
        }
    }
}
