//! The integer softmax over an outer axis (`[outer, len, inner]` with `inner > 1`: linear
//! attention's queries over their channels), in column blocks: the same rule per column as
//! `softmax::softmax_any`'s contiguous rows.
use super::softmax::{Exps, Steps};
use super::softmax_div::RowQuot;
use super::Code;

/// [`columns`] built for AVX2 (the same integers: its f64 operations are exact or corrected,
/// [`RowQuot`], and never contracted). Safety: the CPU has AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn columns_avx2<T: Code, U: Code>(
    x: &[T],
    shape: (usize, usize, usize),
    ex: &Exps,
    st: Steps,
    out: &mut [U],
) {
    columns(x, shape, ex, st, out)
}

/// [`super::softmax::softmax_any`] over the `len` axis of `[outer, len, inner]` with `inner > 1` (its checks done):
/// columns in blocks of COLS, each block's maxima, sums and quotients on the stack, walking whole
/// rows of the block; per column the same rule as a contiguous row.
#[inline(always)]
pub(super) fn columns<T: Code, U: Code>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    ex: &Exps,
    st: Steps,
    out: &mut [U],
) {
    let top = (st.hi - st.zo).max(0) as u64;
    const COLS: usize = 64;
    for o in 0..outer {
        let plane = &x[o * len * inner..(o + 1) * len * inner];
        let dst = &mut out[o * len * inner..(o + 1) * len * inner];
        for i0 in (0..inner).step_by(COLS) {
            let ni = COLS.min(inner - i0);
            let row = |j: usize| (j * inner + i0)..(j * inner + i0 + ni);
            let mut mx = [i32::MIN; COLS];
            for j in 0..len {
                for (m, v) in mx.iter_mut().zip(&plane[row(j)]) {
                    *m = (*m).max(v.get());
                }
            }
            let mut sum = [0u64; COLS];
            for j in 0..len {
                for ((s, v), &m) in sum.iter_mut().zip(&plane[row(j)]).zip(&mx) {
                    *s += ex.of(m, v.get());
                }
            }
            let q: [RowQuot; COLS] = core::array::from_fn(|i| RowQuot::new(st.r, sum[i].max(1)));
            for j in 0..len {
                for (((d, v), &m), q) in dst[row(j)].iter_mut().zip(&plane[row(j)]).zip(&mx).zip(&q)
                {
                    let e = ex.of(m, v.get()) as u32;
                    *d = U::sat(st.zo as i64 + q.of(e).min(top) as i64);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// A softmax over an outer axis (`inner > 1`, the column blocks) against its definition with
    /// integer division, int8 and int16 codes and outputs, columns fewer and more than a block;
    /// on x86 with AVX2 both builds of the column loops, each against the definition.
    #[test]
    fn column_softmax_matches_its_definition_in_every_build() {
        use super::columns;
        use crate::kernels::reference::softmax::{Exps, Steps};
        let mut seed = 13u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        for case in 0..24 {
            let wide = case % 2 == 1;
            let (outer, len, inner) = (
                1 + case % 3,
                1 + next() as usize % 40,
                [2, 3, 64, 70, 130][case % 5],
            );
            let mut ex = Exps {
                lohi: [[0; 256]; 2],
                wide,
                #[cfg(all(target_arch = "x86_64", feature = "std"))]
                bytes: None,
            };
            for (k, e) in ex.lohi[0].iter_mut().enumerate() {
                *e = (1u32 << 20) >> (k / 8).min(20);
            }
            if wide {
                for (k, e) in ex.lohi[1].iter_mut().enumerate() {
                    *e = (1u32 << 20) >> k.min(20);
                }
            }
            let st = if case % 3 == 0 {
                Steps {
                    r: 255,
                    zo: -128,
                    hi: 127,
                }
            } else {
                Steps {
                    r: 1 + next() % 70000,
                    zo: -32768,
                    hi: 32767,
                }
            };
            let x: Vec<i32> = (0..outer * len * inner)
                .map(|_| {
                    if wide {
                        (next() % 65536) as u16 as i16 as i32
                    } else {
                        (next() % 256) as u8 as i8 as i32
                    }
                })
                .collect();
            let mut want = vec![0i64; x.len()];
            let top = (st.hi - st.zo) as u64;
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * len + j) * inner + i;
                    let mx = (0..len).map(|j| x[at(j)]).max().unwrap();
                    let sum = (0..len).map(|j| ex.of(mx, x[at(j)])).sum::<u64>().max(1);
                    for j in 0..len {
                        let q = (2 * st.r * ex.of(mx, x[at(j)]) + sum) / (2 * sum);
                        want[at(j)] = st.zo as i64 + q.min(top) as i64;
                    }
                }
            }
            let shape = (outer, len, inner);
            let check = |build: &str, run: &dyn Fn(&mut [i16])| {
                let mut got = vec![0i16; x.len()];
                run(&mut got);
                let got: Vec<i64> = got.iter().map(|&v| v as i64).collect();
                // an int8 output saturates the same way
                let want: Vec<i64> = want.iter().map(|&v| v.clamp(-32768, 32767)).collect();
                assert_eq!(got, want, "case {case}: {build}");
            };
            let (x8, x16): (Vec<i8>, Vec<i16>) = (
                x.iter().map(|&v| v as i8).collect(),
                x.iter().map(|&v| v as i16).collect(),
            );
            let scalar = |o: &mut [i16]| {
                if wide {
                    columns(&x16, shape, &ex, st, o)
                } else {
                    columns(&x8, shape, &ex, st, o)
                }
            };
            check("the rule", &scalar);
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 was just detected
                let avx2 = |o: &mut [i16]| unsafe {
                    if wide {
                        super::columns_avx2(&x16, shape, &ex, st, o)
                    } else {
                        super::columns_avx2(&x8, shape, &ex, st, o)
                    }
                };
                check("the AVX2 build", &avx2);
            }
        }
    }
}
