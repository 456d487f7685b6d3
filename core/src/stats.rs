//! Counters the device is measured by: host traffic, NAND reads, programs and erases by cause,
//! and write amplification. Per-block erase counts live in the FTL's block table
//! ([`crate::ftl::Ftl::erase_count`]).

/// Why a NAND operation happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Cause {
    /// Host data (writes to the hot log, reads for the host).
    Data = 0,
    /// The delta engine: base reads of delta writes, node pages written because they carry new
    /// inline deltas, full pages rebuilt from base + delta (at eviction or idle restore).
    Delta = 1,
    /// Node (mapping) pages.
    Node = 2,
    /// Compact pages of evicted deltas (writes, and reads of compacted deltas).
    Compact = 3,
    /// Garbage collection and wear levelling moves.
    Gc = 4,
    /// Checkpoint packs and mount-time scans.
    Checkpoint = 5,
    /// Filler slots programmed so a partly filled page could be written whole.
    Padding = 6,
}

impl Cause {
    /// Number of causes.
    pub const COUNT: usize = 7;
    /// Every cause, in index order.
    pub const ALL: [Cause; 7] = [
        Cause::Data,
        Cause::Delta,
        Cause::Node,
        Cause::Compact,
        Cause::Gc,
        Cause::Checkpoint,
        Cause::Padding,
    ];

    /// Lower-case name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Cause::Data => "data",
            Cause::Delta => "delta",
            Cause::Node => "node",
            Cause::Compact => "compact",
            Cause::Gc => "gc",
            Cause::Checkpoint => "checkpoint",
            Cause::Padding => "padding",
        }
    }
}

/// Counters of one FTL instance since mount (the lifetime WAF figures are carried across mounts
/// by checkpoints in `lifetime_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Host bytes written (4 KiB per write).
    pub host_write_bytes: u64,
    /// Host write operations.
    pub host_writes: u64,
    /// Host bytes read.
    pub host_read_bytes: u64,
    /// Host read operations.
    pub host_reads: u64,
    /// Host trim operations.
    pub host_trims: u64,
    /// Host flush operations.
    pub host_flushes: u64,
    /// NAND bytes programmed, by the cause of each 4 KiB slot.
    pub program_bytes: [u64; Cause::COUNT],
    /// NAND pages programmed, by the cause of the log that wrote them.
    pub program_pages: [u64; Cause::COUNT],
    /// Full page reads by cause.
    pub reads: [u64; Cause::COUNT],
    /// Spare-only reads by cause.
    pub spare_reads: [u64; Cause::COUNT],
    /// Block erases.
    pub erases: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Blocks collected by garbage collection.
    pub gc_blocks: u64,
    /// Blocks moved by static wear levelling.
    pub wear_level_moves: u64,
    /// Blocks retired after a program or erase failure.
    pub retired_blocks: u64,
    /// Reads that failed a CRC and succeeded when retried (transient bit flips).
    pub read_retries: u64,
    /// Node cache hits.
    pub node_cache_hits: u64,
    /// Node cache misses.
    pub node_cache_misses: u64,
    /// Host writes kept as inline deltas.
    pub deltas_inlined: u64,
    /// Bytes of inline delta entries written (encoding + 12-byte header).
    pub delta_inline_bytes: u64,
    /// Host writes written whole because the delta exceeded the threshold.
    pub deltas_too_large: u64,
    /// Host writes written whole without a delta attempt: their group's recent updates were
    /// all too large (see `ftl::delta`, skipping attempts).
    pub deltas_skipped: u64,
    /// Host writes written whole because the benefit model refused to evict for them.
    pub deltas_refused: u64,
    /// Inline entries evicted (any reason).
    pub deltas_evicted: u64,
    /// Inline entries evicted to make room for a new delta (benefit model said yes).
    pub deltas_replaced: u64,
    /// Deltas moved into compact pages.
    pub deltas_compacted: u64,
    /// Compact pages written.
    pub compact_pages: u64,
    /// Full pages rebuilt from base + delta at eviction.
    pub pages_rebuilt: u64,
    /// Full pages restored from base + delta while idle (read-hot groups).
    pub pages_restored: u64,
    /// Host reads served by applying a delta to a base.
    pub delta_reads: u64,
    /// Compact slot reads served by the compact cache instead of NAND.
    pub compact_cache_hits: u64,
    /// Host writes of a block whose current version was still in the write buffer: it was
    /// replaced there, costing no NAND program.
    pub buffer_overwrites: u64,
    /// NAND page reads done on behalf of host reads (node, base or data, compact).
    pub host_read_nand_reads: u64,
    /// Host writes stored ZipNN-coded in packed slots (float weights).
    pub blocks_coded: u64,
    /// Bytes the coded blocks saved: 4096 minus record and directory entry, summed.
    pub coded_bytes_saved: u64,
    /// Blocks that looked like float weights but did not code small enough (stored plain).
    pub blocks_not_coded: u64,
    /// Reads that decoded a coded block.
    pub coded_reads: u64,
    /// Host bytes written over the device's life, as of the last checkpoint plus this mount.
    pub lifetime_host_write_bytes: u64,
    /// NAND bytes programmed over the device's life, as of the last checkpoint plus this mount.
    pub lifetime_program_bytes: u64,
}

impl Stats {
    /// All NAND bytes programmed since mount.
    pub fn nand_program_bytes(&self) -> u64 {
        self.program_bytes.iter().sum()
    }

    /// All NAND pages programmed since mount.
    pub fn nand_programs(&self) -> u64 {
        self.program_pages.iter().sum()
    }

    /// All full page reads since mount.
    pub fn nand_reads(&self) -> u64 {
        self.reads.iter().sum()
    }

    /// NAND page reads per host read (0 with no reads).
    pub fn nand_reads_per_host_read(&self) -> f64 {
        if self.host_reads == 0 {
            0.0
        } else {
            self.host_read_nand_reads as f64 / self.host_reads as f64
        }
    }

    /// Write amplification since mount: NAND program bytes / host write bytes (0 with no writes).
    pub fn waf(&self) -> f64 {
        if self.host_write_bytes == 0 {
            0.0
        } else {
            self.nand_program_bytes() as f64 / self.host_write_bytes as f64
        }
    }
}
