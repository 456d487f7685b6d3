//! A small RAM cache of compact page slots, in memory the caller lends (none: no cache).
//!
//! A compacted delta is read from its group's compact slot, a second NAND read beside the base.
//! One compact slot holds the deltas of many blocks of its group, so reads that touch several
//! blocks of a group (a multi-block host read, a rebuild, neighbouring point reads) read the same
//! slot again and again. On the latency model that costs more than the count suggests: the
//! repeats queue on one die, each a full read time. A controller keeps such metadata in DRAM;
//! this cache does, for as many slots as the caller gives it.
//!
//! An entry is keyed by the slot's address and the erase count of its block when it was read:
//! a flash slot never changes until its block is erased, and an erase raises the count, so an
//! entry of an erased block can never be served, without any hook in the erase paths. Entries
//! hold checked copies only (what `read_slot_checked` accepted). The victim is the least recently
//! used entry.
//!
//! Memory layout: entries of [`ENTRY_BYTES`]: a 16-byte header (`ppa + 1` u32 with 0 for empty,
//! erase count u32, last-use stamp u64) then the slot's 4096 bytes.

use crate::format::{read_u32, read_u64, write_u32, write_u64};
use crate::nand::SLOT_BYTES;

/// Bytes of one cache entry: header and slot.
pub const ENTRY_BYTES: usize = HEADER + SLOT_BYTES;
const HEADER: usize = 16;

/// Header field offsets.
mod field {
    pub const PPA_PLUS_ONE: usize = 0;
    pub const ERASE_COUNT: usize = 4;
    pub const STAMP: usize = 8;
}

/// The cache over its lent memory.
pub struct CompactCache<'a> {
    mem: &'a mut [u8],
    clock: u64,
}

impl<'a> CompactCache<'a> {
    /// A cache of `mem.len() / ENTRY_BYTES` entries, all empty.
    pub fn new(mem: &'a mut [u8]) -> Self {
        let n = mem.len() / ENTRY_BYTES;
        let mem = &mut mem[..n * ENTRY_BYTES];
        for e in mem.chunks_exact_mut(ENTRY_BYTES) {
            write_u32(e, field::PPA_PLUS_ONE, 0);
        }
        CompactCache { mem, clock: 0 }
    }

    /// Entries the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.mem.len() / ENTRY_BYTES
    }

    /// The cached copy of slot `ppa`, if it was read while its block had `erase_count`.
    pub fn get(&mut self, ppa: u32, erase_count: u32) -> Option<&[u8]> {
        self.clock += 1;
        let clock = self.clock;
        let e = self.mem.chunks_exact_mut(ENTRY_BYTES).find(|e| {
            read_u32(e, field::PPA_PLUS_ONE) == ppa.wrapping_add(1)
                && read_u32(e, field::ERASE_COUNT) == erase_count
        })?;
        write_u64(e, field::STAMP, clock);
        Some(&e[HEADER..])
    }

    /// Keeps a checked copy of slot `ppa` (read while its block had `erase_count`), in place
    /// of an older copy of it or else of the least recently used entry.
    pub fn put(&mut self, ppa: u32, erase_count: u32, slot: &[u8]) {
        let Some(i) = self.victim(ppa) else {
            return;
        };
        self.clock += 1;
        let e = &mut self.mem[i * ENTRY_BYTES..(i + 1) * ENTRY_BYTES];
        write_u32(e, field::PPA_PLUS_ONE, ppa.wrapping_add(1));
        write_u32(e, field::ERASE_COUNT, erase_count);
        write_u64(e, field::STAMP, self.clock);
        e[HEADER..].copy_from_slice(&slot[..SLOT_BYTES]);
    }

    fn victim(&self, ppa: u32) -> Option<usize> {
        let mut best = None;
        let mut best_stamp = u64::MAX;
        for (i, e) in self.mem.chunks_exact(ENTRY_BYTES).enumerate() {
            let tag = read_u32(e, field::PPA_PLUS_ONE);
            if tag == ppa.wrapping_add(1) || tag == 0 {
                return Some(i);
            }
            let stamp = read_u64(e, field::STAMP);
            if stamp < best_stamp {
                best_stamp = stamp;
                best = Some(i);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(v: u8) -> [u8; SLOT_BYTES] {
        [v; SLOT_BYTES]
    }

    #[test]
    fn no_memory_is_no_cache() {
        let mut c = CompactCache::new(&mut []);
        assert_eq!(c.capacity(), 0);
        c.put(3, 1, &slot(1));
        assert!(c.get(3, 1).is_none());
    }

    #[test]
    fn an_entry_of_an_erased_block_is_never_served() {
        let mut mem = [0u8; 2 * ENTRY_BYTES + 7];
        let mut c = CompactCache::new(&mut mem);
        assert_eq!(c.capacity(), 2);
        c.put(5, 1, &slot(9));
        assert_eq!(c.get(5, 1).map(|s| s[100]), Some(9));
        // The block was erased (its count rose) and slot 5 rewritten: the old copy is stale.
        assert!(c.get(5, 2).is_none());
        assert!(c.get(6, 1).is_none());
        c.put(5, 2, &slot(4));
        assert_eq!(c.get(5, 2).map(|s| s[0]), Some(4));
        assert!(
            c.get(5, 1).is_none(),
            "the newer copy replaced the older one"
        );
    }

    #[test]
    fn the_least_recently_used_entry_goes() {
        let mut mem = [0xA5; 2 * ENTRY_BYTES]; // not zeroed: `new` empties it
        let mut c = CompactCache::new(&mut mem);
        c.put(1, 0, &slot(1));
        c.put(2, 0, &slot(2));
        assert!(c.get(1, 0).is_some());
        c.put(3, 0, &slot(3));
        assert!(c.get(2, 0).is_none(), "2 was the least recently used");
        assert_eq!(c.get(1, 0).map(|s| s[0]), Some(1));
        assert_eq!(c.get(3, 0).map(|s| s[0]), Some(3));
    }
}
