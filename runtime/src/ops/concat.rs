//! Concat along an axis, each input requantized to the output's parameters (a split concat keeps
//! each part at its own scale: its requantization is then to that part's scale).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, Ints, IntsMut, View};
use crate::format::{Concat, Requant, TRef, MAX_CONCAT};
use crate::kernels::{contiguous_strides, on_tier, reference::eltwise, reference::movement, reference::Code, round_shift, Exec};
use crate::{Error, Result};
use heapless::Vec as HVec;

#[derive(Debug, Clone)]
pub struct Joiner {
    parts: HVec<(View, Requant), MAX_CONCAT>,
    output: View,
    axis: usize,
}
pub type Plan<'a> = Joiner;

/// Checks that `inputs` concatenated along `axis` make `output`: equal ranks, equal dimensions
/// except along the axis, whose sizes add up.
pub(crate) fn check_parts(cx: &Cx<'_>, inputs: &[View], output: &View, axis: u8) -> Result<()> {
    let a = axis as usize;
    if inputs.is_empty() || a >= output.rank() {
        return Err(cx.err("concat without inputs or axis out of range"));
    }
    let mut total = 0u64;
    for t in inputs {
        if t.rank != output.rank || (0..output.rank()).any(|d| d != a && t.dims[d] != output.dims[d]) {
            return Err(cx.err("concat shapes"));
        }
        cx.disjoint(output, &[t])?;
        total += t.dims[a] as u64;
    }
    if total != output.dims[a] as u64 {
        return Err(cx.err("concat sizes do not add up"));
    }
    Ok(())
}

pub fn prepare<'a>(r: &Concat<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let output = cx.int(&r.output)?;
    if r.inputs.len() != r.requant.len() {
        return Err(cx.err("concat inputs and requant tables differ"));
    }
    let mut parts = HVec::new();
    let mut views: HVec<View, MAX_CONCAT> = HVec::new();
    for (t, q) in r.inputs.iter().zip(r.requant.iter()) {
        let v = cx.int(t)?;
        cx.requant(q)?;
        // both have the record's capacity
        parts.push((v, *q)).map_err(|_| cx.err("too many concat inputs"))?;
        views.push(v).map_err(|_| cx.err("too many concat inputs"))?;
    }
    check_parts(cx, &views, &output, r.axis)?;
    Ok(Joiner {
        parts,
        output,
        axis: r.axis as usize,
    })
}

impl PreparedOp for Joiner {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let mut o = out_ints(o, self.output.dtype)?;
        let r = self.output.rank();
        let so = contiguous_strides(&self.output.dims()[..r]);
        let zo = self.output.zero as i64;
        let mut at = 0usize;
        for (t, q) in self.parts.iter() {
            let td = t.dims();
            let st = contiguous_strides(&td[..r]);
            let (z, m, s) = (t.zero as i64, q.mult as i64, q.shift.clamp(1, 62));
            let base = at * so[self.axis];
            let requant = |v: i32| round_shift((v as i64 - z) * m, s) + zo;
            // a part already at the output's parameters is copied
            let same = m == 1i64 << s && z == zo;
            let shape = &td[..r];
            if let (Ints::I8(x), IntsMut::I8(y)) = (io.ints(t)?, &mut o) {
                // int8 to int8: the part is one contiguous block of its axis and the ones after
                // it per index of the axes before it, and so is its place in the output (its row
                // of `so[axis - 1]` codes): a copy or a table lookup per block
                let block = (td[self.axis] * st[self.axis]).max(1);
                let row = if self.axis == 0 { block } else { so[self.axis - 1] };
                let mut table = [0u8; 256];
                if !same {
                    for (i, e) in table.iter_mut().enumerate() {
                        *e = i8::sat(requant(i as i32 - 128)) as u8;
                    }
                }
                for (k, xb) in x.chunks_exact(block).enumerate() {
                    let start = k * row + base;
                    let yb = y.get_mut(start..start + block).ok_or(Error::BufferLength { expected: start + block, got: 0 })?;
                    if same {
                        yb.copy_from_slice(xb);
                    } else {
                        eltwise::lut(xb, &table, yb)?;
                    }
                }
                at += td[self.axis];
                continue;
            }
            crate::with_io!(io.ints(t)?, &mut o, |x, y| on_tier(ex.tier, || if same {
                movement::strided_map(x, shape, &st, 0, y, &so, base, |v| Code::sat(Code::get(v) as i64))
            } else {
                movement::strided_map(x, shape, &st, 0, y, &so, base, |v| Code::sat(requant(Code::get(v))))
            }))?;
            at += td[self.axis];
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

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// Two parts with their own parameters requantized to the output's, then transposed back.
    #[test]
    fn concat_requantizes_each_part_and_transpose_permutes() {
        let mut b = Bench::new();
        let q0 = params(DType::I8, -1.0, 1.0);
        let q1 = params(DType::I8, -4.0, 2.0);
        let qo = params(DType::I8, -4.0, 2.0);
        let a = b.tensor(DType::I8, &[1, 2, 3], q0.0, q0.1);
        let c = b.tensor(DType::I8, &[1, 1, 3], q1.0, q1.1);
        let o = b.tensor(DType::I8, &[1, 3, 3], qo.0, qo.1);
        let t = b.tensor(DType::I8, &[1, 3, 3], qo.0, qo.1);
        let (ra, rc) = ([-1.0, -0.5, 0.0, 0.25, 0.5, 1.0], [-4.0f32, 0.0, 2.0]);
        put_real(&mut b, &a, &ra);
        put_real(&mut b, &c, &rc);
        b.run(Op::Concat(Concat {
            inputs: [a.clone(), c.clone()].into_iter().collect(),
            output: o.clone(),
            axis: 1,
            requant: [requant_of((q0.0 / qo.0) as f64), requant_of((q1.0 / qo.0) as f64)]
                .into_iter()
                .collect(),
        }));
        let real: Vec<f32> = ra.iter().chain(&rc).copied().collect();
        let worst = worst(&get_ints(&mut b, &o), &real, qo, DType::I8);
        assert!(worst <= 1, "concat: worst {worst} codes");
        b.run(Op::Transpose(Transpose {
            input: o.clone(),
            output: t.clone(),
            perm: [0u8, 2, 1].into_iter().collect(),
        }));
        let (co, tt) = (get_ints(&mut b, &o), get_ints(&mut b, &t));
        for i in 0..3 {
            for j in 0..3 {
                assert_eq!(tt[j * 3 + i], co[i * 3 + j]);
            }
        }
    }

    /// Parts with axes before the concat axis (attention's memory keys joined to the tokens, per
    /// head): each part's blocks land in their rows of the output, copied where the quantization
    /// is the output's and through the requantization otherwise, int8 and int16.
    #[test]
    fn concat_with_outer_axes_places_every_block() {
        for dt in [DType::I8, DType::I16] {
            for same in [true, false] {
                let mut b = Bench::new();
                let qo = params(dt, -4.0, 2.0);
                let q0 = if same { qo } else { params(dt, -1.0, 1.0) };
                let a = b.tensor(dt, &[3, 2, 2], q0.0, q0.1);
                let c = b.tensor(dt, &[3, 1, 2], qo.0, qo.1);
                let o = b.tensor(dt, &[3, 3, 2], qo.0, qo.1);
                let ra: Vec<f32> = (0..12).map(|i| i as f32 / 6.0 - 1.0).collect();
                let rc: Vec<f32> = (0..6).map(|i| 2.0 - i as f32).collect();
                put_real(&mut b, &a, &ra);
                put_real(&mut b, &c, &rc);
                b.run(Op::Concat(Concat {
                    inputs: [a.clone(), c.clone()].into_iter().collect(),
                    output: o.clone(),
                    axis: 1,
                    requant: [requant_of((q0.0 / qo.0) as f64), requant_of(1.0)]
                        .into_iter()
                        .collect(),
                }));
                let real: Vec<f32> = (0..3)
                    .flat_map(|h| ra[4 * h..4 * h + 4].iter().chain(&rc[2 * h..2 * h + 2]))
                    .copied()
                    .collect();
                let worst = worst(&get_ints(&mut b, &o), &real, qo, dt);
                assert!(worst <= 1, "{dt:?} same {same}: worst {worst} codes");
            }
        }
    }
}
