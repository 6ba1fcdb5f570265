//! Activation parameters: per-tensor asymmetric codes over each bucket's calibrated ranges.
use crate::ir::{Program, TensorId};
use anyhow::{anyhow, Result};
use dmq_runtime::format::DType;
use std::collections::HashMap;

/// Observed range of a tensor over calibration.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub min: f32,
    pub max: f32,
    /// the error-minimising clipped range for int8 codes (see `calib::refine`); min-max when `None`
    pub clip: Option<(f32, f32)>,
}

impl Range {
    pub fn new(min: f32, max: f32) -> Range {
        Range {
            min,
            max,
            clip: None,
        }
    }
}

/// `x` through int8 codes with `(scale, zero)` and back: rounded, clipped to the code range.
pub fn int8_roundtrip(x: f32, (scale, zero): (f32, i32)) -> f32 {
    let q = ((x / scale).round() + zero as f32).clamp(-128.0, 127.0);
    (q - zero as f32) * scale
}

/// Per-tensor asymmetric int8 parameters covering `[lo, hi]` (which is widened to include 0).
pub fn affine_params(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let span = (hi - lo).max(1e-8);
    let scale = span / 255.0;
    let zero = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
    (scale, zero)
}

/// How far beyond its calibrated range an int16 tensor of a program with every tensor at int16
/// (`Program::i16_headroom`) reaches, a factor on both ends: one of its 16 bits spent on inputs the
/// calibration did not see. Tensors ranked one at a time keep their calibrated range: their
/// measured gain was for it, and on the bundled model the headroom on its six ranked tensors made
/// 33 of its 50 steps worse, by up to 1.0 dB.
pub const I16_HEADROOM: f32 = 2.0;

/// Asymmetric parameters covering `[lo, hi]` (widened to include 0) for the code range of `dtype`.
pub fn affine_params_for(dtype: DType, lo: f32, hi: f32) -> (f32, i32) {
    let (cmin, cmax) = dtype.code_range();
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let span = (hi - lo).max(1e-8);
    let scale = span / (cmax - cmin) as f32;
    let zero = (cmin as f32 - lo / scale)
        .round()
        .clamp(cmin as f32, cmax as f32) as i32;
    (scale, zero)
}

/// Chosen quantization of every tensor (int8: scale, zero; f32: 1, 0).
pub fn choose_params(p: &Program, ranges: &HashMap<usize, Range>) -> Result<Vec<(f32, i32)>> {
    let mut out = vec![(1.0f32, 0i32); p.tensors.len()];
    for i in 0..p.tensors.len() {
        let root = p.quant_root(TensorId(i as u32));
        let t = p.t(root);
        if t.dtype == DType::F32 {
            continue;
        }
        out[i] = if let Some(f) = t.fixed {
            f
        } else if let Some(s) = t.stat {
            let r = ranges
                .get(&s)
                .ok_or_else(|| anyhow!("no calibration range for tensor {}", t.name))?;
            match (t.dtype, r.clip) {
                (DType::I8, Some((lo, hi))) => affine_params_for(t.dtype, lo, hi),
                // a stream with every tensor at int16 has bits to spare: twice the calibrated
                // range, for inputs beyond it
                (DType::I16, _) if p.i16_headroom => {
                    affine_params_for(t.dtype, I16_HEADROOM * r.min, I16_HEADROOM * r.max)
                }
                _ => affine_params_for(t.dtype, r.min, r.max),
            }
        } else {
            return Err(anyhow!("tensor {} has no quantization source", t.name));
        };
    }
    Ok(out)
}
