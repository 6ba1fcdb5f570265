//! Staging activations for the product engine ([`super::gemm`]): NCHW images to NHWC with a border
//! of the input zero point and channels padded to a multiple of 4, and strided matrices to rows of
//! depth padded to a multiple of 4. The AVX2 tier reads i16 stages, the others the input's own
//! codes; [`stage_elem`] says which. The dotprod tier splits int16 codes for `SDOT` (see
//! [`split_i16`]); the AVX-VNNI tier flips int8 codes to unsigned bytes for `VPDPBUSD` ([`flips`]).
use super::gemm::{pad4, Pixels};
use super::reference::Code;
use super::{check_len, Tier};
use crate::{Error, Result};

/// Bytes per staged value for activations of `elem` bytes on `tier`.
pub fn stage_elem(tier: Tier, elem: usize) -> usize {
    match tier {
        Tier::Avx2 => 2,
        // int8 codes for VPDPBUSD, int16 for the AVX2 tiles
        _ => elem,
    }
}

/// Geometry of a staged NCHW image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStage {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// padding: top, left, bottom, right
    pub pad: [usize; 4],
}

impl ImageStage {
    pub fn c4(&self) -> usize {
        pad4(self.c)
    }
    pub fn wp(&self) -> usize {
        self.w + self.pad[1] + self.pad[3]
    }
    pub fn hp(&self) -> usize {
        self.h + self.pad[0] + self.pad[2]
    }
    /// Staged values.
    pub fn len(&self) -> usize {
        self.hp() * self.wp() * self.c4()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The pixels of a `kh x kw` convolution with strides `sh, sw` and output `oh x ow` over it.
    pub fn pixels(
        &self,
        (kh, kw): (usize, usize),
        (sh, sw): (usize, usize),
        (oh, ow): (usize, usize),
    ) -> Pixels {
        let c4 = self.c4();
        Pixels {
            count: oh * ow,
            width: ow,
            row_step: sh * self.wp() * c4,
            col_step: sw * c4,
            kh,
            kw,
            tap_row: self.wp() * c4,
            c4,
        }
    }
}

/// Stages one NCHW image `x` into `out` (`g.len()` values): NHWC, the border filled with `zx`, the
/// channels beyond `c` with 0.
#[inline(always)]
pub fn image<T: Code, U: Code>(
    tier: Tier,
    x: &[T],
    g: &ImageStage,
    zx: U,
    out: &mut [U],
) -> Result<()> {
    image_rows(tier, x, g, zx, 0..g.hp(), out)
}

/// [`image`] for the stage's rows `rows` only (padded rows, `out` holding exactly those): threads
/// stage parts of one image.
#[inline(always)]
pub fn image_rows<T: Code, U: Code>(
    tier: Tier,
    x: &[T],
    g: &ImageStage,
    zx: U,
    rows: core::ops::Range<usize>,
    out: &mut [U],
) -> Result<()> {
    check_len(g.c * g.h * g.w, x.len())?;
    let (c4, wp) = (g.c4(), g.wp());
    if rows.start > rows.end || rows.end > g.hp() {
        return Err(Error::BufferLength {
            expected: rows.end,
            got: g.hp(),
        });
    }
    check_len((rows.end - rows.start) * wp * c4, out.len())?;
    let [pt, pl, _, _] = g.pad;
    let flip = flips(tier, core::mem::size_of::<U>());
    let (zx, zero) = (staged(zx, flip), staged(U::default(), flip));
    // the border rows and columns, then every interior pixel's padded channels (whole slices, not
    // a loop over every pixel: that loop cost as much as the transposes on a 32-channel image)
    for (k, row) in out.chunks_exact_mut(wp * c4).enumerate() {
        let y = rows.start + k;
        if y < pt || y >= pt + g.h {
            row.fill(zx);
            continue;
        }
        let (left, rest) = row.split_at_mut(pl * c4);
        let (mid, right) = rest.split_at_mut(g.w * c4);
        left.fill(zx);
        right.fill(zx);
        if g.c < c4 {
            for px in mid.chunks_exact_mut(c4) {
                px[g.c..].fill(zero);
            }
        }
    }
    let plane = g.h * g.w;
    // the image rows inside `rows`
    let (ya, yb) = (
        rows.start.saturating_sub(pt).min(g.h),
        rows.end.saturating_sub(pt).min(g.h),
    );
    // channels ..done.0 of the source pixels ..done.1 staged
    #[allow(unused_mut)]
    let mut done = (0, ya * g.w);
    #[cfg(target_arch = "x86_64")]
    if g.w.is_multiple_of(16) && ya < yb {
        // runs of 64 pixels across image rows (16 at a time stay in one row)
        let lane = |q: usize| ((q / g.w + pt - rows.start) * wp + pl + q % g.w) * c4;
        let qs = (ya * g.w, yb * g.w);
        if let Some(d) = blocks16x64(tier, x, plane, g.c, qs, out, lane, c4) {
            done = d;
        }
    }
    for y in ya..yb {
        let start = ((y + pt - rows.start) * wp + pl) * c4;
        // channels of image row y (stride `plane`) to its pixels (stride c4): those the blocks
        // did not stage
        let (cb, x0) = (done.0, done.1.saturating_sub(y * g.w).min(g.w));
        if cb > 0 && x0 < g.w {
            let at = start + x0 * c4;
            transpose(
                tier,
                &x[y * g.w + x0..],
                plane,
                cb,
                g.w - x0,
                &mut out[at..],
                c4,
            );
        }
        if cb < g.c {
            let (from, to) = (&x[cb * plane + y * g.w..], &mut out[start + cb..]);
            transpose(tier, from, plane, g.c - cb, g.w, to, c4);
        }
    }
    split_i16(tier, out);
    Ok(())
}

/// Whether `tier` stages codes of `elem` bytes flipped: the AvxVnni tier stores each int8 code `x`
/// as `x ^ 0x80`, which read as an unsigned byte is `x + 128` (`VPDPBUSD` takes unsigned bytes).
pub fn flips(tier: Tier, elem: usize) -> bool {
    matches!(tier, Tier::AvxVnni | Tier::Avx512Vnni) && elem == 1
}

/// Flips a staged int8 stage in place where [`flips`] says so (a no-op otherwise).
#[inline(always)]
pub fn flip_i8<U: Code>(tier: Tier, out: &mut [U]) {
    if !flips(tier, core::mem::size_of::<U>()) {
        return;
    }
    for b in bytemuck::cast_slice_mut::<U, u8>(out) {
        *b ^= 0x80;
    }
}

/// `v` as staged: flipped (`x ^ 0x80`, see [`flips`]) where `flip` (one-byte codes only).
#[inline(always)]
fn staged<U: Code>(v: U, flip: bool) -> U {
    let mut x = v;
    if flip {
        for b in bytemuck::bytes_of_mut(&mut x) {
            *b ^= 0x80;
        }
    }
    x
}

/// On the dotprod tier, int16 codes are staged as signed bytes: each value `v = 256 h + l + 128`
/// with `h = v >> 8` and `l = (v & 255) - 128`, both in [-128, 127], every group of 4 values (one
/// block's depth) rewritten in place as the bytes `l0 l1 l2 l3 h0 h1 h2 h3`, so that `SDOT`
/// multiplies each half by int8 weights (the kernel adds `128 * sum(w)`). A no-op on other tiers
/// and for int8 stages.
#[inline(always)]
pub fn split_i16<U: Code>(tier: Tier, out: &mut [U]) {
    if tier != Tier::NeonDot || core::mem::size_of::<U>() != 2 {
        return;
    }
    let Ok(v) = bytemuck::try_cast_slice_mut::<U, i16>(out) else {
        return;
    };
    for g in v.chunks_exact_mut(4) {
        let mut b = [0i8; 8];
        for (i, &x) in g.iter().enumerate() {
            (b[i], b[4 + i]) = (((x & 255) - 128) as i8, (x >> 8) as i8);
        }
        g.copy_from_slice(bytemuck::cast_slice(&b));
    }
}

/// `dst[p * px_stride + c] = src[c * ch_stride + p]` for `c < nch`, `p < npx` (the caller checks
/// that both ranges are in bounds, or this panics): channel-major codes to pixel-major, flipped
/// where [`flips`] says so.
#[inline(always)]
fn transpose<T: Code, U: Code>(
    tier: Tier,
    src: &[T],
    ch_stride: usize,
    nch: usize,
    npx: usize,
    dst: &mut [U],
    px_stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some((cb, pb)) = blocks16x64(
        tier,
        src,
        ch_stride,
        nch,
        (0, npx),
        dst,
        |q| q * px_stride,
        px_stride,
    ) {
        // what the blocks left: pixels pb.. of channels ..cb, then channels cb.. of every pixel
        part(tier, src, ch_stride, (0, cb), (pb, npx), dst, px_stride);
        part(tier, src, ch_stride, (cb, nch), (0, npx), dst, px_stride);
        return;
    }
    transpose8(tier, src, ch_stride, nch, npx, dst, px_stride)
}

/// [`transpose8`] of channels `c0..c1` by pixels `p0..p1` (nothing where either is empty).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn part<T: Code, U: Code>(
    tier: Tier,
    src: &[T],
    ch_stride: usize,
    (c0, c1): (usize, usize),
    (p0, p1): (usize, usize),
    dst: &mut [U],
    px_stride: usize,
) {
    if c0 < c1 && p0 < p1 {
        let (from, to) = (&src[c0 * ch_stride + p0..], &mut dst[p0 * px_stride + c0..]);
        transpose8(tier, from, ch_stride, c1 - c0, p1 - p0, to, px_stride);
    }
}

/// [`transpose`] by 8 x 8 blocks where the tier has them, and value by value.
#[inline(always)]
fn transpose8<T: Code, U: Code>(
    tier: Tier,
    src: &[T],
    ch_stride: usize,
    nch: usize,
    npx: usize,
    dst: &mut [U],
    px_stride: usize,
) {
    if nch == 0 || npx == 0 {
        return;
    }
    let flip = flips(tier, core::mem::size_of::<U>());
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(unused_mut)
    )]
    let (mut c0, mut p_end) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if matches!(tier, Tier::Avx2 | Tier::AvxVnni | Tier::Avx512Vnni)
        && core::mem::size_of::<U>() == 2
        && U::MAX > 127
    {
        // SSE unpacks (the stage of the AVX2 tiles is i16)
        (c0, p_end) = blocks8(src, ch_stride, (nch, npx), dst, px_stride, |from, to| {
            // SAFETY: AVX2 was detected for these tiers; `blocks8` checked the block's bounds; U
            // is a two-byte code
            unsafe { super::x86::transpose8x8(from, ch_stride, to as *mut i16, px_stride) }
        });
    } else if flips(tier, 1)
        && core::mem::size_of::<T>() == 1
        && core::mem::size_of::<U>() == 1
        && T::MIN == U::MIN
    {
        // SSE2 byte unpacks (the int8 stage of the VNNI tiers holds the input's codes)
        (c0, p_end) = blocks8(src, ch_stride, (nch, npx), dst, px_stride, |from, to| {
            // SAFETY: `blocks8` checked the block's bounds; T and U are the same one-byte code
            unsafe {
                super::x86::transpose8x8_b(
                    from as *const i8,
                    ch_stride,
                    to as *mut i8,
                    px_stride,
                    flip,
                )
            }
        });
    }
    #[cfg(target_arch = "aarch64")]
    if matches!(tier, Tier::Neon | Tier::NeonDot)
        && core::mem::size_of::<T>() == core::mem::size_of::<U>()
        && T::MAX == U::MAX
    {
        // NEON zips (the stage of the NEON tiers holds the input's codes)
        (c0, p_end) = blocks8(src, ch_stride, (nch, npx), dst, px_stride, |from, to| {
            // SAFETY: NEON is baseline on aarch64; `blocks8` checked the block's bounds; T and U
            // are the same code type (equal size and range)
            unsafe {
                if core::mem::size_of::<T>() == 1 {
                    super::neon_ops::transpose8x8_b(
                        from as *const i8,
                        ch_stride,
                        to as *mut i8,
                        px_stride,
                    )
                } else {
                    super::neon_ops::transpose8x8_h(
                        from as *const i16,
                        ch_stride,
                        to as *mut i16,
                        px_stride,
                    )
                }
            }
        });
    }
    let _ = tier;
    // what the blocks left: channels c0.. of every pixel, and channels ..c0 of pixels p_end..
    for c in 0..nch {
        let p_start = if c < c0 { p_end } else { 0 };
        let s = &src[c * ch_stride..];
        for p in p_start..npx {
            dst[p * px_stride + c] = staged(U::sat(s[p].get() as i64), flip);
        }
    }
}

/// Walks the whole 8 x 8 blocks of [`transpose`] (channels `..nch / 8 * 8` by pixels `..npx / 8
/// * 8`): checks the blocks' last read and write once (panicking like an index out of range, as
/// [`transpose`] says), then hands each block's first source and destination element to `block`.
/// Returns the channels and pixels the blocks covered.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn blocks8<T, U>(
    src: &[T],
    ch_stride: usize,
    (nch, npx): (usize, usize),
    dst: &mut [U],
    px_stride: usize,
    mut block: impl FnMut(*const T, *mut U),
) -> (usize, usize) {
    let (cb, pb) = (nch / 8 * 8, npx / 8 * 8);
    if cb > 0 && pb > 0 {
        let _ = &src[(cb - 1) * ch_stride + pb - 1];
        let _ = &dst[(pb - 1) * px_stride + cb - 1];
        for c in (0..cb).step_by(8) {
            for p in (0..pb).step_by(8) {
                // inside both slices by the checks above
                let from = src.as_ptr().wrapping_add(c * ch_stride + p);
                block(from, dst.as_mut_ptr().wrapping_add(p * px_stride + c));
            }
        }
    }
    (cb, pb)
}

/// The AVX-512 int8 blocks of a staging transpose ([`super::x86_avx512_ops::transpose16x64_b`],
/// flipped), where the tier is `Avx512Vnni` and the stage flips: channels `..nch / 16 * 16` of the
/// source pixels `q0..` in runs of 64 (`src[c * ch_stride + q]`), source pixel `q` (a multiple of
/// 16 from `q0`) and its next 15 to `dst[lane(q) + j * px_stride + c]`. Checks every block's
/// reads and writes (panicking like an index out of range); returns the channels and the end of
/// the pixels the blocks covered, or `None` (nothing done) where they do not apply.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn blocks16x64<T: Code, U: Code>(
    tier: Tier,
    src: &[T],
    ch_stride: usize,
    nch: usize,
    (q0, q1): (usize, usize),
    dst: &mut [U],
    lane: impl Fn(usize) -> usize,
    px_stride: usize,
) -> Option<(usize, usize)> {
    let one = core::mem::size_of::<T>() == 1 && core::mem::size_of::<U>() == 1 && T::MIN == U::MIN;
    let (cb, qb) = (nch / 16 * 16, q0 + (q1.saturating_sub(q0)) / 64 * 64);
    if tier != Tier::Avx512Vnni || !flips(tier, 1) || !one || cb == 0 || qb == q0 {
        return None;
    }
    let _ = &src[(cb - 1) * ch_stride + qb - 1];
    for q in (q0..qb).step_by(64) {
        let lanes: [*mut i8; 4] = core::array::from_fn(|l| {
            let at = lane(q + 16 * l);
            let _ = &dst[at + 15 * px_stride + cb - 1];
            dst.as_mut_ptr().wrapping_add(at) as *mut i8
        });
        for c in (0..cb).step_by(16) {
            // SAFETY: the tier detected AVX-512 F and BW; the block's last read (channel `cb - 1`,
            // pixel `qb - 1`) and each lane's last write were checked above; T and U are the same
            // one-byte code
            unsafe {
                super::x86_avx512_ops::transpose16x64_b(
                    src.as_ptr().add(c * ch_stride + q) as *const i8,
                    ch_stride,
                    lanes.map(|p| p.wrapping_add(c)),
                    px_stride,
                    true,
                )
            }
        }
    }
    Some((cb, qb))
}

/// Stages a matrix of `m` rows and depth `k` read at `x[i * s[0] + q * s[1]]` into rows of
/// `pad4(k)` values (zeros beyond `k`).
#[inline(always)]
pub fn rows<T: Code, U: Code>(
    tier: Tier,
    x: &[T],
    m: usize,
    k: usize,
    s: [usize; 2],
    out: &mut [U],
) -> Result<()> {
    let k4 = pad4(k);
    check_len(m * k4, out.len())?;
    if m > 0 && k > 0 && (m - 1) * s[0] + (k - 1) * s[1] >= x.len() {
        return Err(Error::BufferLength {
            expected: (m - 1) * s[0] + (k - 1) * s[1] + 1,
            got: x.len(),
        });
    }
    if s[0] == 1 && m > 0 && k > 0 {
        // channel-major (a 1x1 convolution's input): a transpose
        let zero = staged(U::default(), flips(tier, core::mem::size_of::<U>()));
        for row in out.chunks_exact_mut(k4.max(1)) {
            row[k..].fill(zero);
        }
        transpose(tier, x, s[1], k, m, out, k4);
        split_i16(tier, out);
        return Ok(());
    }
    for (i, row) in out.chunks_exact_mut(k4.max(1)).enumerate().take(m) {
        if s[1] == 1 {
            for (d, v) in row[..k].iter_mut().zip(&x[i * s[0]..i * s[0] + k]) {
                *d = U::sat(v.get() as i64);
            }
        } else {
            for (q, d) in row[..k].iter_mut().enumerate() {
                *d = U::sat(x[i * s[0] + q * s[1]].get() as i64);
            }
        }
        row[k..].fill(U::default());
    }
    split_i16(tier, out);
    flip_i8(tier, out);
    Ok(())
}

/// Packs an activation matrix as weights (the second operand of an attention product): `n` rows of
/// depth `k` read at `x[q * s[0] + r * s[1]]` (depth stride first), into the packed layout of
/// [`super::gemm`] with zeros in the padding.
#[inline(always)]
pub fn pack_operand(x: &[i8], n: usize, k: usize, s: [usize; 2], out: &mut [i8]) -> Result<()> {
    let (n4, k4) = (pad4(n), pad4(k));
    check_len(n4 * k4, out.len())?;
    operand_in_bounds(x.len(), n, k, s)?;
    out.fill(0);
    // whole blocks (4 rows x 4 depth) from runs of 4 consecutive bytes: along the depth when it
    // is contiguous, along the rows when they are; what is left element by element
    let (nb, kb) = (n / 4 * 4, k / 4 * 4);
    let fast = s[0] == 1 || s[1] == 1;
    if fast {
        for g in (0..nb).step_by(4) {
            for qb in (0..kb).step_by(4) {
                let blk = &mut out[g * k4 + qb * 4..][..16];
                for a in 0..4 {
                    if s[0] == 1 {
                        // row g + a, depth qb..qb + 4
                        let at = (g + a) * s[1] + qb;
                        blk[a * 4..a * 4 + 4].copy_from_slice(&x[at..at + 4]);
                    } else {
                        // depth qb + a, rows g..g + 4
                        let at = (qb + a) * s[0] + g;
                        for (i, &v) in x[at..at + 4].iter().enumerate() {
                            blk[i * 4 + a] = v;
                        }
                    }
                }
            }
        }
    }
    for r in 0..n {
        let q0 = if fast && r < nb { kb } else { 0 };
        for q in q0..k {
            out[super::gemm::packed_index(r, q, k4)] = x[q * s[0] + r * s[1]];
        }
    }
    Ok(())
}

/// Packs an int16 activation matrix as weights in two int8 planes (the second operand of an int16
/// attention product): each value `v = 256 h + l + 128` with `h = v >> 8` and `l = (v & 255) -
/// 128`. Row `r` of `n` (depth `k`, read at `x[q * s[0] + r * s[1]]`) puts `h` in packed row `8 (r /
/// 4) + r % 4` and `l` in packed row `8 (r / 4) + 4 + r % 4`, so each 8-row group holds both planes
/// of 4 rows; `2 pad4(n)` packed rows, zeros in the padding.
pub fn pack_operand_i16(
    x: &[i16],
    n: usize,
    k: usize,
    s: [usize; 2],
    out: &mut [i8],
) -> Result<()> {
    let k4 = pad4(k);
    check_len(2 * pad4(n) * k4, out.len())?;
    operand_in_bounds(x.len(), n, k, s)?;
    out.fill(0);
    for r in 0..n {
        let (hr, lr) = (8 * (r / 4) + r % 4, 8 * (r / 4) + 4 + r % 4);
        for q in 0..k {
            let v = x[q * s[0] + r * s[1]];
            out[super::gemm::packed_index(hr, q, k4)] = (v >> 8) as i8;
            out[super::gemm::packed_index(lr, q, k4)] = ((v & 255) - 128) as i8;
        }
    }
    Ok(())
}

/// Whether `n` rows of depth `k` read at `q * s[0] + r * s[1]` lie in `len` elements.
fn operand_in_bounds(len: usize, n: usize, k: usize, s: [usize; 2]) -> Result<()> {
    if n > 0 && k > 0 && (k - 1) * s[0] + (n - 1) * s[1] >= len {
        return Err(Error::BufferLength {
            expected: (k - 1) * s[0] + (n - 1) * s[1] + 1,
            got: len,
        });
    }
    Ok(())
}
