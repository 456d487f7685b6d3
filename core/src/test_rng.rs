//! A deterministic xorshift generator for the unit tests, so a failure reproduces from its seed.

/// xorshift64 state; seed it with any nonzero value.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Damages `m[..len]` the way the coders' mutation tests do: one bit flipped, and a quarter
    /// of the time the record cut short too. Returns the length to decode.
    pub(crate) fn damage(&mut self, m: &mut [u8], len: usize) -> usize {
        let i = self.next() as usize % len;
        m[i] ^= 1 << (self.next() % 8);
        if self.next() & 3 == 0 {
            self.next() as usize % len
        } else {
            len
        }
    }
}
