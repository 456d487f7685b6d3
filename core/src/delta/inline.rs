//! Delta Chunk Inlining: deltas kept in the inline area of a node page.
//!
//! The inline area is the tail of the 4 KiB node image: entries are stacked from the end of the
//! page towards the pointer area, oldest at the very end, so FIFO order is address order. Each
//! entry ends in a 4-byte tail (LBA offset, encoded length or compact page), so the area is
//! walked from the end of the page: a delta entry is its encoded delta, the CRC of the base it
//! applies to, the CRC of the block it produces and the tail; a *marker* (its delta moved to a
//! compact page, which keeps the CRCs) is the tail alone (layout in
//! [`crate::format::inline_delta`]). Markers are small because a group whose blocks are all
//! rewritten in turn (a file system journal wrapping around) ends up with a marker for nearly
//! every block: at 12 bytes 248 of them filled the area and left no room to batch new deltas,
//! so every rewrite went whole until markers retired one by one. The area
//! never grows past [`AREA`] = 2,980 bytes: that is what is left beside a full pointer area
//! (256 pointers) and the table of compact pages, so the pointer area can never collide with a durable delta, not even when
//! roll-forward replays writes that extend it (it cannot replay an eviction).
//!
//! # Benefit model (replacement when the area is full)
//!
//! Costs are in NAND bytes programmed, reads converted at `R` = [`READ_EQUIV`] bytes (a read
//! costs about 1/12 of a program's time on the `tlc` profile: 75 µs vs 900 µs).
//!
//! - Admitting a new delta saves `S = P · (1 + w)` with `P` = 4,096 (the full-page program
//!   avoided now) and `w` = 1 when the group is write-hot (its deltas tend to be overwritten
//!   by newer deltas before they must be evicted, so an inline slot keeps saving programs), else 0.
//! - Compaction, in read-cold groups, moves every inline delta of the group at once into one
//!   compact page, leaving 4-byte markers. It is only considered when the deltas moved add up to
//!   at least [`MIN_COMPACT_BATCH`] = P/4 bytes, so a compact page always carries a batch, and
//!   the new delta is charged its share of that page: `C = P · need / batch` (at most `P`),
//!   where `need` is the new entry's size. (Markers for all 256 blocks of a group take 1 KiB,
//!   so there is always room to gather a batch; with its 16 compact pages full of live deltas a
//!   group's updates are written whole, each retiring a marker, until a page has room again.)
//! - Evicting an old entry `e` by a rebuild (read the base, program the full page) costs
//!   `C(e) = P + R`.
//!
//! Compaction comes first where it applies; then the oldest entries are rebuilt (FIFO) until
//! the new one fits. All of it happens only if `S > Σ C`; otherwise the new block is written
//! whole. So a write-cold group never trades a rebuild for a delta, a write-hot group trades at
//! most one rebuild per new delta, and a read-cold group packs its deltas.
//!
//! MedFS packs only read-cold/*write-hot* groups and rebuilds the others. Here a read-cold,
//! write-cold group packs too: with compaction batched, its cost per delta is a fraction of a
//! page, against a full page and a read for a rebuild, and reads of a read-cold group rarely pay
//! the compact page's extra read. Write heat still sets the saving `S` and so how many rebuilds a
//! delta may cost. (On SQLite over ext4 the database's groups are written far less often than
//! the journal's and metadata's, so they classify as write-cold: MedFS's rule refused half the
//! updates there.)

use crate::format::inline_delta as f;
use crate::nand::SLOT_BYTES;

/// Largest inline area: the page minus the node header (32) and a full pointer area (1,024).
pub const AREA: usize = f::AREA;
/// Bytes of an entry header.
pub const HEADER: usize = f::HEADER;
/// Compact pages a group may have.
pub const COMPACT_PAGES: usize = crate::format::node::COMPACT_PAGES;
/// Program cost of one 4 KiB slot, in bytes.
pub const PROGRAM_COST: u32 = SLOT_BYTES as u32;
/// A page read expressed in program bytes (75 µs read vs 900 µs program on `tlc`).
pub const READ_EQUIV: u32 = SLOT_BYTES as u32 * 75 / 900;

/// One parsed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// LBA offset inside the group.
    pub off: u16,
    /// The delta itself lives in one of the group's compact pages; only this marker is inline.
    pub in_compact: bool,
    /// For a marker: which compact page (0..[`COMPACT_PAGES`]).
    pub page: u8,
    /// Encoded bytes.
    pub len: usize,
    /// CRC32 of the base block the delta applies to (0 for a marker: its compact page entry
    /// has it).
    pub base_crc: u32,
    /// CRC32 of the block it produces (0 for a marker, likewise).
    pub new_crc: u32,
    /// Where the entry starts in the image (its encoded bytes, if any).
    pub data: usize,
    /// One past the entry's last byte (its tail's end).
    pub end: usize,
}

impl Entry {
    /// Bytes the entry takes in the area.
    pub fn size(&self) -> usize {
        self.end - self.data
    }
}

/// The inline area is damaged (a length runs past the area).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Walks the entries of an image whose inline area is `len` bytes, oldest first.
pub struct Iter<'a> {
    img: &'a [u8],
    pos: usize,
    low: usize,
}

/// Entries oldest first; a malformed area yields one `Err` and stops.
pub fn entries(img: &[u8], len: usize) -> Iter<'_> {
    let low = SLOT_BYTES.saturating_sub(len.min(AREA));
    Iter {
        img,
        pos: if len > AREA { low } else { SLOT_BYTES },
        low,
    }
}

/// The entry ending at `end` (above `low`, the area's lower bound), read from its tail, or
/// `Malformed` if it would run below `low` or a field is out of range.
#[inline(always)]
fn entry_at(img: &[u8], end: usize, low: usize) -> Result<Entry, Malformed> {
    if end - low < f::TAIL {
        return Err(Malformed);
    }
    // One bounds check for the four bytes read on every step of a walk.
    let t: &[u8; 4] = img[end - f::TAIL..end].try_into().map_err(|_| Malformed)?;
    let raw_off = u16::from_le_bytes([t[0], t[1]]);
    let raw_len = u16::from_le_bytes([t[2], t[3]]) as usize;
    let off = raw_off & !f::IN_COMPACT;
    if off >= crate::format::node::LBAS as u16 {
        return Err(Malformed);
    }
    if raw_off & f::IN_COMPACT != 0 {
        // A marker's length field names its compact page; it has no delta bytes.
        if raw_len >= COMPACT_PAGES {
            return Err(Malformed);
        }
        return Ok(Entry {
            off,
            in_compact: true,
            page: raw_len as u8,
            len: 0,
            base_crc: 0,
            new_crc: 0,
            data: end - f::MARKER,
            end,
        });
    }
    if raw_len + HEADER > end - low {
        return Err(Malformed);
    }
    let h = end - HEADER;
    Ok(Entry {
        off,
        in_compact: false,
        page: 0,
        len: raw_len,
        base_crc: get_u32(img, h + f::field::BASE_CRC.start),
        new_crc: get_u32(img, h + f::field::NEW_CRC.start),
        data: h - raw_len,
        end,
    })
}

impl Iterator for Iter<'_> {
    type Item = Result<Entry, Malformed>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.pos <= self.low {
            return None;
        }
        match entry_at(self.img, self.pos, self.low) {
            Ok(e) => {
                self.pos = e.data;
                Some(Ok(e))
            }
            Err(m) => {
                self.pos = self.low;
                Some(Err(m))
            }
        }
    }
}

/// The entry for offset `off`, if any (the hot path of every delta write and of reads in groups
/// holding deltas): a malformed area is an error if the walk reaches the damage before finding
/// `off`, as [`entries`] would.
pub fn find(img: &[u8], len: usize, off: u16) -> Result<Option<Entry>, Malformed> {
    for e in entries(img, len) {
        let e = e?;
        if e.off == off {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The oldest marker (an entry whose delta lives in a compact page), if any; a walk that meets
/// damage stops there.
pub fn first_marker(img: &[u8], len: usize) -> Option<Entry> {
    entries(img, len)
        .map_while(Result::ok)
        .find(|e| e.in_compact)
}

/// Live entries (delta bytes inline or markers) in the area.
pub fn count(img: &[u8], len: usize) -> u32 {
    entries(img, len).filter(|e| e.is_ok()).count() as u32
}

/// Removes `e`, closing the gap (newer entries move towards the end); returns the new length.
pub fn remove(img: &mut [u8], len: usize, e: &Entry) -> usize {
    let low = SLOT_BYTES - len;
    let start = e.data;
    let size = e.size();
    img.copy_within(low..start, low + size);
    img[low..low + size].fill(0);
    len - size
}

/// Turns the inline deltas whose offsets are set in `moved` (one bit per offset) into markers
/// naming compact page `page`, in place and in one pass; every entry keeps its FIFO position.
/// Returns the new length and how many entries became markers, or `None` (nothing changed) if
/// the area is malformed.
pub fn to_markers(img: &mut [u8], len: usize, moved: &[u32; 8], page: u8) -> Option<(usize, u32)> {
    if len > AREA || entries(img, len).any(|e| e.is_err()) {
        return None;
    }
    let low = SLOT_BYTES - len;
    // Read cursor `r` and write cursor `w` both walk down from the end; an entry never grows,
    // so `w >= r` and nothing unread is overwritten.
    let (mut r, mut w, mut turned) = (SLOT_BYTES, SLOT_BYTES, 0);
    while r > low {
        let e = entry_at(img, r, low).ok()?;
        let off = e.off as usize;
        if !e.in_compact && moved[off / 32] & (1 << (off % 32)) != 0 {
            w -= f::MARKER;
            put_marker(img, w, e.off, page);
            turned += 1;
        } else {
            let size = e.size();
            img.copy_within(e.data..r, w - size);
            w -= size;
        }
        r = e.data;
    }
    img[low..w].fill(0);
    Some((SLOT_BYTES - w, turned))
}

fn put_marker(img: &mut [u8], at: usize, off: u16, page: u8) {
    let m = at..at + f::MARKER;
    img[m.start + f::marker::OFFSET.start..m.start + f::marker::OFFSET.end]
        .copy_from_slice(&(off | f::IN_COMPACT).to_le_bytes());
    img[m.start + f::marker::PAGE.start..m.end].copy_from_slice(&u16::from(page).to_le_bytes());
}

/// Appends an entry (the newest, nearest the pointer area): the delta bytes, or, when
/// `compact` names the compact page holding them, a marker (`delta` empty; the CRCs are not
/// kept: the compact page's entry has them). Returns the new length, or `None` if it would not
/// fit in [`AREA`].
pub fn push(
    img: &mut [u8],
    len: usize,
    off: u16,
    compact: Option<u8>,
    base_crc: u32,
    new_crc: u32,
    delta: &[u8],
) -> Option<usize> {
    let size = match compact {
        Some(_) => f::MARKER,
        None => delta.len() + HEADER,
    };
    if len + size > AREA
        || off >= crate::format::node::LBAS as u16
        || compact.is_some_and(|c| c as usize >= COMPACT_PAGES || !delta.is_empty())
    {
        return None;
    }
    let end = SLOT_BYTES - len;
    if let Some(page) = compact {
        put_marker(img, end - f::MARKER, off, page);
        return Some(len + size);
    }
    let h = end - HEADER;
    img[h - delta.len()..h].copy_from_slice(delta);
    let field = |r: core::ops::Range<usize>| h + r.start..h + r.end;
    img[field(f::field::BASE_CRC)].copy_from_slice(&base_crc.to_le_bytes());
    img[field(f::field::NEW_CRC)].copy_from_slice(&new_crc.to_le_bytes());
    img[field(f::field::OFFSET)].copy_from_slice(&off.to_le_bytes());
    img[field(f::field::LEN)].copy_from_slice(&(delta.len() as u16).to_le_bytes());
    Some(len + size)
}

/// Rewrites an inline area of `len` bytes laid out as node versions 2 and 3 had it (every
/// entry, a marker too, ending in a 12-byte header: offset, length, CRCs) in today's layout, in
/// place, keeping the order; returns the new length, or `None` if the old area is malformed.
pub fn upgrade_v3(img: &mut [u8], len: usize) -> Option<usize> {
    use f::v3;
    if len > AREA {
        return None;
    }
    let low = SLOT_BYTES - len;
    // As in `to_markers`: entries never grow, so the write cursor stays above the read cursor.
    let (mut r, mut w) = (SLOT_BYTES, SLOT_BYTES);
    while r > low {
        if r - low < v3::HEADER {
            return None;
        }
        let h = r - v3::HEADER;
        let raw_off = get_u16(img, h + v3::field::OFFSET.start);
        let raw_len = get_u16(img, h + v3::field::LEN.start) as usize;
        let off = raw_off & !f::IN_COMPACT;
        if off >= crate::format::node::LBAS as u16 {
            return None;
        }
        if raw_off & f::IN_COMPACT != 0 {
            if raw_len >= COMPACT_PAGES {
                return None;
            }
            w -= f::MARKER;
            put_marker(img, w, off, raw_len as u8);
            r = h;
            continue;
        }
        if raw_len > h - low {
            return None;
        }
        let (base, new) = (
            get_u32(img, h + v3::field::BASE_CRC.start),
            get_u32(img, h + v3::field::NEW_CRC.start),
        );
        let start = h - raw_len;
        // Same size: the delta moves by `w - r`, then the new tail goes after it.
        img.copy_within(start..h, w - HEADER - raw_len);
        let nh = w - HEADER;
        img[nh + f::field::BASE_CRC.start..nh + f::field::BASE_CRC.end]
            .copy_from_slice(&base.to_le_bytes());
        img[nh + f::field::NEW_CRC.start..nh + f::field::NEW_CRC.end]
            .copy_from_slice(&new.to_le_bytes());
        img[nh + f::field::OFFSET.start..nh + f::field::OFFSET.end]
            .copy_from_slice(&off.to_le_bytes());
        img[nh + f::field::LEN.start..nh + f::field::LEN.end]
            .copy_from_slice(&(raw_len as u16).to_le_bytes());
        w = nh - raw_len;
        r = start;
    }
    img[low..w].fill(0);
    Some(SLOT_BYTES - w)
}

/// Saving of admitting a new delta (see the module docs).
pub const fn admit_saving(write_hot: bool) -> u32 {
    PROGRAM_COST * if write_hot { 2 } else { 1 }
}

/// Fewest bytes of inline deltas a compaction moves (see the module docs).
pub const MIN_COMPACT_BATCH: usize = SLOT_BYTES / 4;

/// What a compaction moving `batch` bytes costs the admission of a `need`-byte entry: its share
/// of the compact page (see the module docs).
pub fn compact_cost(need: usize, batch: usize) -> u32 {
    (PROGRAM_COST as usize * need / batch.max(1)).min(PROGRAM_COST as usize) as u32
}

/// Cost of evicting one entry by a rebuild (see the module docs).
pub const REBUILD_COST: u32 = PROGRAM_COST + READ_EQUIV;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_find_remove_keep_fifo_order() {
        let mut img = [0u8; SLOT_BYTES];
        let mut len = 0;
        len = push(&mut img, len, 1, None, 11, 12, &[1, 2, 3]).unwrap();
        len = push(&mut img, len, 2, Some(5), 21, 22, &[]).unwrap();
        len = push(&mut img, len, 3, None, 31, 32, &[9; 10]).unwrap();
        assert_eq!(push(&mut img, len, 4, Some(16), 1, 2, &[]), None);
        assert_eq!(push(&mut img, len, 4, Some(1), 1, 2, &[1]), None);
        assert_eq!(len, 3 + 10 + 2 * HEADER + f::MARKER);
        let offs: heapless::Vec<u16, 8> = entries(&img, len).map(|e| e.unwrap().off).collect();
        assert_eq!(&offs[..], &[1, 2, 3]);
        let e2 = find(&img, len, 2).unwrap().unwrap();
        assert!(e2.in_compact && e2.page == 5 && e2.len == 0);
        // A marker keeps no CRCs: its compact page entry has them.
        assert!(e2.base_crc == 0 && e2.new_crc == 0 && e2.size() == f::MARKER);
        len = remove(&mut img, len, &e2);
        let e3 = find(&img, len, 3).unwrap().unwrap();
        assert_eq!(&img[e3.data..e3.data + e3.len], &[9; 10]);
        let e1 = find(&img, len, 1).unwrap().unwrap();
        assert_eq!(&img[e1.data..e1.data + 3], &[1, 2, 3]);
        assert_eq!(find(&img, len, 2).unwrap(), None);
        assert_eq!(count(&img, len), 2);
    }

    #[test]
    fn to_markers_turns_chosen_deltas_in_place_and_keeps_order() {
        let mut img = [0u8; SLOT_BYTES];
        let mut len = 0;
        len = push(&mut img, len, 1, None, 11, 12, &[1, 2, 3]).unwrap();
        len = push(&mut img, len, 2, Some(3), 21, 22, &[]).unwrap();
        len = push(&mut img, len, 3, None, 31, 32, &[9; 10]).unwrap();
        len = push(&mut img, len, 40, None, 41, 42, &[7; 5]).unwrap();
        let mut moved = [0u32; 8];
        moved[0] |= (1 << 1) | (1 << 2); // 2 is a marker already: left as it is
        moved[1] |= 1 << (40 - 32);
        let (l, n) = to_markers(&mut img, len, &moved, 6).unwrap();
        assert_eq!((l, n), (3 * f::MARKER + HEADER + 10, 2));
        let got: heapless::Vec<(u16, bool, u8, usize, u32), 8> = entries(&img, l)
            .map(|e| e.unwrap())
            .map(|e| (e.off, e.in_compact, e.page, e.len, e.new_crc))
            .collect();
        assert_eq!(
            &got[..],
            &[
                (1, true, 6, 0, 0),
                (2, true, 3, 0, 0),
                (3, false, 0, 10, 32),
                (40, true, 6, 0, 0)
            ]
        );
        let e3 = find(&img, l, 3).unwrap().unwrap();
        assert_eq!(&img[e3.data..e3.data + e3.len], &[9; 10]);
        assert!(
            img[..SLOT_BYTES - l].iter().all(|&b| b == 0),
            "freed bytes are zeroed"
        );
    }

    /// `find` and `first_marker` must answer exactly what a walk of whole entries does, on
    /// sound areas and on damaged ones.
    #[test]
    fn header_walks_agree_with_the_entry_walk() {
        let mut rng = crate::test_rng::Rng(0x2545_F491_4F6C_DD1D);
        let mut next = || rng.next();
        let delta = [0x5Au8; 300];
        for round in 0..2000 {
            let mut img = [0u8; SLOT_BYTES];
            let mut len = 0;
            for _ in 0..next() % 40 {
                let off = (next() % 64) as u16;
                let pushed = if next() % 3 == 0 {
                    push(&mut img, len, off, Some((next() % 16) as u8), 1, 2, &[])
                } else {
                    let n = (next() % 300) as usize;
                    push(&mut img, len, off, None, 3, 4, &delta[..n])
                };
                len = pushed.unwrap_or(len);
            }
            if round % 4 == 1 && len > 0 {
                // Damage: a random byte of the area, or a length field.
                let at = SLOT_BYTES - 1 - (next() as usize % len);
                img[at] = next() as u8;
            }
            if round % 8 == 3 {
                len = (next() % 4200) as usize;
            }
            for off in 0..70u16 {
                let mut want = Ok(None);
                for e in entries(&img, len) {
                    match e {
                        Err(m) => {
                            want = Err(m);
                            break;
                        }
                        Ok(e) if e.off == off => {
                            want = Ok(Some(e));
                            break;
                        }
                        Ok(_) => {}
                    }
                }
                assert_eq!(find(&img, len, off), want, "round {round} off {off}");
            }
            let want = entries(&img, len)
                .filter_map(Result::ok)
                .find(|e| e.in_compact);
            assert_eq!(first_marker(&img, len), want, "round {round}");
        }
    }

    #[test]
    fn full_area_refuses_and_damage_is_detected() {
        let mut img = [0u8; SLOT_BYTES];
        let big = [5u8; 970];
        let mut len = 0;
        for off in 0..3 {
            len = push(&mut img, len, off, None, 0, 0, &big).unwrap();
        }
        assert_eq!(len, 3 * (970 + HEADER));
        let room = AREA - len - HEADER;
        assert!(push(&mut img.clone(), len, 9, None, 0, 0, &big[..room + 1]).is_none());
        assert!(push(&mut img.clone(), len, 9, None, 0, 0, &big[..room]).is_some());
        // Corrupt the newest header's length so it runs past the area.
        let h = SLOT_BYTES - len;
        let e = find(&img, len, 2).unwrap().unwrap();
        assert_eq!(e.data, h);
        img[e.end - 2..e.end].copy_from_slice(&4000u16.to_le_bytes());
        assert!(entries(&img, len).any(|e| e.is_err()));
    }

    /// A version 3 area (12-byte headers in front, markers with CRCs) reads, after the upgrade,
    /// as the same entries in the same order, markers now without CRCs.
    #[test]
    fn upgrade_v3_keeps_every_entry_and_its_order() {
        use f::v3;
        /// Offset, marker page (None: a delta), base CRC, new CRC, delta bytes.
        type Expected = (u16, Option<u8>, u32, u32, heapless::Vec<u8, 64>);
        let mut rng = crate::test_rng::Rng(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.next();
        for round in 0..500 {
            // Entries: (off, marker page or None, base, new, delta).
            let mut want: heapless::Vec<Expected, 64> = heapless::Vec::new();
            let mut old = [0u8; SLOT_BYTES];
            let mut len = 0usize;
            for _ in 0..next() % 40 {
                let off = (next() % 256) as u16;
                let marker = (next() % 2 == 0).then(|| (next() % 16) as u8);
                let n = if marker.is_some() {
                    0
                } else {
                    (next() % 60) as usize
                };
                let delta: heapless::Vec<u8, 64> = (0..n).map(|_| next() as u8).collect();
                let size = n + v3::HEADER;
                if len + size > AREA {
                    break;
                }
                let h = SLOT_BYTES - len - v3::HEADER;
                old[h - n..h].copy_from_slice(&delta);
                let raw_off = off | if marker.is_some() { f::IN_COMPACT } else { 0 };
                let raw_len = marker.map_or(n as u16, u16::from);
                let (base, new) = (next() as u32, next() as u32);
                old[h..h + 2].copy_from_slice(&raw_off.to_le_bytes());
                old[h + 2..h + 4].copy_from_slice(&raw_len.to_le_bytes());
                old[h + 4..h + 8].copy_from_slice(&base.to_le_bytes());
                old[h + 8..h + 12].copy_from_slice(&new.to_le_bytes());
                len += size;
                want.push((off, marker, base, new, delta)).unwrap();
            }
            let l = upgrade_v3(&mut old, len).expect("sound area");
            let got: heapless::Vec<Entry, 64> = entries(&old, l).map(|e| e.unwrap()).collect();
            assert_eq!(got.len(), want.len(), "round {round}");
            for (e, (off, marker, base, new, delta)) in got.iter().zip(want.iter()) {
                assert_eq!(e.off, *off);
                assert_eq!(e.in_compact.then_some(e.page), *marker);
                if marker.is_none() {
                    assert_eq!((e.base_crc, e.new_crc), (*base, *new));
                    assert_eq!(&old[e.data..e.data + e.len], &delta[..]);
                }
            }
            assert!(old[..SLOT_BYTES - l].iter().all(|&b| b == 0));
        }
        // A length running past the area is refused.
        let mut bad = [0u8; SLOT_BYTES];
        bad[SLOT_BYTES - 10..SLOT_BYTES - 8].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(upgrade_v3(&mut bad, 12), None);
    }
}
