//! Named NAND geometry and timing profiles (`tlc`, `femu`, `slc`), as DESIGN.md gives them.

use nandbox_core::nand::{Geometry, SPARE_BYTES_PER_SLOT};

/// A NAND part: page shape, timings, endurance and parallelism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Name used on the command line.
    pub name: &'static str,
    /// Data bytes per page.
    pub page_bytes: u32,
    /// Pages per erase block.
    pub pages_per_block: u32,
    /// Page read (array to register) time, nanoseconds.
    pub read_ns: u64,
    /// Page program time, nanoseconds.
    pub program_ns: u64,
    /// Block erase time, nanoseconds.
    pub erase_ns: u64,
    /// Rated program/erase cycles per block.
    pub pe_cycles: u32,
    /// Independent channels (buses).
    pub channels: u32,
    /// Dies on each channel; every die works in parallel with the others.
    pub dies_per_channel: u32,
    /// Channel transfer rate, bytes per microsecond (MB/s).
    pub channel_mb_s: u64,
}

/// 16 KiB pages of four 4 KiB slots, 256 pages per block, 75/900/4500 µs, 3,000 P/E.
pub const TLC: Profile = Profile {
    name: "tlc",
    page_bytes: 16384,
    pages_per_block: 256,
    read_ns: 75_000,
    program_ns: 900_000,
    erase_ns: 4_500_000,
    pe_cycles: 3_000,
    channels: 8,
    dies_per_channel: 4,
    channel_mb_s: 800,
};

/// FEMU's default: 4 KiB pages, 256 per block, 40/200/2000 µs.
pub const FEMU: Profile = Profile {
    name: "femu",
    page_bytes: 4096,
    pages_per_block: 256,
    read_ns: 40_000,
    program_ns: 200_000,
    erase_ns: 2_000_000,
    pe_cycles: 3_000,
    channels: 8,
    dies_per_channel: 8,
    channel_mb_s: 800,
};

/// SLC: 4 KiB pages, 64 per block, 25/200/1500 µs, 100,000 P/E.
pub const SLC: Profile = Profile {
    name: "slc",
    page_bytes: 4096,
    pages_per_block: 64,
    read_ns: 25_000,
    program_ns: 200_000,
    erase_ns: 1_500_000,
    pe_cycles: 100_000,
    channels: 4,
    dies_per_channel: 2,
    channel_mb_s: 400,
};

/// Every profile, in the order `--help` lists them.
pub const ALL: [Profile; 3] = [TLC, FEMU, SLC];

/// Default over-provisioning: spare physical capacity as a percentage of the logical size.
pub const DEFAULT_OP_PERCENT: u32 = 7;

impl Profile {
    /// Looks a profile up by its command-line name.
    pub fn by_name(name: &str) -> Option<Profile> {
        ALL.iter().copied().find(|p| p.name == name)
    }

    /// Spare bytes per page: one record area per 4 KiB slot.
    pub const fn spare_bytes(&self) -> u32 {
        (self.page_bytes / 4096) * SPARE_BYTES_PER_SLOT
    }

    /// The array geometry with `blocks` erase blocks.
    pub const fn geometry(&self, blocks: u32) -> Geometry {
        Geometry {
            page_bytes: self.page_bytes,
            spare_bytes: self.spare_bytes(),
            pages_per_block: self.pages_per_block,
            blocks,
        }
    }

    /// Dies working in parallel.
    pub const fn dies(&self) -> u32 {
        self.channels * self.dies_per_channel
    }

    /// Time to move `bytes` over one channel, nanoseconds.
    pub const fn transfer_ns(&self, bytes: u64) -> u64 {
        bytes * 1000 / self.channel_mb_s
    }
}
