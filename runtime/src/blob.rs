//! Weights that need not fit in RAM: the blob (weights, biases, tables) read on demand from a
//! [`BlobSource`] — flash, an SD card, a file — into a small cache the caller provides.
//!
//! A model loaded with [`crate::Model::load_paged`] keeps only the header, the metadata and the op
//! records in memory. A session made with [`crate::Session::with_pager`] prepares each op just
//! before it runs: every blob array the op's check asks for is looked up in the cache ([`Pager`]),
//! and a missing one is read from the source and the check run again. The op then runs on the
//! cached bytes, which are the file's bytes, so a paged session computes the same bits as one over
//! the whole file. A cache as large as the blob reads every array once; a small one rereads what
//! it had to drop. [`crate::Model::min_cache_bytes`] is the smallest cache that runs the model.
use crate::format::{BlobRef, Op, TRef};
use crate::ops::{self, Cx, Prepared};
use crate::{Error, Result};
use core::cell::Cell;

/// Where the blob's bytes come from.
pub trait BlobSource {
    /// Fills `buf` with the blob's bytes `offset..offset + buf.len()` (offsets from the start of
    /// the blob section), or fails (a short read is [`Error::Truncated`]).
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// A blob held in memory (tests, and sources that are memory-mapped anyway).
impl BlobSource for &[u8] {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).map_err(|_| Error::Truncated)?;
        let end = start.checked_add(buf.len()).ok_or(Error::Truncated)?;
        buf.copy_from_slice(self.get(start..end).ok_or(Error::Truncated)?);
        Ok(())
    }
}

/// The blob section of a `.dmq` file on disk, read with positioned reads (std builds).
#[cfg(feature = "std")]
pub struct FileSource {
    file: std::fs::File,
    /// file offset of the blob section
    base: u64,
}

#[cfg(feature = "std")]
impl FileSource {
    /// The blob of the `.dmq` file `file`, whose section starts at `base` (the header's
    /// `blob.0`; [`crate::format::Header`]).
    pub fn new(file: std::fs::File, base: u64) -> Self {
        FileSource { file, base }
    }
}

#[cfg(feature = "std")]
impl BlobSource for FileSource {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let at = self.base.checked_add(offset).ok_or(Error::Truncated)?;
        self.file
            .seek(SeekFrom::Start(at))
            .map_err(|_| Error::Truncated)?;
        self.file.read_exact(buf).map_err(|_| Error::Truncated)
    }
}

/// Alignment of an array in the cache (as in the file's blob), and the size of the record in
/// front of each.
const ALIGN: usize = 16;

/// What a [`Pager`] did: source reads, bytes read and arrays found in the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PagerStats {
    pub reads: u64,
    pub bytes_read: u64,
    pub hits: u64,
}

/// The weight cache: arrays of the blob in the caller's buffer, front to back, each after a
/// 16-byte record of its blob offset and length (so the cache needs no table of its own and
/// holds as many arrays as fit); when the next array does not fit, the cache starts over empty.
/// One op's arrays must fit together (the op is prepared again after a restart, and a second
/// restart within one op is [`Error::Cache`]). Lookups start after the last hit: ops run in file
/// order, so the next array is usually the next record.
pub struct Pager<'c> {
    cache: &'c mut [u8],
    used: usize,
    blob_len: u32,
    /// where the last lookup found its array (a record's position)
    cursor: Cell<usize>,
    /// the array the last check asked for and did not find
    miss: Cell<Option<BlobRef>>,
    /// cache bytes of the arrays the current check found (records included)
    touched: Cell<usize>,
    /// cache bytes the current op has read, and whether the cache started over during it
    op_bytes: usize,
    restarted: bool,
    hits: Cell<u64>,
    stats: PagerStats,
}

/// Cache bytes of an array of `len` bytes: its record and its bytes rounded up to 16.
fn footprint(len: u32) -> usize {
    ALIGN + (len as usize).div_ceil(ALIGN) * ALIGN
}

impl<'c> Pager<'c> {
    /// A cache over `cache` (16-byte aligned) for a blob of `blob_len` bytes.
    pub fn new(cache: &'c mut [u8], blob_len: u32) -> Result<Self> {
        if (cache.as_ptr() as usize) % ALIGN != 0 {
            return Err(Error::Cache {
                needed: 0,
                got: cache.len(),
            });
        }
        Ok(Pager {
            cache,
            used: 0,
            blob_len,
            cursor: Cell::new(0),
            miss: Cell::new(None),
            touched: Cell::new(0),
            op_bytes: 0,
            restarted: false,
            hits: Cell::new(0),
            stats: PagerStats::default(),
        })
    }

    /// Bytes of the cache.
    pub fn capacity(&self) -> usize {
        self.cache.len()
    }

    /// Length of the blob the arrays come from.
    pub fn blob_len(&self) -> u32 {
        self.blob_len
    }

    /// Reads, bytes read and hits so far.
    pub fn stats(&self) -> PagerStats {
        PagerStats {
            hits: self.hits.get(),
            ..self.stats
        }
    }

    /// The record at cache position `at` (below `used`): blob offset and length.
    fn record(&self, at: usize) -> (u32, u32) {
        let r = &self.cache[at..at + 8];
        (
            u32::from_le_bytes([r[0], r[1], r[2], r[3]]),
            u32::from_le_bytes([r[4], r[5], r[6], r[7]]),
        )
    }

    /// The cached bytes of `b`, or `None` (and `b` remembered as the miss).
    pub(crate) fn get(&self, b: &BlobRef) -> Option<&[u8]> {
        let end = b.offset as u64 + b.len as u64;
        let start = self.cursor.get().min(self.used);
        // from the last hit to the end, then from the front to it
        let (mut at, mut wrapped) = (start, false);
        loop {
            if at >= self.used {
                if wrapped || start == 0 {
                    break;
                }
                (at, wrapped) = (0, true);
            }
            if wrapped && at >= start {
                break;
            }
            let (off, len) = self.record(at);
            if off <= b.offset && end <= off as u64 + len as u64 {
                self.cursor.set(at);
                self.hits.set(self.hits.get() + 1);
                self.touched
                    .set(self.touched.get().saturating_add(footprint(b.len)));
                let from = at + ALIGN + (b.offset - off) as usize;
                return self.cache.get(from..from + b.len as usize);
            }
            at += footprint(len);
        }
        self.miss.set(Some(*b));
        None
    }

    /// Starts the arrays of a new op.
    pub(crate) fn begin_op(&mut self) {
        self.op_bytes = 0;
        self.restarted = false;
    }

    /// Reads array `b` from `src` into the cache.
    pub(crate) fn fetch(&mut self, src: &mut dyn BlobSource, b: BlobRef) -> Result<()> {
        let need = footprint(b.len);
        self.op_bytes = self.op_bytes.saturating_add(need);
        if self.used + need > self.cache.len() {
            // start over: this op's arrays are read again as its check asks for them
            if self.restarted || need > self.cache.len() {
                return Err(Error::Cache {
                    needed: self.op_bytes,
                    got: self.cache.len(),
                });
            }
            (self.used, self.restarted, self.op_bytes) = (0, true, need);
            self.cursor.set(0);
        }
        let at = self.used;
        let (rec, data) = self.cache[at..at + need].split_at_mut(ALIGN);
        rec[..4].copy_from_slice(&b.offset.to_le_bytes());
        rec[4..8].copy_from_slice(&b.len.to_le_bytes());
        src.read(b.offset as u64, &mut data[..b.len as usize])?;
        self.used = at + need;
        self.stats.reads += 1;
        self.stats.bytes_read += b.len as u64;
        Ok(())
    }
}

/// Prepares op `i` of a stream (tensors inside `arena` bytes) against the pager's cache: the check
/// runs until it finds every array it asks for, each missing one read from `src`. Returns the
/// prepared op, which reads the cache, and the cache bytes its arrays take.
pub(crate) fn prepare_paged<'p>(
    op: &Op<TRef>,
    (i, arena): (u32, usize),
    pager: &'p mut Pager<'_>,
    src: &mut dyn BlobSource,
) -> Result<(Prepared<'p>, usize)> {
    pager.begin_op();
    loop {
        pager.miss.set(None);
        let cx = Cx {
            op: i,
            arena,
            blob: Blob::Paged(&*pager),
        };
        let missing = match ops::prepare(op, &cx) {
            Ok(_) => None,
            Err(e) => Some(pager.miss.take().ok_or(e)?),
        };
        match missing {
            None => break,
            Some(b) => pager.fetch(src, b)?,
        }
    }
    pager.touched.set(0);
    let pager: &'p Pager<'_> = pager;
    let cx = Cx {
        op: i,
        arena,
        blob: Blob::Paged(pager),
    };
    let p = ops::prepare(op, &cx)?;
    Ok((p, pager.touched.get()))
}

/// The blob an op record is checked against: the whole section in memory, or a [`Pager`]'s cache.
#[derive(Clone, Copy)]
pub enum Blob<'a> {
    Whole(&'a [u8]),
    Paged(&'a Pager<'a>),
}

impl core::fmt::Debug for Blob<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Blob::Whole(b) => write!(f, "Blob::Whole({} bytes)", b.len()),
            Blob::Paged(p) => write!(f, "Blob::Paged({} of {} bytes)", p.capacity(), p.blob_len),
        }
    }
}

impl<'a> Blob<'a> {
    /// Bytes of the blob section.
    pub fn len(&self) -> usize {
        match self {
            Blob::Whole(b) => b.len(),
            Blob::Paged(p) => p.blob_len as usize,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of `b` (already bounded by the caller), or `None` when they are not cached yet.
    pub(crate) fn array(&self, b: &BlobRef) -> Option<&'a [u8]> {
        match *self {
            Blob::Whole(w) => w.get(b.offset as usize..b.offset as usize + b.len as usize),
            Blob::Paged(p) => p.get(b),
        }
    }
}

/// Reads blob bytes wherever they are: `buf.len()` bytes at `offset` (time tables).
pub(crate) enum Reader<'s> {
    Whole(&'s [u8]),
    Source(&'s mut dyn BlobSource),
}

impl Reader<'_> {
    pub(crate) fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match self {
            Reader::Whole(w) => {
                let mut s: &[u8] = w;
                s.read(offset, buf)
            }
            Reader::Source(s) => s.read(offset, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(offset: u32, len: u32) -> BlobRef {
        BlobRef { offset, len }
    }

    #[test]
    fn arrays_are_the_source_bytes_and_a_full_cache_starts_over() {
        let blob: std::vec::Vec<u8> = (0..200u32).map(|v| (v * 7) as u8).collect();
        let mut src: &[u8] = &blob;
        let mut store = [0u128; 8]; // 128 bytes: two 32-byte arrays with their records, not three
        let cache = bytemuck::cast_slice_mut(&mut store);
        let mut p = Pager::new(cache, 200).unwrap();
        p.begin_op();
        assert!(p.get(&r(16, 32)).is_none());
        assert_eq!(p.miss.take(), Some(r(16, 32)));
        p.fetch(&mut src, r(16, 32)).unwrap();
        p.fetch(&mut src, r(96, 20)).unwrap();
        assert_eq!(p.get(&r(96, 20)).unwrap(), &blob[96..116]);
        // a part of a cached array, found from the last hit on (wrapping to the front)
        assert_eq!(p.get(&r(20, 8)).unwrap(), &blob[20..28]);
        assert_eq!(p.stats().hits, 2);
        // the next op's array does not fit: the cache starts over and holds it alone
        p.begin_op();
        p.fetch(&mut src, r(160, 40)).unwrap();
        assert_eq!(p.get(&r(160, 40)).unwrap(), &blob[160..200]);
        assert!(p.get(&r(16, 32)).is_none());
        let st = p.stats();
        assert_eq!((st.reads, st.bytes_read), (3, 92));
        // within one op a second restart means the op's arrays cannot fit together
        p.begin_op();
        p.fetch(&mut src, r(0, 48)).unwrap();
        p.fetch(&mut src, r(48, 48)).unwrap(); // starts over: the op has this one (64 bytes)
        assert_eq!(
            p.fetch(&mut src, r(96, 80)),
            Err(Error::Cache {
                needed: 160,
                got: 128
            })
        );
        // an array larger than the cache, and a source shorter than the blob
        p.begin_op();
        assert!(matches!(
            p.fetch(&mut src, r(0, 120)),
            Err(Error::Cache { .. })
        ));
        p.begin_op();
        let mut short: &[u8] = &blob[..100];
        assert_eq!(p.fetch(&mut short, r(96, 8)), Err(Error::Truncated));
    }
}
