//! Conv2d: NCHW integer convolution with packed per-output-channel weights, an int32 bias (input zero
//! point folded in), per-channel requantization and an optional f32 bias from the timestep path.
//! Runs on the product engine: the input image is staged NHWC with a zero-point border, and every
//! output pixel's patch is read in place from the stage (no im2col).
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{Conv2d, DType, TRef};
use crate::kernels::gemm::{self, Epilogue, Finish, Product, Requants};
use crate::kernels::reference::Code;
use crate::kernels::stage::{self, ImageStage};
use crate::kernels::{check_len, le_f32, le_i32, Exec};
use crate::{Error, Result};
use core::ops::Range;

/// Geometry of a convolution over one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvDims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// top, left, bottom, right
    pub pad: [usize; 4],
    pub oh: usize,
    pub ow: usize,
}

impl ConvDims {
    /// The staged input image.
    pub fn stage(&self) -> ImageStage {
        ImageStage {
            c: self.c,
            h: self.h,
            w: self.w,
            pad: self.pad,
        }
    }
    /// Depth of the packed weights: every tap's channels padded to a multiple of 4.
    pub fn k4(&self) -> usize {
        self.kh * self.kw * gemm::pad4(self.c)
    }
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
}

/// The scratch of a convolution, in this order, each 16-byte aligned: the staged input (room for
/// i16 values whatever the tier), the unpacked weights of a 4-bit layer, the combined bias when a
/// time bias is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scratch {
    pub stage: usize,
    pub weights: usize,
    pub bias: usize,
}

impl Scratch {
    pub fn of(d: &ConvDims, bits: u8, time_bias: bool) -> Scratch {
        let a = |n: usize| n.div_ceil(16) * 16;
        Scratch {
            stage: a(d.stage().len() * 2),
            weights: if bits == 4 { a(gemm::pad4(d.co) * d.k4()) } else { 0 },
            bias: if time_bias { a(4 * d.co) } else { 0 },
        }
    }
    pub fn total(&self) -> usize {
        self.stage + self.weights + self.bias
    }
}

/// Arena scratch a conv needs (see [`Scratch`]).
pub fn scratch_bytes(d: &ConvDims, bits: u8, time_bias: bool) -> usize {
    Scratch::of(d, bits, time_bias).total()
}

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    /// images in the batch
    n: usize,
    d: ConvDims,
    bits: u8,
    weights: &'a [u8],
    bias: &'a [u8],
    requant: &'a [u8],
    /// the timestep path's f32 bias and its per-channel scale
    time: Option<(View, &'a [u8])>,
    scratch: Range<usize>,
    parts: Scratch,
    /// the largest row sum of |weight| (see [`Product::wsum`]), found for int16 inputs only
    wsum: u64,
}

/// The convolution geometry of a record, derived from its tensors' shapes (NCHW, equal batch) and
/// checked so that sizes derived from it stay below 2^32.
pub fn dims(cx: &Cx<'_>, input: &View, output: &View, r: &Conv2d<TRef>) -> Result<ConvDims> {
    let (i, o) = (input.dims(), output.dims());
    if input.rank != 4 || output.rank != 4 || i[0] != o[0] {
        return Err(cx.err("conv tensors must be NCHW with equal batch"));
    }
    let (kh, kw) = (r.kernel[0] as usize, r.kernel[1] as usize);
    let (sh, sw) = (r.stride[0] as usize, r.stride[1] as usize);
    if kh == 0 || kw == 0 || sh == 0 || sw == 0 {
        return Err(cx.err("conv kernel and stride must be positive"));
    }
    let pad = r.pad.map(|p| p as usize);
    let (ph, pw) = (i[2] as u64 + pad[0] as u64 + pad[2] as u64, i[3] as u64 + pad[1] as u64 + pad[3] as u64);
    if ph < kh as u64 || pw < kw as u64 {
        return Err(cx.err("conv kernel larger than padded input"));
    }
    let (oh, ow) = ((ph - kh as u64) / sh as u64 + 1, (pw - kw as u64) / sw as u64 + 1);
    if oh != o[2] as u64 || ow != o[3] as u64 {
        return Err(cx.err("conv output shape does not match its geometry"));
    }
    let c4 = gemm::pad4(i[1]) as u64;
    let k4 = kh as u64 * kw as u64 * c4;
    let staged = ph * pw * c4 * 2;
    if k4 * gemm::pad4(o[1]) as u64 > u32::MAX as u64 || staged > u32::MAX as u64 {
        return Err(cx.err("conv geometry too large"));
    }
    Ok(ConvDims {
        c: i[1],
        h: i[2],
        w: i[3],
        co: o[1],
        kh,
        kw,
        sh,
        sw,
        pad,
        oh: oh as usize,
        ow: ow as usize,
    })
}

/// Packed weights of `n` rows and depth `k4`: 8-bit codes in [-127, 127] (the NEON tiles rely on
/// it) or 4-bit.
pub(crate) fn weights<'a>(cx: &Cx<'a>, bits: u8, blob: &crate::format::BlobRef, n: usize, k4: usize) -> Result<&'a [u8]> {
    if bits != 8 && bits != 4 {
        return Err(cx.err("weights must be 8 or 4 bits"));
    }
    let w = cx.blob(blob, gemm::packed_bytes(bits, n, k4))?;
    // (a fold without early exit: vectorized, unlike `contains`)
    if bits == 8 && w.iter().fold(false, |a, &b| a | (b == 0x80)) {
        return Err(cx.err("8-bit weights must be in [-127, 127]"));
    }
    Ok(w)
}

pub fn prepare<'a>(r: &Conv2d<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    let d = dims(cx, &input, &output, r)?;
    let w = weights(cx, r.weight_bits, &r.weights, d.co, d.k4())?;
    let bias = cx.blob(&r.bias, d.co * 4)?;
    let requant = cx.requant_table(&r.requant, d.co)?;
    let time = match &r.time_bias {
        Some(tb) => {
            let v = cx.view(tb, DType::F32)?;
            cx.disjoint(&output, &[&v])?;
            if v.numel() != d.co {
                return Err(cx.err("conv time bias must have one value per output channel"));
            }
            Some((v, cx.blob(&r.time_scale, d.co * 4)?))
        }
        None => None,
    };
    let parts = Scratch::of(&d, r.weight_bits, time.is_some());
    let mut apart = [&output, &input, &input];
    if let Some((tb, _)) = &time {
        apart[2] = tb;
    }
    let scratch = cx.scratch(r.scratch, parts.total(), &apart)?;
    Ok(Plan {
        n: input.dim(0),
        input,
        output,
        d,
        bits: r.weight_bits,
        weights: w,
        bias,
        requant,
        time,
        scratch,
        parts,
        wsum: if input.dtype == DType::I16 { gemm::abs_row_sum_max(r.weight_bits, w, d.co, d.k4()) } else { u64::MAX },
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, s, io) = carve(arena, self.output.range(), Some(self.scratch.clone()))?;
        let s = s.ok_or(Error::Invalid {
            op: u32::MAX,
            what: "conv scratch",
        })?;
        let (stage_b, rest) = s.split_at_mut(self.parts.stage);
        let (wbuf, bias_buf) = rest.split_at_mut(self.parts.weights);
        let w: &[i8] = if self.bits == 4 {
            let w = &mut bytemuck::cast_slice_mut::<u8, i8>(wbuf)[..gemm::pad4(self.d.co) * self.d.k4()];
            gemm::unpack4(ex.tier, self.weights, w)?;
            w
        } else {
            bytemuck::cast_slice(self.weights)
        };
        let mut bias = self.bias;
        if let Some((tb, ts)) = &self.time {
            bias = combine_bias(self.bias, io.f32(tb)?, ts, &mut bias_buf[..4 * self.d.co])?;
        }
        let call = Call {
            ex,
            d: &self.d,
            zx: self.input.zero,
            w,
            bias,
            requant: self.requant,
            zo: self.output.zero,
            wsum: self.wsum,
        };
        crate::with_io!(io.ints(&self.input)?, out_ints(o, self.output.dtype)?, |x, y| {
            (0..self.n).try_for_each(|b| call.image(x, y, b, stage_b))
        })
    }
    fn work(&self) -> u64 {
        let d = &self.d;
        [self.n, d.co, d.k4(), d.p()]
            .iter()
            .fold(1u64, |a, &b| a.saturating_mul(b as u64))
    }
    fn output(&self) -> &View {
        &self.output
    }
}

/// The int32 bias plus `rint(time_bias[c] * time_scale[c])`, written into `buf`.
fn combine_bias<'b>(bias: &[u8], tb: &[f32], ts: &[u8], buf: &'b mut [u8]) -> Result<&'b [u8]> {
    let co = tb.len();
    check_len(4 * co, buf.len())?;
    check_len(4 * co, bias.len())?;
    check_len(4 * co, ts.len())?;
    for c in 0..co {
        let add = libm::rintf(tb[c] * le_f32(ts, c)).clamp(-1.0e9, 1.0e9) as i32;
        let v = le_i32(bias, c).wrapping_add(add);
        buf[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    Ok(buf)
}

/// One run's operands besides the activations.
struct Call<'c> {
    ex: Exec,
    d: &'c ConvDims,
    zx: i32,
    w: &'c [i8],
    bias: &'c [u8],
    requant: &'c [u8],
    zo: i32,
    wsum: u64,
}

impl Call<'_> {
    /// Image `b` of the batch: staged (as i16 on the AVX2 tier, in the input's codes otherwise),
    /// then output channels split across threads, each part writing its channel planes.
    fn image<T: Code, U: Code>(&self, x: &[T], y: &mut [U], b: usize, stage_b: &mut [u8]) -> Result<()> {
        let d = self.d;
        let (isz, osz) = (d.c * d.h * d.w, d.co * d.p());
        let xb = x.get(b * isz..(b + 1) * isz).ok_or(Error::BufferLength {
            expected: (b + 1) * isz,
            got: x.len(),
        })?;
        let yb = y.get_mut(b * osz..(b + 1) * osz).ok_or(Error::BufferLength {
            expected: (b + 1) * osz,
            got: 0,
        })?;
        let g = d.stage();
        if stage::stage_elem(self.ex.tier, core::mem::size_of::<T>()) == 2 {
            let st: &mut [i16] = bytemuck::try_cast_slice_mut(&mut stage_b[..g.len() * 2]).map_err(|_| misaligned())?;
            self.stage(xb, &g, i16::sat(self.zx as i64), st)?;
            self.product(&*st, yb, T::MAX > 127)
        } else {
            let st: &mut [T] = bytemuck::try_cast_slice_mut(&mut stage_b[..g.len() * core::mem::size_of::<T>()]).map_err(|_| misaligned())?;
            self.stage(xb, &g, T::sat(self.zx as i64), st)?;
            self.product(&*st, yb, T::MAX > 127)
        }
    }

    /// Stages an image, its rows split across threads (each row staged as in one call).
    fn stage<T: Code, S: Code>(&self, xb: &[T], g: &ImageStage, zx: S, st: &mut [S]) -> Result<()> {
        let tier = self.ex.tier;
        self.ex.par_rows(g.hp(), g.wp() * g.c4(), 2 * g.len(), st, |r0, nr, part| {
            crate::kernels::on_tier(tier, || stage::image_rows(tier, xb, g, zx, r0..r0 + nr, part))
        })
    }

    fn product<S: Code, U: Code>(&self, st: &[S], y: &mut [U], wide: bool) -> Result<()> {
        let d = self.d;
        let prod = Product {
            w: self.w,
            n: d.co,
            stage: st,
            px: d.stage().pixels((d.kh, d.kw), (d.sh, d.sw), (d.oh, d.ow)),
            exact: wide,
            full_range: false,
            wsum: self.wsum,
        };
        let epi = Epilogue::new::<U>(self.bias, Requants::PerRow(self.requant), self.zo);
        let p = d.p();
        let macs = d.co * d.k4() * p;
        self.ex.par_rows(d.co, p, macs, y, |r0, nr, part| {
            let mut res = Ok(());
            gemm::run_rows(self.ex.tier, &prod, (r0, gemm::pad4(r0 + nr)), Finish::Codes(&epi), |t| {
                if res.is_ok() {
                    res = t.write(part, r0, p, 1);
                }
            })?;
            res
        })
    }
}

fn misaligned() -> Error {
    Error::Invalid {
        op: u32::MAX,
        what: "a tensor view is misaligned",
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// One conv case: NCHW float reference on the dequantized input and weights.
    struct Case {
        c: usize,
        h: usize,
        w: usize,
        co: usize,
        k: usize,
        s: usize,
        p: usize,
    }

    impl Case {
        fn out_hw(&self) -> (usize, usize) {
            let o = |d: usize| (d + 2 * self.p - self.k) / self.s + 1;
            (o(self.h), o(self.w))
        }
        fn reference(&self, x: &[f32], w: &[f32], bias: &[f32]) -> Vec<f32> {
            let (oh, ow) = self.out_hw();
            let (c, h, wd, k) = (self.c, self.h, self.w, self.k);
            let mut out = vec![0f32; self.co * oh * ow];
            for o in 0..self.co {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[o] as f64;
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * self.s + ky) as isize - self.p as isize;
                                    let ix = (ox * self.s + kx) as isize - self.p as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[(ci * h + iy as usize) * wd + ix as usize] as f64;
                                    acc += xv * w[((o * c + ci) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        out[(o * oh + oy) * ow + ox] = acc as f32;
                    }
                }
            }
            out
        }
        /// Runs the case through a `Conv2d` record on every tier with `bits`-bit weights and
        /// `dt` input/output codes; returns the worst code difference to the float reference
        /// (and checks that every tier gives the scalar tier's bits).
        fn run(&self, rng: &mut Rng, bits: u8, dt: DType) -> i32 {
            let (oh, ow) = self.out_hw();
            let kk = self.c * self.k * self.k;
            let qmax = if bits == 4 { 7 } else { 127 };
            let wq: Vec<i8> = (0..self.co * kk)
                .map(|_| ((rng.next_u64() % (2 * qmax + 1)) as i32 - qmax as i32) as i8)
                .collect();
            let ws: Vec<f32> = (0..self.co).map(|_| uni(rng, 0.001, 0.02)).collect();
            let bias: Vec<f32> = (0..self.co).map(|_| uni(rng, -1.0, 1.0)).collect();
            let (lo, hi) = (uni(rng, -3.0, -0.5), uni(rng, 0.5, 3.0));
            let qx = params(dt, lo, hi);
            let xr: Vec<f32> = (0..self.c * self.h * self.w).map(|_| uni(rng, lo, hi)).collect();
            // the reference sees exactly the dequantized codes
            let xq: Vec<f32> = xr.iter().map(|&v| (quant(v, qx, dt) - qx.1) as f32 * qx.0).collect();
            let wr: Vec<f32> = wq.iter().enumerate().map(|(i, &v)| v as f32 * ws[i / kk]).collect();
            let real = self.reference(&xq, &wr, &bias);
            let qo = out_params(&real, dt);
            let (bq, rq) = fold(&wq, &ws, &bias, qx, qo.0);
            let mut results = vec![];
            for tier in tiers() {
                let mut b = Bench::new();
                let (c, h, w, co) = (self.c as u32, self.h as u32, self.w as u32, self.co as u32);
                let input = b.tensor(dt, &[1, c, h, w], qx.0, qx.1);
                let output = b.tensor(dt, &[1, co, oh as u32, ow as u32], qo.0, qo.1);
                let dims = super::ConvDims {
                    c: self.c,
                    h: self.h,
                    w: self.w,
                    co: self.co,
                    kh: self.k,
                    kw: self.k,
                    sh: self.s,
                    sw: self.s,
                    pad: [self.p; 4],
                    oh,
                    ow,
                };
                let scratch = b.scratch(super::scratch_bytes(&dims, bits, false) as u32);
                put_real(&mut b, &input, &xr);
                let packed = pack_conv(&wq, self.co, self.c, self.k, self.k);
                let weights = if bits == 4 {
                    b.array(&pack4(&packed))
                } else {
                    b.i8s(&packed)
                };
                let (k, s, p) = (self.k as u16, self.s as u16, self.p as u16);
                let rec = Op::Conv2d(Conv2d {
                    input,
                    output: output.clone(),
                    weight_bits: bits,
                    weights,
                    bias: b.i32s(&bq),
                    requant: b.requants(&rq),
                    time_bias: None,
                    time_scale: b.array(&[]),
                    kernel: [k, k],
                    stride: [s, s],
                    pad: [p, p, p, p],
                    scratch,
                });
                let mut b2 = b.clone();
                b.run_with(rec.clone(), tier);
                results.push(get_ints(&mut b, &output));
                // two threads (staging and products split when large enough): the same bytes
                b2.run_threads(rec, tier, 2);
                results.push(get_ints(&mut b2, &output));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "tiers or thread counts differ");
            worst(&results[0], &real, qo, dt)
        }
    }

    #[test]
    fn int8_conv_matches_the_float_reference_on_every_tier() {
        let mut rng = Rng::new(1);
        for case in 0..25 {
            let k = [1usize, 3][case % 2];
            // the last case is large enough to split across threads
            let big = case == 24;
            let c = Case {
                c: if big { 16 } else { 1 + case % 4 },
                h: if big { 96 } else { 3 + (rng.next_u64() % 6) as usize },
                w: if big { 96 } else { 3 + (rng.next_u64() % 6) as usize },
                co: 1 + (rng.next_u64() % 6) as usize,
                k,
                s: 1 + (case / 2) % 2,
                p: if k == 3 { (case / 4) % 2 } else { 0 },
            };
            let worst = c.run(&mut rng, 8, DType::I8);
            assert!(worst <= 1, "case {case}: worst difference {worst} codes");
        }
    }

    #[test]
    fn int16_conv_and_four_bit_weights_match_the_float_reference() {
        let mut rng = Rng::new(21);
        for (case, (bits, dt)) in [(8, DType::I16), (4, DType::I8), (4, DType::I16)]
            .into_iter()
            .cycle()
            .take(9)
            .enumerate()
        {
            let c = Case {
                c: 1 + case % 3,
                h: 5,
                w: 4 + case % 3,
                co: 2 + case % 4,
                k: 3,
                s: 1,
                p: 1,
            };
            let worst = c.run(&mut rng, bits, dt);
            assert!(worst <= 1, "case {case} ({bits}-bit, {dt:?}): worst {worst} codes");
        }
    }
}
