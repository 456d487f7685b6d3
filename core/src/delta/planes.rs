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

/// One plane's tally in the first pass of [`encode`].
#[derive(Clone, Copy, Default)]
struct Plane {
    /// Nonzero bytes.
    count: usize,
    /// Bytes of their gap varints.
    gaps: usize,
    /// Element after the last nonzero byte.
    last: usize,
    /// Some value does not fit in 4 bits.
    wide: bool,
}

impl Plane {
    /// Value bytes.
    fn values(&self) -> usize {
        if self.wide {
            self.count
        } else {
            self.count.div_ceil(2)
        }
    }

    /// Bytes the plane takes in the encoding.
    fn size(&self) -> usize {
        varint_len(self.count)
            + if self.count > 0 {
                1 + self.gaps + self.values()
            } else {
                0
            }
    }
}

/// Calls `f(element, plane, byte)` for every nonzero byte of `new XOR base` (`width`-byte
/// elements), in element order; unchanged words are passed over eight bytes at a time. Stops
/// at the first error `f` returns.
fn for_each_change(
    new: &[u8],
    base: &[u8],
    width: usize,
    mut f: impl FnMut(usize, usize, u8) -> Result<(), DeltaError>,
) -> Result<(), DeltaError> {
    let per_word = 8 / width;
    let words = new.len() / 8;
    for (w, (a, b)) in new.chunks_exact(8).zip(base.chunks_exact(8)).enumerate() {
        let (mut wa, mut wb) = ([0u8; 8], [0u8; 8]);
        wa.copy_from_slice(a);
        wb.copy_from_slice(b);
        let d = u64::from_le_bytes(wa) ^ u64::from_le_bytes(wb);
        if d == 0 {
            continue;
        }
        // `width` is 2 or 4: element and plane by shift and mask.
        let shift = width.trailing_zeros();
        for j in 0..8 {
            let v = (d >> (8 * j)) as u8;
            if v != 0 {
                f(w * per_word + (j >> shift), j & (width - 1), v)?;
            }
        }
    }
    for at in words * 8..new.len() {
        let v = new[at] ^ base[at];
        if v != 0 {
            f(at / width, at % width, v)?;
        }
    }
    Ok(())
}

/// Encodes `new XOR base` as planes of `width`-byte elements (2 or 4; any other width is
/// refused as `TooLarge`) into `out`; returns the length, or `TooLarge` if it would not fit.
///
/// Two passes over the block, both skipping unchanged words: the first tallies every plane and
/// refuses the block as soon as the encoding's size so far (which only grows) passes `out`
/// (most rewrites are not small updates: they are refused within a few dozen words); the
/// second writes each gap and value straight to its place.
pub fn encode(new: &[u8], base: &[u8], width: usize, out: &mut [u8]) -> Result<usize, DeltaError> {
    debug_assert!(width == 2 || width == 4);
    if width != 2 && width != 4 {
        return Err(DeltaError::TooLarge);
    }
    let n = new.len().min(base.len()) / width;
    let (new, base) = (&new[..n * width], &base[..n * width]);
    let cap = out.len();
    let mut planes = [Plane::default(); 4];
    let mut total = PREFIX + width;
    if total > cap {
        return Err(DeltaError::TooLarge);
    }
    for_each_change(new, base, width, |i, k, v| {
        let p = &mut planes[k];
        // The growth of the plane's size, as `Plane::size` would count it.
        let gap = varint_len(i - p.last);
        let mut grow = gap + usize::from(p.count == 0);
        let values = p.values();
        grow += varint_len(p.count + 1) - varint_len(p.count);
        p.gaps += gap;
        p.last = i + 1;
        p.count += 1;
        p.wide |= v > 0x0F;
        grow += p.values() - values;
        total += grow;
        if total > cap {
            return Err(DeltaError::TooLarge);
        }
        Ok(())
    })?;
    debug_assert_eq!(
        total,
        PREFIX + planes[..width].iter().map(Plane::size).sum::<usize>()
    );
    // Where each plane's gaps and values go, and its count and flag written.
    let mut o = Out { buf: out, at: 0 };
    for b in TAG {
        o.byte(b)?;
    }
    o.byte(width as u8)?;
    let (mut gap_at, mut value_at) = ([0usize; 4], [0usize; 4]);
    for (k, p) in planes[..width].iter().enumerate() {
        o.varint(p.count)?;
        if p.count == 0 {
            continue;
        }
        o.byte(if p.wide { 0 } else { NIBBLES })?;
        gap_at[k] = o.at;
        value_at[k] = o.at + p.gaps;
        o.at = value_at[k] + p.values();
    }
    debug_assert_eq!(o.at, total);
    let buf = o.buf;
    let (mut last, mut nth) = ([0usize; 4], [0usize; 4]);
    for_each_change(new, base, width, |i, k, v| {
        let mut gap = i - last[k];
        last[k] = i + 1;
        let g = &mut gap_at[k];
        while gap >= 0x80 {
            buf[*g] = (gap as u8 & 0x7F) | 0x80;
            *g += 1;
            gap >>= 7;
        }
        buf[*g] = gap as u8;
        *g += 1;
        let j = nth[k];
        nth[k] += 1;
        if planes[k].wide {
            buf[value_at[k] + j] = v;
        } else if j % 2 == 0 {
            buf[value_at[k] + j / 2] = v;
        } else {
            buf[value_at[k] + j / 2] |= v << 4;
        }
        Ok(())
    })?;
    Ok(total)
}

/// Whether the planes encoding at `width` surely exceeds `cap`, on a lower bound counted eight
/// bytes at a time: besides the prefix and a count byte per plane, every nonzero byte of the
/// XOR costs at least a gap byte and half a value byte.
fn surely_too_large(new: &[u8], base: &[u8], width: usize, cap: usize) -> bool {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let n = new.len().min(base.len()) / width * width;
    let floor = PREFIX + width;
    let mut nonzero = 0usize;
    for (a, b) in new[..n].chunks_exact(8).zip(base[..n].chunks_exact(8)) {
        let (mut wa, mut wb) = ([0u8; 8], [0u8; 8]);
        wa.copy_from_slice(a);
        wb.copy_from_slice(b);
        let d = u64::from_le_bytes(wa) ^ u64::from_le_bytes(wb);
        // The top bit of every nonzero byte (no carry crosses a byte: at most 0x7F + 0x7F).
        nonzero += ((((d & LOW7) + LOW7) | d) & !LOW7).count_ones() as usize;
        if floor + nonzero + nonzero / 2 > cap {
            return true;
        }
    }
    false
}

/// Whether every encoding surely exceeds `cap`: runs carry each nonzero byte of the XOR as a
/// literal, planes spend at least one and a half bytes on it, so more nonzero bytes than `cap`
/// rule both out. Counted eight bytes at a time and stopped as soon as it is proved: an
/// overwrite with unrelated data (most host writes) is refused after about `cap` bytes read a
/// word at a time, where the run encoder walked them byte by byte before both plane bounds ran.
fn surely_too_large_both(new: &[u8], base: &[u8], cap: usize) -> bool {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let mut nonzero = 0usize;
    for (a, b) in new.chunks_exact(8).zip(base.chunks_exact(8)) {
        let (mut wa, mut wb) = ([0u8; 8], [0u8; 8]);
        wa.copy_from_slice(a);
        wb.copy_from_slice(b);
        let d = u64::from_le_bytes(wa) ^ u64::from_le_bytes(wb);
        nonzero += ((((d & LOW7) + LOW7) | d) & !LOW7).count_ones() as usize;
        if nonzero > cap {
            return true;
        }
    }
    false
}

/// Bytes of `v` as a varint.
#[inline(always)]
fn varint_len(mut v: usize) -> usize {
    if v < 0x80 {
        return 1;
    }
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
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
    if surely_too_large_both(new, base, out.len()) {
        return Err(DeltaError::TooLarge);
    }
    let runs = xor::encode(new, base, out);
    let mut best = match runs {
        Ok(n) if n <= PLANES_WORTH_TRYING => return Ok(n),
        Ok(n) => n,
        Err(DeltaError::TooLarge) => out.len() + 1,
        Err(e) => return Err(e),
    };
    // Runs that do not fit mean a block unlike its base: planes are then refused on a bound
    // counted a word at a time before any exact tally.
    let unlike = runs.is_err();
    let scratch = &mut scratch[..out.len()];
    for width in [2, 4] {
        // Only a smaller encoding is of use: cap the attempt there.
        let cap = best.saturating_sub(1).min(out.len());
        if unlike && surely_too_large(new, base, width, cap) {
            continue;
        }
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

    use crate::test_rng::Rng;

    /// A block of BF16-like values and a version of it with `changes` elements' low mantissa
    /// bits moved.
    fn weights_and_update(seed: u64, changes: usize, mask: u8) -> ([u8; 4096], [u8; 4096]) {
        let mut s = Rng(seed | 1);
        let mut base = [0u8; 4096];
        for c in base.chunks_mut(2) {
            c[0] = s.next() as u8;
            c[1] = 0x3C + (s.next() % 3) as u8;
        }
        let mut new = base;
        for _ in 0..changes {
            let i = (s.next() % 2048) as usize * 2;
            new[i] ^= (s.next() as u8 & mask).max(1);
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
            let mut s = Rng(99);
            let mut new = [0u8; 4096];
            new.iter_mut().for_each(|b| *b = s.next() as u8);
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
    fn refusal_by_the_nonzero_count_matches_trying_every_encoding() {
        // Blocks with k changed bytes (scattered, or one run), k around each cap (a run of
        // `cap - 4` bytes is the largest that fits): `encode_best` must size
        // exactly what the smallest fitting encoding (runs, planes of 2 or 4) takes, and refuse
        // exactly when none fits.
        let mut rng = Rng(0xC0FF_EE00);
        for cap in [300usize, 1012] {
            for k in (0..1400).step_by(23).chain(cap - 8..cap + 2) {
                let mut base = [0u8; 4096];
                for b in base.iter_mut() {
                    *b = rng.next() as u8;
                }
                let mut new = base;
                if k % 2 == 0 {
                    for _ in 0..k {
                        let at = (rng.next() % 4096) as usize;
                        new[at] ^= 1 + (rng.next() % 255) as u8;
                    }
                } else {
                    // One contiguous run: its encoding (4 + k bytes) is as close to the count
                    // of changed bytes as any gets.
                    let at = (rng.next() % (4096 - k as u64)) as usize;
                    for b in &mut new[at..at + k] {
                        *b ^= 1 + (rng.next() % 255) as u8;
                    }
                }
                let (mut out, mut scratch) = ([0u8; 1012], [0u8; 1012]);
                let (out, scratch) = (&mut out[..cap], &mut scratch[..cap]);
                let got = encode_best(&new, &base, out, scratch).ok();
                let mut big = [0u8; 8192];
                let want = [
                    xor::encode(&new, &base, &mut big).ok(),
                    encode(&new, &base, 2, &mut big).ok(),
                    encode(&new, &base, 4, &mut big).ok(),
                ]
                .into_iter()
                .flatten()
                .filter(|&n| n <= cap)
                .min();
                assert_eq!(got, want, "cap {cap}, {k} changes");
            }
        }
    }

    /// The encoder as first written: three passes over each plane, nothing refused before the
    /// output is full.
    fn encode_unbounded(
        new: &[u8],
        base: &[u8],
        width: usize,
        out: &mut [u8],
    ) -> Result<usize, DeltaError> {
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

    #[test]
    fn two_pass_encoder_answers_exactly_what_the_three_pass_one_did() {
        let mut s = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..600u64 {
            let (base, mut new) = weights_and_update(
                round,
                [0, 3, 40, 300, 2048][round as usize % 5],
                [0x0F, 0xFF][round as usize % 2],
            );
            if round % 7 == 6 {
                // An unrelated block.
                new.iter_mut().for_each(|b| *b = s.next() as u8);
            }
            for cap in [0, 5, 6, 60, 700, 1012, 4096 + 64] {
                for width in [2, 4] {
                    let (mut a, mut b) = ([0u8; 4096 + 64], [0u8; 4096 + 64]);
                    let got = encode(&new, &base, width, &mut a[..cap]);
                    let want = encode_unbounded(&new, &base, width, &mut b[..cap]);
                    assert_eq!(got, want, "round {round} cap {cap} width {width}");
                    if surely_too_large(&new, &base, width, cap) {
                        assert_eq!(want, Err(DeltaError::TooLarge), "round {round} cap {cap}");
                    }
                    if let Ok(n) = got {
                        assert_eq!(a[..n], b[..n], "round {round} cap {cap} width {width}");
                    }
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
