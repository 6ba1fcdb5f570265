//! The SIMD tiers' GEMM driver: operands packed so that every dot product runs over contiguous
//! int8 rows, computed in register tiles by the tier's `dot_block`. Equal to the reference kernels
//! bit for bit (int8 accumulation wraps in i32, and wrapping addition is associative).
use super::reference::conv::ConvDims;
use super::reference::matmul::MatMulDims;
use super::reference::{pad2, requant_to, Code, Weights};
use super::{check_len, le_i32, requant, requant_entry, Tier};
use crate::{Error, Result};

/// Transposed im2col for the SIMD tiers: `col_t[p][k]` holds what `col[k][p]` holds in [`im2col`].
pub fn im2col_t<T: Code>(x: &[T], d: &ConvDims, zx: T, col: &mut [T]) -> Result<()> {
    let (k, p) = (d.k(), d.p());
    let got = col.len();
    let col = col.get_mut(..k * p).ok_or(Error::BufferLength {
        expected: k * p,
        got,
    })?;
    im2col_t_rows(x, d, zx, 0, col)
}

/// Rows `p0..p0 + col.len() / k` of [`im2col_t`] (output pixels in row-major order), so that pixel
/// ranges can be built on different threads.
pub fn im2col_t_rows<T: Code>(
    x: &[T],
    d: &ConvDims,
    zx: T,
    p0: usize,
    col: &mut [T],
) -> Result<()> {
    check_len(d.c * d.h * d.w, x.len())?;
    let k = d.k();
    if k == 0 || col.len() % k != 0 || p0 + col.len() / k > d.p() {
        return Err(Error::BufferLength {
            expected: k * d.p(),
            got: col.len(),
        });
    }
    for (i, row) in col.chunks_exact_mut(k).enumerate() {
        let (oy, ox) = ((p0 + i) / d.ow, (p0 + i) % d.ow);
        // the kernel columns that land inside the image: [kx0, kx1)
        let x0 = (ox * d.sw) as isize - d.pl as isize;
        let kx0 = (-x0).clamp(0, d.kw as isize) as usize;
        let kx1 = (d.w as isize - x0).clamp(kx0 as isize, d.kw as isize) as usize;
        let mut ki = 0;
        for ci in 0..d.c {
            for ky in 0..d.kh {
                let iy = (oy * d.sh + ky) as isize - d.pt as isize;
                let dst = &mut row[ki..ki + d.kw];
                ki += d.kw;
                if iy < 0 || iy >= d.h as isize {
                    dst.fill(zx);
                    continue;
                }
                let line = (ci * d.h + iy as usize) * d.w;
                dst[..kx0].fill(zx);
                dst[kx1..].fill(zx);
                // consecutive kernel columns read consecutive input columns (no dilation)
                let s0 = line + (x0 + kx0 as isize) as usize;
                dst[kx0..kx1].copy_from_slice(&x[s0..s0 + (kx1 - kx0)]);
            }
        }
    }
    Ok(())
}

/// The conv GEMM on a SIMD tier, int8 inputs and weights: `out[m][p] = requant_m(bias[m] +
/// sum_k w[m][k] * x(k, p))`, where `x(k, p)` is `x[p*k + k]` for a transposed im2col (`pixel_rows`)
/// or `x[k*p + p]` for a 1×1 convolution's input read in place (packed four pixels at a time, see
/// [`packed_dots`]). Equal to [`gemm_wk_kp`] bit for bit, and runs it when the input does not fit
/// the packing buffer.
#[allow(clippy::too_many_arguments)]
pub fn conv_dot<U: Code>(
    tier: super::Tier,
    w: &[i8],
    x: &[i8],
    pixel_rows: bool,
    m: usize,
    k: usize,
    p: usize,
    bias: &[u8],
    rq: &[u8],
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    check_len(m * k, w.len())?;
    check_len(m * p, out.len())?;
    check_len(m * 4, bias.len())?;
    check_len(m * 8, rq.len())?;
    if x.len() < k * p {
        return Err(Error::BufferLength {
            expected: k * p,
            got: x.len(),
        });
    }
    let wo = Strided {
        data: w,
        base: 0,
        rows: m,
        rs: k,
        ks: 1,
    };
    let (rs, ks) = if pixel_rows { (k, 1) } else { (1, p) };
    let xo = Strided {
        data: x,
        base: 0,
        rows: p,
        rs,
        ks,
    };
    let done = packed_dots(tier, wo, xo, k, |mi, pi, dot| {
        let (mult, shift) = requant_entry(rq, mi);
        let acc = le_i32(bias, mi).wrapping_add(dot);
        out[mi * p + pi] = requant_to(acc as i64, mult, shift.clamp(1, 62), zo);
    });
    match (done, pixel_rows) {
        (true, _) => Ok(()),
        // gemm_wk_kp reads `x` as [k][p]
        (false, false) => {
            super::reference::conv::gemm_wk_kp(Weights::I8(w), x, m, k, p, bias, rq, zo, out)
        }
        (false, true) => Err(Error::Unsupported(
            "conv operands outside the packing limits",
        )),
    }
}

/// An int8 operand of a dot-product GEMM: element (row `r`, depth `q`) at `base + r*rs + q*ks`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'x> {
    pub data: &'x [i8],
    pub base: usize,
    pub rows: usize,
    /// element stride between rows
    pub rs: usize,
    /// element stride along the depth (1: rows are contiguous)
    pub ks: usize,
}

impl<'x> Strided<'x> {
    /// Whether every element of `k`-long rows lies inside `data`.
    fn fits(&self, k: usize) -> bool {
        if self.rows == 0 || k == 0 {
            return true;
        }
        let last = (self.rows - 1)
            .checked_mul(self.rs)
            .zip((k - 1).checked_mul(self.ks))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|v| v.checked_add(self.base));
        matches!(last, Some(l) if l < self.data.len())
    }
    /// Row `r`, when rows are contiguous.
    fn row(&self, r: usize, k: usize) -> &'x [i8] {
        let at = self.base + r * self.rs;
        &self.data[at..at + k]
    }
    /// Copies row `r` into `dst` (`k` values).
    fn gather(&self, r: usize, dst: &mut [i8]) {
        let at = self.base + r * self.rs;
        for (q, d) in dst.iter_mut().enumerate() {
            *d = self.data[at + q * self.ks];
        }
    }
}

/// Bytes of stack the packed GEMM uses for operands whose rows are not contiguous.
pub const PACK_BYTES: usize = 16384;

/// Calls `emit(i, j, dot)` with `dot = sum_q w[i][q] * x[j][q]` (wrapping i32) for every row `i` of
/// `w` and `j` of `x`, using the SIMD tier's register tiles. Rows that are not contiguous along the
/// depth are first copied into a stack buffer: `x` four rows at a time, `w` whole. Returns false, having
/// emitted nothing, when the operands do not fit that buffer or their data; the caller then runs the
/// scalar kernel, which gives the same bits.
pub fn packed_dots(
    tier: super::Tier,
    w: Strided<'_>,
    x: Strided<'_>,
    k: usize,
    mut emit: impl FnMut(usize, usize, i32),
) -> bool {
    if !w.fits(k) || !x.fits(k) {
        return false;
    }
    if k == 0 {
        for j in 0..x.rows {
            for i in 0..w.rows {
                emit(i, j, 0);
            }
        }
        return true;
    }
    let w_bytes = if w.ks == 1 { 0 } else { w.rows * k };
    let x_bytes = if x.ks == 1 { 0 } else { 4 * k };
    // a stack buffer no larger than needed (zeroing 16 KB per call would cost more than packing)
    match w_bytes + x_bytes {
        0 => tiles::<0, _>(tier, w, x, k, w_bytes, emit),
        1..=2048 => tiles::<2048, _>(tier, w, x, k, w_bytes, emit),
        2049..=PACK_BYTES => tiles::<PACK_BYTES, _>(tier, w, x, k, w_bytes, emit),
        _ => return false,
    }
    true
}

/// [`packed_dots`] with an `N`-byte packing buffer (`w_bytes` of it for `w`, the rest for `x`).
#[inline(always)]
fn tiles<const N: usize, F: FnMut(usize, usize, i32)>(
    tier: super::Tier,
    w: Strided<'_>,
    x: Strided<'_>,
    k: usize,
    w_bytes: usize,
    mut emit: F,
) {
    let mut buf = [0i8; N];
    let (wpack, xpack) = buf.split_at_mut(w_bytes);
    for i in 0..w_bytes / k.max(1) {
        w.gather(i, &mut wpack[i * k..(i + 1) * k]);
    }
    let wpack: &[i8] = wpack;
    let wrow = |i: usize| {
        if w.ks == 1 {
            w.row(i, k)
        } else {
            &wpack[i * k..(i + 1) * k]
        }
    };
    let nw4 = w.rows - w.rows % 4;
    for j in (0..x.rows).step_by(4) {
        let nj = (x.rows - j).min(4);
        if x.ks != 1 {
            for c in 0..nj {
                x.gather(j + c, &mut xpack[c * k..(c + 1) * k]);
            }
        }
        let xrow = |c: usize| {
            if x.ks == 1 {
                x.row(j + c, k)
            } else {
                &xpack[c * k..(c + 1) * k]
            }
        };
        if nj == 4 {
            let xs = [xrow(0), xrow(1), xrow(2), xrow(3)];
            for i in (0..nw4).step_by(4) {
                let ws = [wrow(i), wrow(i + 1), wrow(i + 2), wrow(i + 3)];
                let tile = super::dot_block(tier, ws, xs);
                for (r, row) in tile.iter().enumerate() {
                    for (c, &d) in row.iter().enumerate() {
                        emit(i + r, j + c, d);
                    }
                }
            }
            for i in nw4..w.rows {
                for (c, xr) in xs.iter().enumerate() {
                    emit(i, j + c, super::dot_i8(tier, wrow(i), xr));
                }
            }
        } else {
            for c in 0..nj {
                for i in 0..w.rows {
                    emit(i, j + c, super::dot_i8(tier, wrow(i), xrow(c)));
                }
            }
        }
    }
}

/// [`linear`] for int8 inputs and int8 weights on a SIMD tier (rows of `a` at stride `a_s[0]`, depth
/// at stride `a_s[1]`; rows that are not contiguous are packed, see [`packed_dots`]). Equal to
/// [`linear`] bit for bit, and runs it when the input does not fit the packing buffer.
#[allow(clippy::too_many_arguments)]
pub fn linear_dot<U: Code>(
    tier: super::Tier,
    a: &[i8],
    m: usize,
    n: usize,
    k: usize,
    a_s: [usize; 2],
    o_s: [usize; 2],
    w: &[i8],
    bias: &[u8],
    rq: &[u8],
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    check_len(n * k, w.len())?;
    check_len(n * 4, bias.len())?;
    check_len(n * 8, rq.len())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let a_ext = super::extent(&[m, k], &pad2(a_s), 0);
    let o_ext = super::extent(&[m, n], &pad2(o_s), 0);
    if a_ext > a.len() || o_ext > out.len() {
        return Err(Error::BufferLength {
            expected: a_ext.max(o_ext),
            got: a.len().min(out.len()),
        });
    }
    let wo = Strided {
        data: w,
        base: 0,
        rows: n,
        rs: k,
        ks: 1,
    };
    let ao = Strided {
        data: a,
        base: 0,
        rows: m,
        rs: a_s[0],
        ks: a_s[1],
    };
    let done = packed_dots(tier, wo, ao, k, |ni, mi, dot| {
        let (mult, shift) = requant_entry(rq, ni);
        let acc = le_i32(bias, ni).wrapping_add(dot);
        out[mi * o_s[0] + ni * o_s[1]] = requant_to(acc as i64, mult, shift.clamp(1, 62), zo);
    });
    if done {
        Ok(())
    } else {
        super::reference::linear::linear(a, m, n, k, a_s, o_s, Weights::I8(w), bias, rq, zo, out)
    }
}

/// Row sums kept on the stack for the zero-point correction of [`matmul_packed`].
const MAX_SUMS: usize = 2048;

/// One batch of [`matmul`] on a SIMD tier: raw int8 dot products from [`packed_dots`], then the
/// zero points by expansion, `sum (x-za)(y-zb) = sum xy - zb·sum x - za·sum y + k·za·zb`, all in
/// wrapping i32 — the same ring as the scalar loop, so the same bits. False when the shapes do not
/// fit the stack buffers (the caller runs the scalar loop).
#[allow(clippy::too_many_arguments)]
fn matmul_packed(
    tier: super::Tier,
    a: &[i8],
    za: i32,
    b: &[i8],
    zb: i32,
    d: &MatMulDims,
    [ab, bb, ob]: [usize; 3],
    mult: i32,
    shift: u8,
    zo: i32,
    out: &mut [i8],
) -> bool {
    if d.m > MAX_SUMS || d.n > MAX_SUMS {
        return false;
    }
    let ao = Strided {
        data: a,
        base: ab,
        rows: d.m,
        rs: d.a_s[2],
        ks: d.a_s[3],
    };
    let bo = Strided {
        data: b,
        base: bb,
        rows: d.n,
        rs: d.b_s[3],
        ks: d.b_s[2],
    };
    if !ao.fits(d.k) || !bo.fits(d.k) {
        return false;
    }
    let sums = |o: &Strided<'_>, into: &mut [i32; MAX_SUMS]| {
        for (r, s) in into.iter_mut().enumerate().take(o.rows) {
            let at = o.base + r * o.rs;
            *s = (0..d.k).fold(0i32, |acc, q| {
                acc.wrapping_add(o.data[at + q * o.ks] as i32)
            });
        }
    };
    let (mut sa, mut sb) = ([0i32; MAX_SUMS], [0i32; MAX_SUMS]);
    sums(&ao, &mut sa);
    sums(&bo, &mut sb);
    let kzz = (d.k as i32).wrapping_mul(za).wrapping_mul(zb);
    let mut put = |mi: usize, ni: usize, dot: i32| {
        let acc = dot
            .wrapping_sub(zb.wrapping_mul(sa[mi]))
            .wrapping_sub(za.wrapping_mul(sb[ni]))
            .wrapping_add(kzz);
        out[ob + mi * d.o_s[2] + ni * d.o_s[3]] = requant(acc as i64, mult, shift, zo);
    };
    // the operand with contiguous rows (or the smaller one) is the inner, packed-whole operand
    if bo.ks == 1 || (ao.ks != 1 && d.n <= d.m) {
        packed_dots(tier, bo, ao, d.k, |ni, mi, dot| put(mi, ni, dot))
    } else {
        packed_dots(tier, ao, bo, d.k, put)
    }
}

/// [`crate::kernels::reference::matmul::matmul`] on a SIMD tier: each batch through the packed
/// tiles, or the reference loop where the operands do not fit the packing limits. Same bits.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    tier: Tier,
    a: &[i8],
    za: i32,
    b: &[i8],
    zb: i32,
    d: &MatMulDims,
    mult: i32,
    shift: u8,
    zo: i32,
    out: &mut [i8],
) -> Result<()> {
    use super::reference::matmul as reference;
    if tier == Tier::Scalar {
        return reference::matmul(a, za, b, zb, d, mult, shift, zo, out);
    }
    if !reference::matmul_fits(d, a.len(), b.len(), out.len()) {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    let shift = shift.clamp(1, 62);
    for i0 in 0..d.batch[0] {
        for i1 in 0..d.batch[1] {
            let base = [
                i0 * d.a_s[0] + i1 * d.a_s[1],
                i0 * d.b_s[0] + i1 * d.b_s[1],
                i0 * d.o_s[0] + i1 * d.o_s[1],
            ];
            if !matmul_packed(tier, a, za, b, zb, d, base, mult, shift, zo, out) {
                reference::matmul_batch(a, za, b, zb, d, base, mult, shift, zo, out);
            }
        }
    }
    Ok(())
}
