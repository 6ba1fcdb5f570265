//! Element-wise binary ops as they run: the reference's arithmetic ([`reference::eltwise::binary`],
//! exact in i128) one row at a time in i64, for parameters whose bound (checked once, at prepare)
//! keeps every intermediate below 2^62 in magnitude — there both compute the same integers.
//!
//! [`reference::eltwise::binary`]: super::reference::eltwise::binary
use super::reference::Code;
use super::{extent, Rows, MAX_RANK};
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
        let (ma, mb) = (
            self.mult_a.unsigned_abs() as u128,
            self.mult_b.unsigned_abs() as u128,
        );
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
    if extent(shape, sa, 0) > a.len()
        || extent(shape, sb, 0) > b.len()
        || extent(shape, so, 0) > out.len()
    {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    if !(A::MIN..=A::MAX).contains(&p.za) || !(B::MIN..=B::MAX).contains(&p.zb) {
        return Err(Error::Unsupported(
            "binary zero point outside the code range",
        ));
    }
    // the rows compiled for AVX2 where the CPU has it, whatever the caller's context (the same
    // integers: the loops' i64 arithmetic is exact)
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if crate::kernels::ops_isa() != crate::kernels::OpsIsa::Scalar {
        // SAFETY: `ops_isa` found AVX2 on this CPU
        unsafe { kinds_avx2(a, sa, b, sb, shape, so, p, out) };
        return Ok(());
    }
    kinds(a, sa, b, sb, shape, so, p, out);
    Ok(())
}

/// [`kinds`] built for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn kinds_avx2<A: Code, B: Code, U: Code>(
    a: &[A],
    sa: &[usize; MAX_RANK],
    b: &[B],
    sb: &[usize; MAX_RANK],
    shape: &[usize],
    so: &[usize; MAX_RANK],
    p: &BinaryParams,
    out: &mut [U],
) {
    kinds(a, sa, b, sb, shape, so, p, out)
}

/// [`binary_i64`]'s rows of its kind (its checks done).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn kinds<A: Code, B: Code, U: Code>(
    a: &[A],
    sa: &[usize; MAX_RANK],
    b: &[B],
    sb: &[usize; MAX_RANK],
    shape: &[usize],
    so: &[usize; MAX_RANK],
    p: &BinaryParams,
    out: &mut [U],
) {
    match p.kind {
        BinaryKind::Add => rows::<A, B, U, 0>(a, sa, b, sb, shape, so, p, out),
        BinaryKind::Sub => rows::<A, B, U, 1>(a, sa, b, sb, shape, so, p, out),
        BinaryKind::Mul => rows::<A, B, U, 2>(a, sa, b, sb, shape, so, p, out),
    }
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
    let c = Coef {
        ma: p.mult_a as i64,
        mb: p.mult_b as i64,
        round: 1i64 << (shift - 1),
        shift,
        zo: p.zo as i64,
    };
    // code - zero fits i32 (|d| < 2^17), so the products below are 32 x 32 -> 64 bits
    let (za, zb) = (p.za, p.zb);
    let op = |x: i32, y: i32| -> U { c.apply::<U, KIND>(x, y) };
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let wide = crate::kernels::is_i8::<A>()
        && crate::kernels::is_i8::<B>()
        && crate::kernels::is_i8::<U>()
        && crate::kernels::ops_isa() == crate::kernels::OpsIsa::Avx512
        && std::arch::is_x86_feature_detected!("avx512dq");
    let mut rows = Rows::new(shape, [sa, sb, so], [0, 0, 0]);
    while let Some(([ia, ib, io], n, [ta, tb, to])) = rows.next() {
        let o = &mut out[io..];
        // int8 runs of contiguous (or broadcast) operands: 8 per step on 512 bits (the same i64
        // rule), the rest below
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        let (ia, ib, o, n) = if wide && to == 1 && ta <= 1 && tb <= 1 && (ta, tb) != (0, 0) {
            use super::x86_avx512_ops::{binary8, Side};
            fn side(v: &[i8], i: usize, t: usize, z: i32, n: usize) -> Side<'_> {
                if t == 1 {
                    Side::Run(&v[i..i + n], z)
                } else {
                    Side::Scalar(v[i] as i32 - z)
                }
            }
            let (a8, b8): (&[i8], &[i8]) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
            let o8: &mut [i8] = bytemuck::cast_slice_mut(&mut o[..n]);
            let coef = [c.ma, c.mb, c.round, c.shift as i64, c.zo];
            // SAFETY: the features were just detected; the runs hold `n` codes (sliced above)
            let done = unsafe {
                binary8(
                    side(a8, ia, ta, za, n),
                    side(b8, ib, tb, zb, n),
                    o8,
                    KIND,
                    coef,
                )
            };
            (ia + ta * done, ib + tb * done, &mut o[done..], n - done)
        } else {
            (ia, ib, o, n)
        };
        match (ta, tb, to) {
            (1, 1, 1) => {
                for ((d, &x), &y) in o[..n].iter_mut().zip(&a[ia..ia + n]).zip(&b[ib..ib + n]) {
                    *d = op(x.get() - za, y.get() - zb);
                }
            }
            (1, 0, 1) => {
                let y = b[ib].get() - zb;
                for (d, &x) in o[..n].iter_mut().zip(&a[ia..ia + n]) {
                    *d = op(x.get() - za, y);
                }
            }
            (0, 1, 1) => {
                let x = a[ia].get() - za;
                for (d, &y) in o[..n].iter_mut().zip(&b[ib..ib + n]) {
                    *d = op(x, y.get() - zb);
                }
            }
            _ => {
                for j in 0..n {
                    o[j * to] = op(a[ia + j * ta].get() - za, b[ib + j * tb].get() - zb);
                }
            }
        }
    }
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
    fn apply<U: Code, const KIND: u8>(self, x: i32, y: i32) -> U {
        let (x, y) = (x as i64, y as i64);
        let v = match KIND {
            0 => self.ma * x + self.mb * y,
            1 => self.ma * x - self.mb * y,
            _ => self.ma * (x * y),
        };
        U::sat(((v + self.round) >> self.shift) + self.zo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{broadcast_strides, contiguous_strides, reference::eltwise::binary};

    /// The i64 rows equal the i128 reference bit for bit: every kind, broadcasts along any axes,
    /// int8 and int16 codes, extreme multipliers, shifts and zero points.
    #[test]
    fn i64_rows_equal_the_reference() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        let mut compared = 0;
        for case in 0..400 {
            let rank = 1 + next() as usize % 4;
            let shape: Vec<usize> = (0..rank).map(|_| 1 + next() as usize % 5).collect();
            let bshape: Vec<usize> = shape
                .iter()
                .map(|&d| if next() % 2 == 0 { 1 } else { d })
                .collect();
            let kind = [BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul][case % 3];
            let m = |v: u64| (v as i64 - (1 << 31)).clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            let p = BinaryParams {
                kind,
                mult_a: if case % 5 == 0 {
                    i32::MIN
                } else {
                    m(next() << 1)
                },
                mult_b: m(next() << 1),
                shift: (1 + next() % 62) as u8,
                za: next() as i32 % 65536 - 32768,
                zb: next() as i32 % 256 - 128,
                zo: next() as i32 % 200 - 100,
            };
            let a: Vec<i16> = (0..shape.iter().product::<usize>())
                .map(|_| next() as i16)
                .collect();
            let b: Vec<i8> = (0..bshape.iter().product::<usize>())
                .map(|_| next() as i8)
                .collect();
            let so = contiguous_strides(&shape);
            let sa = contiguous_strides(&shape);
            let sb = broadcast_strides(&bshape, &shape).unwrap();
            let (mut want, mut got) = (vec![0i16; a.len()], vec![0i16; a.len()]);
            let (ma, mb) = (p.mult_a as i128, p.mult_b as i128);
            let combine = |x: i128, y: i128| match kind {
                BinaryKind::Add => ma * x + mb * y,
                BinaryKind::Sub => ma * x - mb * y,
                BinaryKind::Mul => ma * x * y,
            };
            binary(
                &a, p.za, &sa, &b, p.zb, &sb, &shape, &so, combine, p.shift, p.zo, &mut want,
            )
            .unwrap();
            let reach = |z: i32, lo: i32, hi: i32| (hi - z).abs().max((lo - z).abs()) as u32;
            if p.fits_i64(reach(p.za, -32768, 32767), reach(p.zb, -128, 127)) {
                binary_i64(&a, &sa, &b, &sb, &shape, &so, &p, &mut got).unwrap();
                assert_eq!(got, want, "case {case}: {shape:?} x {bshape:?} {p:?}");
                compared += 1;
            }
        }
        assert!(compared > 150, "only {compared} cases fit i64");
    }

    /// The same for int8 operands and output with rows long enough for the 512-bit path (where
    /// the CPU has it): contiguous rows, either operand broadcast along them, every kind, the
    /// compiler's kind of multipliers (about 2^30) and extreme ones.
    #[test]
    fn int8_rows_equal_the_reference() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        for case in 0..300 {
            let shape = [
                1 + next() as usize % 3,
                1 + next() as usize % 4,
                1 + next() as usize % 70,
            ];
            // b broadcast along the rows, a along them, or neither
            let (ashape, bshape) = match case % 3 {
                0 => (shape, [shape[0], shape[1], 1]),
                1 => ([shape[0], 1, 1], shape),
                _ => (shape, shape),
            };
            let kind = [BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul][case / 3 % 3];
            let mult = |v: u64| match v % 4 {
                0 => i32::MAX - (v % 1000) as i32,
                1 => -(1 << 30) + (v % 1000) as i32,
                _ => (v % (1 << 31)) as i32 - (1 << 30),
            };
            let p = BinaryParams {
                kind,
                mult_a: mult(next()),
                mult_b: mult(next()),
                shift: (1 + next() % 62) as u8,
                za: next() as i32 % 256 - 128,
                zb: next() as i32 % 256 - 128,
                zo: next() as i32 % 200 - 100,
            };
            let codes = |n: usize, next: &mut dyn FnMut() -> u64| -> Vec<i8> {
                (0..n).map(|_| next() as i8).collect()
            };
            let a = codes(ashape.iter().product(), &mut next);
            let b = codes(bshape.iter().product(), &mut next);
            let so = contiguous_strides(&shape);
            let sa = broadcast_strides(&ashape, &shape).unwrap();
            let sb = broadcast_strides(&bshape, &shape).unwrap();
            let n = shape.iter().product::<usize>();
            let (mut want, mut got) = (vec![0i8; n], vec![0i8; n]);
            let (ma, mb) = (p.mult_a as i128, p.mult_b as i128);
            let combine = |x: i128, y: i128| match kind {
                BinaryKind::Add => ma * x + mb * y,
                BinaryKind::Sub => ma * x - mb * y,
                BinaryKind::Mul => ma * x * y,
            };
            binary(
                &a, p.za, &sa, &b, p.zb, &sb, &shape, &so, combine, p.shift, p.zo, &mut want,
            )
            .unwrap();
            let reach = |z: i32| (127 - z).abs().max((-128 - z).abs()) as u32;
            assert!(p.fits_i64(reach(p.za), reach(p.zb)), "case {case}");
            binary_i64(&a, &sa, &b, &sb, &shape, &so, &p, &mut got).unwrap();
            assert_eq!(
                got, want,
                "case {case}: {shape:?} {ashape:?} x {bshape:?} {p:?}"
            );
        }
    }
}
