//! Every runtime op against a float reference on random shapes and values: the int8 result must be
//! within one or two codes of quantizing the float result computed from the same dequantized inputs.
use dmq_compiler::quant::{affine_params, requant_of, requant_pair};
use dmq_runtime::format::{BinaryKind, DType, Op, Requant, TRef, UnaryFn};
use dmq_runtime::kernels::scalar::{self, ConvDims, MatMulDims};
use dmq_runtime::kernels::{broadcast_strides, contiguous_strides, Tier};
use dmq_runtime::sampler::Rng;

fn codes(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|_| (rng.next_u64() % 256) as i32 as u8 as i8)
        .collect()
}
fn weights(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8)
        .collect()
}
fn uni(rng: &mut Rng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.uniform() as f32
}
fn rq_table(r: &[Requant]) -> Vec<u8> {
    r.iter()
        .flat_map(|x| {
            x.mult
                .to_le_bytes()
                .into_iter()
                .chain((x.shift as i32).to_le_bytes())
        })
        .collect()
}
fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn quant(v: f32, s: f32, z: i32) -> i32 {
    ((v / s).round() as i32 + z).clamp(-128, 127)
}
fn assert_close(got: &[i8], want: &[i32], tol: i32, what: &str) {
    assert_eq!(got.len(), want.len());
    let mut worst = 0;
    for (g, w) in got.iter().zip(want) {
        worst = worst.max((*g as i32 - w).abs());
    }
    assert!(
        worst <= tol,
        "{what}: worst difference {worst} codes > {tol}"
    );
}

/// Output parameters covering the float result.
fn out_params(v: &[f32]) -> (f32, i32) {
    let (lo, hi) = v
        .iter()
        .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
    affine_params(lo, hi)
}

#[test]
fn conv2d_matches_float_reference() {
    let mut rng = Rng::new(1);
    for case in 0..24 {
        let (c, h, w, co) = (
            1 + case % 4,
            3 + (rng.next_u64() % 6) as usize,
            3 + (rng.next_u64() % 6) as usize,
            1 + (rng.next_u64() % 6) as usize,
        );
        let k = [1usize, 3][case % 2];
        let s = 1 + (case / 2) % 2;
        let p = if k == 3 { (case / 4) % 2 } else { 0 };
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (w + 2 * p - k) / s + 1;
        let d = ConvDims {
            c,
            h,
            w,
            co,
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            pt: p,
            pl: p,
            oh,
            ow,
        };
        let x = codes(&mut rng, c * h * w);
        let wq = weights(&mut rng, co * c * k * k);
        let (sx, zx) = (
            uni(&mut rng, 0.01, 0.1),
            (rng.next_u64() % 200) as i32 - 100,
        );
        let sw: Vec<f32> = (0..co).map(|_| uni(&mut rng, 0.001, 0.02)).collect();
        let bias: Vec<f32> = (0..co).map(|_| uni(&mut rng, -1.0, 1.0)).collect();
        let kk = c * k * k;
        // float reference on dequantized values
        let mut real = vec![0f32; co * oh * ow];
        for o in 0..co {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias[o] as f64;
                    for ci in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = sx as f64
                                    * (x[ci * h * w + iy as usize * w + ix as usize] as i32 - zx)
                                        as f64;
                                let wv = sw[o] as f64 * wq[o * kk + (ci * k + ky) * k + kx] as f64;
                                acc += xv * wv;
                            }
                        }
                    }
                    real[(o * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
        let (so, zo) = out_params(&real);
        let want: Vec<i32> = real.iter().map(|&v| quant(v, so, zo)).collect();
        let mut bq = vec![];
        let mut rq = vec![];
        for o in 0..co {
            let acc_scale = sx as f64 * sw[o] as f64;
            let wsum: i64 = wq[o * kk..(o + 1) * kk].iter().map(|&v| v as i64).sum();
            bq.push(((bias[o] as f64 / acc_scale).round() as i64 - zx as i64 * wsum) as i32);
            rq.push(requant_of(acc_scale / so as f64));
        }
        let mut scratch = vec![0i8; kk * oh * ow];
        let mut out = vec![0i8; co * oh * ow];
        scalar::conv2d(
            &x,
            &d,
            zx as i8,
            scalar::Weights::I8(&wq),
            &i32s(&bq),
            &rq_table(&rq),
            zo,
            &mut scratch,
            &mut out,
        )
        .unwrap();
        assert_close(&out, &want, 1, &format!("conv case {case} {d:?}"));
    }
}

#[test]
fn linear_matches_float_reference_in_both_layouts() {
    let mut rng = Rng::new(2);
    for case in 0..12 {
        let (m, n, k) = (
            1 + (rng.next_u64() % 9) as usize,
            1 + (rng.next_u64() % 9) as usize,
            1 + (rng.next_u64() % 17) as usize,
        );
        // case even: A row-major [m][k] (tokens x channels); odd: A [k][m] (NCHW 1x1 conv)
        let (a_s, o_s) = if case % 2 == 0 {
            ([k, 1], [n, 1])
        } else {
            ([1, m], [1, m])
        };
        let a = codes(&mut rng, m * k);
        let wq = weights(&mut rng, n * k);
        let (sx, zx) = (uni(&mut rng, 0.01, 0.1), (rng.next_u64() % 100) as i32 - 50);
        let sw: Vec<f32> = (0..n).map(|_| uni(&mut rng, 0.001, 0.02)).collect();
        let bias: Vec<f32> = (0..n).map(|_| uni(&mut rng, -0.5, 0.5)).collect();
        let mut real = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = bias[j] as f64;
                for l in 0..k {
                    acc += sx as f64
                        * (a[i * a_s[0] + l * a_s[1]] as i32 - zx) as f64
                        * sw[j] as f64
                        * wq[j * k + l] as f64;
                }
                real[i * o_s[0] + j * o_s[1]] = acc as f32;
            }
        }
        let (so, zo) = out_params(&real);
        let want: Vec<i32> = real.iter().map(|&v| quant(v, so, zo)).collect();
        let mut bq = vec![];
        let mut rq = vec![];
        for j in 0..n {
            let acc_scale = sx as f64 * sw[j] as f64;
            let wsum: i64 = wq[j * k..(j + 1) * k].iter().map(|&v| v as i64).sum();
            bq.push(((bias[j] as f64 / acc_scale).round() as i64 - zx as i64 * wsum) as i32);
            rq.push(requant_of(acc_scale / so as f64));
        }
        let mut out = vec![0i8; m * n];
        scalar::linear(
            &a,
            m,
            n,
            k,
            a_s,
            o_s,
            scalar::Weights::I8(&wq),
            &i32s(&bq),
            &rq_table(&rq),
            zo,
            &mut out,
        )
        .unwrap();
        assert_close(&out, &want, 1, &format!("linear case {case}"));
    }
}

#[test]
fn matmul_with_zero_points_matches_float_reference() {
    let mut rng = Rng::new(3);
    for case in 0..10 {
        let (b0, m, n, k) = (
            1 + case % 3,
            1 + (rng.next_u64() % 7) as usize,
            1 + (rng.next_u64() % 7) as usize,
            1 + (rng.next_u64() % 19) as usize,
        );
        let a = codes(&mut rng, b0 * m * k);
        let b = codes(&mut rng, b0 * k * n);
        let (sa, za) = (uni(&mut rng, 0.01, 0.1), (rng.next_u64() % 60) as i32 - 30);
        let (sb, zb) = (uni(&mut rng, 0.01, 0.1), (rng.next_u64() % 60) as i32 - 30);
        let d = MatMulDims {
            batch: [b0, 1],
            m,
            n,
            k,
            a_s: [m * k, 0, k, 1],
            b_s: [k * n, 0, n, 1],
            o_s: [m * n, 0, n, 1],
        };
        let mut real = vec![0f32; b0 * m * n];
        for bb in 0..b0 {
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0f64;
                    for l in 0..k {
                        acc += (sa * (a[bb * m * k + i * k + l] as i32 - za) as f32) as f64
                            * (sb * (b[bb * k * n + l * n + j] as i32 - zb) as f32) as f64;
                    }
                    real[bb * m * n + i * n + j] = acc as f32;
                }
            }
        }
        let (so, zo) = out_params(&real);
        let want: Vec<i32> = real.iter().map(|&v| quant(v, so, zo)).collect();
        let r = requant_of(sa as f64 * sb as f64 / so as f64);
        let mut out = vec![0i8; b0 * m * n];
        scalar::matmul(
            Tier::Scalar,
            &a,
            za,
            &b,
            zb,
            &d,
            r.mult,
            r.shift,
            zo,
            &mut out,
        )
        .unwrap();
        assert_close(&out, &want, 1, &format!("matmul case {case}"));
    }
}

#[test]
fn binary_ops_with_broadcast_match_float_reference() {
    let mut rng = Rng::new(4);
    for (case, kind) in [BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        let shape = [1usize, 3 + case % 3, 4, 5];
        let bshape = if case % 2 == 0 {
            [1usize, shape[1], 1, 1]
        } else {
            shape
        };
        let na: usize = shape.iter().product();
        let nb: usize = bshape.iter().product();
        let a = codes(&mut rng, na);
        let b = codes(&mut rng, nb);
        let (sa, za) = (uni(&mut rng, 0.01, 0.1), (rng.next_u64() % 60) as i32 - 30);
        let (sb, zb) = (uni(&mut rng, 0.01, 0.1), (rng.next_u64() % 60) as i32 - 30);
        let sat = broadcast_strides(&bshape, &shape).unwrap();
        let saa = contiguous_strides(&shape);
        let mut real = vec![0f32; na];
        for (i, r) in real.iter_mut().enumerate() {
            let idx = [i / 20 / shape[1], (i / 20) % shape[1], (i / 5) % 4, i % 5];
            let ib: usize = (0..4).map(|d| idx[d] * sat[d]).sum();
            let x = sa * (a[i] as i32 - za) as f32;
            let y = sb * (b[ib] as i32 - zb) as f32;
            *r = match kind {
                BinaryKind::Add => x + y,
                BinaryKind::Sub => x - y,
                BinaryKind::Mul => x * y,
            };
        }
        let (so, zo) = out_params(&real);
        let want: Vec<i32> = real.iter().map(|&v| quant(v, so, zo)).collect();
        let (ma, mb, sh) = match kind {
            BinaryKind::Mul => {
                let r = requant_of(sa as f64 * sb as f64 / so as f64);
                (r.mult, r.mult, r.shift)
            }
            _ => requant_pair(sa as f64 / so as f64, sb as f64 / so as f64),
        };
        let mut out = vec![0i8; na];
        scalar::binary(
            kind, &a, za, &saa, &b, zb, &sat, &shape, &saa, ma, mb, sh, zo, &mut out,
        )
        .unwrap();
        assert_close(&out, &want, 1, &format!("binary {kind:?} case {case}"));
    }
}

#[test]
fn lut_silu_matches_float_reference() {
    let (sx, zx) = affine_params(-6.0, 6.0);
    let (so, zo) = affine_params(-0.2785, 6.0);
    let table: Vec<u8> = (-128i32..=127)
        .map(|c| {
            quant(
                scalar::unary_f32(UnaryFn::Silu, sx * (c - zx) as f32),
                so,
                zo,
            ) as i8 as u8
        })
        .collect();
    let x: Vec<i8> = (-128i32..=127).map(|v| v as i8).collect();
    let mut out = vec![0i8; 256];
    scalar::lut(&x, &table, &mut out).unwrap();
    let want: Vec<i32> = x
        .iter()
        .map(|&c| {
            let v = sx * (c as i32 - zx) as f32;
            quant(v / (1.0 + (-v).exp()), so, zo)
        })
        .collect();
    assert_close(&out, &want, 1, "silu lut");
}

#[test]
fn group_norm_matches_float_reference() {
    // cases 6..12: a split concat's input, every channel with its own scale and zero point 0
    let mut rng = Rng::new(5);
    for case in 0..12 {
        let split = case >= 6;
        let (groups, cg, s) = (1 + case % 3, 1 + case % 4, 7 + case * 3);
        let c = groups * cg;
        let x = codes(&mut rng, c * s);
        let (sx, mut zx) = (uni(&mut rng, 0.01, 0.1), (rng.next_u64() % 60) as i32 - 30);
        let scl: Vec<f32> = (0..c)
            .map(|_| if split { uni(&mut rng, 0.01, 0.1) } else { sx })
            .collect();
        if split {
            zx = 0;
        }
        let gamma: Vec<f32> = (0..c).map(|_| uni(&mut rng, 0.5, 1.5)).collect();
        let beta: Vec<f32> = (0..c).map(|_| uni(&mut rng, -0.5, 0.5)).collect();
        let eps = 1e-5f32;
        let mut real = vec![0f32; c * s];
        for g in 0..groups {
            let vals: Vec<f64> = (g * cg * s..(g + 1) * cg * s)
                .map(|i| (scl[i / s] * (x[i] as i32 - zx) as f32) as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            for i in g * cg * s..(g + 1) * cg * s {
                let ch = i / s;
                real[i] = (((scl[ch] * (x[i] as i32 - zx) as f32) as f64 - mean)
                    / (var + eps as f64).sqrt()
                    * gamma[ch] as f64
                    + beta[ch] as f64) as f32;
            }
        }
        let (so, zo) = out_params(&real);
        let want: Vec<i32> = real.iter().map(|&v| quant(v, so, zo)).collect();
        let mut aff = gamma.clone();
        aff.extend(&beta);
        let mut out = vec![0i8; c * s];
        scalar::group_norm(
            &x,
            1,
            c,
            s,
            groups,
            zx,
            sx,
            split.then(|| f32s(&scl)).as_deref(),
            eps,
            &f32s(&aff),
            so,
            zo,
            &mut out,
        )
        .unwrap();
        assert_close(&out, &want, 1, &format!("groupnorm case {case}"));
    }
}

#[test]
fn softmax_matches_float_reference() {
    let mut rng = Rng::new(6);
    for case in 0..6 {
        let (outer, len, inner) = (1 + case % 2, 3 + case * 5, 1 + case % 3);
        let x = codes(&mut rng, outer * len * inner);
        let sx = uni(&mut rng, 0.01, 0.08);
        let table: Vec<i32> = (0..256)
            .map(|d| ((-(d as f64) * sx as f64).exp() * (1u64 << 20) as f64).round() as i32)
            .collect();
        let mut want = vec![0i32; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                let mx = (0..len)
                    .map(|j| x[at(j)] as f32 * sx)
                    .fold(f32::MIN, f32::max);
                let sum: f64 = (0..len)
                    .map(|j| ((x[at(j)] as f32 * sx - mx) as f64).exp())
                    .sum();
                for j in 0..len {
                    let p = ((x[at(j)] as f32 * sx - mx) as f64).exp() / sum;
                    want[at(j)] = quant(p as f32, 1.0 / 255.0, -128);
                }
            }
        }
        let mut out = vec![0i8; x.len()];
        scalar::softmax(&x, outer, len, inner, &i32s(&table), &mut out).unwrap();
        assert_close(&out, &want, 1, &format!("softmax case {case}"));
    }
}

#[test]
fn quantize_dequantize_round_trip() {
    let mut rng = Rng::new(7);
    let (s, z) = affine_params(-3.0, 5.0);
    let x: Vec<f32> = (0..500).map(|_| uni(&mut rng, -3.0, 5.0)).collect();
    let mut q = vec![0i8; 500];
    scalar::quantize(&x, s, z, &mut q).unwrap();
    let mut back = vec![0f32; 500];
    scalar::dequantize(&q, s, z, &mut back).unwrap();
    for (a, b) in x.iter().zip(&back) {
        assert!((a - b).abs() <= s / 2.0 + 1e-6, "{a} vs {b}");
    }
}

fn tref(offset: u32, shape: &[u32], scale: f32, zero: i32) -> TRef {
    TRef {
        offset,
        dtype: DType::I8,
        shape: heapless::Vec::from_slice(shape).unwrap(),
        scale,
        zero,
    }
}

#[test]
fn concat_requantizes_each_input_and_transpose_permutes() {
    // concat of [1,2,3] (scale 0.1) and [1,1,3] (scale 0.2) along axis 1 into scale 0.2
    let mut arena = vec![0u8; 256];
    let a: Vec<i8> = vec![10, 20, 30, -10, -20, -30];
    let b: Vec<i8> = vec![1, 2, 3];
    for (i, v) in a.iter().enumerate() {
        arena[i] = *v as u8;
    }
    for (i, v) in b.iter().enumerate() {
        arena[16 + i] = *v as u8;
    }
    let ta = tref(0, &[1, 2, 3], 0.1, 0);
    let tb = tref(16, &[1, 1, 3], 0.2, 0);
    let to = tref(32, &[1, 3, 3], 0.2, 0);
    let mut ins = heapless::Vec::new();
    ins.push(ta).unwrap();
    ins.push(tb).unwrap();
    let mut rq = heapless::Vec::new();
    rq.push(requant_of(0.5)).unwrap();
    rq.push(requant_of(1.0)).unwrap();
    dmq_runtime::exec::run_op(
        &Op::Concat {
            inputs: ins,
            output: to.clone(),
            axis: 1,
            requant: rq,
        },
        &mut arena,
        &[],
    )
    .unwrap();
    let got: Vec<i8> = arena[32..41].iter().map(|&v| v as i8).collect();
    assert_eq!(got, vec![5, 10, 15, -5, -10, -15, 1, 2, 3]);
    // transpose [1,3,3] -> perm [0,2,1]
    let tt = tref(64, &[1, 3, 3], 0.2, 0);
    dmq_runtime::exec::run_op(
        &Op::Transpose {
            input: to,
            output: tt,
            perm: heapless::Vec::from_slice(&[0, 2, 1]).unwrap(),
        },
        &mut arena,
        &[],
    )
    .unwrap();
    let got: Vec<i8> = arena[64..73].iter().map(|&v| v as i8).collect();
    assert_eq!(got, vec![5, -5, 1, 10, -10, 2, 15, -15, 3]);
}

#[test]
fn upsample_repeats_nearest() {
    let x: Vec<i8> = vec![1, 2, 3, 4];
    let mut out = vec![0i8; 16];
    scalar::upsample(&x, &[1, 1, 2, 2], &mut out, &[1, 1, 4, 4]).unwrap();
    assert_eq!(out, vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
}

#[test]
fn kernels_reject_wrong_lengths_instead_of_panicking() {
    let d = ConvDims {
        c: 2,
        h: 4,
        w: 4,
        co: 2,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        pt: 1,
        pl: 1,
        oh: 4,
        ow: 4,
    };
    let mut out = vec![0i8; 32];
    let mut scratch = vec![0i8; 10]; // too small
    assert!(scalar::conv2d(
        &[0i8; 32],
        &d,
        0,
        scalar::Weights::I8(&[0; 36]),
        &[0; 8],
        &[0; 16],
        0,
        &mut scratch,
        &mut out
    )
    .is_err());
    assert!(scalar::lut(&[0; 4], &[0; 10], &mut [0; 4]).is_err());
    assert!(scalar::softmax(&[0; 4], 1, 5, 1, &[0; 1024], &mut [0; 4]).is_err());
}

#[test]
fn four_bit_weights_equal_the_same_codes_as_int8() {
    use dmq_compiler::quant::pack4;
    use dmq_runtime::kernels::scalar::Weights;
    let mut rng = Rng::new(9);
    for case in 0..8 {
        let (c, h, w, co) = (1 + case % 3, 5, 4 + case % 3, 2 + case % 4);
        let k = [1usize, 3][case % 2];
        let d = ConvDims {
            c,
            h,
            w,
            co,
            kh: k,
            kw: k,
            sh: 1,
            sw: 1,
            pt: k / 2,
            pl: k / 2,
            oh: h,
            ow: w,
        };
        let kk = c * k * k;
        let codes: Vec<i8> = (0..co * kk)
            .map(|_| ((rng.next_u64() % 16) as i32 - 8) as i8)
            .collect();
        let packed = pack4(&codes, co, kk);
        let x = codes_of(&mut rng, c * h * w);
        let bias: Vec<u8> = (0..co)
            .flat_map(|_| ((rng.next_u64() % 2000) as i32 - 1000).to_le_bytes())
            .collect();
        let rq = rq_table(&vec![requant_of(0.01); co]);
        let mut s8 = vec![0i8; kk * h * w];
        let mut s4 = vec![0i8; kk * h * w];
        let (mut o8, mut o4) = (vec![0i8; co * h * w], vec![0i8; co * h * w]);
        scalar::conv2d(
            &x,
            &d,
            3,
            Weights::I8(&codes),
            &bias,
            &rq,
            -5,
            &mut s8,
            &mut o8,
        )
        .unwrap();
        scalar::conv2d(
            &x,
            &d,
            3,
            Weights::I4(&packed),
            &bias,
            &rq,
            -5,
            &mut s4,
            &mut o4,
        )
        .unwrap();
        assert_eq!(o8, o4, "conv case {case}");
        // linear, both layouts
        let (m, n) = (h * w, co);
        let (mut l8, mut l4) = (vec![0i8; m * n], vec![0i8; m * n]);
        let xa = &x[..m * kk.min(c * h * w / m.max(1)).max(1)];
        let kl = xa.len() / m;
        let codes_l: Vec<i8> = codes.iter().copied().cycle().take(n * kl).collect();
        let packed_l = pack4(&codes_l, n, kl);
        scalar::linear(
            xa,
            m,
            n,
            kl,
            [kl, 1],
            [n, 1],
            Weights::I8(&codes_l),
            &bias,
            &rq,
            0,
            &mut l8,
        )
        .unwrap();
        scalar::linear(
            xa,
            m,
            n,
            kl,
            [kl, 1],
            [n, 1],
            Weights::I4(&packed_l),
            &bias,
            &rq,
            0,
            &mut l4,
        )
        .unwrap();
        assert_eq!(l8, l4, "linear case {case}");
    }
}

fn codes_of(rng: &mut Rng, n: usize) -> Vec<i8> {
    codes(rng, n)
}
