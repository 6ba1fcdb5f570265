//! MaxPool: 2-D max pooling of NCHW codes. The output keeps the input's quantization (scale > 0
//! makes the code order the value order), so the integer max is the float max, exactly.
use super::{movement_pair, Cx, PreparedOp};
use crate::arena::{carve, out_f32, out_i16, out_i8, View};
use crate::format::{DType, MaxPool, TRef};
use crate::kernels::{on_tier, reference::movement, Exec};
use crate::Result;

#[derive(Debug, Clone)]
pub struct Pool {
    input: View,
    output: View,
    /// planes, input height and width
    dims: [usize; 3],
    out_hw: [usize; 2],
    /// kernel height, width, stride height, width
    window: [usize; 4],
    /// padding before the rows and the columns
    before: [usize; 2],
}
pub type Plan<'a> = Pool;

pub fn prepare<'a>(r: &MaxPool<TRef>, cx: &Cx<'a>) -> Result<Plan<'a>> {
    let (input, output) = movement_pair(cx, &r.input, &r.output)?;
    if input.rank() != 4 || output.rank() != 4 {
        return Err(cx.err("max pool takes NCHW tensors"));
    }
    let (i, o) = (input.dims(), output.dims());
    if i[0] != o[0] || i[1] != o[1] {
        return Err(cx.err("max pool keeps the batch and the channels"));
    }
    let [kh, kw] = r.kernel.map(usize::from);
    let [sh, sw] = r.stride.map(usize::from);
    let [pt, pl, pb, pr] = r.pad.map(usize::from);
    // every window holds at least one input element, and the output is the floor-mode count
    // or one more (ceil mode), whose last window still starts inside the input
    // (in u64: no sum overflows on a 32-bit target)
    let axis_ok = |n: usize, k: usize, s: usize, p0: usize, p1: usize, out: usize| {
        let [n, k, s, p0, p1, out] = [n, k, s, p0, p1, out].map(|v| v as u64);
        k > 0
            && s > 0
            && p0 < k
            && n + p0 + p1 >= k
            && out >= 1
            && out <= (n + p0 + p1 - k) / s + 2
            && (out - 1) * s < n + p0
    };
    let (h, w, oh, ow) = (i[2], i[3], o[2], o[3]);
    if !axis_ok(h, kh, sh, pt, pb, oh) || !axis_ok(w, kw, sw, pl, pr, ow) {
        return Err(cx.err("max pool window, stride, padding or output size"));
    }
    Ok(Pool {
        dims: [i[0] * i[1], h, w],
        out_hw: [oh, ow],
        window: [kh, kw, sh, sw],
        before: [pt, pl],
        input,
        output,
    })
}

impl PreparedOp for Pool {
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        let (o, _, io) = carve(arena, self.output.range(), None)?;
        let (d, ohw, win, pad) = (self.dims, self.out_hw, self.window, self.before);
        on_tier(ex.tier, || match self.input.dtype {
            DType::I8 => movement::max_pool(io.i8(&self.input)?, d, out_i8(o), ohw, win, pad),
            DType::I16 => movement::max_pool(io.i16(&self.input)?, d, out_i16(o)?, ohw, win, pad),
            DType::F32 => movement::max_pool(io.f32(&self.input)?, d, out_f32(o)?, ohw, win, pad),
        })
    }
    fn work(&self) -> u64 {
        self.output.numel() as u64 * self.window[0] as u64 * self.window[1] as u64
    }
    fn output(&self) -> &View {
        &self.output
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::testutil::*;

    fn pool(x: &TRef, y: &TRef, k: u16, s: u16, pad: [u16; 4]) -> Op<TRef> {
        Op::MaxPool(MaxPool {
            input: x.clone(),
            output: y.clone(),
            kernel: [k, k],
            stride: [s, s],
            pad,
        })
    }

    #[test]
    fn max_pool_takes_the_largest_code_of_each_window_in_every_element_type() {
        // 4x4 plane, 2x2 windows at stride 2; and 3x3 windows at stride 2 with one padded row and
        // column before (the padding never wins, even over negative values)
        let plane: Vec<i32> = vec![1, -5, 3, 2, -7, 4, -1, 0, 9, 8, -3, -2, -6, 5, -4, -8];
        for dt in [DType::I8, DType::I16, DType::F32] {
            for (k, s, pad, oh, want) in [
                (2u16, 2u16, [0u16; 4], 2u32, vec![4, 3, 9, -2]),
                (3, 2, [1, 1, 0, 0], 2, vec![4, 4, 9, 8]),
            ] {
                let mut b = Bench::new();
                let x = b.tensor(dt, &[1, 1, 4, 4], 1.0, 0);
                let y = b.tensor(dt, &[1, 1, oh, oh], 1.0, 0);
                match dt {
                    DType::I8 => b.put_i8(&x, &plane.iter().map(|&v| v as i8).collect::<Vec<_>>()),
                    DType::I16 => {
                        b.put_i16(&x, &plane.iter().map(|&v| v as i16).collect::<Vec<_>>())
                    }
                    DType::F32 => {
                        b.put_f32(&x, &plane.iter().map(|&v| v as f32).collect::<Vec<_>>())
                    }
                }
                let op = pool(&x, &y, k, s, pad);
                b.run(op);
                let got: Vec<i32> = match dt {
                    DType::F32 => b.get_f32(&y).iter().map(|&v| v as i32).collect(),
                    _ => get_ints(&mut b, &y),
                };
                assert_eq!(got, want, "{dt:?} k={k} s={s} pad={pad:?}");
            }
        }
    }

    #[test]
    fn any_accepted_geometry_runs_and_none_panics() {
        // random kernels, strides, paddings and output sizes around the valid ones: the check
        // either refuses the record or the run succeeds (the kernel's own window test never fires)
        let mut rng = Rng::new(5);
        let mut pick = |n: u64| (rng.next_u64() % n) as u16;
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..3000 {
            let (h, w) = (1 + pick(6) as u32, 1 + pick(6) as u32);
            let (k, s) = (pick(5), pick(4));
            let pad = [pick(4), pick(4), pick(4), pick(4)];
            let (oh, ow) = (1 + pick(7) as u32, 1 + pick(7) as u32);
            let mut b = Bench::new();
            let x = b.tensor(DType::I16, &[1, 2, h, w], 1.0, 0);
            let y = b.tensor(DType::I16, &[1, 2, oh, ow], 1.0, 0);
            let r = b.try_run(Op::MaxPool(MaxPool {
                input: x,
                output: y,
                kernel: [k, k],
                stride: [s, s],
                pad,
            }));
            match r {
                Ok(()) => accepted += 1,
                Err(crate::Error::Invalid { .. }) => refused += 1,
                Err(e) => panic!("h={h} w={w} k={k} s={s} pad={pad:?} out={oh}x{ow}: {e}"),
            }
        }
        assert!(accepted > 100 && refused > 100, "{accepted} accepted, {refused} refused");
    }

    #[test]
    fn max_pool_refuses_windows_outside_the_input() {
        for (k, s, pad, oh) in [
            (2u16, 2u16, [2u16, 0, 0, 0], 2u32), // padding as large as the window
            (2, 2, [0; 4], 3),                    // a third window starting past the input
            (0, 2, [0; 4], 2),                    // empty window
            (2, 0, [0; 4], 2),                    // zero stride
            (5, 1, [0; 4], 1),                    // window larger than the padded input
        ] {
            let mut b = Bench::new();
            let x = b.tensor(DType::I8, &[1, 1, 4, 4], 1.0, 0);
            let y = b.tensor(DType::I8, &[1, 1, oh, oh], 1.0, 0);
            let op = pool(&x, &y, k, s, pad);
            assert!(b.try_run(op).is_err(), "k={k} s={s} pad={pad:?} oh={oh}");
        }
    }
}
