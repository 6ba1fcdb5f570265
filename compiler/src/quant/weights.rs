//! Weights: symmetric per-row codes (8 or 4 bits) with an error-minimising clipping search, their
//! packing into the blob, and the int32 bias and requantization that fold the input zero point.
use super::hessian::Hessian;
use super::requant_of;
use crate::ir::Weights;
use dmq_runtime::format::Requant;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// How a weight array is laid out in the blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Layout {
    /// for the product engine (see [`pack`]), `taps` kernel taps per input channel; 4-bit codes
    /// two per byte
    Packed { taps: usize },
    /// row-major int8 codes (the float-path `FLinear`)
    Plain,
}

/// A weight array quantized and laid out for the blob: per-row scales, per-row sums of the codes
/// (the input zero point's fold), the blob bytes and their [`content_hash`].
pub struct RowWeights {
    pub scales: Vec<f32>,
    pub sums: Vec<i64>,
    pub bytes: Arc<[u8]>,
    pub hash: u64,
}

/// Symmetric per-row weights in `[-qmax, qmax]` (127 for 8 bits, 7 for 4 bits), laid out as
/// `layout` says. The scale of each row is chosen by a grid search over clipping ratios minimising
/// the squared rounding + clipping error (plain min-max is the ratio 1.0, always a candidate). With
/// the products' input Hessian `hess` the codes at those scales are GPTQ-rounded
/// ([`super::gptq::round_rows`]) where that measures lower on it, else rounded to nearest.
///
/// The search and the packing are the costly part of building a file, and the sensitivity ranking
/// and the quality floor build one per candidate (89% of a 10 M-parameter UNet's ranking time was
/// the search; on an SD-sized UNet, hashing, copying and packing 860 M weights again took most of
/// every rebuild). So results are kept per weight array (the `Arc` the program copies share: IR
/// weights are never changed after lowering), rows, layout and bits, and a later build takes them
/// as they are. An entry holds a `Weak` of its array: the address cannot be reused while the
/// entry lives, and an entry whose program is gone is dropped.
pub fn row_weights(
    w: &Weights,
    rows: usize,
    layout: Layout,
    bits: u8,
    hess: Option<&Arc<Hessian>>,
) -> Arc<RowWeights> {
    type Key = (usize, usize, Layout, u8, usize);
    type Memo = HashMap<Key, (Weak<Vec<f32>>, Weak<Hessian>, Arc<RowWeights>)>;
    static MEMO: OnceLock<Mutex<Memo>> = OnceLock::new();
    /// blob bytes kept at most: 1 GiB, more than an SD-1.5-sized UNet's 8-bit weights (a memo
    /// smaller than the model never hits)
    const KEEP: usize = 1 << 30;
    let hkey = hess.map_or(0, |h| Arc::as_ptr(h) as usize);
    let key = (Arc::as_ptr(w) as usize, rows, layout, bits, hkey);
    let memo = MEMO.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some((weak, weak_h, hit)) = memo.lock().unwrap().get(&key) {
        // alive, so still at this address: the same array (and the same Hessian)
        if weak.strong_count() > 0 && (hess.is_none() || weak_h.strong_count() > 0) {
            return hit.clone();
        }
    }
    let (mut codes, scales) = search_rows(w, rows, bits);
    if let Some(h) = hess {
        // rows whose GPTQ codes measure lower on the inputs' Hessian take them
        super::gptq::round_rows(w, rows, bits, &scales, h, &mut codes);
    }
    let k = if rows == 0 { 0 } else { codes.len() / rows };
    let sums = (0..rows)
        .map(|r| codes[r * k..(r + 1) * k].iter().map(|&v| v as i64).sum())
        .collect();
    let bytes: Vec<u8> = match (layout, bits) {
        (Layout::Packed { taps }, 4) => pack4(&pack(&codes, rows, taps)),
        (Layout::Packed { taps }, _) => as_bytes(pack(&codes, rows, taps)),
        (Layout::Plain, _) => as_bytes(codes),
    };
    let found = Arc::new(RowWeights {
        scales,
        sums,
        hash: content_hash(&bytes),
        bytes: bytes.into(),
    });
    let mut m = memo.lock().unwrap();
    let held = |m: &Memo| m.values().map(|e| e.2.bytes.len()).sum::<usize>();
    if held(&m) + found.bytes.len() > KEEP {
        m.retain(|_, e| e.0.strong_count() > 0);
        if held(&m) + found.bytes.len() > KEEP {
            m.clear();
        }
    }
    let weak_h = hess.map_or_else(Weak::new, Arc::downgrade);
    m.insert(key, (Arc::downgrade(w), weak_h, found.clone()));
    found
}

/// int8 codes as the bytes the blob stores.
fn as_bytes(codes: Vec<i8>) -> Vec<u8> {
    codes.into_iter().map(|v| v as u8).collect()
}

/// A hash of blob bytes for the blob's de-duplication: a multiply-rotate mix over 8-byte words
/// (eight times the speed of a bytewise hash over an SD UNet's 860 MB of weights).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let mix = |h: u64, v: u64| (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    let mut h = (&mut chunks).fold(bytes.len() as u64, |h, c| {
        mix(h, u64::from_le_bytes(c.try_into().unwrap()))
    });
    for &b in chunks.remainder() {
        h = mix(h, b as u64);
    }
    h
}

/// The clipping search of [`row_weights`], its rows split over the cores (each row's search
/// is independent of the others, so any split gives the same codes and scales).
fn search_rows(w: &[f32], rows: usize, bits: u8) -> (Vec<i8>, Vec<f32>) {
    let k = if rows == 0 { 0 } else { w.len() / rows };
    let mut q = vec![0i8; w.len()];
    let mut scales = vec![0f32; rows];
    // below about a million weights a thread costs more than it saves
    let threads = crate::import::cores().min(w.len() >> 20).max(1);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let parts = q.chunks_mut((per * k).max(1)).zip(scales.chunks_mut(per));
        for (i, (q, scales)) in parts.enumerate() {
            let w = &w[i * per * k..];
            scope.spawn(move || search_some_rows(w, k, bits, q, scales));
        }
    });
    (q, scales)
}

/// `v / s` rounded half away from zero (as `f32::round`) and clamped to `±qmax`, without the libm
/// call `round` is on x86-64 (which keeps the loop from vectorising); exact for every input.
#[inline(always)]
pub(crate) fn code(v: f32, s: f32, qmax: f32) -> f32 {
    // clamping first is the same as after: `round` is monotone and `qmax` an integer
    let y = (v / s).clamp(-qmax, qmax);
    let r = (y as i32) as f32; // toward zero; `y - r` is exact
    if (y - r).abs() >= 0.5 {
        r + 1f32.copysign(y)
    } else {
        r
    }
}

/// `sum (v - code(v) * s)^2` over `row`, in eight f64 partial sums (lanes of a vector: a single
/// running sum is a chain of dependent additions that kept the search at one value per 4 cycles).
fn squared_error(row: &[f32], s: f32, qmax: f32) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += ((v - code(v, s, qmax) * s) as f64).powi(2);
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| ((v - code(v, s, qmax) * s) as f64).powi(2))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// [`search_rows`] for the `scales.len()` rows at the start of `w` (`k` values each).
fn search_some_rows(w: &[f32], k: usize, bits: u8, q: &mut [i8], scales: &mut [f32]) {
    let qmax = if bits == 4 { 7.0f32 } else { 127.0 };
    for (r, scale) in scales.iter_mut().enumerate() {
        let row = &w[r * k..(r + 1) * k];
        let mx = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
        if mx == 0.0 {
            *scale = 1.0;
            continue;
        }
        let err = |s: f32| squared_error(row, s, qmax);
        let mut best = (err(mx / qmax), mx / qmax);
        for i in 1..=25 {
            let s = mx * (1.0 - 0.02 * i as f32) / qmax;
            let e = err(s);
            if e < best.0 {
                best = (e, s);
            }
        }
        let s = best.1;
        *scale = s;
        for (d, &v) in q[r * k..(r + 1) * k].iter_mut().zip(row) {
            *d = code(v, s, qmax) as i8;
        }
    }
}

/// Row codes (`rows` rows of `taps x c` values in `[row][channel][tap]` order: a conv's
/// `[co][ci][kh][kw]`, or a linear's `[n][k]` with one tap) packed for the runtime's product
/// engine: depth in (tap, channel) order with the channels of every tap padded to a multiple of 4,
/// rows padded to a multiple of 4, blocks of 4 rows x 4 depth.
pub fn pack(codes: &[i8], rows: usize, taps: usize) -> Vec<i8> {
    use dmq_runtime::kernels::gemm::{packed_index, pad4};
    let k = if rows == 0 { 0 } else { codes.len() / rows };
    let c = if taps == 0 { 0 } else { k / taps };
    let (c4, k4) = (pad4(c), taps * pad4(c));
    let mut out = vec![0i8; pad4(rows) * k4];
    for r in 0..rows {
        for ci in 0..c {
            for t in 0..taps {
                out[packed_index(r, t * c4 + ci, k4)] = codes[r * k + ci * taps + t];
            }
        }
    }
    out
}

/// Packed int8 codes in [-8, 7], two per byte, low nibble first.
pub fn pack4(codes: &[i8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|p| (p[0] as u8 & 0x0f) | ((p.get(1).copied().unwrap_or(0) as u8 & 0x0f) << 4))
        .collect()
}

/// The int32 bias (input zero point folded in: `bias/acc_scale - zx * sum_k w`) and the
/// requantization to the output scale of a product with per-row weight scales and code sums `w`,
/// input `(sx, zx)` and output scale `so`. Also returns `1/acc_scale` per row, the
/// factor that turns an f32 bias added at run time into accumulator units.
pub fn fold_rows(
    w: &RowWeights,
    bias: &[f32],
    (sx, zx): (f32, i32),
    so: f32,
) -> (Vec<i32>, Vec<Requant>, Vec<f32>) {
    let rows = w.scales.len();
    let mut bq = Vec::with_capacity(rows);
    let mut rq = Vec::with_capacity(rows);
    let mut inv = Vec::with_capacity(rows);
    for r in 0..rows {
        let acc_scale = sx as f64 * w.scales[r] as f64;
        let b = (bias[r] as f64 / acc_scale).round() as i64 - zx as i64 * w.sums[r];
        bq.push(b.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        rq.push(requant_of(acc_scale / so as f64));
        inv.push((1.0 / acc_scale) as f32);
    }
    (bq, rq, inv)
}

#[cfg(test)]
mod tests {
    use super::code;

    #[test]
    fn code_rounds_and_clamps_as_f32_round_does() {
        // including halves, the largest float below one half, and values far outside the range
        let old = |v: f32, s: f32, q: f32| (v / s).round().clamp(-q, q);
        let mut edges = vec![
            0.0f32, -0.0, 0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 127.5, 1e30, -1e30,
        ];
        edges.extend([
            0.49999997f32,
            -0.49999997,
            2.4999998,
            8388607.5,
            3.5,
            6.5,
            7.5,
            -7.5,
        ]);
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            edges.push(f32::from_bits(x) % 300.0);
            edges.push((x % 5000) as f32 * 0.05 - 125.0);
        }
        for &v in edges.iter().filter(|v| v.is_finite()) {
            for (s, q) in [(1.0f32, 127.0f32), (0.37, 127.0), (1.0, 7.0), (0.013, 7.0)] {
                // equal as numbers (a negative value that rounds to zero gives +0 here, -0 there)
                assert_eq!(code(v, s, q), old(v, s, q), "{v} / {s}, ±{q}");
            }
        }
    }
}
