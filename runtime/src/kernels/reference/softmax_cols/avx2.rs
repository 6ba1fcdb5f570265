//! [`super::columns_avx2`]'s columns in groups of eight: the rule of [`super::block`] in AVX2
//! lanes.
use super::super::softmax::{Exps, Steps};
use super::super::softmax_div::LIFT;
use super::super::Code;
use core::arch::x86_64::*;

/// Groups of eight columns that one call of [`groups`] walks together: 64 int8 codes, a cache line,
/// from each row.
pub(super) const GROUPS: usize = 8;

/// Columns `i0..i0 + 8 g` (`g <= GROUPS` groups of eight) of one `[len, inner]` plane: their
/// maxima, then their exp values' sums in u64 lanes (the values of the first `KEEP / g` rows kept
/// in `kept`), then each element's quotient ([`Quad::of`]). Each pass walks whole rows of the
/// block, not one group's column: rows `inner` codes apart fall into the same cache set, and eight
/// codes of each would cost a line each.
///
/// # Safety
/// The CPU has AVX2; `plane` and `dst` hold `len * inner` codes, `1 <= g <= GROUPS` and
/// `i0 + 8 g <= inner`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn groups<T: Code, U: Code>(
    plane: &[T],
    dst: &mut [U],
    (len, inner): (usize, usize),
    (i0, g): (usize, usize),
    (ex, st): (&Exps, Steps),
    kept: &mut [__m256i; KEEP],
) {
    debug_assert!((1..=GROUPS).contains(&g) && i0 + 8 * g <= inner);
    debug_assert!(plane.len() >= len * inner && dst.len() >= len * inner);
    let g = g.clamp(1, GROUPS);
    let at = |j: usize, k: usize| j * inner + i0 + 8 * k;
    // SAFETY (every block below): AVX2 (the caller); each load and store covers codes
    // `at(j, k)..at(j, k) + 8` of row `j < len`, group `k < g`, inside the plane (the caller's
    // bounds); the gathers' indices are masked to the tables' 256 entries
    let (x, y) = (plane.as_ptr(), dst.as_mut_ptr());
    let mut mx = [_mm256_set1_epi32(i32::MIN); GROUPS];
    for j in 0..len {
        for (k, m) in mx[..g].iter_mut().enumerate() {
            *m = _mm256_max_epi32(*m, unsafe { load8(x.add(at(j, k))) });
        }
    }
    // the rows whose exp values are kept
    let rows_kept = KEEP / g;
    let mut s = [[_mm256_setzero_si256(); 2]; GROUPS];
    for j in 0..len {
        for k in 0..g {
            let e = unsafe { exps(mx[k], load8(x.add(at(j, k))), ex) };
            if j < rows_kept {
                kept[j * g + k] = e;
            }
            let [s0, s1] = &mut s[k];
            *s0 = _mm256_add_epi64(*s0, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(e)));
            *s1 = _mm256_add_epi64(*s1, _mm256_cvtepu32_epi64(_mm256_extracti128_si256::<1>(e)));
        }
    }
    let q: [[Quad; 2]; GROUPS] = core::array::from_fn(|k| [Quad::new(s[k][0]), Quad::new(s[k][1])]);
    // up to 255 steps and sums below 2^39 (exp values at most 2^20), the quotient as the
    // classic int8 softmax takes it, without the corrections ([`Quad::lifted`])
    let lanes = Lanes::new::<U>(st, st.r <= 255 && len < 1 << 19);
    for j in 0..len {
        for (k, [q0, q1]) in q[..g].iter().enumerate() {
            let e = match j < rows_kept {
                true => kept[j * g + k],
                false => unsafe { exps(mx[k], load8(x.add(at(j, k))), ex) },
            };
            let v = lanes.codes([q0, q1], e);
            unsafe { store8(y.add(at(j, k)), v) };
        }
    }
}

/// Exp values [`groups`] keeps (8 KiB on the caller's stack) instead of looking them up twice:
/// `KEEP / g` rows of `g` groups.
pub(super) const KEEP: usize = 256;

/// Eight codes at `p` (i8 or i16, the only [`Code`]s), sign-extended to i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8<T: Code>(p: *const T) -> __m256i {
    // SAFETY: the caller's: eight codes readable at `p`
    unsafe {
        if core::mem::size_of::<T>() == 2 {
            _mm256_cvtepi16_epi32(_mm_loadu_si128(p as *const __m128i))
        } else {
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
        }
    }
}

/// Eight i32 lanes inside `U`'s range stored as eight codes at `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store8<U: Code>(p: *mut U, v: __m256i) {
    // SAFETY: the caller's: eight codes writable at `p`
    unsafe {
        let w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        if core::mem::size_of::<U>() == 2 {
            _mm_storeu_si128(p as *mut __m128i, w)
        } else {
            _mm_storel_epi64(p as *mut __m128i, _mm_packs_epi16(w, w))
        }
    }
}

/// [`Exps::of`] in eight lanes (`d = mx - x`, masked to the tables as it masks).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn exps(mx: __m256i, x: __m256i, ex: &Exps) -> __m256i {
    let byte = _mm256_set1_epi32(255);
    let d = _mm256_sub_epi32(mx, x);
    // SAFETY: indices masked to 0..=255, the tables' entries
    unsafe {
        let l = _mm256_i32gather_epi32::<4>(
            ex.lohi[0].as_ptr() as *const i32,
            _mm256_and_si256(d, byte),
        );
        if !ex.wide {
            return l;
        }
        let h = _mm256_i32gather_epi32::<4>(
            ex.lohi[1].as_ptr() as *const i32,
            _mm256_and_si256(_mm256_srli_epi32::<8>(d), byte),
        );
        // `(hi * lo + 2^19) >> 20` (below 2^21): the even lanes' in the low halves of the
        // 64-bit lanes, the odd lanes' moved into the high halves
        let half = _mm256_set1_epi64x(1 << 19);
        let pe = _mm256_srli_epi64::<20>(_mm256_add_epi64(_mm256_mul_epu32(h, l), half));
        let po = _mm256_srli_epi64::<20>(_mm256_add_epi64(
            _mm256_mul_epu32(_mm256_srli_epi64::<32>(h), _mm256_srli_epi64::<32>(l)),
            half,
        ));
        _mm256_or_si256(pe, _mm256_slli_epi64::<32>(po))
    }
}

/// The codes of one contiguous row's kept exp values `es` (of sum `sum`, at least 1; `ys` as long
/// as `es`), eight at a time: [`groups`]' last pass with one sum in every lane, so the integers of
/// [`super::super::softmax_div::RowQuot::of`] and the row rule's clamps. Returns how many were
/// done (`es.len()` rounded down to 8); the caller does the rest.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(in crate::kernels::reference) unsafe fn row_codes<U: Code>(
    es: &[u32],
    sum: u64,
    st: Steps,
    ys: &mut [U],
) -> usize {
    let q = Quad::new(_mm256_set1_epi64x(sum as i64));
    let lanes = Lanes::new::<U>(st, st.r <= 255 && sum < 1 << 39);
    let n = es.len().min(ys.len()) / 8 * 8;
    for (e8, y8) in es[..n].chunks_exact(8).zip(ys[..n].chunks_exact_mut(8)) {
        // SAFETY: eight values read and eight codes written inside the chunks
        let e = unsafe { _mm256_loadu_si256(e8.as_ptr() as *const __m256i) };
        let v = lanes.codes([&q, &q], e);
        unsafe { store8(y8.as_mut_ptr(), v) };
    }
    n
}

/// The constants of the last pass of [`groups`] and [`row_codes`]: `r` and its f64, the clamps.
struct Lanes {
    /// [`Quad::lifted`] applies
    lifted: bool,
    r2: __m256i,
    nf0: __m256d,
    top: __m256i,
    zo: __m256i,
    lo: __m256i,
    hi: __m256i,
}

impl Lanes {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new<U: Code>(st: Steps, lifted: bool) -> Lanes {
        Lanes {
            lifted,
            r2: _mm256_set1_epi64x(2 * st.r as i64),
            nf0: _mm256_set1_pd((2 * st.r) as f64),
            top: _mm256_set1_epi32((st.hi - st.zo).max(0)),
            zo: _mm256_set1_epi32(st.zo),
            lo: _mm256_set1_epi32(U::MIN),
            hi: _mm256_set1_epi32(U::MAX),
        }
    }

    /// The codes of eight exp values `e` (lanes 0..4 by `q[0]`, 4..8 by `q[1]`): `zo + min(q,
    /// top)` clamped to the code type.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn codes(&self, q: [&Quad; 2], e: __m256i) -> __m256i {
        let (l, h) = (_mm256_castsi256_si128(e), _mm256_extracti128_si256::<1>(e));
        let (a, b) = if self.lifted {
            (q[0].lifted(l, self.nf0), q[1].lifted(h, self.nf0))
        } else {
            (q[0].of(l, self.r2, self.nf0), q[1].of(h, self.r2, self.nf0))
        };
        let v = _mm256_add_epi32(self.zo, _mm256_min_epi32(_mm256_set_m128i(b, a), self.top));
        _mm256_min_epi32(_mm256_max_epi32(v, self.lo), self.hi)
    }
}

/// [`super::super::softmax_div::RowQuot`] for four columns.
struct Quad {
    sum: __m256i,
    d: __m256i,
    dhi: __m256i,
    sumf: __m256d,
    inv: __m256d,
}

impl Quad {
    /// From four sums below 2^52 (rows shorter than 2^32 of exp values at most 2^20), each at
    /// least 1 as the rule takes them.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new(sum: __m256i) -> Quad {
        let zero = _mm256_setzero_si256();
        let sum = _mm256_or_si256(
            sum,
            _mm256_and_si256(_mm256_cmpeq_epi64(sum, zero), _mm256_set1_epi64x(1)),
        );
        // below 2^52, `sum` is exact in f64: `2^52 + sum` by its bits, less 2^52
        let two52 = 4503599627370496.0;
        let sumf = _mm256_sub_pd(
            _mm256_castsi256_pd(_mm256_or_si256(
                sum,
                _mm256_castpd_si256(_mm256_set1_pd(two52)),
            )),
            _mm256_set1_pd(two52),
        );
        let d = _mm256_slli_epi64::<1>(sum);
        Quad {
            sum,
            d,
            dhi: _mm256_srli_epi64::<32>(d),
            sumf,
            // `2 sum` exact in f64 too: the same reciprocal
            inv: _mm256_div_pd(_mm256_set1_pd(1.0), _mm256_add_pd(sumf, sumf)),
        }
    }

    /// [`Quad::of`] for `r <= 255` and sums below 2^39, as the classic int8 softmax rounds
    /// (`super::super::softmax_div::Quotient`): `n = 2 r e + sum < 2^53` is exact in f64, `p =
    /// fl(n fl(1/d))` is within `2^-44` of `n / d <= 256`, and adding `2^-42` lifts an integer
    /// quotient above itself yet keeps any other (at least `1/d > 2^-40` below the next integer)
    /// below the next: truncation is the floor, the same integer as the corrected quotient.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn lifted(&self, e: __m128i, nf0: __m256d) -> __m128i {
        let n = _mm256_add_pd(_mm256_mul_pd(nf0, _mm256_cvtepi32_pd(e)), self.sumf);
        let p = _mm256_add_pd(_mm256_mul_pd(n, self.inv), _mm256_set1_pd(LIFT));
        _mm256_cvttpd_epi32(p)
    }

    /// The four quotients of four exp values (u32 lanes), in the low i32 lanes: `RowQuot::of`'s
    /// operations, the u64 product `q0 d` from two 32-bit halves of `d`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn of(&self, e: __m128i, r2: __m256i, nf0: __m256d) -> __m128i {
        let e64 = _mm256_cvtepu32_epi64(e);
        let n = _mm256_add_epi64(_mm256_mul_epu32(e64, r2), self.sum);
        let p = _mm256_mul_pd(
            _mm256_add_pd(_mm256_mul_pd(nf0, _mm256_cvtepi32_pd(e)), self.sumf),
            self.inv,
        );
        let q0 = _mm256_cvtepu32_epi64(_mm256_cvttpd_epi32(p));
        let qd = _mm256_add_epi64(
            _mm256_mul_epu32(q0, self.d),
            _mm256_slli_epi64::<32>(_mm256_mul_epu32(q0, self.dhi)),
        );
        let rem = _mm256_sub_epi64(n, qd);
        // `q0 + [rem >= d] - [rem < 0]`: all-ones masks are -1
        let below = _mm256_cmpgt_epi64(self.d, rem);
        let negative = _mm256_cmpgt_epi64(_mm256_setzero_si256(), rem);
        let q = _mm256_add_epi64(
            _mm256_add_epi64(q0, _mm256_set1_epi64x(1)),
            _mm256_add_epi64(below, negative),
        );
        // the low halves of the four u64 lanes (each below 2^25)
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
            q,
            _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6),
        ))
    }
}
