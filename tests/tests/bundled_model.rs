//! The bundled digits UNet end to end: compile, measure int8 against float through the runtime, sample.
mod common;
use dmq_compiler::{eval, import, CompileOptions};
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Model, SamplerKind, Session};

#[test]
fn bundled_model_w8a8_quality_size_and_determinism() {
    let onnx = std::fs::read(common::bundled()).unwrap();
    let opts = CompileOptions {
        progress: false,
        eval_samples: 8,
        ..Default::default()
    };
    let c = dmq_compiler::compile_bytes(&onnx, "digits_unet.onnx", &opts).unwrap();
    let r = &c.report;
    // size: int8 weights + tables must stay within 30% of the float ONNX (30.04% since format
    // 6.0: the packed layout pads the one-channel input and output convolutions to 4 channels,
    // 1,728 bytes; 30.17% since the floor's streams run int16 attention: their three softmaxes
    // take two exp tables each, 3,072 bytes; 30.84% since three convs take 16-bit weights, their
    // W_lo codes and tables 14,944 bytes, `--w16-budget`)
    assert!(
        r.size_ratio <= 0.309,
        "dmq is {:.1}% of the ONNX",
        100.0 * r.size_ratio
    );
    // noise-prediction SQNR (median over 8 float-DDIM inputs) >= 27 dB at every scheduled timestep,
    // never below the one-range baseline (the guard)
    assert_eq!(r.sqnr_per_timestep.len(), 50);
    for q in &r.sqnr_per_timestep {
        println!(
            "t={:4} sqnr median {:.2} dB worst {:.2} dB baseline {:.2} dB int16 {:.1}% of bytes",
            q.t,
            q.sqnr_db,
            q.min_db,
            q.baseline_db.unwrap(),
            100.0 * q.int16_bytes
        );
        assert!(q.sqnr_db >= 27.0, "SQNR {:.2} dB at t={}", q.sqnr_db, q.t);
        assert!(
            q.sqnr_db >= q.baseline_db.unwrap(),
            "below the baseline at t={}",
            q.t
        );
    }
    assert!(r.sqnr_mean_db >= 34.0, "mean SQNR {:.2} dB", r.sqnr_mean_db);
    // >= 10 dB above the one-range min-max baseline at the baseline's worst timestep
    let worst = r
        .sqnr_per_timestep
        .iter()
        .min_by(|a, b| a.baseline_db.partial_cmp(&b.baseline_db).unwrap())
        .unwrap();
    assert!(
        worst.sqnr_db >= worst.baseline_db.unwrap() + 10.0,
        "t={}: {:.2} dB vs baseline {:.2} dB",
        worst.t,
        worst.sqnr_db,
        worst.baseline_db.unwrap()
    );
    // timestep-aware ranges beat one min-max range on average, and the file has one stream per bucket
    let base_mean = r
        .sqnr_per_timestep
        .iter()
        .map(|q| q.baseline_db.unwrap())
        .sum::<f64>()
        / 50.0;
    println!(
        "mean SQNR {:.2} dB, one-range min-max baseline {:.2} dB",
        r.sqnr_mean_db, base_mean
    );
    assert!(
        r.sqnr_mean_db > base_mean,
        "buckets do not beat the baseline"
    );
    assert_eq!(Model::load(&c.bytes).unwrap().streams(), r.streams);
    assert!(r.streams <= opts.timestep_groups);
    // final DDIM-50 sample: int8 vs float from the same seed
    let model = Model::load(&c.bytes).unwrap();
    let imp = import::import_bytes(&onnx, "bundled", None, &[]).unwrap();
    let float = import::FloatModel::new(&imp).unwrap();
    let cfg = model.meta().sampler.clone();
    let n = model.latent_len();
    let mut arena = eval::arena_for(&model);
    let mut sess = Session::new(&model, eval::arena_bytes(&mut arena)).unwrap();
    let mut psnrs = vec![];
    for seed in 0..8u64 {
        let mut xf = vec![0f32; n];
        Rng::new(seed).fill_gaussian(&mut xf);
        let mut xq = xf.clone();
        let mut buf = vec![0f32; n];
        dmq_runtime::sampler::sample(
            &cfg,
            SamplerKind::Ddim,
            50,
            &mut xf,
            &mut buf,
            &mut Rng::new(seed),
            |x, t, out| {
                out.copy_from_slice(&float.run(x, t).unwrap());
                Ok(())
            },
        )
        .unwrap();
        sess.sample(SamplerKind::Ddim, 50, &mut xq, &mut Rng::new(seed))
            .unwrap();
        psnrs.push(eval::psnr_db(&xf, &xq));
    }
    let mean = psnrs.iter().sum::<f64>() / psnrs.len() as f64;
    // a timestep between scheduled values (and between buckets) still works
    let traj = eval::float_trajectory_inputs(&float, &model, &opts, 77).unwrap();
    for (t, x, _, _) in traj
        .iter()
        .filter(|(t, _, _, _)| [641.0, 321.0].contains(t))
    {
        let off = t - 7.5;
        let yf = float.run(x, off).unwrap();
        let mut yq = vec![0f32; n];
        sess.run(x, off, &mut yq).unwrap();
        let db = eval::sqnr_db(&yf, &yq);
        println!("off-schedule t={off}: {db:.2} dB");
        assert!(db >= 25.0, "off-schedule t={off}: {db:.2} dB");
    }
    println!("final-sample PSNR per seed {psnrs:?}, mean {mean:.2} dB");
    assert!(mean >= 33.0, "mean PSNR {mean:.2} dB");
    // determinism: the same seed gives the same bytes, DDIM and DDPM
    for kind in [SamplerKind::Ddim, SamplerKind::Ddpm] {
        let run = |sess: &mut Session| {
            let mut x = vec![0f32; n];
            let mut rng = Rng::new(42);
            rng.fill_gaussian(&mut x);
            sess.sample(kind, 20, &mut x, &mut rng).unwrap();
            x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
        };
        let a = run(&mut sess);
        let b = run(&mut sess);
        assert_eq!(a, b, "{kind:?} sampling is not deterministic");
        let mut arena2 = eval::arena_for(&model);
        let mut sess2 = Session::new(&model, eval::arena_bytes(&mut arena2)).unwrap();
        assert_eq!(a, run(&mut sess2), "{kind:?}: a fresh session differs");
        // every kernel tier and thread count computes the same bytes (int8 and int16 convs, 1×1
        // convs and strided linears split across the workers, attention matmuls on the SIMD tier)
        use dmq_runtime::kernels::Tier;
        for (tier, threads) in [
            (Tier::Scalar, 1),
            (Tier::Scalar, 3),
            (Tier::detect(), 2),
            (Tier::detect(), 3),
        ] {
            let mut ar = eval::arena_for(&model);
            let mut s = Session::new(&model, eval::arena_bytes(&mut ar))
                .unwrap()
                .with_tier(tier)
                .with_threads(threads);
            assert_eq!(
                a,
                run(&mut s),
                "{kind:?}: tier {tier:?} with {threads} threads differs"
            );
        }
        // the weights read on demand from the file's blob through the smallest cache the model
        // states (`Model::load_paged`): the same bytes
        let h = dmq_runtime::format::Header::parse(&c.bytes).unwrap();
        let (head, blob) = c.bytes.split_at(h.blob.0 as usize);
        let mut cache = vec![0u128; blob.len().div_ceil(16)];
        let mut src = blob;
        let paged = Model::load_paged(
            head,
            &mut src,
            eval::arena_bytes(&mut cache),
            Default::default(),
        )
        .unwrap();
        let min = paged.min_cache_bytes();
        let mut ar = eval::arena_for(&model);
        let mut s = Session::with_pager(
            &paged,
            eval::arena_bytes(&mut ar),
            &mut src,
            &mut eval::arena_bytes(&mut cache)[..min],
        )
        .unwrap();
        assert_eq!(a, run(&mut s), "{kind:?}: paged with a {min}-byte cache");
        let st = s.pager_stats().unwrap();
        println!(
            "{kind:?} paged: blob {} bytes, cache {min} bytes, 20 steps read {} bytes in {} reads",
            blob.len(),
            st.bytes_read,
            st.reads
        );
    }
}

#[test]
fn bundled_model_w4a8() {
    let onnx = std::fs::read(common::bundled()).unwrap();
    let opts = CompileOptions {
        progress: false,
        eval_samples: 8,
        weight_bits: 4,
        floor_db: CompileOptions::default_floor_db(4),
        weight_rounding: CompileOptions::default_rounding(4),
        baseline: false,
        ..Default::default()
    };
    let c = dmq_compiler::compile_bytes(&onnx, "digits_unet.onnx", &opts).unwrap();
    let r = &c.report;
    // GPTQ rounding (the 4-bit default) covers every product: 32.88 dB mean measured, 28.5 with
    // nearest rounding and the former 20 dB floor
    let g = r.gptq.as_ref().expect("GPTQ is the 4-bit default");
    assert!(g.products > 0 && g.nearest == 0, "{g:?}");
    assert!(r.sqnr_mean_db >= 30.0, "mean {:.2} dB", r.sqnr_mean_db);
    println!(
        "W4A8: {} bytes ({:.1}%), mean {:.2} dB",
        r.dmq_bytes,
        100.0 * r.size_ratio,
        r.sqnr_mean_db
    );
    // the 4-bit body plus the 8-bit copies the quality floor chose for its weak steps: 25.7%
    // measured (22.7% when the floor's search stopped short of 24 dB), the default W8A8 file 30.2%
    assert!(
        r.size_ratio <= 0.28,
        "W4 file is {:.1}% of the ONNX",
        100.0 * r.size_ratio
    );
    // the 24 dB floor holds at every step: 27.5 dB worst (t = 81), 30.1 at t = 1 (int8
    // activations gave it 7.4 dB; the floor's int16 and 8-bit weight layers, found by the lazy
    // search in 960 runtime evaluations). Measured on a Xeon with AVX-512 tract kernels; the full
    // search that measured every layer each round ran out of evaluations at 22.0 dB there, 23.1 on
    // a Zen 3 (the float calibration's rounding differs by CPU)
    for q in &r.sqnr_per_timestep {
        println!("W4A8 t={:4} {:.2} dB", q.t, q.sqnr_db);
        let want = 24.0;
        assert!(
            q.sqnr_db >= want,
            "W4A8 SQNR {:.2} dB at t={}",
            q.sqnr_db,
            q.t
        );
    }
}

/// The bundled model compiled with `--a16-budget` (a fraction) and a light measurement.
fn compile_within_budget(a16_budget: f64) -> dmq_compiler::Compiled {
    let onnx = std::fs::read(common::bundled()).unwrap();
    let opts = CompileOptions {
        progress: false,
        eval_samples: 4,
        baseline: false,
        a16_budget,
        ..Default::default()
    };
    dmq_compiler::compile_bytes(&onnx, "digits_unet.onnx", &opts).unwrap()
}

#[test]
fn bundled_model_within_an_int16_budget() {
    // `--a16-budget 10`: at most 10% of each step's activation bytes int16. The protected tensors
    // fit in it, and the floor's steps (t = 21 and t = 1) choose their own int16 tensors within it
    // instead of making every tensor int16. t = 21 still reaches the 27 dB floor; t = 1 does not
    // (20.2 dB measured; 31.8 dB with whole steps at int16): an epsilon prediction at t = 1 reads
    // noise 100x smaller than the image, through int8 features. That error reaches the sample
    // scaled by sqrt(1 - abar) = 0.01: the final-sample PSNR holds (37.29 dB mean over 16 seeds
    // against 37.34 without the budget, `dmqc demo`).
    let c = compile_within_budget(0.10);
    let r = &c.report;
    assert!(!r.floor_steps.is_empty(), "the floor did not fire");
    // the floor's streams start from the protection every other stream has and add to it, so
    // their int16 share is at least the others' (it was 6.2% against 9.6% when they started from
    // all-int8 and the search's evaluations ran out; `dmqc compile models/digits_unet.onnx
    // --a16-budget 10` then measured t = 21 at 29.2 dB and t = 1 at 18.4, now 30.5 and 19.6)
    let floor = |t: f32| r.floor_steps.iter().any(|&(f, _)| f == t);
    let others = r
        .sqnr_per_timestep
        .iter()
        .filter(|q| !floor(q.t))
        .map(|q| q.int16_bytes)
        .fold(0.0, f64::max);
    for q in r.sqnr_per_timestep.iter().filter(|q| floor(q.t)) {
        assert!(
            q.int16_bytes >= others,
            "floor step t={}: int16 {:.3} of bytes, the other steps {others:.3}",
            q.t,
            q.int16_bytes
        );
    }
    for q in &r.sqnr_per_timestep {
        println!(
            "budget t={:4} {:.2} dB, int16 {:.1}% of bytes",
            q.t,
            q.sqnr_db,
            100.0 * q.int16_bytes
        );
        let floor = if q.t > 1.0 { 27.0 } else { 18.0 };
        assert!(q.sqnr_db >= floor, "SQNR {:.2} dB at t={}", q.sqnr_db, q.t);
        assert!(
            q.int16_bytes <= 0.10,
            "int16 {:.3} of bytes at t={}",
            q.int16_bytes,
            q.t
        );
    }
    let text = dmq_compiler::summary(r);
    assert!(
        text.contains("FLOOR MISSED") && text.contains("int16 budget"),
        "{text}"
    );
}

#[test]
fn bundled_model_floor_takes_a_whole_level_within_a_larger_budget() {
    // `--a16-budget 70`: at t = 1 no single tensor gains after the first seven (16.8 dB on the
    // floor's probes, 15.1% of bytes); the search then takes the remaining tensors of the 16 x 16
    // level together (+5.8 dB). Before it measured levels it stopped there: t = 1 at 20.1 dB here
    // (15.1% of bytes), and the same seven tensors at budgets of 20, 35 and 50%.
    let c = compile_within_budget(0.70);
    let q = c
        .report
        .sqnr_per_timestep
        .iter()
        .find(|q| q.t <= 1.0)
        .unwrap();
    println!(
        "budget 70%: t=1 {:.2} dB, int16 {:.1}% of bytes",
        q.sqnr_db,
        100.0 * q.int16_bytes
    );
    assert!(q.sqnr_db >= 21.5, "SQNR {:.2} dB at t=1", q.sqnr_db);
    assert!(
        q.int16_bytes > 0.5 && q.int16_bytes <= 0.70,
        "int16 {:.3} of bytes",
        q.int16_bytes
    );
}
