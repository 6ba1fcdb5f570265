//! The integer softmax over an outer axis (`[outer, len, inner]` with `inner > 1`: linear
//! attention's queries over their channels), in column blocks: the same rule per column as
//! `softmax::softmax_any`'s contiguous rows.
use super::softmax::{Exps, Steps};
use super::softmax_div::RowQuot;
use super::Code;

/// [`super::softmax::softmax_any`] over the `len` axis of `[outer, len, inner]` with `inner > 1` (its checks done):
/// columns in blocks of [`COLS`], each block's maxima, sums and quotients on the stack, walking
/// whole rows of the block; per column the same rule as a contiguous row.
#[inline(always)]
pub(super) fn columns<T: Code, U: Code>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    ex: &Exps,
    st: Steps,
    out: &mut [U],
) {
    for o in 0..outer {
        let plane = &x[o * len * inner..(o + 1) * len * inner];
        let dst = &mut out[o * len * inner..(o + 1) * len * inner];
        for i0 in (0..inner).step_by(COLS) {
            block(plane, dst, (len, inner), i0..inner.min(i0 + COLS), ex, st);
        }
    }
}

/// The columns of one block.
const COLS: usize = 64;

/// Columns `cols` (at most [`COLS`]) of one `[len, inner]` plane.
#[inline(always)]
fn block<T: Code, U: Code>(
    plane: &[T],
    dst: &mut [U],
    (len, inner): (usize, usize),
    cols: core::ops::Range<usize>,
    ex: &Exps,
    st: Steps,
) {
    let top = (st.hi - st.zo).max(0) as u64;
    let row = |j: usize| (j * inner + cols.start)..(j * inner + cols.end);
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
        for (((d, v), &m), q) in dst[row(j)].iter_mut().zip(&plane[row(j)]).zip(&mx).zip(&q) {
            let e = ex.of(m, v.get()) as u32;
            *d = U::sat(st.zo as i64 + q.of(e).min(top) as i64);
        }
    }
}

/// [`columns`] by AVX2, eight columns to a register and up to 64 columns to a pass over the rows: the exp values by gathers from the table (int16
/// codes: both tables, the product rounded as [`Exps::of`] does), each column's sum in u64 lanes,
/// and [`RowQuot::of`]'s operations on four f64 and u64 lanes (the same operations in the same
/// order, none contracted; so the same integers). The last `inner % 8` columns take the rule.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn columns_avx2<T: Code, U: Code>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    ex: &Exps,
    st: Steps,
    out: &mut [U],
) {
    let full = inner / 8 * 8;
    // one buffer for every group of eight columns (its rows are written before they are read)
    let mut kept = [core::arch::x86_64::_mm256_setzero_si256(); avx2::KEEP];
    for o in 0..outer {
        let plane = &x[o * len * inner..(o + 1) * len * inner];
        let dst = &mut out[o * len * inner..(o + 1) * len * inner];
        for i0 in (0..full).step_by(8 * avx2::GROUPS) {
            let g = ((full - i0) / 8).min(avx2::GROUPS);
            // SAFETY: AVX2 (the caller); columns `i0..i0 + 8 g` lie inside every row
            unsafe { avx2::groups(plane, dst, (len, inner), (i0, g), (ex, st), &mut kept) };
        }
        if full < inner {
            block(plane, dst, (len, inner), full..inner, ex, st);
        }
    }
}

#[cfg(all(target_arch = "x86_64", feature = "std"))]
pub(super) mod avx2;

#[cfg(test)]
mod tests {
    use super::columns;
    use crate::kernels::reference::softmax::{Exps, Steps};
    use crate::kernels::reference::Code;

    /// The column softmax of `x` (i8 or i16 codes) into `U` codes, widened: by the rule, or on x86
    /// with AVX2 by [`super::columns_avx2`].
    fn run<T: Code, U: Code>(
        x: &[T],
        shape: (usize, usize, usize),
        ex: &Exps,
        st: Steps,
        simd: bool,
    ) -> Vec<i64> {
        let mut out = vec![U::default(); x.len()];
        if simd {
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            // SAFETY: the caller detected AVX2
            unsafe {
                super::columns_avx2(x, shape, ex, st, &mut out)
            };
        } else {
            columns(x, shape, ex, st, &mut out);
        }
        out.iter().map(|v| v.get() as i64).collect()
    }

    /// A softmax over an outer axis (`inner > 1`, the column blocks) against its definition with
    /// integer division: int8 and int16 codes, int8 and int16 outputs, clamps that act and do
    /// not, tables with zeros (empty sums), columns fewer and more than a block and not a
    /// multiple of 8; on x86 with AVX2 the SIMD kernel too, each against the definition.
    #[test]
    fn column_softmax_matches_its_definition_in_every_build() {
        let mut seed = 13u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        for case in 0..48 {
            let wide = case % 2 == 1;
            let (outer, len, inner) = (
                1 + case % 3,
                1 + next() as usize % 40,
                [2, 3, 64, 70, 130, 17, 8][case % 7],
            );
            let mut ex = Exps {
                lohi: [[0; 256]; 2],
                wide,
                #[cfg(all(target_arch = "x86_64", feature = "std"))]
                bytes: None,
            };
            let zeros = case % 5 == 4;
            for (k, e) in ex.lohi[0].iter_mut().enumerate() {
                *e = if zeros && k % 3 != 1 {
                    0
                } else {
                    (1u32 << 20) >> (k / 8).min(20)
                };
            }
            if wide {
                for (k, e) in ex.lohi[1].iter_mut().enumerate() {
                    *e = (1u32 << 20) >> k.min(20);
                }
            }
            let st = match case % 4 {
                0 => Steps {
                    r: 255,
                    zo: -128,
                    hi: 127,
                },
                1 => Steps {
                    r: 1 + next() % 70000,
                    zo: -32768,
                    hi: 32767,
                },
                2 => Steps {
                    r: 1 + next() % 300,
                    zo: -100 + (next() % 50) as i32,
                    hi: 90,
                },
                _ => Steps {
                    r: 1 << 24,
                    zo: 0,
                    hi: 40000,
                },
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
            let top = (st.hi - st.zo).max(0) as u64;
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
            let (x8, x16): (Vec<i8>, Vec<i16>) = (
                x.iter().map(|&v| v as i8).collect(),
                x.iter().map(|&v| v as i16).collect(),
            );
            let mut builds = vec![("the rule", false)];
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            if std::arch::is_x86_feature_detected!("avx2") {
                builds.push(("the AVX2 kernel", true));
            }
            for (build, simd) in builds {
                let (got8, got16) = if wide {
                    (
                        run::<i16, i8>(&x16, shape, &ex, st, simd),
                        run::<i16, i16>(&x16, shape, &ex, st, simd),
                    )
                } else {
                    (
                        run::<i8, i8>(&x8, shape, &ex, st, simd),
                        run::<i8, i16>(&x8, shape, &ex, st, simd),
                    )
                };
                let sat =
                    |lo: i64, hi: i64| want.iter().map(|&v| v.clamp(lo, hi)).collect::<Vec<_>>();
                assert_eq!(got16, sat(-32768, 32767), "case {case}: {build}, int16 out");
                assert_eq!(got8, sat(-128, 127), "case {case}: {build}, int8 out");
            }
        }
    }
}
