//! `dmqc eval`: .dmq models against the float ONNX model, SQNR per timestep through the runtime.
use super::{emit_stdout, load, open_model};
use anyhow::{anyhow, bail, Result};
use dmq_compiler::{eval, import, CompileOptions};
use dmq_runtime::format::SamplerConfig;
use dmq_runtime::sampler::Rng;
use dmq_runtime::SamplerKind;
use std::path::{Path, PathBuf};

pub(crate) fn label_of(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string()
}

pub(crate) fn write_plot(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f32, f64)>)],
    t_max: f32,
) -> Result<()> {
    dmq_compiler::emit::write_atomic(path, &plot_png(title, series, t_max)?)
}

/// The SQNR plot as PNG bytes.
pub(crate) fn plot_png(
    title: &str,
    series: &[(String, Vec<(f32, f64)>)],
    t_max: f32,
) -> Result<Vec<u8>> {
    let img = dmq_compiler::plot::sqnr_plot(title, series, t_max);
    let mut bytes = vec![];
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

/// `dmqc eval ONNX A.dmq [B.dmq ...]`
#[derive(clap::Args)]
pub struct Args {
    /// the float ONNX model
    pub onnx: PathBuf,
    /// one or more .dmq models compiled from it
    #[arg(required = true)]
    pub models: Vec<PathBuf>,
    /// write SQNR against timestep as a PNG
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// float trajectories to take inputs from
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    #[arg(long)]
    pub timestep_input: Option<String>,
    /// also sample this many seeds with each model's own sampler and steps, from the same noise as
    /// the float model (tract) running the same sampler, and report the final samples' PSNR
    /// (values clamped to [-1, 1], as images); for models without extra inputs
    #[arg(long, default_value_t = 0)]
    pub final_samples: u64,
}

/// SQNR per scheduled timestep of each model against the float one, a table and optionally a plot.
pub fn run(a: Args) -> Result<()> {
    let (onnx, models, plot, samples) = (&a.onnx, &a.models, a.plot.as_deref(), a.samples);
    let timestep_input = a.timestep_input.clone();
    // the ONNX model with the input shapes the first file was compiled for (symbolic dimensions)
    let shapes = match models.first() {
        Some(p) => import::shapes_of(open_model(&load(p)?)?.meta()),
        None => vec![],
    };
    // (shapes that contradict the model's: imported as it is, and the check below names the mismatch)
    let imp = import::import(onnx, timestep_input.as_deref(), &shapes)
        .or_else(|_| import::import(onnx, timestep_input.as_deref(), &[]))?;
    let float = import::FloatModel::new(&imp)?;
    let (mut series, mut finals) = (vec![], vec![]);
    let mut t_max = 1.0f32;
    for path in models {
        let bytes = load(path)?;
        let model = open_model(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        same_model(&imp, &model, path, onnx)?;
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
        if a.final_samples > 0 {
            finals.push((label_of(path), final_psnr(&float, &model, a.final_samples)?));
        }
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
    for (name, psnr) in &finals {
        out += &format!("{name}: {}\n", finals_line(psnr));
    }
    emit_stdout(&out)?;
    if let Some(p) = plot {
        let t_max = ((t_max / 100.0).ceil() * 100.0).max(1.0);
        write_plot(p, "SQNR VS FLOAT", &series, t_max)?;
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// The final samples' PSNR over the seeds: mean, median and min over the seeds whose samples
/// differ, and how many came out identical after clamping (`eval::psnr_db` gives those 200 dB).
/// A mean with the identical ones in it says little: on the photograph-patch DDPM 10 of 16 seeds
/// saturate to the same ±1 image in float and int8 and lifted the mean from 25 to 134 dB.
fn finals_line(psnr: &[f64]) -> String {
    let seeds: Vec<String> = psnr.iter().map(|v| format!("{v:.1}")).collect();
    let mut differ: Vec<f64> = psnr.iter().copied().filter(|&v| v < 200.0).collect();
    differ.sort_by(f64::total_cmp);
    let same = psnr.len() - differ.len();
    let stats = match differ.len() {
        0 => "every sample identical after clamping to [-1, 1]".to_string(),
        n => format!(
            "mean {:.2} dB, median {:.2} dB, min {:.2} dB over the {n} that differ",
            differ.iter().sum::<f64>() / n as f64,
            differ[n / 2],
            differ[0]
        ),
    };
    let same = if same == 0 || differ.is_empty() {
        String::new()
    } else {
        format!(", {same} identical after clamping to [-1, 1] (200 below)")
    };
    format!(
        "final sample PSNR against float over {} seeds: {stats}{same} (per seed: {})",
        psnr.len(),
        seeds.join(" ")
    )
}

/// The PSNR of `model`'s final samples against the float model's, seeds `0..seeds`: each from the
/// same noise with the model's default sampler and steps (the same sampler loop on both sides).
fn final_psnr(
    float: &import::FloatModel,
    model: &dmq_runtime::Model,
    seeds: u64,
) -> Result<Vec<f64>> {
    if !model.meta().extra_inputs.is_empty() {
        bail!(
            "--final-samples: the model takes extra inputs; sample it with `dmqc sample` instead"
        );
    }
    let cfg = model.meta().sampler.clone();
    let (kind, steps) = (cfg.default_sampler.into(), cfg.default_steps);
    let mut arena = eval::arena_for(model);
    let mut sess = dmq_runtime::Session::new(model, eval::arena_bytes(&mut arena))
        .map_err(|e| anyhow!("{e}"))?;
    let pb = dmq_compiler::progress_bar(seeds * 2 * steps as u64, "final samples", true);
    let mut out = vec![];
    for seed in 0..seeds {
        let mut noise = vec![0f32; model.latent_len()];
        Rng::new(seed).fill_gaussian(&mut noise);
        let xf = float_sample(float, (&cfg, kind, steps), seed, &noise, &pb)?;
        let mut xq = noise;
        sess.sample(kind, steps, &mut xq, &mut Rng::new(seed))
            .map_err(|e| anyhow!("{e}"))?;
        pb.inc(steps as u64);
        out.push(eval::psnr_db(&xf, &xq));
    }
    pb.finish_and_clear();
    Ok(out)
}

/// `kind` with `steps` (and `cfg`'s schedule) on the float model (tract) from `noise`, the same
/// loop the runtime runs.
pub(crate) fn float_sample(
    float: &import::FloatModel,
    (cfg, kind, steps): (&SamplerConfig, SamplerKind, u32),
    seed: u64,
    noise: &[f32],
    pb: &indicatif::ProgressBar,
) -> Result<Vec<f32>> {
    let mut x = noise.to_vec();
    let mut buf = vec![0f32; x.len()];
    let mut rng = Rng::new(seed);
    dmq_runtime::sampler::sample(cfg, kind, steps, &mut x, &mut buf, &mut rng, |x, t, out| {
        pb.inc(1);
        let y = float
            .run(x, t)
            .map_err(|_| dmq_runtime::Error::Unsupported("float evaluation failed"))?;
        out.copy_from_slice(&y);
        Ok(())
    })
    .map_err(|e| anyhow!("{e}"))?;
    Ok(x)
}

/// A .dmq compiled from the ONNX model has its latent, timestep and extra inputs; refuses with
/// both descriptions otherwise.
fn same_model(
    imp: &import::Imported,
    model: &dmq_runtime::Model,
    dmq: &Path,
    onnx: &Path,
) -> Result<()> {
    let m = model.meta();
    let latent: Vec<usize> = m.latent.shape.iter().map(|&d| d as usize).collect();
    let extras: Vec<&str> = m.extra_inputs.iter().map(|e| e.name.as_str()).collect();
    let want_extras: Vec<&str> = imp.extras.iter().map(|e| e.name.as_str()).collect();
    let ts = imp.timestep.as_ref().map(|t| t.name.as_str());
    if latent != imp.latent.shape
        || m.latent_name.as_str() != imp.latent.name
        || m.timestep.as_ref().map(|_| m.timestep_name.as_str()) != ts
        || extras != want_extras
    {
        bail!(
            "{} was not compiled from {}: it takes {:?} {latent:?} with extra inputs {extras:?}, the ONNX model {:?} {:?} with {want_extras:?}",
            dmq.display(),
            onnx.display(),
            m.latent_name.as_str(),
            imp.latent.name,
            imp.latent.shape
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn identical_seeds_stay_out_of_the_mean() {
        let line = super::finals_line(&[200.0, 20.0, 200.0, 30.0, 40.0]);
        assert!(
            line.contains("over 5 seeds: mean 30.00 dB, median 30.00 dB, min 20.00 dB over the 3 that differ, 2 identical"),
            "{line}"
        );
        let line = super::finals_line(&[36.5, 37.5]);
        assert!(
            line.contains("mean 37.00 dB") && !line.contains("identical"),
            "{line}"
        );
        let line = super::finals_line(&[200.0]);
        assert!(
            line.ends_with("every sample identical after clamping to [-1, 1] (per seed: 200.0)"),
            "{line}"
        );
    }
}
