//! Input shapes: the user's `--input-shape NAME=DIMS` for inputs exported with symbolic dimensions
//! besides the batch, checked against the model's, and those a compiled file was built for.
use anyhow::{bail, Context, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Input shapes given by the user (`--input-shape NAME=DIMS`) for inputs with symbolic dimensions.
pub type Shapes = [(String, Vec<usize>)];

/// An input's shape: `given` (the user's `--input-shape`) where it agrees with the model's rank and
/// fixed dimensions; else the model's, a symbolic first (batch) dimension pinned to 1. Other symbolic
/// dimensions (height, width, tokens) are refused with the option that sets them. `None` for an
/// unknown rank.
pub(crate) fn pinned_shape(
    name: &str,
    fact: &InferenceFact,
    given: Option<&[usize]>,
) -> Result<Option<Vec<usize>>> {
    if fact.shape.is_open() {
        return Ok(given.map(<[usize]>::to_vec));
    }
    let dims: Vec<Option<usize>> = fact
        .shape
        .dims()
        .map(|d| match d.concretize() {
            Some(TDim::Val(v)) if v >= 0 => Some(v as usize),
            _ => None,
        })
        .collect();
    if let Some(g) = given {
        let agrees =
            g.len() == dims.len() && dims.iter().zip(g).all(|(d, &v)| d.is_none_or(|d| d == v));
        if !agrees || g.first().is_some_and(|&b| b != 1) {
            bail!(
                "--input-shape {name}={}: the model's input has shape {} (batch 1; `?` dimensions are free)",
                dims_text(g.iter().map(|&v| Some(v))),
                dims_text(dims.iter().copied())
            );
        }
        return Ok(Some(g.to_vec()));
    }
    if dims.iter().skip(1).any(Option::is_none) {
        let example: Vec<Option<usize>> = dims
            .iter()
            .enumerate()
            .map(|(k, d)| if k == 0 { Some(1) } else { *d })
            .collect();
        bail!(
            "input {name:?} has symbolic dimensions besides the batch: {} (exported with dynamic height, width or tokens); give them with --input-shape {name}={}",
            dims_text(dims.iter().copied()),
            dims_text(example.into_iter()).replace('?', "N")
        );
    }
    Ok(Some(dims.into_iter().map(|d| d.unwrap_or(1)).collect()))
}

/// `1x4x?x?` for dimensions, `?` for symbolic ones.
fn dims_text(d: impl Iterator<Item = Option<usize>>) -> String {
    d.map(|v| v.map_or("?".to_string(), |v| v.to_string()))
        .collect::<Vec<_>>()
        .join("x")
}

/// The input shapes a compiled file was built for (latent, timestep, extra inputs), to import its
/// ONNX model again with any symbolic dimensions set as they were (`dmqc eval`, `dmqc bench`).
pub fn shapes_of(meta: &dmq_runtime::format::ModelMeta) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![(
        meta.latent_name.to_string(),
        meta.latent.shape.iter().map(|&d| d as usize).collect(),
    )];
    if let Some(t) = &meta.timestep {
        v.push((
            meta.timestep_name.to_string(),
            t.shape.iter().map(|&d| d as usize).collect(),
        ));
    }
    for e in &meta.extra_inputs {
        v.push((
            e.name.to_string(),
            e.tensor.shape.iter().map(|&d| d as usize).collect(),
        ));
    }
    v
}

/// Parses `NAME=1x4x64x64` (`--input-shape`).
pub fn parse_shape(s: &str) -> Result<(String, Vec<usize>)> {
    let (name, dims) = s.split_once('=').with_context(|| {
        format!("--input-shape {s:?}: expected NAME=DIMS, e.g. sample=1x4x64x64")
    })?;
    let dims = dims
        .split('x')
        .map(|d| d.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| {
            format!("--input-shape {s:?}: dimensions are whole numbers joined by x")
        })?;
    if dims.is_empty() || dims.contains(&0) {
        bail!("--input-shape {s:?}: dimensions must be at least 1");
    }
    Ok((name.to_string(), dims))
}
