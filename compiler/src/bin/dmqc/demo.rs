//! `dmqc demo`: the bundled model compiled at W8A8 and W4A8, sampled with float and int8 from the
//! same seeds, side by side.
use super::eval::{float_sample, plot_png};
use super::open_model;
use super::sample::image_hw;
use anyhow::{anyhow, Context, Result};
use dmq_compiler::{cli_io, eval, import, CompileOptions};
use dmq_runtime::sampler::Rng;
use dmq_runtime::{SamplerKind, Session};
use std::path::Path;

/// The bundled model: a small DDPM UNet trained on scikit-learn's digits (see models/README.md).
const BUNDLED_ONNX: &[u8] = include_bytes!("../../../../models/digits_unet.onnx");

pub fn run(dir: &Path, seeds: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "dmq demo: compiling the bundled digits UNet (models/digits_unet.onnx, {} bytes)",
        BUNDLED_ONNX.len()
    );
    let opts8 = CompileOptions::default();
    let opts4 = CompileOptions {
        weight_bits: 4,
        floor_db: CompileOptions::default_floor_db(4),
        weight_rounding: CompileOptions::default_rounding(4),
        baseline: false,
        ..Default::default()
    };
    let c8 = dmq_compiler::compile_bytes(BUNDLED_ONNX, "models/digits_unet.onnx", &opts8)?;
    print!("W8A8 {}", dmq_compiler::summary(&c8.report));
    let c4 = dmq_compiler::compile_bytes(BUNDLED_ONNX, "models/digits_unet.onnx", &opts4)?;
    print!("W4A8 {}", dmq_compiler::summary(&c4.report));
    let p8 = dir.join("digits_unet_w8a8.dmq");
    let p4 = dir.join("digits_unet_w4a8.dmq");
    let (m8, m4) = (open_model(&c8.bytes)?, open_model(&c4.bytes)?);
    let imp = import::import_bytes(BUNDLED_ONNX, "bundled", None, &[])?;
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
        let xf = float_sample(&float, (&cfg, SamplerKind::Ddim, steps), seed, &noise, &pb)?;
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
    let grid = cli_io::grid_png(&rows, h, w, 4)?;
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
    let plot_bytes = plot_png(
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
    let json = serde_json::to_string_pretty(&report)?;
    // every output of the demo, written as a group
    dmq_compiler::emit::write_group(&[
        (&p8, &c8.bytes),
        (&p4, &c4.bytes),
        (&png, &grid),
        (&plot, &plot_bytes),
        (&rpath, json.as_bytes()),
    ])?;
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
