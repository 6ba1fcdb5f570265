//! Element-wise binary ops as they run: the reference's arithmetic ([`reference::eltwise::binary`],
//! exact in i128) one row at a time in i64, for parameters whose bound (checked once, at prepare)
//! keeps every intermediate below 2^62 in magnitude — there both compute the same integers.
//!
//! [`reference::eltwise::binary`]: super::reference::eltwise::binary
use super::reference::Code;
use super::{extent, walk_rows, MAX_RANK};
use crate::format::BinaryKind;
use crate::{Error, Result};

/// The integer parameters of one binary op.
#[derive(Debug, Clone, Copy)]
pub struct BinaryParams {
    pub kind: BinaryKind,
    pub mult_a: i32,
    pub mult_b: i32,
    pub shift: u8,
    pub za: i32,
    pub zb: i32,
    pub zo: i32,
}

impl BinaryParams {
    /// Whether `combine(a - za, b - zb)` stays within 2^62 for every code of the input types
    /// (`ra`, `rb`: the largest |code - zero| of each input), so i64 is exact.
    pub fn fits_i64(&self, ra: u32, rb: u32) -> bool {
        let (ma, mb) = (self.mult_a.unsigned_abs() as u128, self.mult_b.unsigned_abs() as u128);
        let (ra, rb) = (ra as u128, rb as u128);
        let bound = match self.kind {
            BinaryKind::Add | BinaryKind::Sub => ma * ra + mb * rb,
            BinaryKind::Mul => ma * ra * rb,
        };
        bound <= 1u128 << 62
    }
}

/// Largest |code - zero| of a code type.
pub fn code_reach<T: Code>(zero: i32) -> u32 {
    (T::MAX as i64 - zero as i64)
        .abs()
        .max((T::MIN as i64 - zero as i64).abs()) as u32
}

/// `out = sat(zo + round_shift(combine(a - za, b - zb), shift))` over broadcast strides, in i64.
/// The caller has checked [`BinaryParams::fits_i64`] for these code types.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn binary_i64<A: Code, B: Code, U: Code>(
    a: &[A],
    sa: &[usize; MAX_RANK],
    b: &[B],
    sb: &[usize; MAX_RANK],
    shape: &[usize],
    so: &[usize; MAX_RANK],
    p: &BinaryParams,
    out: &mut [U],
) -> Result<()> {
    if extent(shape, sa, 0) > a.len() || extent(shape, sb, 0) > b.len() || extent(shape, so, 0) > out.len() {
        return Err(Error::BufferLength { expected: 0, got: 0 });
    }
    match p.kind {
        BinaryKind::Add => rows::<A, B, U, 0>(a, sa, b, sb, shape, so, p, out),
        BinaryKind::Sub => rows::<A, B, U, 1>(a, sa, b, sb, shape, so, p, out),
        BinaryKind::Mul => rows::<A, B, U, 2>(a, sa, b, sb, shape, so, p, out),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rows<A: Code, B: Code, U: Code, const KIND: u8>(
    a: &[A],
    sa: &[usize; MAX_RANK],
    b: &[B],
    sb: &[usize; MAX_RANK],
    shape: &[usize],
    so: &[usize; MAX_RANK],
    p: &BinaryParams,
    out: &mut [U],
) {
    let shift = p.shift.clamp(1, 62);
    let c = Coef { ma: p.mult_a as i64, mb: p.mult_b as i64, round: 1i64 << (shift - 1), shift, zo: p.zo as i64 };
    let (za, zb) = (p.za as i64, p.zb as i64);
    let op = |x: i64, y: i64| -> U { c.apply::<U, KIND>(x, y) };
    walk_rows(shape, [sa, sb, so], [0, 0, 0], |[ia, ib, io], n, [ta, tb, to]| {
        let o = &mut out[io..];
        match (ta, tb, to) {
            (1, 1, 1) => {
                for ((d, &x), &y) in o[..n].iter_mut().zip(&a[ia..ia + n]).zip(&b[ib..ib + n]) {
                    *d = op(x.get() as i64 - za, y.get() as i64 - zb);
                }
            }
            (1, 0, 1) => {
                let y = b[ib].get() as i64 - zb;
                for (d, &x) in o[..n].iter_mut().zip(&a[ia..ia + n]) {
                    *d = op(x.get() as i64 - za, y);
                }
            }
            (0, 1, 1) => {
                let x = a[ia].get() as i64 - za;
                for (d, &y) in o[..n].iter_mut().zip(&b[ib..ib + n]) {
                    *d = op(x, y.get() as i64 - zb);
                }
            }
            _ => {
                for j in 0..n {
                    o[j * to] = op(a[ia + j * ta].get() as i64 - za, b[ib + j * tb].get() as i64 - zb);
                }
            }
        }
    });
}

#[derive(Clone, Copy)]
struct Coef {
    ma: i64,
    mb: i64,
    round: i64,
    shift: u8,
    zo: i64,
}

impl Coef {
    #[inline(always)]
    fn apply<U: Code, const KIND: u8>(self, x: i64, y: i64) -> U {
        let v = match KIND {
            0 => self.ma * x + self.mb * y,
            1 => self.ma * x - self.mb * y,
            _ => self.ma * x * y,
        };
        U::sat(((v + self.round) >> self.shift) + self.zo)
    }
}
