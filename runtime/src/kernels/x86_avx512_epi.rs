//! The 512-bit epilogue of the AVX-512 int8 tiles ([`super::x86_avx512`]): the requantization of
//! 16 rows per register ([`super::x86::Consts`]' rule, twice as wide), narrowed to bytes and handed
//! over as one packed tile of 16 rows by a chunk of pixels; and what the tiles keep across chunks
//! (the interleaved weights' row group, the constants of the first row registers).
use super::gemm::{Finish, Product, Tile};
use super::x86_avx512::{Acc, CHUNK, NR};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Row registers (16 rows each) whose epilogue constants [`Held`] keeps.
const KEPT: usize = 8;

/// What [`super::x86_avx512::product_rows`] keeps across chunks of pixels: the row group (first
/// row, rows) whose interleaved weights and correction the buffer holds when one segment is the
/// whole depth (the next chunk's same row group then skips the interleave), and the 512-bit
/// epilogue constants of the first [`KEPT`] row registers from `r0`, made on first use.
pub(super) struct Held {
    pub(super) group: Option<(usize, usize)>,
    pub(super) corr: [__m512i; 2],
    r0: usize,
    /// bit `i`: `k16[i]` is made
    made: u32,
    k16: [MaybeUninit<Option<Consts16>>; KEPT],
}

impl Held {
    /// Nothing interleaved and no constants made yet, for rows from `r0`.
    pub(super) fn new(r0: usize) -> Held {
        Held {
            group: None,
            // SAFETY: an all-zero register is a valid value
            corr: unsafe { core::mem::zeroed() },
            r0,
            made: 0,
            k16: [MaybeUninit::uninit(); KEPT],
        }
    }

    /// The 512-bit epilogue constants of rows `r..r + 16` (`r - r0` a multiple of 16), if they
    /// apply (codes, not raw sums, of int8 activations whose codes fit int8).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn consts<T: super::reference::Code>(
        &mut self,
        prod: &Product<'_, T>,
        finish: Finish<'_>,
        r: usize,
    ) -> Option<Consts16> {
        let i = (r - self.r0) / 16;
        // SAFETY: the features
        let fresh = || unsafe {
            match finish {
                Finish::Codes(e) if !prod.exact => Consts16::new(e, r),
                _ => None,
            }
        };
        if i >= KEPT {
            return fresh();
        }
        if self.made & (1 << i) == 0 {
            self.k16[i].write(fresh());
            self.made |= 1 << i;
        }
        // SAFETY: written above or by an earlier call (bit `i` of `made`)
        unsafe { self.k16[i].assume_init() }
    }
}

/// The requantization constants of 16 rows on 512-bit registers: [`Consts`]' rule and lanes, twice
/// as wide, for outputs whose codes fit int8 (the epilogue then narrows them to bytes).
#[derive(Clone, Copy)]
pub(super) struct Consts16 {
    bias: __m512i,
    /// multipliers in the even lanes (the even rows) and of the odd rows
    mult: __m512i,
    mult_odd: __m512i,
    /// 2^(shift - 1) of the even and the odd rows, i64
    round: __m512i,
    round_odd: __m512i,
    /// shift - 32 per row
    shift: __m512i,
    zo: __m512i,
    lo: __m512i,
    hi: __m512i,
}

impl Consts16 {
    /// Rows `r..r + 16` of `e`, or `None` when a shift is below 32 or a code may leave int8.
    #[target_feature(enable = "avx512f")]
    unsafe fn new(e: &super::gemm::Epilogue<'_>, r: usize) -> Option<Consts16> {
        if e.lo < -128 || e.hi > 127 {
            return None;
        }
        // plain loops and arrays (closures do not inherit this function's features, so the
        // 512-bit loads would not inline into them)
        let (mut bias, mut mult, mut shift) = ([0i32; 16], [0i32; 16], [0i32; 16]);
        let mut round = [[0i64; 8]; 2];
        for i in 0..16 {
            let c = e.row(r + i);
            if c.shift < 32 {
                return None;
            }
            (bias[i], mult[i], shift[i]) = (c.bias, c.mult, c.shift as i32 - 32);
            round[i % 2][i / 2] = 1i64 << (c.shift - 1);
        }
        // SAFETY: each array is 64 bytes
        let (bias, mult, shift, round, round_odd) = unsafe {
            (
                _mm512_loadu_si512(bias.as_ptr() as *const __m512i),
                _mm512_loadu_si512(mult.as_ptr() as *const __m512i),
                _mm512_loadu_si512(shift.as_ptr() as *const __m512i),
                _mm512_loadu_si512(round[0].as_ptr() as *const __m512i),
                _mm512_loadu_si512(round[1].as_ptr() as *const __m512i),
            )
        };
        Some(Consts16 {
            bias,
            mult,
            mult_odd: _mm512_srli_epi64::<32>(mult),
            round,
            round_odd,
            shift,
            zo: _mm512_set1_epi32(e.zo),
            lo: _mm512_set1_epi32(e.lo),
            hi: _mm512_set1_epi32(e.hi),
        })
    }

    /// The codes of 16 rows' wrapped sums `s` of pixel `p`, as bytes (see `Consts::codes`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn bytes(&self, e: &super::gemm::Epilogue<'_>, s: __m512i, p: usize) -> __m128i {
        let mut x = _mm512_add_epi32(s, self.bias);
        if let Some(&c) = e.col.get(p) {
            x = _mm512_add_epi32(x, _mm512_set1_epi32(c));
        }
        let even = _mm512_add_epi64(_mm512_mul_epi32(x, self.mult), self.round);
        let odd = _mm512_add_epi64(
            _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), self.mult_odd),
            self.round_odd,
        );
        let high = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64::<32>(even), odd);
        let r = _mm512_add_epi32(_mm512_srav_epi32(high, self.shift), self.zo);
        _mm512_cvtepi32_epi8(_mm512_min_epi32(_mm512_max_epi32(r, self.lo), self.hi))
    }
}

/// Hands over row register `v` (rows `r..r + 16`, correction `cv`) of a chunk as one packed tile
/// of 16 rows x the chunk's pixels: per pixel, 16 codes narrowed to bytes in one register; per 8
/// pixels, their registers transposed to rows of 8 bytes (byte, word and dword unpacks), so that the
/// sink writes each row as one run of bytes; or, for a pixel-major sink (`Epilogue::by_pixel`),
/// each pixel's register stored as it is.
///
/// # Safety
/// This tier's features; `acc` initialised.
#[target_feature(enable = "avx2,avxvnni,avx512f,avx512vnni")]
pub(super) unsafe fn emit_packed(
    acc: &[MaybeUninit<Acc>],
    (v, cv): (usize, __m512i),
    k: &Consts16,
    e: &super::gemm::Epilogue<'_>,
    (r, c0, count): (usize, usize, usize),
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    const { assert!(super::gemm::PACKED_MR == 16 && super::gemm::PACKED_NR == CHUNK) };
    let dst = t.bytes.as_mut_ptr() as *mut i8;
    for (i, a) in acc.iter().enumerate() {
        if c0 + i * NR >= count {
            break;
        }
        // SAFETY: the caller's: `acc` initialised
        let a = unsafe { a.assume_init_ref() };
        // a loop, not `array::from_fn`: a closure does not inherit this function's features, so
        // the 512-bit arithmetic would not inline into it
        let mut px = [_mm_setzero_si128(); NR];
        for (j, x) in px.iter_mut().enumerate() {
            *x = k.bytes(e, _mm512_sub_epi32(a[v][j], cv), c0 + i * NR + j);
        }
        if e.by_pixel {
            // a pixel-major sink: each pixel's 16 rows as they are
            for (j, &x) in px.iter().enumerate() {
                // SAFETY: `bytes` is `CHUNK` pixels of 16 bytes and `i * NR + j < CHUNK`
                unsafe { _mm_storeu_si128(dst.add(16 * (i * NR + j)) as *mut __m128i, x) };
            }
            continue;
        }
        // rows 8 h..8 h + 8 of pixel pairs, then of pixel quads, then of all 8 pixels
        for h in 0..2 {
            let mut pair = [_mm_setzero_si128(); 4];
            for (m, p) in pair.iter_mut().enumerate() {
                *p = if h == 0 {
                    _mm_unpacklo_epi8(px[2 * m], px[2 * m + 1])
                } else {
                    _mm_unpackhi_epi8(px[2 * m], px[2 * m + 1])
                };
            }
            for (m, &two) in super::x86::pairs_to_rows(pair).iter().enumerate() {
                let row = 8 * h + 2 * m;
                // SAFETY: `bytes` is 16 rows of `CHUNK` bytes and `i < CHUNK / NR`: rows `row` and
                // `row + 1`, bytes `8 i..8 i + 8` of each
                unsafe {
                    let at = dst.add(row * CHUNK + i * NR) as *mut __m128i;
                    _mm_storel_epi64(at, two);
                    _mm_storel_epi64(at.byte_add(CHUNK), _mm_unpackhi_epi64(two, two));
                }
            }
        }
    }
    (t.packed, t.by_pixel) = (true, e.by_pixel);
    (t.r0, t.rows, t.p0, t.cols) = (r, 16, c0, CHUNK.min(count - c0));
    out(t);
}
