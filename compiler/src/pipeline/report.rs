//! The compile report: what was quantized how and what it costs, and the summary table printed after
//! a compile.
use crate::protect;
use dmq_runtime::format as wire;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct TimestepQuality {
    pub t: f32,
    /// median over the evaluation inputs
    pub sqnr_db: f64,
    pub min_db: f64,
    /// the plain min-max, one-range baseline at the same inputs (median)
    pub baseline_db: Option<f64>,
    /// share of the step's integer activation bytes stored as int16, and of its multiply-accumulates
    /// with an int16 activation operand (0 to 1; see [`Int16Share`])
    pub int16_bytes: f64,
    pub int16_macs: f64,
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
    /// the trajectories asked for, when `--calib-budget` ran fewer
    pub calib_trajectories_asked: Option<usize>,
    /// classifier-free guidance scale the trajectories followed (`--guidance`)
    pub guidance: Option<f32>,
    pub calib_evaluations: usize,
    pub calib_seconds: f64,
    /// wall-clock seconds of each phase of the compile, in order (calibration, baseline build,
    /// sensitivity ranking, build, quality floor, output correction, measurement)
    pub phase_seconds: Vec<(String, f64)>,
    /// (search, runtime evaluations it made, its budget, what it measured when the budget could not
    /// take every candidate on every probe): the sensitivity ranking and the quality floor, each
    /// within the budget the compile stated before it started
    pub runtime_evals: Vec<(String, usize, usize, Option<String>)>,
    /// the output's correlated-error correction per op stream (see `pipeline::correct`)
    pub output_correction: super::correct::Correction,
    /// sampling steps calibrated on forward-process probes (the model's own trajectories had drifted)
    pub calib_probed_steps: usize,
    /// sampling steps whose trajectories drifted far from the forward process's scale (a warning by
    /// default; acted on only with `--calib-source forward`)
    pub calib_drifted_steps: usize,
    /// with most steps drifted: another prediction type under which one float trajectory drifts
    /// at a quarter of its steps or fewer, at how many, and its steps (the warning's hint)
    pub drift_hint: Option<(String, usize, usize)>,
    pub t_range: (f32, f32),
    pub timestep_groups: usize,
    pub weight_bits: u8,
    /// with GPTQ weight rounding: products rounded with their input statistics, products left to
    /// nearest rounding, and the float evaluations the statistics came from
    pub gptq: Option<GptqStats>,
    pub sqnr_per_timestep: Vec<TimestepQuality>,
    /// float trajectories measured per timestep (fewer than asked for on large models)
    pub eval_samples: usize,
    /// float trajectories the ranking's and the floor's probes came from: 2, or 1 when two
    /// trajectories' steps were over the search budget (see `pipeline::budget`)
    pub probe_trajectories: usize,
    /// threads of the compile's runtime evaluations (every core from 1 G MACs per evaluation on;
    /// see `eval::runtime_threads_for`); the output is the same bits for any count
    pub runtime_threads: usize,
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
    /// the int16 budget: the largest share of a step's integer activation bytes that the protected
    /// tensors and the floor may make int16 (`--a16-budget`, 0 to 1)
    pub a16_budget: f64,
    /// the steps at which the compile's own quantization measured below the one-range baseline, as
    /// (t, its SQNR, the baseline's): they run the baseline's int8 program and ranges
    pub baseline_steps: Vec<(f32, f64, f64)>,
    /// op streams in the file (timestep buckets, including floor and baseline buckets)
    pub streams: usize,
    /// what each stream computes at 16 bits
    pub int16_per_stream: Vec<Int16Share>,
    /// the products given 16-bit weights (two int8 products each) and the ranking that chose them
    pub w16: crate::split_weights::Chosen,
}

/// What GPTQ weight rounding covered (see `quant::gptq`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GptqStats {
    pub products: usize,
    pub nearest: usize,
    pub evaluations: usize,
}

/// Multiply-accumulates of one model evaluation.
pub fn macs_per_eval(model: &dmq_runtime::Model) -> u64 {
    let (c, l, m) = macs_by_kind(model);
    c + l + m
}

/// Multiply-accumulates of one model evaluation: (convs, linears, attention products).
pub fn macs_by_kind(model: &dmq_runtime::Model) -> (u64, u64, u64) {
    let mut total = [0u64; 3];
    for op in model.ops().flatten() {
        if let Some((kind, macs, _)) = op_macs(&op) {
            total[kind] += macs;
        }
    }
    (total[0], total[1], total[2])
}

/// A product op's multiply-accumulates: (0 conv, 1 linear, 2 attention product; MACs; whether an
/// activation operand is int16). `None` for every other op.
fn op_macs(op: &wire::Op<wire::TRef>) -> Option<(usize, u64, bool)> {
    use dmq_runtime::format::{DType, Op};
    let wide = |t: &wire::TRef| t.dtype == DType::I16;
    match op {
        Op::Conv2d(c) => Some((
            0,
            c.output.numel() as u64
                * c.input.shape.get(1).copied().unwrap_or(0) as u64
                * c.kernel[0] as u64
                * c.kernel[1] as u64,
            wide(&c.input),
        )),
        Op::Linear(l) => Some((
            1,
            l.geom.m as u64 * l.geom.n as u64 * l.geom.k as u64,
            wide(&l.input),
        )),
        Op::MatMul(m) => {
            let g = &m.geom;
            Some((
                2,
                g.batch[0] as u64 * g.batch[1] as u64 * g.m as u64 * g.n as u64 * g.k as u64,
                wide(&m.a) || wide(&m.b),
            ))
        }
        _ => None,
    }
}

/// What one op stream computes at 16 bits: the integer activations its ops write per evaluation
/// (bytes at their stored width) and the multiply-accumulates of its products, with the parts that
/// are int16 (products count as int16 when an activation operand is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Int16Share {
    pub act_bytes: u64,
    pub i16_bytes: u64,
    pub macs: u64,
    pub i16_macs: u64,
}

impl Int16Share {
    /// int16 share of the activation bytes
    pub fn bytes_frac(&self) -> f64 {
        self.i16_bytes as f64 / self.act_bytes.max(1) as f64
    }
    /// share of the multiply-accumulates with an int16 activation operand
    pub fn macs_frac(&self) -> f64 {
        self.i16_macs as f64 / self.macs.max(1) as f64
    }
}

/// [`Int16Share`] of op stream `k` of a model.
pub fn int16_share(model: &dmq_runtime::Model, k: usize) -> Int16Share {
    use dmq_runtime::format::DType;
    let mut s = Int16Share::default();
    for op in model.stream_ops(k).flatten() {
        let out = op.output();
        if out.dtype.is_int() {
            s.act_bytes += out.bytes() as u64;
            if out.dtype == DType::I16 {
                s.i16_bytes += out.bytes() as u64;
            }
        }
        let (_, macs, wide) = op_macs(&op).unwrap_or((0, 0, false));
        s.macs += macs;
        if wide {
            s.i16_macs += macs;
        }
    }
    s
}

/// Formats lowering failures as one message listing each op type with its nodes.
pub fn unsupported_message(list: &[crate::lower::Unsupported]) -> String {
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

/// The summary's lines on the quality floor (its steps, and those it missed within the int16 budget)
/// and on the baseline guard.
fn quality_notes(r: &Report) -> String {
    let mut s = String::new();
    if !r.floor_steps.is_empty() {
        let what = if r.a16_budget >= 1.0 {
            "every int16-capable tensor at 16 bits".to_string()
        } else {
            format!(
                "the tensors that help them most per byte at 16 bits,\n                within the int16 budget ({:.0}% of activation bytes)",
                100.0 * r.a16_budget
            )
        };
        s += &format!(
            "  floor         below {:.0} dB (or within {:.0} dB of it) with int8 activations at t = {}; those steps\n                run buckets with {what} ({} op streams in all)\n",
            r.floor_db,
            super::floor::MARGIN_DB,
            r.floor_steps
                .iter()
                .map(|(t, db)| format!("{} ({db:.1} dB)", fmt_t(*t)))
                .collect::<Vec<_>>()
                .join(", "),
            r.streams
        );
        let missed: Vec<String> = r
            .sqnr_per_timestep
            .iter()
            .filter(|q| q.sqnr_db < r.floor_db && r.floor_steps.iter().any(|f| f.0 == q.t))
            .map(|q| format!("{} ({:.1} dB)", fmt_t(q.t), q.sqnr_db))
            .collect();
        if !missed.is_empty() && r.a16_budget < 1.0 {
            s += &format!(
                "  FLOOR MISSED  still below {:.0} dB within the int16 budget at t = {}\n                (--a16-budget 100 lets those steps make every tensor int16)\n",
                r.floor_db,
                missed.join(", ")
            );
        }
    }
    if !r.baseline_steps.is_empty() {
        s += &format!(
            "  GUARD         below the one-range baseline at {} of {} steps: t = {}\n                (own -> baseline dB, same inputs); those steps run the baseline's int8 program and\n                ranges ({} op streams in all; --no-baseline-guard keeps the own quantization)\n",
            r.baseline_steps.len(),
            r.steps,
            r.baseline_steps
                .iter()
                .map(|(t, own, base)| format!("{} ({own:.1} -> {base:.1})", fmt_t(*t)))
                .collect::<Vec<_>>()
                .join(", "),
            r.streams
        );
    }
    s
}

/// Where the compile's time went, phase by phase.
fn time_line(r: &Report) -> String {
    let total: f64 = r.phase_seconds.iter().map(|p| p.1).sum();
    let phases: Vec<String> = r
        .phase_seconds
        .iter()
        .map(|(name, secs)| format!("{name} {secs:.1} s"))
        .collect();
    format!(
        "  time          {total:.1} s{}: {}\n",
        crate::eval::threads_note(r.runtime_threads),
        phases.join(", ")
    )
}

/// The summary's line on what each runtime search spent of its budget.
fn searches_line(r: &Report) -> String {
    let searches: Vec<String> = r
        .runtime_evals
        .iter()
        .map(|(name, used, max, capped)| match capped {
            Some(what) => format!("{name} {used} of {max} (CAPPED: {what})"),
            None => format!("{name} {used} of {max}"),
        })
        .collect();
    let mut line = format!(
        "  searches      runtime evaluations: {}\n",
        searches.join(", ")
    );
    if r.probe_trajectories < 2 {
        line += "  PROBES CAPPED: the ranking's and the floor's probes and the measurement come from one float\n                trajectory each (two trajectories' steps are over --search-budget)\n";
    }
    line
}

/// The summary's line on the output's correlated-error correction.
fn correction_line(c: &super::correct::Correction) -> String {
    if let Some(why) = &c.not_applied {
        return format!("  correction    none: {why}\n");
    }
    let parts: Vec<String> = c
        .streams
        .iter()
        .map(|(lo, hi, k)| match k {
            Some(k) => format!("t {lo}..{hi} k = {k:+.4}"),
            None => format!("t {lo}..{hi} none"),
        })
        .collect();
    format!(
        "  correction    output / (1 + k), the correlated part of its int8 error (PTQD), per stream: {}\n",
        parts.join(", ")
    )
}

/// The summary's line on GPTQ weight rounding (empty with nearest rounding).
fn weights_line(r: &Report) -> String {
    let mut s = String::new();
    if let Some(g) = &r.gptq {
        s += &format!(
            "  weights       {}-bit, GPTQ rounding for {} product(s) (input statistics from {} float evaluations of the\n                trajectories; a row keeps nearest rounding where that measures no worse){}\n",
            r.weight_bits,
            g.products,
            g.evaluations,
            if g.nearest > 0 {
                format!(
                    "; {} product(s) nearest\n                (no observed input of their shape, depth above {}, or past {} GiB of statistics)",
                    g.nearest,
                    crate::quant::hessian::MAX_DEPTH,
                    crate::quant::hessian::HESSIAN_BYTES >> 30
                )
            } else {
                String::new()
            }
        );
    }
    let w = &r.w16;
    if !w.layers.is_empty() {
        let db = 10.0 * (w.error_before / w.error_after.max(1e-30)).log10();
        s += &format!(
            "  16-bit wts    {} as two int8 products each (W = W_hi + W_lo): {}\n                +{:.1}% MACs, +{:.1}% weights; the probes' output error {db:.1} dB lower ({} measured)\n",
            w.layers.len(),
            w.layers.join(", "),
            100.0 * w.macs_share,
            100.0 * w.weights_share,
            w.ranking.len()
        );
    }
    s
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
            "  note          --calib-source forward: the model's own trajectories drifted far from the forward process's\n                scale at {} of {} steps; those steps were calibrated and measured on forward-process samples\n",
            r.calib_probed_steps, r.steps
        );
    } else if r.calib_drifted_steps > 0 {
        s += &format!(
            "  WARNING       the model's own trajectories drifted far from the forward process's scale (RMS off by\n                more than 3x) at {} of {} steps; calibrated on them anyway, as the device will see them.\n                A random-weight or untrained model's trajectories say little: --calib-source forward\n",
            r.calib_drifted_steps, r.steps
        );
        if let Some((p, n, of)) = &r.drift_hint {
            s += &format!(
                "                Read as {p} prediction, its trajectory drifts at {n} of {of} steps: if the model predicts\n                {p} (denoising-diffusion-pytorch's default objective is v), compile with --prediction {p}\n"
            );
        }
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
    s += &weights_line(r);
    s += &quality_notes(r);
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
    if let Some(asked) = r.calib_trajectories_asked {
        // and the forward-process probes with them (budget::probes_per_step)
        s += &format!(
            "  CALIBRATION CAPPED: {} of the {asked} trajectories asked for fit --calib-budget, and 1 forward-process\n                probe per probed step; raise it for more\n",
            r.calib_trajectories
        );
    }
    s += &time_line(r);
    s += &searches_line(r);
    s += &correction_line(&r.output_correction);
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
    s += "        t    median    worst  baseline   int16 bytes  MACs\n";
    for q in &r.sqnr_per_timestep {
        let b = q
            .baseline_db
            .map(|b| format!("{b:>9.2}"))
            .unwrap_or_else(|| "        -".into());
        s += &format!(
            "  {:>7}  {:>8.2} {:>8.2} {}   {:>10.1}% {:>4.0}%\n",
            fmt_t(q.t),
            q.sqnr_db,
            q.min_db,
            b,
            100.0 * q.int16_bytes,
            100.0 * q.int16_macs
        );
    }
    s += &format!(
        "  mean {:.2} dB, worst timestep {:.2} dB\n",
        r.sqnr_mean_db, r.sqnr_worst_db
    );
    s
}
