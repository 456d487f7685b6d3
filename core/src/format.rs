//! On-flash byte layouts of the FTL: the per-slot spare record, the node page and the
//! checkpoint pack header.
//!
//! Every structure is a set of named little-endian byte ranges (`mod field`) read through a view
//! whose constructor checks the length, the magic, the version and the CRC, so bytes from flash
//! are never trusted before they are checked. docs/format/ftl.md describes every byte.
//!
//! CRCs are CRC-32/ISO-HDLC (the zlib/PNG polynomial 0x04C11DB7, reflected, init and xorout
//! 0xFFFFFFFF), as computed by crc32fast.

use crate::nand::SLOT_BYTES;

/// Computes the CRC-32/ISO-HDLC of `parts`, concatenated.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A slot address: `page * slots_per_page + slot`. The all-ones value (what erased flash reads)
/// means "not mapped".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ppa(pub u32);

impl Ppa {
    /// The "not mapped" pointer.
    pub const NONE: Ppa = Ppa(u32::MAX);

    /// Whether this points at a slot.
    pub const fn is_some(self) -> bool {
        self.0 != u32::MAX
    }
}

/// What a slot holds, as its spare record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotKind {
    /// A 4 KiB logical block; the owner is its LBA.
    Data = 1,
    /// A node page; the owner is its node id.
    Node = 2,
    /// Filler programmed so a partly filled page could be written whole.
    Padding = 3,
    /// Part of a checkpoint pack; the owner is the slot's index inside the pack.
    Checkpoint = 4,
    /// A compact page of evicted deltas; the owner is its node id.
    Compact = 5,
    /// A delta log slot: the inline deltas created since the previous one, for roll-forward;
    /// the owner is 0.
    DeltaLog = 6,
    /// A packed slot of ZipNN-coded blocks with its directory ([`packed`]); the owner is 0.
    Packed = 7,
}

impl SlotKind {
    fn from_u8(v: u8) -> Option<SlotKind> {
        Some(match v {
            1 => SlotKind::Data,
            2 => SlotKind::Node,
            3 => SlotKind::Padding,
            4 => SlotKind::Checkpoint,
            5 => SlotKind::Compact,
            6 => SlotKind::DeltaLog,
            7 => SlotKind::Packed,
            _ => return None,
        })
    }
}

/// Why a spare record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Every byte reads 0xFF: the slot was never programmed (or its program was torn early).
    Erased,
    /// Wrong magic, version, kind or CRC: damaged or torn.
    Damaged,
}

/// The 64-byte spare (out-of-band) record kept for every 4 KiB slot: a 32-byte record and an
/// identical copy, so a single damaged byte still leaves the slot's owner known (an unknown
/// owner would turn one flipped bit into a silently lost update at recovery).
pub mod spare {
    /// Byte ranges of each 32-byte copy (the second copy starts at [`COPY`]).
    pub mod field {
        use core::ops::Range;
        /// `b"NBSR"`.
        pub const MAGIC: Range<usize> = 0..4;
        /// Format version, currently 2.
        pub const VERSION: usize = 4;
        /// [`super::super::SlotKind`].
        pub const KIND: usize = 5;
        /// Reserved flags, written 0.
        pub const FLAGS: Range<usize> = 6..8;
        /// LBA (data), node id (node), pack slot index (checkpoint), 0 (padding).
        pub const OWNER: Range<usize> = 8..12;
        /// Global sequence number, strictly increasing with every slot written.
        pub const SEQ: Range<usize> = 12..20;
        /// CRC32 of the slot's 4096 data bytes.
        pub const DATA_CRC: Range<usize> = 20..24;
        /// Checkpoint: number of slots in the pack. Otherwise 0.
        pub const AUX: Range<usize> = 24..28;
        /// CRC32 of bytes 0..28 of this copy.
        pub const CRC: Range<usize> = 28..32;
    }
    /// Length of one copy.
    pub const COPY: usize = 32;
    /// Length of the whole record (two copies).
    pub const LEN: usize = 64;
    /// The magic.
    pub const MAGIC: [u8; 4] = *b"NBSR";
    /// The version written.
    pub const VERSION: u8 = 2;
}

/// A checked, decoded spare record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpareRecord {
    /// What the slot holds.
    pub kind: SlotKind,
    /// LBA, node id or pack slot index.
    pub owner: u32,
    /// Global sequence number.
    pub seq: u64,
    /// CRC32 of the slot's data.
    pub data_crc: u32,
    /// Checkpoint: slots in the pack.
    pub aux: u32,
}

impl SpareRecord {
    /// Decodes and checks a record (either copy may be damaged); `bytes` must be at least
    /// [`spare::LEN`] long.
    pub fn parse(bytes: &[u8]) -> Result<SpareRecord, RecordError> {
        let b = bytes.get(..spare::LEN).ok_or(RecordError::Damaged)?;
        if b.iter().all(|&x| x == 0xFF) {
            return Err(RecordError::Erased);
        }
        Self::parse_copy(&b[..spare::COPY])
            .or_else(|| Self::parse_copy(&b[spare::COPY..]))
            .ok_or(RecordError::Damaged)
    }

    fn parse_copy(b: &[u8]) -> Option<SpareRecord> {
        use spare::field as f;
        if b[f::MAGIC] != spare::MAGIC || b[f::VERSION] != spare::VERSION {
            return None;
        }
        if crc32(&[&b[..f::CRC.start]]) != get_u32(b, f::CRC.start) {
            return None;
        }
        Some(SpareRecord {
            kind: SlotKind::from_u8(b[f::KIND])?,
            owner: get_u32(b, f::OWNER.start),
            seq: get_u64(b, f::SEQ.start),
            data_crc: get_u32(b, f::DATA_CRC.start),
            aux: get_u32(b, f::AUX.start),
        })
    }

    /// Encodes the record (both copies) into the first [`spare::LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        use spare::field as f;
        let b = &mut out[..spare::COPY];
        b.fill(0);
        b[f::MAGIC].copy_from_slice(&spare::MAGIC);
        b[f::VERSION] = spare::VERSION;
        b[f::KIND] = self.kind as u8;
        put_u32(b, f::OWNER.start, self.owner);
        put_u64(b, f::SEQ.start, self.seq);
        put_u32(b, f::DATA_CRC.start, self.data_crc);
        put_u32(b, f::AUX.start, self.aux);
        let crc = crc32(&[&b[..f::CRC.start]]);
        put_u32(b, f::CRC.start, crc);
        out.copy_within(..spare::COPY, spare::COPY);
    }
}

/// The node page: one 4 KiB slot mapping a group of [`node::LBAS`] consecutive LBAs.
pub mod node {
    /// Byte ranges of the node page.
    pub mod field {
        use core::ops::Range;
        /// `b"NBND"`.
        pub const MAGIC: Range<usize> = 0..4;
        /// Format version, currently 4 (1 to 3 are read: 1 has no inline deltas and no compact
        /// page, 2 one compact page and no [`COMPACT_TABLE`], 2 and 3 the older inline layout,
        /// see [`super::super::inline_delta::v3`]).
        pub const VERSION: Range<usize> = 4..6;
        /// Reserved, written 0.
        pub const FLAGS: Range<usize> = 6..8;
        /// Node id: the group's first LBA is `node_id * LBAS`.
        pub const NODE_ID: Range<usize> = 8..12;
        /// Sequence number this copy was written with (also in the spare record).
        pub const SEQ: Range<usize> = 12..20;
        /// Pointers in use: highest mapped offset + 1 (0..=LBAS).
        pub const EXTENT: Range<usize> = 20..22;
        /// Bytes used by the inline area at the end of the page (0 in version 1).
        pub const INLINE_LEN: Range<usize> = 22..24;
        /// Version 2 and later: slot address of the group's compact page 0, all-ones = none
        /// (version 1: reserved, 0).
        pub const COMPACT: Range<usize> = 24..28;
        /// CRC32 of the whole page with these four bytes taken as zero.
        pub const CRC: Range<usize> = 28..32;
        /// First byte of the pointer area: `extent` little-endian u32 slot addresses.
        pub const POINTERS: usize = 32;
        /// Version 3 and later: slot addresses of compact pages 1..16, all-ones = none; after a full
        /// pointer area (bytes past the extent and before this are zero).
        pub const COMPACT_TABLE: Range<usize> = 1056..1116;
    }
    /// Compact pages a group may have (page 0 in `COMPACT`, the rest in `COMPACT_TABLE`).
    pub const COMPACT_PAGES: usize = 16;
    /// LBAs mapped by one node page.
    pub const LBAS: u32 = 256;
    /// The magic.
    pub const MAGIC: [u8; 4] = *b"NBND";
    /// The version written: 4, whose inline markers are 4 bytes (see [`super::inline_delta`]).
    pub const VERSION: u16 = 4;
}

/// One delta entry in a node page's inline area (see `delta::inline`), entries stacked from the
/// end of the page towards the pointer area. Every entry ends in a 4-byte *tail* (LBA offset,
/// then length or page), so a walk from the end of the page meets it first. A delta entry is its
/// encoded bytes, the two CRCs and the tail ([`HEADER`] = 12 bytes after the delta); a *marker*
/// (the delta lives in a compact page, whose entry carries the CRCs) is the tail alone
/// ([`MARKER`] = 4 bytes), so a group whose every block has a compacted delta still leaves most
/// of its area to new deltas. Node versions 2 and 3 put the tail first in a 12-byte header and
/// gave markers the CRCs too ([`v3`]); such a node is converted when it is loaded.
pub mod inline_delta {
    /// Byte ranges of the 12 bytes after a delta's encoded bytes.
    pub mod field {
        use core::ops::Range;
        /// CRC32 of the base block the delta applies to (its slot's `data_crc`).
        pub const BASE_CRC: Range<usize> = 0..4;
        /// CRC32 of the block the delta produces: checked after applying it.
        pub const NEW_CRC: Range<usize> = 4..8;
        /// LBA offset inside the group (bits 0..15); bit 15 clear (see [`super::IN_COMPACT`]).
        pub const OFFSET: Range<usize> = 8..10;
        /// Encoded delta bytes before the CRCs.
        pub const LEN: Range<usize> = 10..12;
    }
    /// Byte ranges of a marker.
    pub mod marker {
        use core::ops::Range;
        /// LBA offset inside the group, with bit 15 ([`super::IN_COMPACT`]) set.
        pub const OFFSET: Range<usize> = 0..2;
        /// Which of the group's compact pages holds the delta (0..`node::COMPACT_PAGES`).
        pub const PAGE: Range<usize> = 2..4;
    }
    /// Bytes after a delta's encoded bytes.
    pub const HEADER: usize = 12;
    /// Bytes of a marker.
    pub const MARKER: usize = 4;
    /// Bytes of the tail every entry ends with (offset, then length or page).
    pub const TAIL: usize = 4;
    /// Most bytes of inline area: what a full pointer area (256 pointers) and the compact
    /// table leave.
    pub const AREA: usize = 4096 - super::node::field::COMPACT_TABLE.end;
    /// Flag in OFFSET: the entry is a marker.
    pub const IN_COMPACT: u16 = 0x8000;
    /// The layout of node versions 2 and 3: every entry (a marker too) ends in a 12-byte
    /// header, offset and length first.
    pub mod v3 {
        /// Byte ranges of the header.
        pub mod field {
            use core::ops::Range;
            /// LBA offset; bit 15 = marker (then no delta bytes precede the header).
            pub const OFFSET: Range<usize> = 0..2;
            /// Encoded delta bytes before the header; for a marker, its compact page.
            pub const LEN: Range<usize> = 2..4;
            /// CRC32 of the base block.
            pub const BASE_CRC: Range<usize> = 4..8;
            /// CRC32 of the block produced.
            pub const NEW_CRC: Range<usize> = 8..12;
        }
        /// Header length.
        pub const HEADER: usize = 12;
    }
}

/// The compact page: deltas evicted from one group's inline area, packed into one 4 KiB slot.
pub mod compact {
    /// Byte ranges of the compact page header; entries follow from [`field::ENTRIES`].
    pub mod field {
        use core::ops::Range;
        /// `b"NBCM"`.
        pub const MAGIC: Range<usize> = 0..4;
        /// Format version, currently 2 (1, without an index or moved flags, is read too).
        pub const VERSION: Range<usize> = 4..6;
        /// Entries held.
        pub const COUNT: Range<usize> = 6..8;
        /// Node id of the group whose deltas these are.
        pub const NODE_ID: Range<usize> = 8..12;
        /// Bytes of entries after the header.
        pub const USED: Range<usize> = 12..16;
        /// Version 2: the page's index in its group's compact table.
        pub const INDEX: Range<usize> = 16..17;
        /// Reserved, written 0.
        pub const RESERVED: Range<usize> = 17..28;
        /// CRC32 of the whole page with these four bytes taken as zero.
        pub const CRC: Range<usize> = 28..32;
        /// First entry: offset u16 (bit 15: [`super::MOVED`]), length u16, base CRC u32, new
        /// CRC u32, then the delta.
        pub const ENTRIES: usize = 32;
    }
    /// Entry header length.
    pub const ENTRY_HEADER: usize = 12;
    /// Offset flag: the compaction that wrote this page moved the entry out of the inline area
    /// (roll-forward turns it into a marker); clear on entries kept from the page it replaced
    /// and on every entry of a page GC or a retry moved.
    pub const MOVED: u16 = 0x8000;
    /// The magic.
    pub const MAGIC: [u8; 4] = *b"NBCM";
    /// The version written.
    pub const VERSION: u16 = 2;
}

/// The delta log slot: inline deltas created since the previous delta log slot, each with its
/// LBA, written at a flush so that many new deltas cost one slot, not one node page each.
pub mod delta_log {
    /// Byte ranges of the header; entries follow from [`field::ENTRIES`].
    pub mod field {
        use core::ops::Range;
        /// `b"NBDL"`.
        pub const MAGIC: Range<usize> = 0..4;
        /// Format version, currently 1.
        pub const VERSION: Range<usize> = 4..6;
        /// Entries held.
        pub const COUNT: Range<usize> = 6..8;
        /// Bytes of entries after the header.
        pub const USED: Range<usize> = 8..12;
        /// Reserved, written 0.
        pub const RESERVED: Range<usize> = 12..28;
        /// CRC32 of the whole slot with these four bytes taken as zero.
        pub const CRC: Range<usize> = 28..32;
        /// First entry: LBA u32, length u16, reserved u16, base CRC u32, new CRC u32, delta.
        pub const ENTRIES: usize = 32;
    }
    /// Entry header length.
    pub const ENTRY_HEADER: usize = 16;
    /// The magic.
    pub const MAGIC: [u8; 4] = *b"NBDL";
    /// The version written.
    pub const VERSION: u16 = 1;
}

/// The packed slot: ZipNN-coded 4 KiB blocks of any LBAs, stored as a byte stream over
/// consecutive slots of one erase block, with a directory per slot of the records that end in
/// it. A node pointer names the slot holding the LBA's directory entry.
///
/// Layout: a 16-byte header, record bytes from byte 16 up to `used`, then free space, then the
/// `spill` bytes that begin the next slot's first record, then the directory (`count` entries
/// of [`ENTRY`] bytes) at the very end of the slot, entry 0 last. An entry with `pre > 0`
/// continues the previous slot's spill: its record is those `pre` bytes, then its `len` bytes
/// here.
pub mod packed {
    /// Byte ranges of the header; record bytes follow from [`field::DATA`].
    pub mod field {
        use core::ops::Range;
        /// `b"NBPK"`.
        pub const MAGIC: Range<usize> = 0..4;
        /// Format version, currently 1.
        pub const VERSION: Range<usize> = 4..6;
        /// Directory entries.
        pub const COUNT: Range<usize> = 6..8;
        /// End of the record bytes written from [`DATA`].
        pub const USED: Range<usize> = 8..10;
        /// Bytes just below the directory that begin the next slot's first record.
        pub const SPILL: Range<usize> = 10..12;
        /// CRC32 of the whole slot with these four bytes taken as zero.
        pub const CRC: Range<usize> = 12..16;
        /// First record byte.
        pub const DATA: usize = 16;
    }
    /// Byte ranges of one directory entry (relative to the entry).
    pub mod entry {
        use core::ops::Range;
        /// LBA whose record this is; all-ones = dropped before the slot was written.
        pub const LBA: Range<usize> = 0..4;
        /// Offset of the record's bytes in this slot.
        pub const OFF: Range<usize> = 4..6;
        /// Bytes of the record in this slot.
        pub const LEN: Range<usize> = 6..8;
        /// Bytes of the record at the end of the previous slot (its spill), 0 = none.
        pub const PRE: Range<usize> = 8..10;
        /// ZipNN dtype code of the record (1 BF16, 2 FP16, 3 FP32).
        pub const DTYPE: usize = 10;
        /// Reserved, written 0.
        pub const RESERVED: usize = 11;
    }
    /// Directory entry length.
    pub const ENTRY: usize = 12;
    /// Most directory entries one slot may hold.
    pub const MAX_ENTRIES: usize = 120;
    /// The magic.
    pub const MAGIC: [u8; 4] = *b"NBPK";
    /// The version written.
    pub const VERSION: u16 = 1;
    /// Longest record: it must fit one slot next to the header and its own entry, so a record
    /// spans at most two slots.
    pub const MAX_RECORD: usize = super::SLOT_BYTES - field::DATA - ENTRY;
}

/// One checked directory entry of a packed slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedEntry {
    /// Index in the directory.
    pub index: usize,
    /// The LBA (never the dropped marker).
    pub lba: u32,
    /// Offset of the record's bytes in this slot.
    pub off: usize,
    /// Bytes of the record in this slot.
    pub len: usize,
    /// Bytes of the record in the previous slot's spill.
    pub pre: usize,
    /// ZipNN dtype code.
    pub dtype: u8,
}

/// Checked read access to a packed slot.
pub struct PackedView<'a> {
    bytes: &'a [u8],
    count: usize,
    used: usize,
    spill: usize,
}

impl<'a> PackedView<'a> {
    /// Checks magic, version, CRC, lengths and every entry's bounds.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, &'static str> {
        use packed::field as f;
        if bytes.len() != SLOT_BYTES
            || bytes[f::MAGIC] != packed::MAGIC
            || get_u16(bytes, f::VERSION.start) != packed::VERSION
        {
            return Err("packed slot header damaged");
        }
        let stored = get_u32(bytes, f::CRC.start);
        if crc32(&[&bytes[..f::CRC.start], &[0; 4], &bytes[f::CRC.end..]]) != stored {
            return Err("packed slot CRC mismatch");
        }
        let count = get_u16(bytes, f::COUNT.start) as usize;
        let used = get_u16(bytes, f::USED.start) as usize;
        let spill = get_u16(bytes, f::SPILL.start) as usize;
        if count > packed::MAX_ENTRIES
            || used < f::DATA
            || used + spill + count * packed::ENTRY > SLOT_BYTES
        {
            return Err("packed slot lengths out of range");
        }
        let view = PackedView {
            bytes,
            count,
            used,
            spill,
        };
        for i in 0..count {
            let e = view.raw_entry(i);
            if e.off < f::DATA
                || e.off + e.len > used
                || (e.pre > 0 && (e.off != f::DATA || i != 0))
            {
                return Err("packed slot entry out of range");
            }
        }
        Ok(view)
    }

    fn raw_entry(&self, i: usize) -> PackedEntry {
        let at = SLOT_BYTES - (i + 1) * packed::ENTRY;
        let b = &self.bytes[at..at + packed::ENTRY];
        use packed::entry as e;
        PackedEntry {
            index: i,
            lba: get_u32(b, e::LBA.start),
            off: get_u16(b, e::OFF.start) as usize,
            len: get_u16(b, e::LEN.start) as usize,
            pre: get_u16(b, e::PRE.start) as usize,
            dtype: b[e::DTYPE],
        }
    }

    /// Live entries (dropped ones skipped), in directory order.
    pub fn entries(&self) -> impl Iterator<Item = PackedEntry> + '_ {
        (0..self.count)
            .map(|i| self.raw_entry(i))
            .filter(|e| e.lba != u32::MAX)
    }

    /// The entry of `lba`, if this slot holds one.
    pub fn find(&self, lba: u32) -> Option<PackedEntry> {
        self.entries().find(|e| e.lba == lba)
    }

    /// The bytes of `e` held in this slot.
    pub fn part(&self, e: &PackedEntry) -> &'a [u8] {
        &self.bytes[e.off..e.off + e.len]
    }

    /// The spill: bytes beginning the next slot's first record.
    pub fn spill(&self) -> &'a [u8] {
        &self.bytes[self.spill_range()]
    }

    /// Where the spill lies in the slot.
    pub fn spill_range(&self) -> core::ops::Range<usize> {
        let end = SLOT_BYTES - self.count * packed::ENTRY;
        end - self.spill..end
    }

    /// Where the bytes of `e` held in this slot lie.
    pub fn part_range(&self, e: &PackedEntry) -> core::ops::Range<usize> {
        e.off..e.off + e.len
    }

    /// End of the record bytes.
    pub fn used(&self) -> usize {
        self.used
    }
}

/// Builds a packed slot in place in a 4096-byte buffer: records from the front, directory
/// entries from the back, sealed by [`PackedBuilder::finish`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackedBuilder {
    count: usize,
    used: usize,
    spill: usize,
}

impl PackedBuilder {
    /// Starts an empty slot in `out` (header zeroed).
    pub fn start(out: &mut [u8]) -> PackedBuilder {
        out[..packed::field::DATA].fill(0);
        PackedBuilder {
            count: 0,
            used: packed::field::DATA,
            spill: 0,
        }
    }

    /// Entries added so far (dropped ones included).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Record bytes one more entry could take in this slot (0 when the directory is full or a
    /// spill was written).
    pub fn room(&self) -> usize {
        if self.count >= packed::MAX_ENTRIES || self.spill > 0 {
            return 0;
        }
        (SLOT_BYTES - self.used - self.spill).saturating_sub((self.count + 1) * packed::ENTRY)
    }

    /// Appends the part of a record held here (`pre` bytes of it are in the previous slot's
    /// spill; only the first entry may have them). Returns the entry's index, or `None` if it
    /// does not fit.
    pub fn add(
        &mut self,
        out: &mut [u8],
        lba: u32,
        dtype: u8,
        pre: usize,
        part: &[u8],
    ) -> Option<usize> {
        if part.len() > self.room() || (pre > 0 && self.count > 0) || pre > u16::MAX as usize {
            return None;
        }
        let off = self.used;
        out[off..off + part.len()].copy_from_slice(part);
        self.used += part.len();
        let at = SLOT_BYTES - (self.count + 1) * packed::ENTRY;
        use packed::entry as e;
        let b = &mut out[at..at + packed::ENTRY];
        put_u32(b, e::LBA.start, lba);
        put_u16(b, e::OFF.start, off as u16);
        put_u16(b, e::LEN.start, part.len() as u16);
        put_u16(b, e::PRE.start, pre as u16);
        b[e::DTYPE] = dtype;
        b[e::RESERVED] = 0;
        self.count += 1;
        Some(self.count - 1)
    }

    /// Writes `bytes` as the spill (the start of the next slot's first record) just below the
    /// directory; no entry can be added afterwards. Returns false if they do not fit.
    pub fn set_spill(&mut self, out: &mut [u8], bytes: &[u8]) -> bool {
        let end = SLOT_BYTES - self.count * packed::ENTRY;
        if self.spill > 0 || bytes.is_empty() || self.used + bytes.len() > end {
            return false;
        }
        out[end - bytes.len()..end].copy_from_slice(bytes);
        self.spill = bytes.len();
        true
    }

    /// Bytes free for a spill (below the directory, above the records).
    pub fn spill_room(&self) -> usize {
        if self.spill > 0 {
            return 0;
        }
        SLOT_BYTES - self.count * packed::ENTRY - self.used
    }

    /// Marks the first entry of `lba` dropped (its LBA was rewritten before the slot was
    /// written). Returns whether one was found.
    pub fn kill(&self, out: &mut [u8], lba: u32) -> bool {
        for i in 0..self.count {
            let at = SLOT_BYTES - (i + 1) * packed::ENTRY;
            if get_u32(out, at) == lba {
                put_u32(out, at, u32::MAX);
                return true;
            }
        }
        false
    }

    /// Whether a live entry of an LBA in `lbas` (a range) is held.
    pub fn holds_range(&self, out: &[u8], lbas: core::ops::Range<u32>) -> bool {
        (0..self.count).any(|i| lbas.contains(&get_u32(out, SLOT_BYTES - (i + 1) * packed::ENTRY)))
    }

    /// Seals the slot: zeroes the free space, writes the header and returns the CRC of the
    /// slot's 4096 bytes (for its spare record).
    pub fn finish(&self, out: &mut [u8]) -> u32 {
        use packed::field as f;
        let end = SLOT_BYTES - self.count * packed::ENTRY - self.spill;
        out[self.used..end].fill(0);
        out[f::MAGIC].copy_from_slice(&packed::MAGIC);
        put_u16(out, f::VERSION.start, packed::VERSION);
        put_u16(out, f::COUNT.start, self.count as u16);
        put_u16(out, f::USED.start, self.used as u16);
        put_u16(out, f::SPILL.start, self.spill as u16);
        put_u32(out, f::CRC.start, 0);
        let crc = crc32(&[&out[..SLOT_BYTES]]);
        put_u32(out, f::CRC.start, crc);
        crc32(&[&out[..SLOT_BYTES]])
    }
}

/// Why a node page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeError {
    /// Magic, version or CRC wrong.
    Damaged,
    /// A well-formed page for another node.
    WrongNode,
    /// Extent or inline length out of range, or a pointer past the array.
    BadField,
}

/// Checked read access to a node page.
pub struct NodeView<'a> {
    bytes: &'a [u8],
}

impl<'a> NodeView<'a> {
    /// Checks magic, version, CRC, id and lengths; `max_ppa` bounds every pointer.
    pub fn new_checked(bytes: &'a [u8], node_id: u32, max_ppa: u32) -> Result<Self, NodeError> {
        use node::field as f;
        if bytes.len() != SLOT_BYTES {
            return Err(NodeError::BadField);
        }
        let version = get_u16(bytes, f::VERSION.start);
        if bytes[f::MAGIC] != node::MAGIC || !(1..=node::VERSION).contains(&version) {
            return Err(NodeError::Damaged);
        }
        let stored = get_u32(bytes, f::CRC.start);
        if crc32(&[&bytes[..f::CRC.start], &[0; 4], &bytes[f::CRC.end..]]) != stored {
            return Err(NodeError::Damaged);
        }
        if get_u32(bytes, f::NODE_ID.start) != node_id {
            return Err(NodeError::WrongNode);
        }
        let view = NodeView { bytes };
        let extent = view.extent();
        let inline = get_u16(bytes, f::INLINE_LEN.start) as usize;
        if extent > node::LBAS
            || f::POINTERS + 4 * extent as usize + inline > SLOT_BYTES
            || inline > inline_delta::AREA
            || (version == 1 && inline != 0)
        {
            return Err(NodeError::BadField);
        }
        for i in 0..node::COMPACT_PAGES {
            let c = view.compact(i);
            if c.is_some() && c.0 >= max_ppa {
                return Err(NodeError::BadField);
            }
        }
        for i in 0..extent {
            let p = view.pointer(i);
            if p.is_some() && p.0 >= max_ppa {
                return Err(NodeError::BadField);
            }
        }
        Ok(view)
    }

    /// The format version the page was written in.
    pub fn version(&self) -> u16 {
        get_u16(self.bytes, node::field::VERSION.start)
    }

    /// Pointers in use.
    pub fn extent(&self) -> u32 {
        get_u16(self.bytes, node::field::EXTENT.start) as u32
    }

    /// The slot address of offset `i` (< extent).
    pub fn pointer(&self, i: u32) -> Ppa {
        Ppa(get_u32(self.bytes, node::field::POINTERS + 4 * i as usize))
    }

    /// The inline area (the last `inline_len` bytes of the page; entries parsed by
    /// `delta::inline`).
    pub fn inline_area(&self) -> &'a [u8] {
        let len = get_u16(self.bytes, node::field::INLINE_LEN.start) as usize;
        &self.bytes[SLOT_BYTES - len..]
    }

    /// The group's compact page `i` (< [`node::COMPACT_PAGES`]), if any (none in version 1,
    /// only page 0 in version 2).
    pub fn compact(&self, i: usize) -> Ppa {
        let version = get_u16(self.bytes, node::field::VERSION.start);
        match i {
            _ if version < 2 || i >= node::COMPACT_PAGES => Ppa::NONE,
            0 => Ppa(get_u32(self.bytes, node::field::COMPACT.start)),
            _ if version < 3 => Ppa::NONE,
            _ => Ppa(get_u32(
                self.bytes,
                node::field::COMPACT_TABLE.start + 4 * (i - 1),
            )),
        }
    }
}

/// Writes a node page for `node_id` from its pointers (all [`node::LBAS`] of them; the extent
/// is derived), its inline area (at most [`inline_delta::AREA`] bytes, placed at the end of the
/// page) and its compact page addresses into `out` (4096 bytes).
pub fn write_node(
    out: &mut [u8],
    node_id: u32,
    seq: u64,
    pointers: impl Fn(u32) -> Ppa,
    inline: &[u8],
    compact: impl Fn(usize) -> Ppa,
) {
    use node::field as f;
    out.fill(0);
    let mut extent = 0;
    for i in 0..node::LBAS {
        let p = pointers(i);
        put_u32(out, f::POINTERS + 4 * i as usize, p.0);
        if p.is_some() {
            extent = i + 1;
        }
    }
    // Bytes past the extent belong to the free/inline area: zero them so the page's bytes are a
    // function of its meaning alone.
    out[f::POINTERS + 4 * extent as usize..f::POINTERS + 4 * node::LBAS as usize].fill(0);
    out[f::MAGIC].copy_from_slice(&node::MAGIC);
    put_u16(out, f::VERSION.start, node::VERSION);
    put_u32(out, f::NODE_ID.start, node_id);
    put_u64(out, f::SEQ.start, seq);
    put_u16(out, f::EXTENT.start, extent as u16);
    debug_assert!(inline.len() <= inline_delta::AREA);
    out[SLOT_BYTES - inline.len()..].copy_from_slice(inline);
    put_u16(out, f::INLINE_LEN.start, inline.len() as u16);
    put_u32(out, f::COMPACT.start, compact(0).0);
    for i in 1..node::COMPACT_PAGES {
        put_u32(out, f::COMPACT_TABLE.start + 4 * (i - 1), compact(i).0);
    }
    let crc = crc32(&[&out[..]]);
    put_u32(out, f::CRC.start, crc);
}

/// The checkpoint pack header: the first 128 bytes of the pack's first slot.
pub mod checkpoint {
    /// Byte ranges of the header.
    pub mod field {
        use core::ops::Range;
        /// `b"NBCP"`.
        pub const MAGIC: Range<usize> = 0..4;
        /// Format version, currently 1.
        pub const VERSION: Range<usize> = 4..6;
        /// Header length in bytes (128).
        pub const HEADER_LEN: Range<usize> = 6..8;
        /// Checkpoint sequence number (also in every slot's spare record).
        pub const SEQ: Range<usize> = 8..16;
        /// Geometry the FTL was formatted for: page bytes, spare bytes, pages/block, blocks.
        pub const PAGE_BYTES: Range<usize> = 16..20;
        /// See [`PAGE_BYTES`].
        pub const SPARE_BYTES: Range<usize> = 20..24;
        /// See [`PAGE_BYTES`].
        pub const PAGES_PER_BLOCK: Range<usize> = 24..28;
        /// See [`PAGE_BYTES`].
        pub const BLOCKS: Range<usize> = 28..32;
        /// Logical 4 KiB blocks exported.
        pub const LOGICAL_BLOCKS: Range<usize> = 32..36;
        /// Node cache slots the device was formatted with (a RAM choice, kept as the default).
        pub const NODE_CACHE_SLOTS: Range<usize> = 36..40;
        /// LBAs per node page.
        pub const LBAS_PER_NODE: Range<usize> = 40..44;
        /// Node entries in the payload's NAT.
        pub const NODES: Range<usize> = 44..48;
        /// Open log heads (block, next page) for the hot, cold and node logs; `u32::MAX` = none.
        pub const HEADS: Range<usize> = 48..72;
        /// Payload length in bytes (NAT, then the block table).
        pub const PAYLOAD_LEN: Range<usize> = 72..76;
        /// CRC32 of the payload.
        pub const PAYLOAD_CRC: Range<usize> = 76..80;
        /// Host bytes written over the device's life (for WAF across mounts).
        pub const HOST_WRITE_BYTES: Range<usize> = 80..88;
        /// NAND program bytes over the device's life.
        pub const NAND_PROGRAM_BYTES: Range<usize> = 88..96;
        /// Reserved, written 0.
        pub const RESERVED: Range<usize> = 96..124;
        /// CRC32 of bytes 0..124.
        pub const CRC: Range<usize> = 124..128;
    }
    /// Header length.
    pub const HEADER_LEN: usize = 128;
    /// The magic.
    pub const MAGIC: [u8; 4] = *b"NBCP";
    /// The version written.
    pub const VERSION: u16 = 1;
    /// Bytes per block-table entry: erase count u32, state u8, 3 reserved.
    pub const BLOCK_ENTRY: usize = 8;
}

/// The decoded checkpoint header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CheckpointHeader {
    /// Checkpoint sequence number.
    pub seq: u64,
    /// Geometry echo.
    pub page_bytes: u32,
    /// Geometry echo.
    pub spare_bytes: u32,
    /// Geometry echo.
    pub pages_per_block: u32,
    /// Geometry echo.
    pub blocks: u32,
    /// Logical blocks exported.
    pub logical_blocks: u32,
    /// Node cache slots chosen at format.
    pub node_cache_slots: u32,
    /// LBAs per node.
    pub lbas_per_node: u32,
    /// NAT entries.
    pub nodes: u32,
    /// (block, next page) of the hot, cold and node logs; block `u32::MAX` = none open.
    pub heads: [(u32, u32); 3],
    /// Payload length.
    pub payload_len: u32,
    /// Payload CRC.
    pub payload_crc: u32,
    /// Lifetime host write bytes.
    pub host_write_bytes: u64,
    /// Lifetime NAND program bytes.
    pub nand_program_bytes: u64,
}

impl CheckpointHeader {
    /// Decodes and checks a header (magic, version, length, CRC).
    pub fn parse(b: &[u8]) -> Option<CheckpointHeader> {
        use checkpoint::field as f;
        let b = b.get(..checkpoint::HEADER_LEN)?;
        if b[f::MAGIC] != checkpoint::MAGIC
            || get_u16(b, f::VERSION.start) != checkpoint::VERSION
            || get_u16(b, f::HEADER_LEN.start) as usize != checkpoint::HEADER_LEN
            || crc32(&[&b[..f::CRC.start]]) != get_u32(b, f::CRC.start)
        {
            return None;
        }
        let mut heads = [(0, 0); 3];
        for (i, h) in heads.iter_mut().enumerate() {
            let at = f::HEADS.start + 8 * i;
            *h = (get_u32(b, at), get_u32(b, at + 4));
        }
        Some(CheckpointHeader {
            seq: get_u64(b, f::SEQ.start),
            page_bytes: get_u32(b, f::PAGE_BYTES.start),
            spare_bytes: get_u32(b, f::SPARE_BYTES.start),
            pages_per_block: get_u32(b, f::PAGES_PER_BLOCK.start),
            blocks: get_u32(b, f::BLOCKS.start),
            logical_blocks: get_u32(b, f::LOGICAL_BLOCKS.start),
            node_cache_slots: get_u32(b, f::NODE_CACHE_SLOTS.start),
            lbas_per_node: get_u32(b, f::LBAS_PER_NODE.start),
            nodes: get_u32(b, f::NODES.start),
            heads,
            payload_len: get_u32(b, f::PAYLOAD_LEN.start),
            payload_crc: get_u32(b, f::PAYLOAD_CRC.start),
            host_write_bytes: get_u64(b, f::HOST_WRITE_BYTES.start),
            nand_program_bytes: get_u64(b, f::NAND_PROGRAM_BYTES.start),
        })
    }

    /// Encodes the header into the first [`checkpoint::HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        use checkpoint::field as f;
        let b = &mut out[..checkpoint::HEADER_LEN];
        b.fill(0);
        b[f::MAGIC].copy_from_slice(&checkpoint::MAGIC);
        put_u16(b, f::VERSION.start, checkpoint::VERSION);
        put_u16(b, f::HEADER_LEN.start, checkpoint::HEADER_LEN as u16);
        put_u64(b, f::SEQ.start, self.seq);
        put_u32(b, f::PAGE_BYTES.start, self.page_bytes);
        put_u32(b, f::SPARE_BYTES.start, self.spare_bytes);
        put_u32(b, f::PAGES_PER_BLOCK.start, self.pages_per_block);
        put_u32(b, f::BLOCKS.start, self.blocks);
        put_u32(b, f::LOGICAL_BLOCKS.start, self.logical_blocks);
        put_u32(b, f::NODE_CACHE_SLOTS.start, self.node_cache_slots);
        put_u32(b, f::LBAS_PER_NODE.start, self.lbas_per_node);
        put_u32(b, f::NODES.start, self.nodes);
        for (i, h) in self.heads.iter().enumerate() {
            let at = f::HEADS.start + 8 * i;
            put_u32(b, at, h.0);
            put_u32(b, at + 4, h.1);
        }
        put_u32(b, f::PAYLOAD_LEN.start, self.payload_len);
        put_u32(b, f::PAYLOAD_CRC.start, self.payload_crc);
        put_u64(b, f::HOST_WRITE_BYTES.start, self.host_write_bytes);
        put_u64(b, f::NAND_PROGRAM_BYTES.start, self.nand_program_bytes);
        let crc = crc32(&[&b[..f::CRC.start]]);
        put_u32(b, f::CRC.start, crc);
    }
}

/// Reads a little-endian u32 at `at` (callers check bounds first).
pub fn read_u32(b: &[u8], at: usize) -> u32 {
    get_u32(b, at)
}

/// Writes a little-endian u32 at `at`.
pub fn write_u32(b: &mut [u8], at: usize, v: u32) {
    put_u32(b, at, v)
}

/// Reads a little-endian u64 at `at` (callers check bounds first).
pub fn read_u64(b: &[u8], at: usize) -> u64 {
    get_u64(b, at)
}

/// Writes a little-endian u64 at `at`.
pub fn write_u64(b: &mut [u8], at: usize, v: u64) {
    put_u64(b, at, v)
}
