//! Quantization: chooses integer parameters from calibration ranges and turns IR ops into runtime
//! records with their blob arrays. Each op's record is built by its lowering module
//! (`crate::lower::<family>`, next to the code that creates the IR op); this module holds what they
//! share: the activation parameters, the weight codes, the split skip concats, the blob.
pub mod activations;
pub mod gptq;
pub mod hessian;
pub mod split_concat;
pub mod weights;

pub use activations::{affine_params, affine_params_for, choose_params, int8_roundtrip, Range};
pub use weights::{pack4, row_weights, Layout, RowWeights};

use crate::ir::*;
use crate::lower;
use anyhow::{anyhow, Result};
use dmq_runtime::format::{self as wire, BlobRef, DType, Op, Requant, TRef, MAX_RANK};
use std::collections::HashMap;
use std::sync::Arc;

/// Fixed-point form of a positive real multiplier: `mult / 2^shift` with `mult` in [2^30, 2^31).
pub fn requant_of(real: f64) -> Requant {
    if !(real > 0.0) || !real.is_finite() {
        return Requant { mult: 0, shift: 1 };
    }
    let e = real.log2().floor() as i32;
    let mut shift = 30 - e;
    if shift > 62 {
        let m = (real * 2f64.powi(62)).round();
        return Requant {
            mult: m.min(i32::MAX as f64) as i32,
            shift: 62,
        };
    }
    if shift < 1 {
        return Requant {
            mult: i32::MAX,
            shift: 1,
        };
    }
    let mut m = (real * 2f64.powi(shift)).round();
    if m >= 2f64.powi(31) {
        m /= 2.0;
        shift -= 1;
    }
    Requant {
        mult: m as i32,
        shift: shift as u8,
    }
}

/// A common shift for two multipliers (binary add/sub).
pub fn requant_pair(ra: f64, rb: f64) -> (i32, i32, u8) {
    let mx = ra.max(rb).max(1e-30);
    let shift = (30 - mx.log2().floor() as i32).clamp(1, 62);
    let f = 2f64.powi(shift);
    let c = |r: f64| (r * f).round().clamp(0.0, i32::MAX as f64) as i32;
    (c(ra), c(rb), shift as u8)
}

/// Builds the blob: 16-byte aligned arrays (kernels read them bytewise; 16 keeps weight rows
/// vector-friendly), each stored once (timestep buckets share their weights, and equal arrays of
/// different ops share their bytes).
#[derive(Default)]
pub struct Blob {
    pub bytes: Vec<u8>,
    /// the arrays stored, by (length, content hash): equal keys are compared byte by byte, unless
    /// they are the same shared weight array
    seen: HashMap<(usize, u64), Vec<(BlobRef, Option<Arc<[u8]>>)>>,
}

impl Blob {
    pub fn push(&mut self, data: &[u8]) -> BlobRef {
        self.push_hashed(data, weights::content_hash(data), None)
    }

    /// A quantized weight array's bytes (hashed once, when it was quantized).
    pub fn push_weights(&mut self, w: &RowWeights) -> BlobRef {
        self.push_hashed(&w.bytes, w.hash, Some(&w.bytes))
    }

    fn push_hashed(&mut self, data: &[u8], hash: u64, shared: Option<&Arc<[u8]>>) -> BlobRef {
        let same = self.seen.get(&(data.len(), hash)).and_then(|held| {
            held.iter().find(|(r, arc)| match (arc, shared) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
                _ => {
                    let at = r.offset as usize;
                    self.bytes[at..at + data.len()] == *data
                }
            })
        });
        if let Some((r, _)) = same {
            return *r;
        }
        while self.bytes.len() % 16 != 0 {
            self.bytes.push(0);
        }
        let r = BlobRef {
            offset: self.bytes.len() as u32,
            len: data.len() as u32,
        };
        self.bytes.extend_from_slice(data);
        self.seen
            .entry((data.len(), hash))
            .or_default()
            .push((r, shared.cloned()));
        r
    }
    pub fn push_i32(&mut self, v: &[i32]) -> BlobRef {
        self.push(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }
    pub fn push_f32(&mut self, v: &[f32]) -> BlobRef {
        self.push(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }
    pub fn push_i8(&mut self, v: &[i8]) -> BlobRef {
        self.push(&v.iter().map(|&x| x as u8).collect::<Vec<u8>>())
    }
    pub fn push_requant(&mut self, v: &[Requant]) -> BlobRef {
        self.push(
            &v.iter()
                .flat_map(|r| {
                    r.mult
                        .to_le_bytes()
                        .into_iter()
                        .chain((r.shift as i32).to_le_bytes())
                })
                .collect::<Vec<u8>>(),
        )
    }
}

/// Output of quantization for one timestep bucket: runtime ops over tensor ids, scratch bytes per op,
/// and the chosen tensor parameters. Arrays go to the shared blob.
pub struct Quantized {
    pub ops: Vec<Op<TensorId>>,
    pub scratch: Vec<usize>,
    pub params: Vec<(f32, i32)>,
    /// the element type of every tensor in this stream (streams may protect different tensors)
    pub dtypes: Vec<DType>,
}

/// What an op's record builder reads and writes.
pub struct QuantCx<'a> {
    pub p: &'a Program,
    /// (scale, zero point) of every tensor
    pub params: &'a [(f32, i32)],
    /// channel scales of the split concats
    pub channel_scales: &'a HashMap<TensorId, Vec<f32>>,
    pub blob: &'a mut Blob,
    pub weight_bits: u8,
    /// quantization roots whose products keep 8-bit weights
    pub keep8: &'a [TensorId],
    /// quantization roots whose producing conv or linear writes its values divided by a gain (the
    /// output's correlated-error correction, see `pipeline::correct`)
    pub gains: &'a [(TensorId, f32)],
    /// the products' input Hessians, for GPTQ rounding of their weights (empty: nearest rounding)
    pub hessians: &'a hessian::Hessians,
}

impl QuantCx<'_> {
    /// The scale a conv or linear requantizes `t` to: its own, times the gain set for its root
    /// (so that the values it writes are divided by the gain).
    pub fn out_scale(&self, t: TensorId) -> f32 {
        let root = self.p.quant_root(t);
        let g = self
            .gains
            .iter()
            .find(|(r, _)| *r == root)
            .map_or(1.0, |g| g.1);
        self.q(t).0 * g
    }
    pub fn q(&self, t: TensorId) -> (f32, i32) {
        self.params[t.0 as usize]
    }
    /// Weight bits of a product between `a` and `b`: 4 when asked, unless it touches a tensor of
    /// `keep8`.
    pub fn bits_for(&self, a: TensorId, b: TensorId) -> u8 {
        let keep = |t| self.keep8.contains(&self.p.quant_root(t));
        if self.weight_bits == 4 && !keep(a) && !keep(b) {
            4
        } else {
            8
        }
    }
}

/// Quantizes the program for one set of ranges. `weight_bits` is 8 or 4; with 4, products that touch
/// a tensor of `keep8` (quantization roots: the sensitivity-protected tensors) keep 8-bit weights.
pub fn quantize(
    p: &Program,
    ranges: &HashMap<usize, Range>,
    blob: &mut Blob,
    weight_bits: u8,
    keep8: &[TensorId],
    gains: &[(TensorId, f32)],
    hessians: &hessian::Hessians,
) -> Result<Quantized> {
    let mut params = choose_params(p, ranges)?;
    let channel_scales = split_concat::apply(p, &mut params);
    let mut cx = QuantCx {
        p,
        params: &params,
        channel_scales: &channel_scales,
        blob,
        weight_bits,
        keep8,
        gains,
        hessians,
    };
    let mut ops = vec![];
    let mut scratch = vec![];
    for op in &p.ops {
        let (rec, scr) = record(&mut cx, op)?;
        ops.push(rec);
        scratch.push(scr);
    }
    Ok(Quantized {
        ops,
        scratch,
        params: params.clone(),
        dtypes: p.tensors.iter().map(|t| t.dtype).collect(),
    })
}

/// The runtime record of one IR op and the arena scratch it needs.
fn record(cx: &mut QuantCx<'_>, op: &IrOp) -> Result<(Op<TensorId>, usize)> {
    Ok(match op {
        IrOp::Quantize { input, output } => (
            Op::Quantize(wire::Quantize {
                input: *input,
                output: *output,
            }),
            0,
        ),
        IrOp::Dequantize { input, output } => (
            Op::Dequantize(wire::Dequantize {
                input: *input,
                output: *output,
            }),
            0,
        ),
        IrOp::Conv { .. } => lower::conv::quantize(cx, op)?,
        IrOp::Linear { .. } | IrOp::MatMul { .. } => {
            let rec = lower::product::quantize(cx, op)?;
            let scratch = lower::product::scratch_bytes(&rec, |t| cx.p.t(t).dtype);
            (rec, scratch)
        }
        IrOp::Binary { .. } | IrOp::Lut { .. } | IrOp::Softmax { .. } | IrOp::Concat { .. } => {
            (lower::elementwise::quantize(cx, op)?, 0)
        }
        IrOp::GroupNorm { .. } => (lower::norm::quantize(cx, op)?, 0),
        IrOp::Const { .. } | IrOp::Gather { .. } => (lower::time::quantize(cx, op)?, 0),
        IrOp::Plain(op) => (op.clone(), 0),
    })
}

/// Resolves tensor ids to arena references.
pub fn tref(p: &Program, q: &Quantized, offsets: &[u32], id: TensorId) -> Result<TRef> {
    let t = p.t(id);
    let (scale, zero) = q.params[id.0 as usize];
    let shape = heapless::Vec::from_slice(&t.shape.iter().map(|&d| d as u32).collect::<Vec<_>>())
        .map_err(|_| {
        anyhow!(
            "tensor {} has rank {} (at most {MAX_RANK})",
            t.name,
            t.shape.len()
        )
    })?;
    Ok(TRef {
        offset: offsets[id.0 as usize],
        dtype: q.dtypes[id.0 as usize],
        shape,
        scale,
        zero,
    })
}
