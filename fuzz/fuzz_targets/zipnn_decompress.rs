//! ZipNN containers from untrusted bytes: `decompress` must return `Ok` or `Err`, never panic,
//! never read or write out of bounds, never allocate from a claimed length. A container that
//! decodes must re-encode (as one segment of its first dtype) and decode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nandbox_core::codec::entropy::{DecoderTables, EncoderScratch};
use nandbox_core::codec::zipnn::{self, ContainerHeader, Segment};

/// Largest original length and chunk size the target decodes: the container format allows more,
/// but the fuzzer's time is better spent on parsing than on copying megabytes.
const MAX_OUT: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = ContainerHeader::parse(data) else {
        return;
    };
    if h.total_len > MAX_OUT || u64::from(h.chunk_size) > MAX_OUT || h.segments > 4096 {
        return;
    }
    let mut planes = vec![0u8; h.chunk_size as usize];
    let mut segments = vec![
        Segment {
            dtype: zipnn::Dtype::Raw,
            len: 0
        };
        h.segments as usize
    ];
    let mut out = vec![0u8; h.total_len as usize];
    let mut tables = Box::new(DecoderTables::new());
    let Ok(n) = zipnn::decompress(data, &mut planes, &mut segments, &mut out, &mut tables) else {
        return;
    };
    assert_eq!(
        n as u64, h.total_len,
        "decompress reports the header's length"
    );
    // Round trip: what decoded must encode and decode back to itself.
    let dtype = segments.first().map_or(zipnn::Dtype::Raw, |s| s.dtype);
    let chunk = h.chunk_size;
    let mut again = vec![0u8; zipnn::max_compressed_len(dtype, chunk, n)];
    let mut scratch = Box::new(EncoderScratch::new());
    let len = zipnn::compress(
        dtype,
        chunk,
        &out[..n],
        &mut planes,
        &mut again,
        &mut scratch,
    )
    .expect("re-encoding decoded bytes");
    let mut back = vec![0u8; n];
    let mut segs = [Segment { dtype, len: 0 }];
    let m = zipnn::decompress(
        &again[..len],
        &mut planes,
        &mut segs,
        &mut back,
        &mut tables,
    )
    .expect("decoding a fresh container");
    assert_eq!(m, n);
    assert!(back == out[..n], "round trip changed the bytes");
});
