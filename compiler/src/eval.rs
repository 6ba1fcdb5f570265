//! Quality, measured by running dmq-runtime itself on the host against the float model (tract).
use crate::import::FloatModel;
use crate::{CompileOptions, TimestepQuality};
use anyhow::{anyhow, Result};
use dmq_runtime::sampler::{self, Rng};
use dmq_runtime::{Model, Session};

pub fn sqnr_db(reference: &[f32], test: &[f32]) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (&r, &t) in reference.iter().zip(test) {
        s += (r as f64) * (r as f64);
        e += (r as f64 - t as f64).powi(2);
    }
    if e == 0.0 {
        return 200.0;
    }
    10.0 * (s / e).log10()
}

/// PSNR of two images in [-1, 1] (clamped), on the [0, 1] scale.
pub fn psnr_db(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let (x, y) = (
                (x.clamp(-1.0, 1.0) as f64 + 1.0) / 2.0,
                (y.clamp(-1.0, 1.0) as f64 + 1.0) / 2.0,
            );
            (x - y).powi(2)
        })
        .sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 {
        return 200.0;
    }
    10.0 * (1.0 / mse).log10()
}

/// An arena with the model's alignment.
pub fn arena_for(model: &Model) -> Vec<u128> {
    vec![0u128; model.arena_bytes().div_ceil(16)]
}

pub fn arena_bytes(a: &mut [u128]) -> &mut [u8] {
    let n = a.len() * 16;
    // u128 -> u8 view of the same memory
    unsafe { std::slice::from_raw_parts_mut(a.as_mut_ptr() as *mut u8, n) }
}

/// One measured input: timestep, latent, the float model's output, and the extra inputs' values.
pub type Probe = (f32, Vec<f32>, Vec<f32>, std::sync::Arc<Vec<Vec<f32>>>);

/// Float trajectories a compile has run, by seed and what else decides them (sampler, steps,
/// guidance, extra inputs' draws), with the values they hold: the ranking, the floor and the
/// measurement (before and after the baseline guard) ask for the same seeds more than once, and
/// on an SD-sized UNet each 50-step trajectory is 50 float evaluations of 25 s.
#[derive(Default)]
pub struct Trajectories {
    runs: std::collections::HashMap<(u64, String), Vec<Probe>>,
    values: usize,
}

/// Threads of the compile's runtime evaluations (see [`runtime_threads_for`]); 1 until a compile
/// sets it.
static RUNTIME_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Evaluations of a model this large (multiply-accumulates per evaluation) run on every core, the
/// float model's (tract) and the runtime's.
pub const THREADED_MACS: u64 = 1_000_000_000;

/// The threads a compile's runtime evaluations of a model with `macs` multiply-accumulates take: all
/// `cores` from [`THREADED_MACS`] on (an SD-sized UNet's int16 evaluation: 7.8 s on one thread,
/// 4.1 s on two), one below it, where an evaluation takes milliseconds and the tests of a suite
/// share the cores. The output is the same bits for any count (the runtime's guarantee).
pub fn runtime_threads_for(macs: u64, cores: usize) -> usize {
    if macs >= THREADED_MACS {
        cores.max(1)
    } else {
        1
    }
}

/// Sets the threads of the runtime evaluations that follow (every [`session_for`]).
pub fn set_runtime_threads(threads: usize) {
    RUNTIME_THREADS.store(threads.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// The threads [`session_for`] gives its sessions.
pub fn runtime_threads() -> usize {
    RUNTIME_THREADS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the plan and the summary say of `threads` runtime threads (nothing for one).
pub fn threads_note(threads: usize) -> String {
    match threads {
        1 => String::new(),
        t => format!(" (runtime evaluations on {t} threads)"),
    }
}

/// A session over `arena` with the probe's extra inputs set, on [`runtime_threads`] threads.
pub fn session_for<'m, 'a, 'r>(
    model: &'m Model<'a>,
    arena: &'r mut [u8],
    extras: &'r [Vec<f32>],
) -> Result<Session<'m, 'a, 'r>> {
    let mut sess = Session::new(model, arena)
        .map_err(|e| anyhow!("{e}"))?
        .with_threads(runtime_threads());
    for (e, v) in model.meta().extra_inputs.iter().zip(extras) {
        sess.set_input(e.name.as_str(), v)
            .map_err(|err| anyhow!("input {:?}: {err}", e.name.as_str()))?;
    }
    Ok(sess)
}

/// A float sampler trajectory from `seed` (the deployed sampler): the inputs the model sees at every
/// step. The extra inputs take the values [`crate::extras_for`] draws for the seed.
pub fn float_trajectory_inputs(
    float: &FloatModel,
    model: &Model,
    opts: &CompileOptions,
    seed: u64,
) -> Result<Vec<Probe>> {
    /// float values kept at most (2 GB): an SD-sized UNet's trajectory holds 1.6 M
    const KEEP: usize = 1 << 29;
    let key = (
        seed,
        format!(
            "{:?} {:?} {} {:?} {:?} {:?} {:?}",
            model.meta().sampler,
            opts.sampler,
            opts.steps,
            opts.guidance,
            opts.calib_inputs,
            opts.uncond_inputs,
            opts.timesteps
        ),
    );
    if let Some(traj) = float.trajectories.lock().unwrap().runs.get(&key) {
        // as a run would leave them: the extra inputs of this seed
        let extras = traj.first().map(|p| (*p.3).clone()).unwrap_or_default();
        float.set_extras(extras)?;
        return Ok(traj.clone());
    }
    let traj = run_trajectory(float, model, opts, seed)?;
    let mut held = float.trajectories.lock().unwrap();
    let n: usize = traj.iter().map(|p| p.1.len() + p.2.len()).sum();
    if held.values + n <= KEEP {
        held.values += n;
        held.runs.insert(key, traj.clone());
    }
    Ok(traj)
}

/// [`float_trajectory_inputs`] run.
fn run_trajectory(
    float: &FloatModel,
    model: &Model,
    opts: &CompileOptions,
    seed: u64,
) -> Result<Vec<Probe>> {
    let extras = std::sync::Arc::new(crate::extras_for(float, opts, seed)?);
    let uncond = match opts.guidance {
        Some(_) => crate::uncond_extras_for(float, opts, seed)?,
        None => vec![],
    };
    float.set_extras((*extras).clone())?;
    let cfg = model.meta().sampler.clone();
    let n = model.latent_len();
    let mut rng = Rng::new(seed);
    let mut x = vec![0f32; n];
    rng.fill_gaussian(&mut x);
    let mut buf = vec![0f32; n];
    let mut seen = vec![];
    let mut float_err = None;
    let r = sampler::sample(
        &cfg,
        opts.sampler,
        opts.steps,
        &mut x,
        &mut buf,
        &mut rng,
        |xin, t, out| {
            // the trajectory follows the guided sampler; each probe is the conditional pass
            let (y, yc) =
                crate::float_output(float, opts, Some((&extras, &uncond)), xin, t, |_, _| {})
                    .map_err(|e| {
                        float_err = Some(e);
                        dmq_runtime::Error::Unsupported("float evaluation failed")
                    })?;
            out.copy_from_slice(&y);
            seen.push((t, xin.to_vec(), yc, extras.clone()));
            Ok(())
        },
    );
    match (r, float_err) {
        (Err(_), Some(e)) => Err(e.context("the float model failed")),
        (r, _) => r.map(|_| seen).map_err(|e| anyhow!("{e}")),
    }
}

/// The inputs a compile measures on, for trajectory `seed`: the float trajectory's, except that with
/// `--calib-source forward`, where the trajectory has drifted away from the forward process (see
/// calib), a forward-process sample (drawn from `probe_seed` and the step) with its float output,
/// as calibration took. The measurement, the ranking's and the floor's probes and the output
/// correction's fit all take these, so that none of them judges on inputs the others never see.
pub fn measured_inputs(
    float: &FloatModel,
    model: &Model,
    opts: &CompileOptions,
    seed: u64,
    probe_seed: u64,
) -> Result<Vec<Probe>> {
    let mut traj = float_trajectory_inputs(float, model, opts, seed)?;
    if opts.calib_source != crate::CalibSource::Forward {
        return Ok(traj);
    }
    for (i, (t, x, yf, _)) in traj.iter_mut().enumerate() {
        let cfg = &model.meta().sampler;
        if let Some(p) = crate::calib::drift_probe(cfg, opts.sampler, *t, x, probe_seed ^ i as u64)
        {
            *yf = float.run(&p, *t)?;
            *x = p;
        }
    }
    Ok(traj)
}

/// SQNR per scheduled timestep (every step of the schedule), median over `opts.eval_samples` float
/// trajectories started from seeds `seed0..`.
pub fn sqnr_over_schedule(
    float: &FloatModel,
    model: &Model,
    opts: &CompileOptions,
    seed0: u64,
) -> Result<Vec<TimestepQuality>> {
    Ok(sqnr_of_models(float, &[model], opts, seed0)?.remove(0))
}

/// [`sqnr_over_schedule`] of several models of the same float model on the same inputs: the float
/// trajectories are computed once and every model runs on each of them.
pub fn sqnr_of_models(
    float: &FloatModel,
    models: &[&Model],
    opts: &CompileOptions,
    seed0: u64,
) -> Result<Vec<Vec<TimestepQuality>>> {
    let Some(first) = models.first() else {
        return Ok(vec![]);
    };
    let mut arenas: Vec<Vec<u128>> = models.iter().map(|m| arena_for(m)).collect();
    let n = first.latent_len();
    // per model, per step: (t, SQNR of every input)
    let mut per_t: Vec<Vec<(f32, Vec<f64>)>> = vec![vec![]; models.len()];
    let pb = crate::progress_bar(
        (opts.eval_samples * opts.steps as usize * models.len()) as u64,
        "measuring",
        opts.progress,
    );
    for s in 0..opts.eval_samples {
        let inputs = measured_inputs(
            float,
            first,
            opts,
            seed0 + s as u64,
            seed0 ^ ((s as u64) << 20),
        )?;
        let extras = inputs.first().map(|p| p.3.clone()).unwrap_or_default();
        for ((model, arena), per_t) in models.iter().zip(&mut arenas).zip(&mut per_t) {
            let mut sess = session_for(model, arena_bytes(arena), &extras)?;
            for (i, (t, x, yf, _)) in inputs.iter().enumerate() {
                let mut yq = vec![0f32; n];
                sess.run(x, *t, &mut yq).map_err(|e| anyhow!("{e}"))?;
                if per_t.len() <= i {
                    per_t.push((*t, vec![]));
                }
                per_t[i].1.push(sqnr_db(yf, &yq));
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    Ok(per_t
        .into_iter()
        .map(|per_t| {
            per_t
                .into_iter()
                .map(|(t, mut v)| {
                    v.sort_by(|a, b| a.total_cmp(b));
                    TimestepQuality {
                        baseline_db: None,
                        int16_bytes: 0.0,
                        int16_macs: 0.0,
                        t,
                        sqnr_db: v[v.len() / 2],
                        min_db: v[0],
                    }
                })
                .collect()
        })
        .collect())
}

/// Per-op SQNR of every int8 tensor against the float model's value of the same tensor, for one input.
/// Runs the runtime op by op; the basis of sensitivity analysis.
pub fn per_layer_sqnr(
    float: &FloatModel,
    program: &crate::ir::Program,
    bytes: &[u8],
    latent: &[f32],
    t: f32,
    extras: &[Vec<f32>],
) -> Result<Vec<(usize, String, String, f64)>> {
    use tract_onnx::prelude::*;
    let model = Model::load(bytes).map_err(|e| anyhow!("{e}"))?;
    let mut values: std::collections::HashMap<usize, Vec<f32>> = Default::default();
    float.run_observed(latent, t, |node, outs: &TVec<TValue>| {
        if let Ok(v) = outs[0].cast_to::<f32>() {
            if let Ok(view) = v.to_plain_array_view::<f32>() {
                values.insert(node, view.iter().copied().collect());
            }
        }
    })?;
    let mut arena = arena_for(&model);
    let a = arena_bytes(&mut arena);
    let meta = model.meta().clone();
    let lat = meta.latent.offset as usize;
    a[lat..lat + 4 * latent.len()].copy_from_slice(bytemuck_f32(latent));
    if let Some(ts) = &meta.timestep {
        let o = ts.offset as usize;
        for i in 0..ts.numel() {
            a[o + 4 * i..o + 4 * i + 4].copy_from_slice(&t.to_le_bytes());
        }
    }
    for (e, v) in meta.extra_inputs.iter().zip(extras) {
        let o = e.tensor.offset as usize;
        a[o..o + 4 * v.len()].copy_from_slice(bytemuck_f32(v));
    }
    let mut rows = vec![];
    for (i, op) in model.stream_ops(model.stream_for(t)).enumerate() {
        let op = op.map_err(|e| anyhow!("{e}"))?;
        dmq_runtime::ops::run_record(&op, a, model.blob(), scalar_exec())
            .map_err(|e| anyhow!("op {i}: {e}"))?;
        let out = op.output();
        let id = program.ops[i].output();
        let info = program.t(id);
        let (width, signed16) = match out.dtype {
            dmq_runtime::format::DType::I8 => (1, false),
            dmq_runtime::format::DType::I16 => (2, true),
            _ => continue,
        };
        let Some(stat) = info.stat else { continue };
        let Some(reference) = values.get(&stat) else {
            continue;
        };
        let o = out.offset as usize;
        let q: Vec<f32> = a[o..o + width * out.numel()]
            .chunks_exact(width)
            .map(|b| {
                let v = if signed16 {
                    i16::from_le_bytes([b[0], b[1]]) as i32
                } else {
                    b[0] as i8 as i32
                };
                (v - out.zero) as f32 * out.scale
            })
            .collect();
        if q.len() == reference.len() {
            rows.push((
                i,
                program.ops[i].kind().to_string(),
                info.name.clone(),
                sqnr_db(reference, &q),
            ));
        }
    }
    Ok(rows)
}

fn bytemuck_f32(v: &[f32]) -> &[u8] {
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
}

/// Scalar kernels on one thread (op-by-op tools; sessions pick the CPU's tier).
pub fn scalar_exec() -> dmq_runtime::kernels::Exec {
    dmq_runtime::kernels::Exec {
        tier: dmq_runtime::kernels::Tier::Scalar,
        threads: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_models_runtime_evaluations_take_every_core() {
        // the bundled model and every trained fixture: tens to hundreds of M MACs
        assert_eq!(runtime_threads_for(33_300_000, 2), 1);
        assert_eq!(runtime_threads_for(THREADED_MACS - 1, 8), 1);
        // the 128x128 UNet (9.8 G) and an SD-sized one (402 G)
        assert_eq!(runtime_threads_for(9_800_000_000, 2), 2);
        assert_eq!(runtime_threads_for(401_609_000_000, 4), 4);
        assert_eq!(runtime_threads_for(401_609_000_000, 0), 1);
    }
}
