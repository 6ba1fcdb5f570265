//! Transposed convolutions (ONNX `ConvTranspose`) rewritten, in tract's typed model, as ordinary
//! ones: a stride-1 convolution computes every output phase as its own channels, then reshapes and
//! axis moves interleave the phases into the up-sampled image and slices crop its padding.
//!
//! With stride `s` and kernel `k` on an axis, output pixel `q = Q·s + a` (phase `a < s`) receives
//! `x[Q − j] · w[j·s + a]` for `j < J = ⌈k/s⌉`: a correlation over `x` with `J` taps (reversed),
//! padded by `J − 1`. Its `H + J − 1` rows of `s` phases cover the `(H − 1)·s + k` rows of the full
//! output; rows past those get the bias alone, as `output_padding` rows do. Exact in float, at `s²`
//! phases times `J²` taps per output channel and input pixel: `⌈k/s⌉²·s²/k²` times the MACs of a
//! direct transposed convolution (1 when `s` divides `k`).
//!
//! Rewriting here rather than in the lowering keeps every step a node of the float model, so
//! calibration observes the phase convolution's own values.
use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::Slice;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Every `Deconv` node of `model` replaced by its phase convolution and interleave.
pub fn rewrite_deconvs(model: TypedModel) -> Result<TypedModel> {
    crate::rewrite::patch_each(model, |model, node| {
        if node.op_as::<Deconv>().is_none() {
            return Ok(None);
        }
        let patch = phase_patch(model, node.id).with_context(|| {
            format!(
                "transposed convolution {:?} (ConvTranspose) cannot be lowered",
                node.name
            )
        })?;
        Ok(Some(patch))
    })
}

/// One spatial axis of a transposed convolution.
struct Axis {
    input: usize,
    kernel: usize,
    stride: usize,
    /// taps per phase, `⌈kernel/stride⌉`
    taps: usize,
    /// output rows cut from the front of the full output
    crop: usize,
    output: usize,
    /// phase rows computed, `input + taps − 1` or more when the output padding reaches past them
    rows: usize,
}

fn phase_patch(model: &TypedModel, id: usize) -> Result<TypedModelPatch> {
    let node = model.node(id);
    let de = node.op_as::<Deconv>().context("not a Deconv")?;
    let ps = &de.pool_spec;
    if ps.data_format != DataFormat::NCHW || ps.kernel_shape.len() != 2 {
        bail!("only 2-D NCHW transposed convolutions are supported");
    }
    if ps.dilations().iter().any(|&d| d != 1) {
        bail!("dilated transposed convolution is not supported");
    }
    let konst = |i: usize| -> Result<Option<Arc<Tensor>>> {
        Ok(match node.inputs.get(i) {
            Some(o) => model.outlet_fact(*o)?.konst.clone(),
            None => None,
        })
    };
    let Some(kernel) = konst(1)? else {
        bail!("its weights are computed, not constant");
    };
    let Some(bias) = konst(2)? else {
        bail!("its bias is computed, not constant");
    };
    let xshape = model
        .outlet_fact(node.inputs[0])?
        .shape
        .as_concrete()
        .context("input shape is not concrete")?
        .to_vec();
    let oshape = model
        .outlet_fact(id.into())?
        .shape
        .as_concrete()
        .context("output shape is not concrete")?
        .to_vec();
    if xshape.len() != 4 || oshape.len() != 4 {
        bail!("expected NCHW input and output, got {xshape:?} and {oshape:?}");
    }
    let g = de.group.max(1);
    // OIHW: [output channels, input channels per group, kh, kw]
    let kshape = kernel.shape().to_vec();
    let (co, cig) = (oshape[1], xshape[1] / g);
    let fmt_ok = match de.kernel_format {
        KernelFormat::OIHW => kshape == [co, cig, ps.kernel_shape[0], ps.kernel_shape[1]],
        _ => false,
    };
    if !fmt_ok || xshape[1] % g != 0 || co % g != 0 {
        bail!(
            "unexpected kernel {kshape:?} ({:?}) for {} input and {co} output channels in {g} groups",
            de.kernel_format,
            xshape[1]
        );
    }
    let strides = ps.strides();
    if strides.iter().chain(&ps.kernel_shape).any(|&v| v == 0) {
        bail!("zero stride or kernel");
    }
    let pads = ps.padding.compute_for_deconv(
        &xshape[2..],
        &ps.kernel_shape,
        &ps.dilations(),
        &strides,
        &de.adjustments,
    )?;
    let axes: Vec<Axis> = (0..2)
        .map(|d| {
            let (input, kernel, stride) = (xshape[2 + d], ps.kernel_shape[d], strides[d]);
            let taps = kernel.div_ceil(stride);
            let (crop, output) = (pads[d].pad_before, oshape[2 + d]);
            let rows = (input + taps - 1).max((crop + output).div_ceil(stride));
            Axis {
                input,
                kernel,
                stride,
                taps,
                crop,
                output,
                rows,
            }
        })
        .collect();
    let (pk, pbias) = phase_weights(&crate::lower::f32s(&kernel)?, &bias, &axes, [co, cig])?;
    wire(model, id, &axes, (pk, pbias), [xshape[1], co, cig], g)
}

/// The phase convolution's kernel `[(o, a, b), c, t, u] = w[o, c, (jh−1−t)·sh + a, (jw−1−u)·sw + b]`
/// (zero past the kernel) and its bias (each output channel's, once per phase).
fn phase_weights(
    w: &[f32],
    bias: &Tensor,
    axes: &[Axis],
    [co, cig]: [usize; 2],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (sh, sw) = (axes[0].stride, axes[1].stride);
    let (jh, jw) = (axes[0].taps, axes[1].taps);
    let (kh, kw) = (axes[0].kernel, axes[1].kernel);
    let pco = co * sh * sw;
    let mut pk = vec![0f32; pco * cig * jh * jw];
    for o in 0..co {
        for a in 0..sh {
            for b in 0..sw {
                let po = (o * sh + a) * sw + b;
                for c in 0..cig {
                    for t in 0..jh {
                        let m = (jh - 1 - t) * sh + a;
                        for u in 0..jw {
                            let n = (jw - 1 - u) * sw + b;
                            if m < kh && n < kw {
                                pk[((po * cig + c) * jh + t) * jw + u] =
                                    w[((o * cig + c) * kh + m) * kw + n];
                            }
                        }
                    }
                }
            }
        }
    }
    let bias = crate::lower::f32s(bias)?;
    if bias.len() != 1 && bias.len() != co {
        bail!("bias of {} values for {co} output channels", bias.len());
    }
    let pbias = (0..pco)
        .map(|p| {
            if bias.len() == 1 {
                bias[0]
            } else {
                bias[p / (sh * sw)]
            }
        })
        .collect();
    Ok((pk, pbias))
}

/// The patch replacing node `id`: the phase convolution (`groups` groups over `ci` input
/// channels), the interleave of its phases and the crops.
fn wire(
    model: &TypedModel,
    id: usize,
    axes: &[Axis],
    (pk, pbias): (Vec<f32>, Vec<f32>),
    [ci, co, cig]: [usize; 3],
    groups: usize,
) -> Result<TypedModelPatch> {
    let node = model.node(id);
    let (sh, sw) = (axes[0].stride, axes[1].stride);
    let (jh, jw) = (axes[0].taps, axes[1].taps);
    let pco = co * sh * sw;
    let name = node.name.clone();
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, node.inputs[0])?;
    let kt = Tensor::from_shape(&[pco, cig, jh, jw], &pk)?;
    let kc = patch.add_const(format!("{name}.phase.kernel"), kt)?;
    let bc = patch.add_const(
        format!("{name}.phase.bias"),
        Tensor::from_shape(&[pco], &pbias)?,
    )?;
    let before: TVec<usize> = tvec!(jh - 1, jw - 1);
    let after: TVec<usize> = axes
        .iter()
        // the conv gives input + before + after − taps + 1 = input + after rows
        .map(|a| a.rows - a.input)
        .collect();
    let conv = Conv::new(
        PoolSpec::new(
            DataFormat::NCHW,
            tvec!(jh, jw),
            PaddingSpec::Explicit(before, after),
            None,
            None,
            ci,
            pco,
        ),
        KernelFormat::OIHW,
        groups,
        None,
    );
    let mut y = patch.wire_node(format!("{name}.phase"), conv, &[x, kc, bc])?[0];
    let (hq, wq) = (axes[0].rows, axes[1].rows);
    let mut wire = |suffix: &str, op: AxisOp, y: OutletId| -> Result<OutletId> {
        Ok(patch.wire_node(format!("{name}.{suffix}"), op, &[y])?[0])
    };
    // [1, (o, a, b), Q, R] → [1, (o, a), b, Q, R] → [1, (o, a), Q, R, b] → [1, (o, a), Q, R·sw]
    y = wire("split_w", reshape(1, &[pco], &[co * sh, sw]), y)?;
    y = wire("move_w", AxisOp::Move(2, 4), y)?;
    y = wire("join_w", reshape(3, &[wq, sw], &[wq * sw]), y)?;
    // → [1, o, a, Q, W] → [1, o, Q, a, W] → [1, o, Q·sh, W]
    y = wire("split_h", reshape(1, &[co * sh], &[co, sh]), y)?;
    y = wire("move_h", AxisOp::Move(2, 3), y)?;
    y = wire("join_h", reshape(2, &[hq, sh], &[hq * sh]), y)?;
    for (d, a) in axes.iter().enumerate() {
        if a.crop != 0 || a.output != a.rows * a.stride {
            let sl = Slice::new(2 + d, a.crop, a.crop + a.output);
            y = patch.wire_node(format!("{name}.crop{d}"), sl, &[y])?[0];
        }
    }
    patch.shunt_outside(model, id.into(), y)?;
    Ok(patch)
}

fn reshape(at: usize, from: &[usize], to: &[usize]) -> AxisOp {
    AxisOp::Reshape(
        at,
        from.iter().map(|&d| d.to_dim()).collect(),
        to.iter().map(|&d| d.to_dim()).collect(),
    )
}
