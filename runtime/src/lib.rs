//! dmq-runtime: executes `.dmq` integer diffusion models without std, allocation or panics.
//!
//! A `.dmq` file is parsed and validated once by [`Model::load`]; only a validated [`Model`] can be
//! executed. Validation prepares every op record with the same code that prepares it for execution
//! ([`ops`]), so a file that loads runs. A [`Session`] pairs a model with a caller-provided arena
//! (its size is stated by the file, [`Model::arena_bytes`]) and holds the prepared, kernel-ready form
//! of the ops it runs: a step decodes nothing. Tensors between ops are int8 (or int16 where the
//! compiler protected them); convolutions and matrix products multiply integer codes into int32
//! and requantize with one fixed-point rule ([`kernels::requant`]) used by every kernel.
//!
//! Layout: [`format`] (wire types) · [`model`] (load) · `verify` (model-wide checks) · [`ops`] (one
//! module per op: check + prepare + run) · [`kernels`] (reference, packed, SIMD tiers) ·
//! [`session`] · [`sampler`].
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod arena;
pub mod blob;
pub mod format;
pub mod kernels;
pub mod model;
pub mod ops;
#[cfg(feature = "std")]
pub mod pool;
pub mod sampler;
pub mod session;
mod verify;

pub use format::{MAJOR_VERSION, MINOR_VERSION};
pub use model::{Limits, Model};
pub use ops::Prepared;
pub use sampler::{Denoiser, SamplerKind};
pub use session::Session;

/// Every way loading or running a model can fail. The runtime never panics on bad input; it returns one
/// of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The file does not start with the `.dmq` magic bytes.
    BadMagic,
    /// The file was written by an incompatible major version of the format.
    UnsupportedVersion { major: u16, minor: u16 },
    /// The file is shorter than its header says.
    Truncated,
    /// The header is inconsistent: unknown flags, sections out of order or overlapping, a total
    /// length that is not where the blob ends.
    Header(&'static str),
    /// A checksum does not match: the file is corrupted.
    ChecksumMismatch { section: &'static str },
    /// The metadata or an op record could not be decoded.
    Metadata,
    /// A structural check failed while validating op `op` of a stream (or the model when `op` is
    /// `u32::MAX`).
    Invalid { op: u32, what: &'static str },
    /// The arena given to the session is too small or not 16-byte aligned.
    Arena { needed: usize, got: usize },
    /// The storage given for the prepared ops is too short.
    PlanLength { needed: usize, got: usize },
    /// A caller-provided buffer has the wrong length.
    BufferLength { expected: usize, got: usize },
    /// The model's work per step exceeds the caller's limit ([`Limits`]).
    WorkLimit { macs: u64, limit: u64 },
    /// An input value the model cannot take (a non-finite latent or timestep, a class label outside
    /// the embedding table).
    Input(&'static str),
    /// The requested sampler or option is not supported by this model or runtime.
    Unsupported(&'static str),
    /// A worker thread of `Session::with_threads` panicked (std builds only).
    WorkerPanicked,
    /// The weight cache of a paged model is too small (or not 16-byte aligned): one op's blob
    /// arrays need at least `needed` bytes together.
    Cache { needed: usize, got: usize },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::BadMagic => write!(f, "not a .dmq file (bad magic)"),
            Error::UnsupportedVersion { major, minor } => write!(
                f,
                "unsupported .dmq format version {major}.{minor} (this runtime reads {MAJOR_VERSION}.x)"
            ),
            Error::Truncated => write!(f, "the .dmq file is truncated"),
            Error::Header(what) => write!(f, "invalid .dmq header: {what}"),
            Error::ChecksumMismatch { section } => {
                write!(f, "checksum mismatch in the {section}: file corrupted")
            }
            Error::Metadata => write!(f, "the .dmq metadata or an op record could not be decoded"),
            Error::Invalid { op, what } if *op == u32::MAX => write!(f, "invalid model: {what}"),
            Error::Invalid { op, what } => write!(f, "invalid model: op #{op}: {what}"),
            Error::Arena { needed, got } => write!(
                f,
                "arena too small or misaligned: need {needed} bytes (16-aligned), got {got}"
            ),
            Error::PlanLength { needed, got } => {
                write!(f, "storage for {needed} prepared ops needed, got {got}")
            }
            Error::BufferLength { expected, got } => {
                write!(f, "buffer length {got}, expected {expected}")
            }
            Error::WorkLimit { macs, limit } => write!(
                f,
                "the model needs {macs} multiply-accumulates per step, above the limit of {limit}"
            ),
            Error::Input(what) => write!(f, "invalid input: {what}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::WorkerPanicked => write!(f, "a worker thread panicked"),
            Error::Cache { needed, got } => write!(
                f,
                "weight cache too small or misaligned: one op needs at least {needed} bytes \
                 (16-aligned), got {got}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;
