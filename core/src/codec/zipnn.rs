//! ZipNN: lossless compression of float model weights by byte grouping and entropy coding.
//!
//! Float weights barely compress with LZ coders, but their exponents are highly skewed (weights
//! cluster around small magnitudes) while sign and low mantissa bits are close to random. ZipNN
//! therefore separates the skewed bits from the random ones and entropy codes only the former.
//!
//! Grouping (bit numbers of the little-endian element; for FP32 of its upper 16 bits, `t`):
//!
//! | dtype | coded symbol per element | raw bits per element | stored |
//! |---|---|---|---|
//! | BF16 | exponent and top 3 mantissa bits (`t` bits 14..4) | sign, mantissa bits 3..0 | |
//! | FP16 | exponent and top 3 mantissa bits (bits 14..7) | sign, bits 6..0 | |
//! | FP32 | exponent and top 3 mantissa bits (`t` bits 14..4) | sign, bits 19..16 | bits 15..0 |
//! | raw | | | all |
//!
//! The coded value goes through a per-chunk dictionary of the values present (at most 256, as
//! runs) to a byte index: **one** entropy-coded symbol per element. Coding the exponent jointly
//! with the top of the mantissa captures how the mantissa's distribution depends on the exponent
//! (near the top of a binade larger mantissas are rarer), which is most of what coding the whole
//! mantissa would gain (BF16 fixture: 0.6602 with rANS, against 0.6616 for the order-0 entropy
//! of separate exponent and sign+mantissa planes), at half the coder work. The raw bits (sign
//! above the low mantissa bits) are stored in a layout that unpacks with plain vector operations
//! (11-bit split: per 16 elements 8 nibble bytes and 2 sign bytes; 8-bit split: one byte each).
//! Each chunk takes the split (11-bit or 8-bit coded value) with the smaller estimated size:
//! small chunks (4 KiB device blocks) and chunks with more than 256 distinct 11-bit values use
//! the 8-bit one; a chunk that does not code smaller than itself is stored.
//!
//! The index stream of a big chunk with the 11-bit split is coded with [`huffman`] (four
//! streams, two indices per table lookup, values written straight out; ~0.7% larger than rANS,
//! about twice as fast to decode); of a big chunk with the 8-bit split (FP16) with [`tans`]
//! (as small as rANS, values written straight out, lanes that do not wait on each other), or
//! with Huffman where it costs little more (its speed bought with part of FP16's ratio
//! slack); small chunks (device blocks) use an [`entropy`] (rANS) block. Decoding
//! writes each element's value, then one vectorised pass merges in the raw bits (and FP32's
//! low halves). Huffman-coded BF16 values and tANS-coded FP16 values are written straight
//! into the output and merged in place; FP32 values go to the output's upper half, which the merge overwrites from the front
//! only after reading them: no separate value buffer passes through the cache.
//!
//! This module owns the container format (see `docs/format/zipnn.md`): a header with the
//! segment table, then CRC-protected chunk records. Everything works in caller-lent buffers; the
//! host tool drives the chunk functions in parallel.
//!
//! [`entropy`]: super::entropy
//! [`huffman`]: super::huffman
//! [`tans`]: super::tans

use super::entropy::{self, DecoderTables, EncoderScratch, WIDE_VALUES};
use super::huffman;
use super::tans;
use super::CodecError;
use core::fmt;

/// Chunk size used for files: big enough that table headers cost < 0.1%, small enough to give
/// many chunks to threads.
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
/// Smallest and largest chunk sizes a container may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// See [`MIN_CHUNK_SIZE`].
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest segment count a container may declare (bounds the table a reader allocates).
pub const MAX_SEGMENTS: u32 = 1 << 20;

/// Container magic: "NBZN".
pub const MAGIC: [u8; 4] = *b"NBZN";
/// Container format version written (4: FP16's big chunks carry tANS index blocks).
pub const VERSION: u16 = 4;
/// Oldest container format version read (versions 3 and 4 only added chunk encodings).
pub const MIN_VERSION: u16 = 2;
/// Header flag: the original file was a safetensors file (segment 0 is its header).
pub const FLAG_SAFETENSORS: u16 = 1;

/// Element type of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Dtype {
    /// Bytes stored as they are.
    Raw = 0,
    /// bfloat16.
    Bf16 = 1,
    /// IEEE binary16.
    Fp16 = 2,
    /// IEEE binary32.
    Fp32 = 3,
}

impl Dtype {
    /// Parses the on-file code.
    pub const fn from_code(code: u8) -> Option<Dtype> {
        match code {
            0 => Some(Dtype::Raw),
            1 => Some(Dtype::Bf16),
            2 => Some(Dtype::Fp16),
            3 => Some(Dtype::Fp32),
            _ => None,
        }
    }

    /// Bytes per element (1 for raw).
    pub const fn size(self) -> usize {
        match self {
            Dtype::Raw => 1,
            Dtype::Bf16 | Dtype::Fp16 => 2,
            Dtype::Fp32 => 4,
        }
    }
}

/// Errors of the ZipNN container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZipnnError {
    /// An output or scratch buffer is too small; at least this many bytes are needed.
    BufferTooSmall(usize),
    /// The container header or segment table is invalid.
    CorruptedHeader(&'static str),
    /// A chunk record is invalid; `chunk` counts from 0 over the whole container.
    CorruptedChunk {
        /// Index of the chunk in the container.
        chunk: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// The input is larger than the format can describe.
    TooLarge,
}

impl fmt::Display for ZipnnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZipnnError::BufferTooSmall(n) => write!(f, "buffer too small: {n} bytes needed"),
            ZipnnError::CorruptedHeader(why) => write!(f, "corrupted container header: {why}"),
            ZipnnError::CorruptedChunk { chunk, reason } => {
                write!(f, "corrupted container: chunk {chunk}: {reason}")
            }
            ZipnnError::TooLarge => write!(f, "input too large for the container format"),
        }
    }
}

impl core::error::Error for ZipnnError {}

fn corrupt(chunk: u64, reason: &'static str) -> ZipnnError {
    ZipnnError::CorruptedChunk { chunk, reason }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

// ---------------------------------------------------------------------------------------------
// Container header and segment table.

/// Byte ranges of the fixed container header.
mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: Range<usize> = 4..6;
    pub const FLAGS: Range<usize> = 6..8;
    pub const CHUNK_SIZE: Range<usize> = 8..12;
    pub const SEGMENTS: Range<usize> = 12..16;
    pub const TOTAL_LEN: Range<usize> = 16..24;
    pub const RESERVED: Range<usize> = 24..28;
    pub const CRC: Range<usize> = 28..32;
    pub const LEN: usize = 32;

    /// A segment table entry.
    pub const SEG_DTYPE: usize = 0;
    pub const SEG_RESERVED: Range<usize> = 1..8;
    pub const SEG_LEN: Range<usize> = 8..16;
    pub const SEG_ENTRY_LEN: usize = 16;

    /// A chunk record header.
    pub const CHUNK_PAYLOAD_LEN: Range<usize> = 0..4;
    pub const CHUNK_CRC: Range<usize> = 4..8;
    pub const CHUNK_HEADER_LEN: usize = 8;
}

/// Length of the fixed container header.
pub const HEADER_LEN: usize = field::LEN;
/// Length of one segment table entry.
pub const SEGMENT_ENTRY_LEN: usize = field::SEG_ENTRY_LEN;
/// Length of a chunk record's header (payload length and CRC).
pub const CHUNK_HEADER_LEN: usize = field::CHUNK_HEADER_LEN;

/// One segment: a run of the original bytes coded with one dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Element type.
    pub dtype: Dtype,
    /// Original bytes (elements × size, plus a tail shorter than one element).
    pub len: u64,
}

impl Segment {
    /// Number of chunks of `chunk_size` bytes the segment is cut into.
    pub fn chunks(&self, chunk_size: u32) -> u64 {
        self.len.div_ceil(u64::from(chunk_size))
    }
}

/// The fixed container header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainerHeader {
    /// [`FLAG_SAFETENSORS`] or 0.
    pub flags: u16,
    /// Original bytes per chunk (the last chunk of a segment may be shorter).
    pub chunk_size: u32,
    /// Number of segment table entries that follow the header.
    pub segments: u32,
    /// Original length: the sum of the segments' lengths.
    pub total_len: u64,
}

impl ContainerHeader {
    /// Bytes of header plus segment table.
    pub fn table_end(&self) -> usize {
        HEADER_LEN + self.segments as usize * SEGMENT_ENTRY_LEN
    }

    /// Checks the fixed fields of the first [`HEADER_LEN`] bytes (the CRC is checked by
    /// [`ContainerHeader::check_table`] once the segment table is read too).
    pub fn parse(bytes: &[u8]) -> Result<ContainerHeader, ZipnnError> {
        let b = bytes.get(..HEADER_LEN).ok_or(ZipnnError::CorruptedHeader(
            "shorter than the 32-byte header",
        ))?;
        if b[field::MAGIC] != MAGIC {
            return Err(ZipnnError::CorruptedHeader(
                "bad magic (not a nandbox zipnn file)",
            ));
        }
        if !(MIN_VERSION..=VERSION).contains(&u16::from_le_bytes([b[4], b[5]])) {
            return Err(ZipnnError::CorruptedHeader("unsupported version"));
        }
        let flags = u16::from_le_bytes([b[field::FLAGS][0], b[field::FLAGS][1]]);
        let chunk_size = le_u32(b, field::CHUNK_SIZE.start);
        let segments = le_u32(b, field::SEGMENTS.start);
        let total_len = le_u64(b, field::TOTAL_LEN.start);
        if flags & !FLAG_SAFETENSORS != 0 || b[field::RESERVED].iter().any(|&x| x != 0) {
            return Err(ZipnnError::CorruptedHeader(
                "unknown flags or reserved bits set",
            ));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || chunk_size & 3 != 0 {
            return Err(ZipnnError::CorruptedHeader("chunk size out of range"));
        }
        if segments > MAX_SEGMENTS {
            return Err(ZipnnError::CorruptedHeader("too many segments"));
        }
        Ok(ContainerHeader {
            flags,
            chunk_size,
            segments,
            total_len,
        })
    }

    /// Verifies the header CRC over header and segment table (`bytes` holds both) and returns
    /// the segments into `out[..segments]`.
    pub fn check_table(&self, bytes: &[u8], out: &mut [Segment]) -> Result<(), ZipnnError> {
        let table = bytes
            .get(..self.table_end())
            .ok_or(ZipnnError::CorruptedHeader("segment table truncated"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&table[..field::CRC.start]);
        crc.update(&table[HEADER_LEN..]);
        if crc.finalize() != le_u32(table, field::CRC.start) {
            return Err(ZipnnError::CorruptedHeader("header CRC mismatch"));
        }
        let out = out
            .get_mut(..self.segments as usize)
            .ok_or(ZipnnError::BufferTooSmall(self.segments as usize))?;
        let mut total = 0u64;
        for (i, seg) in out.iter_mut().enumerate() {
            let e = &table[HEADER_LEN + i * SEGMENT_ENTRY_LEN..][..SEGMENT_ENTRY_LEN];
            let dtype = Dtype::from_code(e[field::SEG_DTYPE])
                .ok_or(ZipnnError::CorruptedHeader("unknown segment dtype"))?;
            if e[field::SEG_RESERVED].iter().any(|&x| x != 0) {
                return Err(ZipnnError::CorruptedHeader("reserved segment bytes set"));
            }
            let len = le_u64(e, field::SEG_LEN.start);
            total = total
                .checked_add(len)
                .ok_or(ZipnnError::CorruptedHeader("segment lengths overflow"))?;
            *seg = Segment { dtype, len };
        }
        if total != self.total_len {
            return Err(ZipnnError::CorruptedHeader("segment lengths do not add up"));
        }
        Ok(())
    }

    /// Writes header and segment table into `out`; returns the bytes written.
    pub fn write(
        flags: u16,
        chunk_size: u32,
        segments: &[Segment],
        out: &mut [u8],
    ) -> Result<usize, ZipnnError> {
        let n = u32::try_from(segments.len())
            .ok()
            .filter(|&n| n <= MAX_SEGMENTS)
            .ok_or(ZipnnError::TooLarge)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) || chunk_size & 3 != 0 {
            return Err(ZipnnError::CorruptedHeader("chunk size out of range"));
        }
        let end = HEADER_LEN + segments.len() * SEGMENT_ENTRY_LEN;
        let out = out.get_mut(..end).ok_or(ZipnnError::BufferTooSmall(end))?;
        out.fill(0);
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        out[field::FLAGS].copy_from_slice(&flags.to_le_bytes());
        out[field::CHUNK_SIZE].copy_from_slice(&chunk_size.to_le_bytes());
        out[field::SEGMENTS].copy_from_slice(&n.to_le_bytes());
        let mut total = 0u64;
        for (i, s) in segments.iter().enumerate() {
            let e = &mut out[HEADER_LEN + i * SEGMENT_ENTRY_LEN..][..SEGMENT_ENTRY_LEN];
            e[field::SEG_DTYPE] = s.dtype as u8;
            e[field::SEG_LEN].copy_from_slice(&s.len.to_le_bytes());
            total = total.checked_add(s.len).ok_or(ZipnnError::TooLarge)?;
        }
        out[field::TOTAL_LEN].copy_from_slice(&total.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[..field::CRC.start]);
        crc.update(&out[HEADER_LEN..]);
        let crc = crc.finalize();
        out[field::CRC].copy_from_slice(&crc.to_le_bytes());
        Ok(end)
    }
}

// ---------------------------------------------------------------------------------------------
// Grouping: each element as one coded symbol plus raw bits.

/// Chunk layout byte: the chunk's original bytes follow, stored.
const LAYOUT_STORED: u8 = 0;
/// Chunk layout byte / split point: the low 4 mantissa bits go raw with the sign, so the coded
/// value is the exponent and the top 3 mantissa bits (11 bits; BF16 and FP32).
const SPLIT_WIDE: u8 = 4;
/// Chunk layout byte / split point: the low 7 bits go raw with the sign, so the coded value is
/// bits 14..7 (FP16, and BF16/FP32 chunks with more than 256 distinct 11-bit values).
const SPLIT_BYTE: u8 = 7;
/// Chunk layout byte (version 3): split at 4 like [`SPLIT_WIDE`], the raw bits stored in groups
/// of 16 elements (8 bytes of low nibbles, then 2 bytes of signs) that unpack with plain vector
/// operations. Writers use it for every 11-bit chunk; [`SPLIT_WIDE`] is still read.
const LAYOUT_WIDE16: u8 = 5;
/// Bytes of raw bits of a group of 16 elements in [`LAYOUT_WIDE16`].
const GROUP16_BYTES: usize = 10;
/// Index block mode (after the entropy block modes 0..=3): canonical Huffman in four streams
/// ([`huffman`]), the block's first byte.
const MODE_HUFFMAN: u8 = 4;
/// Index block mode: tANS in four lanes ([`tans`]), the block's first byte, then a 12-bit
/// frequency table as rANS has. Version 4 writers use it for big 8-bit-split chunks (FP16).
const MODE_TANS: u8 = 5;
/// Smallest chunk (elements) whose 8-bit indices are tANS coded: below it (4 KiB device blocks)
/// rANS stays, and so do the records on existing images.
const TANS_MIN_ELEMENTS: usize = 8192;
/// The bits of a 16-bit element that hold its 8-bit-split value (bits 14..7).
const BYTE_VALUE_MASK: u16 = 0x7f80;
/// Smallest chunk (elements) whose 11-bit indices are Huffman coded: below it the code lengths
/// cost more than the speed is worth, and device blocks keep rANS's tighter coding.
const HUFFMAN_MIN_ELEMENTS: usize = 8192;
/// How far above the order-0 entropy FP16's 8-bit values may code with Huffman rather than
/// tANS, in [`HUFFMAN_FP16_EXCESS_UNIT`]ths of a bit an element: Huffman's whole-bit codes
/// lose 0.02..0.045 bits an element on the FP16 fixture's chunks; the chunks at the low end of
/// that take Huffman's speed, the others keep tANS's ratio (FP16 goal 0.848: tANS alone
/// 0.8471, Huffman alone 0.849, this mix 0.8478; at 0.035 it would be 0.8480).
const HUFFMAN_FP16_EXCESS: u64 = 33;
/// [`HUFFMAN_FP16_EXCESS`] is in thousandths of a bit.
const HUFFMAN_FP16_EXCESS_UNIT: u64 = 1000;
/// Chunk flag: every element's raw bits are the same; one byte holds them.
const FLAG_RAW_CONSTANT: u8 = 1;
/// Chunk flag (FP32): every element's low 16 bits are the same; two bytes hold them.
const FLAG_LOW_CONSTANT: u8 = 2;
/// Largest dictionary: a run count and at most 256 runs of two LEB128 numbers below 2^14.
const MAX_DICT_LEN: usize = 2 + 256 * 4;
/// Room a coded chunk may take beyond its original length while it is written (layout, flags,
/// dictionary, the entropy block's header); a record that ends up longer than storing is
/// rewritten as stored.
const CODED_SLACK: usize = 2 + MAX_DICT_LEN + entropy::MAX_HEADER_LEN + HUFFMAN_SLACK;
/// What a Huffman index block and [`LAYOUT_WIDE16`] padding may add: the mode byte, the code
/// lengths and stream table, a few padding bytes per stream, the encoder's 8-byte overshoot
/// and a padded last group.
const HUFFMAN_SLACK: usize = 1 + huffman::header_len(256) + 12 + GROUP16_BYTES;

/// The upper 16 bits of an element (the whole element for 16-bit types): sign, then the
/// exponent (BF16/FP32) or exponent and mantissa top (FP16).
#[inline(always)]
fn top<const SIZE: usize>(e: &[u8]) -> u16 {
    u16::from_le_bytes([e[SIZE - 2], e[SIZE - 1]])
}

/// Counts the 11-bit values `(top >> 4) & 0x7ff` of the elements of `body` into `hist`;
/// `spare` is a second table (its contents are lost): alternate elements count into it, so
/// runs of equal values do not wait on one counter's store.
fn count_wide<const SIZE: usize>(
    body: &[u8],
    hist: &mut [u32; WIDE_VALUES],
    spare: &mut [u64; WIDE_VALUES],
) {
    hist.fill(0);
    spare.fill(0);
    let idx = |e: &[u8]| usize::from(top::<SIZE>(e) >> 4) & (WIDE_VALUES - 1);
    let mut pairs = body.chunks_exact(2 * SIZE);
    for p in &mut pairs {
        hist[idx(&p[..SIZE])] += 1;
        spare[idx(&p[SIZE..])] += 1;
    }
    if let Some(e) = pairs.remainder().get(..SIZE) {
        hist[idx(e)] += 1;
    }
    for (h, &x) in hist.iter_mut().zip(spare.iter()) {
        // At most the element count, which the hist holds.
        *h += x as u32;
    }
}

/// Estimated bits a table entry costs (the Rice-coded frequency, and its dictionary share).
const TABLE_BITS_PER_VALUE: u64 = 7;

/// Whether the 11-bit split (`wide`: counts of bits 14..4) codes `n` elements smaller than the
/// 8-bit one (`byte`: counts of bits 14..7), by order-0 entropy, raw bits and table sizes. The
/// wide split wins on big chunks of weights (its symbol also carries the mantissa's dependence
/// on the exponent); on small ones its larger table can cost more than that gains, and it is
/// impossible beyond 256 distinct values.
fn cheaper_wide(wide: &[u32; WIDE_VALUES], byte: &[u32; 256], n: usize) -> bool {
    let distinct = |h: &[u32]| h.iter().filter(|&&c| c > 0).count() as u64;
    let wide_values = distinct(wide);
    if wide_values > 256 {
        return false;
    }
    let n = n as u64;
    let wide_bits = entropy::entropy_bits(wide) + TABLE_BITS_PER_VALUE * wide_values + 5 * n;
    let byte_bits = entropy::entropy_bits(byte) + TABLE_BITS_PER_VALUE * distinct(byte) + 8 * n;
    wide_bits < byte_bits
}

/// Bytes of `n` packed `width`-bit values.
const fn packed_len(n: usize, width: usize) -> usize {
    (n * width).div_ceil(8)
}

fn put_leb128(out: &mut [u8], at: &mut usize, mut v: usize) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[*at] = b;
            *at += 1;
            return;
        }
        out[*at] = b | 0x80;
        *at += 1;
    }
}

/// Reads a LEB128 number below 2^14 (every number a dictionary holds is).
fn get_leb128(input: &[u8], at: &mut usize) -> Option<usize> {
    let b0 = *input.get(*at)?;
    *at += 1;
    if b0 & 0x80 == 0 {
        return Some(usize::from(b0));
    }
    let b1 = *input.get(*at)?;
    *at += 1;
    // Two bytes at most, and minimal: one spelling per dictionary.
    (b1 & 0x80 == 0 && b1 != 0).then_some(usize::from(b0 & 0x7f) | usize::from(b1) << 7)
}

/// Writes the dictionary of the values present in `hist[..values]` (as runs of consecutive
/// values) at `out[*at..]`, fills `map` (value → index, in ascending value order) and `counts`
/// (index → count). Returns the number of distinct values.
fn write_dictionary(
    hist: &[u32],
    map: &mut [u8; WIDE_VALUES],
    counts: &mut [u32; 256],
    out: &mut [u8],
    at: &mut usize,
) -> usize {
    let mut runs = 0usize;
    let mut prev_end = 0usize;
    let mut distinct = 0usize;
    // The run count comes first but is known last: reserve its two bytes, and close the gap
    // if it needs only one.
    let mut v = 0;
    let count_at = *at;
    *at += 2;
    while v < hist.len() {
        if hist[v] == 0 {
            v += 1;
            continue;
        }
        let start = v;
        while v < hist.len() && hist[v] != 0 {
            map[v] = distinct as u8;
            counts[distinct] = hist[v];
            distinct += 1;
            v += 1;
        }
        put_leb128(out, at, start - prev_end);
        put_leb128(out, at, v - start - 1);
        prev_end = v;
        runs += 1;
    }
    let mut tmp = [0u8; 2];
    let mut k = 0;
    put_leb128(&mut tmp, &mut k, runs);
    if k == 1 {
        out.copy_within(count_at + 2..*at, count_at + 1);
        *at -= 1;
    }
    out[count_at..count_at + k].copy_from_slice(&tmp[..k]);
    distinct
}

/// Reads a dictionary of values below `2^width` into `values` (index → value `<< split`);
/// returns the number of values.
fn read_dictionary(
    input: &[u8],
    at: &mut usize,
    width: u32,
    split: u32,
    values: &mut [u16; 256],
) -> Option<usize> {
    let runs = get_leb128(input, at)?;
    let mut next = 0usize;
    let mut distinct = 0usize;
    for r in 0..runs {
        let gap = get_leb128(input, at)?;
        let len = get_leb128(input, at)? + 1;
        // Runs are maximal: after the first, a gap of at least one value.
        if r > 0 && gap == 0 {
            return None;
        }
        let start = next + gap;
        let end = start + len;
        if end > 1 << width || distinct + len > 256 {
            return None;
        }
        for (k, v) in (start..end).enumerate() {
            values[distinct + k] = (v as u16) << split;
        }
        distinct += len;
        next = end;
    }
    (distinct > 0).then_some(distinct)
}

/// Pass 2 of encoding: per element, the coded value's index into `idx` and the raw bits (sign
/// above the low `SPLIT` bits) packed LSB first into `raw`, eight elements per `SPLIT + 1`
/// bytes. Returns whether all raw values are equal.
fn group<const SIZE: usize, const SPLIT: u32>(
    body: &[u8],
    map: &[u8; WIDE_VALUES],
    idx: &mut [u8],
    raw: &mut [u8],
) -> bool {
    let width = (SPLIT + 1) as usize;
    let low_mask = (1u16 << SPLIT) - 1;
    let (mut any, mut all) = (0u16, u16::MAX);
    let mut one = |e: &[u8], ix: &mut u8| {
        let t = top::<SIZE>(e);
        *ix = map[usize::from((t & 0x7fff) >> SPLIT) & (WIDE_VALUES - 1)];
        let w = ((t >> 15) << SPLIT) | (t & low_mask);
        any |= w;
        all &= w;
        u64::from(w)
    };
    // Whole groups of eight, then the rest (its raw bits may take fewer than `width` bytes).
    let (raw, raw_rest) = raw.split_at_mut(body.len() / (8 * SIZE) * width);
    let mut groups = body.chunks_exact(8 * SIZE);
    let mut idx_groups = idx.chunks_exact_mut(8);
    let (mut any4, mut all4) = (0u64, u64::MAX);
    for ((g, ix), r) in (&mut groups)
        .zip(&mut idx_groups)
        .zip(raw.chunks_exact_mut(width))
    {
        // Four elements at a time in a u64 (one 16-bit lane each).
        let mut quads = [0u64; 2];
        for (q, packed) in quads.iter_mut().enumerate() {
            let mut t4 = 0u64;
            for k in 0..4 {
                let e = &g[(4 * q + k) * SIZE..(4 * q + k + 1) * SIZE];
                let t = top::<SIZE>(e);
                ix[4 * q + k] = map[usize::from((t & 0x7fff) >> SPLIT) & (WIDE_VALUES - 1)];
                t4 |= u64::from(t) << (16 * k);
            }
            *packed = pack_raw4::<SPLIT>(t4, &mut any4, &mut all4);
        }
        let bits = quads[0] | quads[1] << (4 * width);
        r.copy_from_slice(&bits.to_le_bytes()[..width]);
    }
    let (g, ix) = (groups.remainder(), idx_groups.into_remainder());
    if !g.is_empty() {
        let mut bits = 0u64;
        for (k, (e, i)) in g.chunks_exact(SIZE).zip(ix.iter_mut()).enumerate() {
            bits |= one(e, i) << (width * k);
        }
        let len = packed_len(g.len() / SIZE, width);
        raw_rest[..len].copy_from_slice(&bits.to_le_bytes()[..len]);
    }
    // Fold the four lanes' accumulators of the word-at-a-time path into the per-element ones.
    for k in 0..4 {
        any |= (any4 >> (16 * k)) as u16;
        all &= (all4 >> (16 * k)) as u16;
    }
    any == all
}

/// `v` (below 2^16) repeated in each of the four 16-bit lanes of a u64.
const fn lanes(v: u64) -> u64 {
    v * 0x0001_0001_0001_0001
}

/// Raw bits (sign above the low `SPLIT` bits) of the four 16-bit lanes of `t4`, packed into
/// `4 · (SPLIT + 1)` bits, lane 0 lowest; accumulates the lanes' raw values into `any` (OR) and
/// `all` (AND). A few word operations for four elements instead of a few per element.
#[inline(always)]
fn pack_raw4<const SPLIT: u32>(t4: u64, any: &mut u64, all: &mut u64) -> u64 {
    let low = lanes((1 << SPLIT) - 1);
    let sign = lanes(1 << SPLIT);
    let w4 = (t4 & low) | ((t4 >> (15 - SPLIT)) & sign);
    *any |= w4;
    *all &= w4;
    if SPLIT == 4 {
        let c = (w4 | (w4 >> 11)) & 0x0000_03ff_0000_03ff;
        (c | (c >> 22)) & 0xf_ffff
    } else {
        let c = (w4 | (w4 >> 8)) & 0x0000_ffff_0000_ffff;
        (c | (c >> 16)) & 0xffff_ffff
    }
}

/// Inverse of [`pack_raw4`]: the low `4 · (SPLIT + 1)` bits spread to four 16-bit lanes, each
/// with its sign at bit 15 and its low bits at the bottom.
#[inline(always)]
fn unpack_raw4<const SPLIT: u32>(bits: u64) -> u64 {
    let w4 = if SPLIT == 4 {
        let bits = bits & 0xf_ffff;
        let c = (bits | (bits << 22)) & 0x0000_03ff_0000_03ff;
        (c | (c << 11)) & 0x001f_001f_001f_001f
    } else {
        let bits = bits & 0xffff_ffff;
        let c = (bits | (bits << 16)) & 0x0000_ffff_0000_ffff;
        (c | (c << 8)) & 0x00ff_00ff_00ff_00ff
    };
    ((w4 & lanes(1 << SPLIT)) << (15 - SPLIT)) | (w4 & lanes((1 << SPLIT) - 1))
}

/// Inverse of [`group`] for the upper 16 bits of each element of `body`, from the indices,
/// the value table (`values[i]` = value `<< SPLIT`) and the packed raw bits.
fn ungroup<const SIZE: usize, const SPLIT: u32>(
    idx: &[u8],
    values: &[u16; 256],
    raw: &[u8],
    body: &mut [u8],
) {
    let width = (SPLIT + 1) as usize;
    let w_mask = (1u64 << width) - 1;
    let low_mask = (1u64 << SPLIT) - 1;
    let one = |e: &mut [u8], i: u8, bits: u64| {
        let w = bits & w_mask;
        let t = (((w >> SPLIT) << 15) | u64::from(values[usize::from(i)]) | (w & low_mask)) as u16;
        e[SIZE - 2..].copy_from_slice(&t.to_le_bytes());
    };
    let (raw, raw_rest) = raw.split_at(body.len() / (8 * SIZE) * width);
    let mut groups = body.chunks_exact_mut(8 * SIZE);
    let mut idx_groups = idx.chunks_exact(8);
    for ((g, ix), r) in (&mut groups)
        .zip(&mut idx_groups)
        .zip(raw.chunks_exact(width))
    {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(r);
        let bits = u64::from_le_bytes(b);
        // Fixed-size views so the compiler drops the bounds checks of the unrolled loop.
        let ix: [u8; 8] = ix.try_into().unwrap_or([0; 8]);
        // Four elements to a u64 (scalar: the table lookups do not vectorise).
        let mut halves = [0u64; 2];
        for (q, h) in halves.iter_mut().enumerate() {
            *h = unpack_raw4::<SPLIT>(bits >> (4 * width * q));
            for k in 0..4 {
                *h |= u64::from(values[usize::from(ix[4 * q + k])]) << (16 * k);
            }
        }
        let mut tops = [0u8; 16];
        tops[..8].copy_from_slice(&halves[0].to_le_bytes());
        tops[8..].copy_from_slice(&halves[1].to_le_bytes());
        if SIZE == 2 {
            g.copy_from_slice(&tops);
        } else {
            for (e, t) in g.chunks_exact_mut(SIZE).zip(tops.chunks_exact(2)) {
                e[SIZE - 2..].copy_from_slice(t);
            }
        }
    }
    let g = groups.into_remainder();
    if !g.is_empty() {
        let mut b = [0u8; 8];
        b[..raw_rest.len()].copy_from_slice(raw_rest);
        let bits = u64::from_le_bytes(b);
        let ix = idx_groups.remainder();
        for (k, (e, &i)) in g.chunks_exact_mut(SIZE).zip(ix).enumerate() {
            one(e, i, bits >> (width * k));
        }
    }
}

/// Each element's index into the dictionary (`map`: value → index), for rANS-coded chunks.
fn index<const SIZE: usize, const SPLIT: u32>(
    body: &[u8],
    map: &[u8; WIDE_VALUES],
    idx: &mut [u8],
) {
    for (i, e) in idx.iter_mut().zip(body.chunks_exact(SIZE)) {
        *i = map[usize::from((top::<SIZE>(e) & 0x7fff) >> SPLIT) & (WIDE_VALUES - 1)];
    }
}

/// Raw bits of the 11-bit split in [`LAYOUT_WIDE16`] groups: per 16 elements, byte `j` holds
/// the low nibbles of elements `j` (bits 3..0) and `j + 8` (bits 7..4), then a u16 LE holds the
/// signs (bit `k`: element `k`). A last partial group is padded with zeros. Returns whether
/// all elements' raw bits are equal.
fn raw16<const SIZE: usize>(body: &[u8], raw: &mut [u8]) -> bool {
    const M4: u64 = 0x000f_000f_000f_000f;
    const W: u64 = 0x800f_800f_800f_800f;
    // Four elements' upper halves per u64 (lane k: element 4q + k), all in word operations.
    let (mut any, mut all) = (0u64, u64::MAX);
    let mut groups = body.chunks_exact(16 * SIZE);
    for (g, r) in (&mut groups).zip(raw.chunks_exact_mut(GROUP16_BYTES)) {
        let t = [
            tops4::<SIZE>(g, 0),
            tops4::<SIZE>(g, 1),
            tops4::<SIZE>(g, 2),
            tops4::<SIZE>(g, 3),
        ];
        for &w in &t {
            any |= w;
            all &= w;
        }
        // Low nibbles of elements j and j + 8 side by side, then the even bytes gathered.
        let lo = gather_even_bytes((t[0] & M4) | (t[2] & M4) << 4);
        let hi = gather_even_bytes((t[1] & M4) | (t[3] & M4) << 4);
        r[..8].copy_from_slice(&(lo | hi << 32).to_le_bytes());
        let sign = signs8(t[0], t[1]) | signs8(t[2], t[3]) << 8;
        r[8..].copy_from_slice(&sign.to_le_bytes());
    }
    // Only the raw bits (sign, low nibble) of the accumulated words count.
    let (any, all) = (any & W, all & W);
    let mut any16 = (0..4).fold(0u16, |a, k| a | (any >> (16 * k)) as u16);
    let mut all16 = (0..4).fold(u16::MAX, |a, k| a & (all >> (16 * k)) as u16);
    let rest = groups.remainder();
    if !rest.is_empty() {
        let mut t = [0u16; 16];
        for (tk, e) in t.iter_mut().zip(rest.chunks_exact(SIZE)) {
            *tk = top::<SIZE>(e);
            any16 |= *tk & 0x800f;
            all16 &= *tk & 0x800f;
        }
        let (nib, sign) = pack16(&t);
        let last = body.len() / (16 * SIZE);
        if let Some(r) = raw.chunks_exact_mut(GROUP16_BYTES).nth(last) {
            r[..8].copy_from_slice(&nib);
            r[8..].copy_from_slice(&sign.to_le_bytes());
        }
    }
    any16 == all16
}

/// Upper halves of elements `4q .. 4q + 4` of a 16-element group, one per 16-bit lane.
#[inline(always)]
fn tops4<const SIZE: usize>(g: &[u8], q: usize) -> u64 {
    let word = |at: usize| {
        let b = &g[at..at + 8];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    };
    if SIZE == 2 {
        word(8 * q)
    } else {
        let (a, b) = (word(16 * q), word(16 * q + 8));
        (a >> 16 & 0xffff) | (a >> 48) << 16 | (b >> 16 & 0xffff) << 32 | (b >> 48) << 48
    }
}

/// Bytes 0, 2, 4, 6 of `x` (the others zero) as the low four bytes.
#[inline(always)]
fn gather_even_bytes(x: u64) -> u64 {
    let x = (x | x >> 8) & 0x0000_ffff_0000_ffff;
    (x | x >> 16) & 0xffff_ffff
}

/// The sign bits (bit 15 of each 16-bit lane) of `w` as four bits, lane 0 lowest: one multiply
/// moves bits 15, 31, 47, 63 to 48..51.
#[inline(always)]
fn signs4(w: u64) -> u32 {
    let s = (w >> 15) & 0x0001_0001_0001_0001;
    (s.wrapping_mul(1 << 48 | 1 << 33 | 1 << 18 | 1 << 3) >> 48) as u32 & 15
}

/// The sign bits of the lanes of `a` (bits 0..4, lane 0 lowest) and of `b` (bits 4..8): each
/// lane's two signs side by side at bits 0 and 4, then one multiply gathers the lanes at
/// bits 48..56 (no two partial products meet there, and none carries into them).
#[inline(always)]
fn signs8(a: u64, b: u64) -> u16 {
    let s = (a >> 15) & 0x0001_0001_0001_0001 | (b >> 11) & 0x0010_0010_0010_0010;
    (s.wrapping_mul(1 << 48 | 1 << 33 | 1 << 18 | 1 << 3) >> 48) as u16 & 0xff
}

/// The [`LAYOUT_WIDE16`] raw bytes of 16 elements' upper halves (a last partial group).
fn pack16(t: &[u16; 16]) -> ([u8; 8], u16) {
    let nib: [u8; 8] = core::array::from_fn(|j| (t[j] & 15) as u8 | ((t[j + 8] & 15) as u8) << 4);
    let word = |q: usize| (0..4).fold(0u64, |w, k| w | u64::from(t[4 * q + k]) << (16 * k));
    let sign = (0..4).fold(0u32, |s, q| s | signs4(word(q)) << (4 * q));
    (nib, sign as u16)
}

/// The raw sections of a coded chunk as `(bytes, stride)` per group of 16 elements; stride 0
/// repeats one group (constant sections).
struct Sections<'a> {
    raw: &'a [u8],
    raw_stride: usize,
    low: &'a [u8],
    low_stride: usize,
}

/// Where the decoded values (dictionary values `<<` split) of a chunk come from.
trait Values {
    /// Values of elements `16g .. 16g + 16`.
    fn group(&self, g: usize) -> [u16; 16];
    /// Value of element `i`.
    fn one(&self, i: usize) -> u16;
    /// The bits of what [`group`](Self::group) and [`one`](Self::one) return that are the value.
    const MASK: u16 = u16::MAX;
}

/// Values the Huffman decoder wrote, u16 LE per element (only the bits of
/// [`huffman::VALUE_MASK`] are the value's).
struct Decoded<'a>(&'a [u8]);

impl Values for Decoded<'_> {
    #[inline(always)]
    fn group(&self, g: usize) -> [u16; 16] {
        let b: &[u8; 32] = self.0[32 * g..32 * g + 32].try_into().unwrap_or(&[0; 32]);
        core::array::from_fn(|k| u16::from_le_bytes([b[2 * k], b[2 * k + 1]]))
    }
    fn one(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.0[2 * i], self.0[2 * i + 1]])
    }
    const MASK: u16 = huffman::VALUE_MASK;
}

/// Dictionary indices from the rANS decoder and the dictionary.
struct Indexed<'a>(&'a [u8], &'a [u16; 256]);

impl Values for Indexed<'_> {
    #[inline(always)]
    fn group(&self, g: usize) -> [u16; 16] {
        let ix: &[u8; 16] = self.0[16 * g..16 * g + 16].try_into().unwrap_or(&[0; 16]);
        core::array::from_fn(|k| self.1[usize::from(ix[k])])
    }
    fn one(&self, i: usize) -> u16 {
        self.1[usize::from(self.0[i])]
    }
}

/// Raw bits of a group of 16 elements placed in their element positions: sign at bit 15, low
/// bits at the bottom. `WIDE`: a [`LAYOUT_WIDE16`] group (10 bytes); else one byte an element
/// (sign above 7 low bits). Written lane-wise (a sign bit moves to bit 15 by a multiply by a
/// per-lane constant) so it vectorises with plain SSE2.
#[inline(always)]
fn raw_words<const WIDE: bool>(r: &[u8; 16]) -> [u16; 16] {
    let mut w = [0u16; 16];
    if WIDE {
        let (s0, s1) = (u16::from(r[8]), u16::from(r[9]));
        for k in 0..8 {
            let up = 1u16 << (15 - k);
            w[k] = u16::from(r[k] & 15) | (s0.wrapping_mul(up) & 0x8000);
            w[k + 8] = u16::from(r[k] >> 4) | (s1.wrapping_mul(up) & 0x8000);
        }
    } else {
        for k in 0..16 {
            let b = u16::from(r[k]);
            w[k] = (b & 0x7f) | (b << 8 & 0x8000);
        }
    }
    w
}

/// Builds the elements of `body` from their values and the raw sections, 16 at a time (each
/// step plain lane-wise operations the compiler vectorises).
fn merge<const SIZE: usize, const WIDE: bool, V: Values>(vals: &V, s: &Sections, body: &mut [u8]) {
    const fn group_bytes(wide: bool) -> usize {
        if wide {
            GROUP16_BYTES
        } else {
            16
        }
    }
    // Fixed-length copies (no memcpy call); a last partial group may have fewer bytes.
    let raw_group = |g: usize| {
        let mut r = [0u8; 16];
        let at = g * s.raw_stride;
        if let Some(src) = s.raw.get(at..at + group_bytes(WIDE)) {
            r[..group_bytes(WIDE)].copy_from_slice(src);
        } else if let Some(src) = s.raw.get(at..) {
            let m = src.len().min(group_bytes(WIDE));
            r[..m].copy_from_slice(&src[..m]);
        }
        r
    };
    let full = body.len() / SIZE / 16;
    let mut groups = body.chunks_exact_mut(16 * SIZE);
    for (g, out) in (&mut groups).enumerate() {
        let v = vals.group(g);
        let w = raw_words::<WIDE>(&raw_group(g));
        let t: [u16; 16] = core::array::from_fn(|k| (v[k] & V::MASK) | w[k]);
        if SIZE == 2 {
            for (o, tk) in out.chunks_exact_mut(2).zip(t) {
                o.copy_from_slice(&tk.to_le_bytes());
            }
        } else {
            let at = g * s.low_stride;
            let low: &[u8; 32] = s.low[at..at + 32].try_into().unwrap_or(&[0; 32]);
            for ((o, l), tk) in out.chunks_exact_mut(4).zip(low.chunks_exact(2)).zip(t) {
                o[..2].copy_from_slice(l);
                o[2..].copy_from_slice(&tk.to_le_bytes());
            }
        }
    }
    let rest = groups.into_remainder();
    if !rest.is_empty() {
        let g = full;
        let w = raw_words::<WIDE>(&raw_group(g));
        for (k, o) in rest.chunks_exact_mut(SIZE).enumerate() {
            let t = (vals.one(16 * g + k) & V::MASK) | w[k];
            if SIZE == 4 {
                let at = g * s.low_stride + 2 * k;
                o[..2].copy_from_slice(&s.low[at..at + 2]);
            }
            o[SIZE - 2..].copy_from_slice(&t.to_le_bytes());
        }
    }
}

/// Each sign byte of a [`LAYOUT_WIDE16`] group spread to eight 16-bit lanes (bit `k` to bit
/// 15 of lane `k`): one load instead of a broadcast and a multiply.
static SIGN_SPREAD: [[u16; 8]; 256] = {
    let mut t = [[0u16; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            t[b][k] = ((b >> k) as u16 & 1) << 15;
            k += 1;
        }
        b += 1;
    }
    t
};

/// [`merge_wide2`] for 16-bit elements with the 8-bit split: dictionary indices and one stored
/// raw byte per element (FP16's big chunks).
fn merge_byte2(idx: &[u8], values: &[u16; 256], raw: &[u8], body: &mut [u8]) -> usize {
    let groups = (body.len() / 32).min(idx.len() / 16).min(raw.len() / 16);
    let pieces = body
        .chunks_exact_mut(32)
        .zip(idx.chunks_exact(16))
        .zip(raw.chunks_exact(16));
    for ((out, ix), r) in pieces.take(groups) {
        for k in 0..16 {
            let b = u16::from(r[k]);
            let t = values[usize::from(ix[k])] | (b & 0x7f) | (b << 8 & 0x8000);
            out[2 * k..2 * k + 2].copy_from_slice(&t.to_le_bytes());
        }
    }
    groups
}

/// [`merge_byte2`] in place: the tANS-decoded values (bits [`BYTE_VALUE_MASK`]) already in
/// `body`, one stored raw byte per element (sign above 7 low bits). Fixed-size pieces only, so
/// the loop vectorises. Returns the groups of 16 done.
fn merge_byte2_inplace(raw: &[u8], body: &mut [u8]) -> usize {
    let groups = (body.len() / 32).min(raw.len() / 16);
    let pieces = body.chunks_exact_mut(32).zip(raw.chunks_exact(16));
    for (out, r) in pieces.take(groups) {
        let v: [u8; 32] = core::array::from_fn(|i| out[i]);
        for k in 0..16 {
            let b = u16::from(r[k]);
            let t = (u16::from_le_bytes([v[2 * k], v[2 * k + 1]]) & BYTE_VALUE_MASK)
                | (b & 0x7f)
                | (b << 8 & 0x8000);
            out[2 * k..2 * k + 2].copy_from_slice(&t.to_le_bytes());
        }
    }
    groups
}

/// [`merge_byte2_inplace`] and then the last partial group: the 16-bit elements' values
/// (bits [`BYTE_VALUE_MASK`], from the tANS or Huffman decoder) already in `body`, the
/// 8-bit split's raw bytes `raw` stored one an element (`sections` for the last group).
fn merge_byte2_rest(raw: &[u8], sections: &Sections, body: &mut [u8]) {
    let g = merge_byte2_inplace(raw, body);
    let rest = &mut body[32 * g..];
    let mut last = [0u8; 32];
    last[..rest.len()].copy_from_slice(rest);
    let sections = Sections {
        raw: &raw[16 * g..],
        ..*sections
    };
    merge::<2, false, _>(&Decoded(&last), &sections, rest);
}

/// [`merge`] of the whole groups of 16-bit elements whose Huffman-decoded values are already
/// in `body`, with stored [`LAYOUT_WIDE16`] raw groups (BF16's every big chunk), in place:
/// fixed-size pieces only, so the loop has no bounds checks and vectorises. Returns the groups
/// done.
fn merge_wide2(raw: &[u8], body: &mut [u8]) -> usize {
    let groups = (body.len() / 32).min(raw.len() / GROUP16_BYTES);
    let pieces = body
        .chunks_exact_mut(32)
        .zip(raw.chunks_exact(GROUP16_BYTES));
    for (out, r) in pieces.take(groups) {
        let s0 = &SIGN_SPREAD[usize::from(r[8])];
        let s1 = &SIGN_SPREAD[usize::from(r[9])];
        let v: [u8; 32] = core::array::from_fn(|i| out[i]);
        for k in 0..8 {
            let t = (u16::from_le_bytes([v[2 * k], v[2 * k + 1]]) & huffman::VALUE_MASK)
                | u16::from(r[k] & 15)
                | s0[k];
            out[2 * k..2 * k + 2].copy_from_slice(&t.to_le_bytes());
        }
        for k in 0..8 {
            let j = k + 8;
            let t = (u16::from_le_bytes([v[2 * j], v[2 * j + 1]]) & huffman::VALUE_MASK)
                | u16::from(r[k] >> 4)
                | s1[k];
            out[2 * j..2 * j + 2].copy_from_slice(&t.to_le_bytes());
        }
    }
    groups
}

/// [`merge_wide2`] for FP32, the values in the upper half of `body` (u16 LE each, from byte
/// `body.len() / 2`) and the low halves stored: group `g` is written over bytes
/// `64g .. 64g + 64`, which hold no value of a later group. Returns the groups done.
fn merge_wide4(raw: &[u8], low: &[u8], body: &mut [u8]) -> usize {
    let half = body.len() / 2;
    let groups = (half / 32)
        .min(raw.len() / GROUP16_BYTES)
        .min(low.len() / 32);
    let pieces = raw.chunks_exact(GROUP16_BYTES).zip(low.chunks_exact(32));
    for (g, (r, l)) in pieces.take(groups).enumerate() {
        let Some(v) = body
            .get(half + 32 * g..half + 32 * g + 32)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
        else {
            return g;
        };
        let Some(out) = body.get_mut(64 * g..64 * g + 64) else {
            return g;
        };
        let s0 = &SIGN_SPREAD[usize::from(r[8])];
        let s1 = &SIGN_SPREAD[usize::from(r[9])];
        for k in 0..8 {
            let t = (u16::from_le_bytes([v[2 * k], v[2 * k + 1]]) & huffman::VALUE_MASK)
                | u16::from(r[k] & 15)
                | s0[k];
            out[4 * k..4 * k + 2].copy_from_slice(&l[2 * k..2 * k + 2]);
            out[4 * k + 2..4 * k + 4].copy_from_slice(&t.to_le_bytes());
        }
        for k in 0..8 {
            let j = k + 8;
            let t = (u16::from_le_bytes([v[2 * j], v[2 * j + 1]]) & huffman::VALUE_MASK)
                | u16::from(r[k] >> 4)
                | s1[k];
            out[4 * j..4 * j + 2].copy_from_slice(&l[2 * j..2 * j + 2]);
            out[4 * j + 2..4 * j + 4].copy_from_slice(&t.to_le_bytes());
        }
    }
    groups
}

// ---------------------------------------------------------------------------------------------
// Chunk records.

/// Largest chunk record (header included) for `chunk_len` original bytes of `dtype`: the room
/// `out` must offer [`encode_chunk`]. A written record is never longer than
/// `CHUNK_HEADER_LEN + 1 + chunk_len` (a chunk that does not code smaller is stored).
pub const fn max_chunk_record_len(dtype: Dtype, chunk_len: usize) -> usize {
    match dtype {
        Dtype::Raw => CHUNK_HEADER_LEN + chunk_len,
        _ => CHUNK_HEADER_LEN + chunk_len + CODED_SLACK,
    }
}

/// Largest payload a valid record of `chunk_len` original bytes has.
const fn max_payload_len(dtype: Dtype, chunk_len: usize) -> usize {
    match dtype {
        Dtype::Raw => chunk_len,
        _ => 1 + chunk_len,
    }
}

/// CRC of a chunk record: its index (so records cannot be swapped unnoticed), its payload
/// length and its payload.
fn chunk_crc(index: u64, payload_len: u32, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&index.to_le_bytes());
    crc.update(&payload_len.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

/// Encodes one chunk (`src`, at most the container's chunk size) as the record of chunk number
/// `index`. `planes` is scratch of at least `src.len()` bytes; `out` must hold
/// [`max_chunk_record_len`]. Returns the record's length.
pub fn encode_chunk(
    dtype: Dtype,
    index: u64,
    src: &[u8],
    planes: &mut [u8],
    out: &mut [u8],
    scratch: &mut EncoderScratch,
) -> Result<usize, ZipnnError> {
    let needed = max_chunk_record_len(dtype, src.len());
    if out.len() < needed {
        return Err(ZipnnError::BufferTooSmall(needed));
    }
    if src.len() > MAX_CHUNK_SIZE as usize {
        return Err(ZipnnError::TooLarge);
    }
    let payload = &mut out[CHUNK_HEADER_LEN..needed];
    let stored_len = max_payload_len(dtype, src.len());
    let coded = match dtype {
        Dtype::Raw => None,
        Dtype::Bf16 | Dtype::Fp16 => encode_elements::<2>(src, planes, payload, scratch)?,
        Dtype::Fp32 => encode_elements::<4>(src, planes, payload, scratch)?,
    };
    let len = match coded {
        Some(len) if len < stored_len => len,
        _ if dtype == Dtype::Raw => {
            payload[..src.len()].copy_from_slice(src);
            src.len()
        }
        _ => {
            payload[0] = LAYOUT_STORED;
            payload[1..stored_len].copy_from_slice(src);
            stored_len
        }
    };
    let payload_len = len as u32;
    let crc = chunk_crc(index, payload_len, &payload[..len]);
    out[field::CHUNK_PAYLOAD_LEN].copy_from_slice(&payload_len.to_le_bytes());
    out[field::CHUNK_CRC].copy_from_slice(&crc.to_le_bytes());
    Ok(CHUNK_HEADER_LEN + len)
}

fn encode_err(e: CodecError) -> ZipnnError {
    match e {
        CodecError::BufferTooSmall(k) => ZipnnError::BufferTooSmall(k),
        _ => ZipnnError::TooLarge,
    }
}

/// Writes the coded payload of a float chunk (elements of `SIZE` bytes) into `out` (room for
/// `src.len() + CODED_SLACK`); returns its length, or `None` when there is no whole element.
fn encode_elements<const SIZE: usize>(
    src: &[u8],
    planes: &mut [u8],
    out: &mut [u8],
    scratch: &mut EncoderScratch,
) -> Result<Option<usize>, ZipnnError> {
    let n = src.len() / SIZE;
    if n == 0 {
        return Ok(None);
    }
    let (body, tail) = src.split_at(n * SIZE);
    count_wide::<SIZE>(body, &mut scratch.wide_hist, &mut scratch.wide_code);
    // Bits 14..7: the counts of bits 14..4 folded down.
    let byte_hist: [u32; 256] =
        core::array::from_fn(|v| scratch.wide_hist[8 * v..8 * v + 8].iter().sum());
    let wide = cheaper_wide(&scratch.wide_hist, &byte_hist, n);
    let split = if wide {
        SPLIT_WIDE
    } else {
        scratch.wide_hist[..256].copy_from_slice(&byte_hist);
        SPLIT_BYTE
    };
    let values = 1usize << (15 - split);
    out[0] = if wide { LAYOUT_WIDE16 } else { SPLIT_BYTE };
    let mut at = 2;
    let mut counts = [0u32; 256];
    let distinct = write_dictionary(
        &scratch.wide_hist[..values],
        &mut scratch.wide_map,
        &mut counts,
        out,
        &mut at,
    );
    // Huffman for the 11-bit split of big chunks (see the module docs); its exact size is
    // known before coding. FP16's big 8-bit-split chunks take it too when it costs at most
    // HUFFMAN_FP16_EXCESS bits an element above the order-0 entropy (tANS's size, within
    // ~0.1%): FP16 decompresses about 1.6 times as fast with Huffman as with tANS.
    let big = n >= HUFFMAN_MIN_ELEMENTS && distinct >= 2;
    let huff_bits = if wide && big {
        Some(scratch.huff.build(&counts[..distinct]))
    } else if SIZE == 2 && big {
        let bits = scratch.huff.build(&counts[..distinct]);
        let excess = HUFFMAN_FP16_EXCESS * n as u64 / HUFFMAN_FP16_EXCESS_UNIT;
        (bits <= entropy::entropy_bits(&counts[..distinct]) + excess).then_some(bits)
    } else {
        None
    };
    let raw_len = if wide {
        n.div_ceil(16) * GROUP16_BYTES
    } else {
        n
    };
    let raw = &mut out[at..at + raw_len];
    // FP16's big chunks are tANS coded by value (no dictionary index per element), so their
    // values and raw bytes come from plain byte operations.
    let by_value = !wide && SIZE == 2 && n >= TANS_MIN_ELEMENTS && distinct >= 2;
    let constant = if wide {
        if huff_bits.is_none() {
            index::<SIZE, 4>(body, &scratch.wide_map, &mut planes[..n]);
        }
        raw16::<SIZE>(body, raw)
    } else if by_value {
        let vals = planes.get_mut(..n).ok_or(ZipnnError::BufferTooSmall(n))?;
        split_byte2(body, vals, raw)
    } else {
        let idx = planes.get_mut(..n).ok_or(ZipnnError::BufferTooSmall(n))?;
        group::<SIZE, 7>(body, &scratch.wide_map, idx, raw)
    };
    let mut flags = 0;
    if constant {
        flags |= FLAG_RAW_CONSTANT;
        // The first element's raw bits.
        let t = top::<SIZE>(body);
        let low = (1u16 << split) - 1;
        out[at] = (((t >> 15) << split) | (t & low)) as u8;
        at += 1;
    } else {
        at += raw_len;
    }
    if SIZE == 4 {
        let low = &mut out[at..at + 2 * n];
        let (mut any, mut all) = (0u16, u16::MAX);
        for (l, e) in low.chunks_exact_mut(2).zip(body.chunks_exact(SIZE)) {
            l.copy_from_slice(&e[..2]);
            let v = u16::from_le_bytes([e[0], e[1]]);
            any |= v;
            all &= v;
        }
        if any == all {
            flags |= FLAG_LOW_CONSTANT;
            at += 2;
        } else {
            at += 2 * n;
        }
    }
    out[1] = flags;
    if let Some(bits) = huff_bits {
        let end = out.len() - tail.len();
        let fits = at + 1 + huffman::header_len(distinct) + (bits as usize).div_ceil(8) + 12 <= end;
        let dst = &mut out[at + 1..end];
        let coded = fits
            .then(|| {
                if wide {
                    encode_huffman::<SIZE, 4>(body, distinct, scratch, dst)
                } else {
                    encode_huffman::<SIZE, 7>(body, distinct, scratch, dst)
                }
            })
            .flatten();
        if let Some(len) = coded {
            out[at] = MODE_HUFFMAN;
            at += 1 + len;
            out[at..at + tail.len()].copy_from_slice(tail);
            return Ok(Some(at + tail.len()));
        }
        if wide {
            index::<SIZE, 4>(body, &scratch.wide_map, &mut planes[..n]);
        }
    }
    if !wide && n >= TANS_MIN_ELEMENTS && distinct >= 2 {
        let end = out.len() - tail.len();
        // Symbols: the values themselves (FP16) or dictionary indices.
        let sym_counts = if by_value {
            let mut c = [0u32; 256];
            c.copy_from_slice(&scratch.wide_hist[..256]);
            c
        } else {
            counts
        };
        if let Some(len) = encode_tans(planes, n, &sym_counts, &mut out[at..end], scratch) {
            at += len;
            out[at..at + tail.len()].copy_from_slice(tail);
            return Ok(Some(at + tail.len()));
        }
        if by_value {
            // rANS codes indices.
            index::<SIZE, 7>(body, &scratch.wide_map, &mut planes[..n]);
        }
    }
    let idx = &planes[..n];
    at += entropy::encode_with_counts(idx, &counts, &mut out[at..], scratch).map_err(encode_err)?;
    out[at..at + tail.len()].copy_from_slice(tail);
    Ok(Some(at + tail.len()))
}

/// A Huffman index block (after the mode byte) of the elements of `body` split at `SPLIT`,
/// with the codes `scratch.huff` was built with for the dictionary `scratch.wide_map`; `None`
/// when it does not fit `out`.
fn encode_huffman<const SIZE: usize, const SPLIT: u32>(
    body: &[u8],
    distinct: usize,
    scratch: &mut EncoderScratch,
    out: &mut [u8],
) -> Option<usize> {
    let n = body.len() / SIZE;
    // Value → code, so the coder reads each element once.
    let values = 1usize << (15 - SPLIT);
    for v in 0..values {
        if scratch.wide_hist[v] != 0 {
            scratch.wide_code[v] = scratch.huff.codes[usize::from(scratch.wide_map[v])];
        }
    }
    let codes = &scratch.wide_code;
    // The sign sits just above the value after the shift, so the mask drops it. A literal per
    // split, not `values - 1`: the closures reach the coder by reference, and a captured
    // mask would be loaded again for every four symbols.
    let mask = if SPLIT == 4 { WIDE_VALUES - 1 } else { 255 };
    let code_of = move |e: &[u8]| codes[usize::from(top::<SIZE>(e) >> SPLIT) & mask];
    // Fixed-size pieces: no index checks while coding.
    let quads = |i: usize, j: usize| {
        body[i * SIZE..j * SIZE]
            .chunks_exact(4 * SIZE)
            .map(move |q| core::array::from_fn(|j| code_of(&q[j * SIZE..j * SIZE + SIZE])))
    };
    let one = |i: usize| code_of(&body[i * SIZE..i * SIZE + SIZE]);
    huffman::encode(n, distinct, &scratch.huff, quads, one, out)
}

/// A tANS index block of the `n` symbols in `planes[..n]`, the rest of `planes` holding the
/// lanes while they are written; `None` when it does not fit `out` (the caller then writes
/// rANS, or stores the chunk). The symbols are the indices or the values themselves, `counts`
/// theirs (at least two present): the present symbols in ascending order are the dictionary's
/// indices, so the table written over indices is the symbols' with the absent ones left out,
/// and both spread the same (absent symbols take no position).
fn encode_tans(
    planes: &mut [u8],
    n: usize,
    counts: &[u32; 256],
    out: &mut [u8],
    scratch: &mut EncoderScratch,
) -> Option<usize> {
    let (syms, lanes) = planes.split_at_mut(n);
    let mut freqs = [0u16; 256];
    entropy::normalize(counts, &mut freqs, tans::TABLE_LOG);
    let mut by_index = [0u16; 256];
    for (i, &f) in freqs.iter().filter(|&&f| f > 0).enumerate() {
        by_index[i] = f;
    }
    *out.first_mut()? = MODE_TANS;
    let t = entropy::write_table(&by_index, out.get_mut(1..)?)?;
    scratch.tans.build(&freqs);
    let len = tans::encode(syms, &scratch.tans, lanes, out.get_mut(1 + t..)?)?;
    Some(1 + t + len)
}

/// FP16's 8-bit split by plain byte operations (the compiler vectorises them): per element
/// its value (bits 14..7) into `vals` and its raw byte (sign above bits 6..0) into `raw`.
/// Returns whether all raw bytes are equal.
#[inline(never)]
fn split_byte2(body: &[u8], vals: &mut [u8], raw: &mut [u8]) -> bool {
    // Lane-wise accumulators of the elements' raw bits in place (sign and low 7 bits), folded
    // at the end: kept as words, so the loop stays in word lanes (with byte accumulators the
    // compiler takes the raw bytes apart with shuffles).
    let (mut any16, mut all16) = ([0u16; 16], [0x807f_u16; 16]);
    let pieces = body
        .chunks_exact(32)
        .zip(vals.chunks_exact_mut(16))
        .zip(raw.chunks_exact_mut(16));
    for ((e, v), r) in pieces {
        // Whole u16 lanes narrowed to bytes: a shape SSE2 has (shifts, masks, a pack).
        let t: [u16; 16] = core::array::from_fn(|k| u16::from_le_bytes([e[2 * k], e[2 * k + 1]]));
        // Both below 256 as u16 before narrowing, so the narrowing is a saturating pack; the
        // sign reaches bit 7 by one word shift of the masked element (bits 6..0 stay below).
        for k in 0..16 {
            let m = t[k] & 0x807f;
            any16[k] |= m;
            all16[k] &= m;
            v[k] = (t[k] >> 7 & 0xff) as u8;
            r[k] = ((m | m >> 8) & 0xff) as u8;
        }
    }
    let fold = |w: u16| (w | w >> 8) as u8;
    let mut any = fold(any16.iter().fold(0, |a, &b| a | b));
    let mut all = fold(all16.iter().fold(0x807f, |a, &b| a & b));
    let whole = body.len() / 32 * 16;
    for (k, e) in body.chunks_exact(2).enumerate().skip(whole) {
        vals[k] = e[1] << 1 | e[0] >> 7;
        raw[k] = (e[0] & 0x7f) | (e[1] & 0x80);
        any |= raw[k];
        all &= raw[k];
    }
    any == all
}

/// Payload length declared by a chunk record's header, checked against the largest record a
/// chunk of `chunk_len` bytes can produce, so a corrupt length never causes a huge read.
pub fn chunk_payload_len(
    dtype: Dtype,
    index: u64,
    record_header: &[u8],
    chunk_len: usize,
) -> Result<usize, ZipnnError> {
    let h = record_header
        .get(..CHUNK_HEADER_LEN)
        .ok_or(corrupt(index, "record header truncated"))?;
    let len = le_u32(h, field::CHUNK_PAYLOAD_LEN.start) as usize;
    if len > max_payload_len(dtype, chunk_len) {
        return Err(corrupt(index, "payload length out of range"));
    }
    Ok(len)
}

/// Decodes the record of chunk `index` (header and payload, nothing more) into `out` (exactly
/// the chunk's original length). `planes` is scratch of at least `out.len()` bytes.
pub fn decode_chunk(
    dtype: Dtype,
    index: u64,
    record: &[u8],
    planes: &mut [u8],
    out: &mut [u8],
    tables: &mut DecoderTables,
) -> Result<(), ZipnnError> {
    let payload_len = chunk_payload_len(dtype, index, record, out.len())?;
    let payload = &record[CHUNK_HEADER_LEN..];
    if payload.len() != payload_len {
        return Err(corrupt(index, "record length does not match its header"));
    }
    let crc = le_u32(record, field::CHUNK_CRC.start);
    if chunk_crc(index, payload_len as u32, payload) != crc {
        return Err(corrupt(index, "CRC mismatch"));
    }
    let stored = match dtype {
        Dtype::Raw => payload,
        _ => match payload.first() {
            Some(&LAYOUT_STORED) => &payload[1..],
            Some(_) => {
                return match dtype {
                    Dtype::Fp32 => decode_elements::<4>(payload, planes, out, tables),
                    _ => decode_elements::<2>(payload, planes, out, tables),
                }
                .map_err(|reason| corrupt(index, reason))
            }
            None => return Err(corrupt(index, "payload truncated")),
        },
    };
    if stored.len() != out.len() {
        return Err(corrupt(index, "stored chunk has the wrong length"));
    }
    out.copy_from_slice(stored);
    Ok(())
}

/// Decodes a coded float payload (layout byte not [`LAYOUT_STORED`]) into `out`.
fn decode_elements<const SIZE: usize>(
    payload: &[u8],
    planes: &mut [u8],
    out: &mut [u8],
    tables: &mut DecoderTables,
) -> Result<(), &'static str> {
    let n = out.len() / SIZE;
    let tail_len = out.len() - n * SIZE;
    let layout = payload[0];
    let split = match layout {
        SPLIT_WIDE | LAYOUT_WIDE16 => SPLIT_WIDE,
        SPLIT_BYTE => SPLIT_BYTE,
        _ => return Err("unknown chunk layout"),
    };
    let flags = *payload.get(1).ok_or("payload truncated")?;
    let known = FLAG_RAW_CONSTANT | if SIZE == 4 { FLAG_LOW_CONSTANT } else { 0 };
    if flags & !known != 0 || n == 0 {
        return Err("unknown chunk flags");
    }
    let mut at = 2;
    let width = usize::from(split) + 1;
    let distinct = read_dictionary(
        payload,
        &mut at,
        15 - u32::from(split),
        u32::from(split),
        &mut tables.values,
    )
    .ok_or("bad value dictionary")?;
    if layout == SPLIT_WIDE {
        return decode_legacy_wide::<SIZE>(payload, at, flags, distinct, planes, out, tables);
    }
    // Raw bits and low halves as (bytes, stride): a constant section repeats one group.
    let group_bytes = if split == SPLIT_WIDE {
        GROUP16_BYTES
    } else {
        16
    };
    let mut raw_one = [0u8; 16];
    let (raw, raw_stride): (&[u8], usize) = if flags & FLAG_RAW_CONSTANT != 0 {
        let w = *payload.get(at).ok_or("payload truncated")?;
        if u32::from(w) >> width != 0 {
            return Err("bad constant raw bits");
        }
        at += 1;
        if split == SPLIT_WIDE {
            let nib = (w & 15) * 0x11;
            raw_one[..8].fill(nib);
            raw_one[8..10].fill(if w >> 4 != 0 { 0xff } else { 0 });
        } else {
            raw_one.fill(w);
        }
        (&raw_one[..group_bytes], 0)
    } else {
        let len = if split == SPLIT_WIDE {
            n.div_ceil(16) * GROUP16_BYTES
        } else {
            n
        };
        let r = payload.get(at..at + len).ok_or("payload truncated")?;
        at += len;
        (r, group_bytes)
    };
    let low_one: [u8; 32];
    let (low, low_stride): (&[u8], usize) = if SIZE != 4 {
        (&[], 0)
    } else if flags & FLAG_LOW_CONSTANT != 0 {
        let l = payload.get(at..at + 2).ok_or("payload truncated")?;
        at += 2;
        low_one = core::array::from_fn(|i| l[i % 2]);
        (&low_one, 0)
    } else {
        let l = payload.get(at..at + 2 * n).ok_or("payload truncated")?;
        at += 2 * n;
        (l, 32)
    };
    let block_end = payload
        .len()
        .checked_sub(tail_len)
        .filter(|&e| e >= at)
        .ok_or("payload truncated")?;
    let block = &payload[at..block_end];
    let (body, tail) = out.split_at_mut(n * SIZE);
    let sections = Sections {
        raw,
        raw_stride,
        low,
        low_stride,
    };
    if block.first() == Some(&MODE_HUFFMAN) && SIZE == 2 && split == SPLIT_WIDE && raw_stride != 0 {
        // BF16's big chunks: the values go straight into the output (it has their layout),
        // the raw bits are merged in place.
        let vals = &tables.values;
        huffman::decode(&block[1..], n, distinct, vals, &mut tables.huff, body)
            .map_err(|_| "index block does not decode")?;
        // Every whole group: the raw section was read with one group per 16 elements.
        let g = merge_wide2(raw, body);
        let rest = &mut body[32 * g..];
        debug_assert!(rest.len() < 32);
        let mut last = [0u8; 32];
        last[..rest.len()].copy_from_slice(rest);
        let sections = Sections {
            raw: &raw[g * GROUP16_BYTES..],
            ..sections
        };
        merge::<SIZE, true, _>(&Decoded(&last), &sections, rest);
    } else if block.first() == Some(&MODE_HUFFMAN) && SIZE == 2 && raw_stride != 0 {
        // FP16's big Huffman-coded chunks (8-bit split, as the tANS ones): the values go
        // straight into the output, the raw bytes are merged in place.
        let vals = &tables.values;
        huffman::decode(&block[1..], n, distinct, vals, &mut tables.huff, body)
            .map_err(|_| "index block does not decode")?;
        merge_byte2_rest(raw, &sections, body);
    } else if block.first() == Some(&MODE_HUFFMAN)
        && SIZE == 4
        && split == SPLIT_WIDE
        && raw_stride != 0
        && low_stride != 0
    {
        // FP32's big chunks: the values are decoded into the output's upper half, which the
        // merge overwrites from the front only after reading them.
        let half = 2 * n;
        let vals = &tables.values;
        huffman::decode(
            &block[1..],
            n,
            distinct,
            vals,
            &mut tables.huff,
            &mut body[half..],
        )
        .map_err(|_| "index block does not decode")?;
        let g = merge_wide4(raw, low, body);
        let tops = &body[half + 32 * g..];
        debug_assert!(tops.len() < 32);
        let mut last = [0u8; 32];
        last[..tops.len()].copy_from_slice(tops);
        let sections = Sections {
            raw: &raw[g * GROUP16_BYTES..],
            low: &low[32 * g..],
            ..sections
        };
        merge::<SIZE, true, _>(&Decoded(&last), &sections, &mut body[64 * g..]);
    } else if block.first() == Some(&MODE_HUFFMAN) {
        let vals = planes
            .get_mut(..2 * n)
            .ok_or("scratch smaller than the chunk")?;
        huffman::decode(
            &block[1..],
            n,
            distinct,
            &tables.values,
            &mut tables.huff,
            vals,
        )
        .map_err(|_| "index block does not decode")?;
        let vals = Decoded(vals);
        if split == SPLIT_WIDE {
            merge::<SIZE, true, _>(&vals, &sections, body);
        } else {
            merge::<SIZE, false, _>(&vals, &sections, body);
        }
    } else if block.first() == Some(&MODE_TANS) {
        if split != SPLIT_BYTE {
            return Err("tANS index block in an 11-bit chunk");
        }
        let mut freqs = [0u16; 256];
        let (t, last) = entropy::read_freqs(&block[1..], tans::TABLE_LOG, &mut freqs)
            .map_err(|_| "bad tANS frequency table")?;
        if last >= distinct {
            return Err("index outside the dictionary");
        }
        tans::build_decoder(&freqs, &tables.values, &mut tables.slots);
        let coded = &block[1 + t..];
        if SIZE == 2 && raw_stride != 0 {
            // FP16's big chunks: the values go straight into the output, the raw bytes are
            // merged in place.
            tans::decode(coded, n, &tables.slots, body)
                .map_err(|_| "index block does not decode")?;
            merge_byte2_rest(raw, &sections, body);
        } else {
            let vals = planes
                .get_mut(..2 * n)
                .ok_or("scratch smaller than the chunk")?;
            tans::decode(coded, n, &tables.slots, vals)
                .map_err(|_| "index block does not decode")?;
            merge::<SIZE, false, _>(&Decoded(vals), &sections, body);
        }
    } else {
        let idx = planes
            .get_mut(..n)
            .ok_or("scratch smaller than the chunk")?;
        decode_index(block, idx, distinct, tables)?;
        if split == SPLIT_BYTE && SIZE == 2 && sections.raw_stride != 0 {
            // FP16's big chunks first, in their own plain loop; the generic merge does the rest.
            let g = merge_byte2(idx, &tables.values, sections.raw, body);
            let rest = Sections {
                raw: &sections.raw[16 * g..],
                ..sections
            };
            let vals = Indexed(&idx[16 * g..], &tables.values);
            merge::<SIZE, false, _>(&vals, &rest, &mut body[32 * g..]);
            tail.copy_from_slice(&payload[block_end..]);
            return Ok(());
        }
        let vals = Indexed(idx, &tables.values);
        if split == SPLIT_WIDE {
            merge::<SIZE, true, _>(&vals, &sections, body);
        } else {
            merge::<SIZE, false, _>(&vals, &sections, body);
        }
    }
    tail.copy_from_slice(&payload[block_end..]);
    Ok(())
}

/// Decodes an entropy-coded index block of `idx.len()` indices below `distinct`.
fn decode_index(
    block: &[u8],
    idx: &mut [u8],
    distinct: usize,
    tables: &mut DecoderTables,
) -> Result<(), &'static str> {
    match entropy::decode(block, idx, tables) {
        Ok(k) if k == idx.len() => {}
        Ok(_) | Err(CodecError::BufferTooSmall(_)) => return Err("wrong symbol count"),
        Err(_) => return Err("index block does not decode"),
    }
    if usize::from(idx.iter().fold(0, |m, &i| m.max(i))) >= distinct {
        return Err("index outside the dictionary");
    }
    Ok(())
}

/// Decodes the rest of a version 2 chunk with [`SPLIT_WIDE`] (raw bits packed five to an
/// element), from `at` (after the dictionary).
fn decode_legacy_wide<const SIZE: usize>(
    payload: &[u8],
    mut at: usize,
    flags: u8,
    distinct: usize,
    planes: &mut [u8],
    out: &mut [u8],
    tables: &mut DecoderTables,
) -> Result<(), &'static str> {
    let n = out.len() / SIZE;
    let tail_len = out.len() - n * SIZE;
    let width = usize::from(SPLIT_WIDE) + 1;
    let values = tables.values;
    // Scratch: indices, then (for constant sections) the expanded raw bits and low halves.
    let (idx, rest) = planes
        .get_mut(..out.len())
        .ok_or("scratch smaller than the chunk")?
        .split_at_mut(n);
    let raw_len = packed_len(n, width);
    let (raw_buf, rest) = rest.split_at_mut(raw_len);
    let raw: &[u8] = if flags & FLAG_RAW_CONSTANT != 0 {
        let w = u64::from(*payload.get(at).ok_or("payload truncated")?);
        if w >> width != 0 {
            return Err("bad constant raw bits");
        }
        at += 1;
        let mut bits = 0u64;
        for k in 0..8 {
            bits |= w << (width * k);
        }
        for g in raw_buf.chunks_mut(width) {
            let len = g.len();
            g.copy_from_slice(&bits.to_le_bytes()[..len]);
        }
        raw_buf
    } else {
        let r = payload.get(at..at + raw_len).ok_or("payload truncated")?;
        at += raw_len;
        r
    };
    let low: &[u8] = if SIZE != 4 {
        &[]
    } else if flags & FLAG_LOW_CONSTANT != 0 {
        let l = payload.get(at..at + 2).ok_or("payload truncated")?;
        at += 2;
        let low_buf = &mut rest[..2 * n];
        for c in low_buf.chunks_exact_mut(2) {
            c.copy_from_slice(l);
        }
        low_buf
    } else {
        let l = payload.get(at..at + 2 * n).ok_or("payload truncated")?;
        at += 2 * n;
        l
    };
    let block_end = payload
        .len()
        .checked_sub(tail_len)
        .filter(|&e| e >= at)
        .ok_or("payload truncated")?;
    decode_index(&payload[at..block_end], idx, distinct, tables)?;
    let (body, tail) = out.split_at_mut(n * SIZE);
    ungroup::<SIZE, 4>(idx, &values, raw, body);
    if SIZE == 4 {
        for (e, l) in body.chunks_exact_mut(SIZE).zip(low.chunks_exact(2)) {
            e[..2].copy_from_slice(l);
        }
    }
    tail.copy_from_slice(&payload[block_end..]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Whole containers in memory.

/// Compresses `src` as one segment of `dtype` into `out`; returns the container length.
/// `planes` is scratch of at least `min(src.len(), chunk_size)` bytes. Suits small buffers and
/// tests; the file tool drives the chunk functions itself to use threads.
pub fn compress(
    dtype: Dtype,
    chunk_size: u32,
    src: &[u8],
    planes: &mut [u8],
    out: &mut [u8],
    scratch: &mut EncoderScratch,
) -> Result<usize, ZipnnError> {
    let seg = Segment {
        dtype,
        len: src.len() as u64,
    };
    let mut at = ContainerHeader::write(0, chunk_size, &[seg], out)?;
    for (i, chunk) in src.chunks(chunk_size as usize).enumerate() {
        let need = at + max_chunk_record_len(dtype, chunk.len());
        let dst = out.get_mut(at..).filter(|d| d.len() + at >= need);
        let dst = dst.ok_or(ZipnnError::BufferTooSmall(need))?;
        at += encode_chunk(dtype, i as u64, chunk, planes, dst, scratch)?;
    }
    Ok(at)
}

/// Upper bound of [`compress`]'s output for `len` bytes.
pub const fn max_compressed_len(dtype: Dtype, chunk_size: u32, len: usize) -> usize {
    // Each record is at most one byte longer than its chunk; the one being written needs the
    // coding slack on top.
    let chunks = len.div_ceil(chunk_size as usize);
    HEADER_LEN
        + SEGMENT_ENTRY_LEN
        + len
        + chunks * (CHUNK_HEADER_LEN + 1)
        + max_chunk_record_len(dtype, 0)
}

/// Decompresses a container of one or more segments into `out`; returns the original length.
/// `planes` is scratch of at least the container's chunk size; `segments` receives the table.
pub fn decompress(
    input: &[u8],
    planes: &mut [u8],
    segments: &mut [Segment],
    out: &mut [u8],
    tables: &mut DecoderTables,
) -> Result<usize, ZipnnError> {
    let h = ContainerHeader::parse(input)?;
    h.check_table(input, segments)?;
    let total = usize::try_from(h.total_len).map_err(|_| ZipnnError::TooLarge)?;
    let out = out
        .get_mut(..total)
        .ok_or(ZipnnError::BufferTooSmall(total))?;
    let mut at = h.table_end();
    let mut written = 0usize;
    let mut index = 0u64;
    for seg in &segments[..h.segments as usize] {
        let mut left = seg.len as usize;
        while left > 0 {
            let chunk_len = left.min(h.chunk_size as usize);
            let rest = input.get(at..).unwrap_or(&[]);
            let payload = chunk_payload_len(seg.dtype, index, rest, chunk_len)?;
            let record = rest
                .get(..CHUNK_HEADER_LEN + payload)
                .ok_or(corrupt(index, "record truncated"))?;
            let dst = &mut out[written..written + chunk_len];
            decode_chunk(seg.dtype, index, record, planes, dst, tables)?;
            at += record.len();
            written += chunk_len;
            left -= chunk_len;
            index += 1;
        }
    }
    if at != input.len() {
        return Err(ZipnnError::CorruptedHeader(
            "trailing bytes after the last chunk",
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    /// Containers of `src`'s first bytes, at lengths around chunk and element edges, coded in
    /// chunks of `chunk` bytes, decompress to what was coded.
    fn containers_round_trip(
        dtype: Dtype,
        chunk: u32,
        src: &[u8],
        planes: &mut [u8],
        scratch: &mut EncoderScratch,
        tables: &mut DecoderTables,
    ) {
        for l in [
            16_384,
            16_385,
            16_387,
            32_766,
            32_767,
            32_768 + 30,
            65_536 + 7,
        ] {
            let mut out = [0u8; 75_000];
            let n = compress(dtype, chunk, &src[..l], planes, &mut out, scratch).unwrap();
            let mut back = [0u8; 70_003];
            let mut segs = [Segment {
                dtype: Dtype::Raw,
                len: 0,
            }];
            let got = decompress(&out[..n], planes, &mut segs, &mut back, tables);
            assert_eq!(got, Ok(l), "{dtype:?} {chunk} {l}");
            assert!(back[..l] == src[..l], "{dtype:?} {chunk} {l}");
        }
    }

    /// The one-multiply gathering of eight lanes' signs against gathering four at a time, for
    /// every sign pattern, whatever the lanes' other bits.
    #[test]
    fn eight_signs_gather_as_four_and_four() {
        let mut rng = Rng(8);
        for pattern in 0..256u64 {
            let lanes = |bits: u64, noise: u64| {
                let spread = (0..4).fold(0, |w, k| w | ((bits >> k) & 1) << (16 * k + 15));
                spread | noise & 0x7fff_7fff_7fff_7fff
            };
            let (a, b) = (lanes(pattern, rng.next()), lanes(pattern >> 4, rng.next()));
            assert_eq!(u32::from(signs8(a, b)), signs4(a) | signs4(b) << 4);
            assert_eq!(u64::from(signs8(a, b)), pattern);
        }
    }

    #[test]
    fn grouping_is_a_bijection_and_codes_the_exponent() {
        let mut rng = Rng(5);
        let src: [u8; 4099] = core::array::from_fn(|_| rng.next() as u8);
        let mut map = [0u8; WIDE_VALUES];
        let mut values = [0u16; 256];
        for v in 0..256 {
            values[v] = (v as u16) << 7;
            map[v] = v as u8;
        }
        // Split at 7 with the identity dictionary: index = bits 14..7, raw = sign and bits 6..0.
        for len in [0usize, 2, 14, 16, 18, 4098] {
            let mut idx = [0u8; 2049];
            let mut raw = [0u8; 2049];
            let mut back = [0u8; 4098];
            let n = len / 2;
            let constant = group::<2, 7>(&src[..len], &map, &mut idx[..n], &mut raw[..n]);
            assert!(!constant || n <= 1);
            ungroup::<2, 7>(&idx[..n], &values, &raw[..n], &mut back[..len]);
            assert_eq!(back[..len], src[..len], "{len}");
        }
        let one = (-1.5f32).to_bits().to_le_bytes();
        let (mut idx, mut raw) = ([0u8; 1], [0u8; 1]);
        group::<4, 7>(&one, &map, &mut idx, &mut raw);
        assert_eq!(
            (idx[0], raw[0]),
            (127, 0x80 | 0x40),
            "exponent coded, sign and mantissa raw"
        );
        // Split at 4: five raw bits per element, eight elements per five bytes.
        let mut wide_map = [0u8; WIDE_VALUES];
        let mut wide_values = [0u16; 256];
        for v in 0..256 {
            wide_map[1000 + v] = v as u8;
            wide_values[v] = ((1000 + v) as u16) << 4;
        }
        let mut src2 = [0u8; 26];
        for i in 0..13 {
            let v = (((1000 + i * 9) as u16) << 4) | ((i as u16 * 7) & 15) | ((i as u16 & 1) << 15);
            src2[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
        let (mut idx, mut raw, mut back) = ([0u8; 13], [0u8; 9], [0u8; 26]);
        assert_eq!(packed_len(13, 5), 9);
        group::<2, 4>(&src2, &wide_map, &mut idx, &mut raw);
        assert_eq!(idx[3], 27);
        ungroup::<2, 4>(&idx, &wide_values, &raw, &mut back);
        assert_eq!(back, src2);
    }

    fn round_trip(dtype: Dtype, src: &[u8], chunk: u32) -> usize {
        let mut out = [0u8; 40_000];
        let mut planes = [0u8; 8192];
        let mut scratch = EncoderScratch::new();
        let len = compress(dtype, chunk, src, &mut planes, &mut out, &mut scratch).unwrap();
        assert!(len <= max_compressed_len(dtype, chunk, src.len()));
        let mut back = [0u8; 30_000];
        let mut segs = [Segment {
            dtype: Dtype::Raw,
            len: 0,
        }; 1];
        let mut tables = DecoderTables::new();
        let n = decompress(&out[..len], &mut planes, &mut segs, &mut back, &mut tables).unwrap();
        assert_eq!(&back[..n], src);
        len
    }

    /// Weight-like elements: magnitudes around 2^-4 with random signs, written as FP32
    /// (BF16/FP16 take the upper or converted halves). The top three mantissa bits depend on
    /// the exponent (much more than in real weights, so that coding them with it pays even in
    /// small chunks); the lower ones are random.
    fn weights(rng: &mut Rng, out: &mut [u8], dtype: Dtype) {
        for e in out.chunks_exact_mut(dtype.size()) {
            let r = rng.next();
            let exp = 123 - r.trailing_zeros().min(9);
            let top3 = if r >> 60 == 0 {
                (r >> 40) as u32 & 7
            } else {
                exp & 7
            };
            let low = (r >> 20) as u32 & 0xf_ffff;
            let v = ((r >> 63) as u32) << 31 | exp << 23 | top3 << 20 | low;
            match dtype {
                Dtype::Fp32 => e.copy_from_slice(&v.to_le_bytes()),
                Dtype::Bf16 => e.copy_from_slice(&((v >> 16) as u16).to_le_bytes()),
                // An IEEE half of the same magnitude (exponent rebiased, mantissa truncated).
                Dtype::Fp16 => {
                    let h = (v >> 16) & 0x8000 | ((exp - 112) << 10) | (v >> 13) & 0x3ff;
                    e.copy_from_slice(&(h as u16).to_le_bytes());
                }
                Dtype::Raw => e.copy_from_slice(&[r as u8]),
            }
        }
    }

    /// FP16 weights whose values' probabilities are far from powers of two (a third of the
    /// elements share one value, the rest spread over 24), so Huffman's whole-bit codes lose
    /// well over [`HUFFMAN_FP16_EXCESS`] and big chunks stay tANS coded.
    fn uneven_fp16(rng: &mut Rng, out: &mut [u8]) {
        for e in out.chunks_exact_mut(2) {
            let r = rng.next();
            let v = match r % 3 {
                0 => 0x70,
                _ => 0x60 + (r >> 8) % 24,
            };
            let h = (r >> 40 & 1) << 15 | v << 7 | (r >> 32) & 0x7f;
            e.copy_from_slice(&(h as u16).to_le_bytes());
        }
    }

    /// The first chunk's payload starts with its layout byte.
    fn first_layout(container: &[u8]) -> u8 {
        container[HEADER_LEN + SEGMENT_ENTRY_LEN + CHUNK_HEADER_LEN]
    }

    #[test]
    fn weights_code_with_the_expected_split_and_round_trip_at_every_length() {
        let mut rng = Rng(77);
        for (dtype, layout, most) in [
            (Dtype::Bf16, LAYOUT_WIDE16, 0.70),
            (Dtype::Fp16, SPLIT_BYTE, 0.90),
            (Dtype::Fp32, LAYOUT_WIDE16, 0.86),
        ] {
            let mut src = [0u8; 16_384];
            weights(&mut rng, &mut src, dtype);
            let len = round_trip(dtype, &src, 8192);
            let ratio = len as f64 / src.len() as f64;
            assert!(ratio < most, "{dtype:?}: ratio {ratio}");
            let mut out = [0u8; 40_000];
            let mut planes = [0u8; 8192];
            let n = compress(
                dtype,
                8192,
                &src,
                &mut planes,
                &mut out,
                &mut EncoderScratch::new(),
            );
            assert_eq!(first_layout(&out[..n.unwrap()]), layout, "{dtype:?}");
            // Every length up to a few groups of eight elements, and odd tails, with chunk
            // boundaries inside groups.
            for len in (0..=300).chain([4095, 4097, 8191, 8193, 12_287, 16_383]) {
                round_trip(dtype, &src[..len], 4096);
            }
        }
    }

    /// The mode byte of the index block of a coded record (header included) of `n` elements.
    fn index_mode<const SIZE: usize>(record: &[u8], n: usize) -> u8 {
        let p = &record[CHUNK_HEADER_LEN..];
        assert_eq!(p[0], LAYOUT_WIDE16);
        let mut at = 2;
        read_dictionary(p, &mut at, 11, 4, &mut [0; 256]).unwrap();
        at += if p[1] & FLAG_RAW_CONSTANT != 0 {
            1
        } else {
            n.div_ceil(16) * GROUP16_BYTES
        };
        if SIZE == 4 {
            at += if p[1] & FLAG_LOW_CONSTANT != 0 {
                2
            } else {
                2 * n
            };
        }
        p[at]
    }

    /// Chunks of at least 8192 elements code their 11-bit indices with Huffman; every tail
    /// length, constant raw bits and constant low halves round-trip.
    #[test]
    fn big_chunks_are_huffman_coded_and_round_trip() {
        let mut rng = Rng(0xbeef);
        for dtype in [Dtype::Bf16, Dtype::Fp32] {
            let mut src = [0u8; 70_003];
            weights(&mut rng, &mut src, dtype);
            let mut rec = [0u8; 70_000];
            let mut planes = [0u8; 65_536];
            let mut scratch = EncoderScratch::new();
            let chunk = &src[..32_768];
            let len = encode_chunk(dtype, 0, chunk, &mut planes, &mut rec, &mut scratch).unwrap();
            let mode = match dtype {
                Dtype::Fp32 => index_mode::<4>(&rec[..len], 8192),
                _ => index_mode::<2>(&rec[..len], 16_384),
            };
            assert_eq!(mode, MODE_HUFFMAN, "{dtype:?}");
            let mut back = [0u8; 32_768];
            let mut tables = DecoderTables::new();
            decode_chunk(dtype, 0, &rec[..len], &mut planes, &mut back, &mut tables).unwrap();
            assert!(back == *chunk);
            containers_round_trip(dtype, 16_384, &src, &mut planes, &mut scratch, &mut tables);
            // Constant raw bits (positive, low nibble 5) and, for FP32, constant low halves.
            for e in src.chunks_exact_mut(dtype.size()) {
                let k = dtype.size();
                let t = (u16::from_le_bytes([e[k - 2], e[k - 1]]) & 0x7ff0) | 5;
                e[k - 2..].copy_from_slice(&t.to_le_bytes());
                if k == 4 {
                    e[..2].copy_from_slice(&[0x12, 0x34]);
                }
            }
            let chunk = &src[..32_768];
            let len = encode_chunk(dtype, 3, chunk, &mut planes, &mut rec, &mut scratch).unwrap();
            assert_ne!(rec[CHUNK_HEADER_LEN + 1] & FLAG_RAW_CONSTANT, 0);
            decode_chunk(dtype, 3, &rec[..len], &mut planes, &mut back, &mut tables).unwrap();
            assert!(back == *chunk, "{dtype:?} constant sections");
        }
    }

    /// The mode byte of the index block of a coded 8-bit-split record (header included) of
    /// `n` elements of `size` bytes.
    fn byte_index_mode(record: &[u8], n: usize, size: usize) -> u8 {
        let p = &record[CHUNK_HEADER_LEN..];
        assert_eq!(p[0], SPLIT_BYTE);
        let mut at = 2;
        read_dictionary(p, &mut at, 8, 7, &mut [0; 256]).unwrap();
        at += if p[1] & FLAG_RAW_CONSTANT != 0 { 1 } else { n };
        if size == 4 {
            at += if p[1] & FLAG_LOW_CONSTANT != 0 {
                2
            } else {
                2 * n
            };
        }
        p[at]
    }

    /// FP32 elements with more than 256 distinct 11-bit values (exponents spread over 64
    /// binades), so the chunk takes the 8-bit split.
    fn wide_spread_fp32(rng: &mut Rng, out: &mut [u8]) {
        for e in out.chunks_exact_mut(4) {
            let r = rng.next();
            let v = ((r >> 63) as u32) << 31
                | (96 + (r % 64) as u32) << 23
                | (r >> 20) as u32 & 0x7f_ffff;
            e.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Chunks of at least 8192 elements with the 8-bit split (FP16's, and FP32's with many
    /// exponents) code their indices with tANS and round-trip: every tail length, lanes of
    /// unequal length, constant raw bits (merged through scratch, not in place); smaller
    /// chunks (device blocks) keep rANS.
    #[test]
    fn big_byte_split_chunks_are_tans_coded_and_round_trip() {
        let mut rng = Rng(0x7a45);
        let mut src = [0u8; 70_003];
        let mut rec = [0u8; 72_000];
        let mut planes = [0u8; 65_536];
        let mut scratch = EncoderScratch::new();
        let mut tables = DecoderTables::new();
        for dtype in [Dtype::Fp16, Dtype::Fp32] {
            match dtype {
                Dtype::Fp32 => wide_spread_fp32(&mut rng, &mut src),
                _ => uneven_fp16(&mut rng, &mut src),
            }
            let size = dtype.size();
            for (bytes, mode) in [
                (8192 * size, MODE_TANS),
                (8191 * size, entropy::MODE_RANS),
                (4096, entropy::MODE_RANS),
                (8192 * size + 2 * size + 1, MODE_TANS),
                (65_536, MODE_TANS),
            ] {
                let chunk = &src[..bytes];
                let len =
                    encode_chunk(dtype, 1, chunk, &mut planes, &mut rec, &mut scratch).unwrap();
                assert_eq!(
                    byte_index_mode(&rec[..len], bytes / size, size),
                    mode,
                    "{dtype:?} {bytes}"
                );
                let mut back = [0u8; 65_536];
                let out = &mut back[..bytes];
                decode_chunk(dtype, 1, &rec[..len], &mut planes, out, &mut tables).unwrap();
                assert!(*out == *chunk, "{dtype:?} {bytes}");
            }
            containers_round_trip(dtype, 32_768, &src, &mut planes, &mut scratch, &mut tables);
        }
        // Flat values with scratch of the chunk's size, as files lend: a lane may take about a
        // byte a symbol, what flat 8-bit values need, so the lanes fill their quarters (tANS
        // gives way to rANS when one does not fit); coding does not pay, the chunk is stored,
        // and it round-trips.
        let flat: [u8; 32_768] = core::array::from_fn(|_| rng.next() as u8);
        for bytes in [16_384, 32_768] {
            let chunk = &flat[..bytes];
            let scratch_planes = &mut planes[..bytes];
            let len = encode_chunk(
                Dtype::Fp16,
                3,
                chunk,
                scratch_planes,
                &mut rec,
                &mut scratch,
            )
            .unwrap();
            let mut back = [0u8; 32_768];
            let out = &mut back[..bytes];
            decode_chunk(
                Dtype::Fp16,
                3,
                &rec[..len],
                scratch_planes,
                out,
                &mut tables,
            )
            .unwrap();
            assert!(*out == *chunk, "flat values, {bytes} bytes");
        }
        // Constant raw bits (the encoder would take the 11-bit split for them, so the record
        // is edited by hand): the record's raw bytes become the one byte 0x55, and the chunk
        // decodes to the elements with those raw bits.
        uneven_fp16(&mut rng, &mut src);
        let chunk = &src[..32_768];
        constant_raw_bits_decode(chunk, MODE_TANS, &mut planes, &mut rec, &mut scratch);
    }

    /// Codes the 32 KiB FP16 `chunk` (index block mode `mode`), then makes the record's raw
    /// bytes the one constant byte 0x55 (the encoder would take the 11-bit split for such a
    /// chunk, so the record is edited by hand): it decodes, through scratch rather than in
    /// place, to the elements with those raw bits.
    fn constant_raw_bits_decode(
        chunk: &[u8],
        mode: u8,
        planes: &mut [u8],
        rec: &mut [u8],
        scratch: &mut EncoderScratch,
    ) {
        let len = encode_chunk(Dtype::Fp16, 2, chunk, planes, rec, scratch).unwrap();
        let p = &mut rec[CHUNK_HEADER_LEN..len];
        let mut at = 2;
        read_dictionary(p, &mut at, 8, 7, &mut [0; 256]).unwrap();
        p[1] |= FLAG_RAW_CONSTANT;
        p[at] = 0x55;
        p.copy_within(at + 16_384.., at + 1);
        let len = len - 16_383;
        let crc = chunk_crc(
            2,
            (len - CHUNK_HEADER_LEN) as u32,
            &rec[CHUNK_HEADER_LEN..len],
        );
        rec[field::CHUNK_PAYLOAD_LEN]
            .copy_from_slice(&((len - CHUNK_HEADER_LEN) as u32).to_le_bytes());
        rec[field::CHUNK_CRC].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(byte_index_mode(&rec[..len], 16_384, 2), mode);
        let mut back = [0u8; 32_768];
        let mut tables = DecoderTables::new();
        decode_chunk(Dtype::Fp16, 2, &rec[..len], planes, &mut back, &mut tables).unwrap();
        let mut want = [0u8; 32_768];
        for (e, w) in chunk.chunks_exact(2).zip(want.chunks_exact_mut(2)) {
            let t = (u16::from_le_bytes([e[0], e[1]]) & 0x7f80) | 0x55;
            w.copy_from_slice(&t.to_le_bytes());
        }
        assert!(back == want, "constant raw bits");
    }

    /// The vectorised FP16 split gives each element's value and raw byte as the per-element
    /// definition does, and says the raw bytes are constant exactly when they are: at lengths
    /// around its 16-element pieces, with one element differing in a piece or in the tail.
    #[test]
    fn split_byte2_matches_the_per_element_split() {
        let mut rng = Rng(0x5b17);
        let mut body = [0u8; 2 * 100];
        for e in body.chunks_exact_mut(2) {
            e.copy_from_slice(&(rng.next() as u16).to_le_bytes());
        }
        let (mut vals, mut raw) = ([0u8; 100], [0u8; 100]);
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 47, 100] {
            let body = &body[..2 * n];
            let constant = split_byte2(body, &mut vals, &mut raw);
            for (k, e) in body.chunks_exact(2).enumerate() {
                let t = u16::from_le_bytes([e[0], e[1]]);
                assert_eq!(vals[k], (t >> 7) as u8, "{n} {k}");
                assert_eq!(raw[k], (t & 0x7f) as u8 | (t >> 8) as u8 & 0x80, "{n} {k}");
            }
            // (No element is not called constant; callers never split an empty chunk.)
            assert_eq!(constant, n == 1, "{n}");
        }
        // Equal raw bits (sign set, low bits 0x35) under varying values, then one element off
        // in its sign or one low bit, in a whole piece (element 20) or the tail (element 40).
        let mut same = [0u8; 2 * 42];
        for e in same.chunks_exact_mut(2) {
            let t = 0x8035 | (rng.next() as u16) & 0x7f80;
            e.copy_from_slice(&t.to_le_bytes());
        }
        assert!(split_byte2(&same, &mut vals, &mut raw));
        for (at, flip) in [(20, 0x8000u16), (20, 0x0001), (40, 0x8000), (40, 0x0040)] {
            let mut odd = same;
            let t = u16::from_le_bytes([odd[2 * at], odd[2 * at + 1]]) ^ flip;
            odd[2 * at..2 * at + 2].copy_from_slice(&t.to_le_bytes());
            assert!(!split_byte2(&odd, &mut vals, &mut raw), "{at} {flip:#x}");
        }
    }

    /// Big FP16 chunks whose values' probabilities are close to powers of two (`weights`:
    /// geometric exponents), where Huffman loses little, are Huffman coded and decode on the
    /// in-place path: lanes of equal and unequal length, odd tails, containers and constant
    /// raw bits (through scratch) round-trip; damage behind a valid CRC is an error naming the
    /// chunk, never a panic.
    #[test]
    fn big_fp16_chunks_near_powers_of_two_are_huffman_coded_and_round_trip() {
        let mut rng = Rng(0x4f16);
        let mut src = [0u8; 70_003];
        weights(&mut rng, &mut src, Dtype::Fp16);
        let mut rec = [0u8; 72_000];
        let mut planes = [0u8; 65_536];
        let mut scratch = EncoderScratch::new();
        let mut tables = DecoderTables::new();
        for bytes in [16_384, 16_385, 16_390, 16_414, 16_447, 65_536] {
            let chunk = &src[..bytes];
            let len = encode_chunk(Dtype::Fp16, 1, chunk, &mut planes, &mut rec, &mut scratch);
            let len = len.unwrap();
            assert_eq!(
                byte_index_mode(&rec[..len], bytes / 2, 2),
                MODE_HUFFMAN,
                "{bytes}"
            );
            let mut back = [0u8; 65_536];
            let out = &mut back[..bytes];
            decode_chunk(Dtype::Fp16, 1, &rec[..len], &mut planes, out, &mut tables).unwrap();
            assert!(*out == *chunk, "{bytes}");
        }
        containers_round_trip(
            Dtype::Fp16,
            32_768,
            &src,
            &mut planes,
            &mut scratch,
            &mut tables,
        );
        let chunk = &src[..32_768];
        constant_raw_bits_decode(chunk, MODE_HUFFMAN, &mut planes, &mut rec, &mut scratch);
        let chunk = &src[..16_384];
        let len = encode_chunk(Dtype::Fp16, 4, chunk, &mut planes, &mut rec, &mut scratch).unwrap();
        let mut back = [0u8; 16_384];
        let mut errors = 0;
        for _ in 0..2000 {
            let mut m = [0u8; 20_000];
            m[..len].copy_from_slice(&rec[..len]);
            let l = damage_and_reseal(&mut rng, &mut m, len, 4, 400);
            match decode_chunk(Dtype::Fp16, 4, &m[..l], &mut planes, &mut back, &mut tables) {
                Err(ZipnnError::CorruptedChunk { chunk: 4, .. }) => errors += 1,
                Err(e) => panic!("unexpected error {e:?}"),
                Ok(()) => {}
            }
        }
        // Truncations (a third of the damage) are always caught, and so are most bytes
        // changed in the head; flipped raw bits decode to other elements.
        assert!(errors > 600, "only {errors} errors");
    }

    /// A tANS-coded record damaged behind a valid CRC (its table, lane states and lengths sit
    /// in the first few hundred bytes after the raw bytes): an error naming the chunk or the
    /// original, never a panic.
    #[test]
    fn tans_records_damaged_behind_a_valid_crc_fail_cleanly() {
        let mut rng = Rng(0x7a46);
        let mut src = [0u8; 16_384];
        uneven_fp16(&mut rng, &mut src);
        let mut rec = [0u8; 20_000];
        let mut planes = [0u8; 16_384];
        let mut scratch = EncoderScratch::new();
        let len = encode_chunk(Dtype::Fp16, 4, &src, &mut planes, &mut rec, &mut scratch).unwrap();
        assert_eq!(byte_index_mode(&rec[..len], 8192, 2), MODE_TANS);
        let mut back = [0u8; 16_384];
        let mut tables = DecoderTables::new();
        let (mut errors, mut table_errors) = (0, 0);
        for round in 0..2000 {
            let mut m = rec;
            let l = if round % 2 == 0 {
                damage_and_reseal(&mut rng, &mut m, len, 4, 400)
            } else {
                // Damage the index block's head (table, states, lengths) only.
                let head = CHUNK_HEADER_LEN + 8192 + 8;
                m[head + (rng.next() as usize) % 120] ^= 1 << (rng.next() % 8);
                let payload_len = (len - CHUNK_HEADER_LEN) as u32;
                let crc = chunk_crc(4, payload_len, &m[CHUNK_HEADER_LEN..len]);
                m[field::CHUNK_CRC].copy_from_slice(&crc.to_le_bytes());
                len
            };
            match decode_chunk(Dtype::Fp16, 4, &m[..l], &mut planes, &mut back, &mut tables) {
                Err(ZipnnError::CorruptedChunk { chunk: 4, .. }) => {
                    errors += 1;
                    table_errors += round % 2;
                }
                Err(e) => panic!("unexpected error {e:?}"),
                Ok(()) => {}
            }
        }
        assert!(errors > 1000, "only {errors} errors");
        assert!(
            table_errors > 500,
            "only {table_errors} errors in the block's head"
        );
    }

    /// Version 3 chunks of FP16 (8-bit split, rANS indices even when big), as files written
    /// before version 4 hold them, still decode, in a container whose header says version 3.
    #[test]
    fn version_3_rans_coded_big_fp16_chunks_still_decode() {
        let mut rng = Rng(0x0103);
        let mut src = [0u8; 32_771];
        weights(&mut rng, &mut src, Dtype::Fp16);
        let n = 16_385;
        let body = &src[..2 * n];
        // The v3 writer, by hand: layout, flags, dictionary, raw bytes, rANS block, tail.
        let mut scratch = EncoderScratch::new();
        count_wide::<2>(body, &mut scratch.wide_hist, &mut scratch.wide_code);
        let byte_hist: [u32; 256] =
            core::array::from_fn(|v| scratch.wide_hist[8 * v..8 * v + 8].iter().sum());
        let mut p = [0u8; 33_000];
        p[0] = SPLIT_BYTE;
        let mut at = 2;
        let mut counts = [0u32; 256];
        write_dictionary(
            &byte_hist,
            &mut scratch.wide_map,
            &mut counts,
            &mut p,
            &mut at,
        );
        let mut idx = [0u8; 16_385];
        assert!(!group::<2, 7>(
            body,
            &scratch.wide_map,
            &mut idx,
            &mut p[at..at + n]
        ));
        at += n;
        at += entropy::encode_with_counts(&idx, &counts, &mut p[at..], &mut scratch).unwrap();
        p[at] = src[2 * n];
        at += 1;
        // As a one-chunk container (chunk size 32 KiB + 4), version 3.
        let mut out = [0u8; 34_000];
        let seg = Segment {
            dtype: Dtype::Fp16,
            len: (2 * n + 1) as u64,
        };
        let h = ContainerHeader::write(0, 32_772, &[seg], &mut out).unwrap();
        out[field::VERSION].copy_from_slice(&3u16.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[..field::CRC.start]);
        crc.update(&out[HEADER_LEN..h]);
        out[field::CRC].copy_from_slice(&crc.finalize().to_le_bytes());
        let crc = chunk_crc(0, at as u32, &p[..at]);
        out[h..h + 4].copy_from_slice(&(at as u32).to_le_bytes());
        out[h + 4..h + 8].copy_from_slice(&crc.to_le_bytes());
        out[h + 8..h + 8 + at].copy_from_slice(&p[..at]);
        let len = h + 8 + at;
        let mut back = [0u8; 32_771];
        let mut planes = [0u8; 32_772];
        let mut segs = [seg];
        let mut tables = DecoderTables::new();
        let got = decompress(&out[..len], &mut planes, &mut segs, &mut back, &mut tables);
        assert_eq!(got, Ok(2 * n + 1));
        assert!(back[..2 * n + 1] == src[..2 * n + 1]);
    }

    /// Damages chunk record `m[..len]` (chunk `index`) one of three ways (a bit flipped
    /// anywhere, a byte replaced among the first `head` payload bytes, where the tables sit, or
    /// the record cut short) and re-seals it with a fresh length and CRC, as a buggy or hostile
    /// writer would; returns the new length.
    fn damage_and_reseal(
        rng: &mut Rng,
        m: &mut [u8],
        len: usize,
        index: u64,
        head: usize,
    ) -> usize {
        let mut l = len;
        match rng.next() % 3 {
            0 => {
                let i = CHUNK_HEADER_LEN + (rng.next() as usize) % (l - CHUNK_HEADER_LEN);
                m[i] ^= 1 << (rng.next() % 8);
            }
            1 => {
                let i = CHUNK_HEADER_LEN + (rng.next() as usize) % head;
                m[i] = rng.next() as u8;
            }
            _ => l = CHUNK_HEADER_LEN + (rng.next() as usize) % (l - CHUNK_HEADER_LEN),
        }
        let payload_len = (l - CHUNK_HEADER_LEN) as u32;
        let crc = chunk_crc(index, payload_len, &m[CHUNK_HEADER_LEN..l]);
        m[field::CHUNK_PAYLOAD_LEN].copy_from_slice(&payload_len.to_le_bytes());
        m[field::CHUNK_CRC].copy_from_slice(&crc.to_le_bytes());
        l
    }

    /// A Huffman-coded record damaged behind a valid CRC: an error naming the chunk or the
    /// original, never a panic.
    #[test]
    fn huffman_records_damaged_behind_a_valid_crc_fail_cleanly() {
        let mut rng = Rng(0x4aff);
        let mut src = [0u8; 16_384];
        weights(&mut rng, &mut src, Dtype::Bf16);
        let mut rec = [0u8; 20_000];
        let mut planes = [0u8; 16_384];
        let mut scratch = EncoderScratch::new();
        let len = encode_chunk(Dtype::Bf16, 7, &src, &mut planes, &mut rec, &mut scratch).unwrap();
        assert_eq!(index_mode::<2>(&rec[..len], 8192), MODE_HUFFMAN);
        let mut back = [0u8; 16_384];
        let mut tables = DecoderTables::new();
        let mut errors = 0;
        for _ in 0..2000 {
            let mut m = rec;
            // The code lengths and stream table sit in the first few hundred bytes.
            let l = damage_and_reseal(&mut rng, &mut m, len, 7, 400);
            match decode_chunk(Dtype::Bf16, 7, &m[..l], &mut planes, &mut back, &mut tables) {
                Err(ZipnnError::CorruptedChunk { chunk: 7, .. }) => errors += 1,
                Err(e) => panic!("unexpected error {e:?}"),
                Ok(()) => {}
            }
        }
        assert!(errors > 600, "only {errors} errors");
    }

    /// Version 2 chunks (layout 4: raw bits packed five to an element, rANS indices), as
    /// devices and files written before version 3 hold them, still decode; a version 2
    /// header is still read.
    #[test]
    fn version_2_layouts_and_headers_still_decode() {
        let mut rng = Rng(0x0102);
        let mut src = [0u8; 8195];
        weights(&mut rng, &mut src, Dtype::Bf16);
        let n = 4097;
        let body = &src[..2 * n];
        // The v2 writer, by hand: layout, flags, dictionary, packed raw bits, index block, tail.
        let mut scratch = EncoderScratch::new();
        count_wide::<2>(body, &mut scratch.wide_hist, &mut scratch.wide_code);
        let mut p = [0u8; 9000];
        p[0] = SPLIT_WIDE;
        let mut at = 2;
        let mut counts = [0u32; 256];
        write_dictionary(
            &scratch.wide_hist,
            &mut scratch.wide_map,
            &mut counts,
            &mut p,
            &mut at,
        );
        let mut idx = [0u8; 4097];
        let raw_len = packed_len(n, 5);
        group::<2, 4>(body, &scratch.wide_map, &mut idx, &mut p[at..at + raw_len]);
        at += raw_len;
        at += entropy::encode_with_counts(&idx, &counts, &mut p[at..], &mut scratch).unwrap();
        p[at] = src[2 * n];
        at += 1;
        let mut rec = [0u8; 9100];
        rec[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + at].copy_from_slice(&p[..at]);
        let crc = chunk_crc(9, at as u32, &p[..at]);
        rec[field::CHUNK_PAYLOAD_LEN].copy_from_slice(&(at as u32).to_le_bytes());
        rec[field::CHUNK_CRC].copy_from_slice(&crc.to_le_bytes());
        let mut back = [0u8; 8196];
        let mut planes = [0u8; 8196];
        let mut tables = DecoderTables::new();
        let rec = &rec[..CHUNK_HEADER_LEN + at];
        decode_chunk(
            Dtype::Bf16,
            9,
            rec,
            &mut planes,
            &mut back[..2 * n + 1],
            &mut tables,
        )
        .unwrap();
        assert!(back[..2 * n + 1] == src[..]);
        // A container whose header says version 2.
        let mut out = [0u8; 12_000];
        let len = compress(Dtype::Bf16, 4096, &src, &mut planes, &mut out, &mut scratch).unwrap();
        out[field::VERSION].copy_from_slice(&2u16.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[..field::CRC.start]);
        crc.update(&out[HEADER_LEN..HEADER_LEN + SEGMENT_ENTRY_LEN]);
        out[field::CRC].copy_from_slice(&crc.finalize().to_le_bytes());
        let mut segs = [Segment {
            dtype: Dtype::Raw,
            len: 0,
        }];
        let got = decompress(&out[..len], &mut planes, &mut segs, &mut back, &mut tables);
        assert_eq!(got, Ok(src.len()));
        assert!(back[..src.len()] == src);
        out[field::VERSION].copy_from_slice(&1u16.to_le_bytes());
        assert!(ContainerHeader::parse(&out).is_err());
    }

    #[test]
    fn incompressible_chunks_are_stored_one_byte_over_their_length() {
        let mut rng = Rng(3);
        let src: [u8; 9000] = core::array::from_fn(|_| rng.next() as u8);
        for dtype in [Dtype::Bf16, Dtype::Fp16, Dtype::Fp32] {
            let len = round_trip(dtype, &src, 4096);
            let chunks = 3;
            assert_eq!(
                len,
                HEADER_LEN + SEGMENT_ENTRY_LEN + 9000 + chunks * (CHUNK_HEADER_LEN + 1),
                "{dtype:?}"
            );
        }
    }

    /// Corruption a CRC cannot see (the record re-sealed with a fresh CRC, as a buggy or
    /// malicious writer would): the decoder's own checks must give an error naming the chunk or
    /// some data, never a panic, for every layout.
    #[test]
    fn records_damaged_behind_a_valid_crc_fail_cleanly() {
        let mut rng = Rng(0xc0de);
        for dtype in [Dtype::Bf16, Dtype::Fp16, Dtype::Fp32] {
            let mut src = [0u8; 8192];
            weights(&mut rng, &mut src, dtype);
            let mut out = [0u8; 12_000];
            let mut planes = [0u8; 8192];
            let mut scratch = EncoderScratch::new();
            let rec = encode_chunk(dtype, 5, &src, &mut planes, &mut out, &mut scratch).unwrap();
            let mut back = [0u8; 8192];
            let mut tables = DecoderTables::new();
            decode_chunk(dtype, 5, &out[..rec], &mut planes, &mut back, &mut tables).unwrap();
            assert!(back == src);
            let (mut errors, mut same) = (0, 0);
            for _ in 0..3000 {
                let mut m = out;
                let l = damage_and_reseal(&mut rng, &mut m, rec, 5, 40.min(rec - 9));
                match decode_chunk(dtype, 5, &m[..l], &mut planes, &mut back, &mut tables) {
                    Err(ZipnnError::CorruptedChunk { chunk: 5, .. }) => errors += 1,
                    Err(e) => panic!("{dtype:?}: unexpected error {e:?}"),
                    Ok(()) => same += usize::from(back == src),
                }
            }
            assert!(
                errors > 1000,
                "{dtype:?}: only {errors} errors ({same} identical)"
            );
        }
    }

    #[test]
    fn special_values_tails_and_constant_chunks_round_trip() {
        let mut src = [0u8; 20_003];
        let mut rng = Rng(11);
        let specials = [
            f32::NAN.to_bits(),
            f32::INFINITY.to_bits(),
            f32::NEG_INFINITY.to_bits(),
            (-0.0f32).to_bits(),
            1,
            0x007f_ffff,
            0x7fc0_0001,
        ];
        for (i, e) in src.chunks_exact_mut(4).enumerate() {
            let v = if i % 3 == 0 {
                specials[(rng.next() % 7) as usize]
            } else {
                (rng.next() as f32 / u64::MAX as f32 * 0.1).to_bits()
            };
            e.copy_from_slice(&v.to_le_bytes());
        }
        for dtype in [Dtype::Raw, Dtype::Bf16, Dtype::Fp16, Dtype::Fp32] {
            for len in [0, 1, 2, 3, 5, 4095, 4097, 20_003] {
                round_trip(dtype, &src[..len], 4096);
            }
            let zeros = [0u8; 9000];
            let len = round_trip(dtype, &zeros, 4096);
            if dtype != Dtype::Raw {
                assert!(len < 300, "{dtype:?} zeros took {len}");
            }
        }
    }

    #[test]
    fn corruption_names_the_chunk() {
        let src: [u8; 12_288] = core::array::from_fn(|i| (i * 7 % 251) as u8);
        let mut out = [0u8; 20_000];
        let mut planes = [0u8; 4096];
        let mut scratch = EncoderScratch::new();
        let len = compress(Dtype::Bf16, 4096, &src, &mut planes, &mut out, &mut scratch).unwrap();
        // Corrupt the last byte: it belongs to chunk 2's payload.
        out[len - 1] ^= 0x40;
        let mut back = [0u8; 12_288];
        let mut segs = [Segment {
            dtype: Dtype::Raw,
            len: 0,
        }; 1];
        let err = decompress(
            &out[..len],
            &mut planes,
            &mut segs,
            &mut back,
            &mut DecoderTables::new(),
        );
        assert_eq!(
            err,
            Err(ZipnnError::CorruptedChunk {
                chunk: 2,
                reason: "CRC mismatch"
            })
        );
        out[len - 1] ^= 0x40;
        let err = decompress(
            &out[..len - 3],
            &mut planes,
            &mut segs,
            &mut back,
            &mut DecoderTables::new(),
        );
        assert!(
            matches!(err, Err(ZipnnError::CorruptedChunk { chunk: 2, .. })),
            "{err:?}"
        );
    }

    /// Seeded mutations (bit flips, truncations, insertions, byte overwrites) of a container:
    /// the decoder must return an error or exactly the original, never other data and never
    /// panic. The chunk CRCs (which cover the chunk index) are what rule out silent damage.
    #[test]
    fn mutated_containers_error_or_return_the_original() {
        let mut rng = Rng(0x5eed);
        let mut src = [0u8; 10_001];
        for e in src.chunks_exact_mut(2) {
            // BF16-like: exponents clustered around 2^-4, random sign; the mantissa's spread
            // depends on the exponent, as in real weights, so plane 1 is coded with contexts.
            let r = rng.next();
            let exp = 123 - (r.trailing_zeros().min(6) as u16);
            let mant = ((r >> 32) as u16 & 0x7f) >> (exp & 3);
            let v = ((r >> 48) as u16 & 0x8000) | mant | (exp << 7);
            e.copy_from_slice(&v.to_le_bytes());
        }
        let mut container = [0u8; 11_000];
        let mut planes = [0u8; 4096];
        let mut scratch = EncoderScratch::new();
        let len = compress(
            Dtype::Bf16,
            4096,
            &src,
            &mut planes,
            &mut container,
            &mut scratch,
        )
        .unwrap();
        assert!(len < src.len() * 8 / 10, "test data should compress: {len}");
        // Chunk 0 must be coded with the 11-bit split, so the mutations exercise the dictionary
        // and the grouped raw bits too.
        let payload = HEADER_LEN + SEGMENT_ENTRY_LEN + CHUNK_HEADER_LEN;
        assert_eq!(container[payload], LAYOUT_WIDE16);
        let mut tables = DecoderTables::new();
        let mut segs = [Segment {
            dtype: Dtype::Raw,
            len: 0,
        }; 2];
        let mut back = [0u8; 12_000];
        let (mut ok_same, mut errors) = (0, 0);
        for round in 0..4000 {
            let mut m = [0u8; 11_100];
            m[..len].copy_from_slice(&container[..len]);
            let mut l = len;
            for _ in 0..1 + rng.next() % 3 {
                match rng.next() % 4 {
                    0 => {
                        let i = (rng.next() as usize) % l;
                        m[i] ^= 1 << (rng.next() % 8);
                    }
                    1 => l = (rng.next() as usize) % l.max(1),
                    2 if l < m.len() => {
                        let i = (rng.next() as usize) % (l + 1);
                        m.copy_within(i..l, i + 1);
                        m[i] = rng.next() as u8;
                        l += 1;
                    }
                    _ => {
                        let i = (rng.next() as usize) % l.max(1);
                        m[i] = rng.next() as u8;
                    }
                }
            }
            match decompress(&m[..l], &mut planes, &mut segs, &mut back, &mut tables) {
                Ok(n) => {
                    assert_eq!(&back[..n], &src[..], "round {round}: wrong data returned");
                    ok_same += 1;
                }
                Err(_) => errors += 1,
            }
        }
        // Most mutations must be detected (only no-op mutations may decode).
        assert!(errors > 3900, "errors {errors}, identical {ok_same}");
    }
}
