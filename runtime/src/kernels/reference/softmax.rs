//! Integer softmax.
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
/// refused here as well, so every intermediate stays below 2^53 ([`FloorDiv`]'s bound).
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
    // the table as u64 once per call; `d = mx - v` is below 2^16 (int16) or 2^8, so the masked
    // indices read the same entries without bounds checks
    let mut lo = [0u64; 256];
    let mut hi = [0u64; 256];
    for d in 0..256 {
        lo[d] = le_i32(table, d) as u32 as u64;
        if wide {
            hi[d] = le_i32(table, 256 + d) as u32 as u64;
        }
    }
    if lo.iter().chain(&hi).any(|&e| e > 1 << 20) {
        return Err(crate::Error::Unsupported("softmax exp table entry above 1"));
    }
    let e_of = |mx: i32, v: i32| {
        let d = (mx - v) as usize;
        if wide {
            (hi[(d >> 8) & 255] * lo[d & 255] + (1 << 19)) >> 20
        } else {
            lo[d & 255]
        }
    };
    let top = (st.hi - st.zo).max(0) as u64;
    let code = |div: &FloorDiv, sum: u64, e: u64| {
        U::sat(st.zo as i64 + div.of(2 * st.r * e + sum).min(top) as i64)
    };
    // a quotient is at most `r` (`e <= sum`): where every `zo + q` for `q` in `0..=r` is a code
    // of `U` at most `hi`, neither the clamp to `top` nor the saturation can act (the usual case:
    // `r = hi - zo`), and the loop runs without them (their branches depend on the data)
    let plain = st.zo >= U::MIN && st.zo as i64 + st.r as i64 <= st.hi.min(U::MAX) as i64;
    if inner == 1 {
        // contiguous rows (the usual last-axis softmax): plain loops over slices, the sum in
        // four independent parts
        for (xs, ys) in x
            .chunks_exact(len.max(1))
            .zip(out.chunks_exact_mut(len.max(1)))
        {
            let mx = xs.iter().map(|v| v.get()).max().unwrap_or(0);
            let mut part = [0u64; 4];
            let mut quads = xs.chunks_exact(4);
            for c in &mut quads {
                for (p, v) in part.iter_mut().zip(c) {
                    *p += e_of(mx, v.get());
                }
            }
            let rest: u64 = quads.remainder().iter().map(|v| e_of(mx, v.get())).sum();
            let sum = (part.iter().sum::<u64>() + rest).max(1);
            let div = FloorDiv::new(2 * sum);
            if plain {
                for (y, v) in ys.iter_mut().zip(xs) {
                    *y = U::wrap(st.zo as i64 + div.of(2 * st.r * e_of(mx, v.get()) + sum) as i64);
                }
            } else {
                for (y, v) in ys.iter_mut().zip(xs) {
                    *y = code(&div, sum, e_of(mx, v.get()));
                }
            }
        }
        return Ok(());
    }
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mx = (0..len).map(|j| x[at(j)].get()).max().unwrap_or(0);
            let sum = (0..len)
                .map(|j| e_of(mx, x[at(j)].get()))
                .sum::<u64>()
                .max(1);
            let div = FloorDiv::new(2 * sum);
            for j in 0..len {
                out[at(j)] = code(&div, sum, e_of(mx, x[at(j)].get()));
            }
        }
    }
    Ok(())
}

/// `floor(n / d)` for `n < 2^53` and `2 <= d <= 2^53` ([`softmax_any`]'s bounds: `n = 2 r e + sum`,
/// `d = 2 sum`) by one multiplication and a shift (Granlund and Montgomery, "Division by invariant
/// integers using multiplication", theorem 4.2): with `l >= log2 d` and `m = ceil(2^(53 + l) / d)`,
/// `m d - 2^(53 + l) < d <= 2^l`, so `floor(n m / 2^(53 + l)) = floor(n / d)` for every `n < 2^53`.
/// Here `l = max(ceil(log2 d), 11)`: the shift is 64 or more, so the quotient is the high half of
/// the 128-bit product shifted, and `m` fits 64 bits (`ceil(2^64 / d) <= 2^63` for `d >= 2`, else
/// below 2^54). One division per row, none per element.
struct FloorDiv {
    m: u64,
    s: u32,
}

impl FloorDiv {
    fn new(d: u64) -> Self {
        let d = d.clamp(2, 1 << 53);
        let l = (64 - (d - 1).leading_zeros()).max(11);
        FloorDiv {
            m: (1u128 << (53 + l)).div_ceil(d as u128) as u64,
            s: l - 11,
        }
    }
    #[inline(always)]
    fn of(&self, n: u64) -> u64 {
        (((n as u128 * self.m as u128) >> 64) as u64) >> self.s
    }
}

/// `round(255 * e / sum) - 128` as `floor((510 e + sum) / (2 sum)) - 128`, clamped to 127.
///
/// For `sum < 2^39` (every real row: `e <= 2^20` per element) without a division: with `n = 510 e
/// + sum < 2^53` and `d = 2 sum < 2^40` exact in f64, `p = n * fl(1/d)` is within `2^-44` of
/// `n / d < 256`; adding `2^-42` lifts an exact integer quotient above itself yet keeps any other
/// (at least `1/d >= 2^-40` below the next integer) below the next, so truncation is the floor.
struct Quotient {
    sum: u64,
    d: u64,
    inv: Option<f64>,
}

/// The lift of [`Quotient`]: above the product's error, below the gap to the next integer.
const LIFT: f64 = 1.0 / (1u64 << 42) as f64;

impl Quotient {
    fn new(sum: u64) -> Self {
        let sum = sum.max(1);
        let d = sum.saturating_mul(2);
        Quotient {
            sum,
            d,
            inv: (sum < 1 << 39).then(|| 1.0 / d as f64),
        }
    }
    #[inline(always)]
    fn code(&self, e: u64) -> i8 {
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
            let len = 1 + next() as usize % 900;
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
        }
    }

    /// The division-free floor against integer division: random operands within its bounds,
    /// exact multiples and their neighbours, the largest operands.
    #[test]
    fn floor_div_is_integer_division() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 11
        };
        for _ in 0..300_000 {
            let d = 2 + next() % (1u64 << (1 + next() % 52));
            let q = next() % (1u64 << (next() % 26));
            let n = (q.saturating_mul(d) + next() % (2 * d)).min((1 << 53) - 1);
            for n in [n, n.saturating_sub(1), (n + 1).min((1 << 53) - 1)] {
                assert_eq!(super::FloorDiv::new(d).of(n), n / d, "{n} / {d}");
            }
        }
        let top = (1u64 << 53) - 1;
        for d in [
            2u64,
            3,
            7,
            1 << 11,
            (1 << 11) + 1,
            1 << 20,
            (1 << 52) + 1,
            1 << 53,
        ] {
            for n in [0, 1, d - 1, d, d + 1, top - 1, top]
                .into_iter()
                .filter(|&n| n <= top)
            {
                assert_eq!(super::FloorDiv::new(d).of(n), n / d, "{n} / {d}");
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
