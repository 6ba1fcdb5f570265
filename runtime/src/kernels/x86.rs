//! x86-64 AVX2 tiles of the product engine ([`super::gemm`]).
//!
//! A tile is 8 rows (two weight blocks) x 6 pixels. Per block of 4 depth values: the two weight
//! blocks (4 rows x 4 depth each, as 16 i16) are loaded, each pixel's 4 staged i16 values are
//! broadcast (`vpbroadcastq`), and `vpmaddwd` multiplies and adds pairs exactly into 8 i32 lanes
//! (row 0 depth 0-1, row 0 depth 2-3, row 1 ..., row 3 depth 2-3) that `vpaddd` accumulates: 12
//! accumulators, 16 multiply-accumulates per `vpmaddwd`. At the end the lane pairs are added
//! (`vphaddd`) into 8 row sums per pixel.
//!
//! The int8 weights are sign-extended to i16 once per row group and chunk of pixels (up to
//! [`SEG`] blocks at a time, into a buffer on the stack), not in every tile, and every tile of the
//! chunk runs the same span of blocks with its accumulators in registers. For int16 activations
//! the spans are [`WIDEN_EVERY`] blocks, and the accumulators are widened between them (before,
//! the widening inside the block loop spilled all twelve accumulators to the stack: 30 GMAC/s on
//! `conv3x3 128->128 32x32` W8A16, 56 now; `cargo bench -p dmq-runtime --features std --bench
//! product -- --summary`). For int8, llvm-mca (`-mcpu=znver3`) puts the block loop at 9.05 cycles
//! without the two `vpmovsxbw` against 10.4 with them; on the Zen 3 here the measured speed did
//! not change (it is bound elsewhere, see the bench's summary).
//!
//! Int8 activations accumulate in wrapping i32, like the specification (wrapping addition is
//! associative, so the order does not matter). Int16 activations could overflow i32 lanes, so each
//! lane is sign-extended and added into an exact i64 lane after every [`WIDEN_EVERY`] blocks.
use super::gemm::{finish_sums, fits_i32, Finish, Pixels, Product, Tile, BLOCK};
use super::reference::Code;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Pixels per tile.
pub(super) const NR: usize = 6;
/// Blocks a lane accumulates for int16 activations before it is widened: a lane adds two
/// products of at most 2^15 * 2^7 per block, and 255 * 2^23 < 2^31.
pub(super) const WIDEN_EVERY: usize = 255;
/// Output pixels per chunk of [`product_rows`]: a chunk's staged activations stay in cache while
/// every row group of the weights passes over them.
const CHUNK: usize = 16 * NR;
/// Tiles per chunk.
const TILES: usize = CHUNK / NR;
/// Weight blocks sign-extended at a time (two row blocks of 16 i16 each: 16 KiB).
const SEG: usize = 256;

/// Accumulators of one tile: `[weight block][pixel]`.
pub(super) type Acc = [[__m256i; NR]; 2];
/// Exact sums of one tile for int16 activations: the accumulators' lanes as i64,
/// `[weight block][pixel][lanes 0-3, lanes 4-7]`.
pub(super) type Wide = [[[__m256i; 2]; NR]; 2];

/// The x86 tiers' tiles for rows `r0..r1` of `prod`.
///
/// # Safety
/// The CPU must have `tier`'s features.
pub unsafe fn run_rows<T: super::reference::Code>(
    tier: super::Tier,
    prod: &Product<'_, T>,
    rows: (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    // SAFETY: the caller's
    unsafe {
        match tier {
            super::Tier::Avx512Vnni => super::x86_avx512::product_rows(prod, rows, finish, out),
            super::Tier::AvxVnni => super::x86_vnni::product_rows(prod, rows, finish, out),
            _ => product_rows(prod, rows, finish, out, Madd::Avx2),
        }
    }
}

/// Rows `r0..r1` of `prod` (both multiples of 4) over every pixel. (Compiled for AVX2 as a whole,
/// so the sink's code inlined here, writing codes, is too.) `madd` picks the block loop's
/// instruction ([`Madd`]).
///
/// # Safety
/// The CPU must have AVX2 and `madd`'s features.
#[target_feature(enable = "avx2")]
pub unsafe fn product_rows<T: Code>(
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
    madd: Madd,
) {
    // the stage of the AVX2 tier holds i16 values (see `super::stage`)
    let stage: &[i16] = match bytemuck::try_cast_slice(prod.stage) {
        Ok(s) if core::mem::size_of::<T>() == 2 => s,
        _ => return super::gemm::scalar_fallback(prod, (r0, r1), finish, out),
    };
    let col = super::gemm::col_max(finish);
    let px = &prod.px;
    let k4 = px.k4();
    let nq = k4 / BLOCK;
    let mut t = Tile::new();
    // 34 KiB of buffers, left uninitialised (zeroing them cost as much as a small op): every
    // element is written before it is read
    let mut wbuf = [MaybeUninit::<i16>::uninit(); SEG * 32];
    let mut acc = [MaybeUninit::<Acc>::uninit(); TILES];
    let mut total = [MaybeUninit::<Wide>::uninit(); TILES];
    let mut bases = [[0usize; NR]; TILES];
    for c0 in (0..px.count).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(px.count);
        let n = (c1 - c0).div_ceil(NR);
        for (i, b) in bases.iter_mut().enumerate().take(n) {
            *b = px.bases(c0 + i * NR);
        }
        let mut r = r0;
        while r < r1 {
            let two = r + 2 * BLOCK <= r1;
            let w0 = &prod.w[(r / BLOCK) * BLOCK * k4..];
            let w1 = if two {
                &prod.w[(r / BLOCK + 1) * BLOCK * k4..]
            } else {
                w0
            };
            // the epilogue's constants of these 8 rows, as vectors
            let consts = match finish {
                // SAFETY: AVX2 was detected for this tier
                Finish::Codes(e) => Some(unsafe { Consts::new(e, r) }),
                _ => None,
            };
            (t.r0, t.rows) = (r, if two { 2 * BLOCK } else { BLOCK });
            // int16 activations whose sums provably fit i32 here run the int8 path
            let wide = prod.exact
                && !(consts.is_some()
                    && fits_i32(
                        prod.wsum,
                        col,
                        &w0[..BLOCK * k4],
                        &w1[..BLOCK * k4],
                        finish,
                        r,
                    ));
            if nq == 0 {
                // no span runs (otherwise the first span of a tile writes its accumulators)
                for a in acc.iter_mut().take(n) {
                    a.write([[_mm256_setzero_si256(); NR]; 2]);
                }
            }
            if wide {
                for s in total.iter_mut().take(n) {
                    s.write([[[_mm256_setzero_si256(); 2]; NR]; 2]);
                }
            }
            let seg = if wide { WIDEN_EVERY } else { SEG };
            // blocks per kernel row (see `span`)
            let row = px.kw * px.c4 / BLOCK;
            for qa in (0..nq).step_by(seg) {
                let qb = (qa + seg).min(nq);
                // kernel row and block within it of `qa`: once per span, not per tile
                let at = (qa / row, qa % row);
                // SAFETY: AVX2 was detected; blocks `qa..qb` of both row blocks are inside the
                // weights (`Product::check` bounds their length) and `wbuf` holds `SEG` blocks
                unsafe { extend(w0, w1, (qa, qb), wbuf.as_mut_ptr() as *mut i16) };
                for i in 0..n {
                    // SAFETY: AVX2 was detected; every read is inside `stage` (`Product::check`
                    // bounds the pixels' extent) and the blocks `extend` just wrote; `acc[i]` is
                    // read only after the span from block 0 wrote it
                    unsafe {
                        let (w, a) = (wbuf.as_ptr() as *const i16, acc[i].as_mut_ptr());
                        let (base, ks) = (&bases[i], (qa, qb, at));
                        match madd {
                            Madd::Avx2 => span(w, stage, base, px, ks, a),
                            Madd::Vex => span_vex(w, stage, base, px, ks, a),
                            Madd::Evex => span_evex(w, stage, base, px, ks, a),
                        }
                    };
                    if wide {
                        // SAFETY: `acc[i]` was just written by `span`, `total[..n]` above for this
                        // row group; register arithmetic and local stores
                        unsafe { widen(acc[i].assume_init_mut(), total[i].assume_init_mut()) };
                    }
                }
            }
            let done = (&acc[..n], wide.then_some(&total[..n]));
            // SAFETY: AVX2 was detected for this tier; `acc[..n]` (and `total[..n]` when wide)
            // were written for this row group
            unsafe { emit(done, (c0, px.count), consts.as_ref(), finish, &mut t, out) };
            r += if two { 2 * BLOCK } else { BLOCK };
        }
    }
}

/// Finishes and hands over the tiles of a chunk (pixels from `c0` of `count`) for the row group
/// `t.r0..`: tile `i` from `acc[i]`, or for int16 activations from `wide[i]`.
///
/// # Safety
/// AVX2; `acc` (and `wide`) initialised.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn emit(
    (acc, wide): (&[MaybeUninit<Acc>], Option<&[MaybeUninit<Wide>]>),
    (c0, count): (usize, usize),
    consts: Option<&Consts>,
    finish: Finish<'_>,
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    if let (Some(k), Finish::Codes(e), None) = (consts, finish, wide) {
        if e.lo >= -128 && e.hi <= 127 {
            // int8 codes of wrapped sums: one packed tile for the chunk
            // SAFETY: the caller's; `acc.len() * NR <= CHUNK`, a multiple of 8 within a
            // packed tile
            unsafe { super::x86_epi::emit_packed::<CHUNK>(acc, k, e, (c0, count), t, out) };
            return;
        }
    }
    for (i, a) in acc.iter().enumerate() {
        let p0 = c0 + i * NR;
        (t.p0, t.cols) = (p0, NR.min(count - p0));
        // SAFETY: the caller's
        unsafe {
            let sums = wide.map(|w| w[i].assume_init_ref());
            finish_tile(a.assume_init_ref(), sums, consts, finish, t)
        };
        let rows = t.rows;
        out(t);
        t.rows = rows;
    }
}

/// Sign-extends blocks `qa..qb` of the two row blocks into `wbuf`: block `q`'s 16 i16 of `w0`
/// at `32 * (q - qa)`, those of `w1` after them.
///
/// # Safety
/// AVX2; `w0` and `w1` hold `16 * qb` bytes, `qb - qa <= SEG` and `wbuf` has room for `SEG`
/// blocks.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn extend(w0: &[i8], w1: &[i8], (qa, qb): (usize, usize), d: *mut i16) {
    for q in qa..qb {
        // SAFETY: the caller's bounds
        unsafe {
            let a =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(w0.as_ptr().add(16 * q) as *const __m128i));
            let b =
                _mm256_cvtepi8_epi16(_mm_loadu_si128(w1.as_ptr().add(16 * q) as *const __m128i));
            _mm256_storeu_si256(d.add(32 * (q - qa)) as *mut __m256i, a);
            _mm256_storeu_si256(d.add(32 * (q - qa) + 16) as *mut __m256i, b);
        }
    }
}

/// Stamps out the tile's block loop for a target feature set, `$madd(acc, w, x)` adding the
/// pairwise products of `w` and `x` into `acc`.
macro_rules! span_fn {
    ($name:ident, $feat:literal, $madd:ident) => {
        /// Blocks `qa..qb` of the depth of one tile (`qa` at block `b0` of kernel row `ky`), added into its
        /// accumulators (which it overwrites when `qa == 0`). `w` holds those blocks
        /// extended ([`extend`]). The taps of a kernel row are adjacent in the stage (tap `(ky, kx)` is at
        /// `ky * tap_row + kx * c4`), so a row's `kw * c4 / 4` blocks run as one loop: block `q` is at
        /// `(q / row) * tap_row + 4 * (q % row)`.
        ///
        /// # Safety
        /// `$feat`; every staged value read (pixel bases plus the taps' offsets) is inside `stage`; `w` holds
        /// blocks `qa..qb` (written by [`extend`]); `acc` is valid for writes, and initialised when
        /// `qa > 0`.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn $name(
            w: *const i16,
            stage: &[i16],
            bases: &[usize; NR],
            px: &Pixels,
            (qa, qb, (mut ky, mut b0)): (usize, usize, (usize, usize)),
            acc: *mut Acc,
        ) {
            let row = px.kw * px.c4 / BLOCK;
            if qa >= qb || row == 0 {
                return;
            }
            // the first span of a tile starts from zero (no loads of the zeroed accumulators)
            let mut a = if qa == 0 {
                [[_mm256_setzero_si256(); NR]; 2]
            } else {
                // SAFETY: the caller's: written by the span from block 0
                unsafe { acc.read() }
            };
            let (wp, sp) = (w, stage.as_ptr());
            let mut q = qa;
            while q < qb {
                let b1 = row.min(b0 + (qb - q));
                let tap = ky * px.tap_row;
                // SAFETY: the caller's bounds; block `q + (b - b0)` of `w` is extended
                unsafe {
                    let wq = wp.add(32 * (q - qa));
                    let at: [*const i16; NR] = core::array::from_fn(|j| sp.add(bases[j] + tap));
                    for b in 0..b1 - b0 {
                        let wa = _mm256_loadu_si256(wq.add(32 * b) as *const __m256i);
                        let wb = _mm256_loadu_si256(wq.add(32 * b + 16) as *const __m256i);
                        for j in 0..NR {
                            let x = _mm256_set1_epi64x(core::ptr::read_unaligned(
                                at[j].add((b0 + b) * BLOCK) as *const i64,
                            ));
                            a[0][j] = $madd(a[0][j], wa, x);
                            a[1][j] = $madd(a[1][j], wb, x);
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

/// `vpmaddwd` + `vpaddd`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn madd_add(a: __m256i, w: __m256i, x: __m256i) -> __m256i {
    _mm256_add_epi32(a, _mm256_madd_epi16(w, x))
}

pub(super) use super::x86_epi::Consts;
pub use super::x86_vnni::Madd;
use super::x86_vnni::{dpwssd, dpwssd_evex};

span_fn!(span, "avx2", madd_add);
span_fn!(span_vex, "avx2,avxvnni", dpwssd);
span_fn!(span_evex, "avx2,avx512f,avx512vl,avx512vnni", dpwssd_evex);

/// Finishes one tile into codes or raw sums in `t`: from the wrapping i32 accumulators, or for
/// int16 activations from their exact sums `wide` (see [`widen`]).
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn finish_tile(
    acc: &Acc,
    wide: Option<&Wide>,
    consts: Option<&Consts>,
    finish: Finish<'_>,
    t: &mut Tile,
) {
    let p0 = t.p0;
    // SAFETY: register arithmetic and stores into local arrays and the tile
    unsafe {
        if let Some(wide_sums) = wide {
            // the row sums: lanes 2k and 2k + 1 of a half hold row k of it
            let mut total = [[0i64; NR]; 2 * BLOCK];
            for (b, block) in wide_sums.iter().enumerate() {
                for (j, halves) in block.iter().enumerate() {
                    for (h, v) in halves.iter().enumerate() {
                        let mut l = [0i64; 4];
                        _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, *v);
                        total[4 * b + 2 * h][j] = l[0] + l[1];
                        total[4 * b + 2 * h + 1][j] = l[2] + l[3];
                    }
                }
            }
            let total = &total;
            match (consts, finish) {
                (Some(c), Finish::Codes(e)) if c.narrow(e, total, p0) => {
                    // every sum and sum + bias + col fits i32: the wrapping rule is exact
                    let v: [__m256i; NR] = core::array::from_fn(|j| {
                        let a: [i32; 8] = core::array::from_fn(|i| total[i][j] as i32);
                        _mm256_loadu_si256(a.as_ptr() as *const __m256i)
                    });
                    c.codes(e, &v, p0, t)
                }
                _ => {
                    for i in 0..t.rows {
                        t.sums[i][..NR].copy_from_slice(&total[i]);
                    }
                    finish_sums(t, finish, true);
                }
            }
        } else {
            let v: [__m256i; NR] = core::array::from_fn(|j| row_sums(acc[0][j], acc[1][j]));
            match (consts, finish) {
                (Some(c), Finish::Codes(e)) => c.codes(e, &v, p0, t),
                _ => {
                    for (j, vj) in v.iter().enumerate() {
                        let mut s = [0i32; 8];
                        _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, *vj);
                        for i in 0..t.rows {
                            t.sums[i][j] = s[i] as i64;
                        }
                    }
                    finish_sums(t, finish, false);
                }
            }
        }
    }
}

/// Row sums of 8 rows (lane pairs added) of the accumulators of one pixel.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn row_sums(a: __m256i, b: __m256i) -> __m256i {
    // [r0 r1 r4 r5 | r2 r3 r6 r7] -> [r0 r1 r2 r3 | r4 r5 r6 r7]
    _mm256_permute4x64_epi64(_mm256_hadd_epi32(a, b), 0b11_01_10_00)
}

/// Adds the accumulators' lanes, sign-extended, into the exact i64 lanes and clears them.
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn widen(acc: &mut Acc, total: &mut Wide) {
    for (a, t) in acc.iter_mut().zip(total.iter_mut()) {
        for (v, t) in a.iter_mut().zip(t.iter_mut()) {
            let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(*v));
            let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(*v, 1));
            t[0] = _mm256_add_epi64(t[0], lo);
            t[1] = _mm256_add_epi64(t[1], hi);
            *v = _mm256_setzero_si256();
        }
    }
}

/// Transposes 8 channels x 8 pixels of codes into 8 pixels x 8 channels of i16:
/// `dst[p * px_stride + c] = src[c * ch_stride + p]` (int8 codes sign-extended).
///
/// # Safety
/// The CPU must have AVX2; the 64 reads and 64 writes must be in bounds.
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn transpose8x8<T: Code>(
    src: *const T,
    ch_stride: usize,
    dst: *mut i16,
    px_stride: usize,
) {
    // SAFETY: the caller guarantees the bounds
    unsafe {
        let r: [__m128i; 8] = core::array::from_fn(|c| {
            let p = src.add(c * ch_stride);
            if core::mem::size_of::<T>() == 1 {
                _mm_cvtepi8_epi16(_mm_loadl_epi64(p as *const __m128i))
            } else {
                _mm_loadu_si128(p as *const __m128i)
            }
        });
        for (p, v) in transpose_h(r).iter().enumerate() {
            _mm_storeu_si128(dst.add(p * px_stride) as *mut __m128i, *v);
        }
    }
}

/// Transposes 8 channels x 8 pixels of int8 codes into 8 pixels x 8 channels:
/// `dst[p * px_stride + c] = src[c * ch_stride + p]` (SSE2 byte, word and dword unpacks), each
/// code flipped (`x ^ 0x80`) where `flip`.
///
/// # Safety
/// The 64 reads and 64 writes must be in bounds.
#[inline]
pub unsafe fn transpose8x8_b(
    src: *const i8,
    ch_stride: usize,
    dst: *mut i8,
    px_stride: usize,
    flip: bool,
) {
    // SAFETY: the caller guarantees the bounds; SSE2 is baseline on x86-64
    unsafe {
        let f = _mm_set1_epi8(if flip { -128 } else { 0 });
        let r: [__m128i; 8] = core::array::from_fn(|c| {
            _mm_xor_si128(_mm_loadl_epi64(src.add(c * ch_stride) as *const __m128i), f)
        });
        // channel pairs interleaved per pixel, then quads, then all 8 (two pixels per vector)
        let t: [__m128i; 4] = core::array::from_fn(|i| _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]));
        for (i, x) in pairs_to_rows(t).iter().enumerate() {
            _mm_storel_epi64(dst.add(2 * i * px_stride) as *mut __m128i, *x);
            _mm_storel_epi64(
                dst.add((2 * i + 1) * px_stride) as *mut __m128i,
                _mm_unpackhi_epi64(*x, *x),
            );
        }
    }
}

/// 8 rows of byte pairs (`t[m]`: word `i` holds row `i`'s pixels `2m` and `2m + 1`) to rows of 8
/// pixels, two rows per register (row `2k` in the low 8 bytes of register `k`, row `2k + 1` in
/// the high): word, then dword unpacks. SSE2.
#[inline(always)]
pub(super) fn pairs_to_rows(t: [__m128i; 4]) -> [__m128i; 4] {
    // SAFETY: SSE2 is baseline on x86-64
    unsafe {
        let u = [
            _mm_unpacklo_epi16(t[0], t[1]),
            _mm_unpackhi_epi16(t[0], t[1]),
            _mm_unpacklo_epi16(t[2], t[3]),
            _mm_unpackhi_epi16(t[2], t[3]),
        ];
        [
            _mm_unpacklo_epi32(u[0], u[2]),
            _mm_unpackhi_epi32(u[0], u[2]),
            _mm_unpacklo_epi32(u[1], u[3]),
            _mm_unpackhi_epi32(u[1], u[3]),
        ]
    }
}

/// The transpose of 8 vectors of 8 i16 (`out[p][c] = r[c][p]`): SSE2 unpacks.
#[inline(always)]
fn transpose_h(r: [__m128i; 8]) -> [__m128i; 8] {
    // SAFETY: SSE2 is baseline on x86-64
    unsafe {
        let t: [__m128i; 8] = core::array::from_fn(|i| {
            let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
            if i % 2 == 0 {
                _mm_unpacklo_epi16(a, b)
            } else {
                _mm_unpackhi_epi16(a, b)
            }
        });
        let u: [__m128i; 8] = core::array::from_fn(|i| {
            let (h, q) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + q / 2], t[4 * h + 2 + q / 2]);
            if q % 2 == 0 {
                _mm_unpacklo_epi32(a, b)
            } else {
                _mm_unpackhi_epi32(a, b)
            }
        });
        core::array::from_fn(|p| {
            let (a, b) = (u[p / 2], u[4 + p / 2]);
            if p % 2 == 0 {
                _mm_unpacklo_epi64(a, b)
            } else {
                _mm_unpackhi_epi64(a, b)
            }
        })
    }
}

/// Writes a tile of 8 rows and `cols` pixels (`codes[pixel][row]`, saturated to the output's
/// `bytes`-byte code type like `Code::sat`): row `i`'s `cols` pixels at `dst + i * rs` when
/// `ps == 1`, else (`rs == 1`) pixel `j`'s 8 rows at `dst + j * ps` — in the order `Tile::write`
/// writes them. SSE2 saturating packs.
///
/// # Safety
/// Those elements (of `bytes` = 1 or 2 bytes) must be writable.
#[inline(always)]
pub(crate) unsafe fn write_tile8(
    codes: &[[i32; 8]; 8],
    cols: usize,
    dst: *mut u8,
    rs: usize,
    ps: usize,
    bytes: usize,
) {
    // SAFETY: the caller's; SSE2 is baseline on x86-64; `codes` rows hold 8 i32
    unsafe {
        let px: [__m128i; 8] = core::array::from_fn(|j| {
            let c = codes[j].as_ptr() as *const __m128i;
            _mm_packs_epi32(_mm_loadu_si128(c), _mm_loadu_si128(c.add(1)))
        });
        if ps != 1 {
            for (j, v) in px.iter().enumerate().take(cols) {
                if bytes == 2 {
                    _mm_storeu_si128(dst.add(2 * j * ps) as *mut __m128i, *v);
                } else {
                    _mm_storel_epi64(dst.add(j * ps) as *mut __m128i, _mm_packs_epi16(*v, *v));
                }
            }
            return;
        }
        for (i, v) in transpose_h(px).iter().enumerate() {
            let d = dst.add(i * rs * bytes);
            // the tiles' full widths (6 pixels: AVX2 and AVX-VNNI; 8: AVX-512) stored straight
            // from the register
            match (bytes, cols) {
                (1, 8) => _mm_storel_epi64(d as *mut __m128i, _mm_packs_epi16(*v, *v)),
                (2, 8) => _mm_storeu_si128(d as *mut __m128i, *v),
                (1, 6) => {
                    let b = _mm_packs_epi16(*v, *v);
                    (d as *mut i32).write_unaligned(_mm_cvtsi128_si32(b));
                    (d.add(4) as *mut u16).write_unaligned(_mm_extract_epi16::<2>(b) as u16);
                }
                (2, 6) => {
                    _mm_storel_epi64(d as *mut __m128i, *v);
                    (d.add(8) as *mut i32)
                        .write_unaligned(_mm_cvtsi128_si32(_mm_srli_si128::<8>(*v)));
                }
                _ => {
                    let mut tmp = [0u8; 16];
                    if bytes == 2 {
                        _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, *v);
                    } else {
                        _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, _mm_packs_epi16(*v, *v));
                    }
                    core::ptr::copy_nonoverlapping(tmp.as_ptr(), d, cols * bytes);
                }
            }
        }
    }
}

/// 4-bit weights to int8 on whole runs of 32 bytes (64 codes), as
/// [`super::gemm::unpack4_scalar`]: each nibble `v` becomes `(v ^ 8) - 8`, and the low and high
/// nibbles are interleaved (in-lane byte unpacks, then the two lanes' halves swapped into order).
/// Returns how many bytes of `src` it did.
///
/// # Safety
/// The CPU must support AVX2; `dst` must hold `2 * src.len()` codes.
#[target_feature(enable = "avx2")]
pub unsafe fn unpack4(src: &[u8], dst: &mut [i8]) -> usize {
    let n = src.len().min(dst.len() / 2) / 32 * 32;
    let (low, eight) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(8));
    for i in (0..n).step_by(32) {
        // SAFETY: bytes i..i + 32 of `src` and codes 2i..2i + 64 of `dst` are within `n`
        let v = unsafe { _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i) };
        let lo = _mm256_xor_si256(_mm256_and_si256(v, low), eight);
        let hi = _mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(v), low), eight);
        let (lo, hi) = (_mm256_sub_epi8(lo, eight), _mm256_sub_epi8(hi, eight));
        // lane 0: bytes 0-7 | 16-23 interleaved; lane 1: bytes 8-15 | 24-31
        let (a, b) = (_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi));
        // SAFETY: as above
        unsafe {
            let d = dst.as_mut_ptr().add(2 * i) as *mut __m256i;
            _mm256_storeu_si256(d, _mm256_permute2x128_si256::<0x20>(a, b));
            _mm256_storeu_si256(d.add(1), _mm256_permute2x128_si256::<0x31>(a, b));
        }
    }
    n
}
