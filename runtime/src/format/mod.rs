//! The `.dmq` file format: wire types only (nothing here executes or validates a model; see
//! [`crate::Model::load`]).
//!
//! ```text
//! offset 0   header (64 bytes, little endian, parsed by hand)
//!            magic "DMQMODEL" | major u16 | minor u16 | flags u32
//!            meta_off u32 | meta_len u32 | ops_off u32 | ops_len u32 | n_ops u32
//!            blob_off u32 | blob_len u32 | header checksum u64 | blob checksum u64 | total_len u32
//! meta       postcard [`ModelMeta`]: arena size, model inputs/outputs, sampler configuration
//! ops        `n_ops` postcard [`Op`] records, back to back, in execution order, one stream per
//!            timestep bucket. Each record carries the arena placement, shape and quantization of
//!            every tensor it touches, so execution needs no tensor table.
//! blob       raw little-endian arrays (int8 weights, int32 biases, requantization tables, LUTs), the
//!            section 64-byte aligned in the file and each array at a 16-byte offset in it; op records
//!            refer to them by [`BlobRef`]. Large arrays never go through postcard.
//! ```
//! Checksums are FNV-1a 64; together they cover every byte of the file (see [`Header`]).
mod header;
mod meta;
mod op;
mod tensor;

#[cfg(feature = "std")]
pub use header::assemble;
pub use header::{fnv1a64, fnv1a64_more, section, Header, BLOB_ALIGN};
pub use meta::*;
pub use op::*;
pub use tensor::*;

pub const MAGIC: [u8; 8] = *b"DMQMODEL";
pub const MAJOR_VERSION: u16 = 6;
/// 1: the `MaxPool` op, 2: the `RmsNorm` op (each appended to the op list), 3: a beta schedule
/// other than linear ([`MetaExt`] after the metadata); older files read unchanged. A file states
/// the lowest minor version whose readers know all it holds ([`minor_version_of`],
/// [`minor_version_of_meta`]).
pub const MINOR_VERSION: u16 = 3;

/// The minor format version a file's metadata needs: 3 for a beta schedule other than linear.
pub fn minor_version_of_meta(meta: &ModelMeta) -> u16 {
    if meta.sampler.beta_schedule == BetaSchedule::Linear {
        0
    } else {
        3
    }
}

/// The minor format version that introduced `op`: a file's header states the highest of its ops',
/// so that a file without the newer ops stays readable by older runtimes.
pub fn minor_version_of<T>(op: &Op<T>) -> u16 {
    match op {
        Op::MaxPool(_) => 1,
        Op::RmsNorm(_) => 2,
        _ => 0,
    }
}
pub const HEADER_LEN: usize = 64;
/// Highest tensor rank the format carries.
pub const MAX_RANK: usize = crate::kernels::MAX_RANK;
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
