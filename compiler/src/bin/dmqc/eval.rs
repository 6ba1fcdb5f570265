//! `dmqc eval`: .dmq models against the float ONNX model, SQNR per timestep through the runtime.
use super::{emit_stdout, load, open_model};
use anyhow::{anyhow, bail, Result};
use dmq_compiler::{eval, import, CompileOptions};
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
}

/// SQNR per scheduled timestep of each model against the float one, a table and optionally a plot.
pub fn run(a: Args) -> Result<()> {
    let (onnx, models, plot, samples) = (&a.onnx, &a.models, a.plot.as_deref(), a.samples);
    let timestep_input = a.timestep_input.clone();
    let imp = import::import(onnx, timestep_input.as_deref())?;
    let float = import::FloatModel::new(&imp)?;
    let mut series = vec![];
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
