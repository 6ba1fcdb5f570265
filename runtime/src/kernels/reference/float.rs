//! f32 kernels of the timestep path.
use super::pad2;
use crate::kernels::{check_len, le_f32};
use crate::{Error, Result};

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
    let a_ext = crate::kernels::extent(&[m, k], &pad2(a_s), 0);
    let o_ext = crate::kernels::extent(&[m, n], &pad2(o_s), 0);
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
