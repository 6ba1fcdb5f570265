//! Property check of the product engine on every tier against a direct loop of its specification,
//! on random shapes and values (std builds): run by `dmq-board selftest` on a board or under qemu,
//! and by the host tests. Convolutions (strides, padding, channels not a multiple of 4), linears
//! (token- and channel-major inputs), attention operands, int8 and int16 activations, 8- and 4-bit
//! weights, and long products of extreme values (the int16 lanes' widening).
extern crate std;

use super::gemm::{self, packed_index, pad4, Epilogue, Finish, Pixels, Product, Requants};
use super::reference::Code;
use super::stage::{self, ImageStage};
use super::Tier;
use crate::sampler::Rng;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

fn u(rng: &mut Rng, n: u64) -> usize {
    (rng.next_u64() % n) as usize
}

/// Comparisons made, or what differed.
type Check = core::result::Result<usize, String>;

/// Random activation codes of type `T` (extreme values every third case).
fn acts<T: Code>(rng: &mut Rng, n: usize, extreme: bool) -> Vec<T> {
    (0..n)
        .map(|i| {
            let v = if extreme {
                [T::MIN, T::MAX][i % 2] as i64
            } else {
                T::MIN as i64 + (rng.next_u64() % (T::MAX - T::MIN + 1) as u64) as i64
            };
            T::sat(v)
        })
        .collect()
}

/// Packed weights in [-127, 127] (or 4-bit codes in [-8, 7]: `bits`), zero in the padding.
fn weights(
    rng: &mut Rng,
    n: usize,
    k: usize,
    k4_of: impl Fn(usize) -> Option<usize>,
    bits: u8,
    k4: usize,
) -> Vec<i8> {
    let mut w = vec![0i8; pad4(n) * k4];
    let (lo, hi) = if bits == 4 { (-8i64, 7) } else { (-127, 127) };
    for r in 0..n {
        for d in 0..k {
            if let Some(at) = k4_of(d) {
                w[packed_index(r, at, k4)] = (lo + u(rng, (hi - lo + 1) as u64) as i64) as i8;
            }
        }
    }
    w
}

/// Random epilogue tables for `n` rows and `pixels` pixels: biases, multipliers in [2^30, 2^31)
/// with shifts from 1 to 50 (both sides of the SIMD epilogues' 32), a per-pixel term every other
/// case, per-row or uniform requantization, int8 or int16 output range.
struct RandomEpilogue {
    bias: Vec<u8>,
    table: Vec<u8>,
    col: Vec<i32>,
    uniform: Option<(i32, u8)>,
    zo: i32,
    wide_out: bool,
    /// a clamp narrower than the output type's range (a fused ReLU's, say): (below min, below max)
    narrow: Option<(i32, i32)>,
    by_pixel: bool,
}

impl RandomEpilogue {
    fn new(rng: &mut Rng, n: usize, pixels: usize, case: usize) -> Self {
        let mut e = RandomEpilogue {
            bias: vec![],
            table: vec![],
            col: vec![],
            uniform: None,
            zo: 0,
            wide_out: case % 2 == 0,
            narrow: None,
            by_pixel: false,
        };
        // normalised multipliers (in [2^30, 2^31)), but in one case in 4 smaller ones (a shift of
        // 32 with a multiplier below 2^30 is exactly a shift of 33 with twice the multiplier)
        let small = case % 4 == 1;
        let mult = |rng: &mut Rng| {
            if small && u(rng, 2) == 0 {
                u(rng, 1 << 30) as i32
            } else {
                (1i64 << 30) as i32 + u(rng, 1 << 30) as i32
            }
        };
        // shifts >= 32 (the common case, and every row's for the 512-bit epilogue of 16 rows) but
        // in one case in 3, where some are smaller
        let shift = |rng: &mut Rng| {
            if case % 3 == 0 && u(rng, 4) == 0 {
                1 + u(rng, 31) as u8
            } else {
                32 + u(rng, 19) as u8
            }
        };
        for _ in 0..n {
            e.bias
                .extend_from_slice(&(u(rng, 1 << 21) as i32 - (1 << 20)).to_le_bytes());
            e.table.extend_from_slice(&mult(rng).to_le_bytes());
            e.table
                .extend_from_slice(&(shift(rng) as i32).to_le_bytes());
        }
        if case % 3 == 1 {
            e.col = (0..pixels)
                .map(|_| u(rng, 1 << 21) as i32 - (1 << 20))
                .collect();
        }
        if case % 4 == 2 {
            e.uniform = Some((mult(rng), shift(rng)));
        }
        e.zo = u(rng, 200) as i32 - 100;
        if case % 5 == 3 {
            e.narrow = Some((
                u(rng, 100) as i32 * (u(rng, 2) as i32),
                u(rng, 100) as i32 * (u(rng, 2) as i32),
            ));
        }
        e.by_pixel = u(rng, 2) == 0;
        e
    }
    fn get(&self) -> Epilogue<'_> {
        let (lo, hi) = if self.wide_out {
            (i16::MIN as i32, i16::MAX as i32)
        } else {
            (-128, 127)
        };
        let (lo, hi) = match self.narrow {
            Some((a, b)) => (lo + a, hi - b),
            None => (lo, hi),
        };
        Epilogue {
            bias: &self.bias,
            requant: match self.uniform {
                Some((mult, shift)) => Requants::Uniform { mult, shift },
                None => Requants::PerRow(&self.table),
            },
            col: &self.col,
            zo: self.zo,
            lo,
            hi,
            // a layout hint only: the values must not depend on it
            by_pixel: self.by_pixel,
        }
    }
    /// The specification's codes of the sums `want` (`[row][pixel]`).
    fn codes(&self, want: &[i64], pixels: usize, exact: bool) -> Vec<i64> {
        let e = self.get();
        want.iter()
            .enumerate()
            .map(|(i, &v)| e.code(i / pixels, i % pixels, v, exact) as i64)
            .collect()
    }
}

/// Runs the engine on `tier` over an already staged operand and returns every (row, pixel) sum,
/// or with an epilogue every output code.
fn sums<S: Code>(
    tier: Tier,
    w: &[i8],
    n: usize,
    st: &[S],
    px: Pixels,
    exact: bool,
    epi: Option<&Epilogue<'_>>,
) -> core::result::Result<Vec<i64>, String> {
    let mut out = vec![0i64; n * px.count];
    let wsum = if n % 2 == 0 {
        gemm::abs_row_sum_max(8, bytemuck::cast_slice(w), n, px.k4())
    } else {
        u64::MAX
    };
    let prod = Product {
        w,
        n,
        stage: st,
        px,
        exact,
        full_range: w.contains(&-128),
        wsum,
    };
    let finish = epi.map_or(Finish::Sums, Finish::Codes);
    gemm::run_rows(tier, &prod, (0, pad4(n)), finish, |t| {
        for i in 0..t.rows {
            for j in 0..t.cols {
                let v = match epi {
                    Some(_) => t.code(i, j) as i64,
                    None if exact => t.sums[i][j],
                    None => t.sums[i][j] as i32 as i64,
                };
                out[(t.r0 + i) * px.count + t.p0 + j] = v;
            }
        }
    })
    .map_err(|e| format!("{e}"))?;
    Ok(out)
}

/// [`gemm::Tile::write`] (vector stores on aarch64) against a direct loop: random codes (some
/// beyond the output type, which saturate), full and partial tiles, row-, pixel- and
/// strided layouts; nothing outside the tile is touched.
fn write_case<U: Code>(rng: &mut Rng) -> Check {
    let mut t = gemm::Tile::new();
    // the packed form (int8 codes as bytes, up to 16 rows x 128 pixels, by row or by pixel) for
    // either output type
    t.packed = u(rng, 2) == 0;
    if t.packed {
        t.rows = [4, 8, 16, 1 + u(rng, 16)][u(rng, 4)];
        t.cols = [8, 128, 1 + u(rng, 128)][u(rng, 3)];
        t.by_pixel = u(rng, 2) == 0;
    } else {
        t.rows = [4, 8, 8][u(rng, 3)];
        t.cols = if u(rng, 2) == 0 { 8 } else { 1 + u(rng, 8) };
    }
    (t.r0, t.p0) = (4 * u(rng, 3), u(rng, 5));
    for j in 0..gemm::MAX_NR {
        for i in 0..gemm::MAX_MR {
            t.codes[j][i] = if u(rng, 8) == 0 {
                rng.next_u64() as i32
            } else {
                U::MIN + u(rng, (U::MAX - U::MIN + 1) as u64) as i32
            };
        }
    }
    for row in t.bytes.iter_mut() {
        row.fill_with(|| rng.next_u64() as i8);
    }
    let rbase = t.r0 - 4 * u(rng, (t.r0 / 4 + 1) as u64);
    let (rs, ps) = match u(rng, 3) {
        0 => (t.p0 + t.cols + u(rng, 3), 1),
        1 => (1, t.r0 - rbase + t.rows + u(rng, 3)),
        _ => {
            // rows apart by more than a row's pixels: no two codes share an element
            let ps = 2 + u(rng, 3);
            (ps * (t.p0 + t.cols) + u(rng, 3), ps)
        }
    };
    let len = (t.r0 - rbase + t.rows) * rs + (t.p0 + t.cols) * ps + 5;
    let mut got = vec![U::sat(7); len];
    let mut want = got.clone();
    t.write(&mut got, rbase, rs, ps)
        .map_err(|e| format!("tile write: {e}"))?;
    for i in 0..t.rows {
        for j in 0..t.cols {
            want[(t.r0 - rbase + i) * rs + (t.p0 + j) * ps] = U::sat(t.code(i, j) as i64);
        }
    }
    if bytemuck::cast_slice::<U, u8>(&got) != bytemuck::cast_slice::<U, u8>(&want) {
        return Err(format!(
            "tile write of {} x {} codes at rs {rs} ps {ps} ({}) differs from the direct loop",
            t.rows,
            t.cols,
            core::any::type_name::<U>()
        ));
    }
    Ok(1)
}

/// GroupNorm's affine as run (NEON on aarch64, each x86 level: [`isas`]) against its rule, within the bound under which
/// it is used (|d * a + b| < 2^46).
fn affine_case<T: Code, U: Code>(rng: &mut Rng) -> Check {
    use super::reference::norm;
    let n = u(rng, 70);
    let extreme = u(rng, 3) == 0;
    let x: Vec<T> = acts(rng, n, extreme);
    let zx = acts::<T>(rng, 1, false)[0].get();
    let range = (T::MAX - T::MIN) as i64;
    let a = (u(rng, (1u64 << 46) / range as u64 / 2) as i64 * if u(rng, 2) == 0 { 1 } else { -1 })
        .clamp(i32::MIN as i64 + 1, i32::MAX as i64) as i32;
    let room = (1i64 << 46) - (a.unsigned_abs() as i64) * range;
    let b = if room > 1 {
        u(rng, room as u64) as i64 - room / 2
    } else {
        0
    };
    let mut want = vec![U::default(); n];
    norm::gn_affine_i32(&x, &mut want, zx, a, b);
    for isa in isas() {
        let mut got = vec![U::default(); n];
        // SAFETY: `isas` lists levels up to the CPU's
        unsafe { norm::affine_i32_on(&x, &mut got, zx, a, b, isa) };
        if bytemuck::cast_slice::<U, u8>(&got) != bytemuck::cast_slice::<U, u8>(&want) {
            return Err(format!(
                "groupnorm affine of {n} values (a {a}, b {b}, {} -> {}, {isa:?}) differs from its rule",
                core::any::type_name::<T>(),
                core::any::type_name::<U>()
            ));
        }
    }
    Ok(1)
}

/// The x86 levels of the non-GEMM ops this CPU runs, the widest first (`Scalar` alone elsewhere).
fn isas() -> Vec<super::OpsIsa> {
    use super::OpsIsa;
    let top = super::ops_isa();
    [OpsIsa::Avx512, OpsIsa::Avx2, OpsIsa::Scalar]
        .into_iter()
        .filter(|&l| l <= top)
        .collect()
}

/// GroupNorm's exact sums as run (NEON on aarch64, each x86 level) against a direct loop.
fn moments_case<T: Code>(rng: &mut Rng) -> Check {
    let n = u(rng, 3000);
    let extreme = u(rng, 3) == 0;
    let x: Vec<T> = acts(rng, n, extreme);
    let zx = acts::<T>(rng, 1, false)[0].get();
    let want = x.iter().fold((0i64, 0i64), |(s, q), v| {
        let d = (v.get() - zx) as i64;
        (s + d, q + d * d)
    });
    for isa in isas() {
        // SAFETY: `isas` lists levels up to the CPU's
        if unsafe { super::reference::norm::moments_on(&x, zx, isa) } != want {
            return Err(format!(
                "groupnorm sums of {n} values ({}, {isa:?}) differ from the direct loop",
                core::any::type_name::<T>()
            ));
        }
    }
    Ok(1)
}

/// The int8 table lookup as run (NEON on aarch64, AVX-512 VBMI on x86 where present) against a
/// direct loop.
fn lut_case(rng: &mut Rng) -> Check {
    let n = u(rng, 100);
    let x: Vec<i8> = acts(rng, n, false);
    let table: Vec<u8> = (0..256).map(|_| rng.next_u64() as u8).collect();
    let mut got = vec![0i8; n];
    super::reference::eltwise::lut(&x, &table, &mut got).map_err(|e| format!("lut: {e}"))?;
    if (0..n).any(|i| got[i] != table[(x[i] as i32 + 128) as usize] as i8) {
        return Err(format!(
            "int8 table lookup of {n} values differs from the direct loop"
        ));
    }
    Ok(1)
}

/// The int16 table's interpolation as run (AVX-512 and AVX2 on x86 where present) against a direct loop,
/// on random points (extremes included: a hostile file's table) and codes.
fn lut16_case<U: Code>(rng: &mut Rng) -> Check {
    let n = u(rng, 100);
    let extreme = u(rng, 3) == 0;
    let x: Vec<i16> = acts(rng, n, extreme);
    let points: Vec<i32> = (0..257)
        .map(|_| match u(rng, 8) {
            0 => i32::MIN,
            1 => i32::MAX,
            2 => rng.next_u64() as i32,
            _ => (rng.next_u64() % (1 << 24)) as i32 - (1 << 23),
        })
        .collect();
    let table: Vec<u8> = points.iter().flat_map(|p| p.to_le_bytes()).collect();
    for isa in isas() {
        let mut got = vec![U::default(); n];
        // SAFETY: `isas` lists levels up to the CPU's
        unsafe { super::reference::eltwise::lut_16_on(&x, &table, &mut got, isa) }
            .map_err(|e| format!("lut16: {e}"))?;
        lut16_matches(&x, &points, &got).map_err(|e| format!("{e} ({isa:?})"))?;
    }
    Ok(1)
}

/// `got` against the int16 table's rule on `points`.
fn lut16_matches<U: Code>(
    x: &[i16],
    points: &[i32],
    got: &[U],
) -> core::result::Result<(), String> {
    let n = x.len();
    for (i, (&v, g)) in x.iter().zip(got).enumerate() {
        let u = (v as i32 + 32768) as usize;
        let (k, f) = (u >> 8, (u & 255) as i64);
        let sum = points[k] as i64 * (256 - f) + points[k + 1] as i64 * f;
        let want = U::sat(super::round_shift(sum, 16));
        if g.get() != want.get() {
            return Err(format!(
                "int16 table interpolation of {n} values to {}: #{i} gives {}, not {}",
                core::any::type_name::<U>(),
                g.get(),
                want.get()
            ));
        }
    }
    Ok(())
}

/// 4-bit weights unpacked on each tier (whole SIMD runs and the rest) against the specification.
fn unpack_case(rng: &mut Rng, tiers: &[Tier]) -> Check {
    let n = u(rng, 200);
    let src: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
    let mut want = vec![0i8; 2 * n];
    super::gemm::unpack4_scalar(&src, &mut want);
    for &t in tiers {
        let mut got = vec![0i8; 2 * n];
        super::gemm::unpack4(t, &src, &mut got).map_err(|e| format!("unpack4: {e}"))?;
        if got != want {
            return Err(format!(
                "tier {t:?}: 4-bit unpack of {n} bytes differs from the specification"
            ));
        }
    }
    Ok(tiers.len())
}

/// A convolution's sums on `tier` (staged as that tier stages).
#[allow(clippy::too_many_arguments)]
fn conv_sums<T: Code>(
    tier: Tier,
    x: &[T],
    g: &ImageStage,
    zx: T,
    w: &[i8],
    co: usize,
    k: (usize, usize),
    s: (usize, usize),
    o: (usize, usize),
    epi: Option<&Epilogue<'_>>,
) -> core::result::Result<Vec<i64>, String> {
    let px = g.pixels(k, s, o);
    let exact = T::MAX > 127;
    let e = |e: crate::Error| format!("{e}");
    if stage::stage_elem(tier, core::mem::size_of::<T>()) == 2 {
        let mut st = vec![0i16; g.len()];
        stage::image(tier, x, g, i16::sat(zx.get() as i64), &mut st).map_err(e)?;
        sums(tier, w, co, &st, px, exact, epi)
    } else {
        let mut st = vec![T::default(); g.len()];
        stage::image(tier, x, g, zx, &mut st).map_err(e)?;
        sums(tier, w, co, &st, px, exact, epi)
    }
}

/// The specification of a convolution's sums, as a direct loop.
fn conv_direct<T: Code>(
    x: &[T],
    g: &ImageStage,
    zx: T,
    w: &[i8],
    co: usize,
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<i64> {
    let (c4, k4) = (g.c4(), kh * kw * g.c4());
    let mut out = vec![0i64; co * oh * ow];
    for r in 0..co {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut s32, mut s64) = (0i32, 0i64);
                for ky in 0..kh {
                    for kx in 0..kw {
                        for ci in 0..g.c {
                            let (iy, ix) = (
                                (oy * sh + ky) as isize - g.pad[0] as isize,
                                (ox * sw + kx) as isize - g.pad[1] as isize,
                            );
                            let v = if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                            {
                                zx.get()
                            } else {
                                x[(ci * g.h + iy as usize) * g.w + ix as usize].get()
                            };
                            let wv = w[packed_index(r, (ky * kw + kx) * c4 + ci, k4)] as i32;
                            s32 = s32.wrapping_add(wv * v);
                            s64 += wv as i64 * v as i64;
                        }
                    }
                }
                out[(r * oh + oy) * ow + ox] = if T::MAX > 127 { s64 } else { s32 as i64 };
            }
        }
    }
    out
}

fn conv_case<T: Code>(rng: &mut Rng, tiers: &[Tier], case: usize) -> Check {
    // one case in 4 larger: more than one chunk of pixels and more than one row group of the
    // 512-bit tiles (their weights and epilogue constants are kept across chunks)
    let big = if u(rng, 4) == 0 { 2 } else { 1 };
    // in one case in 8, 16 or more channels and a width of 16 or 32 (the AVX-512 tier stages
    // such images in runs of 64 pixels across rows)
    let runs = u(rng, 8) == 0;
    let (c, h, w, co) = (
        if runs {
            16 + u(rng, 24)
        } else {
            1 + u(rng, 24)
        },
        1 + u(rng, 12 * big as u64),
        if runs {
            16 * (1 + u(rng, 2))
        } else {
            1 + u(rng, 12 * big as u64)
        },
        1 + u(rng, 20 * big as u64 + 8 * (big as u64 - 1)),
    );
    let k = [1usize, 2, 3, 5][u(rng, 4)];
    let st = 1 + u(rng, 2);
    let p = u(rng, 3).min(k.saturating_sub(1));
    if h + 2 * p < k || w + 2 * p < k {
        return Ok(0);
    }
    let (oh, ow) = ((h + 2 * p - k) / st + 1, (w + 2 * p - k) / st + 1);
    let g = ImageStage {
        c,
        h,
        w,
        pad: [p, p, p, p],
    };
    let (c4, k4) = (g.c4(), k * k * g.c4());
    let bits = if case % 4 == 3 { 4 } else { 8 };
    let wt = weights(rng, co, k * k * c, |d| Some((d / c) * c4 + d % c), bits, k4);
    let x: Vec<T> = acts(rng, c * h * w, case % 3 == 0);
    let zx = acts::<T>(rng, 1, false)[0];
    let want = conv_direct(&x, &g, zx, &wt, co, (k, k), (st, st), (oh, ow));
    let re = RandomEpilogue::new(rng, co, oh * ow, case);
    let want_codes = re.codes(&want, oh * ow, T::MAX > 127);
    for &t in tiers {
        for (epi, want) in [(None, &want), (Some(&re.get()), &want_codes)] {
            let got = conv_sums(t, &x, &g, zx, &wt, co, (k, k), (st, st), (oh, ow), epi)?;
            if got != *want {
                let what = if epi.is_some() { "codes" } else { "sums" };
                return Err(format!("tier {t:?}: conv c {c} h {h} w {w} co {co} k {k} s {st} p {p} ({}) {what} differ from the specification", core::any::type_name::<T>()));
            }
        }
    }
    Ok(2 * tiers.len())
}

/// Rows of depth `k` read with strides `s` (token- or channel-major), times packed weights; and the
/// same with the operand packed from an activation matrix (attention).
fn rows_case<T: Code>(rng: &mut Rng, tiers: &[Tier], case: usize) -> Check {
    // one case in 8 deeper than a tier's blocks of weights prepared at a time (x86: 1024)
    let deep = if u(rng, 8) == 0 { 2000 } else { 300 };
    // many tokens in one case in 6 (the 64-pixel staging blocks of the AVX-512 tier)
    let m = if u(rng, 6) == 0 {
        64 + u(rng, 100)
    } else {
        1 + u(rng, 40)
    };
    let (mut n, k) = (1 + u(rng, 24), 1 + u(rng, deep));
    let s = if case % 2 == 0 { [k, 1] } else { [1, m] };
    let x: Vec<T> = acts(rng, m * k, case % 3 == 0);
    let k4 = pad4(k);
    let wt = if case % 5 == 0 {
        // an attention operand packed at run time from int8 codes stored [k][n]
        let b: Vec<i8> = acts(rng, k * n, false);
        let mut w = vec![0i8; pad4(n) * k4];
        stage::pack_operand(&b, n, k, [n, 1], &mut w).map_err(|e| format!("{e}"))?;
        w
    } else if case % 5 == 1 {
        // an int16 attention operand as two planes of int8 (rows of both planes, padding too)
        let b: Vec<i16> = acts(rng, k * n, case % 3 == 1);
        let mut w = vec![0i8; 2 * pad4(n) * k4];
        stage::pack_operand_i16(&b, n, k, [1, k], &mut w).map_err(|e| format!("{e}"))?;
        n = 2 * pad4(n);
        w
    } else {
        weights(rng, n, k, Some, 8, k4)
    };
    let exact = T::MAX > 127;
    let want: Vec<i64> = (0..n * m)
        .map(|i| {
            let (r, p) = (i / m, i % m);
            let (mut s32, mut s64) = (0i32, 0i64);
            for q in 0..k {
                let (wv, v) = (
                    wt[packed_index(r, q, k4)] as i32,
                    x[p * s[0] + q * s[1]].get(),
                );
                s32 = s32.wrapping_add(wv * v);
                s64 += wv as i64 * v as i64;
            }
            if exact {
                s64
            } else {
                s32 as i64
            }
        })
        .collect();
    let e = |e: crate::Error| format!("{e}");
    let re = RandomEpilogue::new(rng, n, m, case);
    let want_codes = re.codes(&want, m, exact);
    for &t in tiers {
        for (epi, want) in [(None, &want), (Some(&re.get()), &want_codes)] {
            let got = if stage::stage_elem(t, core::mem::size_of::<T>()) == 2 {
                let mut st = vec![0i16; m * k4];
                stage::rows(t, &x, m, k, s, &mut st).map_err(e)?;
                sums(t, &wt, n, &st, Pixels::rows(m, k4, k4), exact, epi)?
            } else {
                let mut st = vec![T::default(); m * k4];
                stage::rows(t, &x, m, k, s, &mut st).map_err(e)?;
                sums(t, &wt, n, &st, Pixels::rows(m, k4, k4), exact, epi)?
            };
            if got != *want {
                let what = if epi.is_some() { "codes" } else { "sums" };
                return Err(format!("tier {t:?}: rows m {m} n {n} k {k} strides {s:?} ({}) {what} differ from the specification", core::any::type_name::<T>()));
            }
        }
    }
    Ok(2 * tiers.len())
}

/// Runs `cases` random cases of the product engine on each of `tiers` and compares with the direct
/// specification bit for bit. Returns the number of comparisons, or what differed.
pub fn tiers_match_scalar(
    tiers: &[Tier],
    cases: usize,
    seed: u64,
) -> core::result::Result<usize, String> {
    let mut rng = Rng::new(seed);
    let mut checked = 0usize;
    let mut all = vec![Tier::Scalar];
    all.extend(tiers.iter().copied().filter(|t| *t != Tier::Scalar));
    for case in 0..cases {
        checked += conv_case::<i8>(&mut rng, &all, case)?;
        checked += conv_case::<i16>(&mut rng, &all, case)?;
        checked += rows_case::<i8>(&mut rng, &all, case)?;
        checked += rows_case::<i16>(&mut rng, &all, case)?;
        checked += write_case::<i8>(&mut rng)?;
        checked += write_case::<i16>(&mut rng)?;
        checked += affine_case::<i8, i8>(&mut rng)?
            + affine_case::<i16, i8>(&mut rng)?
            + affine_case::<i8, i16>(&mut rng)?
            + affine_case::<i16, i16>(&mut rng)?;
        checked +=
            lut_case(&mut rng)? + moments_case::<i8>(&mut rng)? + moments_case::<i16>(&mut rng)?;
        checked += lut16_case::<i8>(&mut rng)? + lut16_case::<i16>(&mut rng)?;
        checked += unpack_case(&mut rng, &all)?;
    }
    // long products of extreme values: int16 lanes widen before they overflow
    for k in [1000usize, 4099] {
        let x = vec![i16::MIN; k];
        let w = vec![-127i8; 4 * pad4(k)];
        let st: Vec<i16> = x
            .iter()
            .copied()
            .chain(core::iter::repeat_n(0, pad4(k) - k))
            .collect();
        let want = 127i64 * 32768 * k as i64;
        for &t in &all {
            // staged as the tier stages
            let mut st = st.clone();
            stage::split_i16(t, &mut st);
            let got = sums(t, &w, 4, &st, Pixels::rows(1, pad4(k), pad4(k)), true, None)?;
            if got.iter().any(|&v| v != want) {
                return Err(format!(
                    "tier {t:?}: extreme int16 product of depth {k} gives {got:?}, not {want}"
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}
