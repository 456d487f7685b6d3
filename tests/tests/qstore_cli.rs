//! `nandbox qstore pack|extract|info` end to end, through the real binary.
//!
//! The INT8 values are checked against a quantizer written here, independently of nandbox, in
//! f64 arithmetic that is exact about the f32 formula it reproduces:
//!
//! - `w * 127`: `w` is a BF16/FP16 value (at most 11 significant bits) and 127 has 7, so the
//!   product is exact in f64, and also exact in f32 unless it passes 2^128, where f32 gives ±Inf.
//! - `/ s`: the f64 quotient is rounded once more to f32. Rounding a quotient of two f32 values
//!   first to f64 and then to f32 equals rounding it directly to f32, because f64 carries
//!   53 >= 2*24 + 2 bits (the classical double-rounding bound for + - * / sqrt).
//! - round half to even on that f32 value, done by hand on the f64 holding it.
//!
//! Rounding the *f64* quotient straight to an integer (skipping the f32 step) is a different
//! formula in general: a quotient just below k + 1/2 could round up to k + 1/2 in f32 and then
//! go to the even neighbour. For BF16/FP16 weights it cannot happen: with significands of at
//! most 11 bits, a quotient `127 w / s` that is not exactly k + 1/2 lies at least about
//! k * 2^-19 from it, more than half an f32 ulp there (at most (k + 1/2) * 2^-24). The fixture
//! test counts such weights and asserts there are none (it would be F32 input where they
//! appear), and the edge test covers the other difference, `w * 127` overflowing f32.

use std::path::{Path, PathBuf};

use nandbox_tests::{fixtures_dir as fixtures, nandbox_cli as nandbox};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nandbox-qstore-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn ok(args: &[&str]) -> String {
    let out = nandbox(args);
    assert!(
        out.status.success(),
        "nandbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------------
// A minimal safetensors reader and writer, independent of the host's.

struct Tensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn read_st(path: &Path) -> Vec<Tensor> {
    let f = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&f[8..8 + n]).unwrap();
    let base = 8 + n;
    let mut out: Vec<(u64, Tensor)> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (a, b) = (o[0].as_u64().unwrap(), o[1].as_u64().unwrap());
            (
                a,
                Tensor {
                    name: k.clone(),
                    dtype: v["dtype"].as_str().unwrap().to_string(),
                    shape: v["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d.as_u64().unwrap())
                        .collect(),
                    data: f[base + a as usize..base + b as usize].to_vec(),
                },
            )
        })
        .collect();
    out.sort_by_key(|(a, _)| *a);
    out.into_iter().map(|(_, t)| t).collect()
}

fn write_st(path: &Path, tensors: &[Tensor]) {
    let mut json = String::from("{");
    let mut off = 0usize;
    for (i, t) in tensors.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        json.push_str(&format!(
            "\"{}\":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            t.name,
            t.dtype,
            shape.join(","),
            off,
            off + t.data.len()
        ));
        off += t.data.len();
    }
    json.push('}');
    let mut f = (json.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(json.as_bytes());
    for t in tensors {
        f.extend_from_slice(&t.data);
    }
    std::fs::write(path, f).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The independent reference quantizer.

/// Exact value of a BF16 or FP16 pattern, or None for NaN/Inf.
fn half_value(dtype: &str, p: u16) -> Option<f64> {
    let neg = p & 0x8000 != 0;
    let (ebits, mbits) = if dtype == "BF16" { (8, 7) } else { (5, 10) };
    let e = ((p & 0x7FFF) >> mbits) as i32;
    let m = (p & ((1 << mbits) - 1)) as f64;
    let emax = (1 << ebits) - 1;
    let bias = (1 << (ebits - 1)) - 1;
    if e == emax {
        return None;
    }
    let v = if e == 0 {
        m * 2f64.powi(1 - bias - mbits)
    } else {
        (1.0 + m / 2f64.powi(mbits)) * 2f64.powi(e - bias)
    };
    Some(if neg { -v } else { v })
}

fn rne(x: f64) -> f64 {
    let f = x.floor();
    let d = x - f;
    if d > 0.5 || (d == 0.5 && f % 2.0 != 0.0) {
        f + 1.0
    } else {
        f
    }
}

/// Largest f32 value, as f64; f32 rounding of an exact product overflows at 2^128.
const F32_OVERFLOW: f64 = 340_282_366_920_938_463_463_374_607_431_768_211_456.0; // 2^128

/// The reference: (q of the f32 formula, q of the naive f64 formula).
fn q_ref(w: f64, s: f64) -> (i8, i8) {
    if s == 0.0 {
        return (0, 0);
    }
    let p = w * 127.0; // exact in f64
    let p32 = if p.abs() >= F32_OVERFLOW {
        p.signum() * f64::INFINITY
    } else {
        p // exact in f32 too: at most 18 significant bits
    };
    let x32 = ((p32 / s) as f32) as f64; // innocuous double rounding (53 >= 2*24 + 2)
    let clamp = |x: f64| {
        if x >= 127.0 {
            127
        } else if x <= -127.0 {
            -127
        } else {
            rne(x) as i8
        }
    };
    (clamp(x32), clamp(p / s))
}

/// Checks an INT8 extraction against the reference for every 2-D BF16/F16 tensor of `original`;
/// returns (weights checked, weights where the naive f64 formula differs).
fn check_int8(original: &[Tensor], int8: &[Tensor]) -> (usize, usize) {
    let by_name = |n: &str| {
        int8.iter()
            .find(|t| t.name == n)
            .unwrap_or_else(|| panic!("INT8 output lacks {n}"))
    };
    let (mut checked, mut naive_diff) = (0, 0);
    for t in original {
        let quantized = (t.dtype == "BF16" || t.dtype == "F16")
            && t.shape.len() == 2
            && t.shape.iter().all(|&d| d > 0);
        let out = by_name(&t.name);
        if !quantized {
            assert_eq!(out.dtype, t.dtype, "{}", t.name);
            assert!(out.data == t.data, "{} not kept as it was", t.name);
            continue;
        }
        let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
        assert_eq!(out.dtype, "I8", "{}", t.name);
        assert_eq!(out.shape, t.shape);
        let scb = by_name(&format!("{}.SCB", t.name));
        assert_eq!(
            (scb.dtype.as_str(), scb.shape.as_slice()),
            ("F32", &[rows as u64][..])
        );
        let pats: Vec<u16> = t
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        for r in 0..rows {
            let row = &pats[r * cols..(r + 1) * cols];
            let s = row
                .iter()
                .filter_map(|&p| half_value(&t.dtype, p))
                .fold(0.0f64, |a, v| a.max(v.abs()));
            let got_s = f32::from_le_bytes(scb.data[4 * r..4 * r + 4].try_into().unwrap());
            assert_eq!(got_s as f64, s, "{} row {r} scale", t.name);
            for (c, &p) in row.iter().enumerate() {
                let want = match half_value(&t.dtype, p) {
                    Some(w) => {
                        let (q, naive) = q_ref(w, s);
                        naive_diff += usize::from(q != naive);
                        q
                    }
                    // Escapes: +Inf -> 127, -Inf -> -127, NaN -> 0.
                    None if p & 0x7FFF == if t.dtype == "BF16" { 0x7F80 } else { 0x7C00 } => {
                        if p & 0x8000 == 0 {
                            127
                        } else {
                            -127
                        }
                    }
                    None => 0,
                };
                let got = out.data[r * cols + c] as i8;
                assert_eq!(
                    got, want,
                    "{} [{r}, {c}] pattern {p:#06x} scale {s}",
                    t.name
                );
                checked += 1;
            }
        }
    }
    (checked, naive_diff)
}

fn pack_and_extract(dir: &Path, model: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let qst = dir.join("m.qst");
    let high = dir.join("high.safetensors");
    let int8 = dir.join("int8.safetensors");
    ok(&["qstore", "pack", s(model), s(&qst)]);
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "high",
        "-o",
        s(&high),
    ]);
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "int8",
        "-o",
        s(&int8),
    ]);
    (qst, high, int8)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn fixtures_round_trip_and_int8_matches_the_reference_quantizer_on_every_weight() {
    let dir = scratch("fixtures");
    for (name, quantized) in [
        ("minilm-l0l5-bf16.safetensors", true),
        ("minilm-l0l5-f16.safetensors", true),
        ("minilm-l0l5-f32.safetensors", false),
    ] {
        let path = fixtures().join(name);
        let original = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
        let (qst, high, int8) = pack_and_extract(&dir, &path);
        assert!(
            std::fs::read(&high).unwrap() == original,
            "{name}: high differs"
        );
        let tensors = read_st(&path);
        let (checked, naive_diff) = check_int8(&tensors, &read_st(&int8));
        let info = ok(&["qstore", "info", s(&qst)]);
        if quantized {
            assert_eq!(checked, 3_538_944, "{name}: every 2-D weight checked");
            assert_eq!(info.matches(" qstore ").count(), 12, "{name}: {info}");
            assert_eq!(
                naive_diff, 0,
                "{name}: double rounding seen where it cannot happen"
            );
        } else {
            // 2-D F32 tensors are not quantized: stored ZipNN-coded, passed through as F32.
            assert_eq!(checked, 0);
            assert_eq!(info.matches(" zipnn ").count(), 32, "{name}: {info}");
        }
        // Never worse than storing both models raw.
        let both_raw = original.len() + std::fs::metadata(&int8).unwrap().len() as usize;
        assert!(std::fs::metadata(&qst).unwrap().len() < both_raw as u64);
    }
}

#[test]
fn int8_extraction_reads_only_header_directory_and_int8_section() {
    let dir = scratch("bytes-read");
    let path = fixtures().join("minilm-l0l5-f16.safetensors");
    let qst = dir.join("m.qst");
    ok(&["qstore", "pack", s(&path), s(&qst)]);
    let info = ok(&["qstore", "info", s(&qst)]);
    let field = |text: &str, label: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("{label} in {text}"));
        line.split_whitespace()
            .find_map(|w| w.parse::<u64>().ok())
            .unwrap()
    };
    let int8_load = field(&info, "an INT8 load reads");
    let hp = field(&info, "high-precision section");
    let out = ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "int8",
        "-o",
        s(&dir.join("i.safetensors")),
        "--report-bytes-read",
    ]);
    let read = field(&out, "bytes read:");
    let total = std::fs::metadata(&qst).unwrap().len();
    assert_eq!(read, int8_load);
    assert_eq!(read + hp, total);
    // Damage to the high-precision section does not touch an INT8 load.
    let mut bytes = std::fs::read(&qst).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    let bad = dir.join("bad.qst");
    std::fs::write(&bad, &bytes).unwrap();
    let i2 = dir.join("i2.safetensors");
    ok(&[
        "qstore",
        "extract",
        s(&bad),
        "--precision",
        "int8",
        "-o",
        s(&i2),
    ]);
    assert!(std::fs::read(&i2).unwrap() == std::fs::read(dir.join("i.safetensors")).unwrap());
    let high = nandbox(&[
        "qstore",
        "extract",
        s(&bad),
        "--precision",
        "high",
        "-o",
        s(&dir.join("h")),
    ]);
    assert!(!high.status.success());
}

fn bf16(v: f32) -> u16 {
    // Round to nearest even, as the fixtures were made.
    let b = v.to_bits();
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

fn f16(v: f32) -> u16 {
    // Exact enough for test data: values are built from FP16-representable parts.
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let a = v.abs();
    if a == 0.0 {
        return sign;
    }
    let e = ((b >> 23) & 0xFF) as i32 - 127;
    if e < -14 {
        return sign | (a * 16_777_216.0).round() as u16; // subnormal: units of 2^-24
    }
    sign | (((e + 15) as u16) << 10) | ((b >> 13) & 0x3FF) as u16
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn weight(&mut self) -> f32 {
        let u = (self.next() % 20_001) as f32 / 10_000.0 - 1.0;
        u * u * u * 0.08
    }
}

fn tensor(name: &str, dtype: &str, shape: &[u64], pats: &[u16]) -> Tensor {
    Tensor {
        name: name.into(),
        dtype: dtype.into(),
        shape: shape.to_vec(),
        data: pats.iter().flat_map(|p| p.to_le_bytes()).collect(),
    }
}

/// A model with every awkward shape and value: zero rows, signed zeros, NaN/Inf rows, 1x1,
/// rows wider than a chunk (so chunks start mid-row and span two rows), a one-column tensor,
/// subnormals, the largest finite values (whose `w * 127` overflows f32 in BF16), plus 1-D and
/// 3-D tensors that are not quantized.
fn edge_model(dtype: &str, rng: &mut Rng) -> Vec<Tensor> {
    let conv = |v: f32| if dtype == "BF16" { bf16(v) } else { f16(v) };
    let (inf, nan, max, min_sub) = if dtype == "BF16" {
        (0x7F80u16, 0x7FC1u16, 0x7F7Fu16, 0x0001u16)
    } else {
        (0x7C00, 0x7E01, 0x7BFF, 0x0001)
    };
    let mut special = Vec::new();
    special.extend([0u16; 8]); // row of zeros
    special.extend([0x8000u16, 0, 0x8000, 0x8000, 0, 0, 0x8000, 0]); // signed zeros
    special.extend([
        inf,
        inf | 0x8000,
        nan,
        conv(0.5),
        conv(-0.25),
        0x8000,
        conv(1e-3),
        nan | 0x8000,
    ]);
    special.extend([nan, nan, inf, 0, 0, 0, 0, 0]); // only escapes and zeros: s = 0
    special.extend([min_sub, min_sub | 0x8000, 2, 3, 0, 0x8003, 1, 4]); // subnormal scale
    special.extend([
        max,
        max | 0x8000,
        max - 1,
        conv(1.0),
        conv(-3.0),
        max - 0x100,
        0x0100,
        5,
    ]);
    let wide: Vec<u16> = (0..3 * 100_003).map(|_| conv(rng.weight())).collect();
    let narrow: Vec<u16> = (0..70_001).map(|_| conv(rng.weight())).collect();
    let normal: Vec<u16> = (0..(300 * 97)).map(|_| conv(rng.weight())).collect();
    let bias: Vec<u16> = (0..31).map(|_| conv(rng.weight())).collect();
    let cube: Vec<u16> = (0..24).map(|_| conv(rng.weight())).collect();
    vec![
        tensor("special", dtype, &[6, 8], &special),
        tensor("one", dtype, &[1, 1], &[conv(-0.75)]),
        tensor("wide", dtype, &[3, 100_003], &wide),
        tensor("narrow", dtype, &[70_001, 1], &narrow),
        tensor("normal", dtype, &[300, 97], &normal),
        tensor("bias", dtype, &[31], &bias),
        tensor("cube", dtype, &[2, 3, 4], &cube),
        Tensor {
            name: "ids".into(),
            dtype: "I64".into(),
            shape: vec![3],
            data: (0..24).collect(),
        },
    ]
}

#[test]
fn awkward_shapes_and_values_round_trip_and_quantize_exactly() {
    let dir = scratch("edges");
    let mut rng = Rng(0x5eed_0001);
    for dtype in ["BF16", "F16"] {
        let model = dir.join(format!("{dtype}.safetensors"));
        let tensors = edge_model(dtype, &mut rng);
        write_st(&model, &tensors);
        let (_, high, int8) = pack_and_extract(&dir, &model);
        assert!(
            std::fs::read(&high).unwrap() == std::fs::read(&model).unwrap(),
            "{dtype}: high differs"
        );
        let (checked, _) = check_int8(&tensors, &read_st(&int8));
        assert_eq!(checked, 48 + 1 + 3 * 100_003 + 70_001 + 300 * 97);
        // A 1x1 tensor's record headers outweigh it: it is kept plain and quantized on load.
        let info = ok(&["qstore", "info", s(&dir.join("m.qst"))]);
        let one = info.lines().find(|l| l.starts_with("one ")).unwrap();
        assert!(one.contains(" raw ") || one.contains(" zipnn "), "{one}");
        // Never worse than both models raw, even for a model of one tiny tensor.
        let tiny = dir.join("tiny.safetensors");
        write_st(&tiny, &tensors[1..2]);
        let (qst, _, int8) = pack_and_extract(&dir, &tiny);
        let both =
            std::fs::metadata(&tiny).unwrap().len() + std::fs::metadata(&int8).unwrap().len();
        assert!(std::fs::metadata(&qst).unwrap().len() <= both);
        // An empty model is a model too.
        let empty = dir.join("empty.safetensors");
        write_st(&empty, &[]);
        let (_, high, _) = pack_and_extract(&dir, &empty);
        assert!(std::fs::read(&high).unwrap() == std::fs::read(&empty).unwrap());
    }
}

#[test]
fn given_int8_values_are_kept_and_a_tensor_they_do_not_contain_falls_back_to_zipnn() {
    let dir = scratch("given");
    let mut rng = Rng(77);
    let model = dir.join("m.safetensors");
    let tensors = edge_model("BF16", &mut rng);
    write_st(&model, &tensors);
    let (_, _, int8) = pack_and_extract(&dir, &model);

    // The tool's own INT8 values contain every weight: stored conditionally, as before.
    let qst = dir.join("given.qst");
    ok(&["qstore", "pack", s(&model), s(&qst), "--int8", s(&int8)]);
    let info = ok(&["qstore", "info", s(&qst)]);
    assert!(!info.contains("qstore+zipnn"), "{info}");

    // Move one value of "normal" off its run: that tensor alone falls back.
    let mut given = read_st(&int8);
    let t = given.iter_mut().find(|t| t.name == "normal").unwrap();
    t.data[5] = (t.data[5] as i8).wrapping_add(3).clamp(-127, 127) as u8;
    let changed = dir.join("changed.safetensors");
    write_st(&changed, &given);
    ok(&["qstore", "pack", s(&model), s(&qst), "--int8", s(&changed)]);
    let info = ok(&["qstore", "info", s(&qst)]);
    let fallback: Vec<&str> = info
        .lines()
        .filter(|l| l.contains("qstore+zipnn"))
        .collect();
    assert_eq!(fallback.len(), 1, "{info}");
    assert!(fallback[0].starts_with("normal "), "{info}");
    let high = dir.join("h.safetensors");
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "high",
        "-o",
        s(&high),
    ]);
    assert!(std::fs::read(&high).unwrap() == std::fs::read(&model).unwrap());
    let back = dir.join("i.safetensors");
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "int8",
        "-o",
        s(&back),
    ]);
    let back = read_st(&back);
    for g in &given {
        let b = back.iter().find(|t| t.name == g.name).unwrap();
        assert!(b.data == g.data, "{} not kept", g.name);
    }
}

#[test]
fn truncated_or_corrupted_files_give_errors_naming_the_damage_never_panics() {
    let dir = scratch("mutate");
    let mut rng = Rng(0xC0FFEE);
    let model = dir.join("m.safetensors");
    // A small model with every storage kind.
    let mut tensors = edge_model("F16", &mut rng);
    tensors.retain(|t| !matches!(t.name.as_str(), "wide" | "narrow"));
    write_st(&model, &tensors);
    let qst = dir.join("m.qst");
    ok(&["qstore", "pack", s(&model), s(&qst)]);
    let good = std::fs::read(&qst).unwrap();
    let info = ok(&["qstore", "info", s(&qst)]);
    let hp_start = info
        .lines()
        .find(|l| l.contains("an INT8 load reads"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.parse::<usize>().ok()))
        .unwrap();
    let good_int8 = dir.join("good-int8.safetensors");
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "int8",
        "-o",
        s(&good_int8),
    ]);
    let good_int8 = std::fs::read(&good_int8).unwrap();

    let bad = dir.join("bad.qst");
    let out = dir.join("out.safetensors");
    let named = |stderr: &str| {
        ["corrupted", "truncated", "beyond the end", "not a .qst"]
            .iter()
            .any(|w| stderr.contains(w))
    };
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..120 {
        let mut b = good.clone();
        let pos = (rng.next() % b.len() as u64) as usize;
        b[pos] ^= 1 << (rng.next() % 8);
        cases.push((format!("bit flip at {pos}"), b));
    }
    for _ in 0..30 {
        let cut = (rng.next() % good.len() as u64) as usize;
        cases.push((format!("truncated to {cut}"), good[..cut].to_vec()));
    }
    for (what, bytes) in &cases {
        std::fs::write(&bad, bytes).unwrap();
        let r = nandbox(&[
            "qstore",
            "extract",
            s(&bad),
            "--precision",
            "high",
            "-o",
            s(&out),
        ]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{what}: high extraction succeeded");
        assert!(named(&err), "{what}: unhelpful error {err}");
        let r = nandbox(&[
            "qstore",
            "extract",
            s(&bad),
            "--precision",
            "int8",
            "-o",
            s(&out),
        ]);
        let flipped_hp =
            what.starts_with("bit flip at ") && what[12..].parse::<usize>().unwrap() >= hp_start;
        if flipped_hp {
            assert!(
                r.status.success(),
                "{what}: INT8 load read the high-precision section"
            );
            assert!(std::fs::read(&out).unwrap() == good_int8);
        } else {
            assert!(!r.status.success(), "{what}: INT8 extraction succeeded");
            assert!(named(&String::from_utf8_lossy(&r.stderr)), "{what}");
        }
        nandbox(&["qstore", "info", s(&bad)]);
    }
    // Not a .qst file at all, and a missing file.
    let r = nandbox(&["qstore", "info", s(&model)]);
    assert!(!r.status.success());
    let r = nandbox(&["qstore", "info", s(&dir.join("missing.qst"))]);
    assert!(!r.status.success());
}

/// CRC-32 (IEEE), bitwise: enough to re-sign a damaged test file.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn re_signed_directories_with_impossible_shapes_are_refused_not_allocated() {
    let dir = scratch("resign");
    let mut rng = Rng(99);
    let model = dir.join("m.safetensors");
    let mut tensors = edge_model("BF16", &mut rng);
    tensors.retain(|t| !matches!(t.name.as_str(), "wide" | "narrow"));
    write_st(&model, &tensors);
    let qst = dir.join("m.qst");
    ok(&["qstore", "pack", s(&model), s(&qst)]);
    let good = std::fs::read(&qst).unwrap();
    let dir_len = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    // The directory entry of "normal" (a [300, 97] BF16 tensor): its two dims.
    let d = &good[48..48 + dir_len];
    let name_at = d.windows(6).position(|w| w == b"normal").unwrap();
    let dims_at = 48 + name_at + 6 + 4;
    assert_eq!(
        u64::from_le_bytes(good[dims_at..dims_at + 8].try_into().unwrap()),
        300
    );
    let out = dir.join("out.safetensors");
    for (rows, cols) in [
        (1u64 << 40, 1u64 << 20),
        (301, 97),
        (300, 96),
        (u64::MAX / 2, 2),
        (1, 0),
    ] {
        let mut b = good.clone();
        b[dims_at..dims_at + 8].copy_from_slice(&rows.to_le_bytes());
        b[dims_at + 8..dims_at + 16].copy_from_slice(&cols.to_le_bytes());
        let dcrc = crc32(&b[48..48 + dir_len]);
        b[40..44].copy_from_slice(&dcrc.to_le_bytes());
        let hcrc = crc32(&b[..44]);
        b[44..48].copy_from_slice(&hcrc.to_le_bytes());
        let bad = dir.join("bad.qst");
        std::fs::write(&bad, &b).unwrap();
        for p in ["high", "int8"] {
            let r = nandbox(&[
                "qstore",
                "extract",
                s(&bad),
                "--precision",
                p,
                "-o",
                s(&out),
            ]);
            let err = String::from_utf8_lossy(&r.stderr);
            assert!(!r.status.success(), "[{rows}, {cols}] {p} accepted");
            assert!(err.contains("corrupted"), "[{rows}, {cols}] {p}: {err}");
        }
    }
}

/// An output that names an input (same path, or a symlink to it) is refused and the input stays
/// as it was: the rename that finishes `pack` and `extract` would otherwise replace it.
#[test]
fn an_output_naming_an_input_is_refused_and_the_input_kept() {
    let dir = scratch("same");
    let model = dir.join("m.safetensors");
    std::fs::copy(fixtures().join("minilm-l0l5-bf16.safetensors"), &model).expect("fixture");
    let original = std::fs::read(&model).unwrap();
    let fail = |args: &[&str]| {
        let out = nandbox(args);
        assert!(!out.status.success(), "nandbox {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("input"), "{err}");
    };
    fail(&["qstore", "pack", s(&model), s(&model)]);
    assert!(
        std::fs::read(&model).unwrap() == original,
        "pack replaced its model"
    );

    let qst = dir.join("m.qst");
    ok(&["qstore", "pack", s(&model), s(&qst)]);
    let packed = std::fs::read(&qst).unwrap();
    let link = dir.join("link.qst");
    std::os::unix::fs::symlink(&qst, &link).unwrap();
    for out in [&qst, &link] {
        for precision in ["high", "int8"] {
            fail(&[
                "qstore",
                "extract",
                s(&qst),
                "--precision",
                precision,
                "-o",
                s(out),
            ]);
            assert!(
                std::fs::read(&qst).unwrap() == packed,
                "extract replaced its .qst"
            );
        }
    }
}

/// `nandbox qstore info x.qst | head -1`: once the reader is gone the output just ends, without
/// a panic (what `println!` does on a closed pipe).
#[test]
fn a_closed_stdout_ends_the_report_quietly() {
    let dir = scratch("pipe");
    let qst = dir.join("m.qst");
    ok(&[
        "qstore",
        "pack",
        s(&fixtures().join("minilm-l0l5-bf16.safetensors")),
        s(&qst),
    ]);
    let mut child = std::process::Command::new(nandbox_tests::nandbox_bin())
        .args(["qstore", "info", s(&qst)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nandbox");
    // Close the read end before the report is written: every write then fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for nandbox");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{}: {err}", out.status);
}

/// `-o /dev/null` (to time an extraction), a FIFO or a symlink is written through: the rename
/// that finishes a regular output must not replace the device, pipe or link with a file (for a
/// root user, `-o /dev/null` replaced /dev/null itself).
#[test]
fn special_and_symlinked_outputs_are_written_through_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = scratch("special");
    let model = fixtures().join("minilm-l0l5-bf16.safetensors");
    let original = std::fs::read(&model).expect("fixture");
    let qst = dir.join("m.qst");
    ok(&["qstore", "pack", s(&model), s(&qst)]);

    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    // The reader blocks until a writer opens the fifo: its result comes through a channel with
    // a time limit, so a tool that never opens it fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read(fifo)));
    }
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "high",
        "-o",
        s(&fifo),
    ]);
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the fifo was replaced by a {kind:?}");
    let through = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("nothing was written into the fifo")
        .expect("read the fifo");
    assert!(through == original, "the fifo's reader got other bytes");

    let target = dir.join("target.safetensors");
    let link = dir.join("link.safetensors");
    std::fs::write(&target, b"old").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    ok(&[
        "qstore",
        "extract",
        s(&qst),
        "--precision",
        "high",
        "-o",
        s(&link),
    ]);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink was replaced"
    );
    assert!(
        std::fs::read(&target).unwrap() == original,
        "the link's target was not written"
    );
}
