//! Quantization: chooses int8 parameters from calibration ranges and turns IR ops into runtime
//! records with their blob arrays (weights, biases with zero points folded, requantization tables, LUTs).
use crate::ir::*;
use anyhow::{anyhow, Result};
use dmq_runtime::format::{BlobRef, DType, Op, Requant, TRef};
use dmq_runtime::kernels::scalar::ConvDims;
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

/// Per-tensor asymmetric int8 parameters covering `[lo, hi]` (which is widened to include 0).
pub fn affine_params(lo: f32, hi: f32) -> (f32, i32) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let span = (hi - lo).max(1e-8);
    let scale = span / 255.0;
    let zero = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
    (scale, zero)
}

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

/// Builds the blob: 16-byte aligned arrays (kernels read them bytewise; 16 keeps weight rows vector-friendly), each stored once (timestep buckets share their weights).
#[derive(Default)]
pub struct Blob {
    pub bytes: Vec<u8>,
    seen: HashMap<Vec<u8>, BlobRef>,
}

impl Blob {
    pub fn push(&mut self, data: &[u8]) -> BlobRef {
        if let Some(r) = self.seen.get(data) {
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
        self.seen.insert(data.to_vec(), r);
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

fn push_weights(blob: &mut Blob, codes: &[i8], rows: usize, bits: u8) -> BlobRef {
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
                _ => affine_params_for(t.dtype, r.min, r.max),
            }
        } else {
            return Err(anyhow!("tensor {} has no quantization source", t.name));
        };
    }
    Ok(out)
}

/// Concats along channels (rank 4, int8) whose only readers are GroupNorms and channel slices that
/// cut out exactly one part: their parts can keep their own scales (a decoder's skip concat, whose
/// parts come from different depths). Returns the concat outputs and, per part-slice, (slice output,
/// part index).
pub fn split_concats(p: &Program) -> (Vec<TensorId>, Vec<(TensorId, TensorId, usize)>) {
    let mut out = vec![];
    let mut slices = vec![];
    for op in &p.ops {
        let IrOp::Concat {
            inputs,
            output,
            axis,
        } = op
        else {
            continue;
        };
        let t = p.t(*output);
        if *axis != 1 || t.shape.len() != 4 || t.dtype != DType::I8 || inputs.len() < 2 {
            continue;
        }
        // part boundaries along channels
        let mut starts = vec![];
        let mut at = 0usize;
        for t in inputs {
            starts.push((at, p.t(*t).shape[1]));
            at += p.t(*t).shape[1];
        }
        let mut ok = true;
        let mut mine = vec![];
        for o in &p.ops {
            if !o.inputs().contains(output) {
                continue;
            }
            match o {
                IrOp::GroupNorm { .. } => {}
                IrOp::Plain(Op::Slice {
                    output: so,
                    axis: 1,
                    start,
                    ..
                }) => {
                    let width = p.t(*so).shape.get(1).copied().unwrap_or(0);
                    match starts
                        .iter()
                        .position(|&(s, w)| s == *start as usize && w == width)
                    {
                        Some(k) => mine.push((*so, *output, k)),
                        None => ok = false,
                    }
                }
                _ => ok = false,
            }
        }
        // no other alias of the concat (reshapes and the like would see the nominal scale)
        let aliases = p
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, x)| x.alias == Some(*output))
            .count();
        if ok && aliases == mine.len() {
            out.push(*output);
            slices.extend(mine);
        }
    }
    (out, slices)
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

/// Quantizes the program for one set of ranges. `weight_bits` is 8 or 4; with 4, products that touch
/// a tensor of `keep8` (quantization roots: the sensitivity-protected tensors) keep 8-bit weights.
pub fn quantize(
    p: &Program,
    ranges: &HashMap<usize, Range>,
    blob: &mut Blob,
    weight_bits: u8,
    keep8: &[TensorId],
) -> Result<Quantized> {
    let mut params = choose_params(p, ranges)?;
    // Split skip concats: each part keeps its own (symmetric) scale; the consuming GroupNorms read
    // the channel scales.
    let (split, part_slices) = split_concats(p);
    let mut channel_scales: HashMap<TensorId, Vec<f32>> = HashMap::new();
    let mut part_scales: HashMap<TensorId, Vec<f32>> = HashMap::new();
    for op in &p.ops {
        if let IrOp::Concat { inputs, output, .. } = op {
            if !split.contains(output) {
                continue;
            }
            let mut scales = vec![];
            // bits lost per channel: sharing the concat's range vs each part's own symmetric range
            let (mut lost_shared, mut lost_split) = (0f64, 0f64);
            let (so, _) = params[output.0 as usize];
            for &t in inputs {
                let (s, z) = params[t.0 as usize];
                let (lo, hi) = p.t(t).dtype.code_range();
                let r = ((lo as f32 - z as f32) * s)
                    .abs()
                    .max((hi as f32 - z as f32) * s);
                let seg = (r / 127.0).max(1e-12);
                let c = p.t(t).shape[1] as f64;
                let own = ((hi - lo) as f64 * s as f64).max(1e-12);
                lost_shared += c * (255.0 * so as f64 / own).max(1.0).log2();
                lost_split += c * (254.0 * seg as f64 / own).max(1.0).log2();
                scales.extend(std::iter::repeat_n(seg, p.t(t).shape[1]));
            }
            if lost_split >= lost_shared {
                continue;
            }
            let nominal = scales.iter().copied().fold(0f32, f32::max);
            params[output.0 as usize] = (nominal, 0);
            channel_scales.insert(*output, scales);
            let mut per_part = vec![];
            let mut at = 0;
            for &t in inputs {
                per_part.push(channel_scales[output][at]);
                at += p.t(t).shape[1];
            }
            part_scales.insert(*output, per_part);
        }
    }
    // a slice cutting out one part (and whatever aliases it) reads that part's scale
    for i in 0..p.tensors.len() {
        let mut cur = TensorId(i as u32);
        loop {
            if let Some(&(_, concat, k)) = part_slices.iter().find(|s| s.0 == cur) {
                if let Some(ps) = part_scales.get(&concat) {
                    params[i] = (ps[k], 0);
                }
                break;
            }
            match p.t(cur).alias {
                Some(a) => cur = a,
                None => break,
            }
        }
    }
    let mut ops = vec![];
    let mut scratch = vec![];
    let q = |t: TensorId| params[t.0 as usize];
    let bits_for = |a: TensorId, b: TensorId| -> u8 {
        if weight_bits == 4
            && !keep8.contains(&p.quant_root(a))
            && !keep8.contains(&p.quant_root(b))
        {
            4
        } else {
            8
        }
    };
    for op in &p.ops {
        let mut scr = 0usize;
        let rec = match op {
            IrOp::Quantize { input, output } => Op::Quantize {
                input: *input,
                output: *output,
            },
            IrOp::Dequantize { input, output } => Op::Dequantize {
                input: *input,
                output: *output,
            },
            IrOp::Conv {
                input,
                output,
                w,
                bias,
                time_bias,
                kernel,
                stride,
                pad,
                ..
            } => {
                let (sx, zx) = q(*input);
                let (so, _) = q(*output);
                let ish = &p.t(*input).shape;
                let osh = &p.t(*output).shape;
                let co = osh[1];
                let bits = bits_for(*input, *output);
                let (wq, ws) = quantize_rows_bits(w, co, bits);
                let k = w.len() / co;
                let mut bq = vec![0i32; co];
                let mut rq = vec![];
                let mut ts = vec![0f32; co];
                for c in 0..co {
                    let acc_scale = sx as f64 * ws[c] as f64;
                    let wsum: i64 = wq[c * k..(c + 1) * k].iter().map(|&v| v as i64).sum();
                    let b = (bias[c] as f64 / acc_scale).round() as i64 - zx as i64 * wsum;
                    bq[c] = b.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                    rq.push(requant_of(acc_scale / so as f64));
                    ts[c] = (1.0 / acc_scale) as f32;
                }
                let d = ConvDims {
                    c: ish[1],
                    h: ish[2],
                    w: ish[3],
                    co,
                    kh: kernel[0],
                    kw: kernel[1],
                    sh: stride[0],
                    sw: stride[1],
                    pt: pad[0],
                    pl: pad[1],
                    oh: osh[2],
                    ow: osh[3],
                };
                scr = dmq_runtime::exec::conv_scratch_bytes(
                    &d,
                    time_bias.is_some(),
                    p.t(*input).dtype.size(),
                );
                Op::Conv2d {
                    input: *input,
                    output: *output,
                    weight_bits: bits,
                    weights: push_weights(blob, &wq, co, bits),
                    bias: blob.push_i32(&bq),
                    requant: blob.push_requant(&rq),
                    time_bias: *time_bias,
                    time_scale: if time_bias.is_some() {
                        blob.push_f32(&ts)
                    } else {
                        blob.push(&[])
                    },
                    kernel: [kernel[0] as u16, kernel[1] as u16],
                    stride: [stride[0] as u16, stride[1] as u16],
                    pad: [pad[0] as u16, pad[1] as u16, pad[2] as u16, pad[3] as u16],
                    scratch: 0,
                }
            }
            IrOp::Linear {
                input,
                output,
                geom,
                w,
                bias,
                float,
                ..
            } => {
                let n = geom.n as usize;
                let bits = if *float { 8 } else { bits_for(*input, *output) };
                let (wq, ws) = quantize_rows_bits(w, n, bits);
                if *float {
                    Op::FLinear {
                        input: *input,
                        output: *output,
                        geom: geom.clone(),
                        weights: blob.push_i8(&wq),
                        scales: blob.push_f32(&ws),
                        bias: blob.push_f32(bias),
                    }
                } else {
                    let (sx, zx) = q(*input);
                    let (so, _) = q(*output);
                    let k = geom.k as usize;
                    let mut bq = vec![0i32; n];
                    let mut rq = vec![];
                    for j in 0..n {
                        let acc_scale = sx as f64 * ws[j] as f64;
                        let wsum: i64 = wq[j * k..(j + 1) * k].iter().map(|&v| v as i64).sum();
                        let b = (bias[j] as f64 / acc_scale).round() as i64 - zx as i64 * wsum;
                        bq[j] = b.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                        rq.push(requant_of(acc_scale / so as f64));
                    }
                    Op::Linear {
                        input: *input,
                        output: *output,
                        geom: geom.clone(),
                        weight_bits: bits,
                        weights: push_weights(blob, &wq, n, bits),
                        bias: blob.push_i32(&bq),
                        requant: blob.push_requant(&rq),
                    }
                }
            }
            IrOp::MatMul {
                a,
                b,
                output,
                geom,
                post_scale,
            } => {
                let (sa, sb, so) = (q(*a).0 as f64, q(*b).0 as f64, q(*output).0 as f64);
                Op::MatMul {
                    a: *a,
                    b: *b,
                    output: *output,
                    geom: geom.clone(),
                    requant: requant_of(sa * sb * *post_scale as f64 / so),
                }
            }
            IrOp::Binary { kind, a, b, output } => {
                let (sa, sb, so) = (q(*a).0 as f64, q(*b).0 as f64, q(*output).0 as f64);
                let (mult_a, mult_b, shift) = match kind {
                    dmq_runtime::format::BinaryKind::Mul => {
                        let r = requant_of(sa * sb / so);
                        (r.mult, r.mult, r.shift)
                    }
                    _ => requant_pair(sa / so, sb / so),
                };
                Op::Binary {
                    kind: *kind,
                    a: *a,
                    b: *b,
                    output: *output,
                    mult_a,
                    mult_b,
                    shift,
                }
            }
            IrOp::Lut {
                input,
                output,
                chain,
            } => {
                let (sx, zx) = q(*input);
                let (so, zo) = q(*output);
                let (din, dout) = (p.t(*input).dtype, p.t(*output).dtype);
                let (omin, omax) = dout.code_range();
                let f = |c: i32| -> f64 {
                    let mut v = sx * (c - zx) as f32;
                    for f in chain {
                        v = f.apply(v);
                    }
                    if v.is_nan() {
                        zo as f64
                    } else {
                        v as f64 / so as f64 + zo as f64
                    }
                };
                let table: Vec<u8> = match din {
                    DType::I16 => (0..=256)
                        .flat_map(|k| {
                            let v = (f(k * 256 - 32768).clamp(omin as f64, omax as f64) * 256.0)
                                .round() as i32;
                            v.to_le_bytes()
                        })
                        .collect(),
                    _ if dout == DType::I16 => (-128i32..=127)
                        .flat_map(|c| {
                            (f(c).round().clamp(omin as f64, omax as f64) as i16).to_le_bytes()
                        })
                        .collect(),
                    _ => (-128i32..=127)
                        .map(|c| f(c).round().clamp(-128.0, 127.0) as i8 as u8)
                        .collect(),
                };
                Op::Lut {
                    input: *input,
                    output: *output,
                    table: blob.push(&table),
                }
            }
            IrOp::GroupNorm {
                input,
                output,
                groups,
                eps,
                gamma,
                beta,
            } => {
                let mut aff = gamma.clone();
                aff.extend_from_slice(beta);
                Op::GroupNorm {
                    input: *input,
                    output: *output,
                    groups: *groups as u32,
                    eps: *eps,
                    affine: blob.push_f32(&aff),
                    in_scales: channel_scales.get(input).map(|s| blob.push_f32(s)),
                }
            }
            IrOp::Softmax {
                input,
                output,
                axis,
            } => {
                let (sx, _) = q(*input);
                let table: Vec<i32> = (0..256)
                    .map(|d| ((-(d as f64) * sx as f64).exp() * (1u64 << 20) as f64).round() as i32)
                    .collect();
                Op::Softmax {
                    input: *input,
                    output: *output,
                    axis: *axis as u8,
                    exp_table: blob.push_i32(&table),
                }
            }
            IrOp::Concat {
                inputs,
                output,
                axis,
            } => {
                let (so, _) = q(*output);
                let mut ins = heapless::Vec::new();
                let mut rq = heapless::Vec::new();
                let mut at = 0usize;
                for t in inputs {
                    let _ = ins.push(*t);
                    // a split concat requantizes each part to its own scale
                    let s_out = channel_scales
                        .get(output)
                        .and_then(|s| s.get(at).copied())
                        .unwrap_or(so);
                    at += p.t(*t).shape.get(1).copied().unwrap_or(0);
                    let _ = rq.push(requant_of(q(*t).0 as f64 / s_out as f64));
                }
                Op::Concat {
                    inputs: ins,
                    output: *output,
                    axis: *axis as u8,
                    requant: rq,
                }
            }
            IrOp::Const { output, values } => {
                let t = p.t(*output);
                let data = if t.dtype == DType::F32 {
                    blob.push_f32(values)
                } else {
                    let (s, z) = q(*output);
                    let v: Vec<i8> = values
                        .iter()
                        .map(|&v| ((v / s).round() + z as f32).clamp(-128.0, 127.0) as i8)
                        .collect();
                    blob.push_i8(&v)
                };
                Op::Const {
                    output: *output,
                    data,
                }
            }
            IrOp::Gather {
                index,
                output,
                table,
                rows,
                cols,
            } => Op::FGather {
                index: *index,
                output: *output,
                table: blob.push_f32(table),
                rows: *rows as u32,
                cols: *cols as u32,
            },
            IrOp::Plain(op) => op.clone(),
        };
        ops.push(rec);
        scratch.push(scr);
    }
    Ok(Quantized {
        ops,
        scratch,
        params,
        dtypes: p.tensors.iter().map(|t| t.dtype).collect(),
    })
}

/// Resolves tensor ids to arena references.
pub fn tref(p: &Program, q: &Quantized, offsets: &[u32], id: TensorId) -> TRef {
    let t = p.t(id);
    let (scale, zero) = q.params[id.0 as usize];
    let mut shape = heapless::Vec::new();
    for &d in &t.shape {
        let _ = shape.push(d as u32);
    }
    TRef {
        offset: offsets[id.0 as usize],
        dtype: q.dtypes[id.0 as usize],
        shape,
        scale,
        zero,
    }
}
