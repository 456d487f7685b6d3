//! Model-weight blocks in the device: telling a 4 KiB block of BF16, FP16 or FP32 weights from
//! other data, and coding one such block with ZipNN into a record the FTL packs.
//!
//! # Detection rule
//!
//! Float weights cluster around small magnitudes, so their exponents take few values; any other
//! byte pattern (text, compressed or encrypted data, integers) spreads the bits where an
//! exponent would be. [`detect`] samples [`SAMPLES`] elements spread over the block, one
//! candidate dtype at a time, reads the candidate exponent field of each and counts how many
//! samples fall on the four most frequent values. A candidate is accepted when they hold at
//! least [`MIN_TOP4`] of the samples. Candidates are tried as BF16, then FP32, then FP16:
//! - FP32 read as BF16 puts mantissa halves in every other sample, which spreads them; BF16
//!   read as FP32 would pass (every other BF16 element), so BF16 goes first.
//! - FP16 read as BF16 or FP32 mixes three mantissa bits into the candidate exponent, which
//!   spreads it eightfold; FP16 itself has a 5-bit exponent and goes last.
//! - Random bytes put about 4 samples on each of the top four values out of 64: far below.
//! - A block whose candidate exponents are mostly zero (zero-filled or sparse pages, small
//!   integers, text in FP16's view of it) is not weights: weights are rarely exactly zero. Such
//!   blocks, and their small updates, stay with the delta engine, which stores an update of a
//!   mostly unchanged page in a few bytes where a coded record would take hundreds.
//! - A block whose sampled elements mostly have a zero lowest byte is not weights either: a
//!   weight's low mantissa bits are noise (zero in one sample of 256), while arrays of aligned
//!   integers (sector numbers, offsets, counters: fio's scrambled buffers end up made of them)
//!   leave that byte zero and can put their high bytes on a few "exponents". Each such false
//!   positive cost a whole ZipNN coding of the block for a record too large to keep.
//!
//! A first pass over the 64 sampled elements' bytes rules out, exactly, the candidates the
//! full count would refuse on most blocks that are not weights (see `coarse`); a candidate
//! left costs 64 × 2 byte reads and a 256-entry histogram. The FTL then codes the
//! block and stores it coded only if the record is small enough to pay for itself (its
//! caller's rule), so a false positive costs CPU, never space or correctness.
//!
//! # Record
//!
//! A coded block is a ZipNN chunk record ([`zipnn::encode_chunk`]) of the 4096 bytes, numbered
//! with the block's LBA as its chunk index: the record's CRC covers the LBA, so a record read
//! for another LBA fails its check.

use super::entropy::{DecoderTables, EncoderScratch};
use super::zipnn::{self, Dtype, ZipnnError};

/// Elements sampled per candidate dtype.
pub const SAMPLES: usize = 64;
/// Samples the four most frequent candidate exponents must hold (69%: real BF16/FP16/FP32
/// weight blocks score 44..64, English text at most 42, random bytes about 12).
pub const MIN_TOP4: u32 = 44;
/// Bytes of a block.
pub const BLOCK: usize = 4096;
/// Largest record [`encode_block`] can produce.
pub const MAX_RECORD: usize = zipnn::max_chunk_record_len(Dtype::Fp32, BLOCK);

/// Working memory for coding blocks: the entropy coder's scratch and tables and a plane
/// buffer (about 54 KiB), lent to the FTL by its owner.
#[derive(Clone, Debug)]
pub struct WeightsMemory {
    enc: EncoderScratch,
    dec: DecoderTables,
    planes: [u8; BLOCK],
}

impl Default for WeightsMemory {
    fn default() -> Self {
        Self::new()
    }
}

impl WeightsMemory {
    /// Fresh memory.
    pub const fn new() -> Self {
        WeightsMemory {
            enc: EncoderScratch::new(),
            dec: DecoderTables::new(),
            planes: [0; BLOCK],
        }
    }
}

/// The exponent field of sample `i` of `block` read as `dtype`, and the sample's lowest byte.
fn exponent(block: &[u8; BLOCK], dtype: Dtype, i: usize) -> (u8, u8) {
    match dtype {
        Dtype::Bf16 => {
            let at = 2 * (i * (BLOCK / 2 / SAMPLES));
            ((block[at + 1] << 1) | (block[at] >> 7), block[at])
        }
        Dtype::Fp32 => {
            let at = 4 * (i * (BLOCK / 4 / SAMPLES));
            ((block[at + 3] << 1) | (block[at + 2] >> 7), block[at])
        }
        Dtype::Fp16 => {
            let at = 2 * (i * (BLOCK / 2 / SAMPLES));
            ((block[at + 1] >> 2) & 0x1F, block[at])
        }
        Dtype::Raw => (0, 0),
    }
}

/// Samples of `block` read as `dtype` that fall on its four most frequent exponents, or 0
/// when more than half of them have a zero exponent or a zero lowest byte (see [`detect`]).
pub fn top4(block: &[u8; BLOCK], dtype: Dtype) -> u32 {
    let mut hist = [0u8; 256];
    let mut low_zero = 0;
    for i in 0..SAMPLES {
        let (e, low) = exponent(block, dtype, i);
        hist[e as usize] += 1;
        low_zero += usize::from(low == 0);
    }
    if hist[0] as usize > SAMPLES / 2 || low_zero > SAMPLES / 2 {
        return 0;
    }
    top4_of(&hist)
}

/// The dtype `block` looks like, if it looks like float weights (see the module docs).
pub fn detect(block: &[u8; BLOCK]) -> Option<Dtype> {
    let Coarse { bf16_fp16, fp32 } = coarse(block);
    [
        (Dtype::Bf16, bf16_fp16),
        (Dtype::Fp32, fp32),
        (Dtype::Fp16, bf16_fp16),
    ]
    .into_iter()
    .find(|&(d, possible)| possible && accepts(block, d))
    .map(|(d, _)| d)
}

/// Which candidates [`coarse`] leaves possible.
struct Coarse {
    bf16_fp16: bool,
    fp32: bool,
}

/// One cheap pass over the samples all three candidates read that rules out candidates
/// [`accepts`] would refuse, so most blocks that are not weights cost one pass, not three.
///
/// Every candidate samples the same 64 elements' lowest byte (`block[64 i]`), so more than half
/// of them zero rules all three out. Its top exponent bits are one byte: `block[64 i + 1]` bits
/// 2..6 are FP16's whole exponent and BF16's top five exponent bits, `block[64 i + 3]` bits
/// 2..6 are FP32's top five. Merging exponent values into coarser classes can only raise the
/// share of the four most frequent, so a byte whose classes' top four hold fewer than
/// [`MIN_TOP4`] samples rules its candidates out, exactly as the full count would.
fn coarse(block: &[u8; BLOCK]) -> Coarse {
    let (mut h1, mut h3) = ([0u8; 32], [0u8; 32]);
    let mut low_zero = 0usize;
    for sample in block.chunks_exact(BLOCK / SAMPLES) {
        low_zero += usize::from(sample[0] == 0);
        h1[usize::from((sample[1] >> 2) & 0x1F)] += 1;
        h3[usize::from((sample[3] >> 2) & 0x1F)] += 1;
    }
    if low_zero > SAMPLES / 2 {
        return Coarse {
            bf16_fp16: false,
            fp32: false,
        };
    }
    Coarse {
        bf16_fp16: top4_of(&h1) >= MIN_TOP4,
        fp32: top4_of(&h3) >= MIN_TOP4,
    }
}

/// The sum of the four largest counts.
fn top4_of(hist: &[u8]) -> u32 {
    let mut top = [0u8; 4];
    for &c in hist {
        if c > top[3] {
            top[3] = c;
            top.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
    top.iter().map(|&c| u32::from(c)).sum()
}

/// Distinct candidate exponents that rule a dtype out: besides the four most frequent values,
/// each distinct value holds at least one sample, so with this many the top four hold at most
/// `MIN_TOP4 - 1` samples.
const TOO_MANY_VALUES: usize = SAMPLES + 4 - MIN_TOP4 as usize + 1;

/// `top4(block, dtype) >= MIN_TOP4`, decided in one pass that stops at the sample proving a
/// refusal (too many distinct exponents, too many zero exponents or zero low bytes: counts
/// that only grow), and that ranks only the values seen instead of scanning all 256. Most
/// blocks written to a device are not weights; on a 1 MiB sequential write of fio's buffers
/// the full count was a fifth of the firmware's time.
fn accepts(block: &[u8; BLOCK], dtype: Dtype) -> bool {
    let mut hist = [0u8; 256];
    let mut seen = [0u8; TOO_MANY_VALUES];
    let (mut distinct, mut low_zero) = (0, 0);
    for i in 0..SAMPLES {
        let (e, low) = exponent(block, dtype, i);
        low_zero += usize::from(low == 0);
        if hist[e as usize] == 0 {
            if distinct + 1 == TOO_MANY_VALUES {
                return false;
            }
            seen[distinct] = e;
            distinct += 1;
        }
        hist[e as usize] += 1;
        if low_zero > SAMPLES / 2 || hist[0] as usize > SAMPLES / 2 {
            return false;
        }
    }
    let mut top = [0u8; 4];
    for &e in &seen[..distinct] {
        let c = hist[e as usize];
        if c > top[3] {
            top[3] = c;
            top.sort_unstable_by(|a, b| b.cmp(a));
        }
    }
    top.iter().map(|&c| c as u32).sum::<u32>() >= MIN_TOP4
}

/// Codes `block` as `dtype` into `out` (at least [`MAX_RECORD`] bytes) as the record of `lba`;
/// returns the record length.
pub fn encode_block(
    dtype: Dtype,
    lba: u32,
    block: &[u8; BLOCK],
    out: &mut [u8],
    mem: &mut WeightsMemory,
) -> Result<usize, ZipnnError> {
    zipnn::encode_chunk(dtype, lba as u64, block, &mut mem.planes, out, &mut mem.enc)
}

/// Decodes the record of `lba` (exactly its bytes) into `out`. Any inconsistency (CRC, lengths,
/// a record of another LBA) is an error, never a panic.
pub fn decode_block(
    dtype: Dtype,
    lba: u32,
    record: &[u8],
    out: &mut [u8; BLOCK],
    mem: &mut WeightsMemory,
) -> Result<(), ZipnnError> {
    if !matches!(dtype, Dtype::Bf16 | Dtype::Fp16 | Dtype::Fp32) {
        return Err(ZipnnError::CorruptedChunk {
            chunk: lba as u64,
            reason: "unknown dtype",
        });
    }
    zipnn::decode_chunk(
        dtype,
        lba as u64,
        record,
        &mut mem.planes,
        out,
        &mut mem.dec,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(seed: u32) -> [u8; BLOCK] {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        core::array::from_fn(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
    }

    /// The rule as the module docs state it, without the early refusal.
    fn detect_exact(block: &[u8; BLOCK]) -> Option<Dtype> {
        [Dtype::Bf16, Dtype::Fp32, Dtype::Fp16]
            .into_iter()
            .find(|&d| top4(block, d) >= MIN_TOP4)
    }

    #[test]
    fn early_refusal_decides_as_the_full_count_does() {
        // Blocks whose BF16 exponents take a chosen number of values around the bound (few
        // values, many samples on the top four, or many values each with one sample; 44
        // samples on four values and 20 single others is the last block accepted), plus
        // random bytes: `detect` must answer as the full histogram does on every one.
        let mut accepted = 0;
        for values in 1..=40u32 {
            for top_share in 0..=SAMPLES as u32 {
                let mut block = pattern(values * 100 + top_share);
                for i in 0..BLOCK / 2 {
                    // Sampled elements (every 32nd) on the top four values for the first
                    // `top_share` samples, then spread over `values` others.
                    let s = (i / (BLOCK / 2 / SAMPLES)) as u32;
                    let e = if s < top_share { s % 4 } else { 4 + s % values };
                    let e = (e as u8).wrapping_mul(3).wrapping_add(100);
                    block[2 * i + 1] = (block[2 * i + 1] & 0x80) | (e >> 1);
                    block[2 * i] = (block[2 * i] & 0x7F) | ((e & 1) << 7) | 1;
                }
                assert_eq!(detect(&block), detect_exact(&block), "{values} {top_share}");
                accepted += usize::from(detect(&block).is_some());
                // The same with the low byte of the last samples zeroed, around the refusal
                // at more than half of them.
                for zeros in [31, 32, 33] {
                    let mut b = block;
                    for s in SAMPLES - zeros..SAMPLES {
                        b[2 * s * (BLOCK / 2 / SAMPLES)] &= 0x80;
                    }
                    assert_eq!(detect(&b), detect_exact(&b), "{values} {top_share} {zeros}");
                }
            }
        }
        // Both sides of the bound occur.
        assert!(accepted > 10 && accepted < 2000, "{accepted}");
        for seed in 0..200 {
            let block = pattern(seed);
            assert_eq!(detect(&block), detect_exact(&block));
        }
    }

    /// Sets the exponent field of every element of `block` read as `dtype` (the sampled ones
    /// among them) to what `exp(sample)` gives for the sample it belongs to, keeping its low
    /// byte nonzero.
    fn with_exponents(block: &mut [u8; BLOCK], dtype: Dtype, exp: impl Fn(u32) -> u8) {
        let width = if dtype == Dtype::Fp32 { 4 } else { 2 };
        for (i, el) in block.chunks_exact_mut(width).enumerate() {
            let e = exp((i * width / (BLOCK / SAMPLES)) as u32);
            el[0] |= 1;
            match dtype {
                Dtype::Bf16 => {
                    el[1] = (el[1] & 0x80) | (e >> 1);
                    el[0] = (el[0] & 0x7F) | ((e & 1) << 7);
                }
                Dtype::Fp32 => {
                    el[3] = (el[3] & 0x80) | (e >> 1);
                    el[2] = (el[2] & 0x7F) | ((e & 1) << 7);
                }
                _ => el[1] = (el[1] & 0x83) | ((e & 0x1F) << 2),
            }
        }
    }

    #[test]
    fn the_coarse_pass_decides_as_the_full_count_does_for_every_dtype() {
        // As above for each candidate's own exponent field, with the values spread so that
        // some share a coarse class (bits 3..7 of an 8-bit exponent) and some do not: the
        // coarse pass that rules candidates out first must never change an answer.
        for dtype in [Dtype::Bf16, Dtype::Fp32, Dtype::Fp16] {
            let mut accepted = 0;
            for values in (1..=40u32).step_by(3) {
                for spread in [1u8, 3, 8, 11] {
                    for top_share in 0..=SAMPLES as u32 {
                        let mut block = pattern(values * 1000 + top_share + u32::from(spread));
                        with_exponents(&mut block, dtype, |s| {
                            let e = if s < top_share { s % 4 } else { 4 + s % values };
                            let e = (e as u8).wrapping_mul(spread).wrapping_add(100);
                            if dtype == Dtype::Fp16 {
                                e % 31
                            } else {
                                e
                            }
                        });
                        let got = detect(&block);
                        assert_eq!(got, detect_exact(&block), "{dtype:?} {values} {top_share}");
                        accepted += usize::from(got == Some(dtype));
                    }
                }
            }
            assert!(
                accepted > 20,
                "{dtype:?}: {accepted} accepted as themselves"
            );
        }
    }

    #[test]
    fn zero_and_sparse_blocks_are_not_weights() {
        assert_eq!(detect(&[0u8; BLOCK]), None);
        let mut sparse = [0u8; BLOCK];
        for (i, b) in sparse.iter_mut().enumerate().step_by(97) {
            *b = i as u8 | 1;
        }
        assert_eq!(detect(&sparse), None);
    }

    #[test]
    fn aligned_integers_are_not_weights() {
        // What fio's scrambled buffers become: every 8 bytes the LE offset of their 512-byte
        // sector. Their high bytes sit on a few values (FP32 and FP16 exponents alike); only
        // their zero low bytes tell them from weights.
        for base in [0x0180_0000u64, 0x3FDC_0000, 0x0020_0000, 0x0001_0000] {
            let mut b = [0u8; BLOCK];
            for (w, c) in b.chunks_mut(8).enumerate() {
                c.copy_from_slice(&(base + 512 * (w as u64 * 8 / 512)).to_le_bytes());
            }
            assert_eq!(detect(&b), None, "base {base:#x}");
        }
    }

    #[test]
    fn random_bytes_are_not_weights() {
        for seed in 0..200 {
            assert_eq!(detect(&pattern(seed)), None, "seed {seed}");
        }
    }

    #[test]
    fn synthetic_weights_are_detected_by_dtype() {
        // Small normal-ish values: exponents within a few of 2^-4.
        let r = pattern(7);
        let mut bf = [0u8; BLOCK];
        let mut f16 = [0u8; BLOCK];
        let mut f32b = [0u8; BLOCK];
        for i in 0..BLOCK / 4 {
            let m = f32::from(r[i]) / 256.0 + 1.0;
            let e = [0.02f32, 0.05, 0.1, 0.03][i % 4];
            let v = if r[i + 1] & 1 == 1 { -m * e } else { m * e };
            f32b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        for i in 0..BLOCK / 2 {
            let v = f32::from_le_bytes(f32b[4 * (i / 2)..4 * (i / 2) + 4].try_into().unwrap())
                * if i % 2 == 0 { 1.0 } else { 0.5 };
            bf[2 * i..2 * i + 2].copy_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            // binary16 by hand: exponent rebias 127 → 15, top 10 mantissa bits.
            let b = v.to_bits();
            let h = ((b >> 16) & 0x8000) | ((((b >> 23) & 0xFF) - 112) << 10) | ((b >> 13) & 0x3FF);
            f16[2 * i..2 * i + 2].copy_from_slice(&(h as u16).to_le_bytes());
        }
        assert_eq!(detect(&bf), Some(Dtype::Bf16));
        assert_eq!(detect(&f32b), Some(Dtype::Fp32));
        assert_eq!(detect(&f16), Some(Dtype::Fp16));
    }
}

#[cfg(test)]
mod packed_tests {
    //! The packed slot format with real records: a forged slot (mutated, CRC recomputed so
    //! it passes) never panics the parser or the decoder and never decodes to other bytes.
    use super::*;
    use crate::format::{crc32, packed, PackedBuilder, PackedView};

    fn weights_block(seed: u32) -> [u8; BLOCK] {
        let mut x = seed | 1;
        let mut b = [0u8; BLOCK];
        for c in b.chunks_mut(2) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let e = [123u16, 123, 122, 124][(x & 3) as usize];
            let v = ((x >> 8) as u16 & 0x807F) | (e << 7);
            c.copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn forged_packed_slots_fail_cleanly() {
        let mut mem = WeightsMemory::new();
        let mut slot = [0u8; BLOCK];
        let mut b = PackedBuilder::start(&mut slot);
        let mut rec = [0u8; MAX_RECORD];
        let blocks = [weights_block(1), [0u8; BLOCK]];
        for (lba, blk) in blocks.iter().enumerate() {
            // The zero block is coded as BF16 by hand (detect leaves zeros alone): constant planes.
            let d = detect(blk).unwrap_or(Dtype::Bf16);
            let n = encode_block(d, lba as u32, blk, &mut rec, &mut mem).unwrap();
            assert!(b
                .add(&mut slot, lba as u32, d as u8, 0, &rec[..n])
                .is_some());
        }
        b.finish(&mut slot);
        let mut out = [0u8; BLOCK];
        for pos in 0..BLOCK {
            for bit in [0u8, 3, 7] {
                let mut forged = slot;
                forged[pos] ^= 1 << bit;
                // Recompute the CRC so the deeper checks are what stands in the way.
                forged[packed::field::CRC].fill(0);
                let crc = crc32(&[&forged[..]]);
                forged[packed::field::CRC].copy_from_slice(&crc.to_le_bytes());
                let Ok(view) = PackedView::new_checked(&forged) else {
                    continue;
                };
                for e in view.entries() {
                    if e.pre > 0 || e.lba > 1 {
                        continue;
                    }
                    let Some(dt) = Dtype::from_code(e.dtype) else {
                        continue;
                    };
                    let part = view.part(&e);
                    if decode_block(dt, e.lba, part, &mut out, &mut mem).is_ok() {
                        assert!(
                            out == blocks[e.lba as usize],
                            "byte {pos} bit {bit}: LBA {} decoded to other bytes",
                            e.lba
                        );
                    }
                }
            }
        }
    }
}
