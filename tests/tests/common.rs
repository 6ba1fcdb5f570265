//! Shared helpers for the integration tests.
#![allow(dead_code)]
use dmq_compiler::CompileOptions;
use std::path::PathBuf;
use std::sync::OnceLock;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn bundled() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/digits_unet.onnx")
}

/// The tiny fixture UNet compiled quickly (few calibration runs): a valid .dmq to attack.
pub fn tiny_dmq() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let opts = CompileOptions {
            steps: 5,
            calib_samples: 2,
            eval_samples: 1,
            progress: false,
            // a random-weight fixture: its trajectories drift
            calib_source: dmq_compiler::CalibSource::Forward,
            ..Default::default()
        };
        dmq_compiler::compile(&fixture("tiny_unet.onnx"), &opts)
            .expect("tiny fixture compiles")
            .bytes
    })
}

/// Re-computes both checksums so that a mutated file reaches structural validation.
pub fn fix_checksums(bytes: &mut [u8]) {
    use dmq_runtime::format::{Header, HEADER_LEN};
    let Ok(mut h) = Header::parse(bytes) else {
        return;
    };
    let Ok((m, b)) = h.checksums(bytes) else {
        return;
    };
    (h.meta_checksum, h.blob_checksum) = (m, b);
    let mut hb = [0u8; HEADER_LEN];
    h.write(&mut hb);
    bytes[..HEADER_LEN].copy_from_slice(&hb);
}
