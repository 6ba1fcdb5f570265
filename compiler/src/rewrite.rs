//! Small rewrites of tract's decluttered graph into ops the lowering knows.
use anyhow::Result;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Gather, Slice};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;

/// A `Gather` of one constant scalar index (how `t[0]`, `t[1]`, `t[2]` of a packed projection
/// export, as in `nn.MultiheadAttention`'s q, k and v) becomes a one-element `Slice` of that axis
/// and the axis' removal. Tract declutters a one-element index list to the slice itself, not a
/// scalar index.
pub fn scalar_gathers(model: TypedModel) -> Result<TypedModel> {
    patch_each(model, |model, node| {
        let Some(g) = node.op_as::<Gather>() else {
            return Ok(None);
        };
        let idx = match node.inputs.get(1) {
            Some(o) if node.inputs.len() == 2 => model.outlet_fact(*o)?.konst.clone(),
            _ => None,
        };
        let Some(idx) = idx.filter(|i| i.rank() == 0 && i.datum_type().is_integer()) else {
            return Ok(None);
        };
        let data = model.outlet_fact(node.inputs[0])?;
        let Some(n) = data.shape.get(g.axis).and_then(|d| d.to_i64().ok()) else {
            return Ok(None);
        };
        let i = idx.cast_to_scalar::<i64>()?;
        let i = if i < 0 { i + n } else { i };
        if !(0..n).contains(&i) {
            return Ok(None);
        }
        let (name, axis, i) = (&node.name, g.axis, i as usize);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let y = patch.wire_node(format!("{name}.slice"), Slice::new(axis, i, i + 1), &[x])?[0];
        let y = patch.wire_node(format!("{name}.rm"), AxisOp::Rm(axis), &[y])?[0];
        patch.shunt_outside(model, node.id.into(), y)?;
        Ok(Some(patch))
    })
}

/// A convolution whose kernel tract multiplied by a per-output-channel value of the timestep path
/// (it folds `conv(x, W) * s(t)`, as EDM2-style blocks scale by `emb + 1`, into the kernel) is
/// unfolded back: the convolution with the constant kernel and bias `B / s` is impossible, so the
/// bias must be constant and is added after the scale: `conv(x, W, 0) * s + B`. A kernel that is
/// not `W * s` this way stays refused ("conv weights must be constant").
pub fn time_scaled_kernels(model: TypedModel) -> Result<TypedModel> {
    use tract_onnx::tract_core::ops::cnn::Conv;
    use tract_onnx::tract_core::ops::math::{add, mul};
    patch_each(model, |model, node| {
        let Some(conv) = node.op_as::<Conv>() else {
            return Ok(None);
        };
        let (Some(&k), Some(&b)) = (node.inputs.get(1), node.inputs.get(2)) else {
            return Ok(None);
        };
        let konst = |o: OutletId| model.outlet_fact(o).ok().and_then(|f| f.konst.clone());
        let kn = model.node(k.node);
        if konst(k).is_some() || kn.op.name() != "Mul" || kn.inputs.len() != 2 {
            return Ok(None);
        }
        let kshape = model
            .outlet_fact(k)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        let Some(kshape) = kshape.filter(|s| s.len() == 4) else {
            return Ok(None);
        };
        let co = kshape[0];
        // one operand the constant kernel, the other `[co, 1, 1, 1]` from the timestep path
        let (w, sc) = match (konst(kn.inputs[0]), konst(kn.inputs[1])) {
            (Some(w), None) => (w, kn.inputs[1]),
            (None, Some(w)) => (w, kn.inputs[0]),
            _ => return Ok(None),
        };
        let sshape = model
            .outlet_fact(sc)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec());
        if w.shape() != kshape.as_slice() || sshape.as_deref() != Some(&[co, 1, 1, 1][..]) {
            return Ok(None);
        }
        let Some(bias) = konst(b) else {
            return Ok(None);
        };
        let name = &node.name;
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let s = patch.tap_model(model, sc)?;
        let w = patch.add_const(format!("{name}.kernel"), w)?;
        let zero = patch.add_const(format!("{name}.nobias"), tensor1(&vec![0f32; co]))?;
        let y = patch.wire_node(format!("{name}.unscaled"), conv.clone(), &[x, w, zero])?[0];
        let s = patch.wire_node(format!("{name}.scale"), AxisOp::Move(0, 1), &[s])?[0];
        let mut y = patch.wire_node(format!("{name}.scaled"), mul(), &[y, s])?[0];
        let bias = crate::lower::f32s(&bias)?;
        if bias.iter().any(|&v| v != 0.0) {
            let full = if bias.len() == 1 {
                vec![bias[0]; co]
            } else {
                bias
            };
            let bt = tensor1(&full).into_shape(&[1, co, 1, 1])?;
            let bt = patch.add_const(format!("{name}.bias"), bt)?;
            y = patch.wire_node(format!("{name}.biased"), add(), &[y, bt])?[0];
        }
        patch.shunt_outside(model, node.id.into(), y)?;
        Ok(Some(patch))
    })
}

/// `model` with `rewrite`'s patch applied for every node it returns one for: each node of the
/// graph as it stands is offered once (a patch adds nodes and rewires the replaced one's
/// successors; ids stay valid until the one compaction at the end).
pub fn patch_each(
    mut model: TypedModel,
    rewrite: impl Fn(&TypedModel, &TypedNode) -> Result<Option<TypedModelPatch>>,
) -> Result<TypedModel> {
    let n = model.nodes().len();
    let mut changed = false;
    for id in 0..n {
        if let Some(patch) = rewrite(&model, model.node(id))? {
            patch.apply(&mut model)?;
            changed = true;
        }
    }
    Ok(if changed {
        model.into_compact()?
    } else {
        model
    })
}

/// A `Resize` other than a whole-factor nearest one (bilinear with any coordinate rule, cubic,
/// nearest by fractional factors) becomes two products with constant matrices: `y = R_h · x · R_wᵀ`
/// per plane. The matrices are read off tract's own op, run on one-hot rows and columns; the
/// rewrite is kept only if `R_h · x · R_wᵀ` reproduces the op on a random input, so a resize that
/// is not separable and the same for every plane stays refused.
pub fn separable_resizes(model: TypedModel) -> Result<TypedModel> {
    patch_each(model, |model, node| {
        if node.op.name() != "Resize" || node.inputs.is_empty() {
            return Ok(None);
        }
        let Some((rh, rw)) = resize_matrices(model, node)? else {
            return Ok(None);
        };
        let name = &node.name;
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let rh = patch.add_const(format!("{name}.rows"), rh)?;
        let rw = patch.add_const(format!("{name}.cols"), rw)?;
        let product =
            |spec: &str| -> Result<EinSum> { Ok(EinSum::new(spec.parse()?, f32::datum_type())) };
        // rows as the last axis for the first product, then back
        let y = patch.wire_node(format!("{name}.to_h"), AxisOp::Move(2, 3), &[x])?[0];
        let y = patch.wire_node(format!("{name}.h"), product("ncwh,uh->ncwu")?, &[y, rh])?[0];
        let y = patch.wire_node(format!("{name}.from_h"), AxisOp::Move(3, 2), &[y])?[0];
        let y = patch.wire_node(format!("{name}.w"), product("ncuw,vw->ncuv")?, &[y, rw])?[0];
        patch.shunt_outside(model, node.id.into(), y)?;
        Ok(Some(patch))
    })
}

/// `(R_h [OH, H], R_w [OW, W])` of a 4-D f32 resize node with constant parameters, if separable.
fn resize_matrices(model: &TypedModel, node: &TypedNode) -> Result<Option<(Tensor, Tensor)>> {
    let fact = model.outlet_fact(node.inputs[0])?;
    let out = model.outlet_fact(node.id.into())?;
    let (Some(ishape), Some(oshape)) = (fact.shape.as_concrete(), out.shape.as_concrete()) else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type()
        || ishape.len() != 4
        || oshape.len() != 4
        || ishape[..2] != oshape[..2]
        || (ishape[2..] == oshape[2..])
    {
        return Ok(None);
    }
    let mut params = vec![];
    for o in &node.inputs[1..] {
        match &model.outlet_fact(*o)?.konst {
            Some(k) => params.push(k.clone().into_tvalue()),
            None => return Ok(None),
        }
    }
    let (h, w, oh, ow) = (ishape[2], ishape[3], oshape[2], oshape[3]);
    let eval = |img: &dyn Fn(usize, usize) -> f32| -> Result<Vec<f32>> {
        let planes = ishape[0] * ishape[1];
        let x: Vec<f32> = (0..planes * h * w).map(|i| img(i / w % h, i % w)).collect();
        let mut inputs: TVec<TValue> = tvec![Tensor::from_shape(ishape, &x)?.into_tvalue()];
        inputs.extend(params.iter().cloned());
        let Some(mut ys) = node.op.eval_out_of_plan(inputs)? else {
            anyhow::bail!("resize cannot be evaluated on its own");
        };
        let y = ys.remove(0);
        let y = y.cast_to::<f32>()?;
        let v = y.to_plain_array_view::<f32>()?;
        Ok(v.iter().copied().collect())
    };
    // a row of ones at r gives R_h[u, r]·(R_w's row sums)[v], a column of ones at c gives
    // (R_h's row sums)[u]·R_w[v, c]; interpolation rows sum to 1, and the check below refuses
    // anything else
    let mut rh = vec![0f32; oh * h];
    let mut rw = vec![0f32; ow * w];
    for r in 0..h {
        let y = eval(&|i, _| (i == r) as u8 as f32)?;
        for u in 0..oh {
            rh[u * h + r] = y[u * ow];
        }
    }
    for c in 0..w {
        let y = eval(&|_, j| (j == c) as u8 as f32)?;
        for v in 0..ow {
            rw[v * w + c] = y[v];
        }
    }
    // the product check decides: R_h · x · R_wᵀ (rows first: OH·H·W + OH·OW·W operations)
    // against the op on a random image
    let mut img = vec![0f32; h * w];
    dmq_runtime::sampler::Rng::new(7).fill_gaussian(&mut img);
    let got = eval(&|i, j| img[i * w + j])?;
    let mut rows = vec![0f64; oh * w];
    for u in 0..oh {
        for r in 0..h {
            let a = rh[u * h + r] as f64;
            for c in 0..w {
                rows[u * w + c] += a * img[r * w + c] as f64;
            }
        }
    }
    let (mut err, mut sig) = (0f64, 0f64);
    for u in 0..oh {
        for v in 0..ow {
            let s: f64 = (0..w).map(|c| rows[u * w + c] * rw[v * w + c] as f64).sum();
            let g = got[u * ow + v] as f64;
            err += (s - g) * (s - g);
            sig += g * g;
        }
    }
    if err > sig * 1e-10 {
        return Ok(None);
    }
    Ok(Some((
        Tensor::from_shape(&[oh, h], &rh)?,
        Tensor::from_shape(&[ow, w], &rw)?,
    )))
}
