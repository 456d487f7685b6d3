//! Self-describing page contents for the FTL checks.
//!
//! Every page the self-test writes says which logical block and which generation (write count) it
//! was written for; the rest is a pseudo-random stream fixed per block with one region that is the
//! generation's own (so updates are small, as a delta engine expects). A read-back page can
//! therefore be identified exactly: the right block, a generation inside the range the guarantees
//! allow, and no torn mix of two writes (a region or the header would not match). A never-written
//! or trimmed block reads as zeros.

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

/// Bytes of a page that change from one generation to the next, besides the header.
const REGION: usize = 64;
/// Page bytes after the 8-byte header.
const BODY: usize = 4096 - 8;

/// Where a generation's own bytes sit in the body.
fn region(generation: u32) -> core::ops::Range<usize> {
    let at = (generation as usize % (BODY / REGION)) * REGION;
    at..at + REGION
}

/// Fills `page` with the contents written for `lba` at `generation` (>= 1).
///
/// The body is a stream fixed per block, except one 64-byte region holding a stream of this
/// generation: two versions of a block differ in at most 136 bytes, the small update a delta
/// engine is built for, yet every version is still unique and any torn mix of two is detected.
pub fn fill(page: &mut [u8], lba: u32, generation: u32) {
    page[0..4].copy_from_slice(&lba.to_le_bytes());
    page[4..8].copy_from_slice(&generation.to_le_bytes());
    let body = &mut page[8..8 + BODY];
    for (b, s) in body.iter_mut().zip(stream(lba, 0)) {
        *b = s;
    }
    for (b, s) in body[region(generation)]
        .iter_mut()
        .zip(stream(lba, generation))
    {
        *b = s;
    }
}

/// Identifies a page read back for `lba`.
pub fn identify(page: &[u8], lba: u32) -> Seen {
    if page.iter().all(|&b| b == 0) {
        return Seen::Zeros;
    }
    let word = |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
    let (owner, generation) = (word(0), word(4));
    if owner != lba || generation == 0 || page.len() != 8 + BODY {
        return Seen::Foreign;
    }
    let body = &page[8..];
    let own = region(generation);
    let base_ok = body
        .iter()
        .zip(stream(lba, 0))
        .enumerate()
        .all(|(i, (&b, s))| own.contains(&i) || b == s);
    let own_ok = body[own]
        .iter()
        .zip(stream(lba, generation))
        .all(|(&b, s)| b == s);
    if base_ok && own_ok {
        Seen::Written(generation)
    } else {
        Seen::Foreign
    }
}

/// What one logical block may read after a power cut, under DESIGN.md's guarantees: its value at
/// the last flush that returned Ok, or any value handed to the FTL since (a write's generation, or
/// zeros for a trim). Generations only grow, so "handed since the flush" is a range.
///
/// All-zero is the state of a never-written block, so a zeroed array is a fresh model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Generation durable at the last flush (0: zeros).
    durable: u32,
    /// Lowest generation handed to the FTL since the last flush (0: none).
    since: u32,
    /// Latest generation handed to the FTL.
    latest: u32,
    /// Trimmed since the last flush.
    trimmed: bool,
    /// The latest operation on the block was a trim: it reads zeros now.
    latest_zero: bool,
}

impl Model {
    /// A write of `generation` was handed to the FTL (whatever it returned).
    pub fn write(&mut self, generation: u32) {
        if self.since == 0 {
            self.since = generation;
        }
        self.latest = generation;
        self.latest_zero = false;
    }

    /// A trim was handed to the FTL (whatever it returned).
    pub fn trim(&mut self) {
        self.trimmed = true;
        self.latest_zero = true;
    }

    /// A flush returned Ok: the latest value is durable.
    pub fn flushed(&mut self) {
        self.durable = if self.latest_zero { 0 } else { self.latest };
        self.since = 0;
        self.trimmed = false;
    }

    /// What the block must read now, with power on throughout.
    pub fn expected(&self) -> Seen {
        if self.latest_zero || self.latest == 0 {
            Seen::Zeros
        } else {
            Seen::Written(self.latest)
        }
    }

    /// Whether `seen` is allowed after a power cut.
    pub fn allows(&self, seen: Seen) -> bool {
        match seen {
            Seen::Zeros => self.durable == 0 || self.trimmed,
            Seen::Written(g) => {
                g == self.durable || (self.since != 0 && self.since <= g && g <= self.latest)
            }
            Seen::Foreign => false,
        }
    }

    /// After a remount the block holds `seen` (allowed), which is durable from now on.
    pub fn settle(&mut self, seen: Seen) {
        let g = match seen {
            Seen::Written(g) => g,
            _ => 0,
        };
        *self = Model {
            durable: g,
            since: 0,
            latest: g,
            trimmed: false,
            latest_zero: g == 0,
        };
    }

    /// The allowed range, for messages: (durable, since, latest, trimmed).
    pub fn describe(&self) -> (u32, u32, u32, bool) {
        (self.durable, self.since, self.latest, self.trimmed)
    }
}
