//! Element-wise ops and their neighbours: binary ops (folded into a producer's bias or scale where
//! they can be), chains of unary functions merged into one table (`Lut`), softmax and concat, and
//! their runtime records.
use super::{f32s, shape_of, Ctx, Val};
use crate::ir::*;
use crate::quant::{requant_of, requant_pair, QuantCx};
use anyhow::{anyhow, bail, Result};
use dmq_runtime::format::{self as wire, BinaryKind, DType, Op, UnaryFn, MAX_CONCAT};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::nn::Softmax;

pub(super) fn unary_fn(name: &str) -> Option<UnaryFn> {
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

/// Appends `f` to a LUT chain: extends the producer's chain when it is a LUT used only here.
pub(super) fn push_lut(
    cx: &mut Ctx,
    node: &TypedNode,
    slot: usize,
    x: TensorId,
    f: ScalarFn,
) -> TensorId {
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
            IrOp::Plain(Op::Reshape(wire::Reshape { input, .. })) => {
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
pub(super) fn fold_bias(
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

pub(super) fn lower_binary_main(
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

/// Softmax over one axis; its output has the fixed parameters of the integer softmax.
pub(super) fn lower_softmax(
    cx: &mut Ctx,
    node: &TypedNode,
    sm: &Softmax,
    ins: &[Val],
    oshape: Vec<usize>,
) -> Result<Val> {
    let Val::Main(x) = ins[0] else {
        bail!("softmax input")
    };
    if sm.axes.len() != 1 {
        bail!("softmax over several axes");
    }
    // Rows longer than LONG_ROWS: steps of 1/255 leave a near-uniform row under two codes per
    // probability (all zeros at 1024 tokens), so the step follows the observed peak. Shorter
    // rows keep 1/255, as every file before.
    const LONG_ROWS: usize = 128;
    let long = oshape.get(sm.axes[0]).is_some_and(|&n| n > LONG_ROWS);
    let out = cx.tensor(&node.name, oshape, DType::I8, long.then_some(node.id));
    cx.prog.t_mut(out).fixed = Some((1.0 / 255.0, -128));
    cx.prog.t_mut(out).probs = long;
    cx.prog.ops.push(IrOp::Softmax {
        input: x,
        output: out,
        axis: sm.axes[0],
    });
    Ok(Val::Main(out))
}

/// Constant padding (ONNX `Pad` in constant mode) as one concat per padded axis with constant
/// blocks of the pad value either side, which the concat requantizes to the output's parameters:
/// EDM2-style UNets pad a channel of ones onto their input (denoising-diffusion-pytorch's
/// `KarrasUnet`), other models zeros around the image. Reflect and edge padding are refused.
pub(super) fn lower_pad(
    cx: &mut Ctx,
    node: &TypedNode,
    pad: &tract_onnx::tract_core::ops::array::Pad,
    ins: &[Val],
) -> Result<Val> {
    use tract_onnx::tract_core::ops::array::PadMode;
    let Some(Val::Main(mut cur)) = ins.first().cloned() else {
        bail!("padding of a constant or timestep value")
    };
    let PadMode::Constant(v) = &pad.mode else {
        bail!("{:?} padding (only constant padding is lowered)", pad.mode)
    };
    let value = f32s(v)?.first().copied().unwrap_or(0.0);
    let mut shape = cx.prog.t(cur).shape.clone();
    if pad.pads.len() != shape.len() {
        bail!(
            "padding of rank {} on a rank-{} tensor",
            pad.pads.len(),
            shape.len()
        );
    }
    let padded: Vec<usize> = (0..shape.len())
        .filter(|&a| pad.pads[a] != (0, 0))
        .collect();
    for (i, &axis) in padded.iter().enumerate() {
        let (before, after) = pad.pads[axis];
        let mut block = |side: &str, n: usize| -> Result<TensorId> {
            let mut s = shape.clone();
            s[axis] = n;
            let t = Tensor::from_shape(&s, &vec![value; s.iter().product()])?;
            cx.int8_const(
                &format!("{}.axis{axis}.{side}", node.name),
                &t,
                s.len(),
                &[value],
            )
        };
        let mut parts = vec![];
        if before > 0 {
            parts.push(block("before", before)?);
        }
        parts.push(cur);
        if after > 0 {
            parts.push(block("after", after)?);
        }
        shape[axis] += before + after;
        // every step's values are among the padded output's (its calibrated range)
        let name = if i + 1 == padded.len() {
            node.name.clone()
        } else {
            format!("{}.axis{axis}", node.name)
        };
        let out = cx.tensor(&name, shape.clone(), DType::I8, Some(node.id));
        cx.prog.ops.push(IrOp::Concat {
            inputs: parts,
            output: out,
            axis,
        });
        cur = out;
    }
    Ok(Val::Main(cur))
}

/// Concat of activations, time-path values (quantized) and constants.
pub(super) fn lower_concat(
    cx: &mut Ctx,
    node: &TypedNode,
    cat: &TypedConcat,
    ins: &[Val],
    oshape: Vec<usize>,
) -> Result<Val> {
    if ins.len() > MAX_CONCAT {
        bail!("concat of {} inputs (at most {MAX_CONCAT})", ins.len());
    }
    let name = &node.name;
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
    let out = cx.tensor(name, oshape, DType::I8, Some(node.id));
    cx.prog.ops.push(IrOp::Concat {
        inputs: ts,
        output: out,
        axis: cat.axis,
    });
    Ok(Val::Main(out))
}

/// The records of the element-wise ops: `Binary` (multipliers to the output scale), `Lut` (the
/// chain evaluated at every input code), `Softmax` (its exp table) and `Concat` (one
/// requantization per part).
pub fn quantize(cx: &mut QuantCx<'_>, op: &IrOp) -> Result<Op<TensorId>> {
    let q = |t: &TensorId| cx.q(*t);
    Ok(match op {
        IrOp::Binary { kind, a, b, output } => {
            let (sa, sb, so) = (q(a).0 as f64, q(b).0 as f64, q(output).0 as f64);
            let (mult_a, mult_b, shift) = match kind {
                BinaryKind::Mul => {
                    let r = requant_of(sa * sb / so);
                    (r.mult, r.mult, r.shift)
                }
                _ => requant_pair(sa / so, sb / so),
            };
            Op::Binary(wire::Binary {
                kind: *kind,
                a: *a,
                b: *b,
                output: *output,
                mult_a,
                mult_b,
                shift,
            })
        }
        IrOp::Lut {
            input,
            output,
            chain,
        } => {
            let table = lut_table(
                q(input),
                q(output),
                (cx.p.t(*input).dtype, cx.p.t(*output).dtype),
                chain,
            );
            Op::Lut(wire::Lut {
                input: *input,
                output: *output,
                table: cx.blob.push(&table),
            })
        }
        IrOp::Softmax {
            input,
            output,
            axis,
        } => {
            // exp(-d sx) for d = 0..256 (2^20 = 1); an int16 input also exp(-256 d sx)
            let (sx, _) = q(input);
            let exp = |d: f64| ((-d * sx as f64).exp() * (1u64 << 20) as f64).round() as i32;
            let mut table: Vec<i32> = (0..256).map(|d| exp(d as f64)).collect();
            if cx.p.t(*input).dtype == DType::I16 {
                table.extend((0..256).map(|d| exp(256.0 * d as f64)));
            }
            Op::Softmax(wire::Softmax {
                input: *input,
                output: *output,
                axis: *axis as u8,
                exp_table: cx.blob.push_i32(&table),
            })
        }
        IrOp::Concat {
            inputs,
            output,
            axis,
        } => {
            let (so, _) = q(output);
            let mut rq = vec![];
            let mut at = 0usize;
            for t in inputs {
                // a split concat requantizes each part to its own scale
                let s_out = cx
                    .channel_scales
                    .get(output)
                    .and_then(|s| s.get(at).copied())
                    .unwrap_or(so);
                at += cx.p.t(*t).shape.get(1).copied().unwrap_or(0);
                rq.push(requant_of(q(t).0 as f64 / s_out as f64));
            }
            let too_many = || anyhow!("concat of {} inputs (at most {MAX_CONCAT})", inputs.len());
            Op::Concat(wire::Concat {
                inputs: heapless::Vec::from_slice(inputs).map_err(|_| too_many())?,
                output: *output,
                axis: *axis as u8,
                requant: heapless::Vec::from_slice(&rq).map_err(|_| too_many())?,
            })
        }
        _ => bail!("internal error: not an element-wise op"),
    })
}

/// The table of a function chain from input codes `(sx, zx)` to output codes `(so, zo)`: 256 int8
/// entries, 256 little-endian i16 for an int16 output, or 257 interpolation points (i32, output
/// codes x 256) for an int16 input.
fn lut_table(
    (sx, zx): (f32, i32),
    (so, zo): (f32, i32),
    (din, dout): (DType, DType),
    chain: &[ScalarFn],
) -> Vec<u8> {
    let (omin, omax) = dout.code_range();
    let f = |c: i32| -> f64 {
        let mut v = sx * (c - zx) as f32;
        for f in chain {
            v = f.apply(v);
        }
        if v.is_nan() {
            zo as f64
        } else {
            v as f64 / so as f64 + zo as f64
        }
    };
    match din {
        DType::I16 => (0..=256)
            .flat_map(|k| {
                let v = (f(k * 256 - 32768).clamp(omin as f64, omax as f64) * 256.0).round() as i32;
                v.to_le_bytes()
            })
            .collect(),
        _ if dout == DType::I16 => (-128i32..=127)
            .flat_map(|c| (f(c).round().clamp(omin as f64, omax as f64) as i16).to_le_bytes())
            .collect(),
        _ => (-128i32..=127)
            .map(|c| f(c).round().clamp(-128.0, 127.0) as i8 as u8)
            .collect(),
    }
}
