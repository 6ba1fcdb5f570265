//! The exact quotients of the integer softmax ([`super::softmax::softmax`] and
//! [`super::softmax::softmax_any`]): each rounds a probability to its code without a division per
//! element.

/// A row's quotients `floor((2 r e + sum) / (2 sum))` ([`super::softmax::Steps`]) for
/// `r <= 2^24`, `1 <= sum`, `e <= sum` and `2 r e + sum < 2^53` (the bounds of
/// [`super::softmax::softmax_any`]), in operations that vectorize: `n = 2 r e + sum` is exact in
/// f64, so `p = fl(n * fl(1 / d))` is within `(r + 1) 2^-52 < 1/2` of `n / d` and its truncation
/// `q0` is the quotient or one of its neighbours; the remainder `n - q0 d` (exact in wrapping u64:
/// its true value is below `2 d < 2^55` in magnitude) says which, and one comparison each way
/// corrects it. The same integers as [`FloorDiv`]. (Within these bounds only the upward correction
/// acts, where `n / d` is an integer and `p` rounds below it: `n / d` just below an integer `k` is
/// at least `1 / d >= (2 k - 1) / 2^46` from it, since `r e <= 2^44`, and `p`'s error is below
/// `k 2^-51`. The downward one is kept so that the rule does not rest on that argument.)
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

/// `floor(n / d)` for `n < 2^53` and `2 <= d <= 2^53` (the bounds of
/// [`super::softmax::softmax_any`]: `n = 2 r e + sum`, `d = 2 sum`) by one multiplication and a
/// shift (Granlund and Montgomery, "Division by invariant integers using multiplication", theorem
/// 4.2): with `l >= log2 d` and `m = ceil(2^(53 + l) / d)`,
/// `m d - 2^(53 + l) < d <= 2^l`, so `floor(n m / 2^(53 + l)) = floor(n / d)` for every `n < 2^53`.
/// Here `l = max(ceil(log2 d), 11)`: the shift is 64 or more, so the quotient is the high half of
/// the 128-bit product shifted, and `m` fits 64 bits (`ceil(2^64 / d) <= 2^63` for `d >= 2`, else
/// below 2^54). One division per row, none per element.
pub(super) struct FloorDiv {
    m: u64,
    s: u32,
}

impl FloorDiv {
    pub(super) fn new(d: u64) -> Self {
        let d = d.clamp(2, 1 << 53);
        let l = (64 - (d - 1).leading_zeros()).max(11);
        FloorDiv {
            m: (1u128 << (53 + l)).div_ceil(d as u128) as u64,
            s: l - 11,
        }
    }
    #[inline(always)]
    pub(super) fn of(&self, n: u64) -> u64 {
        (((n as u128 * self.m as u128) >> 64) as u64) >> self.s
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
