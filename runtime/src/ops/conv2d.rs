//! Conv2d: NCHW integer convolution with per-output-channel weights, an int32 bias (input zero point
//! folded in), per-channel requantization and an optional f32 bias from the timestep path.
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{Conv2d, DType, TRef};
use crate::kernels::reference::conv::{self as reference, ConvDims};
use crate::kernels::reference::{weight_bytes, Code, Weights};
use crate::kernels::{check_len, le_f32, le_i32, packed, Exec, Tier};
use crate::{Error, Result};
use core::ops::Range;

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    /// images in the batch
    n: usize,
    d: ConvDims,
    weights: Weights<'a>,
    bias: &'a [u8],
    requant: &'a [u8],
    /// the timestep path's f32 bias and its per-channel scale
    time: Option<(View, &'a [u8])>,
    /// im2col scratch, then `4 * co` bytes for the combined bias when `time` is present
    scratch: Range<usize>,
}

/// Arena scratch a conv needs: im2col matrix (unless pointwise), then the combined int32 bias,
/// 4-aligned.
pub fn scratch_bytes(d: &ConvDims, time_bias: bool, elem: usize) -> usize {
    let col = if d.is_pointwise() {
        0
    } else {
        d.k() * d.p() * elem
    };
    if time_bias {
        col.div_ceil(4) * 4 + 4 * d.co
    } else {
        col
    }
}

/// The convolution geometry of a record, derived from its tensors' shapes (NCHW, equal batch) and
/// checked so that the im2col matrix and the weights stay below 2^32 elements.
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
    let (h, w) = (i[2], i[3]);
    let ph = h + r.pad[0] as usize + r.pad[2] as usize;
    let pw = w + r.pad[1] as usize + r.pad[3] as usize;
    if ph < kh || pw < kw {
        return Err(cx.err("conv kernel larger than padded input"));
    }
    let d = ConvDims {
        c: i[1],
        h,
        w,
        co: o[1],
        kh,
        kw,
        sh,
        sw,
        pt: r.pad[0] as usize,
        pl: r.pad[1] as usize,
        oh: (ph - kh) / sh + 1,
        ow: (pw - kw) / sw + 1,
    };
    if d.oh != o[2] || d.ow != o[3] {
        return Err(cx.err("conv output shape does not match its geometry"));
    }
    let k = d.c as u128 * kh as u128 * kw as u128;
    if k * d.p() as u128 > u32::MAX as u128 || k * d.co as u128 > u32::MAX as u128 {
        return Err(cx.err("conv geometry too large"));
    }
    Ok(d)
}

pub fn prepare<'a>(r: &Conv2d<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    let d = dims(cx, &input, &output, r)?;
    if r.weight_bits != 8 && r.weight_bits != 4 {
        return Err(cx.err("weights must be 8 or 4 bits"));
    }
    let w = cx.blob(&r.weights, weight_bytes(r.weight_bits, d.co, d.k()))?;
    let bias = cx.blob(&r.bias, d.co * 4)?;
    let requant = cx.requant_table(&r.requant, d.co)?;
    let time = match &r.time_bias {
        Some(tb) => {
            let v = cx.view(tb, DType::F32)?;
            if v.numel() != d.co {
                return Err(cx.err("conv time bias must have one value per output channel"));
            }
            Some((v, cx.blob(&r.time_scale, d.co * 4)?))
        }
        None => None,
    };
    let bytes = scratch_bytes(&d, time.is_some(), input.dtype.size());
    let mut apart = [&output, &input, &input];
    if let Some((tb, _)) = &time {
        apart[2] = tb;
    }
    let scratch = if bytes > 0 {
        cx.scratch(r.scratch, bytes, &apart)?
    } else {
        0..0
    };
    Ok(Plan {
        n: input.dim(0),
        input,
        output,
        d,
        weights: Weights::from_blob(r.weight_bits, w),
        bias,
        requant,
        time,
        scratch,
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let sr = (!self.scratch.is_empty()).then(|| self.scratch.clone());
        let (o, s, io) = carve(arena, self.output.range(), sr)?;
        let mut empty: [u8; 0] = [];
        let s = s.unwrap_or(&mut empty[..]);
        let co = self.d.co;
        let col_bytes = s.len() - if self.time.is_some() { 4 * co } else { 0 };
        let (col, bias_buf) = s.split_at_mut(col_bytes);
        let mut bias = self.bias;
        if let Some((tb, ts)) = &self.time {
            let tb = io.f32(tb)?;
            check_len(4 * co, bias_buf.len())?;
            check_len(co, tb.len())?;
            for c in 0..co {
                let add = libm::rintf(tb[c] * le_f32(ts, c)).clamp(-1.0e9, 1.0e9) as i32;
                let v = le_i32(self.bias, c).wrapping_add(add);
                bias_buf[c * 4..c * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            bias = bias_buf;
        }
        let c = Call {
            ex,
            n: self.n,
            d: &self.d,
            zx: self.input.zero,
            w: self.weights,
            bias,
            rq: self.requant,
            zo: self.output.zero,
        };
        crate::with_io!(io.ints(&self.input)?, out_ints(o, self.output.dtype)?, |x, y| {
            c.run(x, y, col)
        })
    }
    fn work(&self) -> u64 {
        [self.n, self.d.co, self.d.k(), self.d.p()]
            .iter()
            .fold(1u64, |a, &b| a.saturating_mul(b as u64))
    }
    fn output(&self) -> &View {
        &self.output
    }
}

/// One run's operands besides the activations.
struct Call<'c> {
    ex: Exec,
    n: usize,
    d: &'c ConvDims,
    zx: i32,
    w: Weights<'c>,
    bias: &'c [u8],
    rq: &'c [u8],
    zo: i32,
}

impl Call<'_> {
    fn run<T: Code, U: Code>(&self, x: &[T], o: &mut [U], col: &mut [u8]) -> Result<()> {
        let d = self.d;
        let (isz, osz) = (d.c * d.h * d.w, d.co * d.p());
        check_len(self.n * isz, x.len())?;
        check_len(self.n * osz, o.len())?;
        // SIMD tiers: int8 input and weights -> dot products over k, of a transposed im2col in
        // scratch or, for 1×1 convs, of the input read in place
        if let (true, Weights::I8(w8)) = (self.ex.tier != Tier::Scalar && T::MAX <= 127, self.w) {
            return self.dots(bytemuck::cast_slice(x), w8, o, col);
        }
        let col: &mut [T] = bytemuck::try_cast_slice_mut(col).map_err(|_| Error::Invalid {
            op: u32::MAX,
            what: "a tensor view is misaligned",
        })?;
        let zx = T::sat(self.zx as i64);
        let (k, p) = (d.k(), d.p());
        for b in 0..self.n {
            let xb = &x[b * isz..(b + 1) * isz];
            let src: &[T] = if d.is_pointwise() {
                xb
            } else {
                let got = col.len();
                let col = col.get_mut(..k * p).ok_or(Error::BufferLength {
                    expected: k * p,
                    got,
                })?;
                reference::im2col(xb, d, zx, col)?;
                col
            };
            // output channels split across threads (std): each part computes what one call would
            self.ex.par_rows(
                d.co,
                p,
                d.co * k * p,
                &mut o[b * osz..(b + 1) * osz],
                |r0, nr, part| {
                    reference::gemm_wk_kp(
                        self.w.rows(r0, nr, k)?,
                        src,
                        nr,
                        k,
                        p,
                        rows(self.bias, r0, nr, 4)?,
                        rows(self.rq, r0, nr, 8)?,
                        self.zo,
                        part,
                    )
                },
            )?;
        }
        Ok(())
    }

    fn dots<U: Code>(&self, x8: &[i8], w8: &[i8], o: &mut [U], col: &mut [u8]) -> Result<()> {
        let d = self.d;
        let (isz, osz) = (d.c * d.h * d.w, d.co * d.p());
        let (k, p) = (d.k(), d.p());
        check_len(d.co * k, w8.len())?;
        let got = col.len();
        let col8: &mut [i8] = bytemuck::cast_slice_mut(col);
        for b in 0..self.n {
            let xb = &x8[b * isz..(b + 1) * isz];
            let src: &[i8] = if d.is_pointwise() {
                xb
            } else {
                let col8 = col8.get_mut(..k * p).ok_or(Error::BufferLength {
                    expected: k * p,
                    got,
                })?;
                let zx8 = self.zx.clamp(-128, 127) as i8;
                // pixel ranges of the transposed im2col on the worker threads too (a copy: weighed
                // as a few multiply-accumulates per byte against the threading threshold)
                self.ex.par_rows(p, k, k * p * 8, col8, |p0, _, part| {
                    packed::im2col_t_rows(xb, d, zx8, p0, part)
                })?;
                col8
            };
            self.ex.par_rows(
                d.co,
                p,
                d.co * k * p,
                &mut o[b * osz..(b + 1) * osz],
                |r0, nr, part| {
                    packed::conv_dot(
                        self.ex.tier,
                        &w8[r0 * k..(r0 + nr) * k],
                        src,
                        !d.is_pointwise(),
                        nr,
                        k,
                        p,
                        rows(self.bias, r0, nr, 4)?,
                        rows(self.rq, r0, nr, 8)?,
                        self.zo,
                        part,
                    )
                },
            )?;
        }
        Ok(())
    }
}

/// Entries `r0..r0 + nr` of a per-row table with `size` bytes per entry (bias, requantization).
pub(crate) fn rows(b: &[u8], r0: usize, nr: usize, size: usize) -> Result<&[u8]> {
    b.get(r0 * size..(r0 + nr) * size)
        .ok_or(Error::BufferLength {
            expected: (r0 + nr) * size,
            got: b.len(),
        })
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
                let scratch = b.scratch((kk * oh * ow * dt.size()) as u32);
                put_real(&mut b, &input, &xr);
                let weights = if bits == 4 {
                    b.array(&pack4(&wq, self.co, kk))
                } else {
                    b.i8s(&wq)
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
                b.run_with(rec, tier);
                results.push(get_ints(&mut b, &output));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "tiers differ");
            worst(&results[0], &real, qo, dt)
        }
    }

    #[test]
    fn int8_conv_matches_the_float_reference_on_every_tier() {
        let mut rng = Rng::new(1);
        for case in 0..24 {
            let k = [1usize, 3][case % 2];
            let c = Case {
                c: 1 + case % 4,
                h: 3 + (rng.next_u64() % 6) as usize,
                w: 3 + (rng.next_u64() % 6) as usize,
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
