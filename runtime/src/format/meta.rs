//! The model-wide metadata: inputs and outputs, the arena, the sampler configuration, the timestep
//! buckets (op streams), the folded time path and the invariant (extra-input-only) ops.
use super::{BlobRef, TRef, MAX_EXTRA_INPUTS, MAX_SCHEDULE, MAX_STREAMS};
use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

/// Noise schedule and sampler configuration carried by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    pub num_train_timesteps: u32,
    pub beta_start: f32,
    pub beta_end: f32,
    pub prediction: Prediction,
    pub default_sampler: SamplerKindCfg,
    pub default_steps: u32,
    /// Karras sigma schedule of the sigma-conditioned samplers (Euler/EDM, consistency):
    /// `sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho`; `sigma_min` is also the
    /// consistency models' smallest noise level
    pub sigma_min: f32,
    pub sigma_max: f32,
    pub rho: f32,
    /// explicit timesteps (DDIM/DDPM) or sigmas (Euler, consistency) in sampling order, used when a
    /// run asks for exactly this many steps (`dmqc compile --timesteps`); empty: computed spacing
    pub schedule: HVec<f32, MAX_SCHEDULE>,
    /// The training beta schedule behind `alphas_cumprod`. Not part of this struct's encoding: a
    /// file whose schedule is not linear carries it in a [`MetaExt`] after the metadata (format 6.3;
    /// [`decode_meta`]).
    #[serde(skip)]
    pub beta_schedule: BetaSchedule,
}

/// The training noise schedules of the DDPM/DDIM samplers (`sampler::alpha_cumprod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BetaSchedule {
    /// `beta_i` linear from `beta_start` to `beta_end` (diffusers' "linear", DDPM)
    #[default]
    Linear,
    /// `sqrt(beta_i)` linear from `sqrt(beta_start)` to `sqrt(beta_end)` (diffusers'
    /// "scaled_linear", Stable Diffusion)
    ScaledLinear,
    /// `alphas_cumprod` of `cos((u + 0.008) / 1.008 * pi / 2)^2` at `u = t / T`, each beta at most
    /// 0.999 (improved DDPM; diffusers' "squaredcos_cap_v2", denoising-diffusion-pytorch's "cosine")
    Cosine,
    /// `alphas_cumprod` of `(sigmoid(3) - sigmoid(6u - 3)) / (sigmoid(3) - sigmoid(-3))`, each beta
    /// at most 0.999 (denoising-diffusion-pytorch's default "sigmoid": start -3, end 3, tau 1)
    Sigmoid,
}

/// What follows [`ModelMeta`]'s encoding in the metadata section of a format 6.3 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaExt {
    pub beta_schedule: BetaSchedule,
}

/// The metadata section of a file of format minor `minor`: [`ModelMeta`], then (from 6.3 on, only
/// for a schedule other than linear) its [`MetaExt`]. Bytes after the metadata of an older file,
/// or an extension that does not decode or states the linear schedule, are refused.
pub fn decode_meta(b: &[u8], minor: u16) -> Option<ModelMeta> {
    let (mut meta, rest): (ModelMeta, &[u8]) = postcard::take_from_bytes(b).ok()?;
    if !rest.is_empty() {
        let (ext, tail): (MetaExt, &[u8]) = postcard::take_from_bytes(rest).ok()?;
        if minor < 3 || !tail.is_empty() || ext.beta_schedule == BetaSchedule::Linear {
            return None;
        }
        meta.sampler.beta_schedule = ext.beta_schedule;
    }
    Some(meta)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prediction {
    Epsilon,
    V,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplerKindCfg {
    Ddim,
    Ddpm,
    Euler,
    Consistency,
}

/// Longest list of timestep-path outputs a [`TimeTable`] can fill.
pub const MAX_TIME_OUTPUTS: usize = 128;

/// Per-step values of the timestep path, folded at compile time for the scheduled timesteps. When a
/// run's timestep equals one of `timesteps` (bit for bit), the ops marked 1 in `skip` (one byte per op
/// of a stream; the time path, identical in every stream) are not executed and each listed output takes
/// its values from that step's row of `values` instead; any other timestep runs the f32 time path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeTable {
    /// f32 per scheduled timestep
    pub timesteps: BlobRef,
    /// f32, `row` per scheduled timestep
    pub values: BlobRef,
    pub row: u32,
    /// u8 per op of a stream
    pub skip: BlobRef,
    pub outputs: HVec<TimeOut, MAX_TIME_OUTPUTS>,
}

/// A time-path op whose output comes from the table: the op's index in a stream and where its values
/// start in a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimeOut {
    pub op: u32,
    pub at: u32,
}

/// A model input besides the latent and the timestep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraInput {
    pub name: heapless::String<64>,
    pub tensor: TRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// ONNX names of the latent input, the timestep input and the output.
    pub latent_name: heapless::String<64>,
    pub timestep_name: heapless::String<64>,
    pub output_name: heapless::String<64>,
    /// Bytes the caller must provide as arena (16-byte aligned).
    pub arena_bytes: u32,
    /// f32 latent input (the input whose shape equals the output's).
    pub latent: TRef,
    /// f32 timestep input, filled with the timestep value before each evaluation (if the model has one).
    pub timestep: Option<TRef>,
    /// Further f32 inputs (scalar conditions, text embeddings), set once per generation with
    /// `Session::set_input` and copied in before each evaluation.
    pub extra_inputs: HVec<ExtraInput, MAX_EXTRA_INPUTS>,
    /// The timestep path folded for the scheduled timesteps (absent when it depends on extra inputs).
    pub time_table: Option<TimeTable>,
    /// f32 model output.
    pub output: TRef,
    /// f32 scratch for the sampler state (current latent) — as many elements as the latent.
    pub sampler_state: u32,
    /// Op-record streams, one per timestep bucket: byte offsets into the ops section. Every stream has
    /// `ops_per_stream` records over the same tensors and arena; they differ only in quantization
    /// parameters (calibrated on that bucket's steps).
    pub stream_offsets: HVec<u32, MAX_STREAMS>,
    pub ops_per_stream: u32,
    /// Upper timestep bound of every bucket but the last (ascending): `t` runs stream `i` for the first
    /// `i` with `t <= bucket_upper[i]`, else the last stream. Bounds are midpoints between the scheduled
    /// timesteps of neighbouring buckets, so an off-schedule `t` takes its nearest bucket.
    pub bucket_upper: HVec<f32, MAX_STREAMS>,
    /// Range of timesteps the model was calibrated for.
    pub t_min: f32,
    pub t_max: f32,
    pub sampler: SamplerConfig,
    /// The first `invariant_ops` records of every stream depend only on the extra inputs (a text
    /// embedding's keys and values): the runtime runs them once per generation and keeps their
    /// outputs, which the arena plan never overwrites. When the streams' invariant records are the
    /// same bytes (one quantization for them), one computation serves every stream.
    pub invariant_ops: u32,
    /// Those outputs that later ops read fill `arena[..invariant_bytes]`, so a second set of them
    /// (the unconditional pass of classifier-free guidance) can be kept by swapping that range.
    pub invariant_bytes: u32,
}
