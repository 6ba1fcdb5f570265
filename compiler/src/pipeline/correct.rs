//! The correlated part of the output's quantization error, corrected per op stream (PTQD, He et al.
//! 2023: the quantized prediction is `(1 + k)·y + r` with `r` uncorrelated with the float `y`, so
//! dividing by `1 + k` removes the part that scales the prediction). `k` is fitted per stream on the
//! runtime's outputs against float over the sampling steps it serves, on float trajectories from seeds
//! no measurement uses, and kept only where it lowers that error by 0.05 dB and makes none of the
//! stream's steps worse. The division is folded
//! into the requantization of the conv or linear that writes the tensor the output is dequantized
//! from: integer codes, no float op added. PTQD's second half (the residual's variance taken out of
//! the step's added noise) applies to stochastic samplers only and is not done.
use super::build::{Builder, Programs};
use super::{internal, Built};
use crate::eval;
use crate::import::FloatModel;
use crate::ir::{IrOp, Program, TensorId};
use anyhow::Result;
use dmq_runtime::format::BinaryKind;
use dmq_runtime::Model;

/// Per sampling step: sums over its probes of `y_q²`, `y_q·y` and `y²` (runtime `y_q`, float `y`).
pub type Fit = [f64; 3];

/// What the correction did, for the report: per stream, its timestep range and `k` (`None` where
/// it did not pay), or why it did not apply.
#[derive(Debug, Clone, serde::Serialize, Default)]
pub struct Correction {
    pub streams: Vec<(f32, f32, Option<f64>)>,
    pub not_applied: Option<String>,
}

/// The gain (`1 + k`) of a stream serving `steps`, if it lowers the error on their fitted probes
/// by 0.05 dB and raises it at none of them, and is between 0.5 and 2.
pub fn gain(fit: &[Fit], steps: &[usize]) -> Option<f64> {
    let [qq, qf, ff] = steps
        .iter()
        .filter_map(|&s| fit.get(s))
        .fold([0.0; 3], |a, f| [a[0] + f[0], a[1] + f[1], a[2] + f[2]]);
    if ff <= 0.0 || qf <= 0.0 {
        return None;
    }
    // the least-squares `1 + k` of `y_q` on `y`, and the error of `y_q / g` against `y`
    let g = qf / ff;
    // PTQD's k is a small correlation of the quantization error with the output; an output that
    // is off by half or more is not float plus noise, and dividing by its scale would only hide
    // what broke (a probe the stream cannot represent)
    if !(0.5..=2.0).contains(&g) {
        return None;
    }
    let err = |[qq, qf, ff]: Fit, g: f64| qq / (g * g) - 2.0 * qf / g + ff;
    let pays = err([qq, qf, ff], g) < err([qq, qf, ff], 1.0) * 10f64.powf(-0.005);
    // and no step of the stream worse for it (one stream's k can suit its large t and not its
    // small t, where int8 is weakest)
    let harms = steps
        .iter()
        .filter_map(|&s| fit.get(s))
        .any(|&f| err(f, g) > err(f, 1.0));
    (pays && !harms).then_some(g)
}

/// The quantization root the program's output is dequantized from, when a conv or integer linear
/// writes it (the correction is folded into that op's requantization).
pub fn output_root(p: &Program) -> Option<TensorId> {
    let out = p.output?;
    let deq = p.ops.iter().find_map(|op| match op {
        IrOp::Dequantize { input, output } if *output == out => Some(*input),
        _ => None,
    })?;
    let root = p.quant_root(deq);
    let writers: Vec<&IrOp> = p
        .ops
        .iter()
        .filter(|op| p.quant_root(op.output()) == root && !matches!(op, IrOp::Dequantize { .. }))
        .collect();
    let product = |op: &IrOp| matches!(op, IrOp::Conv { .. } | IrOp::Linear { float: false, .. });
    match writers[..] {
        [op] if product(op) => Some(root),
        // a product with 16-bit weights (`split_weights`): the gain goes to its high branch;
        // the low one (below half a weight step) keeps its scale, an error of its value times
        // the gain's offset from 1 (under 1e-4 of the output's)
        [IrOp::Binary {
            kind: BinaryKind::Add,
            a,
            b,
            ..
        }] if p.t(*b).bound_by.is_some() && p.producer(*a).is_some_and(|i| product(&p.ops[i])) => {
            Some(p.quant_root(*a))
        }
        _ => None,
    }
}

/// The trajectories the correction fits on: two, or one, as many as `max_evals` runtime
/// evaluations (a search's budget) afford at `steps` each; none on a model too large for one.
pub fn trajectories(steps: usize, max_evals: usize) -> usize {
    (max_evals / steps.max(1)).min(2)
}

/// Fits the correction on `built` and rebuilds with it; the builder keeps the fit for later
/// rebuilds (the baseline guard's).
pub(crate) fn output<'c>(
    mut b: Builder<'c>,
    float: &FloatModel,
    programs: Programs<'_>,
    built: Built,
    max_evals: usize,
) -> Result<(Builder<'c>, Built, Correction)> {
    let not = |why: &str| Correction {
        streams: vec![],
        not_applied: Some(why.to_string()),
    };
    let Some(root) = output_root(programs.main.0) else {
        let why = not("the output is not dequantized from a conv or linear");
        return Ok((b, built, why));
    };
    let seeds = trajectories(b.opts.steps as usize, max_evals);
    if seeds == 0 {
        let why = not("one trajectory of runtime evaluations is over --search-budget");
        return Ok((b, built, why));
    }
    let model = Model::load(&built.bytes).map_err(internal)?;
    let mut arena = eval::arena_for(&model);
    let mut fit = vec![[0f64; 3]; b.cal.timesteps.len()];
    for seed in 0..seeds as u64 {
        let traj = eval::measured_inputs(float, &model, b.opts, 3_000_000 + seed, seed << 40)?;
        let extras = traj.first().map(|p| p.3.clone()).unwrap_or_default();
        let mut sess = eval::session_for(&model, eval::arena_bytes(&mut arena), &extras)?;
        for (i, (t, x, yf, _)) in traj.iter().enumerate().take(fit.len()) {
            let mut yq = vec![0f32; yf.len()];
            sess.run(x, *t, &mut yq)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (&q, &f) in yq.iter().zip(yf) {
                let (q, f) = (q as f64, f as f64);
                fit[i] = [fit[i][0] + q * q, fit[i][1] + q * f, fit[i][2] + f * f];
            }
        }
    }
    b.output_root = Some(root);
    b.output_fit = fit;
    let ts = &b.cal.timesteps;
    let streams = built
        .buckets
        .iter()
        .map(|k| {
            let t =
                |f: fn(f32, f32) -> f32| k.steps.iter().map(|&s| ts[s]).reduce(f).unwrap_or(0.0);
            (
                t(f32::min),
                t(f32::max),
                gain(&b.output_fit, &k.steps).map(|g| g - 1.0),
            )
        })
        .collect::<Vec<_>>();
    let correction = Correction {
        streams,
        not_applied: None,
    };
    if correction.streams.iter().all(|s| s.2.is_none()) {
        return Ok((b, built, correction));
    }
    let (bytes, plan) = b.build(programs, &built.buckets)?;
    let bytes = b.fold(programs.main.0, bytes, &plan)?;
    let built = Built {
        buckets: built.buckets,
        bytes,
        plan,
    };
    Ok((b, built, correction))
}

#[cfg(test)]
mod tests {
    use super::gain;

    #[test]
    fn the_gain_is_the_least_squares_scale_and_only_kept_where_it_pays() {
        // y_q = 1.1·y exactly: g = 1.1 removes all the error
        let y = [1.0f64, -2.0, 0.5];
        let fit = |yq: &[f64]| {
            let s = |f: &dyn Fn(usize) -> f64| (0..3).map(f).sum::<f64>();
            [
                s(&|i| yq[i] * yq[i]),
                s(&|i| yq[i] * y[i]),
                s(&|i| y[i] * y[i]),
            ]
        };
        let scaled = fit(&[1.1, -2.2, 0.55]);
        assert!((gain(&[scaled], &[0]).unwrap() - 1.1).abs() < 1e-12);
        // an error orthogonal to y: no scale helps
        let orthogonal = fit(&[1.0 + 0.2, -2.0 + 0.1, 0.5 + 0.0]);
        let g = gain(&[orthogonal], &[0]);
        assert!(g.is_none_or(|g| (g - 1.0).abs() < 0.02), "{g:?}");
        // a stream fits over its own steps only; no steps, no gain
        assert!((gain(&[orthogonal, scaled], &[1]).unwrap() - 1.1).abs() < 1e-12);
        assert_eq!(gain(&[scaled], &[]), None);
        // a scale that suits one step of the stream and harms another is not taken
        let shrunk = fit(&[0.9, -1.8, 0.45]);
        let big = [scaled[0] * 4.0, scaled[1] * 4.0, scaled[2] * 4.0];
        assert_eq!(gain(&[big, shrunk], &[0, 1]), None);
        // an output a hundred times too small is a broken stream, not a correlated error
        let collapsed = fit(&[0.011, -0.022, 0.0055]);
        assert_eq!(gain(&[collapsed], &[0]), None);
    }
}
