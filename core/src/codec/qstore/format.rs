//! The fixed parts of a `.qst` file: its header and the entries of its tensor directory.
//!
//! ```text
//! header (48 bytes) | directory | INT8 section | high-precision section
//! ```
//!
//! Every field is a named little-endian byte range; [`FileHeader::new_checked`] and
//! [`DirEntry::parse`] check lengths, magic, version and CRC before anything is used. The full
//! byte-by-byte description is docs/format/qstore.md.

use super::QstoreError;

/// File magic.
pub const MAGIC: [u8; 8] = *b"NBQSTORE";
/// Format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header length.
pub const HEADER_LEN: usize = 48;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const TENSORS: Range<usize> = 12..16;
    pub const DIR_LEN: Range<usize> = 16..24;
    pub const INT8_LEN: Range<usize> = 24..32;
    pub const HP_LEN: Range<usize> = 32..40;
    pub const DIR_CRC: Range<usize> = 40..44;
    pub const CRC: Range<usize> = 44..48;
}

fn u64_at(b: &[u8], r: core::ops::Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_le_bytes(a)
}

/// The decoded file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileHeader {
    /// Number of directory entries.
    pub tensors: u32,
    /// Directory length in bytes.
    pub dir_len: u64,
    /// INT8 section length in bytes.
    pub int8_len: u64,
    /// High-precision section length in bytes.
    pub hp_len: u64,
    /// CRC32 of the directory bytes.
    pub dir_crc: u32,
}

impl FileHeader {
    /// Parses and checks a header against the length of the whole file.
    pub fn new_checked(b: &[u8], file_len: u64) -> Result<FileHeader, QstoreError> {
        let b = b
            .get(..HEADER_LEN)
            .ok_or(QstoreError::Corrupted("file header truncated"))?;
        if b[field::MAGIC] != MAGIC {
            return Err(QstoreError::Corrupted("file magic (not a .qst file)"));
        }
        if u32_at(b, field::CRC) != crc32fast::hash(&b[..field::CRC.start]) {
            return Err(QstoreError::Corrupted("file header CRC"));
        }
        if u16::from_le_bytes([b[8], b[9]]) != VERSION {
            return Err(QstoreError::Corrupted("unsupported file version"));
        }
        if b[field::FLAGS] != [0, 0] {
            return Err(QstoreError::Corrupted("unknown header flags"));
        }
        let h = FileHeader {
            tensors: u32_at(b, field::TENSORS),
            dir_len: u64_at(b, field::DIR_LEN),
            int8_len: u64_at(b, field::INT8_LEN),
            hp_len: u64_at(b, field::HP_LEN),
            dir_crc: u32_at(b, field::DIR_CRC),
        };
        let total = (HEADER_LEN as u64)
            .checked_add(h.dir_len)
            .and_then(|t| t.checked_add(h.int8_len))
            .and_then(|t| t.checked_add(h.hp_len));
        if total != Some(file_len) {
            return Err(QstoreError::Corrupted(
                "section lengths do not add up to the file length",
            ));
        }
        Ok(h)
    }

    /// Encodes the header.
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        out[field::FLAGS].copy_from_slice(&[0, 0]);
        out[field::TENSORS].copy_from_slice(&self.tensors.to_le_bytes());
        out[field::DIR_LEN].copy_from_slice(&self.dir_len.to_le_bytes());
        out[field::INT8_LEN].copy_from_slice(&self.int8_len.to_le_bytes());
        out[field::HP_LEN].copy_from_slice(&self.hp_len.to_le_bytes());
        out[field::DIR_CRC].copy_from_slice(&self.dir_crc.to_le_bytes());
        let crc = crc32fast::hash(&out[..field::CRC.start]);
        out[field::CRC].copy_from_slice(&crc.to_le_bytes());
    }

    /// Offset of the INT8 section in the file.
    pub fn int8_start(&self) -> u64 {
        HEADER_LEN as u64 + self.dir_len
    }

    /// Offset of the high-precision section in the file.
    pub fn hp_start(&self) -> u64 {
        self.int8_start() + self.int8_len
    }
}

/// How a tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Bytes as they are, followed by their CRC32, in the INT8 section.
    Raw = 0,
    /// A ZipNN container in the INT8 section (both loads need the tensor).
    Zipnn = 1,
    /// INT8 records in the INT8 section, high-precision records in the high-precision section.
    Qstore = 2,
    /// INT8 records in the INT8 section; the high-precision bytes as a ZipNN container in the
    /// high-precision section (given INT8 values that do not contain the weights).
    QstoreFallback = 3,
}

impl Storage {
    fn from_u8(b: u8) -> Option<Storage> {
        Some(match b {
            0 => Storage::Raw,
            1 => Storage::Zipnn,
            2 => Storage::Qstore,
            3 => Storage::QstoreFallback,
            _ => return None,
        })
    }
}

/// Largest number of dimensions a directory entry may have.
pub const MAX_DIMS: usize = 8;

/// One tensor of the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The tensor's name, UTF-8 as in the safetensors header.
    pub name: &'a str,
    /// Element type as a safetensors dtype code (see docs/format/qstore.md).
    pub dtype: u8,
    /// How the tensor is stored.
    pub storage: Storage,
    /// Number of dimensions.
    pub ndim: usize,
    /// Dimensions (first `ndim` used).
    pub dims: [u64; MAX_DIMS],
    /// Offset of the tensor's bytes in the INT8 section.
    pub int8_off: u64,
    /// Length of the tensor's bytes in the INT8 section.
    pub int8_len: u64,
    /// Offset of the tensor's bytes in the high-precision section.
    pub hp_off: u64,
    /// Length of the tensor's bytes in the high-precision section.
    pub hp_len: u64,
}

impl<'a> DirEntry<'a> {
    /// Bytes this entry takes when encoded.
    pub fn encoded_len(&self) -> usize {
        2 + self.name.len() + 4 + 8 * self.ndim + 32
    }

    /// Encodes the entry into `out`; returns the bytes written.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, QstoreError> {
        let need = self.encoded_len();
        if out.len() < need {
            return Err(QstoreError::BufferTooSmall(need));
        }
        let name_len = u16::try_from(self.name.len())
            .map_err(|_| QstoreError::InvalidInput("tensor name longer than 65535 bytes"))?;
        if self.ndim > MAX_DIMS {
            return Err(QstoreError::InvalidInput("more than 8 dimensions"));
        }
        let mut at = 0;
        let mut put = |b: &[u8]| {
            out[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        };
        put(&name_len.to_le_bytes());
        put(self.name.as_bytes());
        put(&[self.dtype, self.storage as u8, self.ndim as u8, 0]);
        for d in &self.dims[..self.ndim] {
            put(&d.to_le_bytes());
        }
        for v in [self.int8_off, self.int8_len, self.hp_off, self.hp_len] {
            put(&v.to_le_bytes());
        }
        Ok(need)
    }

    /// Parses the entry at the start of `b`; returns it and its length.
    pub fn parse(b: &'a [u8]) -> Result<(DirEntry<'a>, usize), QstoreError> {
        let bad = QstoreError::Corrupted("directory entry");
        let name_len = u16::from_le_bytes([*b.first().ok_or(bad)?, *b.get(1).ok_or(bad)?]) as usize;
        let name = b.get(2..2 + name_len).ok_or(bad)?;
        let name = core::str::from_utf8(name)
            .map_err(|_| QstoreError::Corrupted("directory entry name is not UTF-8"))?;
        let mut at = 2 + name_len;
        let fixed = b.get(at..at + 4).ok_or(bad)?;
        let (dtype, storage, ndim) = (fixed[0], fixed[1], fixed[2] as usize);
        let storage = Storage::from_u8(storage)
            .ok_or(QstoreError::Corrupted("directory entry storage kind"))?;
        if ndim > MAX_DIMS || fixed[3] != 0 {
            return Err(QstoreError::Corrupted("directory entry dimensions"));
        }
        at += 4;
        let mut dims = [0u64; MAX_DIMS];
        for d in dims.iter_mut().take(ndim) {
            *d = u64_at(b.get(at..at + 8).ok_or(bad)?, 0..8);
            at += 8;
        }
        let tail = b.get(at..at + 32).ok_or(bad)?;
        let e = DirEntry {
            name,
            dtype,
            storage,
            ndim,
            dims,
            int8_off: u64_at(tail, 0..8),
            int8_len: u64_at(tail, 8..16),
            hp_off: u64_at(tail, 16..24),
            hp_len: u64_at(tail, 24..32),
        };
        Ok((e, at + 32))
    }

    /// Checks the entry's byte ranges against the section lengths.
    pub fn check_ranges(&self, int8_section: u64, hp_section: u64) -> Result<(), QstoreError> {
        let fits = |off: u64, len: u64, sec: u64| off.checked_add(len).is_some_and(|e| e <= sec);
        if !fits(self.int8_off, self.int8_len, int8_section)
            || !fits(self.hp_off, self.hp_len, hp_section)
        {
            return Err(QstoreError::Corrupted(
                "directory entry points outside its section",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_entry_round_trip_and_reject_damage() {
        let h = FileHeader {
            tensors: 2,
            dir_len: 100,
            int8_len: 1000,
            hp_len: 5000,
            dir_crc: 7,
        };
        let mut b = [0u8; HEADER_LEN];
        h.write(&mut b);
        assert_eq!(FileHeader::new_checked(&b, 6148), Ok(h));
        assert!(FileHeader::new_checked(&b, 6149).is_err());
        for i in 0..HEADER_LEN {
            let mut c = b;
            c[i] ^= 4;
            assert!(FileHeader::new_checked(&c, 6148).is_err(), "byte {i}");
        }
        let mut dims = [0u64; MAX_DIMS];
        dims[..2].copy_from_slice(&[384, 1536]);
        let e = DirEntry {
            name: "a.weight",
            dtype: 8,
            storage: Storage::Qstore,
            ndim: 2,
            dims,
            int8_off: 1,
            int8_len: 2,
            hp_off: 3,
            hp_len: 4,
        };
        let mut buf = [0u8; 128];
        let n = e.write(&mut buf).unwrap();
        assert_eq!(DirEntry::parse(&buf[..n]), Ok((e, n)));
        for cut in 0..n {
            assert!(DirEntry::parse(&buf[..cut]).is_err());
        }
        assert!(e.check_ranges(3, 7).is_ok());
        assert!(e.check_ranges(2, 7).is_err());
    }
}
