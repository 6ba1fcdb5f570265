//! Hostile files: real models mutated in structure (a record decoded with the crate's own types, a
//! field changed, re-encoded, checksums fixed) and in raw bytes, loaded and run. Nothing may panic
//! (this suite runs with overflow checks and debug assertions in CI: `--profile hostile`), no case
//! may take long (work is bounded by construction and by `Limits`), and no file that loads may
//! fail to run (validation and preparation are one check).
//!
//! `DMQ_HOSTILE_CASES=N` sets the cases per kind and fixture (default 2 000: 12 000 in all; CI runs
//! 25 000, 150 000 in all, with `scripts/test.sh`);
//! `DMQ_HOSTILE_SEED` the first seed. A failing case prints its seed; rerun one case with
//! `DMQ_HOSTILE_CASES=1 DMQ_HOSTILE_SEED=<seed>` (`DMQ_HOSTILE_DUMP=PREFIX` writes each case's bytes to `PREFIX.<fixture>.<seed>`).
mod exercise;

use dmq_runtime::format::{assemble, minor_version_of, Header, ModelMeta, Op, TRef};
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Error, Limits, Model};
use exercise::{exercise, limits_for, Outcome};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The fixtures: the tiny UNet (convs, attention, GroupNorm, time MLP), the class-conditional
/// UNet compiled with a folded time path (class-label lookup, invariant ops, time table), and the
/// denoising-diffusion-pytorch UNet (format 6.2: RmsNorm, linear attention, softmax over an outer
/// axis, constant operands of activation products).
/// `scripts/make-hostile-fixtures.sh` writes them; `fixtures_are_current` checks them.
const FIXTURES: [(&str, &[u8]); 3] = [
    ("tiny", include_bytes!("data/tiny.dmq")),
    ("class_fold", include_bytes!("data/class_fold.dmq")),
    ("ddp", include_bytes!("data/ddp.dmq")),
];

/// A decoded file: metadata, the records of every stream, the blob.
#[derive(Clone)]
struct Decoded {
    meta: ModelMeta,
    streams: Vec<Vec<Op<TRef>>>,
    blob: Vec<u8>,
}

fn decode(bytes: &[u8]) -> Decoded {
    let model = Model::load(bytes).expect("fixture loads");
    let streams = (0..model.streams())
        .map(|k| {
            model
                .stream_ops(k)
                .map(|r| r.expect("record decodes"))
                .collect()
        })
        .collect();
    Decoded {
        meta: model.meta().clone(),
        streams,
        blob: model.blob().to_vec(),
    }
}

/// Re-encodes the records and the metadata; the stream offsets follow the records unless the
/// metadata itself was mutated.
fn encode(d: &Decoded, keep_offsets: bool) -> Vec<u8> {
    let mut meta = d.meta.clone();
    let mut ops = vec![];
    let mut offsets = heapless::Vec::new();
    for s in &d.streams {
        let _ = offsets.push(ops.len() as u32);
        for op in s {
            ops.extend(postcard::to_allocvec(op).expect("encodes"));
        }
    }
    if !keep_offsets {
        meta.stream_offsets = offsets;
    }
    let n_ops = d.streams.iter().map(|s| s.len()).sum::<usize>() as u32;
    let meta_b = postcard::to_allocvec(&meta).expect("encodes");
    let minor = d
        .streams
        .iter()
        .flatten()
        .map(minor_version_of)
        .max()
        .unwrap_or(0);
    assemble(&meta_b, &ops, n_ops, &d.blob, minor)
}

/// Every leaf (number) and array of a JSON tree, by path.
fn slots(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Number(_) | Value::Bool(_) => out.push(path.clone()),
        Value::Array(a) => {
            out.push(path.clone());
            for (i, x) in a.iter().enumerate() {
                path.push(i.to_string());
                slots(x, path, out);
                path.pop();
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                path.push(k.clone());
                slots(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at<'v>(v: &'v mut Value, path: &[String]) -> &'v mut Value {
    path.iter().fold(v, |v, p| match v {
        Value::Array(a) => &mut a[p.parse::<usize>().unwrap()],
        Value::Object(o) => o.get_mut(p).unwrap(),
        other => other,
    })
}

/// A hostile value for a number: boundaries, neighbours, scalings, random.
fn hostile_number(n: &serde_json::Number, rng: &mut Rng) -> Value {
    let r = rng.next_u64();
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        let v = [
            0.0,
            -1.0,
            1e-30,
            1e30,
            -f,
            f * 1e6,
            f * 1e-6,
            f32::MAX as f64,
            3.5,
            -0.5,
        ][(r % 10) as usize];
        return serde_json::json!(v);
    }
    let x = n.as_i64().unwrap_or(i64::MAX);
    let choices: [i64; 16] = [
        0,
        1,
        2,
        x + 1,
        x - 1,
        x * 2,
        x / 2,
        x * 1000,
        -x,
        (r >> 32) as i64,
        (r >> 60) as i64,
        255,
        65_535,
        i32::MAX as i64,
        u32::MAX as i64,
        1 << 31,
    ];
    serde_json::json!(choices[(r % 16) as usize])
}

/// Mutates one slot of `v`: a number to a hostile value, or an array shortened, lengthened or
/// reordered.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let mut all = vec![];
    slots(v, &mut vec![], &mut all);
    if all.is_empty() {
        return;
    }
    let path = &all[(rng.next_u64() % all.len() as u64) as usize];
    let slot = at(v, path);
    match slot {
        Value::Number(n) => *slot = hostile_number(&n.clone(), rng),
        Value::Bool(b) => *b = !*b,
        Value::Array(a) if !a.is_empty() => match rng.next_u64() % 3 {
            0 => {
                a.pop();
            }
            1 => {
                let last = a[a.len() - 1].clone();
                a.push(last);
            }
            _ => {
                let (i, j) = ((rng.next_u64() % a.len() as u64) as usize, a.len() - 1);
                a.swap(i, j);
            }
        },
        _ => {}
    }
}

/// One structured case: one to three fields of records or of the metadata mutated (each retried
/// until the value decodes again), the file re-encoded with valid checksums.
fn structured_case(base: &Decoded, rng: &mut Rng) -> Vec<u8> {
    let mut d = base.clone();
    let mut meta_mutated = false;
    for _ in 0..1 + rng.next_u64() % 3 {
        let meta_case = rng.next_u64() % 5 == 0;
        for _ in 0..20 {
            if meta_case {
                let mut v = serde_json::to_value(&d.meta).unwrap();
                mutate(&mut v, rng);
                if let Ok(m) = serde_json::from_value(v) {
                    d.meta = m;
                    meta_mutated = true;
                    break;
                }
            } else {
                let s = (rng.next_u64() % d.streams.len() as u64) as usize;
                let i = (rng.next_u64() % d.streams[s].len() as u64) as usize;
                let mut v = serde_json::to_value(&d.streams[s][i]).unwrap();
                mutate(&mut v, rng);
                if let Ok(op) = serde_json::from_value(v) {
                    d.streams[s][i] = op;
                    break;
                }
            }
        }
    }
    encode(&d, meta_mutated)
}

/// One raw case: a few bytes anywhere changed, sometimes a truncation or an extension, and most
/// of the time the checksums fixed so that structural validation is reached.
fn raw_case(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.next_u64() % 4 {
        let i = (rng.next_u64() % b.len() as u64) as usize;
        b[i] = match rng.next_u64() % 4 {
            0 => b[i] ^ (1 << (rng.next_u64() % 8)),
            1 => 0,
            2 => 0xff,
            _ => rng.next_u64() as u8,
        };
    }
    match rng.next_u64() % 20 {
        0 => b.truncate((rng.next_u64() % b.len() as u64) as usize),
        1 => b.extend(std::iter::repeat_n(
            0u8,
            1 + (rng.next_u64() % 100) as usize,
        )),
        _ => {}
    }
    if rng.next_u64() % 10 < 7 {
        if let Ok(mut h) = Header::parse(&b) {
            if let Ok((m, bl)) = h.checksums(&b) {
                (h.meta_checksum, h.blob_checksum) = (m, bl);
                let mut hb = [0u8; 64];
                h.write(&mut hb);
                b[..64].copy_from_slice(&hb);
            }
        }
    }
    b
}

/// What a run of cases found.
#[derive(Default)]
struct Tally {
    cases: u64,
    ran: u64,
    refused: BTreeMap<String, u64>,
    failures: Vec<String>,
    slowest: Duration,
}

fn kind_of(e: &Error) -> String {
    match e {
        Error::Invalid { what, .. } => format!("invalid: {what}"),
        e => {
            let s = format!("{e:?}");
            s.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
        }
    }
}

/// Runs `cases` cases of `make` over a fixture on one thread, with a watchdog that aborts the
/// process when a case runs for more than 20 s (a hang).
fn run_cases(
    name: &str,
    base: &[u8],
    seed0: u64,
    cases: u64,
    make: impl Fn(&mut Rng) -> Vec<u8>,
) -> Tally {
    let limits = limits_for(&Model::load(base).unwrap());
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let started = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let (c2, s2, label) = (current.clone(), started.clone(), name.to_string());
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let case = c2.load(Ordering::SeqCst);
        let since = epoch.elapsed().as_millis() as u64 - s2.load(Ordering::SeqCst);
        if case != u64::MAX && since > 20_000 {
            eprintln!("hostile {label}: case seed {case} has run for {since} ms: aborting");
            std::process::abort();
        }
    });
    let mut t = Tally::default();
    for c in 0..cases {
        let seed = seed0 + c;
        let bytes = make(&mut Rng::new(seed));
        if let Ok(path) = std::env::var("DMQ_HOSTILE_DUMP") {
            std::fs::write(format!("{path}.{name}.{seed}"), &bytes)
                .expect("DMQ_HOSTILE_DUMP: cannot write");
        }
        started.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        current.store(seed, Ordering::SeqCst);
        let t0 = Instant::now();
        let outcome = std::panic::catch_unwind(|| exercise(&bytes, limits));
        let took = t0.elapsed();
        current.store(u64::MAX, Ordering::SeqCst);
        t.cases += 1;
        t.slowest = t.slowest.max(took);
        match outcome {
            Ok(Outcome::Ran) => t.ran += 1,
            Ok(Outcome::Refused(e)) => *t.refused.entry(kind_of(&e)).or_default() += 1,
            // a class label out of range is the input's fault, not the file's
            Ok(Outcome::FailedAfterLoad(Error::Input(_))) => t.ran += 1,
            Ok(Outcome::FailedAfterLoad(e)) => t
                .failures
                .push(format!("{name} seed {seed}: loaded, then failed: {e}")),
            Err(_) => t.failures.push(format!("{name} seed {seed}: panicked")),
        }
        if took > Duration::from_secs(1) {
            t.failures
                .push(format!("{name} seed {seed}: took {took:?}"));
        }
    }
    t
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(label: &str, tallies: Vec<Tally>) {
    let mut all = Tally::default();
    for t in tallies {
        all.cases += t.cases;
        all.ran += t.ran;
        for (k, v) in t.refused {
            *all.refused.entry(k).or_default() += v;
        }
        all.failures.extend(t.failures);
        all.slowest = all.slowest.max(t.slowest);
    }
    let refused: u64 = all.refused.values().sum();
    eprintln!(
        "hostile {label}: {} cases, {} loaded and ran, {refused} refused at load, slowest case {:?}, {} failures",
        all.cases,
        all.ran,
        all.slowest,
        all.failures.len()
    );
    let mut kinds: Vec<_> = all.refused.iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(a.1));
    for (k, v) in kinds.iter().take(12) {
        eprintln!("  refused {v:>7}  {k}");
    }
    for f in all.failures.iter().take(20) {
        eprintln!("  FAILURE {f}");
    }
    assert!(
        all.failures.is_empty(),
        "{} failing cases",
        all.failures.len()
    );
}

/// The cases of one kind over every fixture, on two threads.
fn suite(label: &str, structured: bool) {
    let cases = env("DMQ_HOSTILE_CASES", 2_000);
    let seed0 = env("DMQ_HOSTILE_SEED", if structured { 1 } else { 1 << 40 });
    let mut handles = vec![];
    for (name, bytes) in FIXTURES {
        let base = decode(bytes);
        for half in 0..2u64 {
            let base = base.clone();
            let n = cases / 2 + (half * (cases % 2));
            let s0 = seed0 + half * (cases / 2);
            handles.push(std::thread::spawn(move || {
                if structured {
                    run_cases(name, bytes, s0, n, |rng| structured_case(&base, rng))
                } else {
                    run_cases(name, bytes, s0, n, |rng| raw_case(bytes, rng))
                }
            }));
        }
    }
    report(
        label,
        handles.into_iter().map(|h| h.join().unwrap()).collect(),
    );
}

#[test]
fn structured_mutations_never_panic_hang_or_fail_after_loading() {
    suite("structured", true);
}

#[test]
fn raw_mutations_never_panic_hang_or_fail_after_loading() {
    suite("raw", false);
}

#[test]
fn fixtures_load_and_run_unchanged() {
    for (name, bytes) in FIXTURES {
        let m = Model::load(bytes)
            .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/make-hostile-fixtures.sh)"));
        assert_eq!(exercise(bytes, limits_for(&m)), Outcome::Ran, "{name}");
        // and it re-encodes to the same bytes: the mutations start from a faithful decoding
        assert_eq!(encode(&decode(bytes), false), bytes, "{name}");
    }
}

#[test]
fn every_header_byte_is_covered() {
    for (name, bytes) in FIXTURES {
        for i in 0..64 {
            for bit in 0..8 {
                let mut b = bytes.to_vec();
                b[i] ^= 1 << bit;
                let e = Model::load(&b).err();
                assert!(
                    e.is_some(),
                    "{name}: flipping bit {bit} of header byte {i} still loads"
                );
            }
        }
    }
}

#[test]
fn limits_refuse_work_and_arena_beyond_them() {
    let (_, bytes) = FIXTURES[0];
    let m = Model::load(bytes).unwrap();
    let tight = Limits {
        max_work_per_eval: m.work_per_eval() - 1,
        ..Limits::default()
    };
    assert!(matches!(
        Model::load_with(bytes, tight),
        Err(Error::WorkLimit { .. })
    ));
    let small = Limits {
        max_arena_bytes: m.arena_bytes() - 1,
        ..Limits::default()
    };
    assert!(matches!(
        Model::load_with(bytes, small),
        Err(Error::Arena { .. })
    ));
}
