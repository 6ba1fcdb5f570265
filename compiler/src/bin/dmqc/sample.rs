//! `dmqc sample`: the runtime's sampler on the host, written as PNG or npy.
use super::run::{extra_inputs, named_npy};
use super::{load, open_model, sampler_kind, SamplerArg};
use anyhow::{anyhow, bail, Result};
use dmq_compiler::{cli_io, eval};
use dmq_runtime::sampler::Rng;
use std::path::{Path, PathBuf};

/// `dmqc sample`: the on-device sampler on the host.
#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    #[arg(long, default_value_t = 0, conflicts_with = "noise")]
    pub seed: u64,
    /// Initial latent (npy); makes DDIM fully deterministic
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Steps (default: the model's)
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// NAME=FILE.npy for each extra model input (a condition or an embedding)
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Classifier-free guidance: every step runs the model with --input and with --uncond
    /// values and takes uncond + S·(cond - uncond)
    #[arg(long, requires = "uncond")]
    pub guidance: Option<f32>,
    /// NAME=FILE.npy: an extra input's unconditional value for --guidance
    #[arg(long, requires = "guidance")]
    pub uncond: Vec<String>,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let (path, seed, noise, steps, sampler) =
        (&a.model, a.seed, a.noise.as_deref(), a.steps, a.sampler);
    let (inputs, out) = (&a.inputs, &a.output);
    let guidance = a.guidance.map(|g| (g, a.uncond.clone()));
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
            let want: Vec<usize> = meta.latent.shape.iter().map(|&d| d as usize).collect();
            x.copy_from_slice(&cli_io::read_input(f, "--noise", &want)?);
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

pub(crate) fn write_sample(
    out: &Path,
    meta: &dmq_runtime::format::ModelMeta,
    x: &[f32],
) -> Result<()> {
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

pub(crate) fn image_hw(meta: &dmq_runtime::format::ModelMeta) -> (usize, usize) {
    let s = &meta.latent.shape;
    let r = s.len();
    if r >= 2 {
        (s[r - 2] as usize, s[r - 1] as usize)
    } else {
        (1, meta.latent.numel())
    }
}
