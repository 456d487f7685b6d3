//! Writes the seed corpora of every fuzz target from real runs: ZipNN containers, entropy blocks
//! and QStore records of the BF16/FP16 fixture weights, a whole dump of a used FTL image, and
//! power-cut workloads. `scripts/fuzz.sh` runs it before fuzzing.
//!
//! Usage: `cargo run --example seeds -- FIXTURES_DIR CORPUS_DIR`

use std::fs;
use std::path::{Path, PathBuf};

use nandbox_core::codec::entropy::{self, EncoderScratch, MAX_CONTEXTS};
use nandbox_core::codec::qstore::chunk;
use nandbox_core::codec::qstore::format::{DirEntry, FileHeader, Storage, HEADER_LEN, MAX_DIMS};
use nandbox_core::codec::qstore::{row_scale, HalfKind, Workspace};
use nandbox_core::codec::zipnn::{self, Dtype};
use nandbox_fuzz::real_image;

/// Tensor payload of a safetensors file: everything after the 8-byte length and the JSON header.
fn payload(path: &Path) -> Vec<u8> {
    let b = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [fixtures, corpus] = &args[..] else {
        panic!("usage: seeds FIXTURES_DIR CORPUS_DIR");
    };
    let bf16 = payload(&fixtures.join("minilm-l0l5-bf16.safetensors"));
    let fp16 = payload(&fixtures.join("minilm-l0l5-f16.safetensors"));
    let mut scratch = Box::new(EncoderScratch::new());

    // ZipNN: one container per dtype, from a slice in the middle of the weights.
    for (name, dtype, src) in [
        ("bf16", Dtype::Bf16, &bf16[1 << 20..(1 << 20) + 40_000]),
        ("fp16", Dtype::Fp16, &fp16[1 << 20..(1 << 20) + 40_000]),
        ("fp32", Dtype::Fp32, &bf16[2 << 20..(2 << 20) + 20_000]),
        ("raw", Dtype::Raw, &b"nandbox raw segment"[..]),
    ] {
        let chunk = zipnn::MIN_CHUNK_SIZE * 4;
        let mut planes = vec![0u8; chunk as usize];
        let mut out = vec![0u8; zipnn::max_compressed_len(dtype, chunk, src.len())];
        let n = zipnn::compress(dtype, chunk, src, &mut planes, &mut out, &mut scratch).unwrap();
        put(corpus, "zipnn_decompress", name, &out[..n]);
    }

    // Entropy: a plain block of exponent-like bytes and a context block, as the target decodes.
    let exps: Vec<u8> = bf16[..16_384].chunks(2).map(|p| p[1]).collect();
    let mut enc = vec![0u8; entropy::max_encoded_len(exps.len())];
    let n = entropy::encode(&exps, &mut enc, &mut scratch).unwrap();
    put(
        corpus,
        "entropy_decode",
        "plain",
        &[&[0u8][..], &enc[..n]].concat(),
    );
    let selector = 1u8;
    let mut lut = [0u8; 256];
    for (k, c) in lut.iter_mut().enumerate() {
        *c = ((k as u8).wrapping_mul(selector | 1) >> 6) % MAX_CONTEXTS as u8;
    }
    let keys: Vec<u8> = (0..exps.len()).map(|i| (i as u8) ^ selector).collect();
    let n = entropy::encode_with_context(&exps, &keys, &lut, &mut enc, &mut scratch).unwrap();
    put(
        corpus,
        "entropy_decode",
        "context",
        &[&[selector][..], &enc[..n]].concat(),
    );

    // QStore: INT8 and high-precision records of a 16 x 256 BF16 tile, and a one-tensor file.
    let cols = 256u32;
    let w: Vec<u16> = bf16[..2 * 4096]
        .chunks(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    let scales: Vec<f32> = w
        .chunks(cols as usize)
        .map(|r| row_scale(HalfKind::Bf16, r).1)
        .collect();
    let mut ws = Box::new(Workspace::new());
    let mut i8rec = vec![0u8; chunk::max_int8_len(w.len(), scales.len())];
    let mut hprec = vec![0u8; chunk::max_hp_len(w.len())];
    let (a, b) = chunk::encode_chunk(
        HalfKind::Bf16,
        cols,
        0,
        &w,
        &scales,
        None,
        &mut ws,
        &mut i8rec,
        &mut hprec,
    )
    .unwrap();
    let prefix = |sel: u8, split: u16| {
        let mut p = vec![sel];
        p.extend_from_slice(&cols.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&split.to_le_bytes());
        p
    };
    put(
        corpus,
        "qstore_decode",
        "int8",
        &[prefix(1, 0), i8rec[..a].to_vec()].concat(),
    );
    let both = [
        prefix(2, a as u16),
        i8rec[..a].to_vec(),
        hprec[..b].to_vec(),
    ]
    .concat();
    put(corpus, "qstore_decode", "hp", &both);
    let mut dims = [0u64; MAX_DIMS];
    dims[0] = 16;
    dims[1] = cols as u64;
    let entry = DirEntry {
        name: "encoder.layer.0.weight",
        dtype: 1,
        storage: Storage::Qstore,
        ndim: 2,
        dims,
        int8_off: 0,
        int8_len: a as u64,
        hp_off: 0,
        hp_len: b as u64,
    };
    let mut dir = vec![0u8; entry.encoded_len()];
    entry.write(&mut dir).unwrap();
    let fh = FileHeader {
        tensors: 1,
        dir_len: dir.len() as u64,
        int8_len: a as u64,
        hp_len: b as u64,
        dir_crc: crc32fast::hash(&dir),
    };
    let mut hb = [0u8; HEADER_LEN];
    fh.write(&mut hb);
    let file = [&hb[..], &dir, &i8rec[..a], &hprec[..b]].concat();
    put(
        corpus,
        "qstore_decode",
        "file",
        &[prefix(0, 0), file].concat(),
    );

    // Image mount: the whole used image as raw pages (mode 1), and a few edits of it (mode 0).
    let image = real_image();
    let raw: Vec<u8> = image
        .iter()
        .flat_map(|p| {
            p.clone()
                .unwrap_or_else(|| vec![0xFF; nandbox_fuzz::raw_page_len()])
        })
        .collect();
    put(
        corpus,
        "image_mount",
        "raw-image",
        &[&[1u8][..], &raw].concat(),
    );
    put(corpus, "image_mount", "pristine", &[0u8]);
    put(corpus, "image_mount", "flip-page0", &[0u8, 0, 0, 0, 40, 0]);
    put(corpus, "image_mount", "torn-block1", &[0u8, 2, 11, 0, 0, 0]);

    // Power cuts: mixed workloads with cuts early, mid-way and past the end.
    for (name, cut, rec, seed) in [
        ("early", 20u16, 0u8, 1u64),
        ("mid", 300, 7, 2),
        ("late", 900, 0, 3),
        ("none", u16::MAX, 33, 4),
        ("delta-early", 40, 0x80, 5),
        ("delta-mid", 400, 0x80 | 9, 6),
        ("delta-none", u16::MAX, 0x80, 7),
    ] {
        let mut r = nandbox_fuzz::Rng::new(seed);
        let mut b = cut.to_le_bytes().to_vec();
        b.push(rec);
        for _ in 0..300 {
            b.push((r.next_u64() % 256) as u8);
            b.push((r.next_u64() % 256) as u8);
        }
        put(corpus, "ftl_power_cut", name, &b);
    }
    // Delta: a real XOR delta of two versions of a block, an inline area holding three deltas,
    // and a compact page holding them.
    let base = &bf16[..4096];
    let mut new = base.to_vec();
    for i in (0..4096).step_by(61) {
        new[i] ^= 0x5a;
    }
    let mut delta = vec![0u8; 4096 + 64];
    let n = nandbox_core::delta::xor::encode(&new, base, &mut delta).unwrap();
    let delta = &delta[..n];
    put(corpus, "delta_decode", "xor", &[&[0u8][..], delta].concat());
    // The same update as byte planes (ZipNN's delta mode), for the planes decoder.
    let mut planes = vec![0u8; 4096 + 64];
    let n = nandbox_core::delta::planes::encode(&new, base, 2, &mut planes).unwrap();
    put(
        corpus,
        "delta_decode",
        "planes",
        &[&[0u8][..], &planes[..n]].concat(),
    );
    let mut img = vec![0u8; 4096];
    let mut len = 0;
    for off in [3u16, 17, 200] {
        let d = &delta[..delta.len().min(300)];
        let compact = (off == 17).then_some(0);
        let d = if off == 17 { &d[..0] } else { d };
        len = nandbox_core::delta::inline::push(&mut img, len, off, compact, 1, 2, d).unwrap();
    }
    img[..2].copy_from_slice(&(len as u16).to_le_bytes());
    put(
        corpus,
        "delta_decode",
        "inline",
        &[&[1u8][..], &img].concat(),
    );
    let mut page = vec![0u8; 4096];
    let mut b = nandbox_core::delta::compact::Builder::new(&mut page, 7, 2);
    for off in [3u16, 17, 200] {
        let moved = off != 17;
        assert!(b.add(&mut page, off, moved, 1, 2, &delta[..delta.len().min(300)]));
    }
    b.finish(&mut page);
    put(
        corpus,
        "delta_decode",
        "compact",
        &[&[2u8 | 0x40][..], &page].concat(),
    );
    put(
        corpus,
        "delta_decode",
        "compact-built",
        &[&[2u8 | 0x80][..], delta].concat(),
    );
    println!("seeds written to {}", corpus.display());
}
