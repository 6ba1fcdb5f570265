//! Products: einsums (and MatMul) planned into linears with constant weights (`Linear`, or `FLinear`
//! on the timestep path) and activation × activation products (`MatMul`, attention), and their
//! runtime records.
use super::{f32s, shape_of, Ctx, Val};
use crate::ir::*;
use crate::quant::weights::fold_rows;
use crate::quant::{requant_of, row_weights, Layout, QuantCx};
use anyhow::{anyhow, bail, Result};
use dmq_runtime::format::{self as wire, DType, LinearGeom, MatMulGeom, Op};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

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

pub(super) struct EinPlan {
    batch: Vec<Ax>,
    m: Vec<Ax>,
    n: Vec<Ax>,
    k: Vec<Ax>,
    sa: Vec<usize>,
    sb: Vec<usize>,
    so: Vec<usize>,
}

pub(super) fn plan_einsum(
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

pub(super) fn lower_linear(
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
        cx.prog.ops.push(IrOp::Plain(Op::Transpose(wire::Transpose {
            input: x,
            output: xt,
            perm: perm.iter().map(|&i| i as u8).collect(),
        })));
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
        w: wv.into(),
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

pub(super) fn lower_matmul(
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

/// The input axis order of a one-operand einsum that only moves axes (each axis at most once on
/// either side; an axis on one side only has size 1), as the output orders them (unit axes that
/// leave, last): a transpose by it then a reshape to the output's shape computes it. Or None.
fn permutation(ein: &EinSum, ishape: &[usize], oshape: &[usize]) -> Option<Vec<usize>> {
    let mut order = vec![];
    for axis in ein.axes.iter_all_axes() {
        let one = |v: &[usize]| v.len() <= 1;
        let (Some(i), Some(o)) = (axis.inputs.first(), axis.outputs.first()) else {
            return None;
        };
        if axis.inputs.len() != 1 || !one(i) || !one(o) {
            return None;
        }
        match (i.first(), o.first()) {
            (Some(&i), Some(&o)) if ishape.get(i) == oshape.get(o) => order.push((o, i)),
            (Some(&i), None) if ishape.get(i) == Some(&1) => order.push((usize::MAX, i)),
            (None, Some(&o)) if oshape.get(o) == Some(&1) => {}
            _ => return None,
        }
    }
    order.sort_unstable();
    let perm: Vec<usize> = order.iter().map(|&(_, i)| i).collect();
    let mut seen = perm.clone();
    seen.sort_unstable();
    (seen == (0..ishape.len()).collect::<Vec<_>>()).then_some(perm)
}

/// An einsum: a linear when one operand is constant, otherwise an activation product.
pub(super) fn lower_einsum(
    cx: &mut Ctx,
    node: &TypedNode,
    ein: &EinSum,
    ins: &[Val],
    oshape: Vec<usize>,
) -> Result<Val> {
    let ishape = shape_of(cx.model, node.inputs[0])?;
    if let ([Val::Main(x)], Some(perm)) = (ins, permutation(ein, &ishape, &oshape)) {
        // one operand whose axes only move (`nhwpqc->nchpwq`, a DiT's unpatchify): a transpose,
        // then a reshape for the unit axes that come or go
        let moved: Vec<usize> = perm.iter().map(|&i| ishape[i]).collect();
        let t = cx.alias(&format!("{}.moved", node.name), moved, *x);
        let perm = perm.iter().map(|&p| p as u8).collect();
        cx.prog.ops.push(IrOp::Plain(Op::Transpose(wire::Transpose {
            input: *x,
            output: t,
            perm,
        })));
        let out = cx.alias(&node.name, oshape, t);
        cx.prog.t_mut(out).value = Some(node.id);
        cx.prog.ops.push(IrOp::Plain(Op::Reshape(wire::Reshape {
            input: t,
            output: out,
        })));
        return Ok(Val::Main(out));
    }
    if ins.len() != 2 {
        bail!("einsum with {} operands", ins.len());
    }
    let sa = ishape;
    let sb = shape_of(cx.model, node.inputs[1])?;
    let p = plan_einsum(ein, &sa, &sb, &oshape).map_err(|e| anyhow!(e))?;
    match (&ins[0], &ins[1]) {
        // a constant with batch axes (a head's memory keys or values concatenated to an
        // attention's) is no weight matrix: it runs as an int8 operand of an activation product
        (Val::Main(a), Val::Const(w)) if p.batch.is_empty() => {
            lower_linear(cx, node, *a, w, &p, false, false)
        }
        (Val::Const(w), Val::Main(b)) if p.batch.is_empty() => {
            lower_linear(cx, node, *b, w, &p, true, false)
        }
        (a, b) => {
            let name = &node.name;
            let a = match a {
                Val::Main(t) => *t,
                Val::Time(t) => cx.quantized(*t),
                Val::Const(_) if matches!(b, Val::Const(_)) => bail!("an einsum of two constants"),
                Val::Const(c) => cx.int8_const(&format!("{name}.a"), c, sa.len(), &f32s(c)?)?,
            };
            let b = match b {
                Val::Main(t) => *t,
                Val::Time(t) => cx.quantized(*t),
                Val::Const(c) => cx.int8_const(&format!("{name}.b"), c, sb.len(), &f32s(c)?)?,
            };
            lower_matmul(cx, node, a, b, &p, oshape)
        }
    }
}

/// The arena scratch of a product record: a linear's staged input (and unpacked 4-bit weights), a
/// matmul's staged and packed operands (more when `dtype` says an operand or its output is int16).
pub fn scratch_bytes(op: &Op<TensorId>, dtype: impl Fn(TensorId) -> DType) -> usize {
    match op {
        Op::Linear(l) => {
            let g = &l.geom;
            dmq_runtime::ops::linear::scratch_bytes(
                g.m as usize,
                g.n as usize,
                g.k as usize,
                l.weight_bits,
            )
        }
        Op::MatMul(mm) => dmq_runtime::ops::matmul::scratch_bytes(
            &dmq_runtime::ops::matmul::MatMulDims::of(&mm.geom),
            [mm.a, mm.b, mm.output]
                .iter()
                .any(|&t| dtype(t) == DType::I16),
        ),
        _ => 0,
    }
}

/// The record of a product: `Linear` (weights per output row, zero point folded into the bias),
/// `FLinear` on the timestep path (8-bit weights, f32 scales and bias), or `MatMul` (one
/// requantization of the two operands' scales and any folded positive scale).
pub fn quantize(cx: &mut QuantCx<'_>, op: &IrOp) -> Result<Op<TensorId>> {
    match op {
        IrOp::Linear {
            input,
            output,
            geom,
            w,
            bias,
            float,
            ..
        } => {
            let n = geom.n as usize;
            let bits = if *float {
                8
            } else {
                cx.bits_for(*input, *output)
            };
            let blob = &mut *cx.blob;
            if *float {
                let wq = row_weights(w, n, Layout::Plain, 8, None);
                return Ok(Op::FLinear(wire::FLinear {
                    input: *input,
                    output: *output,
                    geom: geom.clone(),
                    weights: blob.push_weights(&wq),
                    scales: blob.push_f32(&wq.scales),
                    bias: blob.push_f32(bias),
                }));
            }
            let wq = row_weights(w, n, Layout::Packed { taps: 1 }, bits, cx.hessians.get(w));
            let (bq, rq, _) = fold_rows(&wq, bias, cx.q(*input), cx.out_scale(*output));
            let blob = &mut *cx.blob;
            Ok(Op::Linear(wire::Linear {
                input: *input,
                output: *output,
                geom: geom.clone(),
                weight_bits: bits,
                weights: blob.push_weights(&wq),
                bias: blob.push_i32(&bq),
                requant: blob.push_requant(&rq),
                scratch: 0,
            }))
        }
        IrOp::MatMul {
            a,
            b,
            output,
            geom,
            post_scale,
        } => {
            let (sa, sb, so) = (cx.q(*a).0 as f64, cx.q(*b).0 as f64, cx.q(*output).0 as f64);
            Ok(Op::MatMul(wire::MatMul {
                a: *a,
                b: *b,
                output: *output,
                geom: geom.clone(),
                requant: requant_of(sa * sb * *post_scale as f64 / so),
                scratch: 0,
            }))
        }
        _ => bail!("internal error: not a product"),
    }
}
