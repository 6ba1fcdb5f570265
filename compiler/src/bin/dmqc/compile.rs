//! `dmqc compile`: the command line of a compile.
use super::{sampler_kind, SamplerArg};
use anyhow::{bail, Result};
use clap::ValueEnum;
use dmq_compiler::CompileOptions;
use dmq_runtime::format::{BetaSchedule, Prediction};
use dmq_runtime::SamplerKind;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum PredictionArg {
    Epsilon,
    V,
    Sample,
}

/// The training noise schedule (`dmq_runtime::format::BetaSchedule`).
#[derive(Clone, Copy, ValueEnum)]
pub enum BetaScheduleArg {
    /// betas linear in t (DDPM, diffusers' "linear"; 1e-4..0.02 unless --beta-start/--beta-end)
    Linear,
    /// sqrt(beta) linear in t (Stable Diffusion, diffusers' "scaled_linear"; 0.00085..0.012 unless given)
    ScaledLinear,
    /// improved DDPM's cosine alphas_cumprod (diffusers' "squaredcos_cap_v2", denoising-diffusion-pytorch's "cosine")
    Cosine,
    /// denoising-diffusion-pytorch's default "sigmoid" schedule (start -3, end 3, tau 1)
    Sigmoid,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CalibSourceArg {
    Trajectories,
    Forward,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WeightRoundingArg {
    Nearest,
    Gptq,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ActRangeArg {
    Mse,
    Minmax,
}

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (inputs: latent + timestep, output: the prediction)
    pub model: PathBuf,
    /// Output .dmq file
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Input carrying the timestep or sigma (default: detected by name)
    #[arg(long)]
    pub timestep_input: Option<String>,
    /// NAME=DIMS, e.g. sample=1x4x64x64: the shape of an input exported with symbolic dimensions
    /// besides the batch (dynamic height, width or tokens); repeat for each such input
    #[arg(long = "input-shape")]
    pub input_shape: Vec<String>,
    /// Sampler to calibrate with (the one the device will run). Default: ddim, or euler when the
    /// timestep input is named sigma/sigmas and --prediction is not given either
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// What the model predicts. Default: sample with --sampler consistency (a consistency model's
    /// output is the denoised sample) or when the timestep input is named sigma/sigmas and --sampler
    /// is not given either; epsilon otherwise. Models trained with denoising-diffusion-pytorch's
    /// defaults predict v with its sigmoid schedule: --prediction v --beta-schedule sigmoid
    #[arg(long, value_enum)]
    pub prediction: Option<PredictionArg>,
    /// Sampling steps (default: 50; 1 for consistency; the count of --timesteps when given).
    /// Euler and consistency space sigmas as Karras et al. do (rho 7, --sigma-min..--sigma-max)
    #[arg(long)]
    pub steps: Option<u32>,
    /// Explicit timestep (DDIM/DDPM) or sigma (Euler, consistency) values the device will use, in
    /// sampling order (comma separated), e.g. --sampler consistency --timesteps 80,24.4,5.84
    #[arg(long, value_delimiter = ',')]
    pub timesteps: Option<Vec<f32>>,
    /// The beta schedule the model was trained with (DDIM/DDPM): it sets alphas_cumprod for
    /// calibration and for the device's sampler. Anything but linear makes the file format 6.3
    #[arg(long, value_enum, default_value = "linear")]
    pub beta_schedule: BetaScheduleArg,
    /// First beta of a linear or scaled-linear schedule
    #[arg(long)]
    pub beta_start: Option<f32>,
    /// Last beta of a linear or scaled-linear schedule
    #[arg(long)]
    pub beta_end: Option<f32>,
    /// Smallest sigma of the Karras schedule (also the consistency models' sigma_min)
    #[arg(long, default_value_t = 0.002)]
    pub sigma_min: f32,
    /// Largest sigma of the Karras schedule (the initial noise level of Euler and consistency)
    #[arg(long, default_value_t = 80.0)]
    pub sigma_max: f32,
    /// Values for other inputs during calibration: NAME=uniform:A,B | NAME=normal:M,S | NAME=npy:FILE
    #[arg(long)]
    pub calib: Vec<String>,
    /// Classifier-free guidance scale the board will sample with: calibrate and measure on guided
    /// trajectories (both passes run through the int8 network). Needs --uncond
    #[arg(long, requires = "uncond")]
    pub guidance: Option<f32>,
    /// Unconditional value of an extra input for --guidance (an empty-prompt embedding, a null
    /// class): NAME=uniform:A,B | NAME=normal:M,S | NAME=npy:FILE
    #[arg(long, requires = "guidance")]
    pub uncond: Vec<String>,
    /// Number of calibration trajectories
    #[arg(long, default_value_t = 16)]
    pub calib_samples: usize,
    /// The most multiply-accumulates calibration may spend, in G (units of 10^9): a model too large
    /// for --calib-samples trajectories within it runs fewer (at least one), and the compile says so
    /// up front and in its summary. The default is about 10 minutes of float evaluations on two
    /// desktop cores; an SD-1.5-sized UNet (400 G per evaluation) calibrates one 50-step trajectory
    #[arg(long, default_value_t = CompileOptions::default().calib_budget_g, value_parser = positive_g)]
    pub calib_budget: f64,
    /// The multiply-accumulates, in G, that each search through the runtime may spend (the
    /// sensitivity ranking, and the quality floor when steps fall below --floor-db), at least 40
    /// evaluations each; it also sets how many trajectories the final measurement takes on a large
    /// model. The compile states both budgets up front and what each search spent in its summary
    #[arg(long, default_value_t = CompileOptions::default().search_budget_g, value_parser = positive_g)]
    pub search_budget: f64,
    /// Timestep buckets, each with its own activation parameters (1 = one set for all steps)
    #[arg(long, default_value_t = CompileOptions::default().timestep_groups)]
    pub timestep_groups: usize,
    /// int16 activations for sensitive tensors: auto (measured through the runtime), none, or
    /// comma-separated tensor names (see `dmqc inspect`)
    #[arg(long, default_value = "auto")]
    pub protect: String,
    /// How many tensors `--protect auto` may make int16
    #[arg(long, default_value_t = 6)]
    pub protect_budget: usize,
    /// The largest share (percent) of a step's integer activation bytes that may be int16, for
    /// `--protect auto` and the quality floor together: below 100 the floor makes int16, tensor by
    /// tensor, what helps its weak steps most per byte. 100 (the default) lets the floor make every
    /// tensor that can be int16 (whole steps at 16 bits). The summary's table shows each step's
    /// int16 share
    #[arg(long, default_value_t = 100.0)]
    pub a16_budget: f64,
    /// 16-bit weights: the most integer MACs and weights (each a percentage of the model's) that
    /// the products given 16-bit weights may add. Each such product runs as two int8 products
    /// over the same input, W = W_hi + W_lo (W_hi the 8-bit codes, W_lo the rest at 8 bits of
    /// its own), summed by an integer add. Candidates (each conv and linear, the timestep path's
    /// linears together) are measured through the runtime with 16-bit activations, where the
    /// weights' error shows; those that lower the output error by 5% or more are taken. With
    /// --weight-bits 4 or an --a16-budget below 100, only the timestep path's. 0 turns it off
    #[arg(long, default_value_t = 10.0)]
    pub w16_budget: f64,
    /// Weight bits: 8, or 4 (two per byte; layers touching int16-protected tensors keep 8)
    #[arg(long, default_value_t = 8)]
    pub weight_bits: u32,
    /// Weight rounding: gptq (each row's rounding errors compensated along its depth through the
    /// layer's input statistics on the model's own trajectories, GPTQ; a row keeps nearest rounding
    /// where that measures no worse), or nearest. Default: gptq with 4-bit weights (2.3-4.6 dB
    /// higher mean SQNR on the trained models measured), nearest with 8-bit (no gain measured)
    #[arg(long, value_enum)]
    pub weight_rounding: Option<WeightRoundingArg>,
    /// Activation bits: 8, or 16 (every tensor that can be int16 is, attention included)
    #[arg(long, default_value_t = 8)]
    pub act_bits: u32,
    /// Quality floor in dB (with --protect auto): steps whose measured SQNR stays below it (or within
    /// 2 dB of it, on the floor's probes) run in
    /// buckets of their own, with the int16 tensors that help them most within --a16-budget (with
    /// 4-bit weights, 8-bit weights for the layers that help most, first). Default: 27 with 8-bit
    /// weights, 24 with 4-bit; 0 turns it off
    #[arg(long)]
    pub floor_db: Option<f64>,
    /// Activation ranges: minmax (each bucket's observed range), or mse (clipping that minimises the
    /// squared quantization error over the bucket's calibration samples; higher per-step SQNR on the
    /// bundled model, but lower final-sample PSNR, so not the default)
    #[arg(long, value_enum, default_value = "minmax")]
    pub act_range: ActRangeArg,
    /// Latents that calibrate and measure each step: trajectories (the model's own sampler
    /// trajectories, what the device will see; where they drift far from the forward process's scale
    /// the summary warns and counts the steps), or forward (drifted steps are calibrated and measured
    /// on forward-process samples instead: for random-weight or untrained models)
    #[arg(long, value_enum, default_value = "trajectories")]
    pub calib_source: CalibSourceArg,
    /// Fold the timestep path (sinusoidal embedding, time MLP, per-block projections, in-graph
    /// preconditioning) into per-step tables for the scheduled timesteps: the device then runs no f32
    /// time-path op on those steps (for cores without an FPU); other timesteps still evaluate it.
    /// Costs `steps x time-path outputs x 4` bytes (64 KB on the bundled model)
    #[arg(long)]
    pub fold_time_path: bool,
    /// Write the compile report as JSON
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Number of float trajectories used to measure SQNR
    #[arg(long, default_value_t = 8)]
    pub eval_samples: usize,
    /// A quick compile: at most 4 calibration and 2 measurement trajectories (the costs are
    /// stated before it starts, the time per phase in the summary)
    #[arg(long)]
    pub fast: bool,
    /// Skip measuring the plain min-max one-range baseline (and so its guard)
    #[arg(long)]
    pub no_baseline: bool,
    /// Keep the compile's own quantization at steps where it measures below the one-range baseline
    /// (by default those steps run the baseline's int8 program and ranges, in op streams of their
    /// own, and the summary lists them)
    #[arg(long)]
    pub no_baseline_guard: bool,
}

/// `dmqc compile`: the options from the command line, the compile, the files and the summary.
pub fn run(args: Args) -> Result<()> {
    let (opts, model, output, report) = options(args)?;
    let c = dmq_compiler::compile(&model, &opts)?;
    // the model and its report are written as a group: neither is left when the other fails
    let json = serde_json::to_string_pretty(&c.report)?;
    let mut files: Vec<(&std::path::Path, &[u8])> = vec![(&output, &c.bytes)];
    if let Some(r) = &report {
        files.push((r, json.as_bytes()));
    }
    dmq_compiler::emit::write_group(&files)?;
    print!("{}", dmq_compiler::summary(&c.report));
    println!("wrote {}", output.display());
    Ok(())
}

fn options(args: Args) -> Result<(CompileOptions, PathBuf, PathBuf, Option<PathBuf>)> {
    let Args {
        model,
        output,
        timestep_input,
        input_shape,
        sampler,
        prediction,
        steps,
        timesteps,
        beta_schedule,
        beta_start,
        beta_end,
        sigma_min,
        sigma_max,
        calib,
        guidance,
        uncond,
        calib_samples,
        calib_budget,
        search_budget,
        timestep_groups,
        weight_bits,
        weight_rounding,
        act_bits,
        report,
        eval_samples,
        fast,
        no_baseline,
        no_baseline_guard,
        protect,
        protect_budget,
        a16_budget,
        w16_budget,
        floor_db,
        act_range,
        calib_source,
        fold_time_path,
    } = args;
    check_bits(weight_bits, act_bits, (a16_budget, w16_budget))?;
    let sampler_by_input_name = sampler.is_none() && prediction.is_none();
    let kind = sampler_kind(sampler.unwrap_or(SamplerArg::Ddim))?;
    // a consistency model's output is the denoised sample by definition
    let prediction = prediction.unwrap_or(if kind == SamplerKind::Consistency {
        PredictionArg::Sample
    } else {
        PredictionArg::Epsilon
    });
    if let Some(ts) = &timesteps {
        check_timesteps(ts, kind, steps)?;
    }
    if !(sigma_min > 0.0 && sigma_min <= sigma_max && sigma_max < 1.0e6) {
        bail!("--sigma-min/--sigma-max must satisfy 0 < min <= max");
    }
    let steps = match (&timesteps, steps) {
        (Some(ts), _) => ts.len() as u32,
        (None, Some(s)) => s,
        (None, None) if kind == SamplerKind::Consistency => 1,
        (None, None) => 50,
    };
    let calib_inputs = calibs(&calib)?;
    if steps == 0 || steps > 1000 {
        bail!("--steps must be between 1 and 1000");
    }
    if guidance.is_some_and(|g| !g.is_finite()) {
        bail!("--guidance must be a finite number");
    }
    let uncond_inputs = calibs(&uncond)?;
    let (beta_schedule, beta_range) = betas(beta_schedule, beta_start, beta_end)?;
    let opts = CompileOptions {
        timestep_input,
        input_shapes: input_shape
            .iter()
            .map(|s| dmq_compiler::import::parse_shape(s))
            .collect::<Result<Vec<_>>>()?,
        sampler_by_input_name,
        guidance,
        uncond_inputs,
        sampler: kind,
        timesteps,
        calib_inputs,
        fold_time_path,
        beta_schedule,
        beta_range,
        sigma_min,
        sigma_max,
        prediction: match prediction {
            PredictionArg::Epsilon => Prediction::Epsilon,
            PredictionArg::V => Prediction::V,
            PredictionArg::Sample => Prediction::Sample,
        },
        steps,
        // --fast: at most 4 calibration and 2 measurement trajectories
        calib_samples: calib_samples.min(if fast { 4 } else { usize::MAX }).max(1),
        calib_budget_g: calib_budget,
        search_budget_g: search_budget,
        eval_samples: eval_samples.min(if fast { 2 } else { usize::MAX }).max(1),
        timestep_groups: timestep_groups.clamp(1, dmq_runtime::format::MAX_STREAMS),
        weight_bits: weight_bits as u8,
        weight_rounding: rounding(weight_rounding, weight_bits as u8),
        protect: protection(&protect, protect_budget, act_bits),
        baseline: !no_baseline,
        baseline_guard: !no_baseline_guard,
        a16_budget: a16_budget / 100.0,
        w16_budget: w16_budget / 100.0,
        floor_db: floor_db.unwrap_or(CompileOptions::default_floor_db(weight_bits as u8)),
        range_p: match act_range {
            ActRangeArg::Mse => 2.0,
            ActRangeArg::Minmax => 0.0,
        },
        calib_source: match calib_source {
            CalibSourceArg::Trajectories => dmq_compiler::CalibSource::Trajectories,
            CalibSourceArg::Forward => dmq_compiler::CalibSource::Forward,
        },
        ..Default::default()
    };
    Ok((opts, model, output, report))
}

/// `--protect` with `--protect-budget` (every tensor with `--act-bits 16`).
fn protection(protect: &str, budget: usize, act_bits: u32) -> dmq_compiler::Protect {
    match protect {
        _ if act_bits == 16 => dmq_compiler::Protect::All,
        "auto" => dmq_compiler::Protect::Auto(budget),
        "none" => dmq_compiler::Protect::None,
        names => dmq_compiler::Protect::Names(
            names
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        ),
    }
}

/// `--weight-rounding`, or the default for the weight bits.
fn rounding(arg: Option<WeightRoundingArg>, weight_bits: u8) -> dmq_compiler::WeightRounding {
    match arg {
        Some(WeightRoundingArg::Nearest) => dmq_compiler::WeightRounding::Nearest,
        Some(WeightRoundingArg::Gptq) => dmq_compiler::WeightRounding::Gptq,
        None => CompileOptions::default_rounding(weight_bits),
    }
}

/// `--weight-bits`, `--act-bits` and `--a16-budget` take the values dmq supports.
/// `--calib-budget`: a positive, finite count of G multiply-accumulates.
fn positive_g(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(g) if g.is_finite() && g > 0.0 => Ok(g),
        _ => Err(format!(
            "{s:?} is not a positive number of G multiply-accumulates"
        )),
    }
}

fn check_bits(weight_bits: u32, act_bits: u32, (a16_budget, w16_budget): (f64, f64)) -> Result<()> {
    if weight_bits != 8 && weight_bits != 4 {
        bail!("--weight-bits {weight_bits} is not supported: use 8 or 4");
    }
    if act_bits != 8 && act_bits != 16 {
        bail!("--act-bits {act_bits} is not supported: use 8 or 16");
    }
    if !(0.0..=100.0).contains(&a16_budget) {
        bail!("--a16-budget {a16_budget} is not a percentage between 0 and 100");
    }
    if !(0.0..=100.0).contains(&w16_budget) {
        bail!("--w16-budget {w16_budget} is not a percentage between 0 and 100");
    }
    Ok(())
}

/// `--timesteps`: 1 to MAX_SCHEDULE finite values, descending, below 1000 for ddim/ddpm, as many as
/// `--steps` when both are given.
fn check_timesteps(ts: &[f32], kind: SamplerKind, steps: Option<u32>) -> Result<()> {
    let max = dmq_runtime::format::MAX_SCHEDULE;
    if ts.is_empty() || ts.len() > max {
        bail!("--timesteps takes 1 to {max} values");
    }
    if ts.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
        bail!("--timesteps values must be finite and >= 0");
    }
    if ts.windows(2).any(|w| w[1] >= w[0]) {
        bail!("--timesteps must descend (sampling order: noisiest first)");
    }
    if !kind.sigma_conditioned() && ts.iter().any(|&v| v >= 1000.0) {
        bail!("--timesteps for ddim/ddpm are training timesteps below 1000");
    }
    if let Some(s) = steps {
        if s as usize != ts.len() {
            bail!(
                "--steps {s} disagrees with the {} values of --timesteps",
                ts.len()
            );
        }
    }
    Ok(())
}

/// The schedule and its (beta_start, beta_end): scaled-linear defaults to Stable Diffusion's
/// 0.00085..0.012, the others to DDPM's 1e-4..0.02 (cosine and sigmoid do not read them).
fn betas(
    s: BetaScheduleArg,
    start: Option<f32>,
    end: Option<f32>,
) -> Result<(BetaSchedule, (f32, f32))> {
    let (kind, (d0, d1)) = match s {
        BetaScheduleArg::Linear => (BetaSchedule::Linear, (1e-4, 0.02)),
        BetaScheduleArg::ScaledLinear => (BetaSchedule::ScaledLinear, (0.00085, 0.012)),
        BetaScheduleArg::Cosine => (BetaSchedule::Cosine, (1e-4, 0.02)),
        BetaScheduleArg::Sigmoid => (BetaSchedule::Sigmoid, (1e-4, 0.02)),
    };
    if matches!(kind, BetaSchedule::Cosine | BetaSchedule::Sigmoid)
        && (start.is_some() || end.is_some())
    {
        bail!("--beta-start/--beta-end apply to the linear and scaled-linear schedules");
    }
    let (b0, b1) = (start.unwrap_or(d0), end.unwrap_or(d1));
    if !(b0 > 0.0 && b0 <= b1 && b1 < 1.0) {
        bail!("--beta-start/--beta-end must satisfy 0 < start <= end < 1");
    }
    Ok((kind, (b0, b1)))
}

/// `--calib`/`--uncond` values, parsed.
fn calibs(v: &[String]) -> Result<Vec<(String, dmq_compiler::CalibSpec)>> {
    v.iter().map(|c| dmq_compiler::parse_calib(c)).collect()
}
