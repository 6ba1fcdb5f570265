//! `dmqc run`: one evaluation of a .dmq model through the runtime.
use super::{load, open_model};
use anyhow::{anyhow, bail, Result};
use dmq_compiler::{cli_io, eval};
use std::path::{Path, PathBuf};

/// `dmqc run MODEL.dmq --input NAME=FILE.npy ... -o DIR`
#[derive(clap::Args)]
pub struct Args {
    pub model: PathBuf,
    /// NAME=FILE.npy for the latent and the timestep input
    #[arg(long = "input", required = true)]
    pub inputs: Vec<String>,
    #[arg(short = 'o', long)]
    pub output: PathBuf,
}

/// One evaluation through the runtime (any batch of latents, one timestep or one per latent).
pub fn run(args: Args) -> Result<()> {
    let (path, inputs, out_dir) = (&args.model, &args.inputs, &args.output);
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
        cli_io::check_finite(&data, Path::new(file)).map_err(|e| anyhow!("--input {name}: {e}"))?;
        if name == meta.latent_name.as_str() {
            latent = Some((shape, data));
        } else if meta.timestep.is_some() && name == meta.timestep_name.as_str() {
            if shape.len() > 1 {
                bail!("--input {name}: {file} has shape {shape:?}; a timestep is a scalar or one per latent");
            }
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
    let batch = latent_batch(&shape, &meta.latent.shape)
        .ok_or_else(|| anyhow!("--input {}: shape {shape:?} does not match the model's latent {:?} (a batch may replace its first dimension)", meta.latent_name, meta.latent.shape))?;
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

/// The batch of a latent input of `shape` for the model's latent `want`: the same shape (leading
/// 1s aside), or `want` with its first dimension replaced by the batch.
fn latent_batch(shape: &[usize], want: &[u32]) -> Option<usize> {
    let want: Vec<usize> = want.iter().map(|&d| d as usize).collect();
    let squeeze =
        |s: &[usize]| -> Vec<usize> { s.iter().copied().skip_while(|&d| d == 1).collect() };
    if squeeze(shape) == squeeze(&want) {
        return Some(1);
    }
    (shape.len() == want.len() && !shape.is_empty() && shape[1..] == want[1..] && shape[0] > 0)
        .then(|| shape[0])
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

/// `NAME=FILE.npy` for an extra input of the model: its index and values (length checked).
pub(crate) fn named_npy(
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
    let want: Vec<usize> = meta.extra_inputs[k]
        .tensor
        .shape
        .iter()
        .map(|&d| d as usize)
        .collect();
    let data = cli_io::read_input(Path::new(file), &format!("{flag} {name}"), &want)?;
    Ok((k, data))
}

/// Values of the model's extra inputs from `NAME=FILE.npy` arguments, in the model's order.
pub(crate) fn extra_inputs(
    meta: &dmq_runtime::format::ModelMeta,
    inputs: &[String],
) -> Result<Vec<Vec<f32>>> {
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
