//! Self-describing page contents for the FTL checks.
//!
//! Every page the self-test writes says which logical block and which generation (write count) it
//! was written for, and its remaining bytes are a pseudo-random stream seeded by both. A read-back
//! page can therefore be identified exactly: the right block, a generation inside the range the
//! guarantees allow, and no torn mix of two writes (the stream would not match). A never-written
//! or trimmed block reads as zeros, which is generation 0.

/// What a read-back page turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// All zeros: never written, or trimmed.
    Zeros,
    /// Exactly the page written for this block at this generation.
    Written(u32),
    /// Anything else: another block's data, a torn mix, garbage.
    Foreign,
}

fn stream(lba: u32, generation: u32) -> impl Iterator<Item = u8> {
    let mut x = lba.wrapping_mul(0x9E37_79B9) ^ generation.wrapping_mul(0x85EB_CA6B) ^ 0xA5A5_5A5A;
    if x == 0 {
        x = 1;
    }
    core::iter::repeat_with(move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    })
}

/// Fills `page` with the contents written for `lba` at `generation` (>= 1).
pub fn fill(page: &mut [u8], lba: u32, generation: u32) {
    page[0..4].copy_from_slice(&lba.to_le_bytes());
    page[4..8].copy_from_slice(&generation.to_le_bytes());
    for (b, s) in page[8..].iter_mut().zip(stream(lba, generation)) {
        *b = s;
    }
}

/// Identifies a page read back for `lba`.
pub fn identify(page: &[u8], lba: u32) -> Seen {
    if page.iter().all(|&b| b == 0) {
        return Seen::Zeros;
    }
    let at = |r: core::ops::Range<usize>| {
        u32::from_le_bytes([
            page[r.start],
            page[r.start + 1],
            page[r.start + 2],
            page[r.start + 3],
        ])
    };
    let (owner, generation) = (at(0..4), at(4..8));
    if owner != lba || generation == 0 {
        return Seen::Foreign;
    }
    if page[8..]
        .iter()
        .zip(stream(lba, generation))
        .all(|(&b, s)| b == s)
    {
        Seen::Written(generation)
    } else {
        Seen::Foreign
    }
}
