//! Calibration: runs the float model inside the sampler the device will run and records the output
//! range of every tensor the int8 graph needs.
use crate::import::FloatModel;
use crate::quant::Range;
use anyhow::Result;
use dmq_runtime::format::SamplerConfig;
use dmq_runtime::sampler::{self, Rng, SamplerKind};
use std::collections::{HashMap, HashSet};
use tract_onnx::prelude::*;

pub struct Calibration {
    /// ranges per sampling step (index in sampling order), per tract node
    pub per_step: Vec<HashMap<usize, Range>>,
    /// a strided subsample of every observed tensor's values, per step and node (for range search)
    pub samples: Vec<HashMap<usize, Vec<f32>>>,
    /// the timestep of each sampling step
    pub timesteps: Vec<f32>,
    /// steps calibrated on forward-process probes because the trajectories had drifted
    /// (`--calib-source forward`)
    pub probed_steps: usize,
    /// steps whose trajectories drifted far from the forward process's scale (switched to probes or
    /// not)
    pub drifted_steps: usize,
    pub t_min: f32,
    pub t_max: f32,
    pub evaluations: usize,
    /// some of the trajectories' float inputs (see [`crate::quant::hessian::kept`]), for GPTQ's Hessians
    pub kept: Vec<crate::quant::hessian::KeptInput>,
    /// the products' input Hessians gathered on `kept` (empty with nearest weight rounding)
    pub hessians: crate::quant::hessian::Hessians,
    /// nodes whose values are a softmax's probabilities: recorded for their peak, and left out of
    /// the bucket boundaries' choice (their codes are not spread over a min-max range)
    pub probs: HashSet<usize>,
}

/// Whether latents `x` at timestep `t` have drifted more than 3x (in RMS) from the forward process
/// `sqrt(a)·x0 + sqrt(1-a)·eps` (or `x0 + sigma·eps` for sigma-conditioned samplers) with
/// `x0 ~ N(0, 0.5²)`; if so, a forward-process sample to use instead.
pub fn drift_probe(
    cfg: &SamplerConfig,
    kind: SamplerKind,
    t: f32,
    x: &[f32],
    seed: u64,
) -> Option<Vec<f32>> {
    let ms = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len().max(1) as f64;
    drifted(cfg, kind, t, ms.sqrt()).then(|| forward_sample(cfg, kind, t, x.len(), seed))
}

/// The forward process's signal and noise coefficients at `t`.
fn coefficients(cfg: &SamplerConfig, kind: SamplerKind, t: f32) -> (f64, f64) {
    if kind.sigma_conditioned() {
        (1.0, t as f64)
    } else {
        let a = sampler::alpha_cumprod(cfg, t as i64);
        (a.sqrt(), (1.0 - a).sqrt())
    }
}

/// Whether latents of RMS `rms` at timestep `t` are more than 3x away from the forward process's RMS.
pub(crate) fn drifted(cfg: &SamplerConfig, kind: SamplerKind, t: f32, rms: f64) -> bool {
    let (s, n) = coefficients(cfg, kind, t);
    let expected = (s * s * 0.25 + n * n).sqrt();
    rms > 3.0 * expected || rms < expected / 3.0
}

/// `sqrt(a)·x0 + sqrt(1-a)·eps` (or `x0 + sigma·eps`) with `x0 ~ N(0, 0.5²)`, `eps ~ N(0, 1)`.
pub fn forward_sample(
    cfg: &SamplerConfig,
    kind: SamplerKind,
    t: f32,
    n: usize,
    seed: u64,
) -> Vec<f32> {
    let (sa, s1a) = coefficients(cfg, kind, t);
    let (sa, s1a) = (sa as f32, s1a as f32);
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| sa * 0.5 * rng.gaussian() + s1a * rng.gaussian())
        .collect()
}

/// Union of ranges over the given steps.
pub fn union(per_step: &[HashMap<usize, Range>], steps: &[usize]) -> HashMap<usize, Range> {
    let mut out: HashMap<usize, Range> = HashMap::new();
    for &s in steps {
        for (&node, r) in &per_step[s] {
            let e = out.entry(node).or_insert(Range::new(r.min, r.max));
            e.min = e.min.min(r.min);
            e.max = e.max.max(r.max);
        }
    }
    out
}

/// Groups sampling steps into `groups` buckets of neighbouring timesteps, choosing the boundaries
/// that lose the fewest bits: a step quantized with its bucket's union range instead of its own loses
/// `log2(union width / own width)` bits per tensor. Dynamic programming over contiguous segments (in
/// ascending t) minimises the total over every tensor and step. Returns the same shape as [`buckets`].
pub fn buckets_by_ranges(
    per_step: &[HashMap<usize, Range>],
    timesteps: &[f32],
    groups: usize,
    skip: &HashSet<usize>,
) -> Vec<(Vec<usize>, Option<f32>)> {
    let s = timesteps.len();
    let g = groups.clamp(1, s.max(1));
    if g <= 1 || s <= 1 {
        return buckets(timesteps, g);
    }
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by(|&a, &b| timesteps[a].total_cmp(&timesteps[b]));
    let mut nodes: Vec<usize> = per_step.iter().flat_map(|m| m.keys().copied()).collect();
    nodes.retain(|n| !skip.contains(n));
    nodes.sort();
    nodes.dedup();
    // widths (ranges include 0, as the quantizer does)
    let lo = |st: usize, n: usize| {
        per_step[order[st]]
            .get(&n)
            .map(|r| r.min.min(0.0))
            .unwrap_or(0.0)
    };
    let hi = |st: usize, n: usize| {
        per_step[order[st]]
            .get(&n)
            .map(|r| r.max.max(0.0))
            .unwrap_or(0.0)
    };
    let w = |l: f32, h: f32| ((h - l) as f64).max(1e-12);
    // cost[i][j]: bits lost by steps i..=j sharing one range
    let mut cost = vec![vec![0f64; s]; s];
    for i in 0..s {
        let mut ul: Vec<f32> = nodes.iter().map(|&n| lo(i, n)).collect();
        let mut uh: Vec<f32> = nodes.iter().map(|&n| hi(i, n)).collect();
        let mut own_log_sum = vec![0f64; nodes.len()];
        for j in i..s {
            let mut c = 0.0;
            for (k, &n) in nodes.iter().enumerate() {
                ul[k] = ul[k].min(lo(j, n));
                uh[k] = uh[k].max(hi(j, n));
                own_log_sum[k] += w(lo(j, n), hi(j, n)).log2();
                c += (j - i + 1) as f64 * w(ul[k], uh[k]).log2() - own_log_sum[k];
            }
            cost[i][j] = c;
        }
    }
    // best[k][j]: minimal cost of splitting steps 0..=j into k+1 segments; cut[k][j]: start of the last
    let inf = f64::INFINITY;
    let mut best = vec![vec![inf; s]; g];
    let mut cut = vec![vec![0usize; s]; g];
    for j in 0..s {
        best[0][j] = cost[0][j];
    }
    for k in 1..g {
        for j in k..s {
            for i in k..=j {
                let c = best[k - 1][i - 1] + cost[i][j];
                if c < best[k][j] {
                    best[k][j] = c;
                    cut[k][j] = i;
                }
            }
        }
    }
    let mut segs = vec![];
    let mut j = s - 1;
    for k in (0..g).rev() {
        let i = if k == 0 { 0 } else { cut[k][j] };
        segs.push((i, j));
        if k > 0 {
            j = i - 1;
        }
    }
    segs.reverse();
    let out: Vec<(Vec<usize>, Option<f32>)> = segs
        .iter()
        .map(|&(i, j)| (order[i..=j].to_vec(), None))
        .collect();
    with_bounds(out, timesteps)
}

/// Sets each bucket's upper bound: the midpoint between its highest timestep and the next bucket's
/// lowest (buckets in ascending t).
pub fn with_bounds(
    mut out: Vec<(Vec<usize>, Option<f32>)>,
    timesteps: &[f32],
) -> Vec<(Vec<usize>, Option<f32>)> {
    for k in 0..out.len().saturating_sub(1) {
        let top = out[k]
            .0
            .iter()
            .map(|&s| timesteps[s])
            .fold(f32::MIN, f32::max);
        let next = out[k + 1]
            .0
            .iter()
            .map(|&s| timesteps[s])
            .fold(f32::MAX, f32::min);
        out[k].1 = Some((top + next) / 2.0);
    }
    out
}

/// Groups sampling steps into `groups` buckets of neighbouring timesteps with equal step counts. Returns, in ascending `t`,
/// each bucket's steps and the upper bound that separates it from the next (midpoint between them).
pub fn buckets(timesteps: &[f32], groups: usize) -> Vec<(Vec<usize>, Option<f32>)> {
    let mut order: Vec<usize> = (0..timesteps.len()).collect();
    order.sort_by(|&a, &b| timesteps[a].total_cmp(&timesteps[b]));
    let g = groups.clamp(1, order.len().max(1));
    let mut out = vec![];
    for k in 0..g {
        let (lo, hi) = (k * order.len() / g, (k + 1) * order.len() / g);
        out.push((order[lo..hi].to_vec(), None));
    }
    with_bounds(out, timesteps)
}

/// Values kept per observed tensor and evaluation for the range search.
const SAMPLES_PER_EVAL: usize = 128;

/// Every `len / k`-th value, starting at an offset that moves with `salt` so that repeated
/// evaluations see different positions.
fn subsample(v: &[f32], k: usize, salt: usize) -> impl Iterator<Item = f32> + '_ {
    let stride = (v.len() / k).max(1);
    let start = if stride > 1 {
        (salt.wrapping_mul(7919)) % stride
    } else {
        0
    };
    v.iter().skip(start).step_by(stride).take(k).copied()
}

/// Error-minimising int8 clipping of each node's bucket range: shrinks `[min, max]` towards 0 by a
/// factor `a` (a grid from 1 down to 0.2) and keeps the factor whose quantize-dequantize error
/// `sum |x - q(x)|^p` over the calibration samples of the bucket's steps is smallest. Sets `clip`.
pub fn refine(
    ranges: &mut HashMap<usize, Range>,
    samples: &[HashMap<usize, Vec<f32>>],
    steps: &[usize],
    p: f64,
) {
    for (node, r) in ranges.iter_mut() {
        let all: Vec<&Vec<f32>> = steps
            .iter()
            .filter_map(|&s| samples.get(s).and_then(|m| m.get(node)))
            .collect();
        let n: usize = all.iter().map(|v| v.len()).sum();
        // at most ~16k values per search
        let keep = (n / 16384).max(1);
        let vals: Vec<f32> = all
            .iter()
            .flat_map(|v| v.iter().copied())
            .step_by(keep)
            .collect();
        if vals.is_empty() {
            continue;
        }
        let err = |a: f32| -> f64 {
            let params = crate::quant::affine_params(r.min * a, r.max * a);
            vals.iter()
                .map(|&x| {
                    let d = (x - crate::quant::int8_roundtrip(x, params)).abs() as f64;
                    if p == 2.0 {
                        d * d
                    } else {
                        d.powf(p)
                    }
                })
                .sum()
        };
        let mut best = (1.0f32, err(1.0));
        for i in 1..=80 {
            let a = 1.0 - i as f32 * 0.01;
            let e = err(a);
            if e < best.1 {
                best = (a, e);
            }
        }
        r.clip = Some((r.min * best.0, r.max * best.0));
    }
}

/// The smallest and largest finite values of `v` (`(inf, -inf)` when there is none): sixteen
/// independent lanes with selects instead of branches, a non-finite value taking each side's
/// neutral element, which the compiler vectorizes (calibration runs this over every observed
/// tensor of every float evaluation; the former eight lanes with `finite && x < lo` stayed
/// scalar and took 12% of an SD-sized calibration's `perf` samples).
fn finite_min_max(v: &[f32]) -> (f32, f32) {
    const L: usize = 16;
    let (mut lo, mut hi) = ([f32::INFINITY; L], [f32::NEG_INFINITY; L]);
    let mut chunks = v.chunks_exact(L);
    for c in &mut chunks {
        for k in 0..L {
            let x = c[k];
            let finite = x.abs() < f32::INFINITY;
            let (xl, xh) = match finite {
                true => (x, x),
                false => (f32::INFINITY, f32::NEG_INFINITY),
            };
            lo[k] = if xl < lo[k] { xl } else { lo[k] };
            hi[k] = if xh > hi[k] { xh } else { hi[k] };
        }
    }
    let mut l = lo.iter().copied().fold(f32::INFINITY, f32::min);
    let mut h = hi.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in chunks.remainder() {
        if x.is_finite() {
            (l, h) = (l.min(x), h.max(x));
        }
    }
    (l, h)
}

fn observe(
    ranges: &mut HashMap<usize, Range>,
    samples: &mut HashMap<usize, Vec<f32>>,
    salt: usize,
    wanted: &HashSet<usize>,
    node: usize,
    out: &TVec<TValue>,
) {
    if wanted.contains(&node) {
        with_values(out, |s| record(ranges, samples, salt, node, s));
    }
}

/// Calls `f` with a node's first output as f32 values (nothing when it has none): the tensor itself
/// when contiguous (it is, as tract computes it), so no copy per observation.
pub fn with_values(out: &TVec<TValue>, f: impl FnOnce(&[f32])) {
    let Ok(v) = out[0].cast_to::<f32>() else {
        return;
    };
    let Ok(view) = v.to_plain_array_view::<f32>() else {
        return;
    };
    match view.as_slice() {
        Some(s) => f(s),
        None => f(&view.iter().copied().collect::<Vec<f32>>()),
    }
}

/// Widens `node`'s range by the values `s` and appends a subsample of them to its samples.
fn record(
    ranges: &mut HashMap<usize, Range>,
    samples: &mut HashMap<usize, Vec<f32>>,
    salt: usize,
    node: usize,
    s: &[f32],
) {
    let (lo, hi) = finite_min_max(s);
    if lo > hi {
        return;
    }
    let r = ranges.entry(node).or_insert(Range::new(lo, hi));
    r.min = r.min.min(lo);
    r.max = r.max.max(hi);
    samples
        .entry(node)
        .or_default()
        .extend(subsample(s, SAMPLES_PER_EVAL, salt).filter(|x| x.is_finite()));
}

/// What calibration records while the float model runs.
struct Recorder<'w> {
    wanted: &'w HashSet<usize>,
    per_step: Vec<HashMap<usize, Range>>,
    samples: Vec<HashMap<usize, Vec<f32>>>,
    timesteps: Vec<f32>,
    /// sum over trajectories of each step's mean square latent, and the count
    traj_sq: Vec<f64>,
    traj_count: Vec<usize>,
    evaluations: usize,
    t_min: f32,
    t_max: f32,
    /// inputs kept for GPTQ's statistics: (trajectory, latent, t), in step order
    kept: Vec<(usize, Vec<f32>, f32)>,
}

/// The sampler run calibration follows: configuration, sampler, steps and options.
pub struct Run<'a> {
    pub cfg: &'a SamplerConfig,
    pub kind: SamplerKind,
    pub steps: u32,
    pub opts: &'a crate::CompileOptions,
    /// forward-process probes per probed step (see `pipeline::budget::probes_per_step`)
    pub probes: usize,
}

/// Model evaluations one sampler trajectory makes (the sampler run on a zero model).
fn evaluations_per_trajectory(run: &Run<'_>) -> Result<usize> {
    let (mut x, mut buf) = (vec![0f32; 1], vec![0f32; 1]);
    let mut n = 0usize;
    sampler::sample(
        run.cfg,
        run.kind,
        run.steps,
        &mut x,
        &mut buf,
        &mut Rng::new(0),
        |_, _, out| {
            n += 1;
            out.fill(0.0);
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("calibration sampler: {e}"))?;
    Ok(n)
}

/// The extra inputs of a trajectory: conditional values, and unconditional ones with guidance.
type Inputs = (Vec<Vec<f32>>, Vec<Vec<f32>>);

impl Recorder<'_> {
    /// Widens step `i`'s ranges by `ranges` and appends `samples` after its samples.
    fn merge(
        &mut self,
        i: usize,
        ranges: HashMap<usize, Range>,
        samples: HashMap<usize, Vec<f32>>,
    ) {
        for (node, r) in ranges {
            let e = self.per_step[i].entry(node).or_insert(r);
            e.min = e.min.min(r.min);
            e.max = e.max.max(r.max);
        }
        for (node, v) in samples {
            self.samples[i].entry(node).or_default().extend(v);
        }
    }

    /// Adds what `other` recorded after what this one recorded (trajectories in seed order).
    fn absorb(&mut self, other: Recorder) {
        for (i, (ranges, samples)) in other.per_step.into_iter().zip(other.samples).enumerate() {
            self.merge(i, ranges, samples);
            if other.traj_count[i] > 0 {
                self.timesteps[i] = other.timesteps[i];
            }
            self.traj_sq[i] += other.traj_sq[i];
            self.traj_count[i] += other.traj_count[i];
        }
        self.t_min = self.t_min.min(other.t_min);
        self.t_max = self.t_max.max(other.t_max);
        self.evaluations = self.evaluations.max(other.evaluations);
        self.kept.extend(other.kept);
    }

    /// One float sampler trajectory from `seed`, observing every evaluation (with guidance both
    /// passes, each observed: both run through the int8 network).
    fn trajectory(
        &mut self,
        float: &FloatModel,
        run: &Run<'_>,
        (seed, s, trajectories): (u64, usize, usize),
        (cond, un): (&[Vec<f32>], &[Vec<f32>]),
        progress: &indicatif::ProgressBar,
    ) -> Result<()> {
        float.set_extras(cond.to_vec())?;
        let n: usize = float.latent.shape.iter().product();
        let mut rng = Rng::new(seed);
        let mut x = vec![0f32; n];
        rng.fill_gaussian(&mut x);
        let mut buf = vec![0f32; n];
        let mut step = 0usize;
        sampler::sample(
            run.cfg,
            run.kind,
            run.steps,
            &mut x,
            &mut buf,
            &mut rng,
            |xin, t, out| {
                self.t_min = self.t_min.min(t);
                self.t_max = self.t_max.max(t);
                let i = step.min(self.per_step.len() - 1);
                step += 1;
                self.timesteps[i] = t;
                let gptq = run.opts.weight_rounding == crate::WeightRounding::Gptq;
                if gptq && crate::quant::hessian::kept(i, s, self.per_step.len(), trajectories) {
                    self.kept.push((s, xin.to_vec(), t));
                }
                let (ranges, smp) = (&mut self.per_step[i], &mut self.samples[i]);
                let (salt, wanted) = (self.evaluations, self.wanted);
                self.traj_sq[i] += xin.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()
                    / xin.len().max(1) as f64;
                self.traj_count[i] += 1;
                let (y, _) =
                    crate::float_output(float, run.opts, Some((cond, un)), xin, t, |node, outs| {
                        observe(ranges, smp, salt, wanted, node, outs)
                    })
                    .map_err(|_| {
                        dmq_runtime::Error::Unsupported("float model evaluation failed")
                    })?;
                out.copy_from_slice(&y);
                self.evaluations += 1;
                progress.inc(1);
                Ok(())
            },
        )
        .map_err(|e| anyhow::anyhow!("calibration trajectory from seed {seed}: {e}"))
    }

    /// Forward-process probes: `x_t = sqrt(a)·x0 + sqrt(1-a)·eps` with `x0 ~ N(0, 0.5²)` (normalised
    /// data's scale), the latents other tools feed a denoiser. Where a model's own trajectories
    /// have drifted far from that (RMS off by more than 3x, as with untrained or weakly trained
    /// models), they do not represent the inputs the model will see and that step is calibrated on
    /// the probes instead; elsewhere (with `merge`) the probes widen the trajectories' ranges and
    /// samples. Only with `--calib-source forward` does a drifted step switch to the probes; by
    /// default drift is counted (and reported), never acted on. Returns the numbers of steps
    /// calibrated on probes and of drifted steps.
    fn probes(
        &mut self,
        float: &FloatModel,
        run: &Run<'_>,
        (count, seed0, merge): (usize, u64, bool),
        (cond, un): (&[Vec<f32>], &[Vec<f32>]),
    ) -> Result<(usize, usize)> {
        float.set_extras(cond.to_vec())?;
        let n: usize = float.latent.shape.iter().product();
        let switch = run.opts.calib_source == crate::CalibSource::Forward;
        let (mut probed, mut drifted_steps) = (0, 0);
        for (i, &t) in self.timesteps.clone().iter().enumerate() {
            let rms = (self.traj_sq[i] / self.traj_count[i].max(1) as f64).sqrt();
            let seen_drift = drifted(run.cfg, run.kind, t, rms);
            drifted_steps += seen_drift as usize;
            let drift = seen_drift && switch;
            if !drift && !merge {
                continue;
            }
            let mut probe_ranges = HashMap::new();
            let mut probe_samples = HashMap::new();
            for j in 0..count {
                let seed = seed0 ^ 0x5eed_0000 ^ ((i as u64) << 16) ^ j as u64;
                let x = forward_sample(run.cfg, run.kind, t, n, seed);
                let salt = self.evaluations;
                crate::float_output(float, run.opts, Some((cond, un)), &x, t, |node, outs| {
                    observe(
                        &mut probe_ranges,
                        &mut probe_samples,
                        salt,
                        self.wanted,
                        node,
                        outs,
                    )
                })?;
                self.evaluations += 1;
            }
            if drift {
                self.per_step[i] = probe_ranges;
                self.samples[i] = probe_samples;
                probed += 1;
            } else {
                self.merge(i, probe_ranges, probe_samples);
            }
        }
        Ok((probed, drifted_steps))
    }
}

/// Runs `trajectories` float sampler runs from seeds `seed0..`, recording ranges of `stat_nodes`,
/// then the forward-process probes (see `Recorder::probes`).
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    float: &FloatModel,
    run: &Run<'_>,
    trajectories: usize,
    seed0: u64,
    stat_nodes: &[usize],
    merge_probes: bool,
    extras: &dyn Fn(u64) -> Result<Vec<Vec<f32>>>,
    uncond: &dyn Fn(u64) -> Result<Vec<Vec<f32>>>,
    progress: &indicatif::ProgressBar,
) -> Result<Calibration> {
    let wanted: HashSet<usize> = stat_nodes.iter().copied().collect();
    let steps = run.steps as usize;
    let fresh = |evaluations| Recorder {
        wanted: &wanted,
        per_step: vec![HashMap::new(); steps],
        samples: vec![HashMap::new(); steps],
        timesteps: vec![0f32; steps],
        traj_sq: vec![0f64; steps],
        traj_count: vec![0usize; steps],
        evaluations,
        t_min: f32::INFINITY,
        t_max: f32::NEG_INFINITY,
        kept: vec![],
    };
    let guided = run.opts.guidance.is_some();
    let un_for = |seed| if guided { uncond(seed) } else { Ok(vec![]) };
    let inputs: Vec<Inputs> = (0..trajectories)
        .map(|s| {
            let seed = seed0 + s as u64;
            Ok((extras(seed)?, un_for(seed)?))
        })
        .collect::<Result<_>>()?;
    // every trajectory makes the same number of evaluations, so trajectory `s` starts at
    // evaluation `s * per` wherever it runs (the subsampling salt), and merging the trajectories
    // in seed order gives the ranges and samples of running them one after another
    let per = evaluations_per_trajectory(run)?;
    // trajectories on the cores; cores left over (fewer trajectories than cores) share tract's
    // matrix products
    let threads = crate::import::cores().min(trajectories.max(1));
    let share = crate::import::cores() / threads;
    let mut done: Vec<(usize, Recorder)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                let (float, inputs, fresh) = (float.fork(), &inputs, &fresh);
                scope.spawn(move || -> Result<Vec<(usize, Recorder)>> {
                    let executor = crate::import::tract_threads(share);
                    tract_linalg::multithread::multithread_tract_scope(executor, || {
                        let mut mine = vec![];
                        for s in (k..trajectories).step_by(threads) {
                            let mut rec = fresh(s * per);
                            let (cond, un) = &inputs[s];
                            let which = (seed0 + s as u64, s, trajectories);
                            rec.trajectory(&float, run, which, (cond, un), progress)?;
                            mine.push((s, rec));
                        }
                        Ok(mine)
                    })
                })
            })
            .collect();
        let mut all = vec![];
        for w in workers {
            all.extend(
                w.join()
                    .map_err(|_| anyhow::anyhow!("a calibration thread panicked"))??,
            );
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    done.sort_by_key(|(s, _)| *s);
    let mut rec = fresh(0);
    for (_, r) in done {
        rec.absorb(r);
    }
    // with guidance the probes go through both passes too (values of the first trajectory)
    let (cond, un) = (extras(seed0)?, un_for(seed0)?);
    let (probed_steps, drifted_steps) =
        rec.probes(float, run, (run.probes, seed0, merge_probes), (&cond, &un))?;
    Ok(Calibration {
        per_step: rec.per_step,
        samples: rec.samples,
        probed_steps,
        drifted_steps,
        timesteps: rec.timesteps,
        t_min: rec.t_min,
        t_max: rec.t_max,
        evaluations: rec.evaluations,
        kept: rec
            .kept
            .into_iter()
            .map(|(s, x, t)| crate::quant::hessian::KeptInput {
                x,
                t,
                cond: inputs[s].0.clone(),
                uncond: inputs[s].1.clone(),
            })
            .collect(),
        hessians: Default::default(),
        probs: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::finite_min_max;

    #[test]
    fn finite_min_max_equals_the_plain_fold_and_skips_non_finite_values() {
        let mut seed = 99u64;
        for len in [0usize, 1, 7, 8, 9, 63, 64, 1000] {
            let v: Vec<f32> = (0..len)
                .map(|i| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    match (seed >> 60, i % 3) {
                        (0, _) => f32::NAN,
                        (1, _) => f32::INFINITY,
                        (2, 0) => f32::NEG_INFINITY,
                        _ => ((seed >> 33) as f32 / 2e9) - 1.0,
                    }
                })
                .collect();
            let want = v
                .iter()
                .filter(|x| x.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            assert_eq!(finite_min_max(&v), want, "length {len}");
        }
    }
}
