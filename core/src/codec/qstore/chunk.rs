//! The two records of one chunk: INT8 (scales and coded INT8 values) and high precision (each
//! weight given its INT8 value). Byte layouts are in docs/format/qstore.md; each field is a named
//! little-endian byte range below, read through a checked view.
//!
//! A chunk holds `n` consecutive elements of a row-major tensor with `cols` columns, starting at
//! column `col0` of its first row (0 unless a row is wider than a chunk). It touches
//! `rows = ceil((col0 + n) / cols)` rows and stores one scale per touched row.

use super::quant::{quantize_pattern, HalfKind, RowRanges, SIGN};
use super::radix::{RadixReader, RadixWriter};
use super::{decode_err, encode_err, QstoreError, CHUNK_WEIGHTS, MAX_CHUNK_ROWS};
use crate::codec::entropy::{self, DecoderTables, EncoderScratch};

/// Magic of an INT8 record.
pub const INT8_MAGIC: [u8; 4] = *b"QSI8";
/// Magic of a high-precision record.
pub const HP_MAGIC: [u8; 4] = *b"QSHP";

/// Field byte ranges of the INT8 record header.
mod i8f {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const COUNT: Range<usize> = 4..8;
    pub const ROWS: Range<usize> = 8..12;
    pub const Q_LEN: Range<usize> = 12..16;
    /// Lengths of the four scale-byte blocks (byte 3 of every scale first).
    pub const S_LEN: [Range<usize>; 4] = [16..20, 20..24, 24..28, 28..32];
    pub const CRC: Range<usize> = 32..36;
    pub const PAYLOAD: usize = 36;
}

/// Field byte ranges of the high-precision record header.
mod hpf {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const COUNT: Range<usize> = 4..8;
    pub const ESCAPES: Range<usize> = 8..12;
    pub const RADIX_LEN: Range<usize> = 12..16;
    pub const ZHI_LEN: Range<usize> = 16..20;
    pub const ZLO_LEN: Range<usize> = 20..24;
    pub const CRC: Range<usize> = 24..28;
    pub const PAYLOAD: usize = 28;
}

/// Length of an INT8 record's header.
pub const INT8_HEADER_LEN: usize = i8f::PAYLOAD;
/// Length of a high-precision record's header.
pub const HP_HEADER_LEN: usize = hpf::PAYLOAD;
/// Bytes per escape: u16 index in the chunk, u16 pattern.
const ESCAPE_LEN: usize = 4;

/// Largest INT8 record for `n` weights over `rows` rows.
pub const fn max_int8_len(n: usize, rows: usize) -> usize {
    INT8_HEADER_LEN + 4 * entropy::max_encoded_len(rows) + entropy::max_encoded_len(n)
}

/// Largest high-precision record for `n` weights: every offset at most 15 bits plus a wasted
/// bit per group, both byte streams raw, or every weight an escape.
pub const fn max_hp_len(n: usize) -> usize {
    HP_HEADER_LEN + 2 * n + 8 + 2 * entropy::max_encoded_len(n) + ESCAPE_LEN * n
}

/// Rows a chunk touches.
pub const fn rows_touched(cols: u32, col0: u32, n: usize) -> usize {
    if cols == 0 {
        0
    } else {
        (col0 as usize + n).div_ceil(cols as usize)
    }
}

fn get_u32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], r: core::ops::Range<usize>, v: u32) {
    b[r].copy_from_slice(&v.to_le_bytes());
}

fn crc_without(rec: &[u8], crc: core::ops::Range<usize>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[..crc.start]);
    h.update(&rec[crc.end..]);
    h.finalize()
}

/// Memory a chunk coder works in (about 450 KiB): lend one per thread and reuse it.
pub struct Workspace {
    q: [u8; CHUNK_WEIGHTS],
    lo: [u16; CHUNK_WEIGHTS],
    width: [u16; CHUNK_WEIGHTS],
    zhi: [u8; CHUNK_WEIGHTS],
    zlo: [u8; CHUNK_WEIGHTS],
    scales: [f32; MAX_CHUNK_ROWS + 1],
    planes: [u8; MAX_CHUNK_ROWS + 1],
    enc: EncoderScratch,
    dec: DecoderTables,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// Fresh workspace.
    pub const fn new() -> Self {
        Workspace {
            q: [0; CHUNK_WEIGHTS],
            lo: [0; CHUNK_WEIGHTS],
            width: [0; CHUNK_WEIGHTS],
            zhi: [0; CHUNK_WEIGHTS],
            zlo: [0; CHUNK_WEIGHTS],
            scales: [0.0; MAX_CHUNK_ROWS + 1],
            planes: [0; MAX_CHUNK_ROWS + 1],
            enc: EncoderScratch::new(),
            dec: DecoderTables::new(),
        }
    }
}

/// The two bytes that carry a `q = 0` weight's magnitude and sign: an exponent-like high byte
/// and a mantissa byte, so each byte stream has its own statistics.
fn split_zero(kind: HalfKind, p: u16) -> (u8, u8) {
    let m = p & !SIGN;
    let sign = (p >> 15) as u8;
    match kind {
        HalfKind::Bf16 => ((m >> 7) as u8, (m & 0x7F) as u8 | sign << 7),
        HalfKind::Fp16 => (((m >> 8) as u8) << 1 | sign, m as u8),
    }
}

fn join_zero(kind: HalfKind, hi: u8, lo: u8) -> u16 {
    match kind {
        HalfKind::Bf16 => ((lo as u16 >> 7) << 15) | (hi as u16) << 7 | (lo & 0x7F) as u16,
        HalfKind::Fp16 => ((hi as u16 & 1) << 15) | ((hi as u16 >> 1) << 8) | lo as u16,
    }
}

/// Encodes one chunk of `weights` (BF16 or FP16 patterns) into an INT8 record and a
/// high-precision record; returns their lengths.
///
/// `scales` holds one scale per touched row, computed over the *whole* row
/// ([`super::row_scale`]). With `given_q`, those INT8 values are stored instead of quantizing;
/// if a weight is not in its value's run, or a scale is not a value of `kind`, the result is
/// [`QstoreError::NotContained`] and the caller stores the tensor another way.
#[allow(clippy::too_many_arguments)]
pub fn encode_chunk(
    kind: HalfKind,
    cols: u32,
    col0: u32,
    weights: &[u16],
    scales: &[f32],
    given_q: Option<&[i8]>,
    ws: &mut Workspace,
    int8_out: &mut [u8],
    hp_out: &mut [u8],
) -> Result<(usize, usize), QstoreError> {
    let n = weights.len();
    if n == 0 || n > CHUNK_WEIGHTS || cols == 0 || col0 >= cols {
        return Err(QstoreError::InvalidInput("chunk shape"));
    }
    let rows = rows_touched(cols, col0, n);
    if rows > MAX_CHUNK_ROWS + 1 {
        return Err(QstoreError::InvalidInput("more rows than a chunk holds"));
    }
    if scales.len() != rows || given_q.is_some_and(|g| g.len() != n) {
        return Err(QstoreError::InvalidInput(
            "scale or INT8 count does not match the chunk",
        ));
    }
    let need_i8 = max_int8_len(n, rows);
    if int8_out.len() < need_i8 {
        return Err(QstoreError::BufferTooSmall(need_i8));
    }
    let need_hp = max_hp_len(n);
    if hp_out.len() < need_hp {
        return Err(QstoreError::BufferTooSmall(need_hp));
    }

    // Offsets go first in the payload, straight from the radix writer (which ORs into zeros).
    let radix_cap = 2 * n + 8;
    hp_out[..HP_HEADER_LEN + radix_cap].fill(0);
    let mut radix = RadixWriter::new(&mut hp_out[HP_HEADER_LEN..HP_HEADER_LEN + radix_cap]);
    let mut z = 0usize;
    let mut escapes = 0usize;
    let mut i = 0usize;
    for (r, &s) in scales.iter().enumerate() {
        let row_start = if r == 0 {
            0
        } else {
            r * cols as usize - col0 as usize
        };
        let row_end = ((r + 1) * cols as usize - col0 as usize).min(n);
        let smag = kind
            .from_f32_exact(s)
            .ok_or(QstoreError::NotContained(row_start as u32))?;
        let ranges = RowRanges::new(kind, smag);
        while i < row_end {
            let p = weights[i];
            let q = match given_q {
                Some(g) => g[i],
                None => quantize_pattern(kind, p, s),
            };
            if q == i8::MIN {
                return Err(QstoreError::NotContained(i as u32));
            }
            ws.q[i] = q as u8;
            if !kind.is_finite(p) {
                // Escapes are listed after the streams; park them in the unused arrays.
                ws.lo[escapes] = i as u16;
                ws.width[escapes] = p;
                escapes += 1;
            } else if q == 0 {
                let (_, t1) = ranges.magnitudes(0);
                if p & !SIGN >= t1 {
                    return Err(QstoreError::NotContained(i as u32));
                }
                (ws.zhi[z], ws.zlo[z]) = split_zero(kind, p);
                z += 1;
            } else {
                let (lo, hi) = ranges.magnitudes(q.unsigned_abs());
                let m = p & !SIGN;
                if m < lo || m >= hi || (p & SIGN != 0) != (q < 0) {
                    return Err(QstoreError::NotContained(i as u32));
                }
                radix.push(m - lo, hi - lo)?;
            }
            i += 1;
        }
    }
    let radix_len = radix.finish()?;

    let int8_len = write_int8(n, scales, int8_out, ws)?;

    // High-precision record: header, offsets, q = 0 bytes, escapes.
    let mut at = HP_HEADER_LEN + radix_len;
    let zhi_len =
        entropy::encode(&ws.zhi[..z], &mut hp_out[at..], &mut ws.enc).map_err(encode_err)?;
    at += zhi_len;
    let zlo_len =
        entropy::encode(&ws.zlo[..z], &mut hp_out[at..], &mut ws.enc).map_err(encode_err)?;
    at += zlo_len;
    for e in 0..escapes {
        hp_out[at..at + 2].copy_from_slice(&ws.lo[e].to_le_bytes());
        hp_out[at + 2..at + 4].copy_from_slice(&ws.width[e].to_le_bytes());
        at += ESCAPE_LEN;
    }
    let rec = &mut hp_out[..at];
    rec[hpf::MAGIC].copy_from_slice(&HP_MAGIC);
    put_u32(rec, hpf::COUNT, n as u32);
    put_u32(rec, hpf::ESCAPES, escapes as u32);
    put_u32(rec, hpf::RADIX_LEN, radix_len as u32);
    put_u32(rec, hpf::ZHI_LEN, zhi_len as u32);
    put_u32(rec, hpf::ZLO_LEN, zlo_len as u32);
    let crc = crc_without(rec, hpf::CRC);
    put_u32(rec, hpf::CRC, crc);
    Ok((int8_len, at))
}

/// Writes the INT8 record of `ws.q[..n]` and `scales`.
fn write_int8(
    n: usize,
    scales: &[f32],
    int8_out: &mut [u8],
    ws: &mut Workspace,
) -> Result<usize, QstoreError> {
    // Scales as four byte planes, each its own block: the exponent byte of row scales barely
    // varies, and BF16/FP16 scales have all-zero low bytes, so the planes code to a fraction of
    // four bytes a row while staying exact for any f32.
    let mut at = INT8_HEADER_LEN;
    let mut s_len = [0usize; 4];
    for (j, len) in s_len.iter_mut().enumerate() {
        for (d, s) in ws.planes.iter_mut().zip(scales) {
            *d = s.to_le_bytes()[3 - j];
        }
        *len = entropy::encode(&ws.planes[..scales.len()], &mut int8_out[at..], &mut ws.enc)
            .map_err(encode_err)?;
        at += *len;
    }
    let q_len =
        entropy::encode(&ws.q[..n], &mut int8_out[at..], &mut ws.enc).map_err(encode_err)?;
    let int8_len = at + q_len;
    let rec = &mut int8_out[..int8_len];
    rec[i8f::MAGIC].copy_from_slice(&INT8_MAGIC);
    put_u32(rec, i8f::COUNT, n as u32);
    put_u32(rec, i8f::ROWS, scales.len() as u32);
    put_u32(rec, i8f::Q_LEN, q_len as u32);
    for (r, &len) in i8f::S_LEN.into_iter().zip(&s_len) {
        put_u32(rec, r, len as u32);
    }
    let crc = crc_without(rec, i8f::CRC);
    put_u32(rec, i8f::CRC, crc);
    Ok(int8_len)
}

/// Encodes only the INT8 record of a chunk from given INT8 values and scales, stored as they
/// are (no containment check): for tensors whose high precision is stored another way.
pub fn encode_int8(
    cols: u32,
    col0: u32,
    q: &[i8],
    scales: &[f32],
    ws: &mut Workspace,
    int8_out: &mut [u8],
) -> Result<usize, QstoreError> {
    let n = q.len();
    if n == 0 || n > CHUNK_WEIGHTS || cols == 0 || col0 >= cols {
        return Err(QstoreError::InvalidInput("chunk shape"));
    }
    if scales.len() > MAX_CHUNK_ROWS + 1 {
        return Err(QstoreError::InvalidInput("more rows than a chunk holds"));
    }
    if scales.len() != rows_touched(cols, col0, n) {
        return Err(QstoreError::InvalidInput(
            "scale count does not match the chunk",
        ));
    }
    let need = max_int8_len(n, scales.len());
    if int8_out.len() < need {
        return Err(QstoreError::BufferTooSmall(need));
    }
    for (d, &v) in ws.q.iter_mut().zip(q) {
        *d = v as u8;
    }
    write_int8(n, scales, int8_out, ws)
}

/// The total length of the INT8 record that starts with `header` (at least
/// [`INT8_HEADER_LEN`] bytes), checked for plausibility so a reader can size its read.
pub fn int8_record_len(header: &[u8]) -> Result<usize, QstoreError> {
    let h = header
        .get(..INT8_HEADER_LEN)
        .ok_or(QstoreError::Corrupted("INT8 record header truncated"))?;
    if h[i8f::MAGIC] != INT8_MAGIC {
        return Err(QstoreError::Corrupted("INT8 record magic"));
    }
    let n = get_u32(h, i8f::COUNT) as usize;
    let rows = get_u32(h, i8f::ROWS) as usize;
    let q_len = get_u32(h, i8f::Q_LEN) as usize;
    if n == 0 || n > CHUNK_WEIGHTS || rows == 0 || rows > n.min(MAX_CHUNK_ROWS) + 1 {
        return Err(QstoreError::Corrupted("INT8 record counts"));
    }
    if q_len > entropy::max_encoded_len(n) {
        return Err(QstoreError::Corrupted("INT8 record stream length"));
    }
    let mut len = INT8_HEADER_LEN + q_len;
    for r in i8f::S_LEN {
        let s = get_u32(h, r) as usize;
        if s > entropy::max_encoded_len(rows) {
            return Err(QstoreError::Corrupted("INT8 record scale block length"));
        }
        len += s;
    }
    Ok(len)
}

/// The total length of the high-precision record that starts with `header`.
pub fn hp_record_len(header: &[u8]) -> Result<usize, QstoreError> {
    let h = header.get(..HP_HEADER_LEN).ok_or(QstoreError::Corrupted(
        "high-precision record header truncated",
    ))?;
    if h[hpf::MAGIC] != HP_MAGIC {
        return Err(QstoreError::Corrupted("high-precision record magic"));
    }
    let n = get_u32(h, hpf::COUNT) as usize;
    let esc = get_u32(h, hpf::ESCAPES) as usize;
    let radix = get_u32(h, hpf::RADIX_LEN) as usize;
    let zhi = get_u32(h, hpf::ZHI_LEN) as usize;
    let zlo = get_u32(h, hpf::ZLO_LEN) as usize;
    let zmax = entropy::max_encoded_len(n);
    if n == 0 || n > CHUNK_WEIGHTS || esc > n || radix > 2 * n + 8 || zhi > zmax || zlo > zmax {
        return Err(QstoreError::Corrupted("high-precision record lengths"));
    }
    Ok(HP_HEADER_LEN + radix + zhi + zlo + esc * ESCAPE_LEN)
}

/// A checked INT8 record whose scales are decoded (into the workspace).
struct Int8Record<'a> {
    n: usize,
    rows: usize,
    q: &'a [u8],
}

impl<'a> Int8Record<'a> {
    fn new_checked(
        rec: &'a [u8],
        cols: u32,
        col0: u32,
        ws: &mut Workspace,
    ) -> Result<Self, QstoreError> {
        let len = int8_record_len(rec)?;
        if len != rec.len() {
            return Err(QstoreError::Corrupted("INT8 record length"));
        }
        if get_u32(rec, i8f::CRC) != crc_without(rec, i8f::CRC) {
            return Err(QstoreError::Corrupted("INT8 record CRC"));
        }
        let n = get_u32(rec, i8f::COUNT) as usize;
        let rows = get_u32(rec, i8f::ROWS) as usize;
        if cols == 0 || col0 >= cols || rows != rows_touched(cols, col0, n) {
            return Err(QstoreError::Corrupted(
                "INT8 record row count does not fit the tensor",
            ));
        }
        let mut at = INT8_HEADER_LEN;
        ws.scales[..rows].fill(0.0);
        for (j, r) in i8f::S_LEN.into_iter().enumerate() {
            let block = &rec[at..at + get_u32(rec, r) as usize];
            at += block.len();
            let what = "row scales";
            if entropy::symbol_count(block).map_err(|e| decode_err(e, what))? != rows {
                return Err(QstoreError::Corrupted("row scale count"));
            }
            entropy::decode(block, &mut ws.planes[..rows], &mut ws.dec)
                .map_err(|e| decode_err(e, what))?;
            for (s, &b) in ws.scales.iter_mut().zip(&ws.planes[..rows]) {
                *s = f32::from_bits(s.to_bits() | (b as u32) << (8 * (3 - j)));
            }
        }
        Ok(Int8Record {
            n,
            rows,
            q: &rec[at..],
        })
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn decode_q(&self, out: &mut [u8], tables: &mut DecoderTables) -> Result<(), QstoreError> {
        if entropy::symbol_count(self.q).map_err(|e| decode_err(e, "INT8 values"))? != self.n {
            return Err(QstoreError::Corrupted("INT8 value count"));
        }
        entropy::decode(self.q, &mut out[..self.n], tables)
            .map_err(|e| decode_err(e, "INT8 values"))?;
        Ok(())
    }
}

/// Decodes an INT8 record: INT8 values into `q_out[..n]`, row scales into `scales_out[..rows]`;
/// returns `(n, rows)`. `cols` and `col0` are the chunk's geometry from the directory.
pub fn decode_int8(
    rec: &[u8],
    cols: u32,
    col0: u32,
    q_out: &mut [i8],
    scales_out: &mut [f32],
    ws: &mut Workspace,
) -> Result<(usize, usize), QstoreError> {
    let r = Int8Record::new_checked(rec, cols, col0, ws)?;
    if q_out.len() < r.n {
        return Err(QstoreError::BufferTooSmall(r.n));
    }
    if scales_out.len() < r.rows() {
        return Err(QstoreError::BufferTooSmall(r.rows()));
    }
    r.decode_q(&mut ws.q, &mut ws.dec)?;
    for (o, &b) in q_out.iter_mut().zip(&ws.q[..r.n]) {
        *o = b as i8;
    }
    scales_out[..r.rows()].copy_from_slice(&ws.scales[..r.rows()]);
    Ok((r.n, r.rows()))
}

/// Decodes a chunk's high-precision weights from its INT8 record and its high-precision record
/// into `out[..n]`; returns `n`.
pub fn decode_hp(
    kind: HalfKind,
    cols: u32,
    col0: u32,
    int8_rec: &[u8],
    hp_rec: &[u8],
    ws: &mut Workspace,
    out: &mut [u16],
) -> Result<usize, QstoreError> {
    let r8 = Int8Record::new_checked(int8_rec, cols, col0, ws)?;
    let n = r8.n;
    if out.len() < n {
        return Err(QstoreError::BufferTooSmall(n));
    }
    let len = hp_record_len(hp_rec)?;
    if len != hp_rec.len() {
        return Err(QstoreError::Corrupted("high-precision record length"));
    }
    if get_u32(hp_rec, hpf::CRC) != crc_without(hp_rec, hpf::CRC) {
        return Err(QstoreError::Corrupted("high-precision record CRC"));
    }
    if get_u32(hp_rec, hpf::COUNT) as usize != n {
        return Err(QstoreError::Corrupted(
            "high-precision record count differs from INT8 record",
        ));
    }
    let n_esc = get_u32(hp_rec, hpf::ESCAPES) as usize;
    let radix_len = get_u32(hp_rec, hpf::RADIX_LEN) as usize;
    let zhi_len = get_u32(hp_rec, hpf::ZHI_LEN) as usize;
    let mut at = HP_HEADER_LEN;
    let radix_src = &hp_rec[at..at + radix_len];
    at += radix_len;
    let zhi_src = &hp_rec[at..at + zhi_len];
    at += zhi_len;
    let zlo_len = get_u32(hp_rec, hpf::ZLO_LEN) as usize;
    let zlo_src = &hp_rec[at..at + zlo_len];
    at += zlo_len;
    let esc = &hp_rec[at..];
    let escape = |e: usize| -> (usize, u16) {
        let b = &esc[e * ESCAPE_LEN..(e + 1) * ESCAPE_LEN];
        (
            u16::from_le_bytes([b[0], b[1]]) as usize,
            u16::from_le_bytes([b[2], b[3]]),
        )
    };
    for e in 0..n_esc {
        let (idx, p) = escape(e);
        if idx >= n || (e > 0 && escape(e - 1).0 >= idx) || kind.is_finite(p) {
            return Err(QstoreError::Corrupted("escape list"));
        }
    }

    r8.decode_q(&mut ws.q, &mut ws.dec)?;

    // Pass 1: each weight's run, from its INT8 value and its row's scale.
    let mut z = 0usize;
    let mut e = 0usize;
    let mut i = 0usize;
    for row in 0..r8.rows() {
        let row_end = ((row + 1) * cols as usize - col0 as usize).min(n);
        let smag = kind
            .from_f32_exact(ws.scales[row])
            .ok_or(QstoreError::Corrupted(
                "row scale is not a value of the tensor's type",
            ))?;
        let ranges = RowRanges::new(kind, smag);
        while i < row_end {
            let q = ws.q[i] as i8;
            if e < n_esc && escape(e).0 == i {
                ws.width[i] = 0;
                e += 1;
            } else if q == 0 {
                ws.lo[i] = ranges.magnitudes(0).1;
                ws.width[i] = 0;
                z += 1;
            } else {
                if q == i8::MIN {
                    return Err(QstoreError::Corrupted("INT8 value -128"));
                }
                let (lo, hi) = ranges.magnitudes(q.unsigned_abs());
                if lo == hi {
                    return Err(QstoreError::Corrupted(
                        "INT8 value impossible for its row scale",
                    ));
                }
                ws.lo[i] = lo;
                ws.width[i] = hi - lo;
            }
            i += 1;
        }
    }
    for (src, dst, what) in [
        (zhi_src, &mut ws.zhi, "exponent bytes of q = 0 weights"),
        (zlo_src, &mut ws.zlo, "mantissa bytes of q = 0 weights"),
    ] {
        if entropy::symbol_count(src).map_err(|e| decode_err(e, what))? != z {
            return Err(QstoreError::Corrupted(what));
        }
        entropy::decode(src, &mut dst[..z], &mut ws.dec).map_err(|e| decode_err(e, what))?;
    }

    // Pass 2: the weights.
    let mut radix = RadixReader::new(radix_src);
    let mut z = 0usize;
    let mut e = 0usize;
    for (i, o) in out[..n].iter_mut().enumerate() {
        let q = ws.q[i] as i8;
        *o = if e < n_esc && escape(e).0 == i {
            e += 1;
            escape(e - 1).1
        } else if q == 0 {
            let p = join_zero(kind, ws.zhi[z], ws.zlo[z]);
            z += 1;
            if p & !SIGN >= ws.lo[i] {
                return Err(QstoreError::Corrupted("q = 0 weight outside its run"));
            }
            p
        } else {
            let w = ws.width[i];
            if radix.needs_group(w) {
                radix.begin_group(ws.width[i..n].iter().copied())?;
            }
            let m = ws.lo[i] + radix.pop(w);
            if q < 0 {
                m | SIGN
            } else {
                m
            }
        };
    }
    if radix.bytes_used() != radix_len {
        return Err(QstoreError::Corrupted("offset stream length"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::qstore::row_scale;

    extern crate std;
    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    fn round_trip(kind: HalfKind, cols: u32, w: &[u16]) -> (usize, usize) {
        let mut ws = Box::new(Workspace::new());
        let rows = w.len().div_ceil(cols as usize);
        let scales: Vec<f32> = (0..rows)
            .map(|r| {
                row_scale(
                    kind,
                    &w[r * cols as usize..((r + 1) * cols as usize).min(w.len())],
                )
                .1
            })
            .collect();
        let mut i8b = vec![0u8; max_int8_len(w.len(), rows)];
        let mut hpb = vec![0u8; max_hp_len(w.len())];
        let (a, b) =
            encode_chunk(kind, cols, 0, w, &scales, None, &mut ws, &mut i8b, &mut hpb).unwrap();
        assert_eq!(int8_record_len(&i8b).unwrap(), a);
        assert_eq!(hp_record_len(&hpb).unwrap(), b);
        let mut out = vec![0u16; w.len()];
        decode_hp(kind, cols, 0, &i8b[..a], &hpb[..b], &mut ws, &mut out).unwrap();
        assert_eq!(out, w);
        let mut q = vec![0i8; w.len()];
        let mut s = vec![0f32; rows];
        decode_int8(&i8b[..a], cols, 0, &mut q, &mut s, &mut ws).unwrap();
        assert_eq!(s, scales);
        for (i, (&qi, &p)) in q.iter().zip(w).enumerate() {
            assert_eq!(qi, quantize_pattern(kind, p, scales[i / cols as usize]));
        }
        (a, b)
    }

    fn lcg(seed: &mut u64) -> u16 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 48) as u16
    }

    #[test]
    fn random_patterns_and_specials_round_trip() {
        for kind in [HalfKind::Bf16, HalfKind::Fp16] {
            let mut seed = 7u64;
            let mut w: Vec<u16> = (0..5000).map(|_| lcg(&mut seed)).collect();
            w[3] = 0x8000;
            w[10] = 0;
            round_trip(kind, 100, &w);
            round_trip(kind, 1, &w[..300]);
            round_trip(kind, 5000, &w);
            round_trip(kind, 1, &[0x8000]);
            round_trip(kind, 3, &[0, 0x8000, 0]);
            // Narrow-valued weights: a gaussian-ish spread around 0.02.
            let g: Vec<u16> = (0..4096)
                .map(|_| {
                    let u = (lcg(&mut seed) as f32 - 32768.0) / 32768.0;
                    let v = u * u * u * 0.05;
                    match kind {
                        HalfKind::Bf16 => (v.to_bits() >> 16) as u16,
                        HalfKind::Fp16 => {
                            let p = HalfKind::Fp16.truncate(v.abs());
                            p | if v < 0.0 { SIGN } else { 0 }
                        }
                    }
                })
                .collect();
            let (a, b) = round_trip(kind, 64, &g);
            assert!(a + b < 4096 * 2, "{kind:?}: {a} + {b} bytes");
        }
    }

    #[test]
    fn given_int8_outside_its_run_is_refused() {
        let kind = HalfKind::Bf16;
        let w = [0x3F80u16, 0x3F00, 0xBF00, 0x0000];
        let (_, s) = row_scale(kind, &w);
        let mut ws = Box::new(Workspace::new());
        let mut i8b = vec![0u8; max_int8_len(4, 1)];
        let mut hpb = vec![0u8; max_hp_len(4)];
        let good = [127i8, 64, -64, 0];
        encode_chunk(
            kind,
            4,
            0,
            &w,
            &[s],
            Some(&good),
            &mut ws,
            &mut i8b,
            &mut hpb,
        )
        .unwrap();
        let bad = [127i8, 63, -64, 0];
        assert_eq!(
            encode_chunk(
                kind,
                4,
                0,
                &w,
                &[s],
                Some(&bad),
                &mut ws,
                &mut i8b,
                &mut hpb
            ),
            Err(QstoreError::NotContained(1))
        );
        let sign = [127i8, 64, 64, 0];
        assert_eq!(
            encode_chunk(
                kind,
                4,
                0,
                &w,
                &[s],
                Some(&sign),
                &mut ws,
                &mut i8b,
                &mut hpb
            ),
            Err(QstoreError::NotContained(2))
        );
    }

    #[test]
    fn every_corruption_is_an_error_never_a_panic() {
        let kind = HalfKind::Fp16;
        let mut seed = 3u64;
        let w: Vec<u16> = (0..700).map(|_| lcg(&mut seed) & 0xBFFF).collect();
        let mut ws = Box::new(Workspace::new());
        let rows = 7;
        let scales: Vec<f32> = (0..rows)
            .map(|r| row_scale(kind, &w[r * 100..r * 100 + 100]).1)
            .collect();
        let mut i8b = vec![0u8; max_int8_len(700, rows)];
        let mut hpb = vec![0u8; max_hp_len(700)];
        let (a, b) =
            encode_chunk(kind, 100, 0, &w, &scales, None, &mut ws, &mut i8b, &mut hpb).unwrap();
        let mut out = vec![0u16; 700];
        for pos in 0..a + b {
            for bit in [0x01u8, 0x80] {
                let (mut x, mut y) = (i8b[..a].to_vec(), hpb[..b].to_vec());
                if pos < a {
                    x[pos] ^= bit
                } else {
                    y[pos - a] ^= bit
                }
                assert!(
                    decode_hp(kind, 100, 0, &x, &y, &mut ws, &mut out).is_err(),
                    "flip at {pos}"
                );
            }
        }
        for cut in 0..a {
            assert!(decode_hp(kind, 100, 0, &i8b[..cut], &hpb[..b], &mut ws, &mut out).is_err());
        }
        for cut in 0..b {
            assert!(decode_hp(kind, 100, 0, &i8b[..a], &hpb[..cut], &mut ws, &mut out).is_err());
        }
    }

    /// Recomputes a record's CRC after a mutation, so the decoder's checks behind the CRC run.
    fn fix_crc(rec: &mut [u8], crc: core::ops::Range<usize>) {
        if rec.len() >= crc.end {
            let c = crc_without(rec, crc.clone());
            rec[crc].copy_from_slice(&c.to_le_bytes());
        }
    }

    #[test]
    fn records_damaged_behind_a_valid_crc_fail_cleanly() {
        for kind in [HalfKind::Bf16, HalfKind::Fp16] {
            let mut seed = 11u64;
            let mut w: Vec<u16> = (0..900).map(|_| lcg(&mut seed) & 0xBFFF).collect();
            w[5] = 0x7F80 | 0x41; // NaN in both formats
            w[17] = 0;
            let cols = 90u32;
            let mut ws = Box::new(Workspace::new());
            let scales: Vec<f32> = (0..10)
                .map(|r| row_scale(kind, &w[r * 90..r * 90 + 90]).1)
                .collect();
            let mut i8b = vec![0u8; max_int8_len(900, 10)];
            let mut hpb = vec![0u8; max_hp_len(900)];
            let (a, b) = encode_chunk(
                kind, cols, 0, &w, &scales, None, &mut ws, &mut i8b, &mut hpb,
            )
            .unwrap();
            let mut out = vec![0u16; 900];
            let (mut ok, mut err) = (0, 0);
            for round in 0..4000u32 {
                let (mut x, mut y) = (i8b[..a].to_vec(), hpb[..b].to_vec());
                let target_hp = round % 2 == 0;
                let rec = if target_hp { &mut y } else { &mut x };
                let pos = (lcg(&mut seed) as usize * 7 + round as usize) % rec.len();
                rec[pos] ^= 1 << (lcg(&mut seed) % 8);
                if round % 5 == 0 {
                    // Also change a count or length field to a nearby value.
                    let f = 4 + 4 * (lcg(&mut seed) as usize % 5);
                    rec[f] = rec[f].wrapping_add(1);
                }
                if target_hp {
                    fix_crc(&mut y, hpf::CRC);
                } else {
                    fix_crc(&mut x, i8f::CRC);
                }
                match decode_hp(kind, cols, 0, &x, &y, &mut ws, &mut out) {
                    Ok(_) => ok += 1,
                    Err(_) => err += 1,
                }
                let mut q = vec![0i8; 900];
                let mut s = vec![0f32; 10];
                let _ = decode_int8(&x, cols, 0, &mut q, &mut s, &mut ws);
            }
            // Most damage is caught by the structure itself, not only by the CRC.
            assert!(err > ok, "{kind:?}: {err} errors, {ok} accepted");
        }
    }
}
