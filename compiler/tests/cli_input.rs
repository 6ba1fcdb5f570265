//! Bad input on the dmqc command line: every case gets a clear error, exit status 1 (2 for usage),
//! and leaves nothing behind. Models: the committed hostile-suite fixture (tiny UNet, latent
//! `sample` [1, 2, 8, 8], timestep `timestep`, output `noise_pred`).
use dmq_compiler::cli_io::write_npy;
use std::path::{Path, PathBuf};
use std::process::Command;

fn dmqc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dmqc"))
}

fn tiny_dmq() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/data/tiny.dmq")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dmqc-input-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// (exit code, stdout, stderr)
fn run(cmd: &mut Command) -> (i32, String, String) {
    let o = cmd.output().unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (o.status.code().unwrap_or(-1), s(&o.stdout), s(&o.stderr))
}

fn latent(i: usize) -> f32 {
    (i as f32 / 64.0) - 1.0
}

/// `dmqc run` on the tiny model with the given latent and timestep files.
fn run_tiny(x: &Path, t: &Path, out: &Path) -> (i32, String, String) {
    run(dmqc()
        .arg("run")
        .arg(tiny_dmq())
        .arg("--input")
        .arg(format!("sample={}", x.display()))
        .arg("--input")
        .arg(format!("timestep={}", t.display()))
        .arg("-o")
        .arg(out))
}

/// A raw npy file (v1 header) of little-endian f32 with the given header dict.
fn raw_npy(path: &Path, dict: &str, values: &[f32]) {
    let mut h = dict.as_bytes().to_vec();
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

#[test]
fn run_names_its_output_after_the_onnx_graph_output_and_reads_fortran_order() {
    let d = tmp("names");
    let (x, t) = (d.join("x.npy"), d.join("t.npy"));
    let values: Vec<f32> = (0..128).map(latent).collect();
    write_npy(&x, &[1, 2, 8, 8], &values).unwrap();
    write_npy(&t, &[1], &[333.0]).unwrap();
    let (code, _, err) = run_tiny(&x, &t, &d.join("c"));
    assert_eq!(code, 0, "{err}");
    let c_order = std::fs::read(d.join("c/noise_pred.npy")).expect("DIR/<ONNX output name>.npy");
    // the same latent stored in Fortran order: element (i0, i1, i2, i3) at i0 + 1*(i1 + 2*(i2 + 8*i3))
    let mut fortran = vec![0f32; 128];
    for (k, v) in values.iter().enumerate() {
        let (i1, i2, i3) = (k / 64, (k / 8) % 8, k % 8);
        fortran[i1 + 2 * (i2 + 8 * i3)] = *v;
    }
    let xf = d.join("xf.npy");
    raw_npy(
        &xf,
        "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2, 8, 8), }",
        &fortran,
    );
    let (code, _, err) = run_tiny(&xf, &t, &d.join("f"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(d.join("f/noise_pred.npy")).unwrap(), c_order);
}

#[test]
fn inputs_of_the_wrong_shape_or_not_finite_are_refused() {
    let d = tmp("shape");
    let (x, t, out) = (d.join("x.npy"), d.join("t.npy"), d.join("out"));
    write_npy(&t, &[1], &[500.0]).unwrap();
    // the right element count in the wrong shape
    write_npy(&x, &[2, 64], &(0..128).map(latent).collect::<Vec<_>>()).unwrap();
    let (code, _, err) = run_tiny(&x, &t, &out);
    assert_eq!(code, 1);
    assert!(
        err.contains("shape [2, 64]") && err.contains("sample"),
        "{err}"
    );
    // NaN and infinity in the latent
    for bad in [f32::NAN, f32::INFINITY] {
        let mut v: Vec<f32> = (0..128).map(latent).collect();
        v[7] = bad;
        write_npy(&x, &[1, 2, 8, 8], &v).unwrap();
        let (code, _, err) = run_tiny(&x, &t, &out);
        assert_eq!(code, 1);
        assert!(err.contains("not finite") && err.contains("x.npy"), "{err}");
    }
    // a NaN timestep
    write_npy(&x, &[1, 2, 8, 8], &(0..128).map(latent).collect::<Vec<_>>()).unwrap();
    write_npy(&t, &[1], &[f32::NAN]).unwrap();
    let (code, _, err) = run_tiny(&x, &t, &out);
    assert_eq!(code, 1);
    assert!(err.contains("not finite") && err.contains("t.npy"), "{err}");
    assert!(
        !out.join("noise_pred.npy").exists(),
        "a refused run wrote an output"
    );
    // sample --noise: shape and NaN
    let noise = d.join("n.npy");
    write_npy(&noise, &[128], &(0..128).map(latent).collect::<Vec<_>>()).unwrap();
    let png = d.join("s.png");
    let sample = |noise: &Path| {
        run(dmqc()
            .arg("sample")
            .arg(tiny_dmq())
            .arg("--noise")
            .arg(noise)
            .arg("-o")
            .arg(&png))
    };
    let (code, _, err) = sample(&noise);
    assert_eq!(code, 1);
    assert!(err.contains("--noise") && err.contains("[128]"), "{err}");
    let mut v: Vec<f32> = (0..128).map(latent).collect();
    v[0] = f32::NAN;
    write_npy(&noise, &[1, 2, 8, 8], &v).unwrap();
    let (code, _, err) = sample(&noise);
    assert_eq!(code, 1);
    assert!(err.contains("not finite"), "{err}");
    assert!(!png.exists(), "a refused sample wrote an image");
}

#[test]
fn io_errors_name_their_path_and_leave_nothing() {
    let d = tmp("io");
    let missing = d.join("missing.npy");
    let t = d.join("t.npy");
    write_npy(&t, &[1], &[1.0]).unwrap();
    let (code, _, err) = run_tiny(&missing, &t, &d.join("out"));
    assert_eq!(code, 1);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    // a truncated npy
    let x = d.join("x.npy");
    write_npy(&x, &[1, 2, 8, 8], &(0..128).map(latent).collect::<Vec<_>>()).unwrap();
    let b = std::fs::read(&x).unwrap();
    std::fs::write(&x, &b[..b.len() - 10]).unwrap();
    let (code, _, err) = run_tiny(&x, &t, &d.join("out"));
    assert_eq!(code, 1);
    assert!(err.contains("x.npy"), "{err}");
    // an output folder that cannot be made (its parent is a file)
    let file = d.join("afile");
    std::fs::write(&file, b"x").unwrap();
    write_npy(&x, &[1, 2, 8, 8], &(0..128).map(latent).collect::<Vec<_>>()).unwrap();
    let (code, _, err) = run_tiny(&x, &t, &file.join("out"));
    assert_eq!(code, 1);
    assert!(err.contains("afile"), "{err}");
    // a compile whose report cannot be written leaves no .dmq behind
    let dmq = d.join("m.dmq");
    let (code, _, err) = run(dmqc()
        .arg("compile")
        .arg(fixture("tiny_unet.onnx"))
        .arg("-o")
        .arg(&dmq)
        .args([
            "--steps",
            "3",
            "--calib-samples",
            "1",
            "--eval-samples",
            "1",
            "--no-baseline",
        ])
        .arg("--report")
        .arg(file.join("r.json")));
    assert_eq!(code, 1);
    assert!(err.contains("afile"), "{err}");
    assert!(
        !dmq.exists(),
        "the .dmq was left behind when the report failed"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn eval_names_a_model_compiled_from_another_onnx() {
    let (code, _, err) = run(dmqc()
        .arg("eval")
        .arg(fixture("unet2d_class.onnx"))
        .arg(tiny_dmq())
        .args(["--samples", "1"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("was not compiled from") && err.contains("unet2d_class.onnx"),
        "{err}"
    );
}

#[test]
fn exit_status_is_2_for_usage_and_1_for_failures() {
    let (code, _, _) = run(dmqc().args(["run", "--no-such-flag"]));
    assert_eq!(code, 2);
    let (code, out, _) = run(dmqc().arg("--help"));
    assert!(code == 0 && out.contains("Exit status"), "{out}");
    let (code, _, err) = run(dmqc().arg("inspect").arg(fixture("not_onnx.onnx")));
    assert_eq!(code, 1);
    assert!(err.contains("not a .dmq file"), "{err}");
}

#[test]
fn the_float_model_size_counts_its_external_data_files() {
    // the dynamo export names one `.onnx.data` file; a file without external data names none
    let dynamo = fixture("diffusers_unet2d_dynamo.onnx");
    let data = std::fs::metadata(fixture("diffusers_unet2d_dynamo.onnx.data")).unwrap();
    assert!(data.len() > 0);
    assert_eq!(
        dmq_compiler::import::external_data_bytes(&dynamo),
        data.len()
    );
    assert_eq!(
        dmq_compiler::import::external_data_bytes(&fixture("tiny_unet.onnx")),
        0
    );
}
