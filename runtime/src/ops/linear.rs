//! Linear: a product with constant packed weights (`n` rows of depth `k`) over strided activations
//! (linear layers, 1×1 convolutions of channel-major tokens), int32 bias with the zero point folded
//! in, per-row requantization. The activations are staged as rows of depth `k` padded to a multiple
//! of 4, then the product engine runs.
use super::conv2d::weights;
use super::{Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{DType, Linear, TRef};
use crate::kernels::gemm::{self, Epilogue, Finish, Pixels, Product, Requants};
use crate::kernels::reference::Code;
use crate::kernels::{stage, Exec};
use crate::{Error, Result};
use core::ops::Range;

/// Scratch of a linear, each part 16-byte aligned: the staged rows (room for i16 values), the
/// unpacked weights of a 4-bit layer.
pub fn scratch_bytes(m: usize, n: usize, k: usize, bits: u8) -> usize {
    let a = |v: usize| v.div_ceil(16) * 16;
    a(m * gemm::pad4(k) * 2) + if bits == 4 { a(gemm::pad4(n) * gemm::pad4(k)) } else { 0 }
}

#[derive(Debug, Clone)]
pub struct Plan<'a> {
    input: View,
    output: View,
    m: usize,
    n: usize,
    k: usize,
    a_s: [usize; 2],
    o_s: [usize; 2],
    bits: u8,
    weights: &'a [u8],
    bias: &'a [u8],
    requant: &'a [u8],
    scratch: Range<usize>,
    /// the largest row sum of |weight| (see [`Product::wsum`]), found for int16 inputs only
    wsum: u64,
}

pub fn prepare<'a>(r: &Linear<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let input = cx.int(&r.input)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&input])?;
    let g = &r.geom;
    cx.fits(&[g.m, g.k], &g.a_strides, input.numel())?;
    cx.distinct(&[g.m, g.n], &g.o_strides, output.numel())?;
    let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
    let k4 = gemm::pad4(k);
    if gemm::pad4(n) as u64 * k4 as u64 > u32::MAX as u64 || m as u64 * k4 as u64 * 2 > u32::MAX as u64 {
        return Err(cx.err("linear too large"));
    }
    let w = weights(cx, r.weight_bits, &r.weights, n, k4)?;
    let bytes = scratch_bytes(m, n, k, r.weight_bits);
    let scratch = cx.scratch(r.scratch, bytes, &[&input, &output])?;
    Ok(Plan {
        input,
        output,
        m,
        n,
        k,
        a_s: g.a_strides.map(|s| s as usize),
        o_s: g.o_strides.map(|s| s as usize),
        bits: r.weight_bits,
        weights: w,
        bias: cx.blob(&r.bias, n * 4)?,
        requant: cx.requant_table(&r.requant, n)?,
        scratch,
        wsum: if input.dtype == DType::I16 { gemm::abs_row_sum_max(r.weight_bits, w, n, k4) } else { u64::MAX },
    })
}

impl PreparedOp for Plan<'_> {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, s, io) = carve(arena, self.output.range(), Some(self.scratch.clone()))?;
        let s = s.ok_or(misaligned())?;
        let k4 = gemm::pad4(self.k);
        let stage_bytes = (self.m * k4 * 2).div_ceil(16) * 16;
        let (stage_b, wbuf) = s.split_at_mut(stage_bytes);
        let w: &[i8] = if self.bits == 4 {
            let w = &mut bytemuck::cast_slice_mut::<u8, i8>(wbuf)[..gemm::pad4(self.n) * k4];
            gemm::unpack4(ex.tier, self.weights, w)?;
            w
        } else {
            bytemuck::cast_slice(self.weights)
        };
        crate::with_io!(io.ints(&self.input)?, out_ints(o, self.output.dtype)?, |x, y| {
            self.staged(ex, x, y, w, stage_b)
        })
    }
    fn work(&self) -> u64 {
        (self.m as u64 * self.n as u64).saturating_mul(gemm::pad4(self.k) as u64)
    }
    fn output(&self) -> &View {
        &self.output
    }
}

impl Plan<'_> {
    /// Stages the input rows (i16 on the AVX2 tier, the input's codes otherwise), then runs.
    fn staged<T: Code, U: Code>(&self, ex: Exec, x: &[T], y: &mut [U], w: &[i8], stage_b: &mut [u8]) -> Result<()> {
        let k4 = gemm::pad4(self.k);
        let epi = &Epilogue::new::<U>(self.bias, Requants::PerRow(self.requant), self.output.zero);
        let exact = T::MAX > 127;
        if stage::stage_elem(ex.tier, core::mem::size_of::<T>()) == 2 {
            let st: &mut [i16] = bytemuck::try_cast_slice_mut(&mut stage_b[..self.m * k4 * 2]).map_err(|_| misaligned())?;
            crate::kernels::on_tier(ex.tier, || stage::rows(ex.tier, x, self.m, self.k, self.a_s, st))?;
            self.product(ex, w, &*st, y, epi, exact)
        } else {
            let size = core::mem::size_of::<T>();
            let st: &mut [T] = bytemuck::try_cast_slice_mut(&mut stage_b[..self.m * k4 * size]).map_err(|_| misaligned())?;
            crate::kernels::on_tier(ex.tier, || stage::rows(ex.tier, x, self.m, self.k, self.a_s, st))?;
            self.product(ex, w, &*st, y, epi, exact)
        }
    }

    /// The product, split across threads by output rows (tokens) for a token-major output, by
    /// output channels for a channel-major one.
    fn product<S: Code, U: Code>(&self, ex: Exec, w: &[i8], st: &[S], y: &mut [U], epi: &Epilogue<'_>, exact: bool) -> Result<()> {
        let (m, n, k4, o_s) = (self.m, self.n, gemm::pad4(self.k), self.o_s);
        let macs = m.saturating_mul(n).saturating_mul(k4);
        if o_s[1] == 1 && o_s[0] >= n {
            ex.par_rows(m, o_s[0], macs, y, |m0, nm, part| {
                let prod = Product {
                    w,
                    n,
                    stage: st.get(m0 * k4..(m0 + nm) * k4).ok_or(bounds())?,
                    px: Pixels::rows(nm, k4, k4),
                    exact,
                    full_range: false,
                    wsum: self.wsum,
                };
                let mut res = Ok(());
                let epi = epi.by_pixel();
                gemm::run_rows(ex.tier, &prod, (0, gemm::pad4(n)), Finish::Codes(&epi), |t| {
                    if res.is_ok() {
                        res = t.write(part, 0, 1, o_s[0]);
                    }
                })?;
                res
            })
        } else if o_s[0] == 1 && o_s[1] >= m {
            let prod = Product { w, n, stage: st, px: Pixels::rows(m, k4, k4), exact, full_range: false, wsum: self.wsum };
            ex.par_rows(n, o_s[1], macs, y, |r0, nr, part| {
                let mut res = Ok(());
                gemm::run_rows(ex.tier, &prod, (r0, gemm::pad4(r0 + nr)), Finish::Codes(epi), |t| {
                    if res.is_ok() {
                        res = t.write(part, r0, o_s[1], 1);
                    }
                })?;
                res
            })
        } else {
            let prod = Product { w, n, stage: st, px: Pixels::rows(m, k4, k4), exact, full_range: false, wsum: self.wsum };
            let mut res = Ok(());
            gemm::run_rows(ex.tier, &prod, (0, gemm::pad4(n)), Finish::Codes(epi), |t| {
                if res.is_ok() {
                    res = t.write(y, 0, o_s[1], o_s[0]);
                }
            })?;
            res
        }
    }
}

fn bounds() -> Error {
    Error::BufferLength { expected: 0, got: 0 }
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

    /// Token-major (`A [m][k]`, out `[m][n]`) and channel-major (`A [k][m]`, out `[n][m]`: a 1×1
    /// conv of NCHW features) layouts, 8- and 4-bit weights, int8 and int16 activations.
    #[test]
    fn linear_matches_the_float_reference_in_both_layouts_on_every_tier() {
        let mut rng = Rng::new(2);
        for case in 0..16 {
            let (m, n, k) = (
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 9) as usize,
                1 + (rng.next_u64() % 40) as usize,
            );
            let (bits, dt) = [(8, DType::I8), (4, DType::I8), (8, DType::I16)][case % 3];
            let (a_s, o_s) = if case % 2 == 0 { ([k, 1], [n, 1]) } else { ([1, m], [1, m]) };
            let qmax = if bits == 4 { 7 } else { 127 };
            let wq: Vec<i8> = (0..n * k)
                .map(|_| ((rng.next_u64() % (2 * qmax + 1)) as i32 - qmax as i32) as i8)
                .collect();
            let ws: Vec<f32> = (0..n).map(|_| uni(&mut rng, 0.001, 0.02)).collect();
            let bias: Vec<f32> = (0..n).map(|_| uni(&mut rng, -0.5, 0.5)).collect();
            let qx = params(dt, -2.0, 3.0);
            let ar: Vec<f32> = (0..m * k).map(|_| uni(&mut rng, -2.0, 3.0)).collect();
            let aq: Vec<f32> = ar.iter().map(|&v| (quant(v, qx, dt) - qx.1) as f32 * qx.0).collect();
            let mut real = vec![0f32; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut acc = bias[j] as f64;
                    for l in 0..k {
                        acc += aq[i * a_s[0] + l * a_s[1]] as f64 * (ws[j] * wq[j * k + l] as f32) as f64;
                    }
                    real[i * o_s[0] + j * o_s[1]] = acc as f32;
                }
            }
            let qo = out_params(&real, dt);
            let (bq, rq) = fold(&wq, &ws, &bias, qx, qo.0);
            let mut results = vec![];
            for tier in tiers() {
                let mut b = Bench::new();
                let input = b.tensor(dt, &[(m * k) as u32], qx.0, qx.1);
                let output = b.tensor(dt, &[(m * n) as u32], qo.0, qo.1);
                put_real(&mut b, &input, &ar);
                let packed = pack_rows(&wq, n, k);
                let weights = if bits == 4 { b.array(&pack4(&packed)) } else { b.i8s(&packed) };
                let scratch = b.scratch(super::scratch_bytes(m, n, k, bits) as u32);
                let u = |s: [usize; 2]| s.map(|v| v as u32);
                let rec = Op::Linear(Linear {
                    input,
                    output: output.clone(),
                    geom: LinearGeom {
                        m: m as u32,
                        n: n as u32,
                        k: k as u32,
                        a_strides: u(a_s),
                        o_strides: u(o_s),
                    },
                    weight_bits: bits,
                    weights,
                    bias: b.i32s(&bq),
                    requant: b.requants(&rq),
                    scratch,
                });
                b.run_with(rec, tier);
                results.push(get_ints(&mut b, &output));
            }
            assert!(results.windows(2).all(|w| w[0] == w[1]), "case {case}: tiers differ");
            let worst = worst(&results[0], &real, qo, dt);
            assert!(worst <= 1, "case {case}: worst difference {worst} codes");
        }
    }
}
