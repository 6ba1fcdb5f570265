//! The `.dmq` file format.
//!
//! ```text
//! offset 0   header (64 bytes, little endian, parsed by hand)
//!            magic "DMQMODEL" | major u16 | minor u16 | flags u32
//!            meta_off u32 | meta_len u32 | ops_off u32 | ops_len u32 | n_ops u32
//!            blob_off u32 | blob_len u32 | meta+ops checksum u64 | blob checksum u64 | total_len u32
//! meta       postcard [`ModelMeta`]: arena size, model inputs/outputs, sampler configuration
//! ops        `n_ops` postcard [`Op`] records, back to back, in execution order. Each record carries the
//!            arena placement, shape and quantization of every tensor it touches, so execution needs no
//!            tensor table and no allocation.
//! blob       raw little-endian arrays (int8 weights, int32 biases, requantization tables, LUTs), the
//!            section 64-byte aligned in the file and each array at a 16-byte offset in it; op records
//!            refer to them by [`BlobRef`]. Large arrays never go through postcard.
//! ```
//! Checksums are FNV-1a 64. Every index, size and offset is validated once by [`Model::load`].
use crate::{Error, Result};
use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 8] = *b"DMQMODEL";
pub const MAJOR_VERSION: u16 = 4;
pub const MINOR_VERSION: u16 = 0;
pub const HEADER_LEN: usize = 64;
/// Highest tensor rank the format carries.
pub const MAX_RANK: usize = 6;
/// Most timestep buckets (op streams) a model may have.
pub const MAX_STREAMS: usize = 64;
/// Longest explicit timestep/sigma schedule a model can carry.
pub const MAX_SCHEDULE: usize = 128;
/// Inputs a model may have besides the latent and the timestep.
pub const MAX_EXTRA_INPUTS: usize = 4;
/// Most inputs a concat may have.
pub const MAX_CONCAT: usize = 8;
/// Alignment of every arena tensor (bytes).
pub const ARENA_ALIGN: u32 = 16;

pub type Shape = HVec<u32, MAX_RANK>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    I8,
    F32,
    /// 16-bit codes for protected (sensitive) tensors.
    I16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I16 => 2,
            DType::F32 => 4,
        }
    }
    pub fn is_int(self) -> bool {
        matches!(self, DType::I8 | DType::I16)
    }
    /// Code range of an integer type.
    pub fn code_range(self) -> (i32, i32) {
        match self {
            DType::I16 => (-32768, 32767),
            _ => (-128, 127),
        }
    }
}

/// Where a tensor lives in the arena and what its int8 codes mean: real = scale * (q - zero).
/// For f32 tensors `scale`/`zero` are unused (1, 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TRef {
    pub offset: u32,
    pub dtype: DType,
    pub shape: Shape,
    pub scale: f32,
    pub zero: i32,
}

impl TRef {
    /// Number of elements (saturating: validation rejects anything that does not fit the arena).
    pub fn numel(&self) -> usize {
        self.shape
            .iter()
            .fold(1usize, |a, &d| a.saturating_mul(d as usize))
    }
    pub fn bytes(&self) -> usize {
        self.numel().saturating_mul(self.dtype.size())
    }
}

/// A byte range inside the blob section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub offset: u32,
    pub len: u32,
}

/// Fixed-point requantization: `q = clamp(((acc * mult + 2^(shift-1)) >> shift) + zero)`, i.e. a real
/// multiplier of `mult / 2^shift`. Per-channel tables in the blob store (mult i32, shift i32) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requant {
    pub mult: i32,
    pub shift: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
}

/// Float functions of the timestep path (evaluated once per step in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnaryFn {
    Sin,
    Cos,
    Exp,
    Ln,
    Sqrt,
    Rsqrt,
    Recip,
    Neg,
    Abs,
    Square,
    Silu,
    Sigmoid,
    Tanh,
    Erf,
    Gelu,
    Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryFn {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

/// `out[m, n] = sum_k A[m, k] * B[k, n]` with arbitrary element strides, over up to two batch axes.
/// Used for activation x activation products (attention) with per-tensor requantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatMulGeom {
    pub batch: [u32; 2],
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// strides of A: batch0, batch1, m, k
    pub a_strides: [u32; 4],
    /// strides of B: batch0, batch1, k, n
    pub b_strides: [u32; 4],
    /// strides of the output: batch0, batch1, m, n
    pub o_strides: [u32; 4],
}

/// Geometry of a product with constant weights `W[n, k]` (a 1x1 conv or a linear layer):
/// `out[m, n] = sum_k A[m, k] * W[n, k] + bias[n]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearGeom {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    /// strides of A: m, k
    pub a_strides: [u32; 2],
    /// strides of the output: m, n
    pub o_strides: [u32; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op<T> {
    /// f32 -> int8 with the output's scale and zero point (round half to even).
    Quantize { input: T, output: T },
    /// int8 -> f32.
    Dequantize { input: T, output: T },
    /// NCHW int8 convolution (batch 1 per call, looped over N), per-output-channel int8 weights
    /// `[co][ci*kh*kw]`, int32 bias with the input zero point folded in, per-channel requantization.
    /// `time_bias` is an optional f32 `[co]` tensor from the timestep path, added to the int32 bias as
    /// `rint(time_bias[c] * time_scale[c])` once per call (the time projection of a ResBlock, which
    /// tract folds into the conv bias). `scratch` is arena space for im2col (`k*p` bytes unless the
    /// conv is pointwise) followed by `4*co` bytes for the combined bias when `time_bias` is present.
    Conv2d {
        input: T,
        output: T,
        /// 8: one int8 per weight; 4: two per byte (low nibble first), each row padded to a byte,
        /// codes in [-8, 7] sign-extended
        weight_bits: u8,
        weights: BlobRef,
        bias: BlobRef,
        requant: BlobRef,
        time_bias: Option<T>,
        time_scale: BlobRef,
        kernel: [u16; 2],
        stride: [u16; 2],
        /// top, left, bottom, right
        pad: [u16; 4],
        scratch: u32,
    },
    /// Product with constant int8 weights `[n][k]`, int32 bias (zero point folded), per-n requant.
    Linear {
        input: T,
        output: T,
        geom: LinearGeom,
        weight_bits: u8,
        weights: BlobRef,
        bias: BlobRef,
        requant: BlobRef,
    },
    /// int8 x int8 product of two activations, per-tensor requantization.
    MatMul {
        a: T,
        b: T,
        output: T,
        geom: MatMulGeom,
        requant: Requant,
    },
    /// Element-wise with broadcasting (all three refs have the same rank; input dims are 1 or equal).
    /// Add/Sub: `out = z + ((ma*(a-za) ± mb*(b-zb)) >> shift)`; Mul: `out = z + ((ma*(a-za)*(b-zb)) >> shift)`.
    Binary {
        kind: BinaryKind,
        a: T,
        b: T,
        output: T,
        mult_a: i32,
        mult_b: i32,
        shift: u8,
    },
    /// Any unary function (or a constant operand folded in) as a table. int8 input: 256 entries,
    /// `out = table[in + 128]`, stored as int8 (int8 output) or little-endian i16 (int16 output).
    /// int16 input: 257 i32 entries `T[k]` = 256 x output code at input `256k - 32768`, linearly
    /// interpolated: `out = round_shift(T[i]*(256-f) + T[i+1]*f, 16)` with `i, f` the high and low
    /// bytes of `in + 32768`.
    Lut { input: T, output: T, table: BlobRef },
    /// GroupNorm over NC... (channel axis 1): exact integer statistics per group, then a per-channel
    /// affine in fixed point. `affine` holds gamma[C] then beta[C] as f32.
    GroupNorm {
        input: T,
        output: T,
        groups: u32,
        eps: f32,
        affine: BlobRef,
        /// f32 scale of every input channel, when the input is a split concat whose parts keep their
        /// own scales (zero point 0); `input.scale` for all channels otherwise
        in_scales: Option<BlobRef>,
    },
    /// Softmax along `axis`; `exp_table[d] = round(2^20 * exp(-d * scale_in))`, 256 u32. Output codes
    /// have scale 1/255 and zero point -128.
    Softmax {
        input: T,
        output: T,
        axis: u8,
        exp_table: BlobRef,
    },
    /// Concat along `axis`, each input requantized to the output's parameters.
    Concat {
        inputs: HVec<T, MAX_CONCAT>,
        output: T,
        axis: u8,
        requant: HVec<Requant, MAX_CONCAT>,
    },
    /// Reshape (same element count and order), int8 or f32; the quantization is unchanged.
    Reshape { input: T, output: T },
    /// Axis permutation: `out.shape[i] = in.shape[perm[i]]`.
    Transpose {
        input: T,
        output: T,
        perm: HVec<u8, MAX_RANK>,
    },
    /// Contiguous slice `[start, start + out_len)` along `axis`.
    Slice {
        input: T,
        output: T,
        axis: u8,
        start: u32,
    },
    /// Broadcast to the output shape (input dims are 1 or equal).
    Broadcast { input: T, output: T },
    /// Nearest-neighbour upsampling by integer factors: `out[i] = in[i / (out_dim / in_dim)]` per axis.
    Upsample { input: T, output: T },
    /// Copies a constant (int8 codes or f32 values) from the blob into the arena.
    Const { output: T, data: BlobRef },
    /// f32 unary function (timestep path).
    FUnary { input: T, output: T, func: UnaryFn },
    /// f32 binary function with broadcasting (timestep path).
    FBinary {
        a: T,
        b: T,
        output: T,
        func: BinaryFn,
    },
    /// f32 product with int8 per-n weights: `out = (sum_k a*wq[n,k]) * scale[n] + bias[n]` (timestep path).
    /// `scales` and `bias` are f32 arrays of length n.
    FLinear {
        input: T,
        output: T,
        geom: LinearGeom,
        weights: BlobRef,
        scales: BlobRef,
        bias: BlobRef,
    },
    /// f32 rows picked from a table by an index tensor holding whole numbers (a class-label embedding on
    /// the timestep path): `output[i, :] = table[round(index[i]), :]`, `rows x cols` f32.
    FGather {
        index: T,
        output: T,
        table: BlobRef,
        rows: u32,
        cols: u32,
    },
    /// f32 concat along `axis` (timestep path).
    FConcat {
        inputs: HVec<T, MAX_CONCAT>,
        output: T,
        axis: u8,
    },
}

impl<T> Op<T> {
    /// The tensor the op writes.
    pub fn output(&self) -> &T {
        match self {
            Op::Quantize { output, .. }
            | Op::Dequantize { output, .. }
            | Op::Conv2d { output, .. }
            | Op::Linear { output, .. }
            | Op::MatMul { output, .. }
            | Op::Binary { output, .. }
            | Op::Lut { output, .. }
            | Op::GroupNorm { output, .. }
            | Op::Softmax { output, .. }
            | Op::Concat { output, .. }
            | Op::Reshape { output, .. }
            | Op::Transpose { output, .. }
            | Op::Slice { output, .. }
            | Op::Broadcast { output, .. }
            | Op::Upsample { output, .. }
            | Op::Const { output, .. }
            | Op::FUnary { output, .. }
            | Op::FBinary { output, .. }
            | Op::FLinear { output, .. }
            | Op::FGather { output, .. }
            | Op::FConcat { output, .. } => output,
        }
    }
}

/// Noise schedule and sampler configuration carried by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerConfig {
    pub num_train_timesteps: u32,
    pub beta_start: f32,
    pub beta_end: f32,
    pub prediction: Prediction,
    pub default_sampler: SamplerKindCfg,
    pub default_steps: u32,
    /// Karras sigma schedule of the sigma-conditioned samplers (Euler/EDM, consistency):
    /// `sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho`; `sigma_min` is also the
    /// consistency models' smallest noise level
    pub sigma_min: f32,
    pub sigma_max: f32,
    pub rho: f32,
    /// explicit timesteps (DDIM/DDPM) or sigmas (Euler, consistency) in sampling order, used when a
    /// run asks for exactly this many steps (`dmqc compile --timesteps`); empty: computed spacing
    pub schedule: HVec<f32, MAX_SCHEDULE>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prediction {
    Epsilon,
    V,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplerKindCfg {
    Ddim,
    Ddpm,
    Euler,
    Consistency,
}

/// Longest list of timestep-path outputs a [`TimeTable`] can fill.
pub const MAX_TIME_OUTPUTS: usize = 128;

/// Per-step values of the timestep path, folded at compile time for the scheduled timesteps. When a
/// run's timestep equals one of `timesteps` (bit for bit), the ops marked 1 in `skip` (one byte per op
/// of a stream; the time path, identical in every stream) are not executed and each listed output takes
/// its values from that step's row of `values` instead; any other timestep runs the f32 time path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeTable {
    /// f32 per scheduled timestep
    pub timesteps: BlobRef,
    /// f32, `row` per scheduled timestep
    pub values: BlobRef,
    pub row: u32,
    /// u8 per op of a stream
    pub skip: BlobRef,
    pub outputs: HVec<TimeOut, MAX_TIME_OUTPUTS>,
}

/// A time-path op whose output comes from the table: the op's index in a stream and where its values
/// start in a row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimeOut {
    pub op: u32,
    pub at: u32,
}

/// A model input besides the latent and the timestep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraInput {
    pub name: heapless::String<64>,
    pub tensor: TRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// ONNX names of the latent input, the timestep input and the output.
    pub latent_name: heapless::String<64>,
    pub timestep_name: heapless::String<64>,
    pub output_name: heapless::String<64>,
    /// Bytes the caller must provide as arena (16-byte aligned).
    pub arena_bytes: u32,
    /// f32 latent input (the input whose shape equals the output's).
    pub latent: TRef,
    /// f32 timestep input, filled with the timestep value before each evaluation (if the model has one).
    pub timestep: Option<TRef>,
    /// Further f32 inputs (scalar conditions, text embeddings), set once per generation with
    /// `Session::set_input` and copied in before each evaluation.
    pub extra_inputs: HVec<ExtraInput, MAX_EXTRA_INPUTS>,
    /// The timestep path folded for the scheduled timesteps (absent when it depends on extra inputs).
    pub time_table: Option<TimeTable>,
    /// f32 model output.
    pub output: TRef,
    /// f32 scratch for the sampler state (current latent) — as many elements as the latent.
    pub sampler_state: u32,
    /// Op-record streams, one per timestep bucket: byte offsets into the ops section. Every stream has
    /// `ops_per_stream` records over the same tensors and arena; they differ only in quantization
    /// parameters (calibrated on that bucket's steps).
    pub stream_offsets: HVec<u32, MAX_STREAMS>,
    pub ops_per_stream: u32,
    /// Upper timestep bound of every bucket but the last (ascending): `t` runs stream `i` for the first
    /// `i` with `t <= bucket_upper[i]`, else the last stream. Bounds are midpoints between the scheduled
    /// timesteps of neighbouring buckets, so an off-schedule `t` takes its nearest bucket.
    pub bucket_upper: HVec<f32, MAX_STREAMS>,
    /// Range of timesteps the model was calibrated for.
    pub t_min: f32,
    pub t_max: f32,
    pub sampler: SamplerConfig,
    /// The first `invariant_ops` records of every stream depend only on the extra inputs (a text
    /// embedding's keys and values): the runtime runs them once per generation and keeps their
    /// outputs, which the arena plan never overwrites. When the streams' invariant records are the
    /// same bytes (one quantization for them), one computation serves every stream.
    pub invariant_ops: u32,
    /// Those outputs that later ops read fill `arena[..invariant_bytes]`, so a second set of them
    /// (the unconditional pass of classifier-free guidance) can be kept by swapping that range.
    pub invariant_bytes: u32,
}

/// FNV-1a 64-bit hash, used as the file's checksums.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The sample checksum every board prints (`checksum: <16 hex digits>`): FNV-1a 64 of the samples'
/// f32 little-endian bytes, computed without a byte buffer.
pub fn sample_checksum(x: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in x {
        for b in v.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub meta: (u32, u32),
    pub ops: (u32, u32),
    pub n_ops: u32,
    pub blob: (u32, u32),
    pub meta_checksum: u64,
    pub blob_checksum: u64,
    pub total_len: u32,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < 8 {
            return Err(if MAGIC.starts_with(bytes) {
                Error::Truncated
            } else {
                Error::BadMagic
            });
        }
        if bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let h = Header {
            major: rd_u16(bytes, 8),
            minor: rd_u16(bytes, 10),
            meta: (rd_u32(bytes, 16), rd_u32(bytes, 20)),
            ops: (rd_u32(bytes, 24), rd_u32(bytes, 28)),
            n_ops: rd_u32(bytes, 32),
            blob: (rd_u32(bytes, 36), rd_u32(bytes, 40)),
            meta_checksum: rd_u64(bytes, 44),
            blob_checksum: rd_u64(bytes, 52),
            total_len: rd_u32(bytes, 60),
        };
        if h.major != MAJOR_VERSION {
            return Err(Error::UnsupportedVersion {
                major: h.major,
                minor: h.minor,
            });
        }
        if (bytes.len() as u64) < h.total_len as u64 {
            return Err(Error::Truncated);
        }
        Ok(h)
    }

    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out[12..16].copy_from_slice(&0u32.to_le_bytes());
        out[16..20].copy_from_slice(&self.meta.0.to_le_bytes());
        out[20..24].copy_from_slice(&self.meta.1.to_le_bytes());
        out[24..28].copy_from_slice(&self.ops.0.to_le_bytes());
        out[28..32].copy_from_slice(&self.ops.1.to_le_bytes());
        out[32..36].copy_from_slice(&self.n_ops.to_le_bytes());
        out[36..40].copy_from_slice(&self.blob.0.to_le_bytes());
        out[40..44].copy_from_slice(&self.blob.1.to_le_bytes());
        out[44..52].copy_from_slice(&self.meta_checksum.to_le_bytes());
        out[52..60].copy_from_slice(&self.blob_checksum.to_le_bytes());
        out[60..64].copy_from_slice(&self.total_len.to_le_bytes());
    }
}

/// Slices `bytes[off..off+len]` with checked arithmetic.
pub(crate) fn section(bytes: &[u8], (off, len): (u32, u32)) -> Result<&[u8]> {
    let end = (off as usize)
        .checked_add(len as usize)
        .ok_or(Error::Truncated)?;
    bytes.get(off as usize..end).ok_or(Error::Truncated)
}

/// A validated model. It borrows the file bytes (e.g. from `include_bytes!`) and can only be obtained
/// from [`Model::load`], which checks every record once.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    pub(crate) header: Header,
    pub(crate) meta: ModelMeta,
    pub(crate) ops: &'a [u8],
    pub(crate) blob: &'a [u8],
    /// Every stream's invariant records are the bytes of the first stream's.
    pub(crate) invariant_shared: bool,
}

impl<'a> Model<'a> {
    /// Parses and validates a `.dmq` file. Never panics; every failure is an [`Error`].
    pub fn load(bytes: &'a [u8]) -> Result<Model<'a>> {
        let header = Header::parse(bytes)?;
        let meta_b = section(bytes, header.meta)?;
        let ops = section(bytes, header.ops)?;
        let blob = section(bytes, header.blob)?;
        // The checksum covers meta and ops, which must be adjacent.
        let meta_end = header.meta.0 as u64 + header.meta.1 as u64;
        if meta_end != header.ops.0 as u64 {
            return Err(Error::Invalid {
                op: u32::MAX,
                what: "ops section must follow the metadata",
            });
        }
        let covered = section(
            bytes,
            (header.meta.0, header.meta.1.saturating_add(header.ops.1)),
        )?;
        if fnv1a64(covered) != header.meta_checksum {
            return Err(Error::ChecksumMismatch {
                section: "metadata",
            });
        }
        if fnv1a64(blob) != header.blob_checksum {
            return Err(Error::ChecksumMismatch { section: "blob" });
        }
        let meta: ModelMeta = postcard::from_bytes(meta_b).map_err(|_| Error::Metadata)?;
        let mut model = Model {
            header,
            meta,
            ops,
            blob,
            invariant_shared: false,
        };
        crate::exec::validate(&model)?;
        model.invariant_shared = model.meta.invariant_ops > 0
            && (1..model.streams())
                .all(|k| model.invariant_records(k) == model.invariant_records(0));
        Ok(model)
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
    pub fn arena_bytes(&self) -> usize {
        self.meta.arena_bytes as usize
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
