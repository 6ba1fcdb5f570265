//! Integer softmax.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
use super::softmax_div::exps16_avx2;
#[cfg(all(target_arch = "x86_64", feature = "std"))]
use super::softmax_div::LIFT;
use super::softmax_div::{row_by_code, Quotient, RowQuot, CODE_TABLE_ROWS};
use super::Code;
use crate::kernels::{check_len, le_i32};
use crate::Result;

/// Softmax along an axis decomposed as `[outer][len][inner]`. Integer only: `e = exp_table[max - q]`
/// (u32, 2^20 = 1), `q_out = round(255 * e / sum) - 128`.
#[inline(always)]
pub fn softmax(
    x: &[i8],
    outer: usize,
    len: usize,
    inner: usize,
    exp_table: &[u8],
    out: &mut [i8],
) -> Result<()> {
    check_len(outer * len * inner, x.len())?;
    check_len(x.len(), out.len())?;
    check_len(256 * 4, exp_table.len())?;
    // the table's entries as u64 once per call (each row reads them many times): `mx - v` is in
    // 0..=255, so the masked index reads the same entry without a bounds check
    let mut exp = [0u64; 256];
    for (d, e) in exp.iter_mut().enumerate() {
        *e = le_i32(exp_table, d) as u32 as u64;
    }
    let e_of = |mx: i8, v: i8| exp[(mx as i32 - v as i32) as usize & 255];
    // AVX-512 (std builds detect it): the long rows' sums and code tables, the same integers
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    let wide = crate::kernels::x86_avx512_ops::SoftmaxTables::new(&exp);
    for o in 0..outer {
        for i in 0..inner {
            if inner == 1 {
                // contiguous rows (the usual last-axis softmax)
                let xs = &x[o * len..(o + 1) * len];
                let ys = &mut out[o * len..(o + 1) * len];
                // two plain reductions, which vectorize (a fold of the pair did not)
                let mn = xs.iter().copied().min().unwrap_or(i8::MAX);
                let mx = xs.iter().copied().max().unwrap_or(i8::MIN);
                if len > (mx as i32 - mn as i32) as usize {
                    // long rows: each present code's output computed once, then a table lookup
                    // (the same integers). The sum reads the exp table directly, in four
                    // independent partial sums (a histogram's increments of one bin wait for
                    // each other: attention rows repeat their codes)
                    #[cfg(all(target_arch = "x86_64", feature = "std"))]
                    let (done, head) = wide.as_ref().map_or((0, 0), |w| w.exp_sum(xs, mx));
                    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
                    let (done, head) = (0, 0);
                    let mut part = [head, 0, 0, 0];
                    let mut quads = xs[done..].chunks_exact(4);
                    for c in &mut quads {
                        for (p, &v) in part.iter_mut().zip(c) {
                            *p += e_of(mx, v);
                        }
                    }
                    let rest: u64 = quads.remainder().iter().map(|&v| e_of(mx, v)).sum();
                    let sum = part.iter().sum::<u64>() + rest;
                    let q = Quotient::new(sum);
                    let mut code = [0i8; 256];
                    #[cfg(all(target_arch = "x86_64", feature = "std"))]
                    let done = match (&wide, q.inv) {
                        (Some(w), Some(inv)) => {
                            w.codes((mn, mx), q.sum, (inv, LIFT), &mut code);
                            true
                        }
                        _ => false,
                    };
                    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
                    let done = false;
                    if !done {
                        for v in mn..=mx {
                            code[(v as i32 + 128) as usize] = q.code(e_of(mx, v));
                        }
                    }
                    super::eltwise::lut(xs, bytemuck::cast_slice(&code), ys)?;
                } else {
                    let sum: u64 = xs.iter().map(|&v| e_of(mx, v)).sum();
                    let q = Quotient::new(sum);
                    for (y, &v) in ys.iter_mut().zip(xs) {
                        *y = q.code(e_of(mx, v));
                    }
                }
                continue;
            }
            let at = |j: usize| (o * len + j) * inner + i;
            let mx = (0..len).map(|j| x[at(j)]).max().unwrap_or(0);
            let sum: u64 = (0..len).map(|j| e_of(mx, x[at(j)])).sum();
            let q = Quotient::new(sum);
            for j in 0..len {
                out[at(j)] = q.code(e_of(mx, x[at(j)]));
            }
        }
    }
    Ok(())
}

/// How a softmax's probabilities become codes: `code = zo + min(floor((2 r e + sum) / (2 sum)), hi -
/// zo)` for an element's exp value `e` and its row's sum `sum` (both 2^20 = 1): the probability in
/// steps of `1 / r` from the zero point `zo`, clamped to the output's largest code `hi`. With `r =
/// 255`, `zo = -128`, `hi = 127` this is [`softmax`]'s rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    pub r: u64,
    pub zo: i32,
    pub hi: i32,
}

/// The most steps per unit probability: with exp values at most 2^20 (checked with
/// [`exp_table_ok`]) and rows shorter than 2^32, `2 r e + sum` stays below 2^53.
pub const MAX_STEPS: u64 = 1 << 24;

/// Whether every entry of an exp table is at most 2^20 (= 1), which bounds [`softmax_any`]'s sums.
pub fn exp_table_ok(table: &[u8]) -> bool {
    table
        .chunks_exact(4)
        .all(|e| u32::from_le_bytes([e[0], e[1], e[2], e[3]]) <= 1 << 20)
}

/// Softmax of int8 or int16 codes to int8 or int16 codes with any [`Steps`] (the general form of
/// [`softmax`]; the same integers where both apply). The exp of `d = max - q` is `table[d]` for int8
/// inputs (256 u32); for int16 inputs the table holds 512 u32, `lo[j] = exp(-j s)` then `hi[i] =
/// exp(-256 i s)` (2^20 = 1), and `e = (hi[d >> 8] * lo[d & 255] + 2^19) >> 20`. Entries above
/// 2^20 (the op's prepare refuses them too, [`exp_table_ok`]) and `r` above [`MAX_STEPS`] are
/// refused here as well, so every intermediate stays below 2^53 ([`RowQuot`]'s bound).
pub fn softmax_any<T: Code, U: Code>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    table: &[u8],
    st: Steps,
    out: &mut [U],
) -> Result<()> {
    check_len(outer * len * inner, x.len())?;
    check_len(x.len(), out.len())?;
    let wide = T::MAX > 127;
    check_len(if wide { 512 * 4 } else { 256 * 4 }, table.len())?;
    if st.r > MAX_STEPS || len as u64 >= 1 << 32 {
        return Err(crate::Error::Unsupported(
            "softmax steps or row length too large",
        ));
    }
    // the table once per call (`hi` stays zero for int8 inputs)
    let mut ex = Exps {
        lohi: [[0; 256]; 2],
        wide,
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        bytes: None,
    };
    for d in 0..256 {
        ex.lohi[0][d] = le_i32(table, d) as u32;
        if wide {
            ex.lohi[1][d] = le_i32(table, 256 + d) as u32;
        }
    }
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if !wide && len > CODE_TABLE_ROWS {
        ex.bytes = crate::kernels::x86_avx512_ops::SoftmaxTables::new(&ex.lohi[0].map(u64::from));
    }
    if ex.lohi.iter().flatten().any(|&e| e > 1 << 20) {
        return Err(crate::Error::Unsupported("softmax exp table entry above 1"));
    }
    if inner == 1 {
        // contiguous rows (the usual last-axis softmax): plain loops over slices, compiled for
        // AVX2 where the CPU has it (the same integers: the loops' f64 operations are exact
        // or corrected, [`RowQuot`], and never contracted)
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if crate::kernels::ops_isa() >= crate::kernels::OpsIsa::Avx2 {
            // SAFETY: AVX2 was just detected
            unsafe { rows_avx2(x, out, len, &ex, st) };
            return Ok(());
        }
        rows::<T, U, false>(x, out, len, &ex, st);
        return Ok(());
    }
    // a softmax over an outer axis (linear attention's queries over their channels)
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    if crate::kernels::ops_isa() >= crate::kernels::OpsIsa::Avx2 {
        // SAFETY: AVX2 was just detected
        unsafe { super::softmax_cols::columns_avx2(x, (outer, len, inner), &ex, st, out) };
        return Ok(());
    }
    super::softmax_cols::columns(x, (outer, len, inner), &ex, st, out);
    Ok(())
}

/// The exp values of [`softmax_any`]'s table, `lo` then `hi` (every entry at most 2^20; `hi` unused
/// for int8 inputs).
pub(super) struct Exps {
    pub(super) lohi: [[u32; 256]; 2],
    pub(super) wide: bool,
    /// int8 codes' AVX-512 sums (std builds on CPUs with VBMI; the same integers)
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    pub(super) bytes: Option<crate::kernels::x86_avx512_ops::SoftmaxTables>,
}

impl Exps {
    /// The exp of `d = mx - v`: below 2^16 (int16) or 2^8, so the masked indices read the same
    /// entries without bounds checks.
    #[inline(always)]
    pub(super) fn of(&self, mx: i32, v: i32) -> u64 {
        let d = (mx - v) as usize;
        let [lo, hi] = &self.lohi;
        if self.wide {
            (hi[(d >> 8) & 255] as u64 * lo[d & 255] as u64 + (1 << 19)) >> 20
        } else {
            lo[d & 255] as u64
        }
    }
}

/// [`rows`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(all(target_arch = "x86_64", feature = "std"))]
#[target_feature(enable = "avx2")]
unsafe fn rows_avx2<T: Code, U: Code>(x: &[T], out: &mut [U], len: usize, ex: &Exps, st: Steps) {
    rows::<T, U, true>(x, out, len, ex, st)
}

/// [`softmax_any`] over contiguous rows of `len` (its checks done). `AVX2`: the caller runs on a
/// CPU with AVX2, so the exp values of int16 codes are looked up 8 at a time by its gathers
/// ([`exps16_avx2`]; the same integers).
#[inline(always)]
fn rows<T: Code, U: Code, const AVX2: bool>(
    x: &[T],
    out: &mut [U],
    len: usize,
    ex: &Exps,
    st: Steps,
) {
    let top = (st.hi - st.zo).max(0) as u64;
    // a quotient is at most `r` (`e <= sum`): where every `zo + q` for `q` in `0..=r` is a code
    // of `U` at most `hi`, neither the clamp to `top` nor the saturation can act (the usual case:
    // `r = hi - zo`), and the loop runs without them (their branches depend on the data)
    let plain = st.zo >= U::MIN && st.zo as i64 + st.r as i64 <= st.hi.min(U::MAX) as i64;
    let mut keep = [0u32; KEEP];
    for (xs, ys) in x
        .chunks_exact(len.max(1))
        .zip(out.chunks_exact_mut(len.max(1)))
    {
        let mx = xs.iter().map(|v| v.get()).max().unwrap_or(0);
        if !ex.wide && xs.len() > CODE_TABLE_ROWS {
            row_by_code(xs, ys, mx, ex, st, (plain, top));
            continue;
        }
        if let Some(es) = keep.get_mut(..xs.len()) {
            // each exp once: kept for the quotients (`e <= 2^20` fits u32), the sum in four
            // independent parts
            let mut part = [0u64; 4];
            #[allow(unused_mut)] // set only where the AVX2 gathers are built
            let mut done = 0;
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            if let (true, Ok(x16)) = (AVX2 && ex.wide, bytemuck::try_cast_slice::<T, i16>(xs)) {
                // SAFETY: the caller runs on a CPU with AVX2 (`AVX2`)
                (part[1], done) = unsafe { exps16_avx2(x16, mx, &ex.lohi, es) };
            }
            let (mut ec, mut xc) = (es[done..].chunks_exact_mut(4), xs[done..].chunks_exact(4));
            for (e4, x4) in (&mut ec).zip(&mut xc) {
                for i in 0..4 {
                    let ev = ex.of(mx, x4[i].get());
                    e4[i] = ev as u32;
                    part[i] += ev;
                }
            }
            for (e, v) in ec.into_remainder().iter_mut().zip(xc.remainder()) {
                let ev = ex.of(mx, v.get());
                *e = ev as u32;
                part[0] += ev;
            }
            let sum = part.iter().sum::<u64>().max(1);
            let q = RowQuot::new(st.r, sum);
            #[allow(unused_mut)] // set only where the AVX2 quotients are built
            let (mut es, mut ys) = (&es[..], ys);
            #[cfg(all(target_arch = "x86_64", feature = "std"))]
            if AVX2 {
                // SAFETY: the caller runs on a CPU with AVX2 (`AVX2`)
                let done = unsafe { super::softmax_cols::avx2::row_codes(es, sum, st, ys) };
                (es, ys) = (&es[done..], &mut ys[done..]);
            }
            if plain {
                for (y, &e) in ys.iter_mut().zip(es.iter()) {
                    *y = U::wrap(st.zo as i64 + q.of(e) as i64);
                }
            } else {
                for (y, &e) in ys.iter_mut().zip(es.iter()) {
                    *y = U::sat(st.zo as i64 + q.of(e).min(top) as i64);
                }
            }
            continue;
        }
        // longer rows: each exp computed twice, the sum in four independent parts
        let mut part = [0u64; 4];
        let mut quads = xs.chunks_exact(4);
        for c in &mut quads {
            for (p, v) in part.iter_mut().zip(c) {
                *p += ex.of(mx, v.get());
            }
        }
        let rest: u64 = quads.remainder().iter().map(|v| ex.of(mx, v.get())).sum();
        let sum = (part.iter().sum::<u64>() + rest).max(1);
        let q = RowQuot::new(st.r, sum);
        for (y, v) in ys.iter_mut().zip(xs) {
            let q = q.of(ex.of(mx, v.get()) as u32);
            *y = if plain {
                U::wrap(st.zo as i64 + q as i64)
            } else {
                U::sat(st.zo as i64 + q.min(top) as i64)
            };
        }
    }
}

/// Rows of [`softmax_any`] up to this long keep their exp values on the stack (16 KiB on 64-bit
/// targets, 1 KiB on 32-bit ones such as Cortex-M) and compute each once; longer rows compute each
/// twice.
#[cfg(target_pointer_width = "64")]
const KEEP: usize = 4096;
#[cfg(not(target_pointer_width = "64"))]
const KEEP: usize = 256;

#[cfg(test)]
mod tests {
    /// Rows long and short, codes spread wide and narrow (both ways of summing), any axis, against
    /// the definition with integer division.
    #[test]
    fn softmax_rows_match_the_definition() {
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        let table: Vec<u8> = (0..256u32)
            .flat_map(|d| ((1u32 << 20) >> (d / 8).min(31)).to_le_bytes())
            .collect();
        for case in 0..60 {
            let (outer, len, inner) = (
                1 + next() as usize % 3,
                1 + next() as usize % 700,
                if case % 4 == 0 { 2 } else { 1 },
            );
            let (lo, span) = if case % 2 == 0 {
                (-128i64, 256)
            } else {
                (next() as i64 % 100 - 50, 1 + next() % 20)
            };
            let x: Vec<i8> = (0..outer * len * inner)
                .map(|_| (lo + (next() % span) as i64).clamp(-128, 127) as i8)
                .collect();
            let mut got = vec![0i8; x.len()];
            super::softmax(&x, outer, len, inner, &table, &mut got).unwrap();
            let e = |d: i32| {
                u32::from_le_bytes(
                    table[d as usize * 4..d as usize * 4 + 4]
                        .try_into()
                        .unwrap(),
                ) as u64
            };
            for o in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (o * len + j) * inner + i;
                    let mx = (0..len).map(|j| x[at(j)]).max().unwrap() as i32;
                    let sum: u64 = (0..len).map(|j| e(mx - x[at(j)] as i32)).sum();
                    for j in 0..len {
                        let q = ((e(mx - x[at(j)] as i32) * 510 + sum) / (2 * sum)).min(255) as i32
                            - 128;
                        assert_eq!(got[at(j)] as i32, q, "case {case} row {o}/{i} element {j}");
                    }
                }
            }
        }
    }

    /// A table entry above 2^20 is refused (the division-free quotient's bound needs it), not
    /// computed with wrong or undefined intermediates.
    #[test]
    fn general_softmax_refuses_entries_above_one() {
        use super::{softmax_any, Steps};
        let st = Steps {
            r: 65535,
            zo: -32768,
            hi: 32767,
        };
        for (wide, at) in [(false, 3usize), (true, 300)] {
            let mut table = vec![0u8; if wide { 2048 } else { 1024 }];
            table[4 * at..4 * at + 4].copy_from_slice(&((1u32 << 20) + 1).to_le_bytes());
            let mut out = vec![0i16; 8];
            let r = if wide {
                softmax_any(&[7i16; 8], (1, 8, 1), &table, st, &mut out)
            } else {
                softmax_any(&[7i8; 8], (1, 8, 1), &table, st, &mut out)
            };
            assert!(r.is_err(), "wide {wide}");
        }
    }

    /// The general rule against its definition with integer division: int8 and int16 codes, steps
    /// up to MAX_STEPS, rows long and short.
    #[test]
    fn general_softmax_matches_its_definition() {
        use super::{softmax_any, Steps, MAX_STEPS};
        let mut seed = 9u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        for case in 0..40 {
            let wide = case % 2 == 1;
            // rows short, and around the longest whose exp values are kept (`KEEP`)
            let len = if case % 5 == 4 {
                super::KEEP - 2 + next() as usize % 5
            } else {
                1 + next() as usize % 900
            };
            let r = [255, 65535, 1 + next() % MAX_STEPS, MAX_STEPS][case / 2 % 4];
            let entries = if wide { 512 } else { 256 };
            let table: Vec<u8> = (0..entries)
                .flat_map(|d: u64| {
                    (((1u64 << 20) >> (d % 256 / 16).min(20)) as u32 / (1 + d as u32 / 256))
                        .to_le_bytes()
                })
                .collect();
            let le =
                |i: usize| u32::from_le_bytes(table[4 * i..4 * i + 4].try_into().unwrap()) as u64;
            let e = |d: usize| {
                if wide {
                    (le(256 + (d >> 8)) * le(d & 255) + (1 << 19)) >> 20
                } else {
                    le(d)
                }
            };
            // int16 probabilities from int8 or int16 codes
            let st = Steps {
                r,
                zo: -32768,
                hi: 32767,
            };
            let x: Vec<i32> = (0..len)
                .map(|_| {
                    if wide {
                        (next() % 65536) as u16 as i16 as i32
                    } else {
                        (next() % 256) as u8 as i8 as i32
                    }
                })
                .collect();
            let mut got = vec![0i16; len];
            if wide {
                let x16: Vec<i16> = x.iter().map(|&v| v as i16).collect();
                softmax_any(&x16, (1, len, 1), &table, st, &mut got).unwrap();
            } else {
                let x8: Vec<i8> = x.iter().map(|&v| v as i8).collect();
                softmax_any(&x8, (1, len, 1), &table, st, &mut got).unwrap();
            }
            let mx = *x.iter().max().unwrap();
            let sum = x.iter().map(|&v| e((mx - v) as usize)).sum::<u64>().max(1);
            for (j, (&v, &g)) in x.iter().zip(&got).enumerate() {
                let q = ((2 * r * e((mx - v) as usize) + sum) / (2 * sum)).min(65535);
                assert_eq!(g as i64, -32768 + q as i64, "case {case} element {j}");
            }
            if !wide {
                let (x8, mut got8) = (
                    x.iter().map(|&v| v as i8).collect::<Vec<_>>(),
                    vec![0i8; len],
                );
                let st8 = Steps {
                    zo: -128,
                    hi: 127,
                    ..st
                };
                softmax_any(&x8, (1, len, 1), &table, st8, &mut got8).unwrap();
                for (j, (&v, &g)) in x.iter().zip(&got8).enumerate() {
                    let q = ((2 * r * e((mx - v) as usize) + sum) / (2 * sum)).min(255);
                    assert_eq!(g as i64, -128 + q as i64, "int8 case {case} element {j}");
                }
            }
        }
    }

    /// The vectorizable row quotient against integer division: random steps, sums and exp values
    /// within [`super::softmax_any`]'s bounds, and exp values around every kind of exact quotient
    /// (`n / d` just below, at and above an integer and a half-integer step).
    #[test]
    fn row_quotient_is_integer_division() {
        let mut seed = 5u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 11
        };
        let check = |r: u64, sum: u64, e: u64| {
            if e > sum.min(1 << 20) || 2 * r * e + sum >= 1 << 53 {
                return;
            }
            let want = (2 * r * e + sum) / (2 * sum);
            assert_eq!(
                super::RowQuot::new(r, sum).of(e as u32),
                want,
                "r {r} sum {sum} e {e}"
            );
        };
        for i in 0..200_000 {
            let r = [255, 65535, super::MAX_STEPS, 1 + next() % super::MAX_STEPS][i % 4];
            let sum = 1 + next() % (1u64 << (1 + next() % 52));
            let e = next() % (sum.min(1 << 20) + 1);
            check(r, sum, e);
            // `r e / sum + 1/2` near the integer `k`: `e` near `(2 k - 1) sum / (2 r)`
            let k = 1 + next() % r;
            let e0 = ((2 * k - 1) as u128 * sum as u128 / (2 * r) as u128) as u64;
            for e in [e0.saturating_sub(1), e0, e0 + 1] {
                check(r, sum, e);
            }
        }
        for (r, sum) in [
            (super::MAX_STEPS, 1 << 20),
            (super::MAX_STEPS, (1 << 28) - 1),
            (65535, 1),
        ] {
            for e in [0, 1, sum.min(1 << 20) - 1, sum.min(1 << 20)] {
                check(r, sum, e);
            }
        }
    }

    /// The AVX-512 row sums and code tables against the scalar rule (when the CPU has them):
    /// random tables (some with entries of 2^24 or more, which have no byte planes), rows of any
    /// length and spread, sums from a single element's (probability 1, the clamp at 255) up to
    /// just below 2^39; codes outside `mn..=mx` untouched.
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    #[test]
    fn avx512_sums_and_codes_equal_the_scalar_rule() {
        use crate::kernels::x86_avx512_ops::SoftmaxTables;
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 11
        };
        for case in 0..400 {
            let cap = if case % 5 == 0 {
                u32::MAX as u64
            } else {
                (1 << 24) - 1
            };
            let exp: [u64; 256] = core::array::from_fn(|_| match next() % 4 {
                0 => 0,
                1 => cap,
                _ => next() % (cap + 1),
            });
            let Some(t) = SoftmaxTables::new(&exp) else {
                return; // no AVX-512 VBMI here: nothing to compare
            };
            let len = next() as usize % 300;
            let x: Vec<i8> = (0..len).map(|_| next() as i8).collect();
            let mx = x.iter().copied().max().unwrap_or(0);
            let (n, got) = t.exp_sum(&x, mx);
            let want: u64 = x[..n]
                .iter()
                .map(|&v| exp[(mx as i32 - v as i32) as usize])
                .sum();
            assert_eq!(got, want, "case {case}: sum of {n} of {len}");
            assert!(
                n == 0 || n == len / 64 * 64,
                "case {case}: {n} summed of {len}"
            );
            let (a, b) = (next() as i8, next() as i8);
            let (mn, mx) = (a.min(b), a.max(b));
            let emax = (mn..=mx)
                .map(|v| exp[(mx as i32 - v as i32) as usize])
                .max()
                .unwrap();
            let sum = match next() % 3 {
                0 => emax.max(1),
                1 => (1 << 39) - 1,
                _ => emax.max(1) + next() % (1 << 38),
            };
            let q = super::Quotient::new(sum);
            let Some(inv) = q.inv else { continue };
            let mut got = [55i8; 256];
            t.codes((mn, mx), q.sum, (inv, super::LIFT), &mut got);
            for v in -128i32..=127 {
                let want = if (mn as i32..=mx as i32).contains(&v) {
                    q.code(exp[(mx as i32 - v) as usize])
                } else {
                    55
                };
                assert_eq!(
                    got[(v + 128) as usize],
                    want,
                    "case {case}: code of {v} in {mn}..={mx}, sum {sum}"
                );
            }
        }
    }

    /// The f64 quotient against integer division, at random and at the edges of each rounding.
    #[test]
    fn quotient_is_the_exact_rounded_code() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 11
        };
        let want = |e: u64, sum: u64| {
            let sum = sum.max(1);
            ((e * 510 + sum) / (2 * sum)).min(255) as i32 - 128
        };
        for _ in 0..300_000 {
            let sum = 1 + next() % (1 << (1 + next() % 41));
            let e = next() % (1u64 << 32).min(sum * 2 + 1);
            assert_eq!(
                super::Quotient::new(sum).code(e) as i32,
                want(e, sum),
                "{e} / {sum}"
            );
        }
        // every row sum below 1500 with every element value (exact quotients included)
        for sum in 1..1500u64 {
            for e in 0..=sum {
                assert_eq!(
                    super::Quotient::new(sum).code(e) as i32,
                    want(e, sum),
                    "{e} / {sum}"
                );
            }
        }
        for sum in [
            1u64,
            2,
            3,
            255,
            1 << 20,
            3 << 30,
            (1 << 39) - 1,
            1 << 39,
            1 << 50,
        ] {
            for k in 0..=255u64 {
                // e where round(255 e / sum) steps from k to k + 1, and its neighbours
                let edge = ((2 * k + 1) * sum).div_ceil(510);
                for e in [edge.saturating_sub(1), edge, edge + 1] {
                    let e = e.min(u32::MAX as u64);
                    assert_eq!(
                        super::Quotient::new(sum).code(e) as i32,
                        want(e, sum),
                        "{e} / {sum}"
                    );
                }
            }
        }
    }
}
