//! A validated model: [`Model::load`] parses the header, checks the checksums, decodes the metadata
//! and prepares every op record of every stream once (the check `ops::prepare` makes is the one a
//! session makes before running), so only a model whose every op can run is ever returned.
use crate::blob::{Blob, BlobSource, Pager, Reader};
use crate::format::{decode_meta, fnv1a64_more, section, Header, ModelMeta, Op, TRef};
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
    /// the blob section (empty for a paged model, whose blob stays in its source)
    blob: &'a [u8],
    blob_len: usize,
    paged: bool,
    /// the most cache bytes one op's arrays take (paged models; see [`Model::min_cache_bytes`])
    min_cache: usize,
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
        let blob = section(bytes, header.blob)?;
        Self::validate(header, bytes, blob, Reader::Whole(blob), None, limits)
    }

    /// A model whose blob (weights, biases, tables) stays in `src` and is read on demand through a
    /// cache (see [`crate::blob`]): `head` holds the file up to its blob section (the header's
    /// `blob.0` bytes; more is ignored). Loading reads the whole blob once to check its checksum,
    /// and every op's arrays once to check the op, through `cache` (16-byte aligned); a cache
    /// smaller than one op's arrays is [`Error::Cache`], which states a size that goes further. Run
    /// it with [`crate::Session::with_pager`].
    pub fn load_paged(
        head: &'a [u8],
        src: &mut dyn BlobSource,
        cache: &mut [u8],
        limits: Limits,
    ) -> Result<Model<'a>> {
        let header = Header::parse_head(head)?;
        if header.head_checksum(head)? != header.meta_checksum {
            return Err(Error::ChecksumMismatch {
                section: "header, metadata and op records",
            });
        }
        let blob_len = header.blob.1 as usize;
        if cache.is_empty() {
            return Err(Error::Cache { needed: 1, got: 0 });
        }
        let mut sum = crate::format::fnv1a64(&[]);
        let step = cache.len();
        for at in (0..blob_len).step_by(step) {
            let chunk = &mut cache[..(blob_len - at).min(step)];
            src.read(at as u64, chunk)?;
            sum = fnv1a64_more(sum, chunk);
        }
        if sum != header.blob_checksum {
            return Err(Error::ChecksumMismatch { section: "blob" });
        }
        let mut pager = Pager::new(cache, header.blob.1)?;
        Self::validate(
            header,
            head,
            &[],
            Reader::Source(src),
            Some(&mut pager),
            limits,
        )
    }

    /// The checks after the checksums: metadata, every record of every stream, limits.
    fn validate(
        header: Header,
        file: &'a [u8],
        blob: &'a [u8],
        mut reader: Reader,
        pager: Option<&mut Pager<'_>>,
        limits: Limits,
    ) -> Result<Model<'a>> {
        let meta_b = section(file, header.meta)?;
        let ops = section(file, header.ops)?;
        let meta: ModelMeta = decode_meta(meta_b, header.minor).ok_or(Error::Metadata)?;
        let blob_len = header.blob.1 as usize;
        verify::meta(&meta, header.n_ops, blob_len, &mut reader)?;
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
            blob_len,
            paged: pager.is_some(),
            min_cache: 0,
            invariant_shared: false,
            work: 0,
        };
        (model.work, model.min_cache) = model.check_streams(&mut reader, pager)?;
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
    /// them) and checks the time table against the first. Returns the largest work of a stream
    /// and, for a paged model, the most cache one op needs.
    fn check_streams(
        &self,
        reader: &mut Reader,
        mut pager: Option<&mut Pager<'_>>,
    ) -> Result<(u64, usize)> {
        let m = &self.meta;
        let mut at = 0usize;
        let (mut most, mut cache) = (0u64, 0usize);
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
                let arena = m.sampler_state as usize;
                let (p, need) = match pager.as_deref_mut() {
                    None => {
                        let cx = Cx {
                            op: i,
                            arena,
                            blob: Blob::Whole(self.blob),
                        };
                        (ops::prepare(&op, &cx)?, 0)
                    }
                    Some(pg) => match reader {
                        Reader::Source(src) => {
                            crate::blob::prepare_paged(&op, (i, arena), pg, &mut **src)?
                        }
                        Reader::Whole(_) => return Err(Error::Unsupported("paged without source")),
                    },
                };
                work = work.saturating_add(p.work());
                cache = cache.max(need);
                // every stream reads the same table, so each stream's op is checked against it
                verify::time_table_op(m, reader, i, op.class(), &p)?;
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
        Ok((most, cache))
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
    /// The blob section (empty for a paged model).
    pub fn blob(&self) -> &'a [u8] {
        self.blob
    }
    /// Bytes of the blob section.
    pub fn blob_len(&self) -> usize {
        self.blob_len
    }
    /// Whether the blob is read on demand ([`Model::load_paged`]).
    pub fn paged(&self) -> bool {
        self.paged
    }
    /// The smallest weight cache a paged session of this model runs with: the most bytes one
    /// op's blob arrays take, each rounded up to 16 (0 for a model loaded whole).
    pub fn min_cache_bytes(&self) -> usize {
        self.min_cache
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
                blob: Blob::Whole(self.blob),
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
