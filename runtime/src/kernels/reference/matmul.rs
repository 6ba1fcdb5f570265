//! Activation × activation products (attention), per-tensor requantization.
use crate::kernels::{requant, MAX_RANK};
use crate::{Error, Result};

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
    crate::kernels::extent(&d, &st, 0)
}

/// Activation x activation product: `out = requant(sum_k (a - za)(b - zb))`, per-tensor requantization.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
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
    if !matmul_fits(d, a.len(), b.len(), out.len()) {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    let shift = shift.clamp(1, 62);
    for i0 in 0..b0 {
        for i1 in 0..b1 {
            let base = [
                i0 * d.a_s[0] + i1 * d.a_s[1],
                i0 * d.b_s[0] + i1 * d.b_s[1],
                i0 * d.o_s[0] + i1 * d.o_s[1],
            ];
            matmul_batch(a, za, b, zb, d, base, mult, shift, zo, out);
        }
    }
    Ok(())
}

/// One batch of [`matmul`], its operands at element offsets `[ab, bb, ob]`. The caller has checked
/// the extents (as [`matmul`] does) and `1 <= shift <= 62`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_batch(
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
) {
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

/// Whether the operands of `d` lie inside slices of the given lengths.
pub fn matmul_fits(d: &MatMulDims, a: usize, b: usize, out: usize) -> bool {
    let [b0, b1] = d.batch;
    ext4([b0, b1, d.m, d.k], d.a_s) <= a
        && ext4([b0, b1, d.k, d.n], d.b_s) <= b
        && ext4([b0, b1, d.m, d.n], d.o_s) <= out
}
