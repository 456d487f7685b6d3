//! Length-limited canonical Huffman coding of up to 256 symbols in four streams, built for
//! decoding speed: ZipNN's index stream of large chunks (see `docs/format/zipnn.md`).
//!
//! # Why Huffman next to rANS
//!
//! rANS ([`super::entropy`]) codes within ~0.1% of the entropy but spends a multiply, a table
//! load and a renormalisation select per symbol in one dependency chain. Huffman loses ~0.7% on
//! ZipNN's 11-bit BF16 symbols (5.587 against 5.546 bits an element with codes of at most 12
//! bits; the ratio goal still holds) and decodes with a shift, a load and a store, and two
//! symbols per load where their codes fit the lookup together: about twice as fast (criterion,
//! BF16 fixture's index stream: 1.09 GiB/s of indices against 0.52 GiB/s, and writing the
//! values rather than indices).
//!
//! - Code lengths are optimal under the 12-bit limit (package-merge), so every code is complete:
//!   each 12-bit lookup names a symbol and a corrupt stream can only decode wrong symbols,
//!   caught by the stream-length and CRC checks, never an invalid state.
//! - The decoder's table (16 KiB) has 2^12 entries of one `u32`, one per value of the
//!   longest code, so every lookup resolves a whole symbol without escapes: the consumed bit
//!   count, the first code's length, and one or two of the symbols' *output values* (the
//!   caller's, e.g. ZipNN's dictionary values shifted left by 4, [`VALUE_MASK`] bits), two
//!   where their codes fit the lookup together. The entry is stored whole, four bytes a
//!   lookup, its bookkeeping in the value's unused bits (the caller masks them); the output
//!   advances by two bytes, or four for a pair.
//! - Four streams, each a contiguous quarter of the symbols, interleave so the CPU overlaps
//!   their dependency chains. Bits are read LSB first from a 64-bit window refilled without a
//!   branch: a marker bit above the window's data tells, by its leading zeros, how many bits
//!   were consumed (four lookups of at most 12 bits fit the 56 bits a refill guarantees).
//! - The encoder takes each symbol's code from the caller, four at a time as an iterator (ZipNN
//!   maps the element's value to it directly, no index pass). Codes are top-aligned in a u64
//!   with the length in the low byte, so a code enters the 64-bit accumulator with one shift
//!   (by the code's own low byte) and one OR; four are joined before they touch it, and it
//!   stores 8 bytes every four symbols.
//!
//! # Block format
//!
//! The caller knows the symbol count `n` and the number of symbols `k` (2..=256). A block is
//! `ceil(k/2)` bytes of code lengths (4 bits each, symbol 0 in the low nibble of byte 0, each
//! 1..=12, Kraft sum exactly 1), three u32 LE byte lengths of streams 0..3 (stream 3 takes the
//! rest of the block), then the streams. With `q = ceil(n/4)`, stream `s` codes symbols
//! `s·q .. min((s+1)·q, n)`. Codes are canonical (shorter first, then by symbol) and written
//! first bit first into the LSB of each byte; a stream is padded with zero bits to a byte and
//! must be consumed exactly (fewer than 8 bits left over).

// Indexing fixed tables by symbol reads clearer than zipped iterators.
#![allow(clippy::needless_range_loop)]

use super::CodecError;

/// Longest code.
pub const MAX_BITS: u32 = 12;
/// Bits one table lookup sees: the longest code, so every lookup resolves at least one symbol.
const LOOKUP_BITS: u32 = MAX_BITS;
const LOOKUP: usize = 1 << LOOKUP_BITS;
const LOOKUP_MASK: u64 = LOOKUP as u64 - 1;
/// Most symbols of one block.
pub const MAX_SYMBOLS: usize = 256;
/// Interleaved streams.
pub const STREAMS: usize = 4;
/// Bytes of the stream length table.
const STREAM_TABLE_LEN: usize = 4 * (STREAMS - 1);
/// Lookups between two refills: 4 × 12 bits ≤ the 56 a refill guarantees.
const ROUND: usize = 4;

/// The bits of an output value the decoder keeps (ZipNN's 11-bit values shifted left by 4):
/// a table entry is stored whole, its bookkeeping in the other bits.
pub const VALUE_MASK: u16 = 0x7ff0;
/// Decoder entry (u32): bits 0..4 the bits the lookup consumes, 4..15 the first value, 16..20
/// the first code's length (for exact decoding of a stream's last symbols), 20..31 the second
/// value, bit 31 set when there is a second value.
const E_LEN_MASK: u32 = 15;
const E_LEN1_SHIFT: u32 = 16;
const E_PAIR: u32 = 1 << 31;

/// Bytes a block of `k` symbols spends before its streams.
pub const fn header_len(k: usize) -> usize {
    k.div_ceil(2) + STREAM_TABLE_LEN
}

/// Working memory of the encoder: code lengths and codes, and package-merge lists (~12 KiB).
#[derive(Clone, Debug)]
pub struct HuffEncoder {
    /// Code length of each symbol.
    pub lens: [u8; MAX_SYMBOLS],
    /// Each symbol's code for the encoder: bit-reversed for LSB-first output and top-aligned
    /// (its first bit at bit `64 − len`), its length in the low byte (see [`encode`]).
    pub codes: [u64; MAX_SYMBOLS],
    order: [u8; MAX_SYMBOLS],
    weights: [[u64; 2 * MAX_SYMBOLS]; 2],
    is_package: [[bool; 2 * MAX_SYMBOLS]; MAX_BITS as usize],
}

impl Default for HuffEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HuffEncoder {
    /// Fresh memory.
    pub const fn new() -> Self {
        HuffEncoder {
            lens: [0; MAX_SYMBOLS],
            codes: [0; MAX_SYMBOLS],
            order: [0; MAX_SYMBOLS],
            weights: [[0; 2 * MAX_SYMBOLS]; 2],
            is_package: [[false; 2 * MAX_SYMBOLS]; MAX_BITS as usize],
        }
    }

    /// Builds optimal codes of at most [`MAX_BITS`] bits for `counts` (2..=256 symbols, every
    /// count ≥ 1) and returns the coded size of all symbols in bits.
    pub fn build(&mut self, counts: &[u32]) -> u64 {
        let k = counts.len();
        debug_assert!((2..=MAX_SYMBOLS).contains(&k) && counts.iter().all(|&c| c > 0));
        for (i, o) in self.order[..k].iter_mut().enumerate() {
            *o = i as u8;
        }
        self.order[..k].sort_unstable_by_key(|&s| (counts[usize::from(s)], s));
        // Package-merge: level 0 is the leaves by weight; level j merges the leaves with the
        // pairs ("packages") of level j − 1. The first 2k − 2 items of the last level say how
        // often each leaf is used: once per level in which it is among the items kept.
        let leaf = |i: usize| u64::from(counts[usize::from(self.order[i])]);
        let mut len = k;
        for i in 0..k {
            self.weights[0][i] = leaf(i);
            self.is_package[0][i] = false;
        }
        let mut lens_per_level = [0usize; MAX_BITS as usize];
        lens_per_level[0] = k;
        for level in 1..MAX_BITS as usize {
            let (prev, cur) = if level % 2 == 1 {
                let (a, b) = self.weights.split_at_mut(1);
                (&a[0], &mut b[0])
            } else {
                let (a, b) = self.weights.split_at_mut(1);
                (&b[0], &mut a[0])
            };
            let packages = len / 2;
            let (mut li, mut pi, mut out) = (0usize, 0usize, 0usize);
            while li < k || pi < packages {
                let pw = if pi < packages {
                    prev[2 * pi] + prev[2 * pi + 1]
                } else {
                    u64::MAX
                };
                let take_leaf = li < k && leaf(li) <= pw;
                if take_leaf {
                    cur[out] = leaf(li);
                    li += 1;
                } else {
                    cur[out] = pw;
                    pi += 1;
                }
                self.is_package[level][out] = !take_leaf;
                out += 1;
            }
            len = out;
            lens_per_level[level] = len;
        }
        self.lens[..k].fill(0);
        let mut active = (2 * k - 2).min(len);
        for level in (0..MAX_BITS as usize).rev() {
            let active_here = active.min(lens_per_level[level]);
            let packages = self.is_package[level][..active_here]
                .iter()
                .filter(|&&p| p)
                .count();
            for i in 0..active_here - packages {
                self.lens[usize::from(self.order[i])] += 1;
            }
            active = 2 * packages;
        }
        let mut rev = [0u16; MAX_SYMBOLS];
        canonical(&self.lens[..k], &mut rev);
        let mut bits = 0u64;
        for s in 0..k {
            let len = u32::from(self.lens[s]);
            self.codes[s] = u64::from(rev[s]) << (64 - len) | u64::from(len);
            bits += u64::from(counts[s]) * u64::from(self.lens[s]);
        }
        bits
    }

    /// Writes the code lengths of the `k` symbols of the last [`build`](Self::build).
    fn write_lengths(&self, k: usize, out: &mut [u8]) {
        for (i, b) in out[..k.div_ceil(2)].iter_mut().enumerate() {
            let hi = if 2 * i + 1 < k {
                self.lens[2 * i + 1]
            } else {
                0
            };
            *b = self.lens[2 * i] | hi << 4;
        }
    }
}

/// Canonical codes for `lens` (each 1..=MAX_BITS, complete), bit-reversed for LSB-first
/// streams, into `rev`.
fn canonical(lens: &[u8], rev: &mut [u16; MAX_SYMBOLS]) {
    let mut per_len = [0u32; MAX_BITS as usize + 1];
    for &l in lens {
        per_len[usize::from(l)] += 1;
    }
    let mut next = [0u32; MAX_BITS as usize + 1];
    let mut code = 0u32;
    for bits in 1..=MAX_BITS as usize {
        code = (code + per_len[bits - 1]) << 1;
        next[bits] = code;
    }
    for (s, &l) in lens.iter().enumerate() {
        let c = next[usize::from(l)];
        next[usize::from(l)] += 1;
        rev[s] = (c.reverse_bits() >> (32 - u32::from(l))) as u16;
    }
}

/// Encodes `n` symbols as a block into `out`: `quads(i, j)` iterates over the entries of
/// [`HuffEncoder::codes`] of symbols `i..j` (`j − i` a multiple of 4), four at a time (an
/// iterator, so the caller walks its input without an index check per step), `one(i)` gives
/// that of symbol `i` (for stream tails). `enc` holds the codes of `k` symbols. Returns the block length, or `None` when
/// `out` is too small (it needs the block's size plus 8 bytes of slack).
pub fn encode<Q, I, F>(
    n: usize,
    k: usize,
    enc: &HuffEncoder,
    quads: Q,
    one: F,
    out: &mut [u8],
) -> Option<usize>
where
    Q: Fn(usize, usize) -> I,
    I: Iterator<Item = [u64; 4]>,
    F: Fn(usize) -> u64,
{
    let h = header_len(k);
    if out.len() < h {
        return None;
    }
    enc.write_lengths(k, out);
    let q = n.div_ceil(STREAMS);
    let mut at = h;
    for s in 0..STREAMS {
        let (start, end) = ((s * q).min(n), ((s + 1) * q).min(n));
        let whole = start + (end - start) / 4 * 4;
        let len = encode_stream(quads(start, whole), whole, end, &one, out.get_mut(at..)?)?;
        if s < STREAMS - 1 {
            let l = u32::try_from(len).ok()?;
            let t = k.div_ceil(2) + 4 * s;
            out[t..t + 4].copy_from_slice(&l.to_le_bytes());
        }
        at += len;
    }
    Some(at)
}

/// One stream: the symbols of `quads`, then `whole..end` one at a time; returns its bytes.
#[inline(always)]
fn encode_stream<I, F>(quads: I, whole: usize, end: usize, one: &F, out: &mut [u8]) -> Option<usize>
where
    I: Iterator<Item = [u64; 4]>,
    F: Fn(usize) -> u64,
{
    // The accumulator's top `n` bits are the pending ones, oldest lowest: a code enters at the
    // top as the older bits shift down, one shift and one OR, and the codes' length bytes
    // stay below the pending bits (n ≤ 55) where nothing reads them. Shift counts are taken
    // mod 64 (`wrapping_shr`), as the hardware does, so a code's low byte is its own count.
    let (mut acc, mut n, mut pos) = (0u64, 0u32, 0usize);
    let len = |c: u64| (c & 0xff) as u32;
    for [c0, c1, c2, c3] in quads {
        // Four codes (≤ 48 bits) joined off the accumulator's chain, which then takes one
        // shift and one OR per four symbols.
        let (l23, l) = (len(c2) + len(c3), len(c0) + len(c1) + len(c2) + len(c3));
        let quad =
            (c0.wrapping_shr(len(c1)) | c1).wrapping_shr(l23) | c2.wrapping_shr(len(c3)) | c3;
        acc = acc.wrapping_shr(l) | quad;
        n += l;
        // The pending bits, oldest first, at the bottom of 8 bytes (n ≥ 4 here).
        let bits = acc.wrapping_shr(64 - n);
        out.get_mut(pos..pos + 8)?
            .copy_from_slice(&bits.to_le_bytes());
        pos += (n >> 3) as usize;
        n &= 7;
    }
    for i in whole..end {
        let c = one(i);
        acc = acc.wrapping_shr(len(c)) | c;
        n += len(c);
    }
    let bytes = n.div_ceil(8) as usize;
    let bits = if n == 0 { 0 } else { acc.wrapping_shr(64 - n) };
    out.get_mut(pos..pos + bytes)?
        .copy_from_slice(&bits.to_le_bytes()[..bytes]);
    Some(pos + bytes)
}

/// Decoding table (16 KiB), lent by the caller and reusable.
#[derive(Clone, Debug)]
pub struct HuffDecoder {
    table: [u32; LOOKUP],
}

impl Default for HuffDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HuffDecoder {
    /// Fresh table memory.
    pub const fn new() -> Self {
        HuffDecoder { table: [0; LOOKUP] }
    }
}

/// An entry for one code of `len` bits writing `val` (bits [`VALUE_MASK`] only).
const fn single(val: u16, len: u32) -> u32 {
    (val & VALUE_MASK) as u32 | len | len << E_LEN1_SHIFT
}

/// Reads the code lengths of `k` symbols at the start of `block` and fills the table with
/// `values[s]` as symbol `s`'s output. Returns the bytes read.
fn build_table(
    block: &[u8],
    k: usize,
    values: &[u16; 256],
    t: &mut HuffDecoder,
) -> Result<usize, CodecError> {
    let nib = block.get(..k.div_ceil(2)).ok_or(CodecError::Corrupted)?;
    let mut lens = [0u8; MAX_SYMBOLS];
    let mut kraft = 0u32;
    for s in 0..k {
        let l = (nib[s / 2] >> (4 * (s % 2))) & 15;
        if l == 0 || u32::from(l) > MAX_BITS {
            return Err(CodecError::Corrupted);
        }
        lens[s] = l;
        kraft += 1 << (MAX_BITS - u32::from(l));
    }
    if kraft != 1 << MAX_BITS || (k % 2 == 1 && nib[k / 2] >> 4 != 0) {
        return Err(CodecError::Corrupted);
    }
    let mut rev = [0u16; MAX_SYMBOLS];
    canonical(&lens[..k], &mut rev);
    // Single-symbol entries first: the code is complete, so they cover the whole table.
    for s in 0..k {
        let (l, r) = (u32::from(lens[s]), usize::from(rev[s]));
        let e = single(values[s], l);
        for j in (r..LOOKUP).step_by(1 << l) {
            t.table[j] = e;
        }
    }
    // Then pairs: after the first code, the remaining bits of the lookup may hold the whole of
    // a second (zero-padded bits past the lookup never matter: its code fits in the rest).
    for i in 0..LOOKUP {
        let e = t.table[i];
        let l1 = e & E_LEN_MASK;
        // Entries below `i` may already be pairs: take the first code's length and value.
        let e2 = t.table[i >> l1];
        let l2 = (e2 >> E_LEN1_SHIFT) & E_LEN_MASK;
        if l1 + l2 <= LOOKUP_BITS {
            t.table[i] =
                (e & !E_LEN_MASK) | (e2 & u32::from(VALUE_MASK)) << 16 | E_PAIR | (l1 + l2);
        }
    }
    Ok(k.div_ceil(2))
}

/// Where each of a block's `bounds.len() - 1` streams starts: the first at `first`, each next
/// after the length its predecessor's little-endian u32 in `lens` gives, the last ending at
/// `block_len`. A length that runs past the block is corruption.
pub(super) fn stream_bounds(
    lens: &[u8],
    first: usize,
    block_len: usize,
    bounds: &mut [usize],
) -> Result<(), CodecError> {
    let streams = bounds.len() - 1;
    bounds[0] = first;
    for s in 0..streams - 1 {
        let l = lens.get(4 * s..4 * s + 4).ok_or(CodecError::Corrupted)?;
        let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]);
        bounds[s + 1] = bounds[s]
            .checked_add(l as usize)
            .filter(|&e| e <= block_len)
            .ok_or(CodecError::Corrupted)?;
    }
    bounds[streams] = block_len;
    Ok(())
}

/// Eight bytes at `at` as a little-endian word, zeros past the end of `s`.
#[inline(always)]
pub(super) fn load_padded(s: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(tail) = s.get(at..) {
        let m = tail.len().min(8);
        b[..m].copy_from_slice(&tail[..m]);
    }
    u64::from_le_bytes(b)
}

/// Window of bits starting at bit `k` (< 8) of byte `at`, with the marker bit above its data.
#[inline(always)]
fn window(s: &[u8], at: usize, k: u32) -> u64 {
    let w = match s.get(at..at + 8) {
        Some(w) => u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
        None => load_padded(s, at),
    };
    (w | 1 << 63) >> k
}

/// Decodes a block of `n` symbols over `k` symbols (2..=256) into `out` (`2n` bytes: symbol
/// `i`'s value from `values` as u16 LE at `2i`). Only the bits [`VALUE_MASK`] of the values
/// are kept, and only those bits of the output are defined: the others hold the decoder's
/// bookkeeping (it stores table entries whole), so the caller masks them. The block must be
/// consumed exactly.
pub fn decode(
    block: &[u8],
    n: usize,
    k: usize,
    values: &[u16; 256],
    t: &mut HuffDecoder,
    out: &mut [u8],
) -> Result<(), CodecError> {
    if !(2..=MAX_SYMBOLS).contains(&k) {
        return Err(CodecError::Corrupted);
    }
    let out = out
        .get_mut(..2 * n)
        .ok_or(CodecError::BufferTooSmall(2 * n))?;
    let mut at = build_table(block, k, values, t)?;
    let lens = block
        .get(at..at + STREAM_TABLE_LEN)
        .ok_or(CodecError::Corrupted)?;
    at += STREAM_TABLE_LEN;
    let mut bounds = [0usize; STREAMS + 1];
    stream_bounds(lens, at, block.len(), &mut bounds)?;
    let q = n.div_ceil(STREAMS);
    let table = &t.table;
    let mut lanes: [Lane; STREAMS] = core::array::from_fn(|s| Lane {
        bits: window(block, bounds[s], 0),
        bp: bounds[s],
        end: bounds[s + 1],
        ob: 2 * (s * q).min(n),
        oend: 2 * ((s + 1) * q).min(n),
    });
    // Fast loop: the four lanes' lookups interleaved in program order, so four dependency
    // chains are always in flight; the lanes' windows and output offsets stay in registers.
    interleaved(&mut lanes, table, block, out);
    // Then each lane alone while it has room, then its last symbols one at a time.
    for l in lanes.iter_mut() {
        while round(l, table, block, out) {}
    }
    // Each stream's last symbols, one at a time with exact bit accounting.
    for l in &lanes {
        let stream = &block[..l.end];
        let mut bitpos = 8 * l.bp + l.bits.leading_zeros() as usize;
        for o in (l.ob..l.oend).step_by(2) {
            let w = load_padded(stream, bitpos >> 3) >> (bitpos & 7);
            let e = table[(w & LOOKUP_MASK) as usize];
            out[o..o + 2].copy_from_slice(&(e as u16 & VALUE_MASK).to_le_bytes());
            bitpos += ((e >> E_LEN1_SHIFT) & E_LEN_MASK) as usize;
            if bitpos > 8 * l.end {
                return Err(CodecError::Corrupted);
            }
        }
        if bitpos.div_ceil(8) != l.end {
            return Err(CodecError::Corrupted);
        }
    }
    Ok(())
}

/// A stream being decoded: window (with its marker bit), byte position of the window, end of
/// the stream's bytes, next output byte and end of its output (bytes).
struct Lane {
    bits: u64,
    bp: usize,
    end: usize,
    ob: usize,
    oend: usize,
}

/// Output bytes a lookup advances: 2, or 4 for a pair (`lea` of the top bit).
#[inline(always)]
fn advance(e: u32) -> usize {
    2 + 2 * (e >> 31) as usize
}

/// One lookup: one or two values stored at byte `o` of `out`, `o` advanced, bits consumed.
/// `lim` is `out.len() − 4`: one comparison bounds the store (the caller's round checks keep
/// `o` below it anyway).
#[inline(always)]
fn lookup(table: &[u32; LOOKUP], bits: &mut u64, out: &mut [u8], lim: usize, o: &mut usize) {
    let e = table[(*bits & LOOKUP_MASK) as usize];
    if *o <= lim {
        out[*o..*o + 4].copy_from_slice(&e.to_le_bytes());
    }
    *o += advance(e);
    *bits >>= e & E_LEN_MASK;
}

/// The lanes' rounds in lockstep while every lane has room for a round (8 input bytes at its
/// refill position, 16 output bytes).
fn interleaved(lanes: &mut [Lane; STREAMS], table: &[u32; LOOKUP], block: &[u8], out: &mut [u8]) {
    let [mut b0, mut b1, mut b2, mut b3] =
        [lanes[0].bits, lanes[1].bits, lanes[2].bits, lanes[3].bits];
    let [mut o0, mut o1, mut o2, mut o3] = [lanes[0].ob, lanes[1].ob, lanes[2].ob, lanes[3].ob];
    let mut bp = [lanes[0].bp, lanes[1].bp, lanes[2].bp, lanes[3].bp];
    let end = [lanes[0].end, lanes[1].end, lanes[2].end, lanes[3].end];
    let oend = [lanes[0].oend, lanes[1].oend, lanes[2].oend, lanes[3].oend];
    let Some(lim) = out.len().checked_sub(4) else {
        return;
    };
    // A round takes at most 48 bits (so its refill position moves at most 6 bytes) and
    // touches at most 16 output bytes past a lane's offset: from the lanes' positions, how many
    // rounds can run before any lane could lack 8 input or 16 output bytes. The rounds then
    // run without checks of their own.
    const IN_STEP: usize = 6;
    const OUT_STEP: usize = 16;
    loop {
        let mut rounds = usize::MAX;
        for (s, (b, o)) in [(b0, o0), (b1, o1), (b2, o2), (b3, o3)]
            .into_iter()
            .enumerate()
        {
            let p = bp[s] + (b.leading_zeros() >> 3) as usize;
            let r_in = end[s]
                .checked_sub(p + 8)
                .map_or(0, |room| room / IN_STEP + 1);
            let r_out = oend[s]
                .checked_sub(o + OUT_STEP)
                .map_or(0, |room| room / OUT_STEP + 1);
            rounds = rounds.min(r_in).min(r_out);
        }
        if rounds == 0 {
            break;
        }
        for _ in 0..rounds {
            let mut refill = |s: usize, b: &mut u64| {
                let used = b.leading_zeros();
                let p = bp[s] + (used >> 3) as usize;
                let w = block.get(p..p + 8).map_or(0, |w| {
                    u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
                });
                *b = (w | 1 << 63) >> (used & 7);
                bp[s] = p;
            };
            refill(0, &mut b0);
            refill(1, &mut b1);
            refill(2, &mut b2);
            refill(3, &mut b3);
            for _ in 0..ROUND {
                lookup(table, &mut b0, out, lim, &mut o0);
                lookup(table, &mut b1, out, lim, &mut o1);
                lookup(table, &mut b2, out, lim, &mut o2);
                lookup(table, &mut b3, out, lim, &mut o3);
            }
        }
    }
    for (s, (b, o)) in [(b0, o0), (b1, o1), (b2, o2), (b3, o3)]
        .into_iter()
        .enumerate()
    {
        lanes[s].bits = b;
        lanes[s].ob = o;
        lanes[s].bp = bp[s];
    }
}

/// Output window of a lane's round: its four lookups store 4 bytes at offsets below 16,
/// masked to 0..16 so the compiler sees the stores inside the window.
const ROUND_OUT: usize = 16 + 4;

/// One round of a lane alone (after the lockstep rounds): a refill and [`ROUND`] lookups.
/// Returns `false`, changing nothing, when the lane lacks 8 input or [`ROUND_OUT`] output bytes.
#[inline(always)]
fn round(l: &mut Lane, table: &[u32; LOOKUP], block: &[u8], out: &mut [u8]) -> bool {
    let used = l.bits.leading_zeros();
    let bp = l.bp + (used >> 3) as usize;
    if bp + 8 > l.end || l.ob + ROUND_OUT > l.oend {
        return false;
    }
    let (Some(src), Some(win)) = (block.get(bp..bp + 8), out.get_mut(l.ob..l.ob + ROUND_OUT))
    else {
        return false;
    };
    let Ok(win) = <&mut [u8; ROUND_OUT]>::try_from(win) else {
        return false;
    };
    let w = u64::from_le_bytes([
        src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
    ]);
    let mut bits = (w | 1 << 63) >> (used & 7);
    let mut j = 0usize;
    for _ in 0..ROUND {
        let e = table[(bits & LOOKUP_MASK) as usize];
        let at = j & 15;
        win[at..at + 4].copy_from_slice(&e.to_le_bytes());
        j += advance(e);
        bits >>= e & E_LEN_MASK;
    }
    l.bp = bp;
    l.bits = bits;
    l.ob += j;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng::Rng;

    const N: usize = 60_000;

    /// Codes a plain array of symbols (as ZipNN codes its planes, one code per element).
    fn encode_syms(syms: &[u8], k: usize, enc: &HuffEncoder, out: &mut [u8]) -> Option<usize> {
        let codes = &enc.codes;
        let quads = |i: usize, j: usize| {
            syms[i..j]
                .chunks_exact(4)
                .map(move |q| core::array::from_fn(|j| codes[usize::from(q[j])]))
        };
        let one = |i: usize| codes[usize::from(syms[i])];
        encode(syms.len(), k, enc, quads, one, out)
    }

    fn build(syms: &[u8], k: usize, enc: &mut HuffEncoder) -> u64 {
        let mut counts = [0u32; 256];
        for &s in syms {
            counts[usize::from(s)] += 1;
        }
        for c in counts[..k].iter_mut() {
            *c = (*c).max(1);
        }
        enc.build(&counts[..k])
    }

    /// A distinct output value per symbol, all of [`VALUE_MASK`]'s bits in use.
    fn value(s: u8) -> u16 {
        (u16::from(s) * 7 + 1500) << 4 & VALUE_MASK
    }

    /// Codes `syms` (over `k` symbols) and decodes them back with values [`value`].
    fn round_trip(syms: &[u8], k: usize) -> usize {
        let mut enc = HuffEncoder::new();
        let bits = build(syms, k, &mut enc);
        let mut kraft = 0u32;
        for &l in &enc.lens[..k] {
            assert!((1..=MAX_BITS as u8).contains(&l));
            kraft += 1 << (MAX_BITS - u32::from(l));
        }
        assert_eq!(kraft, 1 << MAX_BITS, "complete code");
        let mut out = [0u8; 2 * N];
        let len = encode_syms(syms, k, &enc, &mut out).unwrap();
        let data_bits: u64 = syms
            .iter()
            .map(|&s| u64::from(enc.lens[usize::from(s)]))
            .sum();
        assert!(data_bits <= bits);
        assert!(len <= header_len(k) + (data_bits as usize).div_ceil(8) + STREAMS);
        let values: [u16; 256] = core::array::from_fn(|s| value(s as u8));
        let mut back = [0u8; 2 * N];
        let mut t = HuffDecoder::new();
        decode(&out[..len], syms.len(), k, &values, &mut t, &mut back).unwrap();
        for (i, &s) in syms.iter().enumerate() {
            assert_eq!(
                u16::from_le_bytes([back[2 * i], back[2 * i + 1]]) & VALUE_MASK,
                value(s),
                "symbol {i}"
            );
        }
        len
    }

    #[test]
    fn skewed_and_flat_round_trip_at_every_small_length() {
        let mut rng = Rng(42);
        // Geometric with a flat tail over 200 symbols: long codes reach the 12-bit limit, so
        // escapes occur.
        let geo: [u8; N] = core::array::from_fn(|_| {
            let r = rng.next();
            if r & 63 == 0 {
                (r >> 8) as u8 % 200
            } else {
                r.trailing_zeros().min(30) as u8
            }
        });
        let flat: [u8; N] = core::array::from_fn(|_| rng.next() as u8);
        let mut enc = HuffEncoder::new();
        build(&geo, 200, &mut enc);
        assert_eq!(enc.lens[..200].iter().max(), Some(&12));
        let len = round_trip(&geo, 200);
        assert!(len < N * 3 / 8, "{len}");
        round_trip(&flat, 256);
        for n in 0..80 {
            round_trip(&geo[..n], 200);
            round_trip(&flat[..n], 256);
        }
        round_trip(&[0, 1, 1, 1, 0], 2);
    }

    #[test]
    fn lengths_are_optimal_on_a_small_example() {
        // Counts 1, 1, 2, 4, 8: Huffman gives 4, 4, 3, 2, 1 bits (total 30).
        let mut enc = HuffEncoder::new();
        assert_eq!(enc.build(&[1, 1, 2, 4, 8]), 4 + 4 + 6 + 8 + 8);
        // Fibonacci counts would need 21 bits unconstrained: limited to 12, still complete.
        let mut fib = [1u32; 22];
        for i in 2..22 {
            fib[i] = fib[i - 1] + fib[i - 2];
        }
        enc.build(&fib);
        assert!(enc.lens[..22].iter().all(|&l| l <= 12));
        assert_eq!(enc.lens[..22].iter().max(), Some(&12));
    }

    #[test]
    fn corrupt_blocks_never_panic() {
        let mut rng = Rng(9);
        let syms: [u8; 5000] = core::array::from_fn(|_| rng.next().trailing_zeros().min(40) as u8);
        let mut enc = HuffEncoder::new();
        build(&syms, 41, &mut enc);
        let mut out = [0u8; 12_000];
        let len = encode_syms(&syms, 41, &enc, &mut out).unwrap();
        let values = [0u16; 256];
        let mut t = HuffDecoder::new();
        let mut back = [0u8; 10_000];
        let mut errors = 0;
        for _ in 0..3000 {
            let mut m = [0u8; 12_000];
            m[..len].copy_from_slice(&out[..len]);
            let l = rng.damage(&mut m, len);
            errors +=
                usize::from(decode(&m[..l], syms.len(), 41, &values, &mut t, &mut back).is_err());
        }
        assert!(errors > 1000, "{errors}");
    }
}
