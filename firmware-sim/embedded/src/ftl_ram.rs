//! The RAM the FTL runs in on this board: its configuration and every table it is lent, as
//! statics sized at build time by `FtlMemory::required_plain` (no codec memory on this board), so they show in `.bss`.

use nandbox_core::{
    ftl::{BlockInfo, CacheSlot, FtlConfig, FtlMemory, MemoryRequirements},
    nand::SLOT_BYTES,
};

use crate::board::{GEOMETRY, LOGICAL_BLOCKS};

/// The FTL as the image runs it: two node cache slots cover all 512 LBAs (two node pages).
pub const CONFIG: FtlConfig = FtlConfig {
    logical_blocks: LOGICAL_BLOCKS,
    node_cache_slots: 2,
};
/// What [`CONFIG`] on the board's geometry needs, computed by the core at build time.
pub const REQ: MemoryRequirements = FtlMemory::required_plain(&GEOMETRY, &CONFIG);
// Checked at build time against the whole array; one factory-bad block leaves exactly the
// minimum, which format checks again at run time.
const _: () = assert!(CONFIG.check(&GEOMETRY).is_ok());

/// Every table the FTL keeps in RAM, sized at build time. All zeros at boot, so it sits in .bss.
pub struct FtlRam {
    nat: [u32; REQ.nodes],
    node_index: [u32; REQ.nodes],
    cache_data: [u8; REQ.cache_slots * SLOT_BYTES],
    valid_bits: [u32; REQ.bitmap_words],
    page_buffers: [u8; REQ.page_buffer_bytes],
    pack_refs: [u8; REQ.slots],
}

/// The tables of core-defined structs: their fields are the core's, so there is no const
/// constructor for them here; they are filled at first use (an `Option`, so in .data).
pub struct FtlRecords {
    cache_meta: [CacheSlot; REQ.cache_slots],
    blocks: [BlockInfo; REQ.blocks],
}

impl FtlRam {
    /// All tables zeroed, as they sit in .bss at boot.
    pub const ZERO: FtlRam = FtlRam {
        nat: [0; REQ.nodes],
        node_index: [0; REQ.nodes],
        cache_data: [0; REQ.cache_slots * SLOT_BYTES],
        valid_bits: [0; REQ.bitmap_words],
        page_buffers: [0; REQ.page_buffer_bytes],
        pack_refs: [0; REQ.slots],
    };

    /// Lends every table to the FTL, filling the core-defined records at first use.
    pub fn lend<'r>(&'r mut self, records: &'r mut Option<FtlRecords>) -> FtlMemory<'r> {
        let records = records.get_or_insert_with(|| FtlRecords {
            cache_meta: [CacheSlot::default(); REQ.cache_slots],
            blocks: [BlockInfo::default(); REQ.blocks],
        });
        FtlMemory {
            nat: &mut self.nat,
            node_index: &mut self.node_index,
            cache_meta: &mut records.cache_meta,
            cache_data: &mut self.cache_data,
            blocks: &mut records.blocks,
            valid_bits: &mut self.valid_bits,
            page_buffers: &mut self.page_buffers,
            pack_refs: &mut self.pack_refs,
            // No compact page cache: compacted deltas are read from flash each time.
            compact_cache: &mut [],
            // No coded blocks on this board: the codec's 54 KiB are not spent.
            weights: None,
        }
    }
}
