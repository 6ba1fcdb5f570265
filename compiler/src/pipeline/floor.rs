//! The quality floor: steps whose output SQNR (worst of two seeds no other stage uses) stays below
//! `--floor-db` with int8 activations get buckets of their own, in which the tensors that help
//! those steps most per byte are int16, within `--a16-budget` of the activation bytes (with a
//! budget of 100%, every tensor that can be); with 4-bit weights those buckets also give 8-bit
//! weights to the layers that help most.
use super::build::{Bucket, Builder, Kind, Programs};
use crate::eval;
use crate::import::FloatModel;
use crate::ir::{Program, TensorId};
use crate::memplan::Plan;
use crate::{calib, protect, CompileOptions, TimestepQuality};
use anyhow::Result;

/// How far above `--floor-db` a step must measure on the floor's probes to keep int8 activations,
/// and what the floor's int16 aims at on them.
pub(crate) const MARGIN_DB: f64 = 2.0;

/// What the floor changed: the buckets, the file and its plan, and the weak steps as measured.
pub(crate) struct Floored {
    pub buckets: Vec<Bucket>,
    pub bytes: Vec<u8>,
    pub plan: Plan,
    /// (t, SQNR) of the steps that run floor buckets, before
    pub steps: Vec<(f32, f64)>,
    /// the floor buckets' program and its 8-bit weight layers
    pub program: Program,
    pub keep8: Vec<TensorId>,
}

/// Measures `bytes` per step on probes from `trajectories` float trajectories and, when some steps
/// fall below the floor, rebuilds with floor buckets for them. `None` when every step is above it.
pub(crate) fn apply(
    b: &Builder<'_>,
    float: &FloatModel,
    (unprotected, program): (&Program, &Program),
    chosen: &[TensorId],
    bytes: &[u8],
    (evals, trajectories): (&protect::Evals, usize),
) -> Result<Option<Floored>> {
    let opts = b.opts;
    let m = dmq_runtime::Model::load(bytes).map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
    let probe_opts = CompileOptions {
        eval_samples: trajectories,
        progress: false,
        ..opts.clone()
    };
    let q = eval::sqnr_over_schedule(float, &m, &probe_opts, 3_000_000)?;
    // steps within the margin of the floor on these probes are weak: other inputs (the
    // measurement's, a user's) land a dB or two either side of them
    let weak: Vec<bool> = q
        .iter()
        .map(|q| q.min_db < opts.floor_db + MARGIN_DB)
        .collect();
    if !weak.iter().any(|&w| w) || weak.len() != b.cal.timesteps.len() {
        return Ok(None);
    }
    let (buckets, weak) = floor_buckets(b, &q, weak);
    let steps = q
        .iter()
        .zip(&weak)
        .filter(|(_, &w)| w)
        .map(|(q, _)| (q.t, q.min_db))
        .collect();
    let mut inputs = vec![];
    for seed in 0..trajectories as u64 {
        let traj = eval::measured_inputs(float, &m, opts, 3_000_000 + seed, seed << 40)?;
        inputs.extend(
            traj.into_iter()
                .enumerate()
                .filter(|(i, _)| weak[*i])
                .map(|(_, x)| x),
        );
    }
    // the floor's margin above it on the weak steps' probes
    let target = 10f64.powf(-(opts.floor_db + MARGIN_DB) / 10.0);
    let (floor_program, floor_keep8) = if opts.a16_budget >= 1.0 {
        every_tensor(b, program, chosen, (&buckets, target, &inputs, evals))?
    } else {
        within_budget(b, unprotected, chosen, (&buckets, target, &inputs, evals))?
    };
    let programs = Programs {
        floor: Some((&floor_program, &floor_keep8)),
        ..Programs::main(program, chosen)
    };
    let (bytes, plan) = b.build(programs, &buckets)?;
    let bytes = b.fold(program, bytes, &plan)?;
    Ok(Some(Floored {
        buckets,
        bytes,
        plan,
        steps,
        program: floor_program,
        keep8: floor_keep8,
    }))
}

/// What the floor's searches share: the buckets, the target error on the weak steps' probes, the
/// probes and the runtime evaluations they may make between them.
type Search<'a> = (&'a [Bucket], f64, &'a [eval::Probe], &'a protect::Evals);

/// The floor program with `--a16-budget 100`: every tensor that can be int16 is, on top of the
/// protected ones; with 4-bit weights, then the 8-bit weight layers that help the weak steps most.
fn every_tensor(
    b: &Builder<'_>,
    program: &Program,
    chosen: &[TensorId],
    search: Search<'_>,
) -> Result<(Program, Vec<TensorId>)> {
    let mut floor_program = program.clone();
    let promote: Vec<TensorId> = protect::candidates(program)
        .into_iter()
        .filter(|r| !b.invariant_roots.contains(r))
        .collect();
    protect::apply(&mut floor_program, &promote);
    floor_program.i16_headroom = true;
    let keep8 = weights8(b, &floor_program, chosen, 0.0, search)?;
    Ok((floor_program, keep8))
}

/// The floor program within the int16 budget: the floor's streams start from the other streams'
/// protected tensors (those that fit the budget, in the ranking's order) and add int16 tensors one
/// by one from there, so a floor stream measures no worse on the weak steps than the protection
/// every other stream has. (They once started from all-int8: on the photograph-patch DDPM at
/// `--a16-budget 10` the search's evaluations ran out after one tensor and the floor's steps ran
/// with less int16 than the others.) With 4-bit weights, the 8-bit weight layers that help the
/// weak steps most are chosen first (with int8 activations the weights' error dominates), then
/// the activations. Products writing an int16 tensor keep 8-bit weights.
fn within_budget(
    b: &Builder<'_>,
    unprotected: &Program,
    chosen: &[TensorId],
    search: Search<'_>,
) -> Result<(Program, Vec<TensorId>)> {
    let (buckets, target, inputs, evals) = search;
    let inv: Vec<TensorId> = chosen
        .iter()
        .filter(|r| b.invariant_roots.contains(r))
        .copied()
        .collect();
    let mut start = unprotected.clone();
    protect::apply(&mut start, &inv);
    let others: Vec<TensorId> = chosen
        .iter()
        .filter(|r| !inv.contains(r))
        .copied()
        .collect();
    let seed = protect::fitting(&start, &others, b.opts.a16_budget);
    protect::apply(&mut start, &seed);
    let base = [&inv[..], &seed[..]].concat();
    let weights8 = weights8(b, &start, &base, 0.1, search)?;
    let added = protect::floor_activations(
        &start,
        &b.invariant_roots,
        b.opts.a16_budget,
        target,
        inputs,
        evals,
        |p, added| floor_only(b, p, buckets, &[&weights8[..], added].concat()),
    )?;
    let mut floor_program = start;
    protect::apply(&mut floor_program, &added);
    let mut keep8 = weights8;
    keep8.extend(added);
    keep8.sort();
    keep8.dedup();
    Ok((floor_program, keep8))
}

/// Buckets that are intervals of t: runs of weak steps neighbouring in t become floor buckets, runs
/// of strong steps main buckets, and buckets left over split the longest runs by their ranges (the
/// file keeps `timestep_groups` streams where it can). When there are more runs than buckets, the
/// weak run least below the floor rejoins the others. Returns the buckets and which steps are
/// still weak.
fn floor_buckets(
    b: &Builder<'_>,
    q: &[TimestepQuality],
    mut weak: Vec<bool>,
) -> (Vec<Bucket>, Vec<bool>) {
    let (cal, groups) = (b.cal, b.opts.timestep_groups);
    let mut order: Vec<usize> = (0..weak.len()).collect();
    order.sort_by(|&x, &y| cal.timesteps[x].total_cmp(&cal.timesteps[y]));
    let runs = loop {
        let runs: Vec<Vec<usize>> = order
            .chunk_by(|&x, &y| weak[x] == weak[y])
            .map(|r| r.to_vec())
            .collect();
        let worst = |r: &Vec<usize>| r.iter().map(|&i| q[i].min_db).fold(f64::MAX, f64::min);
        let drop = runs
            .iter()
            .filter(|r| weak[r[0]])
            .max_by(|x, y| worst(x).total_cmp(&worst(y)));
        match drop {
            Some(r) if runs.len() > groups.max(1) => r.iter().for_each(|&i| weak[i] = false),
            _ => break runs,
        }
    };
    // every run gets a bucket and the remaining ones go to the longest runs, weak or strong: a run
    // of weak steps is split by its ranges as a strong one is (one int16 range for all steps of a
    // model whose output scale follows 1/σ lost 10 bits at its large σ)
    let mut share = vec![1usize; runs.len()];
    for _ in 0..groups.saturating_sub(runs.len()) {
        if let Some(k) = (0..runs.len())
            .filter(|&k| share[k] < runs[k].len())
            .max_by_key(|&k| runs[k].len() / share[k])
        {
            share[k] += 1;
        }
    }
    let mut split: Vec<(Vec<usize>, Option<f32>)> = Vec::new();
    for (run, g) in runs.iter().zip(share) {
        let sub_ranges: Vec<_> = run.iter().map(|&i| cal.per_step[i].clone()).collect();
        let sub_t: Vec<f32> = run.iter().map(|&i| cal.timesteps[i]).collect();
        for (steps, _) in calib::buckets_by_ranges(&sub_ranges, &sub_t, g, &cal.probs) {
            split.push((steps.iter().map(|&k| run[k]).collect(), None));
        }
    }
    split.sort_by(|x, y| cal.timesteps[x.0[0]].total_cmp(&cal.timesteps[y.0[0]]));
    let buckets = calib::with_bounds(split, &cal.timesteps)
        .into_iter()
        .map(|(steps, upper)| Bucket {
            ranges: b.ranges_of(&steps, true),
            kind: if weak[steps[0]] {
                Kind::Floor
            } else {
                Kind::Main
            },
            upper,
            steps,
        })
        .collect();
    (buckets, weak)
}

/// The layers whose weights stay 8-bit in the floor buckets: `base`, and with 4-bit weights the
/// layers that help the weak steps most per byte (each gaining more than `min_db`), chosen by
/// measuring the floor buckets running `program`.
fn weights8(
    b: &Builder<'_>,
    program: &Program,
    base: &[TensorId],
    min_db: f64,
    (buckets, target, inputs, evals): Search<'_>,
) -> Result<Vec<TensorId>> {
    if b.opts.weight_bits != 4 {
        return Ok(base.to_vec());
    }
    let single = |keep8: &[TensorId]| floor_only(b, program, buckets, keep8);
    protect::floor_weights(program, base, min_db, target, inputs, evals, single)
}

/// The floor buckets alone, built as a model of their own running `program` (with `keep8`'s
/// 8-bit weight layers): what the floor's searches measure on the weak steps.
fn floor_only(
    b: &Builder<'_>,
    program: &Program,
    buckets: &[Bucket],
    keep8: &[TensorId],
) -> Result<Vec<u8>> {
    let floor: Vec<&Bucket> = buckets.iter().filter(|b| b.kind == Kind::Floor).collect();
    let n = floor.len();
    let bs: Vec<Bucket> = floor
        .iter()
        .enumerate()
        .map(|(i, x)| Bucket {
            upper: if i + 1 < n { x.upper } else { None },
            kind: Kind::Main,
            ..(*x).clone()
        })
        .collect();
    Ok(b.build(Programs::main(program, keep8), &bs)?.0)
}
