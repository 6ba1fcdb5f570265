//! A validated model: [`Model::load`] parses the header, checks the checksums, decodes the metadata
//! and prepares every op record of every stream once (the check `ops::prepare` makes is the one a
//! session makes before running), so only a model whose every op can run is ever returned.
use crate::format::{section, Header, ModelMeta, Op, TRef};
use crate::ops::{self, Cx, Prepared};
use crate::{verify, Error, Result};

/// Bounds a caller can put on a model before running it (hostile or oversized files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// most multiply-accumulates (and element operations) one evaluation may take
    pub max_work_per_eval: u64,
    /// largest arena the caller will provide
    pub max_arena_bytes: usize,
}

impl Default for Limits {
    /// No limits beyond what the tensor sizes imply.
    fn default() -> Self {
        Limits {
            max_work_per_eval: u64::MAX,
            max_arena_bytes: usize::MAX,
        }
    }
}

/// A validated model. It borrows the file bytes (e.g. from `include_bytes!`) and can only be obtained
/// from [`Model::load`].
#[derive(Debug, Clone)]
pub struct Model<'a> {
    header: Header,
    meta: ModelMeta,
    ops: &'a [u8],
    blob: &'a [u8],
    /// Every stream's invariant records are the bytes of the first stream's.
    invariant_shared: bool,
    /// The largest work of one evaluation over the streams.
    work: u64,
}

impl<'a> Model<'a> {
    /// Parses and validates a `.dmq` file. Never panics; every failure is an [`Error`].
    pub fn load(bytes: &'a [u8]) -> Result<Model<'a>> {
        Self::load_with(bytes, Limits::default())
    }

    /// [`Model::load`] that also refuses a model needing more work per evaluation or a larger arena
    /// than `limits` allow.
    pub fn load_with(bytes: &'a [u8], limits: Limits) -> Result<Model<'a>> {
        let header = Header::parse(bytes)?;
        header.verify(bytes)?;
        let meta_b = section(bytes, header.meta)?;
        let ops = section(bytes, header.ops)?;
        let blob = section(bytes, header.blob)?;
        let meta: ModelMeta = postcard::from_bytes(meta_b).map_err(|_| Error::Metadata)?;
        verify::meta(&meta, header.n_ops, blob)?;
        if meta.arena_bytes as usize > limits.max_arena_bytes {
            return Err(Error::Arena {
                needed: meta.arena_bytes as usize,
                got: limits.max_arena_bytes,
            });
        }
        let mut model = Model {
            header,
            meta,
            ops,
            blob,
            invariant_shared: false,
            work: 0,
        };
        model.work = model.check_streams()?;
        if model.work > limits.max_work_per_eval {
            return Err(Error::WorkLimit {
                macs: model.work,
                limit: limits.max_work_per_eval,
            });
        }
        model.invariant_shared = model.meta.invariant_ops > 0
            && (1..model.streams())
                .all(|k| model.invariant_records(k) == model.invariant_records(0));
        Ok(model)
    }

    /// Decodes and prepares every record of every stream (streams back to back, nothing after
    /// them) and checks the time table against the first. Returns the largest work of a stream.
    fn check_streams(&self) -> Result<u64> {
        let m = &self.meta;
        let cx = |op| Cx {
            op,
            arena: m.sampler_state as usize,
            blob: self.blob,
        };
        let mut at = 0usize;
        let mut most = 0u64;
        for &off in m.stream_offsets.iter() {
            if off as usize != at {
                return Err(Error::Invalid {
                    op: u32::MAX,
                    what: "op streams are not contiguous",
                });
            }
            let mut rest = self.ops.get(at..).ok_or(Error::Truncated)?;
            let (before, mut work) = (rest.len(), 0u64);
            for i in 0..m.ops_per_stream {
                let (op, r) =
                    postcard::take_from_bytes::<Op<TRef>>(rest).map_err(|_| Error::Metadata)?;
                rest = r;
                let p = ops::prepare(&op, &cx(i))?;
                work = work.saturating_add(p.work());
                // every stream reads the same table, so each stream's op is checked against it
                verify::time_table_op(m, self.blob, i, op.class(), &p)?;
            }
            most = most.max(work);
            at += before - rest.len();
        }
        if at != self.ops.len() {
            return Err(Error::Invalid {
                op: u32::MAX,
                what: "trailing bytes after the op records",
            });
        }
        Ok(most)
    }

    /// The bytes of stream `k`'s invariant records (validated, so they decode).
    fn invariant_records(&self, k: usize) -> Option<&'a [u8]> {
        let off = *self.meta.stream_offsets.get(k)? as usize;
        let start = self.ops.get(off..)?;
        let mut rest = start;
        for _ in 0..self.meta.invariant_ops {
            rest = postcard::take_from_bytes::<Op<TRef>>(rest).ok()?.1;
        }
        start.get(..start.len() - rest.len())
    }

    /// Whether one computation of the invariant ops (see [`ModelMeta::invariant_ops`]) serves every
    /// timestep bucket: true when the model has such ops and every stream has the same records.
    pub fn invariant_shared(&self) -> bool {
        self.invariant_shared
    }

    /// The f32 elements of a guidance scratch that keeps both input sets' invariant outputs
    /// (see `Session::set_guidance`): the output's, then room for `invariant_bytes`.
    pub fn guidance_scratch_len(&self) -> usize {
        self.meta.output.numel() + (self.meta.invariant_bytes as usize).div_ceil(4)
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Bytes of the arena a session needs (16-byte aligned), as the file states.
    pub fn arena_bytes(&self) -> usize {
        self.meta.arena_bytes as usize
    }
    /// Prepared-op slots a session needs: one stream's ops (see [`crate::Session::with_plan`]).
    pub fn plan_len(&self) -> usize {
        self.meta.ops_per_stream as usize
    }
    /// Multiply-accumulates (and element operations) of one evaluation, the largest over the
    /// streams; computed from the validated tensor sizes at load.
    pub fn work_per_eval(&self) -> u64 {
        self.work
    }
    pub fn n_ops(&self) -> u32 {
        self.header.n_ops
    }
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }
    /// Number of latent elements (the model's input and output size).
    pub fn latent_len(&self) -> usize {
        self.meta.latent.numel()
    }

    /// Number of timestep buckets (op streams).
    pub fn streams(&self) -> usize {
        self.meta.stream_offsets.len()
    }

    /// The bucket (op stream) that runs timestep `t`.
    pub fn stream_for(&self, t: f32) -> usize {
        let b = &self.meta.bucket_upper;
        b.iter().position(|&u| t <= u).unwrap_or(b.len())
    }

    /// Iterates the op records of stream `k` in execution order (stream 0 if `k` is out of range).
    pub fn stream_ops(&self, k: usize) -> OpIter<'a> {
        let offs = &self.meta.stream_offsets;
        let off = offs.get(k).or(offs.first()).copied().unwrap_or(0) as usize;
        OpIter {
            rest: self.ops.get(off..).unwrap_or(&[]),
            left: self.meta.ops_per_stream,
        }
    }

    /// Iterates the op records of the first stream (every stream has the same ops over the same
    /// tensors; only quantization parameters differ).
    pub fn ops(&self) -> OpIter<'a> {
        self.stream_ops(0)
    }

    /// Prepares the ops of stream `k` into `plan` (`plan_len()` slots).
    pub(crate) fn prepare_stream<'p>(&self, k: usize, plan: &'p mut [Prepared<'a>]) -> Result<()> {
        if plan.len() < self.plan_len() {
            return Err(Error::PlanLength {
                needed: self.plan_len(),
                got: plan.len(),
            });
        }
        for (i, (op, slot)) in self.stream_ops(k).zip(plan.iter_mut()).enumerate() {
            let cx = Cx {
                op: i as u32,
                arena: self.meta.sampler_state as usize,
                blob: self.blob,
            };
            *slot = ops::prepare(&op?, &cx)?;
        }
        Ok(())
    }
}

/// Decodes op records one after another (no allocation).
pub struct OpIter<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for OpIter<'a> {
    type Item = Result<Op<TRef>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match postcard::take_from_bytes::<Op<TRef>>(self.rest) {
            Ok((op, rest)) => {
                self.rest = rest;
                Some(Ok(op))
            }
            Err(_) => {
                self.left = 0;
                Some(Err(Error::Metadata))
            }
        }
    }
}
