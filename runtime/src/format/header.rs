//! The fixed 64-byte header, parsed by hand, and the file checksums.
use super::{HEADER_LEN, MAGIC, MAJOR_VERSION};
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

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub meta: (u32, u32),
    pub ops: (u32, u32),
    pub n_ops: u32,
    pub blob: (u32, u32),
    pub meta_checksum: u64,
    pub blob_checksum: u64,
    pub total_len: u32,
}

impl Header {
    pub fn parse(bytes: &[u8]) -> Result<Header> {
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
        if h.major != MAJOR_VERSION {
            return Err(Error::UnsupportedVersion {
                major: h.major,
                minor: h.minor,
            });
        }
        if (bytes.len() as u64) < h.total_len as u64 {
            return Err(Error::Truncated);
        }
        Ok(h)
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

/// Slices `bytes[off..off+len]` with checked arithmetic.
pub fn section(bytes: &[u8], (off, len): (u32, u32)) -> Result<&[u8]> {
    let end = (off as usize)
        .checked_add(len as usize)
        .ok_or(Error::Truncated)?;
    bytes.get(off as usize..end).ok_or(Error::Truncated)
}
