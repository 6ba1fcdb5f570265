//! Weights: symmetric per-row codes (8 or 4 bits) with an error-minimising clipping search, their
//! packing into the blob, and the int32 bias and requantization that fold the input zero point.
use super::{requant_of, Blob};
use dmq_runtime::format::{BlobRef, Requant};

/// Symmetric per-row weights in `[-qmax, qmax]` (127 for 8 bits, 7 for 4 bits). The scale of each row
/// is chosen by a grid search over clipping ratios minimising the squared rounding + clipping error
/// (plain min-max is the ratio 1.0, always a candidate).
pub fn quantize_rows_bits(w: &[f32], rows: usize, bits: u8) -> (Vec<i8>, Vec<f32>) {
    let qmax = if bits == 4 { 7.0f32 } else { 127.0 };
    let k = if rows == 0 { 0 } else { w.len() / rows };
    let mut q = vec![0i8; w.len()];
    let mut scales = vec![0f32; rows];
    for r in 0..rows {
        let row = &w[r * k..(r + 1) * k];
        let mx = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
        if mx == 0.0 {
            scales[r] = 1.0;
            continue;
        }
        let err = |s: f32| -> f64 {
            row.iter()
                .map(|&v| ((v - (v / s).round().clamp(-qmax, qmax) * s) as f64).powi(2))
                .sum()
        };
        let mut best = (err(mx / qmax), mx / qmax);
        for i in 1..=25 {
            let s = mx * (1.0 - 0.02 * i as f32) / qmax;
            let e = err(s);
            if e < best.0 {
                best = (e, s);
            }
        }
        let s = best.1;
        scales[r] = s;
        for (d, &v) in q[r * k..(r + 1) * k].iter_mut().zip(row) {
            *d = (v / s).round().clamp(-qmax, qmax) as i8;
        }
    }
    (q, scales)
}

pub fn push_weights(blob: &mut Blob, codes: &[i8], rows: usize, bits: u8) -> BlobRef {
    if bits == 4 {
        let k = if rows == 0 { 0 } else { codes.len() / rows };
        blob.push(&pack4(codes, rows, k))
    } else {
        blob.push_i8(codes)
    }
}

/// Packs `[rows][k]` codes in [-8, 7] two per byte, low nibble first, each row padded to a byte.
pub fn pack4(codes: &[i8], rows: usize, k: usize) -> Vec<u8> {
    let kb = k.div_ceil(2);
    let mut out = vec![0u8; rows * kb];
    for r in 0..rows {
        for j in 0..k {
            let nib = (codes[r * k + j] as u8) & 0x0f;
            out[r * kb + j / 2] |= if j % 2 == 0 { nib } else { nib << 4 };
        }
    }
    out
}

/// The int32 bias (input zero point folded in: `bias/acc_scale - zx * sum_k w`) and the
/// requantization to the output scale of a product with per-row weight scales `ws` over codes `wq`
/// (`[rows][k]`), input `(sx, zx)` and output scale `so`. Also returns `1/acc_scale` per row, the
/// factor that turns an f32 bias added at run time into accumulator units.
pub fn fold_rows(
    wq: &[i8],
    ws: &[f32],
    bias: &[f32],
    (sx, zx): (f32, i32),
    so: f32,
) -> (Vec<i32>, Vec<Requant>, Vec<f32>) {
    let rows = ws.len();
    let k = if rows == 0 { 0 } else { wq.len() / rows };
    let mut bq = Vec::with_capacity(rows);
    let mut rq = Vec::with_capacity(rows);
    let mut inv = Vec::with_capacity(rows);
    for r in 0..rows {
        let acc_scale = sx as f64 * ws[r] as f64;
        let wsum: i64 = wq[r * k..(r + 1) * k].iter().map(|&v| v as i64).sum();
        let b = (bias[r] as f64 / acc_scale).round() as i64 - zx as i64 * wsum;
        bq.push(b.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        rq.push(requant_of(acc_scale / so as f64));
        inv.push((1.0 / acc_scale) as f32);
    }
    (bq, rq, inv)
}
