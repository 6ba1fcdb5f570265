//! int16 (protected) activations: every kernel that accepts them, against a float reference.
use dmq_compiler::quant::{affine_params_for, requant_of};
use dmq_runtime::format::{DType, UnaryFn};
use dmq_runtime::kernels::scalar::{self, ConvDims};
use dmq_runtime::sampler::Rng;

fn q16(v: f32, s: f32, z: i32) -> i32 {
    ((v / s).round() as i32 + z).clamp(-32768, 32767)
}

#[test]
fn conv_with_int16_input_and_output_matches_float() {
    let mut rng = Rng::new(21);
    let (c, h, w, co, k) = (3, 6, 5, 4, 3);
    let d = ConvDims {
        c,
        h,
        w,
        co,
        kh: k,
        kw: k,
        sh: 1,
        sw: 1,
        pt: 1,
        pl: 1,
        oh: h,
        ow: w,
    };
    let (sx, zx) = affine_params_for(DType::I16, -3.0, 5.0);
    let xr: Vec<f32> = (0..c * h * w)
        .map(|_| -3.0 + 8.0 * rng.uniform() as f32)
        .collect();
    let x: Vec<i16> = xr.iter().map(|&v| q16(v, sx, zx) as i16).collect();
    let wq: Vec<i8> = (0..co * c * k * k)
        .map(|_| ((rng.next_u64() % 255) as i32 - 127) as i8)
        .collect();
    let sw = 0.01f32;
    let kk = c * k * k;
    let mut real = vec![0f32; co * h * w];
    for o in 0..co {
        for y in 0..h {
            for xx in 0..w {
                let mut acc = 0f64;
                for ci in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) =
                                (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let xv = sx as f64
                                * (x[ci * h * w + iy as usize * w + ix as usize] as i32 - zx)
                                    as f64;
                            acc += xv * sw as f64 * wq[o * kk + (ci * k + ky) * k + kx] as f64;
                        }
                    }
                }
                real[(o * h + y) * w + xx] = acc as f32;
            }
        }
    }
    let (lo, hi) = real
        .iter()
        .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let (so, zo) = affine_params_for(DType::I16, lo, hi);
    let mut bias = vec![];
    let mut rq = vec![];
    for o in 0..co {
        let wsum: i64 = wq[o * kk..(o + 1) * kk].iter().map(|&v| v as i64).sum();
        bias.extend(((-(zx as i64) * wsum) as i32).to_le_bytes());
        let r = requant_of(sx as f64 * sw as f64 / so as f64);
        rq.extend(r.mult.to_le_bytes());
        rq.extend((r.shift as i32).to_le_bytes());
    }
    let mut scratch = vec![0i16; kk * h * w];
    let mut out = vec![0i16; co * h * w];
    scalar::conv2d(
        &x,
        &d,
        zx as i16,
        scalar::Weights::I8(&wq),
        &bias,
        &rq,
        zo,
        &mut scratch,
        &mut out,
    )
    .unwrap();
    let worst = out
        .iter()
        .zip(&real)
        .map(|(&g, &r)| (g as i32 - q16(r, so, zo)).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "int16 conv: worst difference {worst} codes");
}

#[test]
fn interpolated_table_for_int16_input_is_accurate() {
    // SiLU from int16 to int16 through the 257-point table: error well below 1% of the output range
    let (sx, zx) = affine_params_for(DType::I16, -8.0, 8.0);
    let (so, zo) = affine_params_for(DType::I16, -0.3, 8.0);
    let f = |c: i32| -> f64 {
        scalar::unary_f32(UnaryFn::Silu, sx * (c - zx) as f32) as f64 / so as f64 + zo as f64
    };
    let table: Vec<u8> = (0..=256)
        .flat_map(|k| {
            ((f(k * 256 - 32768).clamp(-32768.0, 32767.0) * 256.0).round() as i32).to_le_bytes()
        })
        .collect();
    let x: Vec<i16> = (-32768i32..=32767).step_by(7).map(|v| v as i16).collect();
    let mut out = vec![0i16; x.len()];
    scalar::lut_16(&x, &table, &mut out).unwrap();
    let worst = x
        .iter()
        .zip(&out)
        .map(|(&c, &o)| (o as f64 - f(c as i32).clamp(-32768.0, 32767.0)).abs())
        .fold(0.0, f64::max);
    assert!(worst < 0.005 * 65536.0, "worst {worst} codes");
    // int16 -> int8 through the same kind of table
    let (s8, z8) = affine_params_for(DType::I8, -0.3, 8.0);
    let g = |c: i32| -> f64 {
        scalar::unary_f32(UnaryFn::Silu, sx * (c - zx) as f32) as f64 / s8 as f64 + z8 as f64
    };
    let t8: Vec<u8> = (0..=256)
        .flat_map(|k| {
            ((g(k * 256 - 32768).clamp(-128.0, 127.0) * 256.0).round() as i32).to_le_bytes()
        })
        .collect();
    let mut o8 = vec![0i8; x.len()];
    scalar::lut_16(&x, &t8, &mut o8).unwrap();
    let worst8 = x
        .iter()
        .zip(&o8)
        .map(|(&c, &o)| (o as f64 - g(c as i32).clamp(-128.0, 127.0)).abs())
        .fold(0.0, f64::max);
    assert!(worst8 <= 1.0, "int16->int8 table: worst {worst8} codes");
}

#[test]
fn group_norm_int16_in_int8_out_matches_float() {
    let mut rng = Rng::new(22);
    let (c, s, groups) = (4, 30, 2);
    let (sx, zx) = affine_params_for(DType::I16, -2.0, 6.0);
    let x: Vec<i16> = (0..c * s)
        .map(|_| q16(-2.0 + 8.0 * rng.uniform() as f32, sx, zx) as i16)
        .collect();
    let mut real = vec![0f32; c * s];
    let cg = c / groups;
    for g in 0..groups {
        let vals: Vec<f64> = (g * cg * s..(g + 1) * cg * s)
            .map(|i| (sx * (x[i] as i32 - zx) as f32) as f64)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        for (j, i) in (g * cg * s..(g + 1) * cg * s).enumerate() {
            real[i] = ((vals[j] - mean) / (var + 1e-5).sqrt()) as f32;
        }
    }
    let (lo, hi) = real
        .iter()
        .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let (so, zo) = affine_params_for(DType::I8, lo, hi);
    let aff: Vec<u8> = (0..c)
        .map(|_| 1f32)
        .chain((0..c).map(|_| 0f32))
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut out = vec![0i8; c * s];
    scalar::group_norm(
        &x, 1, c, s, groups, zx, sx, None, 1e-5, &aff, so, zo, &mut out,
    )
    .unwrap();
    let worst = out
        .iter()
        .zip(&real)
        .map(|(&g, &r)| (g as i32 - ((r / so).round() as i32 + zo).clamp(-128, 127)).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "worst {worst}");
}

#[test]
fn quantize_int16_round_trip() {
    let (s, z) = affine_params_for(DType::I16, -1.0, 1.0);
    let x: Vec<f32> = (0..1000).map(|i| -1.0 + i as f32 / 500.0).collect();
    let mut q = vec![0i16; 1000];
    scalar::quantize(&x, s, z, &mut q).unwrap();
    let mut back = vec![0f32; 1000];
    scalar::dequantize(&q, s, z, &mut back).unwrap();
    for (a, b) in x.iter().zip(&back) {
        assert!((a - b).abs() <= s / 2.0 + 1e-7);
    }
}
