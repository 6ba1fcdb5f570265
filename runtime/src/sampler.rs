//! Samplers that run on the device: DDIM (eta = 0) and DDPM over the linear beta schedule, and the
//! sigma-conditioned Euler (Karras et al.'s EDM, deterministic) and consistency multistep samplers;
//! their timestep/sigma schedules, a PRNG and Gaussian noise. All arithmetic is IEEE f32/f64 with
//! `libm`, so the host and a board produce the same bytes.
use crate::format::{BetaSchedule, Prediction, SamplerConfig};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    Ddim,
    Ddpm,
    /// Euler steps of the probability-flow ODE in sigma (EDM): `x += (x - D)/sigma * (sigma' - sigma)`
    Euler,
    /// Consistency multistep: denoise, re-noise to the next sigma, denoise
    Consistency,
}

impl SamplerKind {
    /// Whether the model is conditioned on a noise level sigma (`x = x0 + sigma * eps`) rather than a
    /// DDPM timestep.
    pub fn sigma_conditioned(self) -> bool {
        matches!(self, SamplerKind::Euler | SamplerKind::Consistency)
    }
}

/// A denoiser evaluation: `eps_or_pred = model(x, t)`.
pub trait Denoiser {
    fn denoise(&mut self, x: &[f32], t: f32, out: &mut [f32]) -> Result<()>;
}

/// `alphas_cumprod[t]` of the model's beta schedule ([`BetaSchedule`]): the product of `1 - beta_i`
/// for `i <= t`, computed in f64 without a table.
pub fn alpha_cumprod(cfg: &SamplerConfig, t: i64) -> f64 {
    if t < 0 {
        return 1.0;
    }
    let n = cfg.num_train_timesteps as i64;
    let t = t.min(n - 1);
    let mut a = 1.0f64;
    for i in 0..=t {
        a *= 1.0 - beta(cfg, i, n);
    }
    a
}

/// `beta_i` of `n` training steps under the model's schedule.
fn beta(cfg: &SamplerConfig, i: i64, n: i64) -> f64 {
    let (b0, b1) = (cfg.beta_start as f64, cfg.beta_end as f64);
    let f = if n > 1 {
        i as f64 / (n - 1) as f64
    } else {
        0.0
    };
    // a schedule given as alphas_cumprod(u), u = t / n: beta_i = 1 - abar((i+1)/n) / abar(i/n)
    let of_abar = |abar: &dyn Fn(f64) -> f64| {
        let (u0, u1) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
        (1.0 - abar(u1) / abar(u0)).clamp(0.0, 0.999)
    };
    match cfg.beta_schedule {
        BetaSchedule::Linear => b0 + (b1 - b0) * f,
        BetaSchedule::ScaledLinear => {
            let r = libm::sqrt(b0) + (libm::sqrt(b1) - libm::sqrt(b0)) * f;
            r * r
        }
        BetaSchedule::Cosine => of_abar(&|u: f64| {
            let c = libm::cos((u + 0.008) / 1.008 * core::f64::consts::FRAC_PI_2);
            c * c
        }),
        BetaSchedule::Sigmoid => {
            let sig = |v: f64| 1.0 / (1.0 + libm::exp(-v));
            let (lo, hi) = (sig(-3.0), sig(3.0));
            of_abar(&|u: f64| (hi - sig(6.0 * u - 3.0)) / (hi - lo))
        }
    }
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

/// The `i`-th of `steps` Karras sigmas (`rho`-spaced from `sigma_max` down to `sigma_min`).
pub fn karras_sigma(cfg: &SamplerConfig, steps: u32, i: u32) -> f64 {
    let (lo, hi, rho) = (cfg.sigma_min as f64, cfg.sigma_max as f64, cfg.rho as f64);
    if steps <= 1 {
        return hi;
    }
    let f = i as f64 / (steps - 1) as f64;
    let (a, b) = (libm::pow(hi, 1.0 / rho), libm::pow(lo, 1.0 / rho));
    libm::pow(a + f * (b - a), rho)
}

/// The conditioning value (timestep or sigma) of step `i` of `steps`, in sampling order; `i == steps`
/// gives the end of the trajectory (timestep -1, i.e. alpha 1, or sigma 0). The model's explicit
/// schedule is used when it has exactly `steps` entries.
pub fn schedule_value(cfg: &SamplerConfig, kind: SamplerKind, steps: u32, i: u32) -> f64 {
    let explicit = cfg.schedule.len() == steps as usize && steps > 0;
    if i >= steps {
        return if kind.sigma_conditioned() { 0.0 } else { -1.0 };
    }
    if explicit {
        let v = cfg.schedule[i as usize] as f64;
        return if kind.sigma_conditioned() {
            v
        } else {
            libm::round(v)
        };
    }
    if kind.sigma_conditioned() {
        karras_sigma(cfg, steps, i)
    } else {
        timestep(cfg, steps, i) as f64
    }
}

/// The value after step `i`: the next scheduled one; with the computed DDIM/DDPM spacing, `ratio`
/// training steps below (negative past the last, i.e. alpha 1).
fn next_value(cfg: &SamplerConfig, kind: SamplerKind, steps: u32, i: u32, c: f64) -> f64 {
    let explicit = cfg.schedule.len() == steps as usize;
    if kind.sigma_conditioned() || explicit {
        schedule_value(cfg, kind, steps, i + 1)
    } else {
        let n = c - step_ratio(cfg, steps) as f64;
        if n < 0.0 {
            -1.0
        } else {
            n
        }
    }
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

/// Splits a model prediction into (x0, eps) for the given parameterization (DDPM-style models).
fn x0_eps(pred: Prediction, x: f32, out: f32, a: f64) -> (f64, f64) {
    let (sa, s1a) = (libm::sqrt(a), libm::sqrt(1.0 - a));
    let (x, o) = (x as f64, out as f64);
    match pred {
        Prediction::Epsilon => ((x - s1a * o) / sa, o),
        Prediction::V => (sa * x - s1a * o, sa * o + s1a * x),
        Prediction::Sample => (o, if s1a > 0.0 { (x - sa * o) / s1a } else { 0.0 }),
    }
}

/// The denoised sample `D(x, sigma)` of a sigma-conditioned model (`x = x0 + sigma * eps`).
fn denoised(pred: Prediction, x: f32, out: f32, sigma: f64) -> f64 {
    match pred {
        Prediction::Sample => out as f64,
        // eps (and, for lack of a VP scaling, v) read as the noise direction
        Prediction::Epsilon | Prediction::V => x as f64 - sigma * out as f64,
    }
}

/// The most steps `kind` takes: one per training timestep for DDIM/DDPM, 8 x the longest explicit
/// schedule for the sigma samplers.
pub fn max_steps(cfg: &SamplerConfig, kind: SamplerKind) -> u32 {
    if kind.sigma_conditioned() {
        crate::format::MAX_SCHEDULE as u32 * 8
    } else {
        cfg.num_train_timesteps
    }
}

/// Runs `steps` denoising steps. `x` holds standard-normal initial noise on entry (the
/// sigma-conditioned samplers scale it by the first sigma) and the sample on exit; `buf` is a
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
    if steps == 0 || steps > max_steps(cfg, kind) {
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
    if kind.sigma_conditioned() {
        if cfg.prediction == Prediction::V {
            return Err(Error::Unsupported(
                "the sigma-conditioned samplers take epsilon or sample predictions",
            ));
        }
        let s0 = schedule_value(cfg, kind, steps, 0);
        for v in x.iter_mut() {
            *v = (*v as f64 * s0) as f32;
        }
    }
    for i in 0..steps {
        let c = schedule_value(cfg, kind, steps, i);
        let next = next_value(cfg, kind, steps, i, c);
        denoise(x, c as f32, buf)?;
        match kind {
            SamplerKind::Ddim => {
                let (a, a_prev) = (
                    alpha_cumprod(cfg, c as i64),
                    alpha_cumprod(cfg, next as i64),
                );
                let (sp, s1p) = (libm::sqrt(a_prev), libm::sqrt(1.0 - a_prev));
                for (xv, &o) in x.iter_mut().zip(buf.iter()) {
                    let (x0, eps) = x0_eps(cfg.prediction, *xv, o, a);
                    *xv = (sp * x0 + s1p * eps) as f32;
                }
            }
            SamplerKind::Ddpm => {
                let (a, a_prev) = (
                    alpha_cumprod(cfg, c as i64),
                    alpha_cumprod(cfg, next as i64),
                );
                let beta_t = 1.0 - a;
                let cur_alpha = a / a_prev;
                let cur_beta = 1.0 - cur_alpha;
                let c0 = libm::sqrt(a_prev) * cur_beta / beta_t;
                let ct = libm::sqrt(cur_alpha) * (1.0 - a_prev) / beta_t;
                let var = ((1.0 - a_prev) / (1.0 - a) * cur_beta).max(1e-20);
                let sd = libm::sqrt(var);
                let last = next < 0.0;
                for (xv, &o) in x.iter_mut().zip(buf.iter()) {
                    let (x0, _) = x0_eps(cfg.prediction, *xv, o, a);
                    let mut v = c0 * x0 + ct * *xv as f64;
                    if !last {
                        v += sd * rng.gaussian() as f64;
                    }
                    *xv = v as f32;
                }
            }
            SamplerKind::Euler => {
                let dt = next - c;
                for (xv, &o) in x.iter_mut().zip(buf.iter()) {
                    let d0 = denoised(cfg.prediction, *xv, o, c);
                    let deriv = if c > 0.0 { (*xv as f64 - d0) / c } else { 0.0 };
                    *xv = (*xv as f64 + deriv * dt) as f32;
                }
            }
            SamplerKind::Consistency => {
                // the denoised sample, re-noised to the next sigma unless this was the last step
                let last = i + 1 == steps;
                let smin = cfg.sigma_min as f64;
                let sd = libm::sqrt((next * next - smin * smin).max(0.0));
                for (xv, &o) in x.iter_mut().zip(buf.iter()) {
                    let mut v = denoised(cfg.prediction, *xv, o, c);
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

impl From<crate::format::SamplerKindCfg> for SamplerKind {
    fn from(k: crate::format::SamplerKindCfg) -> SamplerKind {
        use crate::format::SamplerKindCfg as C;
        match k {
            C::Ddim => SamplerKind::Ddim,
            C::Ddpm => SamplerKind::Ddpm,
            C::Euler => SamplerKind::Euler,
            C::Consistency => SamplerKind::Consistency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::SamplerKindCfg;

    fn cfg(pred: Prediction) -> SamplerConfig {
        SamplerConfig {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction: pred,
            default_sampler: SamplerKindCfg::Ddim,
            default_steps: 50,
            sigma_min: 0.002,
            sigma_max: 80.0,
            rho: 7.0,
            schedule: heapless::Vec::new(),
            beta_schedule: BetaSchedule::Linear,
        }
    }

    /// The exact denoiser of data ~ N(0, sd²): D(x, sigma) = x sd² / (sigma² + sd²).
    fn gaussian_denoiser(x: &[f32], s: f32, out: &mut [f32]) -> Result<()> {
        let sd2 = 0.25f64;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v as f64 * sd2 / (s as f64 * s as f64 + sd2)) as f32;
        }
        Ok(())
    }

    /// alphas_cumprod at t = 0, 499, 999 of each schedule against numpy in f64 with the formulas of
    /// denoising-diffusion-pytorch (cosine, sigmoid) and diffusers (scaled linear); the packages
    /// themselves, in f32, agree to 3e-5 relative.
    #[test]
    fn alpha_cumprod_follows_each_beta_schedule() {
        let cases = [
            (
                BetaSchedule::Cosine,
                (1e-4, 0.02),
                [9.999587157752e-01, 4.938435904406e-01, 2.428766907035e-09],
            ),
            (
                BetaSchedule::Sigmoid,
                (1e-4, 0.02),
                [9.996997208003e-01, 5.0e-01, 3.002791997493e-07],
            ),
            (
                BetaSchedule::ScaledLinear,
                (0.00085, 0.012),
                [9.9915e-01, 2.776696504565e-01, 4.660098513077e-03],
            ),
        ];
        for (kind, (b0, b1), want) in cases {
            let mut c = cfg(Prediction::Epsilon);
            (c.beta_schedule, c.beta_start, c.beta_end) = (kind, b0, b1);
            for (t, w) in [0, 499, 999].into_iter().zip(want) {
                let got = alpha_cumprod(&c, t);
                assert!(
                    ((got - w) / w).abs() < 1e-6,
                    "{kind:?} t={t}: {got} against {w}"
                );
            }
        }
    }

    #[test]
    fn karras_schedule_ends_and_descends() {
        let c = cfg(Prediction::Sample);
        assert!((karras_sigma(&c, 18, 0) - 80.0).abs() < 1e-9);
        assert!((karras_sigma(&c, 18, 17) - 0.002).abs() < 1e-9);
        for i in 0..17 {
            assert!(karras_sigma(&c, 18, i + 1) < karras_sigma(&c, 18, i));
        }
    }

    #[test]
    fn euler_follows_the_probability_flow_of_gaussian_data() {
        // For N(0, sd²) data the ODE solution is x(s) = x(smax) sqrt(s² + sd²) / sqrt(smax² + sd²).
        let c = cfg(Prediction::Sample);
        let z = [1.3f32, -0.4, 2.0];
        let mut x = z;
        let mut buf = [0f32; 3];
        sample(
            &c,
            SamplerKind::Euler,
            400,
            &mut x,
            &mut buf,
            &mut Rng::new(0),
            gaussian_denoiser,
        )
        .unwrap();
        let k = (0.002f64 * 0.002 + 0.25).sqrt() / (80.0f64 * 80.0 + 0.25).sqrt();
        for (xv, zv) in x.iter().zip(z) {
            let want = zv as f64 * 80.0 * k;
            assert!(
                (*xv as f64 - want).abs() < 0.01 * want.abs(),
                "{xv} vs {want}"
            );
        }
        // epsilon prediction of the same denoiser gives the same trajectory
        let ce = cfg(Prediction::Epsilon);
        let mut xe = z;
        sample(
            &ce,
            SamplerKind::Euler,
            400,
            &mut xe,
            &mut buf,
            &mut Rng::new(0),
            |x, s, out| {
                gaussian_denoiser(x, s, out)?;
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v - *o) / s; // eps = (x - D) / sigma
                }
                Ok(())
            },
        )
        .unwrap();
        for (a, b) in x.iter().zip(&xe) {
            assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn consistency_denoises_renoises_and_denoises() {
        // explicit sigmas [80, 2]: x1 = D(80 z); x2 = x1 + sqrt(2² - smin²) n; result D(x2, 2)
        let mut c = cfg(Prediction::Sample);
        c.schedule = [80.0f32, 2.0].into_iter().collect();
        let z = [0.7f32, -1.1];
        let mut x = z;
        let mut buf = [0f32; 2];
        let mut seen = heapless::Vec::<f32, 4>::new();
        sample(
            &c,
            SamplerKind::Consistency,
            2,
            &mut x,
            &mut buf,
            &mut Rng::new(5),
            |x, s, out| {
                let _ = seen.push(s);
                gaussian_denoiser(x, s, out)
            },
        )
        .unwrap();
        assert_eq!(&seen[..], &[80.0, 2.0]);
        let mut rng = Rng::new(5);
        let (d80, d2) = (0.25 / (6400.0 + 0.25), 0.25 / (4.0 + 0.25));
        let sd = (4.0f64 - 0.002 * 0.002).sqrt();
        for (xv, zv) in x.iter().zip(z) {
            let x1 = ((zv as f64 * 80.0) as f32 as f64 * d80) as f32 as f64;
            let x2 = (x1 + sd * rng.gaussian() as f64) as f32 as f64;
            let want = x2 * d2;
            assert!((*xv as f64 - want).abs() < 1e-5, "{xv} vs {want}");
        }
    }

    #[test]
    fn explicit_ddim_schedule_equal_to_the_spacing_gives_the_same_bytes() {
        let computed = cfg(Prediction::Epsilon);
        let mut explicit = cfg(Prediction::Epsilon);
        explicit.schedule = (0..10).map(|i| timestep(&computed, 10, i) as f32).collect();
        let eps = |x: &[f32], t: f32, out: &mut [f32]| -> Result<()> {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = 0.3 * v + t * 1e-4;
            }
            Ok(())
        };
        for kind in [SamplerKind::Ddim, SamplerKind::Ddpm] {
            let (mut a, mut b) = ([0.5f32, -0.2, 1.0], [0.5f32, -0.2, 1.0]);
            let mut buf = [0f32; 3];
            sample(&computed, kind, 10, &mut a, &mut buf, &mut Rng::new(1), eps).unwrap();
            sample(&explicit, kind, 10, &mut b, &mut buf, &mut Rng::new(1), eps).unwrap();
            assert_eq!(a, b, "{kind:?}");
        }
    }
}

/// The sample checksum every board prints (`checksum: <16 hex digits>`): FNV-1a 64 of the samples'
/// f32 little-endian bytes, computed without a byte buffer.
pub fn sample_checksum(x: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in x {
        h = crate::format::fnv1a64_more(h, &v.to_le_bytes());
    }
    h
}
