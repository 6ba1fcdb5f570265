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
    /// the timestep of each sampling step
    pub timesteps: Vec<f32>,
    pub t_min: f32,
    pub t_max: f32,
    pub evaluations: usize,
}

/// Union of ranges over the given steps.
pub fn union(per_step: &[HashMap<usize, Range>], steps: &[usize]) -> HashMap<usize, Range> {
    let mut out: HashMap<usize, Range> = HashMap::new();
    for &s in steps {
        for (&node, r) in &per_step[s] {
            let e = out.entry(node).or_insert(*r);
            e.min = e.min.min(r.min);
            e.max = e.max.max(r.max);
        }
    }
    out
}

/// Groups sampling steps into `groups` buckets of neighbouring timesteps. Returns, in ascending `t`,
/// each bucket's steps and the upper bound that separates it from the next (midpoint between them).
pub fn buckets(timesteps: &[f32], groups: usize) -> Vec<(Vec<usize>, Option<f32>)> {
    let mut order: Vec<usize> = (0..timesteps.len()).collect();
    order.sort_by(|&a, &b| timesteps[a].partial_cmp(&timesteps[b]).unwrap());
    let g = groups.clamp(1, order.len().max(1));
    let mut out = vec![];
    for k in 0..g {
        let (lo, hi) = (k * order.len() / g, (k + 1) * order.len() / g);
        out.push((order[lo..hi].to_vec(), None));
    }
    for k in 0..g.saturating_sub(1) {
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

fn observe(
    ranges: &mut HashMap<usize, Range>,
    wanted: &HashSet<usize>,
    node: usize,
    out: &TVec<TValue>,
) {
    if !wanted.contains(&node) {
        return;
    }
    let Ok(v) = out[0].cast_to::<f32>() else {
        return;
    };
    let Ok(view) = v.to_plain_array_view::<f32>() else {
        return;
    };
    let s: Vec<f32> = view.iter().copied().collect();
    let (lo, hi) = s
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            if x.is_finite() {
                (a.min(x), b.max(x))
            } else {
                (a, b)
            }
        });
    if lo > hi {
        return;
    }
    let r = ranges.entry(node).or_insert(Range { min: lo, max: hi });
    r.min = r.min.min(lo);
    r.max = r.max.max(hi);
}

/// Runs `trajectories` float sampler runs from seeds `seed0..`, recording ranges of `stat_nodes`.
pub fn calibrate(
    float: &FloatModel,
    cfg: &SamplerConfig,
    kind: SamplerKind,
    steps: u32,
    trajectories: usize,
    seed0: u64,
    stat_nodes: &[usize],
    progress: &indicatif::ProgressBar,
) -> Result<Calibration> {
    let wanted: HashSet<usize> = stat_nodes.iter().copied().collect();
    let mut per_step: Vec<HashMap<usize, Range>> = vec![HashMap::new(); steps as usize];
    let mut timesteps = vec![0f32; steps as usize];
    let n: usize = float.latent.shape.iter().product();
    let mut evaluations = 0;
    let (mut t_min, mut t_max) = (f32::INFINITY, f32::NEG_INFINITY);
    for s in 0..trajectories {
        let mut rng = Rng::new(seed0 + s as u64);
        let mut x = vec![0f32; n];
        rng.fill_gaussian(&mut x);
        let mut buf = vec![0f32; n];
        let mut step = 0usize;
        let res = sampler::sample(
            cfg,
            kind,
            steps,
            &mut x,
            &mut buf,
            &mut rng,
            |xin, t, out| {
                t_min = t_min.min(t);
                t_max = t_max.max(t);
                let i = step.min(per_step.len() - 1);
                step += 1;
                timesteps[i] = t;
                let ranges = &mut per_step[i];
                let y = float
                    .run_observed(xin, t, |node, outs| observe(ranges, &wanted, node, outs))
                    .map_err(|_| {
                        dmq_runtime::Error::Unsupported("float model evaluation failed")
                    })?;
                out.copy_from_slice(&y);
                evaluations += 1;
                progress.inc(1);
                Ok(())
            },
        );
        res.map_err(|e| anyhow::anyhow!("calibration trajectory {s}: {e}"))?;
    }
    Ok(Calibration {
        per_step,
        timesteps,
        t_min,
        t_max,
        evaluations,
    })
}
