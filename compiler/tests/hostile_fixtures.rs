//! The models the runtime's hostile-file suite mutates (runtime/tests/data) are what dmqc makes today:
//! the same format version, the same ops in every stream, the same inputs. Regenerate them with
//! scripts/make-hostile-fixtures.sh after a change to the format or the lowering.
use dmq_compiler::{compile, CalibSource, CalibSpec, CompileOptions, Protect};
use dmq_runtime::Model;
use std::path::PathBuf;

fn path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// Op names of every stream, the input names and the time table's presence.
fn shape_of(bytes: &[u8]) -> (Vec<Vec<&'static str>>, Vec<String>, bool) {
    let m = Model::load(bytes).expect("loads");
    let ops = (0..m.streams())
        .map(|k| m.stream_ops(k).map(|o| o.unwrap().name()).collect())
        .collect();
    let meta = m.meta();
    let mut names = vec![
        meta.latent_name.to_string(),
        meta.timestep_name.to_string(),
        meta.output_name.to_string(),
    ];
    names.extend(meta.extra_inputs.iter().map(|e| e.name.to_string()));
    (ops, names, meta.time_table.is_some())
}

#[test]
fn hostile_fixtures_are_current() {
    let quick = CompileOptions {
        steps: 5,
        calib_samples: 2,
        eval_samples: 1,
        baseline: false,
        progress: false,
        // random-weight fixtures: their trajectories drift
        calib_source: CalibSource::Forward,
        ..Default::default()
    };
    let class = CompileOptions {
        protect: Protect::None,
        calib_inputs: vec![("class_labels".into(), CalibSpec::Uniform(0.0, 9.0))],
        fold_time_path: true,
        ..quick.clone()
    };
    for (onnx, dmq, opts) in [
        (
            "tests/fixtures/tiny_unet.onnx",
            "runtime/tests/data/tiny.dmq",
            &quick,
        ),
        (
            "tests/fixtures/unet2d_class.onnx",
            "runtime/tests/data/class_fold.dmq",
            &class,
        ),
        (
            "tests/fixtures/ddp_unet.onnx",
            "runtime/tests/data/ddp.dmq",
            &quick,
        ),
    ] {
        let fresh = compile(&path(onnx), opts).expect("compiles").bytes;
        let committed = std::fs::read(path(dmq)).unwrap();
        assert!(
            Model::load(&committed).is_ok() && shape_of(&fresh) == shape_of(&committed),
            "{dmq} is stale: run scripts/make-hostile-fixtures.sh"
        );
    }
}
