//! Timestep buckets: every scheduled step lands in exactly one bucket, bounds separate neighbours, and
//! the runtime picks the bucket of any timestep, scheduled or not.
mod common;
use dmq_compiler::calib::buckets;
use dmq_runtime::Model;

#[test]
fn buckets_partition_the_schedule_with_midpoint_bounds() {
    let ts: Vec<f32> = (0..50).map(|i| (981 - 20 * i) as f32).collect();
    for g in [1usize, 3, 7, 50, 80] {
        let b = buckets(&ts, g);
        assert_eq!(b.len(), g.min(50));
        let mut seen = vec![0; 50];
        for (k, (steps, upper)) in b.iter().enumerate() {
            assert!(!steps.is_empty());
            for &s in steps {
                seen[s] += 1;
            }
            match upper {
                Some(u) => {
                    let top = steps.iter().map(|&s| ts[s]).fold(f32::MIN, f32::max);
                    let next = b[k + 1].0.iter().map(|&s| ts[s]).fold(f32::MAX, f32::min);
                    assert!(top < *u && *u < next, "bound {u} between {top} and {next}");
                }
                None => assert_eq!(k, b.len() - 1),
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "each step in exactly one bucket"
        );
    }
}

#[test]
fn runtime_picks_the_bucket_of_any_timestep() {
    let model = Model::load(common::tiny_dmq()).unwrap();
    let streams = model.streams();
    assert!(streams >= 1);
    let bounds = model.meta().bucket_upper.clone();
    assert_eq!(bounds.len(), streams - 1);
    for (i, &u) in bounds.iter().enumerate() {
        assert_eq!(model.stream_for(u), i);
        assert_eq!(model.stream_for(u + 0.5), i + 1);
    }
    assert_eq!(model.stream_for(-5.0), 0);
    assert_eq!(model.stream_for(1e9), streams - 1);
}

#[test]
fn folded_time_path_gives_the_same_samples_as_evaluating_it() {
    // --fold-time-path stores the time path's outputs per scheduled timestep; sampling on the schedule
    // must give the bytes the run-time evaluation gives, and an off-schedule timestep still runs.
    // The class-conditional fixture has ops that depend only on its extra input, hoisted to the front
    // of every stream: the table must follow the stream's order, not the program's.
    folded_equals_evaluated("tiny_unet.onnx", &[]);
    folded_equals_evaluated("unet2d_class.onnx", &[("class_labels", 3.0)]);
}

fn folded_equals_evaluated(onnx: &str, extras: &[(&str, f32)]) {
    use dmq_compiler::{CalibSpec, CompileOptions};
    use dmq_runtime::sampler::Rng;
    use dmq_runtime::{SamplerKind, Session};
    let compile = |fold: bool| {
        let opts = CompileOptions {
            steps: 5,
            calib_samples: 2,
            eval_samples: 1,
            progress: false,
            baseline: false,
            fold_time_path: fold,
            // random-weight fixtures: their trajectories drift
            calib_source: dmq_compiler::CalibSource::Forward,
            calib_inputs: extras
                .iter()
                .map(|(n, v)| (n.to_string(), CalibSpec::Uniform(*v, *v)))
                .collect(),
            ..Default::default()
        };
        dmq_compiler::compile(&common::fixture(onnx), &opts)
            .unwrap()
            .bytes
    };
    let (plain, folded) = (compile(false), compile(true));
    let (mp, mf) = (Model::load(&plain).unwrap(), Model::load(&folded).unwrap());
    assert!(mp.meta().time_table.is_none());
    let tt = mf.meta().time_table.as_ref().expect("a time table");
    assert!(tt.row > 0 && !tt.outputs.is_empty());
    let n = mp.latent_len();
    let values: Vec<Vec<f32>> = extras.iter().map(|(_, v)| vec![*v]).collect();
    let sample = |m: &Model| {
        let mut arena = vec![0u128; m.arena_bytes().div_ceil(16)];
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(arena.as_mut_ptr() as *mut u8, arena.len() * 16)
        };
        let mut sess = Session::new(m, bytes).unwrap();
        for ((name, _), v) in extras.iter().zip(&values) {
            sess.set_input(name, v).unwrap();
        }
        let mut x = vec![0f32; n];
        Rng::new(9).fill_gaussian(&mut x);
        sess.sample(SamplerKind::Ddim, 5, &mut x, &mut Rng::new(9))
            .unwrap();
        let mut y = vec![0f32; n];
        sess.run(&x, 433.5, &mut y).unwrap();
        (x, y)
    };
    let (a, b) = (sample(&mp), sample(&mf));
    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.0), bits(&b.0), "{onnx}: samples differ");
    assert_eq!(
        bits(&a.1),
        bits(&b.1),
        "{onnx}: off-schedule evaluations differ"
    );
}

#[test]
fn a_floor_over_every_step_keeps_the_buckets_ranges() {
    // With every step below the floor, the floor's streams make every int16-capable tensor int16,
    // which is what `--act-bits 16` does; the run of weak steps is split into buckets by its ranges
    // as `--act-bits 16` splits the schedule, so the two files are the same bytes. They used to share
    // one floor stream, one range for all steps: on this consistency fixture, whose output scale
    // follows c_out(σ), 40.2 dB mean against 50.3 (`dmqc compile consistency_unet.onnx --floor-db 99
    // --calib-source forward`), and on a diffusers UNet2DModel with Fourier time features, whose
    // output is divided by σ in the graph, 24.8 dB at its largest σ against 37.6.
    use dmq_compiler::{CompileOptions, Protect};
    let compile = |floor_db: f64, protect: Protect| {
        let opts = CompileOptions {
            steps: 10,
            calib_samples: 2,
            eval_samples: 1,
            progress: false,
            baseline: false,
            floor_db,
            protect,
            calib_source: dmq_compiler::CalibSource::Forward,
            ..Default::default()
        };
        dmq_compiler::compile(&common::fixture("consistency_unet.onnx"), &opts).unwrap()
    };
    let floor = compile(99.0, Protect::Auto(0));
    assert_eq!(floor.report.floor_steps.len(), 10, "every step is weak");
    let model = Model::load(&floor.bytes).unwrap();
    assert_eq!(
        model.streams(),
        3,
        "the floor's run split into the 3 buckets"
    );
    let all16 = compile(0.0, Protect::All);
    assert!(
        floor.bytes == all16.bytes,
        "floor over every step: {} bytes, --act-bits 16: {} bytes",
        floor.bytes.len(),
        all16.bytes.len()
    );
}
