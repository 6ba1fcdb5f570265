//! The AVX2 epilogue of 8 rows ([`Consts`]): the requantization of [`Epilogue::code`] on a
//! pixel's row sums as vectors, with the shift as the high half's for shifts of 32 and more and
//! as a 64-bit arithmetic shift below that ([`LowShifts`]). Every x86 tier's 8-row epilogue.
use super::gemm::{Epilogue, Tile, BLOCK};
use super::x86::NR;
use core::arch::x86_64::*;

/// The epilogue constants of 8 rows as vectors (see [`Consts::codes`]).
pub(super) struct Consts {
    bias: __m256i,
    /// multipliers in lanes 0, 2, 4, 6 of each 64-bit pair (the even rows), and of the odd rows
    mult: __m256i,
    mult_odd: __m256i,
    /// 2^(shift - 1) of the even and the odd rows, i64
    round: __m256i,
    round_odd: __m256i,
    /// shift - 32 per row
    shift: __m256i,
    zo: __m256i,
    lo: __m256i,
    hi: __m256i,
    /// where some row's shift is below 32: the shifts as i64 lanes for the 64-bit path
    low: Option<LowShifts>,
}

/// The 64-bit epilogue's constants of 8 rows ([`Consts::codes`] where a shift is below 32): the
/// shifts of the even and the odd rows and 64 minus them, as i64 lanes, and the clamp's bounds
/// less the zero point (`lo - zo`, `hi - zo`) as i64.
pub(super) struct LowShifts {
    shift: [__m256i; 2],
    fill: [__m256i; 2],
    lo: __m256i,
    hi: __m256i,
}

impl Consts {
    /// Rows `r..r + 8` of `e` (shifts are 1..=62, [`Epilogue::row`]; where one is below 32 the
    /// rows take the 64-bit path, [`LowShifts`]).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn new(e: &Epilogue<'_>, r: usize) -> Consts {
        let rows: [_; 8] = core::array::from_fn(|i| e.row(r + i));
        // plain arrays (closures behind `dyn Fn` cost an indirect call per value: about 3 % of a
        // UNet step, as this runs per row group and chunk of pixels)
        // SAFETY (both): the arrays are 32 bytes
        let v32 = |a: [i32; 8]| unsafe { _mm256_loadu_si256(a.as_ptr() as *const __m256i) };
        let v64 = |a: [i64; 4]| unsafe { _mm256_loadu_si256(a.as_ptr() as *const __m256i) };
        let mult = v32(rows.map(|c| c.mult));
        Consts {
            bias: v32(rows.map(|c| c.bias)),
            mult,
            mult_odd: _mm256_srli_epi64(mult, 32),
            round: v64(core::array::from_fn(|k| 1i64 << (rows[2 * k].shift - 1))),
            round_odd: v64(core::array::from_fn(|k| {
                1i64 << (rows[2 * k + 1].shift - 1)
            })),
            shift: v32(rows.map(|c| c.shift as i32 - 32)),
            zo: _mm256_set1_epi32(e.zo),
            lo: _mm256_set1_epi32(e.lo),
            hi: _mm256_set1_epi32(e.hi),
            low: rows.iter().any(|c| c.shift < 32).then(|| {
                let shifts = rows.map(|c| c.shift as i64);
                let even = [0, 2, 4, 6].map(|i| shifts[i]);
                let odd = [1, 3, 5, 7].map(|i| shifts[i]);
                LowShifts {
                    shift: [v64(even), v64(odd)],
                    fill: [v64(even.map(|s| 64 - s)), v64(odd.map(|s| 64 - s))],
                    lo: _mm256_set1_epi64x(e.lo as i64 - e.zo as i64),
                    hi: _mm256_set1_epi64x(e.hi as i64 - e.zo as i64),
                }
            }),
        }
    }

    /// Whether exact sums (`sums[row][pixel]`) and each plus its bias and pixel term fit i32, so
    /// that the wrapping epilogue computes the exact rule.
    pub(super) fn narrow(
        &self,
        e: &Epilogue<'_>,
        sums: &[[i64; NR]; 2 * BLOCK],
        p0: usize,
    ) -> bool {
        let mut bias = [0i32; 8];
        // SAFETY: `bias` is 32 bytes (AVX2 was detected for this tier)
        unsafe { _mm256_storeu_si256(bias.as_mut_ptr() as *mut __m256i, self.bias) };
        let fits = |v: i64| v as i32 as i64 == v;
        (0..NR).all(|j| {
            let col = e.col.get(p0 + j).copied().unwrap_or(0) as i64;
            (0..2 * BLOCK).all(|i| fits(sums[i][j]) && fits(sums[i][j] + bias[i] as i64 + col))
        })
    }

    /// The epilogue of [`Epilogue::code`] on 8 rows' wrapped sums per pixel ([`Consts::code8`]),
    /// into the tile's codes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn codes(&self, e: &Epilogue<'_>, v: &[__m256i], p0: usize, t: &mut Tile) {
        for (j, &s) in v.iter().enumerate().take(t.cols) {
            let r = self.code8(e, s, p0 + j);
            // SAFETY: a row of codes is 8 i32
            unsafe { _mm256_storeu_si256(t.codes[j].as_mut_ptr() as *mut __m256i, r) };
        }
    }

    /// The codes of 8 rows of pixel `p` from their wrapped sums `s`: `v = s + bias + col`
    /// (wrapping i32), `v * mult + round` exact in i64 (`vpmuldq`), the arithmetic shift by
    /// `shift >= 32` as the high half (`>> 32`) shifted by `shift - 32`, plus `zo`, clamped (rows
    /// with a smaller shift: [`LowShifts::codes`]).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn code8(&self, e: &Epilogue<'_>, s: __m256i, p: usize) -> __m256i {
        let mut x = _mm256_add_epi32(s, self.bias);
        if let Some(&c) = e.col.get(p) {
            x = _mm256_add_epi32(x, _mm256_set1_epi32(c));
        }
        let even = _mm256_add_epi64(_mm256_mul_epi32(x, self.mult), self.round);
        let odd = _mm256_add_epi64(
            _mm256_mul_epi32(_mm256_srli_epi64(x, 32), self.mult_odd),
            self.round_odd,
        );
        match &self.low {
            // SAFETY: register arithmetic (AVX2, this function's feature)
            Some(l) => unsafe { l.codes([even, odd], self.zo) },
            None => {
                let high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0b1010_1010);
                let r = _mm256_add_epi32(_mm256_srav_epi32(high, self.shift), self.zo);
                _mm256_min_epi32(_mm256_max_epi32(r, self.lo), self.hi)
            }
        }
    }
}

/// Hands over the rows `t.r0..t.r0 + t.rows` of a chunk of pixels (`c0..` of `count`, tile `i`'s
/// wrapped sums in `acc[i]`) as one packed tile of int8 codes ([`Tile::packed`]; `e`'s codes fit
/// int8): each pixel's 8 codes narrowed to 8 bytes, stored as the pixel's rows for a pixel-major
/// sink (`Epilogue::by_pixel`), else 8 pixels at a time transposed into rows. One sink call per
/// chunk instead of one per 6 pixels, and no 32-bit codes stored and read back: the same codes
/// as [`Consts::codes`] gives the tiles.
///
/// # Safety
/// AVX2; `acc` initialised; `acc.len() * NR <= CHUNK` pixels, `CHUNK` a multiple of 8 and at
/// most [`super::tile::PACKED_NR`].
#[target_feature(enable = "avx2")]
pub(super) unsafe fn emit_packed<const CHUNK: usize>(
    acc: &[core::mem::MaybeUninit<super::x86::Acc>],
    k: &Consts,
    e: &Epilogue<'_>,
    (c0, count): (usize, usize),
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    const {
        assert!(
            CHUNK.is_multiple_of(8)
                && CHUNK <= super::tile::PACKED_NR
                && super::tile::PACKED_MR >= 8
        )
    };
    // pixel-major: pixel `j`'s rows at byte `PACKED_MR j` of the tile's bytes (its by-pixel
    // layout); by row: 8 bytes per pixel here, transposed below
    let mut pix = [core::mem::MaybeUninit::<u64>::uninit(); CHUNK];
    let by_pixel = e.by_pixel;
    let flat = t.bytes.as_mut_ptr() as *mut i8;
    let done = (acc.len() * NR).min(CHUNK);
    for (i, a) in acc.iter().enumerate().take(CHUNK / NR) {
        // SAFETY: the caller's: `acc` initialised
        let a = unsafe { a.assume_init_ref() };
        for (j, (&lo, &hi)) in a[0].iter().zip(&a[1]).enumerate() {
            let p = i * NR + j;
            // SAFETY: register arithmetic (AVX2)
            let s = unsafe { super::x86::row_sums(lo, hi) };
            let r = k.code8(e, s, c0 + p);
            // codes within int8: the saturating narrowing only packs
            let w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
            let b = _mm_packs_epi16(w, w);
            if by_pixel {
                // SAFETY: `p < CHUNK <= PACKED_NR` pixels of `PACKED_MR >= 8` bytes in `bytes`
                unsafe {
                    _mm_storel_epi64(flat.add(super::tile::PACKED_MR * p) as *mut __m128i, b)
                };
            } else {
                pix[p].write(_mm_cvtsi128_si64(b) as u64);
            }
        }
    }
    if !by_pixel {
        let cols = CHUNK.min(count - c0);
        // the last block of 8 read whole: pixels past the tiles' as zeros (never written out)
        for v in pix.iter_mut().take(cols.next_multiple_of(8)).skip(done) {
            v.write(0);
        }
        for b0 in (0..cols).step_by(8) {
            // SAFETY: `b0 + 8 <= CHUNK` (a multiple of 8) entries of `pix`, each written above;
            // rows 0..8 of `bytes`, whose rows hold `PACKED_NR >= CHUNK` bytes
            unsafe {
                let px = (pix.as_ptr().add(b0) as *const [u64; 8]).read();
                let rows = transpose_bytes8(&px);
                for (i, &v) in rows.iter().enumerate() {
                    let d = t.bytes[i].as_mut_ptr().add(b0) as *mut __m128i;
                    if i % 2 == 0 {
                        _mm_storel_epi64(d, v);
                    } else {
                        _mm_storel_epi64(d, _mm_unpackhi_epi64(v, v));
                    }
                }
            }
        }
    }
    (t.packed, t.by_pixel) = (true, by_pixel);
    (t.p0, t.cols) = (c0, CHUNK.min(count - c0));
    out(t);
    (t.packed, t.by_pixel) = (false, false);
}

/// 8 pixels' 8 bytes (row `i` of pixel `j` in byte `i` of `px[j]`) to rows: row `i`'s 8 pixels in
/// the low half of register `i / 2` for even `i`, the high half for odd `i` (the registers
/// repeated, so `[i]` indexes them), by byte, word and dword unpacks.
#[target_feature(enable = "avx2")]
#[inline]
fn transpose_bytes8(px: &[u64; 8]) -> [__m128i; 8] {
    let a = px.map(|v| _mm_cvtsi64_si128(v as i64));
    // pixels 2 m and 2 m + 1 interleaved by byte: rows 0..8, two bytes each
    let t = [0, 1, 2, 3].map(|m| _mm_unpacklo_epi8(a[2 * m], a[2 * m + 1]));
    // pixels 0..4 (4..8) of rows 0..4, then of rows 4..8
    let u = [
        _mm_unpacklo_epi16(t[0], t[1]),
        _mm_unpackhi_epi16(t[0], t[1]),
        _mm_unpacklo_epi16(t[2], t[3]),
        _mm_unpackhi_epi16(t[2], t[3]),
    ];
    // rows 2 q and 2 q + 1 with pixels 0..8
    let v = [
        _mm_unpacklo_epi32(u[0], u[2]),
        _mm_unpackhi_epi32(u[0], u[2]),
        _mm_unpacklo_epi32(u[1], u[3]),
        _mm_unpackhi_epi32(u[1], u[3]),
    ];
    [v[0], v[0], v[1], v[1], v[2], v[2], v[3], v[3]]
}

impl LowShifts {
    /// The codes of 8 rows from `v * mult + round` of the even and the odd rows (exact i64
    /// lanes): each shifted right arithmetically by its shift (a logical shift, with the sign's
    /// ones filled in above it: AVX2 has no 64-bit arithmetic shift), clamped to `lo - zo ..= hi -
    /// zo` in i64 (the rule clamps `q + zo` to `lo..=hi`, the same), then narrowed to i32 lanes
    /// (exact after the clamp) and `zo` added.
    #[target_feature(enable = "avx2")]
    unsafe fn codes(&self, halves: [__m256i; 2], zo: __m256i) -> __m256i {
        let zero = _mm256_setzero_si256();
        let q: [__m256i; 2] = core::array::from_fn(|h| {
            let y = halves[h];
            let neg = _mm256_cmpgt_epi64(zero, y);
            let q = _mm256_or_si256(
                _mm256_srlv_epi64(y, self.shift[h]),
                _mm256_sllv_epi64(neg, self.fill[h]),
            );
            let q = _mm256_blendv_epi8(q, self.lo, _mm256_cmpgt_epi64(self.lo, q));
            _mm256_blendv_epi8(q, self.hi, _mm256_cmpgt_epi64(q, self.hi))
        });
        let r = _mm256_blend_epi32(q[0], _mm256_slli_epi64(q[1], 32), 0b1010_1010);
        _mm256_add_epi32(r, zo)
    }
}
