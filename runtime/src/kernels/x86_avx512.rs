//! x86-64 AVX-512 VNNI tiles of the product engine ([`super::gemm`]) for int8 activations (the
//! `Avx512Vnni` tier). The same arithmetic as [`super::x86_vnni`] (flipped stage, `VPDPBUSD`,
//! `128 * sum(w)` subtracted per row) on 512-bit registers: 64 products per instruction.
//!
//! A tile is 32 rows (two registers of 16 rows: four weight blocks of 4 rows x 4 depth each, side
//! by side, so lane `i` is row `i`'s 4 depth values) x 8 pixels, 16 accumulators, finished by
//! [`super::x86_avx512_epi`] (16 rows per register, handed over as one packed tile per chunk) or,
//! where that does not apply, as 8 x 8 tiles by the 256-bit epilogue. Row groups of 16 run here; what is left of the rows (fewer than 16)
//! runs the 256-bit tiles of [`super::x86_vnni`].
//!
//! Int16 activations: the AVX2 tile's arithmetic ([`super::x86`]: int8 weights extended to i16,
//! pairs multiplied and added into i32 lanes, exact i64 sums where i32 could overflow) with
//! `VPDPWSSD` on 512-bit registers, 32 products per instruction. A tile is 16 rows (two registers of
//! 8 rows, each the AVX2 tile's two weight blocks side by side) x 6 pixels, so each register's
//! halves are the AVX2 tile's accumulators and its epilogue finishes them; rows past the last group
//! of 16 run the AVX2 tiles.
//!
//! The non-GEMM ops' AVX-512 paths are in [`super::x86_avx512_ops`].
use super::gemm::{finish_sums, Finish, Pixels, Product, Tile, BLOCK};
use super::x86::Consts;
use super::x86_avx512_epi::{emit_packed, Held};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// Pixels per tile (16 accumulators, 2 weight registers and 8 broadcasts: 12 pixels made LLVM
/// spill accumulators to the stack); also the width of the tiles handed to the sink.
pub(super) const NR: usize = 8;
/// Output pixels per chunk: a chunk's staged activations stay in cache while every row group of
/// the weights passes over them.
pub(super) const CHUNK: usize = 16 * NR;
/// Tiles per chunk.
const TILES: usize = CHUNK / NR;
/// Depth blocks interleaved at a time (two registers of 64 bytes each: 32 KiB).
const SEG: usize = 256;

/// Accumulators of one tile: `[row register][pixel]`.
pub(super) type Acc = [[__m512i; NR]; 2];
/// Accumulators of one int16 tile (`[8-row register][pixel]`) and its exact sums per 8-row half.
type Acc16 = [[__m512i; super::x86::NR]; 2];
type Wide16 = [super::x86::Wide; 2];

/// Rows `r0..r1` of `prod` (multiples of 4) over every pixel, for int8 activations staged flipped
/// ([`super::stage::flips`]; the rows past the last whole group of 16 go to the 256-bit tiles),
/// and for int16 activations ([`product_rows_i16`]).
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512BW, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn product_rows<T: super::reference::Code>(
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    let stage: &[i8] = match bytemuck::try_cast_slice(prod.stage) {
        Ok(s) if T::MIN == -128 && T::MAX == 127 => s,
        // SAFETY: the caller's features
        _ => return unsafe { product_rows_i16(prod, (r0, r1), finish, out) },
    };
    let r16 = r0 + (r1 - r0) / 16 * 16;
    let px = &prod.px;
    let k4 = px.k4();
    let nq = k4 / BLOCK;
    // blocks per kernel row (see `span`)
    let row = px.kw * px.c4 / BLOCK;
    let mut t = Tile::new();
    // 32 KiB of interleaved weights and the accumulators, left uninitialised: every element is
    // written before it is read
    let mut wbuf = [MaybeUninit::<u8>::uninit(); SEG * 128];
    let mut acc = [MaybeUninit::<Acc>::uninit(); TILES];
    let mut bases = [[0usize; NR]; TILES];
    let mut held = Held::new(r0);
    for c0 in (0..px.count).step_by(CHUNK) {
        if r16 == r0 {
            break;
        }
        let c1 = (c0 + CHUNK).min(px.count);
        let n = (c1 - c0).div_ceil(NR);
        for (i, b) in bases.iter_mut().enumerate().take(n) {
            *b = px.bases(c0 + i * NR);
        }
        let mut r = r0;
        while r < r16 {
            let g = if r + 32 <= r16 { 32 } else { 16 };
            let blocks: [&[i8]; 8] = core::array::from_fn(|i| {
                let b = r / BLOCK + if i < g / BLOCK { i } else { 0 };
                &prod.w[b * BLOCK * k4..]
            });
            let mut corr = [_mm512_setzero_si512(); 2];
            if nq == 0 {
                for a in acc.iter_mut().take(n) {
                    a.write([[_mm512_setzero_si512(); NR]; 2]);
                }
            }
            for qa in (0..nq).step_by(SEG) {
                let qb = (qa + SEG).min(nq);
                let at = (qa / row, qa % row);
                let wp = wbuf.as_mut_ptr() as *mut u8;
                // the whole depth in one segment: the buffer may still hold this row group
                let whole = nq <= SEG;
                if whole && held.group == Some((r, g)) {
                    corr = held.corr;
                } else {
                    // SAFETY: the CPU has this tier's features; blocks `qa..qb` of the row blocks
                    // are inside the weights (`Product::check` bounds their length) and `wbuf`
                    // holds `SEG` blocks of two registers
                    unsafe {
                        if g == 32 {
                            interleave::<2>(&blocks, (qa, qb), wp, &mut corr);
                        } else {
                            interleave::<1>(&blocks, (qa, qb), wp, &mut corr);
                        }
                    }
                    if whole {
                        (held.group, held.corr) = (Some((r, g)), corr);
                    }
                }
                for i in 0..n {
                    let w = wbuf.as_ptr() as *const u8;
                    let a = acc[i].as_mut_ptr();
                    // SAFETY: the CPU has this tier's features; every read is inside `stage`
                    // (`Product::check` bounds the pixels' extent) and the blocks just
                    // interleaved; `acc[i]` is read only after the span from block 0 wrote it
                    unsafe {
                        if g == 32 {
                            span::<2>(w, stage, &bases[i], px, (qa, qb, at), a)
                        } else {
                            span::<1>(w, stage, &bases[i], px, (qa, qb, at), a)
                        }
                    };
                }
            }
            // SAFETY: the CPU has this tier's features; the chunk's accumulators were written for
            // this row group
            unsafe {
                emit(
                    &acc[..n],
                    (&corr[..g / 16], &mut held),
                    (r, c0, px.count),
                    prod,
                    finish,
                    &mut t,
                    out,
                )
            };
            r += g;
        }
    }
    if r16 < r1 {
        // SAFETY: the caller's features include the 256-bit tier's
        unsafe { super::x86_vnni::product_rows_evex(prod, (r16, r1), finish, out) };
    }
}

/// Rows `r0..r1` of `prod` for int16 activations (any other stage goes to the 256-bit tiles).
///
/// # Safety
/// The CPU must have AVX2, AVX-512F, AVX-512BW, AVX-512VL and AVX-512 VNNI.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn product_rows_i16<T: super::reference::Code>(
    prod: &Product<'_, T>,
    (r0, r1): (usize, usize),
    finish: Finish<'_>,
    out: &mut impl FnMut(&mut Tile),
) {
    use super::x86::{widen, NR as NR6, WIDEN_EVERY};
    let stage: &[i16] = match bytemuck::try_cast_slice(prod.stage) {
        Ok(s) if core::mem::size_of::<T>() == 2 => s,
        // SAFETY: the caller's features include the 256-bit tiers'
        _ => return unsafe { super::x86_vnni::product_rows_evex(prod, (r0, r1), finish, out) },
    };
    const CHUNK16: usize = 16 * NR6;
    // blocks extended at a time (two registers of 32 i16 each: 32 KiB), at least a widening span
    const SEG16: usize = 256;
    const { assert!(WIDEN_EVERY <= SEG16) };
    let r16 = r0 + (r1 - r0) / 16 * 16;
    let col = super::gemm::col_max(finish);
    let px = &prod.px;
    let k4 = px.k4();
    let nq = k4 / BLOCK;
    let row = px.kw * px.c4 / BLOCK;
    let mut t = Tile::new();
    // 32 KiB of extended weights, the accumulators and exact sums, left uninitialised: every
    // element is written before it is read
    let mut wbuf = [MaybeUninit::<i16>::uninit(); SEG16 * 64];
    let mut acc = [MaybeUninit::<Acc16>::uninit(); 16];
    let mut total = [MaybeUninit::<Wide16>::uninit(); 16];
    let mut bases = [[0usize; NR6]; 16];
    for c0 in (0..px.count).step_by(CHUNK16) {
        if r16 == r0 {
            break;
        }
        let c1 = (c0 + CHUNK16).min(px.count);
        let n = (c1 - c0).div_ceil(NR6);
        for (i, b) in bases.iter_mut().enumerate().take(n) {
            *b = px.bases(c0 + i * NR6);
        }
        for r in (r0..r16).step_by(16) {
            let blocks: [&[i8]; 4] =
                core::array::from_fn(|i| &prod.w[(r / BLOCK + i) * BLOCK * k4..]);
            // SAFETY: AVX2 is among the features
            let consts = [0, 1].map(|v| match finish {
                Finish::Codes(e) => Some(unsafe { super::x86::Consts::new(e, r + 8 * v) }),
                _ => None,
            });
            // exact sums unless both halves' sums provably fit i32 (then i32 lanes and the
            // wrapping epilogue are exact)
            let wide = prod.exact
                && !(0..2).all(|v| {
                    let (w0, w1) = (
                        &blocks[2 * v][..BLOCK * k4],
                        &blocks[2 * v + 1][..BLOCK * k4],
                    );
                    consts[v].is_some()
                        && super::gemm::fits_i32(prod.wsum, col, w0, w1, finish, r + 8 * v)
                });
            let zero = [[_mm512_setzero_si512(); NR6]; 2];
            if nq == 0 {
                for a in acc.iter_mut().take(n) {
                    a.write(zero);
                }
            }
            if wide {
                for s in total.iter_mut().take(n) {
                    s.write([[[[_mm256_setzero_si256(); 2]; NR6]; 2]; 2]);
                }
            }
            let seg = if wide { WIDEN_EVERY } else { SEG16 };
            for qa in (0..nq).step_by(seg) {
                let qb = (qa + seg).min(nq);
                let at = (qa / row, qa % row);
                // SAFETY: this tier's features; blocks `qa..qb` of the four row blocks are inside
                // the weights (`Product::check` bounds their length) and `wbuf` holds `SEG16`
                // blocks of two registers (`seg <= SEG16`)
                unsafe { extend16(&blocks, (qa, qb), wbuf.as_mut_ptr() as *mut i16) };
                for i in 0..n {
                    let a = acc[i].as_mut_ptr();
                    // SAFETY: this tier's features; every read is inside `stage`
                    // (`Product::check` bounds the pixels' extent) and the blocks just extended;
                    // `acc[i]` is read only after the span from block 0 wrote it
                    unsafe {
                        span16(
                            wbuf.as_ptr() as *const i16,
                            stage,
                            &bases[i],
                            px,
                            (qa, qb, at),
                            a,
                        )
                    };
                    if wide {
                        // SAFETY: `acc[i]` was just written, `total[i]` above for this row
                        // group; register arithmetic and local stores
                        unsafe {
                            let z = acc[i].assume_init_mut();
                            let s = total[i].assume_init_mut();
                            for (v, sv) in s.iter_mut().enumerate() {
                                let mut h = halves(z, v);
                                widen(&mut h, sv);
                            }
                            *z = zero;
                        }
                    }
                }
            }
            let done = (&acc[..n], wide.then_some(&total[..n]));
            // SAFETY: this tier's features; `acc[..n]` (and `total[..n]` when wide) were written
            // for this row group
            unsafe { emit16(done, &consts, (r, c0, px.count), finish, &mut t, out) };
        }
    }
    if r16 < r1 {
        // SAFETY: the caller's features include AVX2 and AVX-512 VNNI on 256-bit registers (VL)
        unsafe { super::x86::product_rows(prod, (r16, r1), finish, out, super::x86::Madd::Evex) };
    }
}

/// The 256-bit accumulators of rows `8 v..8 v + 8` of an int16 tile: its registers' halves.
#[target_feature(enable = "avx512f")]
#[inline]
fn halves(z: &[[__m512i; super::x86::NR]; 2], v: usize) -> super::x86::Acc {
    [
        core::array::from_fn(|j| _mm512_castsi512_si256(z[v][j])),
        core::array::from_fn(|j| _mm512_extracti64x4_epi64::<1>(z[v][j])),
    ]
}

/// Finishes and hands over an int16 chunk's tiles for the row group from `r` (pixels from `c0` of
/// `count`): each 8-row half by the AVX2 epilogue, from the wrapping accumulators or from the
/// exact sums `wide`.
///
/// # Safety
/// This tier's features; `acc` (and `wide`) initialised.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn emit16(
    (acc, wide): (&[MaybeUninit<Acc16>], Option<&[MaybeUninit<Wide16>]>),
    consts: &[Option<super::x86::Consts>; 2],
    (r, c0, count): (usize, usize, usize),
    finish: Finish<'_>,
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    const N: usize = super::x86::NR;
    for (v, k) in consts.iter().enumerate() {
        (t.r0, t.rows) = (r + 8 * v, 8);
        for (i, a) in acc.iter().enumerate() {
            let p0 = c0 + i * N;
            (t.p0, t.cols) = (p0, N.min(count - p0));
            // SAFETY: the caller's: initialised; the AVX2 epilogue under this tier's features
            unsafe {
                let h = halves(a.assume_init_ref(), v);
                let sums = wide.map(|w| &w[i].assume_init_ref()[v]);
                super::x86::finish_tile(&h, sums, k.as_ref(), finish, t);
            }
            out(t);
            t.rows = 8;
        }
    }
}

/// Extends depth blocks `qa..qb` of four row blocks to i16 into `d`: per block, register 0 holds
/// blocks 0 and 1 (the AVX2 tile's layout of 8 rows), register 1 blocks 2 and 3.
///
/// # Safety
/// This tier's features; each of `blocks` holds `16 * qb` bytes and `d` has room for `qb - qa`
/// blocks of two registers.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn extend16(blocks: &[&[i8]; 4], (qa, qb): (usize, usize), d: *mut i16) {
    for q in qa..qb {
        for (b, blk) in blocks.iter().enumerate() {
            // SAFETY: the caller's bounds
            unsafe {
                let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                    blk.as_ptr().add(16 * q) as *const __m128i
                ));
                _mm256_storeu_si256(d.add(64 * (q - qa) + 16 * b) as *mut __m256i, w);
            }
        }
    }
}

/// The int16 tile's block loop: blocks `qa..qb` of one tile's depth (`qa` at block `b0` of kernel
/// row `ky`) added into its accumulators (overwritten when `qa == 0`) with `VPDPWSSD`, each pixel's
/// 4 staged values broadcast to every 64-bit lane (see `super::x86`'s `span`).
///
/// # Safety
/// This tier's features; every staged value read is inside `stage`; `w` holds blocks `qa..qb`
/// (written by [`extend16`]); `acc` is valid for writes, and initialised when `qa > 0`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn span16(
    w: *const i16,
    stage: &[i16],
    bases: &[usize; super::x86::NR],
    px: &Pixels,
    (qa, qb, (mut ky, mut b0)): (usize, usize, (usize, usize)),
    acc: *mut [[__m512i; super::x86::NR]; 2],
) {
    const N: usize = super::x86::NR;
    let row = px.kw * px.c4 / BLOCK;
    if qa >= qb || row == 0 {
        return;
    }
    let mut a = if qa == 0 {
        [[_mm512_setzero_si512(); N]; 2]
    } else {
        // SAFETY: the caller's: written by the span from block 0
        unsafe { acc.read() }
    };
    let sp = stage.as_ptr();
    let mut q = qa;
    while q < qb {
        let b1 = row.min(b0 + (qb - q));
        let tap = ky * px.tap_row;
        // SAFETY: the caller's bounds; block `q + (b - b0)` of `w` is extended
        unsafe {
            let wq = w.add(64 * (q - qa));
            let at: [*const i16; N] = core::array::from_fn(|j| sp.add(bases[j] + tap));
            for b in 0..b1 - b0 {
                let wa = _mm512_loadu_si512(wq.add(64 * b) as *const __m512i);
                let wb = _mm512_loadu_si512(wq.add(64 * b + 32) as *const __m512i);
                for j in 0..N {
                    let x = _mm512_set1_epi64(core::ptr::read_unaligned(
                        at[j].add((b0 + b) * BLOCK) as *const i64,
                    ));
                    a[0][j] = _mm512_dpwssd_epi32(a[0][j], wa, x);
                    a[1][j] = _mm512_dpwssd_epi32(a[1][j], wb, x);
                }
            }
        }
        q += b1 - b0;
        (ky, b0) = (ky + 1, 0);
    }
    // SAFETY: the caller's: `acc` is valid for writes
    unsafe { acc.write(a) };
}

/// Finishes and hands over a chunk's tiles for the row group from `r` (pixels from `c0` of
/// `count`): 8 rows x 8 pixels at a time, each sum less its row's correction.
///
/// # Safety
/// This tier's features; `acc` initialised.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn emit(
    acc: &[MaybeUninit<Acc>],
    (corr, held): (&[__m512i], &mut Held),
    (r, c0, count): (usize, usize, usize),
    prod: &Product<'_, impl super::reference::Code>,
    finish: Finish<'_>,
    t: &mut Tile,
    out: &mut impl FnMut(&mut Tile),
) {
    for (v, &cv) in corr.iter().enumerate() {
        // SAFETY: AVX-512F is among the features
        let wide = unsafe { held.consts(prod, finish, r + 16 * v) };
        if let (Some(k), Finish::Codes(e)) = (&wide, finish) {
            // SAFETY: the caller's: `acc` initialised; this tier's features
            unsafe { emit_packed(acc, (v, cv), k, e, (r + 16 * v, c0, count), t, out) };
            continue;
        }
        t.packed = false;
        for h in 0..2 {
            (t.r0, t.rows) = (r + 16 * v + 8 * h, 8);
            let half = |z: __m512i| {
                if h == 0 {
                    _mm512_castsi512_si256(z)
                } else {
                    _mm512_extracti64x4_epi64::<1>(z)
                }
            };
            let c = half(cv);
            // SAFETY: AVX2 is among the features
            let consts = match finish {
                Finish::Codes(e) if !prod.exact => Some(unsafe { Consts::new(e, t.r0) }),
                _ => None,
            };
            for (i, a) in acc.iter().enumerate() {
                let p0 = c0 + i * NR;
                if p0 >= count {
                    break;
                }
                (t.p0, t.cols) = (p0, NR.min(count - p0));
                // SAFETY: the caller's: `acc` initialised; register arithmetic and stores into the
                // tile
                unsafe {
                    let sums: [__m256i; NR] = core::array::from_fn(|j| {
                        _mm256_sub_epi32(half(a.assume_init_ref()[v][j]), c)
                    });
                    match (&consts, finish) {
                        (Some(k), Finish::Codes(e)) => k.codes(e, &sums, p0, t),
                        _ => {
                            for (j, s) in sums.iter().enumerate() {
                                let mut l = [0i32; 8];
                                _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, *s);
                                for (row, &x) in l.iter().enumerate() {
                                    t.sums[row][j] = x as i64;
                                }
                            }
                            finish_sums(t, finish, prod.exact);
                        }
                    }
                }
                out(t);
                t.rows = 8;
            }
        }
    }
}

/// Interleaves depth blocks `qa..qb` of the row blocks into `d` (`V` registers of 64 bytes per
/// block: register `v` holds blocks `4v..4v + 4`) and adds `128 * sum(w)` of every row into
/// `corr`.
///
/// # Safety
/// This tier's features; each of `blocks[..4 V]` holds `16 * qb` bytes, `qb - qa <= SEG` and `d`
/// has room for `SEG` blocks of two registers.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn interleave<const V: usize>(
    blocks: &[&[i8]; 8],
    (qa, qb): (usize, usize),
    d: *mut u8,
    corr: &mut [__m512i; 2],
) {
    let flip = _mm512_set1_epi8(-128);
    for q in qa..qb {
        for v in 0..V {
            // SAFETY: the caller's bounds
            unsafe {
                // the register assembled from its four blocks (four narrow stores read back
                // as one wide load would miss store forwarding)
                let blk = |b: usize| {
                    _mm_loadu_si128(blocks[4 * v + b].as_ptr().add(16 * q) as *const __m128i)
                };
                let w = _mm512_castsi128_si512(blk(0));
                let w = _mm512_inserti32x4::<1>(w, blk(1));
                let w = _mm512_inserti32x4::<2>(w, blk(2));
                let w = _mm512_inserti32x4::<3>(w, blk(3));
                _mm512_storeu_si512(d.add(64 * (V * (q - qa) + v)) as *mut __m512i, w);
                corr[v] = _mm512_dpbusd_epi32(corr[v], flip, w);
            }
        }
    }
}

super::x86_vnni::vnni_span!(
    ,
    "avx2,avx512f,avx512bw,avx512vl,avx512vnni",
    __m512i,
    64,
    _mm512_setzero_si512,
    _mm512_loadu_si512,
    _mm512_set1_epi32,
    _mm512_dpbusd_epi32
);
