//! Coded blocks: 4 KiB blocks of float weights stored ZipNN-coded and packed, so a page holds
//! more blocks than it has slots (issue 5, "in the device").
//!
//! # Policy
//!
//! - A host write whose block [`weights::detect`] takes for BF16, FP16 or FP32 weights is coded
//!   ([`weights::encode_block`]); the record is kept only if it and its directory entry take at
//!   most [`CODED_LIMIT`] bytes (15/16 of a block), else the block goes the plain way (delta or
//!   whole slot). Other data costs the detector's sampling (mostly one pass of 192 byte reads)
//!   and nothing else.
//! - Records are appended to a *packed slot* open in the hot log's buffer (GC moves them into
//!   one in the cold log's). A record that does not fit the slot's free space starts there as
//!   the slot's *spill* and ends at the start of the next slot of the same erase block, even
//!   across a page boundary, so a page wastes nothing at its slot borders: the BF16 fixture's
//!   records (about 2,770 bytes) pack at almost six per 16 KiB page. The block's last slot
//!   never spills. Any other write into the same log (a plain block, a delta log, a compact
//!   page) and any program of the buffer (a flush) close the open slot first.
//! - Layout: `format::packed` and docs/format/ftl.md. The node pointer of a coded LBA names the
//!   slot holding its directory entry; the reader finds the LBA there, prepends the previous
//!   slot's spill if the entry says so, and decodes. The record's own CRC covers its LBA, so a
//!   record read for another block fails its check.
//!
//! # Liveness and garbage collection
//!
//! A packed slot serves several LBAs: `pack_refs` counts the mapped LBAs whose entry it holds,
//! and its valid bit goes only when the last one is remapped or trimmed ([`Ftl::unref`]). A
//! slot holding only a spill needs no valid bit of its own: the slot that ends the record is in
//! the same erase block and keeps it from erasure. GC moves each still-mapped entry of a valid
//! packed slot (record bytes copied, never re-coded) into the cold log's packed slot.
//!
//! # Durability
//!
//! A packed slot gets its sequence number when it is closed, after its entries were added.
//! Roll-forward maps every entry of a packed slot to it, in sequence order with data slots, so
//! an entry must never outlive its LBA's next mapping while the slot is open: remapping or
//! trimming an LBA whose entry sits in an open slot marks that entry dropped (as the delta log
//! does). Rule 1 holds because a node write-back first programs a log whose open packed slot
//! holds an entry of its group. A record that spills into a page not yet programmed is not
//! flushed, and a torn next page leaves no entry mapping to it.

use super::delta::Base;
use super::*;
use crate::codec::weights;
use crate::codec::zipnn::Dtype;
use crate::format::{packed as pk, PackedBuilder, PackedView};

/// Largest record plus directory entry stored coded: below this, six BF16 records (about
/// 2,770 bytes) or four to five FP16/FP32 records (about 3,500) fit where four plain blocks do.
pub(super) const CODED_LIMIT: usize = SLOT_BYTES - SLOT_BYTES / 16;
/// `pack_refs` reference count mask (the count saturates there; the top bit is unused).
const REFS: u8 = 0x7F;
const _: () = assert!(pk::MAX_ENTRIES < REFS as usize);

/// Whether a record of `len` bytes is worth storing coded (and fits a packed slot).
const fn keeps_coded(len: usize) -> bool {
    len + pk::ENTRY <= CODED_LIMIT && len <= pk::MAX_RECORD
}

/// Smallest first part worth spilling into a slot's free space (a smaller gap is left empty).
const MIN_SPILL: usize = 64;

/// The packed slot being filled in a log's buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct OpenPack {
    /// Its index in the log's page buffer (the log's `fill` while it is open).
    slot: u32,
    b: PackedBuilder,
}

/// What [`Ftl::check`] found wrong with a coded LBA.
pub(super) enum Problem {
    /// The slot holds no record of the LBA.
    WrongOwner,
    /// The slot, its spill or the record fails a check.
    BadData,
}

/// [`Ftl::check`]'s view of one LBA mapped to a packed slot.
pub(super) struct PackCheck {
    /// This LBA is the one that counts the slot as referenced (the first mapped entry).
    pub counts_slot: bool,
    pub problem: Option<Problem>,
}

/// Mount: one more LBA maps to slot `p` (no counts without codec memory).
pub(super) fn count_ref(refs: &mut [u8], p: Ppa) {
    if let Some(r) = refs.get_mut(p.0 as usize) {
        *r = (*r + 1).min(0x7F);
    }
}

/// Why a coded block cannot be served by an FTL lent no codec memory.
const NO_CODEC: &str = "coded block on flash, but no codec memory was lent";

impl<N: Nand> Ftl<'_, N> {
    fn bad<T>(what: &'static str, at: u32) -> R<T, N::Error> {
        Err(Error::Corrupted(corrupted(what, at)))
    }

    /// Whether codec memory was lent: without it there are no reference counts and no
    /// coded-block buffers, and a coded block found on flash is an error.
    pub(super) fn coded_memory(&self) -> bool {
        !self.pack_refs.is_empty()
    }

    /// References counted for slot `p` (0 without codec memory).
    pub(super) fn pack_ref(&self, p: Ppa) -> u8 {
        self.pack_refs.get(p.0 as usize).copied().unwrap_or(0)
    }

    /// The LBAs whose entries packed slot `p`, its page in buffer `page`, holds (copied out, so
    /// the buffer can be reused while they are handled), or why the slot fails its checks.
    fn packed_lbas(
        &self,
        p: Ppa,
        page: usize,
    ) -> Result<([u32; pk::MAX_ENTRIES], usize), &'static str> {
        let at = self.slot_offset(page, p.0 % self.spp);
        let view = PackedView::new_checked(&self.bufs[at..at + SLOT_BYTES])?;
        let mut lbas = [u32::MAX; pk::MAX_ENTRIES];
        let mut n = 0;
        for e in view.entries() {
            lbas[n] = e.lba;
            n += 1;
        }
        Ok((lbas, n))
    }

    /// Slot address of `log`'s open packed slot.
    fn pack_ppa(&self, log: usize) -> Option<Ppa> {
        let op = self.pack.get(log).copied().flatten()?;
        let l = self.logs[log];
        (l.block != NONE).then(|| Ppa((l.block * self.ppb + l.page) * self.spp + op.slot))
    }

    /// The log whose open packed slot `p` is.
    fn open_pack_log(&self, p: Ppa) -> Option<usize> {
        (0..2).find(|&log| self.pack_ppa(log) == Some(p))
    }

    /// The log whose buffer holds packed slot `p` (the open one, brought up to date, or a sealed
    /// one not programmed yet), if `p` is a packed slot still in RAM.
    pub(super) fn buffered_packed(&mut self, p: Ppa) -> Option<usize> {
        if let Some(log) = self.open_pack_log(p) {
            if let Some(op) = self.pack[log] {
                let at = self.slot_offset(log, op.slot);
                op.b.finish(&mut self.bufs[at..at + SLOT_BYTES]);
            }
            return Some(log);
        }
        let log = self.buffered_log(p)?;
        let sp = self.spare_offset(log) + (p.0 % self.spp) as usize * SPARE;
        matches!(SpareRecord::parse(&self.bufs[sp..sp + SPARE]), Ok(r) if r.kind == SlotKind::Packed)
            .then_some(log)
    }

    /// Whether `log`'s open packed slot holds an entry of group `g` (rule 1).
    pub(super) fn pack_holds_group(&self, log: usize, g: u32) -> bool {
        let Some(op) = self.pack.get(log).copied().flatten() else {
            return false;
        };
        let at = self.slot_offset(log, op.slot);
        op.b.holds_range(
            &self.bufs[at..at + SLOT_BYTES],
            g * LBAS_PER_NODE..(g + 1) * LBAS_PER_NODE,
        )
    }

    /// Closes `log`'s open packed slot: writes its header and commits it (an empty one is
    /// dropped). Programs nothing.
    pub(super) fn seal_pack(&mut self, log: usize) {
        if log >= 2 {
            return;
        }
        let Some(op) = self.pack[log].take() else {
            return;
        };
        if op.b.count() == 0 {
            return;
        }
        debug_assert_eq!(self.logs[log].fill, op.slot);
        let at = self.slot_offset(log, op.slot);
        let crc = op.b.finish(&mut self.bufs[at..at + SLOT_BYTES]);
        let cause = if log == HOT { Cause::Data } else { Cause::Gc };
        let p = self.commit_slot(log, SlotKind::Packed, 0, crc, cause);
        if self.pack_refs[p.0 as usize] & REFS == 0 {
            // Every entry was dropped while it was open.
            self.invalidate(p);
        }
    }

    fn pack_start(&mut self, log: usize) {
        let slot = self.logs[log].fill;
        let at = self.slot_offset(log, slot);
        let b = PackedBuilder::start(&mut self.bufs[at..at + SLOT_BYTES]);
        self.pack[log] = Some(OpenPack { slot, b });
        if let Some(p) = self.pack_ppa(log) {
            self.pack_refs[p.0 as usize] = 0;
        }
    }

    /// Makes sure `log` has an open packed slot.
    fn pack_open(&mut self, log: usize) -> R<(), N::Error> {
        for _ in 0..8 {
            if self.pack[log].is_some() {
                return Ok(());
            }
            self.ensure_room(log)?;
            // Making room may have re-appended records after a program failure, opening one.
            if self.pack[log].is_none() && self.has_room(log) {
                self.pack_start(log);
                return Ok(());
            }
        }
        Err(Error::NoSpace)
    }

    /// Appends the record of `lba` (`len` bytes at the start of buffer `src`) to `log`'s packed
    /// slots; returns the slot holding its directory entry, which counts it as a reference.
    fn pack_append(
        &mut self,
        log: usize,
        lba: u32,
        dtype: u8,
        src: usize,
        len: usize,
    ) -> R<Ppa, N::Error> {
        debug_assert!(src > LBUF && len <= pk::MAX_RECORD);
        let z = self.slot_offset(src, 0);
        for _ in 0..8 {
            self.pack_open(log)?;
            let (Some(mut op), Some(p)) = (self.pack[log], self.pack_ppa(log)) else {
                continue;
            };
            let at = self.slot_offset(log, op.slot);
            // Log buffers come before the record buffers.
            let (lo, hi) = self.bufs.split_at_mut(z);
            let out = &mut lo[at..at + SLOT_BYTES];
            if len <= op.b.room() {
                op.b.add(out, lba, dtype, 0, &hi[..len]);
                self.pack[log] = Some(op);
                self.add_ref(p);
                return Ok(p);
            }
            let pre = op.b.spill_room();
            let l = self.logs[log];
            let last_in_block = l.page + 1 == self.ppb && op.slot + 1 == self.spp;
            if pre < MIN_SPILL || pre >= len || last_in_block {
                self.seal_pack(log);
                continue;
            }
            op.b.set_spill(out, &hi[..pre]);
            self.pack[log] = Some(op);
            self.seal_pack(log);
            if self.logs[log].fill == self.spp {
                self.program_log(log)?;
            }
            let next = self.logs[log];
            let next_ppa = (next.block * self.ppb + next.page) * self.spp + next.fill;
            if next.block != l.block || next_ppa != p.0 + 1 || !self.has_room(log) {
                // A program failure moved the log: the spill is lost, place the record anew.
                continue;
            }
            self.pack_start(log);
            let (Some(mut op), Some(q)) = (self.pack[log], self.pack_ppa(log)) else {
                continue;
            };
            let at = self.slot_offset(log, op.slot);
            let (lo, hi) = self.bufs.split_at_mut(z);
            if op
                .b
                .add(&mut lo[at..at + SLOT_BYTES], lba, dtype, pre, &hi[pre..len])
                .is_none()
            {
                self.seal_pack(log);
                continue;
            }
            self.pack[log] = Some(op);
            self.add_ref(q);
            return Ok(q);
        }
        Err(Error::NoSpace)
    }

    fn add_ref(&mut self, p: Ppa) {
        let r = &mut self.pack_refs[p.0 as usize];
        *r = ((*r & REFS) + 1).min(REFS);
    }

    /// `lba` no longer maps to slot `p`: a packed slot loses one reference (its entry is dropped
    /// if the slot is still open) and its valid bit with the last; any other slot is invalid.
    pub(super) fn unref(&mut self, p: Ppa, lba: u32) {
        if self.replay_seq.is_some() || p.0 >= self.total_slots {
            return;
        }
        if let Some(log) = self.open_pack_log(p) {
            if let Some(op) = self.pack[log] {
                let at = self.slot_offset(log, op.slot);
                op.b.kill(&mut self.bufs[at..at + SLOT_BYTES], lba);
            }
        }
        match self.pack_refs.get_mut(p.0 as usize) {
            Some(r) if *r & REFS > 1 => {
                *r -= 1;
                return;
            }
            Some(r) => *r = 0,
            // No codec memory: every slot is plain.
            None => {}
        }
        self.invalidate(p);
    }

    /// Tries to store a host write coded. Returns `false` when the block is not float weights
    /// or does not code small enough; then it is written the plain way.
    pub(super) fn write_coded(&mut self, lba: u32, data: &[u8; SLOT_BYTES]) -> R<bool, N::Error> {
        let Some(dtype) = weights::detect(data) else {
            return Ok(false);
        };
        let z = self.slot_offset(ZBUF, 0);
        let Some(mem) = self.weights.as_deref_mut() else {
            return Ok(false);
        };
        let out = &mut self.bufs[z..z + weights::MAX_RECORD];
        let len = match weights::encode_block(dtype, lba, data, out, mem) {
            Ok(n) if keeps_coded(n) => n,
            _ => {
                self.stats.blocks_not_coded += 1;
                return Ok(false);
            }
        };
        let s = self.store_coded(lba, dtype, len)?;
        let clock = self.clock;
        self.cache_meta[s].heat.write(clock);
        Ok(true)
    }

    /// Appends the record of `lba` (`len` bytes of `dtype` in `ZBUF`) and maps `lba` to it,
    /// dropping its delta; returns the node's cache slot.
    fn store_coded(&mut self, lba: u32, dtype: Dtype, len: usize) -> R<usize, N::Error> {
        let z = self.slot_offset(ZBUF, 0);
        // The coded block's base CRC (`Ftl::load_base`), for the drop of its delta below.
        let record_crc = crc32(&[&self.bufs[z..z + len]]);
        // Appending may program the log and run GC (which may move the block mapped now): the
        // mapping is looked up afterwards.
        let new = self.pack_append(HOT, lba, dtype as u8, ZBUF, len)?;
        let (g, off) = (lba / LBAS_PER_NODE, lba % LBAS_PER_NODE);
        let s = self.node_slot(g)?;
        let old = self.ptr(s, off);
        self.set_ptr(s, off, new);
        self.cache_meta[s].dirty = true;
        if old.is_some() {
            self.unref(old, lba);
        }
        // The block is whole again: its delta (inline or marker) is dead.
        self.drop_delta(s, off, Some(record_crc))?;
        self.stats.blocks_coded += 1;
        self.stats.coded_bytes_saved += (SLOT_BYTES - len - pk::ENTRY) as u64;
        Ok(s)
    }

    /// Stores the block a rebuild assembled in `BBUF` (`lba`'s base with its delta applied)
    /// coded, as [`Ftl::write_coded`] does for a host write, which drops the delta it folds in.
    /// Returns `false`, having written nothing, when it is not weights or does not code small
    /// enough.
    pub(super) fn rebuild_coded(&mut self, lba: u32) -> R<bool, N::Error> {
        let (b, z) = (self.slot_offset(BBUF, 0), self.slot_offset(ZBUF, 0));
        // BBUF comes before ZBUF.
        let (lo, hi) = self.bufs.split_at_mut(z);
        let Ok(block) = <&[u8; SLOT_BYTES]>::try_from(&lo[b..b + SLOT_BYTES]) else {
            return Ok(false);
        };
        let Some(dtype) = weights::detect(block) else {
            return Ok(false);
        };
        let Some(mem) = self.weights.as_deref_mut() else {
            return Ok(false);
        };
        let len =
            match weights::encode_block(dtype, lba, block, &mut hi[..weights::MAX_RECORD], mem) {
                Ok(n) if keeps_coded(n) => n,
                _ => return Ok(false),
            };
        self.store_coded(lba, dtype, len)?;
        Ok(true)
    }

    /// Reads slot `p` (mapped to `lba`) from flash into `buf`: a data slot of `lba` or a packed
    /// slot. Retries like `read_slot_checked`; returns the kind. A slot that may be packed is
    /// read with its whole page ([`Ftl::gather`] may need the slot before it); one no packed
    /// entry maps to (no references counted) only by itself.
    pub(super) fn read_mapped_slot(
        &mut self,
        p: Ppa,
        lba: u32,
        buf: usize,
        cause: Cause,
    ) -> R<SlotKind, N::Error> {
        if p.0 >= self.total_slots {
            return Self::bad("slot address out of range", p.0);
        }
        let mut why = "";
        let (page, slot) = (p.0 / self.spp, p.0 % self.spp);
        let mut whole = self.pack_ref(p) != 0;
        for attempt in 0..READ_ATTEMPTS {
            if whole {
                self.nand_read(page, buf, cause)?;
            } else {
                self.nand_read_slot(page, slot, buf, cause)?;
            }
            match self.slot_record(buf, slot) {
                Ok(r) if r.kind == SlotKind::Data && r.owner == lba => {}
                Ok(r) if r.kind == SlotKind::Packed && !self.coded_memory() => {
                    return Self::bad(NO_CODEC, p.0);
                }
                // Packed after all (references are counted for every mapped packed slot, so
                // only damage gets here): read again with the whole page.
                Ok(r) if r.kind == SlotKind::Packed && !whole => {
                    whole = true;
                    why = "packed slot read without its page";
                    continue;
                }
                Ok(r) if r.kind == SlotKind::Packed && r.owner == 0 => {}
                Ok(r) if r.kind == SlotKind::Data => {
                    why = "slot belongs to another block";
                    continue;
                }
                Ok(_) => {
                    why = "slot holds another kind of record";
                    continue;
                }
                Err(w) => {
                    why = w;
                    continue;
                }
            }
            if attempt > 0 {
                self.stats.read_retries += 1;
            }
            let sp = self.spare_offset(buf) + slot as usize * SPARE;
            let kind =
                SpareRecord::parse(&self.bufs[sp..sp + SPARE]).map_or(SlotKind::Data, |r| r.kind);
            return Ok(kind);
        }
        Self::bad(why, p.0)
    }

    /// Copies the record of `lba` from packed slot `p`, whose page is in buffer `page` (slot
    /// `p % spp` of it), to the start of buffer `dst`: the previous slot's spill first if the
    /// entry continues it. Returns the dtype code and length, or `None` if the slot holds no
    /// entry of `lba`.
    fn gather(
        &mut self,
        p: Ppa,
        lba: u32,
        page: usize,
        dst: usize,
        cause: Cause,
    ) -> R<Option<(u8, usize)>, N::Error> {
        if !self.coded_memory() {
            return Self::bad(NO_CODEC, p.0);
        }
        let slot = p.0 % self.spp;
        let at = self.slot_offset(page, slot);
        let (e, part) = {
            let view = match PackedView::new_checked(&self.bufs[at..at + SLOT_BYTES]) {
                Ok(v) => v,
                Err(w) => return Self::bad(w, p.0),
            };
            let Some(e) = view.find(lba) else {
                return Ok(None);
            };
            (e, view.part_range(&e))
        };
        if e.pre + e.len > pk::MAX_RECORD {
            return Self::bad("packed record longer than a record can be", p.0);
        }
        let d = self.slot_offset(dst, 0);
        if e.pre > 0 {
            if p.0.is_multiple_of(self.spp * self.ppb) {
                return Self::bad("packed record continues from another block", p.0);
            }
            let q = Ppa(p.0 - 1);
            let qbuf = if slot > 0 {
                match self.slot_record(page, slot - 1) {
                    Ok(r) if r.kind == SlotKind::Packed => page,
                    _ => return Self::bad("first part of a packed record damaged", q.0),
                }
            } else {
                self.read_slot_checked(q, SlotKind::Packed, 0, PBUF, cause)?;
                PBUF
            };
            let qat = self.slot_offset(qbuf, q.0 % self.spp);
            let spill = match PackedView::new_checked(&self.bufs[qat..qat + SLOT_BYTES]) {
                Ok(v) => v.spill_range(),
                Err(w) => return Self::bad(w, q.0),
            };
            if spill.len() != e.pre {
                return Self::bad("first part of a packed record missing", q.0);
            }
            self.bufs.copy_within(qat + spill.start..qat + spill.end, d);
        }
        self.bufs
            .copy_within(at + part.start..at + part.end, d + e.pre);
        Ok(Some((e.dtype, e.pre + e.len)))
    }

    /// Decodes the record of `lba` from packed slot `p` (page in buffer `page`) into `out`.
    fn decode_packed(
        &mut self,
        p: Ppa,
        lba: u32,
        page: usize,
        out: &mut [u8; SLOT_BYTES],
    ) -> R<(), N::Error> {
        let Some((dtype, len)) = self.gather(p, lba, page, ZBUF, Cause::Data)? else {
            return Self::bad("packed slot holds no record of the block", p.0);
        };
        let z = self.slot_offset(ZBUF, 0);
        let Some(dtype) = Dtype::from_code(dtype) else {
            return Self::bad("coded block of an unknown dtype", p.0);
        };
        let Some(mem) = self.weights.as_deref_mut() else {
            return Self::bad("coded block, but no codec memory was lent", p.0);
        };
        weights::decode_block(dtype, lba, &self.bufs[z..z + len], out, mem)
            .map_err(|_| Error::Corrupted(corrupted("coded block fails its checks", p.0)))?;
        self.stats.coded_reads += 1;
        Ok(())
    }

    /// Decodes the record of `lba` from packed slot `p` (page in buffer `page`) into `BBUF` as
    /// a delta base; returns the CRC of the record's bytes, the base CRC of a coded block (see
    /// `Ftl::load_base`).
    pub(super) fn load_coded_base(
        &mut self,
        p: Ppa,
        lba: u32,
        page: usize,
        cause: Cause,
    ) -> R<Base, N::Error> {
        let Some((dtype, len)) = self.gather(p, lba, page, ZBUF, cause)? else {
            return Self::bad("packed slot holds no record of the block", p.0);
        };
        let Some(dtype) = Dtype::from_code(dtype) else {
            return Self::bad("coded block of an unknown dtype", p.0);
        };
        let (b, z) = (self.slot_offset(BBUF, 0), self.slot_offset(ZBUF, 0));
        let Some(mem) = self.weights.as_deref_mut() else {
            return Self::bad("coded block, but no codec memory was lent", p.0);
        };
        // BBUF comes before ZBUF.
        let (lo, hi) = self.bufs.split_at_mut(z);
        let record = &hi[..len];
        let out: &mut [u8; SLOT_BYTES] = (&mut lo[b..b + SLOT_BYTES])
            .try_into()
            .map_err(|_| Error::Corrupted(corrupted("base buffer", p.0)))?;
        weights::decode_block(dtype, lba, record, out, mem)
            .map_err(|_| Error::Corrupted(corrupted("coded block fails its checks", p.0)))?;
        Ok(Base {
            crc: crc32(&[record]),
            whole: len + pk::ENTRY,
        })
    }

    /// Serves a read of `lba` mapped to `p` if `p` is a packed slot still in a write buffer.
    /// Returns whether `buf` was filled.
    pub(super) fn read_packed_buffered(
        &mut self,
        p: Ppa,
        lba: u32,
        buf: &mut [u8; SLOT_BYTES],
    ) -> R<bool, N::Error> {
        let Some(log) = self.buffered_packed(p) else {
            return Ok(false);
        };
        self.decode_packed(p, lba, log, buf)?;
        Ok(true)
    }

    /// Serves a read of `lba` from slot `p` read into `SCRATCH` by [`Ftl::read_mapped_slot`].
    pub(super) fn read_packed_scratch(
        &mut self,
        p: Ppa,
        lba: u32,
        buf: &mut [u8; SLOT_BYTES],
    ) -> R<(), N::Error> {
        self.decode_packed(p, lba, SCRATCH, buf)
    }

    /// Moves every still-mapped entry of packed slot `p` (its page in buffer `page`) into
    /// `log`'s packed slots, assembling records in buffer `zbuf`. Entries that cannot be read
    /// are lost (their LBAs' reads fail their checks from then on).
    pub(super) fn move_packed(
        &mut self,
        p: Ppa,
        page: usize,
        zbuf: usize,
        log: usize,
    ) -> R<(), N::Error> {
        if !self.coded_memory() {
            return Self::bad(NO_CODEC, p.0);
        }
        let (lbas, n) = self
            .packed_lbas(p, page)
            .unwrap_or(([0; pk::MAX_ENTRIES], 0));
        let cause = if log == HOT { Cause::Data } else { Cause::Gc };
        for &lba in &lbas[..n] {
            if lba >= self.cfg.logical_blocks {
                continue;
            }
            let g = lba / LBAS_PER_NODE;
            let off = lba % LBAS_PER_NODE;
            let s = self.node_slot(g)?;
            if self.ptr(s, off) != p {
                continue;
            }
            let (dtype, len) = match self.gather(p, lba, page, zbuf, cause) {
                Ok(Some(x)) => x,
                Ok(None) | Err(Error::Corrupted(_)) => continue,
                Err(e) => return Err(e),
            };
            let new = self.pack_append(log, lba, dtype, zbuf, len)?;
            let s = self.node_slot(g)?;
            if self.ptr(s, off) == p {
                self.set_ptr(s, off, new);
                self.cache_meta[s].dirty = true;
                self.unref(p, lba);
            } else {
                self.unref(new, lba);
            }
        }
        if self.pack_refs[p.0 as usize] & REFS > 0 {
            self.pack_refs[p.0 as usize] = 0;
            self.invalidate(p);
        }
        Ok(())
    }

    /// Roll-forward of packed slot `p` (sequence `seq`): each entry maps its LBA here unless
    /// the node copy is newer, and drops the LBA's delta as a rewrite does.
    pub(super) fn replay_packed(&mut self, p: Ppa, seq: u64) -> R<(), N::Error> {
        if !self.coded_memory() {
            return Self::bad(NO_CODEC, p.0);
        }
        self.read_slot_checked(p, SlotKind::Packed, 0, PBUF, Cause::Checkpoint)?;
        let (lbas, n) = match self.packed_lbas(p, PBUF) {
            Ok(x) => x,
            Err(w) => return Self::bad(w, p.0),
        };
        for &lba in &lbas[..n] {
            if lba >= self.cfg.logical_blocks {
                return Self::bad("packed entry out of range", p.0);
            }
            let g = lba / LBAS_PER_NODE;
            let off = lba % LBAS_PER_NODE;
            let s = self.node_slot(g)?;
            if seq > self.cache_meta[s].stamp_base() {
                self.set_ptr(s, off, p);
                self.cache_meta[s].dirty = true;
                // A record GC moved is still the base of the LBA's delta: the same record
                // bytes, so the same base CRC. Anything else rewrote the LBA.
                let base = self.entry_base_crc(s, g, off)?;
                if base.is_none() || self.record_crc(p, lba)? != base {
                    self.drop_delta(s, off, None)?;
                }
            }
        }
        Ok(())
    }

    /// The CRC of the record of `lba` in packed slot `p` on flash (its base CRC), or `None` if
    /// it cannot be read: a base that cannot be read is no base.
    fn record_crc(&mut self, p: Ppa, lba: u32) -> R<Option<u32>, N::Error> {
        match self.read_slot_checked(p, SlotKind::Packed, 0, SCRATCH, Cause::Checkpoint) {
            Ok(_) => {}
            Err(Error::Corrupted(_)) => return Ok(None),
            Err(e) => return Err(e),
        }
        match self.gather(p, lba, SCRATCH, ZBUF, Cause::Checkpoint) {
            Ok(Some((_, len))) => {
                let z = self.slot_offset(ZBUF, 0);
                Ok(Some(crc32(&[&self.bufs[z..z + len]])))
            }
            Ok(None) | Err(Error::Corrupted(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// [`Ftl::check`] of `lba` mapped to `q`: `None` if `q` is not a packed slot (or cannot be
    /// read: the plain check reports it), else whether its record decodes.
    pub(super) fn check_packed(&mut self, q: Ppa, lba: u32) -> R<Option<PackCheck>, N::Error> {
        let page = if let Some(log) = self.buffered_packed(q) {
            log
        } else if self.buffered_log(q).is_some() {
            return Ok(None);
        } else {
            match self.read_mapped_slot(q, lba, SCRATCH, Cause::Checkpoint) {
                Ok(SlotKind::Packed) => SCRATCH,
                Ok(_) | Err(Error::Corrupted(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let (lbas, n) = self
            .packed_lbas(q, page)
            .unwrap_or(([0; pk::MAX_ENTRIES], 0));
        let problem = match self.gather(q, lba, page, ZBUF, Cause::Checkpoint) {
            Ok(Some((dtype, len))) => {
                let z = self.slot_offset(ZBUF, 0);
                let d = self.slot_offset(DBUF, 0);
                // DBUF comes before ZBUF.
                let (lo, hi) = self.bufs.split_at_mut(z);
                let out: &mut [u8; SLOT_BYTES] =
                    (&mut lo[d..d + SLOT_BYTES]).try_into().expect("slot");
                match (Dtype::from_code(dtype), self.weights.as_deref_mut()) {
                    (Some(dt), Some(mem)) => weights::decode_block(dt, lba, &hi[..len], out, mem)
                        .err()
                        .map(|_| Problem::BadData),
                    _ => Some(Problem::BadData),
                }
            }
            Ok(None) => Some(Problem::WrongOwner),
            Err(Error::Corrupted(_)) => Some(Problem::BadData),
            Err(e) => return Err(e),
        };
        // The first entry (in directory order) still mapped here counts the slot once.
        let mut counts_slot = false;
        for &other in &lbas[..n] {
            if other == lba {
                counts_slot = true;
                break;
            }
            if other < self.cfg.logical_blocks && self.lookup(other)? == q {
                break;
            }
        }
        Ok(Some(PackCheck {
            counts_slot,
            problem,
        }))
    }
}
