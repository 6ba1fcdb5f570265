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

/// How far above the largest probability calibration saw a softmax's codes reach.
pub const PROBS_HEADROOM: f32 = 2.0;

/// A softmax's output parameters for probabilities up to `peak` (observed): zero point at the code
/// range's bottom and a step `1/r` with whole `r` (the runtime's softmax computes
/// `zo + round(r·e/sum)`), `r` as large as keeps `PROBS_HEADROOM·peak` representable, at least
/// the steps that reach 1 (255 at int8, as before calibration chose) and at most the runtime's
/// limit. With one step of 1/255, a near-uniform attention over 1024 or 4096 tokens (each
/// probability 1/1024 or 1/4096) rounded to all zeros.
pub fn probs_params(dtype: DType, peak: f32) -> (f32, i32) {
    let (lo, hi) = dtype.code_range();
    let codes = (hi - lo) as f64;
    let top = (PROBS_HEADROOM * peak).clamp(1e-9, 1.0) as f64;
    let max_steps = dmq_runtime::kernels::reference::softmax::MAX_STEPS as f64;
    let r = (codes / top).floor().clamp(codes, max_steps);
    ((1.0 / r) as f32, lo)
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
        let range = |s: usize| {
            ranges
                .get(&s)
                .ok_or_else(|| anyhow!("no calibration range for tensor {}", t.name))
        };
        out[i] = if let (true, Some(s)) = (t.probs, t.stat) {
            probs_params(t.dtype, range(s)?.max)
        } else if let Some(f) = t.fixed {
            f
        } else if t.bound_by.is_some() {
            // after every other tensor: the bound follows its input's parameters
            continue;
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
    for i in 0..p.tensors.len() {
        let t = p.t(p.quant_root(TensorId(i as u32)));
        if let (true, Some((x, f))) = (t.dtype.is_int(), t.bound_by) {
            let x = p.quant_root(x);
            let (sx, zx) = out[x.0 as usize];
            let (cmin, cmax) = p.t(x).dtype.code_range();
            let m = sx * ((cmin - zx).abs().max((cmax - zx).abs())) as f32;
            out[i] = affine_params_for(t.dtype, -f * m, f * m);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_step_follows_the_peak_within_the_runtime_limits() {
        // a peak of 1 (or above half, with the headroom) keeps steps of 1/255 from -128
        assert_eq!(probs_params(DType::I8, 1.0), (1.0 / 255.0, -128));
        assert_eq!(probs_params(DType::I8, 0.6), (1.0 / 255.0, -128));
        // a peak of 1/512: twice it reaches code 127, a probability of 1/1024 is about 32 codes
        let (s, z) = probs_params(DType::I8, 1.0 / 512.0);
        assert_eq!(z, -128);
        let r = (1.0 / s as f64).round();
        assert_eq!(r, (255.0f64 * 256.0).floor());
        assert!(255.0 / r >= 2.0 / 512.0 - 1e-9);
        // int16 from -32768, and never past the runtime's step limit
        let (s, z) = probs_params(DType::I16, 1e-6);
        assert_eq!(z, -32768);
        let max = dmq_runtime::kernels::reference::softmax::MAX_STEPS as f64;
        assert!((1.0 / s as f64).round() <= max);
    }
}
