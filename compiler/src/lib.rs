//! dmqc: compiles an ONNX diffusion UNet into an integer `.dmq` model for dmq-runtime.
//!
//! Pipeline: [`import`] (tract-onnx, decluttered) -> [`lower`] (dmq IR) -> [`calib`] (the float model
//! inside the deployed sampler) -> [`quant`] (int8 parameters, blob) -> [`memplan`] (arena) ->
//! [`emit`] (`.dmq` bytes) -> [`eval`] (quality measured by running dmq-runtime on the host).
pub mod calib;
pub mod cli_io;
pub mod emit;
pub mod eval;
pub mod import;
pub mod ir;
pub mod lower;
pub mod memplan;
pub mod plot;
pub mod protect;
pub mod quant;

use anyhow::{bail, Result};
use dmq_runtime::format::{Prediction, SamplerConfig, SamplerKindCfg, MAX_SCHEDULE};
use dmq_runtime::SamplerKind;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub timestep_input: Option<String>,
    /// `sampler` and `prediction` are defaults the user did not choose: a timestep input named
    /// `sigma` or `sigmas` (an EDM- or consistency-style denoiser) switches them to Euler over the
    /// Karras sigmas with sample prediction
    pub sampler_by_input_name: bool,
    pub sampler: SamplerKind,
    pub prediction: Prediction,
    pub steps: u32,
    pub calib_samples: usize,
    pub calib_seed: u64,
    /// timestep buckets with their own activation parameters (1 = one set for all steps)
    pub timestep_groups: usize,
    /// also measure the plain min-max, one-range baseline
    pub baseline: bool,
    /// int16 protection of sensitive tensors
    pub protect: Protect,
    /// 8 or 4 (products touching protected tensors keep 8-bit weights)
    pub weight_bits: u8,
    /// seeds used to measure quality (distinct from calibration seeds)
    pub eval_samples: usize,
    pub progress: bool,
    /// explicit timesteps or sigmas in sampling order (`--timesteps`); `steps` must equal its length
    pub timesteps: Option<Vec<f32>>,
    /// how extra inputs are drawn (`--calib`)
    pub calib_inputs: Vec<(String, CalibSpec)>,
    /// Classifier-free guidance scale the deployed sampler uses (`--guidance`): calibration and
    /// measurement then follow guided trajectories, whose conditional and unconditional passes both
    /// run through the quantized network.
    pub guidance: Option<f32>,
    /// The extra inputs' unconditional values (`--uncond NAME=SPEC`, same kinds as `--calib`).
    pub uncond_inputs: Vec<(String, CalibSpec)>,
    /// store the timestep path's outputs per scheduled timestep (`--fold-time-path`)
    pub fold_time_path: bool,
    /// the Karras sigma range of the sigma-conditioned samplers
    pub sigma_min: f32,
    pub sigma_max: f32,
    /// exponent of the activation range search (`sum |x - q(x)|^p` over calibration samples);
    /// 0 = plain min-max
    pub range_p: f64,
    /// with `Protect::Auto`: steps whose measured SQNR stays below this (dB) run with every tensor
    /// that can be int16 at 16 bits, in buckets of their own; 0 = off
    pub floor_db: f64,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            timestep_input: None,
            sampler_by_input_name: false,
            sampler: SamplerKind::Ddim,
            prediction: Prediction::Epsilon,
            steps: 50,
            calib_samples: 16,
            calib_seed: 0,
            timestep_groups: 3,
            baseline: true,
            protect: Protect::Auto(6),
            weight_bits: 8,
            eval_samples: 8,
            progress: true,
            timesteps: None,
            calib_inputs: vec![],
            guidance: None,
            uncond_inputs: vec![],
            fold_time_path: false,
            sigma_min: 0.002,
            sigma_max: 80.0,
            range_p: 0.0,
            floor_db: 27.0,
        }
    }
}

impl CompileOptions {
    /// The default quality floor: 27 dB with 8-bit weights, 20 dB with 4-bit.
    pub fn default_floor_db(weight_bits: u8) -> f64 {
        if weight_bits == 4 {
            20.0
        } else {
            27.0
        }
    }
}

/// How an extra model input (a condition, an embedding) is drawn during calibration and measurement
/// (`--calib NAME=uniform:A,B | NAME=normal:M,S | NAME=npy:FILE`).
#[derive(Debug, Clone, PartialEq)]
pub enum CalibSpec {
    Uniform(f32, f32),
    Normal(f32, f32),
    /// one input's values, or several stacked (a row is chosen per trajectory)
    Values(Vec<f32>),
}

/// Parses `NAME=uniform:A,B`, `NAME=normal:M,S` or `NAME=npy:FILE`.
pub fn parse_calib(s: &str) -> Result<(String, CalibSpec)> {
    let (name, spec) = s.split_once('=').ok_or_else(|| {
        anyhow::anyhow!(
            "--calib {s:?}: expected NAME=uniform:A,B | NAME=normal:M,S | NAME=npy:FILE"
        )
    })?;
    let (kind, arg) = spec
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("--calib {s:?}: expected KIND:ARGS after '='"))?;
    let two = |arg: &str| -> Result<(f32, f32)> {
        let v: Vec<f32> = arg
            .split(',')
            .map(|x| x.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--calib {s:?}: {e}"))?;
        match v[..] {
            [a, b] if a.is_finite() && b.is_finite() => Ok((a, b)),
            _ => bail!("--calib {s:?}: expected two finite numbers"),
        }
    };
    let spec = match kind {
        "uniform" => {
            let (a, b) = two(arg)?;
            CalibSpec::Uniform(a.min(b), a.max(b))
        }
        "normal" => {
            let (m, sd) = two(arg)?;
            CalibSpec::Normal(m, sd.abs())
        }
        "npy" => {
            let (_, v) = crate::cli_io::read_npy(Path::new(arg))?;
            if v.iter().any(|x| !x.is_finite()) {
                bail!("--calib {s:?}: the file holds non-finite values");
            }
            CalibSpec::Values(v)
        }
        k => bail!("--calib {s:?}: unknown kind {k:?} (uniform, normal or npy)"),
    };
    Ok((name.to_string(), spec))
}

/// The extra inputs' values for the trajectory with `seed`, drawn as `opts.calib_inputs` says.
pub fn extras_for(
    float: &import::FloatModel,
    opts: &CompileOptions,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let mut rng = dmq_runtime::sampler::Rng::new(seed ^ 0xe47a_c0de);
    float
        .extras
        .iter()
        .map(|e| {
            let spec = opts
                .calib_inputs
                .iter()
                .find(|(name, _)| *name == e.name)
                .map(|s| &s.1)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the model input {:?} {:?} needs values: pass --calib {}=uniform:A,B | normal:M,S | npy:FILE",
                        e.name,
                        e.shape,
                        e.name
                    )
                })?;
            draw(spec, e, seed, &mut rng, "--calib")
        })
        .collect()
}

/// The extra inputs' values in the unconditional pass of guidance for the trajectory with `seed`:
/// those named by `--uncond`, the others as in [`extras_for`].
pub fn uncond_extras_for(
    float: &import::FloatModel,
    opts: &CompileOptions,
    seed: u64,
) -> Result<Vec<Vec<f32>>> {
    let mut vals = extras_for(float, opts, seed)?;
    let mut rng = dmq_runtime::sampler::Rng::new(seed ^ 0x0c0d_0u64);
    for (name, spec) in &opts.uncond_inputs {
        let k = float
            .extras
            .iter()
            .position(|e| e.name == *name)
            // `compile` has checked every name against the model's inputs, with the list
            .ok_or_else(|| anyhow::anyhow!("--uncond {name}: the model has no such extra input"))?;
        vals[k] = draw(spec, &float.extras[k], seed, &mut rng, "--uncond")?;
    }
    Ok(vals)
}

/// One input's values drawn from `spec` (integer inputs take whole numbers).
fn draw(
    spec: &CalibSpec,
    e: &import::InputDesc,
    seed: u64,
    rng: &mut dmq_runtime::sampler::Rng,
    flag: &str,
) -> Result<Vec<f32>> {
    let n: usize = e.shape.iter().product();
    let v: Vec<f32> = match spec {
        CalibSpec::Uniform(a, b) => (0..n).map(|_| a + (b - a) * rng.uniform() as f32).collect(),
        CalibSpec::Normal(m, sd) => (0..n).map(|_| m + sd * rng.gaussian()).collect(),
        CalibSpec::Values(v) => {
            if v.is_empty() || v.len() % n != 0 {
                bail!(
                    "{flag} {}: the file has {} values, the input takes {n} (or a multiple)",
                    e.name,
                    v.len()
                );
            }
            let rows = v.len() / n;
            let r = (seed as usize) % rows;
            v[r * n..(r + 1) * n].to_vec()
        }
    };
    Ok(if e.dtype.is_integer() {
        v.iter().map(|x| x.round()).collect()
    } else {
        v
    })
}

/// The float model's output at `(x, t)` with the current extra inputs or, when `opts.guidance` is
/// set, the guided combination `uncond + s·(cond - uncond)` of the conditional (`cond`) and
/// unconditional (`uncond`) passes, as the runtime's guided sampler computes it; and the conditional
/// pass alone. `observe` sees both passes.
pub fn float_output(
    float: &import::FloatModel,
    opts: &CompileOptions,
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

/// Which tensors get int16 activations.
#[derive(Debug, Clone, PartialEq)]
pub enum Protect {
    None,
    /// the `k` most sensitive tensors, measured through the runtime
    Auto(usize),
    Names(Vec<String>),
    /// every tensor that can be int16 (`--act-bits 16`)
    All,
}

/// A timestep bucket: the upper timestep bound separating it from the next, its
/// ranges, and whether it runs the quality-floor program (every int16-capable tensor at 16 bits).
struct Bucket {
    upper: Option<f32>,
    ranges: HashMap<usize, quant::Range>,
    floor: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimestepQuality {
    pub t: f32,
    /// median over the evaluation inputs
    pub sqnr_db: f64,
    pub min_db: f64,
    /// the plain min-max, one-range baseline at the same inputs (median)
    pub baseline_db: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub onnx_bytes: u64,
    pub dmq_bytes: usize,
    pub size_ratio: f64,
    pub arena_bytes: u32,
    pub arena_without_reuse: usize,
    pub parameters: usize,
    pub ops: BTreeMap<String, usize>,
    pub sampler: String,
    /// the timestep input whose name chose the sampler (see `CompileOptions::sampler_by_input_name`)
    pub sampler_from_input: Option<String>,
    pub steps: u32,
    pub calib_trajectories: usize,
    /// classifier-free guidance scale the trajectories followed (`--guidance`)
    pub guidance: Option<f32>,
    pub calib_evaluations: usize,
    pub calib_seconds: f64,
    /// sampling steps calibrated on forward-process probes (the model's own trajectories had drifted)
    pub calib_probed_steps: usize,
    pub t_range: (f32, f32),
    pub timestep_groups: usize,
    pub weight_bits: u8,
    pub sqnr_per_timestep: Vec<TimestepQuality>,
    /// float trajectories measured per timestep (fewer than asked for on large models)
    pub eval_samples: usize,
    /// multiply-accumulates of one evaluation
    pub macs_per_eval: u64,
    pub sqnr_mean_db: f64,
    pub sqnr_worst_db: f64,
    pub baseline_bytes: Option<usize>,
    /// tensors with int16 activations, and what they cost
    pub protected: Vec<String>,
    pub arena_bytes_unprotected: u32,
    pub sensitivity: Vec<protect::Sensitivity>,
    /// the quality floor (dB) and the steps below it with int8 activations: (t, SQNR measured then);
    /// those steps run buckets in which every tensor that can be int16 is
    pub floor_db: f64,
    pub floor_steps: Vec<(f32, f64)>,
    /// op streams in the file (timestep buckets, including floor buckets)
    pub streams: usize,
}

pub struct Compiled {
    pub bytes: Vec<u8>,
    pub report: Report,
    pub program: ir::Program,
}

pub fn sampler_config(opts: &CompileOptions) -> SamplerConfig {
    SamplerConfig {
        num_train_timesteps: 1000,
        beta_start: 1e-4,
        beta_end: 0.02,
        prediction: opts.prediction,
        default_sampler: match opts.sampler {
            SamplerKind::Ddim => SamplerKindCfg::Ddim,
            SamplerKind::Ddpm => SamplerKindCfg::Ddpm,
            SamplerKind::Euler => SamplerKindCfg::Euler,
            SamplerKind::Consistency => SamplerKindCfg::Consistency,
        },
        default_steps: opts.steps,
        sigma_min: opts.sigma_min,
        sigma_max: opts.sigma_max,
        rho: 7.0,
        schedule: opts
            .timesteps
            .iter()
            .flatten()
            .copied()
            .take(MAX_SCHEDULE)
            .collect(),
    }
}

/// Folds the timestep path for the scheduled timesteps: runs its f32 ops through the runtime for each
/// of `timesteps` and records the outputs the integer graph reads, so the device skips the time MLP on
/// scheduled steps. `None` without a timestep input or when nothing depends on the timestep alone.
pub fn fold_time_path(
    p: &ir::Program,
    bytes: &[u8],
    timesteps: &[f32],
) -> Result<Option<emit::TimeTableData>> {
    use dmq_runtime::format::{DType, Op};
    let Some(ts) = p.timestep else {
        return Ok(None);
    };
    let model =
        dmq_runtime::Model::load(bytes).map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
    let ops = model
        .stream_ops(0)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
    if ops.len() != p.ops.len() {
        bail!("internal error: op streams and program differ");
    }
    // ops computing from the timestep and constants alone
    let mut t_only = vec![false; p.tensors.len()];
    t_only[ts.0 as usize] = true;
    let mut is_time = vec![false; p.ops.len()];
    for (i, op) in p.ops.iter().enumerate() {
        let out = op.output();
        let kind = matches!(
            op,
            ir::IrOp::Const { .. }
                | ir::IrOp::Linear { float: true, .. }
                | ir::IrOp::Plain(
                    Op::FUnary { .. }
                        | Op::FBinary { .. }
                        | Op::FLinear { .. }
                        | Op::FConcat { .. }
                        | Op::Reshape { .. }
                        | Op::Transpose { .. }
                        | Op::Slice { .. }
                        | Op::Broadcast { .. }
                )
        );
        if kind && p.t(out).dtype == DType::F32 && op.inputs().iter().all(|x| t_only[x.0 as usize])
        {
            is_time[i] = true;
            t_only[out.0 as usize] = true;
        }
    }
    // the time path's outputs: read by other ops
    let mut outputs = vec![];
    let mut row = 0u32;
    for (i, op) in p.ops.iter().enumerate() {
        let out = op.output();
        let read_outside = p
            .ops
            .iter()
            .enumerate()
            .any(|(j, o)| !is_time[j] && o.inputs().contains(&out))
            || p.output == Some(out);
        if is_time[i] && read_outside {
            outputs.push((i as u32, row));
            row += p.t(out).numel() as u32;
        }
    }
    if outputs.is_empty() {
        return Ok(None);
    }
    let mut steps: Vec<f32> = vec![];
    for &t in timesteps {
        if !steps.iter().any(|s| s.to_bits() == t.to_bits()) {
            steps.push(t);
        }
    }
    let ts_ref = model
        .meta()
        .timestep
        .clone()
        .ok_or_else(|| anyhow::anyhow!("internal error: no timestep tensor"))?;
    let mut arena = eval::arena_for(&model);
    let a = eval::arena_bytes(&mut arena);
    let mut values = vec![];
    for &t in &steps {
        let o = ts_ref.offset as usize;
        for k in 0..ts_ref.numel() {
            a[o + 4 * k..o + 4 * k + 4].copy_from_slice(&t.to_le_bytes());
        }
        for (i, op) in ops.iter().enumerate() {
            if !is_time[i] {
                continue;
            }
            dmq_runtime::exec::run_op(op, a, model.blob())
                .map_err(|e| anyhow::anyhow!("internal error: time path op {i}: {e}"))?;
            if outputs.iter().any(|&(j, _)| j as usize == i) {
                let out = ir::plain_output(op);
                let o = out.offset as usize;
                values.extend(
                    a[o..o + 4 * out.numel()]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
        }
    }
    Ok(Some(emit::TimeTableData {
        timesteps: steps,
        values,
        row,
        skip: is_time.iter().map(|&b| b as u8).collect(),
        outputs,
    }))
}

/// Multiply-accumulates of one model evaluation.
pub fn macs_per_eval(model: &dmq_runtime::Model) -> u64 {
    let (c, l, m) = macs_by_kind(model);
    c + l + m
}

/// Multiply-accumulates of one model evaluation: (convs, linears, attention products).
pub fn macs_by_kind(model: &dmq_runtime::Model) -> (u64, u64, u64) {
    use dmq_runtime::format::Op;
    let mut total = (0u64, 0u64, 0u64);
    for op in model.ops().flatten() {
        match op {
            Op::Conv2d {
                input,
                output,
                kernel,
                ..
            } => {
                let o = &output.shape;
                let per_out = input.shape.get(1).copied().unwrap_or(0) as u64
                    * kernel[0] as u64
                    * kernel[1] as u64;
                total.0 += o.iter().map(|&d| d as u64).product::<u64>() * per_out
            }
            Op::Linear { geom, .. } => total.1 += geom.m as u64 * geom.n as u64 * geom.k as u64,
            Op::MatMul { geom, .. } => {
                total.2 += geom.batch[0] as u64
                    * geom.batch[1] as u64
                    * geom.m as u64
                    * geom.n as u64
                    * geom.k as u64
            }
            _ => {}
        }
    }
    total
}

/// Formats lowering failures as one message listing each op type with its nodes.
pub fn unsupported_message(list: &[lower::Unsupported]) -> String {
    let mut by_op: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in list {
        by_op
            .entry(u.op.clone())
            .or_default()
            .push(format!("{} ({})", u.node, u.why));
    }
    let mut s = format!(
        "the model uses {} construct(s) dmq cannot lower yet:\n",
        list.len()
    );
    for (op, nodes) in by_op {
        s += &format!("  op {op}: {}\n", nodes.join("; "));
    }
    s += "Re-export without these ops, or open an issue naming them.";
    s
}

pub fn progress_bar(len: u64, msg: &str, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>12} [{bar:40}] {pos}/{len} evals {elapsed_precise} eta {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Compiles an ONNX model to `.dmq` bytes and measures its quality through the runtime.
pub fn compile(path: &Path, opts: &CompileOptions) -> Result<Compiled> {
    let imp = import::import(path, opts.timestep_input.as_deref())?;
    // the float model's size: the file and the external data the dynamo exporter writes beside it
    let mut size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut data = path.as_os_str().to_owned();
    data.push(".data");
    size += std::fs::metadata(&data).map(|m| m.len()).unwrap_or(0);
    compile_imported(imp, size, &path.display().to_string(), opts)
}

/// [`compile`] from ONNX bytes in memory.
pub fn compile_bytes(onnx: &[u8], label: &str, opts: &CompileOptions) -> Result<Compiled> {
    let imp = import::import_bytes(onnx, label, opts.timestep_input.as_deref())?;
    compile_imported(imp, onnx.len() as u64, label, opts)
}

fn compile_imported(
    imp: import::Imported,
    onnx_bytes: u64,
    label: &str,
    opts: &CompileOptions,
) -> Result<Compiled> {
    let lowered = match lower::lower(&imp) {
        Ok(l) => l,
        Err(list) => bail!("{}", unsupported_message(&list)),
    };
    // a noise-level input and no sampler chosen: a denoiser in EDM / consistency form, which takes
    // x = x0 + sigma * n and returns the clean sample
    let sampler_from_input = imp
        .timestep
        .as_ref()
        .map(|t| t.name.clone())
        .filter(|n| opts.sampler_by_input_name && matches!(n.as_str(), "sigma" | "sigmas"));
    let by_name;
    let opts = match sampler_from_input {
        Some(_) => {
            by_name = CompileOptions {
                sampler: SamplerKind::Euler,
                prediction: Prediction::Sample,
                ..opts.clone()
            };
            &by_name
        }
        None => opts,
    };
    let float = import::FloatModel::new(&imp)?;
    // every --calib / --uncond names an extra input of this model
    for (flag, specs) in [
        ("--calib", &opts.calib_inputs),
        ("--uncond", &opts.uncond_inputs),
    ] {
        for (name, _) in specs {
            if !float.extras.iter().any(|e| e.name == *name) {
                let names: Vec<&str> = float.extras.iter().map(|e| e.name.as_str()).collect();
                bail!(
                    "{flag} {name}: the model has no extra input of that name (extra inputs: {}; the latent and the timestep take no values)",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                );
            }
        }
    }
    let cfg = sampler_config(opts);
    let pb = progress_bar(
        (opts.calib_samples as u64) * opts.steps as u64,
        "calibrating",
        opts.progress,
    );
    let t0 = std::time::Instant::now();
    let cal = calib::calibrate(
        &float,
        &cfg,
        opts.sampler,
        opts.steps,
        opts.calib_samples,
        opts.calib_seed,
        &lowered.stat_nodes,
        opts.sampler.sigma_conditioned(),
        &|seed| extras_for(&float, opts, seed),
        &|seed| uncond_extras_for(&float, opts, seed),
        opts,
        &pb,
    )?;
    pb.finish_and_clear();
    let calib_seconds = t0.elapsed().as_secs_f64();
    // Ranges per timestep bucket: the plain baseline takes one min-max range over all steps; the
    // chosen configuration takes `timestep_groups` buckets with error-minimising int8 clipping.
    let ranges_of = |steps: &[usize], refine: bool| {
        let mut ranges = calib::union(&cal.per_step, steps);
        if refine && opts.range_p > 0.0 {
            calib::refine(&mut ranges, &cal.samples, steps, opts.range_p);
        }
        ranges
    };
    let all_steps: Vec<usize> = (0..cal.timesteps.len()).collect();
    // Tensors that depend only on the extra inputs (a text embedding, its keys and values) take
    // one quantization in every stream, since their values do not change with t: all-steps ranges,
    // and the main program's element types and weight bits in the floor streams. Their ops are then
    // the same records in every stream and the runtime computes them once per generation.
    let invariant_roots = lowered.program.extra_only_roots();
    let invariant_stats: std::collections::HashSet<usize> = invariant_roots
        .iter()
        .filter_map(|&r| lowered.program.t(r).stat)
        .collect();
    let invariant_ranges: HashMap<usize, quant::Range> = if invariant_stats.is_empty() {
        HashMap::new()
    } else {
        ranges_of(&all_steps, true)
            .into_iter()
            .filter(|(s, _)| invariant_stats.contains(s))
            .collect()
    };
    let baseline_buckets = vec![Bucket {
        upper: None,
        ranges: ranges_of(&all_steps, false),
        floor: false,
    }];
    let mut buckets: Vec<Bucket> =
        calib::buckets_by_ranges(&cal.per_step, &cal.timesteps, opts.timestep_groups)
            .into_iter()
            .map(|(steps, upper)| Bucket {
                ranges: ranges_of(&steps, true),
                upper,
                floor: false,
            })
            .collect();
    // One op stream per timestep bucket, sharing weights through the blob. `floor_program` serves the
    // buckets below the quality floor. The arena plan covers the widest element type of every tensor
    // and the largest scratch of every op over the streams.
    let build = |main: &ir::Program,
                 floor_program: Option<(&ir::Program, &[ir::TensorId])>,
                 buckets: &[Bucket],
                 keep8: &[ir::TensorId]|
     -> Result<(Vec<u8>, memplan::Plan)> {
        let keep8_main = keep8;
        let mut blob = quant::Blob::default();
        let mut streams = vec![];
        let mut wide = main.clone();
        for b in buckets {
            let (p, own_keep8) = match (b.floor, floor_program) {
                (true, Some(f)) => f,
                _ => (main, keep8),
            };
            let mut ranges = b.ranges.clone();
            if buckets.len() > 1 {
                ranges.extend(invariant_ranges.iter().map(|(s, r)| (*s, r.clone())));
            }
            let mut keep8: Vec<ir::TensorId> = own_keep8
                .iter()
                .filter(|r| !invariant_roots.contains(r))
                .copied()
                .collect();
            keep8.extend(keep8_main.iter().filter(|r| invariant_roots.contains(r)));
            for (w, t) in wide.tensors.iter_mut().zip(&p.tensors) {
                if t.dtype.size() > w.dtype.size() {
                    w.dtype = t.dtype;
                }
            }
            streams.push((
                quant::quantize(p, &ranges, &mut blob, opts.weight_bits, &keep8)?,
                b.upper,
            ));
        }
        // ops that depend only on the extra inputs run once per generation: first in every stream
        let invariant = memplan::hoist_invariant(main, &mut streams);
        let scratch: Vec<usize> = (0..streams[0].0.scratch.len())
            .map(|i| streams.iter().map(|s| s.0.scratch[i]).max().unwrap_or(0))
            .collect();
        let plan = memplan::plan(&wide, &streams[0].0.ops, &scratch, invariant);
        let bytes = emit::emit(
            main,
            &streams,
            &blob,
            &plan,
            cfg.clone(),
            (cal.t_min, cal.t_max),
        )?;
        Ok((bytes, plan))
    };
    // The plain baseline: one min-max range for all steps, every activation int8.
    let (unprotected, unprotected_plan) = build(&lowered.program, None, &baseline_buckets, &[])?;
    // Measurement scales with the model: each phase (sensitivity, final SQNR) gets about 60 G
    // multiply-accumulates of runtime evaluations (seconds on a desktop core), at least a few.
    let macs = macs_per_eval(
        &dmq_runtime::Model::load(&unprotected)
            .map_err(|e| anyhow::anyhow!("internal error: {e}"))?,
    )
    .max(1);
    let max_evals = ((60e9 / macs as f64) as usize).max(40);
    let eval_samples = opts
        .eval_samples
        .min((max_evals / (2 * opts.steps as usize).max(1)).max(2));
    let opts = &CompileOptions {
        eval_samples,
        ..opts.clone()
    };
    // int16 protection of the most sensitive tensors, measured through the runtime
    let mut program = lowered.program.clone();
    let mut sensitivity = vec![];
    let chosen = match &opts.protect {
        Protect::None => vec![],
        Protect::Names(names) => protect::by_names(&program, names)?,
        Protect::All => protect::candidates(&program),
        Protect::Auto(k) => {
            let m0 = dmq_runtime::Model::load(&unprotected)
                .map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
            let s = opts.steps as usize;
            let mut picks = vec![
                s - 1,
                s.saturating_sub(2),
                s.saturating_sub(4),
                s * 4 / 5,
                s / 2,
                0,
            ];
            picks.sort();
            picks.dedup();
            let mut inputs = vec![];
            for seed in 0..2 {
                let traj = eval::float_trajectory_inputs(&float, &m0, opts, 2_000_000 + seed)?;
                inputs.extend(picks.iter().filter_map(|&i| traj.get(i).cloned()));
            }
            let (c, ranking) = protect::auto(&program, *k, &inputs, max_evals, |p| {
                Ok(build(p, None, &buckets, &[])?.0)
            })?;
            sensitivity = ranking;
            c
        }
    };
    protect::apply(&mut program, &chosen);
    let protected: Vec<String> = chosen.iter().map(|&t| program.t(t).name.clone()).collect();
    let (mut bytes, mut plan) = build(&program, None, &buckets, &chosen)?;
    let fold = |bytes: Vec<u8>| -> Result<Vec<u8>> {
        if !opts.fold_time_path {
            return Ok(bytes);
        }
        Ok(match fold_time_path(&program, &bytes, &cal.timesteps)? {
            Some(tt) => emit::with_time_table(&bytes, &tt)?,
            None => bytes,
        })
    };
    bytes = fold(bytes)?;
    // Quality floor: steps whose output SQNR (worst of two seeds unused elsewhere) stays below
    // `floor_db` get buckets of their own in which every tensor that can be int16 is.
    let mut floor_before = vec![];
    if opts.floor_db > 0.0 && matches!(opts.protect, Protect::Auto(_)) {
        let m =
            dmq_runtime::Model::load(&bytes).map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
        let probe_opts = CompileOptions {
            eval_samples: 2,
            progress: false,
            ..opts.clone()
        };
        let q = eval::sqnr_over_schedule(&float, &m, &probe_opts, 3_000_000)?;
        let weak: Vec<bool> = q.iter().map(|q| q.min_db < opts.floor_db).collect();
        if weak.iter().any(|&w| w) && weak.len() == cal.timesteps.len() {
            floor_before = q
                .iter()
                .filter(|q| q.min_db < opts.floor_db)
                .map(|q| (q.t, q.min_db))
                .collect();
            let mut floor_program = program.clone();
            let promote: Vec<ir::TensorId> = protect::candidates(&program)
                .into_iter()
                .filter(|r| !invariant_roots.contains(r))
                .collect();
            protect::apply(&mut floor_program, &promote);
            // floor buckets: runs of weak steps neighbouring in t; the other steps share the
            // remaining buckets (so the file keeps `timestep_groups` streams where it can)
            let mut order: Vec<usize> = (0..weak.len()).collect();
            order.sort_by(|&a, &b| cal.timesteps[a].partial_cmp(&cal.timesteps[b]).unwrap());
            // every bucket is an interval of t: weak and strong runs alternate, and when there are
            // more runs than buckets, the weak run that is least below the floor rejoins the others
            let mut weak = weak;
            let runs = loop {
                let runs: Vec<Vec<usize>> = order
                    .chunk_by(|&a, &b| weak[a] == weak[b])
                    .map(|r| r.to_vec())
                    .collect();
                let worst =
                    |r: &Vec<usize>| r.iter().map(|&i| q[i].min_db).fold(f64::MAX, f64::min);
                let drop = runs
                    .iter()
                    .filter(|r| weak[r[0]])
                    .max_by(|a, b| worst(a).total_cmp(&worst(b)));
                match drop {
                    Some(r) if runs.len() > opts.timestep_groups.max(1) => {
                        for &i in r {
                            weak[i] = false;
                        }
                    }
                    _ => break runs,
                }
            };
            floor_before.retain(|(t, _)| q.iter().zip(&weak).any(|(q, &w)| w && q.t == *t));
            let strong_runs: Vec<&Vec<usize>> = runs.iter().filter(|r| !weak[r[0]]).collect();
            let mut split: Vec<(Vec<usize>, Option<f32>)> = runs
                .iter()
                .filter(|r| weak[r[0]])
                .map(|r| (r.clone(), None))
                .collect();
            // the remaining buckets go to the strong runs, one each and the rest to the longest
            let mut share = vec![1usize; strong_runs.len()];
            let spare = opts
                .timestep_groups
                .saturating_sub(split.len() + strong_runs.len());
            for _ in 0..spare {
                if let Some(k) = (0..strong_runs.len())
                    .filter(|&k| share[k] < strong_runs[k].len())
                    .max_by_key(|&k| strong_runs[k].len() / share[k])
                {
                    share[k] += 1;
                }
            }
            for (run, g) in strong_runs.iter().zip(share) {
                let sub_ranges: Vec<_> = run.iter().map(|&i| cal.per_step[i].clone()).collect();
                let sub_t: Vec<f32> = run.iter().map(|&i| cal.timesteps[i]).collect();
                for (steps, _) in calib::buckets_by_ranges(&sub_ranges, &sub_t, g) {
                    split.push((steps.iter().map(|&k| run[k]).collect(), None));
                }
            }
            split.sort_by(|a, b| {
                cal.timesteps[a.0[0]]
                    .partial_cmp(&cal.timesteps[b.0[0]])
                    .unwrap()
            });
            buckets = calib::with_bounds(split, &cal.timesteps)
                .into_iter()
                .map(|(steps, upper)| Bucket {
                    ranges: ranges_of(&steps, true),
                    floor: weak[steps[0]],
                    upper,
                })
                .collect();
            // with 4-bit weights, the floor buckets also give 8-bit weights to the layers that need
            // them most (measured on the weak steps), until those steps reach the floor
            let floor_keep8: Vec<ir::TensorId> = if opts.weight_bits == 4 {
                let f = &floor_program;
                let floor_buckets: Vec<&Bucket> = buckets.iter().filter(|b| b.floor).collect();
                let mut inputs = vec![];
                for seed in 0..2 {
                    let traj = eval::float_trajectory_inputs(&float, &m, opts, 3_000_000 + seed)?;
                    inputs.extend(
                        traj.into_iter()
                            .enumerate()
                            .filter(|(i, _)| weak[*i])
                            .map(|(_, x)| x),
                    );
                }
                // one stream per floor bucket, as a model of its own
                let single = |keep8: &[ir::TensorId]| -> Result<Vec<u8>> {
                    let n = floor_buckets.len();
                    let bs: Vec<Bucket> = floor_buckets
                        .iter()
                        .enumerate()
                        .map(|(i, b)| Bucket {
                            upper: if i + 1 < n { b.upper } else { None },
                            ranges: b.ranges.clone(),
                            floor: false,
                        })
                        .collect();
                    Ok(build(f, None, &bs, keep8)?.0)
                };
                protect::floor_weights(
                    f,
                    &chosen,
                    10f64.powf(-(opts.floor_db + 2.0) / 10.0),
                    &inputs,
                    single,
                )?
            } else {
                chosen.clone()
            };
            (bytes, plan) = build(
                &program,
                Some((&floor_program, &floor_keep8[..])),
                &buckets,
                &chosen,
            )?;
            bytes = fold(bytes)?;
        }
    }
    let model = dmq_runtime::Model::load(&bytes)
        .map_err(|e| anyhow::anyhow!("internal error: emitted model does not validate: {e}"))?;
    let baseline_bytes = if opts.baseline {
        Some(unprotected)
    } else {
        None
    };
    if std::env::var_os("DMQ_DEBUG_LAYERS").is_some() {
        let traj = eval::float_trajectory_inputs(&float, &model, opts, 1_000_000)?;
        let pick: usize = std::env::var("DMQ_DEBUG_LAYERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        for (t, x, _, extras) in traj.iter().skip(pick).take(1) {
            for (i, kind, name, db) in
                eval::per_layer_sqnr(&float, &program, &bytes, x, *t, extras)?
            {
                eprintln!("t={t} op {i:4} {kind:<16} {db:8.2} dB  {name}");
            }
        }
    }
    let mut sqnr = eval::sqnr_over_schedule(&float, &model, opts, 1_000_000)?;
    if let Some(b) = &baseline_bytes {
        let bm = dmq_runtime::Model::load(b)
            .map_err(|e| anyhow::anyhow!("internal error: baseline does not validate: {e}"))?;
        let base = eval::sqnr_over_schedule(&float, &bm, opts, 1_000_000)?;
        for (q, b) in sqnr.iter_mut().zip(base) {
            q.baseline_db = Some(b.sqnr_db);
        }
    }
    let sqnr_mean_db = sqnr.iter().map(|q| q.sqnr_db).sum::<f64>() / sqnr.len().max(1) as f64;
    let sqnr_worst_db = sqnr.iter().map(|q| q.sqnr_db).fold(f64::INFINITY, f64::min);
    let parameters = lowered
        .program
        .ops
        .iter()
        .map(|op| match op {
            ir::IrOp::Conv { w, bias, .. } | ir::IrOp::Linear { w, bias, .. } => {
                w.len() + bias.len()
            }
            ir::IrOp::GroupNorm { gamma, beta, .. } => gamma.len() + beta.len(),
            _ => 0,
        })
        .sum();
    let report = Report {
        model: label.to_string(),
        onnx_bytes,
        dmq_bytes: bytes.len(),
        size_ratio: bytes.len() as f64 / onnx_bytes as f64,
        arena_bytes: plan.arena_bytes,
        arena_without_reuse: plan.naive_bytes,
        parameters,
        ops: lower::op_histogram(&lowered.program)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        sampler: format!("{:?}", opts.sampler),
        sampler_from_input,
        steps: opts.steps,
        calib_trajectories: opts.calib_samples,
        guidance: opts.guidance,
        calib_evaluations: cal.evaluations,
        calib_seconds,
        calib_probed_steps: cal.probed_steps,
        t_range: (cal.t_min, cal.t_max),
        timestep_groups: opts.timestep_groups,
        weight_bits: opts.weight_bits,
        sqnr_per_timestep: sqnr,
        eval_samples: opts.eval_samples,
        macs_per_eval: macs,
        sqnr_mean_db,
        sqnr_worst_db,
        baseline_bytes: baseline_bytes.as_ref().map(|b| b.len()),
        protected,
        arena_bytes_unprotected: unprotected_plan.arena_bytes,
        sensitivity,
        floor_db: opts.floor_db,
        floor_steps: floor_before,
        streams: buckets.len(),
    };
    Ok(Compiled {
        bytes,
        report,
        program: lowered.program,
    })
}

/// A timestep (integer) or sigma (4 significant digits) for tables.
pub fn fmt_t(t: f32) -> String {
    if t == t.round() && t.abs() < 1e6 {
        format!("{t}")
    } else {
        let digits = (3 - t.abs().log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{t:.digits$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The summary table printed after compile.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    s += &format!("dmqc: {}\n", r.model);
    s += &format!(
        "  ops           {}\n",
        r.ops
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    s += &format!(
        "  parameters    {} ({:.2} G multiply-accumulates per evaluation)\n",
        r.parameters,
        r.macs_per_eval as f64 / 1e9
    );
    if let Some(name) = &r.sampler_from_input {
        s += &format!(
            "  sampler       {} over Karras sigmas, sample prediction: the timestep input is named {name:?}\n                (an EDM/consistency-style denoiser; --sampler and --prediction choose otherwise)\n",
            r.sampler
        );
    }
    if r.calib_probed_steps > 0 {
        s += &format!(
            "  note          the model's own trajectories drifted far from N(0,1)-scale latents at {} of {} steps;\n                those steps were calibrated on forward-process samples instead\n",
            r.calib_probed_steps, r.steps
        );
    }
    if !r.protected.is_empty() {
        s += &format!(
            "  int16         {} protected tensor(s): {} (arena {} -> {} bytes)\n",
            r.protected.len(),
            if r.protected.len() > 8 {
                format!(
                    "{}, … ({} more)",
                    r.protected[..8].join(", "),
                    r.protected.len() - 8
                )
            } else {
                r.protected.join(", ")
            },
            r.arena_bytes_unprotected,
            r.arena_bytes
        );
    }
    if !r.floor_steps.is_empty() {
        s += &format!(
            "  floor         below {:.0} dB with int8 activations at t = {}; those steps run buckets with\n                every int16-capable tensor at 16 bits ({} op streams in all)\n",
            r.floor_db,
            r.floor_steps
                .iter()
                .map(|(t, db)| format!("{t} ({db:.1} dB)"))
                .collect::<Vec<_>>()
                .join(", "),
            r.streams
        );
    }
    s += &format!(
        "  size          {} bytes ({:.1}% of the ONNX file's {} bytes)\n",
        r.dmq_bytes,
        100.0 * r.size_ratio,
        r.onnx_bytes
    );
    s += &format!(
        "  arena         {} bytes (without reuse: {} bytes)\n",
        r.arena_bytes, r.arena_without_reuse
    );
    s += &format!(
        "  calibration   {} {} steps × {} trajectories = {} float evaluations in {:.1} s\n",
        r.sampler, r.steps, r.calib_trajectories, r.calib_evaluations, r.calib_seconds
    );
    if let Some(g) = r.guidance {
        s += &format!(
            "  guidance      scale {g}: calibrated and measured on guided trajectories (conditional and
                unconditional passes both observed; SQNR below is the conditional pass)
"
        );
    }
    s += &format!(
        "  SQNR of the int8 output against float through the runtime (dB; {} op stream(s); median and worst\n  over {} float-trajectory inputs per timestep; baseline = plain min-max with one range for all steps):\n",
        r.streams, r.eval_samples
    );
    s += "        t    median    worst  baseline\n";
    for q in &r.sqnr_per_timestep {
        let b = q
            .baseline_db
            .map(|b| format!("{b:>9.2}"))
            .unwrap_or_else(|| "        -".into());
        s += &format!(
            "  {:>7}  {:>8.2} {:>8.2} {}\n",
            fmt_t(q.t),
            q.sqnr_db,
            q.min_db,
            b
        );
    }
    s += &format!(
        "  mean {:.2} dB, worst timestep {:.2} dB\n",
        r.sqnr_mean_db, r.sqnr_worst_db
    );
    s
}
