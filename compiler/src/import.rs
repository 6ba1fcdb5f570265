//! ONNX import through tract: load, pin input facts, declutter; a float runner with an observation hook.
use anyhow::{bail, Context, Result};
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState};
use tract_onnx::tract_hir::infer::Factoid;

/// Names that identify the timestep / noise-level input when `--timestep-input` is not given.
pub const TIMESTEP_NAMES: &[&str] = &[
    "timestep",
    "timesteps",
    "t",
    "time",
    "sigma",
    "sigmas",
    "noise_level",
    "c_noise",
    "noise_labels",
    "time_step",
];

#[derive(Debug, Clone)]
pub struct InputDesc {
    pub name: String,
    pub index: usize,
    pub shape: Vec<usize>,
    pub dtype: DatumType,
}

/// A decluttered float model with its inputs identified.
pub struct Imported {
    pub model: TypedModel,
    pub latent: InputDesc,
    pub timestep: Option<InputDesc>,
    /// float inputs besides the latent and the timestep (conditions, embeddings)
    pub extras: Vec<InputDesc>,
    pub output_shape: Vec<usize>,
    pub output_name: String,
}

/// tract's ONNX loader, told to ignore the `value_info` of intermediate tensors: exporters write
/// them with the symbolic batch (`batch`) that dmq pins to 1, and tract then fails to unify the two
/// ("Impossible to unify Sym(batch) with Val(1)"); tract infers every intermediate shape itself.
fn onnx() -> tract_onnx::Onnx {
    tract_onnx::onnx().with_ignore_value_info(true)
}

use crate::shapes::pinned_shape;
/// Loads an ONNX file (with external data next to it, as the dynamo exporter writes), identifies the
/// latent and timestep inputs, pins batch 1 and declutters.
pub use crate::shapes::{parse_shape, shapes_of, Shapes};

pub fn import(
    path: &std::path::Path,
    timestep_input: Option<&str>,
    shapes: &Shapes,
) -> Result<Imported> {
    std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let label = path.display().to_string();
    let proto = onnx()
        .proto_model_for_path(path)
        .map_err(|e| anyhow::anyhow!("{label} is not a loadable ONNX model: {e}"))?;
    let dir = path.parent().and_then(|d| d.to_str());
    import_proto(proto, dir, &label, timestep_input, shapes)
}

/// The bytes of the external data files an ONNX file's initializers name (each file once): the
/// dynamo exporter writes one `.onnx.data` file, the TorchScript exporter of a model over 2 GB one
/// file per tensor.
pub fn external_data_bytes(path: &std::path::Path) -> u64 {
    let Ok(proto) = onnx().proto_model_for_path(path) else {
        return 0;
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let files: std::collections::BTreeSet<&str> = proto
        .graph
        .iter()
        .flat_map(|g| &g.initializer)
        .flat_map(|t| &t.external_data)
        .filter(|kv| kv.key == "location")
        .map(|kv| kv.value.as_str())
        .collect();
    files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// [`import`] from bytes in memory (no external data); `label` names the model in messages.
pub fn import_bytes(
    bytes: &[u8],
    label: &str,
    timestep_input: Option<&str>,
    shapes: &Shapes,
) -> Result<Imported> {
    let proto = onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("{label} is not a loadable ONNX model: {e}"))?;
    import_proto(proto, None, label, timestep_input, shapes)
}

fn import_proto(
    mut proto: tract_onnx::pb::ModelProto,
    dir: Option<&str>,
    label: &str,
    timestep_input: Option<&str>,
    shapes: &Shapes,
) -> Result<Imported> {
    let widened = widen_f16(&mut proto).with_context(|| format!("{label}: fp16 model"))?;
    if widened > 0 {
        eprintln!(
            "note: {label} is an fp16 model: {widened} fp16 tensors, casts and types widened to f32 on import (dmq quantizes from f32)"
        );
    }
    let parsed = onnx()
        .parse(&proto, dir)
        .map_err(|e| anyhow::anyhow!("{label} is not a loadable ONNX model: {e}"))?;
    if !parsed.unresolved_inputs.is_empty() {
        bail!(
            "{label}: could not resolve inputs at top level: {:?}",
            parsed.unresolved_inputs
        );
    }
    import_model(parsed.model, timestep_input, shapes)
}

/// Rewrites an fp16 ONNX graph as f32, in the protobuf before tract reads it: fp16 initializers and
/// constant tensors are widened (exactly: every f16 is an f32), `Cast`s to fp16 cast to f32, and the
/// graph's declared fp16 types become f32. (tract types some fp16 ops inconsistently, e.g. `Gemm`,
/// and dmq calibrates and quantizes from f32 anyway.) Returns how many things were rewritten.
fn widen_f16(proto: &mut tract_onnx::pb::ModelProto) -> Result<usize> {
    match proto.graph.as_mut() {
        Some(g) => widen_graph(g),
        None => Ok(0),
    }
}

const ONNX_FLOAT: i32 = 1;
const ONNX_FLOAT16: i32 = 10;

fn widen_graph(g: &mut tract_onnx::pb::GraphProto) -> Result<usize> {
    use tract_onnx::pb::type_proto::Value;
    let mut n = 0;
    for t in &mut g.initializer {
        n += widen_tensor(t)?;
    }
    for v in g
        .input
        .iter_mut()
        .chain(&mut g.output)
        .chain(&mut g.value_info)
    {
        if let Some(Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            if t.elem_type == ONNX_FLOAT16 {
                t.elem_type = ONNX_FLOAT;
                n += 1;
            }
        }
    }
    for node in &mut g.node {
        for a in &mut node.attribute {
            if node.op_type == "Cast" && a.name == "to" && a.i == ONNX_FLOAT16 as i64 {
                a.i = ONNX_FLOAT as i64;
                n += 1;
            }
            if let Some(t) = a.t.as_mut() {
                n += widen_tensor(t)?;
            }
            for t in &mut a.tensors {
                n += widen_tensor(t)?;
            }
            if let Some(sub) = a.g.as_mut() {
                n += widen_graph(sub)?;
            }
            for sub in &mut a.graphs {
                n += widen_graph(sub)?;
            }
        }
    }
    Ok(n)
}

/// An fp16 tensor's values as f32 (`raw_data` little-endian, or `int32_data` holding the bit
/// patterns, as the ONNX spec stores FLOAT16).
fn widen_tensor(t: &mut tract_onnx::pb::TensorProto) -> Result<usize> {
    if t.data_type != ONNX_FLOAT16 {
        return Ok(0);
    }
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        bail!(
            "tensor {:?} is fp16 in an external data file; dmq widens fp16 only when it is inside the .onnx file (re-export with the weights embedded, or as f32)",
            t.name
        );
    }
    let values: Vec<f32> = if !t.raw_data.is_empty() {
        if t.raw_data.len() % 2 != 0 {
            bail!("fp16 tensor {:?} has an odd number of bytes", t.name);
        }
        t.raw_data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    } else {
        t.int32_data
            .iter()
            .map(|&v| half::f16::from_bits(v as u16).to_f32())
            .collect()
    };
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t.int32_data.clear();
    t.data_type = ONNX_FLOAT;
    Ok(1)
}

fn import_model(
    mut model: InferenceModel,
    timestep_input: Option<&str>,
    shapes: &Shapes,
) -> Result<Imported> {
    let inputs = describe_inputs(&model, shapes)?;
    let ts_idx = find_timestep(&inputs, timestep_input)?;
    for inp in &inputs {
        model.set_input_fact(
            inp.index,
            InferenceFact::dt_shape(inp.dtype, inp.shape.clone()),
        )?;
    }
    // the ONNX graph's output name (tract labels output outlets with it)
    let onnx_out = model.output_outlets()?[0];
    let onnx_output_name = model.outlet_label(onnx_out).map(str::to_string);
    let typed = model
        .into_typed()
        .map_err(|e| anyhow::anyhow!("type inference failed: {e:?}"))?;
    let out_outlet = typed.output_outlets()?[0];
    let out_fact = typed.outlet_fact(out_outlet)?;
    let output_shape: Vec<usize> = out_fact
        .shape
        .as_concrete()
        .context("output shape is not concrete after pinning the inputs")?
        .to_vec();
    let output_name = onnx_output_name.unwrap_or_else(|| typed.node(out_outlet.node).name.clone());
    let latent_candidates: Vec<usize> = inputs
        .iter()
        .enumerate()
        .filter(|(k, i)| {
            Some(*k) != ts_idx && i.dtype == f32::datum_type() && i.shape == output_shape
        })
        .map(|(k, _)| k)
        .collect();
    let Some(&latent_idx) = latent_candidates.first() else {
        bail!("no float input has the output's shape {output_shape:?} (inputs: {}); dmq needs the latent input", names(&inputs))
    };
    let extras: Vec<InputDesc> = inputs
        .iter()
        .enumerate()
        .filter(|(k, _)| *k != latent_idx && Some(*k) != ts_idx)
        .map(|(_, i)| i.clone())
        .collect();
    if let Some(i) = extras
        .iter()
        .find(|i| !(i.dtype.is_float() || i.dtype.is_integer()))
    {
        bail!(
            "input {:?} is {:?}: dmq takes float or integer inputs",
            i.name,
            i.dtype
        );
    }
    if extras.len() > dmq_runtime::format::MAX_EXTRA_INPUTS {
        bail!(
            "the model has {} inputs besides the latent and the timestep; dmq supports {}",
            extras.len(),
            dmq_runtime::format::MAX_EXTRA_INPUTS
        );
    }
    let model = typed
        .into_decluttered()
        .map_err(|e| anyhow::anyhow!("decluttering failed: {e:?}"))?;
    let model = crate::deconv::rewrite_deconvs(model)?;
    let model = crate::rewrite::scalar_gathers(model)?;
    let model = crate::rewrite::separable_resizes(model)?;
    let model = crate::rewrite::time_scaled_kernels(model)?;
    let model = unfuse_scaled_convs(model)?;
    Ok(Imported {
        model,
        latent: inputs[latent_idx].clone(),
        timestep: ts_idx.map(|k| inputs[k].clone()),
        extras,
        output_shape,
        output_name,
    })
}

/// The model's inputs with their shapes (a symbolic batch pinned to 1) and element types.
fn describe_inputs(model: &InferenceModel, shapes: &Shapes) -> Result<Vec<InputDesc>> {
    let names: Vec<&str> = model
        .input_outlets()?
        .iter()
        .map(|o| model.node(o.node).name.as_str())
        .collect();
    if let Some((n, _)) = shapes.iter().find(|(n, _)| !names.contains(&n.as_str())) {
        bail!("--input-shape {n}: the model has no such input");
    }
    let mut inputs = vec![];
    for (i, name) in names.into_iter().enumerate() {
        let name = name.to_string();
        let fact = model.input_fact(i)?.clone();
        let given = shapes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.as_slice());
        let shape = pinned_shape(&name, &fact, given)?.with_context(|| {
            format!("input {name:?} has an unknown rank (give it with --input-shape {name}=DIMS)")
        })?;
        let dtype = fact.datum_type.concretize().unwrap_or(f32::datum_type());
        inputs.push(InputDesc {
            name,
            index: i,
            shape,
            dtype,
        });
    }
    if let Some((n, _)) = shapes
        .iter()
        .find(|(n, _)| inputs.iter().all(|i| i.name != *n))
    {
        bail!("--input-shape {n}: the model has no such input");
    }
    Ok(inputs)
}

/// The input carrying the timestep: the one named by `--timestep-input`, else the one whose name
/// says so, else the single input of at most one value.
fn find_timestep(inputs: &[InputDesc], timestep_input: Option<&str>) -> Result<Option<usize>> {
    Ok(if let Some(n) = timestep_input {
        Some(inputs.iter().position(|i| i.name == n).with_context(|| {
            format!(
                "--timestep-input {n:?}: the model has no such input (inputs: {})",
                names(&inputs)
            )
        })?)
    } else {
        let by_name: Vec<usize> = inputs
            .iter()
            .enumerate()
            .filter(|(_, i)| TIMESTEP_NAMES.contains(&i.name.to_lowercase().as_str()))
            .map(|(k, _)| k)
            .collect();
        match by_name.len() {
            1 => Some(by_name[0]),
            0 => {
                let small: Vec<usize> = inputs
                    .iter()
                    .enumerate()
                    .filter(|(_, i)| i.shape.iter().product::<usize>() <= 1)
                    .map(|(k, _)| k)
                    .collect();
                match small.len() {
                    0 => None,
                    1 => Some(small[0]),
                    _ => bail!(
                        "cannot tell which input carries the timestep: candidates {}; pass --timestep-input NAME",
                        small.iter().map(|&k| format!("{:?}", inputs[k].name)).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
            _ => bail!(
                "several inputs look like a timestep ({}); pass --timestep-input NAME",
                by_name
                    .iter()
                    .map(|&k| format!("{:?}", inputs[k].name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    })
}

/// Tract folds a per-channel multiplication that follows a convolution into its kernel and bias even
/// when the factor is computed (a consistency model's c_out on a one-channel output): the kernel is
/// then `W * s`. Rewritten back to `conv(x, W, b) * s`, the integer convolution keeps constant
/// weights and the factor multiplies its output.
fn unfuse_scaled_convs(mut model: TypedModel) -> Result<TypedModel> {
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    use tract_onnx::tract_core::ops::cnn::Conv;
    use tract_onnx::tract_core::ops::math::Mul;
    // (const operand, other operand) of a Mul node
    let split_mul = |m: &TypedModel, o: OutletId| -> Option<(Arc<Tensor>, OutletId)> {
        let n = m.node(o.node);
        let bin = n.op_as::<TypedBinOp>()?;
        if !bin.0.is::<Mul>() || n.inputs.len() != 2 {
            return None;
        }
        let konst = |i: usize| m.outlet_fact(n.inputs[i]).ok()?.konst.clone();
        match (konst(0), konst(1)) {
            (Some(c), None) => Some((c, n.inputs[1])),
            (None, Some(c)) => Some((c, n.inputs[0])),
            _ => None,
        }
    };
    loop {
        let mut found = None;
        for node in model.nodes() {
            let Some(conv) = node.op_as::<Conv>() else {
                continue;
            };
            if node.inputs.len() != 3 || model.outlet_fact(node.inputs[1])?.konst.is_some() {
                continue;
            }
            let (Some((w, sk)), Some((b, sb))) = (
                split_mul(&model, node.inputs[1]),
                split_mul(&model, node.inputs[2]),
            ) else {
                continue;
            };
            // the kernel's factor is the bias factor reshaped
            let mut o = sk;
            while o != sb {
                let n = model.node(o.node);
                if n.op_as::<AxisOp>().is_none() || n.inputs.len() != 1 {
                    break;
                }
                o = n.inputs[0];
            }
            if o == sb {
                found = Some((node.id, conv.clone(), w, b, sb));
                break;
            }
        }
        let Some((id, conv, w, b, s)) = found else {
            break;
        };
        let name = model.node(id).name.clone();
        let x = model.node(id).inputs[0];
        let kernel = model.node(id).inputs[1];
        let co = b.len();
        if model.outlet_fact(s)?.shape.as_concrete() != Some(&[co][..])
            || w.shape().first() != Some(&co)
            || model.outlet_fact(kernel)?.shape.as_concrete() != Some(w.shape())
        {
            bail!("{name}: a computed factor folded into the convolution with an unexpected shape");
        }
        let mut patch = TypedModelPatch::default();
        let xw = patch.tap_model(&model, x)?;
        let ww = patch.add_const(format!("{name}.unscaled.kernel"), w)?;
        let bw = patch.add_const(format!("{name}.unscaled.bias"), b)?;
        let y = patch.wire_node(format!("{name}.unscaled"), conv, &[xw, ww, bw])?[0];
        // the factor [C] as [1, C, 1, 1]
        let mut f = patch.tap_model(&model, s)?;
        let rank = model.outlet_fact(x)?.rank();
        for (k, axis) in std::iter::once(0).chain(2..rank).enumerate() {
            f = patch.wire_node(format!("{name}.factor.{k}"), AxisOp::Add(axis), &[f])?[0];
        }
        let out = patch.wire_node(
            format!("{name}.scaled"),
            tract_onnx::tract_core::ops::math::mul(),
            &[y, f],
        )?[0];
        patch.shunt_outside(&model, id.into(), out)?;
        patch.apply(&mut model)?;
        model = model.into_compact()?;
    }
    Ok(model)
}

fn names(inputs: &[InputDesc]) -> String {
    inputs
        .iter()
        .map(|i| format!("{:?} {:?} {:?}", i.name, i.dtype, i.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// tract's matrix products on `threads` threads (one: inline). The products split over output tiles,
/// never over the summed axis, so every thread count gives the same bits.
pub fn tract_threads(threads: usize) -> tract_linalg::multithread::Executor {
    if threads > 1 {
        tract_linalg::multithread::Executor::multithread(threads)
    } else {
        tract_linalg::multithread::Executor::SingleThread
    }
}

/// tract's products on `threads` threads wherever no scope says otherwise (see [`tract_threads`]).
pub fn set_tract_threads(threads: usize) {
    tract_linalg::multithread::set_default_executor(tract_threads(threads));
}

/// The machine's cores.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The float model, run by tract: the reference dmq is measured against.
pub struct FloatModel {
    plan: Arc<SimplePlan<TypedFact, Box<dyn TypedOp>>>,
    pub latent: InputDesc,
    pub timestep: Option<InputDesc>,
    pub extras: Vec<InputDesc>,
    /// the values the extra inputs take in the next evaluations (see [`FloatModel::set_extras`])
    extra_values: std::sync::Mutex<Vec<Vec<f32>>>,
    /// float trajectories already run, by seed and sampler (see `eval::float_trajectory_inputs`)
    pub(crate) trajectories: std::sync::Mutex<crate::eval::Trajectories>,
}

impl FloatModel {
    pub fn new(imp: &Imported) -> Result<FloatModel> {
        let plan = SimplePlan::new(imp.model.clone())?;
        Ok(FloatModel {
            plan,
            latent: imp.latent.clone(),
            timestep: imp.timestep.clone(),
            extras: imp.extras.clone(),
            extra_values: std::sync::Mutex::new(
                imp.extras
                    .iter()
                    .map(|e| vec![0.0; e.shape.iter().product()])
                    .collect(),
            ),
            trajectories: Default::default(),
        })
    }

    /// Another handle on the same plan, with its own extra-input values (one per calibration
    /// thread: a plan runs on any number of threads at once, each call with its own state).
    pub fn fork(&self) -> FloatModel {
        FloatModel {
            plan: self.plan.clone(),
            latent: self.latent.clone(),
            timestep: self.timestep.clone(),
            extras: self.extras.clone(),
            extra_values: std::sync::Mutex::new(self.extra_values.lock().unwrap().clone()),
            trajectories: Default::default(),
        }
    }

    /// Sets the extra inputs' values (in the order of [`FloatModel::extras`]).
    pub fn set_extras(&self, values: Vec<Vec<f32>>) -> Result<()> {
        for (e, v) in self.extras.iter().zip(&values) {
            let n: usize = e.shape.iter().product();
            if v.len() != n {
                bail!("input {:?} takes {n} values, got {}", e.name, v.len());
            }
        }
        *self.extra_values.lock().unwrap() = values;
        Ok(())
    }

    fn inputs(&self, latent: &[f32], t: f32) -> Result<TVec<TValue>> {
        let mut v: Vec<(usize, Tensor)> = vec![(
            self.latent.index,
            tract_ndarray::ArrayD::from_shape_vec(self.latent.shape.clone(), latent.to_vec())?
                .into_tensor(),
        )];
        if let Some(ts) = &self.timestep {
            let n: usize = ts.shape.iter().product();
            let t = Tensor::from_shape(&ts.shape, &vec![t; n])?
                .cast_to_dt(ts.dtype)?
                .into_owned();
            v.push((ts.index, t));
        }
        let values = self.extra_values.lock().unwrap();
        for (e, vals) in self.extras.iter().zip(values.iter()) {
            // integer inputs (class labels) get whole numbers from `extras_for`
            let t = tract_ndarray::ArrayD::from_shape_vec(e.shape.clone(), vals.clone())?
                .into_tensor()
                .cast_to_dt(e.dtype)?
                .into_owned();
            v.push((e.index, t));
        }
        v.sort_by_key(|(i, _)| *i);
        Ok(v.into_iter().map(|(_, t)| t.into_tvalue()).collect())
    }

    /// One evaluation: returns the output as f32.
    pub fn run(&self, latent: &[f32], t: f32) -> Result<Vec<f32>> {
        let mut state = SimpleState::new(&self.plan)?;
        let out = state.run(self.inputs(latent, t)?)?;
        Ok(out[0]
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }

    /// One evaluation that hands every node's outputs to `observe(node_id, outputs)`.
    pub fn run_observed(
        &self,
        latent: &[f32],
        t: f32,
        mut observe: impl FnMut(usize, &TVec<TValue>),
    ) -> Result<Vec<f32>> {
        let mut state = SimpleState::new(&self.plan)?;
        let out = state.run_plan_with_eval(self.inputs(latent, t)?, |ctx, st, node, input| {
            let out = tract_onnx::tract_core::plan::eval(ctx, st, node, input)?;
            observe(node.id, &out);
            Ok::<_, anyhow::Error>(out)
        })?;
        Ok(out[0]
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect())
    }
}

/// The float model's output at `(x, t)` with the current extra inputs or, when `opts.guidance` is
/// set, the guided combination `uncond + s·(cond - uncond)` of the conditional (`cond`) and
/// unconditional (`uncond`) passes, as the runtime's guided sampler computes it; and the conditional
/// pass alone. `observe` sees both passes.
pub fn float_output(
    float: &FloatModel,
    opts: &crate::CompileOptions,
    guided: Option<(&[Vec<f32>], &[Vec<f32>])>,
    x: &[f32],
    t: f32,
    mut observe: impl FnMut(usize, &tract_onnx::prelude::TVec<tract_onnx::prelude::TValue>),
) -> Result<(Vec<f32>, Vec<f32>)> {
    match (opts.guidance, guided) {
        (Some(s), Some((cond, uncond))) => {
            float.set_extras(uncond.to_vec())?;
            let yu = float.run_observed(x, t, &mut observe);
            float.set_extras(cond.to_vec())?;
            let yu = yu?;
            let yc = float.run_observed(x, t, &mut observe)?;
            let y = yc.iter().zip(&yu).map(|(&c, &u)| u + s * (c - u)).collect();
            Ok((y, yc))
        }
        _ => {
            let y = float.run_observed(x, t, observe)?;
            Ok((y.clone(), y))
        }
    }
}
