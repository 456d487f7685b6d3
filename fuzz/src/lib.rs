//! Helpers shared by the FTL fuzz targets and the seed generator: the small geometry they run
//! on, block contents that name their LBA and version, a deterministic "real" image (formatted,
//! written, flushed, cleaned by GC, with an unflushed tail for roll-forward), and a NAND wrapper
//! that lends a `SimNand` so a failed mount leaves the array with the caller.

use nandbox_core::ftl::{blocks_for_capacity, Ftl, FtlConfig, Lba};
use nandbox_core::nand::{BlockId, Geometry, Nand, PageId, SLOT_BYTES, SPARE_BYTES_PER_SLOT};
use nandbox_sim::{OwnedFtlMemory, SimError, SimNand};

/// Logical blocks of the fuzzed device: small, so GC and checkpoints happen within a few
/// hundred operations.
pub const LOGICAL: u32 = 48;

/// 4 KiB pages (one slot), 8 pages per block, 7% over-provisioning.
pub fn geometry() -> Geometry {
    Geometry {
        page_bytes: SLOT_BYTES as u32,
        spare_bytes: SPARE_BYTES_PER_SLOT,
        pages_per_block: 8,
        blocks: blocks_for_capacity(SLOT_BYTES as u32, 8, LOGICAL, 7),
    }
}

/// The FTL configuration every target uses.
pub fn config() -> FtlConfig {
    FtlConfig {
        logical_blocks: LOGICAL,
        node_cache_slots: 3,
    }
}

/// Bytes of one page as the targets see it: data then spare.
pub fn raw_page_len() -> usize {
    let g = geometry();
    (g.page_bytes + g.spare_bytes) as usize
}

/// xorshift64*: deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Version `v` (≥ 1) of `lba`: the first 8 bytes name both, the rest is seeded by them, so a
/// torn, stale or misdirected block is recognisable. Version 0 is zeros.
pub fn content(lba: u32, v: u32) -> [u8; SLOT_BYTES] {
    let mut out = [0u8; SLOT_BYTES];
    if v == 0 {
        return out;
    }
    out[..4].copy_from_slice(&lba.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_le_bytes());
    let mut r = Rng::new(((lba as u64) << 32) | v as u64);
    for chunk in out[8..].chunks_mut(8) {
        chunk.copy_from_slice(&r.next_u64().to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Version `v` (≥ 1) of `lba` as a small update of one base block per LBA: the first 8 bytes
/// name LBA and version, and 24 bytes at places chosen by `v` differ from the base. Updates like
/// these are what the delta engine keeps as inline deltas instead of whole pages.
pub fn delta_content(lba: u32, v: u32) -> [u8; SLOT_BYTES] {
    let mut out = content(lba, 1);
    out[4..8].copy_from_slice(&v.to_le_bytes());
    let mut r = Rng::new(((v as u64) << 32) ^ lba as u64 ^ 0xDE17A);
    for _ in 0..24 {
        let at = 8 + (r.next_u64() % (SLOT_BYTES as u64 - 8)) as usize;
        out[at] ^= (r.next_u64() as u8) | 1;
    }
    out
}

/// Which version of `lba` `buf` holds, if it is exactly one (0 = zeros), in either scheme
/// ([`content`] or [`delta_content`]): a torn or mixed block matches neither.
pub fn version_of(lba: u32, buf: &[u8]) -> Option<u32> {
    if buf.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let l = u32::from_le_bytes(buf[..4].try_into().ok()?);
    let v = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    let exact = content(lba, v)[..] == *buf || delta_content(lba, v)[..] == *buf;
    (l == lba && v != 0 && exact).then_some(v)
}

/// Every page of an array: `None` when erased, else data followed by spare.
pub type PageDump = Vec<Option<Vec<u8>>>;

/// Reads every page of `nand` (erased pages read all 0xFF and are kept as `None`).
pub fn dump(nand: &mut SimNand) -> PageDump {
    let g = nand.geometry();
    let total = g.blocks * g.pages_per_block;
    let mut out = Vec::with_capacity(total as usize);
    for p in 0..total {
        let mut data = vec![0u8; g.page_bytes as usize];
        let mut spare = vec![0u8; g.spare_bytes as usize];
        nand.read(PageId(p), &mut data, &mut spare)
            .expect("read a page of a healthy array");
        if data.iter().chain(&spare).all(|&b| b == 0xFF) {
            out.push(None);
        } else {
            data.extend_from_slice(&spare);
            out.push(Some(data));
        }
    }
    out
}

/// Programs `pages` into a fresh RAM array of [`geometry`]. A page the array refuses (it would
/// break the program-order contract) is left erased: hardware could not hold it either.
pub fn load(pages: &PageDump) -> SimNand {
    let g = geometry();
    let mut nand = SimNand::new_ram(g);
    for (p, page) in pages.iter().enumerate() {
        if let Some(raw) = page {
            let (data, spare) = raw.split_at(g.page_bytes as usize);
            let _ = nand.program(PageId(p as u32), data, spare);
        }
    }
    nand
}

/// A deterministic image that has seen real use: 400 writes over a skewed LBA range with
/// trims, flushes and idle GC, then 12 writes after the last flush (the roll-forward tail).
/// The delta engine is on and every other write is a small update, so the image holds inline
/// deltas and compact pages as well as whole blocks.
pub fn real_image() -> PageDump {
    let g = geometry();
    let cfg = config();
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    ftl.set_delta(true);
    let mut rng = Rng::new(7);
    let mut v = 1;
    for i in 0..412u32 {
        let lba = if rng.next_u64().is_multiple_of(2) {
            (rng.next_u64() % 8) as u32
        } else {
            (rng.next_u64() % LOGICAL as u64) as u32
        };
        v += 1;
        let block = if i % 2 == 0 {
            delta_content(lba, v)
        } else {
            content(lba, v)
        };
        ftl.write(Lba(lba), &block).expect("write");
        if i < 400 {
            match i % 50 {
                17 => ftl.trim(Lba(lba), 3.min(LOGICAL - lba)).expect("trim"),
                29 => ftl.flush().expect("flush"),
                41 => {
                    ftl.idle().expect("idle");
                }
                _ => {}
            }
        }
        if i == 399 {
            ftl.flush().expect("flush");
        }
    }
    let mut nand = ftl.into_nand();
    dump(&mut nand)
}

/// Lends a `SimNand` to an FTL, so a mount that fails leaves the array with the caller.
pub struct Lent<'n>(pub &'n mut SimNand);

impl Nand for Lent<'_> {
    type Error = SimError;
    fn geometry(&self) -> Geometry {
        self.0.geometry()
    }
    fn read(&mut self, p: PageId, d: &mut [u8], s: &mut [u8]) -> Result<(), SimError> {
        self.0.read(p, d, s)
    }
    fn read_spare(&mut self, p: PageId, s: &mut [u8]) -> Result<(), SimError> {
        self.0.read_spare(p, s)
    }
    fn program(&mut self, p: PageId, d: &[u8], s: &[u8]) -> Result<(), SimError> {
        self.0.program(p, d, s)
    }
    fn erase(&mut self, b: BlockId) -> Result<(), SimError> {
        self.0.erase(b)
    }
    fn is_bad(&mut self, b: BlockId) -> Result<bool, SimError> {
        self.0.is_bad(b)
    }
    fn mark_bad(&mut self, b: BlockId) -> Result<(), SimError> {
        self.0.mark_bad(b)
    }
}
