//! File helpers for the CLI: npy in/out, PNG grids.
use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;
use std::path::Path;

/// Reads an npy file as f32 (from f32, f64, i64, i32 or f16 data) with its shape.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not an npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr();
    let data: Vec<f32> = match descr
        .trim_matches(['\'', '"'])
        .trim_start_matches(['<', '|', '='])
    {
        "f4" => npy.into_vec::<f32>()?,
        "f8" => npy
            .into_vec::<f64>()?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "i8" => npy
            .into_vec::<i64>()?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "i4" => npy
            .into_vec::<i32>()?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        "f2" => npy
            .into_vec::<u16>()?
            .into_iter()
            .map(|v| half::f16::from_bits(v).to_f32())
            .collect(),
        d => bail!(
            "{}: unsupported npy dtype {d} (use float32)",
            path.display()
        ),
    };
    Ok((shape, data))
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

/// Renders images (each `h x w`, values in [-1, 1], first channel) as a grid of rows, each cell scaled
/// up `zoom` times with a 1-pixel gap, and writes a PNG.
pub fn write_grid(
    path: &Path,
    rows: &[Vec<Vec<f32>>],
    h: usize,
    w: usize,
    zoom: usize,
) -> Result<()> {
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
    crate_emit_write(path, &bytes)
}
