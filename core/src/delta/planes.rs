//! Plane-coded deltas: ZipNN's delta mode for blocks of float weights.
//!
//! When a checkpoint of a model is rewritten, most weights keep their sign and exponent and
//! only some mantissa bits move. The XOR of two versions of such a block is then zero in the
//! exponent bytes and sparse in the mantissa bytes, but the nonzero bytes are spread over the
//! whole block, one or two per element: the run encoding of [`super::xor`] pays a 4-byte run
//! header for nearly every changed element. Grouping the XOR's bytes by their position in the
//! element (ZipNN's byte planes: all low bytes, then all next bytes, ...) puts the exponent
//! bytes in planes that are entirely zero and cost nothing, and the mantissa changes in planes
//! coded as (gap, value) pairs of one byte each, values packed two to a byte when every change
//! of a plane fits in 4 bits (the low mantissa bits of a small update).
//!
//! # Encoding
//!
//! ```text
//! tag      4 bytes  FF FF 00 00   (a run of length 0 after 65,535 skipped bytes: never a valid
//!                                  run, so a run decoder refuses it and the two cannot be confused)
//! width    1 byte   element size in bytes: 2 (BF16, FP16) or 4 (FP32); planes = width
//! per plane, in byte order within the element:
//!   count  varint   nonzero bytes in the plane
//!   flags  1 byte   (only when count > 0) bit 0: values are 4-bit, two per byte, low nibble first
//!   gaps   count varints: elements skipped before each nonzero byte (after the previous one)
//!   values count bytes (or ceil(count / 2) with bit 0)
//! ```
//!
//! Varints are LEB128 (7 bits per byte, low first, at most 2 bytes for a 4 KiB block). A delta
//! encodes as planes only where that is smaller than its runs ([`encode_best`]); the threshold
//! of [`super::xor::MAX_DELTA`] applies to whichever is kept.

use super::xor::{self, DeltaError};

/// First bytes of a plane-coded delta.
pub const TAG: [u8; 4] = [0xFF, 0xFF, 0x00, 0x00];
/// Bytes before the first plane: the tag and the width.
const PREFIX: usize = TAG.len() + 1;
/// Plane flag: values are nibbles.
const NIBBLES: u8 = 1;
/// Runs at most this long are kept without trying planes: a handful of changed bytes.
const PLANES_WORTH_TRYING: usize = 64;

/// Whether `delta` is plane-coded.
pub fn is_planes(delta: &[u8]) -> bool {
    delta.len() >= TAG.len() && delta[..TAG.len()] == TAG
}

/// A byte sink that refuses to grow past its buffer.
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Out<'_> {
    fn byte(&mut self, b: u8) -> Result<(), DeltaError> {
        let slot = self.buf.get_mut(self.at).ok_or(DeltaError::TooLarge)?;
        *slot = b;
        self.at += 1;
        Ok(())
    }

    fn varint(&mut self, mut v: usize) -> Result<(), DeltaError> {
        while v >= 0x80 {
            self.byte((v as u8 & 0x7F) | 0x80)?;
            v >>= 7;
        }
        self.byte(v as u8)
    }
}

/// Encodes `new XOR base` as planes of `width`-byte elements into `out`; returns the length, or
/// `TooLarge` as soon as it would not fit.
pub fn encode(new: &[u8], base: &[u8], width: usize, out: &mut [u8]) -> Result<usize, DeltaError> {
    debug_assert!(width == 2 || width == 4);
    let n = new.len().min(base.len()) / width;
    let mut o = Out { buf: out, at: 0 };
    for b in TAG {
        o.byte(b)?;
    }
    o.byte(width as u8)?;
    for k in 0..width {
        let x = |i: usize| new[i * width + k] ^ base[i * width + k];
        let (mut count, mut wide) = (0usize, false);
        for i in 0..n {
            let v = x(i);
            count += usize::from(v != 0);
            wide |= v > 0x0F;
        }
        o.varint(count)?;
        if count == 0 {
            continue;
        }
        o.byte(if wide { 0 } else { NIBBLES })?;
        let mut last = 0;
        for i in (0..n).filter(|&i| x(i) != 0) {
            o.varint(i - last)?;
            last = i + 1;
        }
        let mut half: Option<u8> = None;
        for v in (0..n).map(x).filter(|&v| v != 0) {
            if wide {
                o.byte(v)?;
            } else if let Some(lo) = half.take() {
                o.byte(lo | (v << 4))?;
            } else {
                half = Some(v);
            }
        }
        if let Some(lo) = half {
            o.byte(lo)?;
        }
    }
    Ok(o.at)
}

/// Reads a varint at `*at`, advancing it.
fn varint(d: &[u8], at: &mut usize) -> Result<usize, DeltaError> {
    let mut v = 0usize;
    for shift in [0, 7, 14] {
        let b = *d.get(*at).ok_or(DeltaError::Malformed)?;
        *at += 1;
        v |= ((b & 0x7F) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(DeltaError::Malformed)
}

/// Applies a plane-coded delta to `block` in place. Anything inconsistent (a width other than
/// 2 or 4, a gap past the block, bytes missing or left over) is `Malformed`, never a panic.
pub fn apply(block: &mut [u8], delta: &[u8]) -> Result<(), DeltaError> {
    if !is_planes(delta) || delta.len() < PREFIX {
        return Err(DeltaError::Malformed);
    }
    let width = delta[TAG.len()] as usize;
    if width != 2 && width != 4 {
        return Err(DeltaError::Malformed);
    }
    let n = block.len() / width;
    let mut at = PREFIX;
    for k in 0..width {
        let count = varint(delta, &mut at)?;
        if count == 0 {
            continue;
        }
        if count > n {
            return Err(DeltaError::Malformed);
        }
        let flags = *delta.get(at).ok_or(DeltaError::Malformed)?;
        at += 1;
        if flags & !NIBBLES != 0 {
            return Err(DeltaError::Malformed);
        }
        let nibbles = flags & NIBBLES != 0;
        // The values follow the gaps: find where they start before walking both.
        let mut vat = at;
        for _ in 0..count {
            varint(delta, &mut vat)?;
        }
        let values = if nibbles { count.div_ceil(2) } else { count };
        let vals = delta.get(vat..vat + values).ok_or(DeltaError::Malformed)?;
        let mut i = 0usize;
        for j in 0..count {
            i += varint(delta, &mut at)?;
            if i >= n {
                return Err(DeltaError::Malformed);
            }
            let v = if nibbles {
                (vals[j / 2] >> (4 * (j % 2))) & 0x0F
            } else {
                vals[j]
            };
            block[i * width + k] ^= v;
            i += 1;
        }
        at = vat + values;
    }
    if at != delta.len() {
        return Err(DeltaError::Malformed);
    }
    Ok(())
}

/// Encodes `new` against `base` into `out` the smaller way: runs ([`xor::encode`]), or planes
/// of 2- or 4-byte elements when the runs are more than a handful of bytes and planes are
/// smaller. Returns the length; `TooLarge` when no way fits `out`. `scratch` (at least as
/// long as `out`) holds the losing candidate.
pub fn encode_best(
    new: &[u8],
    base: &[u8],
    out: &mut [u8],
    scratch: &mut [u8],
) -> Result<usize, DeltaError> {
    let runs = xor::encode(new, base, out);
    let mut best = match runs {
        Ok(n) if n <= PLANES_WORTH_TRYING => return Ok(n),
        Ok(n) => n,
        Err(DeltaError::TooLarge) => out.len() + 1,
        Err(e) => return Err(e),
    };
    let scratch = &mut scratch[..out.len()];
    for width in [2, 4] {
        // Only a smaller encoding is of use: cap the attempt there.
        let cap = best.saturating_sub(1).min(out.len());
        if let Ok(n) = encode(new, base, width, &mut scratch[..cap]) {
            out[..n].copy_from_slice(&scratch[..n]);
            best = n;
        }
    }
    if best > out.len() {
        return Err(DeltaError::TooLarge);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// A block of BF16-like values and a version of it with `changes` elements' low mantissa
    /// bits moved.
    fn weights_and_update(seed: u64, changes: usize, mask: u8) -> ([u8; 4096], [u8; 4096]) {
        let mut s = seed | 1;
        let mut base = [0u8; 4096];
        for c in base.chunks_mut(2) {
            c[0] = rng(&mut s) as u8;
            c[1] = 0x3C + (rng(&mut s) % 3) as u8;
        }
        let mut new = base;
        for _ in 0..changes {
            let i = (rng(&mut s) % 2048) as usize * 2;
            new[i] ^= (rng(&mut s) as u8 & mask).max(1);
        }
        (base, new)
    }

    fn roundtrip(base: &[u8; 4096], new: &[u8; 4096], width: usize) -> usize {
        let mut out = [0u8; 8192];
        let n = encode(new, base, width, &mut out).unwrap();
        let mut b = *base;
        apply(&mut b, &out[..n]).unwrap();
        assert!(b == *new, "width {width}");
        n
    }

    #[test]
    fn sparse_mantissa_updates_cost_two_bytes_or_less_per_change() {
        // (One changed byte is cheaper as a run: `encode_best` keeps the runs then.)
        for (changes, mask) in [
            (20, 0x0F),
            (60, 0x0F),
            (120, 0x0F),
            (120, 0xFF),
            (400, 0x07),
        ] {
            let (base, new) = weights_and_update(changes as u64, changes, mask);
            let planes = roundtrip(&base, &new, 2);
            let mut out = [0u8; 8192];
            let runs = xor::encode(&new, &base, &mut out).unwrap();
            assert!(
                planes <= PREFIX + 8 + 2 * changes && planes < runs,
                "{changes} changes ({mask:#x}): planes {planes}, runs {runs}"
            );
        }
    }

    #[test]
    fn identical_and_dense_blocks_roundtrip_at_both_widths() {
        let (base, _) = weights_and_update(7, 0, 0);
        for width in [2, 4] {
            assert_eq!(roundtrip(&base, &base, width), PREFIX + width);
            let mut s = 99;
            let mut new = [0u8; 4096];
            new.iter_mut().for_each(|b| *b = rng(&mut s) as u8);
            roundtrip(&base, &new, width);
        }
    }

    #[test]
    fn best_is_never_larger_than_runs_and_refuses_what_does_not_fit() {
        for seed in 1..40u64 {
            let (base, new) = weights_and_update(seed, (seed * 7) as usize, 0xFF);
            let (mut a, mut b, mut s) = ([0u8; 1012], [0u8; 1012], [0u8; 1012]);
            let runs = xor::encode(&new, &base, &mut a);
            match encode_best(&new, &base, &mut b, &mut s) {
                Ok(n) => {
                    assert!(runs.is_err() || n <= runs.unwrap(), "seed {seed}");
                    let mut x = base;
                    xor::apply(&mut x, &b[..n]).unwrap();
                    assert!(x == new, "seed {seed}");
                }
                Err(e) => {
                    assert_eq!(e, DeltaError::TooLarge);
                    assert!(runs.is_err(), "seed {seed}: runs fit but best refused");
                }
            }
        }
    }

    #[test]
    fn malformed_planes_are_refused_never_panic() {
        let (base, new) = weights_and_update(3, 80, 0x0F);
        let mut out = [0u8; 8192];
        let n = encode(&new, &base, 2, &mut out).unwrap();
        let good = &out[..n];
        let mut b = base;
        // Every truncation and every single-byte change either fails cleanly or decodes to
        // some block; none panics.
        for cut in 0..n {
            assert_eq!(apply(&mut b, &good[..cut]), Err(DeltaError::Malformed));
        }
        for i in 0..n {
            for flip in [0x01, 0x80, 0xFF] {
                let mut m = good.to_vec();
                m[i] ^= flip;
                let _ = apply(&mut b, &m);
            }
        }
        let mut w = good.to_vec();
        w[TAG.len()] = 3;
        assert_eq!(apply(&mut b, &w), Err(DeltaError::Malformed));
    }
}
