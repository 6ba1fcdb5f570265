//! Samplers that run on the device: DDIM (eta = 0) and DDPM, their timestep spacing, the noise
//! schedule, a PRNG and Gaussian noise. All arithmetic is IEEE f32/f64 with `libm`, so the host and a
//! board produce the same bytes.
use crate::format::{Prediction, SamplerConfig};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    Ddpm,
}

/// A denoiser evaluation: `eps_or_pred = model(x, t)`.
pub trait Denoiser {
    fn denoise(&mut self, x: &[f32], t: f32, out: &mut [f32]) -> Result<()>;
}

/// `alphas_cumprod[t]` of the linear beta schedule (diffusers' "linear"), computed in f64 without a table.
pub fn alpha_cumprod(cfg: &SamplerConfig, t: i64) -> f64 {
    if t < 0 {
        return 1.0;
    }
    let n = cfg.num_train_timesteps as i64;
    let t = t.min(n - 1);
    let (b0, b1) = (cfg.beta_start as f64, cfg.beta_end as f64);
    let mut a = 1.0f64;
    for i in 0..=t {
        let beta = if n > 1 {
            b0 + (b1 - b0) * i as f64 / (n - 1) as f64
        } else {
            b0
        };
        a *= 1.0 - beta;
    }
    a
}

/// The `i`-th of `steps` timesteps, in sampling order, with diffusers' "leading" spacing and
/// `steps_offset = 1`: for 1000 training steps and 50 steps, 981, 961, ..., 1.
pub fn timestep(cfg: &SamplerConfig, steps: u32, i: u32) -> i64 {
    let n = cfg.num_train_timesteps as i64;
    let steps = (steps as i64).clamp(1, n);
    let ratio = n / steps;
    let k = steps - 1 - i as i64;
    (k * ratio + 1).min(n - 1)
}

/// Number of training timesteps between two consecutive sampling steps.
pub fn step_ratio(cfg: &SamplerConfig, steps: u32) -> i64 {
    let n = cfg.num_train_timesteps as i64;
    n / (steps as i64).clamp(1, n)
}

/// SplitMix64: small, fast and identical everywhere.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
            spare: None,
        }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn gaussian(&mut self) -> f32 {
        if let Some(s) = self.spare.take() {
            return s as f32;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let th = 2.0 * core::f64::consts::PI * u2;
        self.spare = Some(r * libm::sin(th));
        (r * libm::cos(th)) as f32
    }
    pub fn fill_gaussian(&mut self, x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = self.gaussian();
        }
    }
}

/// Splits a model prediction into (x0, eps) for the given parameterization.
fn x0_eps(pred: Prediction, x: f32, out: f32, a: f64) -> (f64, f64) {
    let (sa, s1a) = (libm::sqrt(a), libm::sqrt(1.0 - a));
    let (x, o) = (x as f64, out as f64);
    match pred {
        Prediction::Epsilon => ((x - s1a * o) / sa, o),
        Prediction::V => (sa * x - s1a * o, sa * o + s1a * x),
        Prediction::Sample => (o, if s1a > 0.0 { (x - sa * o) / s1a } else { 0.0 }),
    }
}

/// Runs `steps` denoising steps. `x` holds the initial noise on entry and the sample on exit; `buf` is a
/// latent-sized scratch buffer for the model output.
pub fn sample(
    cfg: &SamplerConfig,
    kind: SamplerKind,
    steps: u32,
    x: &mut [f32],
    buf: &mut [f32],
    rng: &mut Rng,
    mut denoise: impl FnMut(&[f32], f32, &mut [f32]) -> Result<()>,
) -> Result<()> {
    if steps == 0 || steps > cfg.num_train_timesteps {
        return Err(Error::Unsupported(
            "steps must be between 1 and the number of training timesteps",
        ));
    }
    if x.len() != buf.len() {
        return Err(Error::BufferLength {
            expected: x.len(),
            got: buf.len(),
        });
    }
    let ratio = step_ratio(cfg, steps);
    for i in 0..steps {
        let t = timestep(cfg, steps, i);
        denoise(x, t as f32, buf)?;
        let a = alpha_cumprod(cfg, t);
        let a_prev = alpha_cumprod(cfg, t - ratio);
        match kind {
            SamplerKind::Ddim => {
                let (sp, s1p) = (libm::sqrt(a_prev), libm::sqrt(1.0 - a_prev));
                for (xv, &o) in x.iter_mut().zip(buf.iter()) {
                    let (x0, eps) = x0_eps(cfg.prediction, *xv, o, a);
                    *xv = (sp * x0 + s1p * eps) as f32;
                }
            }
            SamplerKind::Ddpm => {
                let beta_t = 1.0 - a;
                let cur_alpha = a / a_prev;
                let cur_beta = 1.0 - cur_alpha;
                let c0 = libm::sqrt(a_prev) * cur_beta / beta_t;
                let ct = libm::sqrt(cur_alpha) * (1.0 - a_prev) / beta_t;
                let var = ((1.0 - a_prev) / (1.0 - a) * cur_beta).max(1e-20);
                let sd = libm::sqrt(var);
                let last = t - ratio < 0;
                for (xv, &o) in x.iter_mut().zip(buf.iter()) {
                    let (x0, _) = x0_eps(cfg.prediction, *xv, o, a);
                    let mut v = c0 * x0 + ct * *xv as f64;
                    if !last {
                        v += sd * rng.gaussian() as f64;
                    }
                    *xv = v as f32;
                }
            }
        }
    }
    Ok(())
}
