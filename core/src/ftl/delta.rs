//! The delta engine's place in the FTL: when an update becomes an inline delta, how a read
//! applies one, and what eviction and idle time do with them. The mechanisms themselves live in
//! [`crate::delta`]; this module wires them to the logs, the node cache and the stats.
//!
//! # Durability
//!
//! A new delta goes into its node page (RAM) and into the open *delta log* slot
//! ([`crate::delta::log`]); a flush (barrier) writes the log slot, so the deltas of a flush
//! interval cost one slot, not one node page per group. Roll-forward replays log entries into
//! node copies older than the log slot, in sequence order with data slots. Log slots are never
//! valid data: their blocks are kept from erasure until the next checkpoint, which writes every
//! node and so supersedes them. The log is written before any node copy holding one of its
//! entries (else replay would apply the entry over later changes). A compaction is redone by
//! roll-forward from its compact page, which names its table slot and flags the entries it
//! moved (see `replay_compact`), so it costs no node write either. Changes nothing replays (a
//! compact page moved by GC, a trim) mark the node *unlogged*, so the next flush writes it, and
//! no block freed since is erased before that. The base
//! block a delta applies to is the slot the node still points to, so it stays valid (mapped)
//! while the delta lives, and GC moves it like any mapped slot. Every entry names its base by
//! the base's data CRC (which GC and retries carry unchanged) and the block it produces by its
//! CRC: roll-forward replays data slots into a node copy without looking at its deltas, and an
//! entry whose base was since replaced no longer matches and is ignored (then the replayed,
//! newer block is what the LBA reads). A delta that does not produce its CRC is corruption.
//!
//! # Skipping attempts bound to fail
//!
//! An attempt costs a NAND read of the base and an encoding; when the update is not small it
//! buys nothing. After [`MISS_STREAK`] + 1 attempts in a row refused as too large, a group's
//! updates go whole without one, but for one attempt in every [`MISS_PROBE`] writes; the first
//! small delta ends the streak. Groups rewritten with new contents (fio's random writes from
//! 32 buffers: 98% of attempts refused) then cost a quarter of the base reads. The streak is
//! long because a group holds many blocks whose updates differ: on the SQLite WAL trace it
//! removed 27% of NAND reads and no programmed byte (`bench/delta.sh`'s figures are unchanged).
//!
//! # The delta store on a full device
//!
//! An inline delta lives in its node page, which exists anyway. A delta pushed out to a
//! compact page takes space of its own, and its base stays alive beside it: on a device with
//! every LBA written, the compact pages take the over-provisioning GC works with. On a full
//! 64 MiB device whose blocks were rewritten in place with 5% of their bytes changed, live
//! compact pages took most of the spare blocks, GC's victims grew mostly valid, and from the
//! second pass on the NAND bytes per host byte were 2.1 to 2.5 in address order and 3.1 in
//! random order, against 1.004 and 2.02 with deltas off.
//!
//! So the store beyond the inline areas has a budget, [`DELTA_STORE_SHARE`] of the
//! over-provisioning. At each block allocation the FTL sums the valid slots of its data blocks;
//! when they exceed every LBA plus every node page plus that budget, a delta is kept only if it
//! fits the inline area as it stands: no compaction and no rebuild makes room, the update is
//! written whole (counted as refused), and a compact page whose last marker such a write drops
//! is released at once. Whole writes then retire old deltas and their compact pages, and the
//! spare space comes back. A device not full keeps every delta path. With the budget, the
//! 64 MiB device's passes in address order cost 0.66, 0.84, 0.96 and 1.01 (random order: 1.5,
//! 2.5, 1.9, 2.4, still about a tenth above deltas off at steady state), and a full 1 GiB
//! device rewritten in address order 0.95, 1.00 and 1.06 instead of 0.23, 3.05 and 5.69.
//! The SQLite traces program exactly what they did (their device is far from full). Left
//! alone: coded (ZipNN) blocks share slots, so a full device of them counts fewer slots in use
//! than LBAs and its delta store is never held to the budget.

use super::*;
use crate::delta::compact::{Builder, CompactView};
use crate::delta::hotness::Class;
use crate::delta::inline::{self, Entry};
use crate::delta::log::{LogBuilder, LogEntry, LogView};
use crate::delta::planes;
use crate::delta::xor::{self, MAX_DELTA};
use crate::format::inline_delta::{AREA, HEADER};

/// The delta store's budget on a full device: one part in this many of the over-provisioning
/// (module docs).
pub(super) const DELTA_STORE_SHARE: u64 = 16;

/// Most evictions one host write may trigger before it is written whole instead.
const MAX_EVICTIONS: u32 = 64;

/// Delta attempts of a group refused in a row, beyond which its updates skip the attempt.
pub(super) const MISS_STREAK: u8 = 12;
/// Once skipping, a group still tries one update in this many.
pub(super) const MISS_PROBE: u8 = 4;

/// A group's miss count after one more refused or skipped attempt: it climbs to the streak,
/// then wraps within `MISS_STREAK..MISS_STREAK + MISS_PROBE`, trying again at each wrap.
fn next_miss(misses: u8) -> u8 {
    if misses + 1 >= MISS_STREAK + MISS_PROBE {
        MISS_STREAK
    } else {
        misses + 1
    }
}

/// What [`Ftl::drop_delta`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dropped {
    /// No entry: nothing older can come back for the block.
    Nothing,
    /// An entry whose base had this CRC.
    Base(u32),
    /// An entry whose base CRC could not be read, or a slot nothing is known of.
    Unknown,
}

impl Dropped {
    /// Whether a block with CRC `crc` is surely not the dropped entry's base.
    pub(super) fn differs_from(self, crc: u32) -> bool {
        match self {
            Dropped::Nothing => true,
            Dropped::Base(b) => b != crc,
            Dropped::Unknown => false,
        }
    }
}

/// The base of a delta as [`Ftl::load_base`] found it (its bytes are in `BBUF`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Base {
    /// Its base CRC (see `load_base`).
    pub crc: u32,
    /// NAND bytes that writing a block of it whole costs: a slot, or for a coded block its
    /// record and directory entry. A delta may take at most a quarter of it.
    pub whole: usize,
}

impl Base {
    fn plain(crc: u32) -> Self {
        Base {
            crc,
            whole: SLOT_BYTES,
        }
    }

    /// Largest delta entry worth keeping over this base. A plain base: [`MAX_DELTA`]. A coded
    /// one: an eighth of its record. A kept delta costs its bytes in the delta log, its share of
    /// a compact page, and, in the hot log it shares with the coded blocks, the unused end of
    /// the packed slot each delta-log or compact-page write closes; measured on a BF16
    /// checkpoint rewrite (`bench/zipnn-device.sh`, 20% of elements changed: ~600-byte deltas),
    /// a quarter of the record made the rewrite cost 17% more NAND bytes than coding it whole.
    fn max_delta(&self) -> usize {
        if self.whole >= SLOT_BYTES {
            MAX_DELTA
        } else {
            (self.whole / 8).min(MAX_DELTA)
        }
    }
}

impl<N: Nand> Ftl<'_, N> {
    /// The cause a node write-back is counted under.
    pub(super) fn node_cause(&self, s: usize) -> Cause {
        if self.cache_meta[s].delta_dirty {
            Cause::Delta
        } else {
            Cause::Node
        }
    }

    fn img(&self, s: usize) -> &[u8] {
        &self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES]
    }

    fn inline_len(&self, s: usize) -> usize {
        self.cache_meta[s].inline_len as usize
    }

    /// Compact page `i` of cached node `s`.
    pub(super) fn compact_ptr(&self, s: usize, i: usize) -> Ppa {
        Ppa(crate::format::read_u32(self.img(s), CACHE_COMPACT + 4 * i))
    }

    /// Which compact page of cached node `s` is slot `p`, if any.
    pub(super) fn compact_index(&self, s: usize, p: Ppa) -> Option<usize> {
        (0..COMPACT_PAGES).find(|&i| self.compact_ptr(s, i) == p)
    }

    /// Sets compact page `i` of cached node `s` by a change roll-forward cannot redo: the node
    /// must be written by the next barrier.
    pub(super) fn set_compact_ptr(&mut self, s: usize, i: usize, p: Ppa) {
        self.write_compact_ptr(s, i, p);
        self.mark_unlogged(s);
    }

    /// Sets compact page `i` of cached node `s` by a change roll-forward redoes from the page
    /// (a compaction, see [`Ftl::replay_compact`]).
    fn write_compact_ptr(&mut self, s: usize, i: usize, p: Ppa) {
        crate::format::write_u32(
            &mut self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES],
            CACHE_COMPACT + 4 * i,
            p.0,
        );
        self.mark_delta_dirty(s);
    }

    /// The inline area of node `s` changed in a way roll-forward reproduces (a delta logged, a
    /// block rewritten whole, which makes its entry stale).
    fn mark_delta_dirty(&mut self, s: usize) {
        let m = &mut self.cache_meta[s];
        m.dirty = true;
        m.delta_dirty = true;
    }

    /// The inline area (or compact pointer) of node `s` changed in a way nothing replays: the
    /// node must be written by the next barrier.
    fn mark_unlogged(&mut self, s: usize) {
        self.mark_delta_dirty(s);
        let m = &mut self.cache_meta[s];
        if !m.unlogged {
            m.unlogged = true;
            self.unlogged += 1;
        }
    }

    pub(super) fn find_entry(&self, s: usize, off: u32) -> R<Option<Entry>, N::Error> {
        inline::find(self.img(s), self.inline_len(s), off as u16).map_err(|_| {
            Error::Corrupted(corrupted(
                "inline delta area malformed",
                self.cache_meta[s].node_plus_one - 1,
            ))
        })
    }

    /// Drops entry `e` of node `s` from the live state and from the open log.
    fn remove_entry(&mut self, s: usize, e: &Entry) {
        self.kill_logged(s, e.off as u32);
        self.forget_entry(s, e);
    }

    /// Marks the open log's entries for offset `off` of node `s` dead: the live state dropped
    /// that delta, and roll-forward would otherwise apply it after the rewrite that dropped it
    /// (the rewrite's slot is older than the log slot).
    fn kill_logged(&mut self, s: usize, off: u32) {
        if self.cache_meta[s].in_dlog {
            let lba = (self.cache_meta[s].node_plus_one - 1) * LBAS_PER_NODE + off;
            let l = self.slot_offset(LBUF, 0);
            self.dlog.kill(&mut self.bufs[l..l + SLOT_BYTES], lba);
        }
    }

    /// Drops entry `e` of node `s` from the live state only, for a replacement whose new entry
    /// goes into the open log right after it.
    fn forget_entry(&mut self, s: usize, e: &Entry) {
        let len = self.inline_len(s);
        let img = &mut self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES];
        self.cache_meta[s].inline_len = inline::remove(img, len, e) as u16;
        self.mark_delta_dirty(s);
    }

    /// Removes the delta of offset `off`: its block was rewritten whole (with data CRC
    /// `new_crc`) or trimmed (`None`; the trim itself marks the node unlogged). A rewrite makes
    /// the entry stale on replay by its base CRC, unless the new block has the base's very
    /// content: then only a node copy can say the delta is gone. Returns what was dropped: the
    /// base CRC roll-forward may still find in an older copy of the entry, which a later
    /// rewrite of the new block in the write buffer must not take ([`Ftl::write`]).
    pub(super) fn drop_delta(
        &mut self,
        s: usize,
        off: u32,
        new_crc: Option<u32>,
    ) -> R<Dropped, N::Error> {
        if self.cache_meta[s].inline_len == 0 {
            return Ok(Dropped::Nothing);
        }
        let Some(e) = self.find_entry(s, off)? else {
            return Ok(Dropped::Nothing);
        };
        let base = match new_crc {
            None => Dropped::Unknown,
            Some(_) if !e.in_compact => Dropped::Base(e.base_crc),
            Some(_) => {
                let g = self.cache_meta[s].node_plus_one - 1;
                match self.entry_crcs(s, g, &e, Cause::Compact) {
                    Ok(Some((base, _))) => Dropped::Base(base),
                    Ok(None) | Err(Error::Corrupted(_)) => Dropped::Unknown,
                    Err(e) => return Err(e),
                }
            }
        };
        self.remove_entry(s, &e);
        // Unknown: only a node copy can say for sure that the delta is gone.
        if new_crc.is_some() && !base.differs_from(new_crc.unwrap_or(0)) {
            self.mark_unlogged(s);
        }
        if e.in_compact {
            self.release_dead_compact(s, e.page as usize);
        }
        Ok(base)
    }

    /// On a device whose delta store is full, releases compact page `page` of node `s` once no
    /// marker names it: its slot is invalidated now, not at the group's next compaction, which
    /// there never comes (module docs, "The delta store on a full device"). The node
    /// must reach flash before the slot's block can be erased, so it is marked unlogged: the
    /// barrier that releases freed blocks writes such nodes first. Until then a node copy on
    /// flash may still name the page, and the page is still there.
    fn release_dead_compact(&mut self, s: usize, page: usize) {
        let p = self.compact_ptr(s, page);
        // Only under the budget: the unlogged node then limits the group's compactions to
        // free table slots until the next barrier, which with power-loss protection is rare
        // (on the SQLite DELETE trace with PLP on, releasing always refused 4,500 more deltas).
        if !self.delta_store_full || !p.is_some() || self.compact_live(s)[page] != 0 {
            return;
        }
        self.set_compact_ptr(s, page, Ppa::NONE);
        self.invalidate(p);
        self.mark_unlogged(s);
    }

    /// The base and new CRCs of entry `e` of node `s` (group `g`): an inline delta carries
    /// them; a marker's are in its compact page's entry, read here (into `SCRATCH`, unless the
    /// page is still buffered). `None` if that page has no entry for the offset.
    fn entry_crcs(
        &mut self,
        s: usize,
        g: u32,
        e: &Entry,
        cause: Cause,
    ) -> R<Option<(u32, u32)>, N::Error> {
        if !e.in_compact {
            return Ok(Some((e.base_crc, e.new_crc)));
        }
        let src = self.compact_src(s, g, e, cause)?;
        let view = CompactView::new_checked(&self.bufs[src..src + SLOT_BYTES], g)
            .map_err(|_| Error::Corrupted(corrupted("compact page fails its checks", g)))?;
        Ok(view.find(e.off).map(|c| (c.base_crc, c.new_crc)))
    }

    /// The base CRC of offset `off`'s entry in node `s` (group `g`), if it has one that can be
    /// read (see [`Ftl::entry_crcs`]).
    pub(super) fn entry_base_crc(
        &mut self,
        s: usize,
        g: u32,
        off: u32,
    ) -> R<Option<u32>, N::Error> {
        let Some(e) = self.find_entry(s, off)? else {
            return Ok(None);
        };
        match self.entry_crcs(s, g, &e, Cause::Checkpoint) {
            Ok(crcs) => Ok(crcs.map(|(base, _)| base)),
            Err(Error::Corrupted(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Where the compact page marker `e` of node `s` (group `g`) names can be read: its
    /// buffered copy, or `SCRATCH` after reading it.
    fn compact_src(&mut self, s: usize, g: u32, e: &Entry, cause: Cause) -> R<usize, N::Error> {
        let cp = self.compact_ptr(s, e.page as usize);
        if !cp.is_some() {
            return Err(Error::Corrupted(corrupted(
                "delta marked compacted but the group has no compact page",
                g * LBAS_PER_NODE + e.off as u32,
            )));
        }
        if let Some(log) = self.buffered_log(cp) {
            return Ok(self.slot_offset(log, cp.0 % self.spp));
        }
        let at = self.slot_offset(SCRATCH, cp.0 % self.spp);
        let ec = self.blocks[(cp.0 / (self.spp * self.ppb)) as usize].erase_count;
        if let Some(copy) = self.ccache.get(cp.0, ec) {
            self.bufs[at..at + SLOT_BYTES].copy_from_slice(copy);
            self.stats.compact_cache_hits += 1;
            return Ok(at);
        }
        self.read_slot_checked(cp, SlotKind::Compact, g, SCRATCH, cause)?;
        self.ccache.put(cp.0, ec, &self.bufs[at..at + SLOT_BYTES]);
        Ok(at)
    }

    /// Writes the open delta log slot into the hot log (a no-op when it is empty).
    pub(super) fn commit_dlog(&mut self) -> R<(), N::Error> {
        if self.dlog.count() == 0 || self.dlog_busy || self.replay_seq.is_some() {
            return Ok(());
        }
        self.dlog_busy = true;
        let r = self.commit_dlog_inner();
        self.dlog_busy = false;
        r
    }

    fn commit_dlog_inner(&mut self) -> R<(), N::Error> {
        self.ensure_room(HOT)?;
        // Making room may have checkpointed, which drops the log.
        if self.dlog.count() == 0 {
            return Ok(());
        }
        let b = self.logs[HOT].block;
        if !self.dlog_blocks.contains(&b) && self.dlog_blocks.push(b).is_err() {
            // Too many protected blocks: a checkpoint makes every logged delta durable in its
            // node instead (and drops the log).
            return self.checkpoint();
        }
        let l = self.slot_offset(LBUF, 0);
        let crc = self.dlog.finish(&mut self.bufs[l..l + SLOT_BYTES]);
        let dst = self.slot_offset(HOT, self.logs[HOT].fill);
        self.bufs.copy_within(l..l + SLOT_BYTES, dst);
        let p = self.commit_slot(HOT, SlotKind::DeltaLog, 0, crc, Cause::Delta);
        // Never valid data: the block is kept by `dlog_blocks` until the next checkpoint.
        self.invalidate(p);
        self.drop_dlog();
        Ok(())
    }

    /// Empties the open delta log (after it was written, or by a checkpoint that wrote every
    /// node holding its entries).
    pub(super) fn drop_dlog(&mut self) {
        self.dlog = LogBuilder::default();
        for m in self.cache_meta.iter_mut() {
            m.in_dlog = false;
        }
    }

    /// Roll-forward of a data slot `p` for offset `off` of node `s`: like the live write did,
    /// drop the offset's delta unless the slot is its base moved by GC (same data CRC), so the
    /// room it took is free for the log entries replayed after it.
    pub(super) fn replay_drop_stale(&mut self, s: usize, off: u32, p: Ppa) -> R<(), N::Error> {
        if self.cache_meta[s].inline_len == 0 {
            return Ok(());
        }
        let Some(e) = self.find_entry(s, off)? else {
            return Ok(());
        };
        let sp = self.spare_offset(GCBUF) + (p.0 % self.spp) as usize * SPARE;
        for _ in 0..READ_ATTEMPTS {
            self.nand_read_spare(p.0 / self.spp, GCBUF, Cause::Checkpoint)?;
            if let Ok(r) = SpareRecord::parse(&self.bufs[sp..sp + SPARE]) {
                let g = self.cache_meta[s].node_plus_one - 1;
                let base = match self.entry_crcs(s, g, &e, Cause::Checkpoint) {
                    Ok(crcs) => crcs.map(|(base, _)| base),
                    Err(Error::Corrupted(_)) => None,
                    Err(err) => return Err(err),
                };
                if base != Some(r.data_crc) {
                    self.remove_entry(s, &e);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Roll-forward of the delta log slot `p` (sequence `seq`): each entry goes into its node
    /// unless the node copy is newer. An entry that no longer fits (an unreplayable compaction
    /// freed the room, and no flush wrote the node since, so the entry is unflushed) is skipped,
    /// leaving the LBA at its previous state.
    pub(super) fn replay_dlog(&mut self, p: Ppa, seq: u64) -> R<(), N::Error> {
        let page = p.0 / self.spp;
        let slot = p.0 % self.spp;
        let mut sound = false;
        for _ in 0..READ_ATTEMPTS {
            self.nand_read(page, GCBUF, Cause::Checkpoint)?;
            if matches!(self.slot_record(GCBUF, slot), Ok(r) if r.kind == SlotKind::DeltaLog) {
                sound = true;
                break;
            }
        }
        if !sound {
            return Err(Error::Corrupted(corrupted("delta log slot damaged", p.0)));
        }
        let src = self.slot_offset(GCBUF, slot);
        let b = self.slot_offset(BBUF, 0);
        self.bufs.copy_within(src..src + SLOT_BYTES, b);
        let count = LogView::new_checked(&self.bufs[b..b + SLOT_BYTES])
            .map_err(|_| Error::Corrupted(corrupted("delta log slot malformed", p.0)))?
            .entries()
            .count();
        for i in 0..count {
            let b = self.slot_offset(BBUF, 0);
            let view = LogView::new_checked(&self.bufs[b..b + SLOT_BYTES])
                .map_err(|_| Error::Corrupted(corrupted("delta log slot malformed", p.0)))?;
            let Some(Ok(e)) = view.entries().nth(i) else {
                break;
            };
            let (lba, base_crc, new_crc, len) = (e.lba, e.base_crc, e.new_crc, e.delta.len());
            let at = e.delta.as_ptr() as usize - self.bufs[b..].as_ptr() as usize + b;
            if lba == u32::MAX {
                continue; // dropped before the slot was written
            }
            if lba >= self.cfg.logical_blocks {
                return Err(Error::Corrupted(corrupted(
                    "delta log entry out of range",
                    p.0,
                )));
            }
            let g = lba / LBAS_PER_NODE;
            let off = lba % LBAS_PER_NODE;
            let s = self.node_slot(g)?;
            if seq <= self.cache_meta[s].base_seq
                || self.room_after_replace(s, off, len + HEADER)?.is_none()
            {
                continue;
            }
            if let Some(old) = self.find_entry(s, off)? {
                self.remove_entry(s, &old);
            }
            let ilen = self.inline_len(s);
            let img = &mut self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES];
            if let Some(l) = inline::push(
                img,
                ilen,
                off as u16,
                None,
                base_crc,
                new_crc,
                &self.bufs[at..at + len],
            ) {
                self.cache_meta[s].inline_len = l as u16;
            }
            self.mark_delta_dirty(s);
        }
        Ok(())
    }

    /// Roll-forward of compact page `p` of group `g` (sequence `seq`, in order with the data
    /// slots): unless the node copy is newer, the compaction that wrote it is redone. The page
    /// fills the table slot it names; every entry it moved out of the inline area becomes a
    /// marker naming it (replacing the offset's entry: replay may have it inline from an older
    /// log slot, or not at all when it was logged in the interval the compaction killed it
    /// from); markers naming the slot whose offset the page lacks are dropped; and pages no
    /// marker names are released, as the live compaction did. A version 1 page (written with
    /// its node) and a copy GC or a retry made (moved flags cleared; those moves mark the node
    /// for the next barrier, before which the page they copied is not erased) change nothing.
    pub(super) fn replay_compact(&mut self, p: Ppa, g: u32, seq: u64) -> R<(), N::Error> {
        let s = match self.node_slot(g) {
            Ok(s) => s,
            // The group's newest node page is damaged: the group is lost (see recovery).
            Err(Error::Corrupted(c)) if c.node == Some(g) => return Ok(()),
            Err(e) => return Err(e),
        };
        if seq <= self.cache_meta[s].stamp_base() {
            return Ok(());
        }
        self.read_slot_checked(p, SlotKind::Compact, g, SCRATCH, Cause::Checkpoint)?;
        let at = self.slot_offset(SCRATCH, p.0 % self.spp);
        let bad = |what| Error::Corrupted(corrupted(what, p.0));
        let malformed = |_| Error::Corrupted(corrupted("inline delta area malformed", g));
        let area = s * SLOT_BYTES..(s + 1) * SLOT_BYTES;
        // The page is checked once; the node's inline area is edited in place beside it.
        let view = CompactView::new_checked(&self.bufs[at..at + SLOT_BYTES], g)
            .map_err(|_| bad("compact page fails its checks"))?;
        let Some(idx) = view.index() else {
            return Ok(());
        };
        let mut held = [0u32; LBAS_PER_NODE as usize / 32];
        let mut any_moved = false;
        for e in view.entries().filter_map(Result::ok) {
            if e.off as u32 >= LBAS_PER_NODE {
                return Err(bad("compact page entry out of its group"));
            }
            held[e.off as usize / 32] |= 1 << (e.off % 32);
            any_moved |= e.moved;
        }
        if !any_moved {
            return Ok(());
        }
        let img = &mut self.cache_data[area];
        let mut len = self.cache_meta[s].inline_len as usize;
        // Markers of this slot whose offset the page lacks: dead since.
        let mut stale = [0u32; LBAS_PER_NODE as usize / 32];
        for e in inline::entries(img, len).filter_map(Result::ok) {
            if e.in_compact && e.page == idx && held[e.off as usize / 32] & (1 << (e.off % 32)) == 0
            {
                stale[e.off as usize / 32] |= 1 << (e.off % 32);
            }
        }
        for off in
            (0..LBAS_PER_NODE as u16).filter(|o| stale[*o as usize / 32] & (1 << (o % 32)) != 0)
        {
            if let Some(e) = inline::find(img, len, off).map_err(malformed)? {
                len = inline::remove(img, len, &e);
            }
        }
        for e in view.entries().filter_map(Result::ok).filter(|e| e.moved) {
            if let Some(old) = inline::find(img, len, e.off).map_err(malformed)? {
                len = inline::remove(img, len, &old);
            }
            if let Some(l) = inline::push(img, len, e.off, Some(idx), e.base_crc, e.new_crc, &[]) {
                len = l;
            }
        }
        self.cache_meta[s].inline_len = len as u16;
        self.write_compact_ptr(s, idx as usize, p);
        let live = self.compact_live(s);
        for (i, &n) in live.iter().enumerate() {
            if n == 0 && i != idx as usize && self.compact_ptr(s, i).is_some() {
                self.write_compact_ptr(s, i, Ppa::NONE);
            }
        }
        Ok(())
    }

    /// Copies the block in slot `p` (mapped to `lba`) into `BBUF` and returns its *base CRC*:
    /// the data CRC of a plain slot, or for a coded block (a record in a packed slot) the CRC of
    /// its record bytes. Either names the base exactly as long as it lives: GC moves a plain
    /// slot with its data CRC and a record without re-coding it, while any rewrite of the LBA
    /// gives another CRC unless it is the very same content (see [`Ftl::drop_delta`]).
    fn load_base(&mut self, p: Ppa, lba: u32, cause: Cause) -> R<Base, N::Error> {
        let dst = self.slot_offset(BBUF, 0);
        if let Some(log) = self.buffered_packed(p) {
            return self.load_coded_base(p, lba, log, cause);
        }
        if let Some(log) = self.buffered_log(p) {
            let slot = p.0 % self.spp;
            let at = self.slot_offset(log, slot);
            self.bufs.copy_within(at..at + SLOT_BYTES, dst);
            let sp = self.spare_offset(log) + slot as usize * SPARE;
            return SpareRecord::parse(&self.bufs[sp..sp + SPARE])
                .map(|r| Base::plain(r.data_crc))
                .map_err(|_| Error::Corrupted(corrupted("buffered slot has no record", p.0)));
        }
        if self.read_mapped_slot(p, lba, SCRATCH, cause)? == SlotKind::Packed {
            return self.load_coded_base(p, lba, SCRATCH, cause);
        }
        let slot = p.0 % self.spp;
        let at = self.slot_offset(SCRATCH, slot);
        self.bufs.copy_within(at..at + SLOT_BYTES, dst);
        let sp = self.spare_offset(SCRATCH) + slot as usize * SPARE;
        SpareRecord::parse(&self.bufs[sp..sp + SPARE])
            .map(|r| Base::plain(r.data_crc))
            .map_err(|_| Error::Corrupted(corrupted("slot has no record", p.0)))
    }

    /// Applies entry `e` of node `s` (group `g`) to the base in `BBUF`, whose base CRC is
    /// `base_crc`, checking the result: the CRC of the block it produced, or `None` (nothing
    /// applied) if the entry is stale, made for another base (roll-forward replayed a newer
    /// block of the LBA into an older node copy).
    fn apply_entry(
        &mut self,
        s: usize,
        g: u32,
        e: &Entry,
        base_crc: u32,
    ) -> R<Option<u32>, N::Error> {
        let b = self.slot_offset(BBUF, 0);
        let bad = |what| Error::Corrupted(corrupted(what, g * LBAS_PER_NODE + e.off as u32));
        let new_crc = if e.in_compact {
            let src = self.compact_src(s, g, e, Cause::Compact)?;
            // BBUF is the last buffer: everything else lies before it.
            let (lo, hi) = self.bufs.split_at_mut(b);
            let view = CompactView::new_checked(&lo[src..src + SLOT_BYTES], g)
                .map_err(|_| bad("compact page fails its checks"))?;
            let ce = view
                .find(e.off)
                .ok_or(bad("compacted delta missing from its compact page"))?;
            if ce.base_crc != base_crc {
                return Ok(None);
            }
            xor::apply(&mut hi[..SLOT_BYTES], ce.delta).map_err(|_| bad("delta malformed"))?;
            ce.new_crc
        } else {
            if e.base_crc != base_crc {
                return Ok(None);
            }
            let img = &self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES];
            xor::apply(
                &mut self.bufs[b..b + SLOT_BYTES],
                &img[e.data..e.data + e.len],
            )
            .map_err(|_| bad("delta malformed"))?;
            e.new_crc
        };
        if crc32(&[&self.bufs[b..b + SLOT_BYTES]]) != new_crc {
            return Err(bad("delta does not produce its block"));
        }
        Ok(Some(new_crc))
    }

    /// Serves a read of `lba` (mapped to base `p` in node `s`) through its delta, if it has
    /// one. Returns whether `buf` was filled.
    pub(super) fn read_through_delta(
        &mut self,
        s: usize,
        lba: u32,
        p: Ppa,
        buf: &mut [u8; SLOT_BYTES],
    ) -> R<bool, N::Error> {
        let off = lba % LBAS_PER_NODE;
        let Some(e) = self.find_entry(s, off)? else {
            return Ok(false);
        };
        let base = self.load_base(p, lba, Cause::Data)?.crc;
        // A stale entry (roll-forward replayed a newer block) applies nothing: the base is it.
        if self
            .apply_entry(s, lba / LBAS_PER_NODE, &e, base)?
            .is_some()
        {
            self.stats.delta_reads += 1;
        }
        let b = self.slot_offset(BBUF, 0);
        buf.copy_from_slice(&self.bufs[b..b + SLOT_BYTES]);
        Ok(true)
    }

    /// Tries to keep a host write as an inline delta. Returns `false` when the block must be
    /// written whole (no base on flash, delta over the threshold, or not worth an eviction).
    pub(super) fn write_delta(&mut self, lba: u32, data: &[u8; SLOT_BYTES]) -> R<bool, N::Error> {
        let g = lba / LBAS_PER_NODE;
        let off = lba % LBAS_PER_NODE;
        if self.nat[g as usize] == NONE && self.node_index[g as usize] == NONE {
            return Ok(false);
        }
        let s = self.node_slot(g)?;
        let clock = self.clock;
        self.cache_meta[s].heat.write(clock);
        let p = self.ptr(s, off);
        // Only a block already on flash is a base (plain or coded): one still buffered is
        // cheaper rewritten.
        if !p.is_some() || self.buffered_log(p).is_some() {
            return Ok(false);
        }
        let misses = self.cache_meta[s].delta_misses;
        if misses > MISS_STREAK {
            // The group's updates have not been small lately: this one goes whole without
            // reading its base (a NAND read) or encoding a delta bound to be refused.
            self.cache_meta[s].delta_misses = next_miss(misses);
            self.stats.deltas_skipped += 1;
            return Ok(false);
        }
        let base = match self.load_base(p, lba, Cause::Delta) {
            Ok(b) => b,
            // A damaged base is no base: the write goes whole and replaces it.
            Err(Error::Corrupted(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let d = self.slot_offset(DBUF, 0);
        let b = self.slot_offset(BBUF, 0);
        let (lo, hi) = self.bufs.split_at_mut(b);
        let base_crc = base.crc;
        // DBUF holds the delta, and past it the other encoding tried.
        let cap = base.max_delta().saturating_sub(HEADER);
        let (out, scratch) = lo[d..d + 2 * MAX_DELTA].split_at_mut(cap);
        let n = match planes::encode_best(data, &hi[..SLOT_BYTES], out, scratch) {
            Ok(n) => n,
            Err(_) => {
                self.stats.deltas_too_large += 1;
                self.cache_meta[s].delta_misses = next_miss(misses);
                return Ok(false);
            }
        };
        self.cache_meta[s].delta_misses = 0;
        let need = n + HEADER;
        let heat = self.cache_meta[s].heat.at(clock);
        let class = self.classifier.classify(heat);
        // The LBA's previous delta stays until the new one replaces it in the same step: making
        // room does I/O, and a node written back in between must not show the bare base (an
        // LBA state no host ever wrote).
        // The area is walked once for `off`'s entry; only I/O (making room, writing the log)
        // can change the area or move the node before the entry is replaced.
        let own = self.find_entry(s, off)?;
        let mut io = false;
        if !self.fits_after_replace(s, own.as_ref(), need) {
            if !self.make_inline_room(g, off, need, class)? {
                self.stats.deltas_refused += 1;
                return Ok(false);
            }
            io = true;
        }
        let new_crc = crc32(&[data]);
        // Room in the delta log first: writing a full log slot is I/O, done while the node
        // still shows the LBA's previous state.
        if !self.dlog.fits(n) {
            self.commit_dlog()?;
            io = true;
        }
        let s_now = self.node_slot(g)?;
        let own = if io || s_now != s {
            self.find_entry(s_now, off)?
        } else {
            own
        };
        let s = s_now;
        if !self.fits_after_replace(s, own.as_ref(), need) || !self.dlog.fits(n) {
            return Ok(false);
        }
        if let Some(old) = own {
            // The old entry stays in the open log: the new one, logged after it, supersedes it
            // on replay. Killing it there would make replay see another inline area than the
            // live one had when the entries logged after it were admitted, and those may fit
            // only in the room this replacement left (a newer entry replayed as "no room" is a
            // stale read).
            self.forget_entry(s, &old);
        }
        let len = self.inline_len(s);
        let d = self.slot_offset(DBUF, 0);
        let img = &mut self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES];
        let Some(new_len) = inline::push(
            img,
            len,
            off as u16,
            None,
            base_crc,
            new_crc,
            &self.bufs[d..d + n],
        ) else {
            // Written whole instead: the old entry must not come back on replay either.
            self.kill_logged(s, off);
            return Ok(false);
        };
        self.cache_meta[s].inline_len = new_len as u16;
        self.mark_delta_dirty(s);
        self.cache_meta[s].in_dlog = true;
        let d = self.slot_offset(DBUF, 0);
        let l = self.slot_offset(LBUF, 0);
        // LBUF is after DBUF.
        let (lo, hi) = self.bufs.split_at_mut(l);
        if self.dlog.count() == 0 {
            self.dlog = LogBuilder::start(&mut hi[..SLOT_BYTES]);
        }
        let logged = self.dlog.add(
            &mut hi[..SLOT_BYTES],
            &LogEntry {
                lba,
                base_crc,
                new_crc,
                delta: &lo[d..d + n],
            },
        );
        debug_assert!(logged, "room was checked");
        self.stats.deltas_inlined += 1;
        self.stats.delta_inline_bytes += need as u64;
        Ok(true)
    }

    /// Whether a `need`-byte entry for `off` fits once `off`'s current entry is replaced:
    /// `Some(())` if so.
    fn room_after_replace(&self, s: usize, off: u32, need: usize) -> R<Option<()>, N::Error> {
        let own = self.find_entry(s, off)?;
        Ok(self.fits_after_replace(s, own.as_ref(), need).then_some(()))
    }

    /// Whether a `need`-byte entry fits in node `s` in place of `own` (the offset's current
    /// entry, found by the caller).
    fn fits_after_replace(&self, s: usize, own: Option<&Entry>, need: usize) -> bool {
        self.inline_len(s) - own.map_or(0, Entry::size) + need <= AREA
    }

    /// Frees room for a `need`-byte entry for `off` in group `g`'s inline area, if the benefit
    /// model (see [`crate::delta::inline`]) says the new delta is worth it. A compact-class
    /// group first moves its inline deltas to a compact page (markers stay); then, and in
    /// other groups, the oldest entries are rebuilt (never `off`'s own, which the new one
    /// replaces: rebuilding it would move the base the new delta was computed against).
    /// Returns whether there is room.
    fn make_inline_room(
        &mut self,
        g: u32,
        off: u32,
        need: usize,
        class: Class,
    ) -> R<bool, N::Error> {
        if self.delta_store_full {
            // (Module docs: the delta store on a full device.)
            return Ok(false);
        }
        let to_compact = !class.read_hot();
        let s = self.node_slot(g)?;
        let len = self.inline_len(s);
        // One walk finds `off`'s own entry and the batch a compaction would move.
        let (mut own, mut batch) = (None, 0);
        for e in inline::entries(self.img(s), len) {
            let Ok(e) = e else {
                return Err(Error::Corrupted(corrupted(
                    "inline delta area malformed",
                    g,
                )));
            };
            if e.off as u32 == off {
                own = own.or(Some(e.size()));
            } else if !e.in_compact {
                batch += e.len;
            }
        }
        let short = (len - own.unwrap_or(0) + need).saturating_sub(AREA);
        let (mut freed, mut cost) = (0usize, 0u32);
        let compact = to_compact && batch >= inline::MIN_COMPACT_BATCH;
        if compact {
            freed = batch;
            cost = inline::compact_cost(need, batch);
        }
        let mut rebuilds = 0;
        for e in inline::entries(self.img(s), len).filter_map(Result::ok) {
            if freed >= short {
                break;
            }
            if e.off as u32 == off || (compact && !e.in_compact) {
                continue;
            }
            cost = cost.saturating_add(inline::REBUILD_COST);
            freed += e.size();
            rebuilds += 1;
        }
        if freed < short || inline::admit_saving(class.write_hot()) <= cost {
            return Ok(false);
        }
        // Exactly what was costed: a compaction that cannot take its batch is not replaced by
        // rebuilds the model did not pay for.
        if compact && !self.compact_out(g, inline::MIN_COMPACT_BATCH)? {
            return Ok(false);
        }
        for _ in 0..rebuilds.min(MAX_EVICTIONS) {
            let s = self.node_slot(g)?;
            if self.room_after_replace(s, off, need)?.is_some() {
                return Ok(true);
            }
            let victim = inline::entries(self.img(s), self.inline_len(s))
                .filter_map(Result::ok)
                .find(|e| e.off as u32 != off);
            let Some(e) = victim else {
                return Ok(false);
            };
            self.stats.deltas_replaced += 1;
            self.rebuild(g, e.off as u32, false)?;
        }
        let s = self.node_slot(g)?;
        Ok(self.room_after_replace(s, off, need)?.is_some())
    }

    /// Whether `in_use` valid slots in `data_blocks` blocks (free, open, full or prefree)
    /// exceed every LBA plus every node page plus [`DELTA_STORE_SHARE`] of the
    /// over-provisioning: the budget of deltas beyond the inline areas (module docs).
    pub(super) fn over_delta_budget(&self, in_use: u64, data_blocks: u64) -> bool {
        let spb = u64::from(self.spp * self.ppb);
        let needed =
            u64::from(min_blocks(spb as u32, self.cfg.logical_blocks) - CP_AREA_BLOCKS) * spb;
        let spare = (data_blocks * spb).saturating_sub(needed);
        let held = u64::from(self.cfg.logical_blocks) + u64::from(self.nodes);
        in_use > held + spare / DELTA_STORE_SHARE
    }

    /// Writes the full block of offset `off` of group `g` (base + delta) and drops its delta:
    /// at eviction (`restore` false) or from idle (`restore` true).
    fn rebuild(&mut self, g: u32, off: u32, restore: bool) -> R<(), N::Error> {
        let s = self.room_and_node(HOT, g)?;
        let Some(e) = self.find_entry(s, off)? else {
            return Ok(());
        };
        let lba = g * LBAS_PER_NODE + off;
        let p = self.ptr(s, off);
        self.stats.deltas_evicted += u64::from(!restore);
        if !p.is_some() {
            self.remove_entry(s, &e);
            return Ok(());
        }
        let base = self.load_base(p, lba, Cause::Delta)?.crc;
        let Some(new_crc) = self.apply_entry(s, g, &e, base)? else {
            // Stale since roll-forward: the mapped block is already the newer one. No slot
            // records this removal, so the node must be written.
            self.remove_entry(s, &e);
            self.mark_unlogged(s);
            return Ok(());
        };
        // Stored coded if it is weights and compress is on, like a host write of it would be
        // (its bytes count as data then: a packed slot carries several blocks).
        if !(self.compress_on && self.rebuild_coded(lba)?) {
            // Neither read above programs anything: the room made in HOT is still there.
            let src = self.slot_offset(BBUF, 0);
            let dst = self.slot_offset(HOT, self.logs[HOT].fill);
            self.bufs.copy_within(src..src + SLOT_BYTES, dst);
            let new = self.commit_slot(HOT, SlotKind::Data, lba, new_crc, Cause::Delta);
            self.set_ptr(s, off, new);
            // A coded base is one reference of its packed slot.
            self.unref(p, lba);
            self.remove_entry(s, &e);
            if e.in_compact {
                self.release_dead_compact(s, e.page as usize);
            }
        }
        if restore {
            self.stats.pages_restored += 1;
        } else {
            self.stats.pages_rebuilt += 1;
        }
        Ok(())
    }

    /// Live markers per compact page of cached node `s`.
    fn compact_live(&self, s: usize) -> [u16; COMPACT_PAGES] {
        let mut live = [0u16; COMPACT_PAGES];
        for e in inline::entries(self.img(s), self.inline_len(s)).filter_map(Result::ok) {
            if e.in_compact {
                live[e.page as usize] += 1;
            }
        }
        live
    }

    /// Moves group `g`'s inline deltas (oldest first, as many as fit) into a compact page; each
    /// leaves a marker inline naming the page. The page goes into a free entry of the group's
    /// table of [`COMPACT_PAGES`] (pages without a live delta are dropped first); with none
    /// free, the page with the fewest live deltas is rewritten with those plus the new ones.
    /// Returns `false`, writing nothing, if fewer than `min_bytes` of deltas could be moved.
    fn compact_out(&mut self, g: u32, min_bytes: usize) -> R<bool, N::Error> {
        let s = self.room_and_node(HOT, g)?;
        let live = self.compact_live(s);
        // Pages no marker names any more are released once the new page is in (the first of
        // them, or a free table slot, takes it): roll-forward of the page does the same.
        let slot = if self.cache_meta[s].unlogged {
            // The node has changes roll-forward cannot redo (a trim, say) that may have dropped
            // markers. Replaying a page that takes over an occupied slot drops the markers of
            // that slot it lacks, so it would redo half of such a change (the marker gone, the
            // block still mapped: a block that reads as its base). Until the next barrier
            // writes the node, only a free slot is taken.
            match (0..COMPACT_PAGES).find(|&i| !self.compact_ptr(s, i).is_some()) {
                Some(i) => i,
                None => return Ok(false),
            }
        } else {
            (0..COMPACT_PAGES)
                .find(|&i| live[i] == 0 || !self.compact_ptr(s, i).is_some())
                .unwrap_or_else(|| (0..COMPACT_PAGES).min_by_key(|&i| live[i]).unwrap_or(0))
        };
        let old = self.compact_ptr(s, slot);
        let b = self.slot_offset(BBUF, 0);
        if old.is_some() && live[slot] > 0 {
            let src = match self.buffered_log(old) {
                Some(log) => self.slot_offset(log, old.0 % self.spp),
                None => {
                    self.read_slot_checked(old, SlotKind::Compact, g, SCRATCH, Cause::Compact)?;
                    self.slot_offset(SCRATCH, old.0 % self.spp)
                }
            };
            self.bufs.copy_within(src..src + SLOT_BYTES, b);
        }
        let dst = self.slot_offset(HOT, self.logs[HOT].fill);
        let len = self.inline_len(s);
        let img = &self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES];
        let (lo, hi) = self.bufs.split_at_mut(b);
        let out = &mut lo[dst..dst + SLOT_BYTES];
        let mut builder = Builder::new(out, g, slot as u8);
        if old.is_some() && live[slot] > 0 {
            let view = CompactView::new_checked(&hi[..SLOT_BYTES], g)
                .map_err(|_| Error::Corrupted(corrupted("compact page fails its checks", old.0)))?;
            // Offsets whose marker names this page, found in one pass over the area.
            let mut named = [0u32; LBAS_PER_NODE as usize / 32];
            for e in inline::entries(img, len).filter_map(Result::ok) {
                if e.in_compact && e.page as usize == slot {
                    named[e.off as usize / 32] |= 1 << (e.off % 32);
                }
            }
            for ce in view.entries().filter_map(Result::ok) {
                // A page holds at most one entry per offset (a rewrite keeps only live ones), and
                // reads check the CRCs a marker names against the entry they find.
                let live = ce.off < LBAS_PER_NODE as u16
                    && named[ce.off as usize / 32] & (1 << (ce.off % 32)) != 0;
                if live && !builder.add(out, ce.off, false, ce.base_crc, ce.new_crc, ce.delta) {
                    return Ok(false);
                }
            }
        }
        let mut moved = [0u32; LBAS_PER_NODE as usize / 32];
        let mut moved_bytes = 0;
        for e in inline::entries(img, len).filter_map(Result::ok) {
            if e.in_compact {
                continue;
            }
            if !builder.add(
                out,
                e.off,
                true,
                e.base_crc,
                e.new_crc,
                &img[e.data..e.data + e.len],
            ) {
                break;
            }
            moved[e.off as usize / 32] |= 1 << (e.off % 32);
            moved_bytes += e.len;
        }
        if moved_bytes == 0 || moved_bytes < min_bytes {
            return Ok(false);
        }
        builder.finish(out);
        let crc = crc32(&[&self.bufs[dst..dst + SLOT_BYTES]]);
        let new = self.commit_slot(HOT, SlotKind::Compact, g, crc, Cause::Compact);
        // Roll-forward redoes all of this from the page (`replay_compact`): the node need not
        // be written at the next flush.
        for (i, &n) in live.iter().enumerate() {
            let p = self.compact_ptr(s, i);
            let to = if i == slot {
                new
            } else if n == 0 && p.is_some() {
                Ppa::NONE
            } else {
                continue;
            };
            self.write_compact_ptr(s, i, to);
            if p.is_some() {
                self.invalidate(p);
            }
        }
        for off in 0..LBAS_PER_NODE {
            if moved[off as usize / 32] & (1 << (off % 32)) != 0 {
                self.kill_logged(s, off);
            }
        }
        let len = self.inline_len(s);
        let img = &mut self.cache_data[s * SLOT_BYTES..(s + 1) * SLOT_BYTES];
        let (l, turned) = inline::to_markers(img, len, &moved, slot as u8).ok_or(
            Error::Corrupted(corrupted("inline delta area malformed", g)),
        )?;
        self.cache_meta[s].inline_len = l as u16;
        self.mark_delta_dirty(s);
        self.stats.deltas_compacted += u64::from(turned);
        self.stats.deltas_evicted += u64::from(turned);
        self.stats.compact_pages += 1;
        Ok(true)
    }

    /// One idle restore: the oldest compacted delta of a cached read-hot, write-cold group
    /// whose reads outnumber its writes twelvefold is rebuilt into its full block, so its reads
    /// stop paying for the compact page read.
    /// Write-hot groups keep theirs: their next update would be a delta again. Inline deltas
    /// stay: reading one costs the base read the plain block would cost anyway, plus patching
    /// in RAM, so restoring it would spend a program to save no NAND time.
    pub(super) fn restore_step(&mut self) -> R<bool, N::Error> {
        if !self.delta_on || self.in_gc {
            return Ok(false);
        }
        for s in 0..self.cache_meta.len() {
            let m = self.cache_meta[s];
            if m.node_plus_one == 0 || m.inline_len == 0 {
                continue;
            }
            let heat = m.heat.at(self.clock);
            // A restore programs a page to save one read per later read of the block: worth it
            // only where reads outnumber writes by the program/read cost ratio (12 on tlc).
            let worth = u32::from(heat.reads)
                >= u32::from(heat.writes.max(1)) * (inline::PROGRAM_COST / inline::READ_EQUIV);
            if !worth || self.classifier.class_of(heat) != Class::ReadHotWriteCold {
                continue;
            }
            let Some(e) = inline::first_marker(self.img(s), m.inline_len as usize) else {
                continue;
            };
            self.rebuild(m.node_plus_one - 1, e.off as u32, true)?;
            return Ok(true);
        }
        Ok(false)
    }
}
