//! Binary: element-wise add, subtract or multiply of two integer tensors with broadcasting.
//! Add/Sub: `out = z + ((ma*(a-za) ± mb*(b-zb)) >> shift)`; Mul: `out = z + ((ma*(a-za)*(b-zb)) >> shift)`.
use super::{broadcast_strides, Cx, PreparedOp};
use crate::arena::{carve, out_ints, View};
use crate::format::{Binary, BinaryKind, Requant, TRef, MAX_RANK};
use crate::kernels::eltwise::BinaryParams;
use crate::kernels::{contiguous_strides, eltwise::binary_i64, reference::eltwise, Exec};
use crate::{Error, Result};

fn bounds() -> Error {
    Error::BufferLength { expected: 0, got: 0 }
}

#[derive(Debug, Clone)]
pub struct Elementwise {
    kind: BinaryKind,
    a: View,
    b: View,
    output: View,
    sa: [usize; MAX_RANK],
    sb: [usize; MAX_RANK],
    so: [usize; MAX_RANK],
    mult_a: i32,
    mult_b: i32,
    shift: u8,
    /// every intermediate fits i64 for these parameters and code types (the fast rows)
    fits_i64: bool,
}
pub type Plan<'a> = Elementwise;

pub fn prepare<'a>(r: &Binary<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let a = cx.int(&r.a)?;
    let b = cx.int(&r.b)?;
    let output = cx.int(&r.output)?;
    cx.disjoint(&output, &[&a, &b])?;
    cx.broadcasts(&a, &output)?;
    cx.broadcasts(&b, &output)?;
    for mult in [r.mult_a, r.mult_b] {
        cx.requant(&Requant {
            mult,
            shift: r.shift,
        })?;
    }
    let reach = |v: &View| {
        let (lo, hi) = v.dtype.code_range();
        (hi as i64 - v.zero as i64).abs().max((lo as i64 - v.zero as i64).abs()) as u32
    };
    let fits_i64 = params(r.kind, &a, &b, &output, r).fits_i64(reach(&a), reach(&b));
    Ok(Elementwise {
        fits_i64,
        kind: r.kind,
        sa: broadcast_strides(&a, &output)?,
        sb: broadcast_strides(&b, &output)?,
        so: contiguous_strides(&output.dims()[..output.rank()]),
        a,
        b,
        output,
        mult_a: r.mult_a,
        mult_b: r.mult_b,
        shift: r.shift,
    })
}

fn params(kind: BinaryKind, a: &View, b: &View, o: &View, r: &Binary<TRef>) -> BinaryParams {
    BinaryParams {
        kind,
        mult_a: r.mult_a,
        mult_b: r.mult_b,
        shift: r.shift,
        za: a.zero,
        zb: b.zero,
        zo: o.zero,
    }
}

impl PreparedOp for Elementwise {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let dims = self.output.dims();
        let shape = &dims[..self.output.rank()];
        if self.fits_i64 {
            let p = BinaryParams {
                kind: self.kind,
                mult_a: self.mult_a,
                mult_b: self.mult_b,
                shift: self.shift,
                za: self.a.zero,
                zb: self.b.zero,
                zo: self.output.zero,
            };
            let yb = io.ints(&self.b)?;
            // split along the first axis longer than 1 (the output is contiguous): each part is
            // the same rule on its rows, so the bits do not depend on the thread count
            let k = shape.iter().position(|&d| d > 1).unwrap_or(0);
            let (rows, n) = (shape.get(k).copied().unwrap_or(1), self.output.numel());
            let (sa, sb) = (self.sa[k], self.sb[k]);
            return crate::with_io!(io.ints(&self.a)?, out_ints(o, self.output.dtype)?, |x, y| {
                crate::with_in!(yb, |z| ex.par_rows(rows, self.so[k], n, y, |r0, nr, part| {
                    let mut sub = [0usize; MAX_RANK];
                    sub[..shape.len()].copy_from_slice(shape);
                    sub[k] = nr;
                    let (xa, zb) = (x.get(r0 * sa..).ok_or_else(bounds)?, z.get(r0 * sb..).ok_or_else(bounds)?);
                    // the kernel picks its AVX2 build itself (`ops_isa`)
                    binary_i64(xa, &self.sa, zb, &self.sb, &sub[..shape.len()], &self.so, &p, part)
                }))
            });
        }
        let (ma, mb) = (self.mult_a as i128, self.mult_b as i128);
        let combine = |x: i128, y: i128| match self.kind {
            BinaryKind::Add => ma * x + mb * y,
            BinaryKind::Sub => ma * x - mb * y,
            BinaryKind::Mul => ma * x * y,
        };
        let (za, zb, zo) = (self.a.zero, self.b.zero, self.output.zero);
        let yb = io.ints(&self.b)?;
        crate::with_io!(io.ints(&self.a)?, out_ints(o, self.output.dtype)?, |x, y| {
            crate::with_in!(yb, |z| eltwise::binary(
                x, za, &self.sa, z, zb, &self.sb, shape, &self.so, combine, self.shift, zo, y
            ))
        })
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    /// `b` broadcast along every axis but the channels (even cases) or the full shape (odd);
    /// add and subtract with a common shift, multiply with one multiplier.
    #[test]
    fn binary_ops_with_broadcast_match_the_float_reference() {
        let mut rng = Rng::new(4);
        let kinds = [BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul];
        for (case, kind) in kinds.into_iter().cycle().take(12).enumerate() {
            let dt = if case >= 9 { DType::I16 } else { DType::I8 };
            let c = 3 + case % 3;
            let shape = [1u32, c as u32, 4, 5];
            let bshape = if case % 2 == 0 { [1, c as u32, 1, 1] } else { shape };
            let (na, nb) = (c * 20, if case % 2 == 0 { c } else { c * 20 });
            let qa = params(dt, uni(&mut rng, -2.0, -0.1), uni(&mut rng, 0.1, 2.0));
            let qb = params(dt, uni(&mut rng, -2.0, -0.1), uni(&mut rng, 0.1, 2.0));
            let ar: Vec<f32> = (0..na).map(|_| uni(&mut rng, -2.0, 2.0)).collect();
            let br: Vec<f32> = (0..nb).map(|_| uni(&mut rng, -2.0, 2.0)).collect();
            let dq = |v: f32, q: (f32, i32)| (quant(v, q, dt) - q.1) as f32 * q.0;
            let real: Vec<f32> = (0..na)
                .map(|i| {
                    let (x, y) = (dq(ar[i], qa), dq(br[if nb == na { i } else { i / 20 }], qb));
                    match kind {
                        BinaryKind::Add => x + y,
                        BinaryKind::Sub => x - y,
                        BinaryKind::Mul => x * y,
                    }
                })
                .collect();
            let qo = out_params(&real, dt);
            let (mult_a, mult_b, shift) = match kind {
                BinaryKind::Mul => {
                    let r = requant_of(qa.0 as f64 * qb.0 as f64 / qo.0 as f64);
                    (r.mult, r.mult, r.shift)
                }
                _ => {
                    // one shift for both multipliers
                    let (ra, rb) = (qa.0 as f64 / qo.0 as f64, qb.0 as f64 / qo.0 as f64);
                    let shift = (30 - ra.max(rb).log2().floor() as i32).clamp(1, 62);
                    let m = |r: f64| (r * 2f64.powi(shift)).round() as i32;
                    (m(ra), m(rb), shift as u8)
                }
            };
            let mut b = Bench::new();
            let ta = b.tensor(dt, &shape, qa.0, qa.1);
            let tb = b.tensor(dt, &bshape, qb.0, qb.1);
            let to = b.tensor(dt, &shape, qo.0, qo.1);
            put_real(&mut b, &ta, &ar);
            put_real(&mut b, &tb, &br);
            b.run(Op::Binary(Binary {
                kind,
                a: ta,
                b: tb,
                output: to.clone(),
                mult_a,
                mult_b,
                shift,
            }));
            let worst = worst(&get_ints(&mut b, &to), &real, qo, dt);
            assert!(worst <= 1, "case {case} {kind:?} {dt:?}: worst {worst} codes");
        }
    }

    /// Large enough to split over threads (along the channels, the first axis longer than 1): the
    /// same bytes on one thread and on two, on every tier, with `b` per channel (its offset moves
    /// with the part), per position (it does not) and full, int8 and int16.
    #[test]
    fn a_split_binary_gives_the_bytes_of_one_call() {
        let mut rng = Rng::new(9);
        let shape = [1u32, 16, 130, 128];
        let n = 16 * 130 * 128;
        for (case, bshape) in [[1u32, 16, 1, 1], [1, 1, 130, 128], shape].into_iter().enumerate() {
            let dt = if case == 1 { DType::I16 } else { DType::I8 };
            let kind = [BinaryKind::Add, BinaryKind::Mul, BinaryKind::Sub][case];
            let nb = bshape.iter().product::<u32>() as usize;
            let mut b = Bench::new();
            let ta = b.tensor(dt, &shape, 0.02, 3);
            let tb = b.tensor(dt, &bshape, 0.03, -5);
            let to = b.tensor(dt, &shape, 0.05, 1);
            put_real(&mut b, &ta, &(0..n).map(|_| uni(&mut rng, -2.0, 2.0)).collect::<Vec<_>>());
            put_real(&mut b, &tb, &(0..nb).map(|_| uni(&mut rng, -2.0, 2.0)).collect::<Vec<_>>());
            let r = requant_of(0.4);
            let rec = Op::Binary(Binary { kind, a: ta, b: tb, output: to.clone(), mult_a: r.mult, mult_b: r.mult / 2, shift: r.shift });
            let mut first = None;
            for tier in tiers() {
                for threads in [1, 2] {
                    let mut bt = b.clone();
                    bt.run_threads(rec.clone(), tier, threads);
                    let got = get_ints(&mut bt, &to);
                    assert_eq!(*first.get_or_insert(got.clone()), got, "case {case}: {tier:?} on {threads} threads");
                }
            }
        }
    }
}
