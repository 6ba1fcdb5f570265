//! Model-wide checks (everything but the op records, which `crate::ops` checks one by one): the
//! metadata's tensors, sampler configuration, timestep buckets, time table and invariant ops.
use crate::blob::{Blob, Reader};
use crate::format::{BlobRef, DType, ModelMeta, OpClass, TRef, ARENA_ALIGN};
use crate::ops::{Cx, Prepared};
use crate::{Error, Result};

const MODEL: u32 = u32::MAX;

fn inv(what: &'static str) -> Error {
    Error::Invalid { op: MODEL, what }
}

/// The metadata on its own: inputs, output and sampler state inside the arena, a sane sampler
/// configuration, buckets that match the streams.
pub(crate) fn meta(m: &ModelMeta, n_ops: u32, blob_len: usize, blob: &mut Reader) -> Result<()> {
    let cx = Cx {
        op: MODEL,
        arena: m.arena_bytes as usize,
        blob: Blob::Whole(&[]),
    };
    let latent = cx.view(&m.latent, DType::F32)?;
    let output = cx.view(&m.output, DType::F32)?;
    if latent.numel() != output.numel() {
        return Err(inv("latent and output sizes differ"));
    }
    let state_end = m.sampler_state as u64 + 4 * latent.numel() as u64;
    if state_end > m.arena_bytes as u64 || m.sampler_state % ARENA_ALIGN != 0 {
        return Err(inv("sampler state outside the arena"));
    }
    // op tensors live below the sampler state, which ends the arena
    let ops = Cx {
        arena: m.sampler_state as usize,
        ..cx
    };
    for t in [&m.latent, &m.output]
        .into_iter()
        .chain(m.timestep.iter())
        .chain(m.extra_inputs.iter().map(|e| &e.tensor))
    {
        ops.view(t, DType::F32)?;
    }
    let names = m.extra_inputs.iter().map(|e| e.name.as_str());
    for (i, a) in names.clone().enumerate() {
        if a.is_empty() || names.clone().skip(i + 1).any(|b| b == a) {
            return Err(inv("extra inputs need distinct names"));
        }
    }
    sampler(m)?;
    streams(m, n_ops)?;
    time_table(m, blob_len, blob)
}

fn sampler(m: &ModelMeta) -> Result<()> {
    if !(m.t_min.is_finite() && m.t_max.is_finite() && m.t_min <= m.t_max) {
        return Err(inv("calibrated timestep range invalid"));
    }
    let s = &m.sampler;
    if s.num_train_timesteps == 0
        || s.num_train_timesteps > 100_000
        || !(s.beta_start > 0.0 && s.beta_end < 1.0 && s.beta_start <= s.beta_end)
    {
        return Err(inv("noise schedule invalid"));
    }
    if !(s.sigma_min > 0.0
        && s.sigma_min <= s.sigma_max
        && s.sigma_max < 1.0e6
        && s.rho > 0.0
        && s.rho < 100.0)
        || s.schedule.iter().any(|v| !(v.is_finite() && *v >= 0.0))
    {
        return Err(inv("sigma schedule invalid"));
    }
    // the model's own sampler must run: a step count it accepts, a prediction it takes
    let kind: crate::SamplerKind = s.default_sampler.into();
    if s.default_steps == 0 || s.default_steps > crate::sampler::max_steps(s, kind) {
        return Err(inv("default step count outside what the sampler takes"));
    }
    if kind.sigma_conditioned() && s.prediction == crate::format::Prediction::V {
        return Err(inv(
            "the sigma-conditioned samplers take epsilon or sample predictions",
        ));
    }
    Ok(())
}

fn streams(m: &ModelMeta, n_ops: u32) -> Result<()> {
    let streams = m.stream_offsets.len();
    if streams == 0 || m.bucket_upper.len() + 1 != streams {
        return Err(inv("timestep buckets and op streams do not match"));
    }
    if m.ops_per_stream == 0 {
        return Err(inv("a stream without ops"));
    }
    if m.invariant_ops > m.ops_per_stream {
        return Err(inv("more invariant ops than ops per stream"));
    }
    if m.invariant_bytes > m.sampler_state || (m.invariant_ops == 0 && m.invariant_bytes > 0) {
        return Err(inv("invariant outputs outside the arena"));
    }
    if (streams as u64) * m.ops_per_stream as u64 != n_ops as u64 {
        return Err(inv("op count is not streams x ops per stream"));
    }
    if m.bucket_upper.iter().any(|b| !b.is_finite()) {
        return Err(inv("bucket bound not finite"));
    }
    if m.bucket_upper.windows(2).any(|w| w[0] >= w[1]) {
        return Err(inv("bucket bounds must ascend"));
    }
    Ok(())
}

/// A time table array inside the blob.
fn table_part(b: &BlobRef, blob_len: usize) -> Result<()> {
    if b.offset as u64 + b.len as u64 > blob_len as u64 {
        return Err(inv("time table outside the blob"));
    }
    Ok(())
}

/// The folded time path's sizes: a row of values per timestep, a skip flag per op, listed outputs
/// of ops of the stream.
fn time_table(m: &ModelMeta, blob_len: usize, blob: &mut Reader) -> Result<()> {
    let Some(tt) = &m.time_table else {
        return Ok(());
    };
    for b in [&tt.timesteps, &tt.values, &tt.skip] {
        table_part(b, blob_len)?;
    }
    let (ts, values) = (tt.timesteps.len as u64, tt.values.len as u64);
    let steps = ts / 4;
    if ts % 4 != 0 || values != steps * tt.row as u64 * 4 {
        return Err(inv("time table sizes"));
    }
    if tt.skip.len != m.ops_per_stream {
        return Err(inv("time table skip list"));
    }
    // the skip flags, a chunk at a time (the blob may be read from a source)
    let mut chunk = [0u8; 64];
    for at in (0..tt.skip.len).step_by(chunk.len()) {
        let n = (tt.skip.len - at).min(chunk.len() as u32) as usize;
        blob.read((tt.skip.offset + at) as u64, &mut chunk[..n])?;
        if chunk[..n].iter().any(|&s| s > 1) {
            return Err(inv("time table skip list"));
        }
    }
    if tt.outputs.iter().any(|o| o.op >= m.ops_per_stream) {
        return Err(inv("time table output"));
    }
    Ok(())
}

/// Whether the time table skips op `i` (a table [`meta`] checked).
pub(crate) fn skipped(m: &ModelMeta, blob: &mut Reader, i: u32) -> Result<bool> {
    let Some(tt) = &m.time_table else {
        return Ok(false);
    };
    if i >= tt.skip.len {
        return Ok(false);
    }
    let mut s = [0u8];
    blob.read((tt.skip.offset + i) as u64, &mut s)?;
    Ok(s[0] == 1)
}

/// The time table against op `i` of a stream, prepared: a skipped op computes f32 on the
/// time path; an output taken from the table is a skipped op's, and its values fit the row.
pub(crate) fn time_table_op(
    m: &ModelMeta,
    blob: &mut Reader,
    i: u32,
    class: OpClass,
    p: &Prepared<'_>,
) -> Result<()> {
    let Some(tt) = &m.time_table else {
        return Ok(());
    };
    let skipped = skipped(m, blob, i)?;
    let out = p.output().ok_or(inv("time table op not prepared"))?;
    let time_op = matches!(class, OpClass::Time | OpClass::Move | OpClass::Const);
    if skipped && !(time_op && out.dtype == DType::F32) {
        return Err(inv("the time table skips an op outside the time path"));
    }
    for o in tt.outputs.iter().filter(|o| o.op == i) {
        if !skipped || o.at as u64 + out.numel() as u64 > tt.row as u64 {
            return Err(inv("time table output"));
        }
    }
    Ok(())
}

/// An f32 input tensor of the metadata (checked by [`meta`]).
pub(crate) fn f32_region<'x>(arena: &'x mut [u8], t: &TRef) -> Result<&'x mut [f32]> {
    let start = t.offset as usize;
    let b = arena
        .get_mut(start..start + t.bytes())
        .ok_or(inv("a model input outside the arena"))?;
    crate::arena::out_f32(b)
}
