//! The drift warning's hint: when the model's own trajectories leave the forward process's scale at
//! most steps, one float trajectory per other prediction type tells whether the model was compiled
//! with the wrong one (a v-prediction model read as epsilon). Said in the summary, never acted on.
use super::sampler_config;
use crate::calib;
use crate::import::FloatModel;
use crate::CompileOptions;
use anyhow::Result;
use dmq_runtime::format::SamplerConfig;
use dmq_runtime::sampler::{self, Rng, SamplerKind};

/// With most of the steps drifted on the model's own trajectories (and no guidance): the other
/// prediction type under which one float trajectory drifts least, if at a quarter of its steps or
/// fewer ([`drift_if_predicting`]), with the count and the trajectory's steps. Said in the
/// warning, never acted on. The trajectories (two, of `macs` each per evaluation) take at most 5 %
/// of the calibration budget: fewer steps on a large model, none below 5.
pub(super) fn hint(
    float: &FloatModel,
    opts: &CompileOptions,
    drifted: usize,
    macs: u64,
) -> Result<Option<(String, usize, usize)>> {
    let steps = opts.steps as usize;
    if drifted * 2 <= steps
        || opts.guidance.is_some()
        || opts.calib_source != crate::CalibSource::Trajectories
    {
        return Ok(None);
    }
    let affordable = (opts.calib_budget_g * 1e9 * 0.05 / (2.0 * macs.max(1) as f64)) as usize;
    let n = steps.min(affordable);
    if n < 5 {
        return Ok(None);
    }
    let cfg = sampler_config(opts);
    let tries = drift_if_predicting(float, &cfg, opts.sampler, n as u32)?;
    let best = tries
        .into_iter()
        .min_by_key(|&(_, d)| d)
        .filter(|&(_, d)| d * 4 <= n);
    Ok(best.map(|(p, d)| (format!("{p:?}").to_lowercase(), d, n)))
}

/// The drift warning's hint, never acted on: with the model's output read as each other prediction
/// type, how many steps of one float trajectory drift ([`calib::drifted`]). A v- or x0-prediction model
/// compiled as epsilon (denoising-diffusion-pytorch trains v by default) drifts at most steps;
/// read right, it stays at scale. The extra inputs keep the values the float model holds.
fn drift_if_predicting(
    float: &FloatModel,
    cfg: &SamplerConfig,
    kind: SamplerKind,
    steps: u32,
) -> Result<Vec<(dmq_runtime::format::Prediction, usize)>> {
    use dmq_runtime::format::Prediction;
    let n: usize = float.latent.shape.iter().product();
    let mut out = vec![];
    for p in [Prediction::Epsilon, Prediction::V, Prediction::Sample] {
        if p == cfg.prediction || (kind.sigma_conditioned() && p == Prediction::V) {
            continue;
        }
        let c = SamplerConfig {
            prediction: p,
            ..cfg.clone()
        };
        let mut rng = Rng::new(0x000d_71f7);
        let (mut x, mut buf) = (vec![0f32; n], vec![0f32; n]);
        rng.fill_gaussian(&mut x);
        let mut count = 0;
        sampler::sample(&c, kind, steps, &mut x, &mut buf, &mut rng, |xin, t, o| {
            let ms = xin.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n.max(1) as f64;
            count += calib::drifted(&c, kind, t, ms.sqrt()) as usize;
            let y = float
                .run(xin, t)
                .map_err(|_| dmq_runtime::Error::Unsupported("float model evaluation failed"))?;
            o.copy_from_slice(&y);
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("drift check as {p:?} prediction: {e}"))?;
        out.push((p, count));
    }
    Ok(out)
}
