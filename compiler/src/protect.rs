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
        IrOp::MatMul { .. }
            | IrOp::Softmax { .. }
            | IrOp::Const { .. }
            | IrOp::Linear { float: true, .. }
            | IrOp::Plain(
                Op::FUnary(wire::FUnary { .. })
                    | Op::FBinary(wire::FBinary { .. })
                    | Op::FConcat(wire::FConcat { .. })
                    | Op::FLinear(wire::FLinear { .. })
            )
    )
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
        if t.dtype != DType::I8 || t.alias.is_some() || t.fixed.is_some() {
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

/// Makes the given roots (and their aliases) int16.
pub fn apply(p: &mut Program, roots: &[TensorId]) {
    for &r in roots {
        for t in group(p, r) {
            p.t_mut(t).dtype = DType::I16;
        }
    }
}

/// Mean relative squared error of the model's output over `inputs` (t, x, float output, extras).
pub fn output_error(bytes: &[u8], inputs: &[Probe]) -> Result<f64> {
    let model = Model::load(bytes).map_err(|e| anyhow!("{e}"))?;
    let mut arena = crate::eval::arena_for(&model);
    let mut total = 0.0;
    for (t, x, yf, extras) in inputs {
        let mut sess =
            crate::eval::session_for(&model, crate::eval::arena_bytes(&mut arena), extras)?;
        let mut y = vec![0f32; yf.len()];
        sess.run(x, *t, &mut y).map_err(|e| anyhow!("{e}"))?;
        let (s, e) = yf.iter().zip(&y).fold((0f64, 0f64), |(s, e), (&a, &b)| {
            (s + (a as f64).powi(2), e + (a as f64 - b as f64).powi(2))
        });
        total += e / s.max(1e-30);
    }
    Ok(total / inputs.len().max(1) as f64)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sensitivity {
    pub tensor: String,
    /// output error without protection / with only this tensor protected
    pub error_ratio: f64,
}

/// Ranks candidates by how much protecting each alone reduces the output error; returns the best
/// `budget` (those that help, in rank order, skipping any that would take the int16 share of the
/// activation bytes past `a16_budget`) and the whole ranking. When measuring every candidate on every input
/// would exceed `max_evals` model evaluations, a first pass measures all candidates on the last input
/// alone (the smallest t, where int8 is weakest) and only the best `4 * budget` go on to the full set;
/// with more candidates than `max_evals`, only those nearest the network's input and output are tried.
pub fn auto(
    p: &Program,
    budget: usize,
    a16_budget: f64,
    inputs: &[Probe],
    max_evals: usize,
    build: impl Fn(&Program) -> Result<Vec<u8>>,
) -> Result<(Vec<TensorId>, Vec<Sensitivity>)> {
    let mut cands = candidates(p);
    if cands.len() + 1 > max_evals {
        // too many to measure even once each: the input and output ends of the network, where the
        // sensitive tensors of diffusion UNets sit (the model input, the first block, the last layers)
        let h = (max_evals / 2).max(1);
        let tail = cands.split_off(cands.len().saturating_sub(h));
        cands.truncate(h);
        cands.extend(tail);
    }
    if (cands.len() + 1) * inputs.len() > max_evals && inputs.len() > 1 && !cands.is_empty() {
        let last = &inputs[inputs.len() - 1..];
        let base = output_error(&build(p)?, last)?;
        let mut first = vec![];
        for &c in &cands {
            let mut q = p.clone();
            apply(&mut q, &[c]);
            first.push((c, base / output_error(&build(&q)?, last)?.max(1e-30)));
        }
        first.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        cands = first.iter().take(4 * budget.max(1)).map(|c| c.0).collect();
    }
    let base = output_error(&build(p)?, inputs)?;
    let mut ranked = vec![];
    for c in cands {
        let mut q = p.clone();
        apply(&mut q, &[c]);
        let e = output_error(&build(&q)?, inputs)?;
        ranked.push((c, base / e.max(1e-30)));
    }
    ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
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

/// Int16 activations for the quality floor, tensor by tensor under a byte budget: each round adds
/// the candidate whose int16 codes lower the output error on `inputs` (the weak steps) the most per
/// extra activation byte, among those that keep the int16 share within `a16_budget`, until the
/// error reaches `target_err` or no candidate gains 0.05 dB. The first round measures every
/// candidate; later rounds only the 12 that gained most per byte in it (and the whole search stops
/// at about `max_evals` model evaluations). Returns the roots added to `p`'s int16 tensors.
pub fn floor_activations(
    p: &Program,
    skip: &std::collections::HashSet<TensorId>,
    a16_budget: f64,
    target_err: f64,
    inputs: &[Probe],
    max_evals: usize,
    build: impl Fn(&Program, &[TensorId]) -> Result<Vec<u8>>,
) -> Result<Vec<TensorId>> {
    let mut q = p.clone();
    let mut added = vec![];
    let mut err = output_error(&build(&q, &added)?, inputs)?;
    let mut pool: Vec<TensorId> = candidates(p)
        .into_iter()
        .filter(|c| !skip.contains(c))
        .collect();
    let mut evals = inputs.len();
    let mut first = true;
    while err > target_err && !pool.is_empty() && evals < max_evals.max(1) {
        let bytes = act_bytes(&q);
        let mut gains = vec![];
        for &c in &pool {
            let n = written(&q, c);
            if n == 0 || !within(bytes, n, a16_budget) {
                continue;
            }
            let mut t = q.clone();
            apply(&mut t, &[c]);
            let e = output_error(&build(&t, &[&added[..], &[c]].concat())?, inputs)?;
            evals += inputs.len();
            // error reduction (dB) per extra byte
            let db = 10.0 * (err / e.max(1e-30)).log10();
            gains.push((c, db, db / n as f64, e));
        }
        gains.sort_by(|a, b| b.2.total_cmp(&a.2));
        if first {
            pool = gains
                .iter()
                .filter(|g| g.1 > 0.0)
                .take(12)
                .map(|g| g.0)
                .collect();
            first = false;
        }
        let Some(&(c, db, _, e)) = gains.iter().find(|g| g.1 >= 0.05) else {
            break;
        };
        apply(&mut q, &[c]);
        added.push(c);
        pool.retain(|&x| x != c);
        err = e;
        if std::env::var_os("DMQ_DEBUG_PROTECT").is_some() {
            let (all, wide) = act_bytes(&q);
            eprintln!(
                "floor int16: + {} (+{db:.2} dB) -> {:.2} dB, int16 {:.1}% of activation bytes",
                q.t(c).name,
                -10.0 * err.log10(),
                100.0 * wide as f64 / all.max(1) as f64
            );
        }
    }
    Ok(added)
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
/// `target_err` or no layer does. Returns the output tensors
/// (quantization roots) whose producing products keep 8-bit weights, starting from `keep8`.
pub fn floor_weights(
    p: &Program,
    keep8: &[TensorId],
    min_db: f64,
    target_err: f64,
    inputs: &[Probe],
    build: impl Fn(&[TensorId]) -> Result<Vec<u8>>,
) -> Result<Vec<TensorId>> {
    let mut set = keep8.to_vec();
    let mut err = output_error(&build(&set)?, inputs)?;
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
    while err > target_err && !pool.is_empty() {
        let mut best: Option<(usize, f64, f64)> = None;
        for (i, &(root, n)) in pool.iter().enumerate() {
            let mut s = set.clone();
            s.push(root);
            let e = output_error(&build(&s)?, inputs)?;
            // error reduction (dB) per extra weight byte, for layers gaining more than `min_db`
            let db = 10.0 * (err / e.max(1e-30)).log10();
            let gain = db / (n as f64 / 2.0);
            if db > min_db && best.is_none_or(|b| gain > b.2) {
                best = Some((i, e, gain));
            }
        }
        let Some((i, e, _)) = best else { break };
        let (root, _) = pool.remove(i);
        set.push(root);
        err = e;
        if std::env::var_os("DMQ_DEBUG_PROTECT").is_some() {
            eprintln!(
                "floor weights: + {} -> {:.2} dB",
                p.t(root).name,
                -10.0 * err.log10()
            );
        }
    }
    Ok(set)
}
