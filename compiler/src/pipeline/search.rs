//! The measured searches before the build: 16-bit weights for the products that need them, then
//! int16 activations for the most sensitive tensors, both on the same probes through the runtime.
use super::budget::Budget;
use super::build::{Bucket, Builder, Programs};
use super::{internal, Phases};
use crate::eval::{self, Probe};
use crate::import::FloatModel;
use crate::ir::{Program, TensorId};
use crate::options::{CompileOptions, Protect};
use crate::{protect, split_weights};
use anyhow::{bail, Result};
use dmq_runtime::Model;

/// What the searches chose: the program with its 16-bit-weight products split, the tensors for
/// int16, and what each measured.
pub(super) struct Searched {
    pub program: Program,
    pub w16: split_weights::Chosen,
    pub chosen: Vec<TensorId>,
    pub sensitivity: Vec<protect::Sensitivity>,
    /// `program` with the chosen tensors int16 (all of them for `--protect all`)
    pub protected: Program,
    /// the one-range all-int8 build of `program` (the baseline the measurement and its guard
    /// compare with): the one the searches started from, or rebuilt with the split products
    pub baseline: Vec<u8>,
}

/// Both searches (their probes drawn once), each timed as a phase of its own.
pub(super) fn run(
    b: &Builder<'_>,
    float: &FloatModel,
    program: &Program,
    buckets: &[Bucket],
    unprotected: &[u8],
    budget: &Budget,
    clock: &mut Phases,
) -> Result<Searched> {
    let opts = b.opts;
    let probes = if matches!(opts.protect, Protect::Auto(_)) || opts.w16_budget > 0.0 {
        Some(ranking_probes(float, unprotected, opts, budget)?)
    } else {
        None
    };
    let (split, w16) = weights16(b, program, buckets, probes.as_ref(), budget)?;
    clock.mark("16-bit weights");
    let (chosen, sensitivity) = protection(b, &split, buckets, probes.as_ref(), budget)?;
    clock.mark("sensitivity ranking");
    let baseline = match w16.layers.is_empty() {
        true => unprotected.to_vec(),
        false => b.build(Programs::main(&split, &[]), &b.baseline())?.0,
    };
    let mut protected = split.clone();
    protect::apply(&mut protected, &chosen);
    protected.i16_headroom = matches!(opts.protect, Protect::All);
    Ok(Searched {
        program: split,
        w16,
        chosen,
        sensitivity,
        protected,
        baseline,
    })
}

/// 16-bit weights for the products that need them ([`split_weights::auto`]), measured through the
/// runtime on the ranking's probes with every tensor that can be int16 at 16 bits: the weights'
/// error, not hidden under the int8 activations' (the steps that need it run so, the floor's).
fn weights16(
    b: &Builder<'_>,
    program: &Program,
    buckets: &[Bucket],
    probes: Option<&(Vec<Probe>, Vec<usize>)>,
    budget: &Budget,
) -> Result<(Program, split_weights::Chosen)> {
    let Some((inputs, _)) = probes else {
        return Ok((program.clone(), Default::default()));
    };
    split_weights::auto(
        program,
        b.opts.w16_budget,
        // integer products split only with 8-bit weights (a 4-bit layer's high part would lose
        // its grid) and without an int16 byte budget: their W_hi branches' int16 bytes count in
        // it, and the bundled model's t = 1 under --a16-budget 10 fell from 19.6 to 17.3 dB where
        // they took the floor's bytes
        b.opts.weight_bits == 8 && b.opts.a16_budget >= 1.0,
        inputs,
        &budget.weights,
        |p| {
            let mut q = p.clone();
            protect::apply(&mut q, &protect::candidates(p));
            q.i16_headroom = true;
            Ok(b.build(Programs::main(&q, &[]), buckets)?.0)
        },
    )
}

/// The tensors that get int16 activations, and the sensitivity ranking when it was measured.
fn protection(
    b: &Builder<'_>,
    program: &Program,
    buckets: &[Bucket],
    probes: Option<&(Vec<Probe>, Vec<usize>)>,
    budget: &Budget,
) -> Result<(Vec<TensorId>, Vec<protect::Sensitivity>)> {
    let opts = b.opts;
    Ok(match (&opts.protect, probes) {
        (Protect::None, _) => (vec![], vec![]),
        (Protect::Names(names), _) => (protect::by_names(program, names)?, vec![]),
        (Protect::All, _) => (protect::candidates(program), vec![]),
        (Protect::Auto(k), Some((inputs, picks))) => protect::auto(
            program,
            *k,
            opts.a16_budget,
            inputs,
            &budget.ranking,
            &|c| local_noise(b, program, buckets, picks, c),
            |p| Ok(b.build(Programs::main(p, &[]), buckets)?.0),
        )?,
        (Protect::Auto(_), None) => bail!("internal error: a ranking without probes"),
    })
}

/// The searches' probes: the inputs of a few steps (weighted to small t, where int8 is weakest)
/// of `budget.probe_trajectories` float trajectories, and those steps.
fn ranking_probes(
    float: &FloatModel,
    unprotected: &[u8],
    opts: &CompileOptions,
    budget: &Budget,
) -> Result<(Vec<Probe>, Vec<usize>)> {
    let m0 = Model::load(unprotected).map_err(internal)?;
    let s = opts.steps as usize;
    let mut picks = vec![
        s - 1,
        s.saturating_sub(2),
        s.saturating_sub(4),
        s * 4 / 5,
        s / 2,
        0,
    ];
    picks.sort();
    picks.dedup();
    let mut inputs = vec![];
    for seed in 0..budget.probe_trajectories as u64 {
        let traj = eval::measured_inputs(float, &m0, opts, 2_000_000 + seed, seed << 48)?;
        inputs.extend(picks.iter().filter_map(|&i| traj.get(i).cloned()));
    }
    Ok((inputs, picks))
}

/// The share of a tensor's signal its own int8 codes lose (rounding and clipping with its
/// bucket's parameters) over the calibration samples of `steps`, before any other layer's error:
/// the prior that picks which candidates a ranking too large for its budget measures.
fn local_noise(
    b: &Builder<'_>,
    program: &Program,
    buckets: &[Bucket],
    steps: &[usize],
    c: TensorId,
) -> f64 {
    let Some(stat) = program.t(c).stat else {
        return 0.0;
    };
    let (mut noise, mut signal) = (0f64, 0f64);
    for &s in steps {
        let range = buckets
            .iter()
            .find(|k| k.steps.contains(&s))
            .and_then(|k| k.ranges.get(&stat));
        let (Some(r), Some(vals)) = (range, b.cal.samples.get(s).and_then(|m| m.get(&stat))) else {
            continue;
        };
        let params = if program.t(c).probs {
            crate::quant::activations::probs_params(dmq_runtime::format::DType::I8, r.max)
        } else {
            crate::quant::affine_params(r.min, r.max)
        };
        for &x in vals {
            noise += ((x - crate::quant::int8_roundtrip(x, params)) as f64).powi(2);
            signal += (x as f64).powi(2);
        }
    }
    noise / signal.max(1e-30)
}
