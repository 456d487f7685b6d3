//! Shared helpers of the FTL tests: block contents that name their LBA and version, a seeded
//! PRNG, and small geometries.
#![allow(dead_code)]

use nandbox_core::ftl::{blocks_for_capacity, FtlConfig};
use nandbox_core::nand::{BlockId, Geometry, Nand, PageId, SPARE_BYTES_PER_SLOT};
use nandbox_sim::{SimError, SimNand};

pub const BLOCK: usize = 4096;

/// xorshift64*: deterministic, good enough to pick operations.
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
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The content of version `v` (≥ 1) of `lba`: the first 8 bytes name both, the rest is a
/// stream seeded by them, so any mix-up or tear shows.
pub fn content(lba: u32, v: u32) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    if v == 0 {
        return out;
    }
    out[..4].copy_from_slice(&lba.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_le_bytes());
    let mut r = Rng::new(((lba as u64) << 32) | v as u64);
    for chunk in out[8..].chunks_mut(8) {
        let x = r.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    out
}

/// Version `v` of `lba` as a small update of the block's previous versions, for the delta
/// engine: the first 8 bytes name both; the body is a stream fixed per LBA (except every
/// seventh version, whose body is new throughout, so full writes happen too) with a 64-byte
/// window at a version-dependent place overwritten. Two versions of an LBA differ in ~140
/// bytes.
pub fn content_small(lba: u32, v: u32) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    if v == 0 {
        return out;
    }
    let family = if v.is_multiple_of(7) { v } else { 0 };
    let mut r = Rng::new(((lba as u64) << 32) ^ family as u64 ^ 0xD317_A000_0000_0000);
    for chunk in out[8..].chunks_mut(8) {
        let x = r.next_u64().to_le_bytes();
        chunk.copy_from_slice(&x[..chunk.len()]);
    }
    out[..4].copy_from_slice(&lba.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_le_bytes());
    let mut w = Rng::new(((lba as u64) << 32) | v as u64 | 1 << 63);
    let at = 8 + w.below((BLOCK - 8 - 64) as u64) as usize;
    for b in &mut out[at..at + 64] {
        *b = w.next_u64() as u8;
    }
    out
}

/// Version `v` of `lba` as float weights the device stores coded: BF16, FP32 or FP16 by
/// `v % 3`, small values (exponents around 2^-4) from a stream seeded by `lba` and `v`. The
/// first 8 bytes name both.
pub fn content_float(lba: u32, v: u32) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    if v == 0 {
        return out;
    }
    let mut r = Rng::new(((lba as u64) << 32) | v as u64 | 0xF10A_7000_0000_0000);
    // A skewed exponent: 2^-4 most often, a few neighbours less often.
    let exp =
        |r: &mut Rng| -> u32 { [123, 123, 123, 122, 122, 124, 121, 125][r.below(8) as usize] };
    match v % 3 {
        0 => {
            for c in out.chunks_mut(2) {
                let x = r.next_u64();
                let bits = ((x as u32 & 1) << 15) | (exp(&mut r) << 7) | ((x >> 8) as u32 & 0x7F);
                c.copy_from_slice(&(bits as u16).to_le_bytes());
            }
        }
        1 => {
            for c in out.chunks_mut(4) {
                let x = r.next_u64();
                let bits =
                    ((x as u32 & 1) << 31) | (exp(&mut r) << 23) | ((x >> 9) as u32 & 0x7F_FFFF);
                c.copy_from_slice(&bits.to_le_bytes());
            }
        }
        _ => {
            for c in out.chunks_mut(2) {
                let x = r.next_u64();
                let e = exp(&mut r) - 112; // rebias 127 -> 15
                let bits = ((x as u32 & 1) << 15) | (e << 10) | ((x >> 8) as u32 & 0x3FF);
                c.copy_from_slice(&(bits as u16).to_le_bytes());
            }
        }
    }
    out[..4].copy_from_slice(&lba.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_le_bytes());
    out
}

/// Version `v` of `lba` as a fine-tuning step of float weights: a tensor fixed per LBA (dtype
/// by `lba % 3`; every seventh version starts a new one, so coded rewrites happen too) with the
/// low mantissa bits of about 3% of its elements set by `v`. Two versions of a tensor differ
/// in at most ~6% of their elements, so the device keeps them as deltas over the coded first
/// version. The first 8 bytes name `lba` and `v`.
pub fn content_float_update(lba: u32, v: u32) -> [u8; BLOCK] {
    if v == 0 {
        return [0u8; BLOCK];
    }
    let family = if v.is_multiple_of(7) { v } else { 0 };
    let mut out = content_float(lba, 3 * (family + 1) + lba % 3);
    let mut r = Rng::new(((lba as u64) << 32) | v as u64 | 0x7E0D_0000_0000_0000);
    let (size, mask) = match (3 * (family + 1) + lba % 3) % 3 {
        0 => (2, 0x0F),
        1 => (4, 0xFF),
        _ => (2, 0x07),
    };
    for _ in 0..BLOCK / size / 32 {
        let i = r.below((BLOCK / size) as u64) as usize * size;
        out[i] = (out[i] & !mask) | (r.next_u64() as u8 & mask);
    }
    out[..4].copy_from_slice(&lba.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_le_bytes());
    out
}

/// [`content_small`] when `small`, else [`content`].
pub fn content_for(small: bool, lba: u32, v: u32) -> [u8; BLOCK] {
    if small {
        content_small(lba, v)
    } else {
        content(lba, v)
    }
}

/// Which version `buf` is, if it is exactly some version of `lba` (0 = zeros), as either
/// [`content`] or [`content_small`] makes it.
pub fn version_of(lba: u32, buf: &[u8; BLOCK]) -> Option<u32> {
    if buf.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let l = u32::from_le_bytes(buf[..4].try_into().unwrap());
    let v = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    (l == lba
        && v != 0
        && (content(lba, v) == *buf
            || content_small(lba, v) == *buf
            || content_float(lba, v) == *buf
            || content_float_update(lba, v) == *buf))
        .then_some(v)
}

/// Delta engine settings a test runs with: off (LRU cache, the formatted defaults), or on with
/// the score cache policy.
pub fn set_delta<N: Nand>(ftl: &mut nandbox_core::ftl::Ftl<'_, N>, on: bool) {
    use nandbox_core::ftl::CachePolicy;
    ftl.set_delta(on);
    ftl.set_cache_policy(if on {
        CachePolicy::Score
    } else {
        CachePolicy::Lru
    });
}

/// A geometry with `slots` 4 KiB slots per page, sized for `logical` blocks at 7% OP.
pub fn small_geometry(slots: u32, pages_per_block: u32, logical: u32) -> Geometry {
    let page_bytes = slots * BLOCK as u32;
    Geometry {
        page_bytes,
        spare_bytes: slots * SPARE_BYTES_PER_SLOT,
        pages_per_block,
        blocks: blocks_for_capacity(page_bytes, pages_per_block, logical, 7),
    }
}

/// [`small_geometry`] with room to spare: `STREAM_SHORT_FREE` + 8 more blocks, so a device with
/// every LBA written is far from full and its delta store (compact pages) is not held to the
/// budget of a full device.
#[allow(dead_code)] // not every test binary uses it
pub fn roomy_geometry(slots: u32, pages_per_block: u32, logical: u32) -> Geometry {
    let mut g = small_geometry(slots, pages_per_block, logical);
    g.blocks += nandbox_core::ftl::STREAM_SHORT_FREE + 8;
    g
}

pub fn config(logical: u32, cache: u32) -> FtlConfig {
    FtlConfig {
        logical_blocks: logical,
        node_cache_slots: cache,
    }
}

/// Lends a `SimNand` to an FTL so a mount that fails (power cut during recovery) leaves the
/// array with the test.
pub struct Lent<'n>(pub &'n mut SimNand);

impl Nand for Lent<'_> {
    type Error = SimError;
    fn geometry(&self) -> Geometry {
        self.0.geometry()
    }
    fn read(&mut self, p: PageId, d: &mut [u8], s: &mut [u8]) -> Result<(), SimError> {
        self.0.read(p, d, s)
    }
    fn read_slot(
        &mut self,
        p: PageId,
        slot: u32,
        d: &mut [u8],
        s: &mut [u8],
    ) -> Result<(), SimError> {
        self.0.read_slot(p, slot, d, s)
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

/// `base` with `k` bytes flipped, 13 bytes apart from byte 8 on, and the first 8 bytes naming
/// `lba` and version `v`: the XOR delta against `base` grows with `k`.
pub fn updated(base: &[u8; BLOCK], lba: u32, v: u32, k: usize) -> [u8; BLOCK] {
    let mut out = *base;
    out[..4].copy_from_slice(&lba.to_le_bytes());
    out[4..8].copy_from_slice(&v.to_le_bytes());
    for i in 0..k {
        out[8 + i * 13] ^= 0xA5;
    }
    out
}

/// Writes version 1 of every LBA (the bases later updates are deltas against) and flushes;
/// returns those blocks.
pub fn write_bases<N: Nand>(
    ftl: &mut nandbox_core::ftl::Ftl<'_, N>,
    logical: u32,
) -> Vec<[u8; BLOCK]> {
    let base: Vec<[u8; BLOCK]> = (0..logical).map(|l| content(l, 1)).collect();
    for (l, b) in base.iter().enumerate() {
        ftl.write(nandbox_core::ftl::Lba(l as u32), b).unwrap();
    }
    ftl.flush().unwrap();
    base
}
