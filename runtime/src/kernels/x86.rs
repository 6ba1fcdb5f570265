//! x86-64 kernel: the conv/linear dot product with AVX2 — sign-extend 16 int8 values to int16
//! (`vpmovsxbw`), multiply-add pairs into int32 lanes (`vpmaddwd`, exact: |a·b + c·d| <= 2·128²), and
//! add lanes with wrapping int32 arithmetic. Wrapping addition is associative and commutative, so the
//! result equals the scalar kernel's bit for bit (tests below compare them on random lengths).
use core::arch::x86_64::*;

/// `sum_k a[k] * b[k]` in wrapping i32 with AVX2. Only call when the CPU has AVX2.
#[inline]
pub fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    // SAFETY: the caller (the `Avx2` tier) is only selected after detecting AVX2.
    unsafe { dot_i8_avx2_inner(a, b) }
}

#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2_inner(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let mut k = 0;
    let mut acc = _mm256_setzero_si256();
    // SAFETY: 16-byte loads stay within `a[..n]` and `b[..n]` (k + 16 <= n).
    unsafe {
        while k + 16 <= n {
            let va = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.as_ptr().add(k) as *const __m128i));
            let vb = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.as_ptr().add(k) as *const __m128i));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(va, vb));
            k += 16;
        }
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` is 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc) };
    let total = lanes.iter().fold(0i32, |s, &v| s.wrapping_add(v));
    super::dot_scalar(&a[k..n], &b[k..n], total)
}

/// [`super::dot_block`] with AVX2, as two 4×2 halves (eight accumulators, six sign-extended inputs:
/// within the sixteen ymm registers). Only call when the CPU has AVX2; all slices have the same length.
#[inline]
pub fn dot_block_avx2(w: [&[i8]; 4], x: [&[i8]; 4]) -> [[i32; 4]; 4] {
    // SAFETY: the caller (the `Avx2` tier) is only selected after detecting AVX2.
    unsafe { dot_block_avx2_inner(w, x) }
}

#[target_feature(enable = "avx2")]
unsafe fn dot_block_avx2_inner(w: [&[i8]; 4], x: [&[i8]; 4]) -> [[i32; 4]; 4] {
    let n = w[0].len();
    let mut out = [[0i32; 4]; 4];
    for half in 0..2 {
        let xs = [x[2 * half], x[2 * half + 1]];
        let mut acc = [[_mm256_setzero_si256(); 2]; 4];
        let mut k = 0;
        // SAFETY: 16-byte loads at `k` with k + 16 <= n, the length of every slice.
        unsafe {
            while k + 16 <= n {
                let ld = |s: &[i8]| {
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(s.as_ptr().add(k) as *const __m128i))
                };
                let wv = w.map(ld);
                let xv = xs.map(ld);
                for r in 0..4 {
                    for c in 0..2 {
                        acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(wv[r], xv[c]));
                    }
                }
                k += 16;
            }
        }
        for r in 0..4 {
            for c in 0..2 {
                let mut lanes = [0i32; 8];
                // SAFETY: `lanes` is 32 bytes.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[r][c]) };
                let total = lanes.iter().fold(0i32, |s, &v| s.wrapping_add(v));
                out[r][2 * half + c] = super::dot_scalar(&w[r][k..], &xs[c][k..], total);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{dot_i8, Tier};
    use super::dot_i8_avx2;
    use crate::sampler::Rng;

    #[test]
    fn avx2_dot_equals_scalar_on_random_lengths_and_values() {
        extern crate std;
        if !std::arch::is_x86_feature_detected!("avx2") {
            return; // nothing to compare on this CPU
        }
        let mut rng = Rng::new(11);
        let mut buf = [0i8; 2 * 4608];
        for len in (0..70).chain([127, 128, 129, 1000, 4608]) {
            for v in buf.iter_mut() {
                *v = (rng.next_u64() >> 56) as u8 as i8;
            }
            let (a, b) = buf.split_at(len);
            assert_eq!(
                dot_i8_avx2(a, &b[..len]),
                dot_i8(Tier::Scalar, a, &b[..len]),
                "len {len}"
            );
        }
        // extremes: -128 * -128 products in every lane
        let m = [-128i8; 4608];
        assert_eq!(dot_i8_avx2(&m, &m), dot_i8(Tier::Scalar, &m, &m));
    }
}
