//! A session: a validated model, the caller's arena and the prepared ops of the stream it runs; the
//! samplers on the device, classifier-free guidance and the cache of the invariant ops' outputs.
use crate::blob::{BlobSource, Pager, PagerStats, Reader};
use crate::format::{ModelMeta, ARENA_ALIGN, MAX_EXTRA_INPUTS};
use crate::kernels::{self, Exec};
use crate::model::Model;
use crate::ops::Prepared;
use crate::verify::f32_region;
use crate::{Error, Result};

#[cfg(feature = "std")]
extern crate std;

/// Where the prepared ops live: the caller's slots, or (std) the session's own.
enum Slots<'r, 'a> {
    Borrowed(&'r mut [Prepared<'a>]),
    #[cfg(feature = "std")]
    Owned(std::vec::Vec<Prepared<'a>>),
}

impl<'a> Slots<'_, 'a> {
    /// The first `n` slots (the caller's storage may be longer than one stream).
    fn get(&mut self, n: usize) -> &mut [Prepared<'a>] {
        let all: &mut [Prepared<'a>] = match self {
            Slots::Borrowed(s) => s,
            #[cfg(feature = "std")]
            Slots::Owned(v) => v,
        };
        let n = n.min(all.len());
        &mut all[..n]
    }
}

/// Which (stream, input set) the outputs of the invariant ops (see `ModelMeta::invariant_ops`) in
/// the arena and in the guidance stash belong to — stream 0 for all when every stream shares those
/// ops; input set 0 is the conditional one, 1 the unconditional — and how often they were computed.
#[derive(Debug, Clone, Copy, Default)]
struct InvariantCache {
    live: Option<(usize, u8)>,
    stash: Option<(usize, u8)>,
    computed: u32,
}

impl InvariantCache {
    fn clear(&mut self) {
        self.live = None;
        self.stash = None;
    }
}

/// What runs the ops: the model, the op tensors' part of the arena and the prepared stream.
struct Engine<'m, 'a, 'r> {
    model: &'m Model<'a>,
    arena: &'r mut [u8],
    slots: Slots<'r, 'a>,
    /// the stream whose ops the slots hold
    planned: Option<usize>,
    ex: Exec,
    cache: InvariantCache,
    /// a paged model's weight cache and blob source (see [`Session::with_pager`])
    paged: Option<(Pager<'r>, &'r mut dyn BlobSource)>,
}

/// The extra inputs of one pass.
type Extras<'r> = [Option<&'r [f32]>; MAX_EXTRA_INPUTS];

/// An executable pairing of a validated model and a caller-owned arena.
pub struct Session<'m, 'a, 'r> {
    engine: Engine<'m, 'a, 'r>,
    /// The sampler's f32 scratch (latent-sized), carved from the end of the arena.
    state: &'r mut [f32],
    /// Values of the model's extra inputs (see [`Session::set_input`]).
    extras: Extras<'r>,
    /// Their values for the unconditional pass of classifier-free guidance.
    uncond: Extras<'r>,
    /// Guidance scale and its scratch: the unconditional output, then (if long enough) the stash
    /// of the other input set's invariant outputs.
    guidance: Option<(f32, &'r mut [f32])>,
}

impl<'m, 'a, 'r> Session<'m, 'a, 'r> {
    /// A session over `arena` (at least [`Model::arena_bytes`], 16-byte aligned) with the prepared
    /// ops in `plan` (at least [`Model::plan_len`] slots, e.g. `[Prepared::IDLE; N]` in a static).
    /// Nothing is allocated, here or later.
    pub fn with_plan(
        model: &'m Model<'a>,
        arena: &'r mut [u8],
        plan: &'r mut [Prepared<'a>],
    ) -> Result<Self> {
        if plan.len() < model.plan_len() {
            return Err(Error::PlanLength {
                needed: model.plan_len(),
                got: plan.len(),
            });
        }
        Self::build(model, arena, Slots::Borrowed(plan), None)
    }

    /// A session over a paged model ([`Model::load_paged`]): each op is prepared just before it
    /// runs, its blob arrays read from `src` into `cache` (16-byte aligned, at least
    /// [`Model::min_cache_bytes`]) unless the cache holds them. The outputs are the bits a session
    /// over the whole file computes. Nothing is allocated.
    pub fn with_pager(
        model: &'m Model<'a>,
        arena: &'r mut [u8],
        src: &'r mut dyn BlobSource,
        cache: &'r mut [u8],
    ) -> Result<Self> {
        if !model.paged() {
            return Err(Error::Unsupported(
                "Session::with_pager runs a model loaded with Model::load_paged",
            ));
        }
        if cache.len() < model.min_cache_bytes() {
            return Err(Error::Cache {
                needed: model.min_cache_bytes(),
                got: cache.len(),
            });
        }
        let pager = Pager::new(cache, model.blob_len() as u32)?;
        Self::build(model, arena, Slots::Borrowed(&mut []), Some((pager, src)))
    }

    /// What the weight cache of a paged session did so far: reads, bytes read, arrays found.
    pub fn pager_stats(&self) -> Option<PagerStats> {
        self.engine.paged.as_ref().map(|(p, _)| p.stats())
    }

    /// A session over `arena` whose prepared ops the session keeps itself (std builds; see
    /// [`Session::with_plan`]). `run` and `sample` still allocate nothing.
    #[cfg(feature = "std")]
    pub fn new(model: &'m Model<'a>, arena: &'r mut [u8]) -> Result<Self> {
        let slots = std::vec![Prepared::Idle; model.plan_len()];
        Self::build(model, arena, Slots::Owned(slots), None)
    }

    fn build(
        model: &'m Model<'a>,
        arena: &'r mut [u8],
        slots: Slots<'r, 'a>,
        paged: Option<(Pager<'r>, &'r mut dyn BlobSource)>,
    ) -> Result<Self> {
        if model.paged() && paged.is_none() {
            return Err(Error::Unsupported(
                "a paged model runs in a session made with Session::with_pager",
            ));
        }
        let needed = model.arena_bytes();
        if arena.len() < needed || (arena.as_ptr() as usize) % ARENA_ALIGN as usize != 0 {
            return Err(Error::Arena {
                needed,
                got: arena.len(),
            });
        }
        let meta = model.meta();
        let split = meta.sampler_state as usize;
        let n = meta.latent.numel();
        let (ops, rest) = arena.split_at_mut(split);
        let state = rest
            .get_mut(..n * 4)
            .ok_or(Error::Arena { needed, got: split })?;
        let state = crate::arena::out_f32(state)?;
        Ok(Session {
            engine: Engine {
                model,
                arena: ops,
                slots,
                planned: None,
                ex: Exec {
                    tier: kernels::Tier::detect(),
                    threads: 1,
                },
                cache: InvariantCache::default(),
                paged,
            },
            state,
            extras: [None; MAX_EXTRA_INPUTS],
            uncond: [None; MAX_EXTRA_INPUTS],
            guidance: None,
        })
    }

    /// Sets the values of an extra model input (a condition or an embedding) by its ONNX name; they
    /// are copied into the arena before every evaluation, so one call serves a whole generation.
    pub fn set_input(&mut self, name: &str, values: &'r [f32]) -> Result<()> {
        let k = self.extra_index(name, values)?;
        self.extras[k] = Some(values);
        self.engine.cache.clear();
        Ok(())
    }

    /// Sets the value an extra input takes in the unconditional pass of classifier-free guidance
    /// (an empty-prompt embedding, a null class label); inputs not set here keep their
    /// [`Session::set_input`] value in both passes.
    pub fn set_uncond_input(&mut self, name: &str, values: &'r [f32]) -> Result<()> {
        let k = self.extra_index(name, values)?;
        self.uncond[k] = Some(values);
        self.engine.cache.clear();
        Ok(())
    }

    /// Classifier-free guidance for [`Session::sample`]: every step evaluates the model with the
    /// conditional and the unconditional inputs — same timestep, same op stream, same time path — and
    /// the sampler takes `uncond + scale · (cond - uncond)`. `scratch` holds the unconditional
    /// output and, when it has [`Model::guidance_scratch_len`] elements, the unconditional outputs
    /// of the invariant ops too, so that both input sets' keys and values are computed once per
    /// generation; a latent-sized `scratch` recomputes them once per step instead. Needs at least
    /// one [`Session::set_uncond_input`].
    pub fn set_guidance(&mut self, scale: f32, scratch: &'r mut [f32]) -> Result<()> {
        let model = self.engine.model;
        let n = model.meta().output.numel();
        if scratch.len() != n && scratch.len() != model.guidance_scratch_len() {
            kernels::check_len(model.guidance_scratch_len(), scratch.len())?;
        }
        if !scale.is_finite() {
            return Err(Error::Input("the guidance scale must be finite"));
        }
        self.guidance = Some((scale, scratch));
        self.engine.cache.clear();
        Ok(())
    }

    /// How many times this session has computed the invariant ops (see
    /// `ModelMeta::invariant_ops`): once per generation and input set when they are cached.
    pub fn invariant_computations(&self) -> u32 {
        self.engine.cache.computed
    }

    fn extra_index(&self, name: &str, values: &[f32]) -> Result<usize> {
        let inputs = &self.engine.model.meta().extra_inputs;
        let k = inputs
            .iter()
            .position(|e| e.name.as_str() == name)
            .ok_or(Error::Unsupported(
                "the model has no extra input of that name",
            ))?;
        kernels::check_len(inputs[k].tensor.numel(), values.len())?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input("an extra input holds a non-finite value"));
        }
        Ok(k)
    }

    pub fn model(&self) -> &'m Model<'a> {
        self.engine.model
    }

    /// The kernel tier this session runs.
    pub fn tier(&self) -> kernels::Tier {
        self.engine.ex.tier
    }

    /// The worker threads the kernels may use.
    pub fn threads(&self) -> usize {
        self.engine.ex.threads
    }

    /// Splits the large convolutions and linears across `threads` threads (the calling one
    /// and `threads - 1` workers that spin between ops), at most one per core: more would only wait
    /// for each other. The output is the same bits for every count. Without std the runtime runs on
    /// the calling core whatever this says.
    pub fn with_threads(mut self, threads: usize) -> Self {
        #[cfg(feature = "std")]
        {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            self.engine.ex.threads = threads.clamp(1, cores);
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = threads;
            self.engine.ex.threads = 1;
        }
        self
    }

    /// Runs with another tier (if this CPU supports it; otherwise keeps the detected one). Every tier
    /// gives the same bits.
    pub fn with_tier(mut self, tier: kernels::Tier) -> Self {
        if tier.supported() {
            self.engine.ex.tier = tier;
        }
        self
    }

    /// Writes the inputs into the arena without running (for [`Session::run_ops`]).
    pub fn prepare(&mut self, latent: &[f32], t: f32) -> Result<()> {
        self.engine.write_inputs(&self.extras, latent, t)
    }

    /// One evaluation of the denoiser: `out = model(latent, t)`. No allocation; never panics.
    pub fn run(&mut self, latent: &[f32], t: f32, out: &mut [f32]) -> Result<()> {
        self.engine.evaluate(&self.extras, 0, None, latent, t, out)
    }

    /// Time per kind of op for timestep `t`'s stream, averaged over `evals` evaluations:
    /// `(op name, ops of that kind, mean ms per evaluation)`, slowest first (std builds).
    #[cfg(feature = "std")]
    pub fn profile(
        &mut self,
        latent: &[f32],
        t: f32,
        evals: usize,
    ) -> Result<std::vec::Vec<(&'static str, usize, f64)>> {
        extern crate std;
        use std::vec::Vec;
        let mut rows: Vec<(&'static str, usize, f64)> = Vec::new();
        for op in self.profile_ops(latent, t, evals)? {
            match rows.iter_mut().find(|r| r.0 == op.name) {
                Some(r) => (r.1, r.2) = (r.1 + 1, r.2 + op.ms),
                None => rows.push((op.name, 1, op.ms)),
            }
        }
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Ok(rows)
    }

    /// Time per op of timestep `t`'s stream, averaged over `evals` evaluations, in the stream's
    /// order (std builds): which ops of a kind cost the most, and their output shapes.
    #[cfg(feature = "std")]
    pub fn profile_ops(
        &mut self,
        latent: &[f32],
        t: f32,
        evals: usize,
    ) -> Result<std::vec::Vec<OpTime>> {
        extern crate std;
        use std::time::Instant;
        use std::vec::Vec;
        let stream = self.engine.model.stream_for(t);
        let mut rows: Vec<OpTime> = Vec::new();
        let evals = evals.max(1);
        for _ in 0..evals {
            self.prepare(latent, t)?;
            let (mut last, mut k) = (Instant::now(), 0);
            self.run_ops(stream, |index, op| {
                let now = Instant::now();
                let ms = (now - last).as_secs_f64() * 1e3;
                last = now;
                match rows.get_mut(k) {
                    Some(r) => r.ms += ms,
                    None => rows.push(OpTime {
                        index,
                        name: op.name(),
                        output: op
                            .output()
                            .map(|v| (v.dtype, v.dims[..v.rank as usize].to_vec())),
                        ms,
                    }),
                }
                k += 1;
            })?;
        }
        for r in rows.iter_mut() {
            r.ms /= evals as f64;
        }
        Ok(rows)
    }

    /// Runs the ops of `stream` on whatever the arena holds; `observe(index, op)` is called after
    /// each (for profiling).
    pub fn run_ops(
        &mut self,
        stream: usize,
        mut observe: impl FnMut(u32, &Prepared<'_>),
    ) -> Result<()> {
        let e = &mut self.engine;
        e.cache.clear();
        e.run_stream(stream, (0, None), |i, p| observe(i, p))
    }

    /// Runs a whole sampler on the device: `x` holds the initial noise on entry and the sample on exit.
    /// Timesteps come from the model's schedule (see [`crate::sampler::timesteps`]).
    pub fn sample(
        &mut self,
        kind: crate::SamplerKind,
        steps: u32,
        x: &mut [f32],
        rng: &mut crate::sampler::Rng,
    ) -> Result<()> {
        self.sample_observed(kind, steps, x, rng, |_| {})
    }

    /// [`Session::sample`] that calls `mark(i)` when step `i` begins (before its model evaluation)
    /// and `mark(steps)` after the last step, so `mark(i + 1) - mark(i)` brackets step `i`: its
    /// evaluation and its sampler update. For latency harnesses; the sample is the same.
    pub fn sample_observed(
        &mut self,
        kind: crate::SamplerKind,
        steps: u32,
        x: &mut [f32],
        rng: &mut crate::sampler::Rng,
        mut mark: impl FnMut(u32),
    ) -> Result<()> {
        let model = self.engine.model;
        let meta: &ModelMeta = model.meta();
        let extras = self.extras;
        let mut uncond = extras;
        for (u, c) in uncond.iter_mut().zip(self.uncond) {
            if c.is_some() {
                *u = c;
            }
        }
        let n = meta.output.numel();
        let (mut guidance, mut stash) = match self.guidance.as_mut() {
            Some((s, b)) => {
                let (un, rest) = b.split_at_mut(n.min(b.len()));
                let stash: &mut [u8] = bytemuck::cast_slice_mut(rest);
                (
                    Some((*s, un)),
                    stash.get_mut(..meta.invariant_bytes as usize),
                )
            }
            None => (None, None),
        };
        if guidance.is_some() && self.uncond.iter().all(|u| u.is_none()) {
            return Err(Error::Unsupported(
                "guidance needs an unconditional value for an extra input (Session::set_uncond_input)",
            ));
        }
        let mut step = 0u32;
        let engine = &mut self.engine;
        crate::sampler::sample(
            &meta.sampler,
            kind,
            steps,
            x,
            self.state,
            rng,
            |xin, t, eps| {
                mark(step);
                step += 1;
                let mut pass = |which: u8, out: &mut [f32]| {
                    let inputs = if which == 0 { &extras } else { &uncond };
                    engine.evaluate(inputs, which, stash.as_deref_mut(), xin, t, out)
                };
                match guidance.as_mut() {
                    None => pass(0, eps)?,
                    Some((scale, un)) => {
                        // the passes alternate their order, so that consecutive evaluations share an
                        // input set and the ops that depend only on it run once per step, not twice
                        // (each pass computes the same bits in either order)
                        if step % 2 == 1 {
                            pass(0, eps)?;
                            pass(1, un)?;
                        } else {
                            pass(1, un)?;
                            pass(0, eps)?;
                        }
                        for (e, &u) in eps.iter_mut().zip(un.iter()) {
                            *e = u + *scale * (*e - u);
                        }
                    }
                }
                Ok(())
            },
        )?;
        mark(steps);
        Ok(())
    }
}

/// An op's error with the op's index in its stream.
fn at_op(e: Error, i: usize) -> Error {
    match e {
        Error::Invalid { what, .. } => Error::Invalid { op: i as u32, what },
        e => e,
    }
}

impl<'a> Engine<'_, 'a, '_> {
    /// Runs the ops of `stream` from op `from` on: from the prepared slots, or for a paged model
    /// each prepared just before it runs. With `folded` (a row of the time table) the ops the
    /// table skips are not run; those with an output in the table get their row's values.
    fn run_stream(
        &mut self,
        stream: usize,
        (from, folded): (u32, Option<usize>),
        mut observe: impl FnMut(u32, &Prepared<'_>),
    ) -> Result<()> {
        let model = self.model;
        let n = model.plan_len();
        let ex = self.ex;
        let arena_len = model.meta().sampler_state as usize;
        if let Some((pager, src)) = self.paged.as_mut() {
            for (i, op) in model.stream_ops(stream).enumerate().skip(from as usize) {
                let i = i as u32;
                let table = time_skip(model, &mut Reader::Source(&mut **src), folded, i)?;
                if table == Some(None) {
                    continue;
                }
                let (p, _) = crate::blob::prepare_paged(&op?, (i, arena_len), pager, &mut **src)?;
                let mut reader = Reader::Source(&mut **src);
                run_or_fill((self.arena, model, ex), &p, &mut reader, (i, table))?;
                observe(i, &p);
            }
            return Ok(());
        }
        self.ensure(stream)?;
        let mut reader = Reader::Whole(model.blob());
        for (i, p) in self.slots.get(n).iter().enumerate().skip(from as usize) {
            let i = i as u32;
            let table = time_skip(model, &mut reader, folded, i)?;
            if table == Some(None) {
                continue;
            }
            run_or_fill((self.arena, model, ex), p, &mut reader, (i, table))?;
            observe(i, p);
        }
        Ok(())
    }

    /// Prepares the ops of `stream` unless the slots hold them already.
    fn ensure(&mut self, stream: usize) -> Result<()> {
        if self.planned != Some(stream) {
            self.planned = None;
            self.model
                .prepare_stream(stream, self.slots.get(self.model.plan_len()))?;
            self.planned = Some(stream);
        }
        Ok(())
    }

    /// Copies the extra inputs, the latent and the timestep into the arena.
    fn write_inputs(&mut self, extras: &Extras<'_>, latent: &[f32], t: f32) -> Result<()> {
        let meta = self.model.meta();
        if !t.is_finite() {
            return Err(Error::Input("the timestep must be finite"));
        }
        if latent.iter().any(|v| !v.is_finite()) {
            return Err(Error::Input("the latent holds a non-finite value"));
        }
        for (k, e) in meta.extra_inputs.iter().enumerate() {
            let v = extras.get(k).copied().flatten().ok_or(Error::Unsupported(
                "an extra model input is not set (Session::set_input)",
            ))?;
            let r = f32_region(self.arena, &e.tensor)?;
            kernels::check_len(r.len(), v.len())?;
            r.copy_from_slice(v);
        }
        kernels::check_len(meta.latent.numel(), latent.len())?;
        f32_region(self.arena, &meta.latent)?.copy_from_slice(latent);
        if let Some(ts) = &meta.timestep {
            f32_region(self.arena, ts)?.fill(t);
        }
        Ok(())
    }

    /// The row of the folded time path for `t`, if `t` is one of its scheduled timesteps.
    fn folded_row(&mut self, t: f32) -> Result<Option<usize>> {
        let Some(tt) = &self.model.meta().time_table else {
            return Ok(None);
        };
        let mut reader = match self.paged.as_mut() {
            Some((_, src)) => Reader::Source(&mut **src),
            None => Reader::Whole(self.model.blob()),
        };
        for k in 0..(tt.timesteps.len / 4) as usize {
            let mut b = [0u8; 4];
            reader.read(tt.timesteps.offset as u64 + 4 * k as u64, &mut b)?;
            if f32::from_le_bytes(b).to_bits() == t.to_bits() {
                return Ok(Some(k));
            }
        }
        Ok(None)
    }

    /// Whether the invariant ops' outputs for `key` are in the arena, swapping in the guidance stash
    /// when it holds them.
    fn invariants_cached(&mut self, key: (usize, u8), stash: Option<&mut [u8]>) -> Result<bool> {
        let meta = self.model.meta();
        if meta.invariant_ops == 0 {
            return Ok(false);
        }
        let mut cached = self.cache.live == Some(key);
        if let (false, Some(stash)) = (cached, stash) {
            let pinned =
                self.arena
                    .get_mut(..meta.invariant_bytes as usize)
                    .ok_or(Error::Invalid {
                        op: u32::MAX,
                        what: "invariant outputs outside the arena",
                    })?;
            kernels::check_len(pinned.len(), stash.len())?;
            pinned.swap_with_slice(stash);
            core::mem::swap(&mut self.cache.live, &mut self.cache.stash);
            cached = self.cache.live == Some(key);
        }
        if !cached {
            self.cache.live = None;
            self.cache.computed = self.cache.computed.saturating_add(1);
        }
        Ok(cached)
    }

    /// One evaluation with input set `which` (0 conditional, 1 unconditional).
    fn evaluate(
        &mut self,
        extras: &Extras<'_>,
        which: u8,
        stash: Option<&mut [u8]>,
        latent: &[f32],
        t: f32,
        out: &mut [f32],
    ) -> Result<()> {
        let model = self.model;
        let meta = model.meta();
        kernels::check_len(meta.output.numel(), out.len())?;
        self.write_inputs(extras, latent, t)?;
        let stream = model.stream_for(t);
        let folded = self.folded_row(t)?;
        // the invariant ops' outputs are still in the arena when they were last computed for this
        // input set (and this stream, unless every stream shares them), or in the stash with which
        // guidance keeps the other set's (`set_input` clears the cache)
        let key = (if model.invariant_shared() { 0 } else { stream }, which);
        let cached = self.invariants_cached(key, stash)?;
        // cached invariant outputs: the stream runs from the first op after them
        let from = if cached { meta.invariant_ops } else { 0 };
        self.run_stream(stream, (from, folded), |_, _| {})?;
        out.copy_from_slice(f32_region(self.arena, &meta.output)?);
        if meta.invariant_ops > 0 {
            self.cache.live = Some(key);
        }
        Ok(())
    }
}

/// Whether op `i` is left to the time table at `folded`'s row: `None` when it runs, `Some(None)`
/// when it is skipped, `Some(Some((row, at)))` when its output is the row's values from `at`.
fn time_skip(
    model: &Model<'_>,
    reader: &mut Reader,
    folded: Option<usize>,
    i: u32,
) -> Result<Option<Option<(usize, usize)>>> {
    let meta = model.meta();
    let (Some(k), Some(tt)) = (folded, &meta.time_table) else {
        return Ok(None);
    };
    if !crate::verify::skipped(meta, reader, i)? {
        return Ok(None);
    }
    let out = tt.outputs.iter().find(|o| o.op == i);
    Ok(Some(out.map(|o| (k, o.at as usize))))
}

/// Runs prepared op `i`, or writes its output from the time table's row when [`time_skip`] says
/// so (`table`; ops it skips without an output are not passed here).
fn run_or_fill(
    (arena, model, ex): (&mut [u8], &Model<'_>, Exec),
    p: &Prepared<'_>,
    reader: &mut Reader,
    (i, table): (u32, Option<Option<(usize, usize)>>),
) -> Result<()> {
    match table {
        Some(Some(row)) => fill_from_table((arena, model), p, reader, row),
        _ => p.run(arena, ex).map_err(|e| at_op(e, i as usize)),
    }
}

/// Writes row `k` of the folded time path, from `at`, into op `p`'s output.
fn fill_from_table(
    (arena, model): (&mut [u8], &Model<'_>),
    p: &Prepared<'_>,
    reader: &mut Reader,
    (k, at): (usize, usize),
) -> Result<()> {
    let bad = Error::Invalid {
        op: u32::MAX,
        what: "time table row",
    };
    let tt = model.meta().time_table.as_ref().ok_or(bad)?;
    let out = p.output().ok_or(bad)?;
    let dst = arena.get_mut(out.range()).ok_or(bad)?;
    let n = dst.len() / 4;
    let (row, values) = (tt.row as usize, tt.values);
    let start = (k * row + at) as u64;
    if at + n > row || (start + n as u64) * 4 > values.len as u64 {
        return Err(bad);
    }
    reader.read(values.offset as u64 + start * 4, dst)?;
    let dst = crate::arena::out_f32(dst)?;
    for d in dst.iter_mut() {
        *d = f32::from_bits(u32::from_le(d.to_bits()));
    }
    Ok(())
}

/// One op's mean time in [`Session::profile_ops`] (std builds).
#[cfg(feature = "std")]
#[derive(Debug, Clone)]
pub struct OpTime {
    /// the op's index in the file's op list
    pub index: u32,
    pub name: &'static str,
    /// the output's code type and shape (ops without an integer output: none)
    pub output: Option<(crate::format::DType, std::vec::Vec<u32>)>,
    /// mean milliseconds per evaluation
    pub ms: f64,
}
