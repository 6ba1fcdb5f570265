//! x86-64 AVX-VNNI tiles of the product engine ([`super::gemm`]) for int8 activations (the
//! `AvxVnni` tier; int16 activations run the AVX2 tiles of [`super::x86`] on that tier).
//!
//! (There `vpdpwssd` fuses the AVX2 tile's `vpmaddwd` and `vpaddd`.)
//!
//! `VPDPBUSD` multiplies 4 unsigned bytes by 4 signed bytes and adds the 4 products into an i32
//! lane, wrapping, in one instruction: 32 multiply-accumulates per 256-bit register, where the AVX2
//! tile needs a `vpmaddwd` and a `vpaddd` for 16. The activations are signed, so this tier stages
//! them flipped, `x ^ 0x80` = `x + 128` as an unsigned byte ([`super::stage::flips`]), and each
//! sum gets `128 * sum(w)` of its row subtracted once at the end; wrapping i32 addition is a ring,
//! so the result is the specification's wrapped sum bit for bit.
//!
//! A tile is up to 16 rows (two registers of 8 rows: two weight blocks of 4 rows x 4 depth each,
//! side by side, so lane `i` is row `i`'s 4 depth values) x 6 pixels, 12 accumulators. The weights
//! of a row group are interleaved into that order once per chunk of pixels (with the correction
//! `128 * sum(w)` computed by the same instruction), not per tile.
use super::gemm::{finish_sums, Finish, Pixels, Product, Tile, BLOCK};
use super::x86::Consts;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Pixels per tile.
const NR: usize = 6;
/// Output pixels per chunk: a chunk's staged activations stay in cache while every row group of
/// the weights passes over them.
const CHUNK: usize = 16 * NR;
/// Tiles per chunk.
const TILES: usize = CHUNK / NR;
/// Depth blocks interleaved at a time (two registers of 32 bytes each: 32 KiB).
const SEG: usize = 512;
/// Depth below which every exact int8 sum fits i32 (`|x w| <= 2^14`, so `k4 * 2^14 < 2^31`).
pub const EXACT_DEPTH: usize = 1 << 17;

/// Accumulators of one tile: `[row register][pixel]`.
type Acc = [[__m256i; NR]; 2];

/// Refuses what this tier cannot compute exactly: exact sums of int8 activations (staged flipped)
/// at a depth of [`EXACT_DEPTH`] or more. No op asks for those (int8 activations wrap).
pub fn check<T: super::reference::Code>(
    tier: super::Tier,
    prod: &Product<'_, T>,
) -> crate::Result<()> {
    let flipped = super::stage::flips(tier, core::mem::size_of::<T>());
    if flipped && prod.exact && prod.px.k4() >= EXACT_DEPTH {
        return Err(crate::Error::Unsupported(
            "exact int8 sums deeper than 2^17 on the AVX-VNNI tier",
        ));
    }
    Ok(())
}

/// Rows `r0..r1` of `prod` (multiples of 4) over every pixel, for int8 activations staged flipped
/// (int16 activations go to the AVX2 tiles, with `vpdpwssd`). Exact sums need a depth below
/// [`EXACT_DEPTH`] ([`super::gemm::run_rows`] refuses deeper ones).
///
/// # Safety
/// The CPU must have AVX2 and AVX-VNNI.
#[target_feature(enable = "avx2,avxvnni")]
pub unsafe fn product_rows<T: super::reference::Code>(
    prod: &Product<'_, T>,
    rows: (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    // SAFETY: the caller's
    unsafe { rows_in::<T, false>(prod, rows, finish, out) }
}

/// [`product_rows`] with the 256-bit `VPDPBUSD` and `VPDPWSSD` in their AVX-512 VNNI (EVEX)
/// encoding: the `Avx512Vnni` tier's rows past its 512-bit tiles, on a CPU that may lack AVX-VNNI
/// ([`super::x86::Madd`]).
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub unsafe fn product_rows_evex<T: super::reference::Code>(
    prod: &Product<'_, T>,
    rows: (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    // SAFETY: the caller's
    unsafe { rows_in::<T, true>(prod, rows, finish, out) }
}

/// The body of [`product_rows`] (`EVEX` false) and [`product_rows_evex`]: only the weights'
/// interleave and the tiles' block loop differ, and each is its own function with its features.
///
/// # Safety
/// The features of the encoding `EVEX` picks (see the two callers).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rows_in<T: super::reference::Code, const EVEX: bool>(
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    let stage: &[i8] = match bytemuck::try_cast_slice(prod.stage) {
        Ok(s) if T::MIN == -128 && T::MAX == 127 => s,
        _ => {
            let madd = if EVEX { Madd::Evex } else { Madd::Vex };
            // SAFETY: AVX2 and `madd`'s features are part of this tier
            return unsafe { super::x86::product_rows(prod, (r0, r1), finish, out, madd) };
        }
    };
    let px = &prod.px;
    let k4 = px.k4();
    let nq = k4 / BLOCK;
    // blocks per kernel row (see `span`)
    let row = px.kw * px.c4 / BLOCK;
    let mut t = Tile::new();
    // 32 KiB of interleaved weights and the accumulators, left uninitialised: every element is
    // written before it is read
    let mut wbuf = [MaybeUninit::<u8>::uninit(); SEG * 64];
    let mut acc = [MaybeUninit::<Acc>::uninit(); TILES];
    let mut bases = [[0usize; NR]; TILES];
    for c0 in (0..px.count).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(px.count);
        let n = (c1 - c0).div_ceil(NR);
        for (i, b) in bases.iter_mut().enumerate().take(n) {
            *b = px.bases(c0 + i * NR);
        }
        let mut r = r0;
        while r < r1 {
            // rows of this group: 16 (two registers), 8, or 4 (its block twice)
            let g = if r + 16 <= r1 {
                16
            } else if r + 8 <= r1 {
                8
            } else {
                4
            };
            let blocks: [&[i8]; 4] = core::array::from_fn(|i| {
                let b = if i < g / BLOCK {
                    r / BLOCK + i
                } else {
                    r / BLOCK
                };
                &prod.w[b * BLOCK * k4..]
            });
            let mut corr = [_mm256_setzero_si256(); 2];
            if nq == 0 {
                for a in acc.iter_mut().take(n) {
                    a.write([[_mm256_setzero_si256(); NR]; 2]);
                }
            }
            for qa in (0..nq).step_by(SEG) {
                let qb = (qa + SEG).min(nq);
                let at = (qa / row, qa % row);
                let wp = wbuf.as_mut_ptr() as *mut u8;
                // SAFETY: the CPU has this tier's features; blocks `qa..qb` of the four row blocks
                // are inside the weights (`Product::check` bounds their length) and `wbuf` holds
                // `SEG` blocks of two registers
                unsafe { interleave_in::<EVEX>(g == 16, &blocks, (qa, qb), wp, &mut corr) };
                for i in 0..n {
                    let w = wbuf.as_ptr() as *const u8;
                    let a = acc[i].as_mut_ptr();
                    // SAFETY: the CPU has this tier's features; every read is inside `stage`
                    // (`Product::check` bounds the pixels' extent) and the blocks just
                    // interleaved; `acc[i]` is read only after the span from block 0 wrote it
                    unsafe { span_in::<EVEX>(g == 16, w, stage, &bases[i], px, (qa, qb, at), a) };
                }
            }
            for (v, &cv) in corr.iter().enumerate().take(g.div_ceil(2 * BLOCK)) {
                (t.r0, t.rows) = (r + 8 * v, g.min(8));
                // SAFETY: the CPU has AVX2; the accumulators of the chunk's tiles were written for
                // this row group
                let consts = match finish {
                    Finish::Codes(e) if !prod.exact => Some(unsafe { Consts::new(e, t.r0) }),
                    _ => None,
                };
                for (i, a) in acc.iter().enumerate().take(n) {
                    let p0 = c0 + i * NR;
                    (t.p0, t.cols) = (p0, NR.min(px.count - p0));
                    // SAFETY: as above
                    unsafe {
                        let sums: [__m256i; NR] = core::array::from_fn(|j| {
                            _mm256_sub_epi32(a.assume_init_ref()[v][j], cv)
                        });
                        match (&consts, finish) {
                            (Some(c), Finish::Codes(e)) => c.codes(e, &sums, p0, &mut t),
                            _ => {
                                for (j, s) in sums.iter().enumerate() {
                                    let mut l = [0i32; 8];
                                    _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, *s);
                                    for (i, &x) in l.iter().enumerate().take(t.rows) {
                                        t.sums[i][j] = x as i64;
                                    }
                                }
                                finish_sums(&mut t, finish, prod.exact);
                            }
                        }
                    }
                    let rows = t.rows;
                    out(&mut t);
                    t.rows = rows;
                }
            }
            r += g;
        }
    }
}

/// `vpdpwssd` (AVX-VNNI): the same pairwise products and wrapping sums in one instruction.
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
pub(super) unsafe fn dpwssd(a: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpwssd_avx_epi32(a, w, x)
}

/// The same `vpdpwssd` on 256-bit registers in its AVX-512 VNNI (EVEX) encoding.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
pub(super) unsafe fn dpwssd_evex(a: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_dpwssd_epi32(a, w, x)
}

/// Which instruction adds a tile's pairwise int16 products: AVX2's `vpmaddwd` + `vpaddd`, or one
/// `vpdpwssd` in its AVX-VNNI (VEX) or its AVX-512 VNNI (EVEX) encoding. The same wrapping sums
/// either way. A CPU can have AVX-512 VNNI without AVX-VNNI (AMD Zen 4; Intel's Cascade Lake and
/// Ice Lake servers), where the VEX form faults, so the `Avx512Vnni` tier uses the EVEX form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Madd {
    Avx2,
    Vex,
    Evex,
}

/// `interleave::<2>` (`two`) or `::<1>` in the encoding `EVEX` picks.
///
/// # Safety
/// That encoding's features, and `interleave`'s contract.
#[inline(always)]
unsafe fn interleave_in<const EVEX: bool>(
    two: bool,
    blocks: &[&[i8]; 4],
    qs: (usize, usize),
    d: *mut u8,
    corr: &mut [__m256i; 2],
) {
    // SAFETY: the caller's
    unsafe {
        match (two, EVEX) {
            (true, false) => vex::interleave::<2>(blocks, qs, d, corr),
            (false, false) => vex::interleave::<1>(blocks, qs, d, corr),
            (true, true) => evex::interleave::<2>(blocks, qs, d, corr),
            (false, true) => evex::interleave::<1>(blocks, qs, d, corr),
        }
    }
}

/// `span::<2>` (`two`) or `::<1>` in the encoding `EVEX` picks.
///
/// # Safety
/// That encoding's features, and `span`'s contract.
#[inline(always)]
unsafe fn span_in<const EVEX: bool>(
    two: bool,
    w: *const u8,
    stage: &[i8],
    bases: &[usize; NR],
    px: &Pixels,
    ks: (usize, usize, (usize, usize)),
    acc: *mut Acc,
) {
    // SAFETY: the caller's
    unsafe {
        match (two, EVEX) {
            (true, false) => vex::span::<2>(w, stage, bases, px, ks, acc),
            (false, false) => vex::span::<1>(w, stage, bases, px, ks, acc),
            (true, true) => evex::span::<2>(w, stage, bases, px, ks, acc),
            (false, true) => evex::span::<1>(w, stage, bases, px, ks, acc),
        }
    }
}

/// Stamps out `interleave::<V>` for the features `$feat` with `$dot` (256-bit `VPDPBUSD`):
/// depth blocks `qa..qb` of the row blocks interleaved into `d` (`V` registers of 32 bytes per
/// block: register `v` holds blocks `2v` and `2v + 1`), and `128 * sum(w)` of every row added into
/// `corr`.
///
/// The function's safety contract: the features; each of `blocks[..2 V]` holds `16 * qb` bytes,
/// `qb - qa <= SEG` and `d` has room for `SEG` blocks of two registers.
macro_rules! vnni_interleave {
    ($feat:literal, $dot:ident) => {
        /// The weights' interleave (see `x86_vnni::vnni_interleave`).
        ///
        /// # Safety
        /// See `x86_vnni::vnni_interleave`.
        #[target_feature(enable = $feat)]
        #[inline]
        pub(super) unsafe fn interleave<const V: usize>(
            blocks: &[&[i8]; 4],
            (qa, qb): (usize, usize),
            d: *mut u8,
            corr: &mut [__m256i; 2],
        ) {
            let flip = _mm256_set1_epi8(-128);
            for q in qa..qb {
                for v in 0..V {
                    // SAFETY: the caller's bounds
                    unsafe {
                        let lo =
                            _mm_loadu_si128(blocks[2 * v].as_ptr().add(16 * q) as *const __m128i);
                        let hi = _mm_loadu_si128(
                            blocks[2 * v + 1].as_ptr().add(16 * q) as *const __m128i
                        );
                        let w = _mm256_set_m128i(hi, lo);
                        corr[v] = $dot(corr[v], flip, w);
                        _mm256_storeu_si256(d.add(32 * (V * (q - qa) + v)) as *mut __m256i, w);
                    }
                }
            }
        }
    };
}

/// Stamps out a VNNI tile's block loop, `span::<V>`: blocks `qa..qb` of the depth of one tile (`qa`
/// at block `b0` of kernel row `ky`) added into its `V` registers of accumulators per pixel
/// (overwritten when `qa == 0`), from the weights `interleave` wrote (`$bytes` per register). The
/// taps of a kernel row are adjacent in the stage, so a row's blocks run as one loop (see
/// `super::x86`). For registers `$vec` under the features `$feat`: `$zero`, `$load`, `$set1` (a
/// broadcast block of 4 flipped codes) and `$dot(acc, x, w)` (`VPDPBUSD`). Used with the module's
/// `NR` (pixels per tile).
///
/// The function's safety contract: the features; every staged value read is inside `stage`; `w`
/// holds blocks `qa..qb`; `acc` is valid for writes, and initialised when `qa > 0`.
macro_rules! vnni_span {
    ($vis:vis, $feat:literal, $vec:ty, $bytes:literal, $zero:ident, $load:ident, $set1:ident, $dot:ident) => {
        /// The tile's block loop (see `x86_vnni::vnni_span`).
        ///
        /// # Safety
        /// See `x86_vnni::vnni_span`.
        #[target_feature(enable = $feat)]
        #[inline]
        $vis unsafe fn span<const V: usize>(
            w: *const u8,
            stage: &[i8],
            bases: &[usize; NR],
            px: &Pixels,
            (qa, qb, (mut ky, mut b0)): (usize, usize, (usize, usize)),
            acc: *mut [[$vec; NR]; 2],
        ) {
            let row = px.kw * px.c4 / BLOCK;
            if qa >= qb || row == 0 {
                return;
            }
            let mut a = if qa == 0 {
                [[$zero(); NR]; 2]
            } else {
                // SAFETY: the caller's: written by the span from block 0
                unsafe { acc.read() }
            };
            let sp = stage.as_ptr();
            let mut q = qa;
            while q < qb {
                let b1 = row.min(b0 + (qb - q));
                let tap = ky * px.tap_row;
                // SAFETY: the caller's bounds; block `q + (b - b0)` is interleaved
                unsafe {
                    let wq = w.add($bytes * V * (q - qa));
                    let at: [*const i8; NR] = core::array::from_fn(|j| sp.add(bases[j] + tap));
                    for b in 0..b1 - b0 {
                        let wv: [$vec; V] = core::array::from_fn(|v| {
                            $load(wq.add($bytes * (V * b + v)) as *const $vec)
                        });
                        for j in 0..NR {
                            let x = $set1(core::ptr::read_unaligned(
                                at[j].add((b0 + b) * BLOCK) as *const i32
                            ));
                            for v in 0..V {
                                a[v][j] = $dot(a[v][j], x, wv[v]);
                            }
                        }
                    }
                }
                q += b1 - b0;
                (ky, b0) = (ky + 1, 0);
            }
            // SAFETY: the caller's: `acc` is valid for writes
            unsafe { acc.write(a) };
        }
    };
}
pub(super) use vnni_span;

/// The tiles in AVX-VNNI's (VEX) encoding: the `AvxVnni` tier.
mod vex {
    use super::*;
    vnni_interleave!("avx2,avxvnni", _mm256_dpbusd_avx_epi32);
    vnni_span!(
        pub(super),
        "avx2,avxvnni",
        __m256i,
        32,
        _mm256_setzero_si256,
        _mm256_loadu_si256,
        _mm256_set1_epi32,
        _mm256_dpbusd_avx_epi32
    );
}

/// The same tiles in AVX-512 VNNI's (EVEX) encoding on 256-bit registers: the `Avx512Vnni` tier's
/// rows past its 512-bit tiles, on CPUs with or without AVX-VNNI.
mod evex {
    use super::*;
    vnni_interleave!("avx2,avx512f,avx512vl,avx512vnni", _mm256_dpbusd_epi32);
    vnni_span!(
        pub(super),
        "avx2,avx512f,avx512vl,avx512vnni",
        __m256i,
        32,
        _mm256_setzero_si256,
        _mm256_loadu_si256,
        _mm256_set1_epi32,
        _mm256_dpbusd_epi32
    );
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::kernels::Tier;

    #[test]
    fn exact_int8_sums_too_deep_for_i32_are_refused_not_wrapped() {
        if !Tier::AvxVnni.supported() {
            return; // nothing to check on this CPU
        }
        for (k4, exact, ok) in [
            (EXACT_DEPTH, true, false),
            (EXACT_DEPTH - 4, true, true),
            (EXACT_DEPTH, false, true),
        ] {
            let (w, st) = (std::vec![1i8; 4 * k4], std::vec![0i8; k4]);
            let prod = Product {
                w: &w,
                n: 4,
                stage: &st,
                px: Pixels::rows(1, k4, k4),
                exact,
                full_range: false,
                wsum: u64::MAX,
            };
            let r =
                super::super::gemm::run_rows(Tier::AvxVnni, &prod, (0, 4), Finish::Sums, |_| {});
            assert_eq!(r.is_ok(), ok, "depth {k4}, exact {exact}");
        }
    }
}
