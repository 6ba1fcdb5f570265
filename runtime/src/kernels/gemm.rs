//! The product engine of convolutions, linears and attention matmuls: packed weights times staged
//! activations, in register tiles, with one requantization epilogue.
//!
//! **Weights** (`Packed`) are stored the way the tiles read them: rows (output channels) padded to
//! a multiple of 4, depth padded to a multiple of 4 (for a convolution: the input channels of every
//! kernel tap), in blocks of 4 rows x 4 depth: `[n4 / 4][k4 / 4][4 rows][4 depth]` int8. The compiler
//! writes them so (4-bit weights: the same order, two codes per byte, low nibble first).
//!
//! **Activations** are staged once per op so that the 4 depth values a block multiplies are
//! contiguous for every output pixel (or token): NHWC with the padding border filled with the input
//! zero point, channels padded to a multiple of 4 (`Stage`). Pixel `p`'s depth `q` is then
//! `stage[base(p) + tap(q / c4) + q % c4]`.
//!
//! **The specification** is [`reference_tile`]: `acc(r, p) = sum_q w(r, q) * x(p, q)` in wrapping i32
//! for int8 activations (any order of the same products gives the same bits) and exact i64 for
//! int16 ones; the epilogue adds the int32 bias and requantizes with [`super::requant`]'s rule. The
//! SIMD tiles ([`super::x86`], [`super::neon`]) compute the same sums.
use super::reference::Code;
use super::Tier;
use crate::{Error, Result};

/// Rows (output channels) per weight block and depth values per block row.
pub const BLOCK: usize = 4;

/// `n` rounded up to a whole number of blocks.
pub fn pad4(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// Bytes of packed weights for `n` rows of depth `k4` (already a multiple of 4) at `bits`.
pub fn packed_bytes(bits: u8, n: usize, k4: usize) -> usize {
    let b = pad4(n) * k4;
    if bits == 4 {
        b / 2
    } else {
        b
    }
}

/// The largest sum of |weight| over a row of packed weights (8-bit, or 4-bit two per byte).
pub fn abs_row_sum_max(bits: u8, packed: &[u8], n: usize, k4: usize) -> u64 {
    // a block is 4 rows x 4 depth: 16 bytes, or 8 at 4 bits (row i in bytes 2i, 2i + 1); per row
    // group, |value| summed lane by lane over its blocks (a loop the compiler vectorizes), then
    // the lanes of each row added
    let bb = if bits == 4 { 8 } else { 16 };
    let mut most = 0u64;
    for g in packed
        .chunks(bb * (k4 / BLOCK).max(1))
        .take(pad4(n) / BLOCK)
    {
        let mut lanes = [0u64; 16];
        // u16 lanes for 256 blocks at a time (each adds at most 128), then into u64
        for run in g.chunks(256 * bb) {
            let mut part = [0u16; 16];
            for blk in run.chunks_exact(bb) {
                for (l, &b) in part.iter_mut().zip(blk) {
                    *l += if bits == 4 {
                        (((b << 4) as i8) >> 4).unsigned_abs() as u16
                            + ((b as i8) >> 4).unsigned_abs() as u16
                    } else {
                        (b as i8).unsigned_abs() as u16
                    };
                }
            }
            for (l, p) in lanes.iter_mut().zip(part) {
                *l += p as u64;
            }
        }
        let per = bb / BLOCK;
        for i in 0..BLOCK {
            most = most.max(lanes[i * per..(i + 1) * per].iter().sum());
        }
    }
    most
}

/// Index of weight (row `r`, depth `q`) in the packed int8 layout of depth `k4`.
#[inline(always)]
pub fn packed_index(r: usize, q: usize, k4: usize) -> usize {
    (r / BLOCK) * BLOCK * k4 + (q / BLOCK) * BLOCK * BLOCK + (r % BLOCK) * BLOCK + q % BLOCK
}

/// Unpacks 4-bit packed weights (two codes per byte, low nibble first, codes in [-8, 7]) to int8
/// in the same order: whole runs with `tier`'s registers (32 bytes per AVX2 step, 16 per NEON
/// step), the rest as [`unpack4_scalar`], which they equal.
pub fn unpack4(tier: Tier, src: &[u8], dst: &mut [i8]) -> Result<()> {
    if dst.len() != 2 * src.len() {
        return Err(Error::BufferLength {
            expected: 2 * src.len(),
            got: dst.len(),
        });
    }
    let done = match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the x86 tiers are only chosen after detecting AVX2 (`Tier::supported`)
        Tier::Avx2 | Tier::AvxVnni | Tier::Avx512Vnni => unsafe { super::x86::unpack4(src, dst) },
        #[cfg(target_arch = "aarch64")]
        Tier::Neon | Tier::NeonDot => super::neon_ops::unpack4(src, dst),
        _ => 0,
    };
    unpack4_scalar(&src[done..], &mut dst[2 * done..]);
    Ok(())
}

/// The specification of [`unpack4`] (`dst` holds two codes per byte of `src`).
pub fn unpack4_scalar(src: &[u8], dst: &mut [i8]) {
    for (b, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
        d[0] = ((b << 4) as i8) >> 4;
        d[1] = (*b as i8) >> 4;
    }
}

/// Where each output pixel's depth values start in the stage, and the taps of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pixels {
    /// output pixels (or tokens)
    pub count: usize,
    /// pixels per output row (1 row of `count` for a product over tokens)
    pub width: usize,
    /// stage offset of the first pixel of output row `y`: `y * row_step`; of pixel `x` in a row:
    /// `x * col_step`
    pub row_step: usize,
    pub col_step: usize,
    /// kernel taps: `kh x kw`, tap `(ky, kx)` at stage offset `ky * tap_row + kx * c4`
    pub kh: usize,
    pub kw: usize,
    pub tap_row: usize,
    /// depth values per tap (a multiple of 4)
    pub c4: usize,
}

impl Pixels {
    /// A plain matrix: `rows` rows of depth `k4`, each starting `stride` after the previous.
    pub fn rows(rows: usize, k4: usize, stride: usize) -> Pixels {
        Pixels {
            count: rows,
            width: rows.max(1),
            row_step: 0,
            col_step: stride,
            kh: 1,
            kw: 1,
            tap_row: 0,
            c4: k4,
        }
    }
    /// Depth of every pixel.
    pub fn k4(&self) -> usize {
        self.kh * self.kw * self.c4
    }
    /// Stage offset of pixel `p`'s first depth value.
    #[inline(always)]
    pub fn base(&self, p: usize) -> usize {
        (p / self.width) * self.row_step + (p % self.width) * self.col_step
    }
    /// Stage offsets of the `N` pixels from `p0` (pixels past the last repeat the last): one
    /// division, then steps along the row.
    #[inline(always)]
    pub fn bases<const N: usize>(&self, p0: usize) -> [usize; N] {
        let last = self.count.saturating_sub(1);
        let p = p0.min(last);
        let (mut y, mut x) = (p / self.width, p % self.width);
        core::array::from_fn(|j| {
            let b = y * self.row_step + x * self.col_step;
            if p0 + j < last {
                x += 1;
                if x == self.width {
                    (y, x) = (y + 1, 0);
                }
            }
            b
        })
    }
    /// The last stage index any pixel reads, plus one (0 without pixels).
    pub fn extent(&self) -> usize {
        if self.count == 0 || self.c4 == 0 {
            return 0;
        }
        self.base(self.count - 1) + (self.kh - 1) * self.tap_row + (self.kw - 1) * self.c4 + self.c4
    }
}

/// Accumulators of a tile: wrapping i32 for int8 activations, exact i64 for int16.
pub trait Sum: Copy + Default + Send + Sync {
    fn add_dot(self, w: i8, x: i32) -> Self;
    fn add(self, other: Self) -> Self;
    fn from_i32(v: i32) -> Self;
    fn value(self) -> i64;
}

impl Sum for i32 {
    #[inline(always)]
    fn add_dot(self, w: i8, x: i32) -> Self {
        self.wrapping_add(w as i32 * x)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v
    }
    #[inline(always)]
    fn value(self) -> i64 {
        self as i64
    }
}

impl Sum for i64 {
    #[inline(always)]
    fn add_dot(self, w: i8, x: i32) -> Self {
        self + w as i64 * x as i64
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self + o
    }
    #[inline(always)]
    fn from_i32(v: i32) -> Self {
        v as i64
    }
    #[inline(always)]
    fn value(self) -> i64 {
        self
    }
}

/// The specification of one tile: `acc[i][j] = sum_q w(r0 + i, q) * x(pix[j], q)` over all depth,
/// for the `BLOCK` rows from `r0` (a multiple of 4) and the given pixels.
pub fn reference_tile<T: Code, S: Sum, const NP: usize>(
    w: &[i8],
    k4: usize,
    r0: usize,
    stage: &[T],
    px: &Pixels,
    pix: [usize; NP],
) -> [[S; NP]; BLOCK] {
    let mut acc = [[S::default(); NP]; BLOCK];
    let block = &w[(r0 / BLOCK) * BLOCK * k4..(r0 / BLOCK + 1) * BLOCK * k4];
    let mut q = 0;
    for ky in 0..px.kh {
        for kx in 0..px.kw {
            let tap = ky * px.tap_row + kx * px.c4;
            for c in (0..px.c4).step_by(BLOCK) {
                let wq = &block[q * BLOCK..(q + BLOCK) * BLOCK];
                for (j, &p) in pix.iter().enumerate() {
                    let xs = &stage[p + tap + c..p + tap + c + BLOCK];
                    for (i, row) in acc.iter_mut().enumerate() {
                        let mut s = row[j];
                        for d in 0..BLOCK {
                            s = s.add_dot(wq[i * BLOCK + d], xs[d].get());
                        }
                        row[j] = s;
                    }
                }
                q += BLOCK;
            }
        }
    }
    acc
}

/// A product to run: packed int8 weights of `n` rows and depth `px.k4()`, the staged activations,
/// which pixels, and whether the sums must be exact (int16 activations) or wrap in i32 (int8).
pub struct Product<'a, T: Code> {
    pub w: &'a [i8],
    pub n: usize,
    pub stage: &'a [T],
    pub px: Pixels,
    pub exact: bool,
    /// the weights may hold -128: an activation operand packed at run time (a model's weights are
    /// in [-127, 127], checked at load, which lets the Armv8.0 tile add two products in i16)
    pub full_range: bool,
    /// an upper bound on any row's sum of |weight| (from [`abs_row_sum_max`] at prepare;
    /// `u64::MAX` when unknown): lets an int16 product see at once that its sums fit i32
    pub wsum: u64,
}

impl<T: Code> Product<'_, T> {
    fn check(&self) -> Result<()> {
        let k4 = self.px.k4();
        super::check_len(pad4(self.n) * k4, self.w.len())?;
        if self.px.extent() > self.stage.len() || self.px.c4 % BLOCK != 0 {
            return Err(Error::BufferLength {
                expected: self.px.extent(),
                got: self.stage.len(),
            });
        }
        Ok(())
    }
}

pub use super::tile::{Tile, MAX_MR, MAX_NR, PACKED_MR, PACKED_NR};

/// What a product's tiles deliver: codes through an epilogue, or the raw sums (for checks).
#[derive(Clone, Copy)]
pub enum Finish<'e> {
    Codes(&'e Epilogue<'e>),
    Sums,
}

/// Runs rows `r0..r1` (multiples of 4, `r1` may be the padded end) of a product over every pixel
/// with the tiles of `tier`, calling `emit(tile)` for every tile, its rows clipped to the real rows
/// (`< n`). The sums are exact when `prod.exact` and otherwise wrap in i32; `finish` says whether
/// the tiles carry codes (the epilogue applied) or those sums.
pub fn run_rows<T: Code>(
    tier: Tier,
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    mut emit: impl FnMut(&Tile),
) -> Result<()> {
    prod.check()?;
    if r0 % BLOCK != 0 || r1 > pad4(prod.n) {
        return Err(Error::BufferLength {
            expected: pad4(prod.n),
            got: r1,
        });
    }
    if let Finish::Codes(e) = finish {
        e.check(prod.n, prod.px.count)?;
    }
    #[cfg(target_arch = "x86_64")]
    super::x86_vnni::check(tier, prod)?;
    let n = prod.n;
    let mut out = |t: &mut Tile| {
        t.rows = t.rows.min(n.saturating_sub(t.r0));
        if t.rows > 0 {
            emit(t)
        }
    };
    match tier {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: each x86 tier is only chosen after detecting its features
        Tier::Avx2 | Tier::AvxVnni | Tier::Avx512Vnni => unsafe {
            super::x86::run_rows(tier, prod, (r0, r1), finish, &mut out)
        },
        #[cfg(target_arch = "aarch64")]
        Tier::Neon | Tier::NeonDot => {
            super::neon::product_rows(tier, prod, (r0, r1), finish, &mut out)
        }
        _ => scalar_fallback(prod, (r0, r1), finish, &mut out),
    }
    Ok(())
}

/// The scalar tier: [`reference_tile`] over 4 rows x 4 pixels tiles.
pub(crate) fn scalar_fallback<T: Code>(
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    let k4 = prod.px.k4();
    let count = prod.px.count;
    let mut t = Tile::new();
    for r in (r0..r1).step_by(BLOCK) {
        for p0 in (0..count).step_by(BLOCK) {
            let bases = prod.px.bases(p0);
            (t.r0, t.p0, t.rows, t.cols) = (r, p0, BLOCK, BLOCK.min(count - p0));
            if !prod.exact {
                let acc =
                    reference_tile::<T, i32, BLOCK>(prod.w, k4, r, prod.stage, &prod.px, bases);
                for i in 0..BLOCK {
                    for j in 0..BLOCK {
                        t.sums[i][j] = acc[i][j] as i64;
                    }
                }
            } else {
                let acc =
                    reference_tile::<T, i64, BLOCK>(prod.w, k4, r, prod.stage, &prod.px, bases);
                for i in 0..BLOCK {
                    t.sums[i][..BLOCK].copy_from_slice(&acc[i]);
                }
            }
            finish_sums(&mut t, finish, prod.exact);
            out(&mut t);
        }
    }
}

/// Whether every sum of the 8 rows `r..r + 8` (weight blocks `w0` of rows `r..r + 4`, `w1` of the
/// next 4) over int16 codes (|x| <= 2^15), plus the row's bias and the largest pixel term `col`, stays
/// below 2^31 in magnitude: then i32 lanes and the wrapping epilogue compute the exact rule, and
/// an int16 product may accumulate like an int8 one.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn fits_i32(
    wsum: u64,
    col: u64,
    w0: &[i8],
    w1: &[i8],
    finish: Finish<'_>,
    r: usize,
) -> bool {
    let Finish::Codes(e) = finish else {
        return false;
    };
    let bias = (r..r + 2 * BLOCK)
        .map(|i| e.row(i).bias.unsigned_abs() as u64)
        .max()
        .unwrap_or(0);
    let room = (1u64 << 31).saturating_sub(bias + col);
    // the bound of the whole product (found at prepare) first, then these rows' own sums
    if wsum < u64::MAX && wsum.saturating_mul(32768) < room {
        return true;
    }
    let k4 = w0.len() / BLOCK;
    k4 > 0
        && [w0, w1].iter().all(|w| {
            w.chunks_exact(BLOCK * BLOCK)
                .fold([0u64; BLOCK], |mut acc, blk| {
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a += blk[i * BLOCK..(i + 1) * BLOCK]
                            .iter()
                            .map(|v| v.unsigned_abs() as u64)
                            .sum::<u64>();
                    }
                    acc
                })
                .iter()
                .all(|&s| s * 32768 < room)
        })
}

/// The largest |pixel term| of an epilogue (0 without one).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn col_max(finish: Finish<'_>) -> u64 {
    match finish {
        Finish::Codes(e) => e
            .col
            .iter()
            .map(|v| v.unsigned_abs() as u64)
            .max()
            .unwrap_or(0),
        Finish::Sums => 0,
    }
}

/// Applies the epilogue (if `finish` asks for codes) to a tile's sums, element by element: the
/// specification [`Epilogue::code`].
#[inline]
pub(crate) fn finish_sums(t: &mut Tile, finish: Finish<'_>, exact: bool) {
    if let Finish::Codes(e) = finish {
        for i in 0..t.rows {
            let row = e.row(t.r0 + i);
            for j in 0..t.cols {
                t.codes[j][i] = e.code_of(&row, t.p0 + j, t.sums[i][j], exact);
            }
        }
    }
}

/// Per-row requantization: one table entry per row, or one pair for every row.
#[derive(Debug, Clone, Copy)]
pub enum Requants<'a> {
    /// little-endian (mult i32, shift i32) per row
    PerRow(&'a [u8]),
    Uniform {
        mult: i32,
        shift: u8,
    },
}

/// The epilogue of a product: the int32 bias per row (little endian) and, optionally, one per
/// pixel (`col`, empty for none) added to the sum, then the row's requantization to output codes
/// with zero point `zo`, clamped to `lo..=hi` (the output type's code range). `by_pixel` is a
/// hint of the sink's layout, not of the values: set when it writes pixel-major (row stride 1), so
/// that a packed tile carries each pixel's rows together ([`Tile::by_pixel`]).
///
/// `code = clamp(round_shift((bias[r] + col[p] + acc) * mult[r], shift[r]) + zo, lo, hi)` with the
/// additions wrapping in i32 for int8 activations and exact (the product in i128) for int16 ones.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: &'a [u8],
    pub requant: Requants<'a>,
    pub col: &'a [i32],
    pub zo: i32,
    pub lo: i32,
    pub hi: i32,
    pub by_pixel: bool,
}

/// One row's epilogue constants (the shift clamped to 1..=62).
#[derive(Debug, Clone, Copy)]
pub struct RowConsts {
    pub bias: i32,
    pub mult: i32,
    pub shift: u8,
}

impl<'a> Epilogue<'a> {
    /// Per-row bias and requantization, no per-pixel term, codes of type `U`.
    pub fn new<U: Code>(bias: &'a [u8], requant: Requants<'a>, zo: i32) -> Self {
        Epilogue {
            bias,
            requant,
            col: &[],
            zo,
            lo: U::MIN,
            hi: U::MAX,
            by_pixel: false,
        }
    }

    /// The same epilogue for a sink that writes pixel-major (`by_pixel`).
    pub fn by_pixel(self) -> Self {
        Epilogue {
            by_pixel: true,
            ..self
        }
    }

    /// Checks the tables cover `n` rows and `col` (if given) `pixels` pixels.
    pub fn check(&self, n: usize, pixels: usize) -> Result<()> {
        super::check_len(4 * n, self.bias.len())?;
        if let Requants::PerRow(t) = self.requant {
            super::check_len(8 * n, t.len())?;
        }
        if !self.col.is_empty() {
            super::check_len(pixels, self.col.len())?;
        }
        if self.lo > self.hi {
            return Err(Error::Unsupported("empty output code range"));
        }
        Ok(())
    }

    /// Row `r`'s constants (rows beyond the tables: bias 0, mult 0, shift 32).
    #[inline(always)]
    pub fn row(&self, r: usize) -> RowConsts {
        if 4 * r + 4 > self.bias.len() {
            return RowConsts {
                bias: 0,
                mult: 0,
                shift: 32,
            };
        }
        let (mult, shift) = match self.requant {
            Requants::PerRow(t) => super::requant_entry(t, r),
            Requants::Uniform { mult, shift } => (mult, shift),
        };
        RowConsts {
            bias: super::le_i32(self.bias, r),
            mult,
            shift: shift.clamp(1, 62),
        }
    }

    /// The output code of row `r`, pixel `p` for the sum `acc` (the specification).
    #[inline(always)]
    pub fn code(&self, r: usize, p: usize, acc: i64, exact: bool) -> i32 {
        self.code_of(&self.row(r), p, acc, exact)
    }

    #[inline(always)]
    pub fn code_of(&self, c: &RowConsts, p: usize, acc: i64, exact: bool) -> i32 {
        let col = self.col.get(p).copied().unwrap_or(0);
        let v = if exact {
            c.bias as i64 + col as i64 + acc
        } else {
            c.bias.wrapping_add(col).wrapping_add(acc as i32) as i64
        };
        let r = if v as i32 as i64 == v {
            // |v| <= 2^31, |mult| <= 2^31: exact in i64
            ((v * c.mult as i64 + (1i64 << (c.shift - 1))) >> c.shift) + self.zo as i64
        } else {
            let w = (v as i128 * c.mult as i128 + (1i128 << (c.shift - 1))) >> c.shift;
            w.clamp(i64::MIN as i128 / 2, i64::MAX as i128 / 2) as i64 + self.zo as i64
        };
        r.clamp(self.lo as i64, self.hi as i64) as i32
    }
}

#[cfg(test)]
mod wsum_tests {
    use super::*;

    /// The bound is each row's sum of |weight| read through `packed_index`, at 8 and 4 bits.
    #[test]
    fn abs_row_sum_max_matches_a_direct_sum() {
        let (n, k4) = (7, 12);
        let w: Vec<i8> = (0..pad4(n) * k4)
            .map(|i| ((i * 37 % 255) as i32 - 127) as i8)
            .collect();
        let direct = |f: &dyn Fn(usize, usize) -> i8| {
            (0..n)
                .map(|r| (0..k4).map(|q| f(r, q).unsigned_abs() as u64).sum::<u64>())
                .max()
                .unwrap()
        };
        let bytes: Vec<u8> = w.iter().map(|&v| v as u8).collect();
        assert_eq!(
            abs_row_sum_max(8, &bytes, n, k4),
            direct(&|r, q| w[packed_index(r, q, k4)])
        );
        let w4: Vec<i8> = w.iter().map(|&v| v.rem_euclid(16) - 8).collect();
        let packed: Vec<u8> = w4
            .chunks(2)
            .map(|p| (p[0] as u8 & 15) | ((p[1] as u8) << 4))
            .collect();
        assert_eq!(
            abs_row_sum_max(4, &packed, n, k4),
            direct(&|r, q| w4[packed_index(r, q, k4)])
        );
    }
}
