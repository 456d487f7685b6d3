//! The delta log: the inline deltas created since the last flush, packed into one 4 KiB slot of
//! kind `DeltaLog` (layout in [`crate::format::delta_log`]) so a flush costs one slot for all of
//! them instead of one node page per group that got a delta. Roll-forward replays each entry into
//! its node (after the node copy it lands in, in sequence order with the data slots), and the
//! next checkpoint, which writes every node, makes the log slots dead.

use crate::format::crc32;
use crate::format::delta_log::{self as f, field};
use crate::nand::SLOT_BYTES;

/// An entry of a delta log slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry<'a> {
    /// The LBA.
    pub lba: u32,
    /// CRC32 of the base block.
    pub base_crc: u32,
    /// CRC32 of the block produced.
    pub new_crc: u32,
    /// The encoded delta.
    pub delta: &'a [u8],
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A delta log slot failed its checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadLog;

/// Checked read access to a delta log slot.
pub struct LogView<'a> {
    bytes: &'a [u8],
    used: usize,
}

impl<'a> LogView<'a> {
    /// Checks magic, version, CRC and every entry's length.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, BadLog> {
        if bytes.len() != SLOT_BYTES
            || bytes[field::MAGIC] != f::MAGIC
            || get_u16(bytes, field::VERSION.start) != f::VERSION
        {
            return Err(BadLog);
        }
        let stored = get_u32(bytes, field::CRC.start);
        if crc32(&[
            &bytes[..field::CRC.start],
            &[0; 4],
            &bytes[field::CRC.end..],
        ]) != stored
        {
            return Err(BadLog);
        }
        let used = get_u32(bytes, field::USED.start) as usize;
        if used > SLOT_BYTES - field::ENTRIES {
            return Err(BadLog);
        }
        let view = LogView { bytes, used };
        let mut n = 0;
        for e in view.entries() {
            e?;
            n += 1;
        }
        if n != get_u16(bytes, field::COUNT.start) as usize {
            return Err(BadLog);
        }
        Ok(view)
    }

    /// Entries in the order they were created.
    pub fn entries(&self) -> impl Iterator<Item = Result<LogEntry<'a>, BadLog>> + '_ {
        let bytes = self.bytes;
        let end = field::ENTRIES + self.used;
        let mut at = field::ENTRIES;
        core::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            if end - at < f::ENTRY_HEADER {
                at = end;
                return Some(Err(BadLog));
            }
            let len = get_u16(bytes, at + 4) as usize;
            if len > end - at - f::ENTRY_HEADER {
                at = end;
                return Some(Err(BadLog));
            }
            let e = LogEntry {
                lba: get_u32(bytes, at),
                base_crc: get_u32(bytes, at + 8),
                new_crc: get_u32(bytes, at + 12),
                delta: &bytes[at + f::ENTRY_HEADER..at + f::ENTRY_HEADER + len],
            };
            at += f::ENTRY_HEADER + len;
            Some(Ok(e))
        })
    }
}

/// A delta log slot being filled in a 4 KiB buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBuilder {
    used: usize,
    count: u16,
}

impl LogBuilder {
    /// Entries held.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Whether an entry with `delta_len` bytes of delta still fits (an empty builder always
    /// has room for one of at most 4 KiB minus the headers).
    pub fn fits(&self, delta_len: usize) -> bool {
        field::ENTRIES + self.used + f::ENTRY_HEADER + delta_len <= SLOT_BYTES
    }

    /// Starts an empty slot in `out`.
    pub fn start(out: &mut [u8]) -> LogBuilder {
        out[..SLOT_BYTES].fill(0);
        out[field::MAGIC].copy_from_slice(&f::MAGIC);
        out[field::VERSION].copy_from_slice(&f::VERSION.to_le_bytes());
        LogBuilder::default()
    }

    /// Appends an entry; `false` if it does not fit.
    pub fn add(&mut self, out: &mut [u8], e: &LogEntry<'_>) -> bool {
        let at = field::ENTRIES + self.used;
        if at + f::ENTRY_HEADER + e.delta.len() > SLOT_BYTES {
            return false;
        }
        out[at..at + 4].copy_from_slice(&e.lba.to_le_bytes());
        out[at + 4..at + 6].copy_from_slice(&(e.delta.len() as u16).to_le_bytes());
        out[at + 6..at + 8].fill(0);
        out[at + 8..at + 12].copy_from_slice(&e.base_crc.to_le_bytes());
        out[at + 12..at + 16].copy_from_slice(&e.new_crc.to_le_bytes());
        out[at + 16..at + 16 + e.delta.len()].copy_from_slice(e.delta);
        self.used += f::ENTRY_HEADER + e.delta.len();
        self.count += 1;
        true
    }

    /// Marks every entry for `lba` dead (its LBA field becomes `u32::MAX`, which replay skips):
    /// the live state dropped that delta before the slot was written.
    pub fn kill(&self, out: &mut [u8], lba: u32) {
        let end = field::ENTRIES + self.used;
        let mut at = field::ENTRIES;
        while at + f::ENTRY_HEADER <= end {
            let len = get_u16(out, at + 4) as usize;
            if get_u32(out, at) == lba {
                out[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }
            at += f::ENTRY_HEADER + len;
        }
    }

    /// Writes count, length and CRC; returns the CRC of the slot (its spare `data_crc`).
    pub fn finish(&self, out: &mut [u8]) -> u32 {
        out[field::COUNT].copy_from_slice(&self.count.to_le_bytes());
        out[field::USED].copy_from_slice(&(self.used as u32).to_le_bytes());
        out[field::CRC].fill(0);
        let crc = crc32(&[&out[..SLOT_BYTES]]);
        out[field::CRC].copy_from_slice(&crc.to_le_bytes());
        crc32(&[&out[..SLOT_BYTES]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut slot = [0u8; SLOT_BYTES];
        let mut b = LogBuilder::start(&mut slot);
        let e1 = LogEntry {
            lba: 70_000,
            base_crc: 1,
            new_crc: 2,
            delta: &[1, 2, 3],
        };
        let e2 = LogEntry {
            lba: 5,
            base_crc: 3,
            new_crc: 4,
            delta: &[],
        };
        assert!(b.add(&mut slot, &e1) && b.add(&mut slot, &e2));
        assert!(!b.add(
            &mut slot,
            &LogEntry {
                delta: &[0; 4096],
                ..e2
            }
        ));
        b.finish(&mut slot);
        {
            let v = LogView::new_checked(&slot).unwrap();
            let got: heapless::Vec<LogEntry<'_>, 4> = v.entries().map(Result::unwrap).collect();
            assert_eq!(&got[..], &[e1, e2]);
        }
        b.kill(&mut slot, 70_000);
        b.finish(&mut slot);
        {
            let v = LogView::new_checked(&slot).unwrap();
            assert_eq!(v.entries().next().unwrap().unwrap().lba, u32::MAX);
        }
        slot[40] ^= 1;
        assert!(LogView::new_checked(&slot).is_err());
    }
}
