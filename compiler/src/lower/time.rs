//! The timestep path: everything that depends only on the timestep (and scalar extra inputs) stays
//! f32 — sinusoidal embedding, time MLP, per-block projections, in-graph preconditioning, class
//! embeddings — and enters the integer graph as a conv bias or through a quantize op. Also the
//! records of constants and embedding lookups.
use super::elementwise::{fold_bias, unary_fn};
use super::movement::lower_movement;
use super::product::{lower_linear, plan_einsum};
use super::{f32s, shape_of, Ctx, Val};
use crate::ir::*;
use crate::quant::QuantCx;
use anyhow::{anyhow, bail, Result};
use dmq_runtime::format::{self as wire, BinaryFn, DType, Op, MAX_CONCAT};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::einsum::EinSum;

pub(super) fn lower_time(cx: &mut Ctx, node: &TypedNode, ins: &[Val]) -> Result<Val> {
    let model = cx.model;
    let oshape = shape_of(model, node.id.into())?;
    let name = node.name.clone();
    let opname = node.op.name().to_string();
    let time = |v: &Val| if let Val::Time(t) = v { Some(*t) } else { None };
    if ins.len() == 1 {
        let x = time(&ins[0]).unwrap();
        if let Some(out) = lower_movement(cx, node, x)? {
            return Ok(Val::Time(out));
        }
        if let Some(f) = unary_fn(&opname) {
            let out = cx.tensor(&name, oshape, DType::F32, Some(node.id));
            cx.prog.ops.push(IrOp::Plain(Op::FUnary(wire::FUnary {
                input: x,
                output: out,
                func: f,
            })));
            return Ok(Val::Time(out));
        }
    }
    if let Some(ein) = node.op_as::<EinSum>() {
        let sa = shape_of(model, node.inputs[0])?;
        let sb = shape_of(model, node.inputs[1])?;
        let p = plan_einsum(ein, &sa, &sb, &oshape).map_err(|e| anyhow!(e))?;
        return match (&ins[0], &ins[1]) {
            (Val::Time(a), Val::Const(w)) => lower_linear(cx, node, *a, w, &p, false, true),
            (Val::Const(w), Val::Time(b)) => lower_linear(cx, node, *b, w, &p, true, true),
            _ => bail!("product of two timestep-dependent tensors"),
        };
    }
    if node.op.name() == "Gather" && ins.len() == 2 {
        return lower_gather(cx, node, ins, oshape);
    }
    if let Some(cat) = node.op_as::<TypedConcat>() {
        if ins.len() > MAX_CONCAT {
            bail!("concat of {} inputs", ins.len());
        }
        let mut ts = heapless::Vec::new();
        for (k, v) in ins.iter().enumerate() {
            let t = match v {
                Val::Time(t) => *t,
                Val::Const(c) => cx.time_const(&format!("{name}.in{k}"), c, oshape.len())?,
                Val::Main(_) => bail!("an activation on the timestep path"),
            };
            // at most MAX_CONCAT inputs: checked above
            ts.push(t)
                .map_err(|_| anyhow!("concat of {} inputs", ins.len()))?;
        }
        let out = cx.tensor(&name, oshape, DType::F32, Some(node.id));
        cx.prog.ops.push(IrOp::Plain(Op::FConcat(wire::FConcat {
            inputs: ts,
            output: out,
            axis: cat.axis as u8,
        })));
        return Ok(Val::Time(out));
    }
    let bf = match opname.as_str() {
        "Add" => Some(BinaryFn::Add),
        "Sub" => Some(BinaryFn::Sub),
        "Mul" => Some(BinaryFn::Mul),
        "Div" => Some(BinaryFn::Div),
        "Max" => Some(BinaryFn::Max),
        "Min" => Some(BinaryFn::Min),
        "Pow" => Some(BinaryFn::Pow),
        _ => None,
    };
    if let (Some(func), 2) = (bf, ins.len()) {
        // a constant bias after a timestep-path linear folds into it
        if let (BinaryFn::Add | BinaryFn::Sub, Val::Time(x), Val::Const(c)) =
            (func, &ins[0], &ins[1])
        {
            let sign = if func == BinaryFn::Add { 1.0 } else { -1.0 };
            if fold_bias(cx, node, 0, *x, c, sign)? {
                return Ok(Val::Time(*x));
            }
        }
        if let (BinaryFn::Add, Val::Const(c), Val::Time(x)) = (func, &ins[0], &ins[1]) {
            if fold_bias(cx, node, 1, *x, c, 1.0)? {
                return Ok(Val::Time(*x));
            }
        }
        let rank = oshape.len();
        let mut t = |v: &Val, k: usize| -> Result<TensorId> {
            Ok(match v {
                Val::Time(t) => cx.to_rank(*t, rank),
                Val::Const(c) => cx.time_const(&format!("{name}.c{k}"), c, rank)?,
                Val::Main(_) => unreachable!(),
            })
        };
        let (a, b) = (t(&ins[0], 0)?, t(&ins[1], 1)?);
        let out = cx.tensor(&name, oshape, DType::F32, Some(node.id));
        cx.prog.ops.push(IrOp::Plain(Op::FBinary(wire::FBinary {
            a,
            b,
            output: out,
            func,
        })));
        return Ok(Val::Time(out));
    }
    bail!("no lowering for this op on the timestep path")
}

/// The records of constants (f32, or integer codes at the tensor's parameters) and of embedding
/// lookups.
pub fn quantize(cx: &mut QuantCx<'_>, op: &IrOp) -> Result<Op<TensorId>> {
    Ok(match op {
        IrOp::Const { output, values } => {
            let data = if cx.p.t(*output).dtype == DType::F32 {
                cx.blob.push_f32(values)
            } else {
                let (s, z) = cx.q(*output);
                let v: Vec<i8> = values
                    .iter()
                    .map(|&v| ((v / s).round() + z as f32).clamp(-128.0, 127.0) as i8)
                    .collect();
                cx.blob.push_i8(&v)
            };
            Op::Const(wire::Const {
                output: *output,
                data,
            })
        }
        IrOp::Gather {
            index,
            output,
            table,
            rows,
            cols,
        } => Op::FGather(wire::FGather {
            index: *index,
            output: *output,
            table: cx.blob.push_f32(table),
            rows: *rows as u32,
            cols: *cols as u32,
        }),
        _ => bail!("internal error: not a constant or lookup"),
    })
}

/// An embedding table indexed by a timestep-path value (class labels): an f32 row lookup.
fn lower_gather(cx: &mut Ctx, node: &TypedNode, ins: &[Val], oshape: Vec<usize>) -> Result<Val> {
    if let (Val::Const(table), Val::Time(index)) = (&ins[0], &ins[1]) {
        let ts = table.shape().to_vec();
        let axis_ok = node
            .op_as::<tract_onnx::tract_core::ops::array::Gather>()
            .map(|g| g.axis == 0)
            .unwrap_or(false);
        if ts.len() == 2 && axis_ok {
            let out = cx.tensor(&node.name, oshape, DType::F32, Some(node.id));
            cx.prog.ops.push(IrOp::Gather {
                index: *index,
                output: out,
                table: f32s(table)?,
                rows: ts[0],
                cols: ts[1],
            });
            return Ok(Val::Time(out));
        }
    }
    bail!("only a constant 2-D table indexed along axis 0 (an embedding) is supported")
}
