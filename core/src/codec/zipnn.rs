//! ZipNN: lossless compression of float model weights by byte grouping and entropy coding.
//!
//! Float weights barely compress with LZ coders, but their exponents are highly skewed (weights
//! cluster around small magnitudes) while sign and mantissa bits are close to random. ZipNN
//! therefore regroups each element's bits into byte *planes* so that one plane holds exactly the
//! exponent, and codes every plane of every chunk separately with [`entropy`] (which stores a
//! plane raw or as a constant when that is smaller).
//!
//! Planes (bit numbers of the little-endian element; plane 0 first in a chunk):
//!
//! | dtype | plane 0 | plane 1 | plane 2 | plane 3 |
//! |---|---|---|---|---|
//! | BF16 | exponent (bits 14..7) | sign (bit 15), mantissa (6..0) | | |
//! | FP16 | exponent and top 3 mantissa bits (14..7) | sign (15), mantissa (6..0) | | |
//! | FP32 | exponent (30..23) | sign (31), mantissa (22..16) | bits 15..8 | bits 7..0 |
//! | raw | the bytes as they are (stored, not coded) | | | |
//!
//! In every plane byte the sign, when present, is the top bit. Moving the sign next to the
//! mantissa is what makes plane 0 a pure exponent for BF16/FP32. For those two, plane 1 is
//! coded with four context tables chosen by the element's exponent relative to the chunk's most
//! frequent one (below, equal, one above, higher): the mantissa's distribution depends on the
//! exponent, so this beats plane 1's order-0 entropy (BF16 fixture: 0.6603 against the 0.6616
//! order-0 bound of the planes).
//!
//! This module owns the container format (see `docs/format/zipnn.md`): a header with the
//! segment table, then CRC-protected chunk records. Everything works in caller-lent buffers; the
//! host tool drives the chunk functions in parallel.
//!
//! [`entropy`]: super::entropy

use super::entropy::{self, DecoderTables, EncoderScratch};
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
/// Container format version.
pub const VERSION: u16 = 1;
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

    /// Number of coded planes (0 for raw: its bytes are stored).
    pub const fn planes(self) -> usize {
        match self {
            Dtype::Raw => 0,
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
        if u16::from_le_bytes([b[4], b[5]]) != VERSION {
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
// Byte grouping.

/// Splits whole elements of `src` into `dtype.planes()` planes of `src.len() / size` bytes each,
/// laid out one after the other in `planes`.
fn split(dtype: Dtype, src: &[u8], planes: &mut [u8]) {
    let n = src.len() / dtype.size();
    match dtype {
        Dtype::Raw => {}
        Dtype::Bf16 | Dtype::Fp16 => {
            let (p0, rest) = planes.split_at_mut(n);
            let p1 = &mut rest[..n];
            for ((e, p0), p1) in src.chunks_exact(2).zip(p0).zip(p1) {
                let v = u16::from_le_bytes([e[0], e[1]]);
                *p0 = (v >> 7) as u8;
                *p1 = ((v >> 8) as u8 & 0x80) | (v as u8 & 0x7f);
            }
        }
        Dtype::Fp32 => {
            let (p0, rest) = planes.split_at_mut(n);
            let (p1, rest) = rest.split_at_mut(n);
            let (p2, rest) = rest.split_at_mut(n);
            let p3 = &mut rest[..n];
            for (i, e) in src.chunks_exact(4).enumerate() {
                p0[i] = (e[3] << 1) | (e[2] >> 7);
                p1[i] = (e[3] & 0x80) | (e[2] & 0x7f);
                p2[i] = e[1];
                p3[i] = e[0];
            }
        }
    }
}

/// Inverse of [`split`].
fn merge(dtype: Dtype, planes: &[u8], dst: &mut [u8]) {
    let n = dst.len() / dtype.size();
    match dtype {
        Dtype::Raw => {}
        Dtype::Bf16 | Dtype::Fp16 => {
            let (p0, rest) = planes.split_at(n);
            let p1 = &rest[..n];
            for ((e, &a), &b) in dst.chunks_exact_mut(2).zip(p0).zip(p1) {
                let v = (u16::from(a) << 7) | (u16::from(b & 0x80) << 8) | u16::from(b & 0x7f);
                e.copy_from_slice(&v.to_le_bytes());
            }
        }
        Dtype::Fp32 => {
            let (p0, rest) = planes.split_at(n);
            let (p1, rest) = rest.split_at(n);
            let (p2, rest) = rest.split_at(n);
            let p3 = &rest[..n];
            for (i, e) in dst.chunks_exact_mut(4).enumerate() {
                e[3] = (p1[i] & 0x80) | (p0[i] >> 1);
                e[2] = (p0[i] << 7) | (p1[i] & 0x7f);
                e[1] = p2[i];
                e[0] = p3[i];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chunk records.

/// Whether the dtype's plane 1 (sign and top mantissa bits) is coded in exponent contexts: for
/// BF16 and FP32, where plane 0 is exactly the exponent. The mantissa's distribution depends on
/// the exponent (near the top of the weight distribution larger mantissas are rarer), so coding
/// it with a table per exponent class saves ~0.5% of the plane beyond its order-0 entropy.
const fn has_contexts(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::Bf16 | Dtype::Fp32)
}

/// Context of a sign+mantissa byte from its exponent `e`, relative to the chunk's most frequent
/// exponent `r`: 0 below `r`, 1 at `r`, 2 at `r + 1`, 3 above.
fn context_lut(r: u8) -> [u8; 256] {
    core::array::from_fn(|e| (e as i32 - i32::from(r) + 1).clamp(0, 3) as u8)
}

/// The most frequent exponent of a chunk (lowest on ties), from the exponent plane's counts.
fn most_frequent(hist: &entropy::Histogram) -> u8 {
    let mut r = 0usize;
    for e in 1..256 {
        if hist.counts[e] > hist.counts[r] {
            r = e;
        }
    }
    r as u8
}

/// Largest chunk record (header included) for `chunk_len` original bytes of `dtype`.
pub const fn max_chunk_record_len(dtype: Dtype, chunk_len: usize) -> usize {
    CHUNK_HEADER_LEN + 1 + chunk_len + dtype.planes() * (4 + entropy::MAX_HEADER_LEN)
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
    let size = dtype.size();
    let n = src.len() / size;
    let body_len = if dtype.planes() > 0 { n * size } else { 0 };
    let mut at = CHUNK_HEADER_LEN;
    if dtype.planes() > 0 {
        let planes = planes
            .get_mut(..body_len)
            .ok_or(ZipnnError::BufferTooSmall(body_len))?;
        split(dtype, &src[..body_len], planes);
        let r_at = at;
        if has_contexts(dtype) {
            at += 1;
        }
        let mut lut = None;
        let count = dtype.planes();
        let lens_at = at;
        at += 4 * count;
        for p in 0..count {
            let plane = &planes[p * n..(p + 1) * n];
            let coded = match lut {
                Some(ref lut) if p == 1 => {
                    entropy::encode_with_context(plane, &planes[..n], lut, &mut out[at..], scratch)
                }
                _ => entropy::encode(plane, &mut out[at..], scratch),
            };
            let len = coded.map_err(|e| match e {
                CodecError::BufferTooSmall(k) => ZipnnError::BufferTooSmall(k),
                _ => ZipnnError::TooLarge,
            })?;
            if p == 0 && has_contexts(dtype) {
                // The exponent plane was just counted: its mode sets plane 1's contexts.
                let r = most_frequent(scratch.last_histogram());
                out[r_at] = r;
                lut = Some(context_lut(r));
            }
            out[lens_at + 4 * p..lens_at + 4 * p + 4].copy_from_slice(&(len as u32).to_le_bytes());
            at += len;
        }
    }
    let tail = &src[body_len..];
    out[at..at + tail.len()].copy_from_slice(tail);
    at += tail.len();
    let payload_len = (at - CHUNK_HEADER_LEN) as u32;
    let crc = chunk_crc(index, payload_len, &out[CHUNK_HEADER_LEN..at]);
    out[field::CHUNK_PAYLOAD_LEN].copy_from_slice(&payload_len.to_le_bytes());
    out[field::CHUNK_CRC].copy_from_slice(&crc.to_le_bytes());
    Ok(at)
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
    if len > max_chunk_record_len(dtype, chunk_len) - CHUNK_HEADER_LEN {
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
    let size = dtype.size();
    let n = out.len() / size;
    let body_len = if dtype.planes() > 0 { n * size } else { 0 };
    let mut at = 0usize;
    if dtype.planes() > 0 {
        let planes = planes
            .get_mut(..body_len)
            .ok_or(ZipnnError::BufferTooSmall(body_len))?;
        let mut lut = None;
        if has_contexts(dtype) {
            let r = *payload.first().ok_or(corrupt(index, "payload truncated"))?;
            lut = Some(context_lut(r));
            at = 1;
        }
        let count = dtype.planes();
        let lens = payload
            .get(at..at + 4 * count)
            .ok_or(corrupt(index, "plane lengths truncated"))?;
        at += 4 * count;
        // Plane 0 first: it is the context of plane 1.
        let (exps, rest) = planes.split_at_mut(n);
        for p in 0..count {
            let len = le_u32(lens, 4 * p) as usize;
            let block = payload
                .get(at..at.saturating_add(len))
                .ok_or(corrupt(index, "plane block overruns the record"))?;
            let decoded = match (p, &lut) {
                (0, _) => entropy::decode(block, exps, tables),
                (1, Some(lut)) => {
                    entropy::decode_with_context(block, exps, lut, &mut rest[..n], tables)
                }
                _ => entropy::decode(block, &mut rest[(p - 1) * n..p * n], tables),
            };
            match decoded {
                Ok(k) if k == n => {}
                Ok(_) | Err(CodecError::BufferTooSmall(_)) => {
                    return Err(corrupt(index, "plane has the wrong symbol count"))
                }
                Err(_) => return Err(corrupt(index, "plane block does not decode")),
            }
            at += len;
        }
        merge(dtype, planes, &mut out[..body_len]);
    }
    let tail = &mut out[body_len..];
    if payload.len() - at != tail.len() {
        return Err(corrupt(index, "tail length mismatch"));
    }
    tail.copy_from_slice(&payload[at..]);
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
    let chunks = len.div_ceil(chunk_size as usize);
    HEADER_LEN + SEGMENT_ENTRY_LEN + len + chunks * (max_chunk_record_len(dtype, 0))
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

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn grouping_is_a_bijection_and_plane0_is_the_exponent() {
        let mut rng = Rng(5);
        let src: [u8; 4096] = core::array::from_fn(|_| rng.next() as u8);
        for dtype in [Dtype::Bf16, Dtype::Fp16, Dtype::Fp32] {
            let mut planes = [0u8; 4096];
            let mut back = [0u8; 4096];
            split(dtype, &src, &mut planes);
            merge(dtype, &planes, &mut back);
            assert_eq!(back, src, "{dtype:?}");
        }
        let one = 1.0f32.to_bits().to_le_bytes();
        let mut planes = [0u8; 4];
        split(Dtype::Fp32, &one, &mut planes);
        assert_eq!(planes, [127, 0, 0, 0]);
        let minus_half_bf16 = ((-0.5f32).to_bits() >> 16) as u16;
        split(Dtype::Bf16, &minus_half_bf16.to_le_bytes(), &mut planes);
        assert_eq!(&planes[..2], &[126, 0x80]);
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
        // Chunk 0's plane-1 block (after r and two lengths) must be a context block, so the
        // mutations exercise that decoder too.
        let payload = HEADER_LEN + SEGMENT_ENTRY_LEN + CHUNK_HEADER_LEN;
        let len0 = le_u32(&container, payload + 1) as usize;
        assert_eq!(container[payload + 9 + len0], entropy::MODE_RANS_CTX);
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
