//! Garbage collection, wear levelling and the barrier that lets freed blocks be reused.
//!
//! - Greedy GC runs in the host write path when free blocks run low (bounded per block
//!   opened); cost-benefit GC ((1-u)·age/(1+u)) runs from [`Ftl::idle`].
//! - GC reads each victim page's spare records to learn every valid slot's owner, checks the
//!   owner still maps to that slot, and only then copies it (data to the cold log, nodes to the
//!   node log); a packed slot's still-mapped records go to the cold log's packed slot.
//! - Static wear levelling moves the coldest full block when its erase count lags the most-worn
//!   block by more than [`WL_SPREAD`], so the block returns to the pool.

use super::config::{CP_RESERVE, GC_LOW};
use super::*;

/// Erase-count lag of the coldest full block that triggers static wear levelling.
pub const WL_SPREAD: u32 = 8;
/// Blocks allocated between two wear-levelling moves.
pub const WL_INTERVAL: u32 = 16;
/// Victim pages read per background GC step when space is short: about 30 slot moves on tlc,
/// tens of microseconds, so a host request arriving meanwhile waits little.
pub const GC_STEP_PAGES: u32 = 8;

impl<N: Nand> Ftl<'_, N> {
    /// Programs every write buffer and writes nodes holding unlogged changes, then releases the
    /// blocks freed before it (except the last checkpoint's log heads). Returns blocks released.
    pub(super) fn barrier(&mut self) -> R<u32, N::Error> {
        if self.in_barrier {
            return Ok(0);
        }
        self.in_barrier = true;
        let r = self.barrier_inner();
        self.in_barrier = false;
        r
    }

    fn barrier_inner(&mut self) -> R<u32, N::Error> {
        for _ in 0..4 {
            self.commit_dlog()?;
            for s in 0..self.cache_meta.len() {
                if self.cache_meta[s].unlogged {
                    self.writeback(s, self.node_cause(s))?;
                }
            }
            self.program_log(HOT)?;
            self.program_log(COLD)?;
            self.program_log(NODE)?;
            if self.unlogged == 0 && (0..3).all(|l| self.logs[l].fill == 0) {
                break;
            }
        }
        Ok(self.release_prefree(false))
    }

    /// Turns prefree blocks into free ones (and retired ones into bad). Only call after a
    /// barrier or a checkpoint; `all` also releases the previous checkpoint's log heads.
    pub(super) fn release_prefree(&mut self, all: bool) -> u32 {
        let mut released = 0;
        for b in 0..self.blocks.len() {
            match self.blocks[b].state {
                st::PREFREE
                    if all
                        || (!self.cp_heads.contains(&(b as u32))
                            && !self.dlog_blocks.contains(&(b as u32))) =>
                {
                    self.blocks[b].state = st::FREE;
                    self.prefree_count -= 1;
                    self.free_count += 1;
                    released += 1;
                }
                st::PREBAD => {
                    // Best effort: a block that will not take the mark is still never used.
                    let _ = self.nand.mark_bad(BlockId(b as u32));
                    self.blocks[b].state = st::BAD;
                }
                _ => {}
            }
        }
        released
    }

    /// Host-path GC: keeps at least [`GC_LOW`] free blocks when it can. Bounded.
    pub(super) fn make_space(&mut self) -> R<(), N::Error> {
        if self.in_gc {
            return Ok(());
        }
        self.in_gc = true;
        let result = self.make_space_inner();
        self.in_gc = false;
        result?;
        if self.free_count == 0 {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    fn make_space_inner(&mut self) -> R<(), N::Error> {
        for _ in 0..64 {
            if self.free_count >= GC_LOW {
                break;
            }
            if self.prefree_count > 0 && (self.prefree_count >= 2 || self.free_count <= CP_RESERVE)
            {
                if self.barrier()? == 0 {
                    self.checkpoint()?;
                }
                continue;
            }
            if self.blocks_since_cp >= CP_INTERVAL {
                self.checkpoint()?;
                continue;
            }
            let victim = match self.wear_victim() {
                Some(v) => Some(v),
                None => self.greedy_victim(),
            };
            match victim {
                Some(v) => self.collect(v)?,
                None if self.prefree_count > 0 => {
                    if self.barrier()? == 0 {
                        self.checkpoint()?;
                    }
                }
                None => break,
            }
        }
        Ok(())
    }

    fn greedy_victim(&self) -> Option<u32> {
        let spb = self.spp * self.ppb;
        let mut best = None;
        let mut best_valid = u32::MAX;
        for (i, b) in self.blocks.iter().enumerate() {
            if b.state == st::RETIRING {
                return Some(i as u32);
            }
            if b.state == st::FULL && b.valid < spb && b.valid < best_valid {
                best = Some(i as u32);
                best_valid = b.valid;
            }
        }
        best
    }

    fn cost_benefit_victim(&self) -> Option<u32> {
        let spb = self.spp as u64 * self.ppb as u64;
        let mut best = None;
        let mut best_score = 0u128;
        for (i, b) in self.blocks.iter().enumerate() {
            if b.state == st::RETIRING {
                return Some(i as u32);
            }
            if b.state != st::FULL || b.valid as u64 >= spb {
                continue;
            }
            // (1-u)·age/(1+u) with u = valid/spb, scaled by spb to stay in integers. In u64
            // when the product fits (ages below 2^43 sequence numbers: always, in practice):
            // the same quotient, without a u128 division per block on every idle call.
            let (free, den) = (spb - b.valid as u64, spb + b.valid as u64);
            let age = self.next_seq.saturating_sub(b.mtime);
            let score = match age.checked_add(1).and_then(|a| a.checked_mul(free * 1024)) {
                Some(num) => (num / den) as u128,
                None => free as u128 * (age as u128 + 1) * 1024 / den as u128,
            };
            if score > best_score {
                best_score = score;
                best = Some(i as u32);
            }
        }
        best
    }

    /// The coldest full block, if it lags the most-worn block by more than [`WL_SPREAD`] and
    /// [`WL_INTERVAL`] blocks were allocated since the last move.
    fn wear_victim(&mut self) -> Option<u32> {
        if self.blocks_since_wl < WL_INTERVAL {
            return None;
        }
        let mut max = 0;
        let mut cold = None;
        let mut cold_ec = u32::MAX;
        for (i, b) in self.blocks.iter().enumerate() {
            if matches!(b.state, st::BAD | st::PREBAD | st::RESERVED) {
                continue;
            }
            max = max.max(b.erase_count);
            if b.state == st::FULL && b.erase_count < cold_ec {
                cold_ec = b.erase_count;
                cold = Some(i as u32);
            }
        }
        let victim = cold.filter(|_| max.saturating_sub(cold_ec) > WL_SPREAD);
        if victim.is_some() {
            self.blocks_since_wl = 0;
            self.stats.wear_level_moves += 1;
        }
        victim
    }

    /// One bounded step of background work: move a retiring block's data; when space is short,
    /// release prefree blocks or collect the best cost-benefit victim; checkpoint when
    /// roll-forward grows; level wear. A barrier pads partly filled pages, so it is only taken
    /// when space is short, not on every idle call.
    pub(super) fn idle_step(&mut self) -> R<bool, N::Error> {
        if self.in_gc {
            return Ok(false);
        }
        let retiring =
            (0..self.blocks.len() as u32).find(|&b| self.blocks[b as usize].state == st::RETIRING);
        let short = self.free_count < GC_LOW + 2;
        if retiring.is_none() && short && self.prefree_count > 0 {
            if self.barrier()? == 0 {
                self.checkpoint()?;
            }
            return Ok(true);
        }
        let mut victim = retiring;
        // Space reclaimed in the background is reclaimed a few pages at a time: the host's
        // requests wait behind each step, and a whole block (a thousand slot moves on tlc, a
        // few milliseconds) stalled a random-write stream every time its queue ran dry, while
        // the host side sat idle waiting for the replies. The victim is chosen again at each
        // step; a block partly moved has fewer valid slots, so it stays the best choice.
        let mut pages = u32::MAX;
        if victim.is_none() && short {
            victim = self.cost_benefit_victim();
            pages = GC_STEP_PAGES;
        }
        if victim.is_none() && self.blocks_since_cp >= CP_INTERVAL / 2 {
            self.checkpoint()?;
            return Ok(true);
        }
        if victim.is_none() {
            victim = self.wear_victim();
        }
        match victim {
            Some(v) => {
                self.in_gc = true;
                let r = self.collect_pages(v, pages);
                self.in_gc = false;
                r?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Moves every valid slot out of block `v`; it becomes prefree (or prebad if retiring).
    pub(super) fn collect(&mut self, v: u32) -> R<(), N::Error> {
        self.collect_pages(v, u32::MAX)
    }

    /// Moves the valid slots of at most `pages` pages of block `v` (those holding any, lowest
    /// first); counts the block as collected once none is left, when it becomes prefree (or
    /// prebad if retiring). Each slot move stands alone (the owner is checked at the move), so
    /// host writes may come between two calls.
    fn collect_pages(&mut self, v: u32, mut pages: u32) -> R<(), N::Error> {
        let spp = self.spp;
        let written = self.blocks[v as usize].written.min(self.ppb);
        for page_in in 0..written {
            let page = v * self.ppb + page_in;
            let first = (page * spp) as usize;
            if !self.valid[first..first + spp as usize].any() {
                continue;
            }
            if pages == 0 {
                // Work left for the next call.
                return Ok(());
            }
            pages -= 1;
            // Read until every valid slot's record and data check, or give up after a few
            // reads (then the damage is on flash, not in the read). Only the valid slots are
            // transferred (same NAND read, less copying: a victim is mostly invalid), unless one
            // is packed: a packed record may start in the slot before it.
            let valid_slots = (0..spp)
                .filter(|&slot| self.valid[first + slot as usize])
                .fold(0u32, |m, slot| m | 1 << slot);
            let packed = (0..spp).any(|slot| {
                valid_slots & (1 << slot) != 0 && self.pack_ref(Ppa(first as u32 + slot)) != 0
            });
            let mut slots = if packed { (1 << spp) - 1 } else { valid_slots };
            let mut sound = [false; MAX_SLOTS_PER_PAGE as usize];
            for _ in 0..READ_ATTEMPTS {
                self.nand_read_slots(page, slots, GCBUF, Cause::Gc)?;
                if slots != (1 << spp) - 1
                    && (0..spp).any(|slot| {
                        let sp = self.spare_offset(GCBUF) + slot as usize * SPARE;
                        valid_slots & (1 << slot) != 0
                            && matches!(SpareRecord::parse(&self.bufs[sp..sp + SPARE]),
                                Ok(r) if r.kind == SlotKind::Packed)
                    })
                {
                    // Packed after all (only damage gets here): read the whole page.
                    slots = (1 << spp) - 1;
                    continue;
                }
                let mut all = true;
                for slot in 0..spp {
                    sound[slot as usize] =
                        !self.valid[first + slot as usize] || self.slot_record(GCBUF, slot).is_ok();
                    all &= sound[slot as usize];
                }
                if all {
                    break;
                }
            }
            for slot in 0..spp {
                let p = Ppa(page * spp + slot);
                if !self.valid[p.0 as usize] {
                    continue;
                }
                let sp = self.spare_offset(GCBUF) + slot as usize * SPARE;
                let Ok(rec) = SpareRecord::parse(&self.bufs[sp..sp + SPARE]) else {
                    // The owner cannot be known: the slot is lost. Reads of its LBA keep
                    // failing their checks rather than returning anything.
                    self.invalidate(p);
                    continue;
                };
                self.relocate(p, slot, rec)?;
            }
        }
        self.stats.gc_blocks += 1;
        Ok(())
    }

    fn relocate(&mut self, p: Ppa, slot: u32, rec: SpareRecord) -> R<(), N::Error> {
        let src = self.slot_offset(GCBUF, slot);
        match rec.kind {
            SlotKind::Data if rec.owner < self.cfg.logical_blocks => {
                let g = rec.owner / LBAS_PER_NODE;
                let off = rec.owner % LBAS_PER_NODE;
                let s = self.room_and_node(COLD, g)?;
                if self.ptr(s, off) != p {
                    self.invalidate(p);
                    return Ok(());
                }
                let dst = self.slot_offset(COLD, self.logs[COLD].fill);
                self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                // The original CRC travels with the bytes: a slot damaged on flash stays
                // detectably damaged rather than being blessed by a fresh CRC.
                let new =
                    self.commit_slot(COLD, SlotKind::Data, rec.owner, rec.data_crc, Cause::Gc);
                self.set_ptr(s, off, new);
                self.cache_meta[s].dirty = true;
                self.invalidate(p);
            }
            SlotKind::Compact if rec.owner < self.nodes => {
                let s = self.room_and_node(COLD, rec.owner)?;
                let Some(i) = self.compact_index(s, p) else {
                    self.invalidate(p);
                    return Ok(());
                };
                let dst = self.slot_offset(COLD, self.logs[COLD].fill);
                self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                // The copy must not redo the compaction on roll-forward (a damaged page is
                // copied as it is, its damage still visible).
                let crc = crate::delta::compact::clear_moved(
                    &mut self.bufs[dst..dst + SLOT_BYTES],
                    rec.owner,
                )
                .unwrap_or(rec.data_crc);
                let new = self.commit_slot(COLD, SlotKind::Compact, rec.owner, crc, Cause::Gc);
                // Nothing replays a compact page's move: the node is written at the next barrier.
                self.set_compact_ptr(s, i, new);
                self.invalidate(p);
            }
            SlotKind::Node if rec.owner < self.nodes => {
                let g = rec.owner;
                if self.nat[g as usize] != p.0 {
                    self.invalidate(p);
                    return Ok(());
                }
                let idx = self.node_index[g as usize];
                if idx != NONE {
                    self.writeback(idx as usize, Cause::Gc)?;
                    return Ok(());
                }
                self.ensure_room(NODE)?;
                let dst = self.slot_offset(NODE, self.logs[NODE].fill);
                self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                let new = self.commit_slot(NODE, SlotKind::Node, g, rec.data_crc, Cause::Gc);
                self.nat[g as usize] = new.0;
                self.invalidate(p);
            }
            SlotKind::Packed => self.move_packed(p, GCBUF, GZBUF, COLD)?,
            _ => self.invalidate(p),
        }
        Ok(())
    }
}
