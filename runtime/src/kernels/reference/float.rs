//! f32 kernels of the timestep path.
use super::pad2;
use crate::kernels::{check_len, le_f32};
use crate::{Error, Result};

/// f32 strided product with int8 per-n weights (timestep path):
/// `out[m, n] = (sum_k a[m, k] * wq[n, k]) * scale[n] + bias[n]`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
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
    let a_ext = crate::kernels::extent(&[m, k], &pad2(a_s), 0);
    let o_ext = crate::kernels::extent(&[m, n], &pad2(o_s), 0);
    if a_ext > a.len() || o_ext > out.len() {
        return Err(Error::BufferLength {
            expected: a_ext.max(o_ext),
            got: a.len().min(out.len()),
        });
    }
    // every output sums its k products in order; 8 outputs at a time run as independent chains
    const G: usize = 8;
    let mut xs = [0f32; 256];
    for mi in 0..m {
        let row = |ki: usize| a[mi * a_s[0] + ki * a_s[1]];
        let mut n0 = 0;
        while n0 + G <= n {
            let rows: [&[i8]; G] = core::array::from_fn(|g| &w[(n0 + g) * k..(n0 + g + 1) * k]);
            let mut acc = [0.0f32; G];
            // the input row in chunks of 256 gathered contiguously
            for k0 in (0..k).step_by(xs.len()) {
                let kn = (k - k0).min(xs.len());
                for (q, v) in xs[..kn].iter_mut().enumerate() {
                    *v = row(k0 + q);
                }
                for (q, &x) in xs[..kn].iter().enumerate() {
                    for g in 0..G {
                        acc[g] += rows[g][k0 + q] as f32 * x;
                    }
                }
            }
            for (g, s) in acc.iter().enumerate() {
                out[mi * o_s[0] + (n0 + g) * o_s[1]] =
                    s * le_f32(scales, n0 + g) + le_f32(bias, n0 + g);
            }
            n0 += G;
        }
        for ni in n0..n {
            let mut acc = 0.0f32;
            for (ki, &wv) in w[ni * k..(ni + 1) * k].iter().enumerate() {
                acc += wv as f32 * row(ki);
            }
            out[mi * o_s[0] + ni * o_s[1]] = acc * le_f32(scales, ni) + le_f32(bias, ni);
        }
    }
    Ok(())
}
