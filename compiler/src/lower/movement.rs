//! Data movement shared by both paths (reshape, axis moves, slices, nearest upsampling, broadcast,
//! max pooling):
//! the output aliases the input's quantization.
use super::{shape_of, Ctx};
use crate::ir::*;
use anyhow::{bail, Result};
use dmq_runtime::format::{self as wire, Op, MAX_RANK};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::MaxPool;
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Data-movement ops shared by both paths: the output aliases the input's quantization.
pub(super) fn lower_movement(
    cx: &mut Ctx,
    node: &TypedNode,
    x: TensorId,
) -> Result<Option<TensorId>> {
    let oshape = shape_of(cx.model, node.id.into())?;
    let ishape = cx.prog.t(x).shape.clone();
    if oshape.len() > MAX_RANK {
        bail!("rank {} is above the supported {MAX_RANK}", oshape.len());
    }
    let name = node.name.clone();
    let out = lower_alias(cx, node, x, oshape, ishape, name)?;
    if let Some(out) = out {
        if out != x {
            cx.prog.t_mut(out).value = Some(node.id);
        }
    }
    Ok(out)
}

/// [`lower_movement`]'s op and output alias.
fn lower_alias(
    cx: &mut Ctx,
    node: &TypedNode,
    x: TensorId,
    oshape: Vec<usize>,
    ishape: Vec<usize>,
    name: String,
) -> Result<Option<TensorId>> {
    if let Some(ax) = node.op_as::<AxisOp>() {
        let out = cx.alias(&name, oshape.clone(), x);
        match ax {
            AxisOp::Move(from, to) => {
                let mut order: Vec<usize> = (0..ishape.len()).collect();
                let a = order.remove(*from);
                order.insert(*to, a);
                let perm = order.iter().map(|&p| p as u8).collect();
                cx.prog.ops.push(IrOp::Plain(Op::Transpose(wire::Transpose {
                    input: x,
                    output: out,
                    perm,
                })));
            }
            _ => cx.prog.ops.push(IrOp::Plain(Op::Reshape(wire::Reshape {
                input: x,
                output: out,
            }))),
        }
        return Ok(Some(out));
    }
    if let Some(sl) = node.op_as::<Slice>() {
        let start = tract_onnx::tract_core::internal::DimLike::to_usize(&sl.start)?;
        let out = cx.alias(&name, oshape, x);
        cx.prog.ops.push(IrOp::Plain(Op::Slice(wire::Slice {
            input: x,
            output: out,
            axis: sl.axis as u8,
            start: start as u32,
        })));
        return Ok(Some(out));
    }
    if let Some(mp) = node.op_as::<MaxPool>() {
        let ps = &mp.pool_spec;
        if mp.with_index_outputs.is_some()
            || ps.data_format != DataFormat::NCHW
            || ps.kernel_shape.len() != 2
            || ishape.len() != 4
        {
            bail!("only 2-D NCHW max pooling without index outputs is supported");
        }
        if ps
            .dilations
            .as_ref()
            .is_some_and(|d| d.iter().any(|&x| x != 1))
        {
            bail!("dilated max pooling is not supported");
        }
        let (st, pad) = super::conv::window(&ishape, ps);
        let small = |v: usize| u16::try_from(v).ok();
        let (Some(kernel), Some(stride), Some(pad)) = (
            ps.kernel_shape
                .iter()
                .map(|&v| small(v))
                .collect::<Option<Vec<_>>>(),
            st.iter().map(|&v| small(v)).collect::<Option<Vec<_>>>(),
            pad.iter().map(|&v| small(v)).collect::<Option<Vec<_>>>(),
        ) else {
            bail!("max pooling window, stride or padding above 65535");
        };
        let out = cx.alias(&name, oshape, x);
        cx.prog.ops.push(IrOp::Plain(Op::MaxPool(wire::MaxPool {
            input: x,
            output: out,
            kernel: [kernel[0], kernel[1]],
            stride: [stride[0], stride[1]],
            pad: [pad[0], pad[1], pad[2], pad[3]],
        })));
        return Ok(Some(out));
    }
    match node.op.name().as_ref() {
        "NearestUpsample" => {
            let out = cx.alias(&name, oshape, x);
            cx.prog.ops.push(IrOp::Plain(Op::Upsample(wire::Upsample {
                input: x,
                output: out,
            })));
            Ok(Some(out))
        }
        "MultiBroadcastTo" => {
            let x = cx.to_rank(x, oshape.len());
            let out = cx.alias(&name, oshape, x);
            cx.prog.ops.push(IrOp::Plain(Op::Broadcast(wire::Broadcast {
                input: x,
                output: out,
            })));
            Ok(Some(out))
        }
        "Cast" => Ok(Some(x)),
        _ => Ok(None),
    }
}
