//! The exact quotients of the integer softmax ([`super::softmax::softmax`] and
//! [`super::softmax::softmax_any`]): each rounds a probability to its code without a division per
//! element. And the general softmax's exp lookups for int16 codes by AVX2 gathers, and its long
//! rows of int8 codes by a table of the codes.

use super::softmax::{Exps, Steps};
use super::Code;

/// A row's quotients `floor((2 r e + sum) / (2 sum))` ([`super::softmax::Steps`]) for
/// `r <= 2^24`, `1 <= sum`, `e <= sum` and `2 r e + sum < 2^53` (the bounds of
/// [`super::softmax::softmax_any`]), in operations that vectorize: `n = 2 r e + sum` is exact in
/// f64, so `p = fl(n * fl(1 / d))` is within `(r + 1) 2^-52 < 1/2` of `n / d` and its truncation
/// `q0` is the quotient or one of its neighbours; the remainder `n - q0 d` (exact in wrapping u64:
/// its true value is below `2 d < 2^55` in magnitude) says which, and one comparison each way
/// corrects it: the exact floor, one division per row. (Within these bounds only the upward
/// correction acts, where `n / d` is an integer and `p` rounds below it: `n / d` just below an
/// integer `k` is at least `1 / d >= (2 k - 1) / 2^46` from it, since `r e <= 2^44`, and `p`'s
/// error is below `k 2^-51`. The downward one is kept so that the rule does not rest on that
/// argument.)
pub(super) struct RowQuot {
    r2: u32,
    sum: u64,
    d: u64,
    nf: (f64, f64),
    inv: f64,
}

impl RowQuot {
    pub(super) fn new(r: u64, sum: u64) -> Self {
        let d = 2 * sum;
        RowQuot {
            r2: (2 * r) as u32,
            sum,
            d,
            nf: ((2 * r) as f64, sum as f64),
            inv: 1.0 / d as f64,
        }
    }
    #[inline(always)]
    pub(super) fn of(&self, e: u32) -> u64 {
        let n = self.r2 as u64 * e as u64 + self.sum;
        let p = (self.nf.0 * e as i32 as f64 + self.nf.1) * self.inv;
        // SAFETY: `p` is finite and in `[0, r + 1] ⊂ [0, 2^31)` (the bounds above), so the
        // truncation is exact and fits (a plain `as` adds NaN and range checks)
        let q0 = unsafe { p.to_int_unchecked::<i32>() } as u32 as u64;
        let rem = n.wrapping_sub(q0.wrapping_mul(self.d)) as i64;
        q0.wrapping_add((rem >= self.d as i64) as u64)
            .wrapping_sub((rem < 0) as u64)
    }
}

/// `round(255 * e / sum) - 128` as `floor((510 e + sum) / (2 sum)) - 128`, clamped to 127.
///
/// For `sum < 2^39` (every real row: `e <= 2^20` per element) without a division: with `n = 510 e
/// + sum < 2^53` and `d = 2 sum < 2^40` exact in f64, `p = n * fl(1/d)` is within `2^-44` of
/// `n / d < 256`; adding `2^-42` lifts an exact integer quotient above itself yet keeps any other
/// (at least `1/d >= 2^-40` below the next integer) below the next, so truncation is the floor.
pub(super) struct Quotient {
    pub(super) sum: u64,
    d: u64,
    pub(super) inv: Option<f64>,
}

/// The lift of [`Quotient`]: above the product's error, below the gap to the next integer.
pub(super) const LIFT: f64 = 1.0 / (1u64 << 42) as f64;

impl Quotient {
    pub(super) fn new(sum: u64) -> Self {
        let sum = sum.max(1);
        let d = sum.saturating_mul(2);
        Quotient {
            sum,
            d,
            inv: (sum < 1 << 39).then(|| 1.0 / d as f64),
        }
    }
    #[inline(always)]
    pub(super) fn code(&self, e: u64) -> i8 {
        let q = match self.inv {
            // SAFETY: finite and in [0, 256] (the bounds above: `n < 2^53`, `0 < inv <= 1/2`),
            // so truncation is exact and fits i64 (a plain `as` adds NaN and range checks)
            Some(inv) => unsafe {
                ((e * 510 + self.sum) as i64 as f64 * inv + LIFT).to_int_unchecked::<i64>()
            },
            None => ((e * 510).saturating_add(self.sum) / self.d) as i64,
        };
        (q.min(255) - 128) as i8
    }
}

/// The exp values of int16 codes `xs` below their row's maximum `mx`, 8 at a time by AVX2 gathers:
/// `e = (hi[d >> 8] * lo[d & 255] + 2^19) >> 20` for `d = mx - x` (`tables = [lo, hi]`, entries at
/// most 2^20), the same integers as the scalar lookup, written to `es` with their sum. Returns the
/// sum and how many were done (`xs.len()` rounded down to 8); the caller does the rest. The
/// indices are masked to 0..=255, so no code reads outside the tables.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn exps16_avx2(
    xs: &[i16],
    mx: i32,
    tables: &[[u32; 256]; 2],
    es: &mut [u32],
) -> (u64, usize) {
    use core::arch::x86_64::*;
    let (lo, hi) = (
        tables[0].as_ptr() as *const i32,
        tables[1].as_ptr() as *const i32,
    );
    let (m, byte) = (_mm256_set1_epi32(mx), _mm256_set1_epi32(255));
    let half = _mm256_set1_epi64x(1 << 19);
    let (mut even, mut odd) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let n = xs.len().min(es.len()) / 8 * 8;
    for (x8, e8) in xs[..n].chunks_exact(8).zip(es[..n].chunks_exact_mut(8)) {
        // SAFETY: 8 codes read and 8 values written inside the chunks; the gathers' indices are
        // masked to the tables' 256 entries
        unsafe {
            let x = _mm256_cvtepi16_epi32(_mm_loadu_si128(x8.as_ptr() as *const __m128i));
            let d = _mm256_sub_epi32(m, x);
            let il = _mm256_and_si256(d, byte);
            let ih = _mm256_and_si256(_mm256_srli_epi32::<8>(d), byte);
            let l = _mm256_i32gather_epi32::<4>(lo, il);
            let h = _mm256_i32gather_epi32::<4>(hi, ih);
            // the even lanes' products in the 64-bit lanes, then the odd lanes'
            let pe = _mm256_srli_epi64::<20>(_mm256_add_epi64(_mm256_mul_epu32(h, l), half));
            let po = _mm256_srli_epi64::<20>(_mm256_add_epi64(
                _mm256_mul_epu32(_mm256_srli_epi64::<32>(h), _mm256_srli_epi64::<32>(l)),
                half,
            ));
            even = _mm256_add_epi64(even, pe);
            odd = _mm256_add_epi64(odd, po);
            let e = _mm256_or_si256(pe, _mm256_slli_epi64::<32>(po));
            _mm256_storeu_si256(e8.as_mut_ptr() as *mut __m256i, e);
        }
    }
    let mut lanes = [0u64; 4];
    // SAFETY: a local store of one register
    unsafe {
        _mm256_storeu_si256(
            lanes.as_mut_ptr() as *mut __m256i,
            _mm256_add_epi64(even, odd),
        )
    };
    (lanes.iter().sum(), n)
}

/// Rows of int8 codes longer than this take [`row_by_code`]: 256 quotients, then a lookup each.
pub(super) const CODE_TABLE_ROWS: usize = 2 * 256;

/// A long row of int8 codes for [`super::softmax::softmax_any`]: each present code's output once
/// (the quotient its per-element rows compute), then a table lookup.
#[inline(always)]
pub(super) fn row_by_code<T: Code, U: Code>(
    xs: &[T],
    ys: &mut [U],
    mx: i32,
    ex: &Exps,
    st: Steps,
    (plain, top): (bool, u64),
) {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let (done, head) = match (&ex.bytes, bytemuck::try_cast_slice::<T, i8>(xs)) {
        (Some(w), Ok(x8)) => w.exp_sum(x8, mx as i8),
        _ => (0, 0),
    };
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    let (done, head) = (0, 0);
    let mut part = [head, 0, 0, 0];
    let mut quads = xs[done..].chunks_exact(4);
    for c in &mut quads {
        for (p, v) in part.iter_mut().zip(c) {
            *p += ex.of(mx, v.get());
        }
    }
    let rest: u64 = quads.remainder().iter().map(|v| ex.of(mx, v.get())).sum();
    let q = RowQuot::new(st.r, (part.iter().sum::<u64>() + rest).max(1));
    let (mn, mut code) = (
        xs.iter().map(|v| v.get()).min().unwrap_or(0),
        [U::default(); 256],
    );
    let (lo, hi) = ((mn + 128).max(0) as usize, (mx + 128).min(255) as usize);
    for (c, y) in code[..=hi].iter_mut().enumerate().skip(lo) {
        let v = q.of(ex.of(mx, c as i32 - 128) as u32);
        *y = if plain {
            U::wrap(st.zo as i64 + v as i64)
        } else {
            U::sat(st.zo as i64 + v.min(top) as i64)
        };
    }
    // int8 to int8: the SIMD table lookup of the element-wise ops (the same entries)
    let (x8, c8) = (
        bytemuck::try_cast_slice(xs),
        bytemuck::try_cast_slice(&code),
    );
    let simd = match (x8, c8, bytemuck::try_cast_slice_mut::<U, i8>(ys)) {
        (Ok(x8), Ok(c8), Ok(y8)) => super::eltwise::lut(x8, c8, y8).is_ok(),
        _ => false,
    };
    if !simd {
        for (y, v) in ys.iter_mut().zip(xs) {
            *y = code[(v.get() + 128) as usize & 255];
        }
    }
}

#[cfg(all(test, target_arch = "x86_64", feature = "std"))]
mod tests {
    /// The AVX2 gathers against the scalar lookup: random tables with entries up to 2^20, rows of
    /// every length up to 40 and a long one, codes over the whole int16 range (`d` up to 65535).
    #[test]
    fn avx2_exp_lookups_equal_the_scalar_rule() {
        if !std::is_x86_feature_detected!("avx2") {
            return; // nothing to check on this CPU
        }
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        for case in 0..60 {
            let tables: [[u32; 256]; 2] = core::array::from_fn(|_| {
                core::array::from_fn(|_| (next() % (1 << 21)).min(1 << 20) as u32)
            });
            let len = if case == 59 { 4100 } else { case % 41 };
            let xs: Vec<i16> = (0..len).map(|_| next() as u16 as i16).collect();
            let mx = if case % 3 == 0 {
                32767
            } else {
                xs.iter().map(|&x| x as i32).max().unwrap_or(0)
            };
            let mut es = vec![0u32; len];
            // SAFETY: AVX2 was detected
            let (sum, done) = unsafe { super::exps16_avx2(&xs, mx, &tables, &mut es) };
            assert_eq!(done, len / 8 * 8, "case {case}");
            let want: Vec<u64> = xs[..done]
                .iter()
                .map(|&x| {
                    let d = (mx - x as i32) as usize;
                    (tables[1][d >> 8] as u64 * tables[0][d & 255] as u64 + (1 << 19)) >> 20
                })
                .collect();
            let got: Vec<u64> = es[..done].iter().map(|&e| e as u64).collect();
            assert_eq!(got, want, "case {case}");
            assert_eq!(sum, want.iter().sum::<u64>(), "case {case}");
            assert!(
                es[done..].iter().all(|&e| e == 0),
                "case {case}: wrote past {done}"
            );
        }
    }
}
