//! Convolutions and average pooling (as a convolution with `1/(kh·kw)` on the channel diagonal):
//! lowering from tract's `Conv`/`SumPool` and the runtime record `Conv2d`.
use super::{f32s, Ctx, Val};
use crate::ir::*;
use crate::quant::weights::fold_rows;
use crate::quant::{row_weights, Layout, QuantCx};
use anyhow::{bail, Result};
use dmq_runtime::format::{self as wire, DType, Op};
use dmq_runtime::ops::conv2d::ConvDims;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Strides and paddings `[top, left, bottom, right]` of a 2-D conv or pooling window over an input
/// of shape `ishape` (NCHW).
pub(super) fn window(ishape: &[usize], ps: &PoolSpec) -> (TVec<usize>, [usize; 4]) {
    let ks = &ps.kernel_shape;
    let st = ps.strides.clone().unwrap_or(tvec!(1, 1));
    let pad = match &ps.padding {
        PaddingSpec::Valid => [0; 4],
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, _) => {
            [b[0], b[1], a[0], a[1]]
        }
        p => {
            let mut pads = [0usize; 4];
            for d in 0..2 {
                let comp = p.compute_one(d, &ishape[2 + d], ks[d], 1, st[d]);
                pads[d] = comp.pad_before;
                pads[d + 2] = comp.pad_after;
            }
            pads
        }
    };
    (st, pad)
}

/// A 2-D NCHW/OIHW convolution with constant weights; its bias constant or from the timestep path.
pub(super) fn lower_conv(
    cx: &mut Ctx,
    node: &TypedNode,
    conv: &Conv,
    ins: &[Val],
    oshape: Vec<usize>,
) -> Result<Val> {
    let Val::Main(x) = ins[0] else {
        bail!("conv input must be an activation")
    };
    let Val::Const(w) = &ins[1] else {
        bail!("conv weights must be constant")
    };
    let ps = &conv.pool_spec;
    if ps.data_format != DataFormat::NCHW
        || conv.kernel_fmt != KernelFormat::OIHW
        || ps.kernel_shape.len() != 2
    {
        bail!("only 2-D NCHW/OIHW convolutions are supported");
    }
    if ps
        .dilations
        .as_ref()
        .is_some_and(|d| d.iter().any(|&x| x != 1))
    {
        bail!("dilated convolution is not supported yet");
    }
    let ks = &ps.kernel_shape;
    let (st, pad) = window(&cx.prog.t(x).shape.clone(), ps);
    let co = oshape[1];
    let (bias, time_bias) = match ins.get(2) {
        None => (vec![0.0; co], None),
        Some(Val::Const(b)) => {
            let v = f32s(b)?;
            (if v.len() == 1 { vec![v[0]; co] } else { v }, None)
        }
        Some(Val::Time(t)) => {
            if cx.prog.t(*t).numel() != co {
                bail!("time-dependent conv bias must have one value per channel");
            }
            (vec![0.0; co], Some(*t))
        }
        Some(Val::Main(_)) => bail!("conv bias computed from the latent is not supported"),
    };
    let ci = cx.prog.t(x).shape[1];
    let weights = if conv.group == 1 {
        f32s(w)?
    } else {
        block_diagonal(&f32s(w)?, conv.group, [co, ci], ks[0] * ks[1])?
    };
    let out = cx.tensor(&node.name, oshape, DType::I8, Some(node.id));
    cx.prog.ops.push(IrOp::Conv {
        input: x,
        output: out,
        w: weights.into(),
        bias,
        time_bias,
        kernel: [ks[0], ks[1]],
        stride: [st[0], st[1]],
        pad,
        node: node.name.clone(),
    });
    Ok(Val::Main(out))
}

/// The weights of a grouped convolution (`groups` groups; depthwise when every group has one
/// channel) as a dense convolution's: each output channel's weights on its group's input channels,
/// zeros elsewhere. Exact, at `groups` times the multiply-accumulates; refused past 2^24 weights.
fn block_diagonal(w: &[f32], groups: usize, [co, ci]: [usize; 2], taps: usize) -> Result<Vec<f32>> {
    if groups == 0 || co % groups != 0 || ci % groups != 0 || w.len() != co * (ci / groups) * taps {
        bail!("grouped convolution: {groups} groups do not divide {co} output and {ci} input channels");
    }
    if co * ci * taps > 1 << 24 {
        bail!(
            "grouped convolution (group {groups}) lowered as a dense convolution would need {} weights (at most 2^24)",
            co * ci * taps
        );
    }
    let (gi, go) = (ci / groups, co / groups);
    let mut dense = vec![0f32; co * ci * taps];
    for o in 0..co {
        let first = o / go * gi;
        let src = &w[o * gi * taps..(o + 1) * gi * taps];
        dense[(o * ci + first) * taps..(o * ci + first + gi) * taps].copy_from_slice(src);
    }
    Ok(dense)
}

/// Average pooling (diffusers' ResNet downsampling): a convolution whose weights are `1/(kh·kw)` on
/// the channel diagonal — exact in int8 (the per-channel weight scale makes the value 127), run by
/// the conv kernels.
pub(super) fn lower_pool(
    cx: &mut Ctx,
    node: &TypedNode,
    pool: &SumPool,
    ins: &[Val],
    oshape: Vec<usize>,
) -> Result<Val> {
    let Val::Main(x) = ins[0] else {
        bail!("pooling input must be an activation")
    };
    let ps = &pool.pool_spec;
    if ps.data_format != DataFormat::NCHW || ps.kernel_shape.len() != 2 {
        bail!("only 2-D NCHW pooling is supported");
    }
    let ks = [ps.kernel_shape[0], ps.kernel_shape[1]];
    let (st, pad) = window(&cx.prog.t(x).shape.clone(), ps);
    if pool.normalize && !pool.count_include_pad && pad.iter().any(|&p| p != 0) {
        bail!("average pooling that leaves padding out of the count is not supported yet");
    }
    let c = oshape[1];
    let v = if pool.normalize {
        1.0 / (ks[0] * ks[1]) as f32
    } else {
        1.0
    };
    let mut w = vec![0f32; c * c * ks[0] * ks[1]];
    for ch in 0..c {
        let at = (ch * c + ch) * ks[0] * ks[1];
        w[at..at + ks[0] * ks[1]].fill(v);
    }
    let out = cx.tensor(&node.name, oshape, DType::I8, Some(node.id));
    cx.prog.ops.push(IrOp::Conv {
        input: x,
        output: out,
        w: w.into(),
        bias: vec![0.0; c],
        time_bias: None,
        kernel: ks,
        stride: [st[0], st[1]],
        pad,
        node: node.name.clone(),
    });
    Ok(Val::Main(out))
}

/// The `Conv2d` record of a conv: per-row weights (8 or 4 bits), the int32 bias with the input zero
/// point folded in, per-channel requantization, and the scale that turns a time-path bias into
/// accumulator units. Returns the record and its scratch bytes.
pub fn quantize(cx: &mut QuantCx<'_>, op: &IrOp) -> Result<(Op<TensorId>, usize)> {
    let IrOp::Conv {
        input,
        output,
        w,
        bias,
        time_bias,
        kernel,
        stride,
        pad,
        ..
    } = op
    else {
        bail!("internal error: not a conv")
    };
    let (ish, osh) = (&cx.p.t(*input).shape, &cx.p.t(*output).shape);
    let co = osh[1];
    let bits = cx.bits_for(*input, *output);
    let taps = kernel[0] * kernel[1];
    let wq = row_weights(w, co, Layout::Packed { taps }, bits, cx.hessians.get(w));
    let (bq, rq, inv) = fold_rows(&wq, bias, cx.q(*input), cx.out_scale(*output));
    let d = ConvDims {
        c: ish[1],
        h: ish[2],
        w: ish[3],
        co,
        kh: kernel[0],
        kw: kernel[1],
        sh: stride[0],
        sw: stride[1],
        pad: *pad,
        oh: osh[2],
        ow: osh[3],
    };
    let scratch = dmq_runtime::ops::conv2d::scratch_bytes(&d, bits, time_bias.is_some());
    let blob = &mut *cx.blob;
    let rec = Op::Conv2d(wire::Conv2d {
        input: *input,
        output: *output,
        weight_bits: bits,
        weights: blob.push_weights(&wq),
        bias: blob.push_i32(&bq),
        requant: blob.push_requant(&rq),
        time_bias: *time_bias,
        time_scale: if time_bias.is_some() {
            blob.push_f32(&inv)
        } else {
            blob.push(&[])
        },
        kernel: [kernel[0] as u16, kernel[1] as u16],
        stride: [stride[0] as u16, stride[1] as u16],
        pad: pad.map(|v| v as u16),
        scratch: 0,
    });
    Ok((rec, scratch))
}
