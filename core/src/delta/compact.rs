//! Compact pages: the deltas evicted from a read-cold group's inline area, packed
//! into one 4 KiB slot of kind `Compact` owned by the group's node (layout in
//! [`crate::format::compact`]).
//!
//! Each group has up to 16 compact pages, named by its node page. An evicted delta moves into
//! one and leaves a 12-byte marker naming that page in the inline area, so the entry stays live
//! (and a later write of its LBA, which removes the marker, kills it without touching the
//! compact page). Rewriting a compact page keeps only entries whose marker still names it, so
//! dead entries are dropped as it is rewritten; a page with none left is dropped. Reads of a
//! compacted LBA pay one extra NAND read.
//!
//! A page says which table slot it fills and which of its entries the compaction that wrote it
//! moved out of the inline area, so roll-forward can redo the compaction from the page alone,
//! in sequence order with the data slots, and a compaction costs no node write at the flush.

use crate::format::compact::{self as f, field};
use crate::format::crc32;
use crate::nand::SLOT_BYTES;

/// Why a compact page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactError {
    /// Magic, version or CRC wrong.
    Damaged,
    /// A well-formed page for another group.
    WrongNode,
    /// A length runs past the page.
    BadField,
}

/// An entry of a compact page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactEntry<'a> {
    /// LBA offset in the group.
    pub off: u16,
    /// Moved out of the inline area by the compaction that wrote the page (see [`f::MOVED`]).
    pub moved: bool,
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

/// Checked read access to a compact page.
pub struct CompactView<'a> {
    bytes: &'a [u8],
    used: usize,
    version: u16,
}

impl<'a> CompactView<'a> {
    /// Checks magic, version, CRC, owner and every entry's length.
    pub fn new_checked(bytes: &'a [u8], node_id: u32) -> Result<Self, CompactError> {
        if bytes.len() != SLOT_BYTES {
            return Err(CompactError::BadField);
        }
        let version = get_u16(bytes, field::VERSION.start);
        if bytes[field::MAGIC] != f::MAGIC || !(1..=f::VERSION).contains(&version) {
            return Err(CompactError::Damaged);
        }
        let stored = get_u32(bytes, field::CRC.start);
        if crc32(&[
            &bytes[..field::CRC.start],
            &[0; 4],
            &bytes[field::CRC.end..],
        ]) != stored
        {
            return Err(CompactError::Damaged);
        }
        if get_u32(bytes, field::NODE_ID.start) != node_id {
            return Err(CompactError::WrongNode);
        }
        let used = get_u32(bytes, field::USED.start) as usize;
        if used > SLOT_BYTES - field::ENTRIES {
            return Err(CompactError::BadField);
        }
        let view = CompactView {
            bytes,
            used,
            version,
        };
        if view
            .index()
            .is_some_and(|i| i as usize >= crate::format::node::COMPACT_PAGES)
        {
            return Err(CompactError::BadField);
        }
        let mut n = 0;
        for e in view.entries() {
            if e?.moved && version < 2 {
                return Err(CompactError::BadField);
            }
            n += 1;
        }
        if n != get_u16(bytes, field::COUNT.start) as usize {
            return Err(CompactError::BadField);
        }
        Ok(view)
    }

    /// The table slot the page fills (version 2), or `None` (version 1: its compaction wrote
    /// the node page, so roll-forward has nothing to redo).
    pub fn index(&self) -> Option<u8> {
        (self.version >= 2).then(|| self.bytes[field::INDEX.start])
    }

    /// Entries in the order written.
    pub fn entries(&self) -> impl Iterator<Item = Result<CompactEntry<'a>, CompactError>> + '_ {
        let bytes = self.bytes;
        let end = field::ENTRIES + self.used;
        let mut at = field::ENTRIES;
        core::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            if end - at < f::ENTRY_HEADER {
                at = end;
                return Some(Err(CompactError::BadField));
            }
            let len = get_u16(bytes, at + 2) as usize;
            if len > end - at - f::ENTRY_HEADER {
                at = end;
                return Some(Err(CompactError::BadField));
            }
            let raw = get_u16(bytes, at);
            let e = CompactEntry {
                off: raw & !f::MOVED,
                moved: raw & f::MOVED != 0,
                base_crc: get_u32(bytes, at + 4),
                new_crc: get_u32(bytes, at + 8),
                delta: &bytes[at + f::ENTRY_HEADER..at + f::ENTRY_HEADER + len],
            };
            at += f::ENTRY_HEADER + len;
            Some(Ok(e))
        })
    }

    /// The entry for `off` (the last one written wins).
    pub fn find(&self, off: u16) -> Option<CompactEntry<'a>> {
        self.entries()
            .filter_map(Result::ok)
            .filter(|e| e.off == off)
            .last()
    }
}

/// Builds a compact page in a 4 KiB buffer.
pub struct Builder {
    used: usize,
    count: u16,
}

impl Builder {
    /// Starts an empty page for `node_id`'s compact table slot `index` in `out`.
    pub fn new(out: &mut [u8], node_id: u32, index: u8) -> Builder {
        out[..SLOT_BYTES].fill(0);
        out[field::MAGIC].copy_from_slice(&f::MAGIC);
        out[field::VERSION].copy_from_slice(&f::VERSION.to_le_bytes());
        out[field::NODE_ID].copy_from_slice(&node_id.to_le_bytes());
        out[field::INDEX.start] = index;
        Builder { used: 0, count: 0 }
    }

    /// Whether an entry of `delta_len` bytes still fits.
    pub fn fits(&self, delta_len: usize) -> bool {
        field::ENTRIES + self.used + f::ENTRY_HEADER + delta_len <= SLOT_BYTES
    }

    /// Appends an entry (`moved`: out of the inline area now); `false` (and nothing written) if
    /// it does not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        out: &mut [u8],
        off: u16,
        moved: bool,
        base_crc: u32,
        new_crc: u32,
        delta: &[u8],
    ) -> bool {
        if !self.fits(delta.len()) {
            return false;
        }
        let at = field::ENTRIES + self.used;
        let raw = off | if moved { f::MOVED } else { 0 };
        out[at..at + 2].copy_from_slice(&raw.to_le_bytes());
        out[at + 2..at + 4].copy_from_slice(&(delta.len() as u16).to_le_bytes());
        out[at + 4..at + 8].copy_from_slice(&base_crc.to_le_bytes());
        out[at + 8..at + 12].copy_from_slice(&new_crc.to_le_bytes());
        out[at + 12..at + 12 + delta.len()].copy_from_slice(delta);
        self.used += f::ENTRY_HEADER + delta.len();
        self.count += 1;
        true
    }

    /// Entries added.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Writes count, length and CRC.
    pub fn finish(self, out: &mut [u8]) {
        out[field::COUNT].copy_from_slice(&self.count.to_le_bytes());
        out[field::USED].copy_from_slice(&(self.used as u32).to_le_bytes());
        out[field::CRC].fill(0);
        let crc = crc32(&[&out[..SLOT_BYTES]]);
        out[field::CRC].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Clears every entry's moved flag in a sound version 2 page of `node_id` (a copy GC or a
/// retry makes: the compaction is not redone from it) and returns the page's new CRC, or
/// `None`, changing nothing, if the page fails its checks or is version 1.
pub fn clear_moved(bytes: &mut [u8], node_id: u32) -> Option<u32> {
    let used = {
        let v = CompactView::new_checked(bytes, node_id).ok()?;
        v.index()?;
        v.used
    };
    let end = field::ENTRIES + used;
    let mut at = field::ENTRIES;
    while at + f::ENTRY_HEADER <= end {
        let raw = get_u16(bytes, at) & !f::MOVED;
        bytes[at..at + 2].copy_from_slice(&raw.to_le_bytes());
        at += f::ENTRY_HEADER + get_u16(bytes, at + 2) as usize;
    }
    bytes[field::CRC].fill(0);
    let crc = crc32(&[&bytes[..SLOT_BYTES]]);
    bytes[field::CRC].copy_from_slice(&crc.to_le_bytes());
    Some(crc32(&[&bytes[..SLOT_BYTES]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_and_read_back() {
        let mut page = [0u8; SLOT_BYTES];
        let mut b = Builder::new(&mut page, 7, 5);
        assert!(b.add(&mut page, 3, true, 1, 2, &[1, 2, 3]));
        assert!(b.add(&mut page, 9, false, 4, 5, &[]));
        assert!(!b.add(&mut page, 1, false, 0, 0, &[0; 4096]));
        b.finish(&mut page);
        let v = CompactView::new_checked(&page, 7).unwrap();
        assert_eq!(v.index(), Some(5));
        let e = v.find(3).unwrap();
        assert_eq!((e.base_crc, e.new_crc, e.delta), (1, 2, &[1u8, 2, 3][..]));
        assert!(e.moved && !v.find(9).unwrap().moved && v.find(4).is_none());
        // A moved copy keeps its entries and loses its flags.
        let mut copy = page;
        let crc = clear_moved(&mut copy, 7).unwrap();
        assert_eq!(crc, crc32(&[&copy[..]]));
        let c = CompactView::new_checked(&copy, 7).unwrap();
        assert!(c.entries().all(|e| !e.unwrap().moved) && c.find(3).unwrap().delta == [1, 2, 3]);
        assert_eq!(
            CompactView::new_checked(&page, 8).err(),
            Some(CompactError::WrongNode)
        );
        page[40] ^= 1;
        assert_eq!(
            CompactView::new_checked(&page, 7).err(),
            Some(CompactError::Damaged)
        );
    }
}
