//! GroupNorm and LayerNorm: recognised from tract's spellings (reshape → mean → sub → RmsNorm →
//! reshape → affine, InstanceNormalization, native GroupNormalization, LayerNorm over any one axis),
//! emitted as the integer `GroupNorm` (a LayerNorm as one group per token), and its record.
use super::{const_of, f32s, shape_of, single_succ, Ctx, Model, Val};
use crate::ir::*;
use crate::quant::QuantCx;
use anyhow::{bail, Result};
use dmq_runtime::format::{self as wire, DType, Op};
use std::collections::{HashMap, HashSet};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

pub(super) struct GroupNormMatch {
    x: OutletId,
    /// when the match ends at the RmsNorm (no affine; tract moved element-wise ops before the reshape
    /// back), the grouped shape `[N, G, R]` its output has
    grouped_shape: Option<Vec<usize>>,
    groups: usize,
    eps: f32,
    gamma: Option<Vec<f32>>,
    beta: Option<Vec<f32>>,
    /// a LayerNorm over this axis (x, mean and RmsNorm without reshapes): run as a GroupNorm of one
    /// group over `[tokens, C, 1]` (after a transpose when the axis is not the last: tract moves
    /// the token transpose of channel-major features past the norm)
    layer_norm: Option<usize>,
    /// an RMS norm (no mean taken out) over the channel axis at every position, or over the last
    /// axis per token (with `layer_norm`): [`find_rms_norms`]
    rms: bool,
}

pub(super) enum Role {
    Skip,
    GroupNorm(GroupNormMatch),
}

/// Per-channel vector of a const broadcastable to `[1, C, 1, ...]`.
fn per_channel(t: &Tensor, c: usize, rank: usize) -> Option<Vec<f32>> {
    per_axis(t, c, 1, rank)
}

/// Vector along `axis` of a const broadcastable to a rank-`rank` tensor with `c` entries there.
fn per_axis(t: &Tensor, c: usize, axis: usize, rank: usize) -> Option<Vec<f32>> {
    let sh = t.shape();
    if sh.len() > rank {
        return None;
    }
    let pad = rank - sh.len();
    for (i, &d) in sh.iter().enumerate() {
        let ax = i + pad;
        if ax == axis {
            if d != c && d != 1 {
                return None;
            }
        } else if d != 1 {
            return None;
        }
    }
    let v = f32s(t).ok()?;
    Some(if v.len() == 1 { vec![v[0]; c] } else { v })
}

/// Extends a norm pattern ending at `root` by its single successor when that is `op` with a constant
/// second operand `per` accepts (the affine's gamma or beta); returns the values.
fn take_affine(
    model: &Model,
    root: &mut usize,
    members: &mut Vec<usize>,
    op: &str,
    per: impl Fn(&Tensor) -> Option<Vec<f32>>,
) -> Option<Vec<f32>> {
    let m = single_succ(model, *root)?;
    let mn = model.node(m);
    if mn.op.name() != op {
        return None;
    }
    let v = const_of(model, mn.inputs[1]).and_then(|t| per(&t))?;
    *root = m;
    members.push(m);
    Some(v)
}

/// A norm's affine: [`take_affine`] for a `Mul` (gamma) then an `Add` (beta), values through `per`.
fn take_scale_shift(
    model: &Model,
    root: &mut usize,
    members: &mut Vec<usize>,
    per: impl Fn(&Tensor) -> Option<Vec<f32>>,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let gamma = take_affine(model, root, members, "Mul", &per);
    let beta = take_affine(model, root, members, "Add", &per);
    (gamma, beta)
}

/// Records a matched norm when every intermediate is consumed inside the pattern: its nodes are
/// skipped and `root` lowers to the norm.
fn claim(
    model: &Model,
    roles: &mut HashMap<usize, Role>,
    members: Vec<usize>,
    root: usize,
    m: GroupNormMatch,
) {
    let set: HashSet<usize> = members.iter().copied().collect();
    let closed = members.iter().filter(|&&n| n != root).all(|&n| {
        model.node(n).outputs[0]
            .successors
            .iter()
            .all(|s| set.contains(&s.node))
    });
    if !closed {
        return;
    }
    for n in members {
        roles.insert(n, Role::Skip);
    }
    roles.insert(root, Role::GroupNorm(m));
}

/// Finds GroupNorm patterns: x -> Reshape [N,G,R] -> (Sum over R) * 1/R -> Sub -> RmsNorm(axis 2)
/// -> Reshape back -> [Mul gamma] -> [Add beta]; and the expanded form of ONNX GroupNormalization.
pub(super) fn find_group_norms(model: &Model) -> Result<HashMap<usize, Role>> {
    let mut roles = HashMap::new();
    for node in model.nodes() {
        let Some(rms) = node.op_as::<RmsNorm>() else {
            continue;
        };
        let sub = model.node(node.inputs[0].node);
        if sub.op.name() != "Sub" {
            continue;
        }
        let r1 = model.node(sub.inputs[0].node);
        let mean = model.node(sub.inputs[1].node);
        if mean.op.name() != "Mul" {
            continue;
        }
        let red = model.node(mean.inputs[0].node);
        let Some(reduce) = red.op_as::<Reduce>() else {
            continue;
        };
        if !matches!(reduce.reducer, Reducer::Sum) {
            continue;
        }
        let grouped = matches!(r1.op_as::<AxisOp>(), Some(AxisOp::Reshape(..)))
            && red.inputs[0].node == r1.id
            && shape_of(model, r1.id.into())?.len() == 3
            && rms.axis == 2
            && reduce.axes.as_slice() == [2];
        if !grouped {
            // LayerNorm: x - mean(x) over one axis, normalised over the same axis
            if red.inputs[0] != sub.inputs[0] {
                continue;
            }
            let x = sub.inputs[0];
            let xshape = shape_of(model, x)?;
            let axis = rms.axis;
            if xshape.len() < 2 || axis >= xshape.len() || reduce.axes.as_slice() != [axis] {
                continue;
            }
            let c = xshape[axis];
            let rank = xshape.len();
            let Some(inv) = const_of(model, mean.inputs[1]) else {
                continue;
            };
            let inv = f32s(&inv)?;
            if inv.len() != 1 || (inv[0] * c as f32 - 1.0).abs() > 1e-4 {
                continue;
            }
            let mut members = vec![red.id, mean.id, sub.id, node.id];
            let mut root = node.id;
            let (gamma, beta) = take_scale_shift(model, &mut root, &mut members, |t| {
                per_axis(t, c, axis, rank)
            });
            let m = GroupNormMatch {
                x,
                grouped_shape: None,
                groups: 1,
                eps: f32s(&rms.eps)?[0],
                gamma,
                beta,
                layer_norm: Some(axis),
                rms: false,
            };
            claim(model, &mut roles, members, root, m);
            continue;
        }
        if red.inputs[0].node != r1.id {
            continue;
        }
        let gshape = shape_of(model, r1.id.into())?;
        if gshape.len() != 3 || rms.axis != 2 || reduce.axes.as_slice() != [2] {
            continue;
        }
        let x = r1.inputs[0];
        let xshape = shape_of(model, x)?;
        let Some(inv) = const_of(model, mean.inputs[1]) else {
            continue;
        };
        let inv = f32s(&inv)?;
        if inv.len() != 1 || (inv[0] * gshape[2] as f32 - 1.0).abs() > 1e-4 {
            continue;
        }
        if xshape.len() < 2 || xshape[1] % gshape[1] != 0 {
            continue;
        }
        let c = xshape[1];
        let r2_id = single_succ(model, node.id).filter(|&r2| {
            model.node(r2).op_as::<AxisOp>().is_some()
                && shape_of(model, r2.into())
                    .map(|s| s == xshape)
                    .unwrap_or(false)
        });
        let ends_at_norm = r2_id.is_none();
        let mut members = vec![r1.id, red.id, mean.id, sub.id, node.id];
        members.extend(r2_id);
        let mut root = r2_id.unwrap_or(node.id);
        let (gamma, beta) = if ends_at_norm {
            (None, None)
        } else {
            let rank = xshape.len();
            take_scale_shift(model, &mut root, &mut members, |t| per_channel(t, c, rank))
        };
        let m = GroupNormMatch {
            x,
            grouped_shape: ends_at_norm.then(|| gshape.clone()),
            groups: gshape[1],
            eps: f32s(&rms.eps)?[0],
            gamma,
            beta,
            layer_norm: None,
            rms: false,
        };
        claim(model, &mut roles, members, root, m);
    }
    find_expanded_group_norms(model, &mut roles)?;
    find_rms_norms(model, &mut roles)?;
    Ok(roles)
}

/// Finds RMS norms (no mean taken out) over the channel axis 1 or the last axis, and their affine:
/// - `F.normalize(x, dim=1)` as tract spells ONNX `ReduceL2 -> Clip(min) -> Div`: Square -> Sum
///   over axis 1 -> Sqrt -> [Max eps] -> Recip -> Mul x (the denoising-diffusion-pytorch RMSNorm,
///   `F.normalize(x, dim=1) * g * sqrt(C)`);
/// - `x * rsqrt(mean(x^2, 1) + eps)`: MeanOfSquares or Square -> Sum over axis 1 -> [Add eps] ->
///   Rsqrt, or Sqrt -> Recip, -> Mul x; and tract's own `RmsNorm` over axis 1.
///
/// Each is `x / sqrt(mean_c x^2 + eps) * gamma + beta` with the sum's `1/sqrt(C)` folded into gamma,
/// an eps added under the root divided by C, and a `Max` on the root taken as its square (the two
/// differ only at positions whose every channel is below the eps).
fn find_rms_norms(model: &Model, roles: &mut HashMap<usize, Role>) -> Result<()> {
    let op_is = |n: usize, name: &str| model.node(n).op.name() == name;
    for node in model.nodes() {
        if roles.contains_key(&node.id) {
            continue;
        }
        // (x, the axis, the nodes so far, how many mean squares the reduction holds, whether the
        // root still follows, eps): tract's RmsNorm is `x / rms` already; a reduction of the
        // squares (a sum holds C mean squares) goes on through `rms_tail`
        let (x, axis, mut members, sums, tail, mut eps) = if let Some(rms) = node.op_as::<RmsNorm>()
        {
            if op_is(node.inputs[0].node, "Sub") {
                continue;
            }
            let eps = f32s(&rms.eps)?.first().copied().unwrap_or(0.0);
            (node.inputs[0], rms.axis, vec![node.id], false, false, eps)
        } else if let Some(red) = node.op_as::<Reduce>() {
            let (&[axis], src) = (red.axes.as_slice(), node.inputs[0]) else {
                continue;
            };
            match red.reducer {
                Reducer::MeanOfSquares => (src, axis, vec![node.id], false, true, 0.0),
                Reducer::Sum
                    if op_is(src.node, "Square")
                        && single_succ(model, src.node) == Some(node.id) =>
                {
                    let x = model.node(src.node).inputs[0];
                    (x, axis, vec![src.node, node.id], true, true, 0.0)
                }
                _ => continue,
            }
        } else {
            continue;
        };
        let xshape = shape_of(model, x)?;
        // the channels (NC...), or the last axis (a per-token norm, as EDM2 attention normalises
        // its queries, keys and values per head)
        let rank = xshape.len();
        if rank < 2 || !(axis == 1 || axis + 1 == rank) {
            continue;
        }
        let c = xshape[axis];
        let k = if sums { c as f32 } else { 1.0 };
        let mut at = node.id;
        if tail {
            let Some((more, last, e)) = rms_tail(model, at, x, k) else {
                continue;
            };
            if shape_of(model, last.into())? != xshape {
                continue;
            }
            members.extend(more);
            at = last;
            eps += e;
        }
        // gamma: every per-channel Mul that follows (a parameter, then a constant such as
        // sqrt(C)), with the sum's 1/sqrt(C); then beta
        let mut gamma = vec![1.0 / k.sqrt(); c];
        let per = |t: &Tensor| per_axis(t, c, axis, rank);
        while let Some(g) = take_affine(model, &mut at, &mut members, "Mul", per) {
            gamma.iter_mut().zip(&g).for_each(|(a, b)| *a *= b);
        }
        let beta = take_affine(model, &mut at, &mut members, "Add", per);
        let m = GroupNormMatch {
            x,
            grouped_shape: None,
            groups: 1,
            eps,
            gamma: Some(gamma),
            beta,
            // over the last axis: `[tokens, C, 1]`, the channels of one position per token
            layer_norm: (axis != 1).then_some(axis),
            rms: true,
        };
        claim(model, roles, members, at, m);
    }
    Ok(())
}

/// The rest of an RMS norm after its reduction `at` (the sum or mean of `x`'s squares, `k` mean
/// squares): `[Add eps] -> (Rsqrt | Sqrt [Max eps] Recip) -> Mul x`. Returns its nodes, the `Mul`,
/// and the eps under the root in mean-square units.
fn rms_tail(model: &Model, mut at: usize, x: OutletId, k: f32) -> Option<(Vec<usize>, usize, f32)> {
    let op_is = |n: usize, name: &str| model.node(n).op.name() == name;
    // the scalar operand of binary node `n` whose other operand comes from `from`
    let scalar_beside = |n: usize, from: usize| -> Option<f32> {
        let ins = &model.node(n).inputs;
        let o = match ins.iter().position(|o| o.node == from)? {
            0 => *ins.get(1)?,
            _ => ins[0],
        };
        let v = f32s(&*const_of(model, o)?).ok()?;
        (v.len() == 1 && v[0].is_finite() && v[0] >= 0.0).then_some(v[0])
    };
    let (mut members, mut eps) = (vec![], 0.0);
    if let Some(add) = single_succ(model, at).filter(|&n| op_is(n, "Add")) {
        eps += scalar_beside(add, at)? / k;
        members.push(add);
        at = add;
    }
    let next = single_succ(model, at)?;
    members.push(next);
    at = next;
    if op_is(next, "Sqrt") {
        if let Some(mx) = single_succ(model, at).filter(|&n| op_is(n, "Max")) {
            let e = scalar_beside(mx, at)?;
            eps += e * e / k;
            members.push(mx);
            at = mx;
        }
        let rc = single_succ(model, at).filter(|&n| op_is(n, "Recip"))?;
        members.push(rc);
        at = rc;
    } else if !op_is(next, "Rsqrt") {
        return None;
    }
    let mul = single_succ(model, at).filter(|&n| op_is(n, "Mul"))?;
    let ins = &model.node(mul).inputs;
    if !(ins.len() == 2 && ins.contains(&x) && ins.iter().any(|o| o.node == at)) {
        return None;
    }
    members.push(mul);
    Some((members, mul, eps))
}

/// Finds tract's expansion of ONNX `GroupNormalization` (opsets 18 and 21): x -> Reshape
/// `[N, G, ...]` -> Sum over axes 2.. * 1/R -> Sub -> MeanOfSquares over the same axes -> + eps ->
/// Rsqrt -> Mul, then either a per-group affine and the reshape back (opset 18), or the reshape back
/// and a per-channel affine (opset 21).
fn find_expanded_group_norms(model: &Model, roles: &mut HashMap<usize, Role>) -> Result<()> {
    for node in model.nodes() {
        let Some(var) = node.op_as::<Reduce>() else {
            continue;
        };
        if !matches!(var.reducer, Reducer::MeanOfSquares) || roles.contains_key(&node.id) {
            continue;
        }
        let sub = model.node(node.inputs[0].node);
        if sub.op.name() != "Sub" {
            continue;
        }
        let (r1, mean) = (
            model.node(sub.inputs[0].node),
            model.node(sub.inputs[1].node),
        );
        if mean.op.name() != "Mul" || !matches!(r1.op_as::<AxisOp>(), Some(AxisOp::Reshape(..))) {
            continue;
        }
        let red = model.node(mean.inputs[0].node);
        let Some(sum) = red.op_as::<Reduce>() else {
            continue;
        };
        let gshape = shape_of(model, r1.id.into())?;
        let axes: Vec<usize> = (2..gshape.len()).collect();
        if !matches!(sum.reducer, Reducer::Sum)
            || red.inputs[0].node != r1.id
            || gshape.len() < 3
            || sum.axes.as_slice() != axes.as_slice()
            || var.axes.as_slice() != axes.as_slice()
        {
            continue;
        }
        let r: usize = gshape[2..].iter().product();
        let inv = const_of(model, mean.inputs[1])
            .map(|t| f32s(&t))
            .transpose()?;
        if !matches!(inv.as_deref(), Some([v]) if (v * r as f32 - 1.0).abs() <= 1e-4) {
            continue;
        }
        // + eps -> Rsqrt -> Mul(diff, rsqrt)
        let Some(add) = single_succ(model, node.id) else {
            continue;
        };
        let add_n = model.node(add);
        let eps = const_of(model, add_n.inputs[1])
            .map(|t| f32s(&t))
            .transpose()?;
        let Some(&[eps]) = eps.as_deref() else {
            continue;
        };
        let Some(rs) = single_succ(model, add).filter(|&n| model.node(n).op.name() == "Rsqrt")
        else {
            continue;
        };
        let Some(normed) = single_succ(model, rs) else {
            continue;
        };
        let nn = model.node(normed);
        if add_n.op.name() != "Add" || nn.op.name() != "Mul" || nn.inputs[0].node != sub.id {
            continue;
        }
        let x = r1.inputs[0];
        let xshape = shape_of(model, x)?;
        let (g, c) = (gshape[1], xshape.get(1).copied().unwrap_or(0));
        if xshape.len() < 2 || g == 0 || c % g != 0 || xshape[0] != gshape[0] {
            continue;
        }
        let mut members = vec![r1.id, red.id, mean.id, sub.id, node.id, add, rs, normed];
        let mut root = normed;
        let grank = gshape.len();
        // opset 18: per-group scale and bias ([1, G, 1, ...]) before the reshape back
        let per_group = |t: &Tensor| -> Option<Vec<f32>> {
            let v = per_channel(t, g, grank)?;
            Some((0..c).map(|ch| v[ch / (c / g)]).collect())
        };
        let (mut gamma, mut beta) = take_scale_shift(model, &mut root, &mut members, per_group);
        let r2 = single_succ(model, root).filter(|&n| {
            model.node(n).op_as::<AxisOp>().is_some()
                && shape_of(model, n.into())
                    .map(|s| s == xshape)
                    .unwrap_or(false)
        });
        // without the reshape back (tract moved element-wise ops before it) the norm's output keeps
        // the grouped shape
        let grouped_shape = r2.is_none().then(|| gshape.clone());
        if let Some(r2) = r2 {
            members.push(r2);
            root = r2;
        }
        // opset 21: per-channel scale and bias after it
        if r2.is_some() && gamma.is_none() && beta.is_none() {
            let rank = xshape.len();
            (gamma, beta) =
                take_scale_shift(model, &mut root, &mut members, |t| per_channel(t, c, rank));
        }
        let m = GroupNormMatch {
            x,
            grouped_shape,
            groups: g,
            eps,
            gamma,
            beta,
            layer_norm: None,
            rms: false,
        };
        claim(model, roles, members, root, m);
    }
    Ok(())
}

/// Emits the integer GroupNorm a matched pattern stands for, from its input's value.
pub(super) fn emit(cx: &mut Ctx, node: &TypedNode, g: &GroupNormMatch) {
    match cx.vals.get(&g.x).cloned() {
        Some(Val::Main(x)) if g.layer_norm.is_some() => emit_layer_norm(cx, node, g, x),
        Some(Val::Main(x)) => emit_group_norm(cx, node, g, x),
        Some(_) => cx.unsupported(node, "GroupNorm on the timestep path"),
        None => {}
    }
}

/// A LayerNorm over one axis: the axis moved last, `[.., C] -> [tokens, C, 1]`, one group per
/// token, then back to `[.., C]` and to the input's axis order.
fn emit_layer_norm(cx: &mut Ctx, node: &TypedNode, g: &GroupNormMatch, x0: TensorId) {
    // the normalised axis last, [.., C] -> [tokens, C, 1], one group per token,
    // back to [.., C] and to the input's axis order
    let shape0 = cx.prog.t(x0).shape.clone();
    let axis = g
        .layer_norm
        .unwrap_or(0)
        .min(shape0.len().saturating_sub(1));
    let rank = shape0.len();
    let fwd: Vec<usize> = (0..rank).filter(|&i| i != axis).chain([axis]).collect();
    let moved = axis + 1 != rank;
    let x = if moved {
        let shape = fwd.iter().map(|&i| shape0[i]).collect();
        let xt = cx.alias(&format!("{}.last", node.name), shape, x0);
        cx.prog.ops.push(IrOp::Plain(Op::Transpose(wire::Transpose {
            input: x0,
            output: xt,
            perm: fwd.iter().map(|&i| i as u8).collect(),
        })));
        xt
    } else {
        x0
    };
    let shape = cx.prog.t(x).shape.clone();
    let c = *shape.last().unwrap_or(&1);
    let tokens = shape.iter().product::<usize>() / c.max(1);
    let gamma = g.gamma.clone().unwrap_or(vec![1.0; c]);
    let beta = g.beta.clone().unwrap_or(vec![0.0; c]);
    // one affine for the whole axis (no affine, or GroupNorm(1, C) as exporters spell it: a norm
    // over [N, 1, C·H·W]): the axis as one channel's positions, `[tokens, 1, C]`, the same group
    // and the same integers, without one affine entry and one pass setup per element
    // (an RMS norm normalises the channel axis of the layout: always `[tokens, C, 1]`)
    let uniform =
        !g.rms && gamma.windows(2).all(|w| w[0] == w[1]) && beta.windows(2).all(|w| w[0] == w[1]);
    let (gshape, gamma, beta) = if uniform && c > 1 {
        (vec![tokens, 1, c], gamma[..1].to_vec(), beta[..1].to_vec())
    } else {
        (vec![tokens, c, 1], gamma, beta)
    };
    let xin = cx.alias(&format!("{}.tokens", node.name), gshape.clone(), x);
    cx.prog.ops.push(IrOp::Plain(Op::Reshape(wire::Reshape {
        input: x,
        output: xin,
    })));
    let normed = cx.tensor(
        &format!("{}.ln", node.name),
        gshape,
        DType::I8,
        Some(node.id),
    );
    cx.prog.ops.push(IrOp::GroupNorm {
        input: xin,
        output: normed,
        groups: 1,
        rms: g.rms,
        eps: g.eps,
        gamma,
        beta,
    });
    let name = if moved {
        format!("{}.normed", node.name)
    } else {
        node.name.clone()
    };
    let mut out = cx.alias(&name, shape, normed);
    cx.prog.ops.push(IrOp::Plain(Op::Reshape(wire::Reshape {
        input: normed,
        output: out,
    })));
    if moved {
        let back = cx.alias(&node.name, shape0, out);
        let perm = (0..rank)
            .map(|i| fwd.iter().position(|&f| f == i).unwrap_or(i) as u8)
            .collect();
        cx.prog.ops.push(IrOp::Plain(Op::Transpose(wire::Transpose {
            input: out,
            output: back,
            perm,
        })));
        out = back;
    }
    cx.vals.insert(node.id.into(), Val::Main(out));
}

/// A GroupNorm over NC..., reshaped to the grouped shape when the match ended at the RmsNorm.
fn emit_group_norm(cx: &mut Ctx, node: &TypedNode, g: &GroupNormMatch, x: TensorId) {
    let shape = cx.prog.t(x).shape.clone();
    let c = shape[1];
    let out = cx.tensor(&node.name, shape, DType::I8, Some(node.id));
    cx.prog.ops.push(IrOp::GroupNorm {
        input: x,
        output: out,
        groups: g.groups,
        rms: g.rms,
        eps: g.eps,
        gamma: g.gamma.clone().unwrap_or(vec![1.0; c]),
        beta: g.beta.clone().unwrap_or(vec![0.0; c]),
    });
    let out = match &g.grouped_shape {
        Some(gs) => {
            let r = cx.alias(&format!("{}.grouped", node.name), gs.clone(), out);
            cx.prog.ops.push(IrOp::Plain(Op::Reshape(wire::Reshape {
                input: out,
                output: r,
            })));
            r
        }
        None => out,
    };
    cx.vals.insert(node.id.into(), Val::Main(out));
}

/// The `GroupNorm` record: gamma and beta as f32, and the channel scales of a split concat input.
pub fn quantize(cx: &mut QuantCx<'_>, op: &IrOp) -> Result<Op<TensorId>> {
    let IrOp::GroupNorm {
        input,
        output,
        groups,
        rms,
        eps,
        gamma,
        beta,
    } = op
    else {
        bail!("internal error: not a GroupNorm")
    };
    let mut aff = gamma.clone();
    aff.extend_from_slice(beta);
    let affine = cx.blob.push_f32(&aff);
    if *rms {
        return Ok(Op::RmsNorm(wire::RmsNorm {
            input: *input,
            output: *output,
            eps: *eps,
            affine,
        }));
    }
    let in_scales = cx.channel_scales.get(input).map(|s| cx.blob.push_f32(s));
    Ok(Op::GroupNorm(wire::GroupNorm {
        input: *input,
        output: *output,
        groups: *groups as u32,
        eps: *eps,
        affine,
        in_scales,
    }))
}
