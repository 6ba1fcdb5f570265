//! `dmqc`: compile ONNX diffusion UNets to integer `.dmq` models and run them with dmq-runtime.
use dmq_compiler::cli_io;

macro_rules! outln {
    ($buf:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($buf, $($arg)*);
    }};
}

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dmq_compiler::{eval, import, CompileOptions};
use dmq_runtime::format::{Op, Prediction, TRef};
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Model, SamplerKind, Session};
use std::path::{Path, PathBuf};

/// The bundled model: a small DDPM UNet trained on scikit-learn's digits (see models/README.md).
const BUNDLED_ONNX: &[u8] = include_bytes!("../../models/digits_unet.onnx");

#[derive(Parser)]
#[command(
    name = "dmqc",
    version,
    about = "Compile diffusion UNets (ONNX) to integer .dmq models for small ARM boards, and run them on the host with the same runtime the board uses."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum SamplerArg {
    Ddim,
    Ddpm,
    Euler,
    Consistency,
}

#[derive(Clone, Copy, ValueEnum)]
enum Board {
    /// Raspberry Pi 4: Cortex-A72, 1.5 GHz, NEON (no dotprod)
    Pi4,
    /// Raspberry Pi 5: Cortex-A76, 2.4 GHz, NEON + dotprod
    Pi5,
    /// Jetson Orin: Cortex-A78AE, 2.2 GHz, NEON + dotprod
    Orin,
}

#[derive(Clone, Copy, ValueEnum)]
enum PredictionArg {
    Epsilon,
    V,
    Sample,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActRangeArg {
    Mse,
    Minmax,
}

#[derive(clap::Args)]
struct CompileArgs {
    /// ONNX model (inputs: latent + timestep, output: the prediction)
    model: PathBuf,
    /// Output .dmq file
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Input carrying the timestep or sigma (default: detected by name)
    #[arg(long)]
    timestep_input: Option<String>,
    /// Sampler to calibrate with (the one the device will run). Default: ddim, or euler when the
    /// timestep input is named sigma/sigmas and --prediction is not given either
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
    /// What the model predicts. Default: epsilon, or sample when the timestep input is named
    /// sigma/sigmas and --sampler is not given either
    #[arg(long, value_enum)]
    prediction: Option<PredictionArg>,
    /// Sampling steps (default: 50; 1 for consistency; the count of --timesteps when given).
    /// Euler and consistency space sigmas as Karras et al. do (rho 7, --sigma-min..--sigma-max)
    #[arg(long)]
    steps: Option<u32>,
    /// Explicit timestep (DDIM/DDPM) or sigma (Euler, consistency) values the device will use, in
    /// sampling order (comma separated), e.g. --sampler consistency --timesteps 80,24.4,5.84
    #[arg(long, value_delimiter = ',')]
    timesteps: Option<Vec<f32>>,
    /// Smallest sigma of the Karras schedule (also the consistency models' sigma_min)
    #[arg(long, default_value_t = 0.002)]
    sigma_min: f32,
    /// Largest sigma of the Karras schedule (the initial noise level of Euler and consistency)
    #[arg(long, default_value_t = 80.0)]
    sigma_max: f32,
    /// Values for other inputs during calibration: NAME=uniform:A,B | NAME=normal:M,S | NAME=npy:FILE
    #[arg(long)]
    calib: Vec<String>,
    /// Classifier-free guidance scale the board will sample with: calibrate and measure on guided
    /// trajectories (both passes run through the int8 network). Needs --uncond
    #[arg(long, requires = "uncond")]
    guidance: Option<f32>,
    /// Unconditional value of an extra input for --guidance (an empty-prompt embedding, a null
    /// class): NAME=uniform:A,B | NAME=normal:M,S | NAME=npy:FILE
    #[arg(long, requires = "guidance")]
    uncond: Vec<String>,
    /// Number of calibration trajectories
    #[arg(long, default_value_t = 16)]
    calib_samples: usize,
    /// Timestep buckets, each with its own activation parameters (1 = one set for all steps)
    #[arg(long, default_value_t = CompileOptions::default().timestep_groups)]
    timestep_groups: usize,
    /// int16 activations for sensitive tensors: auto (measured through the runtime), none, or
    /// comma-separated tensor names (see `dmqc inspect`)
    #[arg(long, default_value = "auto")]
    protect: String,
    /// How many tensors `--protect auto` may make int16
    #[arg(long, default_value_t = 6)]
    protect_budget: usize,
    /// Weight bits: 8, or 4 (two per byte; layers touching int16-protected tensors keep 8)
    #[arg(long, default_value_t = 8)]
    weight_bits: u32,
    /// Activation bits: 8, or 16 (every tensor that can be int16 is; attention products stay int8)
    #[arg(long, default_value_t = 8)]
    act_bits: u32,
    /// Quality floor in dB (with --protect auto): steps whose measured SQNR stays below it run in
    /// buckets of their own with every int16-capable tensor at 16 bits. Default: 27 with 8-bit
    /// weights, 20 with 4-bit; 0 turns it off
    #[arg(long)]
    floor_db: Option<f64>,
    /// Activation ranges: minmax (each bucket's observed range), or mse (clipping that minimises the
    /// squared quantization error over the bucket's calibration samples; higher per-step SQNR on the
    /// bundled model, but lower final-sample PSNR, so not the default)
    #[arg(long, value_enum, default_value = "minmax")]
    act_range: ActRangeArg,
    /// Fold the timestep path (sinusoidal embedding, time MLP, per-block projections, in-graph
    /// preconditioning) into per-step tables for the scheduled timesteps: the device then runs no f32
    /// time-path op on those steps (for cores without an FPU); other timesteps still evaluate it.
    /// Costs `steps x time-path outputs x 4` bytes (64 KB on the bundled model)
    #[arg(long)]
    fold_time_path: bool,
    /// Write the compile report as JSON
    #[arg(long)]
    report: Option<PathBuf>,
    /// Number of float trajectories used to measure SQNR
    #[arg(long, default_value_t = 8)]
    eval_samples: usize,
    /// Skip measuring the plain min-max one-range baseline
    #[arg(long)]
    no_baseline: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile an ONNX UNet to .dmq: calibrate on the sampler's own trajectories, quantize to int8,
    /// plan the arena, and measure the quality by running the runtime against the float model.
    Compile(CompileArgs),
    /// One evaluation of a .dmq model through the runtime; writes DIR/<output name>.npy as float32.
    Run {
        model: PathBuf,
        /// NAME=FILE.npy for the latent and the timestep input
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Run the on-device sampler on the host and write the sample as PNG or npy.
    Sample {
        model: PathBuf,
        #[arg(long, default_value_t = 0, conflicts_with = "noise")]
        seed: u64,
        /// Initial latent (npy); makes DDIM fully deterministic
        #[arg(long)]
        noise: Option<PathBuf>,
        /// Steps (default: the model's)
        #[arg(long)]
        steps: Option<u32>,
        #[arg(long, value_enum)]
        sampler: Option<SamplerArg>,
        /// NAME=FILE.npy for each extra model input (a condition or an embedding)
        #[arg(long = "input")]
        inputs: Vec<String>,
        /// Classifier-free guidance: every step runs the model with --input and with --uncond
        /// values and takes uncond + S·(cond - uncond)
        #[arg(long, requires = "uncond")]
        guidance: Option<f32>,
        /// NAME=FILE.npy: an extra input's unconditional value for --guidance
        #[arg(long, requires = "guidance")]
        uncond: Vec<String>,
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Measure .dmq models against the float ONNX model through the runtime: SQNR of the output at
    /// every scheduled timestep (median over float-trajectory inputs), as a table and optionally a plot.
    Eval {
        /// the float ONNX model
        onnx: PathBuf,
        /// one or more .dmq models compiled from it
        #[arg(required = true)]
        models: Vec<PathBuf>,
        /// write SQNR against timestep as a PNG
        #[arg(long)]
        plot: Option<PathBuf>,
        /// float trajectories to take inputs from
        #[arg(long, default_value_t = 8)]
        samples: usize,
        #[arg(long)]
        timestep_input: Option<String>,
    },
    /// Print the graph, quantization parameters, sizes and arena of a .dmq model.
    Inspect {
        model: PathBuf,
        /// also print multiply-accumulates per step and an estimated latency on a board
        #[arg(long, value_enum)]
        target: Option<Board>,
    },
    /// Compile the bundled model, draw samples with float and int8 from the same seeds, and write a
    /// side-by-side PNG, the .dmq and a report.
    Demo {
        #[arg(short = 'o', long, default_value = "dmq-demo")]
        output: PathBuf,
        /// Number of seeds to draw and compare
        #[arg(long, default_value_t = 16)]
        seeds: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Compile(args) => cmd_compile(args),
        Cmd::Run {
            model,
            inputs,
            output,
        } => cmd_run(&model, &inputs, &output),
        Cmd::Sample {
            model,
            seed,
            noise,
            steps,
            sampler,
            inputs,
            guidance,
            uncond,
            output,
        } => cmd_sample(
            &model,
            seed,
            noise.as_deref(),
            steps,
            sampler,
            &inputs,
            guidance.map(|g| (g, uncond)),
            &output,
        ),
        Cmd::Inspect { model, target } => cmd_inspect(&model, target),
        Cmd::Eval {
            onnx,
            models,
            plot,
            samples,
            timestep_input,
        } => cmd_eval(&onnx, &models, plot.as_deref(), samples, timestep_input),
        Cmd::Demo { output, seeds } => cmd_demo(&output, seeds),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn sampler_kind(s: SamplerArg) -> Result<SamplerKind> {
    match s {
        SamplerArg::Ddim => Ok(SamplerKind::Ddim),
        SamplerArg::Ddpm => Ok(SamplerKind::Ddpm),
        SamplerArg::Euler => Ok(SamplerKind::Euler),
        SamplerArg::Consistency => Ok(SamplerKind::Consistency),
    }
}

fn cmd_compile(args: CompileArgs) -> Result<()> {
    let CompileArgs {
        model,
        output,
        timestep_input,
        sampler,
        prediction,
        steps,
        timesteps,
        sigma_min,
        sigma_max,
        calib,
        guidance,
        uncond,
        calib_samples,
        timestep_groups,
        weight_bits,
        act_bits,
        report,
        eval_samples,
        no_baseline,
        protect,
        protect_budget,
        floor_db,
        act_range,
        fold_time_path,
    } = args;
    if weight_bits != 8 && weight_bits != 4 {
        bail!("--weight-bits {weight_bits} is not supported: use 8 or 4");
    }
    if act_bits != 8 && act_bits != 16 {
        bail!("--act-bits {act_bits} is not supported: use 8 or 16");
    }
    let sampler_by_input_name = sampler.is_none() && prediction.is_none();
    let kind = sampler_kind(sampler.unwrap_or(SamplerArg::Ddim))?;
    let prediction = prediction.unwrap_or(PredictionArg::Epsilon);
    if let Some(ts) = &timesteps {
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
    let calib_inputs = calib
        .iter()
        .map(|c| dmq_compiler::parse_calib(c))
        .collect::<Result<Vec<_>>>()?;
    if steps == 0 || steps > 1000 {
        bail!("--steps must be between 1 and 1000");
    }
    if guidance.is_some_and(|g| !g.is_finite()) {
        bail!("--guidance must be a finite number");
    }
    let uncond_inputs = uncond
        .iter()
        .map(|c| dmq_compiler::parse_calib(c))
        .collect::<Result<Vec<_>>>()?;
    let opts = CompileOptions {
        timestep_input,
        sampler_by_input_name,
        guidance,
        uncond_inputs,
        sampler: kind,
        timesteps,
        calib_inputs,
        fold_time_path,
        sigma_min,
        sigma_max,
        prediction: match prediction {
            PredictionArg::Epsilon => Prediction::Epsilon,
            PredictionArg::V => Prediction::V,
            PredictionArg::Sample => Prediction::Sample,
        },
        steps,
        calib_samples: calib_samples.max(1),
        eval_samples: eval_samples.max(1),
        timestep_groups: timestep_groups.clamp(1, dmq_runtime::format::MAX_STREAMS),
        weight_bits: weight_bits as u8,
        protect: match protect.as_str() {
            _ if act_bits == 16 => dmq_compiler::Protect::All,
            "auto" => dmq_compiler::Protect::Auto(protect_budget),
            "none" => dmq_compiler::Protect::None,
            names => dmq_compiler::Protect::Names(
                names
                    .split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty())
                    .collect(),
            ),
        },
        baseline: !no_baseline,
        floor_db: floor_db.unwrap_or(CompileOptions::default_floor_db(weight_bits as u8)),
        range_p: match act_range {
            ActRangeArg::Mse => 2.0,
            ActRangeArg::Minmax => 0.0,
        },
        ..Default::default()
    };
    let c = dmq_compiler::compile(&model, &opts)?;
    dmq_compiler::emit::write_atomic(&output, &c.bytes)?;
    if let Some(r) = report {
        dmq_compiler::emit::write_atomic(&r, serde_json::to_string_pretty(&c.report)?.as_bytes())?;
    }
    print!("{}", dmq_compiler::summary(&c.report));
    println!("wrote {}", output.display());
    Ok(())
}

fn load(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn open_model(bytes: &[u8]) -> Result<Model<'_>> {
    Model::load(bytes).map_err(|e| anyhow!("{e}"))
}

fn cmd_run(path: &Path, inputs: &[String], out_dir: &Path) -> Result<()> {
    let bytes = load(path)?;
    let model = open_model(&bytes)?;
    let meta = model.meta().clone();
    let (mut latent, mut ts): (Option<(Vec<usize>, Vec<f32>)>, Option<Vec<f32>>) = (None, None);
    let mut extra_specs = vec![];
    for spec in inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("--input expects NAME=FILE.npy, got {spec:?}"))?;
        if meta.extra_inputs.iter().any(|e| e.name.as_str() == name) {
            extra_specs.push(spec.clone());
            continue;
        }
        let (shape, data) = cli_io::read_npy(Path::new(file))?;
        if name == meta.latent_name.as_str() {
            latent = Some((shape, data));
        } else if meta.timestep.is_some() && name == meta.timestep_name.as_str() {
            ts = Some(data);
        } else {
            let mut names = vec![meta.latent_name.to_string()];
            if meta.timestep.is_some() {
                names.push(meta.timestep_name.to_string());
            }
            names.extend(meta.extra_inputs.iter().map(|e| e.name.to_string()));
            bail!(
                "the model has no input named {name:?} (inputs: {})",
                names.join(", ")
            );
        }
    }
    let (shape, data) =
        latent.ok_or_else(|| anyhow!("missing --input {}=FILE.npy", meta.latent_name))?;
    let per = model.latent_len();
    if data.is_empty() || data.len() % per != 0 {
        bail!(
            "latent {} has {} values, not a multiple of the model's {per}",
            meta.latent_name,
            data.len()
        );
    }
    let batch = data.len() / per;
    let ts = match (&meta.timestep, ts) {
        (Some(_), None) => bail!("missing --input {}=FILE.npy", meta.timestep_name),
        (Some(_), Some(t)) if t.len() != 1 && t.len() != batch => {
            bail!("timestep has {} values for a batch of {batch}", t.len())
        }
        (_, t) => t.unwrap_or(vec![0.0]),
    };
    let extras = extra_inputs(&meta, &extra_specs)?;
    let mut arena = eval::arena_for(&model);
    let mut sess = eval::session_for(&model, eval::arena_bytes(&mut arena), &extras)?;
    let mut out = vec![0f32; data.len()];
    for b in 0..batch {
        let t = if ts.len() == 1 { ts[0] } else { ts[b] };
        if t < meta.t_min || t > meta.t_max {
            eprintln!(
                "warning: timestep {t} is outside the calibrated range [{}, {}]",
                meta.t_min, meta.t_max
            );
        }
        sess.run(
            &data[b * per..(b + 1) * per],
            t,
            &mut out[b * per..(b + 1) * per],
        )
        .map_err(|e| anyhow!("{e}"))?;
    }
    let file = out_dir.join(format!("{}.npy", sanitize(&meta.output_name)));
    cli_io::write_npy(&file, &shape, &out)?;
    println!("wrote {}", file.display());
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn image_hw(meta: &dmq_runtime::format::ModelMeta) -> (usize, usize) {
    let s = &meta.latent.shape;
    let r = s.len();
    if r >= 2 {
        (s[r - 2] as usize, s[r - 1] as usize)
    } else {
        (1, meta.latent.numel())
    }
}

/// `NAME=FILE.npy` for an extra input of the model: its index and values (length checked).
fn named_npy(
    meta: &dmq_runtime::format::ModelMeta,
    spec: &str,
    flag: &str,
) -> Result<(usize, Vec<f32>)> {
    let (name, file) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("{flag} expects NAME=FILE.npy, got {spec:?}"))?;
    let k = meta
        .extra_inputs
        .iter()
        .position(|e| e.name.as_str() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = meta.extra_inputs.iter().map(|e| e.name.as_str()).collect();
            anyhow!(
                "{flag} {name}: the model has no extra input of that name (extra inputs: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })?;
    let (_, data) = cli_io::read_npy(Path::new(file))?;
    if data.len() != meta.extra_inputs[k].tensor.numel() {
        bail!(
            "{flag} {name} has {} values, the model takes {}",
            data.len(),
            meta.extra_inputs[k].tensor.numel()
        );
    }
    Ok((k, data))
}

/// Values of the model's extra inputs from `NAME=FILE.npy` arguments, in the model's order.
fn extra_inputs(meta: &dmq_runtime::format::ModelMeta, inputs: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut out: Vec<Option<Vec<f32>>> = vec![None; meta.extra_inputs.len()];
    for spec in inputs {
        let (k, data) = named_npy(meta, spec, "--input")?;
        out[k] = Some(data);
    }
    out.into_iter()
        .zip(&meta.extra_inputs)
        .map(|(v, e)| v.ok_or_else(|| anyhow!("missing --input {}=FILE.npy", e.name)))
        .collect()
}

fn cmd_sample(
    path: &Path,
    seed: u64,
    noise: Option<&Path>,
    steps: Option<u32>,
    sampler: Option<SamplerArg>,
    inputs: &[String],
    guidance: Option<(f32, Vec<String>)>,
    out: &Path,
) -> Result<()> {
    let bytes = load(path)?;
    let model = open_model(&bytes)?;
    let meta = model.meta().clone();
    let kind = match sampler {
        Some(s) => sampler_kind(s)?,
        None => meta.sampler.default_sampler.into(),
    };
    let steps = steps.unwrap_or(meta.sampler.default_steps);
    let n = model.latent_len();
    let mut rng = Rng::new(seed);
    let mut x = vec![0f32; n];
    match noise {
        Some(f) => {
            let (_, d) = cli_io::read_npy(f)?;
            if d.len() != n {
                bail!("--noise has {} values, the model's latent has {n}", d.len());
            }
            x.copy_from_slice(&d);
        }
        None => rng.fill_gaussian(&mut x),
    }
    let extras = extra_inputs(&meta, inputs)?;
    let uncond = match &guidance {
        Some((_, specs)) => specs
            .iter()
            .map(|s| named_npy(&meta, s, "--uncond"))
            .collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    let mut scratch = vec![0f32; model.guidance_scratch_len()];
    let mut arena = eval::arena_for(&model);
    let mut sess = eval::session_for(&model, eval::arena_bytes(&mut arena), &extras)?;
    if let Some((scale, _)) = guidance {
        for (k, v) in &uncond {
            sess.set_uncond_input(meta.extra_inputs[*k].name.as_str(), v)
                .map_err(|e| anyhow!("--uncond: {e}"))?;
        }
        sess.set_guidance(scale, &mut scratch)
            .map_err(|e| anyhow!("--guidance: {e}"))?;
    }
    sess.sample(kind, steps, &mut x, &mut rng)
        .map_err(|e| anyhow!("{e}"))?;
    write_sample(out, &meta, &x)
}

fn write_sample(out: &Path, meta: &dmq_runtime::format::ModelMeta, x: &[f32]) -> Result<()> {
    let shape: Vec<usize> = meta.latent.shape.iter().map(|&d| d as usize).collect();
    match out.extension().and_then(|e| e.to_str()) {
        Some("png") => {
            let (h, w) = image_hw(meta);
            cli_io::write_grid(out, &[vec![x[..h * w].to_vec()]], h, w, 8)?
        }
        Some("npy") => cli_io::write_npy(out, &shape, x)?,
        _ => bail!("-o must end in .png or .npy"),
    }
    println!("wrote {}", out.display());
    Ok(())
}

fn tref_str(t: &TRef) -> String {
    let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
    match t.dtype {
        dmq_runtime::format::DType::I8 | dmq_runtime::format::DType::I16 => format!(
            "{}[{}]@{} s={:.3e} z={}",
            if t.dtype == dmq_runtime::format::DType::I8 {
                "i8"
            } else {
                "i16"
            },
            shape.join("x"),
            t.offset,
            t.scale,
            t.zero
        ),
        dmq_runtime::format::DType::F32 => format!("f32[{}]@{}", shape.join("x"), t.offset),
    }
}

/// Prints to stdout, ending quietly when the reader has gone (`dmqc inspect m.dmq | head`).
fn emit_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

fn cmd_inspect(path: &Path, target: Option<Board>) -> Result<()> {
    let mut text = inspect_text(path)?;
    if let Some(b) = target {
        text += &estimate_text(path, b)?;
    }
    emit_stdout(&text)
}

fn estimate_text(path: &Path, board: Board) -> Result<String> {
    let bytes = load(path)?;
    let model = open_model(&bytes)?;
    let (conv, lin, mm) = dmq_compiler::macs_by_kind(&model);
    let total = conv + lin + mm;
    // (name, core, GHz, int8 MAC/cycle/core at peak for the tier dmq uses there)
    let (name, core, ghz, peak) = match board {
        Board::Pi4 => ("Raspberry Pi 4", "Cortex-A72, NEON tier", 1.5, 8.0),
        Board::Pi5 => ("Raspberry Pi 5", "Cortex-A76, dotprod tier", 2.4, 32.0),
        Board::Orin => ("Jetson Orin", "Cortex-A78AE, dotprod tier", 2.2, 32.0),
    };
    let mut o = String::new();
    outln!(o, "  per denoising step: {:.2} M multiply-accumulates (convs {:.2} M, linears {:.2} M, attention {:.2} M)", total as f64 / 1e6, conv as f64 / 1e6, lin as f64 / 1e6, mm as f64 / 1e6);
    outln!(o, "  ESTIMATE for {name} ({core}, {ghz} GHz, one core, peak {peak} int8 MAC/cycle) — not a measurement:");
    for eff in [0.10, 0.25] {
        let secs = total as f64 / (ghz * 1e9 * peak * eff);
        outln!(
            o,
            "    at {:>3.0}% of peak: {:.2} ms per step, {:.0} ms for 50 steps",
            eff * 100.0,
            secs * 1e3,
            secs * 50e3
        );
    }
    outln!(
        o,
        "  measure on the board with: dmq-board bench {}",
        path.display()
    );
    Ok(o)
}

fn inspect_text(path: &Path) -> Result<String> {
    let mut o = String::new();
    let bytes = load(path)?;
    let model = open_model(&bytes)?;
    let h = model.header();
    let m = model.meta();
    outln!(
        o,
        "{}: dmq format {}.{}, {} bytes",
        path.display(),
        h.major,
        h.minor,
        bytes.len()
    );
    outln!(
        o,
        "  metadata {} B, op records {} B ({} ops), blob {} B",
        h.meta.1,
        h.ops.1,
        h.n_ops,
        h.blob.1
    );
    outln!(
        o,
        "  arena {} bytes (sampler state at {})",
        m.arena_bytes,
        m.sampler_state
    );
    if m.invariant_ops > 0 {
        outln!(
            o,
            "  the first {} ops of every stream depend only on the extra inputs: run once per generation{}",
            m.invariant_ops,
            if model.invariant_shared() || model.streams() == 1 {
                ""
            } else {
                " and timestep bucket (their quantization differs between buckets)"
            }
        );
        outln!(
            o,
            "  their outputs read later: arena[..{}]; guidance keeps the unconditional set in a \
             {}-element scratch (Model::guidance_scratch_len)",
            m.invariant_bytes,
            model.guidance_scratch_len()
        );
    }
    outln!(
        o,
        "  latent  {:?} {}",
        m.latent_name.as_str(),
        tref_str(&m.latent)
    );
    if let Some(t) = &m.timestep {
        outln!(
            o,
            "  timestep {:?} {}  calibrated for t in [{}, {}]",
            m.timestep_name.as_str(),
            tref_str(t),
            m.t_min,
            m.t_max
        );
    }
    outln!(
        o,
        "  output  {:?} {}",
        m.output_name.as_str(),
        tref_str(&m.output)
    );
    outln!(
        o,
        "  sampler {:?}, {} steps, {:?} prediction, {} training steps, linear betas {}..{}",
        m.sampler.default_sampler,
        m.sampler.default_steps,
        m.sampler.prediction,
        m.sampler.num_train_timesteps,
        m.sampler.beta_start,
        m.sampler.beta_end
    );
    outln!(o, "  ops:");
    for (i, op) in model.ops().enumerate() {
        let op = op.map_err(|e| anyhow!("{e}"))?;
        let ins: Vec<String> = dmq_compiler::ir::plain_inputs(&op)
            .iter()
            .map(tref_str)
            .collect();
        let out = tref_str(&dmq_compiler::ir::plain_output(&op));
        let extra = match &op {
            Op::Conv2d {
                kernel,
                stride,
                pad,
                weights,
                ..
            } => format!(
                " k={}x{} s={} pad={:?} weights={}B",
                kernel[0], kernel[1], stride[0], pad, weights.len
            ),
            Op::Linear { geom, weights, .. } => format!(
                " m={} n={} k={} weights={}B",
                geom.m, geom.n, geom.k, weights.len
            ),
            Op::FLinear { geom, .. } => format!(" m={} n={} k={}", geom.m, geom.n, geom.k),
            Op::MatMul { geom, .. } => format!(
                " batch={:?} m={} n={} k={}",
                geom.batch, geom.m, geom.n, geom.k
            ),
            Op::GroupNorm { groups, eps, .. } => format!(" groups={groups} eps={eps}"),
            Op::Binary { kind, .. } => format!(" {kind:?}"),
            Op::FUnary { func, .. } => format!(" {func:?}"),
            Op::FBinary { func, .. } => format!(" {func:?}"),
            _ => String::new(),
        };
        outln!(
            o,
            "  {i:4} {:<16} {} -> {}{}",
            dmq_compiler::ir::plain_kind(&op),
            ins.join(", "),
            out,
            extra
        );
    }
    Ok(o)
}

fn label_of(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string()
}

fn write_plot(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f32, f64)>)],
    t_max: f32,
) -> Result<()> {
    let img = dmq_compiler::plot::sqnr_plot(title, series, t_max);
    let mut bytes = vec![];
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    dmq_compiler::emit::write_atomic(path, &bytes)
}

fn cmd_eval(
    onnx: &Path,
    models: &[PathBuf],
    plot: Option<&Path>,
    samples: usize,
    timestep_input: Option<String>,
) -> Result<()> {
    let imp = import::import(onnx, timestep_input.as_deref())?;
    let float = import::FloatModel::new(&imp)?;
    let mut series = vec![];
    let mut t_max = 1.0f32;
    for path in models {
        let bytes = load(path)?;
        let model = open_model(&bytes)?;
        let meta = model.meta();
        let opts = CompileOptions {
            steps: meta.sampler.default_steps,
            sampler: meta.sampler.default_sampler.into(),
            timesteps: (!meta.sampler.schedule.is_empty())
                .then(|| meta.sampler.schedule.iter().copied().collect()),
            eval_samples: samples.max(1),
            ..Default::default()
        };
        let q = eval::sqnr_over_schedule(&float, &model, &opts, 1_000_000)?;
        t_max = t_max.max(q.iter().map(|x| x.t).fold(0.0, f32::max));
        series.push((
            label_of(path),
            q.iter().map(|x| (x.t, x.sqnr_db)).collect::<Vec<_>>(),
        ));
    }
    let mut out = String::from(
        "SQNR against the float model through the runtime (dB, median over inputs)\n        t",
    );
    for (name, _) in &series {
        out += &format!(" {name:>12}");
    }
    out += "\n";
    for i in 0..series[0].1.len() {
        out += &format!("  {:>7}", dmq_compiler::fmt_t(series[0].1[i].0));
        for (_, pts) in &series {
            out += &pts
                .get(i)
                .map(|p| format!(" {:>12.2}", p.1))
                .unwrap_or_default();
        }
        out += "\n";
    }
    for (name, pts) in &series {
        let mean = pts.iter().map(|p| p.1).sum::<f64>() / pts.len().max(1) as f64;
        let worst = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        out += &format!("{name}: mean {mean:.2} dB, worst {worst:.2} dB\n");
    }
    emit_stdout(&out)?;
    if let Some(p) = plot {
        let t_max = ((t_max / 100.0).ceil() * 100.0).max(1.0);
        write_plot(p, "SQNR VS FLOAT", &series, t_max)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn cmd_demo(dir: &Path, seeds: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    println!(
        "dmq demo: compiling the bundled digits UNet (models/digits_unet.onnx, {} bytes)",
        BUNDLED_ONNX.len()
    );
    let opts8 = CompileOptions::default();
    let opts4 = CompileOptions {
        weight_bits: 4,
        floor_db: CompileOptions::default_floor_db(4),
        baseline: false,
        ..Default::default()
    };
    let c8 = dmq_compiler::compile_bytes(BUNDLED_ONNX, "models/digits_unet.onnx", &opts8)?;
    print!("W8A8 {}", dmq_compiler::summary(&c8.report));
    let c4 = dmq_compiler::compile_bytes(BUNDLED_ONNX, "models/digits_unet.onnx", &opts4)?;
    print!("W4A8 {}", dmq_compiler::summary(&c4.report));
    let p8 = dir.join("digits_unet_w8a8.dmq");
    let p4 = dir.join("digits_unet_w4a8.dmq");
    dmq_compiler::emit::write_atomic(&p8, &c8.bytes)?;
    dmq_compiler::emit::write_atomic(&p4, &c4.bytes)?;
    let (m8, m4) = (open_model(&c8.bytes)?, open_model(&c4.bytes)?);
    let imp = import::import_bytes(BUNDLED_ONNX, "bundled", None)?;
    let float = import::FloatModel::new(&imp)?;
    let meta = m8.meta().clone();
    let cfg = meta.sampler.clone();
    let steps = opts8.steps;
    let n = m8.latent_len();
    let (h, w) = image_hw(&meta);
    let (mut a8, mut a4) = (eval::arena_for(&m8), eval::arena_for(&m4));
    let mut s8 = Session::new(&m8, eval::arena_bytes(&mut a8)).map_err(|e| anyhow!("{e}"))?;
    let mut s4 = Session::new(&m4, eval::arena_bytes(&mut a4)).map_err(|e| anyhow!("{e}"))?;
    let (mut rows, mut psnr8, mut psnr4) = ([vec![], vec![], vec![]], vec![], vec![]);
    let pb = dmq_compiler::progress_bar(seeds * 3 * steps as u64, "sampling", true);
    let mut int8_secs = 0.0;
    for seed in 0..seeds {
        let mut noise = vec![0f32; n];
        Rng::new(seed).fill_gaussian(&mut noise);
        let mut xf = noise.clone();
        let mut buf = vec![0f32; n];
        dmq_runtime::sampler::sample(
            &cfg,
            SamplerKind::Ddim,
            steps,
            &mut xf,
            &mut buf,
            &mut Rng::new(seed),
            |x, t, out| {
                pb.inc(1);
                let y = float
                    .run(x, t)
                    .map_err(|_| dmq_runtime::Error::Unsupported("float evaluation failed"))?;
                out.copy_from_slice(&y);
                Ok(())
            },
        )
        .map_err(|e| anyhow!("{e}"))?;
        let (mut x8, mut x4) = (noise.clone(), noise.clone());
        let t0 = std::time::Instant::now();
        s8.sample(SamplerKind::Ddim, steps, &mut x8, &mut Rng::new(seed))
            .map_err(|e| anyhow!("{e}"))?;
        int8_secs += t0.elapsed().as_secs_f64();
        s4.sample(SamplerKind::Ddim, steps, &mut x4, &mut Rng::new(seed))
            .map_err(|e| anyhow!("{e}"))?;
        pb.inc(2 * steps as u64);
        psnr8.push(eval::psnr_db(&xf, &x8));
        psnr4.push(eval::psnr_db(&xf, &x4));
        rows[0].push(xf[..h * w].to_vec());
        rows[1].push(x8[..h * w].to_vec());
        rows[2].push(x4[..h * w].to_vec());
    }
    pb.finish_and_clear();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let png = dir.join("samples_float_w8a8_w4a8.png");
    cli_io::write_grid(&png, &rows, h, w, 4)?;
    let plot = dir.join("sqnr_vs_timestep.png");
    let pts = |r: &dmq_compiler::Report| {
        r.sqnr_per_timestep
            .iter()
            .map(|q| (q.t, q.sqnr_db))
            .collect::<Vec<_>>()
    };
    let base: Vec<(f32, f64)> = c8
        .report
        .sqnr_per_timestep
        .iter()
        .filter_map(|q| q.baseline_db.map(|b| (q.t, b)))
        .collect();
    write_plot(
        &plot,
        "DIGITS UNET  INT VS FLOAT",
        &[
            ("W8A8".into(), pts(&c8.report)),
            ("W4A8".into(), pts(&c4.report)),
            ("W8A8 ONE RANGE".into(), base),
        ],
        1000.0,
    )?;
    let mut report = serde_json::json!({ "w8a8": c8.report, "w4a8": c4.report });
    report["final_sample_psnr_db"] = serde_json::json!({
        "seeds": seeds,
        "w8a8": { "mean": mean(&psnr8), "min": min(&psnr8), "per_seed": psnr8 },
        "w4a8": { "mean": mean(&psnr4), "min": min(&psnr4), "per_seed": psnr4 },
    });
    report["w8a8_sampling_seconds_per_image_host"] =
        serde_json::json!(int8_secs / seeds.max(1) as f64);
    let rpath = dir.join("report.json");
    dmq_compiler::emit::write_atomic(&rpath, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!(
        "final DDIM-{steps} sample PSNR against float over {seeds} seeds: W8A8 mean {:.2} dB (min {:.2}), W4A8 mean {:.2} dB (min {:.2})",
        mean(&psnr8),
        min(&psnr8),
        mean(&psnr4),
        min(&psnr4)
    );
    println!(
        "wrote {} (rows: float, W8A8, W4A8; same seeds)",
        png.display()
    );
    println!("wrote {}", plot.display());
    println!("wrote {} and {}", p8.display(), p4.display());
    println!("wrote {}", rpath.display());
    Ok(())
}
