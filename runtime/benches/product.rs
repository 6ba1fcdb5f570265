//! The product engine (convolutions, linears) per tier and shape: staging, the tiles and the
//! requantizing epilogue, as an op runs them. criterion reports the throughput in elements/s, one
//! element per multiply-accumulate (so Gelem/s = GMAC/s); a summary at the end states GMAC/s and
//! the fraction of the tier's exact-int8 peak at the clock measured by a dependent-add loop.
//!
//! `cargo bench -p dmq-runtime --features std --bench product` (criterion's `--quick` shortens it);
//! `-- --summary` prints only the summary. Its environment: `DMQ_BENCH_ROUNDS` (passes over the
//! cases, each keeping its fastest; default 3), `DMQ_BENCH_SHAPE` (only shapes whose name contains
//! it), `DMQ_BENCH_TIER` (only tiers whose `Debug` name contains it, e.g. `Avx512` for a profile
//! of one tier), `DMQ_BENCH_KIND` (only kinds containing it: `W8A8`, `W4A8`, `W8A16`),
//! `DMQ_BENCH_REPS` (multiplies the timed runs per case, for a profile under `perf record`),
//! `DMQ_BENCH_STAGE` (also time the staging alone, as a share of the op).
use criterion::{criterion_group, Criterion, Throughput};
use dmq_runtime::kernels::gemm::{self, pad4, Epilogue, Finish, Pixels, Product, Requants};
use dmq_runtime::kernels::reference::Code;
use dmq_runtime::kernels::stage::{self, ImageStage};
use dmq_runtime::kernels::Tier;
use std::time::Instant;

/// A convolution (k > 0) or a linear over tokens (k = 0: `h` tokens of depth `c`).
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    c: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
}

const SHAPES: [Shape; 8] = [
    Shape {
        name: "conv3x3 32->32 16x16 (bundled model)",
        c: 32,
        h: 16,
        w: 16,
        co: 32,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "conv3x3 64->64 8x8 (bundled model)",
        c: 64,
        h: 8,
        w: 8,
        co: 64,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "conv3x3 128->128 32x32",
        c: 128,
        h: 32,
        w: 32,
        co: 128,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "conv3x3 32->32 128x128 (9 GMAC UNet)",
        c: 32,
        h: 128,
        w: 128,
        co: 32,
        k: 3,
        stride: 1,
    },
    Shape {
        name: "conv3x3 s2 64->64 32x32",
        c: 64,
        h: 32,
        w: 32,
        co: 64,
        k: 3,
        stride: 2,
    },
    Shape {
        name: "linear 1024 tokens 256->256",
        c: 256,
        h: 1024,
        w: 1,
        co: 256,
        k: 0,
        stride: 1,
    },
    // low depth: the output codes, not the products, decide these
    Shape {
        name: "linear 1024 tokens 32->1024 (scores)",
        c: 32,
        h: 1024,
        w: 1,
        co: 1024,
        k: 0,
        stride: 1,
    },
    Shape {
        name: "linear 4096 tokens 16->128",
        c: 16,
        h: 4096,
        w: 1,
        co: 128,
        k: 0,
        stride: 1,
    },
];

/// Activations, weight bits and output type of a variant.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    W8A8,
    W4A8,
    W8A16,
}

impl Shape {
    fn out_hw(&self) -> (usize, usize) {
        if self.k == 0 {
            return (self.h, 1);
        }
        let p = self.k / 2;
        (
            (self.h + 2 * p - self.k) / self.stride + 1,
            (self.w + 2 * p - self.k) / self.stride + 1,
        )
    }
    fn k4(&self) -> usize {
        if self.k == 0 {
            pad4(self.c)
        } else {
            self.k * self.k * pad4(self.c)
        }
    }
    fn macs(&self) -> u64 {
        let (oh, ow) = self.out_hw();
        (self.co * oh * ow * self.k4()) as u64
    }
}

/// Everything one run needs, allocated once.
struct Job<T: Code> {
    s: Shape,
    x: Vec<T>,
    w: Vec<i8>,
    w4: Option<Vec<u8>>,
    bias: Vec<u8>,
    table: Vec<u8>,
    stage: Vec<i16>,
    stage8: Vec<T>,
    out: Vec<T>,
    /// the weights' largest row sum of |w| for int16 activations (as an op finds it at prepare)
    wsum: u64,
}

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

impl<T: Code> Job<T> {
    fn new(s: Shape, v: Variant) -> Self {
        let mut seed = 7u64;
        let (oh, ow) = s.out_hw();
        let n_in = s.c * s.h * s.w;
        let x = (0..n_in)
            .map(|_| T::sat(lcg(&mut seed) as i64 % 255 - 127))
            .collect();
        let (lo, span) = if v == Variant::W4A8 {
            (-8, 16)
        } else {
            (-127, 255)
        };
        let w: Vec<i8> = (0..pad4(s.co) * s.k4())
            .map(|_| (lo + (lcg(&mut seed) % span) as i64) as i8)
            .collect();
        let w4 = (v == Variant::W4A8).then(|| {
            w.chunks(2)
                .map(|p| (p[0] as u8 & 15) | ((p[1] as u8) << 4))
                .collect()
        });
        let bias = (0..s.co)
            .flat_map(|_| ((lcg(&mut seed) % 2000) as i32 - 1000).to_le_bytes())
            .collect();
        let table = (0..s.co)
            .flat_map(|_| {
                [(1i32 << 30) + 12345, 40]
                    .into_iter()
                    .flat_map(i32::to_le_bytes)
            })
            .collect();
        let len = if s.k == 0 {
            s.h * s.k4()
        } else {
            ImageStage {
                c: s.c,
                h: s.h,
                w: s.w,
                pad: [s.k / 2; 4],
            }
            .len()
        };
        let wsum = if T::MAX > 127 {
            gemm::abs_row_sum_max(8, bytemuck::cast_slice(&w), s.co, s.k4())
        } else {
            u64::MAX
        };
        Job {
            s,
            x,
            w,
            w4,
            bias,
            table,
            stage: vec![0; len],
            stage8: vec![T::default(); len],
            out: vec![T::default(); s.co * oh * ow],
            wsum,
        }
    }

    /// One op: (4-bit unpack), stage, product with the epilogue, output written channel-major.
    fn run(&mut self, tier: Tier) {
        let s = self.s;
        let (oh, ow) = s.out_hw();
        if let Some(p) = &self.w4 {
            gemm::unpack4(tier, p, &mut self.w).unwrap();
        }
        let px = if s.k == 0 {
            Pixels::rows(s.h, s.k4(), s.k4())
        } else {
            ImageStage {
                c: s.c,
                h: s.h,
                w: s.w,
                pad: [s.k / 2; 4],
            }
            .pixels((s.k, s.k), (s.stride, s.stride), (oh, ow))
        };
        self.stage_into(tier);
        let epi = Epilogue::new::<T>(&self.bias, Requants::PerRow(&self.table), 3);
        let exact = T::MAX > 127;
        let p = oh * ow;
        let out = &mut self.out;
        let emit = |t: &gemm::Tile| t.write(out, 0, p, 1).unwrap();
        if stage::stage_elem(tier, std::mem::size_of::<T>()) == 2 {
            let prod = Product {
                w: &self.w,
                n: s.co,
                stage: &self.stage,
                px,
                exact,
                full_range: false,
                wsum: self.wsum,
            };
            gemm::run_rows(tier, &prod, (0, pad4(s.co)), Finish::Codes(&epi), emit).unwrap();
        } else {
            let prod = Product {
                w: &self.w,
                n: s.co,
                stage: &self.stage8,
                px,
                exact,
                full_range: false,
                wsum: self.wsum,
            };
            gemm::run_rows(tier, &prod, (0, pad4(s.co)), Finish::Codes(&epi), emit).unwrap();
        }
    }

    fn stage_into(&mut self, tier: Tier) {
        let s = self.s;
        let wide = stage::stage_elem(tier, std::mem::size_of::<T>()) == 2;
        if s.k == 0 {
            // tokens stored channel-major ([c][tokens]), as a 1x1 convolution's input
            if wide {
                stage::rows(tier, &self.x, s.h, s.c, [1, s.h], &mut self.stage).unwrap()
            } else {
                stage::rows(tier, &self.x, s.h, s.c, [1, s.h], &mut self.stage8).unwrap()
            }
        } else {
            let g = ImageStage {
                c: s.c,
                h: s.h,
                w: s.w,
                pad: [s.k / 2; 4],
            };
            if wide {
                stage::image(tier, &self.x, &g, 0i16, &mut self.stage).unwrap()
            } else {
                stage::image(tier, &self.x, &g, T::default(), &mut self.stage8).unwrap()
            }
        }
    }
}

fn tiers() -> Vec<Tier> {
    let mut t = vec![Tier::Scalar];
    let best = Tier::detect();
    if best == Tier::NeonDot {
        t.push(Tier::Neon);
    }
    if best == Tier::Avx512Vnni {
        t.push(Tier::Avx2);
        t.push(Tier::AvxVnni);
    }
    if best == Tier::AvxVnni {
        t.push(Tier::Avx2);
    }
    if best != Tier::Scalar {
        t.push(best);
    }
    t
}

/// Exact multiply-accumulates per cycle per core of a tier at its best, for a variant's kind of
/// product (int16 activations run the AVX2 tiles on the AVX-VNNI tier).
fn peak_per_cycle(t: Tier, v: Variant) -> Option<f64> {
    match t {
        Tier::AvxVnni if v == Variant::W8A16 => Some(32.0), // 2 x vpdpwssd (16 MACs) per cycle
        Tier::Avx512Vnni if v == Variant::W8A16 => Some(64.0), // 2 x vpdpwssd zmm (32 MACs)
        Tier::Avx512Vnni => Some(128.0),                    // 2 x vpdpbusd zmm (64 MACs) per cycle
        Tier::Avx2 => Some(32.0),                           // 2 x vpmaddwd (16 MACs) per cycle
        Tier::AvxVnni => Some(64.0),                        // 2 x vpdpbusd (32 MACs) per cycle
        Tier::NeonDot => Some(32.0), // 2 x SDOT (16 MACs) per cycle on Cortex-A76/A78
        Tier::Neon => Some(8.0),     // SMLAL: 8 x 8-bit MACs, about one per cycle on Cortex-A72
        Tier::Scalar => None,
    }
}

/// The core clock in GHz: a chain of 16 dependent one-cycle register additions per loop iteration
/// (the loop's own counter runs alongside), so each iteration takes 16 cycles. The addend is a
/// register: Intel cores since Golden Cove fold chains of immediate additions at rename, which made
/// this loop read 16 GHz on a Sapphire Rapids-class Xeon.
fn clock_ghz() -> f64 {
    let n: u64 = 50_000_000;
    let t = Instant::now();
    #[allow(unused_mut)]
    let (mut left, mut acc, one) = (n, 0u64, 1u64);
    // SAFETY: register-only arithmetic
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "2:",
            "add {a}, {b}", "add {a}, {b}", "add {a}, {b}", "add {a}, {b}",
            "add {a}, {b}", "add {a}, {b}", "add {a}, {b}", "add {a}, {b}",
            "add {a}, {b}", "add {a}, {b}", "add {a}, {b}", "add {a}, {b}",
            "add {a}, {b}", "add {a}, {b}", "add {a}, {b}", "add {a}, {b}",
            "dec {n}", "jnz 2b",
            n = inout(reg) left, a = inout(reg) acc, b = in(reg) one, options(nomem, nostack))
    };
    // SAFETY: as above
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!(
            "2:",
            "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}",
            "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}",
            "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}",
            "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}", "add {a}, {a}, {b}",
            "subs {n}, {n}, #1", "b.ne 2b",
            n = inout(reg) left, a = inout(reg) acc, b = in(reg) one, options(nomem, nostack))
    };
    let _ = (left, acc, one);
    16.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// The most exact int8 multiply-accumulates per cycle this core sustains when every product is
/// also accumulated (x86: 12 independent `vpmaddwd` + `vpaddd` pairs on registers, no loads): the
/// ceiling of any exact int8 kernel without VNNI, below the 2-`vpmaddwd`-per-cycle issue rate.
#[cfg(target_arch = "x86_64")]
fn accumulate_ceiling() -> Option<f64> {
    if !std::is_x86_feature_detected!("avx2") {
        return None;
    }
    let n: u64 = 20_000_000;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let hz = clock_ghz() * 1e9;
        let t = Instant::now();
        let mut left = n;
        // SAFETY: AVX2 is present; register-only arithmetic (every ymm register is clobbered)
        unsafe {
            std::arch::asm!(
                "vpcmpeqd ymm14, ymm14, ymm14",
                "vpcmpeqd ymm15, ymm15, ymm15",
                "2:",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm0, ymm0, ymm12",
                "vpmaddwd ymm13, ymm14, ymm15", "vpaddd ymm1, ymm1, ymm13",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm2, ymm2, ymm12",
                "vpmaddwd ymm13, ymm14, ymm15", "vpaddd ymm3, ymm3, ymm13",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm4, ymm4, ymm12",
                "vpmaddwd ymm13, ymm14, ymm15", "vpaddd ymm5, ymm5, ymm13",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm6, ymm6, ymm12",
                "vpmaddwd ymm13, ymm14, ymm15", "vpaddd ymm7, ymm7, ymm13",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm8, ymm8, ymm12",
                "vpmaddwd ymm13, ymm14, ymm15", "vpaddd ymm9, ymm9, ymm13",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm10, ymm10, ymm12",
                "vpmaddwd ymm13, ymm14, ymm15", "vpaddd ymm11, ymm11, ymm13",
                "dec {n}", "jnz 2b",
                n = inout(reg) left,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _, out("ymm14") _,
                out("ymm15") _, options(nomem, nostack))
        };
        let _ = left;
        let cycles = t.elapsed().as_secs_f64() * hz / n as f64;
        best = best.min(cycles);
    }
    Some(12.0 * 16.0 / best)
}

/// The same for `VPDPBUSD` (AVX-VNNI): 12 independent accumulators on registers, 32 MACs each.
#[cfg(target_arch = "x86_64")]
fn vnni_ceiling() -> Option<f64> {
    if !Tier::AvxVnni.supported() {
        return None;
    }
    let best = best_cycles(|mut left| {
        // SAFETY: AVX-VNNI is present (the tier was detected); register-only arithmetic
        unsafe {
            std::arch::asm!(
                "vpcmpeqd ymm14, ymm14, ymm14",
                "vpcmpeqd ymm15, ymm15, ymm15",
                "2:",
                "{{vex}} vpdpbusd ymm0, ymm14, ymm15", "{{vex}} vpdpbusd ymm1, ymm14, ymm15",
                "{{vex}} vpdpbusd ymm2, ymm14, ymm15", "{{vex}} vpdpbusd ymm3, ymm14, ymm15",
                "{{vex}} vpdpbusd ymm4, ymm14, ymm15", "{{vex}} vpdpbusd ymm5, ymm14, ymm15",
                "{{vex}} vpdpbusd ymm6, ymm14, ymm15", "{{vex}} vpdpbusd ymm7, ymm14, ymm15",
                "{{vex}} vpdpbusd ymm8, ymm14, ymm15", "{{vex}} vpdpbusd ymm9, ymm14, ymm15",
                "{{vex}} vpdpbusd ymm10, ymm14, ymm15", "{{vex}} vpdpbusd ymm11, ymm14, ymm15",
                "dec {n}", "jnz 2b",
                n = inout(reg) left,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm14") _, out("ymm15") _,
                options(nomem, nostack))
        };
        let _ = left;
    });
    Some(12.0 * 32.0 / best)
}

/// The fewest cycles per iteration of `run(n)` (a register-only loop of `n` iterations) in 3 tries,
/// at the clock measured before each.
#[cfg(target_arch = "x86_64")]
fn best_cycles(run: impl Fn(u64)) -> f64 {
    let n: u64 = 20_000_000;
    (0..3)
        .map(|_| {
            let hz = clock_ghz() * 1e9;
            let t = Instant::now();
            run(n);
            t.elapsed().as_secs_f64() * hz / n as f64
        })
        .fold(f64::MAX, f64::min)
}

/// The same for `VPDPBUSD` on 512-bit registers (AVX-512 VNNI, EVEX): 12 independent accumulators,
/// 64 MACs each. Its nominal peak (128: two per cycle) is what Intel's server cores issue; cores
/// that execute 512-bit operations as two 256-bit halves (AMD Zen 4) reach about half of it.
#[cfg(target_arch = "x86_64")]
fn vnni512_ceiling() -> Option<f64> {
    if !Tier::Avx512Vnni.supported() {
        return None;
    }
    /// # Safety
    /// AVX-512F and AVX-512 VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn run(mut left: u64) {
        // SAFETY: the caller's features; register-only arithmetic
        unsafe {
            std::arch::asm!(
                "vpternlogd zmm14, zmm14, zmm14, 0xff",
                "vpternlogd zmm15, zmm15, zmm15, 0xff",
                "2:",
                "vpdpbusd zmm0, zmm14, zmm15", "vpdpbusd zmm1, zmm14, zmm15",
                "vpdpbusd zmm2, zmm14, zmm15", "vpdpbusd zmm3, zmm14, zmm15",
                "vpdpbusd zmm4, zmm14, zmm15", "vpdpbusd zmm5, zmm14, zmm15",
                "vpdpbusd zmm6, zmm14, zmm15", "vpdpbusd zmm7, zmm14, zmm15",
                "vpdpbusd zmm8, zmm14, zmm15", "vpdpbusd zmm9, zmm14, zmm15",
                "vpdpbusd zmm10, zmm14, zmm15", "vpdpbusd zmm11, zmm14, zmm15",
                "dec {n}", "jnz 2b",
                n = inout(reg) left,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
                out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
                out("zmm10") _, out("zmm11") _, out("zmm14") _, out("zmm15") _,
                options(nomem, nostack))
        };
        let _ = left;
    }
    // SAFETY: the tier was detected, so the CPU has both features
    let best = best_cycles(|n| unsafe { run(n) });
    Some(12.0 * 64.0 / best)
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni512_ceiling() -> Option<f64> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn accumulate_ceiling() -> Option<f64> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn vnni_ceiling() -> Option<f64> {
    None
}

fn variants() -> [(Variant, &'static str); 3] {
    [
        (Variant::W8A8, "W8A8"),
        (Variant::W4A8, "W4A8"),
        (Variant::W8A16, "W8A16"),
    ]
}

fn bench(c: &mut Criterion) {
    for s in SHAPES {
        let mut g = c.benchmark_group(s.name);
        g.throughput(Throughput::Elements(s.macs()));
        for (v, vname) in variants() {
            for tier in tiers() {
                if tier == Tier::Scalar && s.macs() > 100_000_000 {
                    continue; // minutes per sample
                }
                let id = format!("{vname}/{tier:?}");
                if v == Variant::W8A16 {
                    let mut j = Job::<i16>::new(s, v);
                    g.bench_function(id, |b| b.iter(|| j.run(tier)));
                } else {
                    let mut j = Job::<i8>::new(s, v);
                    g.bench_function(id, |b| b.iter(|| j.run(tier)));
                }
            }
        }
        g.finish();
    }
}

/// The fastest of `reps` timed runs of `f` (after one warm-up): on a shared machine the minimum is
/// the run least disturbed by other work.
fn fastest(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// The fastest whole op (or its staging alone, `stage_only`) of a case.
fn time_case(s: Shape, v: Variant, tier: Tier, reps: usize, stage_only: bool) -> f64 {
    fn go<T: Code>(mut j: Job<T>, tier: Tier, reps: usize, stage_only: bool) -> f64 {
        if stage_only {
            fastest(reps, || j.stage_into(tier))
        } else {
            fastest(reps, || j.run(tier))
        }
    }
    if v == Variant::W8A16 {
        go(Job::<i16>::new(s, v), tier, reps, stage_only)
    } else {
        go(Job::<i8>::new(s, v), tier, reps, stage_only)
    }
}

fn summary() {
    // The machine may be shared: every case is timed in each of `rounds` passes over the list and
    // keeps its fastest pass, so a burst of other work during one pass does not decide a figure.
    let rounds: usize = std::env::var("DMQ_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let only = std::env::var("DMQ_BENCH_SHAPE").unwrap_or_default();
    let only_tier = std::env::var("DMQ_BENCH_TIER").unwrap_or_default();
    let only_kind = std::env::var("DMQ_BENCH_KIND").unwrap_or_default();
    let more: f64 = std::env::var("DMQ_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1.0f64)
        .max(1.0);
    let mut cases = Vec::new();
    for s in SHAPES
        .into_iter()
        .filter(|s| s.name.contains(only.as_str()))
    {
        for (v, vname) in variants()
            .into_iter()
            .filter(|(_, n)| n.contains(only_kind.as_str()))
        {
            for tier in tiers()
                .into_iter()
                .filter(|&t| t != Tier::Scalar && format!("{t:?}").contains(only_tier.as_str()))
            {
                cases.push((s, v, vname, tier, f64::MAX, f64::MAX));
            }
        }
    }
    let mut ghz = 0f64;
    for _ in 0..rounds {
        ghz = ghz.max(clock_ghz());
        for (s, v, _, tier, best, stage) in cases.iter_mut() {
            let reps = ((1e9 / s.macs() as f64).clamp(5.0, 200.0) * more) as usize;
            let (s, v, tier) = (*s, *v, *tier);
            *best = best.min(time_case(s, v, tier, reps, false));
            if std::env::var("DMQ_BENCH_STAGE").is_ok() {
                *stage = stage.min(time_case(s, v, tier, reps, true));
            }
        }
    }
    println!(
        "\nsummary (fastest of {rounds} rounds of timed runs): clock {ghz:.2} GHz (dependent-add loop); peak = MAC/cycle x clock"
    );
    if let Some(c) = accumulate_ceiling() {
        println!(
            "exact accumulation ceiling of this core (vpmaddwd + vpaddd on registers): {c:.1} MAC/cycle = {:.0}% of peak",
            100.0 * c / 32.0
        );
    }
    if let Some(c) = vnni_ceiling() {
        println!(
            "int8 ceiling of AVX-VNNI (vpdpbusd on registers): {c:.1} MAC/cycle = {:.0}% of its peak (64)",
            100.0 * c / 64.0
        );
    }
    if let Some(c) = vnni512_ceiling() {
        println!(
            "int8 ceiling of AVX-512 VNNI (vpdpbusd zmm on registers): {c:.1} MAC/cycle = {:.0}% of its peak (128)",
            100.0 * c / 128.0
        );
    }
    println!(
        "{:<40} {:<6} {:<8} {:>9} {:>8}",
        "shape", "kind", "tier", "GMAC/s", "of peak"
    );
    for (s, v, vname, tier, sec, stage) in cases {
        let gmacs = s.macs() as f64 / sec / 1e9;
        let frac = peak_per_cycle(tier, v).map_or(String::from("-"), |p| {
            format!("{:.0}%", 100.0 * gmacs / (p * ghz))
        });
        let stage = if stage < f64::MAX {
            format!("  (staging {:.1}% of the op)", 100.0 * stage / sec)
        } else {
            String::new()
        };
        println!(
            "{:<40} {:<6} {:<8} {:>9.1} {:>8}{stage}",
            s.name,
            vname,
            format!("{tier:?}"),
            gmacs,
            frac
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}

fn main() {
    if std::env::args().any(|a| a == "--summary") {
        summary();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
