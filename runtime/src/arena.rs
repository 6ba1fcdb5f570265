//! Views of the caller's arena: a prepared tensor's place and meaning ([`View`]), and the split of the
//! arena for one op into the regions it writes and the rest it reads ([`carve`]).
use crate::format::{DType, MAX_RANK};
use crate::{Error, Result};
use core::ops::Range;

/// A tensor checked against the arena when its op was prepared: byte range, element type, shape
/// and quantization (`real = scale * (code - zero)`; f32 tensors have 1 and 0).
/// Offsets and dimensions are `u32` (the format's), so a plan of many ops stays small.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub start: u32,
    pub end: u32,
    pub dtype: DType,
    pub rank: u8,
    pub dims: [u32; MAX_RANK],
    pub scale: f32,
    pub zero: i32,
}

impl View {
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
    /// The dimensions as `usize`, padded with 1s to `MAX_RANK` (the first `rank` are the shape).
    pub fn dims(&self) -> [usize; MAX_RANK] {
        self.dims.map(|d| d as usize)
    }
    /// Dimension `i` (1 past the rank).
    pub fn dim(&self, i: usize) -> usize {
        self.dims.get(i).map_or(1, |&d| d as usize)
    }
    pub fn rank(&self) -> usize {
        self.rank as usize
    }
    /// Elements (the product of the dimensions, checked at prepare time to fit in `u32`).
    pub fn numel(&self) -> usize {
        (self.end - self.start) as usize / self.dtype.size()
    }
    pub fn overlaps(&self, r: &Range<usize>) -> bool {
        let s = self.range();
        s.start < r.end && r.start < s.end && !s.is_empty() && !r.is_empty()
    }
}

fn misaligned() -> Error {
    Error::Invalid {
        op: u32::MAX,
        what: "a tensor view is misaligned",
    }
}

/// The readable part of the arena for one op: everything but the regions it writes.
pub struct Io<'a> {
    pieces: [(usize, &'a [u8]); 3],
}

/// Integer activation codes (int8, or int16 for protected tensors).
pub enum Ints<'a> {
    I8(&'a [i8]),
    I16(&'a [i16]),
}

pub enum IntsMut<'a> {
    I8(&'a mut [i8]),
    I16(&'a mut [i16]),
}

impl<'a> Io<'a> {
    pub fn bytes(&self, r: Range<usize>) -> Result<&'a [u8]> {
        for (start, p) in self.pieces.iter() {
            if r.start >= *start && r.end <= start + p.len() {
                return Ok(&p[r.start - start..r.end - start]);
            }
        }
        Err(Error::Invalid {
            op: u32::MAX,
            what: "an input overlaps the output or leaves the arena",
        })
    }
    pub fn i8(&self, t: &View) -> Result<&'a [i8]> {
        Ok(bytemuck::cast_slice(self.bytes(t.range())?))
    }
    pub fn i16(&self, t: &View) -> Result<&'a [i16]> {
        bytemuck::try_cast_slice(self.bytes(t.range())?).map_err(|_| misaligned())
    }
    pub fn f32(&self, t: &View) -> Result<&'a [f32]> {
        bytemuck::try_cast_slice(self.bytes(t.range())?).map_err(|_| misaligned())
    }
    pub fn ints(&self, t: &View) -> Result<Ints<'a>> {
        match t.dtype {
            DType::I8 => Ok(Ints::I8(self.i8(t)?)),
            DType::I16 => Ok(Ints::I16(self.i16(t)?)),
            DType::F32 => Err(misaligned()),
        }
    }
}

pub fn out_i8(o: &mut [u8]) -> &mut [i8] {
    bytemuck::cast_slice_mut(o)
}

pub fn out_i16(o: &mut [u8]) -> Result<&mut [i16]> {
    bytemuck::try_cast_slice_mut(o).map_err(|_| misaligned())
}

pub fn out_f32(o: &mut [u8]) -> Result<&mut [f32]> {
    bytemuck::try_cast_slice_mut(o).map_err(|_| misaligned())
}

pub fn out_ints(o: &mut [u8], dt: DType) -> Result<IntsMut<'_>> {
    match dt {
        DType::I8 => Ok(IntsMut::I8(out_i8(o))),
        DType::I16 => Ok(IntsMut::I16(out_i16(o)?)),
        DType::F32 => Err(misaligned()),
    }
}

/// Splits the arena into the mutable regions `a` (the output) and `b` (scratch, if any) and the
/// readable rest. The regions must be inside the arena and disjoint (prepare checked both).
pub fn carve<'a>(
    arena: &'a mut [u8],
    a: Range<usize>,
    b: Option<Range<usize>>,
) -> Result<(&'a mut [u8], Option<&'a mut [u8]>, Io<'a>)> {
    let bad = Error::Invalid {
        op: u32::MAX,
        what: "tensor outside the arena",
    };
    if a.end > arena.len() || a.start > a.end {
        return Err(bad);
    }
    let Some(b) = b else {
        let (p0, rest) = arena.split_at_mut(a.start);
        let (m0, p1) = rest.split_at_mut(a.end - a.start);
        let io = Io {
            pieces: [(0, p0), (a.end, p1), (0, &[])],
        };
        return Ok((m0, None, io));
    };
    if b.end > arena.len() || b.start > b.end || (b.start < a.end && a.start < b.end) {
        return Err(bad);
    }
    let swap = b.start < a.start;
    let (first, second) = if swap {
        (b.clone(), a.clone())
    } else {
        (a.clone(), b.clone())
    };
    let (p0, rest) = arena.split_at_mut(first.start);
    let (m0, rest) = rest.split_at_mut(first.end - first.start);
    let (p1, rest) = rest.split_at_mut(second.start - first.end);
    let (m1, p2) = rest.split_at_mut(second.end - second.start);
    let io = Io {
        pieces: [(0, p0), (first.end, p1), (second.end, p2)],
    };
    Ok(if swap {
        (m1, Some(m0), io)
    } else {
        (m0, Some(m1), io)
    })
}

/// Runs `$body` with `$x` bound to the typed input slice and `$y` to the typed output slice.
#[macro_export]
#[doc(hidden)]
macro_rules! with_io {
    ($a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a, $b) {
            ($crate::arena::Ints::I8($x), $crate::arena::IntsMut::I8($y)) => $body,
            ($crate::arena::Ints::I8($x), $crate::arena::IntsMut::I16($y)) => $body,
            ($crate::arena::Ints::I16($x), $crate::arena::IntsMut::I8($y)) => $body,
            ($crate::arena::Ints::I16($x), $crate::arena::IntsMut::I16($y)) => $body,
        }
    };
}

/// Runs `$body` with `$x` bound to the typed integer input slice.
#[macro_export]
#[doc(hidden)]
macro_rules! with_in {
    ($a:expr, |$x:ident| $body:expr) => {
        match $a {
            $crate::arena::Ints::I8($x) => $body,
            $crate::arena::Ints::I16($x) => $body,
        }
    };
}

/// Runs `$body` with `$y` bound to the typed integer output slice.
#[macro_export]
#[doc(hidden)]
macro_rules! with_out {
    ($a:expr, |$y:ident| $body:expr) => {
        match $a {
            $crate::arena::IntsMut::I8($y) => $body,
            $crate::arena::IntsMut::I16($y) => $body,
        }
    };
}
