//! Test helpers: a small arena and blob to build op records against, random codes, and the
//! parameters a compiler would choose.
pub use crate::format::*;
pub use crate::kernels::{Exec, Tier};
pub use crate::sampler::Rng;
use std::vec;
use std::vec::Vec;

pub fn uni(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.uniform() as f32
}
pub fn codes(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| (rng.next_u64() >> 56) as u8 as i8).collect()
}

/// Asymmetric parameters covering `[lo, hi]` (widened to include 0) for `dtype`'s codes.
pub fn params(dtype: DType, lo: f32, hi: f32) -> (f32, i32) {
    let (cmin, cmax) = dtype.code_range();
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let scale = (hi - lo).max(1e-8) / (cmax - cmin) as f32;
    let zero = (cmin as f32 - lo / scale)
        .round()
        .clamp(cmin as f32, cmax as f32) as i32;
    (scale, zero)
}

/// `real` as `mult / 2^shift` with `mult` in [2^30, 2^31).
pub fn requant_of(real: f64) -> Requant {
    let e = real.log2().floor() as i32;
    let shift = (30 - e).clamp(1, 62);
    let m = (real * 2f64.powi(shift)).round().min(i32::MAX as f64);
    Requant {
        mult: m as i32,
        shift: shift as u8,
    }
}

/// An arena and a blob that op records are built against.
#[derive(Clone)]
pub struct Bench {
    arena: Vec<u128>,
    next: u32,
    pub blob: Vec<u8>,
}

impl Bench {
    pub fn new() -> Bench {
        Bench {
            arena: vec![0u128; 1 << 17],
            next: 0,
            blob: vec![],
        }
    }
    pub fn bytes(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.arena)
    }
    /// A tensor placed after the previous one.
    pub fn tensor(&mut self, dtype: DType, shape: &[u32], scale: f32, zero: i32) -> TRef {
        let n: u32 = shape.iter().product();
        let t = TRef {
            offset: self.next,
            dtype,
            shape: shape.iter().copied().collect(),
            scale,
            zero,
        };
        self.next += (n * dtype.size() as u32).div_ceil(16) * 16;
        t
    }
    /// Scratch bytes (returns the offset).
    pub fn scratch(&mut self, bytes: u32) -> u32 {
        let at = self.next;
        self.next += bytes.div_ceil(16) * 16;
        at
    }
    pub fn put_bytes(&mut self, t: &TRef, b: &[u8]) {
        let o = t.offset as usize;
        self.bytes()[o..o + b.len()].copy_from_slice(b);
    }
    pub fn put_i8(&mut self, t: &TRef, v: &[i8]) {
        self.put_bytes(t, bytemuck::cast_slice(v));
    }
    pub fn put_i16(&mut self, t: &TRef, v: &[i16]) {
        self.put_bytes(t, bytemuck::cast_slice(v));
    }
    pub fn put_f32(&mut self, t: &TRef, v: &[f32]) {
        self.put_bytes(t, bytemuck::cast_slice(v));
    }
    fn get_bytes(&mut self, t: &TRef) -> Vec<u8> {
        let o = t.offset as usize;
        self.bytes()[o..o + t.bytes()].to_vec()
    }
    pub fn get_i8(&mut self, t: &TRef) -> Vec<i8> {
        self.get_bytes(t).into_iter().map(|b| b as i8).collect()
    }
    pub fn get_i16(&mut self, t: &TRef) -> Vec<i16> {
        self.get_bytes(t)
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
    pub fn get_f32(&mut self, t: &TRef) -> Vec<f32> {
        self.get_bytes(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    /// A blob array (16-byte aligned).
    pub fn array(&mut self, b: &[u8]) -> BlobRef {
        while self.blob.len() % 16 != 0 {
            self.blob.push(0);
        }
        let r = BlobRef {
            offset: self.blob.len() as u32,
            len: b.len() as u32,
        };
        self.blob.extend_from_slice(b);
        r
    }
    pub fn i8s(&mut self, v: &[i8]) -> BlobRef {
        self.array(bytemuck::cast_slice(v))
    }
    pub fn i32s(&mut self, v: &[i32]) -> BlobRef {
        self.array(bytemuck::cast_slice(v))
    }
    pub fn f32s(&mut self, v: &[f32]) -> BlobRef {
        self.array(bytemuck::cast_slice(v))
    }
    pub fn requants(&mut self, v: &[Requant]) -> BlobRef {
        let b: Vec<u8> = v
            .iter()
            .flat_map(|r| {
                r.mult
                    .to_le_bytes()
                    .into_iter()
                    .chain((r.shift as i32).to_le_bytes())
            })
            .collect();
        self.array(&b)
    }
    /// Prepares and runs `op` with the given tier (its check included).
    pub fn run_with(&mut self, op: Op<TRef>, tier: Tier) {
        self.run_threads(op, tier, 1)
    }
    /// [`Bench::run_with`] on `threads` worker threads.
    pub fn run_threads(&mut self, op: Op<TRef>, tier: Tier, threads: usize) {
        let blob = core::mem::take(&mut self.blob);
        let ex = Exec { tier, threads };
        let r = crate::ops::run_record(&op, self.bytes(), &blob, ex);
        self.blob = blob;
        r.unwrap_or_else(|e| panic!("{} failed: {e}", op.name()));
    }
    pub fn run(&mut self, op: Op<TRef>) {
        self.run_with(op, Tier::Scalar)
    }
    /// Prepares and runs `op` on the scalar tier, returning its check's or its run's error.
    pub fn try_run(&mut self, op: Op<TRef>) -> crate::Result<()> {
        let blob = core::mem::take(&mut self.blob);
        let ex = Exec {
            tier: Tier::Scalar,
            threads: 1,
        };
        let r = crate::ops::run_record(&op, self.bytes(), &blob, ex);
        self.blob = blob;
        r
    }
}

/// Every tier this CPU runs (the scalar reference first).
pub fn tiers() -> Vec<Tier> {
    let mut t = vec![Tier::Scalar];
    if Tier::detect() != Tier::Scalar {
        t.push(Tier::detect());
    }
    t
}

/// Codes of real values at `(scale, zero)` for `dtype`.
pub fn quant(v: f32, (s, z): (f32, i32), dtype: DType) -> i32 {
    let (lo, hi) = dtype.code_range();
    ((v / s).round() as i32 + z).clamp(lo, hi)
}

/// Output parameters covering the float result.
pub fn out_params(v: &[f32], dtype: DType) -> (f32, i32) {
    let (lo, hi) = v
        .iter()
        .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
    params(dtype, lo, hi)
}

/// The largest difference in codes between `got` and the codes of the float result.
pub fn worst(got: &[i32], real: &[f32], q: (f32, i32), dtype: DType) -> i32 {
    assert_eq!(got.len(), real.len());
    got.iter()
        .zip(real)
        .map(|(&g, &r)| (g - quant(r, q, dtype)).abs())
        .max()
        .unwrap_or(0)
}

/// The int32 bias (input zero point folded) and per-row requantization a compiler emits for a
/// product with per-row weight scales.
pub fn fold(
    wq: &[i8],
    ws: &[f32],
    bias: &[f32],
    (sx, zx): (f32, i32),
    so: f32,
) -> (Vec<i32>, Vec<Requant>) {
    let k = wq.len() / ws.len();
    (0..ws.len())
        .map(|r| {
            let acc = sx as f64 * ws[r] as f64;
            let wsum: i64 = wq[r * k..(r + 1) * k].iter().map(|&v| v as i64).sum();
            let b = (bias[r] as f64 / acc).round() as i64 - zx as i64 * wsum;
            (b as i32, requant_of(acc / so as f64))
        })
        .unzip()
}

/// Conv weights `[co][c][kh][kw]` in the packed layout of the product engine: depth in (ky, kx,
/// channel) order, channels padded to a multiple of 4, rows padded to a multiple of 4.
pub fn pack_conv(w: &[i8], co: usize, c: usize, kh: usize, kw: usize) -> Vec<i8> {
    use crate::kernels::gemm::{packed_index, pad4};
    let (c4, k4) = (pad4(c), kh * kw * pad4(c));
    let mut out = vec![0i8; pad4(co) * k4];
    for r in 0..co {
        for ci in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    let q = (ky * kw + kx) * c4 + ci;
                    out[packed_index(r, q, k4)] = w[((r * c + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    out
}

/// `[n][k]` weights in the packed layout (depth padded to a multiple of 4).
pub fn pack_rows(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    pack_conv(w, n, k, 1, 1)
}

/// Packed int8 codes in [-8, 7] two per byte, low nibble first (the format's 4-bit weights).
pub fn pack4(codes: &[i8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|p| (p[0] as u8 & 0x0f) | ((p.get(1).copied().unwrap_or(0) as u8 & 0x0f) << 4))
        .collect()
}

/// Integer codes of a tensor as i32.
pub fn get_ints(b: &mut Bench, t: &TRef) -> Vec<i32> {
    match t.dtype {
        DType::I16 => b.get_i16(t).into_iter().map(i32::from).collect(),
        _ => b.get_i8(t).into_iter().map(i32::from).collect(),
    }
}

/// Puts real values into a tensor as codes of its parameters.
pub fn put_real(b: &mut Bench, t: &TRef, v: &[f32]) {
    let q = (t.scale, t.zero);
    match t.dtype {
        DType::I16 => b.put_i16(
            t,
            &v.iter()
                .map(|&x| quant(x, q, DType::I16) as i16)
                .collect::<Vec<_>>(),
        ),
        _ => b.put_i8(
            t,
            &v.iter()
                .map(|&x| quant(x, q, DType::I8) as i8)
                .collect::<Vec<_>>(),
        ),
    }
}
