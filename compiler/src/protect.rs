//! Sensitivity-driven protection: int16 activations for the few tensors whose int8 quantization costs
//! the output the most. Sensitivity is measured through the runtime itself: each candidate is
//! protected alone, the model is rebuilt, and the output error over a few float-trajectory inputs
//! (weighted towards small t, where int8 collapses) is compared with the unprotected model.
use crate::eval::Probe;
use crate::ir::*;
use anyhow::{anyhow, Result};
use dmq_runtime::format as wire;
use dmq_runtime::format::{DType, Op};
use dmq_runtime::Model;

/// Whether an op can read or write an int16 tensor.
fn supports_i16(op: &IrOp) -> bool {
    !matches!(
        op,
        IrOp::Const { .. }
            | IrOp::Linear { float: true, .. }
            | IrOp::Plain(
                Op::FUnary(wire::FUnary { .. })
                    | Op::FBinary(wire::FBinary { .. })
                    | Op::FConcat(wire::FConcat { .. })
                    | Op::FLinear(wire::FLinear { .. })
            )
    )
}

/// Whether a product of two activations or a softmax reads or writes `root` (or an alias): an
/// attention's scores, probabilities, queries, keys or values. The ranking leaves them to the
/// quality floor, which makes them int16 together: ranked one at a time (on probes weighted to
/// small t) they displaced tensors that serve the int8 steps, and the trained patch DDPM lost
/// 1.0-4.1 dB at t = 381..981 (33.8 against 36.0 dB at t = 981).
fn in_attention(p: &Program, root: TensorId) -> bool {
    let g = group(p, root);
    p.ops.iter().any(|op| {
        matches!(op, IrOp::MatMul { .. } | IrOp::Softmax { .. })
            && (g.contains(&op.output()) || op.inputs().iter().any(|x| g.contains(x)))
    })
}

/// The tensors sharing `root`'s quantization (itself and its aliases).
fn group(p: &Program, root: TensorId) -> Vec<TensorId> {
    (0..p.tensors.len() as u32)
        .map(TensorId)
        .filter(|&t| p.quant_root(t) == root)
        .collect()
}

/// Int8 tensors (quantization roots) that every touching op can take at 16 bits.
pub fn candidates(p: &Program) -> Vec<TensorId> {
    let mut out = vec![];
    for i in 0..p.tensors.len() as u32 {
        let id = TensorId(i);
        let t = p.t(id);
        // fixed parameters are a softmax's probabilities (re-derived at 16 bits by `apply`) or
        // constants'
        let probs = p
            .ops
            .iter()
            .any(|op| matches!(op, IrOp::Softmax { output, .. } if *output == id));
        if t.dtype != DType::I8 || t.alias.is_some() || (t.fixed.is_some() && !probs) {
            continue;
        }
        let g = group(p, id);
        let ok = p.ops.iter().all(|op| {
            let touches = g.contains(&op.output()) || op.inputs().iter().any(|x| g.contains(x));
            !touches || supports_i16(op)
        });
        if ok {
            out.push(id);
        }
    }
    out
}

/// Makes the given roots (and their aliases) int16. Fixed int8 parameters (a softmax's
/// probabilities: steps of 1/255 from -128) become those covering the same real range at 16 bits
/// (steps of 1/65535 from -32768).
pub fn apply(p: &mut Program, roots: &[TensorId]) {
    for &r in roots {
        for t in group(p, r) {
            let tm = p.t_mut(t);
            if tm.dtype == DType::I8 {
                if let Some((s, z)) = tm.fixed {
                    let (lo, hi) = ((-128 - z) as f32 * s, (127 - z) as f32 * s);
                    tm.fixed = Some(crate::quant::activations::affine_params_for(
                        DType::I16,
                        lo,
                        hi,
                    ));
                }
            }
            tm.dtype = DType::I16;
        }
    }
}

/// The runtime evaluations a search may make (one per input per candidate measured) and those it
/// made: the compile states the budget before it starts and the count after.
#[derive(Debug)]
pub struct Evals {
    max: usize,
    used: std::cell::Cell<usize>,
    /// set when the budget could not measure every candidate on every probe: what was measured
    pub(crate) capped: std::cell::RefCell<Option<String>>,
}

impl Evals {
    pub fn new(max: usize) -> Self {
        Evals {
            max,
            used: 0.into(),
            capped: None.into(),
        }
    }
    /// What a search too large for the budget measured instead (`None`: everything).
    pub fn capped(&self) -> Option<String> {
        self.capped.borrow().clone()
    }
    pub fn used(&self) -> usize {
        self.used.get()
    }
    /// Evaluations still in the budget.
    pub fn left(&self) -> usize {
        self.max.saturating_sub(self.used.get())
    }
}

/// Mean relative squared error of the model's output over `inputs` (t, x, float output, extras),
/// counted in `evals`.
pub fn output_error(bytes: &[u8], inputs: &[Probe], evals: &Evals) -> Result<f64> {
    let errs = input_errors(bytes, inputs, evals)?;
    Ok(errs.iter().sum::<f64>() / inputs.len().max(1) as f64)
}

/// The largest of the per-step mean relative squared errors over `inputs` (grouped by their t): the
/// quality floor's measure, which holds every weak step to the target rather than their average (in
/// which the worst step's error could hide behind the others' margins).
pub fn worst_step_error(bytes: &[u8], inputs: &[Probe], evals: &Evals) -> Result<f64> {
    let errs = input_errors(bytes, inputs, evals)?;
    let mut steps: Vec<(u32, f64, usize)> = vec![];
    for ((t, ..), e) in inputs.iter().zip(errs) {
        match steps.iter_mut().find(|s| s.0 == t.to_bits()) {
            Some(s) => (s.1, s.2) = (s.1 + e, s.2 + 1),
            None => steps.push((t.to_bits(), e, 1)),
        }
    }
    Ok(steps.iter().map(|s| s.1 / s.2 as f64).fold(0.0, f64::max))
}

/// Each input's relative squared error of the model's output, counted in `evals`.
fn input_errors(bytes: &[u8], inputs: &[Probe], evals: &Evals) -> Result<Vec<f64>> {
    evals.used.set(evals.used.get() + inputs.len());
    let model = Model::load(bytes).map_err(|e| anyhow!("{e}"))?;
    let mut arena = crate::eval::arena_for(&model);
    let mut out = vec![];
    for (t, x, yf, extras) in inputs {
        let mut sess =
            crate::eval::session_for(&model, crate::eval::arena_bytes(&mut arena), extras)?;
        let mut y = vec![0f32; yf.len()];
        sess.run(x, *t, &mut y).map_err(|e| anyhow!("{e}"))?;
        let (s, e) = yf.iter().zip(&y).fold((0f64, 0f64), |(s, e), (&a, &b)| {
            (s + (a as f64).powi(2), e + (a as f64 - b as f64).powi(2))
        });
        out.push(e / s.max(1e-30));
    }
    Ok(out)
}

/// At most `n` of `cands`, those nearest the network's input and output ends (where the sensitive
/// tensors of diffusion UNets sit: the model input, the first block, the last layers), in network
/// order: the first `n` of [`ends_first`].
fn ends(cands: Vec<TensorId>, n: usize) -> Vec<TensorId> {
    let mut out = ends_first(cands);
    out.truncate(n);
    out.sort();
    out
}

/// At most `n` of `cands`, for a ranking that cannot measure them all: half of them nearest the
/// network's ends ([`ends`]), the rest those whose own int8 codes lose the most of their signal
/// (`prior`), in network order. On three trained models with a 40-evaluation budget (`dmqc eval`
/// over 8 trajectories, mean / worst step) this beat both halves alone: digits 35.03 / 28.96 dB
/// (ends alone 35.00 / 27.57, noise alone 34.70 / 29.09), photograph-patch DDPM 34.52 / 25.68
/// (34.31 / 25.68, 33.12 / 25.91), consistency 41.38 / 33.36 (the same, 32.62 / 27.61).
fn by_prior(cands: Vec<TensorId>, prior: &dyn Fn(TensorId) -> f64, n: usize) -> Vec<TensorId> {
    if cands.len() <= n {
        return cands;
    }
    let mut by: Vec<(TensorId, f64)> = cands.iter().map(|&c| (c, prior(c))).collect();
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut out = ends(cands, n / 2);
    for (c, _) in by {
        if out.len() >= n {
            break;
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.sort();
    out
}

/// `k` of `inputs`, evenly spread and always with the last (the smallest t of the last seed).
fn spread<T: Clone>(inputs: &[T], k: usize) -> Vec<T> {
    let (n, k) = (inputs.len(), k.min(inputs.len()));
    let mut idx: Vec<usize> = (0..k).map(|j| n - 1 - j * n / k).collect();
    idx.sort();
    idx.dedup();
    idx.iter().map(|&i| inputs[i].clone()).collect()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sensitivity {
    pub tensor: String,
    /// output error without protection / with only this tensor protected
    pub error_ratio: f64,
}

/// Ranks candidates by how much protecting each alone reduces the output error; returns the best
/// `budget` (those that help, in rank order, skipping any that would take the int16 share of the
/// activation bytes past `a16_budget`) and the whole ranking, within `evals`. When measuring every
/// candidate on every input does not fit, a first pass measures candidates on the last input alone
/// (the smallest t, where int8 is weakest) with half the evaluations (if not all candidates fit,
/// those [`by_prior`] picks), and the best `4 * budget` (or `budget`) go on to as many of the
/// inputs as the other half affords; when not even two inputs fit, the first pass's ranking stands.
pub fn auto(
    p: &Program,
    budget: usize,
    a16_budget: f64,
    inputs: &[Probe],
    evals: &Evals,
    prior: &dyn Fn(TensorId) -> f64,
    build: impl Fn(&Program) -> Result<Vec<u8>>,
) -> Result<(Vec<TensorId>, Vec<Sensitivity>)> {
    let mut cands: Vec<TensorId> = candidates(p)
        .into_iter()
        .filter(|&c| !in_attention(p, c))
        .collect();
    let (n, all) = (inputs.len(), cands.len());
    let measure = |cands: &[TensorId], inputs: &[Probe]| -> Result<Vec<(TensorId, f64)>> {
        let base = output_error(&build(p)?, inputs, evals)?;
        let mut out = vec![];
        for &c in cands {
            let mut q = p.clone();
            apply(&mut q, &[c]);
            out.push((
                c,
                base / output_error(&build(&q)?, inputs, evals)?.max(1e-30),
            ));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(out)
    };
    let mut ranked;
    if (cands.len() + 1) * n <= evals.left() || cands.is_empty() {
        ranked = measure(&cands, inputs)?;
    } else {
        let first_n = if n > 1 {
            evals.left() / 2
        } else {
            evals.left()
        };
        cands = by_prior(cands, prior, first_n.saturating_sub(1).max(1));
        ranked = measure(&cands, &inputs[n - 1..])?;
        let left = evals.left();
        let mut finalists = (4 * budget.max(1)).min(ranked.len());
        if left / (finalists + 1) < 2 {
            finalists = budget.max(1).min(ranked.len());
        }
        let k = (left / (finalists + 1)).min(n);
        let mut what = format!(
            "{} of {all} candidates, half nearest the network's ends and half by their int8 \
             noise, on 1 of {n} probes",
            cands.len()
        );
        if k >= 2 {
            let best: Vec<TensorId> = ranked.iter().take(finalists).map(|c| c.0).collect();
            ranked = measure(&best, &spread(inputs, k))?;
            what += &format!(", then {} on {k}", best.len());
        }
        *evals.capped.borrow_mut() = Some(what);
    }
    let mut bytes = act_bytes(p);
    let mut chosen: Vec<TensorId> = vec![];
    for &(c, r) in &ranked {
        let n = written(p, c);
        if r > 1.02 && chosen.len() < budget && within(bytes, n, a16_budget) {
            chosen.push(c);
            bytes = (bytes.0 + n, bytes.1 + 2 * n);
        }
    }
    let report = ranked
        .iter()
        .map(|(c, r)| Sensitivity {
            tensor: p.t(*c).name.clone(),
            error_ratio: *r,
        })
        .collect();
    Ok((chosen, report))
}

/// Integer activation bytes the program's ops write per evaluation (at their stored width), and the
/// int16 part of them: the int16 share that `--a16-budget` bounds.
pub fn act_bytes(p: &Program) -> (usize, usize) {
    let (mut all, mut wide) = (0, 0);
    for op in &p.ops {
        let t = p.t(op.output());
        if t.dtype.is_int() {
            all += t.bytes();
            if t.dtype == DType::I16 {
                wide += t.bytes();
            }
        }
    }
    (all, wide)
}

/// Int8 elements of `root`'s group that ops write: the bytes making it int16 adds.
fn written(p: &Program, root: TensorId) -> usize {
    let g = group(p, root);
    p.ops
        .iter()
        .map(|op| op.output())
        .filter(|o| g.contains(o) && p.t(*o).dtype == DType::I8)
        .map(|o| p.t(o).numel())
        .sum()
}

/// Whether the int16 share of `(all, int16)` activation bytes stays within `budget` when `extra`
/// more int8 elements become int16.
fn within((all, wide): (usize, usize), extra: usize, budget: f64) -> bool {
    (wide + 2 * extra) as f64 <= budget * (all + extra) as f64 + 0.5
}

/// The roots of `roots`, in their order, that `p` can make int16 with the int16 share of its
/// activation bytes staying within `a16_budget` (each taken if it still fits after the ones before).
pub fn fitting(p: &Program, roots: &[TensorId], a16_budget: f64) -> Vec<TensorId> {
    let mut q = p.clone();
    let mut out = vec![];
    for &r in roots {
        let n = written(&q, r);
        if n > 0 && within(act_bytes(&q), n, a16_budget) {
            apply(&mut q, &[r]);
            out.push(r);
        }
    }
    out
}

/// Int16 activations for the quality floor, tensor by tensor under a byte budget: each round adds
/// the candidate whose int16 codes lower the output error on `inputs` (the weak steps) the most per
/// extra activation byte, among those that keep the int16 share within `a16_budget`, until the
/// error reaches `target_err` or no candidate gains 0.05 dB. A candidate is one tensor or, in every
/// round, all the remaining tensors of one spatial size ([`levels`]; on the bundled model's t = 1
/// no single tensor gained after seven, while its 16 x 16 level gained 5.8 dB). The first round
/// measures every single candidate (those nearest the network's ends first, as far as `evals`
/// goes); later rounds only the 12 that gained most per byte in it. The search stops where `evals`
/// runs out. Returns the roots added to `p`'s int16 tensors.
pub fn floor_activations(
    p: &Program,
    skip: &std::collections::HashSet<TensorId>,
    a16_budget: f64,
    target_err: f64,
    inputs: &[Probe],
    evals: &Evals,
    build: impl Fn(&Program, &[TensorId]) -> Result<Vec<u8>>,
) -> Result<Vec<TensorId>> {
    let mut q = p.clone();
    let mut added = vec![];
    let mut err = worst_step_error(&build(&q, &added)?, inputs, evals)?;
    let all: Vec<TensorId> = candidates(p)
        .into_iter()
        .filter(|c| !skip.contains(c))
        .collect();
    let mut pool: Vec<Vec<TensorId>> = ends_first(all.clone())
        .into_iter()
        .map(|c| vec![c])
        .collect();
    let mut first = true;
    while err > target_err && evals.left() >= inputs.len() {
        let bytes = act_bytes(&q);
        // each spatial level's remaining tensors together (first: they are few), then the single
        // tensors: a weak step's signal may need a whole path at 16 bits before any one tensor of
        // it gains
        let mut cands = levels(&q, &all, &added);
        cands.extend(pool.iter().cloned());
        let mut gains = vec![];
        for c in cands {
            let n: usize = c.iter().map(|&x| written(&q, x)).sum();
            if n == 0 || !within(bytes, n, a16_budget) {
                continue;
            }
            if evals.left() < inputs.len() {
                break;
            }
            let mut t = q.clone();
            apply(&mut t, &c);
            let e = worst_step_error(&build(&t, &[&added[..], &c].concat())?, inputs, evals)?;
            // error reduction (dB) per extra byte
            let db = 10.0 * (err / e.max(1e-30)).log10();
            gains.push((c, db, db / n as f64, e));
        }
        gains.sort_by(|a, b| b.2.total_cmp(&a.2));
        if first {
            pool = gains
                .iter()
                .filter(|g| g.1 > 0.0 && g.0.len() == 1)
                .take(12)
                .map(|g| g.0.clone())
                .collect();
            first = false;
        }
        let Some((c, db, _, e)) = gains.into_iter().find(|g| g.1 >= 0.05) else {
            break;
        };
        apply(&mut q, &c);
        added.extend(&c);
        pool.retain(|x| !x.iter().any(|y| c.contains(y)));
        err = e;
        if std::env::var_os("DMQ_DEBUG_PROTECT").is_some() {
            let (all, wide) = act_bytes(&q);
            let names: Vec<&str> = c.iter().map(|&x| q.t(x).name.as_str()).collect();
            eprintln!(
                "floor int16: + {} (+{db:.2} dB) -> {:.2} dB, int16 {:.1}% of activation bytes",
                names.join(", "),
                -10.0 * err.log10(),
                100.0 * wide as f64 / all.max(1) as f64
            );
        }
    }
    Ok(added)
}

/// The candidates of `all` not yet `added`, grouped by spatial size (the pixels of an NCHW tensor,
/// the tokens of a `[batch, tokens, channels]` one): one group per size with at least two.
fn levels(p: &Program, all: &[TensorId], added: &[TensorId]) -> Vec<Vec<TensorId>> {
    let mut out: Vec<(usize, Vec<TensorId>)> = vec![];
    for &c in all.iter().filter(|c| !added.contains(c)) {
        let s = &p.t(c).shape;
        let key = match s.len() {
            4 => s[2] * s[3],
            3 => s[1],
            _ => continue,
        };
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push(c),
            None => out.push((key, vec![c])),
        }
    }
    out.into_iter()
        .filter(|(_, g)| g.len() > 1)
        .map(|(_, g)| g)
        .collect()
}

/// `items` reordered from the network's two ends inwards (first, last, second, second to last, …),
/// the order in which a search that may not measure them all takes them.
fn ends_first<T: Copy>(items: Vec<T>) -> Vec<T> {
    let (mut i, mut j) = (0, items.len());
    let mut out = Vec::with_capacity(items.len());
    while i < j {
        out.push(items[i]);
        i += 1;
        if i < j {
            j -= 1;
            out.push(items[j]);
        }
    }
    out
}

/// Resolves tensor names given with `--protect NAME,...` (ONNX/tract node names of int8 tensors).
pub fn by_names(p: &Program, names: &[String]) -> Result<Vec<TensorId>> {
    let cands = candidates(p);
    names
        .iter()
        .map(|n| {
            cands
                .iter()
                .copied()
                .find(|&c| p.t(c).name == *n)
                .ok_or_else(|| {
                    anyhow!(
                        "--protect {n:?}: no protectable int8 tensor of that name (candidates: {})",
                        cands
                            .iter()
                            .map(|&c| p.t(c).name.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
        })
        .collect()
}

/// 8-bit weights for the quality floor when the body is 4-bit: greedily adds, one layer per round,
/// the weight layer whose 8-bit weights lower the output error on `inputs` (the weak steps) the most
/// per extra byte, among those that lower it by more than `min_db`, until the error reaches
/// `target_err` or no layer does. The first round measures every layer (those nearest the
/// network's ends first), and so does every [`FULL_EVERY`]th. The rounds between are lazy
/// (Minoux's accelerated greedy): a gain measured against a smaller set bounds the gain against a
/// larger one when gains diminish, so such a round re-measures layers best-bound first and stops
/// at the first whose gain measured against the current set is still the best. That takes a few
/// runtime evaluations per round where measuring every layer took one per layer, so the search
/// goes further within `evals`; where `evals` runs out it takes the best layer measured against
/// the current set. Returns the output tensors
/// (quantization roots) whose producing products keep 8-bit weights, starting from `keep8`.
pub fn floor_weights(
    p: &Program,
    keep8: &[TensorId],
    min_db: f64,
    target_err: f64,
    inputs: &[Probe],
    evals: &Evals,
    build: impl Fn(&[TensorId]) -> Result<Vec<u8>>,
) -> Result<Vec<TensorId>> {
    let mut set = keep8.to_vec();
    let mut err = worst_step_error(&build(&set)?, inputs, evals)?;
    let mut pool: Vec<(TensorId, usize)> = vec![];
    for op in &p.ops {
        if let IrOp::Conv { output, w, .. }
        | IrOp::Linear {
            output,
            w,
            float: false,
            ..
        } = op
        {
            let root = p.quant_root(*output);
            if !set.contains(&root) && !pool.iter().any(|(r, _)| *r == root) {
                pool.push((root, w.len()));
            }
        }
    }
    // per layer: its last measured gain (dB, dB per extra weight byte, error) and the round it
    // was measured in; unmeasured layers rank first, in the pool's order
    let mut cands: Vec<Cand> = ends_first(pool)
        .into_iter()
        .map(|(root, n)| Cand {
            root,
            n,
            gain: (f64::INFINITY, f64::INFINITY, 0.0),
            round: None,
        })
        .collect();
    let mut round = 0usize;
    let measure = |c: &mut Cand, set: &[TensorId], err: f64, round: usize| -> Result<()> {
        let mut s = set.to_vec();
        s.push(c.root);
        let e = worst_step_error(&build(&s)?, inputs, evals)?;
        let db = 10.0 * (err / e.max(1e-30)).log10();
        c.gain = (db, db / (c.n as f64 / 2.0), e);
        c.round = Some(round);
        Ok(())
    };
    while err > target_err && !cands.is_empty() {
        if round.is_multiple_of(FULL_EVERY) {
            // every layer measured against the current set: gains that grew are found too
            for c in cands.iter_mut() {
                if evals.left() < inputs.len() {
                    break;
                }
                measure(c, &set, err, round)?;
            }
        }
        let mut pick = None;
        loop {
            // the best bound among layers not ruled out this round (measured now and too small)
            let open = |c: &Cand| !(c.round == Some(round) && c.gain.0 <= min_db);
            let mut best: Option<usize> = None;
            for (i, c) in cands.iter().enumerate() {
                if open(c) && best.is_none_or(|b| c.gain.1 > cands[b].gain.1) {
                    best = Some(i);
                }
            }
            let Some(i) = best else { break };
            if cands[i].round == Some(round) {
                pick = Some(i);
                break;
            }
            if evals.left() < inputs.len() {
                // out of evaluations: the best layer measured against the current set, if any
                pick = cands
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.round == Some(round) && c.gain.0 > min_db)
                    .max_by(|a, b| a.1.gain.1.total_cmp(&b.1.gain.1))
                    .map(|(i, _)| i);
                break;
            }
            measure(&mut cands[i], &set, err, round)?;
        }
        let Some(i) = pick else { break };
        let c = cands.remove(i);
        set.push(c.root);
        err = c.gain.2;
        round += 1;
        if std::env::var_os("DMQ_DEBUG_PROTECT").is_some() {
            eprintln!(
                "floor weights: + {} -> {:.2} dB ({} evaluations used)",
                p.t(c.root).name,
                -10.0 * err.log10(),
                evals.used.get()
            );
        }
    }
    Ok(set)
}

/// Every this many rounds [`floor_weights`] measures every layer, not only the best bounds: adding
/// layers can make another help more (the output convolution's 8-bit weights gained 6.7 dB at the
/// bundled model's weak steps once 23 other layers had 8-bit weights, and little before).
const FULL_EVERY: usize = 4;

/// A layer of [`floor_weights`]' search.
struct Cand {
    root: TensorId,
    /// weights
    n: usize,
    /// (dB, dB per extra weight byte, error) when measured
    gain: (f64, f64, f64),
    round: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_that_cannot_measure_all_takes_the_ends_and_spreads_its_probes() {
        let ids: Vec<TensorId> = (0..10).map(TensorId).collect();
        let pick = |n| ends(ids.clone(), n).iter().map(|t| t.0).collect::<Vec<_>>();
        assert_eq!(pick(4), [0, 1, 8, 9]);
        assert_eq!(pick(5), [0, 1, 2, 8, 9]);
        assert_eq!(pick(1), [0]);
        assert_eq!(pick(20), (0..10).collect::<Vec<_>>());
        let order: Vec<u32> = ends_first(ids).iter().map(|t| t.0).collect();
        assert_eq!(order, [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]);
        // two seeds of six probes each, ascending step (the last of each is the smallest t)
        let probes: Vec<usize> = (0..12).collect();
        assert_eq!(spread(&probes, 2), [5, 11]);
        assert_eq!(spread(&probes, 3), [3, 7, 11]);
        assert_eq!(spread(&probes, 12), probes);
        assert_eq!(spread(&probes, 40), probes);
        assert_eq!(spread(&probes, 1), [11]);
        // half from the ends, the rest by the prior (the worst local noise), in network order
        let ids: Vec<TensorId> = (0..10).map(TensorId).collect();
        let noise = |c: TensorId| [0.0, 0.0, 0.1, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.9][c.0 as usize];
        let picked: Vec<u32> = by_prior(ids.clone(), &noise, 4)
            .iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(picked, [0, 3, 5, 9]);
        assert_eq!(by_prior(ids.clone(), &noise, 10), ids);
    }
}
