//! What a hostile-file case does with a file: load it (with limits), and if it loads, run one
//! evaluation at an off-schedule and a scheduled timestep and a short sample with the model's
//! default sampler. Shared by the hostile suite and the cargo-fuzz target (`fuzz/`).
use dmq_runtime::sampler::Rng;
use dmq_runtime::{Error, Limits, Model, Session};

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// refused at load, with this error
    Refused(Error),
    /// loaded and ran
    Ran,
    /// loaded, then failed to run: a bug (validation must refuse what cannot run)
    FailedAfterLoad(Error),
}

/// The limits a caller facing untrusted files would set: work and arena within a factor of a
/// known-good model's.
pub fn limits_for(good: &Model<'_>) -> Limits {
    Limits {
        max_work_per_eval: good.work_per_eval().saturating_mul(8).max(1 << 20),
        max_arena_bytes: (good.arena_bytes() * 4).max(1 << 20),
    }
}

fn values(n: usize, v: f32) -> Vec<f32> {
    vec![v; n]
}

/// Loads `bytes` and, if that succeeds, runs it.
pub fn exercise(bytes: &[u8], limits: Limits) -> Outcome {
    let model = match Model::load_with(bytes, limits) {
        Ok(m) => m,
        Err(e) => return Outcome::Refused(e),
    };
    match run(&model) {
        Ok(()) => Outcome::Ran,
        Err(e) => Outcome::FailedAfterLoad(e),
    }
}

fn run(model: &Model<'_>) -> Result<(), Error> {
    let mut arena = vec![0u128; model.arena_bytes().div_ceil(16)];
    let arena: &mut [u8] = bytemuck_bytes(&mut arena);
    let meta = model.meta();
    // extra inputs: zeros (a valid class label, a neutral condition)
    let extras: Vec<Vec<f32>> = meta
        .extra_inputs
        .iter()
        .map(|e| values(e.tensor.numel(), 0.0))
        .collect();
    let mut sess = Session::new(model, arena)?;
    for (e, v) in meta.extra_inputs.iter().zip(&extras) {
        sess.set_input(e.name.as_str(), v)?;
    }
    let n = model.latent_len();
    let x = values(n, 0.5);
    let mut out = values(n, 0.0);
    let mid = 0.5 * (meta.t_min + meta.t_max);
    sess.run(&x, mid, &mut out)?;
    if let Some(&t) = meta.sampler.schedule.first() {
        sess.run(&x, t, &mut out)?;
    }
    // a timestep of the folded time path, whose outputs then come from its table
    if let Some(tt) = &meta.time_table {
        let ts =
            dmq_runtime::format::section(model.blob(), (tt.timesteps.offset, tt.timesteps.len))?;
        if let Some(b) = ts.get(..4) {
            let t = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if t.is_finite() {
                sess.run(&x, t, &mut out)?;
            }
        }
    }
    let mut xs = x.clone();
    let kind = meta.sampler.default_sampler.into();
    sess.sample(kind, 2, &mut xs, &mut Rng::new(1))
}

fn bytemuck_bytes(a: &mut [u128]) -> &mut [u8] {
    let n = a.len() * 16;
    // SAFETY: u128 -> u8 view of the same memory; any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr() as *mut u8, n) }
}
