//! `nandbox zipnn compress|decompress` end to end, through the real binary: fixtures and
//! hand-built files round-trip bit-exact, damaged containers fail with an error naming the
//! chunk, and nothing panics.

use std::path::{Path, PathBuf};

use nandbox_tests::{fixtures_dir as fixtures, nandbox_cli as nandbox};

/// Scratch directory unique to this test process and test name.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nandbox-zipnn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn ok(args: &[&str]) {
    let out = nandbox(args);
    assert!(
        out.status.success(),
        "nandbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compresses and decompresses `input` with `extra` compress flags; returns (container, output).
fn round_trip(dir: &Path, input: &Path, extra: &[&str], threads: &str) -> (Vec<u8>, Vec<u8>) {
    let z = dir.join("c.nbzn");
    let back = dir.join("back");
    let (i, zs, b) = (
        input.to_str().unwrap(),
        z.to_str().unwrap(),
        back.to_str().unwrap(),
    );
    let mut args = vec!["zipnn", "compress", i, zs, "--threads", threads];
    args.extend_from_slice(extra);
    ok(&args);
    ok(&["zipnn", "decompress", zs, b, "--threads", threads]);
    (std::fs::read(&z).unwrap(), std::fs::read(&back).unwrap())
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn every_fixture_round_trips_bit_exact_and_compresses() {
    let dir = scratch("fixtures");
    // Whole-file ratios must at least beat zstd -3 on the payloads (0.78 / 0.92 / 0.93).
    for (name, max_ratio) in [
        ("minilm-l0l5-bf16.safetensors", 0.70),
        ("minilm-l0l5-f16.safetensors", 0.87),
        ("minilm-l0l5-f32.safetensors", 0.86),
    ] {
        let path = fixtures().join(name);
        let original = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("fixture {} missing: {e}", path.display()));
        for threads in ["1", "2"] {
            let (container, back) = round_trip(&dir, &path, &[], threads);
            assert!(back == original, "{name} with {threads} threads differs");
            let ratio = container.len() as f64 / original.len() as f64;
            assert!(ratio < max_ratio, "{name}: ratio {ratio}");
        }
    }
}

/// Element values that stress the grouping: NaNs with payloads, infinities, signed zeros,
/// subnormals, extremes, mixed with ordinary small weights.
fn special_f32(rng: &mut Rng) -> u32 {
    const SPECIAL: [u32; 10] = [
        0x7fc0_0000, // quiet NaN
        0xffc0_0001, // negative NaN with payload
        0x7f80_0001, // signalling NaN
        0x7f80_0000, // +inf
        0xff80_0000, // -inf
        0x8000_0000, // -0.0
        0x0000_0001, // smallest subnormal
        0x807f_ffff, // largest negative subnormal
        0x7f7f_ffff, // f32::MAX
        0x0080_0000, // smallest normal
    ];
    if rng.next() & 3 == 0 {
        SPECIAL[(rng.next() % 10) as usize]
    } else {
        ((rng.next() % 2000) as f32 / 1000.0 - 1.0).to_bits() >> (rng.next() % 3)
    }
}

#[test]
fn raw_payloads_with_special_values_odd_sizes_and_flat_chunks_round_trip() {
    let dir = scratch("raw");
    let mut rng = Rng(0xfeed);
    let mut specials = Vec::new();
    for _ in 0..150_000 {
        specials.extend_from_slice(&special_f32(&mut rng).to_le_bytes());
    }
    let random: Vec<u8> = (0..300_001).map(|_| rng.next() as u8).collect();
    let zeros = vec![0u8; 700_000];
    let constant: Vec<u8> = std::iter::repeat_n(1.5f32.to_le_bytes(), 150_000)
        .flatten()
        .collect();
    let input = dir.join("payload");
    for dtype in ["bf16", "fp16", "fp32"] {
        for (what, data) in [
            ("specials", &specials),
            ("random", &random),
            ("zeros", &zeros),
            ("constant", &constant),
        ] {
            // Whole elements, and lengths that leave a 1..3-byte tail.
            for cut in [0usize, 1, 2, 3] {
                let data = &data[..data.len() - cut];
                std::fs::write(&input, data).unwrap();
                let (container, back) = round_trip(&dir, &input, &["--dtype", dtype], "2");
                assert!(back == *data, "{dtype} {what} minus {cut} differs");
                if what == "zeros" {
                    assert!(container.len() < 2000, "zeros took {}", container.len());
                }
            }
        }
    }
    // The empty payload too.
    std::fs::write(&input, b"").unwrap();
    let (_, back) = round_trip(&dir, &input, &["--dtype", "bf16"], "1");
    assert!(back.is_empty());
}

/// A safetensors file built by hand: mixed dtypes (coded and raw), an empty tensor, metadata.
fn mixed_safetensors(rng: &mut Rng) -> Vec<u8> {
    let sizes = [
        ("a.weight", "BF16", 40_000usize),
        ("b.idx", "I64", 8 * 3000),
        ("c.empty", "F32", 0),
        ("d.half", "F16", 2 * 70_001),
        ("e.mask", "U8", 9),
        ("f.full", "F32", 4 * 90_000),
    ];
    let mut json = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut data = Vec::new();
    for (name, dtype, bytes) in sizes {
        let elems = bytes
            / if dtype == "I64" {
                8
            } else if dtype == "F32" {
                4
            } else if dtype == "U8" {
                1
            } else {
                2
            };
        json.push_str(&format!(
            r#","{name}":{{"dtype":"{dtype}","shape":[{elems}],"data_offsets":[{},{}]}}"#,
            data.len(),
            data.len() + bytes
        ));
        for _ in 0..bytes / 4 {
            data.extend_from_slice(&special_f32(rng).to_le_bytes());
        }
        data.extend((0..bytes % 4).map(|_| rng.next() as u8));
    }
    json.push('}');
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.extend_from_slice(&data);
    file
}

#[test]
fn safetensors_with_mixed_dtypes_round_trips_by_header_detection() {
    let dir = scratch("mixed");
    let file = mixed_safetensors(&mut Rng(3));
    // No .safetensors extension: detected by its header.
    let input = dir.join("model.bin");
    std::fs::write(&input, &file).unwrap();
    let (container, back) = round_trip(&dir, &input, &[], "2");
    assert!(back == file);
    assert_eq!(&container[..4], b"NBZN");
}

fn run_fail(args: &[&str]) -> String {
    let out = nandbox(args);
    assert!(!out.status.success(), "nandbox {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_inputs_give_clear_errors_naming_the_chunk() {
    let dir = scratch("errors");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (input, z, back) = (dir.join("in"), dir.join("c.nbzn"), dir.join("back"));

    let err = run_fail(&["zipnn", "compress", &s(&dir.join("missing")), &s(&z)]);
    assert!(
        err.contains("cannot open") && err.contains("missing"),
        "{err}"
    );
    std::fs::write(&input, b"plain text, not weights").unwrap();
    let err = run_fail(&["zipnn", "compress", &s(&input), &s(&z)]);
    assert!(err.contains("--dtype"), "{err}");

    // Four chunks of BF16-like data.
    let mut rng = Rng(77);
    let data: Vec<u8> = (0..4 * 262_144 / 4)
        .flat_map(|_| special_f32(&mut rng).to_le_bytes())
        .collect();
    std::fs::write(&input, &data).unwrap();
    ok(&["zipnn", "compress", &s(&input), &s(&z), "--dtype", "bf16"]);
    let container = std::fs::read(&z).unwrap();
    let damaged = dir.join("damaged");

    // A flipped byte near the end lies in the last chunk (index 3).
    let mut c = container.clone();
    let at = c.len() - 100;
    c[at] ^= 0x10;
    std::fs::write(&damaged, &c).unwrap();
    let err = run_fail(&["zipnn", "decompress", &s(&damaged), &s(&back)]);
    assert!(err.contains("chunk 3"), "{err}");
    assert!(
        !back.exists(),
        "a failed decompress must not leave output behind"
    );

    // Truncation inside the last chunk.
    std::fs::write(&damaged, &container[..container.len() - 7]).unwrap();
    let err = run_fail(&["zipnn", "decompress", &s(&damaged), &s(&back)]);
    assert!(
        err.contains("chunk 3") && err.contains("truncated"),
        "{err}"
    );

    // Bad magic, bad header CRC, trailing garbage.
    let mut c = container.clone();
    c[0] = b'X';
    std::fs::write(&damaged, &c).unwrap();
    assert!(run_fail(&["zipnn", "decompress", &s(&damaged), &s(&back)]).contains("magic"));
    let mut c = container.clone();
    c[17] ^= 1;
    std::fs::write(&damaged, &c).unwrap();
    assert!(run_fail(&["zipnn", "decompress", &s(&damaged), &s(&back)]).contains("header"));
    let mut c = container.clone();
    c.push(0);
    std::fs::write(&damaged, &c).unwrap();
    assert!(run_fail(&["zipnn", "decompress", &s(&damaged), &s(&back)]).contains("trailing"));
}

#[test]
fn mutated_containers_never_decode_to_wrong_data() {
    let dir = scratch("mutate");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (input, z, back, m) = (
        dir.join("in"),
        dir.join("c"),
        dir.join("back"),
        dir.join("m"),
    );
    let mut rng = Rng(0xabcdef);
    let data: Vec<u8> = (0..100_003)
        .map(|i| {
            if i % 2 == 1 {
                0x3c + (rng.next() % 3) as u8
            } else {
                rng.next() as u8
            }
        })
        .collect();
    std::fs::write(&input, &data).unwrap();
    ok(&["zipnn", "compress", &s(&input), &s(&z), "--dtype", "fp16"]);
    let container = std::fs::read(&z).unwrap();
    let mut errors = 0;
    for _ in 0..150 {
        let mut c = container.clone();
        match rng.next() % 3 {
            0 => {
                let i = rng.next() as usize % c.len();
                c[i] ^= 1 << (rng.next() % 8);
            }
            1 => c.truncate(rng.next() as usize % c.len()),
            _ => {
                let i = rng.next() as usize % c.len();
                c.insert(i, rng.next() as u8);
            }
        }
        std::fs::write(&m, &c).unwrap();
        let out = nandbox(&["zipnn", "decompress", &s(&m), &s(&back)]);
        if out.status.success() {
            assert!(
                std::fs::read(&back).unwrap() == data,
                "mutation decoded to wrong data"
            );
        } else {
            errors += 1;
        }
    }
    assert!(errors >= 145, "only {errors} of 150 mutations detected");
}

/// A failed run must not delete a file it never opened, and an output that names the input
/// (the same path, or a symlink to it) is refused before anything is truncated.
#[test]
fn failures_and_same_file_outputs_never_destroy_the_users_files() {
    let dir = scratch("keep");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (input, keep, garbage) = (dir.join("in"), dir.join("keep"), dir.join("garbage"));
    let mut rng = Rng(5);
    let data: Vec<u8> = (0..70_000).map(|_| rng.next() as u8).collect();
    std::fs::write(&input, &data).unwrap();
    std::fs::write(&garbage, b"not a container and not weights").unwrap();

    // The input is missing, not weights, or not a container: `keep` was never opened.
    let (missing, garbage, keep_s) = (s(&dir.join("missing")), s(&garbage), s(&keep));
    for args in [
        ["zipnn", "compress", &missing, &keep_s],
        ["zipnn", "compress", &garbage, &keep_s],
        ["zipnn", "decompress", &garbage, &keep_s],
    ] {
        std::fs::write(&keep, b"precious").unwrap();
        run_fail(&args);
        assert_eq!(
            std::fs::read(&keep).ok().as_deref(),
            Some(&b"precious"[..]),
            "nandbox {args:?} destroyed an output it never wrote"
        );
    }

    // Output = input, by path and through a symlink, for both directions.
    let z = dir.join("c.nbzn");
    ok(&["zipnn", "compress", &s(&input), &s(&z), "--dtype", "bf16"]);
    let container = std::fs::read(&z).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for (cmd, file, out, before) in [
        ("compress", &input, &input, &data),
        ("compress", &input, &link, &data),
        ("decompress", &z, &z, &container),
    ] {
        let mut args = vec!["zipnn", cmd];
        let (f, o) = (s(file), s(out));
        args.extend([f.as_str(), o.as_str()]);
        if cmd == "compress" {
            args.extend(["--dtype", "bf16"]);
        }
        let err = run_fail(&args);
        assert!(err.contains("input"), "{err}");
        assert!(
            std::fs::read(file).ok().as_ref() == Some(before),
            "nandbox {args:?} changed its input"
        );
    }
}

/// `--threads 0` is not silently 1, and an absurd count is refused before it allocates
/// scratch memory per thread (100,000 threads of qstore would want about 60 GB).
#[test]
fn thread_counts_out_of_range_are_refused() {
    let dir = scratch("threads");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (input, out) = (dir.join("in"), dir.join("out"));
    std::fs::write(&input, vec![0x3fu8; 8192]).unwrap();
    for threads in ["0", "100000"] {
        for args in [
            vec!["zipnn", "compress", "--dtype", "bf16"],
            vec!["zipnn", "decompress"],
            vec!["qstore", "pack"],
        ] {
            let (i, o) = (s(&input), s(&out));
            let mut args = args.clone();
            args.extend([i.as_str(), o.as_str(), "--threads", threads]);
            let err = run_fail(&args);
            assert!(err.contains("--threads"), "{args:?}: {err}");
            assert!(!out.exists(), "{args:?} wrote its output");
        }
    }
}

/// A failed run removes a half-written output only when it is a regular file it created: a
/// pipe or device given as the output (`/dev/stdout`, a FIFO; `/dev/null` for a root user) is
/// not the tool's to unlink.
#[test]
fn a_failed_run_never_unlinks_a_pipe_given_as_output() {
    let dir = scratch("fifo");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (input, z, fifo) = (dir.join("in"), dir.join("c.nbzn"), dir.join("fifo"));
    let mut rng = Rng(9);
    let data: Vec<u8> = (0..600_000).map(|_| rng.next() as u8).collect();
    std::fs::write(&input, &data).unwrap();
    ok(&["zipnn", "compress", &s(&input), &s(&z), "--dtype", "bf16"]);
    // Cut inside the second chunk: the header is good, so the output is opened and written.
    let container = std::fs::read(&z).unwrap();
    std::fs::write(&z, &container[..container.len() - 1000]).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    // The reader blocks until a writer opens the fifo: its result comes through a channel with
    // a time limit, so a run that never opens it fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read(fifo).map(|v| v.len())));
    }
    let err = run_fail(&["zipnn", "decompress", &s(&z), &s(&fifo)]);
    assert!(err.contains("truncated"), "{err}");
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the run never opened the fifo")
        .expect("read the fifo");
    let kind = std::fs::symlink_metadata(&fifo).map(|m| m.file_type());
    use std::os::unix::fs::FileTypeExt;
    assert!(
        kind.is_ok_and(|k| k.is_fifo()),
        "the failed run unlinked the fifo it was given"
    );
}
