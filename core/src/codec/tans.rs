//! Table-driven ANS (tANS, as in FSE) of up to 256 symbols in four lanes of two states each,
//! built for decoding speed near the entropy: ZipNN's index stream of big 8-bit-split chunks
//! (FP16), where Huffman's whole-bit code lengths miss the ratio goal (see
//! `docs/format/zipnn.md`).
//!
//! # Why tANS next to rANS and Huffman
//!
//! rANS ([`super::entropy`]) codes within ~0.1% of the entropy but spends a multiply, a table
//! load and a renormalisation select per symbol, and its four lanes share one word stream, so
//! each lane's refill waits on the others'. Huffman ([`super::huffman`]) decodes fastest but
//! loses ~0.6% on FP16's values (FP16 fixture: 0.849 against the 0.848 goal). tANS codes as
//! close to the entropy as rANS with the same 12-bit frequency table (FP16 fixture 0.8471
//! against rANS's 0.8470), and decodes with a load, two shifts, a subtract and an add per
//! symbol: no multiply, no select. Each lane reads its own bit stream (no chain between lanes)
//! and alternates two states, so eight dependency chains overlap. Measured (criterion, one
//! FP16 chunk's values, machine under load): decoding 583 MiB/s of symbols against rANS's 491,
//! encoding 556 against 384; in ZipNN's FP16 path, where the values also go straight into the
//! output instead of through an index plane, decompression went from ~920 to ~1500 MB/s. That
//! is still about half of Huffman's speed (two symbols a lookup, no state): whole-bit codes are
//! what make Huffman fast and what cost it the ratio.
//!
//! - States are `0..4096`; a symbol of frequency `f` owns `f` of them, spread over the table by
//!   a fixed odd step. The decoder's table has one `u32` per state: the bits to read, the
//!   caller's *output value* for the symbol (e.g. ZipNN's dictionary value shifted left by 7,
//!   [`VALUE_MASK`] bits) and the base of the next state. Values are written straight out as
//!   u16, the bookkeeping in their low 6 bits (the caller masks them).
//! - Encoding runs backwards over each lane, emitting the bits of each step into a stream
//!   written from its end towards its start, so the decoder reads forwards, least significant
//!   bit first, from a 64-bit window refilled without a branch (as the Huffman decoder).
//! - The frequency table is the rANS one (12-bit, same description), so the model costs the
//!   same bytes and comes from the same normalisation.
//!
//! # Block format (after the caller's frequency table)
//!
//! The caller knows the symbol count `n`. With `q = ceil(n/4)`, lane `s` codes symbols
//! `s·q .. min((s+1)·q, n)`; within a lane, symbol `j` (counted from the lane's start) uses
//! state `j mod 2`. The block is: per lane two u16 LE (state 0, state 1: bits 0..12 the
//! decoder's initial state; state 0's bits 12..15 the number of padding bits, 0..7, that start
//! the lane's first byte; every other bit 0); three u32 LE byte lengths of lanes 0, 1, 2; the
//! lanes (lane 3 takes the rest). Decoding a symbol from state `x`: `s` is the symbol at
//! position `x` of the spread table, `nb` and `base` those of position `x` (built as
//! [`build_decoder`] does and `docs/format/zipnn.md` describes); read `nb` bits `b` (LSB
//! first); `x ← base + b`. A lane must end with both states 0 and its bytes consumed exactly.

// Indexing fixed tables by symbol reads clearer than zipped iterators.
#![allow(clippy::needless_range_loop)]

use super::huffman::{load_padded, stream_bounds};
use super::CodecError;

/// log2 of the number of states: the rANS table's precision, so one frequency table serves both.
pub const TABLE_LOG: u32 = 12;
const L: usize = 1 << TABLE_LOG;
const L_MASK: usize = L - 1;
/// Interleaved lanes, each with its own bit stream.
pub const LANES: usize = 4;
/// States per lane, used alternately.
const STATES: usize = 2;
/// Bytes of lane states and lengths before the lanes.
pub const HEADER_LEN: usize = 2 * STATES * LANES + 4 * (LANES - 1);
/// The bits of an output value the decoder keeps; its low 6 bits hold the decoder's
/// bookkeeping (the bits to read, so a shift by the entry itself is a shift by them).
pub const VALUE_MASK: u16 = 0xffc0;
/// Decoder entry (u32): bits 0..6 the bits to read, 6..16 the value, 16..28 the next state's
/// base.
const E_NB_MASK: u32 = 63;
const E_BASE_SHIFT: u32 = 16;
/// Symbols a round of a lane decodes between two refills: 4 × 12 bits ≤ the 56 a refill gives.
const ROUND: usize = 4;

/// Per-symbol encoder constants: `nb = (x + dnb) >> 16` bits leave the state, and the next
/// state is `states[(x >> nb) + dfs]` (wrapping arithmetic).
#[derive(Clone, Copy, Debug, Default)]
struct EncSym {
    dnb: u32,
    dfs: u32,
}

/// Encoder tables (~10 KiB), lent by the caller and reusable.
#[derive(Clone, Debug)]
pub struct TansEncoder {
    /// Per symbol, its occurrences' states (`L + position`) in ascending position order, the
    /// symbols one after the other.
    states: [u16; L],
    syms: [EncSym; 256],
}

impl Default for TansEncoder {
    fn default() -> Self {
        Self::new()
    }
}

/// The positions of the table in the order symbols are dealt to them: a fixed odd step visits
/// every position once (the step FSE uses, which scatters each symbol's states evenly).
#[inline(always)]
fn spread(freqs: &[u16; 256], at: &mut [u8; L]) {
    const STEP: usize = (L >> 1) + (L >> 3) + 3;
    let mut pos = 0usize;
    for s in 0..256 {
        for _ in 0..freqs[s] {
            at[pos] = s as u8;
            pos = (pos + STEP) & L_MASK;
        }
    }
}

impl TansEncoder {
    /// Fresh memory.
    pub const fn new() -> Self {
        TansEncoder {
            states: [0; L],
            syms: [EncSym { dnb: 0, dfs: 0 }; 256],
        }
    }

    /// Builds the tables for `freqs` (summing to exactly 4096, as [`super::entropy`]
    /// normalises them).
    pub fn build(&mut self, freqs: &[u16; 256]) {
        debug_assert_eq!(freqs.iter().map(|&f| u32::from(f)).sum::<u32>(), L as u32);
        let mut at = [0u8; L];
        spread(freqs, &mut at);
        let mut next = [0u16; 256];
        let mut cum = 0u32;
        for s in 0..256 {
            let f = u32::from(freqs[s]);
            next[s] = cum as u16;
            if f > 0 {
                // nb = max_bits when x ≥ f << max_bits, else max_bits − 1 (the state keeps
                // `x >> nb` in [f, 2f)).
                // (Saturating: a table not summing to 4096 codes nonsense but never panics.)
                let max_bits = TABLE_LOG.saturating_sub(31 - f.leading_zeros());
                let min_state = f << max_bits;
                self.syms[s] = EncSym {
                    dnb: (max_bits << 16).wrapping_sub(min_state),
                    dfs: cum.wrapping_sub(f),
                };
            }
            cum += f;
        }
        for (u, &s) in at.iter().enumerate() {
            let i = &mut next[usize::from(s)];
            self.states[usize::from(*i) & L_MASK] = (L + u) as u16;
            *i = i.wrapping_add(1);
        }
    }
}

/// A lane being encoded: state pair, pending bits at the bottom of `acc` (the latest stream bit
/// highest; bits above them are stale), their count, and the next free byte (downwards) of its
/// region.
#[derive(Clone, Copy)]
struct EncLane {
    x: [u32; STATES],
    acc: u64,
    nbits: u32,
    pos: usize,
}

impl EncLane {
    /// Encodes `s` with state `ST` (a constant, so the states stay in registers). Every shift
    /// is by `nb`, and no mask is built: the bits leaving the state are `x − (y << nb)` with
    /// `y = x >> nb`, and `(acc << nb) | (x − (y << nb))` is `((acc − y) << nb) + x` in
    /// wrapping arithmetic (the low `nb` bits of `acc << nb` are zero, so the OR is a sum, and
    /// the borrow of `acc − y` is undone by the sum).
    #[inline(always)]
    fn step<const ST: usize>(&mut self, s: u8, enc: &TansEncoder) {
        let e = enc.syms[usize::from(s)];
        let x = self.x[ST];
        let nb = x.wrapping_add(e.dnb) >> 16;
        let y = x >> nb;
        // Earlier stream bits go below the pending ones; nbits + nb ≤ 64.
        self.acc = self
            .acc
            .wrapping_sub(u64::from(y))
            .wrapping_shl(nb)
            .wrapping_add(u64::from(x));
        self.nbits += nb;
        self.x[ST] = u32::from(enc.states[(y.wrapping_add(e.dfs) as usize) & L_MASK]);
    }

    /// [`step`](Self::step) with the state of symbol `j` of the lane.
    #[inline(always)]
    fn step_at(&mut self, j: usize, s: u8, enc: &TansEncoder) {
        if j & (STATES - 1) == 0 {
            self.step::<0>(s, enc);
        } else {
            self.step::<1>(s, enc);
        }
    }

    /// Moves the whole bytes of pending bits into `region` below `pos`; `None` when the region
    /// is full. Stores 8 bytes whatever the count (later stores overwrite the extra ones).
    #[inline(always)]
    fn flush(&mut self, region: &mut [u8]) -> Option<()> {
        let at = self.pos.checked_sub(8)?;
        // The pending bits top-aligned (with none pending nothing below is committed).
        let top = self.acc.wrapping_shl(64 - self.nbits);
        region
            .get_mut(at..self.pos)?
            .copy_from_slice(&top.to_le_bytes());
        self.pos -= (self.nbits >> 3) as usize;
        self.nbits &= 7;
        Some(())
    }

    /// The pending bits (fewer than 8) as the lane's first byte, top-aligned; the bits below
    /// them are the padding.
    fn first_byte(&self) -> u8 {
        (self.acc.wrapping_shl(64 - self.nbits) >> 56) as u8
    }
}

/// The lockstep rounds of two lanes (`syms` a whole number of rounds each, the same count),
/// backwards: symbols 3, 2, 1, 0 of a round take states 1, 0, 1, 0.
#[inline(always)]
fn encode_pair(
    lanes: [&mut EncLane; 2],
    syms: [&[u8]; 2],
    regions: [&mut [u8]; 2],
    enc: &TansEncoder,
) -> Option<()> {
    // The lanes in locals (the compiler keeps them in registers, not behind a reference).
    let (mut a, mut b) = (*lanes[0], *lanes[1]);
    let [ra, rb] = regions;
    let ga = syms[0].chunks_exact(ROUND).rev();
    let gb = syms[1].chunks_exact(ROUND).rev();
    for (qa, qb) in ga.zip(gb) {
        let qa: &[u8; ROUND] = qa.try_into().ok()?;
        let qb: &[u8; ROUND] = qb.try_into().ok()?;
        a.step::<1>(qa[3], enc);
        b.step::<1>(qb[3], enc);
        a.step::<0>(qa[2], enc);
        b.step::<0>(qb[2], enc);
        a.step::<1>(qa[1], enc);
        b.step::<1>(qb[1], enc);
        a.step::<0>(qa[0], enc);
        b.step::<0>(qb[0], enc);
        a.flush(ra)?;
        b.flush(rb)?;
    }
    (*lanes[0], *lanes[1]) = (a, b);
    Some(())
}

/// Encodes `idx` (symbols with non-zero frequency in the table `enc` was built for) as a block
/// into `out`; returns its length. `scratch` holds the lanes while they are written backwards
/// (a quarter each); `None` when a lane does not fit its quarter or the block does not fit
/// `out`.
pub fn encode(idx: &[u8], enc: &TansEncoder, scratch: &mut [u8], out: &mut [u8]) -> Option<usize> {
    let n = idx.len();
    let q = n.div_ceil(LANES);
    let region = scratch.len() / LANES;
    let mut lanes: [EncLane; LANES] = core::array::from_fn(|_| EncLane {
        x: [L as u32; STATES],
        acc: 0,
        nbits: 0,
        pos: region,
    });
    let syms: [&[u8]; LANES] = core::array::from_fn(|s| &idx[(s * q).min(n)..((s + 1) * q).min(n)]);
    let (r0, rest) = scratch.split_at_mut(region);
    let (r1, rest) = rest.split_at_mut(region);
    let (r2, rest) = rest.split_at_mut(region);
    let r3 = &mut rest[..region];
    let regions = [r0, r1, r2, r3];
    // Whole rounds of four symbols from every lane's start; the lanes' ends past them (the
    // last lane may be shorter) one at a time first, since encoding runs backwards.
    let rounds = syms.iter().map(|s| s.len()).min().unwrap_or(0) / ROUND;
    for (s, lane) in lanes.iter_mut().enumerate() {
        for j in (ROUND * rounds..syms[s].len()).rev() {
            lane.step_at(j, syms[s][j], enc);
            lane.flush(regions[s])?;
        }
    }
    // Two lanes at a time (four state chains in flight): all four at once would not fit the
    // registers, and their spills cost more than the lost overlap.
    let [l0, l1, l2, l3] = &mut lanes;
    let [s0, s1, s2, s3] = syms.map(|s| &s[..ROUND * rounds]);
    let [r0, r1, r2, r3] = regions;
    encode_pair([l0, l1], [s0, s1], [&mut *r0, &mut *r1], enc)?;
    encode_pair([l2, l3], [s2, s3], [&mut *r2, &mut *r3], enc)?;
    let regions = [r0, r1, r2, r3];
    // The earliest bits (fewer than 8) start each lane, padded below.
    let mut at = HEADER_LEN;
    for (s, lane) in lanes.iter_mut().enumerate() {
        let mut pad = 0;
        if lane.nbits > 0 {
            lane.pos = lane.pos.checked_sub(1)?;
            let b = lane.first_byte();
            regions[s][lane.pos] = b;
            pad = 8 - lane.nbits;
        }
        let stream = &regions[s][lane.pos..];
        let h = 2 * STATES * s;
        let x0 = (lane.x[0] - L as u32) as u16 | (pad as u16) << TABLE_LOG;
        let x1 = (lane.x[1] - L as u32) as u16;
        out.get_mut(h..h + 4)?[..2].copy_from_slice(&x0.to_le_bytes());
        out[h + 2..h + 4].copy_from_slice(&x1.to_le_bytes());
        if s < LANES - 1 {
            let t = 2 * STATES * LANES + 4 * s;
            let len = u32::try_from(stream.len()).ok()?;
            out.get_mut(t..t + 4)?.copy_from_slice(&len.to_le_bytes());
        }
        out.get_mut(at..at + stream.len())?.copy_from_slice(stream);
        at += stream.len();
    }
    Some(at)
}

/// Fills the decoding table `table` for `freqs` (summing to 4096), symbol `s` writing
/// `values[s]` (bits [`VALUE_MASK`]).
pub fn build_decoder(freqs: &[u16; 256], values: &[u16; 256], table: &mut [u32; L]) {
    let mut at = [0u8; L];
    spread(freqs, &mut at);
    let mut next: [u32; 256] = core::array::from_fn(|s| u32::from(freqs[s]));
    for (u, &s) in at.iter().enumerate() {
        let s = usize::from(s);
        // x in [f, 2f): nb bits lift it into [L, 2L).
        let x = next[s];
        next[s] += 1;
        // (Saturating and wrapping: a table not summing to 4096, which callers never pass,
        // builds a table of nonsense, not a panic.)
        let nb = TABLE_LOG.saturating_sub(31 - x.leading_zeros());
        let base = (x << nb).wrapping_sub(L as u32) & L_MASK as u32;
        table[u] = nb | u32::from(values[s] & VALUE_MASK) | base << E_BASE_SHIFT;
    }
}

/// A lane being decoded: window (marker bit above its data), byte position of the window,
/// end of the lane's bytes, states, and its symbols as output positions (elements).
struct Lane {
    bits: u64,
    bp: usize,
    end: usize,
    x: [u32; STATES],
    next: usize,
    stop: usize,
}

/// One decoding step: the entry of state `x`, whose value the caller stores. The read bits are
/// `w − ((w >> nb) << nb)`, both shifts by the entry itself (its low 6 bits are `nb`).
#[inline(always)]
fn step(table: &[u32; L], x: &mut u32, bits: &mut u64) -> u32 {
    let e = table[*x as usize & L_MASK];
    let rest = bits.wrapping_shr(e);
    *x = (e >> E_BASE_SHIFT) + (*bits - rest.wrapping_shl(e)) as u32;
    *bits = rest;
    e
}

/// Decodes a block of `n` symbols (after the caller's frequency table, built into `table` by
/// [`build_decoder`]) into `out` (`2n` bytes: symbol `i`'s value as u16 LE at `2i`). Only the
/// bits [`VALUE_MASK`] of the output are the values'; the caller masks the others. The block
/// must be consumed exactly and every lane must end in states 0.
pub fn decode(block: &[u8], n: usize, table: &[u32; L], out: &mut [u8]) -> Result<(), CodecError> {
    let out = out
        .get_mut(..2 * n)
        .ok_or(CodecError::BufferTooSmall(2 * n))?;
    let head = block.get(..HEADER_LEN).ok_or(CodecError::Corrupted)?;
    let u16_at = |i: usize| u16::from_le_bytes([head[i], head[i + 1]]);
    let mut bounds = [0usize; LANES + 1];
    stream_bounds(
        &head[2 * STATES * LANES..],
        HEADER_LEN,
        block.len(),
        &mut bounds,
    )?;
    let q = n.div_ceil(LANES);
    let mut lanes: [Lane; LANES] = core::array::from_fn(|s| {
        let (x0, x1) = (u16_at(2 * STATES * s), u16_at(2 * STATES * s + 2));
        let pad = u32::from(x0 >> TABLE_LOG);
        Lane {
            bits: window(block, bounds[s], pad),
            bp: bounds[s],
            end: bounds[s + 1],
            x: [u32::from(x0) & L_MASK as u32, u32::from(x1)],
            next: (s * q).min(n),
            stop: ((s + 1) * q).min(n),
        }
    });
    for s in 0..LANES {
        let x1 = u16_at(2 * STATES * s + 2);
        if u16_at(2 * STATES * s) >> 15 != 0 || usize::from(x1) >= L {
            return Err(CodecError::Corrupted);
        }
    }
    interleaved(&mut lanes, table, block, out);
    // Each lane's last symbols (and all of a lane the lockstep rounds could not take), one at
    // a time with exact bit accounting.
    for l in lanes.iter_mut() {
        let stream = &block[..l.end];
        let mut bitpos = 8 * l.bp + l.bits.leading_zeros() as usize;
        for i in l.next..l.stop {
            let st = (i - l.next) % STATES;
            let mut w = load_padded(stream, bitpos >> 3) >> (bitpos & 7);
            let e = step(table, &mut l.x[st], &mut w);
            out[2 * i..2 * i + 2].copy_from_slice(&(e as u16).to_le_bytes());
            bitpos += (e & E_NB_MASK) as usize;
            if bitpos > 8 * l.end {
                return Err(CodecError::Corrupted);
            }
        }
        if bitpos != 8 * l.end || l.x != [0; STATES] {
            return Err(CodecError::Corrupted);
        }
    }
    Ok(())
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

/// The lanes' rounds in lockstep while every lane has a whole round of symbols left and 8
/// input bytes at its refill position for each of them. Each round: refill, then [`ROUND`]
/// symbols per lane, the lanes' steps interleaved so eight state chains are in flight.
fn interleaved(lanes: &mut [Lane; LANES], table: &[u32; L], block: &[u8], out: &mut [u8]) {
    // A round reads at most 48 bits, so a lane's refill position moves at most 6 bytes: from
    // the lanes' positions, how many rounds surely have their input; those run unchecked, then
    // the count is taken again (a round of real data reads far less than its bound).
    const IN_STEP: usize = 6;
    // Each lane's own output (its symbols are a contiguous run), so a round stores each value
    // as soon as it is decoded, into four fixed windows.
    let (o0, rest) = out.split_at_mut((2 * lanes[0].stop).min(out.len()));
    let (o1, rest) = rest.split_at_mut((2 * (lanes[1].stop - lanes[0].stop)).min(rest.len()));
    let (o2, o3) = rest.split_at_mut((2 * (lanes[2].stop - lanes[1].stop)).min(rest.len()));
    let firsts = [0, lanes[0].stop, lanes[1].stop, lanes[2].stop];
    let [a, b, c, d] = lanes;
    let refill = |l: &mut Lane| {
        let used = l.bits.leading_zeros();
        let p = l.bp + (used >> 3) as usize;
        let w = block.get(p..p + 8).map_or(0, |w| {
            u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
        });
        l.bits = (w | 1 << 63) >> (used & 7);
        l.bp = p;
    };
    #[inline(always)]
    fn window<'a>(o: &'a mut [u8], l: &Lane, first: usize) -> Option<&'a mut [u8; 2 * ROUND]> {
        let at = 2 * (l.next - first);
        o.get_mut(at..at + 2 * ROUND)?.try_into().ok()
    }
    loop {
        let mut rounds = usize::MAX;
        for l in [&*a, &*b, &*c, &*d] {
            let p = l.bp + (l.bits.leading_zeros() >> 3) as usize;
            let r_in = l
                .end
                .checked_sub(p + 8)
                .map_or(0, |room| room / IN_STEP + 1);
            rounds = rounds.min(r_in).min((l.stop - l.next) / ROUND);
        }
        if rounds == 0 {
            return;
        }
        // States, windows and output positions in locals for the rounds.
        let ([mut a0, mut a1], [mut b0, mut b1]) = (a.x, b.x);
        let ([mut c0, mut c1], [mut d0, mut d1]) = (c.x, d.x);
        for _ in 0..rounds {
            refill(a);
            refill(b);
            refill(c);
            refill(d);
            let (mut wa, mut wb, mut wc, mut wd) = (a.bits, b.bits, c.bits, d.bits);
            // Each lane's four values gathered into one word, stored once.
            let v = |e: u32, j: u32| u64::from(e & 0xffff) << (16 * j);
            let mut va = v(step(table, &mut a0, &mut wa), 0);
            let mut vb = v(step(table, &mut b0, &mut wb), 0);
            let mut vc = v(step(table, &mut c0, &mut wc), 0);
            let mut vd = v(step(table, &mut d0, &mut wd), 0);
            va |= v(step(table, &mut a1, &mut wa), 1);
            vb |= v(step(table, &mut b1, &mut wb), 1);
            vc |= v(step(table, &mut c1, &mut wc), 1);
            vd |= v(step(table, &mut d1, &mut wd), 1);
            va |= v(step(table, &mut a0, &mut wa), 2);
            vb |= v(step(table, &mut b0, &mut wb), 2);
            vc |= v(step(table, &mut c0, &mut wc), 2);
            vd |= v(step(table, &mut d0, &mut wd), 2);
            va |= v(step(table, &mut a1, &mut wa), 3);
            vb |= v(step(table, &mut b1, &mut wb), 3);
            vc |= v(step(table, &mut c1, &mut wc), 3);
            vd |= v(step(table, &mut d1, &mut wd), 3);
            (a.bits, b.bits, c.bits, d.bits) = (wa, wb, wc, wd);
            for (o, l, first, vl) in [
                (&mut *o0, &mut *a, firsts[0], va),
                (&mut *o1, &mut *b, firsts[1], vb),
                (&mut *o2, &mut *c, firsts[2], vc),
                (&mut *o3, &mut *d, firsts[3], vd),
            ] {
                if let Some(w) = window(o, l, first) {
                    *w = vl.to_le_bytes();
                }
                l.next += ROUND;
            }
        }
        (a.x, b.x, c.x, d.x) = ([a0, a1], [b0, b1], [c0, c1], [d0, d1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::entropy;
    use crate::test_rng::Rng;

    const N: usize = 40_000;

    /// Normalised frequencies of `syms` over 256 symbols; symbols 0 and 1 always have one (a
    /// table needs two symbols, and an unused one must not disturb coding).
    fn freqs_of(syms: &[u8]) -> [u16; 256] {
        let mut counts = [0u32; 256];
        counts[..2].fill(1);
        for &s in syms {
            counts[usize::from(s)] += 1;
        }
        let mut f = [0u16; 256];
        entropy::normalize(&counts, &mut f, TABLE_LOG);
        f
    }

    /// A distinct output value per symbol, all of [`VALUE_MASK`]'s bits in use.
    fn value(s: u8) -> u16 {
        (u16::from(s) * 3 + 7) << 6
    }

    /// Codes `syms` and decodes them back; returns the block's length.
    fn round_trip(syms: &[u8]) -> usize {
        let f = freqs_of(syms);
        let mut enc = TansEncoder::new();
        enc.build(&f);
        let mut scratch = [0u8; 2 * N + 64];
        let mut out = [0u8; 2 * N + 64];
        let len = encode(syms, &enc, &mut scratch, &mut out).unwrap();
        let values: [u16; 256] = core::array::from_fn(|s| value(s as u8));
        let mut table = [0u32; L];
        build_decoder(&f, &values, &mut table);
        let mut back = [0u8; 2 * N];
        decode(&out[..len], syms.len(), &table, &mut back).unwrap();
        for (i, &s) in syms.iter().enumerate() {
            let v = u16::from_le_bytes([back[2 * i], back[2 * i + 1]]) & VALUE_MASK;
            assert_eq!(v, value(s), "symbol {i} of {}", syms.len());
        }
        len
    }

    /// What an ideal coder spends on `syms` under the normalised frequencies, in bytes (the
    /// 12-bit table's own rounding is the same for rANS; this isolates tANS's loss).
    fn model_bytes(syms: &[u8]) -> f64 {
        let f = freqs_of(syms);
        syms.iter()
            .map(|&s| libm_log2(L as f64 / f64::from(f[usize::from(s)])))
            .sum::<f64>()
            / 8.0
    }

    fn libm_log2(x: f64) -> f64 {
        // ln by atanh series around 1 after scaling into [1, 2): enough for a size bound.
        let (mut m, mut e) = (x, 0.0);
        while m >= 2.0 {
            m /= 2.0;
            e += 1.0;
        }
        let t = (m - 1.0) / (m + 1.0);
        let (mut term, mut sum) = (t, 0.0);
        for k in 0..40 {
            sum += term / f64::from(2 * k + 1);
            term *= t * t;
        }
        e + 2.0 * sum / core::f64::consts::LN_2
    }

    /// Every lane length and state parity at the edges of the lockstep rounds, skewed and flat
    /// symbols, a symbol with more than half the probability (steps reading no bits), and a
    /// size close to the entropy.
    #[test]
    fn round_trips_near_entropy_at_every_small_length() {
        let mut rng = Rng(11);
        let geo: [u8; N] = core::array::from_fn(|_| {
            let r = rng.next();
            if r & 63 == 0 {
                (r >> 8) as u8
            } else {
                r.trailing_zeros().min(30) as u8
            }
        });
        let flat: [u8; N] = core::array::from_fn(|_| rng.next() as u8);
        let mostly: [u8; N] = core::array::from_fn(|_| u8::from(rng.next() % 10 < 1));
        for syms in [&geo[..], &flat[..], &mostly[..]] {
            let len = round_trip(syms);
            let ideal = model_bytes(syms);
            assert!(
                (len as f64) < ideal * 1.003 + HEADER_LEN as f64 + 16.0,
                "{len} vs ideal {ideal}"
            );
            for n in 0..70 {
                round_trip(&syms[..n]);
            }
            for n in [1000, 1001, 1002, 1003, 4099] {
                round_trip(&syms[..n]);
            }
        }
    }

    #[test]
    fn a_full_lane_region_is_refused_not_overrun() {
        let mut rng = Rng(3);
        let flat: [u8; 4000] = core::array::from_fn(|_| rng.next() as u8);
        let f = freqs_of(&flat);
        let mut enc = TansEncoder::new();
        enc.build(&f);
        let mut out = [0u8; 8000];
        // Four regions of 500 bytes cannot hold 1000 symbols of ~8 bits each.
        assert_eq!(encode(&flat, &enc, &mut [0u8; 2000], &mut out), None);
        assert_eq!(encode(&flat, &enc, &mut [0u8; 8000], &mut out[..100]), None);
        assert!(encode(&flat, &enc, &mut [0u8; 8000], &mut out).is_some());
    }

    #[test]
    fn corrupt_blocks_never_panic_and_are_mostly_caught() {
        let mut rng = Rng(9);
        let syms: [u8; 5000] = core::array::from_fn(|_| rng.next().trailing_zeros().min(40) as u8);
        let f = freqs_of(&syms);
        let mut enc = TansEncoder::new();
        enc.build(&f);
        let mut out = [0u8; 12_000];
        let len = encode(&syms, &enc, &mut [0u8; 12_000], &mut out).unwrap();
        let mut table = [0u32; L];
        build_decoder(&f, &[0; 256], &mut table);
        let mut back = [0u8; 10_000];
        let mut errors = 0;
        for _ in 0..3000 {
            let mut m = [0u8; 12_000];
            m[..len].copy_from_slice(&out[..len]);
            let l = rng.damage(&mut m, len);
            errors += usize::from(decode(&m[..l], syms.len(), &table, &mut back).is_err());
        }
        // A flipped bit changes the states that follow it, so the end check catches nearly
        // every one.
        assert!(errors > 2500, "{errors}");
    }
}
