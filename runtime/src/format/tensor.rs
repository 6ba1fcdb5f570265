//! Tensor references, blob references and requantization parameters as the file stores them.
use super::MAX_RANK;
use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

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

/// Where a tensor lives in the arena and what its integer codes mean: real = scale * (q - zero).
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
    /// Bytes of the tensor (saturating).
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
