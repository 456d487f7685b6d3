//! Heap-backed RAM for the FTL on a host: [`OwnedFtlMemory`] allocates every table
//! [`FtlMemory::required`] asks for and lends it to `Ftl::format` / `Ftl::mount`.

use nandbox_core::codec::weights::WeightsMemory;
use nandbox_core::ftl::{
    BlockInfo, CacheSlot, FtlConfig, FtlMemory, MemoryRequirements, COMPACT_CACHE_ENTRY_BYTES,
};
use nandbox_core::nand::{Geometry, SLOT_BYTES};

/// Every RAM table of one FTL, owned.
pub struct OwnedFtlMemory {
    nat: Vec<u32>,
    node_index: Vec<u32>,
    cache_meta: Vec<CacheSlot>,
    cache_data: Vec<u8>,
    blocks: Vec<BlockInfo>,
    valid_bits: Vec<u32>,
    page_buffers: Vec<u8>,
    pack_refs: Vec<u8>,
    compact_cache: Vec<u8>,
    weights: Box<WeightsMemory>,
}

/// Compact page slots a host-side FTL caches unless told otherwise (256 KiB, as much as 64
/// node-cache slots).
pub const DEFAULT_COMPACT_CACHE_SLOTS: usize = 64;

impl OwnedFtlMemory {
    /// Allocates what `config` on `geometry` needs.
    pub fn new(geometry: &Geometry, config: &FtlConfig) -> OwnedFtlMemory {
        Self::with_requirements(&FtlMemory::required(geometry, config))
    }

    /// Allocates exactly `req`.
    pub fn with_requirements(req: &MemoryRequirements) -> OwnedFtlMemory {
        OwnedFtlMemory {
            nat: vec![0; req.nodes],
            node_index: vec![0; req.nodes],
            cache_meta: vec![CacheSlot::default(); req.cache_slots],
            cache_data: vec![0; req.cache_slots * SLOT_BYTES],
            blocks: vec![BlockInfo::default(); req.blocks],
            valid_bits: vec![0; req.bitmap_words],
            page_buffers: vec![0; req.page_buffer_bytes],
            pack_refs: vec![0; req.slots],
            compact_cache: vec![0; DEFAULT_COMPACT_CACHE_SLOTS * COMPACT_CACHE_ENTRY_BYTES],
            weights: Box::default(),
        }
    }

    /// Sets the compact page cache to `slots` entries (0: none).
    pub fn with_compact_cache(mut self, slots: usize) -> OwnedFtlMemory {
        self.compact_cache = vec![0; slots * COMPACT_CACHE_ENTRY_BYTES];
        self
    }

    /// Lends the tables to an FTL for as long as it lives.
    pub fn lend(&mut self) -> FtlMemory<'_> {
        FtlMemory {
            nat: &mut self.nat,
            node_index: &mut self.node_index,
            cache_meta: &mut self.cache_meta,
            cache_data: &mut self.cache_data,
            blocks: &mut self.blocks,
            valid_bits: &mut self.valid_bits,
            page_buffers: &mut self.page_buffers,
            pack_refs: &mut self.pack_refs,
            compact_cache: &mut self.compact_cache,
            weights: Some(&mut self.weights),
        }
    }

    /// Lends the tables without codec memory, as a board without the codec would: coded
    /// blocks are never written, and one found on flash is an error.
    pub fn lend_plain(&mut self) -> FtlMemory<'_> {
        FtlMemory {
            weights: None,
            ..self.lend()
        }
    }
}
