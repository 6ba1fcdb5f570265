//! Lowering: tract's decluttered typed graph -> dmq IR. Recognises GroupNorm (reshape, mean, sub,
//! RmsNorm, reshape, affine), folds biases and scalar scales into the producing product, merges chains
//! of element-wise ops into one LUT, and splits the graph into the int8 main path and the f32 timestep
//! path (everything that depends only on the timestep).
use crate::import::Imported;
use crate::ir::*;
use anyhow::{anyhow, bail, Result};
use dmq_runtime::format::{
    BinaryFn, BinaryKind, DType, LinearGeom, MatMulGeom, Op, UnaryFn, MAX_CONCAT, MAX_RANK,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Slice, TypedConcat};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, RmsNorm, Softmax};

#[derive(Clone)]
enum Val {
    Const(Arc<Tensor>),
    Time(TensorId),
    Main(TensorId),
}

/// An unsupported construct, naming the ONNX/tract node and op.
#[derive(Debug, Clone)]
pub struct Unsupported {
    pub node: String,
    pub op: String,
    pub why: String,
}

struct GroupNormMatch {
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
}

enum Role {
    Skip,
    GroupNorm(GroupNormMatch),
}

type Model = TypedModel;

fn shape_of(model: &Model, o: OutletId) -> Result<Vec<usize>> {
    let f = model.outlet_fact(o)?;
    Ok(f.shape
        .as_concrete()
        .ok_or_else(|| anyhow!("symbolic shape at {}", model.node(o.node).name))?
        .to_vec())
}

fn const_of(model: &Model, o: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(o).ok()?.konst.clone()
}

fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.cast_to::<f32>()?
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

fn single_succ(model: &Model, node: usize) -> Option<usize> {
    let s = &model.node(node).outputs[0].successors;
    if s.len() == 1 {
        Some(s[0].node)
    } else {
        None
    }
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
fn find_group_norms(model: &Model) -> Result<HashMap<usize, Role>> {
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
        };
        claim(model, &mut roles, members, root, m);
    }
    find_expanded_group_norms(model, &mut roles)?;
    Ok(roles)
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
        };
        claim(model, roles, members, root, m);
    }
    Ok(())
}

/// Strides and paddings `[top, left, bottom, right]` of a 2-D conv or pooling window over an input
/// of shape `ishape` (NCHW).
fn window(ishape: &[usize], ps: &PoolSpec) -> (TVec<usize>, [usize; 4]) {
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

fn unary_fn(name: &str) -> Option<UnaryFn> {
    Some(match name {
        "Sin" => UnaryFn::Sin,
        "Cos" => UnaryFn::Cos,
        "Exp" => UnaryFn::Exp,
        "Ln" | "Log" => UnaryFn::Ln,
        "Sqrt" => UnaryFn::Sqrt,
        "Rsqrt" => UnaryFn::Rsqrt,
        "Recip" | "Reciprocal" => UnaryFn::Recip,
        "Neg" => UnaryFn::Neg,
        "Abs" => UnaryFn::Abs,
        "Square" => UnaryFn::Square,
        "Silu" => UnaryFn::Silu,
        "Sigmoid" => UnaryFn::Sigmoid,
        "Tanh" => UnaryFn::Tanh,
        "Erf" => UnaryFn::Erf,
        "GeluExact" | "Gelu" => UnaryFn::Gelu,
        _ => return None,
    })
}

/// One einsum axis with its size and positions in A, B and the output.
#[derive(Debug, Clone, Copy)]
struct Ax {
    size: usize,
    a: Option<usize>,
    b: Option<usize>,
    o: Option<usize>,
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Merges axes into one (size, stride) on each of two tensors, ordered by the first tensor's strides.
fn merge(
    axes: &[Ax],
    first: impl Fn(&Ax) -> usize,
    second: impl Fn(&Ax) -> usize,
) -> Option<(usize, usize, usize, Vec<Ax>)> {
    if axes.is_empty() {
        return Some((1, 0, 0, vec![]));
    }
    let mut v = axes.to_vec();
    v.sort_by_key(|a| std::cmp::Reverse(first(a)));
    for w in v.windows(2) {
        if first(&w[0]) != w[1].size * first(&w[1]) || second(&w[0]) != w[1].size * second(&w[1]) {
            return None;
        }
    }
    let last = v.last().unwrap();
    Some((
        v.iter().map(|a| a.size).product(),
        first(last),
        second(last),
        v,
    ))
}

struct EinPlan {
    batch: Vec<Ax>,
    m: Vec<Ax>,
    n: Vec<Ax>,
    k: Vec<Ax>,
    sa: Vec<usize>,
    sb: Vec<usize>,
    so: Vec<usize>,
}

fn plan_einsum(
    op: &EinSum,
    sa_shape: &[usize],
    sb_shape: &[usize],
    so_shape: &[usize],
) -> std::result::Result<EinPlan, String> {
    let mut p = EinPlan {
        batch: vec![],
        m: vec![],
        n: vec![],
        k: vec![],
        sa: strides(sa_shape),
        sb: strides(sb_shape),
        so: strides(so_shape),
    };
    for axis in op.axes.iter_all_axes() {
        if axis.inputs.len() != 2
            || axis.outputs.len() != 1
            || axis.inputs[0].len() > 1
            || axis.inputs[1].len() > 1
            || axis.outputs[0].len() > 1
        {
            return Err("einsum with repeated axes".into());
        }
        let (a, b, o) = (
            axis.inputs[0].first().copied(),
            axis.inputs[1].first().copied(),
            axis.outputs[0].first().copied(),
        );
        let size = a
            .map(|i| sa_shape[i])
            .or(b.map(|i| sb_shape[i]))
            .or(o.map(|i| so_shape[i]))
            .unwrap_or(1);
        if size == 1 {
            continue;
        }
        let ax = Ax { size, a, b, o };
        match (a.is_some(), b.is_some(), o.is_some()) {
            (true, true, true) => p.batch.push(ax),
            (true, false, true) => p.m.push(ax),
            (false, true, true) => p.n.push(ax),
            (true, true, false) => p.k.push(ax),
            _ => {
                return Err(format!(
                    "einsum axis '{}' is summed within one operand",
                    axis.repr
                ))
            }
        }
    }
    Ok(p)
}

/// Gathers a constant operand as `W[n][k]` (n and k multi-indices in the given axis orders).
fn gather_weights(
    t: &Tensor,
    n_axes: &[Ax],
    k_axes: &[Ax],
    pos: impl Fn(&Ax) -> usize,
) -> Result<Vec<f32>> {
    let vals = f32s(t)?;
    let st = strides(t.shape());
    let n: usize = n_axes.iter().map(|a| a.size).product();
    let k: usize = k_axes.iter().map(|a| a.size).product();
    let mut w = vec![0f32; n * k];
    let decompose = |mut i: usize, axes: &[Ax]| -> usize {
        let mut off = 0;
        for a in axes.iter().rev() {
            off += (i % a.size) * st[pos(a)];
            i /= a.size;
        }
        off
    };
    for ni in 0..n {
        let on = decompose(ni, n_axes);
        for ki in 0..k {
            w[ni * k + ki] = vals[on + decompose(ki, k_axes)];
        }
    }
    Ok(w)
}

pub struct Lowered {
    pub program: Program,
    /// tract node ids whose output ranges calibration must record
    pub stat_nodes: Vec<usize>,
}

struct Ctx<'a> {
    model: &'a Model,
    prog: Program,
    vals: HashMap<OutletId, Val>,
    quantized_time: HashMap<TensorId, TensorId>,
    unsupported: Vec<Unsupported>,
}

impl<'a> Ctx<'a> {
    fn tensor(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        dtype: DType,
        stat: Option<usize>,
    ) -> TensorId {
        self.prog.add_tensor(TensorInfo {
            name: name.to_string(),
            shape,
            dtype,
            stat,
            alias: None,
            fixed: None,
        })
    }
    fn alias(&mut self, name: &str, shape: Vec<usize>, of: TensorId) -> TensorId {
        let dtype = self.prog.t(of).dtype;
        let id = self.tensor(name, shape, dtype, None);
        self.prog.t_mut(id).alias = Some(of);
        id
    }
    fn unsupported(&mut self, node: &TypedNode, why: impl Into<String>) {
        self.unsupported.push(Unsupported {
            node: node.name.clone(),
            op: node.op.name().to_string(),
            why: why.into(),
        });
    }
    /// int8 tensor for a timestep-path value consumed by the main path (quantized once per step).
    fn quantized(&mut self, t: TensorId) -> TensorId {
        if let Some(&q) = self.quantized_time.get(&t) {
            return q;
        }
        let info = self.prog.t(t).clone();
        // a reshaped time-path value is observed where it was computed
        let stat = info.stat.or(self.prog.t(self.prog.quant_root(t)).stat);
        let q = self.tensor(
            &format!("{}.q", info.name),
            info.shape.clone(),
            DType::I8,
            stat,
        );
        self.prog.ops.push(IrOp::Quantize {
            input: t,
            output: q,
        });
        self.quantized_time.insert(t, q);
        q
    }
    /// f32 tensor holding a constant (timestep path).
    fn time_const(&mut self, name: &str, t: &Tensor, rank: usize) -> Result<TensorId> {
        let mut shape: Vec<usize> = t.shape().to_vec();
        while shape.len() < rank {
            shape.insert(0, 1);
        }
        let id = self.tensor(name, shape, DType::F32, None);
        self.prog.ops.push(IrOp::Const {
            output: id,
            values: f32s(t)?,
        });
        Ok(id)
    }
    fn int8_const(
        &mut self,
        name: &str,
        t: &Tensor,
        rank: usize,
        stat_values: &[f32],
    ) -> Result<TensorId> {
        let mut shape: Vec<usize> = t.shape().to_vec();
        while shape.len() < rank {
            shape.insert(0, 1);
        }
        let (lo, hi) = stat_values
            .iter()
            .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
        let id = self.tensor(name, shape, DType::I8, None);
        let (s, z) = crate::quant::affine_params(lo, hi);
        self.prog.t_mut(id).fixed = Some((s, z));
        self.prog.ops.push(IrOp::Const {
            output: id,
            values: f32s(t)?,
        });
        Ok(id)
    }
    /// Reshapes to `rank` by prepending 1s (a no-op on the data) if needed.
    fn to_rank(&mut self, t: TensorId, rank: usize) -> TensorId {
        let info = self.prog.t(t).clone();
        if info.shape.len() == rank {
            return t;
        }
        let mut shape = info.shape.clone();
        while shape.len() < rank {
            shape.insert(0, 1);
        }
        let out = self.alias(&format!("{}.rank{rank}", info.name), shape, t);
        self.prog.ops.push(IrOp::Plain(Op::Reshape {
            input: t,
            output: out,
        }));
        out
    }
}

/// Lowers the imported model. Returns every unsupported construct at once.
pub fn lower(imp: &Imported) -> Result<Lowered, Vec<Unsupported>> {
    lower_inner(imp).map_err(|e| match e {
        LowerError::Unsupported(v) => v,
        LowerError::Other(e) => vec![Unsupported {
            node: "<model>".into(),
            op: "-".into(),
            why: format!("{e:#}"),
        }],
    })
}

enum LowerError {
    Unsupported(Vec<Unsupported>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for LowerError {
    fn from(e: anyhow::Error) -> Self {
        LowerError::Other(e)
    }
}

fn lower_inner(imp: &Imported) -> Result<Lowered, LowerError> {
    let model = &imp.model;
    let roles = find_group_norms(model)?;
    let mut cx = Ctx {
        model,
        prog: Program::default(),
        vals: HashMap::new(),
        quantized_time: HashMap::new(),
        unsupported: vec![],
    };
    let inputs = model.input_outlets()?.to_vec();
    let order = model.eval_order()?;
    for &id in &order {
        let node = model.node(id);
        if let Some(Role::Skip) = roles.get(&id) {
            continue;
        }
        let outlet: OutletId = id.into();
        if let Some(k) = node.outputs[0].fact.konst.clone() {
            cx.vals.insert(outlet, Val::Const(k));
            continue;
        }
        if inputs.contains(&outlet) {
            let ix = inputs.iter().position(|o| *o == outlet).unwrap();
            let shape = shape_of(model, outlet)?;
            if ix == imp.latent.index {
                let f = cx.tensor(&node.name, shape.clone(), DType::F32, None);
                let q = cx.tensor(&format!("{}.q", node.name), shape, DType::I8, Some(id));
                cx.prog.latent = Some(f);
                cx.prog.ops.push(IrOp::Quantize {
                    input: f,
                    output: q,
                });
                cx.vals.insert(outlet, Val::Main(q));
            } else if imp.timestep.as_ref().map(|t| t.index) == Some(ix) {
                let f = cx.tensor(&node.name, shape, DType::F32, Some(id));
                cx.prog.timestep = Some(f);
                cx.vals.insert(outlet, Val::Time(f));
            } else if shape.iter().product::<usize>() <= 64 {
                // a scalar condition: part of the f32 time path
                let f = cx.tensor(&node.name, shape, DType::F32, Some(id));
                cx.prog.extras.push((node.name.clone(), f));
                cx.vals.insert(outlet, Val::Time(f));
            } else {
                // an embedding (e.g. encoder_hidden_states): quantized on entry like the latent
                let f = cx.tensor(&node.name, shape.clone(), DType::F32, None);
                let q = cx.tensor(&format!("{}.q", node.name), shape, DType::I8, Some(id));
                cx.prog.extras.push((node.name.clone(), f));
                cx.prog.ops.push(IrOp::Quantize {
                    input: f,
                    output: q,
                });
                cx.vals.insert(outlet, Val::Main(q));
            }
            continue;
        }
        if let Some(Role::GroupNorm(g)) = roles.get(&id) {
            match cx.vals.get(&g.x).cloned() {
                Some(Val::Main(x0)) if g.layer_norm.is_some() => {
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
                        cx.prog.ops.push(IrOp::Plain(Op::Transpose {
                            input: x0,
                            output: xt,
                            perm: fwd.iter().map(|&i| i as u8).collect(),
                        }));
                        xt
                    } else {
                        x0
                    };
                    let shape = cx.prog.t(x).shape.clone();
                    let c = *shape.last().unwrap_or(&1);
                    let tokens = shape.iter().product::<usize>() / c.max(1);
                    let xin = cx.alias(&format!("{}.tokens", node.name), vec![tokens, c, 1], x);
                    cx.prog.ops.push(IrOp::Plain(Op::Reshape {
                        input: x,
                        output: xin,
                    }));
                    let normed = cx.tensor(
                        &format!("{}.ln", node.name),
                        vec![tokens, c, 1],
                        DType::I8,
                        Some(id),
                    );
                    cx.prog.ops.push(IrOp::GroupNorm {
                        input: xin,
                        output: normed,
                        groups: 1,
                        eps: g.eps,
                        gamma: g.gamma.clone().unwrap_or(vec![1.0; c]),
                        beta: g.beta.clone().unwrap_or(vec![0.0; c]),
                    });
                    let name = if moved {
                        format!("{}.normed", node.name)
                    } else {
                        node.name.clone()
                    };
                    let mut out = cx.alias(&name, shape, normed);
                    cx.prog.ops.push(IrOp::Plain(Op::Reshape {
                        input: normed,
                        output: out,
                    }));
                    if moved {
                        let back = cx.alias(&node.name, shape0, out);
                        let perm = (0..rank)
                            .map(|i| fwd.iter().position(|&f| f == i).unwrap_or(i) as u8)
                            .collect();
                        cx.prog.ops.push(IrOp::Plain(Op::Transpose {
                            input: out,
                            output: back,
                            perm,
                        }));
                        out = back;
                    }
                    cx.vals.insert(outlet, Val::Main(out));
                }
                Some(Val::Main(x)) => {
                    let shape = cx.prog.t(x).shape.clone();
                    let c = shape[1];
                    let out = cx.tensor(&node.name, shape, DType::I8, Some(id));
                    cx.prog.ops.push(IrOp::GroupNorm {
                        input: x,
                        output: out,
                        groups: g.groups,
                        eps: g.eps,
                        gamma: g.gamma.clone().unwrap_or(vec![1.0; c]),
                        beta: g.beta.clone().unwrap_or(vec![0.0; c]),
                    });
                    let out = match &g.grouped_shape {
                        Some(gs) => {
                            let r = cx.alias(&format!("{}.grouped", node.name), gs.clone(), out);
                            cx.prog.ops.push(IrOp::Plain(Op::Reshape {
                                input: out,
                                output: r,
                            }));
                            r
                        }
                        None => out,
                    };
                    cx.vals.insert(outlet, Val::Main(out));
                }
                Some(_) => cx.unsupported(node, "GroupNorm on the timestep path"),
                None => {}
            }
            continue;
        }
        let ins: Vec<Option<Val>> = node
            .inputs
            .iter()
            .map(|i| cx.vals.get(i).cloned())
            .collect();
        if ins.iter().any(|v| v.is_none()) {
            // downstream of a node already reported: only root causes are listed
            continue;
        }
        let ins: Vec<Val> = ins.into_iter().map(|v| v.unwrap()).collect();
        let any_main = ins.iter().any(|v| matches!(v, Val::Main(_)));
        let any_time = ins.iter().any(|v| matches!(v, Val::Time(_)));
        if !any_main && !any_time {
            cx.unsupported(node, "a constant computation tract did not fold");
            continue;
        }
        let res = if any_main {
            lower_main(&mut cx, node, &ins)
        } else {
            lower_time(&mut cx, node, &ins)
        };
        match res {
            Ok(v) => {
                cx.vals.insert(outlet, v);
            }
            Err(e) => cx.unsupported(node, format!("{e:#}")),
        }
    }
    let out = model.output_outlets()?[0];
    match cx.vals.get(&out).cloned() {
        Some(Val::Main(t)) => {
            let info = cx.prog.t(t).clone();
            let f = cx.tensor(&imp.output_name, info.shape, DType::F32, None);
            cx.prog.ops.push(IrOp::Dequantize {
                input: t,
                output: f,
            });
            cx.prog.output = Some(f);
        }
        _ if !cx.unsupported.is_empty() => {}
        _ => cx.unsupported.push(Unsupported {
            node: imp.output_name.clone(),
            op: "-".into(),
            why: "the output does not depend on the latent input".into(),
        }),
    }
    if !cx.unsupported.is_empty() {
        return Err(LowerError::Unsupported(cx.unsupported));
    }
    let mut stat_nodes: Vec<usize> = cx.prog.tensors.iter().filter_map(|t| t.stat).collect();
    stat_nodes.sort();
    stat_nodes.dedup();
    Ok(Lowered {
        program: cx.prog,
        stat_nodes,
    })
}

/// Data-movement ops shared by both paths: the output aliases the input's quantization.
fn lower_movement(cx: &mut Ctx, node: &TypedNode, x: TensorId) -> Result<Option<TensorId>> {
    let oshape = shape_of(cx.model, node.id.into())?;
    let ishape = cx.prog.t(x).shape.clone();
    if oshape.len() > MAX_RANK {
        bail!("rank {} is above the supported {MAX_RANK}", oshape.len());
    }
    let name = node.name.clone();
    if let Some(ax) = node.op_as::<AxisOp>() {
        let out = cx.alias(&name, oshape.clone(), x);
        match ax {
            AxisOp::Move(from, to) => {
                let mut order: Vec<usize> = (0..ishape.len()).collect();
                let a = order.remove(*from);
                order.insert(*to, a);
                let perm = order.iter().map(|&p| p as u8).collect();
                cx.prog.ops.push(IrOp::Plain(Op::Transpose {
                    input: x,
                    output: out,
                    perm,
                }));
            }
            _ => cx.prog.ops.push(IrOp::Plain(Op::Reshape {
                input: x,
                output: out,
            })),
        }
        return Ok(Some(out));
    }
    if let Some(sl) = node.op_as::<Slice>() {
        let start = tract_onnx::tract_core::internal::DimLike::to_usize(&sl.start)?;
        let out = cx.alias(&name, oshape, x);
        cx.prog.ops.push(IrOp::Plain(Op::Slice {
            input: x,
            output: out,
            axis: sl.axis as u8,
            start: start as u32,
        }));
        return Ok(Some(out));
    }
    match node.op.name().as_ref() {
        "NearestUpsample" => {
            let out = cx.alias(&name, oshape, x);
            cx.prog.ops.push(IrOp::Plain(Op::Upsample {
                input: x,
                output: out,
            }));
            Ok(Some(out))
        }
        "MultiBroadcastTo" => {
            let x = cx.to_rank(x, oshape.len());
            let out = cx.alias(&name, oshape, x);
            cx.prog.ops.push(IrOp::Plain(Op::Broadcast {
                input: x,
                output: out,
            }));
            Ok(Some(out))
        }
        "Cast" => Ok(Some(x)),
        _ => Ok(None),
    }
}

fn lower_main(cx: &mut Ctx, node: &TypedNode, ins: &[Val]) -> Result<Val> {
    let model = cx.model;
    let id = node.id;
    let oshape = shape_of(model, id.into())?;
    let name = node.name.clone();
    let main = |v: &Val| if let Val::Main(t) = v { Some(*t) } else { None };
    if let Some(x) = main(&ins[0]) {
        if ins.len() == 1 {
            if let Some(out) = lower_movement(cx, node, x)? {
                return Ok(Val::Main(out));
            }
        }
    }
    if let Some(conv) = node.op_as::<Conv>() {
        let Some(x) = main(&ins[0]) else {
            bail!("conv input must be an activation")
        };
        let Val::Const(w) = &ins[1] else {
            bail!("conv weights must be constant")
        };
        if conv.group != 1 {
            bail!(
                "grouped convolution (group {}) is not supported yet",
                conv.group
            );
        }
        if conv.pool_spec.data_format != DataFormat::NCHW
            || conv.kernel_fmt != KernelFormat::OIHW
            || conv.pool_spec.kernel_shape.len() != 2
        {
            bail!("only 2-D NCHW/OIHW convolutions are supported");
        }
        if conv
            .pool_spec
            .dilations
            .as_ref()
            .is_some_and(|d| d.iter().any(|&x| x != 1))
        {
            bail!("dilated convolution is not supported yet");
        }
        let ks = &conv.pool_spec.kernel_shape;
        let (st, pad) = window(&cx.prog.t(x).shape.clone(), &conv.pool_spec);
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
        let out = cx.tensor(&name, oshape, DType::I8, Some(id));
        cx.prog.ops.push(IrOp::Conv {
            input: x,
            output: out,
            w: f32s(w)?,
            bias,
            time_bias,
            kernel: [ks[0], ks[1]],
            stride: [st[0], st[1]],
            pad,
            node: name,
        });
        return Ok(Val::Main(out));
    }
    // average pooling (diffusers' ResNet downsampling): a convolution whose weights are 1/(kh·kw) on
    // the channel diagonal — exact in int8 (the per-channel weight scale makes the value 127), run by
    // the conv kernels
    if let Some(pool) = node.op_as::<SumPool>() {
        let Some(x) = main(&ins[0]) else {
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
        let out = cx.tensor(&name, oshape, DType::I8, Some(id));
        cx.prog.ops.push(IrOp::Conv {
            input: x,
            output: out,
            w,
            bias: vec![0.0; c],
            time_bias: None,
            kernel: ks,
            stride: [st[0], st[1]],
            pad,
            node: name,
        });
        return Ok(Val::Main(out));
    }
    if let Some(ein) = node.op_as::<EinSum>() {
        if ins.len() != 2 {
            bail!("einsum with {} operands", ins.len());
        }
        let sa = shape_of(model, node.inputs[0])?;
        let sb = shape_of(model, node.inputs[1])?;
        let p = plan_einsum(ein, &sa, &sb, &oshape).map_err(|e| anyhow!(e))?;
        return match (&ins[0], &ins[1]) {
            (Val::Main(a), Val::Const(w)) => lower_linear(cx, node, *a, w, &p, false, false),
            (Val::Const(w), Val::Main(b)) => lower_linear(cx, node, *b, w, &p, true, false),
            (a, b) => {
                let a = match a {
                    Val::Main(t) => *t,
                    Val::Time(t) => cx.quantized(*t),
                    Val::Const(_) => unreachable!(),
                };
                let b = match b {
                    Val::Main(t) => *t,
                    Val::Time(t) => cx.quantized(*t),
                    Val::Const(c) => cx.int8_const(&format!("{name}.b"), c, sb.len(), &f32s(c)?)?,
                };
                lower_matmul(cx, node, a, b, &p, oshape)
            }
        };
    }
    if let Some(sm) = node.op_as::<Softmax>() {
        let Some(x) = main(&ins[0]) else {
            bail!("softmax input")
        };
        if sm.axes.len() != 1 {
            bail!("softmax over several axes");
        }
        let out = cx.tensor(&name, oshape, DType::I8, None);
        cx.prog.t_mut(out).fixed = Some((1.0 / 255.0, -128));
        cx.prog.ops.push(IrOp::Softmax {
            input: x,
            output: out,
            axis: sm.axes[0],
        });
        return Ok(Val::Main(out));
    }
    if let Some(cat) = node.op_as::<TypedConcat>() {
        if ins.len() > MAX_CONCAT {
            bail!("concat of {} inputs (at most {MAX_CONCAT})", ins.len());
        }
        let mut ts = vec![];
        for (k, v) in ins.iter().enumerate() {
            ts.push(match v {
                Val::Main(t) => *t,
                Val::Time(t) => cx.quantized(*t),
                Val::Const(c) => {
                    let r = oshape.len();
                    cx.int8_const(&format!("{name}.in{k}"), c, r, &f32s(c)?)?
                }
            });
        }
        let out = cx.tensor(&name, oshape, DType::I8, Some(id));
        cx.prog.ops.push(IrOp::Concat {
            inputs: ts,
            output: out,
            axis: cat.axis,
        });
        return Ok(Val::Main(out));
    }
    let opname = node.op.name().to_string();
    if let Some(f) = unary_fn(&opname) {
        let Some(x) = main(&ins[0]) else {
            bail!("unary input")
        };
        return Ok(Val::Main(push_lut(cx, node, 0, x, ScalarFn::Unary(f))));
    }
    if ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"].contains(&opname.as_str())
        && ins.len() == 2
    {
        return lower_binary_main(cx, node, &opname, ins, oshape);
    }
    bail!("no int8 lowering for this op")
}

/// Appends `f` to a LUT chain: extends the producer's chain when it is a LUT used only here.
fn push_lut(cx: &mut Ctx, node: &TypedNode, slot: usize, x: TensorId, f: ScalarFn) -> TensorId {
    if let Some(p) = cx.prog.producer(x) {
        if only_used_here(cx, node, slot, x) {
            if let IrOp::Lut { chain, .. } = &mut cx.prog.ops[p] {
                chain.push(f);
                cx.prog.t_mut(x).stat = Some(node.id);
                return x;
            }
        }
    }
    let shape = cx.prog.t(x).shape.clone();
    let out = cx.tensor(&node.name, shape, DType::I8, Some(node.id));
    cx.prog.ops.push(IrOp::Lut {
        input: x,
        output: out,
        chain: vec![f],
    });
    out
}

/// True when `x` (input `slot` of `node`) feeds only `node`: one successor in tract's graph and no
/// IR consumer yet (`node` itself is being lowered).
fn only_used_here(cx: &Ctx, node: &TypedNode, slot: usize, x: TensorId) -> bool {
    let outlet = node.inputs[slot];
    cx.model.node(outlet.node).outputs[outlet.slot]
        .successors
        .len()
        == 1
        && cx.prog.consumers(x) == 0
        && cx.prog.output != Some(x)
}

/// Walks back from `x` (used only by the node being lowered) through single-use reshapes to a product
/// op (Conv/Linear/MatMul). Returns the op index and the tensors on the way.
fn product_behind(cx: &Ctx, mut x: TensorId) -> Option<(usize, Vec<TensorId>)> {
    let mut path = vec![x];
    loop {
        let p = cx.prog.producer(x)?;
        match &cx.prog.ops[p] {
            IrOp::Conv { .. } | IrOp::Linear { .. } | IrOp::MatMul { .. } => {
                return Some((p, path))
            }
            IrOp::Plain(Op::Reshape { input, .. }) => {
                x = *input;
                if cx.prog.consumers(x) != 1 {
                    return None;
                }
                path.push(x);
            }
            _ => return None,
        }
    }
}

/// Tries to fold `x + c` (c constant) into the bias of the product that made `x`.
fn fold_bias(
    cx: &mut Ctx,
    node: &TypedNode,
    slot: usize,
    x: TensorId,
    c: &Tensor,
    sign: f32,
) -> Result<bool> {
    if !only_used_here(cx, node, slot, x) {
        return Ok(false);
    }
    let Some((p, path)) = product_behind(cx, x) else {
        return Ok(false);
    };
    let oshape = shape_of(cx.model, node.id.into())?;
    if oshape != cx.prog.t(x).shape {
        return Ok(false);
    }
    let full = c
        .broadcast_to_shape(&oshape)
        .ok()
        .map(|t| f32s(&t))
        .transpose()?;
    let Some(full) = full else { return Ok(false) };
    let per_n: Option<Vec<f32>> = match &cx.prog.ops[p] {
        IrOp::Conv { output, .. } => {
            let sh = &cx.prog.t(*output).shape;
            let (co, pp) = (sh[1], sh[2] * sh[3]);
            (sh[0] == 1 && (0..co).all(|ch| (0..pp).all(|q| full[ch * pp + q] == full[ch * pp])))
                .then(|| (0..co).map(|ch| full[ch * pp]).collect())
        }
        IrOp::Linear { geom, .. } => {
            let (m, n) = (geom.m as usize, geom.n as usize);
            let (s0, s1) = (geom.o_strides[0] as usize, geom.o_strides[1] as usize);
            (m * n == full.len()
                && (0..n).all(|j| (0..m).all(|i| full[i * s0 + j * s1] == full[j * s1])))
            .then(|| (0..n).map(|j| full[j * s1]).collect())
        }
        _ => None,
    };
    let Some(per_n) = per_n else { return Ok(false) };
    if let IrOp::Conv { bias, .. } | IrOp::Linear { bias, .. } = &mut cx.prog.ops[p] {
        for (b, v) in bias.iter_mut().zip(per_n) {
            *b += sign * v;
        }
    } else {
        return Ok(false);
    }
    // the product's output now carries this node's range
    let root = *path.last().unwrap();
    cx.prog.t_mut(root).stat = Some(node.id);
    Ok(true)
}

fn lower_binary_main(
    cx: &mut Ctx,
    node: &TypedNode,
    opname: &str,
    ins: &[Val],
    oshape: Vec<usize>,
) -> Result<Val> {
    let name = node.name.clone();
    let rank = oshape.len();
    match (&ins[0], &ins[1]) {
        (Val::Main(x), Val::Const(c)) | (Val::Const(c), Val::Main(x)) => {
            let const_first = matches!(ins[0], Val::Const(_));
            let slot = if const_first { 1 } else { 0 };
            let cv = f32s(c)?;
            if cv.len() == 1 {
                let c0 = cv[0];
                let f = match (opname, const_first) {
                    ("Add", _) => ScalarFn::AddC(c0),
                    ("Mul", _) => ScalarFn::MulC(c0),
                    ("Sub", false) => ScalarFn::AddC(-c0),
                    ("Sub", true) => ScalarFn::RSubC(c0),
                    ("Div", false) => ScalarFn::MulC(1.0 / c0),
                    ("Div", true) => ScalarFn::RDivC(c0),
                    ("Max", _) => ScalarFn::MaxC(c0),
                    ("Min", _) => ScalarFn::MinC(c0),
                    ("Pow", false) => ScalarFn::PowC(c0),
                    _ => bail!("{opname} with a constant base"),
                };
                // a positive scale right after an activation product folds into its requantization
                if let ScalarFn::MulC(s) = f {
                    if s > 0.0 && only_used_here(cx, node, slot, *x) {
                        if let Some((p, path)) = product_behind(cx, *x) {
                            if let IrOp::MatMul { post_scale, .. } = &mut cx.prog.ops[p] {
                                *post_scale *= s;
                                let root = *path.last().unwrap();
                                cx.prog.t_mut(root).stat = Some(node.id);
                                return Ok(Val::Main(*x));
                            }
                        }
                    }
                }
                return Ok(Val::Main(push_lut(cx, node, slot, *x, f)));
            }
            if (opname == "Add" || (opname == "Sub" && !const_first))
                && fold_bias(
                    cx,
                    node,
                    slot,
                    *x,
                    c,
                    if opname == "Add" { 1.0 } else { -1.0 },
                )?
            {
                return Ok(Val::Main(*x));
            }
            let kind = match opname {
                "Add" => BinaryKind::Add,
                "Sub" => BinaryKind::Sub,
                "Mul" => BinaryKind::Mul,
                _ => bail!("{opname} of an activation and a constant tensor"),
            };
            let ct = cx.int8_const(&format!("{name}.const"), c, rank, &cv)?;
            let xr = cx.to_rank(*x, rank);
            let (a, b) = if const_first { (ct, xr) } else { (xr, ct) };
            let out = cx.tensor(&name, oshape, DType::I8, Some(node.id));
            cx.prog.ops.push(IrOp::Binary {
                kind,
                a,
                b,
                output: out,
            });
            Ok(Val::Main(out))
        }
        (a, b) => {
            let kind = match opname {
                "Add" => BinaryKind::Add,
                "Sub" => BinaryKind::Sub,
                "Mul" => BinaryKind::Mul,
                _ => bail!("{opname} of two activations is not supported"),
            };
            let mut t = |v: &Val| -> TensorId {
                match v {
                    Val::Main(t) => *t,
                    Val::Time(t) => cx.quantized(*t),
                    Val::Const(_) => unreachable!(),
                }
            };
            let (a, b) = (t(a), t(b));
            let (a, b) = (cx.to_rank(a, rank), cx.to_rank(b, rank));
            let out = cx.tensor(&name, oshape, DType::I8, Some(node.id));
            cx.prog.ops.push(IrOp::Binary {
                kind,
                a,
                b,
                output: out,
            });
            Ok(Val::Main(out))
        }
    }
}

fn lower_linear(
    cx: &mut Ctx,
    node: &TypedNode,
    x: TensorId,
    w: &Tensor,
    p: &EinPlan,
    swapped: bool,
    float: bool,
) -> Result<Val> {
    if !p.batch.is_empty() {
        bail!("einsum with a constant operand and batch axes");
    }
    // The activation's free axes are "m" and the constant's are "n".
    let (m_axes, n_axes, act_pos, w_pos, sx): (
        Vec<Ax>,
        Vec<Ax>,
        fn(&Ax) -> usize,
        fn(&Ax) -> usize,
        &Vec<usize>,
    ) = if swapped {
        (
            p.n.clone(),
            p.m.clone(),
            |a| a.b.unwrap(),
            |a| a.a.unwrap(),
            &p.sb,
        )
    } else {
        (
            p.m.clone(),
            p.n.clone(),
            |a| a.a.unwrap(),
            |a| a.b.unwrap(),
            &p.sa,
        )
    };
    let so = &p.so;
    let (mut x, mut m_axes, mut k_axes, mut sx) = (x, m_axes, p.k.clone(), sx.clone());
    let runs = |m_axes: &[Ax], k_axes: &[Ax], sx: &[usize]| {
        merge(m_axes, |a| sx[act_pos(a)], |a| so[a.o.unwrap()]).is_some()
            && merge(k_axes, |a| sx[act_pos(a)], |a| sx[act_pos(a)]).is_some()
    };
    if !runs(&m_axes, &k_axes, &sx) {
        // the kernel reads rows and the reduction as contiguous runs: transpose the activation to
        // [rows in output order, reduction axes] (tract folds an attention's head merge into the
        // output projection, leaving heads and head channels apart)
        let xshape = cx.prog.t(x).shape.clone();
        let mut rows = m_axes.clone();
        rows.sort_by_key(|a| std::cmp::Reverse(so[a.o.unwrap()]));
        let mut red = k_axes.clone();
        red.sort_by_key(|a| std::cmp::Reverse(sx[act_pos(a)]));
        let used: Vec<usize> = rows.iter().chain(&red).map(act_pos).collect();
        let perm: Vec<usize> = (0..xshape.len())
            .filter(|i| !used.contains(i))
            .chain(used.iter().copied())
            .collect();
        let moved = |a: &mut Ax| {
            let slot = if swapped { &mut a.b } else { &mut a.a };
            *slot = slot.and_then(|old| perm.iter().position(|&p| p == old));
        };
        m_axes.iter_mut().for_each(moved);
        k_axes.iter_mut().for_each(moved);
        let shape: Vec<usize> = perm.iter().map(|&i| xshape[i]).collect();
        let xt = cx.alias(&format!("{}.rows", node.name), shape.clone(), x);
        cx.prog.ops.push(IrOp::Plain(Op::Transpose {
            input: x,
            output: xt,
            perm: perm.iter().map(|&i| i as u8).collect(),
        }));
        x = xt;
        sx = strides(&shape);
    }
    let (m, ma_s, mo_s, _) = merge(&m_axes, |a| sx[act_pos(a)], |a| so[a.o.unwrap()])
        .ok_or_else(|| anyhow!("einsum row axes are not contiguous"))?;
    let (k, ka_s, _, k_order) = merge(&k_axes, |a| sx[act_pos(a)], |a| sx[act_pos(a)])
        .ok_or_else(|| anyhow!("einsum reduction axes are not contiguous"))?;
    let (n, no_s, _, n_order) = merge(&n_axes, |a| so[a.o.unwrap()], |a| so[a.o.unwrap()])
        .ok_or_else(|| anyhow!("einsum output axes are not contiguous"))?;
    let wv = gather_weights(w, &n_order, &k_order, w_pos)?;
    let geom = LinearGeom {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        a_strides: [ma_s as u32, ka_s as u32],
        o_strides: [mo_s as u32, no_s as u32],
    };
    let oshape = shape_of(cx.model, node.id.into())?;
    let dt = if float { DType::F32 } else { DType::I8 };
    let out = cx.tensor(&node.name, oshape, dt, Some(node.id));
    cx.prog.ops.push(IrOp::Linear {
        input: x,
        output: out,
        geom,
        w: wv,
        bias: vec![0.0; n],
        float,
        node: node.name.clone(),
    });
    Ok(if float {
        Val::Time(out)
    } else {
        Val::Main(out)
    })
}

fn lower_matmul(
    cx: &mut Ctx,
    node: &TypedNode,
    a: TensorId,
    b: TensorId,
    p: &EinPlan,
    oshape: Vec<usize>,
) -> Result<Val> {
    if p.batch.len() > 2 {
        bail!("einsum with more than two batch axes");
    }
    let (sa, sb, so) = (&p.sa, &p.sb, &p.so);
    let (m, ma, mo, _) = merge(&p.m, |x| sa[x.a.unwrap()], |x| so[x.o.unwrap()])
        .ok_or_else(|| anyhow!("matmul row axes are not contiguous"))?;
    let (n, nb, no, _) = merge(&p.n, |x| sb[x.b.unwrap()], |x| so[x.o.unwrap()])
        .ok_or_else(|| anyhow!("matmul column axes are not contiguous"))?;
    let (k, ka, kb, _) = merge(&p.k, |x| sa[x.a.unwrap()], |x| sb[x.b.unwrap()])
        .ok_or_else(|| anyhow!("matmul reduction axes are not contiguous"))?;
    let mut batch = [1u32; 2];
    let (mut bas, mut bbs, mut bos) = ([0u32; 2], [0u32; 2], [0u32; 2]);
    for (i, ax) in p.batch.iter().enumerate() {
        batch[i] = ax.size as u32;
        bas[i] = sa[ax.a.unwrap()] as u32;
        bbs[i] = sb[ax.b.unwrap()] as u32;
        bos[i] = so[ax.o.unwrap()] as u32;
    }
    let geom = MatMulGeom {
        batch,
        m: m as u32,
        n: n as u32,
        k: k as u32,
        a_strides: [bas[0], bas[1], ma as u32, ka as u32],
        b_strides: [bbs[0], bbs[1], kb as u32, nb as u32],
        o_strides: [bos[0], bos[1], mo as u32, no as u32],
    };
    let out = cx.tensor(&node.name, oshape, DType::I8, Some(node.id));
    cx.prog.ops.push(IrOp::MatMul {
        a,
        b,
        output: out,
        geom,
        post_scale: 1.0,
    });
    Ok(Val::Main(out))
}

fn lower_time(cx: &mut Ctx, node: &TypedNode, ins: &[Val]) -> Result<Val> {
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
            cx.prog.ops.push(IrOp::Plain(Op::FUnary {
                input: x,
                output: out,
                func: f,
            }));
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
        // an embedding table indexed by a timestep-path value (class labels)
        if let (Val::Const(table), Val::Time(index)) = (&ins[0], &ins[1]) {
            let ts = table.shape().to_vec();
            let axis_ok = node
                .op_as::<tract_onnx::tract_core::ops::array::Gather>()
                .map(|g| g.axis == 0)
                .unwrap_or(false);
            if ts.len() == 2 && axis_ok {
                let out = cx.tensor(&name, oshape, DType::F32, Some(node.id));
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
        bail!("only a constant 2-D table indexed along axis 0 (an embedding) is supported");
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
                Val::Main(_) => unreachable!(),
            };
            let _ = ts.push(t);
        }
        let out = cx.tensor(&name, oshape, DType::F32, Some(node.id));
        cx.prog.ops.push(IrOp::Plain(Op::FConcat {
            inputs: ts,
            output: out,
            axis: cat.axis as u8,
        }));
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
        cx.prog.ops.push(IrOp::Plain(Op::FBinary {
            a,
            b,
            output: out,
            func,
        }));
        return Ok(Val::Time(out));
    }
    bail!("no lowering for this op on the timestep path")
}

/// Number of each IR op kind, for the summary.
pub fn op_histogram(p: &Program) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for op in &p.ops {
        *h.entry(op.kind()).or_insert(0) += 1;
    }
    h
}
