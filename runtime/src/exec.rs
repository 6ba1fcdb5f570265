//! Validation (once, at load) and execution of op records over a caller-owned arena.
use crate::format::{BlobRef, DType, Model, Op, Requant, TRef, ARENA_ALIGN, MAX_RANK};
use crate::kernels::{self, scalar, scalar::ConvDims, scalar::MatMulDims};
use crate::{Error, Result};
use core::ops::Range;

const MODEL: u32 = u32::MAX;

fn inv(op: u32, what: &'static str) -> Error {
    Error::Invalid { op, what }
}

fn dims(t: &TRef) -> ([usize; MAX_RANK], usize) {
    let mut d = [0usize; MAX_RANK];
    for (i, &x) in t.shape.iter().enumerate() {
        d[i] = x as usize;
    }
    (d, t.shape.len())
}

fn range(t: &TRef) -> Range<usize> {
    t.offset as usize..t.offset as usize + t.bytes()
}

/// Checks a tensor reference against the arena: in bounds, aligned, sane quantization.
fn check_tref(op: u32, t: &TRef, dtype: DType, arena: u32) -> Result<()> {
    if t.dtype != dtype {
        return Err(inv(op, "tensor has the wrong element type"));
    }
    let mut n: u64 = 1;
    for &d in t.shape.iter() {
        n = n
            .checked_mul(d as u64)
            .ok_or(inv(op, "tensor size overflows"))?;
        if n > u32::MAX as u64 {
            return Err(inv(op, "tensor too large"));
        }
    }
    let end = (t.offset as u64)
        .checked_add(n * dtype.size() as u64)
        .ok_or(inv(op, "tensor offset overflows"))?;
    if end > arena as u64 {
        return Err(inv(op, "tensor outside the arena"));
    }
    if t.offset % ARENA_ALIGN != 0 {
        return Err(inv(op, "tensor offset not aligned"));
    }
    if !(t.scale.is_finite() && t.scale > 0.0) {
        return Err(inv(op, "quantization scale must be finite and positive"));
    }
    let (lo, hi) = dtype.code_range();
    if dtype.is_int() && !(lo..=hi).contains(&t.zero) {
        return Err(inv(op, "zero point outside the code range"));
    }
    Ok(())
}

fn check_bits(op: u32, bits: u8) -> Result<()> {
    if bits == 8 || bits == 4 {
        Ok(())
    } else {
        Err(inv(op, "weights must be 8 or 4 bits"))
    }
}

/// An int8 or int16 (protected) activation.
fn check_int(op: u32, t: &TRef, arena: u32) -> Result<()> {
    if !t.dtype.is_int() {
        return Err(inv(op, "tensor must be int8 or int16"));
    }
    check_tref(op, t, t.dtype, arena)
}

/// Table bytes of a LUT for the given input and output types.
pub fn lut_bytes(input: DType, output: DType) -> usize {
    match (input, output) {
        (DType::I16, _) => 257 * 4,
        (_, DType::I16) => 512,
        _ => 256,
    }
}

fn check_blob(op: u32, b: &BlobRef, len: usize, blob: &[u8]) -> Result<()> {
    if b.len as usize != len {
        return Err(inv(op, "blob array has the wrong length"));
    }
    let end = (b.offset as u64) + b.len as u64;
    if end > blob.len() as u64 {
        return Err(inv(op, "blob array outside the blob"));
    }
    Ok(())
}

fn check_requant_table(op: u32, b: &BlobRef, n: usize, blob: &[u8]) -> Result<()> {
    check_blob(op, b, n * 8, blob)?;
    let t = &blob[b.offset as usize..(b.offset + b.len) as usize];
    for i in 0..n {
        let (m, s) = kernels::requant_entry(t, i);
        if m < 0
            || !(1..=62).contains(&(t[i * 8 + 4] as i32))
            || s == 0
            || t[i * 8 + 5..i * 8 + 8] != [0, 0, 0]
        {
            return Err(inv(op, "requantization entry out of range"));
        }
    }
    Ok(())
}

fn check_requant(op: u32, r: &Requant) -> Result<()> {
    if r.mult < 0 || !(1..=62).contains(&r.shift) {
        return Err(inv(op, "requantization parameters out of range"));
    }
    Ok(())
}

fn disjoint(op: u32, out: &TRef, ins: &[&TRef]) -> Result<()> {
    let o = range(out);
    for i in ins {
        let r = range(i);
        if r.start < o.end && o.start < r.end && !r.is_empty() && !o.is_empty() {
            return Err(inv(op, "output overlaps an input"));
        }
    }
    Ok(())
}

fn same_numel(op: u32, a: &TRef, b: &TRef) -> Result<()> {
    if a.numel() != b.numel() {
        return Err(inv(op, "element counts differ"));
    }
    Ok(())
}

fn same_rank_broadcast(op: u32, inp: &TRef, out: &TRef) -> Result<()> {
    if inp.shape.len() != out.shape.len() {
        return Err(inv(op, "broadcast ranks differ"));
    }
    for (a, b) in inp.shape.iter().zip(out.shape.iter()) {
        if *a != *b && *a != 1 {
            return Err(inv(op, "input does not broadcast to the output"));
        }
    }
    Ok(())
}

/// Arena scratch a conv needs: im2col matrix (unless pointwise), then the combined int32 bias,
/// 4-aligned.
pub fn conv_scratch_bytes(d: &ConvDims, time_bias: bool, elem: usize) -> usize {
    let col = if d.is_pointwise() {
        0
    } else {
        d.k() * d.p() * elem
    };
    if time_bias {
        col.div_ceil(4) * 4 + 4 * d.co
    } else {
        col
    }
}

/// Geometry of a conv record (shared by validation, execution and the compiler).
pub fn conv_dims(
    op: u32,
    input: &TRef,
    output: &TRef,
    kernel: [u16; 2],
    stride: [u16; 2],
    pad: [u16; 4],
) -> Result<(usize, ConvDims)> {
    if input.shape.len() != 4 || output.shape.len() != 4 || input.shape[0] != output.shape[0] {
        return Err(inv(op, "conv tensors must be NCHW with equal batch"));
    }
    let (kh, kw) = (kernel[0] as usize, kernel[1] as usize);
    let (sh, sw) = (stride[0] as usize, stride[1] as usize);
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(inv(op, "conv kernel and stride must be positive"));
    }
    let (h, w) = (input.shape[2] as usize, input.shape[3] as usize);
    let ph = h + pad[0] as usize + pad[2] as usize;
    let pw = w + pad[1] as usize + pad[3] as usize;
    if ph < kh || pw < kw {
        return Err(inv(op, "conv kernel larger than padded input"));
    }
    // sizes derived from the geometry must stay small (hostile files): k * p and co * k below 2^32
    let k = input.shape[1] as u128 * kh as u128 * kw as u128;
    let p = ((ph - kh) / sh + 1) as u128 * ((pw - kw) / sw + 1) as u128;
    if k * p > u32::MAX as u128 || k * output.shape[1] as u128 > u32::MAX as u128 {
        return Err(inv(op, "conv geometry too large"));
    }
    let d = ConvDims {
        c: input.shape[1] as usize,
        h,
        w,
        co: output.shape[1] as usize,
        kh,
        kw,
        sh,
        sw,
        pt: pad[0] as usize,
        pl: pad[1] as usize,
        oh: (ph - kh) / sh + 1,
        ow: (pw - kw) / sw + 1,
    };
    if d.oh != output.shape[2] as usize || d.ow != output.shape[3] as usize {
        return Err(inv(op, "conv output shape does not match its geometry"));
    }
    Ok((input.shape[0] as usize, d))
}

/// Validates the whole model once. Called by [`Model::load`].
pub(crate) fn validate(model: &Model<'_>) -> Result<()> {
    let m = &model.meta;
    let arena = m.arena_bytes;
    let blob = model.blob;
    check_tref(MODEL, &m.latent, DType::F32, arena)?;
    check_tref(MODEL, &m.output, DType::F32, arena)?;
    if m.latent.numel() != m.output.numel() {
        return Err(inv(MODEL, "latent and output sizes differ"));
    }
    if let Some(t) = &m.timestep {
        check_tref(MODEL, t, DType::F32, arena)?;
    }
    let state_end = (m.sampler_state as u64) + 4 * m.latent.numel() as u64;
    if state_end > arena as u64 || m.sampler_state % ARENA_ALIGN != 0 {
        return Err(inv(MODEL, "sampler state outside the arena"));
    }
    if !(m.t_min.is_finite() && m.t_max.is_finite() && m.t_min <= m.t_max) {
        return Err(inv(MODEL, "calibrated timestep range invalid"));
    }
    let s = &m.sampler;
    if s.num_train_timesteps == 0
        || s.num_train_timesteps > 100_000
        || !(s.beta_start > 0.0 && s.beta_end < 1.0 && s.beta_start <= s.beta_end)
    {
        return Err(inv(MODEL, "noise schedule invalid"));
    }
    if !(s.sigma_min > 0.0
        && s.sigma_min <= s.sigma_max
        && s.sigma_max < 1.0e6
        && s.rho > 0.0
        && s.rho < 100.0)
        || s.schedule.iter().any(|v| !(v.is_finite() && *v >= 0.0))
    {
        return Err(inv(MODEL, "sigma schedule invalid"));
    }
    // Op tensors live below the sampler state, which ends the arena.
    let ops_arena = m.sampler_state;
    for t in [&m.latent, &m.output]
        .into_iter()
        .chain(m.timestep.iter())
        .chain(m.extra_inputs.iter().map(|e| &e.tensor))
    {
        check_tref(MODEL, t, t.dtype, ops_arena)?;
    }
    if m.extra_inputs.iter().any(|e| e.tensor.dtype != DType::F32) {
        return Err(inv(MODEL, "extra inputs must be f32"));
    }
    if let Some(tt) = &m.time_table {
        let blob = model.blob;
        let n = blob_slice(blob, &tt.timesteps)
            .map_err(|_| inv(MODEL, "time table outside the blob"))?
            .len();
        let values =
            blob_slice(blob, &tt.values).map_err(|_| inv(MODEL, "time table outside the blob"))?;
        let skip =
            blob_slice(blob, &tt.skip).map_err(|_| inv(MODEL, "time table outside the blob"))?;
        if n % 4 != 0 || values.len() as u64 != (n / 4) as u64 * tt.row as u64 * 4 {
            return Err(inv(MODEL, "time table sizes"));
        }
        if skip.len() as u64 != m.ops_per_stream as u64 {
            return Err(inv(MODEL, "time table skip list"));
        }
        for o in tt.outputs.iter() {
            if o.op >= m.ops_per_stream || skip[o.op as usize] != 1 || o.at > tt.row {
                return Err(inv(MODEL, "time table output"));
            }
        }
    }
    let streams = m.stream_offsets.len();
    if streams == 0 || m.bucket_upper.len() + 1 != streams {
        return Err(inv(MODEL, "timestep buckets and op streams do not match"));
    }
    if m.invariant_ops > m.ops_per_stream {
        return Err(inv(MODEL, "more invariant ops than ops per stream"));
    }
    if m.invariant_bytes > ops_arena || (m.invariant_ops == 0 && m.invariant_bytes > 0) {
        return Err(inv(MODEL, "invariant outputs outside the arena"));
    }
    if (streams as u64) * m.ops_per_stream as u64 != model.header.n_ops as u64 {
        return Err(inv(MODEL, "op count is not streams x ops per stream"));
    }
    for w in m.bucket_upper.windows(2) {
        if !(w[0] < w[1]) {
            return Err(inv(MODEL, "bucket bounds must ascend"));
        }
    }
    if m.bucket_upper.iter().any(|b| !b.is_finite()) {
        return Err(inv(MODEL, "bucket bound not finite"));
    }
    let mut expected = 0usize;
    let mut i = 0u32;
    for k in 0..streams {
        if m.stream_offsets[k] as usize != expected {
            return Err(inv(MODEL, "op streams are not contiguous"));
        }
        let mut rest = model.ops.get(expected..).ok_or(Error::Truncated)?;
        let before = rest.len();
        for _ in 0..m.ops_per_stream {
            let (op, r) =
                postcard::take_from_bytes::<Op<TRef>>(rest).map_err(|_| Error::Metadata)?;
            rest = r;
            validate_op(i, &op, ops_arena, blob)?;
            i += 1;
        }
        expected += before - rest.len();
    }
    if expected != model.ops.len() {
        return Err(inv(MODEL, "trailing bytes after the op records"));
    }
    Ok(())
}

fn validate_op(i: u32, op: &Op<TRef>, arena: u32, blob: &[u8]) -> Result<()> {
    use DType::{F32, I8};
    match op {
        Op::Quantize { input, output } => {
            check_tref(i, input, F32, arena)?;
            check_int(i, output, arena)?;
            same_numel(i, input, output)?;
            disjoint(i, output, &[input])
        }
        Op::Dequantize { input, output } => {
            check_int(i, input, arena)?;
            check_tref(i, output, F32, arena)?;
            same_numel(i, input, output)?;
            disjoint(i, output, &[input])
        }
        Op::Conv2d {
            input,
            output,
            weight_bits,
            weights,
            bias,
            requant,
            time_bias,
            time_scale,
            kernel,
            stride,
            pad,
            scratch,
        } => {
            check_int(i, input, arena)?;
            check_int(i, output, arena)?;
            disjoint(i, output, &[input])?;
            let (_, d) = conv_dims(i, input, output, *kernel, *stride, *pad)?;
            check_bits(i, *weight_bits)?;
            check_blob(
                i,
                weights,
                scalar::weight_bytes(*weight_bits, d.co, d.k()),
                blob,
            )?;
            check_blob(i, bias, d.co * 4, blob)?;
            check_requant_table(i, requant, d.co, blob)?;
            let mut ins: [&TRef; 2] = [input, input];
            if let Some(tb) = time_bias {
                check_tref(i, tb, F32, arena)?;
                if tb.numel() != d.co {
                    return Err(inv(
                        i,
                        "conv time bias must have one value per output channel",
                    ));
                }
                check_blob(i, time_scale, d.co * 4, blob)?;
                ins[1] = tb;
            }
            let bytes = conv_scratch_bytes(&d, time_bias.is_some(), input.dtype.size());
            if bytes > 0 {
                let end = *scratch as u64 + bytes as u64;
                if end > arena as u64 || *scratch % ARENA_ALIGN != 0 {
                    return Err(inv(i, "conv scratch outside the arena"));
                }
                let s = *scratch as usize..end as usize;
                for t in [output].into_iter().chain(ins) {
                    let r = range(t);
                    if r.start < s.end && s.start < r.end {
                        return Err(inv(i, "conv scratch overlaps a tensor"));
                    }
                }
            }
            Ok(())
        }
        Op::Const { output, data } => {
            let dt = output.dtype;
            check_tref(i, output, dt, arena)?;
            check_blob(i, data, output.bytes(), blob)
        }
        Op::Linear {
            input,
            output,
            geom,
            weight_bits,
            weights,
            bias,
            requant,
        } => {
            check_int(i, input, arena)?;
            check_int(i, output, arena)?;
            disjoint(i, output, &[input])?;
            let (n, k) = (geom.n as usize, geom.k as usize);
            check_linear_geom(i, geom, input, output)?;
            check_bits(i, *weight_bits)?;
            check_blob(i, weights, scalar::weight_bytes(*weight_bits, n, k), blob)?;
            check_blob(i, bias, n * 4, blob)?;
            check_requant_table(i, requant, n, blob)
        }
        Op::MatMul {
            a,
            b,
            output,
            geom,
            requant,
        } => {
            check_tref(i, a, I8, arena)?;
            check_tref(i, b, I8, arena)?;
            check_tref(i, output, I8, arena)?;
            disjoint(i, output, &[a, b])?;
            check_requant(i, requant)?;
            let ext = |d: [u32; 4], s: [u32; 4]| -> u128 {
                if d.iter().any(|&x| x == 0) {
                    return 0;
                }
                (0..4)
                    .map(|j| (d[j] as u128 - 1) * s[j] as u128)
                    .sum::<u128>()
                    + 1
            };
            let [b0, b1] = geom.batch;
            if ext([b0, b1, geom.m, geom.k], geom.a_strides) > a.numel() as u128
                || ext([b0, b1, geom.k, geom.n], geom.b_strides) > b.numel() as u128
                || ext([b0, b1, geom.m, geom.n], geom.o_strides) > output.numel() as u128
            {
                return Err(inv(i, "matmul geometry outside its tensors"));
            }
            Ok(())
        }
        Op::Binary {
            a,
            b,
            output,
            shift,
            mult_a,
            mult_b,
            ..
        } => {
            check_int(i, a, arena)?;
            check_int(i, b, arena)?;
            check_int(i, output, arena)?;
            disjoint(i, output, &[a, b])?;
            same_rank_broadcast(i, a, output)?;
            same_rank_broadcast(i, b, output)?;
            check_requant(
                i,
                &Requant {
                    mult: *mult_a,
                    shift: *shift,
                },
            )?;
            check_requant(
                i,
                &Requant {
                    mult: *mult_b,
                    shift: *shift,
                },
            )
        }
        Op::Lut {
            input,
            output,
            table,
        } => {
            check_int(i, input, arena)?;
            check_int(i, output, arena)?;
            same_numel(i, input, output)?;
            check_blob(i, table, lut_bytes(input.dtype, output.dtype), blob)
        }
        Op::GroupNorm {
            input,
            output,
            groups,
            eps,
            affine,
            in_scales,
        } => {
            check_int(i, input, arena)?;
            check_int(i, output, arena)?;
            disjoint(i, output, &[input])?;
            if input.shape != output.shape || input.shape.len() < 2 {
                return Err(inv(i, "groupnorm shapes"));
            }
            let c = input.shape[1];
            if *groups == 0 || c % groups != 0 || !(eps.is_finite() && *eps >= 0.0) {
                return Err(inv(i, "groupnorm groups or eps"));
            }
            if let Some(sc) = in_scales {
                check_blob(i, sc, c as usize * 4, blob)?;
            }
            check_blob(i, affine, c as usize * 8, blob)
        }
        Op::Softmax {
            input,
            output,
            axis,
            exp_table,
        } => {
            check_tref(i, input, I8, arena)?;
            check_tref(i, output, I8, arena)?;
            disjoint(i, output, &[input])?;
            if input.shape != output.shape || *axis as usize >= input.shape.len() {
                return Err(inv(i, "softmax shapes or axis"));
            }
            check_blob(i, exp_table, 1024, blob)
        }
        Op::Concat {
            inputs,
            output,
            axis,
            requant,
        } => {
            check_int(i, output, arena)?;
            if inputs.len() != requant.len() || inputs.is_empty() {
                return Err(inv(i, "concat inputs and requant tables differ"));
            }
            let mut total = 0u64;
            for (t, r) in inputs.iter().zip(requant.iter()) {
                check_int(i, t, arena)?;
                check_requant(i, r)?;
                disjoint(i, output, &[t])?;
                total += concat_check(i, t, output, *axis)?;
            }
            if total != output.shape[*axis as usize] as u64 {
                return Err(inv(i, "concat sizes do not add up"));
            }
            Ok(())
        }
        Op::FGather {
            index,
            output,
            table,
            rows,
            cols,
        } => {
            check_tref(i, index, F32, arena)?;
            check_tref(i, output, F32, arena)?;
            disjoint(i, output, &[index])?;
            if *rows == 0 || output.numel() as u64 != index.numel() as u64 * *cols as u64 {
                return Err(inv(i, "gather shapes"));
            }
            check_blob(i, table, *rows as usize * *cols as usize * 4, blob)
        }
        Op::FConcat {
            inputs,
            output,
            axis,
        } => {
            check_tref(i, output, F32, arena)?;
            if inputs.is_empty() {
                return Err(inv(i, "concat without inputs"));
            }
            let mut total = 0u64;
            for t in inputs.iter() {
                check_tref(i, t, F32, arena)?;
                disjoint(i, output, &[t])?;
                total += concat_check(i, t, output, *axis)?;
            }
            if total != output.shape[*axis as usize] as u64 {
                return Err(inv(i, "concat sizes do not add up"));
            }
            Ok(())
        }
        Op::Reshape { input, output } => {
            let dt = input.dtype;
            check_tref(i, input, dt, arena)?;
            check_tref(i, output, dt, arena)?;
            same_numel(i, input, output)?;
            disjoint(i, output, &[input])
        }
        Op::Transpose {
            input,
            output,
            perm,
        } => {
            let dt = input.dtype;
            check_tref(i, input, dt, arena)?;
            check_tref(i, output, dt, arena)?;
            disjoint(i, output, &[input])?;
            let r = input.shape.len();
            if perm.len() != r || output.shape.len() != r {
                return Err(inv(i, "transpose rank"));
            }
            let mut seen = [false; MAX_RANK];
            for (o, &p) in perm.iter().enumerate() {
                let p = p as usize;
                if p >= r || seen[p] || output.shape[o] != input.shape[p] {
                    return Err(inv(i, "transpose permutation"));
                }
                seen[p] = true;
            }
            Ok(())
        }
        Op::Slice {
            input,
            output,
            axis,
            start,
        } => {
            let dt = input.dtype;
            check_tref(i, input, dt, arena)?;
            check_tref(i, output, dt, arena)?;
            disjoint(i, output, &[input])?;
            let a = *axis as usize;
            if input.shape.len() != output.shape.len() || a >= input.shape.len() {
                return Err(inv(i, "slice rank or axis"));
            }
            for d in 0..input.shape.len() {
                let ok = if d == a {
                    *start as u64 + output.shape[d] as u64 <= input.shape[d] as u64
                } else {
                    input.shape[d] == output.shape[d]
                };
                if !ok {
                    return Err(inv(i, "slice bounds"));
                }
            }
            Ok(())
        }
        Op::Broadcast { input, output } => {
            let dt = input.dtype;
            check_tref(i, input, dt, arena)?;
            check_tref(i, output, dt, arena)?;
            disjoint(i, output, &[input])?;
            same_rank_broadcast(i, input, output)
        }
        Op::Upsample { input, output } => {
            let dt = input.dtype;
            check_tref(i, input, dt, arena)?;
            check_tref(i, output, dt, arena)?;
            disjoint(i, output, &[input])?;
            if input.shape.len() != output.shape.len() {
                return Err(inv(i, "upsample rank"));
            }
            for (a, b) in input.shape.iter().zip(output.shape.iter()) {
                if *a == 0 || b % a != 0 {
                    return Err(inv(i, "upsample factors must be integers"));
                }
            }
            Ok(())
        }
        Op::FUnary { input, output, .. } => {
            check_tref(i, input, F32, arena)?;
            check_tref(i, output, F32, arena)?;
            same_numel(i, input, output)
        }
        Op::FBinary { a, b, output, .. } => {
            check_tref(i, a, F32, arena)?;
            check_tref(i, b, F32, arena)?;
            check_tref(i, output, F32, arena)?;
            disjoint(i, output, &[a, b])?;
            same_rank_broadcast(i, a, output)?;
            same_rank_broadcast(i, b, output)
        }
        Op::FLinear {
            input,
            output,
            geom,
            weights,
            scales,
            bias,
        } => {
            check_tref(i, input, F32, arena)?;
            check_tref(i, output, F32, arena)?;
            disjoint(i, output, &[input])?;
            let (n, k) = (geom.n as usize, geom.k as usize);
            check_linear_geom(i, geom, input, output)?;
            check_blob(i, weights, n * k, blob)?;
            check_blob(i, scales, n * 4, blob)?;
            check_blob(i, bias, n * 4, blob)
        }
    }
}

fn check_linear_geom(
    i: u32,
    geom: &crate::format::LinearGeom,
    input: &TRef,
    output: &TRef,
) -> Result<()> {
    let (m, n, k) = (geom.m as u128, geom.n as u128, geom.k as u128);
    if m > 0 && n > 0 && k > 0 {
        let a_ext = (m - 1) * geom.a_strides[0] as u128 + (k - 1) * geom.a_strides[1] as u128 + 1;
        let o_ext = (m - 1) * geom.o_strides[0] as u128 + (n - 1) * geom.o_strides[1] as u128 + 1;
        if a_ext > input.numel() as u128 || o_ext > output.numel() as u128 {
            return Err(inv(i, "linear geometry outside its tensors"));
        }
    }
    if n * k > u32::MAX as u128 {
        return Err(inv(i, "linear weights too large"));
    }
    Ok(())
}

fn concat_check(i: u32, t: &TRef, output: &TRef, axis: u8) -> Result<u64> {
    let a = axis as usize;
    if t.shape.len() != output.shape.len() || a >= t.shape.len() {
        return Err(inv(i, "concat rank or axis"));
    }
    for d in 0..t.shape.len() {
        if d != a && t.shape[d] != output.shape[d] {
            return Err(inv(i, "concat shapes"));
        }
    }
    Ok(t.shape[a] as u64)
}

/// The arena split for one op: up to two mutable regions (output, scratch), the rest readable.
struct Io<'a> {
    pieces: [(usize, &'a [u8]); 3],
}

impl<'a> Io<'a> {
    fn get(&self, r: Range<usize>) -> Result<&'a [u8]> {
        for (start, p) in self.pieces.iter() {
            if r.start >= *start && r.end <= start + p.len() {
                return Ok(&p[r.start - start..r.end - start]);
            }
        }
        Err(Error::Invalid {
            op: MODEL,
            what: "input overlaps the output or leaves the arena",
        })
    }
    fn i8(&self, t: &TRef) -> Result<&'a [i8]> {
        Ok(bytemuck::cast_slice(self.get(range(t))?))
    }
    fn f32(&self, t: &TRef) -> Result<&'a [f32]> {
        bytemuck::try_cast_slice(self.get(range(t))?)
            .map_err(|_| Error::Arena { needed: 0, got: 0 })
    }
}

fn carve<'a>(
    arena: &'a mut [u8],
    a: Range<usize>,
    b: Option<Range<usize>>,
) -> Result<(&'a mut [u8], Option<&'a mut [u8]>, Io<'a>)> {
    let bad = Error::Invalid {
        op: MODEL,
        what: "tensor outside the arena",
    };
    if a.end > arena.len() || a.start > a.end {
        return Err(bad);
    }
    match b {
        None => {
            let (p0, rest) = arena.split_at_mut(a.start);
            let (m0, p1) = rest.split_at_mut(a.end - a.start);
            Ok((
                m0,
                None,
                Io {
                    pieces: [(0, p0), (a.end, p1), (0, &[])],
                },
            ))
        }
        Some(b) => {
            if b.end > arena.len() || b.start > b.end || (b.start < a.end && a.start < b.end) {
                return Err(bad);
            }
            let swap = b.start < a.start;
            let (first, second) = if swap {
                (b.clone(), a.clone())
            } else {
                (a.clone(), b.clone())
            };
            let (p0, rest) = arena.split_at_mut(first.start);
            let (m0, rest) = rest.split_at_mut(first.end - first.start);
            let (p1, rest) = rest.split_at_mut(second.start - first.end);
            let (m1, p2) = rest.split_at_mut(second.end - second.start);
            let io = Io {
                pieces: [(0, p0), (first.end, p1), (second.end, p2)],
            };
            if swap {
                Ok((m1, Some(m0), io))
            } else {
                Ok((m0, Some(m1), io))
            }
        }
    }
}

fn out_i8(o: &mut [u8]) -> &mut [i8] {
    bytemuck::cast_slice_mut(o)
}

fn out_f32(o: &mut [u8]) -> Result<&mut [f32]> {
    bytemuck::try_cast_slice_mut(o).map_err(|_| Error::Arena { needed: 0, got: 0 })
}

fn blob_slice<'b>(blob: &'b [u8], b: &BlobRef) -> Result<&'b [u8]> {
    crate::format::section(blob, (b.offset, b.len))
}

/// Runs one op. Every access is checked; a validated model never fails here.
/// Integer activation views (int8, or int16 for protected tensors).
enum Ints<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
}

enum IntsMut<'a> {
    I8(&'a mut [i8]),
    I16(&'a mut [i16]),
}

impl<'a> Io<'a> {
    fn ints(&self, t: &TRef) -> Result<Ints<'a>> {
        let b = self.get(range(t))?;
        match t.dtype {
            DType::I8 => Ok(Ints::I8(bytemuck::cast_slice(b))),
            DType::I16 => Ok(Ints::I16(
                bytemuck::try_cast_slice(b).map_err(|_| Error::Arena { needed: 0, got: 0 })?,
            )),
            DType::F32 => Err(Error::Invalid {
                op: MODEL,
                what: "expected an integer tensor",
            }),
        }
    }
}

fn out_ints(o: &mut [u8], dt: DType) -> Result<IntsMut<'_>> {
    match dt {
        DType::I8 => Ok(IntsMut::I8(bytemuck::cast_slice_mut(o))),
        DType::I16 => Ok(IntsMut::I16(
            bytemuck::try_cast_slice_mut(o).map_err(|_| Error::Arena { needed: 0, got: 0 })?,
        )),
        DType::F32 => Err(Error::Invalid {
            op: MODEL,
            what: "expected an integer tensor",
        }),
    }
}

/// Runs `$body` with `$x` bound to the typed input slice and `$y` to the typed output slice.
macro_rules! with_io {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            (Ints::I8($x), IntsMut::I8($y)) => $body,
            (Ints::I8($x), IntsMut::I16($y)) => $body,
            (Ints::I16($x), IntsMut::I8($y)) => $body,
            (Ints::I16($x), IntsMut::I16($y)) => $body,
        }
    };
}

macro_rules! with_in {
    ($a:expr, |$x:ident| $body:expr) => {
        match $a {
            Ints::I8($x) => $body,
            Ints::I16($x) => $body,
        }
    };
}

macro_rules! with_out {
    ($a:expr, |$y:ident| $body:expr) => {
        match $a {
            IntsMut::I8($y) => $body,
            IntsMut::I16($y) => $body,
        }
    };
}

/// Entries `r0..r0 + nr` of a per-row table with `size` bytes per entry (bias, requantization).
fn row_entries(b: &[u8], r0: usize, nr: usize, size: usize) -> Result<&[u8]> {
    b.get(r0 * size..(r0 + nr) * size)
        .ok_or(Error::BufferLength {
            expected: (r0 + nr) * size,
            got: b.len(),
        })
}

#[allow(clippy::too_many_arguments)]
fn conv_typed<T: scalar::Code, U: scalar::Code>(
    ex: kernels::Exec,
    x: &[T],
    o: &mut [U],
    col: &mut [u8],
    n: usize,
    d: &ConvDims,
    zx: i32,
    w: scalar::Weights<'_>,
    bias: &[u8],
    rq: &[u8],
    zo: i32,
) -> Result<()> {
    let (isz, osz) = (d.c * d.h * d.w, d.co * d.p());
    if x.len() != n * isz || o.len() != n * osz {
        return Err(Error::BufferLength {
            expected: n * isz,
            got: x.len(),
        });
    }
    // SIMD tiers: int8 input, int8 weights -> dot products over k, of a transposed im2col in scratch
    // or, for 1×1 convs, of the input read in place
    if let (true, scalar::Weights::I8(w8)) = (ex.tier != kernels::Tier::Scalar && T::MAX <= 127, w)
    {
        let (k, p) = (d.k(), d.p());
        kernels::check_len(d.co * k, w8.len())?;
        let got = col.len();
        let col8: &mut [i8] = bytemuck::cast_slice_mut(col);
        let x8: &[i8] = bytemuck::cast_slice(x);
        for b in 0..n {
            let xb = &x8[b * isz..(b + 1) * isz];
            let src: &[i8] = if d.is_pointwise() {
                xb
            } else {
                let col8 = col8.get_mut(..k * p).ok_or(Error::BufferLength {
                    expected: k * p,
                    got,
                })?;
                let zx8 = zx.clamp(-128, 127) as i8;
                // pixel ranges of the transposed im2col on the worker threads too (a copy: weighed
                // as a few multiply-accumulates per byte against the threading threshold)
                ex.par_rows(p, k, k * p * 8, col8, |p0, _, part| {
                    scalar::im2col_t_rows(xb, d, zx8, p0, part)
                })?;
                col8
            };
            // output channels split across threads (std): each runs the same kernel on its rows
            ex.par_rows(
                d.co,
                p,
                d.co * k * p,
                &mut o[b * osz..(b + 1) * osz],
                |r0, nr, part| {
                    scalar::conv_dot(
                        ex.tier,
                        &w8[r0 * k..(r0 + nr) * k],
                        src,
                        !d.is_pointwise(),
                        nr,
                        k,
                        p,
                        row_entries(bias, r0, nr, 4)?,
                        row_entries(rq, r0, nr, 8)?,
                        zo,
                        part,
                    )
                },
            )?;
        }
        return Ok(());
    }
    let col: &mut [T] =
        bytemuck::try_cast_slice_mut(col).map_err(|_| Error::Arena { needed: 0, got: 0 })?;
    let zx = T::sat(zx as i64);
    if ex.threads <= 1 {
        for b in 0..n {
            scalar::conv2d(
                &x[b * isz..(b + 1) * isz],
                d,
                zx,
                w,
                bias,
                rq,
                zo,
                col,
                &mut o[b * osz..(b + 1) * osz],
            )?;
        }
        return Ok(());
    }
    // threads: the im2col once, then output channels across the workers (what conv2d computes)
    let (k, p) = (d.k(), d.p());
    let got = col.len();
    let col = col.get_mut(..k * p).ok_or(Error::BufferLength {
        expected: k * p,
        got,
    })?;
    for b in 0..n {
        let xb = &x[b * isz..(b + 1) * isz];
        let src: &[T] = if d.is_pointwise() {
            xb
        } else {
            scalar::im2col(xb, d, zx, col)?;
            col
        };
        ex.par_rows(
            d.co,
            p,
            d.co * k * p,
            &mut o[b * osz..(b + 1) * osz],
            |r0, nr, part| {
                scalar::gemm_wk_kp(
                    w.rows(r0, nr, k)?,
                    src,
                    nr,
                    k,
                    p,
                    row_entries(bias, r0, nr, 4)?,
                    row_entries(rq, r0, nr, 8)?,
                    zo,
                    part,
                )
            },
        )?;
    }
    Ok(())
}

/// Runs one op with the scalar reference kernels. Every access is checked; a validated model never
/// fails here.
pub fn run_op(op: &Op<TRef>, arena: &mut [u8], blob: &[u8]) -> Result<()> {
    run_op_with(kernels::Tier::Scalar, op, arena, blob)
}

/// Runs one op with the kernels of `tier` (bit-identical to [`run_op`]).
pub fn run_op_with(
    tier: kernels::Tier,
    op: &Op<TRef>,
    arena: &mut [u8],
    blob: &[u8],
) -> Result<()> {
    run_op_exec(kernels::Exec { tier, threads: 1 }, op, arena, blob)
}

/// Runs one op with the kernels of `ex.tier` on up to `ex.threads` threads (bit-identical to
/// [`run_op`] for every tier and thread count).
pub fn run_op_exec(ex: kernels::Exec, op: &Op<TRef>, arena: &mut [u8], blob: &[u8]) -> Result<()> {
    let tier = ex.tier;
    match op {
        Op::Quantize { input, output } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let x = io.f32(input)?;
            with_out!(out_ints(o, output.dtype)?, |y| scalar::quantize(
                x,
                output.scale,
                output.zero,
                y
            ))
        }
        Op::Dequantize { input, output } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let y = out_f32(o)?;
            with_in!(io.ints(input)?, |x| scalar::dequantize(
                x,
                input.scale,
                input.zero,
                y
            ))
        }
        Op::Conv2d {
            input,
            output,
            weight_bits,
            weights,
            bias,
            requant,
            time_bias,
            time_scale,
            kernel,
            stride,
            pad,
            scratch,
        } => {
            let (n, d) = conv_dims(0, input, output, *kernel, *stride, *pad)?;
            let bytes = conv_scratch_bytes(&d, time_bias.is_some(), input.dtype.size());
            let sr = if bytes > 0 {
                Some(*scratch as usize..*scratch as usize + bytes)
            } else {
                None
            };
            let (o, s, io) = carve(arena, range(output), sr)?;
            let mut empty: [u8; 0] = [];
            let s = s.unwrap_or(&mut empty[..]);
            let w = scalar::Weights::from_blob(*weight_bits, blob_slice(blob, weights)?);
            let (mut bias, rq) = (blob_slice(blob, bias)?, blob_slice(blob, requant)?);
            let col_bytes = bytes - if time_bias.is_some() { 4 * d.co } else { 0 };
            let (col, bias_buf) = s.split_at_mut(col_bytes.min(s.len()));
            if let Some(tb) = time_bias {
                let tb = io.f32(tb)?;
                let ts = blob_slice(blob, time_scale)?;
                kernels::check_len(4 * d.co, bias_buf.len())?;
                kernels::check_len(d.co, tb.len())?;
                kernels::check_len(4 * d.co, ts.len())?;
                for c in 0..d.co {
                    let add =
                        libm::rintf(tb[c] * kernels::le_f32(ts, c)).clamp(-1.0e9, 1.0e9) as i32;
                    let v = kernels::le_i32(bias, c).wrapping_add(add);
                    bias_buf[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes());
                }
                bias = bias_buf;
            }
            with_io!(io.ints(input)?, out_ints(o, output.dtype)?, |x, y| {
                conv_typed(ex, x, y, col, n, &d, input.zero, w, bias, rq, output.zero)
            })
        }
        Op::Const { output, data } => {
            let (o, _, _) = carve(arena, range(output), None)?;
            let d = blob_slice(blob, data)?;
            kernels::check_len(o.len(), d.len())?;
            o.copy_from_slice(d);
            Ok(())
        }
        Op::Linear {
            input,
            output,
            geom,
            weight_bits,
            weights,
            bias,
            requant,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let w = scalar::Weights::from_blob(*weight_bits, blob_slice(blob, weights)?);
            let (bias, rq) = (blob_slice(blob, bias)?, blob_slice(blob, requant)?);
            let (m, n, k) = (geom.m as usize, geom.n as usize, geom.k as usize);
            let a_s = [geom.a_strides[0] as usize, geom.a_strides[1] as usize];
            let o_s = [geom.o_strides[0] as usize, geom.o_strides[1] as usize];
            // SIMD tiers: int8 input rows (strided ones packed) and int8 weights -> dot products
            if let (true, Ints::I8(x), scalar::Weights::I8(w8)) =
                (tier != kernels::Tier::Scalar, io.ints(input)?, w)
            {
                let macs = m * n * k;
                return with_out!(out_ints(o, output.dtype)?, |y| {
                    if o_s[1] == 1 && o_s[0] >= n {
                        // rows of the output (tokens) split across threads
                        ex.par_rows(m, o_s[0], macs, y, |r0, nr, part| {
                            let a = x.get(r0 * a_s[0]..).ok_or(Error::BufferLength {
                                expected: r0 * a_s[0],
                                got: x.len(),
                            })?;
                            scalar::linear_dot(
                                tier,
                                a,
                                nr,
                                n,
                                k,
                                a_s,
                                o_s,
                                w8,
                                bias,
                                rq,
                                output.zero,
                                part,
                            )
                        })
                    } else if o_s[0] == 1 && o_s[1] >= m {
                        // channel-major output: output channels split across threads
                        kernels::check_len(n * k, w8.len())?;
                        kernels::check_len(n * 4, bias.len())?;
                        kernels::check_len(n * 8, rq.len())?;
                        ex.par_rows(n, o_s[1], macs, y, |r0, nr, part| {
                            scalar::linear_dot(
                                tier,
                                x,
                                m,
                                nr,
                                k,
                                a_s,
                                o_s,
                                &w8[r0 * k..(r0 + nr) * k],
                                &bias[r0 * 4..(r0 + nr) * 4],
                                &rq[r0 * 8..(r0 + nr) * 8],
                                output.zero,
                                part,
                            )
                        })
                    } else {
                        scalar::linear_dot(tier, x, m, n, k, a_s, o_s, w8, bias, rq, output.zero, y)
                    }
                });
            }
            with_io!(io.ints(input)?, out_ints(o, output.dtype)?, |x, y| {
                scalar::linear(x, m, n, k, a_s, o_s, w, bias, rq, output.zero, y)
            })
        }
        Op::MatMul {
            a,
            b,
            output,
            geom,
            requant,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let u = |s: [u32; 4]| [s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize];
            let d = MatMulDims {
                batch: [geom.batch[0] as usize, geom.batch[1] as usize],
                m: geom.m as usize,
                n: geom.n as usize,
                k: geom.k as usize,
                a_s: u(geom.a_strides),
                b_s: u(geom.b_strides),
                o_s: u(geom.o_strides),
            };
            scalar::matmul(
                tier,
                io.i8(a)?,
                a.zero,
                io.i8(b)?,
                b.zero,
                &d,
                requant.mult,
                requant.shift,
                output.zero,
                out_i8(o),
            )
        }
        Op::Binary {
            kind,
            a,
            b,
            output,
            mult_a,
            mult_b,
            shift,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (od, r) = dims(output);
            let (ad, _) = dims(a);
            let (bd, _) = dims(b);
            let sa = kernels::broadcast_strides(&ad[..r], &od[..r])?;
            let sb = kernels::broadcast_strides(&bd[..r], &od[..r])?;
            let so = kernels::contiguous_strides(&od[..r]);
            let yb = io.ints(b)?;
            with_io!(io.ints(a)?, out_ints(o, output.dtype)?, |x, y| with_in!(
                yb,
                |z| scalar::binary(
                    *kind,
                    x,
                    a.zero,
                    &sa,
                    z,
                    b.zero,
                    &sb,
                    &od[..r],
                    &so,
                    *mult_a,
                    *mult_b,
                    *shift,
                    output.zero,
                    y
                )
            ))
        }
        Op::Lut {
            input,
            output,
            table,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let t = blob_slice(blob, table)?;
            match (io.ints(input)?, out_ints(o, output.dtype)?) {
                (Ints::I8(x), IntsMut::I8(y)) => scalar::lut(x, t, y),
                (Ints::I8(x), IntsMut::I16(y)) => scalar::lut_8_16(x, t, y),
                (Ints::I16(x), IntsMut::I8(y)) => scalar::lut_16(x, t, y),
                (Ints::I16(x), IntsMut::I16(y)) => scalar::lut_16(x, t, y),
            }
        }
        Op::GroupNorm {
            input,
            output,
            groups,
            eps,
            affine,
            in_scales,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (d, r) = dims(input);
            if r < 2 {
                return Err(Error::Unsupported("groupnorm rank"));
            }
            let s: usize = d[2..r].iter().product();
            let aff = blob_slice(blob, affine)?;
            let sc = match in_scales {
                Some(b) => Some(blob_slice(blob, b)?),
                None => None,
            };
            with_io!(io.ints(input)?, out_ints(o, output.dtype)?, |x, y| {
                scalar::group_norm(
                    x,
                    d[0],
                    d[1],
                    s,
                    *groups as usize,
                    input.zero,
                    input.scale,
                    sc,
                    *eps,
                    aff,
                    output.scale,
                    output.zero,
                    y,
                )
            })
        }
        Op::Softmax {
            input,
            output,
            axis,
            exp_table,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (d, r) = dims(input);
            let a = (*axis as usize).min(r.saturating_sub(1));
            let outer: usize = d[..a].iter().product();
            let inner: usize = d[a + 1..r].iter().product();
            scalar::softmax(
                io.i8(input)?,
                outer,
                d[a],
                inner,
                blob_slice(blob, exp_table)?,
                out_i8(o),
            )
        }
        Op::Concat {
            inputs,
            output,
            axis,
            requant,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let mut o = out_ints(o, output.dtype)?;
            let (od, r) = dims(output);
            let so = kernels::contiguous_strides(&od[..r]);
            let a = (*axis as usize).min(MAX_RANK - 1);
            let mut at = 0usize;
            for (t, rq) in inputs.iter().zip(requant.iter()) {
                let (td, _) = dims(t);
                let st = kernels::contiguous_strides(&td[..r]);
                let (z, zo, m, s) = (
                    t.zero as i64,
                    output.zero as i64,
                    rq.mult as i64,
                    rq.shift.clamp(1, 62),
                );
                let base = at * so[a];
                let xin = io.ints(t)?;
                with_io!(xin, &mut o, |x, y| scalar::strided_map(
                    x,
                    &td[..r],
                    &st,
                    0,
                    y,
                    &so,
                    base,
                    |v| {
                        scalar::Code::sat(
                            kernels::round_shift((scalar::Code::get(v) as i64 - z) * m, s) + zo,
                        )
                    }
                ))?;
                at += td[a];
            }
            Ok(())
        }
        Op::FGather {
            index,
            output,
            table,
            rows,
            cols,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let o = out_f32(o)?;
            let idx = io.f32(index)?;
            let tab = blob_slice(blob, table)?;
            let (rows, cols) = (*rows as usize, *cols as usize);
            kernels::check_len(idx.len() * cols, o.len())?;
            kernels::check_len(rows * cols * 4, tab.len())?;
            for (k, &v) in idx.iter().enumerate() {
                let r = libm::rintf(v);
                if !(r >= 0.0 && (r as usize) < rows) {
                    return Err(Error::Unsupported(
                        "gather index (class label) out of range",
                    ));
                }
                let r = r as usize;
                for c in 0..cols {
                    o[k * cols + c] = kernels::le_f32(tab, r * cols + c);
                }
            }
            Ok(())
        }
        Op::FConcat {
            inputs,
            output,
            axis,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let o = out_f32(o)?;
            let (od, r) = dims(output);
            let so = kernels::contiguous_strides(&od[..r]);
            let a = (*axis as usize).min(MAX_RANK - 1);
            let mut at = 0usize;
            for t in inputs.iter() {
                let (td, _) = dims(t);
                let st = kernels::contiguous_strides(&td[..r]);
                scalar::strided_map(io.f32(t)?, &td[..r], &st, 0, o, &so, at * so[a], |v: f32| v)?;
                at += td[a];
            }
            Ok(())
        }
        Op::Reshape { input, output } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let x = io.get(range(input))?;
            if x.len() != o.len() {
                return Err(Error::BufferLength {
                    expected: o.len(),
                    got: x.len(),
                });
            }
            o.copy_from_slice(x);
            Ok(())
        }
        Op::Transpose {
            input,
            output,
            perm,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (id, r) = dims(input);
            let (od, _) = dims(output);
            let si = kernels::contiguous_strides(&id[..r]);
            let mut sp = [0usize; MAX_RANK];
            for (k, &p) in perm.iter().enumerate().take(r) {
                sp[k] = si[(p as usize).min(MAX_RANK - 1)];
            }
            let so = kernels::contiguous_strides(&od[..r]);
            gather(input.dtype, &io, input, o, &od[..r], &sp, 0, &so)
        }
        Op::Slice {
            input,
            output,
            axis,
            start,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (id, r) = dims(input);
            let (od, _) = dims(output);
            let si = kernels::contiguous_strides(&id[..r]);
            let so = kernels::contiguous_strides(&od[..r]);
            let base = (*start as usize).saturating_mul(si[(*axis as usize).min(MAX_RANK - 1)]);
            gather(input.dtype, &io, input, o, &od[..r], &si, base, &so)
        }
        Op::Broadcast { input, output } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (id, r) = dims(input);
            let (od, _) = dims(output);
            let si = kernels::broadcast_strides(&id[..r], &od[..r])?;
            let so = kernels::contiguous_strides(&od[..r]);
            gather(input.dtype, &io, input, o, &od[..r], &si, 0, &so)
        }
        Op::Upsample { input, output } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (id, r) = dims(input);
            let (od, _) = dims(output);
            match input.dtype {
                DType::I8 => scalar::upsample(io.i8(input)?, &id[..r], out_i8(o), &od[..r]),
                DType::I16 => {
                    let x: &[i16] = bytemuck::try_cast_slice(io.get(range(input))?)
                        .map_err(|_| Error::Arena { needed: 0, got: 0 })?;
                    let y: &mut [i16] = bytemuck::try_cast_slice_mut(o)
                        .map_err(|_| Error::Arena { needed: 0, got: 0 })?;
                    scalar::upsample(x, &id[..r], y, &od[..r])
                }
                DType::F32 => scalar::upsample(io.f32(input)?, &id[..r], out_f32(o)?, &od[..r]),
            }
        }
        Op::FUnary {
            input,
            output,
            func,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let x = io.f32(input)?;
            let o = out_f32(o)?;
            kernels::check_len(x.len(), o.len())?;
            for (d, &v) in o.iter_mut().zip(x) {
                *d = scalar::unary_f32(*func, v);
            }
            Ok(())
        }
        Op::FBinary { a, b, output, func } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let (od, r) = dims(output);
            let (ad, _) = dims(a);
            let (bd, _) = dims(b);
            let sa = kernels::broadcast_strides(&ad[..r], &od[..r])?;
            let sb = kernels::broadcast_strides(&bd[..r], &od[..r])?;
            let so = kernels::contiguous_strides(&od[..r]);
            let (x, y, o) = (io.f32(a)?, io.f32(b)?, out_f32(o)?);
            let shape = &od[..r];
            if kernels::extent(shape, &sa, 0) > x.len()
                || kernels::extent(shape, &sb, 0) > y.len()
                || kernels::extent(shape, &so, 0) > o.len()
            {
                return Err(Error::BufferLength {
                    expected: 0,
                    got: 0,
                });
            }
            kernels::walk(shape, [&sa, &sb, &so], [0, 0, 0], |[i, j, k]| {
                o[k] = scalar::binary_f32(*func, x[i], y[j])
            });
            Ok(())
        }
        Op::FLinear {
            input,
            output,
            geom,
            weights,
            scales,
            bias,
        } => {
            let (o, _, io) = carve(arena, range(output), None)?;
            let w: &[i8] = bytemuck::cast_slice(blob_slice(blob, weights)?);
            scalar::linear_f32(
                io.f32(input)?,
                geom.m as usize,
                geom.n as usize,
                geom.k as usize,
                [geom.a_strides[0] as usize, geom.a_strides[1] as usize],
                [geom.o_strides[0] as usize, geom.o_strides[1] as usize],
                w,
                blob_slice(blob, scales)?,
                blob_slice(blob, bias)?,
                out_f32(o)?,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn gather(
    dt: DType,
    io: &Io<'_>,
    input: &TRef,
    o: &mut [u8],
    shape: &[usize],
    si: &[usize; MAX_RANK],
    base: usize,
    so: &[usize; MAX_RANK],
) -> Result<()> {
    match dt {
        DType::I8 => {
            scalar::strided_map(io.i8(input)?, shape, si, base, out_i8(o), so, 0, |v: i8| v)
        }
        DType::I16 => {
            let x: &[i16] = bytemuck::try_cast_slice(io.get(range(input))?)
                .map_err(|_| Error::Arena { needed: 0, got: 0 })?;
            let y: &mut [i16] =
                bytemuck::try_cast_slice_mut(o).map_err(|_| Error::Arena { needed: 0, got: 0 })?;
            scalar::strided_map(x, shape, si, base, y, so, 0, |v: i16| v)
        }
        DType::F32 => scalar::strided_map(
            io.f32(input)?,
            shape,
            si,
            base,
            out_f32(o)?,
            so,
            0,
            |v: f32| v,
        ),
    }
}

/// An executable pairing of a validated model and a caller-owned arena.
pub struct Session<'m, 'a, 'r> {
    model: &'m Model<'a>,
    /// Where the op tensors live.
    arena: &'r mut [u8],
    /// The sampler's f32 scratch (latent-sized), carved from the end of the arena.
    state: &'r mut [f32],
    /// Kernel tier (detected from the CPU) and worker threads.
    ex: kernels::Exec,
    /// Values of the model's extra inputs (see [`Session::set_input`]).
    extras: [Option<&'r [f32]>; crate::format::MAX_EXTRA_INPUTS],
    /// Their values for the unconditional pass of classifier-free guidance.
    uncond: [Option<&'r [f32]>; crate::format::MAX_EXTRA_INPUTS],
    /// Guidance scale and its scratch: the unconditional output, then (if long enough) the stash
    /// of the other input set's invariant outputs.
    guidance: Option<(f32, &'r mut [f32])>,
    /// What the arena and the stash hold of the invariant ops' outputs.
    cache: InvariantCache,
}

/// Which (stream, input set) the outputs of the invariant ops (see `ModelMeta::invariant_ops`) in
/// the arena and in the guidance stash belong to — stream 0 for all when every stream shares those
/// ops; input set 0 is the conditional one, 1 the unconditional — and how often they were computed.
#[derive(Debug, Clone, Copy, Default)]
struct InvariantCache {
    live: Option<(usize, u8)>,
    stash: Option<(usize, u8)>,
    computed: u32,
}

impl InvariantCache {
    fn clear(&mut self) {
        self.live = None;
        self.stash = None;
    }
}

impl<'m, 'a, 'r> Session<'m, 'a, 'r> {
    /// Checks the arena (size from the file, 16-byte alignment) once.
    pub fn new(model: &'m Model<'a>, arena: &'r mut [u8]) -> Result<Self> {
        let needed = model.meta.arena_bytes;
        if arena.len() < needed as usize || (arena.as_ptr() as usize) % ARENA_ALIGN as usize != 0 {
            return Err(Error::Arena {
                needed,
                got: arena.len(),
            });
        }
        let split = model.meta.sampler_state as usize;
        let n = model.meta.latent.numel();
        let (ops, rest) = arena.split_at_mut(split);
        let state = rest
            .get_mut(..n * 4)
            .ok_or(Error::Arena { needed, got: split })?;
        let state =
            bytemuck::try_cast_slice_mut(state).map_err(|_| Error::Arena { needed, got: split })?;
        Ok(Session {
            model,
            arena: ops,
            state,
            ex: kernels::Exec {
                tier: kernels::Tier::detect(),
                threads: 1,
            },
            extras: [None; crate::format::MAX_EXTRA_INPUTS],
            uncond: [None; crate::format::MAX_EXTRA_INPUTS],
            guidance: None,
            cache: InvariantCache::default(),
        })
    }

    /// Sets the values of an extra model input (a condition or an embedding) by its ONNX name; they
    /// are copied into the arena before every evaluation, so one call serves a whole generation.
    pub fn set_input(&mut self, name: &str, values: &'r [f32]) -> Result<()> {
        let k = self.extra_index(name, values)?;
        self.extras[k] = Some(values);
        self.cache.clear();
        Ok(())
    }

    /// Sets the value an extra input takes in the unconditional pass of classifier-free guidance
    /// (an empty-prompt embedding, a null class label); inputs not set here keep their
    /// [`Session::set_input`] value in both passes.
    pub fn set_uncond_input(&mut self, name: &str, values: &'r [f32]) -> Result<()> {
        let k = self.extra_index(name, values)?;
        self.uncond[k] = Some(values);
        self.cache.clear();
        Ok(())
    }

    /// Classifier-free guidance for [`Session::sample`]: every step evaluates the model with the
    /// conditional and the unconditional inputs — same timestep, same op stream, same time path — and
    /// the sampler takes `uncond + scale · (cond - uncond)`. `scratch` holds the unconditional
    /// output and, when it has [`Model::guidance_scratch_len`] elements, the unconditional outputs
    /// of the invariant ops too, so that both input sets' keys and values are computed once per
    /// generation; a latent-sized `scratch` recomputes them once per step instead. Needs at least
    /// one [`Session::set_uncond_input`].
    pub fn set_guidance(&mut self, scale: f32, scratch: &'r mut [f32]) -> Result<()> {
        let n = self.model.meta.output.numel();
        if scratch.len() != n && scratch.len() != self.model.guidance_scratch_len() {
            kernels::check_len(self.model.guidance_scratch_len(), scratch.len())?;
        }
        if !scale.is_finite() {
            return Err(Error::Unsupported("the guidance scale must be finite"));
        }
        self.guidance = Some((scale, scratch));
        self.cache.clear();
        Ok(())
    }

    /// How many times this session has computed the invariant ops (see
    /// `ModelMeta::invariant_ops`): once per generation and input set when they are cached.
    pub fn invariant_computations(&self) -> u32 {
        self.cache.computed
    }

    fn extra_index(&self, name: &str, values: &[f32]) -> Result<usize> {
        let inputs = &self.model.meta.extra_inputs;
        let k = inputs
            .iter()
            .position(|e| e.name.as_str() == name)
            .ok_or(Error::Unsupported(
                "the model has no extra input of that name",
            ))?;
        kernels::check_len(inputs[k].tensor.numel(), values.len())?;
        Ok(k)
    }

    pub fn model(&self) -> &'m Model<'a> {
        self.model
    }

    /// The kernel tier this session runs.
    pub fn tier(&self) -> kernels::Tier {
        self.ex.tier
    }

    /// The worker threads the kernels may use.
    pub fn threads(&self) -> usize {
        self.ex.threads
    }

    /// Splits the large convolutions and linears across `threads` threads (the calling one
    /// and `threads - 1` workers that spin between ops), at most one per core: more would only wait
    /// for each other. The output is the same bits for every count. Without std the runtime runs on
    /// the calling core whatever this says.
    pub fn with_threads(mut self, threads: usize) -> Self {
        #[cfg(feature = "std")]
        {
            extern crate std;
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            self.ex.threads = threads.clamp(1, cores);
        }
        #[cfg(not(feature = "std"))]
        {
            let _ = threads;
            self.ex.threads = 1;
        }
        self
    }

    /// Runs with another tier (if this CPU supports it; otherwise keeps the detected one). Every tier
    /// gives the same bits.
    pub fn with_tier(mut self, tier: kernels::Tier) -> Self {
        if tier.supported() {
            self.ex.tier = tier;
        }
        self
    }

    /// Writes the inputs into the arena without running (for [`Session::run_ops`]).
    pub fn prepare(&mut self, latent: &[f32], t: f32) -> Result<()> {
        let meta = &self.model.meta;
        kernels::check_len(meta.latent.numel(), latent.len())?;
        region(self.arena, &meta.latent)?.copy_from_slice(latent);
        if let Some(ts) = &meta.timestep {
            region(self.arena, ts)?.fill(t);
        }
        Ok(())
    }

    /// One evaluation of the denoiser: `out = model(latent, t)`. No allocation; never panics.
    pub fn run(&mut self, latent: &[f32], t: f32, out: &mut [f32]) -> Result<()> {
        run_with(
            self.ex,
            self.model,
            &self.model.meta,
            self.arena,
            self.model.blob,
            (&self.extras, &mut self.cache, 0, None),
            latent,
            t,
            out,
        )
    }

    /// Runs the op records on whatever the arena holds; `observe(index, op)` is called after each
    /// (for profiling).
    pub fn run_ops(
        &mut self,
        stream: usize,
        mut observe: impl FnMut(u32, &Op<TRef>),
    ) -> Result<()> {
        let blob = self.model.blob;
        self.cache.clear();
        for (i, op) in self.model.stream_ops(stream).enumerate() {
            let op = op?;
            run_op_exec(self.ex, &op, self.arena, blob).map_err(|e| match e {
                Error::Invalid { what, .. } => Error::Invalid { op: i as u32, what },
                e => e,
            })?;
            observe(i as u32, &op);
        }
        Ok(())
    }

    /// Runs a whole sampler on the device: `x` holds the initial noise on entry and the sample on exit.
    /// Timesteps come from the model's schedule (see [`crate::sampler::timesteps`]).
    pub fn sample(
        &mut self,
        kind: crate::SamplerKind,
        steps: u32,
        x: &mut [f32],
        rng: &mut crate::sampler::Rng,
    ) -> Result<()> {
        self.sample_observed(kind, steps, x, rng, |_| {})
    }

    /// [`Session::sample`] that calls `mark(i)` when step `i` begins (before its model evaluation)
    /// and `mark(steps)` after the last step, so `mark(i + 1) - mark(i)` brackets step `i`: its
    /// evaluation and its sampler update. For latency harnesses; the sample is the same.
    pub fn sample_observed(
        &mut self,
        kind: crate::SamplerKind,
        steps: u32,
        x: &mut [f32],
        rng: &mut crate::sampler::Rng,
        mut mark: impl FnMut(u32),
    ) -> Result<()> {
        let cfg = self.model.meta.sampler.clone();
        let meta = self.model.meta.clone();
        let blob = self.model.blob;
        let model = self.model;
        let arena = &mut *self.arena;
        let ex = self.ex;
        let extras = self.extras;
        let mut uncond = extras;
        for (u, c) in uncond.iter_mut().zip(self.uncond) {
            if c.is_some() {
                *u = c;
            }
        }
        let n = meta.output.numel();
        let (mut guidance, mut stash) = match self.guidance.as_mut() {
            Some((s, b)) => {
                let (un, rest) = b.split_at_mut(n.min(b.len()));
                let stash: &mut [u8] = bytemuck::cast_slice_mut(rest);
                let stash = stash.get_mut(..meta.invariant_bytes as usize);
                (Some((*s, un)), stash)
            }
            None => (None, None),
        };
        if guidance.is_some() && self.uncond.iter().all(|u| u.is_none()) {
            return Err(Error::Unsupported(
                "guidance needs an unconditional value for an extra input (Session::set_uncond_input)",
            ));
        }
        let mut step = 0u32;
        let cache = &mut self.cache;
        crate::sampler::sample(&cfg, kind, steps, x, self.state, rng, |xin, t, eps| {
            mark(step);
            step += 1;
            let mut pass = |which: u8, out: &mut [f32]| {
                let inputs = if which == 0 { &extras } else { &uncond };
                run_with(
                    ex,
                    model,
                    &meta,
                    arena,
                    blob,
                    (inputs, cache, which, stash.as_deref_mut()),
                    xin,
                    t,
                    out,
                )
            };
            match guidance.as_mut() {
                None => pass(0, eps)?,
                Some((scale, un)) => {
                    // the passes alternate their order, so that consecutive evaluations share an
                    // input set and the ops that depend only on it run once per step, not twice
                    // (each pass computes the same bits in either order)
                    if step % 2 == 1 {
                        pass(0, eps)?;
                        pass(1, un)?;
                    } else {
                        pass(1, un)?;
                        pass(0, eps)?;
                    }
                    for (e, &u) in eps.iter_mut().zip(un.iter()) {
                        *e = u + *scale * (*e - u);
                    }
                }
            }
            Ok(())
        })?;
        mark(steps);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn run_with(
    ex: kernels::Exec,
    model: &Model<'_>,
    meta: &crate::format::ModelMeta,
    arena: &mut [u8],
    blob: &[u8],
    (extras, cache, which, stash): (
        &[Option<&[f32]>],
        &mut InvariantCache,
        u8,
        Option<&mut [u8]>,
    ),
    latent: &[f32],
    t: f32,
    out: &mut [f32],
) -> Result<()> {
    for (k, e) in meta.extra_inputs.iter().enumerate() {
        let v = extras.get(k).copied().flatten().ok_or(Error::Unsupported(
            "an extra model input is not set (Session::set_input)",
        ))?;
        let r = region(arena, &e.tensor)?;
        kernels::check_len(r.len(), v.len())?;
        r.copy_from_slice(v);
    }
    kernels::check_len(meta.latent.numel(), latent.len())?;
    kernels::check_len(meta.output.numel(), out.len())?;
    region(arena, &meta.latent)?.copy_from_slice(latent);
    if let Some(ts) = &meta.timestep {
        region(arena, ts)?.fill(t);
    }
    // the folded time path, if `t` is a scheduled timestep
    let folded = match &meta.time_table {
        Some(tt) => {
            let ts = blob_slice(blob, &tt.timesteps)?;
            (0..ts.len() / 4)
                .find(|&k| kernels::le_f32(ts, k).to_bits() == t.to_bits())
                .map(|k| -> Result<_> {
                    Ok((
                        tt,
                        k,
                        blob_slice(blob, &tt.skip)?,
                        blob_slice(blob, &tt.values)?,
                    ))
                })
                .transpose()?
        }
        None => None,
    };
    // the invariant ops' outputs are still in the arena when they were last computed for this input
    // set (and this stream, unless every stream shares them), or they are in the stash with which
    // guidance keeps the other set's (extra inputs copied above are unchanged: `set_input` clears
    // the cache)
    let stream = model.stream_for(t);
    let invariant = meta.invariant_ops as usize;
    let key = (if model.invariant_shared { 0 } else { stream }, which);
    let mut cached = invariant > 0 && cache.live == Some(key);
    if invariant > 0 && !cached {
        if let Some(stash) = stash {
            let pinned = arena
                .get_mut(..meta.invariant_bytes as usize)
                .ok_or(Error::Arena { needed: 0, got: 0 })?;
            kernels::check_len(pinned.len(), stash.len())?;
            pinned.swap_with_slice(stash);
            core::mem::swap(&mut cache.live, &mut cache.stash);
            cached = cache.live == Some(key);
        }
    }
    if invariant > 0 && !cached {
        cache.live = None;
        cache.computed = cache.computed.saturating_add(1);
    }
    for (i, op) in model.stream_ops(stream).enumerate() {
        if cached && i < invariant {
            continue;
        }
        let op = op?;
        if let Some((tt, k, skip, values)) = folded {
            if skip.get(i).copied() == Some(1) {
                if let Some(o) = tt.outputs.iter().find(|o| o.op as usize == i) {
                    let out = op.output();
                    let dst = region(arena, out)?;
                    let start = k * tt.row as usize + o.at as usize;
                    let src = values
                        .get(start * 4..(start + dst.len()) * 4)
                        .ok_or(Error::Unsupported("time table row too short"))?;
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = kernels::le_f32(src, j);
                    }
                }
                continue;
            }
        }
        run_op_exec(ex, &op, arena, blob).map_err(|e| match e {
            Error::Invalid { what, .. } => Error::Invalid { op: i as u32, what },
            e => e,
        })?;
    }
    out.copy_from_slice(region(arena, &meta.output)?);
    if invariant > 0 {
        cache.live = Some(key);
    }
    Ok(())
}

fn region<'x>(arena: &'x mut [u8], t: &TRef) -> Result<&'x mut [f32]> {
    let b = arena
        .get_mut(range(t))
        .ok_or(Error::Arena { needed: 0, got: 0 })?;
    out_f32(b)
}
