//! The LLM.int8 row quantizer, bit-exact, and the exact preimage of each INT8 value.
//!
//! LLM.int8 (row-wise absmax, symmetric, no zero point): for a row with scale
//! `s = max |w|` (as f32), each weight becomes `q = clamp(round_half_even(w * 127 / s), -127, 127)`
//! where `w * 127` and `/ s` are f32 operations, rounded to nearest even, in that order.
//!
//! Because every step is monotone in `w`, the 16-bit patterns that quantize to a given `q` form
//! one contiguous run in the ordered-float sense. [`RowRanges`] finds the bounds of every run of a
//! row exactly, by evaluating the quantizer itself (a guess from f64 arithmetic, then a galloping
//! search that the quantizer decides), so the ranges agree with [`quantize`] by construction, in
//! every corner: subnormals, the f32 overflow of `w * 127` for huge BF16 values, ties.
//!
//! Values LLM.int8 leaves undefined get a fixed convention here (the high-precision section keeps
//! their bits as escapes): the scale is the largest *finite* magnitude; `+Inf` → 127, `-Inf` →
//! −127, NaN → 0; a row whose finite values are all ±0 has `s = 0` and every `q = 0`.

/// The 16-bit float formats QStore quantizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfKind {
    /// bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
    Bf16,
    /// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits.
    Fp16,
}

/// Sign bit of a 16-bit float pattern.
pub const SIGN: u16 = 0x8000;

impl HalfKind {
    /// Largest finite magnitude pattern (sign bit clear). Patterns above it are ±Inf and NaN.
    pub const fn max_finite(self) -> u16 {
        match self {
            HalfKind::Bf16 => 0x7F7F,
            HalfKind::Fp16 => 0x7BFF,
        }
    }

    /// True for finite patterns of either sign.
    pub const fn is_finite(self, p: u16) -> bool {
        p & !SIGN <= self.max_finite()
    }

    /// Exact conversion to f32 (every BF16 and FP16 value is an f32 value).
    pub fn to_f32(self, p: u16) -> f32 {
        match self {
            HalfKind::Bf16 => f32::from_bits((p as u32) << 16),
            HalfKind::Fp16 => {
                let sign = ((p as u32) & 0x8000) << 16;
                let exp = ((p >> 10) & 0x1F) as u32;
                let man = (p & 0x3FF) as u32;
                let mag = match exp {
                    // Subnormal: man * 2^-24, exact in f32.
                    0 => (man as f32 * (1.0 / 16_777_216.0)).to_bits(),
                    31 => 0x7F80_0000 | (man << 13),
                    _ => ((exp + 112) << 23) | (man << 13),
                };
                f32::from_bits(sign | mag)
            }
        }
    }

    /// The magnitude pattern of a non-negative f32 that is exactly representable, if it is.
    pub fn from_f32_exact(self, v: f32) -> Option<u16> {
        if v.is_nan() || v < 0.0 || v.is_infinite() {
            return None;
        }
        let p = self.truncate(v);
        (self.to_f32(p).to_bits() == v.to_bits()).then_some(p)
    }

    /// A magnitude pattern near a non-negative finite f32 (truncating): only a search start.
    pub(crate) fn truncate(self, v: f32) -> u16 {
        let b = v.to_bits() & 0x7FFF_FFFF;
        match self {
            HalfKind::Bf16 => ((b >> 16) as u16).min(self.max_finite()),
            HalfKind::Fp16 => {
                let exp = (b >> 23) as i32 - 112;
                if exp >= 31 {
                    self.max_finite()
                } else if exp >= 1 {
                    ((exp as u32) << 10 | ((b >> 13) & 0x3FF)) as u16
                } else if exp > -11 {
                    let man = (b & 0x7F_FFFF) | 0x80_0000;
                    (man >> (14 - exp)) as u16
                } else {
                    0
                }
            }
        }
    }
}

/// Rounds to the nearest integer, ties to even, without libm: adding and subtracting 2^23 makes
/// the FPU's own round-to-nearest-even drop the fraction. Only called with |x| <= 127.
fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 8_388_608.0; // 2^23: from here on the f32 spacing is 1.
    if x >= 0.0 {
        (x + MAGIC) - MAGIC
    } else {
        -((-x + MAGIC) - MAGIC)
    }
}

/// The LLM.int8 quantizer for one finite weight `w` of a row with scale `s > 0`:
/// `clamp(round_half_even(fl32(fl32(w * 127) / s)), -127, 127)`.
pub fn quantize(w: f32, s: f32) -> i8 {
    let x = (w * 127.0) / s;
    // Clamp first (this also maps ±Inf from an overflowing `w * 127`), then round.
    if x >= 127.0 {
        127
    } else if x <= -127.0 {
        -127
    } else {
        round_half_even(x) as i8
    }
}

/// Quantizes one pattern of a row whose scale is `s` (following the escape conventions of the
/// module header).
pub fn quantize_pattern(kind: HalfKind, p: u16, s: f32) -> i8 {
    if !kind.is_finite(p) {
        // The pattern just above the largest finite one is infinity in both formats.
        if p & !SIGN == kind.max_finite() + 1 {
            return if p & SIGN == 0 { 127 } else { -127 };
        }
        return 0;
    }
    if s == 0.0 {
        return 0;
    }
    quantize(kind.to_f32(p), s)
}

/// The scale of a row: its largest finite magnitude, as a pattern and as f32.
pub fn row_scale(kind: HalfKind, row: &[u16]) -> (u16, f32) {
    let smag = row
        .iter()
        .map(|&p| p & !SIGN)
        .filter(|&m| m <= kind.max_finite())
        .max()
        .unwrap_or(0);
    (smag, kind.to_f32(smag))
}

/// Quantizes a whole row into `q` (same length) and returns its scale `s`.
pub fn quantize_row(kind: HalfKind, row: &[u16], q: &mut [i8]) -> f32 {
    let (_, s) = row_scale(kind, row);
    for (qi, &p) in q.iter_mut().zip(row) {
        *qi = quantize_pattern(kind, p, s);
    }
    s
}

/// For one row scale, the exact run of magnitude patterns that quantizes to each |q|.
///
/// `start[a]` is the smallest magnitude `m <= smag` with `quantize(m) >= a` (or `smag + 1` when
/// none), so `|q| = a` covers magnitudes `start[a] .. start[a + 1]`. Magnitudes above `smag` never
/// occur: `smag` is the row's largest finite magnitude. A positive `q` is a positive weight, a
/// negative `q` a negative one; `q = 0` covers both signs.
#[derive(Clone, Debug)]
pub struct RowRanges {
    start: [u16; 129],
}

impl RowRanges {
    /// Computes the runs of a row whose scale is the magnitude pattern `smag`.
    pub fn new(kind: HalfKind, smag: u16) -> RowRanges {
        let mut start = [0u16; 129];
        let s = kind.to_f32(smag);
        let end = smag + 1;
        if s == 0.0 {
            // Only ±0 is finite in such a row, and it quantizes to 0.
            start[1..].fill(end);
            return RowRanges { start };
        }
        let mut lo = 0u16;
        for k in 1..=127u16 {
            let pred = |m: u16| m >= end || quantize(kind.to_f32(m), s) as i16 >= k as i16;
            // Guess from the real-valued boundary, then let the quantizer decide.
            let guess_v = (k as f64 - 0.5) * s as f64 / 127.0;
            let g = kind.truncate(guess_v as f32).clamp(lo, end);
            let t = smallest_true(pred, lo, end, g);
            start[k as usize] = t;
            lo = t;
        }
        start[128] = end;
        RowRanges { start }
    }

    /// The magnitudes `[lo, hi)` that quantize to `|q| = a` (a in 0..=127).
    pub fn magnitudes(&self, a: u8) -> (u16, u16) {
        let a = a.min(127) as usize;
        (self.start[a], self.start[a + 1])
    }

    /// Number of magnitude patterns that quantize to `|q| = a`.
    pub fn width(&self, a: u8) -> u16 {
        let (lo, hi) = self.magnitudes(a);
        hi - lo
    }
}

/// The smallest `m` in `[lo, end]` with `pred(m)`, for a monotone `pred` true at `end`, searched
/// from a guess `g`: gallop away from the guess to bracket the answer, then bisect.
fn smallest_true(pred: impl Fn(u16) -> bool, lo: u16, end: u16, g: u16) -> u16 {
    let (mut a, mut b); // answer in [a, b], pred(b) is true
    if pred(g) {
        b = g;
        a = lo;
        let mut step = 1u16;
        while let Some(c) = g.checked_sub(step).filter(|&c| c >= lo) {
            if pred(c) {
                b = c;
                step = step.saturating_mul(2);
            } else {
                a = c + 1;
                break;
            }
        }
    } else {
        a = g + 1;
        b = end;
        let mut step = 1u16;
        loop {
            let c = g.saturating_add(step).min(end);
            if pred(c) {
                b = c;
                break;
            }
            a = c + 1;
            if c == end {
                break;
            }
            step = step.saturating_mul(2);
        }
    }
    while a < b {
        let mid = a + (b - a) / 2;
        if pred(mid) {
            b = mid;
        } else {
            a = mid + 1;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over every magnitude: the runs must be exactly the quantizer's preimages.
    fn check_row(kind: HalfKind, smag: u16) {
        let r = RowRanges::new(kind, smag);
        let s = kind.to_f32(smag);
        for m in 0..=smag {
            let q = quantize_pattern(kind, m, s);
            assert!(q >= 0);
            let (lo, hi) = r.magnitudes(q as u8);
            assert!(
                lo <= m && m < hi,
                "{kind:?} smag {smag:#x} m {m:#x} q {q} run {lo:#x}..{hi:#x}"
            );
            assert_eq!(quantize_pattern(kind, m | SIGN, s), -q);
        }
    }

    #[test]
    fn runs_match_quantizer_exhaustively_on_sample_scales() {
        for smag in [
            0u16, 1, 2, 0x7F, 0x80, 0x3F80, 0x3C00, 0x4567, 0x7F7F, 0x7F00, 0x0123,
        ] {
            check_row(HalfKind::Bf16, smag);
        }
        for smag in [0u16, 1, 3, 0x3FF, 0x400, 0x3C00, 0x5A5A, 0x7BFF, 0x0200] {
            check_row(HalfKind::Fp16, smag);
        }
    }

    #[test]
    fn huge_bf16_overflowing_w_times_127_still_monotone() {
        // w * 127 overflows f32 for |w| > f32::MAX / 127: quantize gives 127 there.
        let s = HalfKind::Bf16.to_f32(0x7F7F);
        assert_eq!(quantize(HalfKind::Bf16.to_f32(0x7E00), s), 127);
        check_row(HalfKind::Bf16, 0x7F7F);
    }

    #[test]
    fn escapes_and_zero_rows() {
        let k = HalfKind::Bf16;
        let row = [0x7F80, 0xFF80, 0x7FC1, 0x8000, 0x0000];
        let mut q = [9i8; 5];
        let s = quantize_row(k, &row, &mut q);
        assert_eq!(s, 0.0);
        assert_eq!(q, [127, -127, 0, 0, 0]);
        let f = HalfKind::Fp16;
        assert_eq!(f.to_f32(0x3C00), 1.0);
        assert_eq!(f.to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f.to_f32(0xFC00), f32::NEG_INFINITY);
        assert!(f.to_f32(0x7E00).is_nan());
        assert_eq!(f.from_f32_exact(65504.0), Some(0x7BFF));
        assert_eq!(f.from_f32_exact(1.0 + 1.0 / 4096.0), None);
    }

    #[test]
    fn ties_round_to_even() {
        // s = 127 makes w * 127 / s == w exactly, so w = 2.5 is a tie.
        let s = 127.0;
        assert_eq!(quantize(2.5, s), 2);
        assert_eq!(quantize(3.5, s), 4);
        assert_eq!(quantize(-2.5, s), -2);
        assert_eq!(quantize(0.5, s), 0);
        assert_eq!(quantize(126.5, s), 126);
    }
}
