//! Property check of the SIMD tiers against the scalar specification on random shapes and values
//! (std builds): run by `dmq-board selftest` on a board or under qemu, and by the host tests.
extern crate std;

use super::packed;
use super::reference::conv::{self as conv, ConvDims};
use super::reference::matmul::{self as matmul, MatMulDims};
use super::reference::{linear, Weights};
use super::Tier;
use crate::sampler::Rng;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

fn r8(rng: &mut Rng) -> i8 {
    (rng.next_u64() >> 56) as u8 as i8
}
fn u(rng: &mut Rng, n: u64) -> usize {
    (rng.next_u64() % n) as usize
}
fn weights(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| r8(rng).max(-127)).collect()
}
fn acts(rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n).map(|_| r8(rng)).collect()
}
fn biases(rng: &mut Rng, n: usize, range: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|_| {
            ((rng.next_u64() % (2 * range + 1)) as i64 - range as i64).to_le_bytes()[..4].to_vec()
        })
        .collect()
}
fn requants(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|_| {
            let m = 1_073_741_824i32 + (rng.next_u64() % 1_000_000_000) as i32;
            let s = 31 + (rng.next_u64() % 12) as i32;
            m.to_le_bytes().into_iter().chain(s.to_le_bytes())
        })
        .collect()
}

fn differs<T: PartialEq>(
    tier: Tier,
    what: &str,
    want: &T,
    got: &T,
) -> core::result::Result<(), String> {
    if want == got {
        Ok(())
    } else {
        Err(format!(
            "tier {tier:?}: {what} differs from the scalar kernel"
        ))
    }
}

/// Runs `cases` random cases of every SIMD entry point (conv via im2col, 1×1 conv, contiguous and
/// strided linear, attention matmul with zero points and transposed operands, long dot products with
/// extreme values) on each of `tiers` and compares with the scalar kernels bit for bit. Returns the
/// number of comparisons, or what differed.
pub fn tiers_match_scalar(
    tiers: &[Tier],
    cases: usize,
    seed: u64,
) -> core::result::Result<usize, String> {
    let mut rng = Rng::new(seed);
    let mut checked = 0usize;
    for case in 0..cases {
        for f in [
            conv_case,
            pointwise_case,
            linear_case,
            matmul_case,
            dot_case,
        ] {
            checked += f(&mut rng, tiers, case)?;
        }
    }
    Ok(checked)
}

/// Comparisons made, or what differed.
type Check = core::result::Result<usize, String>;

fn err(e: crate::Error) -> String {
    format!("{e}")
}

/// A convolution through the transposed im2col.
fn conv_case(rng: &mut Rng, tiers: &[Tier], _case: usize) -> Check {
    let mut checked = 0usize;
    let (c, h, w, co) = (
        1 + u(rng, 24),
        1 + u(rng, 12),
        1 + u(rng, 12),
        1 + u(rng, 9),
    );
    let k = [1usize, 2, 3, 5][u(rng, 4)];
    let st = 1 + u(rng, 2);
    let p = u(rng, 3).min(k.saturating_sub(1));
    if h + 2 * p >= k && w + 2 * p >= k {
        let (oh, ow) = ((h + 2 * p - k) / st + 1, (w + 2 * p - k) / st + 1);
        let d = ConvDims {
            c,
            h,
            w,
            co,
            kh: k,
            kw: k,
            sh: st,
            sw: st,
            pt: p,
            pl: p,
            oh,
            ow,
        };
        let x = acts(rng, c * h * w);
        let wt = weights(rng, co * d.k());
        let (bias, rq) = (biases(rng, co, 100_000), requants(rng, co));
        let (zx, zo) = (r8(rng), r8(rng) as i32);
        let mut col = vec![0i8; d.k() * d.p()];
        let mut want = vec![0i8; co * d.p()];
        conv::conv2d(
            &x,
            &d,
            zx,
            Weights::I8(&wt),
            &bias,
            &rq,
            zo,
            &mut col,
            &mut want,
        )
        .map_err(err)?;
        for &t in tiers {
            let mut got = vec![0i8; co * d.p()];
            packed::im2col_t(&x, &d, zx, &mut col).map_err(err)?;
            packed::conv_dot(
                t,
                &wt,
                &col,
                true,
                co,
                d.k(),
                d.p(),
                &bias,
                &rq,
                zo,
                &mut got,
            )
            .map_err(err)?;
            differs(t, &format!("conv {d:?}"), &want, &got)?;
            checked += 1;
        }
    }
    Ok(checked)
}

/// A 1×1 convolution: the input read channel-major and packed.
fn pointwise_case(rng: &mut Rng, tiers: &[Tier], _case: usize) -> Check {
    let mut checked = 0usize;
    let (m, kk, pp) = (1 + u(rng, 40), 1 + u(rng, 300), 1 + u(rng, 70));
    let (wt, x) = (weights(rng, m * kk), acts(rng, kk * pp));
    let (bias, rq, zo) = (biases(rng, m, 100_000), requants(rng, m), r8(rng) as i32);
    let mut want = vec![0i8; m * pp];
    conv::gemm_wk_kp(Weights::I8(&wt), &x, m, kk, pp, &bias, &rq, zo, &mut want).map_err(err)?;
    for &t in tiers {
        let mut got = vec![0i8; m * pp];
        packed::conv_dot(t, &wt, &x, false, m, kk, pp, &bias, &rq, zo, &mut got).map_err(err)?;
        differs(t, &format!("1x1 conv m {m} k {kk} p {pp}"), &want, &got)?;
        checked += 1;
    }
    Ok(checked)
}

/// A linear: rows contiguous or strided (channel-major input), output row- or channel-major.
fn linear_case(rng: &mut Rng, tiers: &[Tier], case: usize) -> Check {
    let mut checked = 0usize;
    let (m, n, k) = (1 + u(rng, 40), 1 + u(rng, 20), 1 + u(rng, 200));
    let a = acts(rng, m * k);
    let lw = weights(rng, n * k);
    let (lb, lrq, zo) = (biases(rng, n, 10_000), requants(rng, n), r8(rng) as i32);
    let a_s = if case % 2 == 0 { [k, 1] } else { [1, m] };
    let o_s = if case % 3 == 0 { [1, m] } else { [n, 1] };
    let mut want = vec![0i8; m * n];
    linear::linear(
        &a,
        m,
        n,
        k,
        a_s,
        o_s,
        Weights::I8(&lw),
        &lb,
        &lrq,
        zo,
        &mut want,
    )
    .map_err(err)?;
    for &t in tiers {
        let mut got = vec![0i8; m * n];
        packed::linear_dot(t, &a, m, n, k, a_s, o_s, &lw, &lb, &lrq, zo, &mut got).map_err(err)?;
        differs(
            t,
            &format!("linear m {m} n {n} k {k} a_s {a_s:?} o_s {o_s:?}"),
            &want,
            &got,
        )?;
        checked += 1;
    }
    Ok(checked)
}

/// An attention matmul: two batch axes, either operand transposed, zero points on both.
fn matmul_case(rng: &mut Rng, tiers: &[Tier], case: usize) -> Check {
    let mut checked = 0usize;
    let (b1, m, n, k) = (
        1 + u(rng, 3),
        1 + u(rng, 24),
        1 + u(rng, 24),
        1 + u(rng, 80),
    );
    let a_s = if case % 2 == 0 {
        [0, m * k, k, 1]
    } else {
        [0, m * k, 1, m]
    };
    let b_s = if case % 4 < 2 {
        [0, k * n, n, 1]
    } else {
        [0, k * n, 1, k]
    };
    let d = MatMulDims {
        batch: [1, b1],
        m,
        n,
        k,
        a_s,
        b_s,
        o_s: [0, m * n, n, 1],
    };
    let (a, b) = (acts(rng, b1 * m * k), acts(rng, b1 * k * n));
    let (za, zb, zo) = (r8(rng) as i32, r8(rng) as i32, r8(rng) as i32);
    let (mult, shift) = (
        1_500_000_000 + (rng.next_u64() % 500_000_000) as i32,
        38 + (rng.next_u64() % 6) as u8,
    );
    let mut want = vec![0i8; b1 * m * n];
    matmul::matmul(&a, za, &b, zb, &d, mult, shift, zo, &mut want).map_err(err)?;
    for &t in tiers {
        let mut got = vec![0i8; b1 * m * n];
        packed::matmul(t, &a, za, &b, zb, &d, mult, shift, zo, &mut got).map_err(err)?;
        differs(t, &format!("matmul {d:?}"), &want, &got)?;
        checked += 1;
    }
    Ok(checked)
}

/// Long dot products with extreme values (every third case: alternating -127/127 by -128/127), and 4×4 tiles of them.
fn dot_case(rng: &mut Rng, tiers: &[Tier], case: usize) -> Check {
    let mut checked = 0usize;
    let n = u(rng, 5000);
    let extreme = case % 3 == 0;
    let va: Vec<i8> = (0..n)
        .map(|i| {
            if extreme {
                [-127, 127][i % 2]
            } else {
                r8(rng).max(-127)
            }
        })
        .collect();
    let vb: Vec<i8> = (0..n)
        .map(|i| if extreme { [-128, 127][i % 2] } else { r8(rng) })
        .collect();
    let want = super::dot_i8(Tier::Scalar, &va, &vb);
    for &t in tiers {
        differs(
            t,
            &format!("dot product n {n}"),
            &want,
            &super::dot_i8(t, &va, &vb),
        )?;
        let rows = [&va[..], &vb[..], &va[..], &vb[..]];
        let tile = super::dot_block(t, rows, rows);
        let want4 = rows.map(|r| rows.map(|c| super::dot_i8(Tier::Scalar, r, c)));
        differs(t, &format!("4x4 tile n {n}"), &want4, &tile)?;
        checked += 2;
    }
    Ok(checked)
}
