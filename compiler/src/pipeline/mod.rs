//! The compile pipeline as stages: import → lower → calibrate → buckets → 16-bit weights →
//! protection → quality floor
//! → measurement → report. Each stage is a function of what the previous ones produced.
mod budget;
mod build;
mod correct;
mod drift;
mod floor;
pub mod fold_time;
mod guard;
pub mod report;
mod search;

use crate::import::{self, FloatModel};
use crate::ir::{self, Program};
use crate::options::{extras_for, uncond_extras_for, CompileOptions, Protect, WeightRounding};
use crate::quant::hessian;
use crate::{calib, eval, lower};
use anyhow::{anyhow, bail, Result};
use budget::Budget;
use build::{Bucket, Builder, Programs};
use dmq_runtime::format::{Prediction, SamplerConfig, SamplerKindCfg, MAX_SCHEDULE};
use dmq_runtime::{Model, SamplerKind};
use report::{macs_per_eval, progress_bar, unsupported_message, Report};
use std::path::Path;

/// A compiled model: the `.dmq` bytes, the report and the lowered program.
pub struct Compiled {
    pub bytes: Vec<u8>,
    pub report: Report,
    pub program: ir::Program,
}

/// The noise schedule and sampler a model is compiled for (the runtime's configuration).
pub fn sampler_config(opts: &CompileOptions) -> SamplerConfig {
    SamplerConfig {
        num_train_timesteps: 1000,
        beta_start: opts.beta_range.0,
        beta_end: opts.beta_range.1,
        beta_schedule: opts.beta_schedule,
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

/// Compiles an ONNX model to `.dmq` bytes and measures its quality through the runtime.
pub fn compile(path: &Path, opts: &CompileOptions) -> Result<Compiled> {
    let imp = import::import(path, opts.timestep_input.as_deref(), &opts.input_shapes)?;
    // the float model's size: the file and the external data files it names
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let size = size + import::external_data_bytes(path);
    compile_imported(imp, size, &path.display().to_string(), opts)
}

/// [`compile`] from ONNX bytes in memory.
pub fn compile_bytes(onnx: &[u8], label: &str, opts: &CompileOptions) -> Result<Compiled> {
    let imp = import::import_bytes(
        onnx,
        label,
        opts.timestep_input.as_deref(),
        &opts.input_shapes,
    )?;
    compile_imported(imp, onnx.len() as u64, label, opts)
}

fn internal(e: dmq_runtime::Error) -> anyhow::Error {
    anyhow!("internal error: an emitted model does not validate: {e}")
}

fn compile_imported(
    imp: import::Imported,
    onnx_bytes: u64,
    label: &str,
    opts: &CompileOptions,
) -> Result<Compiled> {
    let lowered = lower::lower(&imp).map_err(|list| anyhow!("{}", unsupported_message(&list)))?;
    let (ref opts, sampler_from_input, calib_asked) = settle(&imp, &lowered.program, opts);
    let float = FloatModel::new(&imp)?;
    check_extra_names(&float, opts)?;
    let mut clock = Phases::start();
    let mut cal = calibrate(&float, &lowered, opts, calib_asked.is_some())?;
    let calib_seconds = clock.mark("calibration");
    weight_statistics(&float, opts, &lowered.program, &mut cal, &mut clock)?;
    let program0 = &lowered.program;
    let builder = Builder::new(program0, &cal, opts);
    let (unprotected, unprotected_plan) =
        builder.build(Programs::main(program0, &[]), &builder.baseline())?;
    clock.mark("baseline build"); // one min-max range for all steps, every activation int8
    let macs = macs_per_eval(&Model::load(&unprotected).map_err(internal)?).max(1);
    let budget = Budget::for_model(macs, opts);
    let opts = &budget.options(opts);
    let builder = Builder { opts, ..builder };
    let mut buckets = builder.buckets();
    let s = search::run(
        &builder,
        &float,
        program0,
        &buckets,
        &unprotected,
        &budget,
        &mut clock,
    )?;
    let (original, program0, chosen, program) = (program0, &s.program, s.chosen, s.protected);
    let (bytes, mut plan) = builder.build(Programs::main(&program, &chosen), &buckets)?;
    let mut bytes = builder.fold(&program, bytes, &plan)?;
    clock.mark("build");
    let (mut floor_steps, mut floored) = (vec![], None);
    if opts.floor_db > 0.0 && matches!(opts.protect, Protect::Auto(_)) {
        if let Some(f) = floor::apply(
            &builder,
            &float,
            (program0, &program),
            &chosen,
            &bytes,
            (&budget.floor, budget.probe_trajectories),
        )? {
            (buckets, bytes, plan, floor_steps) = (f.buckets, f.bytes, f.plan, f.steps);
            floored = Some((f.program, f.keep8));
        }
    }
    clock.mark("quality floor");
    let programs = Programs {
        main: (&program, &chosen),
        floor: floored.as_ref().map(|(p, k)| (p, &k[..])),
        baseline: Some(program0),
    };
    let built = Built::from((buckets, bytes, plan));
    let (builder, built, correction) =
        correct::output(builder, &float, programs, built, budget.max_evals)?;
    clock.mark("output correction");
    let baseline = opts.baseline.then_some(&s.baseline[..]);
    let (mut sqnr, built, baseline_steps) = measure(&float, &builder, programs, built, baseline)?;
    clock.mark("measurement");
    let (buckets, bytes, plan) = (built.buckets, built.bytes, built.plan);
    let model = Model::load(&bytes).map_err(internal)?;
    let int16_per_stream = int16_shares(&model, &mut sqnr);
    debug_layers(&float, &program, &model, &bytes, opts)?;
    let report = Report {
        model: label.to_string(),
        onnx_bytes,
        dmq_bytes: bytes.len(),
        size_ratio: bytes.len() as f64 / onnx_bytes as f64,
        arena_bytes: plan.arena_bytes,
        arena_without_reuse: plan.naive_bytes,
        parameters: parameters(original),
        ops: op_histogram(program0),
        sampler: format!("{:?}", opts.sampler),
        sampler_from_input,
        steps: opts.steps,
        calib_trajectories: opts.calib_samples,
        calib_trajectories_asked: calib_asked,
        guidance: opts.guidance,
        calib_evaluations: cal.evaluations,
        calib_seconds,
        phase_seconds: clock.done,
        runtime_evals: budget.spent(),
        output_correction: correction,
        calib_probed_steps: cal.probed_steps,
        calib_drifted_steps: cal.drifted_steps,
        drift_hint: drift::hint(&float, opts, cal.drifted_steps, macs)?,
        t_range: (cal.t_min, cal.t_max),
        timestep_groups: opts.timestep_groups,
        weight_bits: opts.weight_bits,
        gptq: gptq_stats(opts, &cal.hessians),
        sqnr_mean_db: sqnr.iter().map(|q| q.sqnr_db).sum::<f64>() / sqnr.len().max(1) as f64,
        sqnr_worst_db: sqnr.iter().map(|q| q.sqnr_db).fold(f64::INFINITY, f64::min),
        sqnr_per_timestep: sqnr,
        eval_samples: opts.eval_samples,
        probe_trajectories: budget.probe_trajectories,
        runtime_threads: crate::eval::runtime_threads(),
        macs_per_eval: macs,
        baseline_bytes: baseline.map(|b| b.len()),
        protected: chosen.iter().map(|&t| program.t(t).name.clone()).collect(),
        arena_bytes_unprotected: unprotected_plan.arena_bytes,
        sensitivity: s.sensitivity,
        floor_db: opts.floor_db,
        floor_steps,
        a16_budget: opts.a16_budget,
        baseline_steps,
        streams: buckets.len(),
        int16_per_stream,
        w16: s.w16,
    };
    Ok(Compiled {
        bytes,
        report,
        program: lowered.program,
    })
}

/// With GPTQ weight rounding, the products' input Hessians on calibration's kept inputs (the phase
/// "weight statistics").
fn weight_statistics(
    float: &FloatModel,
    opts: &CompileOptions,
    program: &Program,
    cal: &mut calib::Calibration,
    clock: &mut Phases,
) -> Result<()> {
    if opts.weight_rounding == WeightRounding::Gptq {
        cal.hessians = hessian::collect(float, opts, program, &cal.kept)?;
        clock.mark("weight statistics");
    }
    Ok(())
}

/// What GPTQ rounding covered, for the report (`None` with nearest rounding).
fn gptq_stats(opts: &CompileOptions, h: &hessian::Hessians) -> Option<report::GptqStats> {
    (opts.weight_rounding == WeightRounding::Gptq).then_some(report::GptqStats {
        products: h.layers,
        nearest: h.skipped,
        evaluations: h.evaluations,
    })
}

/// Wall-clock time per phase of a compile, for the summary's `time` line.
struct Phases {
    last: std::time::Instant,
    done: Vec<(String, f64)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            done: vec![],
        }
    }
    /// Ends phase `name`; returns its seconds.
    fn mark(&mut self, name: &str) -> f64 {
        let now = std::time::Instant::now();
        let secs = (now - self.last).as_secs_f64();
        self.last = now;
        self.done.push((name.to_string(), secs));
        secs
    }
}

fn op_histogram(program: &Program) -> std::collections::BTreeMap<String, usize> {
    let h = lower::op_histogram(program).into_iter();
    h.map(|(k, v)| (k.to_string(), v)).collect()
}

/// A noise-level input and no sampler chosen: a denoiser in EDM / consistency form, which takes
/// `x = x0 + sigma * n` and returns the clean sample. Returns the options to use and the input's name
/// when it decided.
fn sampler_by_input_name(
    imp: &import::Imported,
    opts: &CompileOptions,
) -> (CompileOptions, Option<String>) {
    let by_name = imp
        .timestep
        .as_ref()
        .map(|t| t.name.clone())
        .filter(|n| opts.sampler_by_input_name && matches!(n.as_str(), "sigma" | "sigmas"));
    match by_name {
        Some(_) => (
            CompileOptions {
                sampler: SamplerKind::Euler,
                prediction: Prediction::Sample,
                ..opts.clone()
            },
            by_name,
        ),
        None => (opts.clone(), None),
    }
}

/// Every `--calib` / `--uncond` names an extra input of this model.
fn check_extra_names(float: &FloatModel, opts: &CompileOptions) -> Result<()> {
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
    Ok(())
}

/// The float model inside the deployed sampler, observed at every step, with a progress bar.
/// `capped`: `--calib-budget` ran fewer trajectories than asked for (and so fewer probes).
fn calibrate(
    float: &FloatModel,
    lowered: &lower::Lowered,
    opts: &CompileOptions,
    capped: bool,
) -> Result<calib::Calibration> {
    let stat_nodes = &lowered.stat_nodes;
    let cfg = sampler_config(opts);
    let pb = progress_bar(
        (opts.calib_samples as u64) * opts.steps as u64,
        "calibrating",
        opts.progress,
    );
    let run = calib::Run {
        cfg: &cfg,
        kind: opts.sampler,
        steps: opts.steps,
        opts,
        probes: budget::probes_per_step(opts.calib_samples, capped),
    };
    let cal = calib::calibrate(
        float,
        &run,
        opts.calib_samples,
        opts.calib_seed,
        stat_nodes,
        opts.sampler.sigma_conditioned(),
        &|seed| extras_for(float, opts, seed),
        &|seed| uncond_extras_for(float, opts, seed),
        &pb,
    )?;
    pb.finish_and_clear();
    let probs = lowered.program.tensors.iter().filter(|t| t.probs);
    Ok(calib::Calibration {
        probs: probs.filter_map(|t| t.stat).collect(),
        ..cal
    })
}

/// The options a compile runs with (the sampler a timestep input's name implies, calibration
/// within its budget), its costs stated on stderr: the options, the timestep input that chose the
/// sampler, and the trajectories asked for when the budget ran fewer.
fn settle(
    imp: &import::Imported,
    program: &Program,
    opts: &CompileOptions,
) -> (CompileOptions, Option<String>, Option<usize>) {
    let (opts, sampler_from_input) = sampler_by_input_name(imp, opts);
    let (opts, calib_asked) = calibration_budget(program, &opts);
    // a large model's float evaluations outside calibration's threads (which set their own share)
    // run tract's products on every core; on a small one the hand-offs cost more than they save
    // and so do the runtime's evaluations (the searches and the measurement)
    let threads = crate::eval::runtime_threads_for(lower::product_macs(program), import::cores());
    if threads > 1 {
        import::set_tract_threads(threads);
    }
    crate::eval::set_runtime_threads(threads);
    if opts.progress {
        eprintln!("{}", plan(program, &opts, calib_asked));
    }
    (opts, sampler_from_input, calib_asked)
}

/// Calibration within `--calib-budget`: a model too large for the trajectories asked for runs fewer
/// (at least one). Returns the options to use and, when it capped, the count asked for.
fn calibration_budget(program: &Program, opts: &CompileOptions) -> (CompileOptions, Option<usize>) {
    let passes = if opts.guidance.is_some() { 2.0 } else { 1.0 };
    let per_trajectory = lower::product_macs(program).max(1) as f64 * opts.steps as f64 * passes;
    let fit = (opts.calib_budget_g * 1e9 / per_trajectory)
        .floor()
        .max(1.0);
    if (opts.calib_samples as f64) <= fit {
        return (opts.clone(), None);
    }
    let capped = CompileOptions {
        calib_samples: fit as usize,
        ..opts.clone()
    };
    (capped, Some(opts.calib_samples))
}

/// The compile's costs, stated before it starts: the float evaluations of calibration and the
/// runtime budget of each measuring phase, in multiply-accumulates.
fn plan(program: &Program, opts: &CompileOptions, calib_asked: Option<usize>) -> String {
    let macs = lower::product_macs(program).max(1);
    let passes = if opts.guidance.is_some() { 2 } else { 1 };
    // forward-process probes (see `calib`): merged at every step of a sigma-conditioned sampler,
    // run where trajectories drift with `--calib-source forward` (not known before)
    let per_step = budget::probes_per_step(opts.calib_samples, calib_asked.is_some());
    let probes = per_step * opts.steps as usize * passes;
    let sigma = opts.sampler.sigma_conditioned();
    let evals = opts.calib_samples * opts.steps as usize * passes + if sigma { probes } else { 0 };
    let drift = match opts.calib_source {
        crate::CalibSource::Forward if !sigma => {
            format!(" and up to {probes} more on forward-process probes where trajectories drift")
        }
        _ => String::new(),
    };
    let b = Budget::for_model(macs, opts);
    let g = |n: usize| n as f64 * macs as f64 / 1e9;
    let steps = opts.steps as usize;
    // the phases after calibration, each with its runtime and float evaluations
    let mut then = vec![];
    if opts.weight_rounding == WeightRounding::Gptq {
        let n = hessian::kept_count(steps, opts.calib_samples) * passes;
        then.push(format!(
            "GPTQ's weight statistics ({n} float evaluations again, {:.1} G MACs of input \
             products)",
            n as f64 * hessian::macs_per_eval(program) as f64 / 1e9
        ));
    }
    if opts.w16_budget > 0.0 {
        // its probes are the ranking's; without a ranking it draws them itself
        let probes = match opts.protect {
            Protect::Auto(_) => String::new(),
            _ => format!(
                "; its probes: {} float evaluations",
                b.probe_trajectories * steps * passes
            ),
        };
        then.push(format!(
            "the 16-bit weights' search (up to {} runtime evaluations with 16-bit \
             activations{probes})",
            b.max_evals
        ));
    }
    if let Protect::Auto(_) = opts.protect {
        then.push(format!(
            "the sensitivity ranking (up to {} runtime evaluations, {:.1} G MACs; its probes: {} \
             float evaluations)",
            b.max_evals,
            g(b.max_evals),
            b.probe_trajectories * steps * passes
        ));
        if opts.floor_db > 0.0 {
            then.push(
                "the quality floor if steps fall near or below --floor-db (as many)".to_string(),
            );
        }
    }
    if let n @ 1.. = correct::trajectories(steps, b.max_evals) {
        let floor = matches!(opts.protect, Protect::Auto(_)) && opts.floor_db > 0.0;
        then.push(format!(
            "the output correction ({} runtime evaluations; {} float{})",
            n * steps,
            n * steps * passes,
            if floor { ", shared with the floor" } else { "" }
        ));
    }
    let measure = b.eval_samples * steps;
    then.push(format!(
        "the measurement ({measure} inputs through the float model and the runtime, {:.1} G MACs \
         each way)",
        g(measure)
    ));
    let last = then.pop().unwrap_or_default();
    let then = match then.is_empty() {
        true => last,
        false => format!("{} and {last}", then.join(", ")),
    };
    let capped = match calib_asked {
        Some(asked) => format!(
            "; CAPPED: {} of the {asked} trajectories asked for fit --calib-budget {} G",
            opts.calib_samples, opts.calib_budget_g
        ),
        None => String::new(),
    };
    let threads = crate::eval::threads_note(crate::eval::runtime_threads());
    format!(
        "dmqc: {:.3} G multiply-accumulates per evaluation. Calibration: {evals} float evaluations \
         ({:.1} G MACs{capped}){drift}; then {then}{threads}",
        macs as f64 / 1e9,
        g(evals),
    )
}

/// `DMQ_DEBUG_LAYERS=I`: per-layer SQNR at step I of a float trajectory, on stderr.
fn debug_layers(
    float: &FloatModel,
    program: &Program,
    model: &Model,
    bytes: &[u8],
    opts: &CompileOptions,
) -> Result<()> {
    let Some(v) = std::env::var_os("DMQ_DEBUG_LAYERS") else {
        return Ok(());
    };
    let pick: usize = v.to_str().and_then(|v| v.parse().ok()).unwrap_or(0);
    let traj = eval::measured_inputs(float, model, opts, 1_000_000, 1_000_000)?;
    for (t, x, _, extras) in traj.iter().skip(pick).take(1) {
        for (i, kind, name, db) in eval::per_layer_sqnr(float, program, bytes, x, *t, extras)? {
            eprintln!("t={t} op {i:4} {kind:<16} {db:8.2} dB  {name}");
        }
    }
    Ok(())
}

/// A built file: its buckets, bytes and arena plan.
struct Built {
    buckets: Vec<Bucket>,
    bytes: Vec<u8>,
    plan: crate::memplan::Plan,
}

impl From<(Vec<Bucket>, Vec<u8>, crate::memplan::Plan)> for Built {
    fn from((buckets, bytes, plan): (Vec<Bucket>, Vec<u8>, crate::memplan::Plan)) -> Self {
        Built {
            buckets,
            bytes,
            plan,
        }
    }
}

/// SQNR per scheduled timestep against the float model, and the baseline's beside it (same inputs).
/// With the baseline guard, the steps measured below the baseline get streams that run the
/// baseline's program and ranges; the file is rebuilt and measured again. Returns the measurement,
/// the file, and the guarded steps as (t, SQNR before, baseline SQNR).
fn measure(
    float: &FloatModel,
    b: &Builder<'_>,
    programs: Programs<'_>,
    built: Built,
    baseline: Option<&[u8]>,
) -> Result<(Vec<crate::TimestepQuality>, Built, Vec<(f32, f64, f64)>)> {
    let opts = b.opts;
    let model = Model::load(&built.bytes).map_err(internal)?;
    let Some(base) = baseline else {
        let sqnr = eval::sqnr_over_schedule(float, &model, opts, 1_000_000)?;
        return Ok((sqnr, built, vec![]));
    };
    let bm = Model::load(base).map_err(internal)?;
    let mut both = eval::sqnr_of_models(float, &[&model, &bm], opts, 1_000_000)?;
    let base = both.pop().unwrap_or_default();
    let mut sqnr = both.pop().unwrap_or_default();
    let worse: Vec<bool> = sqnr
        .iter()
        .zip(&base)
        .map(|(q, b)| q.sqnr_db < b.sqnr_db)
        .collect();
    let mut guarded = vec![];
    let mut built = built;
    if opts.baseline_guard && worse.iter().any(|&w| w) && worse.len() == b.cal.timesteps.len() {
        let ranges = b.baseline().remove(0).ranges;
        let buckets = guard::split(
            &built.buckets,
            &worse,
            &b.cal.timesteps,
            &ranges,
            dmq_runtime::format::MAX_STREAMS,
        );
        guarded = sqnr
            .iter()
            .zip(&base)
            .filter(|(q, b)| q.sqnr_db < b.sqnr_db)
            .map(|(q, b)| (q.t, q.sqnr_db, b.sqnr_db))
            .collect();
        let (bytes, plan) = b.build(programs, &buckets)?;
        let bytes = b.fold(programs.main.0, bytes, &plan)?;
        let model = Model::load(&bytes).map_err(internal)?;
        sqnr = eval::sqnr_over_schedule(float, &model, opts, 1_000_000)?;
        built = Built {
            buckets,
            bytes,
            plan,
        };
    }
    for (q, b) in sqnr.iter_mut().zip(base) {
        q.baseline_db = Some(b.sqnr_db);
    }
    Ok((sqnr, built, guarded))
}

/// What each op stream of `model` computes at 16 bits, also written into the steps it runs.
fn int16_shares(model: &Model, sqnr: &mut [crate::TimestepQuality]) -> Vec<report::Int16Share> {
    let shares: Vec<_> = (0..model.streams())
        .map(|k| report::int16_share(model, k))
        .collect();
    for q in sqnr {
        let k = model.stream_for(q.t).min(shares.len().saturating_sub(1));
        if let Some(s) = shares.get(k) {
            (q.int16_bytes, q.int16_macs) = (s.bytes_frac(), s.macs_frac());
        }
    }
    shares
}

/// Weights, biases and norm affines of the program.
fn parameters(p: &Program) -> usize {
    p.ops
        .iter()
        .map(|op| match op {
            ir::IrOp::Conv { w, bias, .. } | ir::IrOp::Linear { w, bias, .. } => {
                w.len() + bias.len()
            }
            ir::IrOp::GroupNorm { gamma, beta, .. } => gamma.len() + beta.len(),
            _ => 0,
        })
        .sum()
}
