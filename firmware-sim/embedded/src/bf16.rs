//! A deterministic BF16 weight sample, made in code, for the codec self-test.
//!
//! Real weights are not shipped into the image; what ZipNN exploits in them is reproduced: values
//! roughly normal around zero with a small spread (so the exponent byte is highly skewed), rounded
//! from f32 to BF16 the way frameworks do (round to nearest, ties to even), plus the awkward values
//! a codec must carry bit-exact: ±0, ±Inf, NaN, subnormals.

/// xorshift32: tiny, deterministic, good enough to shape a sample.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Roughly standard normal: Irwin–Hall sum of 12 uniforms, centred.
    fn normal(&mut self) -> f32 {
        let mut s = 0.0;
        for _ in 0..12 {
            s += self.unit();
        }
        s - 6.0
    }
}

/// f32 to BF16 bits, round to nearest, ties to even; NaN stays a (quiet) NaN.
pub fn bf16_from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// Fills `out` (little-endian BF16 pairs) with the sample for `seed`; an odd trailing byte is
/// filled too, so sizes that are not a multiple of the element size are exercised.
pub fn fill_sample(out: &mut [u8], seed: u32) {
    const SPECIALS: [u16; 8] = [
        0x0000, // +0
        0x8000, // -0
        0x7F80, // +Inf
        0xFF80, // -Inf
        0x7FC1, // NaN with payload
        0x0001, // smallest subnormal
        0x807F, // negative subnormal
        0x7F7F, // largest finite
    ];
    let mut rng = Rng(seed | 1);
    let mut chunks = out.chunks_exact_mut(2);
    for (i, pair) in chunks.by_ref().enumerate() {
        let v = if i % 509 == 7 {
            SPECIALS[(i / 509) % SPECIALS.len()]
        } else {
            // Typical transformer weight spread; a few outliers ten times wider.
            let sigma = if rng.next() & 63 == 0 { 0.2 } else { 0.02 };
            bf16_from_f32(rng.normal() * sigma)
        };
        pair.copy_from_slice(&v.to_le_bytes());
    }
    if let [last] = chunks.into_remainder() {
        *last = rng.next() as u8;
    }
}
