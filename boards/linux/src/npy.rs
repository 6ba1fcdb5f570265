//! A minimal npy reader and writer for the board binary (no dependencies beyond std): little-endian
//! f4, f8, i8, i4 data in C order; the shape is read and checked against the data and against the
//! model's input; non-finite values are refused. Every error names the file.

/// An npy file's shape and its values as f32.
pub fn read(path: &str, bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), String> {
    let bad = |what: &str| format!("{path}: {what}");
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an npy file"));
    }
    let (hl, off) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("truncated npy header")),
    };
    let header = bytes
        .get(off..off.saturating_add(hl))
        .map(String::from_utf8_lossy)
        .ok_or_else(|| bad("truncated npy header"))?;
    if header.contains("'fortran_order': True") {
        return Err(bad(
            "Fortran-order data is not supported (save it C-contiguous)",
        ));
    }
    let shape = shape_of(&header).ok_or_else(|| bad("the npy header has no readable shape"))?;
    let data = &bytes[off + hl..];
    let (size, conv): (usize, fn(&[u8]) -> f32) = if header.contains("'<f4'") {
        (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    } else if header.contains("'<f8'") {
        (8, |c| {
            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
        })
    } else if header.contains("'<i8'") {
        (8, |c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
        })
    } else if header.contains("'<i4'") {
        (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
    } else {
        return Err(bad("unsupported npy dtype (use little-endian float32)"));
    };
    let n: usize = shape.iter().product();
    if data.len() != n * size {
        return Err(bad(&format!(
            "{} data bytes for the shape {shape:?} of {size}-byte values",
            data.len()
        )));
    }
    let values: Vec<f32> = data.chunks_exact(size).map(conv).collect();
    let nonfinite = values.iter().filter(|v| !v.is_finite()).count();
    if nonfinite > 0 {
        return Err(bad(&format!(
            "{nonfinite} of {n} values are not finite (NaN or infinity)"
        )));
    }
    Ok((shape, values))
}

/// `'shape': (1, 2, 8, 8)` of an npy header.
fn shape_of(header: &str) -> Option<Vec<usize>> {
    let at = header.find("'shape':")? + "'shape':".len();
    let rest = &header[at..];
    let (open, close) = (rest.find('(')?, rest.find(')')?);
    rest.get(open + 1..close)?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect()
}

/// The same shape, leading 1s aside.
pub fn same_shape(a: &[usize], b: &[usize]) -> bool {
    let squeeze =
        |s: &[usize]| -> Vec<usize> { s.iter().copied().skip_while(|&d| d == 1).collect() };
    squeeze(a) == squeeze(b)
}

/// Writes f32 data as npy, through a temporary beside the file (never half-written).
pub fn write(path: &std::path::Path, shape: &[usize], data: &[f32]) -> Result<(), String> {
    let dims: String = shape.iter().map(|d| format!("{d},")).collect();
    let mut h =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}").into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((h.len() as u16).to_le_bytes());
    b.extend(h);
    for v in data {
        b.extend(v.to_le_bytes());
    }
    let tmp = path.with_extension(format!("npy.tmp{}", std::process::id()));
    let r = std::fs::write(&tmp, b).and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|e| format!("writing {}: {e}", path.display()))
}
