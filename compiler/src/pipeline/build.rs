//! Building a `.dmq` from the program and a set of timestep buckets: one op stream per bucket over
//! the same tensors, weights shared through the blob, the invariant ops hoisted, one arena plan.
use crate::calib::{self, Calibration};
use crate::ir::{Program, TensorId};
use crate::quant::{self, Range};
use crate::{emit, memplan, CompileOptions};
use anyhow::Result;
use dmq_runtime::format::SamplerConfig;
use std::collections::{HashMap, HashSet};

/// A timestep bucket: the upper timestep bound separating it from the next, its ranges, the
/// calibrated steps it serves and which program it runs.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub upper: Option<f32>,
    pub ranges: HashMap<usize, Range>,
    pub steps: Vec<usize>,
    pub kind: Kind,
}

/// The program a bucket's stream runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// the compile's program: int8 activations with the protected tensors at int16
    Main,
    /// the quality-floor program: every int16-capable tensor at 16 bits
    Floor,
    /// the plain baseline: int8 everywhere, the one-range min-max ranges (steps where the bucket's
    /// own quantization measured worse than this)
    Baseline,
}

/// The programs a build's buckets run, with the tensors whose weights stay 8-bit at W4.
#[derive(Clone, Copy)]
pub(crate) struct Programs<'p> {
    pub main: (&'p Program, &'p [TensorId]),
    pub floor: Option<(&'p Program, &'p [TensorId])>,
    pub baseline: Option<&'p Program>,
}

impl<'p> Programs<'p> {
    pub fn main(p: &'p Program, keep8: &'p [TensorId]) -> Self {
        Programs {
            main: (p, keep8),
            floor: None,
            baseline: None,
        }
    }

    fn of(&self, kind: Kind) -> (&'p Program, &'p [TensorId]) {
        match (kind, self.floor, self.baseline) {
            (Kind::Floor, Some(f), _) => f,
            (Kind::Baseline, _, Some(b)) => (b, &[]),
            _ => self.main,
        }
    }
}

/// What every build of one compile shares.
pub(crate) struct Builder<'c> {
    pub cal: &'c Calibration,
    pub opts: &'c CompileOptions,
    pub cfg: SamplerConfig,
    /// Tensors that depend only on the extra inputs (a text embedding, its keys and values) take
    /// one quantization in every stream, since their values do not change with t: all-steps ranges,
    /// and the main program's element types and weight bits in the floor streams. Their ops are then
    /// the same records in every stream and the runtime computes them once per generation.
    pub invariant_roots: HashSet<TensorId>,
    pub invariant_ranges: HashMap<usize, Range>,
    /// the output's correlated-error correction (see `super::correct`): the root of the tensor the
    /// output is dequantized from, and per sampling step the sums it is fitted on (empty: none)
    pub output_root: Option<TensorId>,
    pub output_fit: Vec<super::correct::Fit>,
}

impl<'c> Builder<'c> {
    pub fn new(program: &Program, cal: &'c Calibration, opts: &'c CompileOptions) -> Self {
        let invariant_roots = program.extra_only_roots();
        let stats: HashSet<usize> = invariant_roots
            .iter()
            .filter_map(|&r| program.t(r).stat)
            .collect();
        let mut b = Builder {
            cal,
            opts,
            cfg: crate::sampler_config(opts),
            invariant_roots,
            invariant_ranges: HashMap::new(),
            output_root: None,
            output_fit: vec![],
        };
        if !stats.is_empty() {
            let all: Vec<usize> = (0..cal.timesteps.len()).collect();
            b.invariant_ranges = b
                .ranges_of(&all, true)
                .into_iter()
                .filter(|(s, _)| stats.contains(s))
                .collect();
        }
        b
    }

    /// The ranges of a bucket of steps: their union, with error-minimising int8 clipping when
    /// `refine` (the plain baseline takes min-max).
    pub fn ranges_of(&self, steps: &[usize], refine: bool) -> HashMap<usize, Range> {
        let mut ranges = calib::union(&self.cal.per_step, steps);
        if refine && self.opts.range_p > 0.0 {
            calib::refine(&mut ranges, &self.cal.samples, steps, self.opts.range_p);
        }
        ranges
    }

    /// The one-range baseline bucket.
    pub fn baseline(&self) -> Vec<Bucket> {
        let all: Vec<usize> = (0..self.cal.timesteps.len()).collect();
        vec![Bucket {
            upper: None,
            ranges: self.ranges_of(&all, false),
            steps: all,
            kind: Kind::Main,
        }]
    }

    /// `timestep_groups` buckets of neighbouring steps that lose the fewest bits.
    pub fn buckets(&self) -> Vec<Bucket> {
        let cal = self.cal;
        calib::buckets_by_ranges(
            &cal.per_step,
            &cal.timesteps,
            self.opts.timestep_groups,
            &cal.probs,
        )
        .into_iter()
        .map(|(steps, upper)| Bucket {
            ranges: self.ranges_of(&steps, true),
            upper,
            steps,
            kind: Kind::Main,
        })
        .collect()
    }

    /// One op stream per bucket, sharing weights through the blob; each bucket runs the program of
    /// its kind (with that program's 8-bit weight layers). The arena plan covers the widest
    /// element type of every tensor and the largest scratch of every op over the streams.
    pub fn build(
        &self,
        programs: Programs<'_>,
        buckets: &[Bucket],
    ) -> Result<(Vec<u8>, memplan::Plan)> {
        let (main, keep8) = programs.main;
        let mut blob = quant::Blob::default();
        let mut streams = vec![];
        let mut wide = main.clone();
        for b in buckets {
            let (p, own_keep8) = programs.of(b.kind);
            let mut ranges = b.ranges.clone();
            if buckets.len() > 1 {
                ranges.extend(self.invariant_ranges.iter().map(|(s, r)| (*s, *r)));
            }
            let inv = &self.invariant_roots;
            let mut k8: Vec<TensorId> = own_keep8
                .iter()
                .filter(|r| !inv.contains(r))
                .copied()
                .collect();
            k8.extend(keep8.iter().filter(|r| inv.contains(r)));
            for (w, t) in wide.tensors.iter_mut().zip(&p.tensors) {
                if t.dtype.size() > w.dtype.size() {
                    w.dtype = t.dtype;
                }
            }
            let gains: Vec<(TensorId, f32)> = match (self.output_root, b.kind) {
                (Some(root), Kind::Main | Kind::Floor) => {
                    super::correct::gain(&self.output_fit, &b.steps)
                        .map(|g| (root, g as f32))
                        .into_iter()
                        .collect()
                }
                _ => vec![],
            };
            let (bits, h) = (self.opts.weight_bits, &self.cal.hessians);
            let q = quant::quantize(p, &ranges, &mut blob, bits, &k8, &gains, h)?;
            streams.push((q, b.upper));
        }
        // ops that depend only on the extra inputs run once per generation: first in every stream
        let (invariant, order) = memplan::hoist_invariant(main, &mut streams);
        let scratch: Vec<usize> = (0..streams[0].0.scratch.len())
            .map(|i| streams.iter().map(|s| s.0.scratch[i]).max().unwrap_or(0))
            .collect();
        let mut plan = memplan::plan(&wide, &streams[0].0.ops, &scratch, invariant);
        plan.order = order;
        let t_range = (self.cal.t_min, self.cal.t_max);
        let bytes = emit::emit(main, &streams, &blob, &plan, self.cfg.clone(), t_range)?;
        Ok((bytes, plan))
    }

    /// The file with the timestep path folded for the scheduled timesteps, if asked for
    /// (`--fold-time-path`).
    pub fn fold(&self, program: &Program, bytes: Vec<u8>, plan: &memplan::Plan) -> Result<Vec<u8>> {
        if !self.opts.fold_time_path {
            return Ok(bytes);
        }
        let ts = &self.cal.timesteps;
        Ok(
            match super::fold_time::fold_time_path(program, &plan.order, &bytes, ts)? {
                Some(tt) => emit::with_time_table(&bytes, &tt)?,
                None => bytes,
            },
        )
    }
}
