//! Integer softmax.
use crate::kernels::{check_len, le_i32};
use crate::Result;

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
