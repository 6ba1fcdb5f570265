//! Data movement: strided gathers and nearest-neighbour upsampling.
use crate::kernels::{check_len, walk, MAX_RANK};
use crate::{Error, Result};

/// Gather with strides: `out[walk order] = map(x[offsets])`.
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
    walk(shape, [sx, so], [bx, bo], |[i, o]| out[o] = f(x[i]));
    Ok(())
}

/// Nearest upsampling by integer factors `out_shape[d] / in_shape[d]`.
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
