//! Convolution: im2col and the conv GEMM (`[co][k]` weights times a `[k][p]` column matrix).
use super::{requant_to, Accum, Code, Weights, W_CHUNK};
use crate::kernels::{check_len, le_i32, requant_entry};
use crate::{Error, Result};

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
