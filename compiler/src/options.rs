//! What a compile is asked to do: the options, how extra inputs are drawn for calibration, which
//! tensors are protected.
use crate::import;
use anyhow::{bail, Result};
use dmq_runtime::format::Prediction;
use dmq_runtime::SamplerKind;
use std::path::Path;

/// How weights are rounded to their codes (the scale of each row is the clipping search's either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightRounding {
    /// each weight to its nearest code
    Nearest,
    /// GPTQ: rounding errors compensated through the products' input statistics on the model's own
    /// trajectories (`quant::gptq`); a row keeps its nearest codes where those measure no worse
    Gptq,
}

/// Which latents calibrate (and measure) a sampling step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibSource {
    /// the model's own sampler trajectories at every step: what the device will see. Where they
    /// drift far from the forward process's scale the compile warns (and counts the steps), but
    /// does not switch
    Trajectories,
    /// where the trajectories drift (RMS off by more than 3x from the forward process), that step is
    /// calibrated and measured on forward-process samples instead: for random-weight or untrained
    /// models, whose trajectories say nothing about real inputs
    Forward,
}

#[derive(Debug, Clone)]
pub struct CompileOptions {
    pub timestep_input: Option<String>,
    /// shapes of inputs exported with symbolic dimensions besides the batch (`--input-shape`)
    pub input_shapes: Vec<(String, Vec<usize>)>,
    /// `sampler` and `prediction` are defaults the user did not choose: a timestep input named
    /// `sigma` or `sigmas` (an EDM- or consistency-style denoiser) switches them to Euler over the
    /// Karras sigmas with sample prediction
    pub sampler_by_input_name: bool,
    pub sampler: SamplerKind,
    pub prediction: Prediction,
    pub steps: u32,
    pub calib_samples: usize,
    /// the most multiply-accumulates (in G) calibration may spend: on a model too large for
    /// `calib_samples` trajectories within it, fewer trajectories (at least one) are run, and the
    /// compile says so (`--calib-budget`)
    pub calib_budget_g: f64,
    /// the multiply-accumulates (in G) each search through the runtime may spend, the sensitivity
    /// ranking and the quality floor each (at least 40 evaluations), and the final measurement's
    /// share (`--search-budget`)
    pub search_budget_g: f64,
    pub calib_seed: u64,
    /// timestep buckets with their own activation parameters (1 = one set for all steps)
    pub timestep_groups: usize,
    /// also measure the plain min-max, one-range baseline
    pub baseline: bool,
    /// with `baseline`: steps at which the compile measures below the baseline run the baseline's
    /// program and ranges instead (see `pipeline::guard`)
    pub baseline_guard: bool,
    /// int16 protection of sensitive tensors
    pub protect: Protect,
    /// 8 or 4 (products touching protected tensors keep 8-bit weights)
    pub weight_bits: u8,
    pub weight_rounding: WeightRounding,
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
    /// the training beta schedule of the DDPM/DDIM samplers and its `beta_start`, `beta_end`
    /// (`--beta-schedule`, `--beta-start`, `--beta-end`)
    pub beta_schedule: dmq_runtime::format::BetaSchedule,
    pub beta_range: (f32, f32),
    /// the Karras sigma range of the sigma-conditioned samplers
    pub sigma_min: f32,
    pub sigma_max: f32,
    /// exponent of the activation range search (`sum |x - q(x)|^p` over calibration samples);
    /// 0 = plain min-max
    pub range_p: f64,
    /// with `Protect::Auto`: steps whose measured SQNR stays below this (dB) run with every tensor
    /// that can be int16 at 16 bits, in buckets of their own; 0 = off
    pub floor_db: f64,
    /// which latents calibrate and measure each step (`--calib-source`)
    pub calib_source: CalibSource,
    /// with `Protect::Auto`: the largest share of a step's integer activation bytes (at their stored
    /// width) that may be int16, for the protected tensors and the floor's together (0 to 1; 1, the
    /// default, lets the floor make every tensor that can be int16)
    pub a16_budget: f64,
    /// the most integer MACs and weights that 16-bit weights may add, as a share of the model's
    /// (`--w16-budget`, [`crate::split_weights::auto`]); 0: none
    pub w16_budget: f64,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            timestep_input: None,
            input_shapes: vec![],
            sampler_by_input_name: false,
            sampler: SamplerKind::Ddim,
            prediction: Prediction::Epsilon,
            steps: 50,
            calib_samples: 16,
            calib_budget_g: 20_000.0,
            search_budget_g: 60.0,
            calib_seed: 0,
            timestep_groups: 3,
            baseline: true,
            baseline_guard: true,
            protect: Protect::Auto(6),
            weight_bits: 8,
            weight_rounding: WeightRounding::Nearest,
            eval_samples: 8,
            progress: true,
            timesteps: None,
            calib_inputs: vec![],
            guidance: None,
            uncond_inputs: vec![],
            fold_time_path: false,
            beta_schedule: dmq_runtime::format::BetaSchedule::Linear,
            beta_range: (1e-4, 0.02),
            sigma_min: 0.002,
            sigma_max: 80.0,
            range_p: 0.0,
            floor_db: 27.0,
            calib_source: CalibSource::Trajectories,
            a16_budget: 1.0,
            w16_budget: 0.1,
        }
    }
}

impl CompileOptions {
    /// The default weight rounding: GPTQ with 4-bit weights, nearest with 8-bit. At 4 bits GPTQ
    /// raised the mean SQNR of all four trained models by 2.3-4.6 dB (int8 activations, no
    /// protection); at 8 bits it moved them by -0.3..+0.3 dB, not worth its cost.
    pub fn default_rounding(weight_bits: u8) -> WeightRounding {
        if weight_bits == 4 {
            WeightRounding::Gptq
        } else {
            WeightRounding::Nearest
        }
    }
    /// The default quality floor: 27 dB with 8-bit weights, 24 dB with 4-bit (20 before GPTQ
    /// rounding, when most 4-bit steps measured 22-28 dB; with it the floor runs 4 of the bundled
    /// model's 50 steps at int16 and 1 of the trained consistency fixture's, and the worst steps are
    /// 24.2-29.2 dB on the trained fixtures, 23.1 at the bundled model's t = 1).
    pub fn default_floor_db(weight_bits: u8) -> f64 {
        if weight_bits == 4 {
            24.0
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
