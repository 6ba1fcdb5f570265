//! Lowering: tract's decluttered typed graph -> dmq IR, one module per op family, each with the
//! runtime record of the ops it makes (see `crate::quant`). Recognises GroupNorm, folds biases and
//! scalar scales into the producing product, merges chains of element-wise ops into one LUT, and
//! splits the graph into the integer main path and the f32 timestep path (everything that depends
//! only on the timestep).
pub mod conv;
pub mod elementwise;
mod movement;
pub mod norm;
pub mod product;
pub mod time;

use crate::import::Imported;
use crate::ir::*;
use anyhow::{anyhow, bail, Result};
use dmq_runtime::format::{self as wire, DType, Op};
use elementwise::{lower_binary_main, push_lut, unary_fn};
use movement::lower_movement;
use norm::{find_group_norms, Role};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use time::lower_time;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::cnn::{Conv, SumPool};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::Softmax;

#[derive(Clone)]
pub(super) enum Val {
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

pub(super) type Model = TypedModel;

pub(super) fn shape_of(model: &Model, o: OutletId) -> Result<Vec<usize>> {
    let f = model.outlet_fact(o)?;
    Ok(f.shape
        .as_concrete()
        .ok_or_else(|| anyhow!("symbolic shape at {}", model.node(o.node).name))?
        .to_vec())
}

pub(super) fn const_of(model: &Model, o: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(o).ok()?.konst.clone()
}

pub(crate) fn f32s(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.cast_to::<f32>()?
        .to_plain_array_view::<f32>()?
        .iter()
        .copied()
        .collect())
}

pub(super) fn single_succ(model: &Model, node: usize) -> Option<usize> {
    let s = &model.node(node).outputs[0].successors;
    if s.len() == 1 {
        Some(s[0].node)
    } else {
        None
    }
}

pub struct Lowered {
    pub program: Program,
    /// tract node ids whose output ranges calibration must record
    pub stat_nodes: Vec<usize>,
}

pub(super) struct Ctx<'a> {
    pub(super) model: &'a Model,
    pub(super) prog: Program,
    pub(super) vals: HashMap<OutletId, Val>,
    quantized_time: HashMap<TensorId, TensorId>,
    unsupported: Vec<Unsupported>,
}

impl<'a> Ctx<'a> {
    pub(super) fn tensor(
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
            probs: false,
            value: None,
            bound_by: None,
        })
    }
    pub(super) fn alias(&mut self, name: &str, shape: Vec<usize>, of: TensorId) -> TensorId {
        let dtype = self.prog.t(of).dtype;
        let id = self.tensor(name, shape, dtype, None);
        self.prog.t_mut(id).alias = Some(of);
        id
    }
    pub(super) fn unsupported(&mut self, node: &TypedNode, why: impl Into<String>) {
        self.unsupported.push(Unsupported {
            node: node.name.clone(),
            op: node.op.name().to_string(),
            why: why.into(),
        });
    }
    /// int8 tensor for a timestep-path value consumed by the main path (quantized once per step).
    pub(super) fn quantized(&mut self, t: TensorId) -> TensorId {
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
    pub(super) fn time_const(&mut self, name: &str, t: &Tensor, rank: usize) -> Result<TensorId> {
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
    pub(super) fn int8_const(
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
    pub(super) fn to_rank(&mut self, t: TensorId, rank: usize) -> TensorId {
        let info = self.prog.t(t).clone();
        if info.shape.len() == rank {
            return t;
        }
        let mut shape = info.shape.clone();
        while shape.len() < rank {
            shape.insert(0, 1);
        }
        let out = self.alias(&format!("{}.rank{rank}", info.name), shape, t);
        self.prog.ops.push(IrOp::Plain(Op::Reshape(wire::Reshape {
            input: t,
            output: out,
        })));
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
            lower_input(&mut cx, imp, node, &inputs, outlet)?;
            continue;
        }
        if let Some(Role::GroupNorm(g)) = roles.get(&id) {
            norm::emit(&mut cx, node, g);
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
    // the extra inputs in the model's input order (the float model's, which calibration draws
    // values for), not in the order evaluation first reaches them
    let input_rank = |name: &str| inputs.iter().position(|o| model.node(o.node).name == name);
    cx.prog.extras.sort_by_key(|(name, _)| input_rank(name));
    let mut stat_nodes: Vec<usize> = cx.prog.tensors.iter().filter_map(|t| t.stat).collect();
    stat_nodes.sort();
    stat_nodes.dedup();
    Ok(Lowered {
        program: cx.prog,
        stat_nodes,
    })
}

fn lower_main(cx: &mut Ctx, node: &TypedNode, ins: &[Val]) -> Result<Val> {
    let model = cx.model;
    let id = node.id;
    let oshape = shape_of(model, id.into())?;
    let main = |v: &Val| if let Val::Main(t) = v { Some(*t) } else { None };
    if let Some(x) = main(&ins[0]) {
        if ins.len() == 1 {
            if let Some(out) = lower_movement(cx, node, x)? {
                return Ok(Val::Main(out));
            }
        }
    }
    if let Some(conv) = node.op_as::<Conv>() {
        return conv::lower_conv(cx, node, conv, ins, oshape);
    }
    if let Some(pool) = node.op_as::<SumPool>() {
        return conv::lower_pool(cx, node, pool, ins, oshape);
    }
    if let Some(ein) = node.op_as::<EinSum>() {
        return product::lower_einsum(cx, node, ein, ins, oshape);
    }
    if let Some(sm) = node.op_as::<Softmax>() {
        return elementwise::lower_softmax(cx, node, sm, ins, oshape);
    }
    if let Some(cat) = node.op_as::<TypedConcat>() {
        return elementwise::lower_concat(cx, node, cat, ins, oshape);
    }
    if let Some(pad) = node.op_as::<tract_onnx::tract_core::ops::array::Pad>() {
        return elementwise::lower_pad(cx, node, pad, ins);
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

/// Multiply-accumulates of one evaluation of the program's integer products (convs, linears and
/// attention products; not the f32 timestep path), known before calibration.
pub fn product_macs(p: &Program) -> u64 {
    p.ops.iter().map(|op| op_macs(p, op)).sum()
}

/// The integer multiply-accumulates of one op of `p` per evaluation (0 for all but convs, integer
/// linears and activation products).
pub fn op_macs(p: &Program, op: &IrOp) -> u64 {
    match op {
        IrOp::Conv {
            input,
            output,
            kernel,
            ..
        } => {
            let cin = p.t(*input).shape.get(1).copied().unwrap_or(0);
            (p.t(*output).numel() * cin * kernel[0] * kernel[1]) as u64
        }
        IrOp::Linear {
            geom, float: false, ..
        } => geom.m as u64 * geom.n as u64 * geom.k as u64,
        IrOp::MatMul { geom, .. } => {
            geom.batch.iter().map(|&b| b as u64).product::<u64>()
                * geom.m as u64
                * geom.n as u64
                * geom.k as u64
        }
        _ => 0,
    }
}

/// Number of each IR op kind, for the summary.
pub fn op_histogram(p: &Program) -> BTreeMap<&'static str, usize> {
    let mut h = BTreeMap::new();
    for op in &p.ops {
        *h.entry(op.kind()).or_insert(0) += 1;
    }
    h
}

/// A model input: the latent (quantized on entry), the timestep and scalar conditions (the f32 time
/// path), or an embedding (quantized on entry like the latent).
fn lower_input(
    cx: &mut Ctx,
    imp: &Imported,
    node: &TypedNode,
    inputs: &[OutletId],
    outlet: OutletId,
) -> Result<()> {
    let ix = inputs
        .iter()
        .position(|o| *o == outlet)
        .ok_or_else(|| anyhow!("internal error: not an input"))?;
    let shape = shape_of(cx.model, outlet)?;
    if ix == imp.latent.index {
        let f = cx.tensor(&node.name, shape.clone(), DType::F32, None);
        let q = cx.tensor(&format!("{}.q", node.name), shape, DType::I8, Some(node.id));
        cx.prog.latent = Some(f);
        cx.prog.ops.push(IrOp::Quantize {
            input: f,
            output: q,
        });
        cx.vals.insert(outlet, Val::Main(q));
    } else if imp.timestep.as_ref().map(|t| t.index) == Some(ix) {
        let f = cx.tensor(&node.name, shape, DType::F32, Some(node.id));
        cx.prog.timestep = Some(f);
        cx.vals.insert(outlet, Val::Time(f));
    } else if shape.iter().product::<usize>() <= 64 || shape.len() <= 2 {
        // a scalar condition, or a vector per image (`[batch, features]`: a class embedding given
        // as such, SDXL-style pooled text embeddings and size conditions): part of the f32 time
        // path, which adds them to the time embedding; token and spatial inputs are quantized
        let f = cx.tensor(&node.name, shape, DType::F32, Some(node.id));
        cx.prog.extras.push((node.name.clone(), f));
        cx.vals.insert(outlet, Val::Time(f));
    } else {
        // an embedding (e.g. encoder_hidden_states): quantized on entry like the latent
        let f = cx.tensor(&node.name, shape.clone(), DType::F32, None);
        let q = cx.tensor(&format!("{}.q", node.name), shape, DType::I8, Some(node.id));
        cx.prog.extras.push((node.name.clone(), f));
        cx.prog.ops.push(IrOp::Quantize {
            input: f,
            output: q,
        });
        cx.vals.insert(outlet, Val::Main(q));
    }
    Ok(())
}
