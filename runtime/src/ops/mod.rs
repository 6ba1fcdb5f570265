//! One module per op: its check, its prepared (kernel-ready) form and its execution, side by side.
//!
//! `prepare` is the only place an op record is checked. [`crate::Model::load`] prepares every record
//! of every stream once (and keeps nothing but the result's work count), a [`crate::Session`]
//! prepares the records of the stream it runs into its plan, and [`Prepared::run`] then runs without
//! decoding or re-deriving anything. Because the load-time check and the run-time preparation are
//! the same function, a file that loads prepares; and everything a kernel relies on (tensor extents
//! inside the arena, disjoint outputs, table lengths, loop counts derived from tensor sizes) is
//! established by `prepare`.
//!
//! The modules and the dispatch below are generated from the one op list, [`crate::op_list!`].
use crate::arena::View;
use crate::blob::Blob;
use crate::format::{BlobRef, DType, Op, Requant, TRef, ARENA_ALIGN, MAX_RANK};
use crate::kernels::Exec;
use crate::{Error, Result};

/// What every prepared op offers the session.
pub trait PreparedOp {
    /// Runs the op over the arena. Never fails for a plan `prepare` returned and the arena the
    /// model was validated against; every access is still checked.
    fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()>;
    /// Multiply-accumulates (products) or element operations (everything else) of one run.
    fn work(&self) -> u64;
    /// The tensor the op writes.
    fn output(&self) -> &View;
}

macro_rules! prepared_ops {
    ( $( $(#[$doc:meta])* $Name:ident ($module:ident, $label:literal, $class:ident)
         { $($fields:tt)* } )* ) => {
        $( pub mod $module; )*

        /// An op record checked and turned into its kernel-ready form.
        #[derive(Debug, Clone)]
        pub enum Prepared<'a> {
            /// A plan slot that holds no op yet.
            Idle,
            $( $Name($module::Plan<'a>), )*
        }

        /// Checks an op record against the arena and the blob and prepares it. This is the one
        /// check of an op: `Model::load` calls it for every record, the session before running.
        pub fn prepare<'a>(op: &Op<TRef>, cx: &Cx<'a>) -> Result<Prepared<'a>> {
            match op {
                $( Op::$Name(r) => $module::prepare(r, cx).map(Prepared::$Name), )*
            }
        }

        impl Prepared<'_> {
            fn plan(&self) -> Option<&dyn PreparedOp> {
                match self {
                    Prepared::Idle => None,
                    $( Prepared::$Name(p) => Some(p), )*
                }
            }
            /// The op's display name (as in the op list).
            pub fn name(&self) -> &'static str {
                match self {
                    Prepared::Idle => "Idle",
                    $( Prepared::$Name(_) => $label, )*
                }
            }
        }
    };
}

crate::op_list!(prepared_ops);

impl Prepared<'_> {
    pub const IDLE: Prepared<'static> = Prepared::Idle;

    pub fn run(&self, arena: &mut [u8], ex: Exec) -> Result<()> {
        self.plan()
            .ok_or(Error::Unsupported("an unprepared op slot was run"))?
            .run(arena, ex)
    }
    pub fn work(&self) -> u64 {
        self.plan().map_or(0, |p| p.work())
    }
    pub fn output(&self) -> Option<&View> {
        self.plan().map(|p| p.output())
    }
}

/// Prepares `op` against an arena of `arena.len()` bytes and runs it once (tools and tests; a
/// session prepares once and runs many times).
pub fn run_record(op: &Op<TRef>, arena: &mut [u8], blob: &[u8], ex: Exec) -> Result<()> {
    let cx = Cx {
        op: 0,
        arena: arena.len(),
        blob: Blob::Whole(blob),
    };
    prepare(op, &cx)?.run(arena, ex)
}

/// What a record is checked against: the bytes op tensors may occupy and the blob.
#[derive(Debug, Clone, Copy)]
pub struct Cx<'a> {
    /// index of the op in its stream (for error messages)
    pub op: u32,
    /// arena bytes available to op tensors
    pub arena: usize,
    pub blob: Blob<'a>,
}

impl<'a> Cx<'a> {
    pub fn err(&self, what: &'static str) -> Error {
        Error::Invalid { op: self.op, what }
    }

    /// A tensor of element type `dtype`: every dimension positive, at most `u32::MAX` elements,
    /// inside the arena, 16-byte aligned, finite positive scale, zero point in the code range.
    pub fn view(&self, t: &TRef, dtype: DType) -> Result<View> {
        if t.dtype != dtype {
            return Err(self.err("tensor has the wrong element type"));
        }
        let mut dims = [1u32; MAX_RANK];
        let mut n: u64 = 1;
        for (i, &d) in t.shape.iter().enumerate() {
            if d == 0 {
                return Err(self.err("tensor has an empty dimension"));
            }
            n = n.saturating_mul(d as u64);
            dims[i] = d;
        }
        if n > u32::MAX as u64 {
            return Err(self.err("tensor too large"));
        }
        let end = (t.offset as u64) + n * dtype.size() as u64;
        if end > self.arena as u64 {
            return Err(self.err("tensor outside the arena"));
        }
        if t.offset % ARENA_ALIGN != 0 {
            return Err(self.err("tensor offset not aligned"));
        }
        if !(t.scale.is_finite() && t.scale > 0.0) {
            return Err(self.err("quantization scale must be finite and positive"));
        }
        let (lo, hi) = dtype.code_range();
        if dtype.is_int() && !(lo..=hi).contains(&t.zero) {
            return Err(self.err("zero point outside the code range"));
        }
        Ok(View {
            start: t.offset,
            end: end as u32,
            dtype,
            rank: t.shape.len() as u8,
            dims,
            scale: t.scale,
            zero: t.zero,
        })
    }
    /// An int8 or int16 activation.
    pub fn int(&self, t: &TRef) -> Result<View> {
        if !t.dtype.is_int() {
            return Err(self.err("tensor must be int8 or int16"));
        }
        self.view(t, t.dtype)
    }
    /// A tensor of any element type.
    pub fn any(&self, t: &TRef) -> Result<View> {
        self.view(t, t.dtype)
    }

    /// A blob array of exactly `len` bytes.
    pub fn blob(&self, b: &BlobRef, len: usize) -> Result<&'a [u8]> {
        if b.len as usize != len {
            return Err(self.err("blob array has the wrong length"));
        }
        if b.offset as u64 + b.len as u64 > self.blob.len() as u64 {
            return Err(self.err("blob array outside the blob"));
        }
        // a paged blob reads the array into its cache when this says it is missing
        self.blob
            .array(b)
            .ok_or(Error::Unsupported("blob array not in the weight cache"))
    }

    /// A per-channel requantization table of `n` (mult, shift) entries, each in range.
    pub fn requant_table(&self, b: &BlobRef, n: usize) -> Result<&'a [u8]> {
        let len = n
            .checked_mul(8)
            .ok_or(self.err("requantization table too large"))?;
        let t = self.blob(b, len)?;
        for e in t.chunks_exact(8) {
            let m = i32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let s = i32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            if m < 0 || !(1..=62).contains(&s) {
                return Err(self.err("requantization entry out of range"));
            }
        }
        Ok(t)
    }

    pub fn requant(&self, r: &Requant) -> Result<()> {
        if r.mult < 0 || !(1..=62).contains(&r.shift) {
            return Err(self.err("requantization parameters out of range"));
        }
        Ok(())
    }

    /// The output shares no byte with any input.
    pub fn disjoint(&self, out: &View, ins: &[&View]) -> Result<()> {
        if ins.iter().any(|i| out.overlaps(&i.range())) {
            return Err(self.err("output overlaps an input"));
        }
        Ok(())
    }

    pub fn same_numel(&self, a: &View, b: &View) -> Result<()> {
        if a.numel() != b.numel() {
            return Err(self.err("element counts differ"));
        }
        Ok(())
    }

    /// `inp` broadcasts to `out`: same rank, every dimension 1 or equal.
    pub fn broadcasts(&self, inp: &View, out: &View) -> Result<()> {
        if inp.rank != out.rank {
            return Err(self.err("broadcast ranks differ"));
        }
        if inp
            .dims
            .iter()
            .zip(&out.dims)
            .any(|(a, b)| a != b && *a != 1)
        {
            return Err(self.err("input does not broadcast to the output"));
        }
        Ok(())
    }

    /// An arena range of `bytes` at `offset` for scratch: inside the arena, aligned, and apart from
    /// every given tensor.
    pub fn scratch(
        &self,
        offset: u32,
        bytes: usize,
        apart: &[&View],
    ) -> Result<core::ops::Range<usize>> {
        let end = offset as u64 + bytes as u64;
        if end > self.arena as u64 || offset % ARENA_ALIGN != 0 {
            return Err(self.err("scratch outside the arena"));
        }
        let r = offset as usize..end as usize;
        if apart.iter().any(|t| t.overlaps(&r)) {
            return Err(self.err("scratch overlaps a tensor"));
        }
        Ok(r)
    }
}

impl Cx<'_> {
    /// A strided index space whose elements all lie inside `len` elements: `extents` positive and
    /// `1 + sum (e_i - 1) * s_i <= len`. Returns that extent.
    pub fn fits(&self, extents: &[u32], strides: &[u32], len: usize) -> Result<u64> {
        if extents.contains(&0) {
            return Err(self.err("product dimensions must be positive"));
        }
        let ext = extents
            .iter()
            .zip(strides)
            .map(|(&e, &s)| (e as u64 - 1) * s as u64)
            .fold(1u64, |a, b| a.saturating_add(b));
        if ext > len as u64 {
            return Err(self.err("product geometry outside its tensors"));
        }
        Ok(ext)
    }

    /// Like [`Cx::fits`], and every index maps to its own element (the axes nest: sorted by stride,
    /// each stride at least the span of the axes below it), so the index space has at most `len`
    /// elements: loop counts are bounded by the tensor.
    pub fn distinct(&self, extents: &[u32], strides: &[u32], len: usize) -> Result<()> {
        self.fits(extents, strides, len)?;
        let mut axes = [(0u64, 0u64); 4];
        let mut n = 0;
        for (&e, &s) in extents.iter().zip(strides) {
            if e > 1 {
                if n == axes.len() {
                    return Err(self.err("too many product axes"));
                }
                axes[n] = (s as u64, e as u64);
                n += 1;
            }
        }
        let axes = &mut axes[..n];
        axes.sort_unstable();
        let mut span = 1u64;
        for &(s, e) in axes.iter() {
            if s < span {
                return Err(self.err("output elements of a product overlap"));
            }
            span = s.saturating_mul(e);
        }
        Ok(())
    }
}

/// Element strides of `shape` read with broadcasting into `out` (dims 1 -> stride 0).
pub(crate) fn broadcast_strides(inp: &View, out: &View) -> Result<[usize; MAX_RANK]> {
    let (i, o) = (inp.dims(), out.dims());
    crate::kernels::broadcast_strides(&i[..inp.rank()], &o[..out.rank()])
}

#[cfg(test)]
pub(crate) mod testutil;

/// A data-movement gather: `out[walk order of shape with strides so] = input[base + strides si]`,
/// for any element type (the movement ops share it).
pub(crate) fn gather(
    io: &crate::arena::Io<'_>,
    input: &View,
    o: &mut [u8],
    shape: &[usize],
    si: &[usize; MAX_RANK],
    base: usize,
    so: &[usize; MAX_RANK],
) -> Result<()> {
    use crate::arena::{out_f32, out_i16, out_i8};
    use crate::kernels::reference::movement::strided_map;
    match input.dtype {
        DType::I8 => strided_map(io.i8(input)?, shape, si, base, out_i8(o), so, 0, |v: i8| v),
        DType::I16 => strided_map(
            io.i16(input)?,
            shape,
            si,
            base,
            out_i16(o)?,
            so,
            0,
            |v: i16| v,
        ),
        DType::F32 => strided_map(
            io.f32(input)?,
            shape,
            si,
            base,
            out_f32(o)?,
            so,
            0,
            |v: f32| v,
        ),
    }
}

/// The input and output of a movement op: any element type, the same for both, disjoint.
pub(crate) fn movement_pair(cx: &Cx<'_>, input: &TRef, output: &TRef) -> Result<(View, View)> {
    let i = cx.any(input)?;
    let o = cx.view(output, i.dtype)?;
    cx.disjoint(&o, &[&i])?;
    Ok((i, o))
}

#[cfg(test)]
mod size_tests {
    /// A session keeps one stream's prepared ops: they stay small (the plan of a 300-op stream is
    /// about 150 KB on a 64-bit host).
    #[test]
    fn a_prepared_op_stays_small() {
        let size = core::mem::size_of::<super::Prepared<'static>>();
        std::eprintln!("size of a prepared op: {size} bytes");
        assert!(size <= 512, "Prepared is {size} bytes");
    }
}
