//! In-process ZipNN speed, for `bench/zipnn.sh`: the same measurement the script makes of the
//! zipnn Python package (best wall time of whole-buffer compress and decompress on one thread,
//! no file I/O, no process start), so the two are compared like for like.
//!
//! `zipnn-inproc PAYLOAD bf16|fp16|fp32 ROUNDS` prints `ratio compress_MB/s decompress_MB/s`.

use std::time::Instant;

use nandbox_core::codec::entropy::{DecoderTables, EncoderScratch};
use nandbox_core::codec::zipnn::{self, Dtype, Segment};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, dtype, rounds] = &args[..] else {
        eprintln!("usage: zipnn-inproc PAYLOAD bf16|fp16|fp32 ROUNDS");
        std::process::exit(2);
    };
    let dtype = match dtype.as_str() {
        "bf16" => Dtype::Bf16,
        "fp16" => Dtype::Fp16,
        "fp32" => Dtype::Fp32,
        other => panic!("unknown dtype {other}"),
    };
    let rounds: usize = rounds.parse().expect("ROUNDS is a number");
    let src = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let chunk = zipnn::DEFAULT_CHUNK_SIZE;
    let mut out = vec![0u8; zipnn::max_compressed_len(dtype, chunk, src.len())];
    let mut planes = vec![0u8; chunk as usize];
    let mut scratch = Box::new(EncoderScratch::new());
    let mut tables = Box::new(DecoderTables::new());
    let mut back = vec![0u8; src.len()];
    let mut segs = [Segment {
        dtype: Dtype::Raw,
        len: 0,
    }];
    let (mut len, mut comp, mut decomp) = (0, f64::MAX, f64::MAX);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        len = zipnn::compress(dtype, chunk, &src, &mut planes, &mut out, &mut scratch)
            .expect("compress");
        comp = comp.min(t.elapsed().as_secs_f64());
    }
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        zipnn::decompress(&out[..len], &mut planes, &mut segs, &mut back, &mut tables)
            .expect("decompress");
        decomp = decomp.min(t.elapsed().as_secs_f64());
    }
    assert!(back == src, "round trip differs");
    let mb = src.len() as f64 / 1e6;
    println!(
        "{:.4} {:.0} {:.0}",
        len as f64 / src.len() as f64,
        mb / comp,
        mb / decomp
    );
}
