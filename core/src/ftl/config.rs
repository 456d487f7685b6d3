//! FTL configuration, sizing rules and the RAM the caller lends ([`FtlMemory`]).
//!
//! Every table the FTL keeps in RAM is a slice the caller owns; [`FtlMemory::required`] says how
//! big each must be, so a host can allocate them and firmware can place them statically.

use super::error::ConfigError;
use crate::codec::weights::WeightsMemory;
use crate::delta::hotness::Heat;
use crate::format::node;
use crate::nand::{Geometry, SLOT_BYTES};

/// Blocks at the start of the array reserved for checkpoint packs (the good ones rotate).
pub const CP_AREA_BLOCKS: u32 = 4;
/// Open logs: hot data, cold (GC-relocated) data, node pages.
pub const LOGS: u32 = 3;
/// Host writes start garbage collection when fewer free blocks than this remain.
pub const GC_LOW: u32 = 6;
/// Free blocks kept back for a checkpoint's node write-back and one GC victim.
pub const CP_RESERVE: u32 = 3;
/// Largest number of 4 KiB slots per page the FTL handles (a 32 KiB page).
pub const MAX_SLOTS_PER_PAGE: u32 = 8;
/// Page buffers the FTL needs: three log pages, a scratch page, a GC page, a retry page,
/// three for the delta engine (an encoded delta; a base block being patched; the open delta
/// log slot) and four for coded blocks (a host write's record; a second page read; the
/// records GC and a program-failure retry move, kept apart because either can run while the
/// host write's record waits).
pub const PAGE_BUFFERS: usize = 13;
/// Page buffers of an FTL lent no codec memory: the last four serve coded blocks only.
pub const PLAIN_PAGE_BUFFERS: usize = PAGE_BUFFERS - 4;

/// Logical blocks (LBAs) mapped by one node page.
pub const LBAS_PER_NODE: u32 = node::LBAS;

/// A logical block address: the index of a 4 KiB logical block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lba(pub u32);

/// How the FTL is set up at format time. Checked up front by [`FtlConfig::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FtlConfig {
    /// 4 KiB logical blocks the device exports.
    pub logical_blocks: u32,
    /// Node pages held in RAM (each 4 KiB plus a few bytes of metadata).
    pub node_cache_slots: u32,
}

impl FtlConfig {
    /// A configuration with the default node cache of 64 slots.
    pub const fn new(logical_blocks: u32) -> FtlConfig {
        FtlConfig {
            logical_blocks,
            node_cache_slots: 64,
        }
    }

    /// A configuration whose node cache holds every node page, up to one erase block's worth of
    /// slots (the most a checkpoint may write back inside the GC reserve). With the whole
    /// mapping cached, node pages are written only by checkpoints and trims: a random write
    /// then costs one slot program plus GC, instead of also a node eviction when the cache
    /// misses. RAM: 4 KiB per cached node (1 GiB of `tlc` = 1,024 nodes = 4 MiB).
    pub const fn sized_for(geometry: &Geometry, logical_blocks: u32) -> FtlConfig {
        let nodes = logical_blocks.div_ceil(LBAS_PER_NODE);
        let spb = geometry.slots_per_page() * geometry.pages_per_block;
        let mut slots = if nodes < spb { nodes } else { spb };
        if slots < 2 {
            slots = 2;
        }
        FtlConfig {
            logical_blocks,
            node_cache_slots: slots,
        }
    }

    /// Node pages needed to map every logical block.
    pub const fn nodes(&self) -> u32 {
        self.logical_blocks.div_ceil(LBAS_PER_NODE)
    }

    /// Checks this configuration against a geometry, ignoring bad blocks.
    pub const fn check(&self, g: &Geometry) -> Result<(), ConfigError> {
        if let Err(e) = g.validate() {
            return Err(ConfigError::Geometry(e));
        }
        if self.logical_blocks == 0 {
            return Err(ConfigError::NoCapacity);
        }
        if g.slots_per_page() > MAX_SLOTS_PER_PAGE {
            return Err(ConfigError::PageTooLarge);
        }
        let spb = g.slots_per_page() * g.pages_per_block;
        if self.node_cache_slots < 2 || self.node_cache_slots > spb || self.node_cache_slots > 65535
        {
            return Err(ConfigError::CacheSlots);
        }
        // A checkpoint pack and its seal page must fit in one block.
        let payload = (4 * self.nodes() as u64).next_multiple_of(8) + 8 * g.blocks as u64;
        let pack_pages =
            (1 + payload.div_ceil(SLOT_BYTES as u64)).div_ceil(g.slots_per_page() as u64);
        if pack_pages + 1 > g.pages_per_block as u64 {
            return Err(ConfigError::MappingTooLarge {
                pack_pages: pack_pages + 1,
                pages_per_block: g.pages_per_block,
            });
        }
        let needed = min_blocks(spb, self.logical_blocks);
        if g.blocks < needed {
            return Err(ConfigError::TooFewBlocks {
                needed,
                available: g.blocks,
            });
        }
        Ok(())
    }
}

/// The fewest blocks the FTL can run in: user data with no over-provisioning, node pages, the
/// checkpoint area, open logs and the GC reserve.
pub const fn min_blocks(slots_per_block: u32, logical_blocks: u32) -> u32 {
    // Saturating: the inputs may come from a checkpoint header (checked, but not trusted to be
    // sensible), and an impossible size must become an error, not an overflow.
    let nodes = logical_blocks.div_ceil(LBAS_PER_NODE);
    logical_blocks
        .div_ceil(slots_per_block)
        .saturating_add(nodes.div_ceil(slots_per_block))
        .saturating_add(CP_AREA_BLOCKS + LOGS + GC_LOW + 1)
}

/// Erase blocks a device exporting `logical_blocks` 4 KiB blocks needs, with `op_percent`
/// over-provisioning on top of the user data, plus the checkpoint area, node pages, open logs and
/// the GC reserve.
pub const fn blocks_for_capacity(
    page_bytes: u32,
    pages_per_block: u32,
    logical_blocks: u32,
    op_percent: u32,
) -> u32 {
    let spb = (page_bytes / SLOT_BYTES as u32) * pages_per_block;
    let user = ((logical_blocks as u64 * (100 + op_percent as u64)).div_ceil(100))
        .div_ceil(spb as u64) as u32;
    min_blocks(spb, logical_blocks)
        .saturating_sub(logical_blocks.div_ceil(spb))
        .saturating_add(user)
}

/// Per-block bookkeeping kept in RAM (erase count, state, valid slots, last write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockInfo {
    pub(crate) erase_count: u32,
    pub(crate) valid: u32,
    pub(crate) state: u8,
    /// Pages programmed (or given up) in this block since its erase.
    pub(crate) written: u32,
    /// Sequence number of the last slot written: the block's age for cost-benefit GC.
    pub(crate) mtime: u64,
}

/// One node cache slot's metadata.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSlot {
    /// Node held + 1 (0 = empty), so zeroed memory is an empty cache.
    pub(crate) node_plus_one: u32,
    pub(crate) dirty: bool,
    /// Holds a change no log record replays (a trim): must be written back at flush.
    pub(crate) unlogged: bool,
    /// Recency stamp for the eviction policy.
    pub(crate) stamp: u64,
    /// Sequence number of the copy loaded (or last written): during roll-forward, data slots
    /// no newer than this are already reflected in the node.
    pub(crate) base_seq: u64,
    /// Bytes of inline deltas held (the tail of the cached image).
    pub(crate) inline_len: u16,
    /// The inline area changed since the node was last written (its write-back is counted
    /// under the `delta` cause).
    pub(crate) delta_dirty: bool,
    /// The group's read/write heat.
    pub(crate) heat: Heat,
    /// The open delta log holds a delta of this node: the log goes to flash before the node.
    pub(crate) in_dlog: bool,
    /// The group's delta attempts since one last succeeded, skipped ones included (see
    /// `Ftl::write_delta`), wrapping within `MISS_STREAK..MISS_STREAK + MISS_PROBE`.
    pub(crate) delta_misses: u8,
}

impl CacheSlot {
    pub(crate) fn stamp_base(&self) -> u64 {
        self.base_seq
    }
}

/// Bytes of one entry of [`FtlMemory::compact_cache`].
pub const COMPACT_CACHE_ENTRY_BYTES: usize = super::compact_cache::ENTRY_BYTES;

/// Sizes of the RAM tables, in elements of each [`FtlMemory`] field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRequirements {
    /// `nat` and `node_index` entries.
    pub nodes: usize,
    /// `cache_meta` entries; `cache_data` is this × 4096 bytes.
    pub cache_slots: usize,
    /// `blocks` entries.
    pub blocks: usize,
    /// `valid_bits` words.
    pub bitmap_words: usize,
    /// `page_buffers` bytes.
    pub page_buffer_bytes: usize,
    /// `pack_refs` entries: one per slot of the array.
    pub slots: usize,
}

impl MemoryRequirements {
    /// Total bytes of RAM lent.
    pub fn total_bytes(&self) -> usize {
        self.nodes * 8
            + self.cache_slots * (SLOT_BYTES + core::mem::size_of::<CacheSlot>())
            + self.blocks * core::mem::size_of::<BlockInfo>()
            + self.bitmap_words * 4
            + self.page_buffer_bytes
            + self.slots
    }
}

/// Every RAM table of the FTL, lent by the caller. Slices may be longer than required.
pub struct FtlMemory<'a> {
    /// Node address table: node id → slot address of its newest copy.
    pub nat: &'a mut [u32],
    /// Node id → cache slot holding it (or `u32::MAX`).
    pub node_index: &'a mut [u32],
    /// Node cache metadata.
    pub cache_meta: &'a mut [CacheSlot],
    /// Node cache pages, 4096 bytes per slot.
    pub cache_data: &'a mut [u8],
    /// Per-block bookkeeping.
    pub blocks: &'a mut [BlockInfo],
    /// One valid bit per slot of the array.
    pub valid_bits: &'a mut [u32],
    /// Page buffers (data + spare) for the logs, scratch, GC and retry.
    pub page_buffers: &'a mut [u8],
    /// Per slot: how many mapped LBAs a packed slot of coded blocks serves (see
    /// `ftl::packed`); 0 or 1 for other slots.
    pub pack_refs: &'a mut [u8],
    /// A cache of compact page slots (see `ftl::compact_cache`): whole entries of
    /// [`COMPACT_CACHE_ENTRY_BYTES`] are used; empty for none.
    pub compact_cache: &'a mut [u8],
    /// Memory for coding float-weight blocks (`Ftl::set_compress`). Without it blocks are never
    /// stored coded, and reading one already on flash is an error.
    pub weights: Option<&'a mut WeightsMemory>,
}

impl FtlMemory<'_> {
    /// What `config` on `geometry` needs.
    pub const fn required(geometry: &Geometry, config: &FtlConfig) -> MemoryRequirements {
        let total_slots = geometry.total_pages() as usize * geometry.slots_per_page() as usize;
        MemoryRequirements {
            nodes: config.nodes() as usize,
            cache_slots: config.node_cache_slots as usize,
            blocks: geometry.blocks as usize,
            bitmap_words: total_slots.div_ceil(32),
            page_buffer_bytes: PAGE_BUFFERS
                * (geometry.page_bytes as usize + geometry.spare_bytes as usize),
            slots: total_slots,
        }
    }

    /// What `config` on `geometry` needs when no codec memory is lent (`weights: None`): coded
    /// blocks are then never written and one found on flash is an error, so neither the
    /// per-slot reference counts nor the four coded-block page buffers are needed.
    pub const fn required_plain(geometry: &Geometry, config: &FtlConfig) -> MemoryRequirements {
        let full = Self::required(geometry, config);
        MemoryRequirements {
            page_buffer_bytes: PLAIN_PAGE_BUFFERS
                * (geometry.page_bytes as usize + geometry.spare_bytes as usize),
            slots: 0,
            ..full
        }
    }

    /// What this memory must hold for `config` on `geometry`: [`FtlMemory::required`], or
    /// [`FtlMemory::required_plain`] without codec memory.
    pub(crate) fn requirements(
        &self,
        geometry: &Geometry,
        config: &FtlConfig,
    ) -> MemoryRequirements {
        if self.weights.is_some() {
            Self::required(geometry, config)
        } else {
            Self::required_plain(geometry, config)
        }
    }

    /// Checks every slice against `req`.
    pub(crate) fn fits(&self, req: &MemoryRequirements) -> Result<(), (&'static str, usize)> {
        let checks = [
            ("nat", self.nat.len(), req.nodes),
            ("node_index", self.node_index.len(), req.nodes),
            ("cache_meta", self.cache_meta.len(), req.cache_slots),
            (
                "cache_data",
                self.cache_data.len(),
                req.cache_slots * SLOT_BYTES,
            ),
            ("blocks", self.blocks.len(), req.blocks),
            ("valid_bits", self.valid_bits.len(), req.bitmap_words),
            (
                "page_buffers",
                self.page_buffers.len(),
                req.page_buffer_bytes,
            ),
            ("pack_refs", self.pack_refs.len(), req.slots),
        ];
        for (what, have, need) in checks {
            if have < need {
                return Err((what, need));
            }
        }
        Ok(())
    }
}
