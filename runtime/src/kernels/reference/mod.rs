//! Scalar reference kernels: the specification every SIMD kernel must reproduce bit for bit. They
//! know nothing about graphs or files: slices and dimensions in, slices out, and every kernel checks
//! that its slices have the lengths its dimensions imply.
pub mod conv;
pub mod eltwise;
pub mod float;
pub mod linear;
pub mod matmul;
pub mod movement;
pub mod norm;
pub mod softmax;

use super::{check_len, MAX_RANK};
use crate::{Error, Result};

/// An integer activation code: int8, or int16 for protected tensors.
pub trait Code: Copy + Default + bytemuck::Pod + Send + Sync + 'static {
    const MIN: i32;
    const MAX: i32;
    fn get(self) -> i32;
    fn sat(v: i64) -> Self;
}

impl Code for i8 {
    const MIN: i32 = -128;
    const MAX: i32 = 127;
    #[inline(always)]
    fn get(self) -> i32 {
        self as i32
    }
    #[inline(always)]
    fn sat(v: i64) -> Self {
        v.clamp(-128, 127) as i8
    }
}

impl Code for i16 {
    const MIN: i32 = -32768;
    const MAX: i32 = 32767;
    #[inline(always)]
    fn get(self) -> i32 {
        self as i32
    }
    #[inline(always)]
    fn sat(v: i64) -> Self {
        v.clamp(-32768, 32767) as i16
    }
}

/// Requantizes to any code type: `sat(round_shift(acc * mult, shift) + zero)`, exact in i128.
#[inline(always)]
pub fn requant_to<U: Code>(acc: i64, mult: i32, shift: u8, zero: i32) -> U {
    let v = (acc as i128 * mult as i128 + (1i128 << (shift - 1))) >> shift;
    U::sat(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64 + zero as i64)
}

/// Constant weights `[rows][k]`: int8, or 4-bit packed two per byte (low nibble first, rows padded
/// to whole bytes). Kernels read them in chunks of at most [`W_CHUNK`], unpacking 4-bit codes on the
/// fly, so both widths accumulate in the same order.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    I8(&'a [i8]),
    I4(&'a [u8]),
}

pub const W_CHUNK: usize = 64;

/// Bytes of a `[rows][k]` weight matrix at `bits` per weight.
pub fn weight_bytes(bits: u8, rows: usize, k: usize) -> usize {
    if bits == 4 {
        rows * k.div_ceil(2)
    } else {
        rows * k
    }
}

impl<'a> Weights<'a> {
    pub fn from_blob(bits: u8, b: &'a [u8]) -> Weights<'a> {
        if bits == 4 {
            Weights::I4(b)
        } else {
            Weights::I8(bytemuck::cast_slice(b))
        }
    }
    /// Rows `r0..r0 + nr` of a `[rows][k]` matrix (int4 rows are padded to whole bytes).
    pub fn rows(&self, r0: usize, nr: usize, k: usize) -> Result<Weights<'a>> {
        let (bytes, len) = match self {
            Weights::I8(w) => (k, w.len()),
            Weights::I4(w) => (k.div_ceil(2), w.len()),
        };
        let range = r0 * bytes..(r0 + nr) * bytes;
        if range.end > len {
            return Err(Error::BufferLength {
                expected: range.end,
                got: len,
            });
        }
        Ok(match self {
            Weights::I8(w) => Weights::I8(&w[range]),
            Weights::I4(w) => Weights::I4(&w[range]),
        })
    }
    fn check(&self, rows: usize, k: usize) -> Result<()> {
        match self {
            Weights::I8(w) => check_len(rows * k, w.len()),
            Weights::I4(w) => check_len(rows * k.div_ceil(2), w.len()),
        }
    }
    /// Weights `k0..k0+n` of `row` (`n <= W_CHUNK`).
    #[inline(always)]
    pub fn chunk<'b>(
        &self,
        row: usize,
        k: usize,
        k0: usize,
        n: usize,
        buf: &'b mut [i8; W_CHUNK],
    ) -> &'b [i8]
    where
        'a: 'b,
    {
        match *self {
            Weights::I8(w) => &w[row * k + k0..row * k + k0 + n],
            Weights::I4(w) => {
                let base = row * k.div_ceil(2);
                for (j, d) in buf[..n].iter_mut().enumerate() {
                    let e = k0 + j;
                    let byte = w[base + e / 2];
                    let nib = if e % 2 == 0 { byte << 4 } else { byte & 0xf0 };
                    *d = (nib as i8) >> 4;
                }
                &buf[..n]
            }
        }
    }
    /// Sum of a row's weights (used by tests and the compiler's zero-point folding).
    pub fn row_sum(&self, row: usize, k: usize) -> i64 {
        let mut buf = [0i8; W_CHUNK];
        let mut s = 0i64;
        let mut k0 = 0;
        while k0 < k {
            let n = W_CHUNK.min(k - k0);
            s += self
                .chunk(row, k, k0, n, &mut buf)
                .iter()
                .map(|&v| v as i64)
                .sum::<i64>();
            k0 += n;
        }
        s
    }
}

/// The accumulator of a product: wrapping i32 for int8 inputs (the specification; SIMD tiers may
/// reorder it freely because wrapping addition is associative), exact i64 for int16 inputs.
pub trait Accum: Copy {
    fn from_bias(b: i32) -> Self;
    fn mac(self, w: i8, x: i32) -> Self;
    fn value(self) -> i64;
}

impl Accum for i32 {
    #[inline(always)]
    fn from_bias(b: i32) -> Self {
        b
    }
    #[inline(always)]
    fn mac(self, w: i8, x: i32) -> Self {
        self.wrapping_add(w as i32 * x)
    }
    #[inline(always)]
    fn value(self) -> i64 {
        self as i64
    }
}

impl Accum for i64 {
    #[inline(always)]
    fn from_bias(b: i32) -> Self {
        b as i64
    }
    #[inline(always)]
    fn mac(self, w: i8, x: i32) -> Self {
        self + w as i64 * x as i64
    }
    #[inline(always)]
    fn value(self) -> i64 {
        self
    }
}

pub(crate) fn pad2(s: [usize; 2]) -> [usize; MAX_RANK] {
    let mut st = [0usize; MAX_RANK];
    st[..2].copy_from_slice(&s);
    st
}

#[cfg(test)]
mod tests {
    use super::conv::{conv2d, ConvDims};
    use super::{eltwise, softmax, Weights};

    #[test]
    fn kernels_reject_wrong_lengths_instead_of_panicking() {
        let d = ConvDims {
            c: 2,
            h: 4,
            w: 4,
            co: 2,
            kh: 3,
            kw: 3,
            sh: 1,
            sw: 1,
            pt: 1,
            pl: 1,
            oh: 4,
            ow: 4,
        };
        let (mut out, mut scratch) = ([0i8; 32], [0i8; 10]); // scratch too small
        let w = Weights::I8(&[0; 36]);
        assert!(conv2d(
            &[0i8; 32],
            &d,
            0,
            w,
            &[0; 8],
            &[0; 16],
            0,
            &mut scratch,
            &mut out
        )
        .is_err());
        assert!(eltwise::lut(&[0; 4], &[0; 10], &mut [0; 4]).is_err());
        assert!(softmax::softmax(&[0; 4], 1, 5, 1, &[0; 1024], &mut [0; 4]).is_err());
    }
}
