//! The fixed 64-byte header, parsed by hand, and the file checksums.
//!
//! Every byte of a file is covered: the header checksum covers the header (all of it but the two
//! checksum fields), the metadata, the op records and the zero padding before the blob; the blob
//! checksum covers the blob. The sections follow each other in that order with no other gaps, the
//! flags are zero and `total_len` is where the blob ends.
use super::{HEADER_LEN, MAGIC, MAJOR_VERSION, MINOR_VERSION};
use crate::{Error, Result};

/// FNV-1a 64-bit hash, used as the file's checksums.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(0xcbf2_9ce4_8422_2325, bytes)
}

/// Continues an FNV-1a 64 hash over more bytes.
pub fn fnv1a64_more(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn rd_u16(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn rd_u32(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn rd_u64(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Alignment of the blob section in the file.
pub const BLOB_ALIGN: u32 = 64;

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub meta: (u32, u32),
    pub ops: (u32, u32),
    pub n_ops: u32,
    pub blob: (u32, u32),
    /// FNV-1a 64 of the header (but the checksums), the metadata, the ops and the padding
    pub meta_checksum: u64,
    /// FNV-1a 64 of the blob
    pub blob_checksum: u64,
    pub total_len: u32,
}

fn header_err(what: &'static str) -> Error {
    Error::Header(what)
}

impl Header {
    /// Parses and checks the header of `bytes` (the file, at least `total_len` long): magic,
    /// version, zero flags, sections in order without gaps. The checksums are checked by
    /// [`Header::verify`].
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let h = Self::parse_head(bytes)?;
        if (bytes.len() as u64) < h.total_len as u64 {
            return Err(Error::Truncated);
        }
        Ok(h)
    }

    /// [`Header::parse`] of a file's head: `bytes` need only reach the blob section (a model
    /// whose blob is read on demand, [`crate::Model::load_paged`]).
    pub fn parse_head(bytes: &[u8]) -> Result<Header> {
        let h = Self::parse_fields(bytes)?;
        if (bytes.len() as u64) < h.blob.0 as u64 {
            return Err(Error::Truncated);
        }
        Ok(h)
    }

    /// The 64 header bytes at the start of `bytes` on their own: magic, version, flags and section
    /// layout (a reader learns from them how much of the file is the head).
    pub fn parse_fields(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < 8 {
            return Err(if MAGIC.starts_with(bytes) {
                Error::Truncated
            } else {
                Error::BadMagic
            });
        }
        if bytes[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let b: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Error::Truncated)?;
        let h = Header {
            major: rd_u16(b, 8),
            minor: rd_u16(b, 10),
            meta: (rd_u32(b, 16), rd_u32(b, 20)),
            ops: (rd_u32(b, 24), rd_u32(b, 28)),
            n_ops: rd_u32(b, 32),
            blob: (rd_u32(b, 36), rd_u32(b, 40)),
            meta_checksum: rd_u64(b, 44),
            blob_checksum: rd_u64(b, 52),
            total_len: rd_u32(b, 60),
        };
        if h.major != MAJOR_VERSION || h.minor > MINOR_VERSION {
            return Err(Error::UnsupportedVersion {
                major: h.major,
                minor: h.minor,
            });
        }
        if rd_u32(b, 12) != 0 {
            return Err(header_err("unknown flags"));
        }
        h.check_layout()?;
        Ok(h)
    }

    /// Metadata right after the header, the op records right after it, the blob at the next
    /// `BLOB_ALIGN` boundary, and the file ending where the blob does.
    fn check_layout(&self) -> Result<()> {
        let end = |(o, l): (u32, u32)| o as u64 + l as u64;
        if self.meta.0 as usize != HEADER_LEN {
            return Err(header_err("the metadata must follow the header"));
        }
        if self.ops.0 as u64 != end(self.meta) {
            return Err(header_err("the op records must follow the metadata"));
        }
        let ops_end = end(self.ops);
        let aligned = ops_end.div_ceil(BLOB_ALIGN as u64) * BLOB_ALIGN as u64;
        if self.blob.0 as u64 != aligned {
            return Err(header_err(
                "the blob must start at the first 64-byte boundary after the op records",
            ));
        }
        if self.total_len as u64 != end(self.blob) {
            return Err(header_err("the total length is not where the blob ends"));
        }
        Ok(())
    }

    /// The two checksums of `file` under this header: the header without its checksums, the
    /// metadata, the op records and the padding; and the blob.
    pub fn checksums(&self, file: &[u8]) -> Result<(u64, u64)> {
        Ok((
            self.head_checksum(file)?,
            fnv1a64(section(file, self.blob)?),
        ))
    }

    /// The first checksum of the file whose head is `head` (at least up to the blob).
    pub fn head_checksum(&self, head: &[u8]) -> Result<u64> {
        let mut hb = [0u8; HEADER_LEN];
        self.write(&mut hb);
        let h = fnv1a64_more(fnv1a64(&hb[..44]), &hb[60..HEADER_LEN]);
        let covered = section(
            head,
            (
                HEADER_LEN as u32,
                self.blob.0.saturating_sub(HEADER_LEN as u32),
            ),
        )?;
        Ok(fnv1a64_more(h, covered))
    }

    /// Checks both checksums of `file` (parsed with this header).
    pub fn verify(&self, file: &[u8]) -> Result<()> {
        let (meta, blob) = self.checksums(file)?;
        if meta != self.meta_checksum {
            return Err(Error::ChecksumMismatch {
                section: "header, metadata and op records",
            });
        }
        if blob != self.blob_checksum {
            return Err(Error::ChecksumMismatch { section: "blob" });
        }
        Ok(())
    }

    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&self.major.to_le_bytes());
        out[10..12].copy_from_slice(&self.minor.to_le_bytes());
        out[12..16].copy_from_slice(&0u32.to_le_bytes());
        out[16..20].copy_from_slice(&self.meta.0.to_le_bytes());
        out[20..24].copy_from_slice(&self.meta.1.to_le_bytes());
        out[24..28].copy_from_slice(&self.ops.0.to_le_bytes());
        out[28..32].copy_from_slice(&self.ops.1.to_le_bytes());
        out[32..36].copy_from_slice(&self.n_ops.to_le_bytes());
        out[36..40].copy_from_slice(&self.blob.0.to_le_bytes());
        out[40..44].copy_from_slice(&self.blob.1.to_le_bytes());
        out[44..52].copy_from_slice(&self.meta_checksum.to_le_bytes());
        out[52..60].copy_from_slice(&self.blob_checksum.to_le_bytes());
        out[60..64].copy_from_slice(&self.total_len.to_le_bytes());
    }
}

/// Lays out a file of format `MAJOR_VERSION.minor`: header, metadata, op records, zero padding to
/// the blob's alignment, blob; with both checksums set.
#[cfg(feature = "std")]
pub fn assemble(meta: &[u8], ops: &[u8], n_ops: u32, blob: &[u8], minor: u16) -> std::vec::Vec<u8> {
    extern crate std;
    let ops_off = HEADER_LEN + meta.len();
    let blob_off = (ops_off + ops.len()).div_ceil(BLOB_ALIGN as usize) * BLOB_ALIGN as usize;
    let mut h = Header {
        major: MAJOR_VERSION,
        minor,
        meta: (HEADER_LEN as u32, meta.len() as u32),
        ops: (ops_off as u32, ops.len() as u32),
        n_ops,
        blob: (blob_off as u32, blob.len() as u32),
        meta_checksum: 0,
        blob_checksum: 0,
        total_len: (blob_off + blob.len()) as u32,
    };
    let mut out = std::vec![0u8; HEADER_LEN];
    out.extend_from_slice(meta);
    out.extend_from_slice(ops);
    out.resize(blob_off, 0);
    out.extend_from_slice(blob);
    // the sections were laid out by this function: they are in place
    if let Ok((m, b)) = h.checksums(&out) {
        (h.meta_checksum, h.blob_checksum) = (m, b);
    }
    let mut hb = [0u8; HEADER_LEN];
    h.write(&mut hb);
    out[..HEADER_LEN].copy_from_slice(&hb);
    out
}

/// Slices `bytes[off..off+len]` with checked arithmetic.
pub fn section(bytes: &[u8], (off, len): (u32, u32)) -> Result<&[u8]> {
    let end = (off as usize)
        .checked_add(len as usize)
        .ok_or(Error::Truncated)?;
    bytes.get(off as usize..end).ok_or(Error::Truncated)
}
