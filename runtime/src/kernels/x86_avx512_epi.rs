//! The 512-bit epilogue of the AVX-512 int8 tiles ([`super::x86_avx512`]): the requantization of
//! 16 rows per register ([`super::x86::Consts`]' rule, twice as wide), narrowed to bytes and handed
//! over as one packed tile of 16 rows by a chunk of pixels; and what the tiles keep across chunks
//! (the interleaved weights' row group, the constants of the first row registers).
use super::gemm::{Finish, Product, Requants, Tile};
use super::x86_avx512::{Acc, CHUNK, NR};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Row registers (16 rows each) whose epilogue constants [`Held`] keeps.
const KEPT: usize = 16;

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
    /// for a uniform requantization: the constants of a row register whose rows all have a bias
    /// (made on first use), which every such register shares but for its bias
    uniform: Option<Option<Consts16>>,
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
            uniform: None,
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
        if let (Finish::Codes(e), false) = (finish, prod.exact) {
            let bias = e
                .bias
                .get(4 * r..4 * (r + 16))
                .and_then(|b| <&[u8; 64]>::try_from(b).ok());
            if let (Requants::Uniform { .. }, Some(bias)) = (e.requant, bias) {
                // every row's multiplier and shift are the same, so `Consts16::new` gives the
                // same constants but for the bias (all 16 rows have one, so none takes the
                // missing row's zero multiplier)
                let u = match self.uniform {
                    Some(u) => u,
                    // SAFETY: the features
                    None => *self.uniform.insert(unsafe { Consts16::new(e, r) }),
                };
                // (not `Option::map`: a closure would not inherit this function's features)
                return Some(u?.with_bias(bias));
            }
        }
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

/// The requantization constants of 16 rows on 512-bit registers, for outputs whose codes fit int8.
/// [`super::gemm::Epilogue::code_of`]'s rule rewritten for shifts `s >= 33`: with `h` the high half
/// of the 64-bit product `v * mult` (`floor(p / 2^32)`), `2^(s - 1)` is a multiple of `2^32`, so
/// `floor((p + 2^(s - 1)) / 2^s) + zo = (h + k) >> (s - 32)` with `k = 2^(s - 33) + zo * 2^(s - 32)`
/// (adding a multiple of the divisor commutes with the floor), exact in i32 where `|k| < 2^30`
/// (`|h| <= 2^30`). The clamp to `lo..=hi` is the saturating narrowing to int8 and, where the
/// range is narrower, a byte max/min.
#[derive(Clone, Copy)]
pub(super) struct Consts16 {
    bias: __m512i,
    /// multipliers in the even lanes (the even rows) and of the odd rows
    mult: __m512i,
    mult_odd: __m512i,
    /// `k` per row
    add: __m512i,
    /// shift - 32 per row
    shift: __m512i,
    /// `lo` and `hi` in every byte, where they are narrower than int8
    lo: Option<__m512i>,
    hi: Option<__m512i>,
}

impl Consts16 {
    /// Rows `r..r + 16` of `e`, or `None` when a shift is below 33 (and cannot be raised to it
    /// exactly), a `k` is too large or a code may leave int8.
    #[target_feature(enable = "avx512f")]
    unsafe fn new(e: &super::gemm::Epilogue<'_>, r: usize) -> Option<Consts16> {
        if e.lo < -128 || e.hi > 127 {
            return None;
        }
        // plain loops and arrays (closures do not inherit this function's features, so the
        // 512-bit loads would not inline into them)
        let (mut bias, mut mult, mut add, mut shift) =
            ([0i32; 16], [0i32; 16], [0i32; 16], [0i32; 16]);
        for i in 0..16 {
            let c = e.row(r + i);
            let (m, s) = match (c.mult, c.shift) {
                // a zero multiplier gives `zo` at any shift
                (0, _) => (0, 33),
                // (2 v m + 2^32) >> 33 is (v m + 2^31) >> 32
                (m, 32) if m.checked_mul(2).is_some() => (2 * m, 33),
                (m, s) if s >= 33 => (m, s as u32),
                _ => return None,
            };
            let k = (1i64 << (s - 33)) + ((e.zo as i64) << (s - 32));
            if k.unsigned_abs() >= 1 << 30 {
                return None;
            }
            (bias[i], mult[i], add[i], shift[i]) = (c.bias, m, k as i32, s as i32 - 32);
        }
        // SAFETY: each array is 64 bytes
        let [bias, mult, add, shift] = [bias, mult, add, shift]
            .map(|a| unsafe { core::mem::transmute::<[i32; 16], __m512i>(a) });
        Some(Consts16 {
            bias,
            mult,
            mult_odd: _mm512_srli_epi64::<32>(mult),
            add,
            shift,
            lo: (e.lo > -128).then_some(_mm512_set1_epi8(e.lo as i8)),
            hi: (e.hi < 127).then_some(_mm512_set1_epi8(e.hi as i8)),
        })
    }

    /// The same constants with the bias of 16 rows from `bias` (64 bytes: little-endian i32 per
    /// row, as [`super::gemm::Epilogue::row`] reads them).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn with_bias(self, bias: &[u8; 64]) -> Consts16 {
        Consts16 {
            // SAFETY: 64 bytes; x86 is little-endian
            bias: unsafe { _mm512_loadu_si512(bias.as_ptr() as *const __m512i) },
            ..self
        }
    }

    /// The codes (before the clamp) of 16 rows' sums `x` (the wrapped sum with the bias and any
    /// per-pixel term added), in i32 lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn codes(&self, x: __m512i) -> __m512i {
        let even = _mm512_mul_epi32(x, self.mult);
        let odd = _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), self.mult_odd);
        // the high halves: the even products' moved down into the even lanes, the odd ones' kept
        let high = _mm512_mask_shuffle_epi32::<{ _MM_PERM_CDAB }>(odd, 0x5555, even);
        _mm512_srav_epi32(_mm512_add_epi32(high, self.add), self.shift)
    }

    /// The clamped codes of 8 pixels' row register `a[v]` (less `cb`, the correction less the bias;
    /// pixels from `p0`), as bytes in two registers: per 128-bit lane `l` of register `h`, the
    /// rows `4 l..4 l + 4` of pixels `4 h..4 h + 4`, pixel by pixel.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn tile(
        &self,
        e: &super::gemm::Epilogue<'_>,
        a: &[__m512i; NR],
        cb: __m512i,
        p0: usize,
    ) -> [__m512i; 2] {
        let mut c = [_mm512_setzero_si512(); NR];
        for (j, x) in c.iter_mut().enumerate() {
            let mut s = _mm512_sub_epi32(a[j], cb);
            if let Some(&col) = e.col.get(p0 + j) {
                s = _mm512_add_epi32(s, _mm512_set1_epi32(col));
            }
            *x = self.codes(s);
        }
        let mut b = [_mm512_setzero_si512(); 2];
        for (h, x) in b.iter_mut().enumerate() {
            // saturating narrowing: i32 to i16 to i8, interleaving per 128-bit lane
            let lo = _mm512_packs_epi32(c[4 * h], c[4 * h + 1]);
            let hi = _mm512_packs_epi32(c[4 * h + 2], c[4 * h + 3]);
            *x = _mm512_packs_epi16(lo, hi);
            if let Some(l) = self.lo {
                *x = _mm512_max_epi8(*x, l);
            }
            if let Some(u) = self.hi {
                *x = _mm512_min_epi8(*x, u);
            }
        }
        b
    }
}

/// Hands over row register `v` (rows `r..r + 16`, correction `cv`) of a chunk as one packed tile
/// of 16 rows x the chunk's pixels. Per 8 pixels, the codes narrowed to bytes four pixels per
/// register ([`Consts16::tile`]); for a sink by row, each lane's 4 x 4 bytes transposed (rows of 4
/// pixels), then dword and qword unpacks with the next 8 pixels' give rows of 16 pixels, one lane
/// each, stored as such; for a pixel-major sink (`Epilogue::by_pixel`), a dword permutation gives
/// each pixel's 16 rows together.
///
/// # Safety
/// This tier's features; `acc` initialised.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
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
    let cb = _mm512_sub_epi32(cv, k.bias);
    // (no closures here: they would not inherit this function's features)
    macro_rules! tile {
        ($i:expr) => {
            // SAFETY: the caller's: `acc` initialised
            k.tile(
                e,
                unsafe { &acc[$i].assume_init_ref()[v] },
                cb,
                c0 + $i * NR,
            )
        };
    }
    if e.by_pixel {
        // dword 4 l + p (pixel p's rows 4 l..4 l + 4) to dword 4 p + l
        let perm = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: the caller's: `acc` initialised
            let b2 = k.tile(e, unsafe { &a.assume_init_ref()[v] }, cb, c0 + i * NR);
            for (h, &b) in b2.iter().enumerate() {
                // SAFETY: `bytes` is `CHUNK` pixels of 16 bytes and `i * NR + 4 h + 4 <= CHUNK`
                unsafe {
                    let at = dst.add(16 * (i * NR + 4 * h)) as *mut __m512i;
                    _mm512_storeu_si512(at, _mm512_permutexvar_epi32(perm, b));
                }
            }
        }
    } else {
        for i in (0..acc.len()).step_by(2) {
            let a = rows8(tile!(i));
            // past the chunk's last tile: zeros, written into the tile's unused columns
            let b = if i + 1 < acc.len() {
                rows8(tile!(i + 1))
            } else {
                [_mm512_setzero_si512(); 2]
            };
            for m in 0..2 {
                // lane l: rows 4 l + 2 m and 4 l + 2 m + 1, 16 pixels each
                let pair = [
                    _mm512_unpacklo_epi64(a[m], b[m]),
                    _mm512_unpackhi_epi64(a[m], b[m]),
                ];
                for (o, &x) in pair.iter().enumerate() {
                    for (l, &y) in super::x86_avx512_ops::lanes4(x).iter().enumerate() {
                        let row = 4 * l + 2 * m + o;
                        // SAFETY: `bytes` is 16 rows of `CHUNK` bytes, `i` is even and below
                        // `CHUNK / NR`: bytes `8 i..8 i + 16` of row `row`
                        unsafe {
                            _mm_storeu_si128(dst.add(row * CHUNK + i * NR) as *mut __m128i, y)
                        };
                    }
                }
            }
        }
    }
    (t.packed, t.by_pixel) = (true, e.by_pixel);
    (t.r0, t.rows, t.p0, t.cols) = (r, 16, c0, CHUNK.min(count - c0));
    out(t);
}

/// The bytes of 8 pixels by [`Consts16::tile`] to rows: per lane `l`, rows `4 l` and `4 l + 1` (8
/// pixels each, one per 64-bit half) in the first register and rows `4 l + 2`, `4 l + 3` in the
/// second. Each lane's 4 x 4 bytes transposed (pixel `p`'s row `j` from byte `4 p + j` to `4 j +
/// p`), then the two registers' dwords interleaved.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn rows8(b: [__m512i; 2]) -> [__m512i; 2] {
    let t = _mm512_broadcast_i32x4(_mm_setr_epi8(
        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    ));
    let (x, y) = (_mm512_shuffle_epi8(b[0], t), _mm512_shuffle_epi8(b[1], t));
    [_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y)]
}
