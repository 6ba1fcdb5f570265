//! Scalar reference kernels: the specification every SIMD kernel must reproduce bit for bit. They
//! know nothing about graphs or files: slices and dimensions in, slices out, and every kernel checks
//! that its slices have the lengths its dimensions imply.
pub mod eltwise;
pub mod float;
pub mod movement;
pub mod norm;
pub mod rms;
pub mod softmax;
mod softmax_cols;
mod softmax_div;

use super::MAX_RANK;

/// An integer activation code: int8, or int16 for protected tensors.
pub trait Code: Copy + Default + bytemuck::Pod + Send + Sync + 'static {
    const MIN: i32;
    const MAX: i32;
    fn get(self) -> i32;
    fn sat(v: i64) -> Self;
    /// `v` known to be in `MIN..=MAX` (no clamp; outside it, the low bits)
    fn wrap(v: i64) -> Self;
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
    #[inline(always)]
    fn wrap(v: i64) -> Self {
        v as i8
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
    #[inline(always)]
    fn wrap(v: i64) -> Self {
        v as i16
    }
}

/// Requantizes to any code type: `sat(round_shift(acc * mult, shift) + zero)`, exact in i128.
#[inline(always)]
pub fn requant_to<U: Code>(acc: i64, mult: i32, shift: u8, zero: i32) -> U {
    let v = (acc as i128 * mult as i128 + (1i128 << (shift - 1))) >> shift;
    U::sat(v.clamp(i64::MIN as i128, i64::MAX as i128) as i64 + zero as i64)
}

pub(crate) fn pad2(s: [usize; 2]) -> [usize; MAX_RANK] {
    let mut st = [0usize; MAX_RANK];
    st[..2].copy_from_slice(&s);
    st
}

#[cfg(test)]
mod tests {
    use super::{eltwise, softmax};
    use crate::kernels::gemm::{run_rows, Finish, Pixels, Product};
    use crate::kernels::stage;
    use crate::kernels::Tier;

    #[test]
    fn kernels_reject_wrong_lengths_instead_of_panicking() {
        // weights one block short, a stage shorter than the pixels read
        let w = [0i8; 12];
        let st = [0i8; 16];
        let prod = Product {
            w: &w,
            n: 4,
            stage: &st,
            px: Pixels::rows(2, 4, 4),
            exact: false,
            full_range: false,
            wsum: u64::MAX,
        };
        assert!(run_rows(Tier::Scalar, &prod, (0, 4), Finish::Sums, |_| {}).is_err());
        let w = [0i8; 16];
        let prod = Product {
            w: &w,
            n: 4,
            stage: &st[..7],
            px: Pixels::rows(2, 4, 4),
            exact: false,
            full_range: false,
            wsum: u64::MAX,
        };
        assert!(run_rows(Tier::Scalar, &prod, (0, 4), Finish::Sums, |_| {}).is_err());
        assert!(stage::rows(Tier::Scalar, &[0i8; 5], 2, 3, [3, 1], &mut [0i8; 8]).is_err());
        assert!(eltwise::lut(&[0; 4], &[0; 10], &mut [0; 4]).is_err());
        assert!(softmax::softmax(&[0; 4], 1, 5, 1, &[0; 1024], &mut [0; 4]).is_err());
    }
}
