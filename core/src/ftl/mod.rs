//! The log-structured, page-mapped flash translation layer.
//!
//! Owns the mapping from 4 KiB logical blocks to NAND slots and everything that keeps it alive
//! across power cuts:
//!
//! - three open logs (hot host data, cold GC-relocated data, node pages), each with a one-page
//!   write buffer, since NAND pages are programmed whole;
//! - node pages, each mapping [`LBAS_PER_NODE`] consecutive LBAs, found through the node address
//!   table (NAT) and cached in RAM ([`cache`]);
//! - per-block valid bitmaps and counts, greedy GC in the write path and cost-benefit GC plus
//!   static wear levelling when idle ([`gc`]);
//! - checkpoints in rotating packs and roll-forward recovery from spare records ([`checkpoint`],
//!   [`recovery`]);
//! - the delta engine's glue (`delta`): updates kept as inline deltas in the node page, their
//!   eviction to compact pages or rebuilt full pages, and idle restores (a host write covering
//!   a whole group is no update of single blocks: [`Ftl::write_blocks`] writes it whole), and
//!   a RAM cache of compact page slots in memory the caller may lend (`compact_cache`);
//! - coded blocks (`packed`): float-weight blocks stored ZipNN-coded, packed as a byte stream
//!   over slots so a page holds more blocks than it has slots.
//!
//! # Durability rules (why the order of writes is what it is)
//!
//! 1. A node page is never written while a data slot it points to sits in a write buffer: the
//!    buffer holding any LBA of that node's group is programmed first.
//! 2. Every mapping change is replayable after the last checkpoint: data slots carry their LBA
//!    and a global sequence number; trims, which leave no slot, mark their node *unlogged* and a
//!    flush writes such nodes.
//! 3. A block freed since the last checkpoint is erased only after a *barrier* (all write buffers
//!    programmed, unlogged nodes written), and never if it was a log head recorded by that
//!    checkpoint: then every event roll-forward could lose with the block is superseded by a
//!    durable later one. See docs/format/ftl.md.

pub mod cache;
pub mod config;
pub mod error;

mod checkpoint;
mod compact_cache;
mod delta;
mod gc;
mod packed;
mod recovery;

use bitvec::prelude::*;

use crate::delta::hotness::Classifier;
use crate::format::{crc32, write_node, NodeView, Ppa, SlotKind, SpareRecord};
use crate::nand::{BlockId, FaultKind, Geometry, Nand, NandFault, PageId, SLOT_BYTES};
use crate::stats::{Cause, Stats};
pub use cache::CachePolicy;
use cache::EvictionPolicy;
pub use config::{
    blocks_for_capacity, min_blocks, BlockInfo, CacheSlot, FtlConfig, FtlMemory, Lba,
    MemoryRequirements, COMPACT_CACHE_ENTRY_BYTES, CP_AREA_BLOCKS, LBAS_PER_NODE,
};
use config::{CP_RESERVE, GC_LOW, MAX_SLOTS_PER_PAGE};
use delta::Dropped;
use error::corrupted;
pub use error::{ConfigError, Corruption, Error, FormatError, MountError};

const NONE: u32 = u32::MAX;
const SPARE: usize = crate::format::spare::LEN;

/// Log and buffer indices.
/// Free blocks at or below which a run covering a whole group is written whole (see
/// [`Ftl::write_blocks`]): three times the level at which host writes start GC.
pub const STREAM_SHORT_FREE: u32 = 3 * GC_LOW;

const HOT: usize = 0;
const COLD: usize = 1;
const NODE: usize = 2;
const SCRATCH: usize = 3;
const GCBUF: usize = 4;
const RETRY: usize = 5;
/// Delta engine: the encoded delta of the write in progress.
const DBUF: usize = 6;
/// Delta engine: a base block being patched.
const BBUF: usize = 7;
/// Delta engine: the open delta log slot.
const LBUF: usize = 8;
/// Coded blocks: the record of the host write in progress (and of host reads).
const ZBUF: usize = 9;
/// Coded blocks: the page holding a record's first part, when it is not the page read.
const PBUF: usize = 10;
/// Coded blocks: a record GC is moving.
const GZBUF: usize = 11;
/// Coded blocks: a record a program-failure retry is moving.
const RZBUF: usize = 12;
/// Blocks holding delta log slots that may not be erased before the next checkpoint.
const DLOG_BLOCKS: usize = 32;
/// Where a cached node image keeps the group's compact page addresses, `COMPACT_PAGES` u32s
/// after the 256 pointers (the inline area, at most `inline_delta::AREA` bytes at the end,
/// never reaches them).
const CACHE_COMPACT: usize = 4 * LBAS_PER_NODE as usize;
/// Compact pages per group.
const COMPACT_PAGES: usize = crate::format::node::COMPACT_PAGES;

/// Open a checkpoint after this many blocks were opened since the last one: bounds
/// roll-forward work at mount.
const CP_INTERVAL: u32 = 24;
/// Reads of a page that failed a CRC before the failure is believed (bit flips are transient).
const READ_ATTEMPTS: u32 = 8;

/// Block states kept in RAM.
mod st {
    pub const FREE: u8 = 0;
    pub const OPEN: u8 = 1;
    pub const FULL: u8 = 2;
    /// No valid data left; erasable after a barrier (or the next checkpoint for log heads).
    pub const PREFREE: u8 = 3;
    pub const BAD: u8 = 4;
    /// Checkpoint area.
    pub const RESERVED: u8 = 5;
    /// A program failed here: move its data out, then retire it.
    pub const RETIRING: u8 = 6;
    /// Retiring block emptied; marked bad at the next barrier.
    pub const PREBAD: u8 = 7;
}

#[derive(Clone, Copy, Debug)]
struct Log {
    block: u32,
    /// Next page to program in `block`.
    page: u32,
    /// Slots filled in the buffer.
    fill: u32,
}

impl Log {
    const CLOSED: Log = Log {
        block: NONE,
        page: 0,
        fill: 0,
    };
}

/// Results of [`Ftl::check`]: counts of problems found, by kind. All zero means consistent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Node pages read.
    pub nodes_checked: u32,
    /// LBAs mapped.
    pub lbas_mapped: u64,
    /// Node pages that failed their spare record, CRC or header checks.
    pub bad_nodes: u32,
    /// Mapped data slots whose spare record is missing or damaged.
    pub bad_records: u32,
    /// Mapped data slots whose record names another LBA or kind.
    pub wrong_owner: u32,
    /// Mapped data slots whose data fails its CRC.
    pub bad_data_crc: u32,
    /// Mapped slots whose valid bit is clear.
    pub bitmap_mismatches: u32,
    /// Blocks whose valid count differs from their bitmap.
    pub valid_count_mismatches: u32,
    /// Valid bits set for slots nothing maps (leaks) or mapped twice.
    pub unreferenced_valid: u64,
    /// NAT entries pointing outside the array or into bad/reserved blocks.
    pub nat_errors: u32,
    /// The first damage found, naming where it is (a node page names its group and LBAs).
    pub first_problem: Option<Corruption>,
}

impl CheckReport {
    /// Total problems found.
    pub fn problems(&self) -> u64 {
        self.bad_nodes as u64
            + self.bad_records as u64
            + self.wrong_owner as u64
            + self.bad_data_crc as u64
            + self.bitmap_mismatches as u64
            + self.valid_count_mismatches as u64
            + self.unreferenced_valid
            + self.nat_errors as u64
    }
}

/// The flash translation layer over a NAND array `N`, using RAM lent for `'a`.
pub struct Ftl<'a, N: Nand> {
    nand: N,
    geo: Geometry,
    cfg: FtlConfig,
    spp: u32,
    ppb: u32,
    total_slots: u32,
    nodes: u32,
    nat: &'a mut [u32],
    node_index: &'a mut [u32],
    cache_meta: &'a mut [CacheSlot],
    cache_data: &'a mut [u8],
    blocks: &'a mut [BlockInfo],
    valid: &'a mut BitSlice<u32, Lsb0>,
    bufs: &'a mut [u8],
    stride: usize,
    policy: CachePolicy,
    /// Keep updates of blocks already on flash as inline deltas.
    delta_on: bool,
    /// Power-loss protection: the write buffers count as durable (see [`Ftl::set_plp`]).
    plp: bool,
    /// For each slot of the hot log's buffer written by a host write: the base CRC of the
    /// delta that write dropped, which a rewrite of the slot in place must not take
    /// ([`Ftl::overwrite_buffered`]).
    hot_dropped: [Dropped; MAX_SLOTS_PER_PAGE as usize],
    classifier: Classifier,
    /// The open delta log slot (in `LBUF`).
    dlog: crate::delta::log::LogBuilder,
    dlog_busy: bool,
    /// Blocks with delta log slots written since the last checkpoint: roll-forward needs them
    /// until a checkpoint has written every node they changed.
    dlog_blocks: heapless::Vec<u32, DLOG_BLOCKS>,
    /// Store float-weight blocks ZipNN-coded in packed slots.
    compress_on: bool,
    weights: Option<&'a mut crate::codec::weights::WeightsMemory>,
    /// Compact slots read lately (see [`compact_cache`]).
    ccache: compact_cache::CompactCache<'a>,
    /// Mapped LBAs per packed slot (see [`packed`]).
    pack_refs: &'a mut [u8],
    /// The packed slot being filled in the hot and cold logs' buffers.
    pack: [Option<packed::OpenPack>; 2],
    logs: [Log; 3],
    next_seq: u64,
    cp_seq: u64,
    cp_block: u32,
    cp_page: u32,
    /// Log heads the last checkpoint recorded: roll-forward starts inside them, so they may not
    /// be reused before the next checkpoint.
    cp_heads: [u32; 3],
    free_count: u32,
    prefree_count: u32,
    /// At the last allocation: whether the slots in use exceed what the device holds with
    /// every LBA mapped and no delta beyond the inline areas, by more than the delta store's
    /// budget (`delta` module docs, "The delta store on a full device").
    delta_store_full: bool,
    blocks_since_cp: u32,
    /// Blocks allocated since the last wear-levelling move: moves are rate-limited so a cold
    /// block's data, landing in the least-worn free block, is not moved again at once.
    blocks_since_wl: u32,
    clock: u64,
    /// During roll-forward: the sequence number node write-backs are stamped with (the last
    /// event applied), and bitmaps are not maintained (they are rebuilt afterwards).
    replay_seq: Option<u64>,
    in_checkpoint: bool,
    in_gc: bool,
    in_barrier: bool,
    retry_busy: bool,
    unlogged: u32,
    stats: Stats,
}

type R<T, E> = Result<T, Error<E>>;

impl<'a, N: Nand> Ftl<'a, N> {
    fn assemble(nand: N, geo: Geometry, cfg: FtlConfig, mem: FtlMemory<'a>) -> Self {
        let req = mem.requirements(&geo, &cfg);
        let spp = geo.slots_per_page();
        let stride = (geo.page_bytes + geo.spare_bytes) as usize;
        let FtlMemory {
            nat,
            node_index,
            cache_meta,
            cache_data,
            blocks,
            valid_bits,
            page_buffers,
            pack_refs,
            compact_cache,
            weights,
        } = mem;
        let total_slots = geo.total_pages() * spp;
        let valid = &mut BitSlice::from_slice_mut(&mut valid_bits[..req.bitmap_words])
            [..total_slots as usize];
        valid.fill(false);
        let nat = &mut nat[..req.nodes];
        nat.fill(NONE);
        let node_index = &mut node_index[..req.nodes];
        node_index.fill(NONE);
        let cache_meta = &mut cache_meta[..req.cache_slots];
        cache_meta.fill(CacheSlot::default());
        let blocks = &mut blocks[..req.blocks];
        blocks.fill(BlockInfo::default());
        let pack_refs = &mut pack_refs[..req.slots];
        pack_refs.fill(0);
        Ftl {
            nand,
            geo,
            cfg,
            spp,
            ppb: geo.pages_per_block,
            total_slots,
            nodes: cfg.nodes(),
            nat,
            node_index,
            cache_meta,
            cache_data: &mut cache_data[..req.cache_slots * SLOT_BYTES],
            blocks,
            valid,
            bufs: &mut page_buffers[..req.page_buffer_bytes],
            stride,
            policy: CachePolicy::Lru,
            delta_on: false,
            plp: false,
            hot_dropped: [Dropped::Unknown; MAX_SLOTS_PER_PAGE as usize],
            classifier: Classifier::default(),
            dlog: Default::default(),
            dlog_busy: false,
            dlog_blocks: heapless::Vec::new(),
            compress_on: false,
            weights,
            ccache: compact_cache::CompactCache::new(compact_cache),
            pack_refs,
            pack: [None, None],
            logs: [Log::CLOSED; 3],
            next_seq: 1,
            cp_seq: 0,
            cp_block: NONE,
            cp_page: 0,
            cp_heads: [NONE; 3],
            free_count: 0,
            delta_store_full: false,
            prefree_count: 0,
            blocks_since_cp: 0,
            blocks_since_wl: 0,
            clock: 0,
            replay_seq: None,
            in_checkpoint: false,
            in_gc: false,
            in_barrier: false,
            retry_busy: false,
            unlogged: 0,
            stats: Stats::default(),
        }
    }

    /// Formats the NAND for `config`: erases every good block, writes an empty mapping and a
    /// first checkpoint.
    pub fn format(
        mut nand: N,
        config: FtlConfig,
        mem: FtlMemory<'a>,
    ) -> Result<Self, FormatError<N::Error>> {
        let geo = nand.geometry();
        config.check(&geo).map_err(FormatError::Config)?;
        let req = mem.requirements(&geo, &config);
        if let Err((what, needed)) = mem.fits(&req) {
            return Err(FormatError::BufferTooSmall { what, needed });
        }
        // Detect bad blocks before assembling (assemble takes the NAND by value).
        let _ = &mut nand;
        let mut ftl = Self::assemble(nand, geo, config, mem);
        let mut good_cp = 0;
        let mut good_data = 0;
        for b in 0..geo.blocks {
            let reserved = b < CP_AREA_BLOCKS;
            let state = if ftl.nand.is_bad(BlockId(b)).map_err(FormatError::Nand)? {
                st::BAD
            } else {
                match ftl.nand.erase(BlockId(b)) {
                    Ok(()) => {
                        ftl.blocks[b as usize].erase_count = 1;
                        ftl.stats.erases += 1;
                        if reserved {
                            good_cp += 1;
                            st::RESERVED
                        } else {
                            good_data += 1;
                            st::FREE
                        }
                    }
                    Err(e) if e.kind() == FaultKind::EraseFailed => {
                        ftl.nand.mark_bad(BlockId(b)).map_err(FormatError::Nand)?;
                        ftl.stats.retired_blocks += 1;
                        st::BAD
                    }
                    Err(e) => return Err(FormatError::Nand(e)),
                }
            };
            ftl.blocks[b as usize].state = state;
        }
        let spb = ftl.spp * ftl.ppb;
        let needed = min_blocks(spb, config.logical_blocks) - CP_AREA_BLOCKS;
        if good_cp < 2 {
            return Err(FormatError::NoSpace);
        }
        if good_data < needed {
            return Err(FormatError::Config(ConfigError::TooFewBlocks {
                needed: needed + CP_AREA_BLOCKS,
                available: good_data + good_cp,
            }));
        }
        ftl.free_count = good_data;
        ftl.checkpoint()?;
        Ok(ftl)
    }

    /// Mounts a formatted NAND: finds the newest valid checkpoint, rolls forward every slot
    /// written after it, rebuilds the valid bitmaps and writes a fresh checkpoint.
    pub fn mount(nand: N, mem: FtlMemory<'a>) -> Result<Self, MountError<N::Error>> {
        recovery::mount(nand, mem)
    }

    /// Reads the configuration a formatted NAND was set up with, so a host can size the memory
    /// to lend to [`Ftl::mount`]. `scratch` must hold one page plus its spare area.
    pub fn probe(nand: &mut N, scratch: &mut [u8]) -> Result<FtlConfig, MountError<N::Error>> {
        recovery::probe(nand, scratch)
    }

    /// Gives the NAND back (tests remount it after a power cut).
    pub fn into_nand(self) -> N {
        self.nand
    }

    /// The NAND, for inspection.
    pub fn nand(&self) -> &N {
        &self.nand
    }

    /// The NAND, for fault injection in tests.
    pub fn nand_mut(&mut self) -> &mut N {
        &mut self.nand
    }

    /// Counters since mount.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Erases of block `b` over the device's life (as of the last checkpoint plus this mount).
    pub fn erase_count(&self, b: BlockId) -> u32 {
        self.blocks.get(b.0 as usize).map_or(0, |i| i.erase_count)
    }

    /// Whether block `b` is bad (factory or retired).
    pub fn is_bad_block(&self, b: BlockId) -> bool {
        self.blocks
            .get(b.0 as usize)
            .is_some_and(|i| matches!(i.state, st::BAD | st::PREBAD))
    }

    /// Whether block `b` is reserved for checkpoints.
    pub fn is_reserved_block(&self, b: BlockId) -> bool {
        self.blocks
            .get(b.0 as usize)
            .is_some_and(|i| i.state == st::RESERVED)
    }

    /// 4 KiB logical blocks exported.
    pub fn logical_blocks(&self) -> u32 {
        self.cfg.logical_blocks
    }

    /// The configuration in force.
    pub fn config(&self) -> FtlConfig {
        self.cfg
    }

    /// The NAND geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Free erase blocks right now.
    pub fn free_blocks(&self) -> u32 {
        self.free_count
    }

    /// Turns delta compression of updates on or off (a RAM choice, off after format and
    /// mount). Deltas already on flash stay readable either way.
    pub fn set_delta(&mut self, on: bool) {
        self.delta_on = on;
    }

    /// Whether updates are kept as deltas.
    pub fn delta_enabled(&self) -> bool {
        self.delta_on
    }

    /// Turns power-loss protection on or off (a RAM choice, off after format and mount).
    ///
    /// On, the device is an SSD with a hold-up capacitor: its RAM write buffers count as
    /// durable, so [`Ftl::flush`] programs nothing, and whoever hosts the FTL must call
    /// [`Ftl::power_fail`] when power fails (the capacitor's energy) and before it stops. What
    /// a flush saves is the padding of partly filled pages: on 16 KiB pages a flush after one
    /// 4 KiB write otherwise programs 12 KiB of padding.
    pub fn set_plp(&mut self, on: bool) {
        self.plp = on;
    }

    /// Whether power-loss protection is on.
    pub fn plp_enabled(&self) -> bool {
        self.plp
    }

    /// Turns storing float-weight blocks ZipNN-coded on or off (a RAM choice, off after format
    /// and mount). Coded blocks already on flash stay readable either way. Returns whether it
    /// is on: it cannot be without the codec memory ([`FtlMemory::weights`]).
    pub fn set_compress(&mut self, on: bool) -> bool {
        self.compress_on = on && self.weights.is_some();
        self.compress_on
    }

    /// Whether float-weight blocks are stored coded.
    pub fn compress_enabled(&self) -> bool {
        self.compress_on
    }

    /// Chooses the node cache's eviction policy (LRU after format and mount).
    pub fn set_cache_policy(&mut self, policy: CachePolicy) {
        self.policy = policy;
    }

    // ----- host operations -------------------------------------------------------------------

    fn check_range(&self, lba: u32, count: u32) -> R<(), N::Error> {
        let cap = self.cfg.logical_blocks;
        if lba >= cap || count > cap - lba {
            return Err(Error::OutOfRange {
                lba,
                count,
                capacity: cap,
            });
        }
        Ok(())
    }

    /// Compact page slots the compact cache holds at most (0: no cache).
    pub fn compact_cache_slots(&self) -> usize {
        self.ccache.capacity()
    }

    /// Reads one logical block. Never-written and trimmed blocks read as zeros; a block whose
    /// bytes on flash fail a check is an error, never data.
    pub fn read(&mut self, lba: Lba, buf: &mut [u8; SLOT_BYTES]) -> R<(), N::Error> {
        self.check_range(lba.0, 1)?;
        self.stats.host_reads += 1;
        self.stats.host_read_bytes += SLOT_BYTES as u64;
        let before = self.stats.nand_reads();
        let r = self.read_inner(lba, buf);
        self.stats.host_read_nand_reads += self.stats.nand_reads() - before;
        r
    }

    fn read_inner(&mut self, lba: Lba, buf: &mut [u8; SLOT_BYTES]) -> R<(), N::Error> {
        let g = lba.0 / LBAS_PER_NODE;
        if self.nat[g as usize] == NONE && self.node_index[g as usize] == NONE {
            buf.fill(0);
            return Ok(());
        }
        let s = self.node_slot(g)?;
        let clock = self.clock;
        self.cache_meta[s].heat.read(clock);
        let off = lba.0 % LBAS_PER_NODE;
        let p = self.ptr(s, off);
        if !p.is_some() {
            buf.fill(0);
            return Ok(());
        }
        if self.cache_meta[s].inline_len > 0 && self.read_through_delta(s, lba.0, p, buf)? {
            return Ok(());
        }
        if self.read_packed_buffered(p, lba.0, buf)? {
            return Ok(());
        }
        if let Some(log) = self.buffered_log(p) {
            let at = self.slot_offset(log, p.0 % self.spp);
            buf.copy_from_slice(&self.bufs[at..at + SLOT_BYTES]);
            return Ok(());
        }
        if self.pack_refs.get(p.0 as usize) == Some(&0)
            && self.read_data_slot_into(p, lba.0, buf)?
        {
            return Ok(());
        }
        if self.read_mapped_slot(p, lba.0, SCRATCH, Cause::Data)? == SlotKind::Packed {
            return self.read_packed_scratch(p, lba.0, buf);
        }
        let at = self.slot_offset(SCRATCH, p.0 % self.spp);
        buf.copy_from_slice(&self.bufs[at..at + SLOT_BYTES]);
        Ok(())
    }

    /// Reads plain data slot `p` of `lba` straight into `buf`, checked as
    /// [`Ftl::read_mapped_slot`] checks it (record, owner, data CRC, retried reads), without the
    /// copy out of a page buffer. `Ok(false)` (nothing read into `buf` that counts) when the
    /// slot's record says it is packed after all: only damage gets there, and the caller's
    /// page-buffer path sorts it out.
    fn read_data_slot_into(
        &mut self,
        p: Ppa,
        lba: u32,
        buf: &mut [u8; SLOT_BYTES],
    ) -> R<bool, N::Error> {
        if p.0 >= self.total_slots {
            return Err(Error::Corrupted(corrupted(
                "slot address out of range",
                p.0,
            )));
        }
        let (page, slot) = (p.0 / self.spp, p.0 % self.spp);
        let mut why = "";
        for attempt in 0..READ_ATTEMPTS {
            let start = SCRATCH * self.stride;
            let (data, spare) =
                self.bufs[start..start + self.stride].split_at_mut(self.geo.page_bytes as usize);
            self.nand
                .read_slot_into(PageId(page), slot, buf, data, spare)
                .map_err(Error::Nand)?;
            self.stats.reads[Cause::Data as usize] += 1;
            let sp = self.spare_offset(SCRATCH) + slot as usize * SPARE;
            match SpareRecord::parse(&self.bufs[sp..sp + SPARE]) {
                Ok(r) if r.kind == SlotKind::Packed => return Ok(false),
                Ok(r) if r.kind != SlotKind::Data => why = "slot holds another kind of record",
                Ok(r) if r.owner != lba => why = "slot belongs to another block",
                Ok(r) if crc32(&[&buf[..]]) != r.data_crc => why = "data CRC mismatch",
                Ok(_) => {
                    if attempt > 0 {
                        self.stats.read_retries += 1;
                    }
                    return Ok(true);
                }
                Err(crate::format::RecordError::Erased) => why = "slot reads erased",
                Err(crate::format::RecordError::Damaged) => why = "spare record damaged",
            }
        }
        Err(Error::Corrupted(corrupted(why, p.0)))
    }

    /// Writes one logical block. On return the data is in the FTL's write buffer (volatile,
    /// like a drive cache); [`Ftl::flush`] makes it durable.
    pub fn write(&mut self, lba: Lba, data: &[u8; SLOT_BYTES]) -> R<(), N::Error> {
        self.check_range(lba.0, 1)?;
        self.write_one(lba.0, data, self.delta_on)
    }

    /// Writes consecutive logical blocks from `first`; `data` is a whole number of blocks
    /// (anything else is `OutOfRange`). Like [`Ftl::write`] for each block, except that, on a
    /// device short of space (at most [`STREAM_SHORT_FREE`] free blocks), the blocks of a group
    /// of [`LBAS_PER_NODE`] LBAs that `data` covers entirely are written whole, with no delta
    /// attempt. A host rewriting a whole group at once (a sequential stream) would otherwise
    /// keep every old block alive as a base, and on a full device GC must copy them: on a
    /// 1 MiB sequential rewrite of a full 1 GiB device the NAND bytes per host byte were 1.86
    /// with deltas and 1.005 without (`bench/nbd.sh` seqwrite), and the delta attempts were most
    /// of the firmware's time. With room to spare the deltas stay: a fine-tuned checkpoint
    /// rewritten in 1 MiB requests costs 0.05 of coding it whole (`bench/zipnn-device.sh`).
    pub fn write_blocks(&mut self, first: Lba, data: &[u8]) -> R<(), N::Error> {
        let count = u32::try_from(data.len() / SLOT_BYTES).unwrap_or(u32::MAX);
        if !data.len().is_multiple_of(SLOT_BYTES) {
            return Err(Error::OutOfRange {
                lba: first.0,
                count,
                capacity: self.cfg.logical_blocks,
            });
        }
        self.check_range(first.0, count)?;
        let end = first.0 + count;
        for (i, block) in data.chunks_exact(SLOT_BYTES).enumerate() {
            let lba = first.0 + i as u32;
            let g = lba / LBAS_PER_NODE;
            let covered = g * LBAS_PER_NODE >= first.0 && (g + 1) * LBAS_PER_NODE <= end;
            let stream = covered && self.free_count <= STREAM_SHORT_FREE;
            let block: &[u8; SLOT_BYTES] = block.try_into().expect("chunks of SLOT_BYTES");
            self.write_one(lba, block, self.delta_on && !stream)?;
        }
        Ok(())
    }

    /// Writes one in-range logical block, trying a delta first when `delta` (the delta engine
    /// on, and not a block of a whole-group run).
    fn write_one(&mut self, lba: u32, data: &[u8; SLOT_BYTES], delta: bool) -> R<(), N::Error> {
        let lba = Lba(lba);
        let g = lba.0 / LBAS_PER_NODE;
        let off = lba.0 % LBAS_PER_NODE;
        if self.overwrite_buffered(lba.0, data)? {
            self.stats.buffer_overwrites += 1;
            self.stats.host_writes += 1;
            self.stats.host_write_bytes += SLOT_BYTES as u64;
            self.stats.lifetime_host_write_bytes += SLOT_BYTES as u64;
            return Ok(());
        }
        if !delta
            && self.delta_on
            && (self.nat[g as usize] != NONE || self.node_index[g as usize] != NONE)
        {
            // The write's heat, counted where a delta attempt would have counted it, so the
            // hotness classes do not depend on whether the write came in a long run.
            let s = self.node_slot(g)?;
            let clock = self.clock;
            self.cache_meta[s].heat.write(clock);
        }
        // A small update of a plain block on flash is a delta of a few hundred bytes; coding the
        // whole block keeps two thirds of it at best. So the delta goes first, and a block the
        // delta engine declines (no plain base, too different, no room) may still be coded.
        if (delta && self.write_delta(lba.0, data)?)
            || (self.compress_on && self.write_coded(lba.0, data)?)
        {
            self.stats.host_writes += 1;
            self.stats.host_write_bytes += SLOT_BYTES as u64;
            self.stats.lifetime_host_write_bytes += SLOT_BYTES as u64;
            return Ok(());
        }
        let s = self.room_and_node(HOT, g)?;
        if !self.delta_on {
            // (counted above otherwise)
            let clock = self.clock;
            self.cache_meta[s].heat.write(clock);
        }
        let slot = self.logs[HOT].fill;
        let at = self.slot_offset(HOT, slot);
        self.bufs[at..at + SLOT_BYTES].copy_from_slice(data);
        let crc = crc32(&[data]);
        let new = self.commit_slot(HOT, SlotKind::Data, lba.0, crc, Cause::Data);
        let old = self.ptr(s, off);
        self.set_ptr(s, off, new);
        self.cache_meta[s].dirty = true;
        if old.is_some() {
            self.unref(old, lba.0);
        }
        // The block is whole again: its delta (inline or marker) is dead.
        self.hot_dropped[slot as usize] = self.drop_delta(s, off, Some(crc))?;
        self.stats.host_writes += 1;
        self.stats.host_write_bytes += SLOT_BYTES as u64;
        self.stats.lifetime_host_write_bytes += SLOT_BYTES as u64;
        Ok(())
    }

    /// Replaces `lba`'s block in place when its current version is a plain data slot still in
    /// the hot log's buffer (not yet programmed), as a drive's write cache absorbs a rewrite:
    /// no slot is spent. The slot keeps its sequence number (a log's slots stay in sequence
    /// order for roll-forward); its record takes the new data CRC. Nothing else can name the
    /// old contents: a delta's base is always a programmed slot, and a node copy written since
    /// points to this slot, which now holds the newest version. Returns whether it did.
    fn overwrite_buffered(&mut self, lba: u32, data: &[u8; SLOT_BYTES]) -> R<bool, N::Error> {
        let g = lba / LBAS_PER_NODE;
        if self.nat[g as usize] == NONE && self.node_index[g as usize] == NONE {
            return Ok(false);
        }
        let s = self.node_slot(g)?;
        let p = self.ptr(s, lba % LBAS_PER_NODE);
        if !p.is_some() || self.buffered_log(p) != Some(HOT) {
            return Ok(false);
        }
        let slot = p.0 % self.spp;
        let sp = self.spare_offset(HOT) + slot as usize * SPARE;
        let Ok(mut record) = SpareRecord::parse(&self.bufs[sp..sp + SPARE]) else {
            return Ok(false);
        };
        // Only a slot a host write put there, whose dropped delta (if any) is known: roll-forward
        // keeps an older copy of that delta over a slot with its base's CRC (a GC move).
        let crc = crc32(&[data]);
        if record.kind != SlotKind::Data
            || record.owner != lba
            || !self.hot_dropped[slot as usize].differs_from(crc)
        {
            return Ok(false);
        }
        let at = self.slot_offset(HOT, slot);
        self.bufs[at..at + SLOT_BYTES].copy_from_slice(data);
        record.data_crc = crc;
        record.write(&mut self.bufs[sp..sp + SPARE]);
        let clock = self.clock;
        self.cache_meta[s].heat.write(clock);
        Ok(true)
    }

    /// Unmaps `count` logical blocks from `first`; they read as zeros afterwards. Costs one
    /// node lookup per group of [`LBAS_PER_NODE`] blocks that was ever written.
    pub fn trim(&mut self, first: Lba, count: u32) -> R<(), N::Error> {
        self.check_range(first.0, count)?;
        self.stats.host_trims += 1;
        let end = first.0 + count;
        let mut lba = first.0;
        while lba < end {
            let g = lba / LBAS_PER_NODE;
            let group_end = ((g + 1) * LBAS_PER_NODE).min(end);
            if self.nat[g as usize] != NONE || self.node_index[g as usize] != NONE {
                let s = self.node_slot(g)?;
                let mut changed = false;
                for l in lba..group_end {
                    let off = l % LBAS_PER_NODE;
                    let p = self.ptr(s, off);
                    if p.is_some() {
                        self.set_ptr(s, off, Ppa::NONE);
                        self.unref(p, l);
                        self.drop_delta(s, off, None)?;
                        changed = true;
                    }
                }
                if changed {
                    let m = &mut self.cache_meta[s];
                    m.dirty = true;
                    if !m.unlogged {
                        m.unlogged = true;
                        self.unlogged += 1;
                    }
                }
            }
            lba = group_end;
        }
        Ok(())
    }

    /// Makes everything acknowledged so far survive any later power cut: programs every write
    /// buffer, or, with power-loss protection on, nothing (the buffers are durable then; see
    /// [`Ftl::set_plp`]).
    pub fn flush(&mut self) -> R<(), N::Error> {
        self.stats.host_flushes += 1;
        if !self.plp {
            self.barrier()?;
        }
        Ok(())
    }

    /// The power-fail dump: programs every write buffer and everything a flush without
    /// power-loss protection would, so the next mount finds every acknowledged write. Call it
    /// when power fails with power-loss protection on, and before a clean stop either way.
    pub fn power_fail(&mut self) -> R<(), N::Error> {
        self.barrier()?;
        Ok(())
    }

    /// Whether a logical block is mapped (written and not trimmed).
    pub fn is_mapped(&mut self, lba: Lba) -> R<bool, N::Error> {
        self.check_range(lba.0, 1)?;
        Ok(self.lookup(lba.0)?.is_some())
    }

    /// The slot a logical block lives in, if mapped (for tools and fault-injection tests).
    /// A slot still in a write buffer is reported too; flush first to pin it to flash.
    pub fn locate(&mut self, lba: Lba) -> R<Option<Ppa>, N::Error> {
        self.check_range(lba.0, 1)?;
        let p = self.lookup(lba.0)?;
        Ok(p.is_some().then_some(p))
    }

    /// The NAT entry of node `g` (where its newest copy lives), for fault-injection tests.
    pub fn node_location(&self, g: u32) -> Option<Ppa> {
        self.nat
            .get(g as usize)
            .map(|&p| Ppa(p))
            .filter(|p| p.is_some())
    }

    /// One bounded step of background work: retire failing blocks, checkpoint, cost-benefit GC
    /// or static wear levelling. Returns whether more work is pending.
    pub fn idle(&mut self) -> R<bool, N::Error> {
        if self.idle_step()? {
            return Ok(true);
        }
        self.restore_step()
    }

    /// Offline consistency check: reads every node page and every mapped slot, verifies
    /// records, owners and CRCs, and compares bitmaps and valid counts with the mapping.
    pub fn check(&mut self) -> R<CheckReport, N::Error> {
        let mut rep = CheckReport::default();
        let mut referenced: u64 = 0;
        let mut ptrs = [NONE; LBAS_PER_NODE as usize];
        for g in 0..self.nodes {
            let nat = Ppa(self.nat[g as usize]);
            if nat.is_some() {
                let b = (nat.0 / self.spp / self.ppb) as usize;
                if nat.0 >= self.total_slots
                    || matches!(self.blocks[b].state, st::BAD | st::RESERVED | st::FREE)
                {
                    rep.nat_errors += 1;
                    continue;
                }
                referenced += 1;
                if !self.valid[nat.0 as usize] {
                    rep.bitmap_mismatches += 1;
                }
            }
            let idx = self.node_index[g as usize];
            let mut compact = [Ppa::NONE; COMPACT_PAGES];
            if idx != NONE {
                for (i, p) in ptrs.iter_mut().enumerate() {
                    *p = self.ptr(idx as usize, i as u32).0;
                }
                for (i, c) in compact.iter_mut().enumerate() {
                    *c = self.compact_ptr(idx as usize, i);
                }
            } else if !nat.is_some() {
                continue;
            } else {
                let buf = match self.buffered_log(nat) {
                    Some(log) => log,
                    None => match self.read_slot_checked(
                        nat,
                        SlotKind::Node,
                        g,
                        GCBUF,
                        Cause::Checkpoint,
                    ) {
                        Ok(_) => GCBUF,
                        Err(Error::Corrupted(c)) => {
                            rep.bad_nodes += 1;
                            rep.first_problem.get_or_insert(c.in_node(g));
                            continue;
                        }
                        Err(e) => return Err(e),
                    },
                };
                let at = self.slot_offset(buf, nat.0 % self.spp);
                match NodeView::new_checked(&self.bufs[at..at + SLOT_BYTES], g, self.total_slots) {
                    Ok(view) => {
                        for (i, c) in compact.iter_mut().enumerate() {
                            *c = view.compact(i);
                        }
                        for (i, p) in ptrs.iter_mut().enumerate() {
                            let i = i as u32;
                            *p = if i < view.extent() {
                                view.pointer(i).0
                            } else {
                                NONE
                            };
                        }
                    }
                    Err(_) => {
                        rep.bad_nodes += 1;
                        let c = corrupted("node page fails its checks", nat.0);
                        rep.first_problem.get_or_insert(c.in_node(g));
                        continue;
                    }
                }
            }
            rep.nodes_checked += 1;
            for c in compact.into_iter().filter(|c| c.is_some()) {
                referenced += 1;
                if c.0 >= self.total_slots || !self.valid[c.0 as usize] {
                    rep.bitmap_mismatches += 1;
                }
            }
            for (i, &q) in ptrs.iter().enumerate() {
                let q = Ppa(q);
                if !q.is_some() {
                    continue;
                }
                let lba = g * LBAS_PER_NODE + i as u32;
                rep.lbas_mapped += 1;
                referenced += 1;
                if q.0 >= self.total_slots {
                    rep.bad_records += 1;
                    continue;
                }
                if !self.valid[q.0 as usize] {
                    rep.bitmap_mismatches += 1;
                }
                if let Some(pc) = self.check_packed(q, lba)? {
                    // A packed slot serves many LBAs but is one referenced slot.
                    if !pc.counts_slot {
                        referenced -= 1;
                    }
                    match pc.problem {
                        Some(packed::Problem::WrongOwner) => rep.wrong_owner += 1,
                        Some(packed::Problem::BadData) => rep.bad_data_crc += 1,
                        None => {}
                    }
                    continue;
                }
                if self.buffered_log(q).is_some() {
                    continue;
                }
                match self.read_slot_checked(q, SlotKind::Data, lba, SCRATCH, Cause::Checkpoint) {
                    Ok(_) => {}
                    Err(Error::Corrupted(c)) => {
                        rep.first_problem.get_or_insert(c);
                        match c.what {
                            "data CRC mismatch" => rep.bad_data_crc += 1,
                            "slot belongs to another block"
                            | "slot holds another kind of record" => rep.wrong_owner += 1,
                            _ => rep.bad_records += 1,
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let spb = (self.spp * self.ppb) as usize;
        let mut total_bits = 0u64;
        for b in 0..self.blocks.len() {
            let bits = self.valid[b * spb..(b + 1) * spb].count_ones() as u32;
            total_bits += bits as u64;
            if bits != self.blocks[b].valid {
                rep.valid_count_mismatches += 1;
            }
        }
        rep.unreferenced_valid = total_bits.abs_diff(referenced);
        Ok(rep)
    }

    // ----- mapping through the node cache ----------------------------------------------------

    fn lookup(&mut self, lba: u32) -> R<Ppa, N::Error> {
        let g = lba / LBAS_PER_NODE;
        if self.nat[g as usize] == NONE && self.node_index[g as usize] == NONE {
            return Ok(Ppa::NONE);
        }
        let s = self.node_slot(g)?;
        Ok(self.ptr(s, lba % LBAS_PER_NODE))
    }

    fn ptr(&self, s: usize, off: u32) -> Ppa {
        let at = s * SLOT_BYTES + 4 * off as usize;
        Ppa(crate::format::read_u32(self.cache_data, at))
    }

    fn set_ptr(&mut self, s: usize, off: u32, p: Ppa) {
        let at = s * SLOT_BYTES + 4 * off as usize;
        crate::format::write_u32(self.cache_data, at, p.0);
    }

    /// The cache slot holding node `g`, loading it (and evicting another) if needed.
    fn node_slot(&mut self, g: u32) -> R<usize, N::Error> {
        self.clock += 1;
        let idx = self.node_index[g as usize];
        if idx != NONE {
            self.stats.node_cache_hits += 1;
            self.policy
                .touch(&mut self.cache_meta[idx as usize], self.clock);
            return Ok(idx as usize);
        }
        self.stats.node_cache_misses += 1;
        let s = self.policy.victim(self.cache_meta);
        self.evict(s)?;
        self.load_node(g, s)?;
        self.policy.touch(&mut self.cache_meta[s], self.clock);
        Ok(s)
    }

    fn evict(&mut self, s: usize) -> R<(), N::Error> {
        let m = self.cache_meta[s];
        if m.node_plus_one == 0 {
            return Ok(());
        }
        if m.dirty {
            let cause = if m.delta_dirty {
                Cause::Delta
            } else {
                Cause::Node
            };
            self.writeback(s, cause)?;
        }
        let heat = m.heat.at(self.clock);
        self.classifier.classify(heat);
        self.node_index[(m.node_plus_one - 1) as usize] = NONE;
        self.cache_meta[s] = CacheSlot::default();
        Ok(())
    }

    /// Fills cache slot `s` with node `g` from wherever its newest copy is.
    fn load_node(&mut self, g: u32, s: usize) -> R<(), N::Error> {
        let p = Ppa(self.nat[g as usize]);
        let dst = s * SLOT_BYTES;
        let mut base_seq = 0;
        let mut inline_len = 0;
        if !p.is_some() {
            self.cache_data[dst..dst + SLOT_BYTES].fill(0xFF);
        } else {
            let buf = match self.buffered_log(p) {
                Some(log) => {
                    let sp = self.spare_offset(log) + (p.0 % self.spp) as usize * SPARE;
                    base_seq = SpareRecord::parse(&self.bufs[sp..sp + SPARE]).map_or(0, |r| r.seq);
                    log
                }
                None => {
                    base_seq = self
                        .read_slot_checked(p, SlotKind::Node, g, SCRATCH, Cause::Node)
                        .map_err(|e| e.in_node(g))?
                        .seq;
                    SCRATCH
                }
            };
            let at = self.slot_offset(buf, p.0 % self.spp);
            let view = NodeView::new_checked(&self.bufs[at..at + SLOT_BYTES], g, self.total_slots)
                .map_err(|_| {
                    Error::Corrupted(corrupted("node page fails its checks", p.0).in_node(g))
                })?;
            let img = &mut self.cache_data[dst..dst + SLOT_BYTES];
            copy_pointers(&view, img);
            let inline = view.inline_area();
            inline_len = inline.len();
            let old_layout = view.version() < 4;
            img[CACHE_COMPACT + 4 * COMPACT_PAGES..SLOT_BYTES - inline_len].fill(0);
            img[SLOT_BYTES - inline_len..].copy_from_slice(inline);
            for i in 0..COMPACT_PAGES {
                crate::format::write_u32(img, CACHE_COMPACT + 4 * i, view.compact(i).0);
            }
            if old_layout && inline_len > 0 {
                // Versions 2 and 3 laid the inline area out otherwise: converted once here, and
                // written back in today's layout whenever the node is written.
                inline_len =
                    crate::delta::inline::upgrade_v3(img, inline_len).ok_or_else(|| {
                        Error::Corrupted(corrupted("inline delta area malformed", p.0).in_node(g))
                    })?;
            }
        }
        self.cache_meta[s] = CacheSlot {
            node_plus_one: g + 1,
            dirty: false,
            unlogged: false,
            stamp: self.clock,
            base_seq,
            inline_len: inline_len as u16,
            ..CacheSlot::default()
        };
        self.node_index[g as usize] = s as u32;
        Ok(())
    }

    /// Where a node write-back goes: the node log, except during a barrier that will program
    /// a partly filled hot page anyway: the node takes one of its padding slots instead of
    /// opening a node page that would be mostly padding too. (A flush after a compaction or a
    /// trim writes the node; on 16 KiB pages that halves its cost.) Recovery and GC find node
    /// slots by their records in any block.
    fn node_target(&self) -> usize {
        let hot = self.logs[HOT];
        if self.in_barrier
            && !self.in_checkpoint
            && self.replay_seq.is_none()
            && hot.block != NONE
            && hot.fill > 0
            && hot.fill < self.spp
        {
            HOT
        } else {
            NODE
        }
    }

    /// Writes cached node `s` to the node log and points the NAT at the new copy.
    fn writeback(&mut self, s: usize, cause: Cause) -> R<(), N::Error> {
        let g = self.cache_meta[s].node_plus_one - 1;
        // The delta log must not come after a node copy holding its deltas (roll-forward would
        // apply them again, over later changes); a checkpoint drops the log instead.
        if self.cache_meta[s].in_dlog && !self.in_checkpoint {
            self.commit_dlog()?;
        }
        let target = self.node_target();
        // Rule 1: the data this node points to must be on flash before the node is. Data in
        // the target log itself is: it precedes the node in the same page (programmed whole)
        // or in an earlier one.
        for log in [HOT, COLD] {
            if log != target && self.log_holds_group(log, g) {
                self.program_log(log)?;
            }
        }
        self.ensure_room(target)?;
        // During roll-forward a node may hold state newer than the events applied so far (it
        // was loaded from a newer copy): stamp it no older than that copy.
        let saved = self.replay_seq;
        if let Some(x) = saved {
            self.replay_seq = Some(x.max(self.cache_meta[s].base_seq));
        }
        let seq = self.peek_seq();
        let at = self.slot_offset(target, self.logs[target].fill);
        let src = s * SLOT_BYTES;
        {
            let cache = &self.cache_data[src..src + SLOT_BYTES];
            let inline = &cache[SLOT_BYTES - self.cache_meta[s].inline_len as usize..];
            write_node(
                &mut self.bufs[at..at + SLOT_BYTES],
                g,
                seq,
                |i| Ppa(crate::format::read_u32(cache, 4 * i as usize)),
                inline,
                |i| Ppa(crate::format::read_u32(cache, CACHE_COMPACT + 4 * i)),
            );
        }
        let crc = crc32(&[&self.bufs[at..at + SLOT_BYTES]]);
        let new = self.commit_slot(target, SlotKind::Node, g, crc, cause);
        self.replay_seq = saved;
        let old = Ppa(self.nat[g as usize]);
        self.nat[g as usize] = new.0;
        if old.is_some() {
            self.invalidate(old);
        }
        let m = &mut self.cache_meta[s];
        m.dirty = false;
        m.delta_dirty = false;
        m.base_seq = seq;
        if m.unlogged {
            m.unlogged = false;
            self.unlogged -= 1;
        }
        Ok(())
    }

    fn log_holds_group(&self, log: usize, g: u32) -> bool {
        if self.logs[log].block == NONE {
            return false;
        }
        if self.pack_holds_group(log, g) {
            return true;
        }
        let sp = self.spare_offset(log);
        (0..self.logs[log].fill).any(|i| {
            let at = sp + i as usize * SPARE;
            matches!(SpareRecord::parse(&self.bufs[at..at + SPARE]),
                Ok(r) if (r.kind == SlotKind::Data && r.owner / LBAS_PER_NODE == g)
                    || (r.kind == SlotKind::Compact && r.owner == g))
        })
    }

    /// Makes room in `log` and loads node `g`, retrying until both hold at once (loading a node
    /// can program a buffer; making room can run GC, which can evict the node).
    fn room_and_node(&mut self, log: usize, g: u32) -> R<usize, N::Error> {
        for _ in 0..8 {
            self.ensure_room(log)?;
            let s = self.node_slot(g)?;
            if self.has_room(log) {
                return Ok(s);
            }
        }
        Err(Error::NoSpace)
    }

    // ----- logs and buffers ------------------------------------------------------------------

    fn slot_offset(&self, buf: usize, slot: u32) -> usize {
        buf * self.stride + slot as usize * SLOT_BYTES
    }

    fn spare_offset(&self, buf: usize) -> usize {
        buf * self.stride + self.geo.page_bytes as usize
    }

    fn peek_seq(&self) -> u64 {
        self.replay_seq.unwrap_or(self.next_seq)
    }

    fn stamp_seq(&mut self) -> u64 {
        match self.replay_seq {
            Some(s) => s,
            None => {
                let s = self.next_seq;
                self.next_seq += 1;
                s
            }
        }
    }

    fn has_room(&self, log: usize) -> bool {
        self.logs[log].block != NONE
            && self.logs[log].fill < self.spp
            && (log == NODE || self.pack[log].is_none())
    }

    /// Which log's buffer holds slot `p`, if it is not on flash yet.
    fn buffered_log(&self, p: Ppa) -> Option<usize> {
        let page = p.0 / self.spp;
        let slot = p.0 % self.spp;
        (0..3).find(|&l| {
            let log = self.logs[l];
            log.block != NONE && log.block * self.ppb + log.page == page && slot < log.fill
        })
    }

    /// Leaves at least one free slot in `log`'s buffer. Loops because programming a full
    /// buffer can fail and re-append its slots, filling the buffer again.
    fn ensure_room(&mut self, log: usize) -> R<(), N::Error> {
        // The open packed slot takes the buffer's next slot: close it first.
        self.seal_pack(log);
        for _ in 0..8 {
            if self.has_room(log) {
                return Ok(());
            }
            if self.logs[log].block != NONE {
                self.program_log(log)?;
            }
            if self.logs[log].block == NONE {
                self.open_log(log)?;
            }
        }
        Err(Error::NoSpace)
    }

    fn open_log(&mut self, log: usize) -> R<(), N::Error> {
        // No GC or checkpoint while re-appending a failed page: the mapping still points at
        // the failed page until each slot is moved, and a checkpoint must not record that.
        if log == HOT
            && !self.in_checkpoint
            && !self.in_gc
            && !self.retry_busy
            && self.replay_seq.is_none()
        {
            if self.blocks_since_cp >= CP_INTERVAL {
                self.checkpoint()?;
            }
            self.make_space()?;
            if self.logs[HOT].block != NONE {
                return Ok(());
            }
        }
        let b = self.allocate()?;
        self.logs[log] = Log {
            block: b,
            page: 0,
            fill: 0,
        };
        self.blocks[b as usize].state = st::OPEN;
        Ok(())
    }

    /// Takes the least-erased free block and erases it (dynamic wear levelling). With none
    /// free, a barrier releases the prefree ones.
    fn allocate(&mut self) -> R<u32, N::Error> {
        // Backstop for paths that open blocks without the host path's checkpoint trigger (GC
        // from idle, node write-backs): roll-forward can follow only so many blocks.
        if self.blocks_since_cp >= 3 * CP_INTERVAL
            && !self.in_checkpoint
            && !self.retry_busy
            && self.replay_seq.is_none()
        {
            self.checkpoint()?;
        }
        loop {
            if self.free_count == 0 && self.prefree_count > 0 {
                if self.unlogged == 0 && self.logs.iter().all(|l| l.fill == 0) {
                    // Nothing is buffered: this instant already satisfies the barrier.
                    self.release_prefree(false);
                } else if !self.in_checkpoint && !self.in_barrier {
                    self.barrier()?;
                }
                if self.free_count == 0 && !self.in_checkpoint && !self.in_gc && !self.retry_busy {
                    self.checkpoint()?;
                }
            }
            let mut best = NONE;
            let mut best_ec = u32::MAX;
            let (mut in_use, mut data_blocks) = (0u64, 0u64);
            for (i, b) in self.blocks.iter().enumerate() {
                if b.state == st::FREE && b.erase_count < best_ec {
                    best = i as u32;
                    best_ec = b.erase_count;
                }
                if matches!(b.state, st::FREE | st::OPEN | st::FULL | st::PREFREE) {
                    in_use += u64::from(b.valid);
                    data_blocks += 1;
                }
            }
            self.delta_store_full = self.over_delta_budget(in_use, data_blocks);
            if best == NONE {
                return Err(Error::NoSpace);
            }
            self.free_count -= 1;
            match self.nand.erase(BlockId(best)) {
                Ok(()) => {
                    self.stats.erases += 1;
                    let info = &mut self.blocks[best as usize];
                    info.erase_count += 1;
                    info.valid = 0;
                    info.written = 0;
                    info.mtime = self.next_seq;
                    let first = (best * self.ppb * self.spp) as usize;
                    self.valid[first..first + (self.ppb * self.spp) as usize].fill(false);
                    if let Some(r) = self
                        .pack_refs
                        .get_mut(first..first + (self.ppb * self.spp) as usize)
                    {
                        r.fill(0);
                    }
                    self.blocks_since_cp += 1;
                    self.blocks_since_wl = self.blocks_since_wl.saturating_add(1);
                    return Ok(best);
                }
                Err(e) if e.kind() == FaultKind::EraseFailed => {
                    self.nand.mark_bad(BlockId(best)).map_err(Error::Nand)?;
                    self.blocks[best as usize].state = st::BAD;
                    self.stats.retired_blocks += 1;
                }
                Err(e) => return Err(Error::Nand(e)),
            }
        }
    }

    /// Reserves nothing: callers have filled the buffer slot at `fill`; this stamps its record
    /// and marks it valid. The page is programmed lazily, when the next slot needs room or at a
    /// flush, so a caller can update the mapping before any program can move the slot.
    fn commit_slot(
        &mut self,
        log: usize,
        kind: SlotKind,
        owner: u32,
        data_crc: u32,
        cause: Cause,
    ) -> Ppa {
        let l = self.logs[log];
        debug_assert!(l.block != NONE && l.fill < self.spp);
        let seq = self.stamp_seq();
        let at = self.spare_offset(log) + l.fill as usize * SPARE;
        SpareRecord {
            kind,
            owner,
            seq,
            data_crc,
            aux: 0,
        }
        .write(&mut self.bufs[at..at + SPARE]);
        let p = Ppa((l.block * self.ppb + l.page) * self.spp + l.fill);
        if log == HOT {
            // Nothing known of what this slot's write dropped until its writer says.
            self.hot_dropped[l.fill as usize] = Dropped::Unknown;
        }
        self.logs[log].fill += 1;
        self.set_valid(p);
        self.blocks[l.block as usize].mtime = seq;
        self.stats.program_bytes[cause as usize] += SLOT_BYTES as u64;
        self.stats.lifetime_program_bytes += SLOT_BYTES as u64;
        p
    }

    /// Programs a log's buffer (padding unfilled slots) and advances the log.
    fn program_log(&mut self, log: usize) -> R<(), N::Error> {
        self.seal_pack(log);
        let l = self.logs[log];
        if l.block == NONE || l.fill == 0 {
            return Ok(());
        }
        let filled = l.fill;
        for i in l.fill..self.spp {
            let at = self.slot_offset(log, i);
            self.bufs[at..at + SLOT_BYTES].fill(0);
            let crc = crc32(&[&self.bufs[at..at + SLOT_BYTES]]);
            let seq = self.stamp_seq();
            let sp = self.spare_offset(log) + i as usize * SPARE;
            SpareRecord {
                kind: SlotKind::Padding,
                owner: 0,
                seq,
                data_crc: crc,
                aux: 0,
            }
            .write(&mut self.bufs[sp..sp + SPARE]);
            self.stats.program_bytes[Cause::Padding as usize] += SLOT_BYTES as u64;
            self.stats.lifetime_program_bytes += SLOT_BYTES as u64;
        }
        let page = PageId(l.block * self.ppb + l.page);
        let start = log * self.stride;
        let (data, spare) =
            self.bufs[start..start + self.stride].split_at(self.geo.page_bytes as usize);
        let cause = [Cause::Data, Cause::Gc, Cause::Node][log];
        match self.nand.program(page, data, spare) {
            Ok(()) => {
                self.stats.program_pages[cause as usize] += 1;
                let b = l.block as usize;
                self.logs[log].page += 1;
                self.logs[log].fill = 0;
                self.blocks[b].written = self.logs[log].page;
                if self.logs[log].page == self.ppb {
                    self.logs[log] = Log::CLOSED;
                    self.close_block(l.block);
                }
                Ok(())
            }
            Err(e) if e.kind() == FaultKind::ProgramFailed && !self.retry_busy => {
                self.stats.program_pages[cause as usize] += 1;
                self.program_failed(log, filled)
            }
            Err(e) => Err(Error::Nand(e)),
        }
    }

    fn close_block(&mut self, b: u32) {
        let info = &mut self.blocks[b as usize];
        if info.state == st::OPEN {
            info.state = st::FULL;
            if info.valid == 0 {
                info.state = st::PREFREE;
                self.prefree_count += 1;
            }
        }
    }

    /// A program failed: retire the block (its older pages are moved by GC later) and write the
    /// buffered slots again into a fresh block of the same log.
    fn program_failed(&mut self, log: usize, filled: u32) -> R<(), N::Error> {
        let l = self.logs[log];
        self.retry_busy = true;
        self.bufs.copy_within(
            log * self.stride..(log + 1) * self.stride,
            RETRY * self.stride,
        );
        self.logs[log] = Log::CLOSED;
        let info = &mut self.blocks[l.block as usize];
        info.written = l.page + 1;
        info.state = if info.valid == 0 {
            st::PREBAD
        } else {
            st::RETIRING
        };
        self.stats.retired_blocks += 1;
        let result = self.reappend(log, l, filled);
        self.retry_busy = false;
        result
    }

    fn reappend(&mut self, log: usize, l: Log, filled: u32) -> R<(), N::Error> {
        let cause = [Cause::Data, Cause::Gc, Cause::Node][log];
        for i in 0..filled {
            let sp = self.spare_offset(RETRY) + i as usize * SPARE;
            let Ok(rec) = SpareRecord::parse(&self.bufs[sp..sp + SPARE]) else {
                continue;
            };
            let old = Ppa((l.block * self.ppb + l.page) * self.spp + i);
            let src = self.slot_offset(RETRY, i);
            match rec.kind {
                SlotKind::Data => {
                    let g = rec.owner / LBAS_PER_NODE;
                    let off = rec.owner % LBAS_PER_NODE;
                    let s = self.room_and_node(log, g)?;
                    if self.ptr(s, off) != old {
                        continue;
                    }
                    let dst = self.slot_offset(log, self.logs[log].fill);
                    self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                    let new = self.commit_slot(log, SlotKind::Data, rec.owner, rec.data_crc, cause);
                    self.set_ptr(s, off, new);
                    self.cache_meta[s].dirty = true;
                    self.invalidate(old);
                }
                SlotKind::Packed => {
                    self.move_packed(old, RETRY, RZBUF, log)?;
                }
                SlotKind::Compact => {
                    if rec.owner >= self.nodes {
                        continue;
                    }
                    let s = self.room_and_node(log, rec.owner)?;
                    let Some(i) = self.compact_index(s, old) else {
                        continue;
                    };
                    let dst = self.slot_offset(log, self.logs[log].fill);
                    self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                    // Like a GC move: the copy does not redo the compaction on roll-forward.
                    let crc = crate::delta::compact::clear_moved(
                        &mut self.bufs[dst..dst + SLOT_BYTES],
                        rec.owner,
                    )
                    .unwrap_or(rec.data_crc);
                    let new = self.commit_slot(log, SlotKind::Compact, rec.owner, crc, cause);
                    self.set_compact_ptr(s, i, new);
                    self.invalidate(old);
                }
                SlotKind::DeltaLog => {
                    self.ensure_room(log)?;
                    let dst = self.slot_offset(log, self.logs[log].fill);
                    self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                    let new = self.commit_slot(log, SlotKind::DeltaLog, 0, rec.data_crc, cause);
                    self.invalidate(new);
                    let b = new.0 / self.spp / self.ppb;
                    if !self.dlog_blocks.contains(&b) {
                        // Full: the block is unprotected until the next checkpoint, which the
                        // caller's next allocation forces soon; accepted for this rare path.
                        let _ = self.dlog_blocks.push(b);
                    }
                }
                SlotKind::Node => {
                    if self.nat.get(rec.owner as usize) != Some(&old.0) {
                        continue;
                    }
                    self.ensure_room(log)?;
                    let dst = self.slot_offset(log, self.logs[log].fill);
                    self.bufs.copy_within(src..src + SLOT_BYTES, dst);
                    let new = self.commit_slot(log, SlotKind::Node, rec.owner, rec.data_crc, cause);
                    self.nat[rec.owner as usize] = new.0;
                    self.invalidate(old);
                }
                _ => {}
            }
        }
        Ok(())
    }

    // ----- validity ---------------------------------------------------------------------------

    fn set_valid(&mut self, p: Ppa) {
        if self.replay_seq.is_some() {
            return;
        }
        let i = p.0 as usize;
        if !self.valid[i] {
            self.valid.set(i, true);
            self.blocks[(p.0 / self.spp / self.ppb) as usize].valid += 1;
        }
    }

    fn invalidate(&mut self, p: Ppa) {
        if self.replay_seq.is_some() || p.0 >= self.total_slots {
            return;
        }
        let i = p.0 as usize;
        if !self.valid[i] {
            return;
        }
        self.valid.set(i, false);
        let b = (p.0 / self.spp / self.ppb) as usize;
        let info = &mut self.blocks[b];
        info.valid = info.valid.saturating_sub(1);
        if info.valid == 0 {
            match info.state {
                st::FULL => {
                    info.state = st::PREFREE;
                    self.prefree_count += 1;
                }
                st::RETIRING => info.state = st::PREBAD,
                _ => {}
            }
        }
    }

    // ----- checked reads ----------------------------------------------------------------------

    fn nand_read(&mut self, page: u32, buf: usize, cause: Cause) -> R<(), N::Error> {
        self.read_into(buf, cause, |nand, data, spare| {
            nand.read(PageId(page), data, spare)
        })
    }

    /// Reads slot `slot` of `page` (and the whole spare area) into `buf`: one NAND page read,
    /// like [`Ftl::nand_read`], that copies a quarter of the bytes on 16 KiB pages. The other
    /// slots of `buf` are stale afterwards: only for readers of that one slot.
    fn nand_read_slot(
        &mut self,
        page: u32,
        slot: u32,
        buf: usize,
        cause: Cause,
    ) -> R<(), N::Error> {
        self.read_into(buf, cause, |nand, data, spare| {
            nand.read_slot(PageId(page), slot, data, spare)
        })
    }

    /// Reads the slots of `page` whose bits are set in `slots` (and the whole spare area) into
    /// `buf`: one NAND page read, like [`Ftl::nand_read`], that copies only those slots. The
    /// other slots of `buf` are stale afterwards.
    fn nand_read_slots(
        &mut self,
        page: u32,
        slots: u32,
        buf: usize,
        cause: Cause,
    ) -> R<(), N::Error> {
        self.read_into(buf, cause, |nand, data, spare| {
            nand.read_slots(PageId(page), slots, data, spare)
        })
    }

    /// Runs one page read into page buffer `buf` (its data and spare parts) and counts it
    /// under `cause`.
    fn read_into(
        &mut self,
        buf: usize,
        cause: Cause,
        read: impl FnOnce(&mut N, &mut [u8], &mut [u8]) -> Result<(), N::Error>,
    ) -> R<(), N::Error> {
        let start = buf * self.stride;
        let (data, spare) =
            self.bufs[start..start + self.stride].split_at_mut(self.geo.page_bytes as usize);
        read(&mut self.nand, data, spare).map_err(Error::Nand)?;
        self.stats.reads[cause as usize] += 1;
        Ok(())
    }

    fn nand_read_spare(&mut self, page: u32, buf: usize, cause: Cause) -> R<(), N::Error> {
        let start = buf * self.stride + self.geo.page_bytes as usize;
        let spare = &mut self.bufs[start..start + self.geo.spare_bytes as usize];
        self.nand
            .read_spare(PageId(page), spare)
            .map_err(Error::Nand)?;
        self.stats.spare_reads[cause as usize] += 1;
        Ok(())
    }

    /// Checks slot `slot` of the page in buffer `buf`: record present and sound, data CRC.
    fn slot_record(&self, buf: usize, slot: u32) -> Result<SpareRecord, &'static str> {
        let sp = self.spare_offset(buf) + slot as usize * SPARE;
        let rec = SpareRecord::parse(&self.bufs[sp..sp + SPARE]).map_err(|e| match e {
            crate::format::RecordError::Erased => "slot reads erased",
            crate::format::RecordError::Damaged => "spare record damaged",
        })?;
        let at = self.slot_offset(buf, slot);
        if crc32(&[&self.bufs[at..at + SLOT_BYTES]]) != rec.data_crc {
            return Err("data CRC mismatch");
        }
        Ok(rec)
    }

    /// Reads slot `p` into `buf` and checks it is `kind` for `owner` with a sound CRC,
    /// re-reading a few times since bit flips on read are transient. Only that slot of `buf`
    /// is read (see [`Ftl::nand_read_slot`]), except for a packed slot: its whole page, since
    /// a record may start in the slot before it ([`Ftl::gather`]).
    fn read_slot_checked(
        &mut self,
        p: Ppa,
        kind: SlotKind,
        owner: u32,
        buf: usize,
        cause: Cause,
    ) -> R<SpareRecord, N::Error> {
        if p.0 >= self.total_slots {
            return Err(Error::Corrupted(corrupted(
                "slot address out of range",
                p.0,
            )));
        }
        let page = p.0 / self.spp;
        let slot = p.0 % self.spp;
        let mut why = "";
        for attempt in 0..READ_ATTEMPTS {
            if kind == SlotKind::Packed {
                self.nand_read(page, buf, cause)?;
            } else {
                self.nand_read_slot(page, slot, buf, cause)?;
            }
            match self.slot_record(buf, slot) {
                Ok(r) if r.kind != kind => why = "slot holds another kind of record",
                Ok(r) if r.owner != owner => why = "slot belongs to another block",
                Ok(r) => {
                    if attempt > 0 {
                        self.stats.read_retries += 1;
                    }
                    return Ok(r);
                }
                Err(w) => why = w,
            }
        }
        Err(Error::Corrupted(corrupted(why, p.0)))
    }
}

/// Copies a node page's pointers into a cache slot, marking offsets past the extent unmapped.
fn copy_pointers(view: &NodeView<'_>, dst: &mut [u8]) {
    let extent = view.extent();
    for i in 0..LBAS_PER_NODE {
        let p = if i < extent {
            view.pointer(i)
        } else {
            Ppa::NONE
        };
        crate::format::write_u32(dst, 4 * i as usize, p.0);
    }
}

const _: () = assert!(MAX_SLOTS_PER_PAGE as usize * SPARE <= 8 * 64);
const _: () = assert!(CP_RESERVE < GC_LOW);
