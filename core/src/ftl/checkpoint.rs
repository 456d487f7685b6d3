//! Writing checkpoint packs.
//!
//! A checkpoint makes the whole mapping durable in one place: it programs every write buffer,
//! writes every dirty node, then writes a pack (header, NAT, block table) into the checkpoint
//! area. Packs are appended to one reserved block until it is full, then the next good reserved
//! block is erased and used: the block holding the newest pack is never erased while it is the
//! newest, so a torn pack always leaves an older valid one to mount from.
//!
//! Each pack is followed by a *seal* page, programmed after the pack's last page and before the
//! checkpoint returns. Nothing is programmed after a page torn by a power cut, so a programmed
//! seal proves every page of the pack was completely written: a sealed pack that fails its checks
//! was damaged later (bit rot), and mount refuses it rather than fall back to an older pack, which
//! could return stale data once the FTL has moved on from the older pack.

use super::*;
use crate::format::{checkpoint as cpf, CheckpointHeader};

/// On-flash block state codes in the checkpoint's block table.
pub(super) mod code {
    pub const FREE: u8 = 0;
    pub const USED: u8 = 1;
    pub const BAD: u8 = 2;
    pub const RESERVED: u8 = 3;
    pub const RETIRING: u8 = 4;
}

pub(super) fn state_code(state: u8) -> u8 {
    match state {
        st::FREE | st::PREFREE => code::FREE,
        st::OPEN | st::FULL => code::USED,
        st::BAD | st::PREBAD => code::BAD,
        st::RESERVED => code::RESERVED,
        _ => code::RETIRING,
    }
}

/// Payload layout: NAT (u32 per node), then the block table at an 8-byte boundary.
pub(super) fn payload_layout(nodes: u32, blocks: u32) -> (usize, usize) {
    let bt_off = (4 * nodes as usize).next_multiple_of(8);
    (bt_off, bt_off + cpf::BLOCK_ENTRY * blocks as usize)
}

/// Slots (header slot included, rounded up to whole pages) of a pack.
pub(super) fn pack_slots(payload_len: usize, spp: u32) -> u32 {
    let payload_slots = payload_len.div_ceil(SLOT_BYTES) as u32;
    (1 + payload_slots).next_multiple_of(spp)
}

/// Fills `out` (4096 bytes) with payload slot `j`.
fn payload_chunk(nat: &[u32], blocks: &[BlockInfo], j: u32, out: &mut [u8]) {
    let (bt_off, end) = payload_layout(nat.len() as u32, blocks.len() as u32);
    out.fill(0);
    for w in 0..SLOT_BYTES / 4 {
        let off = j as usize * SLOT_BYTES + 4 * w;
        let v = if off < 4 * nat.len() {
            nat[off / 4]
        } else if off >= bt_off && off < end {
            let e = (off - bt_off) / cpf::BLOCK_ENTRY;
            if (off - bt_off).is_multiple_of(cpf::BLOCK_ENTRY) {
                blocks[e].erase_count
            } else {
                state_code(blocks[e].state) as u32
            }
        } else {
            0
        };
        crate::format::write_u32(out, 4 * w, v);
    }
}

impl<N: Nand> Ftl<'_, N> {
    /// Writes a checkpoint; afterwards every block freed before it is free.
    pub(super) fn checkpoint(&mut self) -> R<(), N::Error> {
        if self.in_checkpoint {
            return Ok(());
        }
        self.in_checkpoint = true;
        let r = self.checkpoint_inner();
        self.in_checkpoint = false;
        r
    }

    fn checkpoint_inner(&mut self) -> R<(), N::Error> {
        // Loop because a program failure while flushing re-appends slots and dirties nodes.
        for _ in 0..4 {
            self.program_log(HOT)?;
            self.program_log(COLD)?;
            for s in 0..self.cache_meta.len() {
                if self.cache_meta[s].dirty {
                    self.writeback(s, self.node_cause(s))?;
                }
            }
            self.program_log(NODE)?;
            let clean = self.cache_meta.iter().all(|m| !m.dirty);
            if clean && (0..3).all(|l| self.logs[l].fill == 0) {
                break;
            }
        }
        let seq = self.stamp_seq();
        let mut heads = [(NONE, 0); 3];
        for (h, l) in heads.iter_mut().zip(self.logs.iter()) {
            *h = (l.block, l.page);
        }
        self.write_pack(seq, heads)?;
        self.cp_seq = seq;
        self.cp_heads = [heads[0].0, heads[1].0, heads[2].0];
        self.blocks_since_cp = 0;
        self.stats.checkpoints += 1;
        // Every node the open delta log and the logged slots changed is in this checkpoint.
        self.drop_dlog();
        self.dlog_blocks.clear();
        self.release_prefree(true);
        Ok(())
    }

    fn write_pack(&mut self, seq: u64, heads: [(u32, u32); 3]) -> R<(), N::Error> {
        let (_, payload_len) = payload_layout(self.nodes, self.geo.blocks);
        let nslots = pack_slots(payload_len, self.spp);
        let pages = nslots / self.spp;
        let payload_slots = payload_len.div_ceil(SLOT_BYTES) as u32;
        let mut failed = NONE;
        let mut done = false;
        for _ in 0..=CP_AREA_BLOCKS {
            // Switch first: erasing a block changes the block table the pack carries. The pack
            // and its seal page must both fit.
            if self.cp_block == NONE || self.cp_page + pages + 1 > self.ppb {
                self.switch_cp_block()?;
            }
            let mut h = crc32fast::Hasher::new();
            let at = self.slot_offset(SCRATCH, 0);
            for j in 0..payload_slots {
                payload_chunk(
                    self.nat,
                    self.blocks,
                    j,
                    &mut self.bufs[at..at + SLOT_BYTES],
                );
                let len = (payload_len - j as usize * SLOT_BYTES).min(SLOT_BYTES);
                h.update(&self.bufs[at..at + len]);
            }
            let header = CheckpointHeader {
                seq,
                page_bytes: self.geo.page_bytes,
                spare_bytes: self.geo.spare_bytes,
                pages_per_block: self.geo.pages_per_block,
                blocks: self.geo.blocks,
                logical_blocks: self.cfg.logical_blocks,
                node_cache_slots: self.cfg.node_cache_slots,
                lbas_per_node: LBAS_PER_NODE,
                nodes: self.nodes,
                heads,
                payload_len: payload_len as u32,
                payload_crc: h.finalize(),
                host_write_bytes: self.stats.lifetime_host_write_bytes,
                nand_program_bytes: self.stats.lifetime_program_bytes,
            };
            if self.program_pack(&header, nslots, payload_slots)? {
                self.cp_page += pages + 1;
                done = true;
                break;
            }
            failed = self.cp_block;
            self.cp_page = self.ppb;
        }
        if failed != NONE && failed != self.cp_block {
            // Only now, with a newer pack durable elsewhere, may the failed block go.
            self.nand.mark_bad(BlockId(failed)).map_err(Error::Nand)?;
            self.blocks[failed as usize].state = st::BAD;
            self.stats.retired_blocks += 1;
        }
        if done {
            Ok(())
        } else {
            Err(Error::NoSpace)
        }
    }

    /// Programs one pack at `cp_page` of `cp_block`, then its seal page. `Ok(false)` if a
    /// program failed (a pack whose seal failed is abandoned too: a sealed pack is one whose
    /// damage mount may not explain by a power cut).
    fn program_pack(
        &mut self,
        header: &CheckpointHeader,
        nslots: u32,
        payload_slots: u32,
    ) -> R<bool, N::Error> {
        let pages = nslots / self.spp;
        // Page `pages` is the seal: zero slots whose records continue the pack's slot indices.
        for k in 0..=pages {
            for i in 0..self.spp {
                let idx = k * self.spp + i;
                let at = self.slot_offset(SCRATCH, i);
                if idx == 0 {
                    self.bufs[at..at + SLOT_BYTES].fill(0);
                    header.write(&mut self.bufs[at..at + cpf::HEADER_LEN]);
                } else if idx <= payload_slots {
                    payload_chunk(
                        self.nat,
                        self.blocks,
                        idx - 1,
                        &mut self.bufs[at..at + SLOT_BYTES],
                    );
                } else {
                    self.bufs[at..at + SLOT_BYTES].fill(0);
                }
                let crc = crc32(&[&self.bufs[at..at + SLOT_BYTES]]);
                let sp = self.spare_offset(SCRATCH) + i as usize * SPARE;
                SpareRecord {
                    kind: SlotKind::Checkpoint,
                    owner: idx,
                    seq: header.seq,
                    data_crc: crc,
                    aux: nslots,
                }
                .write(&mut self.bufs[sp..sp + SPARE]);
            }
            let page = PageId(self.cp_block * self.ppb + self.cp_page + k);
            let start = SCRATCH * self.stride;
            let (data, spare) =
                self.bufs[start..start + self.stride].split_at(self.geo.page_bytes as usize);
            self.stats.program_pages[Cause::Checkpoint as usize] += 1;
            self.stats.program_bytes[Cause::Checkpoint as usize] += self.geo.page_bytes as u64;
            self.stats.lifetime_program_bytes += self.geo.page_bytes as u64;
            match self.nand.program(page, data, spare) {
                Ok(()) => {}
                Err(e) if e.kind() == FaultKind::ProgramFailed => return Ok(false),
                Err(e) => return Err(Error::Nand(e)),
            }
        }
        Ok(true)
    }

    /// Moves to the next good reserved block (round robin) and erases it.
    fn switch_cp_block(&mut self) -> R<(), N::Error> {
        let area = CP_AREA_BLOCKS.min(self.geo.blocks);
        let start = if self.cp_block == NONE {
            0
        } else {
            self.cp_block + 1
        };
        for k in 0..area {
            let b = (start + k) % area;
            if b == self.cp_block || self.blocks[b as usize].state != st::RESERVED {
                continue;
            }
            match self.nand.erase(BlockId(b)) {
                Ok(()) => {
                    self.stats.erases += 1;
                    self.blocks[b as usize].erase_count += 1;
                    self.cp_block = b;
                    self.cp_page = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == FaultKind::EraseFailed => {
                    self.nand.mark_bad(BlockId(b)).map_err(Error::Nand)?;
                    self.blocks[b as usize].state = st::BAD;
                    self.stats.retired_blocks += 1;
                }
                Err(e) => return Err(Error::Nand(e)),
            }
        }
        Err(Error::NoSpace)
    }
}
