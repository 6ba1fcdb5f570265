//! Error-compensating weight rounding (GPTQ: Frantar et al., "GPTQ: Accurate Post-Training
//! Quantization for Generative Pre-trained Transformers", 2023, after Optimal Brain Quantization).
//!
//! Rounding each weight to its nearest code minimises the error of the weights; what matters is the
//! error of the layer's output on the inputs it sees. With `H = sum x x^T` over calibration inputs
//! `x` (the rows a conv or linear multiplies its weights with), the output error of a weight row
//! `w` quantized to `q` is `(w - q)^T H (w - q)`. GPTQ rounds the depth values one at a time and
//! moves each one's rounding error onto the values not yet rounded, in proportion to how the inputs
//! correlate (through the Cholesky factor of `H^-1`), so that the later roundings compensate it.
//!
//! Here the scales stay those of the clipping search (per row, see `weights::row_weights`), the
//! depth values go in order of decreasing `H_ii` (GPTQ's "act order"), `H` is damped by 1% of its
//! mean diagonal, and a row keeps its nearest-rounded codes when those measure no worse on `H`: on
//! the calibration inputs no row is worse than plain rounding.
//!
//! `H` comes from the model's own sampler trajectories (see `super::hessian`).
use super::hessian::Hessian;
use tract_onnx::prelude::tract_ndarray::{
    linalg::general_mat_mul, s, Array2, ArrayView2, ArrayViewMut2, Axis,
};

/// `H` is damped by this fraction of its mean diagonal (GPTQ's default).
const DAMP: f64 = 0.01;
/// Rows per unit of work of [`round_rows`] (fixed, so that the codes do not depend on the cores).
const ROW_CHUNK: usize = 16;
/// Depth values rounded between two updates of the rest of a row (GPTQ's lazy batch).
const BLOCK: usize = 128;
/// Block size of the factorisations.
const NB: usize = 64;

/// GPTQ codes of a chunk of rows of `w` (`k` values each, `scales.len()` rows) in `[-qmax, qmax]`,
/// given the upper Cholesky factor `u` of the damped, permuted `H^-1` and the permutation `perm`
/// (position `i` of the order is depth value `perm[i]`). GPTQ's lazy batches: the depth values of
/// a block of [`BLOCK`] are rounded one at a time with their errors moved onto the rest of the
/// block, then onto all later values at once (one matrix product), so that `u` is read once per
/// chunk instead of once per row.
fn gptq_chunk(w: &[f32], scales: &[f32], qmax: f32, u: &[f64], perm: &[usize], out: &mut [i8]) {
    let (k, n) = (perm.len(), scales.len());
    let mut v = Array2::<f64>::from_shape_fn((n, k), |(r, i)| w[r * k + perm[i]] as f64);
    let mut err = Array2::<f64>::zeros((n, BLOCK));
    let uv = ArrayView2::from_shape((k, k), u).expect("k x k");
    for b0 in (0..k).step_by(BLOCK) {
        let b1 = (b0 + BLOCK).min(k);
        let vs = v.as_slice_mut().expect("contiguous");
        for i in b0..b1 {
            let (uii, urow) = (u[i * k + i], &u[i * k + i + 1..i * k + b1]);
            for (r, &s) in scales.iter().enumerate() {
                let row = &mut vs[r * k..(r + 1) * k];
                let q = super::weights::code(row[i] as f32, s, qmax);
                out[r * k + perm[i]] = q as i8;
                let e = (row[i] - q as f64 * s as f64) / uii;
                err[[r, i - b0]] = e;
                for (a, b) in row[i + 1..b1].iter_mut().zip(urow) {
                    *a -= e * b;
                }
            }
        }
        if b1 < k {
            let e = err.slice(s![.., ..b1 - b0]);
            let mut rest = v.slice_mut(s![.., b1..]);
            general_mat_mul(-1.0, &e, &uv.slice(s![b0..b1, b1..]), 1.0, &mut rest);
        }
    }
}

/// `e^T H e` per row with `e = w - codes * s` (the output error of each row on the calibration
/// inputs), as one matrix product.
fn output_errors(w: &[f32], codes: &[i8], scales: &[f32], h: &ArrayView2<f64>) -> Vec<f64> {
    let k = h.nrows();
    let e = Array2::<f64>::from_shape_fn((scales.len(), k), |(r, i)| {
        w[r * k + i] as f64 - codes[r * k + i] as f64 * scales[r] as f64
    });
    let he = e.dot(h);
    e.rows()
        .into_iter()
        .zip(he.rows())
        .map(|(a, b)| a.dot(&b))
        .collect()
}

/// `sum a_i b_i` in four partial sums (so that it vectorises).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// In-place lower Cholesky factor of the `k x k` symmetric positive definite `a` (upper triangle
/// zeroed). `None` when a pivot is not positive. Left-looking in blocks of [`NB`] columns: the
/// update of a block column by all earlier ones is one matrix product (the `k^3 / 6` bulk), the
/// rest is within the block.
fn cholesky(a: &mut [f64], k: usize) -> Option<()> {
    for j0 in (0..k).step_by(NB) {
        let j1 = (j0 + NB).min(k);
        if j0 > 0 {
            // A[j0.., j0..j1] -= L[j0.., ..j0] L[j0..j1, ..j0]^T
            let mut m = ArrayViewMut2::from_shape((k, k), &mut a[..]).expect("k x k");
            let (left, mut right) = m.slice_mut(s![j0.., ..]).split_at(Axis(1), j0);
            let top = left.slice(s![..j1 - j0, ..]);
            let mut block = right.slice_mut(s![.., ..j1 - j0]);
            general_mat_mul(-1.0, &left, &top.t(), 1.0, &mut block);
        }
        for j in j0..j1 {
            let rest = &mut a[j * k..];
            let row_j = &rest[..k];
            let d = row_j[j] - dot(&row_j[j0..j], &row_j[j0..j]);
            if d.is_nan() || d <= 0.0 {
                return None;
            }
            let d = d.sqrt();
            rest[j] = d;
            let (row_j, below) = rest.split_at_mut(k);
            for i in j + 1..k {
                let row_i = &mut below[(i - j - 1) * k..(i - j) * k];
                row_i[j] = (row_i[j] - dot(&row_i[j0..j], &row_j[j0..j])) / d;
            }
            row_j[j + 1..].fill(0.0);
        }
    }
    Some(())
}

/// `L^-1` of the lower triangular `l` (`k x k`, row-major), by forward substitution in blocks of
/// [`NB`] rows: rows `i0..i1` take `I - L[i0..i1, ..i0] X[..i0, ..]` as one matrix product, then the
/// block's own rows.
fn lower_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let mut x = vec![0f64; k * k];
    for i0 in (0..k).step_by(NB) {
        let i1 = (i0 + NB).min(k);
        for i in i0..i1 {
            x[i * k + i] = 1.0;
        }
        if i0 > 0 {
            let lv = ArrayView2::from_shape((k, k), l).expect("k x k");
            let mut xv = ArrayViewMut2::from_shape((k, k), &mut x[..]).expect("k x k");
            let (above, mut block) = xv.view_mut().split_at(Axis(0), i0);
            let lhs = lv.slice(s![i0..i1, ..i0]);
            let mut out = block.slice_mut(s![..i1 - i0, ..i1]);
            general_mat_mul(-1.0, &lhs, &above.slice(s![.., ..i1]), 1.0, &mut out);
        }
        for i in i0..i1 {
            let (prev, rest) = x.split_at_mut(i * k);
            let row = &mut rest[..i1];
            for p in i0..i {
                let f = l[i * k + p];
                if f != 0.0 {
                    for (a, b) in row.iter_mut().zip(&prev[p * k..p * k + i1]) {
                        *a -= f * b;
                    }
                }
            }
            let d = l[i * k + i];
            for a in row.iter_mut() {
                *a /= d;
            }
        }
    }
    x
}

/// The upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`) for the damped `H` in the order
/// `perm`, or `None` if `H` is not positive definite even damped. With `J` the reversal,
/// `J H J = L L^T` gives `H = R R^T` for the upper `R = J L J`, so `H^-1 = R^-T R^-1` and
/// `U = R^-1 = J L^-1 J`: one factorisation and one triangular inverse.
fn inverse_factor(hess: &Hessian, perm: &[usize]) -> Option<Vec<f64>> {
    let k = hess.k;
    let mean = (0..k).map(|i| hess.h[i * k + i]).sum::<f64>() / k as f64;
    let damp = DAMP * mean.max(f64::MIN_POSITIVE);
    // J H J in the order `perm`: position i is perm[k - 1 - i]
    let mut a = vec![0f64; k * k];
    for i in 0..k {
        let pi = perm[k - 1 - i];
        for j in 0..k {
            a[i * k + j] = hess.h[pi * k + perm[k - 1 - j]];
        }
        // an input that was always zero: any value of its weight gives the same output
        if a[i * k + i] <= 0.0 {
            a[i * k + i] = 1.0;
        }
        a[i * k + i] += damp;
    }
    cholesky(&mut a, k)?;
    let x = lower_inverse(&a, k);
    // U[r][c] = (L^-1)[k-1-r][k-1-c]
    let mut u = vec![0f64; k * k];
    for r in 0..k {
        for c in r..k {
            u[r * k + c] = x[(k - 1 - r) * k + (k - 1 - c)];
        }
    }
    Some(u)
}

/// GPTQ codes for `rows` rows of `w` at the given `scales` (8 or 4 bits), in place of the nearest
/// ones in `codes` wherever they measure lower on `H`. Returns the number of rows changed, or `None`
/// when `H` does not match the rows' depth or cannot be factorised (the nearest codes stay).
pub fn round_rows(
    w: &[f32],
    rows: usize,
    bits: u8,
    scales: &[f32],
    hess: &Hessian,
    codes: &mut [i8],
) -> Option<usize> {
    let k = hess.k;
    if rows == 0 || w.len() != rows * k || codes.len() != w.len() {
        return None;
    }
    let qmax = if bits == 4 { 7.0f32 } else { 127.0 };
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by(|&a, &b| hess.h[b * k + b].total_cmp(&hess.h[a * k + a]));
    let u = inverse_factor(hess, &perm)?;
    let h = ArrayView2::from_shape((k, k), &hess.h[..]).expect("k x k");
    // fixed chunks of rows, dealt to the cores in turn: the codes do not depend on their number
    let threads = crate::import::cores().min(rows.div_ceil(ROW_CHUNK)).max(1);
    let mut parts: Vec<Vec<(usize, &mut [i8])>> = (0..threads).map(|_| vec![]).collect();
    for (c, out) in codes.chunks_mut(ROW_CHUNK * k).enumerate() {
        parts[c % threads].push((c, out));
    }
    let changed = std::thread::scope(|scope| {
        let jobs: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let (u, perm, h) = (&u, &perm, &h);
                scope.spawn(move || {
                    let mut changed = 0;
                    for (c, nearest) in part {
                        let r0 = c * ROW_CHUNK;
                        let n = nearest.len() / k;
                        let (w, sc) = (&w[r0 * k..(r0 + n) * k], &scales[r0..r0 + n]);
                        let mut mine = vec![0i8; n * k];
                        gptq_chunk(w, sc, qmax, u, perm, &mut mine);
                        let before = output_errors(w, nearest, sc, h);
                        let after = output_errors(w, &mine, sc, h);
                        for r in 0..n {
                            if after[r] < before[r] {
                                nearest[r * k..(r + 1) * k]
                                    .copy_from_slice(&mine[r * k..(r + 1) * k]);
                                changed += 1;
                            }
                        }
                    }
                    changed
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().unwrap_or(0)).sum()
    });
    Some(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random problem: inputs with correlated columns (what makes compensation pay).
    fn problem(k: usize, n: usize, seed: u64) -> (Vec<f32>, Hessian) {
        let mut s = seed;
        let mut rnd = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20001) as f32 / 10000.0 - 1.0
        };
        let base: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..n * k)
            .map(|i| base[i / k] * 0.8 + rnd() * 0.5)
            .collect();
        let mut h = vec![0f64; k * k];
        for r in 0..n {
            for i in 0..k {
                for j in 0..k {
                    h[i * k + j] += (x[r * k + i] * x[r * k + j]) as f64;
                }
            }
        }
        let w: Vec<f32> = (0..4 * k).map(|_| rnd() * 0.3).collect();
        (w, Hessian { k, h })
    }

    #[test]
    fn gptq_rows_measure_no_worse_than_nearest_and_better_at_4_bits() {
        let k = 24;
        let (w, hess) = problem(k, 200, 7);
        let rows = 4;
        for bits in [4u8, 8] {
            let qmax = if bits == 4 { 7.0 } else { 127.0 };
            let scales: Vec<f32> = (0..rows)
                .map(|r| {
                    w[r * k..(r + 1) * k]
                        .iter()
                        .fold(0f32, |a, v| a.max(v.abs()))
                        / qmax
                })
                .collect();
            let nearest: Vec<i8> = (0..rows * k)
                .map(|i| super::super::weights::code(w[i], scales[i / k], qmax) as i8)
                .collect();
            let mut codes = nearest.clone();
            let changed = round_rows(&w, rows, bits, &scales, &hess, &mut codes).unwrap();
            let h = ArrayView2::from_shape((k, k), &hess.h[..]).unwrap();
            let err = |c: &[i8]| -> f64 { output_errors(&w, c, &scales, &h).iter().sum() };
            assert!(codes.iter().all(|&c| (c as f32).abs() <= qmax));
            assert!(err(&codes) <= err(&nearest), "{bits} bits");
            if bits == 4 {
                // correlated inputs: compensation lowers the output error clearly
                assert!(changed > 0);
                assert!(
                    err(&codes) < 0.8 * err(&nearest),
                    "{} vs {}",
                    err(&codes),
                    err(&nearest)
                );
            }
        }
    }

    /// GPTQ for one row, unblocked: each rounding error moved onto all later values at once.
    fn reference_row(w: &[f32], s: f32, qmax: f32, u: &[f64], perm: &[usize]) -> Vec<i8> {
        let k = w.len();
        let mut v: Vec<f64> = perm.iter().map(|&j| w[j] as f64).collect();
        let mut out = vec![0i8; k];
        for i in 0..k {
            let q = super::super::weights::code(v[i] as f32, s, qmax);
            out[perm[i]] = q as i8;
            let e = (v[i] - q as f64 * s as f64) / u[i * k + i];
            for j in i + 1..k {
                v[j] -= e * u[i * k + j];
            }
        }
        out
    }

    #[test]
    fn lazy_batches_round_like_the_unblocked_algorithm() {
        // depth 300: two full blocks and a partial one
        let k = 300;
        let (w, hess) = problem(k, 400, 11);
        let rows = 4;
        let mut perm: Vec<usize> = (0..k).collect();
        perm.sort_by(|&a, &b| hess.h[b * k + b].total_cmp(&hess.h[a * k + a]));
        let u = inverse_factor(&hess, &perm).unwrap();
        let scales = vec![0.3f32 / 7.0; rows];
        let mut blocked = vec![0i8; rows * k];
        gptq_chunk(&w, &scales, 7.0, &u, &perm, &mut blocked);
        let mut same = 0;
        for r in 0..rows {
            let want = reference_row(&w[r * k..(r + 1) * k], scales[r], 7.0, &u, &perm);
            same += want
                .iter()
                .zip(&blocked[r * k..(r + 1) * k])
                .filter(|(a, b)| a == b)
                .count();
        }
        // the same arithmetic in another order: a code may differ only where a value sits within
        // rounding noise of a half step
        assert!(same * 1000 >= 999 * rows * k, "{same} of {}", rows * k);
    }

    #[test]
    fn inverse_factor_is_the_cholesky_factor_of_the_inverse() {
        // within one block of the factorisations, and across three
        for (k, n) in [(9, 50), (150, 600)] {
            let (_, hess) = problem(k, n, 3);
            let perm: Vec<usize> = (0..k).rev().collect();
            let u = inverse_factor(&hess, &perm).unwrap();
            // U^T U H' = I for the damped, permuted H'
            let mean = (0..k).map(|i| hess.h[i * k + i]).sum::<f64>() / k as f64;
            let hp = |i: usize, j: usize| {
                hess.h[perm[i] * k + perm[j]] + if i == j { DAMP * mean } else { 0.0 }
            };
            let inv: Vec<f64> = (0..k * k)
                .map(|ij| {
                    let (i, m) = (ij / k, ij % k);
                    (0..=i.min(m)).map(|p| u[p * k + i] * u[p * k + m]).sum()
                })
                .collect();
            for i in 0..k {
                for j in 0..k {
                    let s: f64 = (0..k).map(|m| inv[i * k + m] * hp(m, j)).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((s - want).abs() < 1e-8, "k = {k}: ({i}, {j}) = {s}");
                }
            }
            // upper triangular
            for i in 0..k {
                for j in 0..i {
                    assert_eq!(u[i * k + j], 0.0);
                }
            }
        }
    }
}
