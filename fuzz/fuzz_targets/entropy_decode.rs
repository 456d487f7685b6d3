//! The entropy coder's blocks from untrusted bytes, with and without contexts: `decode` must
//! return `Ok` or `Err(Corrupted | BufferTooSmall)` with bounded work, never panic. The input is
//! also encoded as symbols (plain and with contexts derived from it), and must decode back
//! exactly: the fuzzer then searches for encoder/decoder disagreements too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nandbox_core::codec::entropy::{self, DecoderTables, EncoderScratch, MAX_CONTEXTS};

/// Largest symbol count decoded (the format allows more; bounded for speed).
const MAX_SYMBOLS: usize = 1 << 18;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut tables = Box::new(DecoderTables::new());
    // The context lookup table and keys are derived from the selector so both decode paths run.
    let mut lut = [0u8; 256];
    for (k, c) in lut.iter_mut().enumerate() {
        *c = ((k as u8).wrapping_mul(selector | 1) >> 6) % MAX_CONTEXTS as u8;
    }
    // 1. Untrusted block.
    if let Ok(n) = entropy::symbol_count(rest) {
        if n <= MAX_SYMBOLS {
            let mut out = vec![0u8; n];
            let r = if selector & 1 == 0 {
                entropy::decode(rest, &mut out, &mut tables)
            } else {
                let keys: Vec<u8> = (0..n).map(|i| (i as u8) ^ selector).collect();
                entropy::decode_with_context(rest, &keys, &lut, &mut out, &mut tables)
            };
            if let Ok(m) = r {
                assert_eq!(m, n, "decode returns the declared symbol count");
            }
        }
    }
    // 2. Round trip of the input taken as symbols.
    let symbols = rest;
    let mut scratch = Box::new(EncoderScratch::new());
    let mut enc = vec![0u8; entropy::max_encoded_len(symbols.len())];
    let mut out = vec![0u8; symbols.len()];
    let len = entropy::encode(symbols, &mut enc, &mut scratch).expect("encode");
    let n = entropy::decode(&enc[..len], &mut out, &mut tables).expect("decode own block");
    assert!(n == symbols.len() && out == symbols, "plain round trip");
    let keys: Vec<u8> = symbols
        .iter()
        .map(|&s| s.rotate_left(3) ^ selector)
        .collect();
    let len = entropy::encode_with_context(symbols, &keys, &lut, &mut enc, &mut scratch)
        .expect("encode with context");
    let n = entropy::decode_with_context(&enc[..len], &keys, &lut, &mut out, &mut tables)
        .expect("decode own context block");
    assert!(n == symbols.len() && out == symbols, "context round trip");
});
