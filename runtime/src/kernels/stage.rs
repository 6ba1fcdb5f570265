//! Staging activations for the product engine ([`super::gemm`]): NCHW images to NHWC with a border
//! of the input zero point and channels padded to a multiple of 4, and strided matrices to rows of
//! depth padded to a multiple of 4. The AVX2 tier reads i16 stages, the others the input's own
//! codes; [`stage_elem`] says which.
use super::gemm::{pad4, Pixels};
use super::reference::Code;
use super::{check_len, Tier};
use crate::{Error, Result};

/// Bytes per staged value for activations of `elem` bytes on `tier`.
pub fn stage_elem(tier: Tier, elem: usize) -> usize {
    match tier {
        Tier::Avx2 => 2,
        _ => elem,
    }
}

/// Geometry of a staged NCHW image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStage {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// padding: top, left, bottom, right
    pub pad: [usize; 4],
}

impl ImageStage {
    pub fn c4(&self) -> usize {
        pad4(self.c)
    }
    pub fn wp(&self) -> usize {
        self.w + self.pad[1] + self.pad[3]
    }
    pub fn hp(&self) -> usize {
        self.h + self.pad[0] + self.pad[2]
    }
    /// Staged values.
    pub fn len(&self) -> usize {
        self.hp() * self.wp() * self.c4()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The pixels of a `kh x kw` convolution with strides `sh, sw` and output `oh x ow` over it.
    pub fn pixels(&self, (kh, kw): (usize, usize), (sh, sw): (usize, usize), (oh, ow): (usize, usize)) -> Pixels {
        let c4 = self.c4();
        Pixels {
            count: oh * ow,
            width: ow,
            row_step: sh * self.wp() * c4,
            col_step: sw * c4,
            kh,
            kw,
            tap_row: self.wp() * c4,
            c4,
        }
    }
}

/// Stages one NCHW image `x` into `out` (`g.len()` values): NHWC, the border filled with `zx`, the
/// channels beyond `c` with 0.
#[inline(always)]
pub fn image<T: Code, U: Code>(x: &[T], g: &ImageStage, zx: U, out: &mut [U]) -> Result<()> {
    check_len(g.c * g.h * g.w, x.len())?;
    check_len(g.len(), out.len())?;
    let (c4, wp) = (g.c4(), g.wp());
    let [pt, pl, _, _] = g.pad;
    // the border rows and columns, then every interior pixel's padded channels
    for (y, row) in out.chunks_exact_mut(wp * c4).enumerate() {
        let inside = y >= pt && y < pt + g.h;
        for (xx, px) in row.chunks_exact_mut(c4).enumerate() {
            if inside && xx >= pl && xx < pl + g.w {
                px[g.c..].fill(U::default());
            } else {
                px.fill(zx);
            }
        }
    }
    let plane = g.h * g.w;
    for ci in 0..g.c {
        let src = &x[ci * plane..(ci + 1) * plane];
        for y in 0..g.h {
            let row = (y + pt) * wp;
            for (xx, &v) in src[y * g.w..(y + 1) * g.w].iter().enumerate() {
                out[(row + xx + pl) * c4 + ci] = U::sat(v.get() as i64);
            }
        }
    }
    Ok(())
}

/// Stages a matrix of `m` rows and depth `k` read at `x[i * s[0] + q * s[1]]` into rows of
/// `pad4(k)` values (zeros beyond `k`).
#[inline(always)]
pub fn rows<T: Code, U: Code>(x: &[T], m: usize, k: usize, s: [usize; 2], out: &mut [U]) -> Result<()> {
    let k4 = pad4(k);
    check_len(m * k4, out.len())?;
    if m > 0 && k > 0 && (m - 1) * s[0] + (k - 1) * s[1] >= x.len() {
        return Err(Error::BufferLength {
            expected: (m - 1) * s[0] + (k - 1) * s[1] + 1,
            got: x.len(),
        });
    }
    for (i, row) in out.chunks_exact_mut(k4.max(1)).enumerate().take(m) {
        if s[1] == 1 {
            for (d, v) in row[..k].iter_mut().zip(&x[i * s[0]..i * s[0] + k]) {
                *d = U::sat(v.get() as i64);
            }
        } else {
            for (q, d) in row[..k].iter_mut().enumerate() {
                *d = U::sat(x[i * s[0] + q * s[1]].get() as i64);
            }
        }
        row[k..].fill(U::default());
    }
    Ok(())
}

/// Packs an activation matrix as weights (the second operand of an attention product): `n` rows of
/// depth `k` read at `x[q * s[0] + r * s[1]]` (depth stride first), into the packed layout of
/// [`super::gemm`] with zeros in the padding.
#[inline(always)]
pub fn pack_operand(x: &[i8], n: usize, k: usize, s: [usize; 2], out: &mut [i8]) -> Result<()> {
    let (n4, k4) = (pad4(n), pad4(k));
    check_len(n4 * k4, out.len())?;
    if n > 0 && k > 0 && (k - 1) * s[0] + (n - 1) * s[1] >= x.len() {
        return Err(Error::BufferLength {
            expected: (k - 1) * s[0] + (n - 1) * s[1] + 1,
            got: x.len(),
        });
    }
    out.fill(0);
    for r in 0..n {
        for q in 0..k {
            out[super::gemm::packed_index(r, q, k4)] = x[q * s[0] + r * s[1]];
        }
    }
    Ok(())
}
