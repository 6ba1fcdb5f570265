//! dmq-runtime: executes `.dmq` integer diffusion models without std, allocation or panics.
//!
//! A `.dmq` file is parsed and validated once by [`Model::load`]; only a validated [`Model`] can be
//! executed. Execution uses a caller-provided arena whose size the file states
//! ([`Model::arena_bytes`]). Tensors between ops are int8 (per-tensor scale and zero point); convolutions
//! and matrix products multiply int8 by int8 into int32 and requantize with one fixed-point scheme
//! ([`kernels::requant`]) used identically by every kernel.
#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod exec;
pub mod format;
pub mod kernels;
#[cfg(feature = "std")]
pub mod pool;
pub mod sampler;

pub use exec::Session;
pub use format::{Model, MAJOR_VERSION, MINOR_VERSION};
pub use sampler::{Denoiser, SamplerKind};

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
    /// A checksum does not match: the file is corrupted.
    ChecksumMismatch { section: &'static str },
    /// The metadata could not be decoded.
    Metadata,
    /// A structural check failed while validating op `op` (or the model when `op` is `u32::MAX`).
    Invalid { op: u32, what: &'static str },
    /// The arena given to the session is too small or misaligned.
    Arena { needed: u32, got: usize },
    /// A caller-provided buffer has the wrong length.
    BufferLength { expected: usize, got: usize },
    /// The requested sampler or option is not supported by this model or runtime.
    Unsupported(&'static str),
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
            Error::ChecksumMismatch { section } => write!(f, "checksum mismatch in the {section} section: file corrupted"),
            Error::Metadata => write!(f, "the .dmq metadata could not be decoded"),
            Error::Invalid { op, what } if *op == u32::MAX => write!(f, "invalid model: {what}"),
            Error::Invalid { op, what } => write!(f, "invalid model: op #{op}: {what}"),
            Error::Arena { needed, got } => write!(f, "arena too small or misaligned: need {needed} bytes (16-aligned), got {got}"),
            Error::BufferLength { expected, got } => write!(f, "buffer length {got}, expected {expected}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;
