//! The measuring code every dmq board image shares (no std, no allocator).
//!
//! A board supplies three things: a [`Clock`] (any free-running counter: a cycle counter, a timer),
//! a marker pin (any `embedded_hal::digital::OutputPin`; it changes level at every step boundary, so
//! a logic analyser or scope on that pin reads step latency without trusting the clock), and a
//! `core::fmt::Write` for the report (a UART). [`run`] loads a `.dmq`, samples from a fixed seed on
//! the device with the runtime's sampler, and prints per-step counts and the same `checksum:` line as
//! `dmq-board sample --checksum`.
#![no_std]

use core::fmt::Write;
use dmq_runtime::sampler::{sample_checksum, Rng};
use dmq_runtime::{Model, Prepared, SamplerKind, Session};
use embedded_hal::digital::OutputPin;

/// A free-running counter. `now` must not decrease (between wraps of a 64-bit count).
pub trait Clock {
    /// The current count.
    fn now(&mut self) -> u64;
    /// Counts per second, when known (0 if not).
    fn hz(&self) -> u64;
    /// What one count is, for the report ("cycles", "ticks").
    fn unit(&self) -> &'static str;
}

/// What to sample.
#[derive(Debug, Clone, Copy)]
pub struct Config<'i> {
    pub seed: u64,
    /// Denoising steps (`None`: the model's default).
    pub steps: Option<u32>,
    /// Sampler (`None`: the model's default).
    pub sampler: Option<SamplerKind>,
    /// Values of the model's extra inputs, by ONNX name.
    pub inputs: &'i [(&'i str, &'i [f32])],
}

/// Why a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The runtime refused the model or a buffer (see the message it prints).
    Runtime(dmq_runtime::Error),
    /// The latent buffer is smaller than the model's latent.
    LatentBuffer { needed: usize, got: usize },
    /// The marker pin reported an error.
    Pin,
    /// Writing the report failed.
    Output,
}

impl From<dmq_runtime::Error> for Failure {
    fn from(e: dmq_runtime::Error) -> Self {
        Failure::Runtime(e)
    }
}
impl From<core::fmt::Error> for Failure {
    fn from(_: core::fmt::Error) -> Self {
        Failure::Output
    }
}

/// Step counts the summary keeps for its median (the rest still print and count toward min/max).
pub const MAX_RECORDED_STEPS: usize = 1024;

/// What [`run`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub checksum: u64,
    pub steps: u32,
    /// Clock counts per step: median, min, max; and the whole sampler loop.
    pub median: u64,
    pub min: u64,
    pub max: u64,
    pub total: u64,
}

/// Loads `model`, samples with `cfg` into `latent` and writes the report to `out`:
/// `step I: N <unit>` per step, a summary line, and `checksum: <16 hex digits>`. `arena` must be at
/// least [`Model::arena_bytes`] long and 16-byte aligned, `plan` at least [`Model::plan_len`] slots
/// (e.g. a static `[Prepared::IDLE; N]`). The time spent writing a step's line is not counted in any
/// step.
#[allow(clippy::too_many_arguments)]
pub fn run<'b, W: Write, C: Clock, P: OutputPin>(
    model: &'b [u8],
    arena: &mut [u8],
    plan: &mut [Prepared<'b>],
    latent: &mut [f32],
    cfg: &Config<'_>,
    clock: &mut C,
    marker: &mut P,
    out: &mut W,
) -> Result<Report, Failure> {
    let m = Model::load(model)?;
    let meta = m.meta();
    let n = m.latent_len();
    let got = latent.len();
    let x = latent
        .get_mut(..n)
        .ok_or(Failure::LatentBuffer { needed: n, got })?;
    let steps = cfg.steps.unwrap_or(meta.sampler.default_steps);
    let kind = cfg.sampler.unwrap_or(meta.sampler.default_sampler.into());
    writeln!(
        out,
        "dmq: model {} bytes, arena {} bytes, latent {} values, {:?} sampler, {} steps, seed {}",
        model.len(),
        m.arena_bytes(),
        n,
        kind,
        steps,
        cfg.seed
    )?;
    let mut sess = Session::with_plan(&m, arena, plan)?;
    for (name, values) in cfg.inputs {
        sess.set_input(name, values)?;
    }
    writeln!(out, "kernel tier {:?}", sess.tier())?;
    let mut rng = Rng::new(cfg.seed);
    rng.fill_gaussian(x);

    let mut counts: heapless::Vec<u64, MAX_RECORDED_STEPS> = heapless::Vec::new();
    let (mut min, mut max, mut total) = (u64::MAX, 0u64, 0u64);
    let mut failure: Option<Failure> = None;
    let unit = clock.unit();
    let mut start = clock.now();
    sess.sample_observed(kind, steps, x, &mut rng, |i| {
        let now = clock.now();
        if i > 0 {
            let c = now.wrapping_sub(start);
            (min, max, total) = (min.min(c), max.max(c), total.wrapping_add(c));
            // the median covers the first MAX_RECORDED_STEPS steps; later ones count toward the
            // minimum, maximum and total only
            counts.push(c).ok();
            if writeln!(out, "step {}: {} {}", i - 1, c, unit).is_err() {
                failure.get_or_insert(Failure::Output);
            }
        }
        // the marker's level flips at every step boundary and ends low
        let level = if i < steps && i % 2 == 0 {
            marker.set_high()
        } else {
            marker.set_low()
        };
        if level.is_err() {
            failure.get_or_insert(Failure::Pin);
        }
        start = clock.now();
    })?;
    if let Some(f) = failure {
        return Err(f);
    }
    let median = median(&mut counts);
    let report = Report {
        checksum: sample_checksum(x),
        steps,
        median,
        min: if steps == 0 { 0 } else { min },
        max,
        total,
    };
    write!(
        out,
        "{} per step: median {}, min {}, max {}; {} steps {}",
        unit, report.median, report.min, report.max, steps, report.total
    )?;
    if clock.hz() > 0 {
        let ms = |c: u64| c as f64 * 1e3 / clock.hz() as f64;
        write!(
            out,
            " ({:.3} ms per step median at {} Hz)",
            ms(report.median),
            clock.hz()
        )?;
    }
    writeln!(out)?;
    writeln!(out, "checksum: {:016x}", report.checksum)?;
    Ok(report)
}

/// The median (lower middle) of `v`, sorting it in place; 0 when empty.
fn median(v: &mut [u64]) -> u64 {
    // insertion sort: no allocation, at most MAX_RECORDED_STEPS values once per run
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v[j - 1] > v[j] {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
    if v.is_empty() {
        0
    } else {
        v[(v.len() - 1) / 2]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_is_the_lower_middle() {
        assert_eq!(super::median(&mut []), 0);
        assert_eq!(super::median(&mut [5]), 5);
        assert_eq!(super::median(&mut [9, 1, 5, 3]), 3);
        assert_eq!(super::median(&mut [9, 1, 5, 3, 7]), 5);
    }
}
