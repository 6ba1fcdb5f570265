//! `--fold-time-path`: the timestep path's outputs stored for every scheduled timestep.
use crate::{emit, eval, ir};
use anyhow::{bail, Result};

/// Folds the timestep path for the scheduled timesteps: runs its f32 ops through the runtime for each
/// of `timesteps` and records the outputs the integer graph reads, so the device skips the time MLP on
/// scheduled steps. `None` without a timestep input or when nothing depends on the timestep alone.
pub fn fold_time_path(
    program: &ir::Program,
    order: &[usize],
    bytes: &[u8],
    timesteps: &[f32],
) -> Result<Option<emit::TimeTableData>> {
    // the program's ops in stream order (the invariant ops were hoisted to the front)
    if order.len() != program.ops.len() {
        bail!("internal error: op order and program differ");
    }
    let mut p = program.clone();
    p.ops = order.iter().map(|&i| program.ops[i].clone()).collect();
    let p = &p;
    use dmq_runtime::format::{DType, OpClass};
    let Some(ts) = p.timestep else {
        return Ok(None);
    };
    let model =
        dmq_runtime::Model::load(bytes).map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
    let ops = model
        .stream_ops(0)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("internal error: {e}"))?;
    if ops.len() != p.ops.len() {
        bail!("internal error: op streams and program differ");
    }
    // ops computing f32 from the timestep and constants alone (the op list's time-path,
    // data-movement and constant classes)
    let mut t_only = vec![false; p.tensors.len()];
    t_only[ts.0 as usize] = true;
    let mut is_time = vec![false; p.ops.len()];
    for (i, (op, rec)) in p.ops.iter().zip(&ops).enumerate() {
        let out = op.output();
        let kind = matches!(rec.class(), OpClass::Time | OpClass::Move | OpClass::Const);
        if kind && p.t(out).dtype == DType::F32 && op.inputs().iter().all(|x| t_only[x.0 as usize])
        {
            is_time[i] = true;
            t_only[out.0 as usize] = true;
        }
    }
    // the time path's outputs: read by other ops
    let mut outputs = vec![];
    let mut row = 0u32;
    for (i, op) in p.ops.iter().enumerate() {
        let out = op.output();
        let read_outside = p
            .ops
            .iter()
            .enumerate()
            .any(|(j, o)| !is_time[j] && o.inputs().contains(&out))
            || p.output == Some(out);
        if is_time[i] && read_outside {
            outputs.push((i as u32, row));
            row += p.t(out).numel() as u32;
        }
    }
    if outputs.is_empty() {
        return Ok(None);
    }
    let mut steps: Vec<f32> = vec![];
    for &t in timesteps {
        if !steps.iter().any(|s| s.to_bits() == t.to_bits()) {
            steps.push(t);
        }
    }
    let ts_ref = model
        .meta()
        .timestep
        .clone()
        .ok_or_else(|| anyhow::anyhow!("internal error: no timestep tensor"))?;
    let mut arena = eval::arena_for(&model);
    let a = eval::arena_bytes(&mut arena);
    let mut values = vec![];
    for &t in &steps {
        let o = ts_ref.offset as usize;
        for k in 0..ts_ref.numel() {
            a[o + 4 * k..o + 4 * k + 4].copy_from_slice(&t.to_le_bytes());
        }
        for (i, op) in ops.iter().enumerate() {
            if !is_time[i] {
                continue;
            }
            dmq_runtime::ops::run_record(op, a, model.blob(), eval::scalar_exec())
                .map_err(|e| anyhow::anyhow!("internal error: time path op {i}: {e}"))?;
            if outputs.iter().any(|&(j, _)| j as usize == i) {
                let out = op.output();
                let o = out.offset as usize;
                values.extend(
                    a[o..o + 4 * out.numel()]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
        }
    }
    Ok(Some(emit::TimeTableData {
        timesteps: steps,
        values,
        row,
        skip: is_time.iter().map(|&b| b as u8).collect(),
        outputs,
    }))
}
