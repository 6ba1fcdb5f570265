//! `dmqc bench`: the float ONNX model (tract, f32) and the compiled model (dmq-runtime) on the same
//! inputs in one process, timed alternately so that both see the same machine.
use super::{load, open_model, run::extra_inputs};
use anyhow::{anyhow, Result};
use dmq_compiler::{eval, import};
use dmq_runtime::sampler::Rng;
use std::path::PathBuf;
use std::time::Instant;

/// `dmqc bench MODEL.onnx MODEL.dmq [--threads T] [--runs N] [--input NAME=FILE.npy] [--t T]`
#[derive(clap::Args)]
pub struct Args {
    /// the float model, run by tract (f32, one thread)
    pub onnx: PathBuf,
    /// the compiled model, run by dmq-runtime
    pub model: PathBuf,
    /// worker threads of the dmq runtime
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// timed evaluations of each model (alternating)
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// NAME=FILE.npy for the model's extra inputs (conditions, class labels); both models get
    /// the same values
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// the timestep (or sigma); default: the middle of the calibrated range
    #[arg(long)]
    pub t: Option<f32>,
}

/// Median and minimum of `v` (sorted in place).
fn med_min(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

pub fn run(args: Args) -> Result<()> {
    let bytes = load(&args.model)?;
    let model = open_model(&bytes)?;
    let meta = model.meta().clone();
    let ts_name = meta
        .timestep
        .as_ref()
        .map(|_| meta.timestep_name.to_string());
    let imp = import::import(&args.onnx, ts_name.as_deref(), &import::shapes_of(&meta))
        .or_else(|_| import::import(&args.onnx, ts_name.as_deref(), &[]))?;
    let float = import::FloatModel::new(&imp)?;
    let extras = extra_inputs(&meta, &args.inputs)?;
    // the float model's extra inputs in its own order, by name
    let float_extras = float
        .extras
        .iter()
        .map(|e| {
            meta.extra_inputs
                .iter()
                .position(|m| m.name.as_str() == e.name)
                .map(|k| extras[k].clone())
                .ok_or_else(|| {
                    anyhow!(
                        "the .dmq has no input {:?} of the ONNX model: is it compiled from it?",
                        e.name
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    float.set_extras(float_extras)?;
    let t = args.t.unwrap_or((meta.t_min + meta.t_max) / 2.0);
    let mut x = vec![0f32; model.latent_len()];
    Rng::new(1).fill_gaussian(&mut x);
    let mut arena = eval::arena_for(&model);
    let mut sess = eval::session_for(&model, eval::arena_bytes(&mut arena), &extras)?
        .with_threads(args.threads);
    let mut out = vec![0f32; x.len()];
    // warm-up, and the two outputs' agreement as a sanity check
    let reference = float.run(&x, t)?;
    sess.run(&x, t, &mut out).map_err(|e| anyhow!("{e}"))?;
    let sqnr = eval::sqnr_db(&reference, &out);
    let (mut tf, mut td) = (vec![], vec![]);
    for _ in 0..args.runs.max(1) {
        let t0 = Instant::now();
        float.run(&x, t)?;
        tf.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        sess.run(&x, t, &mut out).map_err(|e| anyhow!("{e}"))?;
        td.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let ratios: Vec<f64> = td.iter().zip(&tf).map(|(d, f)| d / f).collect();
    let (fm, fmin) = med_min(&mut tf);
    let (dm, dmin) = med_min(&mut td);
    let (rm, _) = med_min(&mut ratios.clone());
    let (conv, lin, mm) = dmq_compiler::macs_by_kind(&model);
    let macs = (conv + lin + mm) as f64;
    println!(
        "{} vs {} at t = {t}, {} runs each, alternating",
        args.onnx.display(),
        args.model.display(),
        tf.len()
    );
    println!(
        "  work per evaluation: {:.3} GMAC (convolutions {:.3}, linears {:.3}, attention {:.3})",
        macs / 1e9,
        conv as f64 / 1e9,
        lin as f64 / 1e9,
        mm as f64 / 1e9
    );
    println!(
        "  tract f32 (1 thread):         median {fm:9.3} ms, min {fmin:9.3} ms, {:6.1} GMAC/s",
        macs / fm / 1e6
    );
    println!(
        "  dmq ({:?}, {} thread(s)): median {dm:9.3} ms, min {dmin:9.3} ms, {:6.1} GMAC/s",
        sess.tier(),
        sess.threads(),
        macs / dm / 1e6
    );
    println!(
        "  dmq / tract: {rm:.3} (median of per-run ratios), {:.3} (min / min)",
        dmin / fmin
    );
    println!("  output SQNR of dmq against tract: {sqnr:.2} dB (same input)");
    let rows = sess
        .profile(&x, t, args.runs.clamp(1, 50))
        .map_err(|e| anyhow!("{e}"))?;
    let total: f64 = rows.iter().map(|r| r.2).sum();
    println!(
        "  dmq per-op profile (mean of {} evaluations):",
        args.runs.clamp(1, 50)
    );
    for (name, count, ms) in rows {
        println!(
            "    {name:<15} x{count:<4} {ms:9.3} ms  {:5.1}%",
            100.0 * ms / total.max(1e-12)
        );
    }
    Ok(())
}
