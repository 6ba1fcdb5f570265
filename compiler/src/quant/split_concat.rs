//! Split skip concats (Q-Diffusion): a decoder concat whose parts come from different depths keeps
//! each part at its own symmetric scale when that loses fewer bits than one shared range; the
//! GroupNorms that read it take per-channel scales, and a slice that cuts out one part reads that
//! part's scale.
use crate::ir::{IrOp, Program, TensorId};
use dmq_runtime::format::{self as wire, DType, Op};
use std::collections::HashMap;

/// Concats along channels (rank 4, int8) whose only readers are GroupNorms and channel slices that
/// cut out exactly one part: their parts can keep their own scales (a decoder's skip concat, whose
/// parts come from different depths). Returns the concat outputs and, per part-slice, (slice output,
/// part index).
pub fn split_concats(p: &Program) -> (Vec<TensorId>, Vec<(TensorId, TensorId, usize)>) {
    let mut out = vec![];
    let mut slices = vec![];
    for op in &p.ops {
        let IrOp::Concat {
            inputs,
            output,
            axis,
        } = op
        else {
            continue;
        };
        let t = p.t(*output);
        if *axis != 1 || t.shape.len() != 4 || t.dtype != DType::I8 || inputs.len() < 2 {
            continue;
        }
        // part boundaries along channels
        let mut starts = vec![];
        let mut at = 0usize;
        for t in inputs {
            starts.push((at, p.t(*t).shape[1]));
            at += p.t(*t).shape[1];
        }
        let mut ok = true;
        let mut mine = vec![];
        for o in &p.ops {
            if !o.inputs().contains(output) {
                continue;
            }
            match o {
                IrOp::GroupNorm { rms: false, .. } => {}
                IrOp::Plain(Op::Slice(wire::Slice {
                    output: so,
                    axis: 1,
                    start,
                    ..
                })) => {
                    let width = p.t(*so).shape.get(1).copied().unwrap_or(0);
                    match starts
                        .iter()
                        .position(|&(s, w)| s == *start as usize && w == width)
                    {
                        Some(k) => mine.push((*so, *output, k)),
                        None => ok = false,
                    }
                }
                _ => ok = false,
            }
        }
        // no other alias of the concat (reshapes and the like would see the nominal scale)
        let aliases = p
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, x)| x.alias == Some(*output))
            .count();
        if ok && aliases == mine.len() {
            out.push(*output);
            slices.extend(mine);
        }
    }
    (out, slices)
}

/// Applies the split to the chosen parameters: the concat's nominal scale, each part-slice's own;
/// returns the channel scales of every split concat (read by its GroupNorms and by the concat's
/// requantization of each part).
pub fn apply(p: &Program, params: &mut [(f32, i32)]) -> HashMap<TensorId, Vec<f32>> {
    // split skip concats: each part keeps its own (symmetric) scale; the consuming GroupNorms read
    // the channel scales.
    let (split, part_slices) = split_concats(p);
    let mut channel_scales: HashMap<TensorId, Vec<f32>> = HashMap::new();
    let mut part_scales: HashMap<TensorId, Vec<f32>> = HashMap::new();
    for op in &p.ops {
        if let IrOp::Concat { inputs, output, .. } = op {
            if !split.contains(output) {
                continue;
            }
            let mut scales = vec![];
            // bits lost per channel: sharing the concat's range vs each part's own symmetric range
            let (mut lost_shared, mut lost_split) = (0f64, 0f64);
            let (so, _) = params[output.0 as usize];
            for &t in inputs {
                let (s, z) = params[t.0 as usize];
                let (lo, hi) = p.t(t).dtype.code_range();
                let r = ((lo as f32 - z as f32) * s)
                    .abs()
                    .max((hi as f32 - z as f32) * s);
                let seg = (r / 127.0).max(1e-12);
                let c = p.t(t).shape[1] as f64;
                let own = ((hi - lo) as f64 * s as f64).max(1e-12);
                lost_shared += c * (255.0 * so as f64 / own).max(1.0).log2();
                lost_split += c * (254.0 * seg as f64 / own).max(1.0).log2();
                scales.extend(std::iter::repeat_n(seg, p.t(t).shape[1]));
            }
            if lost_split >= lost_shared {
                continue;
            }
            let nominal = scales.iter().copied().fold(0f32, f32::max);
            params[output.0 as usize] = (nominal, 0);
            channel_scales.insert(*output, scales);
            let mut per_part = vec![];
            let mut at = 0;
            for &t in inputs {
                per_part.push(channel_scales[output][at]);
                at += p.t(t).shape[1];
            }
            part_scales.insert(*output, per_part);
        }
    }
    // a slice cutting out one part (and whatever aliases it) reads that part's scale
    for i in 0..p.tensors.len() {
        let mut cur = TensorId(i as u32);
        loop {
            if let Some(&(_, concat, k)) = part_slices.iter().find(|s| s.0 == cur) {
                if let Some(ps) = part_scales.get(&concat) {
                    params[i] = (ps[k], 0);
                }
                break;
            }
            match p.t(cur).alias {
                Some(a) => cur = a,
                None => break,
            }
        }
    }
    channel_scales
}
