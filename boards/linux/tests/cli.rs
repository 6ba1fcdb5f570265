//! Bad input on the dmq-board command line: clear errors naming the file, exit status 1 (2 for
//! usage), nothing written. Model: the hostile-suite fixture (tiny UNet, latent [1, 2, 8, 8]).
use std::path::{Path, PathBuf};
use std::process::Command;

fn board() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dmq-board"))
}

fn tiny_dmq() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../runtime/tests/data/tiny.dmq")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmq-board-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A v1 npy file of little-endian f32 with the given shape and order.
fn npy(path: &Path, shape: &[usize], fortran: bool, values: &[f32]) {
    let dims: String = shape.iter().map(|d| format!("{d}, ")).collect();
    let order = if fortran { "True" } else { "False" };
    let mut h =
        format!("{{'descr': '<f4', 'fortran_order': {order}, 'shape': ({dims}), }}").into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h);
    b.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, b).unwrap();
}

fn run(x: &Path, t: &Path, out: &Path) -> (i32, String) {
    let o = board()
        .arg("run")
        .arg(tiny_dmq())
        .arg("--input")
        .arg(format!("sample={}", x.display()))
        .arg("--input")
        .arg(format!("timestep={}", t.display()))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn runs_good_input_and_refuses_bad_input_with_the_file_named() {
    let d = tmp("input");
    let (x, t, out) = (d.join("x.npy"), d.join("t.npy"), d.join("out"));
    let good: Vec<f32> = (0..128).map(|i| i as f32 / 64.0 - 1.0).collect();
    npy(&t, &[1], false, &[500.0]);
    npy(&x, &[1, 2, 8, 8], false, &good);
    let (code, err) = run(&x, &t, &out);
    assert_eq!(code, 0, "{err}");
    assert!(out.join("noise_pred.npy").exists());
    let out2 = d.join("out2");
    let cases: [(&str, Vec<usize>, bool, Vec<f32>); 4] = [
        ("Fortran", vec![1, 2, 8, 8], true, good.clone()),
        ("shape [2, 64]", vec![2, 64], false, good.clone()),
        ("not finite", vec![1, 2, 8, 8], false, {
            let mut v = good.clone();
            v[3] = f32::NAN;
            v
        }),
        ("data bytes", vec![1, 2, 8, 9], false, good.clone()),
    ];
    for (want, shape, fortran, values) in cases {
        npy(&x, &shape, fortran, &values);
        let (code, err) = run(&x, &t, &out2);
        assert_eq!(code, 1, "{want}: {err}");
        assert!(err.contains(want) && err.contains("x.npy"), "{want}: {err}");
        assert!(
            !out2.join("noise_pred.npy").exists(),
            "{want}: an output was written"
        );
    }
    npy(&x, &[1, 2, 8, 8], false, &good);
    npy(&t, &[1], false, &[f32::INFINITY]);
    let (code, err) = run(&x, &t, &out2);
    assert!(
        code == 1 && err.contains("t.npy") && err.contains("not finite"),
        "{err}"
    );
    let missing = d.join("nope.npy");
    let (code, err) = run(&missing, &t, &out2);
    assert!(code == 1 && err.contains("nope.npy"), "{err}");
}

#[test]
fn usage_errors_exit_with_2() {
    for args in [
        vec!["frobnicate"],
        vec!["bench", "m.dmq", "--runs", "many"],
        vec![],
    ] {
        let o = board().args(&args).output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// `sample --tier NAME` on every tier this CPU has (on x86 the non-GEMM ops capped at the tier's
/// instruction set, down to none for `scalar`) prints the same checksum, for a model whose streams
/// are int16 throughout (the hostile-suite fixture) and one whose streams are int8 throughout (the
/// class-conditional fixture): GroupNorms, tables, softmax, element-wise ops and products of both widths.
#[test]
fn every_tier_samples_the_same_checksum() {
    let d = tmp("tiers");
    let label = d.join("label.npy");
    npy(&label, &[1], false, &[3.0]);
    let class = tiny_dmq().with_file_name("class_fold.dmq");
    let models = [
        (tiny_dmq(), vec![]),
        (
            class,
            vec![
                "--input".to_string(),
                format!("class_labels={}", label.display()),
            ],
        ),
    ];
    for (model, extra) in models {
        let mut sums = vec![];
        for tier in [
            "scalar",
            "neon",
            "neon-dot",
            "avx2",
            "avx-vnni",
            "avx512-vnni",
        ] {
            let o = board()
                .args([
                    "sample",
                    model.to_str().unwrap(),
                    "--seed",
                    "4",
                    "--steps",
                    "6",
                ])
                .args(["--checksum", "--tier", tier])
                .args(&extra)
                .output()
                .unwrap();
            let (out, err) = (
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
            );
            if err.contains("this CPU cannot run it") {
                continue;
            }
            assert!(o.status.success(), "{model:?} --tier {tier}: {err}");
            let sum = out
                .lines()
                .find_map(|l| l.strip_prefix("checksum: "))
                .unwrap_or_else(|| panic!("{model:?} --tier {tier}: no checksum in {out}"));
            sums.push((tier, sum.to_string()));
        }
        assert!(sums.len() >= 2, "{model:?}: only {sums:?} ran");
        assert!(sums.iter().all(|s| s.1 == sums[0].1), "{model:?}: {sums:?}");
    }
}

/// `bench --top N` lists the N slowest ops of the profiled stream, slowest first, each with its
/// index, kind (one of the kind table's) and output shape.
#[test]
fn bench_lists_the_slowest_ops_with_their_shapes() {
    let o = board()
        .args([
            "bench",
            tiny_dmq().to_str().unwrap(),
            "--runs",
            "3",
            "--top",
            "3",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("per-op profile"))
        .unwrap();
    let top = lines
        .iter()
        .position(|l| l.starts_with("slowest 3 ops"))
        .unwrap();
    let kinds: Vec<&str> = lines[at + 1..top]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert!(!kinds.is_empty());
    let ops: Vec<Vec<&str>> = lines[top + 1..top + 4]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let ms = |f: &Vec<&str>| f[f.len() - 3].parse::<f64>().unwrap();
    for f in &ops {
        assert_eq!(f[0], "op", "{f:?}");
        assert!(f[1].parse::<u32>().is_ok(), "{f:?}");
        assert!(kinds.contains(&f[2]), "{f:?} not among {kinds:?}");
        assert!(
            f.iter().any(|s| s.starts_with('[')) || f[3] == "-",
            "{f:?}: no shape"
        );
    }
    assert!(
        ops.windows(2).all(|w| ms(&w[0]) >= ms(&w[1])),
        "not slowest first: {ops:?}"
    );
}
