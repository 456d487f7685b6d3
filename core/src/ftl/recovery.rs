//! Mounting: finding the newest valid checkpoint pack and rolling forward from it.
//!
//! 1. Every good block of the checkpoint area is walked by spare records; every pack any of
//!    whose slot records checks is a candidate, newest first; the first whose every slot,
//!    header and payload check wins. A newer pack that fails is passed over only if its seal
//!    page is unprogrammed (a power cut while it was written); a sealed one was damaged later,
//!    and the mount is refused naming it, since an older pack could return stale data.
//! 2. The NAT and block table are loaded from it.
//! 3. Roll-forward finds the blocks written after the checkpoint (the log heads it recorded,
//!    plus every block whose first page carries a newer sequence number), validates them page by
//!    page (a block ends at its first torn or out-of-sequence page, which is never used; a
//!    damaged page's checking records are used and the block goes on), then
//!    - pass 1 points the NAT at the newest node copy of every group;
//!    - pass 2 applies data slots in global sequence order, skipping those older than the node
//!      copy they would land in.
//! 4. Valid bitmaps and counts are rebuilt from the NAT and the node pages, and a checkpoint is
//!    written so the next mount starts from here. A node page that fails its checks costs its
//!    group only: its LBAs fail naming it, the rest of the device mounts.

use heapless::Vec as HVec;

use super::checkpoint::{code, pack_slots, payload_layout};
use super::*;
use crate::format::{checkpoint as cpf, CheckpointHeader, RecordError};

/// Most blocks roll-forward can follow: checkpoints come every [`CP_INTERVAL`] blocks on the
/// host path and at the latest every 3 × [`CP_INTERVAL`] on any path, plus a few blocks opened
/// while a checkpoint itself writes nodes.
const MAX_SCAN: usize = 96;
/// Pack starts considered per mount.
const MAX_CANDIDATES: usize = 16;

struct CpLocation {
    block: u32,
    page: u32,
    header: CheckpointHeader,
    nslots: u32,
    /// Highest sequence number of any pack seen, torn ones passed over included: new slots
    /// and packs must be newer, so the next pack outranks a torn one.
    newest_seq: u64,
}

#[derive(Clone, Copy)]
struct Scan {
    block: u32,
    start: u32,
    /// First page not to use.
    end: u32,
    page: u32,
    slot: u32,
    head: Option<(SlotKind, u32, u64)>,
}

type ME<E> = MountError<E>;

fn mcorrupt<E>(what: &'static str, at: u32) -> ME<E> {
    MountError::Corrupted(corrupted(what, at))
}

/// Reads a page and checks every slot's record and data CRC, retrying transient flips.
fn read_sound<N: Nand>(
    nand: &mut N,
    page: u32,
    data: &mut [u8],
    spare: &mut [u8],
    spp: u32,
) -> Result<bool, N::Error> {
    for _ in 0..READ_ATTEMPTS {
        nand.read(PageId(page), data, spare)?;
        if spare.iter().all(|&b| b == 0xFF) {
            // Erased (or torn before its spare): the normal end of a block, not a flip.
            return Ok(false);
        }
        let sound = (0..spp as usize).all(|i| {
            matches!(SpareRecord::parse(&spare[i * SPARE..]),
                Ok(r) if crc32(&[&data[i * SLOT_BYTES..(i + 1) * SLOT_BYTES]]) == r.data_crc)
        });
        if sound {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a page read by [`read_sound`] holds a slot whose record checks but whose data does
/// not: damage to a completed page. A program writes the page image (data, then spare) in
/// order, so a cut that left a checking record had already written every data byte before it;
/// only later damage makes such a slot's data fail its CRC.
fn rotten(data: &[u8], spare: &[u8], spp: u32) -> bool {
    (0..spp as usize).any(|i| {
        matches!(SpareRecord::parse(&spare[i * SPARE..]),
            Ok(r) if crc32(&[&data[i * SLOT_BYTES..(i + 1) * SLOT_BYTES]]) != r.data_crc)
    })
}

/// Reads slot 0's spare record of a page, retrying a damaged one.
fn read_first_record<N: Nand>(
    nand: &mut N,
    page: u32,
    spare: &mut [u8],
) -> Result<Result<SpareRecord, RecordError>, N::Error> {
    let mut last = Err(RecordError::Damaged);
    for _ in 0..READ_ATTEMPTS {
        nand.read_spare(PageId(page), spare)?;
        last = SpareRecord::parse(spare);
        if !matches!(last, Err(RecordError::Damaged)) {
            break;
        }
    }
    Ok(last)
}

/// A pack found in the checkpoint area: (seq, block, first page, slots), from any of its slot
/// records (the pack's own or its seal's), so a pack whose first page's record is damaged is
/// still seen.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Candidate {
    seq: u64,
    block: u32,
    page: u32,
    nslots: u32,
}

/// Reads a page's spare and returns the first slot record that checks, retrying while none
/// does. `Err(Erased)` when every record reads erased.
fn read_any_record<N: Nand>(
    nand: &mut N,
    page: u32,
    spare: &mut [u8],
    spp: u32,
) -> Result<Result<SpareRecord, RecordError>, N::Error> {
    let mut last = Err(RecordError::Damaged);
    for _ in 0..READ_ATTEMPTS {
        nand.read_spare(PageId(page), spare)?;
        let mut erased = true;
        for i in 0..spp as usize {
            match SpareRecord::parse(&spare[i * SPARE..]) {
                Ok(r) => return Ok(Ok(r)),
                Err(RecordError::Damaged) => erased = false,
                Err(RecordError::Erased) => {}
            }
        }
        if erased {
            return Ok(Err(RecordError::Erased));
        }
        last = Err(RecordError::Damaged);
    }
    Ok(last)
}

/// Whether the seal page of a pack (the page after its last) was programmed at all. Only an
/// unprogrammed seal lets mount put the pack's damage down to a power cut: the writer programs
/// the seal after every page of the pack and before anything else, and nothing is programmed
/// after a torn page, so a seal with any programmed byte proves the pack was complete. A seal
/// that cannot exist (past the end of the block, or an impossible slot count) proves nothing
/// and counts as programmed.
fn sealed<N: Nand>(
    nand: &mut N,
    geo: &Geometry,
    spare: &mut [u8],
    c: &Candidate,
) -> Result<bool, N::Error> {
    let spp = geo.slots_per_page();
    if c.nslots == 0 || !c.nslots.is_multiple_of(spp) {
        return Ok(true);
    }
    let seal = c.page as u64 + (c.nslots / spp) as u64;
    if seal >= geo.pages_per_block as u64 {
        return Ok(true);
    }
    // One clean read proves it erased; a flip on read must not turn a tear into a refusal.
    for _ in 0..READ_ATTEMPTS {
        nand.read_spare(PageId(c.block * geo.pages_per_block + seal as u32), spare)?;
        if spare.iter().all(|&b| b == 0xFF) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Finds the pack to mount from: the newest whose checks pass. A newer pack that fails them is
/// passed over only if its seal page was never programmed (a power cut while the pack was being
/// written, so the FTL never acted on it and the previous pack plus roll-forward is the current
/// state); a sealed one was damaged after it was written and mounting is refused, naming it.
fn find_checkpoint<N: Nand>(
    nand: &mut N,
    geo: &Geometry,
    buf: &mut [u8],
) -> Result<CpLocation, ME<N::Error>> {
    let stride = (geo.page_bytes + geo.spare_bytes) as usize;
    if buf.len() < stride {
        return Err(MountError::BufferTooSmall {
            what: "page_buffers",
            needed: stride,
        });
    }
    let spp = geo.slots_per_page();
    let (data, spare) = buf[..stride].split_at_mut(geo.page_bytes as usize);
    let mut cands: HVec<Candidate, MAX_CANDIDATES> = HVec::new();
    let mut seen = false;
    for b in 0..CP_AREA_BLOCKS.min(geo.blocks) {
        if nand.is_bad(BlockId(b)).map_err(MountError::Nand)? {
            continue;
        }
        for p in 0..geo.pages_per_block {
            let page = b * geo.pages_per_block + p;
            let r = match read_any_record(nand, page, spare, spp).map_err(MountError::Nand)? {
                Err(RecordError::Erased) => break,
                Err(RecordError::Damaged) => {
                    seen = true;
                    continue;
                }
                Ok(r) => r,
            };
            seen = true;
            // Slot indices run on through a pack and its seal, so any slot locates the start.
            let back = r.owner / spp;
            if r.kind != SlotKind::Checkpoint || back > p {
                continue;
            }
            let c = Candidate {
                seq: r.seq,
                block: b,
                page: p - back,
                nslots: r.aux,
            };
            if cands
                .iter()
                .any(|x| x.seq == c.seq && x.block == b && x.page == c.page)
            {
                continue;
            }
            if cands.is_full() {
                // Keep the newest: only they can be mounted from or stand in the way.
                let (i, min) = cands
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, x)| x.seq)
                    .map(|(i, x)| (i, x.seq))
                    .unwrap_or((0, 0));
                if c.seq > min {
                    cands[i] = c;
                }
            } else {
                let _ = cands.push(c);
            }
        }
    }
    cands.sort_unstable_by_key(|c| core::cmp::Reverse(c.seq));
    let newest_seq = cands.first().map_or(0, |c| c.seq);
    for (n, c) in cands.iter().enumerate() {
        match validate_pack(nand, geo, data, spare, c.block, c.page)? {
            Ok(mut loc) => {
                loc.newest_seq = newest_seq;
                return Ok(loc);
            }
            Err(why) => {
                if sealed(nand, geo, spare, c).map_err(MountError::Nand)? {
                    return Err(MountError::CheckpointDamaged {
                        block: c.block,
                        page: c.page,
                        seq: c.seq,
                        why,
                        older: n + 1 < cands.len(),
                    });
                }
            }
        }
    }
    if seen {
        Err(mcorrupt(
            "no valid checkpoint pack in the checkpoint area",
            0,
        ))
    } else {
        Err(MountError::Unformatted)
    }
}

/// Checks the pack starting at `page` of `block`: every slot record, the header, the sizes and
/// the payload CRC. `Ok(Err(why))` says which check failed.
fn validate_pack<N: Nand>(
    nand: &mut N,
    geo: &Geometry,
    data: &mut [u8],
    spare: &mut [u8],
    block: u32,
    page: u32,
) -> Result<Result<CpLocation, &'static str>, ME<N::Error>> {
    const UNSOUND: &str = "has a page that fails its CRC (or reads erased)";
    const RECORDS: &str = "has slot records that do not belong to it";
    let spp = geo.slots_per_page();
    let ppb = geo.pages_per_block;
    let first = block * ppb + page;
    if !read_sound(nand, first, data, spare, spp).map_err(MountError::Nand)? {
        return Ok(Err(UNSOUND));
    }
    let Ok(rec) = SpareRecord::parse(spare) else {
        return Ok(Err(RECORDS));
    };
    if rec.kind != SlotKind::Checkpoint || rec.owner != 0 {
        return Ok(Err(RECORDS));
    }
    let Some(header) = CheckpointHeader::parse(data) else {
        return Ok(Err("has a header that fails its checks"));
    };
    if header.seq != rec.seq {
        return Ok(Err("has a header whose seq disagrees with its records"));
    }
    if header.page_bytes != geo.page_bytes
        || header.spare_bytes != geo.spare_bytes
        || header.pages_per_block != geo.pages_per_block
        || header.blocks != geo.blocks
    {
        return Err(MountError::GeometryMismatch {
            formatted_blocks: header.blocks,
            actual_blocks: geo.blocks,
        });
    }
    let cfg = FtlConfig {
        logical_blocks: header.logical_blocks,
        node_cache_slots: header.node_cache_slots,
    };
    if header.lbas_per_node != LBAS_PER_NODE || header.nodes != cfg.nodes() {
        return Err(mcorrupt("checkpoint header fields disagree", block));
    }
    let (_, payload_len) = payload_layout(header.nodes, header.blocks);
    let nslots = pack_slots(payload_len, spp);
    if header.payload_len as usize != payload_len || rec.aux != nslots || page + nslots / spp > ppb
    {
        return Ok(Err("has sizes that disagree with its header"));
    }
    let mut h = crc32fast::Hasher::new();
    for idx in 1..nslots {
        let slot = (idx % spp) as usize;
        if slot == 0
            && !read_sound(nand, first + idx / spp, data, spare, spp).map_err(MountError::Nand)?
        {
            return Ok(Err(UNSOUND));
        }
        let Ok(r) = SpareRecord::parse(&spare[slot * SPARE..]) else {
            return Ok(Err(RECORDS));
        };
        if r.kind != SlotKind::Checkpoint || r.owner != idx || r.seq != rec.seq || r.aux != nslots {
            return Ok(Err(RECORDS));
        }
        let off = (idx as usize - 1) * SLOT_BYTES;
        if off < payload_len {
            let len = (payload_len - off).min(SLOT_BYTES);
            h.update(&data[slot * SLOT_BYTES..slot * SLOT_BYTES + len]);
        }
    }
    if h.finalize() != header.payload_crc {
        return Ok(Err("fails its payload CRC"));
    }
    Ok(Ok(CpLocation {
        block,
        page,
        header,
        nslots,
        newest_seq: rec.seq,
    }))
}

pub(super) fn probe<N: Nand>(nand: &mut N, scratch: &mut [u8]) -> Result<FtlConfig, ME<N::Error>> {
    let geo = nand.geometry();
    geo.validate()
        .map_err(|e| MountError::Config(ConfigError::Geometry(e)))?;
    let loc = find_checkpoint(nand, &geo, scratch)?;
    let cfg = FtlConfig {
        logical_blocks: loc.header.logical_blocks,
        node_cache_slots: loc.header.node_cache_slots,
    };
    // Checked before a host sizes memory from it.
    cfg.check(&geo).map_err(MountError::Config)?;
    Ok(cfg)
}

pub(super) fn mount<'a, N: Nand>(
    mut nand: N,
    mem: FtlMemory<'a>,
) -> Result<Ftl<'a, N>, ME<N::Error>> {
    let geo = nand.geometry();
    geo.validate()
        .map_err(|e| MountError::Config(ConfigError::Geometry(e)))?;
    let loc = find_checkpoint(&mut nand, &geo, mem.page_buffers)?;
    let cfg = FtlConfig {
        logical_blocks: loc.header.logical_blocks,
        node_cache_slots: loc.header.node_cache_slots,
    };
    cfg.check(&geo).map_err(MountError::Config)?;
    let req = mem.requirements(&geo, &cfg);
    if let Err((what, needed)) = mem.fits(&req) {
        return Err(MountError::BufferTooSmall { what, needed });
    }
    let mut ftl = Ftl::assemble(nand, geo, cfg, mem);
    ftl.load_checkpoint(&loc)?;
    ftl.roll_forward(&loc)?;
    Ok(ftl)
}

impl<N: Nand> Ftl<'_, N> {
    fn load_checkpoint(&mut self, loc: &CpLocation) -> Result<(), ME<N::Error>> {
        let (bt_off, payload_len) = payload_layout(self.nodes, self.geo.blocks);
        let first = loc.block * self.ppb + loc.page;
        for idx in 1..loc.nslots {
            let slot = idx % self.spp;
            if idx == 1 || slot == 0 {
                let page = first + idx / self.spp;
                let start = SCRATCH * self.stride;
                let (data, spare) = self.bufs[start..start + self.stride]
                    .split_at_mut(self.geo.page_bytes as usize);
                if !read_sound(&mut self.nand, page, data, spare, self.spp)
                    .map_err(MountError::Nand)?
                {
                    return Err(mcorrupt("checkpoint pack changed while mounting", page));
                }
                self.stats.reads[Cause::Checkpoint as usize] += 1;
            }
            let base = (idx as usize - 1) * SLOT_BYTES;
            let at = self.slot_offset(SCRATCH, slot);
            for w in 0..SLOT_BYTES / 4 {
                let off = base + 4 * w;
                if off >= payload_len {
                    break;
                }
                let v = crate::format::read_u32(&self.bufs[at..at + SLOT_BYTES], 4 * w);
                if off < 4 * self.nodes as usize {
                    self.nat[off / 4] = v;
                } else if off >= bt_off {
                    let e = (off - bt_off) / cpf::BLOCK_ENTRY;
                    if (off - bt_off).is_multiple_of(cpf::BLOCK_ENTRY) {
                        self.blocks[e].erase_count = v;
                    } else {
                        self.blocks[e].state = match (v & 0xFF) as u8 {
                            code::FREE => st::FREE,
                            code::USED => st::FULL,
                            code::BAD => st::BAD,
                            code::RESERVED => st::RESERVED,
                            code::RETIRING => st::RETIRING,
                            _ => return Err(mcorrupt("block table state unknown", e as u32)),
                        };
                    }
                }
            }
        }
        for b in 0..self.geo.blocks {
            let info = &mut self.blocks[b as usize];
            let in_area = b < CP_AREA_BLOCKS;
            if in_area != (info.state == st::RESERVED) && info.state != st::BAD {
                return Err(mcorrupt(
                    "block table disagrees with the checkpoint area",
                    b,
                ));
            }
            if matches!(info.state, st::FULL | st::RETIRING) {
                info.written = self.ppb;
            }
            if info.state != st::BAD && self.nand.is_bad(BlockId(b)).map_err(MountError::Nand)? {
                info.state = st::BAD;
            }
        }
        for g in 0..self.nodes {
            let p = self.nat[g as usize];
            if p != NONE && p >= self.total_slots {
                return Err(mcorrupt("NAT entry out of range", g));
            }
        }
        self.cp_seq = loc.header.seq;
        self.next_seq = loc.header.seq + 1;
        self.cp_block = loc.block;
        // A torn program may read as erased yet refuse a second program: never append to the
        // block a power cut may have hit; the next pack starts a fresh block.
        self.cp_page = self.ppb;
        self.stats.lifetime_host_write_bytes = loc.header.host_write_bytes;
        self.stats.lifetime_program_bytes = loc.header.nand_program_bytes;
        Ok(())
    }

    fn roll_forward(&mut self, loc: &CpLocation) -> Result<(), ME<N::Error>> {
        let cp_seq = self.cp_seq;
        let mut scan: HVec<Scan, MAX_SCAN> = HVec::new();
        let heads = loc.header.heads;
        self.cp_heads = [heads[0].0, heads[1].0, heads[2].0];
        for &(b, p) in heads.iter() {
            if b == NONE {
                continue;
            }
            if b >= self.geo.blocks {
                return Err(mcorrupt("log head out of range", b));
            }
            match self.blocks[b as usize].state {
                st::BAD => continue,
                st::FULL | st::RETIRING => {}
                _ => return Err(mcorrupt("log head in a block not in use", b)),
            }
            if p < self.ppb {
                let _ = scan.push(Scan::new(b, p));
            }
        }
        // Blocks (re)opened after the checkpoint start with a newer sequence number.
        for b in CP_AREA_BLOCKS..self.geo.blocks {
            let state = self.blocks[b as usize].state;
            if !matches!(state, st::FREE | st::FULL | st::RETIRING)
                || heads.iter().any(|h| h.0 == b)
            {
                continue;
            }
            let sp = self.spare_offset(SCRATCH);
            let page = b * self.ppb;
            let rec = read_first_record(
                &mut self.nand,
                page,
                &mut self.bufs[sp..sp + self.geo.spare_bytes as usize],
            )
            .map_err(MountError::Nand)?;
            self.stats.spare_reads[Cause::Checkpoint as usize] += 1;
            let mut newer = matches!(rec, Ok(r) if r.seq > cp_seq);
            if matches!(rec, Err(RecordError::Damaged)) && self.ppb > 1 {
                // Page 0's record is damaged: page 1 tells whether the block is new.
                let rec1 = read_first_record(
                    &mut self.nand,
                    page + 1,
                    &mut self.bufs[sp..sp + self.geo.spare_bytes as usize],
                )
                .map_err(MountError::Nand)?;
                self.stats.spare_reads[Cause::Checkpoint as usize] += 1;
                newer = matches!(rec1, Ok(r) if r.seq > cp_seq);
            }
            {
                if newer {
                    if scan.push(Scan::new(b, 0)).is_err() {
                        return Err(mcorrupt("too many blocks written since the checkpoint", b));
                    }
                    let info = &mut self.blocks[b as usize];
                    info.state = if state == st::RETIRING {
                        st::RETIRING
                    } else {
                        st::FULL
                    };
                    info.erase_count += 1;
                    info.written = self.ppb;
                }
            }
        }
        // Replay may write nodes back, so the free pool must be known before it.
        self.free_count = self.blocks.iter().filter(|b| b.state == st::FREE).count() as u32;
        self.prefree_count = 0;
        // Pass 1: validate pages, find the newest node copy of every group. The node index
        // (empty until pass 2) holds each group's newest node sequence, relative to the
        // checkpoint.
        let mut max_seen = cp_seq;
        for e in scan.iter_mut() {
            let mut page_in = e.start;
            while page_in < self.ppb {
                let page = e.block * self.ppb + page_in;
                let start = SCRATCH * self.stride;
                let (data, spare) = self.bufs[start..start + self.stride]
                    .split_at_mut(self.geo.page_bytes as usize);
                let sound = read_sound(&mut self.nand, page, data, spare, self.spp)
                    .map_err(MountError::Nand)?;
                self.stats.reads[Cause::Checkpoint as usize] += 1;
                // Sequence numbers of any readable record count, torn page or not, so no new
                // slot ever reuses one.
                let sp0 = self.spare_offset(SCRATCH);
                for i in 0..self.spp as usize {
                    let at = sp0 + i * SPARE;
                    if let Ok(r) = SpareRecord::parse(&self.bufs[at..at + SPARE]) {
                        max_seen = max_seen.max(r.seq);
                    }
                }
                // An unsound page was damaged in place, not torn by a cut, when a programmed
                // page follows it (nothing is ever programmed after a torn page) or when a slot
                // whose record checks fails its data CRC (see [`rotten`]): its slots whose
                // records still check are events (a damaged data slot then reads as a CRC
                // error instead of silently reverting), and the block goes on. Otherwise the
                // unsound page is a tear and ends the block.
                let erased = self.bufs[sp0..sp0 + self.geo.spare_bytes as usize]
                    .iter()
                    .all(|&b| b == 0xFF);
                let rot = {
                    let (data, spare) = self.bufs[start..start + self.stride]
                        .split_at(self.geo.page_bytes as usize);
                    rotten(data, spare, self.spp)
                };
                let damaged =
                    !sound && !erased && (rot || self.page_programmed(e.block, page_in + 1)?);
                if !sound && !damaged {
                    break;
                }
                let mut ok = true;
                for i in 0..self.spp {
                    let at = sp0 + i as usize * SPARE;
                    let Ok(r) = SpareRecord::parse(&self.bufs[at..at + SPARE]) else {
                        ok = false;
                        continue;
                    };
                    let owner_ok = match r.kind {
                        SlotKind::Data => r.owner < self.cfg.logical_blocks,
                        SlotKind::Node | SlotKind::Compact => r.owner < self.nodes,
                        SlotKind::Padding => true,
                        SlotKind::DeltaLog | SlotKind::Packed => r.owner == 0,
                        SlotKind::Checkpoint => false,
                    };
                    if r.seq <= cp_seq || !owner_ok {
                        ok = false;
                        continue;
                    }
                    if r.kind == SlotKind::Node {
                        let rel = (r.seq - cp_seq).min(u32::MAX as u64 - 1) as u32;
                        let cur = self.node_index[r.owner as usize];
                        if cur == NONE || rel >= cur {
                            self.node_index[r.owner as usize] = rel;
                            self.nat[r.owner as usize] = page * self.spp + i;
                        }
                    }
                }
                if sound && !ok {
                    // A sound page with impossible fields: not this log's page after all.
                    break;
                }
                page_in += 1;
            }
            e.end = page_in;
        }
        self.node_index.fill(NONE);
        self.next_seq = max_seen.max(loc.newest_seq) + 1;

        // Pass 2: data slots in global sequence order.
        for e in scan.iter_mut() {
            e.page = e.start;
            e.slot = 0;
        }
        for i in 0..scan.len() {
            let mut e = scan[i];
            self.load_head(&mut e)?;
            scan[i] = e;
        }
        let mut last_applied = cp_seq;
        loop {
            let mut pick = None;
            let mut pick_seq = u64::MAX;
            for (i, e) in scan.iter().enumerate() {
                if let Some((_, _, seq)) = e.head {
                    if seq < pick_seq {
                        pick_seq = seq;
                        pick = Some(i);
                    }
                }
            }
            let Some(i) = pick else { break };
            let mut e = scan[i];
            let (kind, owner, seq) = e.head.expect("picked");
            let p = Ppa((e.block * self.ppb + e.page) * self.spp + e.slot);
            if kind == SlotKind::DeltaLog {
                self.replay_seq = Some(last_applied);
                self.replay_dlog(p, seq)?;
            }
            if kind == SlotKind::Packed {
                self.replay_seq = Some(last_applied);
                self.replay_packed(p, seq)?;
            }
            if kind == SlotKind::Compact {
                self.replay_seq = Some(last_applied);
                self.replay_compact(p, owner, seq)?;
            }
            if kind == SlotKind::Data {
                self.replay_seq = Some(last_applied);
                let g = owner / LBAS_PER_NODE;
                let s = match self.node_slot(g) {
                    Ok(s) => Some(s),
                    // The group's newest node page is damaged: the group is lost (see
                    // `keep_damaged_node`), and its later writes with it.
                    Err(Error::Corrupted(c)) if c.node == Some(g) => None,
                    Err(e) => return Err(e.into()),
                };
                if let Some(s) = s.filter(|&s| seq > self.cache_meta[s].stamp_base()) {
                    self.set_ptr(s, owner % LBAS_PER_NODE, p);
                    self.cache_meta[s].dirty = true;
                    self.replay_drop_stale(s, owner % LBAS_PER_NODE, p)?;
                }
            }
            last_applied = seq;
            e.slot += 1;
            if e.slot == self.spp {
                e.slot = 0;
                e.page += 1;
            }
            self.load_head(&mut e)?;
            scan[i] = e;
        }
        self.replay_seq = None;
        self.program_log(NODE)?;
        self.logs[HOT] = Log::CLOSED;
        self.logs[COLD] = Log::CLOSED;
        self.rebuild_valid()?;
        self.free_count = 0;
        self.prefree_count = 0;
        for b in 0..self.blocks.len() {
            let info = &mut self.blocks[b];
            match info.state {
                st::FULL if info.valid == 0 => info.state = st::PREFREE,
                st::RETIRING if info.valid == 0 => info.state = st::PREBAD,
                st::FREE if info.valid > 0 => {
                    return Err(mcorrupt("mapped slot in a free block", b as u32))
                }
                _ => {}
            }
            match info.state {
                st::FREE => self.free_count += 1,
                st::PREFREE => self.prefree_count += 1,
                _ => {}
            }
        }
        self.blocks_since_cp = scan.len() as u32;
        self.checkpoint()?;
        Ok(())
    }

    /// Whether page `n` of `block` was programmed (its spare is not all erased).
    fn page_programmed(&mut self, block: u32, n: u32) -> Result<bool, ME<N::Error>> {
        if n >= self.ppb {
            return Ok(false);
        }
        self.nand_read_spare(block * self.ppb + n, GCBUF, Cause::Checkpoint)?;
        let sp = self.spare_offset(GCBUF);
        Ok(self.bufs[sp..sp + self.geo.spare_bytes as usize]
            .iter()
            .any(|&b| b != 0xFF))
    }

    /// Loads the next replayable record at or after an entry's cursor (or ends the entry).
    /// Slots whose records no longer check (damaged in place) are skipped.
    fn load_head(&mut self, e: &mut Scan) -> Result<(), ME<N::Error>> {
        e.head = None;
        while e.page < e.end {
            let page = e.block * self.ppb + e.page;
            for _ in 0..READ_ATTEMPTS {
                self.nand_read_spare(page, SCRATCH, Cause::Checkpoint)?;
                let sp = self.spare_offset(SCRATCH) + e.slot as usize * SPARE;
                if let Ok(r) = SpareRecord::parse(&self.bufs[sp..sp + SPARE]) {
                    let owner_ok = match r.kind {
                        SlotKind::Data => r.owner < self.cfg.logical_blocks,
                        SlotKind::Node | SlotKind::Compact => r.owner < self.nodes,
                        SlotKind::Padding => true,
                        SlotKind::DeltaLog | SlotKind::Packed => r.owner == 0,
                        SlotKind::Checkpoint => false,
                    };
                    if r.seq > self.cp_seq && owner_ok {
                        e.head = Some((r.kind, r.owner, r.seq));
                        return Ok(());
                    }
                    break;
                }
            }
            e.slot += 1;
            if e.slot == self.spp {
                e.slot = 0;
                e.page += 1;
            }
        }
        Ok(())
    }

    /// A node page that fails its checks (after the retries of a checked read) cannot say
    /// which slots its group maps, and no older copy can stand in for it (it would miss later
    /// trims and deltas): the group is lost, every other group is not. Its LBAs stay unreadable
    /// (reads and writes fail naming the node page, since the NAT still points at it), its data
    /// slots are left invalid for GC to reclaim, and the damaged page itself stays valid so GC
    /// moves it with its original CRC and the damage stays visible to reads and `check`.
    fn keep_damaged_node(&mut self, p: Ppa) -> Result<(), ME<N::Error>> {
        mark(self.valid, self.blocks, self.spp, self.ppb, p)
    }

    /// Recomputes every valid bit and count from the NAT and the node pages. A damaged node
    /// page costs only its own group (see [`Self::keep_damaged_node`]).
    fn rebuild_valid(&mut self) -> Result<(), ME<N::Error>> {
        self.valid.fill(false);
        for b in self.blocks.iter_mut() {
            b.valid = 0;
        }
        // Mapped LBAs per slot: a packed slot's live entries (1 for any other slot).
        self.pack_refs.fill(0);
        for g in 0..self.nodes {
            let p = Ppa(self.nat[g as usize]);
            let idx = self.node_index[g as usize];
            if !p.is_some() && idx == NONE {
                continue;
            }
            if p.is_some() {
                mark(self.valid, self.blocks, self.spp, self.ppb, p)?;
            }
            if idx != NONE {
                for i in 0..LBAS_PER_NODE {
                    let q = self.ptr(idx as usize, i);
                    if q.is_some() {
                        mark(self.valid, self.blocks, self.spp, self.ppb, q)?;
                        packed::count_ref(self.pack_refs, q);
                    }
                }
                for i in 0..crate::format::node::COMPACT_PAGES {
                    let c = self.compact_ptr(idx as usize, i);
                    if c.is_some() {
                        mark(self.valid, self.blocks, self.spp, self.ppb, c)?;
                    }
                }
                continue;
            }
            let buf = match self.buffered_log(p) {
                Some(log) => log,
                None => {
                    match self.read_slot_checked(p, SlotKind::Node, g, SCRATCH, Cause::Checkpoint) {
                        Ok(_) => SCRATCH,
                        Err(Error::Corrupted(_)) => {
                            self.keep_damaged_node(p)?;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            let at = self.slot_offset(buf, p.0 % self.spp);
            let Ok(view) =
                NodeView::new_checked(&self.bufs[at..at + SLOT_BYTES], g, self.total_slots)
            else {
                self.keep_damaged_node(p)?;
                continue;
            };
            for i in 0..view.extent() {
                let q = view.pointer(i);
                if q.is_some() {
                    mark(self.valid, self.blocks, self.spp, self.ppb, q)?;
                    packed::count_ref(self.pack_refs, q);
                }
            }
            for i in 0..crate::format::node::COMPACT_PAGES {
                let c = view.compact(i);
                if c.is_some() {
                    mark(self.valid, self.blocks, self.spp, self.ppb, c)?;
                }
            }
        }
        Ok(())
    }
}

fn mark<E>(
    valid: &mut BitSlice<u32, Lsb0>,
    blocks: &mut [BlockInfo],
    spp: u32,
    ppb: u32,
    q: Ppa,
) -> Result<(), ME<E>> {
    let b = (q.0 / spp / ppb) as usize;
    if matches!(blocks[b].state, st::BAD | st::RESERVED | st::PREBAD) {
        return Err(mcorrupt("mapping points into a bad or reserved block", q.0));
    }
    if !valid[q.0 as usize] {
        valid.set(q.0 as usize, true);
        blocks[b].valid += 1;
    }
    Ok(())
}

impl Scan {
    fn new(block: u32, start: u32) -> Scan {
        Scan {
            block,
            start,
            end: start,
            page: start,
            slot: 0,
            head: None,
        }
    }
}
