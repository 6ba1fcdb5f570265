//! Offline arena plan: every tensor gets an offset such that tensors alive at the same time never
//! overlap (greedy by size, first fit), then the sampler state goes at the end.
use crate::ir::{Program, TensorId};
use dmq_runtime::format::{Op, ARENA_ALIGN};

pub struct Plan {
    /// Leading ops of every stream that depend only on the extra inputs (see [`hoist_invariant`]).
    pub invariant_ops: usize,
    /// The outputs of those ops that later ops read fill `arena[..invariant_bytes]`.
    pub invariant_bytes: u32,
    /// The program op each stream position holds (the invariant ops first; identity otherwise).
    pub order: Vec<usize>,
    pub offsets: Vec<u32>,
    pub scratch: Vec<u32>,
    pub sampler_state: u32,
    pub arena_bytes: u32,
    /// Sum of all tensor sizes (what a plan without reuse would need).
    pub naive_bytes: usize,
}

fn align(x: usize) -> usize {
    x.div_ceil(ARENA_ALIGN as usize) * ARENA_ALIGN as usize
}

/// Moves the ops that depend only on the extra inputs (and constants) to the front of every stream,
/// keeping their order (they need nothing that comes after them), and returns how many there are
/// and the program op at each stream position. Every stream gets the same permutation; when the
/// streams' ops disagree on it, nothing moves.
pub fn hoist_invariant(
    p: &Program,
    streams: &mut [(crate::quant::Quantized, Option<f32>)],
) -> (usize, Vec<usize>) {
    let perm = |ops: &[Op<TensorId>]| -> (Vec<usize>, usize) {
        // invariant: every input is an extra input or the output of an invariant op (constants count)
        let mut inv: std::collections::HashSet<TensorId> = p.extras.iter().map(|e| e.1).collect();
        let mut candidate = vec![false; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            if op.inputs().iter().all(|t| inv.contains(t)) {
                inv.insert(*op.output());
                candidate[i] = true;
            }
        }
        // hoist the invariant ops that read something, and only the constants they read: a constant
        // left in place is rewritten where it is used, not pinned in the arena
        let read: std::collections::HashSet<TensorId> = ops
            .iter()
            .zip(&candidate)
            .filter(|&(op, &c)| c && !op.inputs().is_empty())
            .flat_map(|(op, _)| op.inputs())
            .collect();
        let hoist = |i: usize| {
            candidate[i] && (!ops[i].inputs().is_empty() || read.contains(ops[i].output()))
        };
        let (mut front, rest): (Vec<usize>, Vec<usize>) = (0..ops.len()).partition(|&i| hoist(i));
        let k = front.len();
        front.extend(rest);
        (front, k)
    };
    let Some(first) = streams.first() else {
        return (0, vec![]);
    };
    let identity = (0, (0..first.0.ops.len()).collect());
    let (order, k) = perm(&first.0.ops);
    if k == 0 || streams.iter().any(|s| perm(&s.0.ops) != (order.clone(), k)) {
        return identity;
    }
    for (s, _) in streams.iter_mut() {
        s.ops = order.iter().map(|&i| s.ops[i].clone()).collect();
        s.scratch = order.iter().map(|&i| s.scratch[i]).collect();
    }
    (k, order)
}

/// Arena plan for `ops`; the outputs of the first `invariant_ops` ops that later ops read stay live
/// for the whole evaluation and across evaluations (the runtime keeps them between steps), as do the
/// inputs.
pub fn plan(p: &Program, ops: &[Op<TensorId>], scratch: &[usize], invariant_ops: usize) -> Plan {
    let n_ops = ops.len();
    let nt = p.tensors.len();
    // lifetime [first, last] in op indices; inputs live from -1, the output to the end
    let mut first = vec![i64::MAX; nt];
    let mut last = vec![i64::MIN; nt];
    for (i, op) in ops.iter().enumerate() {
        let o = op.output().0 as usize;
        first[o] = first[o].min(i as i64);
        last[o] = last[o].max(i as i64);
        for t in op.inputs() {
            let t = t.0 as usize;
            first[t] = first[t].min(i as i64);
            last[t] = last[t].max(i as i64);
        }
    }
    for t in [p.latent, p.timestep]
        .into_iter()
        .flatten()
        .chain(p.extras.iter().map(|e| e.1))
    {
        first[t.0 as usize] = -1;
    }
    if let Some(o) = p.output {
        last[o.0 as usize] = n_ops as i64;
    }
    let mut pinned = vec![];
    for op in &ops[..invariant_ops.min(n_ops)] {
        let o = op.output().0 as usize;
        if last[o] >= invariant_ops as i64 {
            first[o] = -1;
            last[o] = n_ops as i64;
            pinned.push(o);
        }
    }
    // items: tensors, then per-op scratch
    struct Item {
        size: usize,
        first: i64,
        last: i64,
        off: usize,
    }
    let mut items: Vec<Item> = (0..nt)
        .map(|t| Item {
            size: if first[t] == i64::MAX {
                0
            } else {
                p.tensors[t].bytes()
            },
            first: first[t],
            last: last[t],
            off: 0,
        })
        .collect();
    for (i, &s) in scratch.iter().enumerate() {
        items.push(Item {
            size: s,
            first: i as i64,
            last: i as i64,
            off: 0,
        });
    }
    let naive_bytes: usize = items.iter().map(|i| align(i.size)).sum();
    let mut order: Vec<usize> = (0..items.len()).filter(|&i| items[i].size > 0).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(items[i].size), i));
    // the pinned outputs first, side by side at the start of the arena: the runtime keeps a second
    // set of them (classifier-free guidance's unconditional pass) by swapping that one range
    let mut placed: Vec<usize> = vec![];
    let mut top = 0usize;
    for &i in &pinned {
        items[i].off = top;
        top += align(items[i].size);
        placed.push(i);
    }
    let invariant_bytes = top;
    for &i in order.iter().filter(|i| !pinned.contains(i)) {
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| items[j].first <= items[i].last && items[i].first <= items[j].last)
            .map(|&j| (items[j].off, items[j].off + align(items[j].size)))
            .collect();
        busy.sort();
        let mut off = 0usize;
        for (s, e) in busy {
            if off + align(items[i].size) <= s {
                break;
            }
            off = off.max(e);
        }
        items[i].off = off;
        top = top.max(off + align(items[i].size));
        placed.push(i);
    }
    let offsets = (0..nt).map(|t| items[t].off as u32).collect();
    let scratch = (0..scratch.len())
        .map(|i| items[nt + i].off as u32)
        .collect();
    let state = align(top);
    let latent_bytes = p.latent.map(|l| p.t(l).bytes()).unwrap_or(0);
    Plan {
        invariant_ops,
        invariant_bytes: invariant_bytes as u32,
        order: (0..n_ops).collect(),
        offsets,
        scratch,
        sampler_state: state as u32,
        arena_bytes: align(state + latent_bytes) as u32,
        naive_bytes: naive_bytes + latent_bytes,
    }
}
