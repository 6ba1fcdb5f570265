//! Products with constant weights over strided operands (linear layers, strided 1×1 convs).
use super::{pad2, requant_to, Accum, Code, Weights, W_CHUNK};
use crate::kernels::{check_len, le_i32, requant_entry};
use crate::{Error, Result};

/// `acc + sum_j w[j] * a[base + j*stride]` with the accumulator semantics of `A`.
#[inline(always)]
fn dot_acc<T: Code, A: Accum>(acc: A, w: &[i8], a: &[T], base: usize, stride: usize) -> i64 {
    let mut s = acc;
    for (j, &wv) in w.iter().enumerate() {
        s = s.mac(wv, a[base + j * stride].get());
    }
    s.value()
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
    let a_ext = crate::kernels::extent(&[m, k], &pad2(a_s), 0);
    let o_ext = crate::kernels::extent(&[m, n], &pad2(o_s), 0);
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
