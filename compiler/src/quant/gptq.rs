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
//! `H` comes from the model's own sampler trajectories: calibration keeps some of its float inputs
//! ([`crate::calib::KeptInput`]) and [`collect`] runs them again, gathering each product's input
//! rows (for a conv, the patches of a subsample of output pixels, in the weights' `[ci][ky][kx]`
//! order). `DMQ_DEBUG_GPTQ=1` names the products left to nearest rounding and why.
use crate::calib::KeptInput;
use crate::ir::{IrOp, Program, Weights};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tract_onnx::prelude::tract_ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2};

/// Input rows (conv patches, linear tokens) gathered per product and evaluation, at most.
const ROWS_PER_EVAL: usize = 512;
/// Products deeper than this keep nearest rounding (the factorisations cost `depth^3`).
pub const MAX_DEPTH: usize = 4608;
/// `H` is damped by this fraction of its mean diagonal (GPTQ's default).
const DAMP: f64 = 0.01;

/// `sum x x^T` over the gathered input rows of one weight array's products (`k x k`, row-major).
pub struct Hessian {
    pub k: usize,
    pub h: Vec<f64>,
    /// input rows summed
    pub rows: usize,
}

/// The Hessians of a program's products, by weight array ([`key`]).
#[derive(Default)]
pub struct Hessians {
    by_weights: HashMap<usize, Arc<Hessian>>,
    /// products with a Hessian; products left to nearest rounding (no observed input of their
    /// shape, or deeper than [`MAX_DEPTH`])
    pub layers: usize,
    pub skipped: usize,
    /// float evaluations run to gather them
    pub evaluations: usize,
}

impl Hessians {
    pub fn get(&self, w: &Weights) -> Option<&Arc<Hessian>> {
        self.by_weights.get(&key(w))
    }
    pub fn is_empty(&self) -> bool {
        self.by_weights.is_empty()
    }
}

/// A weight array's identity: the address of its shared allocation (IR weights are never changed
/// after lowering, and every copy of a program shares them).
pub fn key(w: &Weights) -> usize {
    Arc::as_ptr(w) as usize
}

/// How a product's input rows are read from its input tensor (`[1, c, h, w]` for a conv).
#[derive(Clone, Copy)]
enum Rows {
    Conv {
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        sh: usize,
        sw: usize,
        /// top, left, bottom, right
        pad: [usize; 4],
        oh: usize,
        ow: usize,
    },
    /// `m` rows of `k` values: value `j` of row `i` at `i * sm + j * sk`
    Linear {
        m: usize,
        k: usize,
        sm: usize,
        sk: usize,
    },
}

impl Rows {
    fn depth(&self) -> usize {
        match *self {
            Rows::Conv { c, kh, kw, .. } => c * kh * kw,
            Rows::Linear { k, .. } => k,
        }
    }
    fn count(&self) -> usize {
        match *self {
            Rows::Conv { oh, ow, .. } => oh * ow,
            Rows::Linear { m, .. } => m,
        }
    }
    /// The largest element index a row reads, plus one.
    fn extent(&self) -> usize {
        match *self {
            Rows::Conv { c, h, w, .. } => c * h * w,
            Rows::Linear { m, k, sm, sk } => {
                if m == 0 || k == 0 {
                    0
                } else {
                    (m - 1) * sm + (k - 1) * sk + 1
                }
            }
        }
    }
    /// Up to [`ROWS_PER_EVAL`] rows of `v`, evenly strided from an offset that `salt` varies,
    /// appended to `x` (row-major, [`Rows::depth`] values each). Returns the rows gathered.
    fn gather(&self, v: &[f32], salt: usize, x: &mut Vec<f32>) -> usize {
        let n = self.count();
        let stride = n.div_ceil(ROWS_PER_EVAL).max(1);
        let first = salt.wrapping_mul(0x9e37_79b9) % stride;
        let mut got = 0;
        for r in (first..n).step_by(stride) {
            match *self {
                Rows::Conv {
                    c,
                    h,
                    w,
                    kh,
                    kw,
                    sh,
                    sw,
                    pad,
                    ow,
                    ..
                } => {
                    let (oy, ox) = (r / ow, r % ow);
                    for ci in 0..c {
                        for ky in 0..kh {
                            let y = (oy * sh + ky) as isize - pad[0] as isize;
                            for kx in 0..kw {
                                let xx = (ox * sw + kx) as isize - pad[1] as isize;
                                let inside =
                                    y >= 0 && (y as usize) < h && xx >= 0 && (xx as usize) < w;
                                x.push(if inside {
                                    v[(ci * h + y as usize) * w + xx as usize]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
                Rows::Linear { k, sm, sk, .. } => {
                    x.extend((0..k).map(|j| v[r * sm + j * sk]));
                }
            }
            got += 1;
        }
        got
    }
}

/// A product whose Hessian is gathered: its weights' key, the tract node whose output is its
/// input, that output's element count, and how its rows are read.
struct Layer {
    key: usize,
    node: usize,
    numel: usize,
    rows: Rows,
}

/// The products of `p` with 8- or 4-bit weights, as [`Layer`]s, and the count of those left out.
fn layers(p: &Program) -> (Vec<Layer>, usize) {
    let (mut out, mut skipped) = (vec![], 0);
    for op in &p.ops {
        let (input, w, rows) = match op {
            IrOp::Conv {
                input,
                output,
                w,
                kernel,
                stride,
                pad,
                ..
            } => {
                let (i, o) = (&p.t(*input).shape, &p.t(*output).shape);
                if i.len() != 4 || o.len() != 4 || i[0] != 1 {
                    skipped += 1;
                    continue;
                }
                let rows = Rows::Conv {
                    c: i[1],
                    h: i[2],
                    w: i[3],
                    kh: kernel[0],
                    kw: kernel[1],
                    sh: stride[0],
                    sw: stride[1],
                    pad: *pad,
                    oh: o[2],
                    ow: o[3],
                };
                (*input, w, rows)
            }
            IrOp::Linear {
                input,
                geom,
                w,
                float: false,
                ..
            } => {
                let rows = Rows::Linear {
                    m: geom.m as usize,
                    k: geom.k as usize,
                    sm: geom.a_strides[0] as usize,
                    sk: geom.a_strides[1] as usize,
                };
                (*input, w, rows)
            }
            _ => continue,
        };
        let t = p.t(input);
        let fits = rows.extent() <= t.numel() && w.len() % rows.depth().max(1) == 0;
        match t.stat.or(t.value) {
            Some(node) if fits && rows.depth() <= MAX_DEPTH && rows.depth() > 0 => {
                out.push(Layer {
                    key: key(w),
                    node,
                    numel: t.numel(),
                    rows,
                })
            }
            _ => {
                if std::env::var_os("DMQ_DEBUG_GPTQ").is_some() {
                    eprintln!(
                        "gptq: nearest for {} (input {} {:?}, stat {:?}, alias {:?}, fits {fits})",
                        op.kind(),
                        t.name,
                        t.shape,
                        t.stat,
                        t.alias
                    );
                }
                skipped += 1
            }
        }
    }
    (out, skipped)
}

/// The Hessians of `p`'s products over calibration's kept inputs (each run through the float
/// model again, with guidance both passes). Deterministic for any number of cores: each layer
/// sums its inputs in their order.
pub fn collect(
    float: &crate::import::FloatModel,
    opts: &crate::CompileOptions,
    p: &Program,
    kept: &[KeptInput],
) -> Result<Hessians> {
    let (layers, skipped) = layers(p);
    let nodes: HashSet<usize> = layers.iter().map(|l| l.node).collect();
    let mut acc: Vec<(Vec<f64>, usize)> = layers
        .iter()
        .map(|l| (vec![0f64; l.rows.depth() * l.rows.depth()], 0))
        .collect();
    let mut evaluations = 0;
    for (e, input) in kept.iter().enumerate() {
        // the gathered rows of each layer in this evaluation (with guidance, both passes)
        let mut x: Vec<(Vec<f32>, usize)> = vec![(vec![], 0); layers.len()];
        float.set_extras(input.cond.clone())?;
        crate::float_output(
            float,
            opts,
            Some((&input.cond, &input.uncond)),
            &input.x,
            input.t,
            |node, outs| {
                if !nodes.contains(&node) {
                    return;
                }
                crate::calib::with_values(outs, |v| {
                    for (l, (xs, n)) in layers.iter().zip(x.iter_mut()) {
                        if l.node == node && v.len() == l.numel {
                            *n += l.rows.gather(v, e, xs);
                        }
                    }
                });
            },
        )?;
        evaluations += 1;
        add_products(&layers, &x, &mut acc);
    }
    let mut hessians = Hessians {
        evaluations,
        skipped,
        ..Default::default()
    };
    let mut summed: HashMap<usize, Hessian> = HashMap::new();
    for (l, (h, rows)) in layers.iter().zip(acc) {
        if rows == 0 {
            hessians.skipped += 1;
            continue;
        }
        hessians.layers += 1;
        let k = l.rows.depth();
        let e = summed.entry(l.key).or_insert(Hessian {
            k,
            h: vec![0f64; k * k],
            rows: 0,
        });
        if e.k != k {
            continue;
        }
        for (a, b) in e.h.iter_mut().zip(&h) {
            *a += b;
        }
        e.rows += rows;
    }
    hessians.by_weights = summed.into_iter().map(|(k, h)| (k, Arc::new(h))).collect();
    Ok(hessians)
}

/// `acc[l] += x_l^T x_l` for every layer's gathered rows, the layers split over the cores.
fn add_products(layers: &[Layer], x: &[(Vec<f32>, usize)], acc: &mut [(Vec<f64>, usize)]) {
    let threads = crate::import::cores().max(1);
    let per = layers.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for ((ls, xs), accs) in layers
            .chunks(per)
            .zip(x.chunks(per))
            .zip(acc.chunks_mut(per))
        {
            scope.spawn(move || {
                for ((l, (xv, n)), (h, rows)) in ls.iter().zip(xs).zip(accs) {
                    if *n == 0 {
                        continue;
                    }
                    let k = l.rows.depth();
                    let mut g = vec![0f32; k * k];
                    let a = ArrayView2::from_shape((*n, k), &xv[..]).expect("gathered rows");
                    let mut c = ArrayViewMut2::from_shape((k, k), &mut g[..]).expect("k x k");
                    general_mat_mul(1.0, &a.t(), &a, 0.0, &mut c);
                    for (d, s) in h.iter_mut().zip(&g) {
                        *d += *s as f64;
                    }
                    *rows += n;
                }
            });
        }
    });
}

/// GPTQ codes of one row `w` (`k` values) at scale `s` in `[-qmax, qmax]`, given the upper Cholesky
/// factor `u` of the damped, permuted `H^-1` and the permutation `perm` (position `i` of the order
/// is depth value `perm[i]`).
fn gptq_row(w: &[f32], s: f32, qmax: f32, u: &[f64], perm: &[usize], out: &mut [i8]) {
    let k = w.len();
    let mut v: Vec<f64> = perm.iter().map(|&j| w[j] as f64).collect();
    for i in 0..k {
        let q = super::weights::code(v[i] as f32, s, qmax);
        out[perm[i]] = q as i8;
        let err = (v[i] - q as f64 * s as f64) / u[i * k + i];
        let row = &u[i * k..(i + 1) * k];
        for j in i + 1..k {
            v[j] -= err * row[j];
        }
    }
}

/// `e^T H e` with `e = w - codes * s` (the output error of a row on the calibration inputs).
fn output_error(w: &[f32], codes: &[i8], s: f32, h: &[f64]) -> f64 {
    let k = w.len();
    let e: Vec<f64> = w
        .iter()
        .zip(codes)
        .map(|(&v, &q)| v as f64 - q as f64 * s as f64)
        .collect();
    let mut total = 0.0;
    for i in 0..k {
        if e[i] == 0.0 {
            continue;
        }
        let row = &h[i * k..(i + 1) * k];
        total += e[i] * row.iter().zip(&e).map(|(a, b)| a * b).sum::<f64>();
    }
    total
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
/// zeroed). `None` when a pivot is not positive.
fn cholesky(a: &mut [f64], k: usize) -> Option<()> {
    for j in 0..k {
        let (done, rest) = a.split_at_mut(j * k);
        let row_j = &mut rest[..k];
        // row j left of the diagonal, from the rows above
        for p in 0..j {
            let row_p = &done[p * k..p * k + p + 1];
            row_j[p] = (row_j[p] - dot(&row_j[..p], &row_p[..p])) / row_p[p];
        }
        let d = row_j[j] - dot(&row_j[..j], &row_j[..j]);
        if d.is_nan() || d <= 0.0 {
            return None;
        }
        row_j[j] = d.sqrt();
        row_j[j + 1..].fill(0.0);
    }
    Some(())
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
    // column j of L^-1 by forward substitution (rows i >= j), kept as row j of `xt`
    let mut xt = vec![0f64; k * k];
    for j in 0..k {
        let x = &mut xt[j * k..(j + 1) * k];
        for i in j..k {
            let row = &a[i * k..(i + 1) * k];
            let delta = if i == j { 1.0 } else { 0.0 };
            x[i] = (delta - dot(&row[j..i], &x[j..i])) / row[i];
        }
    }
    // U[r][c] = (L^-1)[k-1-r][k-1-c] = xt[k-1-c][k-1-r]
    let mut u = vec![0f64; k * k];
    for r in 0..k {
        for c in r..k {
            u[r * k + c] = xt[(k - 1 - c) * k + (k - 1 - r)];
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
    let threads = crate::import::cores().min(rows).max(1);
    let per = rows.div_ceil(threads);
    let changed = std::thread::scope(|scope| {
        let jobs: Vec<_> = codes
            .chunks_mut(per * k)
            .enumerate()
            .map(|(c, out)| {
                let (u, perm) = (&u, &perm);
                scope.spawn(move || {
                    let mut changed = 0;
                    let mut mine = vec![0i8; k];
                    for (i, nearest) in out.chunks_mut(k).enumerate() {
                        let r = c * per + i;
                        let (row, s) = (&w[r * k..(r + 1) * k], scales[r]);
                        gptq_row(row, s, qmax, u, perm, &mut mine);
                        if output_error(row, &mine, s, &hess.h)
                            < output_error(row, nearest, s, &hess.h)
                        {
                            nearest.copy_from_slice(&mine);
                            changed += 1;
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
        (w, Hessian { k, h, rows: n })
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
            let err = |c: &[i8]| -> f64 {
                (0..rows)
                    .map(|r| {
                        output_error(
                            &w[r * k..(r + 1) * k],
                            &c[r * k..(r + 1) * k],
                            scales[r],
                            &hess.h,
                        )
                    })
                    .sum()
            };
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

    #[test]
    fn inverse_factor_is_the_cholesky_factor_of_the_inverse() {
        let k = 9;
        let (_, hess) = problem(k, 50, 3);
        let perm: Vec<usize> = (0..k).rev().collect();
        let u = inverse_factor(&hess, &perm).unwrap();
        // U^T U H' = I for the damped, permuted H'
        let mean = (0..k).map(|i| hess.h[i * k + i]).sum::<f64>() / k as f64;
        let hp = |i: usize, j: usize| {
            hess.h[perm[i] * k + perm[j]] + if i == j { DAMP * mean } else { 0.0 }
        };
        for i in 0..k {
            for j in 0..k {
                let mut s = 0.0;
                for m in 0..k {
                    let inv_im: f64 = (0..k).map(|p| u[p * k + i] * u[p * k + m]).sum();
                    s += inv_im * hp(m, j);
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-8, "({i}, {j}) = {s}");
            }
        }
        // upper triangular
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0);
            }
        }
    }

    #[test]
    fn conv_rows_are_patches_in_weight_order() {
        // 2 channels of 3x3, a 2x2 kernel, stride 1, padding 1 on the left and top
        let r = Rows::Conv {
            c: 2,
            h: 3,
            w: 3,
            kh: 2,
            kw: 2,
            sh: 1,
            sw: 1,
            pad: [1, 1, 0, 0],
            oh: 3,
            ow: 3,
        };
        let v: Vec<f32> = (0..18).map(|i| i as f32 + 1.0).collect();
        let mut x = vec![];
        assert_eq!(r.gather(&v, 0, &mut x), 9);
        // output pixel (0, 0): taps (-1,-1) (-1,0) (0,-1) (0,0) per channel
        assert_eq!(&x[..8], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 10.0]);
        // output pixel (2, 2): input (1,1) (1,2) (2,1) (2,2)
        assert_eq!(&x[64..72], &[5.0, 6.0, 8.0, 9.0, 14.0, 15.0, 17.0, 18.0]);
    }
}
