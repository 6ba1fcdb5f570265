//! File helpers for the CLI: npy in/out, PNG grids.
use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;
use std::path::Path;

/// Reads an npy file as f32 (from f32, f64, i64, i32 or f16 data) with its shape, in C (row-major)
/// order: Fortran-order files are transposed. Every error names the file.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let what = || format!("{}", path.display());
    let npy =
        npyz::NpyFile::new(&bytes[..]).with_context(|| format!("{} is not an npy file", what()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let descr = npy.dtype().descr();
    let data: Vec<f32> = match descr
        .trim_matches(['\'', '"'])
        .trim_start_matches(['<', '|', '='])
    {
        "f4" => npy.into_vec::<f32>(),
        "f8" => npy
            .into_vec::<f64>()
            .map(|v| v.into_iter().map(|v| v as f32).collect()),
        "i8" => npy
            .into_vec::<i64>()
            .map(|v| v.into_iter().map(|v| v as f32).collect()),
        "i4" => npy
            .into_vec::<i32>()
            .map(|v| v.into_iter().map(|v| v as f32).collect()),
        "f2" => npy.into_vec::<u16>().map(|v| {
            v.into_iter()
                .map(|v| half::f16::from_bits(v).to_f32())
                .collect()
        }),
        d => bail!("{}: unsupported npy dtype {d} (use float32)", what()),
    }
    .with_context(|| format!("{}: the npy data is truncated or malformed", what()))?;
    if data.len() != shape.iter().product::<usize>() {
        bail!("{}: {} values for the shape {shape:?}", what(), data.len());
    }
    Ok((
        shape.clone(),
        if fortran {
            c_order(&data, &shape)
        } else {
            data
        },
    ))
}

/// Fortran-order (column-major) data of `shape` in C order.
fn c_order(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let n = data.len();
    let mut out = vec![0f32; n];
    let mut idx = vec![0usize; shape.len()];
    for v in out.iter_mut() {
        // the Fortran offset of the C-order index `idx`
        let (mut off, mut stride) = (0, 1);
        for (d, &i) in idx.iter().enumerate() {
            off += i * stride;
            stride *= shape[d];
        }
        *v = data[off];
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// [`read_npy`] of an input for a model tensor of shape `want`: the same shape (leading 1s aside),
/// every value finite. `label` names the input in errors.
pub fn read_input(path: &Path, label: &str, want: &[usize]) -> Result<Vec<f32>> {
    let (shape, data) = read_npy(path)?;
    let squeeze =
        |s: &[usize]| -> Vec<usize> { s.iter().copied().skip_while(|&d| d == 1).collect() };
    if squeeze(&shape) != squeeze(want) {
        bail!(
            "{label}: {} has shape {shape:?}, the model takes {want:?}",
            path.display()
        );
    }
    check_finite(&data, path)?;
    Ok(data)
}

/// Refuses NaN and infinite values, naming the file.
pub fn check_finite(data: &[f32], path: &Path) -> Result<()> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        bail!(
            "{}: {bad} of {} values are not finite (NaN or infinity)",
            path.display(),
            data.len()
        );
    }
    Ok(())
}

pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let mut buf = vec![];
    {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
            .writer(&mut buf)
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
    }
    crate_emit_write(path, &buf)
}

fn crate_emit_write(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::emit::write_atomic(path, bytes)
}

/// Renders images as a grid (see [`grid_png`]) and writes the PNG.
pub fn write_grid(
    path: &Path,
    rows: &[Vec<Vec<f32>>],
    h: usize,
    w: usize,
    zoom: usize,
) -> Result<()> {
    crate_emit_write(path, &grid_png(rows, h, w, zoom)?)
}

/// Renders images (each `h x w`, values in [-1, 1], first channel) as a grid of rows, each cell scaled
/// up `zoom` times with a 1-pixel gap, as PNG bytes.
pub fn grid_png(rows: &[Vec<Vec<f32>>], h: usize, w: usize, zoom: usize) -> Result<Vec<u8>> {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let (cw, ch) = ((w + 1) * zoom, (h + 1) * zoom);
    let mut img = image::GrayImage::from_pixel(
        (cols * cw + zoom) as u32,
        (rows.len() * ch + zoom) as u32,
        image::Luma([40]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, im) in row.iter().enumerate() {
            for y in 0..h * zoom {
                for x in 0..w * zoom {
                    let v = im[(y / zoom) * w + x / zoom];
                    let p = (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8;
                    img.put_pixel(
                        (zoom + c * cw + x) as u32,
                        (zoom + r * ch + y) as u32,
                        image::Luma([p]),
                    );
                }
            }
        }
    }
    let mut bytes = vec![];
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}
