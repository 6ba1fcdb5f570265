//! libFuzzer target: any bytes, their header's checksums recomputed (so mutations reach structural
//! validation instead of stopping at a checksum), loaded and, if they load, run. Must never panic,
//! and a file that loads must run (see runtime/tests/exercise.rs).
#![no_main]

#[path = "../../runtime/tests/exercise.rs"]
mod exercise;

use dmq_runtime::format::{Header, HEADER_LEN};
use dmq_runtime::Limits;
use exercise::{exercise, Outcome};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = data.to_vec();
    if let Ok(mut h) = Header::parse(&b) {
        if let Ok((m, bl)) = h.checksums(&b) {
            (h.meta_checksum, h.blob_checksum) = (m, bl);
            let mut hb = [0u8; HEADER_LEN];
            h.write(&mut hb);
            b[..HEADER_LEN].copy_from_slice(&hb);
        }
    }
    let limits = Limits {
        max_work_per_eval: 1 << 28,
        max_arena_bytes: 64 << 20,
    };
    if let Outcome::FailedAfterLoad(e) = exercise(&b, limits) {
        if !matches!(e, dmq_runtime::Error::Input(_)) {
            panic!("loaded, then failed: {e}");
        }
    }
});
