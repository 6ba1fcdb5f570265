//! Element-wise kernels: broadcasting binary ops, lookup tables, quantize and dequantize.
use super::Code;
use crate::kernels::{check_len, round_shift, walk, MAX_RANK};
use crate::{Error, Result};

/// Element-wise binary op with broadcasting strides (computed by the caller, checked here):
/// `out = sat(zo + round_shift(combine(a - za, b - zb), shift))`, exact in i128.
#[allow(clippy::too_many_arguments)]
pub fn binary<A: Code, B: Code, U: Code>(
    a: &[A],
    za: i32,
    sa: &[usize; MAX_RANK],
    b: &[B],
    zb: i32,
    sb: &[usize; MAX_RANK],
    shape: &[usize],
    so: &[usize; MAX_RANK],
    combine: impl Fn(i128, i128) -> i128,
    shift: u8,
    zo: i32,
    out: &mut [U],
) -> Result<()> {
    if crate::kernels::extent(shape, sa, 0) > a.len()
        || crate::kernels::extent(shape, sb, 0) > b.len()
        || crate::kernels::extent(shape, so, 0) > out.len()
    {
        return Err(Error::BufferLength {
            expected: 0,
            got: 0,
        });
    }
    let shift = shift.clamp(1, 62);
    walk(shape, [sa, sb, so], [0, 0, 0], |[ia, ib, io]| {
        let x = a[ia].get() as i128 - za as i128;
        let y = b[ib].get() as i128 - zb as i128;
        let v = combine(x, y);
        let r = (v + (1i128 << (shift - 1))) >> shift;
        out[io] = U::sat(r.clamp(i64::MIN as i128 / 2, i64::MAX as i128 / 2) as i64 + zo as i64);
    });
    Ok(())
}

/// int8 -> int16 table: `out[i] = table_i16[x[i] + 128]` (512 bytes, little endian).
#[inline(always)]
pub fn lut_8_16(x: &[i8], table: &[u8], out: &mut [i16]) -> Result<()> {
    check_len(512, table.len())?;
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        let i = (v as i32 + 128) as usize * 2;
        *o = i16::from_le_bytes([table[i], table[i + 1]]);
    }
    Ok(())
}

/// int16 input: 257-point table (i32, output codes x 256), linear interpolation.
#[inline(always)]
pub fn lut_16<U: Code>(x: &[i16], table: &[u8], out: &mut [U]) -> Result<()> {
    // SAFETY: the level is the CPU's
    unsafe { lut_16_on(x, table, out, crate::kernels::ops_isa()) }
}

/// [`lut_16`] with the x86 level `isa`.
///
/// # Safety
/// `isa` is at most [`crate::kernels::ops_isa`] (the level's kernels need its features).
#[inline(always)]
pub(crate) unsafe fn lut_16_on<U: Code>(
    x: &[i16],
    table: &[u8],
    out: &mut [U],
    isa: crate::kernels::OpsIsa,
) -> Result<()> {
    let _ = isa;
    check_len(257 * 4, table.len())?;
    check_len(x.len(), out.len())?;
    // the points as i32 once (a run is thousands of values): then each value reads two entries
    // of a fixed-size array at indices the compiler can bound, no byte assembly
    let mut points = [0i32; 257];
    for (p, b) in points.iter_mut().zip(table.chunks_exact(4)) {
        *p = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    // x86-64 with AVX-512 BW or AVX2 (std builds detect them), int8 or int16 out: 16 or 8 per
    // step, the same rule
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let done = {
        use crate::kernels::{is_i16, is_i8, x86_avx2_ops as v2, x86_avx512_ops as v5, OpsIsa};
        let (o, len) = (out.as_mut_ptr() as *mut u8, out.len());
        // SAFETY: the level's features are the CPU's (`lut_16_on`'s caller); `out` holds `len`
        // codes of U's width
        unsafe {
            match (isa, is_i8::<U>(), is_i16::<U>()) {
                (OpsIsa::Avx512, true, _) => v5::lut16::<false>(x, &points, o, len),
                (OpsIsa::Avx512, _, true) => v5::lut16::<true>(x, &points, o, len),
                (OpsIsa::Avx2, true, _) => v2::lut16::<false>(x, &points, o, len),
                (OpsIsa::Avx2, _, true) => v2::lut16::<true>(x, &points, o, len),
                _ => 0,
            }
        }
    };
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    let done = 0;
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        let u = (v as i32 + 32768) as usize;
        let (i, f) = (u >> 8, (u & 255) as i64);
        let v = points[i] as i64 * (256 - f) + points[i + 1] as i64 * f;
        *o = U::sat(round_shift(v, 16));
    }
    Ok(())
}

/// `out[i] = table[x[i] + 128]`.
#[inline(always)]
pub fn lut(x: &[i8], table: &[u8], out: &mut [i8]) -> Result<()> {
    check_len(256, table.len())?;
    check_len(x.len(), out.len())?;
    // aarch64: 16 lookups per four-register `TBL`/`TBX` chain (the same table entries)
    #[cfg(target_arch = "aarch64")]
    let done = crate::kernels::neon_ops::lut8(x, table, out);
    // x86-64 with AVX-512 VBMI (std builds detect it): 64 lookups per two `vpermi2b`
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let done = if crate::kernels::ops_isa() == crate::kernels::OpsIsa::Avx512
        && std::arch::is_x86_feature_detected!("avx512vbmi")
    {
        // SAFETY: the features were just detected
        unsafe { crate::kernels::x86_avx512_ops::lut8(x, table, out) }
    } else {
        0
    };
    #[cfg(not(any(target_arch = "aarch64", all(target_arch = "x86_64", feature = "std"))))]
    let done = 0;
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        *o = table[(v as i32 + 128) as usize] as i8;
    }
    Ok(())
}

/// f32 -> int8: `clamp(rint(x / scale) + zero)`, round half to even.
pub fn quantize<U: Code>(x: &[f32], scale: f32, zero: i32, out: &mut [U]) -> Result<()> {
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        let q = libm::rintf(v / scale);
        let q = if q.is_nan() { 0.0 } else { q };
        *o = U::sat(q.clamp(-1.0e6, 1.0e6) as i64 + zero as i64);
    }
    Ok(())
}

pub fn dequantize<T: Code>(x: &[T], scale: f32, zero: i32, out: &mut [f32]) -> Result<()> {
    check_len(x.len(), out.len())?;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v.get() - zero) as f32 * scale;
    }
    Ok(())
}
