//! Scalar reference kernels: the specification every SIMD kernel must reproduce bit for bit.
use super::{check_len, le_f32, le_i32, requant, requant_entry, round_shift, walk};
use crate::format::{BinaryFn, BinaryKind, UnaryFn, MAX_RANK};
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

/// Geometry of an NCHW convolution for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvDims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// top, left
    pub pt: usize,
    pub pl: usize,
    pub oh: usize,
    pub ow: usize,
}

impl ConvDims {
    /// True when the input itself is the im2col matrix (1x1, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.oh == self.h
            && self.ow == self.w
    }
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
}

/// im2col: `col[(ci*kh + ky)*kw + kx][oy*ow + ox] = x[ci][oy*sh + ky - pt][ox*sw + kx - pl]`, or the
/// input zero point where that falls in the padding.
pub fn im2col<T: Code>(x: &[T], d: &ConvDims, zx: T, col: &mut [T]) -> Result<()> {
    check_len(d.c * d.h * d.w, x.len())?;
    let p = d.p();
    if col.len() < d.k() * p {
        return Err(Error::BufferLength {
            expected: d.k() * p,
            got: col.len(),
        });
    }
    let mut row = 0usize;
    for ci in 0..d.c {
        let plane = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        for ky in 0..d.kh {
            for kx in 0..d.kw {
                let dst = &mut col[row * p..(row + 1) * p];
                for oy in 0..d.oh {
                    let iy = (oy * d.sh + ky) as isize - d.pt as isize;
                    let drow = &mut dst[oy * d.ow..(oy + 1) * d.ow];
                    if iy < 0 || iy >= d.h as isize {
                        drow.fill(zx);
                        continue;
                    }
                    let src = &plane[iy as usize * d.w..(iy as usize + 1) * d.w];
                    for (ox, v) in drow.iter_mut().enumerate() {
                        let ix = (ox * d.sw + kx) as isize - d.pl as isize;
                        *v = if ix < 0 || ix >= d.w as isize {
                            zx
                        } else {
                            src[ix as usize]
                        };
                    }
                }
                row += 1;
            }
        }
    }
    Ok(())
}

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
        (false, false) => gemm_wk_kp(Weights::I8(w), x, m, k, p, bias, rq, zo, out),
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

/// `acc + sum_j w[j] * a[base + j*stride]` with the accumulator semantics of `A`.
#[inline(always)]
fn dot_acc<T: Code, A: Accum>(acc: A, w: &[i8], a: &[T], base: usize, stride: usize) -> i64 {
    let mut s = acc;
    for (j, &wv) in w.iter().enumerate() {
        s = s.mac(wv, a[base + j * stride].get());
    }
    s.value()
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
        linear(a, m, n, k, a_s, o_s, Weights::I8(w), bias, rq, zo, out)
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

/// One output row of [`gemm_wk_kp`], tiled over p.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_row<T: Code, U: Code, A: Accum>(
    w: Weights<'_>,
    col: &[T],
    mi: usize,
    k: usize,
    p: usize,
    b: i32,
    mult: i32,
    shift: u8,
    zo: i32,
    orow: &mut [U],
    wbuf: &mut [i8; W_CHUNK],
) {
    const TILE: usize = 64;
    let mut acc = [A::from_bias(b); TILE];
    let mut p0 = 0;
    while p0 < p {
        let n = TILE.min(p - p0);
        let acc = &mut acc[..n];
        acc.fill(A::from_bias(b));
        let mut k0 = 0;
        while k0 < k {
            let kn = W_CHUNK.min(k - k0);
            for (j, &wv) in w.chunk(mi, k, k0, kn, wbuf).iter().enumerate() {
                let ki = k0 + j;
                for (a, &c) in acc.iter_mut().zip(&col[ki * p + p0..ki * p + p0 + n]) {
                    *a = a.mac(wv, c.get());
                }
            }
            k0 += kn;
        }
        for (o, a) in orow[p0..p0 + n].iter_mut().zip(acc.iter()) {
            *o = requant_to(a.value(), mult, shift, zo);
        }
        p0 += n;
    }
}

/// The conv/linear GEMM: `out[m][p] = requant_m(bias[m] + sum_k w[m][k] * col[k][p])` with `w` `[m][k]`
/// row-major and `col` `[k][p]` row-major. With int8 inputs the accumulation wraps in i32 (exact for
/// any real model; defined for hostile ones); with int16 inputs it is exact in i64.
#[allow(clippy::too_many_arguments)]
pub fn gemm_wk_kp<T: Code, U: Code>(
    w: Weights<'_>,
    col: &[T],
    m: usize,
    k: usize,
    p: usize,
    bias: &[u8],
    rq: &[u8],
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    w.check(m, k)?;
    check_len(m * p, out.len())?;
    check_len(m * 4, bias.len())?;
    check_len(m * 8, rq.len())?;
    if col.len() < k * p {
        return Err(Error::BufferLength {
            expected: k * p,
            got: col.len(),
        });
    }
    let mut wbuf = [0i8; W_CHUNK];
    for mi in 0..m {
        let b = le_i32(bias, mi);
        let (mult, shift) = requant_entry(rq, mi);
        let orow = &mut out[mi * p..(mi + 1) * p];
        if T::MAX <= 127 {
            gemm_row::<T, U, i32>(
                w,
                col,
                mi,
                k,
                p,
                b,
                mult,
                shift.clamp(1, 62),
                zo,
                orow,
                &mut wbuf,
            );
        } else {
            gemm_row::<T, U, i64>(
                w,
                col,
                mi,
                k,
                p,
                b,
                mult,
                shift.clamp(1, 62),
                zo,
                orow,
                &mut wbuf,
            );
        }
    }
    Ok(())
}

/// Convolution of one NCHW image. `scratch` holds the im2col matrix unless the conv is pointwise.
#[allow(clippy::too_many_arguments)]
pub fn conv2d<T: Code, U: Code>(
    x: &[T],
    d: &ConvDims,
    zx: T,
    w: Weights<'_>,
    bias: &[u8],
    rq: &[u8],
    zo: i32,
    scratch: &mut [T],
    out: &mut [U],
) -> Result<()> {
    if d.is_pointwise() {
        gemm_wk_kp(w, x, d.co, d.k(), d.p(), bias, rq, zo, out)
    } else {
        let need = d.k() * d.p();
        let got = scratch.len();
        let col = scratch.get_mut(..need).ok_or(Error::BufferLength {
            expected: need,
            got,
        })?;
        im2col(x, d, zx, col)?;
        gemm_wk_kp(w, col, d.co, d.k(), d.p(), bias, rq, zo, out)
    }
}

/// Strided product with constant weights: `out[m*os0 + n*os1] = requant_n(bias[n] + sum_k a[m*as0 + k*as1] * w[n][k])`.
#[allow(clippy::too_many_arguments)]
pub fn linear<T: Code, U: Code>(
    a: &[T],
    m: usize,
    n: usize,
    k: usize,
    a_s: [usize; 2],
    o_s: [usize; 2],
    w: Weights<'_>,
    bias: &[u8],
    rq: &[u8],
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    w.check(n, k)?;
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
    const TILE: usize = 64;
    let mut acc = [0i64; TILE];
    let mut wbuf = [0i8; W_CHUNK];
    let narrow = T::MAX <= 127;
    for ni in 0..n {
        let b = le_i32(bias, ni);
        let (mult, shift) = requant_entry(rq, ni);
        let shift = shift.clamp(1, 62);
        let mut m0 = 0;
        while m0 < m {
            let mn = TILE.min(m - m0);
            acc[..mn].fill(b as i64);
            let mut k0 = 0;
            while k0 < k {
                let kn = W_CHUNK.min(k - k0);
                let wc = w.chunk(ni, k, k0, kn, &mut wbuf);
                for (t, a_acc) in acc[..mn].iter_mut().enumerate() {
                    let base = (m0 + t) * a_s[0] + k0 * a_s[1];
                    *a_acc = if narrow {
                        dot_acc::<T, i32>(*a_acc as i32, wc, a, base, a_s[1]) as i64
                    } else {
                        dot_acc::<T, i64>(*a_acc, wc, a, base, a_s[1])
                    };
                }
                k0 += kn;
            }
            for (t, &v) in acc[..mn].iter().enumerate() {
                out[(m0 + t) * o_s[0] + ni * o_s[1]] = requant_to(v, mult, shift, zo);
            }
            m0 += mn;
        }
    }
    Ok(())
}

/// Geometry of [`matmul`]: batch sizes, m, n, k, and element strides (batch0, batch1, row, col).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulDims {
    pub batch: [usize; 2],
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_s: [usize; 4],
    pub b_s: [usize; 4],
    pub o_s: [usize; 4],
}

fn ext4(d: [usize; 4], s: [usize; 4]) -> usize {
    let mut st = [0usize; MAX_RANK];
    st[..4].copy_from_slice(&s);
    super::extent(&d, &st, 0)
}

fn pad2(s: [usize; 2]) -> [usize; MAX_RANK] {
    let mut st = [0usize; MAX_RANK];
    st[..2].copy_from_slice(&s);
    st
}

/// Activation x activation product: `out = requant(sum_k (a - za)(b - zb))`, per-tensor requantization.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    tier: super::Tier,
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
    let [b0, b1] = d.batch;
    if ext4([b0, b1, d.m, d.k], d.a_s) > a.len()
        || ext4([b0, b1, d.k, d.n], d.b_s) > b.len()
        || ext4([b0, b1, d.m, d.n], d.o_s) > out.len()
    {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    let shift = shift.clamp(1, 62);
    for i0 in 0..b0 {
        for i1 in 0..b1 {
            let ab = i0 * d.a_s[0] + i1 * d.a_s[1];
            let bb = i0 * d.b_s[0] + i1 * d.b_s[1];
            let ob = i0 * d.o_s[0] + i1 * d.o_s[1];
            if tier != super::Tier::Scalar
                && matmul_packed(tier, a, za, b, zb, d, [ab, bb, ob], mult, shift, zo, out)
            {
                continue;
            }
            for mi in 0..d.m {
                for ni in 0..d.n {
                    let mut acc: i32 = 0;
                    for ki in 0..d.k {
                        let x = a[ab + mi * d.a_s[2] + ki * d.a_s[3]] as i32 - za;
                        let y = b[bb + ki * d.b_s[2] + ni * d.b_s[3]] as i32 - zb;
                        acc = acc.wrapping_add(x.wrapping_mul(y));
                    }
                    out[ob + mi * d.o_s[2] + ni * d.o_s[3]] = requant(acc as i64, mult, shift, zo);
                }
            }
        }
    }
    Ok(())
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

/// Element-wise binary op with broadcasting strides (computed by the caller, checked here).
#[allow(clippy::too_many_arguments)]
pub fn binary<A: Code, B: Code, U: Code>(
    kind: BinaryKind,
    a: &[A],
    za: i32,
    sa: &[usize; MAX_RANK],
    b: &[B],
    zb: i32,
    sb: &[usize; MAX_RANK],
    shape: &[usize],
    so: &[usize; MAX_RANK],
    mult_a: i32,
    mult_b: i32,
    shift: u8,
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    if super::extent(shape, sa, 0) > a.len()
        || super::extent(shape, sb, 0) > b.len()
        || super::extent(shape, so, 0) > out.len()
    {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    let shift = shift.clamp(1, 62);
    let (ma, mb) = (mult_a as i64, mult_b as i64);
    walk(shape, [sa, sb, so], [0, 0, 0], |[ia, ib, io]| {
        let x = a[ia].get() as i64 - za as i64;
        let y = b[ib].get() as i64 - zb as i64;
        let v = match kind {
            BinaryKind::Add => ma as i128 * x as i128 + mb as i128 * y as i128,
            BinaryKind::Sub => ma as i128 * x as i128 - mb as i128 * y as i128,
            BinaryKind::Mul => ma as i128 * x as i128 * y as i128,
        };
        let r = (v + (1i128 << (shift - 1))) >> shift;
        out[io] = U::sat(r.clamp(i64::MIN as i128 / 2, i64::MAX as i128 / 2) as i64 + zo as i64);
    });
    Ok(())
}

/// int8 -> int16 table: `out[i] = table_i16[x[i] + 128]` (512 bytes, little endian).
pub fn lut_8_16(x: &[i8], table: &[u8], out: &mut [i16]) -> Result<()> {
    check_len(512, table.len())?;
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        let i = (v as i32 + 128) as usize * 2;
        *o = i16::from_le_bytes([table[i], table[i + 1]]);
    }
    Ok(())
}

/// int16 input: 257-point table (i32, output codes x 256), linear interpolation.
pub fn lut_16<U: Code>(x: &[i16], table: &[u8], out: &mut [U]) -> Result<()> {
    check_len(257 * 4, table.len())?;
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        let u = (v as i32 + 32768) as usize;
        let (i, f) = (u >> 8, (u & 255) as i64);
        let v = le_i32(table, i) as i64 * (256 - f) + le_i32(table, i + 1) as i64 * f;
        *o = U::sat(round_shift(v, 16));
    }
    Ok(())
}

/// `out[i] = table[x[i] + 128]`.
pub fn lut(x: &[i8], table: &[u8], out: &mut [i8]) -> Result<()> {
    check_len(256, table.len())?;
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = table[(v as i32 + 128) as usize] as i8;
    }
    Ok(())
}

/// Fixed-point fraction bits of the GroupNorm per-channel affine.
pub const GN_FRAC_BITS: u8 = 16;

/// `out = zo + a*(x - zx) + b` per element in fixed point with `GN_FRAC_BITS` fraction bits
/// (`zo` is folded into `b`).
fn gn_affine<T: Code, U: Code>(x: &[T], out: &mut [U], zx: i32, a: f32, b: f32) {
    let one = (1i64 << GN_FRAC_BITS) as f32;
    let am = libm::rintf(a * one).clamp(-1.0e12, 1.0e12) as i64;
    let bm = libm::rintf(b * one).clamp(-1.0e15, 1.0e15) as i64;
    for (dst, &v) in out.iter_mut().zip(x) {
        let d = v.get() as i128 - zx as i128;
        let r = (d * am as i128 + bm as i128 + (1i128 << (GN_FRAC_BITS - 1))) >> GN_FRAC_BITS;
        *dst = U::sat(r.clamp(-(1i128 << 40), 1i128 << 40) as i64);
    }
}

/// GroupNorm of `[n][c][s]` int8 codes. Statistics are exact integer sums per group; the per-channel
/// affine `q_out = zo + a_c*(q - zx) + b_c` is evaluated in f32 once per channel and applied per element
/// in 16-bit fixed point. With `ch_scales` (f32 per channel: a split concat whose parts keep their own
/// scales) the sums are exact per channel and combined with each channel's scale.
#[allow(clippy::too_many_arguments)]
pub fn group_norm<T: Code, U: Code>(
    x: &[T],
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    zx: i32,
    sx: f32,
    ch_scales: Option<&[u8]>,
    eps: f32,
    affine: &[u8],
    so: f32,
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    check_len(n * c * s, x.len())?;
    check_len(x.len(), out.len())?;
    check_len(c * 8, affine.len())?;
    if groups == 0 || c % groups != 0 {
        return Err(Error::Unsupported("groups must divide channels"));
    }
    let cg = c / groups;
    let count = (cg * s) as i64; // <= x.len(), checked above
    if count == 0 {
        return Ok(());
    }
    if let Some(sc) = ch_scales {
        check_len(c * 4, sc.len())?;
        if (0..c).any(|ch| !(le_f32(sc, ch) > 0.0 && le_f32(sc, ch).is_finite())) {
            return Err(Error::Unsupported(
                "groupnorm channel scales must be positive",
            ));
        }
        for ni in 0..n {
            for g in 0..groups {
                let start = (ni * c + g * cg) * s;
                // exact integer sums per channel, combined in f64 with the channel scales
                let (mut m1, mut m2) = (0f64, 0f64);
                for cc in 0..cg {
                    let o = start + cc * s;
                    let (mut sum, mut sumsq) = (0i64, 0i64);
                    for &v in &x[o..o + s] {
                        let d = v.get() as i64 - zx as i64;
                        sum += d;
                        sumsq += d * d;
                    }
                    let sc_c = le_f32(sc, g * cg + cc) as f64;
                    m1 += sc_c * sum as f64;
                    m2 += sc_c * sc_c * sumsq as f64;
                }
                let mean = m1 / count as f64;
                let var = (m2 / count as f64 - mean * mean).max(0.0);
                let rstd = 1.0 / libm::sqrtf(var as f32 + eps);
                for cc in 0..cg {
                    let ch = g * cg + cc;
                    let (gamma, beta) = (le_f32(affine, ch), le_f32(affine, c + ch));
                    let sc_c = le_f32(sc, ch);
                    let a = gamma * rstd * sc_c / so;
                    let b = (beta - gamma * rstd * mean as f32) / so + zo as f32;
                    let o = start + cc * s;
                    gn_affine(&x[o..o + s], &mut out[o..o + s], zx, a, b);
                }
            }
        }
        return Ok(());
    }
    for ni in 0..n {
        for g in 0..groups {
            let start = (ni * c + g * cg) * s;
            let xs = &x[start..start + cg * s];
            let (mut sum, mut sumsq) = (0i64, 0i64);
            for &v in xs {
                let d = v.get() as i64 - zx as i64;
                sum += d;
                sumsq += d * d;
            }
            // exact numerator of the variance in code units: (n*sumsq - sum^2) / n^2
            let num = count as i128 * sumsq as i128 - sum as i128 * sum as i128;
            let var_q = num as f32 / (count as f32 * count as f32);
            let mean_q = sum as f32 / count as f32;
            let rstd = 1.0 / libm::sqrtf(var_q * sx * sx + eps);
            for cc in 0..cg {
                let ch = g * cg + cc;
                let gamma = le_f32(affine, ch);
                let beta = le_f32(affine, c + ch);
                let a = gamma * rstd * sx / so;
                let b = (beta - gamma * rstd * sx * mean_q) / so + zo as f32;
                let o = start + cc * s;
                gn_affine(&x[o..o + s], &mut out[o..o + s], zx, a, b);
            }
        }
    }
    Ok(())
}

/// Softmax along an axis decomposed as `[outer][len][inner]`. Integer only: `e = exp_table[max - q]`
/// (u32, 2^20 = 1), `q_out = round(255 * e / sum) - 128`.
pub fn softmax(
    x: &[i8],
    outer: usize,
    len: usize,
    inner: usize,
    exp_table: &[u8],
    out: &mut [i8],
) -> Result<()> {
    check_len(outer * len * inner, x.len())?;
    check_len(x.len(), out.len())?;
    check_len(256 * 4, exp_table.len())?;
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut mx = i8::MIN;
            for j in 0..len {
                mx = mx.max(x[at(j)]);
            }
            let mut sum: u64 = 0;
            for j in 0..len {
                sum += le_i32(exp_table, (mx as i32 - x[at(j)] as i32) as usize) as u32 as u64;
            }
            let sum = sum.max(1);
            for j in 0..len {
                let e = le_i32(exp_table, (mx as i32 - x[at(j)] as i32) as usize) as u32 as u64;
                let q = (e * 510 + sum) / (2 * sum); // round(255 * e / sum)
                out[at(j)] = (q.min(255) as i32 - 128) as i8;
            }
        }
    }
    Ok(())
}

/// Gather with strides: `out[walk order] = map(x[offsets])`.
pub fn strided_map<T: Copy, U>(
    x: &[T],
    shape: &[usize],
    sx: &[usize; MAX_RANK],
    bx: usize,
    out: &mut [U],
    so: &[usize; MAX_RANK],
    bo: usize,
    f: impl Fn(T) -> U,
) -> Result<()> {
    if super::extent(shape, sx, bx) > x.len() || super::extent(shape, so, bo) > out.len() {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    walk(shape, [sx, so], [bx, bo], |[i, o]| out[o] = f(x[i]));
    Ok(())
}

/// Nearest upsampling by integer factors `out_shape[d] / in_shape[d]`.
pub fn upsample<T: Copy>(
    x: &[T],
    in_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) -> Result<()> {
    let rank = in_shape.len();
    if rank != out_shape.len() || rank > MAX_RANK || rank == 0 {
        return Err(Error::Unsupported("upsample rank"));
    }
    check_len(in_shape.iter().product(), x.len())?;
    check_len(out_shape.iter().product(), out.len())?;
    let mut f = [1usize; MAX_RANK];
    for d in 0..rank {
        if in_shape[d] == 0 || out_shape[d] % in_shape[d] != 0 {
            return Err(Error::Unsupported("upsample factor"));
        }
        f[d] = out_shape[d] / in_shape[d];
    }
    let si = super::contiguous_strides(in_shape);
    let mut idx = [0usize; MAX_RANK];
    for o in out.iter_mut() {
        let mut off = 0;
        for d in 0..rank {
            off += (idx[d] / f[d]) * si[d];
        }
        *o = x[off];
        let mut d = rank;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

/// f32 -> int8: `clamp(rint(x / scale) + zero)`, round half to even.
pub fn quantize<U: Code>(x: &[f32], scale: f32, zero: i32, out: &mut [U]) -> Result<()> {
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = libm::rintf(v / scale);
        let q = if q.is_nan() { 0.0 } else { q };
        *o = U::sat(q.clamp(-1.0e6, 1.0e6) as i64 + zero as i64);
    }
    Ok(())
}

pub fn dequantize<T: Code>(x: &[T], scale: f32, zero: i32, out: &mut [f32]) -> Result<()> {
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v.get() - zero) as f32 * scale;
    }
    Ok(())
}

pub fn unary_f32(func: UnaryFn, v: f32) -> f32 {
    match func {
        UnaryFn::Sin => libm::sinf(v),
        UnaryFn::Cos => libm::cosf(v),
        UnaryFn::Exp => libm::expf(v),
        UnaryFn::Ln => libm::logf(v),
        UnaryFn::Sqrt => libm::sqrtf(v),
        UnaryFn::Rsqrt => 1.0 / libm::sqrtf(v),
        UnaryFn::Recip => 1.0 / v,
        UnaryFn::Neg => -v,
        UnaryFn::Abs => libm::fabsf(v),
        UnaryFn::Square => v * v,
        UnaryFn::Silu => v / (1.0 + libm::expf(-v)),
        UnaryFn::Sigmoid => 1.0 / (1.0 + libm::expf(-v)),
        UnaryFn::Tanh => libm::tanhf(v),
        UnaryFn::Erf => libm::erff(v),
        UnaryFn::Gelu => 0.5 * v * (1.0 + libm::erff(v * core::f32::consts::FRAC_1_SQRT_2)),
        UnaryFn::Identity => v,
    }
}

pub fn binary_f32(func: BinaryFn, a: f32, b: f32) -> f32 {
    match func {
        BinaryFn::Add => a + b,
        BinaryFn::Sub => a - b,
        BinaryFn::Mul => a * b,
        BinaryFn::Div => a / b,
        BinaryFn::Max => a.max(b),
        BinaryFn::Min => a.min(b),
        BinaryFn::Pow => libm::powf(a, b),
    }
}

/// f32 strided product with int8 per-n weights (timestep path):
/// `out[m, n] = (sum_k a[m, k] * wq[n, k]) * scale[n] + bias[n]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    a: &[f32],
    m: usize,
    n: usize,
    k: usize,
    a_s: [usize; 2],
    o_s: [usize; 2],
    w: &[i8],
    scales: &[u8],
    bias: &[u8],
    out: &mut [f32],
) -> Result<()> {
    check_len(n * k, w.len())?;
    check_len(n * 4, scales.len())?;
    check_len(n * 4, bias.len())?;
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
    for ni in 0..n {
        let wrow = &w[ni * k..(ni + 1) * k];
        let (s, b) = (le_f32(scales, ni), le_f32(bias, ni));
        for mi in 0..m {
            let mut acc = 0.0f32;
            for (ki, &wv) in wrow.iter().enumerate() {
                acc += wv as f32 * a[mi * a_s[0] + ki * a_s[1]];
            }
            out[mi * o_s[0] + ni * o_s[1]] = acc * s + b;
        }
    }
    Ok(())
}
