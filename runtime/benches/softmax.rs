//! Integer softmax per tier on attention-sized rows: int8 codes to int8 (the classic rule, steps
//! of 1/255) and int16 codes to int16 (steps of 1/65535, the general rule of a protected
//! attention), `rows x len` codes spread over about 12 units of real score, as the op runs them
//! (inside [`on_tier`]). criterion reports elements/s; a summary at the end states ns per element.
//!
//! `cargo bench -p dmq-runtime --features std --bench softmax` (`-- --summary` for the table
//! only). `DMQ_BENCH_ROWS` sets the rows (default 512) of 4096 codes each.
use criterion::{criterion_group, Criterion, Throughput};
use dmq_runtime::kernels::reference::softmax::{softmax, softmax_any, Steps};
use dmq_runtime::kernels::{on_tier, Tier};
use std::time::Instant;

const LEN: usize = 4096;

/// The exp table of input scale `s`: 256 entries for int8, 512 (two levels) for int16.
fn table(s: f64, wide: bool) -> Vec<u8> {
    let e = |x: f64| ((-x * s).exp() * (1u64 << 20) as f64).round() as u32;
    let mut t: Vec<u8> = (0..256).flat_map(|d| e(d as f64).to_le_bytes()).collect();
    if wide {
        t.extend((0..256).flat_map(|d| e(256.0 * d as f64).to_le_bytes()));
    }
    t
}

/// Codes spread over `span` steps below `top`, from a fixed pseudo-random sequence.
fn codes(n: usize, top: i64, span: i64) -> Vec<i64> {
    let mut seed = 7u64;
    (0..n)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            top - ((seed >> 33) as i64 % span)
        })
        .collect()
}

struct Case {
    name: &'static str,
    run: Box<dyn FnMut(Tier)>,
}

fn cases(rows: usize) -> Vec<Case> {
    let n = rows * LEN;
    let x8: Vec<i8> = codes(n, 127, 256).into_iter().map(|v| v as i8).collect();
    let x16: Vec<i16> = codes(n, 32767, 65536)
        .into_iter()
        .map(|v| v as i16)
        .collect();
    let (t8, t16) = (table(12.0 / 255.0, false), table(12.0 / 65535.0, true));
    let (mut y8, mut y16) = (vec![0i8; n], vec![0i16; n]);
    let st = Steps {
        r: 65535,
        zo: -32768,
        hi: 32767,
    };
    vec![
        Case {
            name: "int8 -> int8",
            run: Box::new(move |tier| {
                on_tier(tier, || softmax(&x8, rows, LEN, 1, &t8, &mut y8)).unwrap();
            }),
        },
        Case {
            name: "int16 -> int16",
            run: Box::new(move |tier| {
                on_tier(tier, || {
                    softmax_any(&x16, (rows, LEN, 1), &t16, st, &mut y16)
                })
                .unwrap();
            }),
        },
    ]
}

fn tiers() -> Vec<Tier> {
    std::iter::once(Tier::Scalar)
        .chain(Tier::SIMD.into_iter().filter(|t| t.supported()))
        .collect()
}

fn bench(c: &mut Criterion) {
    let rows = rows();
    for tier in tiers() {
        let mut g = c.benchmark_group(format!("softmax {tier:?}"));
        g.throughput(Throughput::Elements((rows * LEN) as u64));
        for mut case in cases(rows) {
            g.bench_function(case.name, |b| b.iter(|| (case.run)(tier)));
        }
        g.finish();
    }
}

fn rows() -> usize {
    std::env::var("DMQ_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

/// The fastest of 5 runs per tier and case, in ns per element.
fn summary() {
    let rows = rows();
    println!("softmax, {rows} rows of {LEN} codes (fastest of 5 runs)");
    for tier in tiers() {
        for mut case in cases(rows) {
            let best = (0..5)
                .map(|_| {
                    let t = Instant::now();
                    (case.run)(tier);
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min);
            println!(
                "  {:<12} {:<16} {:6.2} ns/element",
                format!("{tier:?}"),
                case.name,
                best * 1e9 / (rows * LEN) as f64
            );
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    // criterion's groups unless only the table is asked for, then the table
    if !std::env::args().any(|a| a == "--summary") {
        benches();
        Criterion::default().configure_from_args().final_summary();
    }
    summary();
}
