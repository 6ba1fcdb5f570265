//! The tile a product hands to its sink ([`super::gemm::run_rows`]) and the tile's vectorised write
//! into an output tensor.
use super::reference::Code;
use crate::{Error, Result};

/// Most rows and pixels of a tile.
pub const MAX_MR: usize = 8;
pub const MAX_NR: usize = 8;
/// Most rows and pixels of a packed tile (one row register of the AVX-512 tiles by a chunk of
/// pixels: every row written as one run of bytes, not 8 bytes at a time).
pub const PACKED_MR: usize = 16;
pub const PACKED_NR: usize = 128;

/// What a tile hands to its sink: rows `r0..r0 + rows` (all `< n`) by pixels `p0..p0 + cols`,
/// either output codes (`codes[j][i]`: pixel `p0 + j`, row `r0 + i`; the epilogue applied, in the
/// output's code range) or raw sums (`sums[i][j]`, exact or wrapped in i32 and read as i32), as the
/// [`super::gemm::Finish`] asked. A tile whose codes all fit int8 may carry them instead as `bytes`
/// (`bytes[i][j]`, row-major like an NCHW output) with `packed` set, up to [`PACKED_MR`] x
/// [`PACKED_NR`], which the AVX-512 epilogue does (it narrows 16 rows at a time in registers and
/// transposes them to rows); or, with `by_pixel` also set, as each pixel's rows together (`bytes`
/// read as `[[i8; PACKED_MR]; PACKED_NR]`), for a sink that writes pixel-major. The arrays not in
/// use hold no meaning; [`Tile::code`] reads a code from any form.
#[derive(Debug, Clone)]
pub struct Tile {
    pub r0: usize,
    pub p0: usize,
    pub rows: usize,
    pub cols: usize,
    pub codes: [[i32; MAX_MR]; MAX_NR],
    pub sums: [[i64; MAX_NR]; MAX_MR],
    /// codes as bytes, row-major: read when `packed`
    pub bytes: [[i8; PACKED_NR]; PACKED_MR],
    pub packed: bool,
    /// packed codes by pixel (`PACKED_MR` bytes each), not by row
    pub by_pixel: bool,
}

impl Tile {
    pub fn new() -> Tile {
        Tile {
            r0: 0,
            p0: 0,
            rows: 0,
            cols: 0,
            codes: [[0; MAX_MR]; MAX_NR],
            sums: [[0; MAX_NR]; MAX_MR],
            bytes: [[0; PACKED_NR]; PACKED_MR],
            packed: false,
            by_pixel: false,
        }
    }

    /// The packed codes of pixel `p0 + j` by row, when `by_pixel`.
    #[inline(always)]
    fn pixel(&self, j: usize) -> &[i8; PACKED_MR] {
        &self.bytes.as_flattened().as_chunks::<PACKED_MR>().0[j]
    }

    /// The code of row `r0 + i`, pixel `p0 + j`, from whichever form the tile carries.
    #[inline(always)]
    pub fn code(&self, i: usize, j: usize) -> i32 {
        if self.packed && self.by_pixel {
            self.pixel(j)[i] as i32
        } else if self.packed {
            self.bytes[i][j] as i32
        } else {
            self.codes[j][i]
        }
    }

    /// Writes the tile's codes: row `r`, pixel `p` at `out[(r - rbase) * rs + p * ps]`.
    #[inline(always)]
    pub fn write<U: Code>(&self, out: &mut [U], rbase: usize, rs: usize, ps: usize) -> Result<()> {
        if self.rows == 0 || self.cols == 0 {
            return Ok(());
        }
        let last =
            (self.r0 + self.rows - 1).wrapping_sub(rbase) * rs + (self.p0 + self.cols - 1) * ps;
        if self.r0 < rbase || last >= out.len() {
            return Err(Error::BufferLength {
                expected: last + 1,
                got: out.len(),
            });
        }
        let base = (self.r0 - rbase) * rs + self.p0 * ps;
        let (rows, cols) = (self.rows, self.cols);
        if self.packed {
            self.write_bytes(out, base, rs, ps);
            return Ok(());
        }
        // codes are in U's range (the epilogue clamps), so `sat` only converts
        #[cfg(target_arch = "aarch64")]
        {
            // 8 rows of 8 or 4 consecutive pixels, or pixels of 8 consecutive rows
            let by_rows = ps == 1 && (cols == MAX_NR || cols == 4);
            if rows == MAX_MR && (by_rows || rs == 1) && U::MAX <= i16::MAX as i32 {
                let bytes = core::mem::size_of::<U>();
                // SAFETY: NEON is baseline on aarch64; the tile's last element is in `out`
                // (checked above); U is i8 or i16 and the narrowing saturates to its range
                unsafe {
                    let dst = out.as_mut_ptr().add(base) as *mut u8;
                    if by_rows {
                        super::neon_ops::write_rows8(&self.codes, cols, dst, rs, bytes);
                    } else {
                        super::neon_ops::write_pixels8(&self.codes, cols, dst, ps, bytes);
                    }
                }
                return Ok(());
            }
        }
        #[cfg(target_arch = "x86_64")]
        if rows == MAX_MR && (rs == 1 || ps == 1) && U::MAX <= i16::MAX as i32 {
            // SAFETY: the tile's last element is in `out` (checked above); U is i8 or i16 and the
            // packs saturate to its range, as `sat` does
            unsafe {
                super::x86::write_tile8(
                    &self.codes,
                    cols,
                    out.as_mut_ptr().add(base) as *mut u8,
                    rs,
                    ps,
                    core::mem::size_of::<U>(),
                )
            };
            return Ok(());
        }
        if ps == 1 {
            for i in 0..rows {
                let row = &mut out[base + i * rs..base + i * rs + cols];
                for (j, o) in row.iter_mut().enumerate() {
                    *o = U::sat(self.codes[j][i] as i64);
                }
            }
        } else if rs == 1 {
            for j in 0..cols {
                let px = &mut out[base + j * ps..base + j * ps + rows];
                for (o, &c) in px.iter_mut().zip(&self.codes[j]) {
                    *o = U::sat(c as i64);
                }
            }
        } else {
            for j in 0..cols {
                for i in 0..rows {
                    out[base + i * rs + j * ps] = U::sat(self.codes[j][i] as i64);
                }
            }
        }
        Ok(())
    }

    /// The packed form's write (the tile's extent already checked against `out` from `base`): into
    /// an int8 output, each pixel's 16 bytes stored whole (`by_pixel`, `rs == 1`) or each row's
    /// bytes copied as one run (`ps == 1`); otherwise code by code.
    #[inline(always)]
    fn write_bytes<U: Code>(&self, out: &mut [U], base: usize, rs: usize, ps: usize) {
        let (rows, cols) = (self.rows.min(PACKED_MR), self.cols.min(PACKED_NR));
        let one = core::mem::size_of::<U>() == 1;
        if self.by_pixel {
            for j in 0..cols {
                let px = self.pixel(j);
                if one && rs == 1 {
                    // SAFETY: pixel `j`'s `rows` codes are in `out` (checked by the caller); U is
                    // one byte
                    unsafe {
                        let dst = out.as_mut_ptr().add(base + j * ps) as *mut i8;
                        if rows == PACKED_MR {
                            (dst as *mut [i8; PACKED_MR]).write_unaligned(*px);
                        } else if rows == 8 {
                            // the AVX2 tiles' 8 rows (a run-time length is a call per pixel)
                            (dst as *mut [i8; 8])
                                .write_unaligned(*px.first_chunk::<8>().unwrap_or(&[0; 8]));
                        } else {
                            core::ptr::copy_nonoverlapping(px.as_ptr(), dst, rows);
                        }
                    }
                } else {
                    for (i, &b) in px.iter().enumerate().take(rows) {
                        out[base + i * rs + j * ps] = U::sat(b as i64);
                    }
                }
            }
            return;
        }
        if one && ps == 1 {
            for (i, row) in self.bytes.iter().enumerate().take(rows) {
                // 16 bytes at a time inline (a `copy_nonoverlapping` of a run-time length is a
                // call per row), then the rest byte by byte
                let whole = cols / 16 * 16;
                for j in (0..whole).step_by(16) {
                    // SAFETY: row `i`'s `cols` codes are in `out` (checked by the caller); U is
                    // one byte; `j + 16 <= cols`
                    unsafe {
                        let dst = out.as_mut_ptr().add(base + i * rs + j) as *mut [i8; 16];
                        dst.write_unaligned(
                            (row.as_ptr().add(j) as *const [i8; 16]).read_unaligned(),
                        )
                    };
                }
                for j in whole..cols {
                    out[base + i * rs + j] = U::sat(row[j] as i64);
                }
            }
            return;
        }
        // rows into a pixel-major or strided output: the sinks that write pixel-major set
        // `Epilogue::by_pixel`, so this is the general case only
        for (i, row) in self.bytes.iter().enumerate().take(rows) {
            for (j, &b) in row.iter().enumerate().take(cols) {
                out[base + i * rs + j * ps] = U::sat(b as i64);
            }
        }
    }
}

impl Default for Tile {
    fn default() -> Self {
        Tile::new()
    }
}
