//! Writes `.dmq` bytes: header, postcard metadata, postcard op records, blob.
use crate::ir::{Program, TensorId};
use crate::memplan::Plan;
use crate::quant::{tref, Blob, Quantized};
use anyhow::{anyhow, bail, Context, Result};
use dmq_runtime::format::{
    ExtraInput, Header, ModelMeta, Op, SamplerConfig, TRef, HEADER_LEN, MAX_EXTRA_INPUTS,
};
use std::path::{Path, PathBuf};

/// Serializes the model: one op stream per timestep bucket (`streams`, ascending t, each with the
/// upper bound that separates it from the next). `t_range` is the calibrated timestep range.
pub fn emit(
    p: &Program,
    streams: &[(Quantized, Option<f32>)],
    blob: &Blob,
    plan: &Plan,
    sampler: SamplerConfig,
    t_range: (f32, f32),
) -> Result<Vec<u8>> {
    let q0 = &streams.first().ok_or_else(|| anyhow!("no op stream"))?.0;
    let t0 = trefs(p, q0, plan)?;
    let f = |t: TensorId| t0[t.0 as usize].clone();
    let latent = p.latent.ok_or_else(|| anyhow!("no latent input"))?;
    let output = p.output.ok_or_else(|| anyhow!("no output"))?;
    let mut extra_inputs = heapless::Vec::new();
    for (_, t) in &p.extras {
        let e = ExtraInput {
            name: name(p, Some(*t))?,
            tensor: f(*t),
        };
        extra_inputs.push(e).map_err(|_| {
            anyhow!(
                "the model has {} extra inputs; a .dmq carries at most {MAX_EXTRA_INPUTS}",
                p.extras.len()
            )
        })?;
    }
    let meta = ModelMeta {
        latent_name: name(p, p.latent)?,
        timestep_name: name(p, p.timestep)?,
        output_name: name(p, p.output)?,
        arena_bytes: plan.arena_bytes,
        latent: f(latent),
        timestep: p.timestep.map(f),
        extra_inputs,
        output: f(output),
        time_table: None,
        sampler_state: plan.sampler_state,
        stream_offsets: heapless::Vec::new(),
        ops_per_stream: 0,
        bucket_upper: heapless::Vec::new(),
        t_min: t_range.0,
        t_max: t_range.1,
        sampler,
        invariant_ops: plan.invariant_ops as u32,
        invariant_bytes: plan.invariant_bytes,
    };
    let mut ops_b = vec![];
    let mut minor = 0;
    let mut offsets = heapless::Vec::<u32, { dmq_runtime::format::MAX_STREAMS }>::new();
    let mut uppers = heapless::Vec::<f32, { dmq_runtime::format::MAX_STREAMS }>::new();
    for (q, upper) in streams {
        offsets
            .push(ops_b.len() as u32)
            .map_err(|_| anyhow!("too many timestep buckets"))?;
        if let Some(u) = upper {
            uppers
                .push(*u)
                .map_err(|_| anyhow!("too many timestep buckets"))?;
        }
        let tq = trefs(p, q, plan)?;
        for (i, op) in q.ops.iter().enumerate() {
            let mut rec = op.map(|t| tq[t.0 as usize].clone());
            match &mut rec {
                Op::Conv2d(c) => c.scratch = plan.scratch[i],
                Op::Linear(l) => l.scratch = plan.scratch[i],
                Op::MatMul(m) => m.scratch = plan.scratch[i],
                _ => {}
            }
            minor = minor.max(dmq_runtime::format::minor_version_of(&rec));
            ops_b.extend(postcard::to_allocvec(&rec)?);
        }
    }
    let mut meta = meta;
    meta.stream_offsets = offsets;
    meta.bucket_upper = uppers;
    meta.ops_per_stream = q0.ops.len() as u32;
    let n_ops = (q0.ops.len() * streams.len()) as u32;
    assemble(&meta, &ops_b, &blob.bytes, n_ops, minor)
}

/// The arena reference of every tensor of a stream.
fn trefs(p: &Program, q: &Quantized, plan: &Plan) -> Result<Vec<TRef>> {
    (0..p.tensors.len())
        .map(|i| tref(p, q, &plan.offsets, TensorId(i as u32)))
        .collect()
}

/// A model input's or output's ONNX name as the metadata stores it (at most 64 bytes: the runtime
/// looks inputs up by it, so a longer name is an error, not a truncation).
fn name(p: &Program, t: Option<TensorId>) -> Result<heapless::String<64>> {
    let Some(t) = t else {
        return Ok(heapless::String::new());
    };
    let n = &p.t(t).name;
    heapless::String::try_from(n.as_str())
        .map_err(|_| anyhow!("the model input or output name {n:?} is longer than 64 bytes"))
}

/// Lays out a `.dmq` file: header, postcard metadata and op records (checksummed together), then the
/// 64-byte aligned blob.
fn assemble(
    meta: &ModelMeta,
    ops_b: &[u8],
    blob: &[u8],
    n_ops: u32,
    minor: u16,
) -> Result<Vec<u8>> {
    // a schedule other than linear follows the metadata (format 6.3, `format::decode_meta`)
    let mut meta_b = postcard::to_allocvec(meta)?;
    let schedule = meta.sampler.beta_schedule;
    if schedule != dmq_runtime::format::BetaSchedule::Linear {
        meta_b.extend(postcard::to_allocvec(&dmq_runtime::format::MetaExt {
            beta_schedule: schedule,
        })?);
    }
    let minor = minor.max(dmq_runtime::format::minor_version_of_meta(meta));
    let total = (HEADER_LEN + meta_b.len() + ops_b.len() + 64) as u64 + blob.len() as u64;
    if total > u32::MAX as u64 {
        bail!("the model would take {total} bytes; a .dmq holds at most 4 GiB (32-bit offsets)");
    }
    Ok(dmq_runtime::format::assemble(
        &meta_b, ops_b, n_ops, blob, minor,
    ))
}

/// The timestep path folded for the scheduled timesteps (see `dmq_runtime::format::TimeTable`).
pub struct TimeTableData {
    pub timesteps: Vec<f32>,
    /// one row per timestep
    pub values: Vec<f32>,
    pub row: u32,
    pub skip: Vec<u8>,
    /// (op index in a stream, start in a row)
    pub outputs: Vec<(u32, u32)>,
}

/// Adds a time table to an emitted model: its arrays go to the end of the blob, the metadata records
/// them, and the header and checksums are rewritten.
pub fn with_time_table(bytes: &[u8], t: &TimeTableData) -> Result<Vec<u8>> {
    use dmq_runtime::format::{BlobRef, TimeOut, TimeTable};
    with_meta(bytes, |meta, blob| {
        let mut push = |data: Vec<u8>| {
            while blob.len() % 16 != 0 {
                blob.push(0);
            }
            let r = BlobRef {
                offset: blob.len() as u32,
                len: data.len() as u32,
            };
            blob.extend(data);
            r
        };
        let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut outputs = heapless::Vec::new();
        for &(op, at) in &t.outputs {
            outputs
                .push(TimeOut { op, at })
                .map_err(|_| anyhow!("the time path has too many outputs to fold"))?;
        }
        meta.time_table = Some(TimeTable {
            timesteps: push(f32b(&t.timesteps)),
            values: push(f32b(&t.values)),
            row: t.row,
            skip: push(t.skip.clone()),
            outputs,
        });
        Ok(())
    })
}

/// The file with its metadata (and blob, which may only grow) edited by `edit`; the op records and
/// checksums follow.
pub fn with_meta(
    bytes: &[u8],
    edit: impl FnOnce(&mut ModelMeta, &mut Vec<u8>) -> Result<()>,
) -> Result<Vec<u8>> {
    let h = Header::parse(bytes).map_err(|e| anyhow!("{e}"))?;
    let get = |(o, l): (u32, u32)| {
        bytes
            .get(o as usize..o as usize + l as usize)
            .ok_or_else(|| anyhow!("internal error: section outside the file"))
    };
    let mut meta: ModelMeta = dmq_runtime::format::decode_meta(get(h.meta)?, h.minor)
        .ok_or_else(|| anyhow!("internal error: metadata that does not decode"))?;
    let ops_b = get(h.ops)?.to_vec();
    let mut blob = get(h.blob)?.to_vec();
    edit(&mut meta, &mut blob)?;
    assemble(&meta, &ops_b, &blob, h.n_ops, h.minor)
}

/// Writes a file atomically (temporary file in the same folder, then rename): a failure never leaves
/// a half-written output.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_group(&[(path, bytes)])
}

/// Writes several files as a group: every file goes to a temporary beside its destination first,
/// and only when all are written are they renamed into place. When any part fails nothing is
/// left: the temporaries are removed, and so are the files this call already renamed. Every error
/// names its path.
pub fn write_group(files: &[(&Path, &[u8])]) -> Result<()> {
    let mut temps: Vec<PathBuf> = vec![];
    let written = files.iter().try_for_each(|(path, bytes)| {
        let tmp = temp_beside(path)?;
        temps.push(tmp.clone());
        write_synced(&tmp, bytes).with_context(|| format!("writing {}", path.display()))
    });
    if let Err(e) = written {
        temps.iter().for_each(|t| drop(std::fs::remove_file(t)));
        return Err(e);
    }
    for (k, (tmp, (path, _))) in temps.iter().zip(files).enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            temps[k..]
                .iter()
                .for_each(|t| drop(std::fs::remove_file(t)));
            files[..k]
                .iter()
                .for_each(|(p, _)| drop(std::fs::remove_file(p)));
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
    }
    Ok(())
}

/// A temporary name in the destination's folder (created if missing).
fn temp_beside(path: &Path) -> Result<PathBuf> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the folder {}", dir.display()))?;
    let name = path.file_name().and_then(|s| s.to_str()).unwrap_or("out");
    Ok(dir.join(format!(".{name}.tmp{}", std::process::id())))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
