//! 16-bit weights for the few products that need them, as two int8 products over the same input.
//!
//! A conv or linear `y = x W + b` becomes `y = x W_hi + b` plus `x W_lo`: `W_hi` is `W` rounded to
//! its rows' 8-bit min-max grid (which the lowering's weight quantizer then keeps exactly: the
//! clipping ratio 1.0 has no error on it), `W_lo = W - W_hi` is at most half a step and gets
//! 8-bit codes of its own. The weights' rounding error shrinks from half a step of `W` to half a
//! step of `W_lo`, about 254 times smaller; the cost is the layer's MACs once more, an add, and two
//! tensors the size of its output. Integer compute throughout: two int8 x int8 products into int32,
//! requantized, then an integer add into the original output.
//!
//! The `W_hi` branch writes int16 with the original output's calibration statistics (its values
//! differ by `x W_lo`): at int8 it would round the output twice, once in the branch and once in
//! the add, and that second rounding cost as much as the weights gained (the trained consistency
//! fixture's mean SQNR stayed at 38.7 dB; with an int16 branch it rose to 41.4). The `W_lo` branch
//! has no float node of its own: it writes int8 in a range bounded by the input's code range times
//! the largest L1 norm of `W_lo`'s rows ([`crate::ir::TensorInfo::bound_by`]), so it never clips;
//! its codes' step is still far below the output's (`W_lo` is at most half a step of `W`). A
//! timestep-path linear splits the same way in f32.
use crate::eval::Probe;
use crate::ir::{IrOp, Program, TensorId, TensorInfo};
use crate::lower::op_macs;
use crate::protect::{output_error, Evals};
use anyhow::{bail, Result};
use dmq_runtime::format::{self as wire, BinaryFn, BinaryKind, DType, Op};
use std::sync::Arc;

/// `W` on its rows' 8-bit min-max grid (`hi`) and what is left (`lo`), for `rows` rows.
pub fn split_rows(w: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
    let k = w.len() / rows.max(1);
    let mut hi = vec![0f32; w.len()];
    for (r, h) in w.chunks(k.max(1)).zip(hi.chunks_mut(k.max(1))) {
        let s = r.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        if s > 0.0 {
            for (h, v) in h.iter_mut().zip(r) {
                *h = crate::quant::weights::code(*v, s, 127.0) * s;
            }
        }
    }
    let lo = w.iter().zip(&hi).map(|(v, h)| v - h).collect();
    (hi, lo)
}

/// The largest L1 norm of the rows of `w`.
fn max_row_l1(w: &[f32], rows: usize) -> f32 {
    let k = (w.len() / rows.max(1)).max(1);
    w.chunks(k)
        .map(|r| r.iter().map(|v| v.abs()).sum::<f32>())
        .fold(0.0, f32::max)
}

/// Splits the conv or (int8) linear at op index `at` of `p` into its two weight branches and their
/// add (see the module docs). Returns the two branches' tensors.
pub fn split(p: &mut Program, at: usize) -> Result<(TensorId, TensorId)> {
    let op = p.ops[at].clone();
    let (input, output, w) = match &op {
        IrOp::Conv {
            input, output, w, ..
        } => (*input, *output, w.clone()),
        IrOp::Linear {
            input, output, w, ..
        } => (*input, *output, w.clone()),
        _ => bail!("internal error: only a conv or a linear splits its weights"),
    };
    // a timestep-path linear: f32 branches and an f32 add
    let float = matches!(op, IrOp::Linear { float: true, .. });
    let rows = match &op {
        IrOp::Linear { geom, .. } => geom.n as usize,
        _ => p.t(output).shape[1],
    };
    let out = p.t(output).clone();
    if !float && (out.stat.is_none() || out.alias.is_some()) {
        bail!("internal error: {} has no statistics of its own", out.name);
    }
    let (whi, wlo) = split_rows(&w, rows);
    let bound = max_row_l1(&wlo, rows);
    let branch = |name: &str, dtype, stat, bound_by| TensorInfo {
        name: format!("{}.{name}", out.name),
        shape: out.shape.clone(),
        dtype: if float { DType::F32 } else { dtype },
        stat,
        alias: None,
        fixed: None,
        probs: false,
        value: None,
        bound_by: if float { None } else { bound_by },
    };
    let hi = p.add_tensor(branch("w_hi", DType::I16, out.stat, None));
    let lo = p.add_tensor(branch("w_lo", DType::I8, None, Some((input, bound))));
    let (mut op_hi, mut op_lo) = (op.clone(), op);
    match (&mut op_hi, &mut op_lo) {
        (
            IrOp::Conv {
                output: oh, w: wh, ..
            },
            IrOp::Conv {
                output: ol,
                w: wl,
                bias,
                time_bias,
                ..
            },
        ) => {
            (*oh, *wh, *ol, *wl) = (hi, Arc::new(whi), lo, Arc::new(wlo));
            bias.iter_mut().for_each(|b| *b = 0.0);
            *time_bias = None;
        }
        (
            IrOp::Linear {
                output: oh, w: wh, ..
            },
            IrOp::Linear {
                output: ol,
                w: wl,
                bias,
                ..
            },
        ) => {
            (*oh, *wh, *ol, *wl) = (hi, Arc::new(whi), lo, Arc::new(wlo));
            bias.iter_mut().for_each(|b| *b = 0.0);
        }
        _ => unreachable!("matched above"),
    }
    let add = if float {
        IrOp::Plain(Op::FBinary(wire::FBinary {
            a: hi,
            b: lo,
            output,
            func: BinaryFn::Add,
        }))
    } else {
        IrOp::Binary {
            kind: BinaryKind::Add,
            a: hi,
            b: lo,
            output,
        }
    };
    p.ops.splice(at..=at, [op_hi, op_lo, add]);
    Ok((hi, lo))
}

/// A set of products that may take 16-bit weights together: one conv or linear of the integer
/// path, or every linear of the timestep path (cheap: no integer MACs, a few weights).
#[derive(Clone)]
struct Candidate {
    outputs: Vec<TensorId>,
    label: String,
    /// integer MACs per evaluation and weights the split adds
    macs: u64,
    weights: usize,
}

/// What the ranking measured for one candidate (the report's `w16` list).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub layer: String,
    /// output error with 8-bit weights / with this candidate's weights at 16 bits
    pub error_ratio: f64,
    pub chosen: bool,
}

/// The products [`auto`] chose, with what they cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Chosen {
    pub layers: Vec<String>,
    /// integer MACs and weights added, as shares of the model's
    pub macs_share: f64,
    pub weights_share: f64,
    /// output error on the probes without and with them
    pub error_before: f64,
    pub error_after: f64,
    pub ranking: Vec<Measured>,
}

/// The candidates of `p`: the timestep path's linears together first, then the integer products
/// from both ends of the network inwards (first, last, second, second to last, ...): the order in
/// which a budget too small for all of them measures them. `main`: whether integer products may
/// split (their weights are 8-bit; a 4-bit layer's high part would lose its grid).
fn candidates(p: &Program, main: bool) -> Vec<Candidate> {
    let mut time = Candidate {
        outputs: vec![],
        label: "timestep-path linears".into(),
        macs: 0,
        weights: 0,
    };
    let mut products = vec![];
    for op in &p.ops {
        match op {
            IrOp::Linear {
                output,
                w,
                float: true,
                ..
            } => {
                time.outputs.push(*output);
                time.weights += w.len();
            }
            IrOp::Conv { output, w, .. } | IrOp::Linear { output, w, .. } if main => {
                let t = p.t(*output);
                if t.stat.is_some() && t.alias.is_none() {
                    products.push(Candidate {
                        outputs: vec![*output],
                        label: t.name.clone(),
                        macs: op_macs(p, op),
                        weights: w.len(),
                    });
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<Candidate> = (!time.outputs.is_empty())
        .then_some(time)
        .into_iter()
        .collect();
    let (mut lo, mut hi) = (0, products.len());
    while lo < hi {
        out.push(products[lo].clone());
        lo += 1;
        if lo < hi {
            hi -= 1;
            out.push(products[hi].clone());
        }
    }
    out
}

/// `p` with the candidates' products split.
fn with(p: &Program, cands: &[&Candidate]) -> Result<Program> {
    let mut q = p.clone();
    for c in cands {
        for &o in &c.outputs {
            let at = q
                .ops
                .iter()
                .position(|op| op.output() == o)
                .ok_or_else(|| anyhow::anyhow!("internal error: no producer of {}", q.t(o).name))?;
            split(&mut q, at)?;
        }
    }
    Ok(q)
}

/// 16-bit weights where they measurably help, within `share` more integer MACs and more weights
/// than the model's products have: every candidate ([`candidates`]) is measured alone (the output
/// error on `inputs` through the runtime, within `evals`), those that lower it by 5 % or more are
/// taken in rank order while the costs fit, and the set is checked as a whole (where together
/// they measure worse than the best alone, or no evaluations are left to measure them, the best
/// alone stays). `main`: integer products may split.
pub fn auto(
    p: &Program,
    share: f64,
    main: bool,
    inputs: &[Probe],
    evals: &Evals,
    build: impl Fn(&Program) -> Result<Vec<u8>>,
) -> Result<(Program, Chosen)> {
    let mut cands = candidates(p, main);
    let n = inputs.len().max(1);
    if share <= 0.0 || cands.is_empty() || evals.left() < 2 * n {
        return Ok((p.clone(), Chosen::default()));
    }
    let fit = evals.left() / n - 2;
    if cands.len() > fit {
        *evals.capped.borrow_mut() = Some(format!(
            "{fit} of {} candidates (the timestep path's linears, then from the network's ends)",
            cands.len()
        ));
        cands.truncate(fit);
    }
    let base = output_error(&build(p)?, inputs, evals)?;
    let mut ranked = vec![];
    for c in &cands {
        let e = output_error(&build(&with(p, &[c])?)?, inputs, evals)?;
        ranked.push((c, base / e.max(1e-30), e));
    }
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (all_macs, all_weights) = p.ops.iter().fold((0u64, 0usize), |(m, w), op| match op {
        IrOp::Conv { w: ww, .. } | IrOp::Linear { w: ww, .. } => (m + op_macs(p, op), w + ww.len()),
        _ => (m, w),
    });
    let (mut macs, mut weights) = (0u64, 0usize);
    let mut chosen: Vec<&Candidate> = vec![];
    for (c, r, _) in &ranked {
        let fits = (macs + c.macs) as f64 <= share * all_macs as f64
            && (weights + c.weights) as f64 <= share * all_weights as f64;
        if *r >= 1.05 && fits {
            chosen.push(c);
            (macs, weights) = (macs + c.macs, weights + c.weights);
        }
    }
    let mut after = ranked
        .iter()
        .find(|r| chosen.first().is_some_and(|c| std::ptr::eq(*c, r.0)))
        .map_or(base, |r| r.2);
    if chosen.len() > 1 {
        let together = match evals.left() >= n {
            true => output_error(&build(&with(p, &chosen)?)?, inputs, evals)?,
            false => f64::INFINITY,
        };
        if together < after {
            after = together;
        } else {
            chosen.truncate(1);
            (macs, weights) = (chosen[0].macs, chosen[0].weights);
        }
    }
    let q = with(p, &chosen)?;
    let ranking = ranked
        .iter()
        .map(|(c, r, _)| Measured {
            layer: c.label.clone(),
            error_ratio: *r,
            chosen: chosen.iter().any(|x| std::ptr::eq(*x, *c)),
        })
        .collect();
    Ok((
        q,
        Chosen {
            layers: chosen.iter().map(|c| c.label.clone()).collect(),
            macs_share: macs as f64 / all_macs.max(1) as f64,
            weights_share: weights as f64 / all_weights.max(1) as f64,
            error_before: base,
            error_after: after,
            ranking,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, shape: Vec<usize>, stat: usize) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            shape,
            dtype: DType::I8,
            stat: Some(stat),
            alias: None,
            fixed: None,
            probs: false,
            value: None,
            bound_by: None,
        }
    }

    #[test]
    fn a_split_conv_is_two_branches_and_their_add() {
        let mut p = Program::default();
        let x = p.add_tensor(tensor("x", vec![1, 3, 4, 4], 0));
        let y = p.add_tensor(tensor("y", vec![1, 2, 4, 4], 1));
        let w: Vec<f32> = vec![0.3, -0.71, 0.05, 1.2, 0.004, -0.333];
        p.ops.push(IrOp::Conv {
            input: x,
            output: y,
            w: Arc::new(w.clone()),
            bias: vec![0.5, -0.25],
            time_bias: None,
            kernel: [1, 1],
            stride: [1, 1],
            pad: [0; 4],
            node: "conv".into(),
        });
        let (hi, lo) = split(&mut p, 0).unwrap();
        assert_eq!(p.ops.len(), 3);
        let (th, tl) = (p.t(hi), p.t(lo));
        assert_eq!((th.dtype, tl.dtype), (DType::I16, DType::I8));
        // the high branch keeps the output's statistics; the low one is bounded by its input
        assert_eq!((th.stat, tl.stat), (Some(1), None));
        let (bx, f) = tl.bound_by.unwrap();
        assert_eq!(bx, x);
        let (
            IrOp::Conv {
                w: wh,
                bias: bh,
                output: oh,
                ..
            },
            IrOp::Conv {
                w: wl,
                bias: bl,
                output: ol,
                input: il,
                ..
            },
        ) = (&p.ops[0], &p.ops[1])
        else {
            panic!("two convs first")
        };
        assert_eq!((*oh, *ol, *il), (hi, lo, x));
        assert_eq!((&bh[..], &bl[..]), (&[0.5, -0.25][..], &[0.0, 0.0][..]));
        for ((a, b), v) in wh.iter().zip(wl.iter()).zip(&w) {
            assert!((a + b - v).abs() < 1e-7);
        }
        // the bound is the largest row's L1 norm of the low part
        let l1: Vec<f32> = wl
            .chunks(3)
            .map(|r| r.iter().map(|v| v.abs()).sum())
            .collect();
        assert_eq!(f, l1[0].max(l1[1]));
        assert!(matches!(
            p.ops[2],
            IrOp::Binary { kind: BinaryKind::Add, a, b, output } if (a, b, output) == (hi, lo, y)
        ));
    }

    #[test]
    fn the_high_part_is_on_the_grid_and_the_parts_sum_to_the_weights() {
        let w: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
            .collect();
        let (hi, lo) = split_rows(&w, 4);
        for (r, (h, l)) in hi.chunks(12).zip(lo.chunks(12)).enumerate() {
            let row = &w[r * 12..(r + 1) * 12];
            let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for ((&h, &l), &v) in h.iter().zip(l).zip(row) {
                assert!(
                    ((h / s) - (h / s).round()).abs() < 1e-3,
                    "{h} off the grid {s}"
                );
                assert!((h + l - v).abs() < 1e-6);
                assert!(l.abs() <= s / 2.0 + 1e-6);
            }
        }
    }
}
