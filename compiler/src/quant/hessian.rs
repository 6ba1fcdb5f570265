//! The input statistics of the products for GPTQ weight rounding (`super::gptq`): `H = sum x x^T`
//! over the rows a conv or linear multiplies its weights with (for a conv, the patches of a
//! subsample of output pixels, in the weights' `[ci][ky][kx]` order), on float inputs calibration
//! kept from the model's own sampler trajectories ([`KeptInput`]), run again through the float
//! model. `DMQ_DEBUG_GPTQ=1` names the products left out and why.
use crate::ir::{IrOp, Program, Weights};
use anyhow::Result;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tract_onnx::prelude::tract_ndarray::{linalg::general_mat_mul, ArrayView2, ArrayViewMut2};

/// Input rows (conv patches, linear tokens) gathered per product and evaluation, at most.
const ROWS_PER_EVAL: usize = 512;
/// Products deeper than this keep nearest rounding (the factorisations cost `depth^3`).
pub const MAX_DEPTH: usize = 4608;
/// The products' Hessians held at once, at most (f64): past it the deepest products keep nearest
/// rounding (an SD-sized UNet's would take several GB).
pub const HESSIAN_BYTES: usize = 2 << 30;
/// Float inputs calibration keeps, about.
pub const KEPT_INPUTS: usize = 32;

/// One float model input of a calibration trajectory: latent, timestep, and the extra inputs of the
/// conditional and (with guidance) unconditional passes.
#[derive(Clone)]
pub struct KeptInput {
    pub x: Vec<f32>,
    pub t: f32,
    pub cond: Vec<Vec<f32>>,
    pub uncond: Vec<Vec<f32>>,
}

/// How many inputs calibration keeps from `trajectories` of `steps` steps.
pub fn kept_count(steps: usize, trajectories: usize) -> usize {
    (0..trajectories.min(4))
        .map(|s| {
            (0..steps)
                .filter(|&i| kept(i, s, steps, trajectories))
                .count()
        })
        .sum()
}

/// Whether step `i` of trajectory `s` is kept: of the first (at most 4) trajectories one after
/// another, every `stride`-th input, about [`KEPT_INPUTS`] in all; each trajectory's kept steps
/// start where the previous one's left off, so that together they cover the steps more evenly.
pub fn kept(i: usize, s: usize, steps: usize, trajectories: usize) -> bool {
    let seeds = trajectories.min(4);
    // rounded to the nearest stride: 50 steps of one trajectory keep 25, not all 50
    let stride = ((steps * seeds + KEPT_INPUTS / 2) / KEPT_INPUTS).max(1);
    s < seeds && (s * steps + i).is_multiple_of(stride)
}

/// `sum x x^T` over the gathered input rows of one weight array's products (`k x k`, row-major).
pub struct Hessian {
    pub k: usize,
    pub h: Vec<f64>,
}

/// The Hessians of a program's products, by weight array ([`key`]).
#[derive(Default)]
pub struct Hessians {
    by_weights: HashMap<usize, Arc<Hessian>>,
    /// products with a Hessian; products left to nearest rounding (no observed input of their
    /// shape, deeper than [`MAX_DEPTH`] or past [`HESSIAN_BYTES`])
    pub layers: usize,
    pub skipped: usize,
    /// float evaluations run to gather them
    pub evaluations: usize,
}

impl Hessians {
    pub fn get(&self, w: &Weights) -> Option<&Arc<Hessian>> {
        self.by_weights.get(&key(w))
    }
}

/// A weight array's identity: the address of its shared allocation (IR weights are never changed
/// after lowering, and every copy of a program shares them).
pub fn key(w: &Weights) -> usize {
    Arc::as_ptr(w) as usize
}

/// How a product's input rows are read from its input tensor (`[1, c, h, w]` for a conv).
#[derive(Clone, Copy)]
enum Rows {
    Conv {
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        sh: usize,
        sw: usize,
        /// top, left, bottom, right
        pad: [usize; 4],
        oh: usize,
        ow: usize,
    },
    /// `m` rows of `k` values: value `j` of row `i` at `i * sm + j * sk`
    Linear {
        m: usize,
        k: usize,
        sm: usize,
        sk: usize,
    },
}

impl Rows {
    fn depth(&self) -> usize {
        match *self {
            Rows::Conv { c, kh, kw, .. } => c * kh * kw,
            Rows::Linear { k, .. } => k,
        }
    }
    fn count(&self) -> usize {
        match *self {
            Rows::Conv { oh, ow, .. } => oh * ow,
            Rows::Linear { m, .. } => m,
        }
    }
    /// The largest element index a row reads, plus one.
    fn extent(&self) -> usize {
        match *self {
            Rows::Conv { c, h, w, .. } => c * h * w,
            Rows::Linear { m, k, sm, sk } => {
                if m == 0 || k == 0 {
                    0
                } else {
                    (m - 1) * sm + (k - 1) * sk + 1
                }
            }
        }
    }
    /// Up to [`ROWS_PER_EVAL`] rows of `v`, evenly strided from an offset that `salt` varies,
    /// appended to `x` (row-major, [`Rows::depth`] values each). Returns the rows gathered.
    fn gather(&self, v: &[f32], salt: usize, x: &mut Vec<f32>) -> usize {
        let n = self.count();
        let stride = n.div_ceil(ROWS_PER_EVAL).max(1);
        let first = salt.wrapping_mul(0x9e37_79b9) % stride;
        let mut got = 0;
        for r in (first..n).step_by(stride) {
            match *self {
                Rows::Conv {
                    c,
                    h,
                    w,
                    kh,
                    kw,
                    sh,
                    sw,
                    pad,
                    ow,
                    ..
                } => {
                    let (oy, ox) = (r / ow, r % ow);
                    for ci in 0..c {
                        for ky in 0..kh {
                            let y = (oy * sh + ky) as isize - pad[0] as isize;
                            for kx in 0..kw {
                                let xx = (ox * sw + kx) as isize - pad[1] as isize;
                                let inside =
                                    y >= 0 && (y as usize) < h && xx >= 0 && (xx as usize) < w;
                                x.push(if inside {
                                    v[(ci * h + y as usize) * w + xx as usize]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
                Rows::Linear { k, sm, sk, .. } => {
                    x.extend((0..k).map(|j| v[r * sm + j * sk]));
                }
            }
            got += 1;
        }
        got
    }
}

/// A product whose Hessian is gathered: its weights' key, the tract node whose output is its
/// input, that output's element count, and how its rows are read.
struct Layer {
    key: usize,
    node: usize,
    numel: usize,
    rows: Rows,
}

/// The products of `p` with 8- or 4-bit weights, as [`Layer`]s, and the count of those left out.
fn layers(p: &Program) -> (Vec<Layer>, usize) {
    let (mut out, mut skipped) = (vec![], 0);
    for op in &p.ops {
        let (input, w, rows) = match op {
            IrOp::Conv {
                input,
                output,
                w,
                kernel,
                stride,
                pad,
                ..
            } => {
                let (i, o) = (&p.t(*input).shape, &p.t(*output).shape);
                if i.len() != 4 || o.len() != 4 || i[0] != 1 {
                    skipped += 1;
                    continue;
                }
                let rows = Rows::Conv {
                    c: i[1],
                    h: i[2],
                    w: i[3],
                    kh: kernel[0],
                    kw: kernel[1],
                    sh: stride[0],
                    sw: stride[1],
                    pad: *pad,
                    oh: o[2],
                    ow: o[3],
                };
                (*input, w, rows)
            }
            IrOp::Linear {
                input,
                geom,
                w,
                float: false,
                ..
            } => {
                let rows = Rows::Linear {
                    m: geom.m as usize,
                    k: geom.k as usize,
                    sm: geom.a_strides[0] as usize,
                    sk: geom.a_strides[1] as usize,
                };
                (*input, w, rows)
            }
            _ => continue,
        };
        let t = p.t(input);
        let fits = rows.extent() <= t.numel() && w.len() % rows.depth().max(1) == 0;
        match t.stat.or(t.value) {
            Some(node) if fits && rows.depth() <= MAX_DEPTH && rows.depth() > 0 => {
                out.push(Layer {
                    key: key(w),
                    node,
                    numel: t.numel(),
                    rows,
                })
            }
            _ => {
                if std::env::var_os("DMQ_DEBUG_GPTQ").is_some() {
                    eprintln!(
                        "gptq: nearest for {} (input {} {:?}, stat {:?}, alias {:?}, fits {fits})",
                        op.kind(),
                        t.name,
                        t.shape,
                        t.stat,
                        t.alias
                    );
                }
                skipped += 1
            }
        }
    }
    let dropped = within_memory(&mut out, HESSIAN_BYTES);
    (out, skipped + dropped)
}

/// Keeps the shallowest of `layers` whose Hessians (f64, `depth^2` each) fit in `bytes` together,
/// in their order; returns how many it dropped.
fn within_memory(layers: &mut Vec<Layer>, bytes: usize) -> usize {
    let size = |l: &Layer| l.rows.depth().pow(2) * 8;
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| size(&layers[i]));
    let mut keep = vec![false; layers.len()];
    let mut total = 0;
    for i in order {
        if total + size(&layers[i]) <= bytes {
            total += size(&layers[i]);
            keep[i] = true;
        }
    }
    let before = layers.len();
    let mut k = keep.into_iter();
    layers.retain(|_| k.next().unwrap_or(false));
    before - layers.len()
}

/// Multiply-accumulates of the input products `x^T x` that [`collect`] adds per evaluation.
pub fn macs_per_eval(p: &Program) -> u64 {
    let (layers, _) = layers(p);
    layers
        .iter()
        .map(|l| (l.rows.count().min(ROWS_PER_EVAL) * l.rows.depth().pow(2)) as u64)
        .sum()
}

/// The Hessians of `p`'s products over calibration's kept inputs (each run through the float
/// model again, with guidance both passes). Deterministic for any number of cores: each layer
/// sums its inputs in their order.
pub fn collect(
    float: &crate::import::FloatModel,
    opts: &crate::CompileOptions,
    p: &Program,
    kept: &[KeptInput],
) -> Result<Hessians> {
    let (layers, skipped) = layers(p);
    let nodes: HashSet<usize> = layers.iter().map(|l| l.node).collect();
    let mut acc: Vec<(Vec<f64>, usize)> = layers
        .iter()
        .map(|l| (vec![0f64; l.rows.depth() * l.rows.depth()], 0))
        .collect();
    let mut evaluations = 0;
    for (e, input) in kept.iter().enumerate() {
        // the gathered rows of each layer in this evaluation (with guidance, both passes)
        let mut x: Vec<(Vec<f32>, usize)> = vec![(vec![], 0); layers.len()];
        float.set_extras(input.cond.clone())?;
        crate::float_output(
            float,
            opts,
            Some((&input.cond, &input.uncond)),
            &input.x,
            input.t,
            |node, outs| {
                if !nodes.contains(&node) {
                    return;
                }
                crate::calib::with_values(outs, |v| {
                    for (l, (xs, n)) in layers.iter().zip(x.iter_mut()) {
                        if l.node == node && v.len() == l.numel {
                            *n += l.rows.gather(v, e, xs);
                        }
                    }
                });
            },
        )?;
        evaluations += 1;
        add_products(&layers, &x, &mut acc);
    }
    let mut hessians = Hessians {
        evaluations,
        skipped,
        ..Default::default()
    };
    let mut summed: HashMap<usize, Hessian> = HashMap::new();
    for (l, (h, rows)) in layers.iter().zip(acc) {
        if rows == 0 {
            hessians.skipped += 1;
            continue;
        }
        hessians.layers += 1;
        let k = l.rows.depth();
        let e = summed.entry(l.key).or_insert(Hessian {
            k,
            h: vec![0f64; k * k],
        });
        if e.k != k {
            continue;
        }
        for (a, b) in e.h.iter_mut().zip(&h) {
            *a += b;
        }
    }
    hessians.by_weights = summed.into_iter().map(|(k, h)| (k, Arc::new(h))).collect();
    Ok(hessians)
}

/// `acc[l] += x_l^T x_l` for every layer's gathered rows, the layers split over the cores.
fn add_products(layers: &[Layer], x: &[(Vec<f32>, usize)], acc: &mut [(Vec<f64>, usize)]) {
    let threads = crate::import::cores().max(1);
    let per = layers.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for ((ls, xs), accs) in layers
            .chunks(per)
            .zip(x.chunks(per))
            .zip(acc.chunks_mut(per))
        {
            scope.spawn(move || {
                for ((l, (xv, n)), (h, rows)) in ls.iter().zip(xs).zip(accs) {
                    if *n == 0 {
                        continue;
                    }
                    let k = l.rows.depth();
                    let mut g = vec![0f32; k * k];
                    let a = ArrayView2::from_shape((*n, k), &xv[..]).expect("gathered rows");
                    let mut c = ArrayViewMut2::from_shape((k, k), &mut g[..]).expect("k x k");
                    general_mat_mul(1.0, &a.t(), &a, 0.0, &mut c);
                    for (d, s) in h.iter_mut().zip(&g) {
                        *d += *s as f64;
                    }
                    *rows += n;
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hessians_beyond_the_memory_cap_leave_the_deepest_products_to_nearest_rounding() {
        let linear = |k: usize| Layer {
            key: k,
            node: 0,
            numel: k,
            rows: Rows::Linear {
                m: 1,
                k,
                sm: k,
                sk: 1,
            },
        };
        let mut layers: Vec<Layer> = [100, 300, 50, 200].into_iter().map(linear).collect();
        // room for 50^2 + 100^2 + 200^2 values, not 300^2 as well
        let dropped = within_memory(&mut layers, 8 * (2_500 + 10_000 + 40_000 + 100));
        assert_eq!(dropped, 1);
        let kept: Vec<usize> = layers.iter().map(|l| l.rows.depth()).collect();
        assert_eq!(kept, vec![100, 50, 200]);
    }

    #[test]
    fn calibration_keeps_about_32_inputs_spread_over_steps_and_seeds() {
        // (steps, trajectories) -> kept: DDIM-50 with 8 or 16 trajectories, the consistency
        // sampler's 5 sigmas, one capped trajectory of 50 steps, 10 steps of 2
        for ((steps, traj), want) in [((50, 8), 34), ((50, 16), 34), ((5, 8), 20), ((50, 1), 25)]
            .into_iter()
            .chain([((10, 2), 20)])
        {
            assert_eq!(kept_count(steps, traj), want, "{steps} steps x {traj}");
        }
        // every seed kept contributes, at different steps
        assert!((0..4).all(|s| (0..50).filter(|&i| kept(i, s, 50, 8)).count() >= 8));
        assert!(!kept(0, 1, 50, 8) && kept(4, 1, 50, 8));
    }

    #[test]
    fn conv_rows_are_patches_in_weight_order() {
        // 2 channels of 3x3, a 2x2 kernel, stride 1, padding 1 on the left and top
        let r = Rows::Conv {
            c: 2,
            h: 3,
            w: 3,
            kh: 2,
            kw: 2,
            sh: 1,
            sw: 1,
            pad: [1, 1, 0, 0],
            oh: 3,
            ow: 3,
        };
        let v: Vec<f32> = (0..18).map(|i| i as f32 + 1.0).collect();
        let mut x = vec![];
        assert_eq!(r.gather(&v, 0, &mut x), 9);
        // output pixel (0, 0): taps (-1,-1) (-1,0) (0,-1) (0,0) per channel
        assert_eq!(&x[..8], &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 10.0]);
        // output pixel (2, 2): input (1,1) (1,2) (2,1) (2,2)
        assert_eq!(&x[64..72], &[5.0, 6.0, 8.0, 9.0, 14.0, 15.0, 17.0, 18.0]);
    }
}
