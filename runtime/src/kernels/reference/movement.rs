//! Data movement: strided gathers and nearest-neighbour upsampling.
use crate::kernels::{check_len, Rows, MAX_RANK};
use crate::{Error, Result};

/// Gather with strides: `out[walk order] = map(x[offsets])`.
#[inline(always)]
pub fn strided_map<T: Copy, U>(
    x: &[T],
    shape: &[usize],
    sx: &[usize; MAX_RANK],
    bx: usize,
    out: &mut [U],
    so: &[usize; MAX_RANK],
    bo: usize,
    f: impl Fn(T) -> U,
) -> Result<()> {
    if crate::kernels::extent(shape, sx, bx) > x.len()
        || crate::kernels::extent(shape, so, bo) > out.len()
    {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    let mut rows = Rows::new(shape, [sx, so], [bx, bo]);
    while let Some(([i, o], n, [a, b])) = rows.next() {
        if a == 1 && b == 1 {
            for (d, &s) in out[o..o + n].iter_mut().zip(&x[i..i + n]) {
                *d = f(s);
            }
        } else {
            for j in 0..n {
                out[o + j * b] = f(x[i + j * a]);
            }
        }
    }
    Ok(())
}

/// 2-D max pooling of `planes` NCHW planes of `h × w` into `oh × ow`: the largest value of each
/// `k` window at stride `s`, rows and columns outside the input (the `pad` before them) left out.
/// Every window must hold at least one input element (`pad < k`, `(o − 1)·s < extent + pad`).
#[inline(always)]
pub fn max_pool<T: Copy + PartialOrd>(
    x: &[T],
    [planes, h, w]: [usize; 3],
    out: &mut [T],
    [oh, ow]: [usize; 2],
    [kh, kw, sh, sw]: [usize; 4],
    [pt, pl]: [usize; 2],
) -> Result<()> {
    check_len(planes * h * w, x.len())?;
    check_len(planes * oh * ow, out.len())?;
    let window = |o: usize, s: usize, p: usize, k: usize, n: usize| {
        let lo = (o * s).saturating_sub(p);
        let hi = (o * s + k).saturating_sub(p).min(n);
        (lo, hi)
    };
    for (src, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for oy in 0..oh {
            let (y0, y1) = window(oy, sh, pt, kh, h);
            for ox in 0..ow {
                let (x0, x1) = window(ox, sw, pl, kw, w);
                if y0 >= y1 || x0 >= x1 {
                    return Err(Error::Unsupported("max pool window outside the input"));
                }
                let mut m = src[y0 * w + x0];
                for row in src[y0 * w..y1 * w].chunks_exact(w) {
                    for &v in &row[x0..x1] {
                        if v > m {
                            m = v;
                        }
                    }
                }
                dst[oy * ow + ox] = m;
            }
        }
    }
    Ok(())
}

/// Nearest upsampling by integer factors `out_shape[d] / in_shape[d]`.
#[inline(always)]
pub fn upsample<T: Copy>(
    x: &[T],
    in_shape: &[usize],
    out: &mut [T],
    out_shape: &[usize],
) -> Result<()> {
    let rank = in_shape.len();
    if rank != out_shape.len() || rank > MAX_RANK || rank == 0 {
        return Err(Error::Unsupported("upsample rank"));
    }
    check_len(in_shape.iter().product(), x.len())?;
    check_len(out_shape.iter().product(), out.len())?;
    let mut f = [1usize; MAX_RANK];
    for d in 0..rank {
        if in_shape[d] == 0 || out_shape[d] % in_shape[d] != 0 {
            return Err(Error::Unsupported("upsample factor"));
        }
        f[d] = out_shape[d] / in_shape[d];
    }
    if rank >= 2 && f[..rank - 2].iter().all(|&v| v == 1) {
        // the usual case (factors on the last two axes only): build each output row once, then
        // copy it for the repeated rows
        let (w, fh, fw) = (in_shape[rank - 1], f[rank - 2], f[rank - 1]);
        let ow = w * fw;
        for (i, src) in x.chunks_exact(w).enumerate() {
            let start = i * fh * ow;
            let first = &mut out[start..start + ow];
            for (d, &v) in first.chunks_exact_mut(fw).zip(src) {
                d.fill(v);
            }
            for r in 1..fh {
                out.copy_within(start..start + ow, start + r * ow);
            }
        }
        return Ok(());
    }
    let si = crate::kernels::contiguous_strides(in_shape);
    let mut idx = [0usize; MAX_RANK];
    for o in out.iter_mut() {
        let mut off = 0;
        for d in 0..rank {
            off += (idx[d] / f[d]) * si[d];
        }
        *o = x[off];
        let mut d = rank;
        while d > 0 {
            d -= 1;
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Both paths of `upsample` (factors on the last two axes; factors elsewhere) against the
    /// definition `out[i] = x[i / factor]` per axis.
    #[test]
    fn upsample_matches_its_definition() {
        let cases: [(&[usize], &[usize]); 4] = [
            (&[1, 3, 2, 3], &[1, 3, 4, 6]),
            (&[2, 3], &[6, 3]),
            (&[2, 1, 3], &[4, 2, 3]),
            (&[3], &[9]),
        ];
        for (ins, outs) in cases {
            let x: Vec<i16> = (0..ins.iter().product::<usize>() as i16).collect();
            let mut out = vec![0i16; outs.iter().product()];
            super::upsample(&x, ins, &mut out, outs).unwrap();
            let si = crate::kernels::contiguous_strides(ins);
            let so = crate::kernels::contiguous_strides(outs);
            for (i, &v) in out.iter().enumerate() {
                let src: usize = (0..ins.len())
                    .map(|d| (i / so[d] % outs[d]) / (outs[d] / ins[d]) * si[d])
                    .sum();
                assert_eq!(v, x[src], "{ins:?} -> {outs:?} at {i}");
            }
        }
    }
}
