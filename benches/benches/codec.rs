//! Criterion benches of the ZipNN codec and its entropy coders on the fixtures (BF16's index
//! stream through Huffman and rANS, FP16's value stream through tANS and rANS).
//!
//! `cargo bench -p nandbox-bench --bench codec`. Throughput is in original bytes. The reference
//! peers (zstd -3, the zipnn package) run in `bench/zipnn.sh`, which prints the ratios.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nandbox_core::codec::entropy::{self, DecoderTables, EncoderScratch};
use nandbox_core::codec::huffman::{self, HuffDecoder, HuffEncoder};
use nandbox_core::codec::tans::{self, TansEncoder};
use nandbox_core::codec::zipnn::{self, Dtype, Segment};

fn payload(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures")
        .join(name);
    let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    file[8 + n..].to_vec()
}

fn bench_entropy(c: &mut Criterion) {
    let p = payload("minilm-l0l5-bf16.safetensors");
    let chunk = &p[..zipnn::DEFAULT_CHUNK_SIZE as usize];
    // The two BF16 planes of one 256 KiB chunk: exponents, and sign+mantissa.
    let exps: Vec<u8> = chunk
        .chunks_exact(2)
        .map(|e| (u16::from_le_bytes([e[0], e[1]]) >> 7) as u8)
        .collect();
    let mants: Vec<u8> = chunk
        .chunks_exact(2)
        .map(|e| (e[1] & 0x80) | (e[0] & 0x7f))
        .collect();
    // What ZipNN codes for a BF16 chunk: per element the exponent and top 3 mantissa bits (11
    // bits), as the rank of that value among the chunk's distinct ones.
    let wide: Vec<u16> = chunk
        .chunks_exact(2)
        .map(|e| (u16::from_le_bytes([e[0], e[1]]) >> 4) & 0x7ff)
        .collect();
    let mut rank = vec![0u8; 2048];
    let mut present = vec![false; 2048];
    wide.iter().for_each(|&v| present[v as usize] = true);
    let mut next = 0u8;
    for v in 0..2048 {
        if present[v] {
            rank[v] = next;
            next = next.wrapping_add(1);
        }
    }
    let index: Vec<u8> = wide.iter().map(|&v| rank[v as usize]).collect();
    let mut g = c.benchmark_group("entropy");
    // The same index stream through the Huffman coder ZipNN uses for big chunks; the decoder
    // writes each index's 11-bit value (shifted left by 4) as a u16.
    let k = next as usize;
    let mut counts = vec![0u32; k];
    index.iter().for_each(|&i| counts[i as usize] += 1);
    let mut enc = Box::new(HuffEncoder::new());
    enc.build(&counts);
    let codes = enc.codes;
    let quads = |i: usize, j: usize| {
        index[i..j]
            .chunks_exact(4)
            .map(move |q| std::array::from_fn(|j| codes[q[j] as usize]))
    };
    let one = |i: usize| codes[index[i] as usize];
    let mut out = vec![0u8; 2 * index.len() + 1024];
    g.throughput(Throughput::Bytes(index.len() as u64));
    g.bench_function("encode/index-huffman", |b| {
        b.iter(|| huffman::encode(index.len(), k, &enc, quads, one, &mut out).unwrap())
    });
    let len = huffman::encode(index.len(), k, &enc, quads, one, &mut out).unwrap();
    let mut values = [0u16; 256];
    for (v, &present) in present.iter().enumerate() {
        if present {
            values[rank[v] as usize] = (v as u16) << 4;
        }
    }
    let coded = out[..len].to_vec();
    let mut back = vec![0u8; 2 * index.len()];
    let mut table = Box::new(HuffDecoder::new());
    g.bench_function("decode/index-huffman", |b| {
        b.iter(|| huffman::decode(&coded, index.len(), k, &values, &mut table, &mut back).unwrap())
    });
    println!(
        "index: huffman {} bytes, rANS {} bytes",
        len,
        entropy::encode(&index, &mut out, &mut EncoderScratch::new()).unwrap()
    );
    // FP16's 8-bit values (bits 14..7) of one chunk: what ZipNN codes with tANS, against rANS
    // on the same symbols and table.
    let p16 = payload("minilm-l0l5-f16.safetensors");
    let vals: Vec<u8> = p16[..zipnn::DEFAULT_CHUNK_SIZE as usize]
        .chunks_exact(2)
        .map(|e| (u16::from_le_bytes([e[0], e[1]]) >> 7) as u8)
        .collect();
    let mut scratch = EncoderScratch::new();
    let mut rans_out = vec![0u8; entropy::max_encoded_len(vals.len())];
    let rans_len = entropy::encode(&vals, &mut rans_out, &mut scratch).unwrap();
    let freqs = *scratch.last_freqs();
    let mut tenc = Box::new(TansEncoder::new());
    tenc.build(&freqs);
    let mut lanes = vec![0u8; vals.len()];
    let mut tout = vec![0u8; 2 * vals.len()];
    g.throughput(Throughput::Bytes(vals.len() as u64));
    g.bench_function("encode/fp16-values-tans", |b| {
        b.iter(|| tans::encode(&vals, &tenc, &mut lanes, &mut tout).unwrap())
    });
    let tlen = tans::encode(&vals, &tenc, &mut lanes, &mut tout).unwrap();
    let values: [u16; 256] = std::array::from_fn(|s| (s as u16) << 7);
    let mut table = Box::new([0u32; 4096]);
    tans::build_decoder(&freqs, &values, &mut table);
    let mut back = vec![0u8; 2 * vals.len()];
    g.bench_function("decode/fp16-values-tans", |b| {
        b.iter(|| tans::decode(&tout[..tlen], vals.len(), &table, &mut back).unwrap())
    });
    let mut rans_back = vec![0u8; vals.len()];
    let mut tables = DecoderTables::new();
    g.bench_function("encode/fp16-values-rans", |b| {
        b.iter(|| entropy::encode(&vals, &mut rans_out, &mut scratch).unwrap())
    });
    let coded = rans_out[..rans_len].to_vec();
    g.bench_function("decode/fp16-values-rans", |b| {
        b.iter(|| entropy::decode(&coded, &mut rans_back, &mut tables).unwrap())
    });
    println!("fp16 values: tANS {tlen} bytes, rANS {rans_len} bytes");
    for (name, plane) in [("index", &index), ("exponent", &exps), ("mantissa", &mants)] {
        let mut out = vec![0u8; entropy::max_encoded_len(plane.len())];
        let mut scratch = EncoderScratch::new();
        let len = entropy::encode(plane, &mut out, &mut scratch).unwrap();
        g.throughput(Throughput::Bytes(plane.len() as u64));
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| entropy::encode(plane, &mut out, &mut scratch).unwrap())
        });
        let coded = out[..len].to_vec();
        let mut back = vec![0u8; plane.len()];
        let mut tables = DecoderTables::new();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| entropy::decode(&coded, &mut back, &mut tables).unwrap())
        });
    }
    g.finish();
}

fn bench_zipnn(c: &mut Criterion) {
    let mut g = c.benchmark_group("zipnn");
    g.sample_size(20);
    for (name, dtype) in [
        ("minilm-l0l5-bf16.safetensors", Dtype::Bf16),
        ("minilm-l0l5-f16.safetensors", Dtype::Fp16),
        ("minilm-l0l5-f32.safetensors", Dtype::Fp32),
    ] {
        let p = payload(name);
        let chunk = zipnn::DEFAULT_CHUNK_SIZE;
        let mut out = vec![0u8; zipnn::max_compressed_len(dtype, chunk, p.len())];
        let mut planes = vec![0u8; chunk as usize];
        let mut scratch = EncoderScratch::new();
        g.throughput(Throughput::Bytes(p.len() as u64));
        let len = zipnn::compress(dtype, chunk, &p, &mut planes, &mut out, &mut scratch).unwrap();
        g.bench_function(format!("compress/{dtype:?}"), |b| {
            b.iter(|| {
                zipnn::compress(dtype, chunk, &p, &mut planes, &mut out, &mut scratch).unwrap()
            })
        });
        let container = out[..len].to_vec();
        let mut back = vec![0u8; p.len()];
        let mut segs = [Segment {
            dtype: Dtype::Raw,
            len: 0,
        }];
        let mut tables = DecoderTables::new();
        g.bench_function(format!("decompress/{dtype:?}"), |b| {
            b.iter(|| {
                zipnn::decompress(&container, &mut planes, &mut segs, &mut back, &mut tables)
                    .unwrap()
            })
        });
        println!("zipnn {dtype:?}: ratio {:.4}", len as f64 / p.len() as f64);
    }
    g.finish();
}

criterion_group!(benches, bench_entropy, bench_zipnn);
criterion_main!(benches);
