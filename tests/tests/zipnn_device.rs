//! Coded blocks through the real binary (issue 5, in the device): each fixture's tensor payload
//! is written over NBD with nbdcopy to `nandbox serve` (compress on by default), read back
//! bit-exact (sha256), and the control endpoint, `/metrics` and `nandbox stats` show the blocks
//! coded and the bytes saved; with `--compress off` nothing is coded and the NAND bytes
//! programmed are higher.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nandbox_tests::{fixtures_dir, nandbox_bin, require_tool, run_ok, sha256_file, Server};

const TIMEOUT: Duration = Duration::from_secs(120);

fn http_get(addr: &str, path: &str) -> String {
    let (status, body) = nandbox_tests::http_get(addr, path);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    body
}

fn stats(server: &Server) -> serde_json::Value {
    serde_json::from_str(&http_get(&server.control, "/stats")).expect("stats JSON")
}

/// The tensor payload of `fixture` (the bytes after its safetensors header), zero-padded to
/// whole 4 KiB blocks.
fn payload(fixture: &str) -> Vec<u8> {
    let bytes = std::fs::read(fixtures_dir().join(fixture)).expect("fixture");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut payload = bytes[8 + n..].to_vec();
    payload.resize(payload.len().next_multiple_of(4096), 0);
    payload
}

/// Copies file `src` to the device at `uri` with nbdcopy, flushed.
fn write_over_nbd(uri: &str, src: &Path) {
    let nbdcopy = require_tool("nbdcopy");
    run_ok(
        Command::new(&nbdcopy).args(["--flush", src.to_str().unwrap(), uri]),
        TIMEOUT,
    );
}

/// Reads the device at `uri` into `back` with nbdcopy and checks its first `src`-length bytes
/// equal file `src`.
fn assert_reads_back(uri: &str, src: &Path, back: &Path, what: &str) {
    let nbdcopy = require_tool("nbdcopy");
    run_ok(
        Command::new(&nbdcopy).args([uri, back.to_str().unwrap()]),
        TIMEOUT,
    );
    let f = std::fs::OpenOptions::new().write(true).open(back).unwrap();
    f.set_len(std::fs::metadata(src).unwrap().len()).unwrap();
    drop(f);
    assert_eq!(
        sha256_file(src),
        sha256_file(back),
        "{what}: read back differs"
    );
}

/// Writes the payload of `fixture` to a fresh device and reads it back; returns (blocks, stats
/// after).
fn round_trip(fixture: &str, extra: &[&str]) -> (u64, serde_json::Value, Server) {
    let payload = payload(fixture);
    let mut args = vec!["--size", "32MiB"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let dir = nandbox_tests::scratch_dir();
    let src = dir.path().join("payload.bin");
    std::fs::write(&src, &payload).unwrap();
    write_over_nbd(&server.uri(), &src);
    assert_reads_back(&server.uri(), &src, &dir.path().join("back.bin"), fixture);
    let st = stats(&server);
    ((payload.len() / 4096) as u64, st, server)
}

#[test]
fn fixtures_round_trip_over_nbd_and_stats_show_coded_blocks() {
    for fixture in [
        "minilm-l0l5-bf16.safetensors",
        "minilm-l0l5-f16.safetensors",
        "minilm-l0l5-f32.safetensors",
    ] {
        let (blocks, st, server) = round_trip(fixture, &[]);
        let coded = st["zipnn"]["blocks_coded"]
            .as_u64()
            .expect("zipnn.blocks_coded");
        let saved = st["zipnn"]["bytes_saved"]
            .as_u64()
            .expect("zipnn.bytes_saved");
        assert!(
            coded as f64 >= 0.97 * blocks as f64,
            "{fixture}: {coded} of {blocks} coded"
        );
        assert!(saved > blocks * 400, "{fixture}: saved {saved}");
        assert!(st["zipnn"]["coded_reads"].as_u64().unwrap() >= coded);
        let metrics = http_get(&server.control, "/metrics");
        assert!(
            metrics.contains(&format!("nandbox_zipnn_blocks_coded {coded}\n")),
            "{metrics}"
        );
        let table = run_ok(
            Command::new(nandbox_bin()).args(["stats", "--control", &server.control]),
            Duration::from_secs(30),
        );
        assert!(table.contains("zipnn.blocks_coded"), "{table}");
    }
}

#[test]
fn compress_off_codes_nothing_and_programs_more() {
    let fixture = "minilm-l0l5-bf16.safetensors";
    let (_, on, _s1) = round_trip(fixture, &["--compress", "on"]);
    let (_, off, _s2) = round_trip(fixture, &["--compress", "off"]);
    assert_eq!(off["zipnn"]["blocks_coded"], 0);
    let total = |s: &serde_json::Value| s["nand_program_bytes"]["total"].as_u64().unwrap();
    assert!(
        (total(&on) as f64) < 0.8 * total(&off) as f64,
        "on {} off {}",
        total(&on),
        total(&off)
    );
}

/// The BF16 payload with the low 4 mantissa bits of every 50th element changed: a sparse
/// fine-tuning step.
fn fine_tuned(payload: &[u8]) -> Vec<u8> {
    let mut p = payload.to_vec();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for e in (0..p.len() / 2).step_by(50) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[2 * e] = (p[2 * e] & 0xF0) | (x as u8 & 0x0F);
    }
    p
}

/// A checkpoint rewritten after a fine-tuning step (2% of the BF16 weights changed in their
/// low mantissa bits) is kept as deltas over the coded blocks: the device counts them, the
/// rewrite programs far fewer NAND bytes than with `--delta off` (each block coded whole
/// again), and the new checkpoint reads back exact, also after kill -9 and a restart on the
/// image.
#[test]
fn a_fine_tuning_step_is_stored_as_deltas_over_coded_blocks() {
    let payload = payload("minilm-l0l5-bf16.safetensors");
    let blocks = (payload.len() / 4096) as u64;
    let step = fine_tuned(&payload);
    let dir = nandbox_tests::scratch_dir();
    let (first, second, back) = (
        dir.path().join("first.bin"),
        dir.path().join("second.bin"),
        dir.path().join("back.bin"),
    );
    std::fs::write(&first, &payload).unwrap();
    std::fs::write(&second, &step).unwrap();
    let total = |s: &serde_json::Value| s["nand_program_bytes"]["total"].as_u64().unwrap();
    let mut cost = Vec::new();
    for delta in ["off", "on"] {
        let image = dir.path().join(format!("delta-{delta}.img"));
        let image = image.to_str().unwrap();
        let args = ["--size", "32MiB", "--delta", delta, "--image", image];
        let mut server = Server::start(&args);
        let uri = server.uri();
        for f in [&first, &second] {
            let before = stats(&server);
            write_over_nbd(&uri, f);
            let after = stats(&server);
            if f == &second {
                cost.push(total(&after) - total(&before));
                let inlined = after["delta"]["inlined"].as_u64().unwrap()
                    - before["delta"]["inlined"].as_u64().unwrap();
                if delta == "on" {
                    assert!(
                        inlined * 2 >= blocks,
                        "{inlined} deltas for {blocks} blocks"
                    );
                } else {
                    assert_eq!(inlined, 0);
                }
            }
        }
        server.kill9();
        server.restart(&args);
        assert_reads_back(
            &server.uri(),
            &second,
            &back,
            &format!("delta {delta}: the fine-tuned checkpoint after a restart"),
        );
    }
    assert!(
        cost[1] * 2 < cost[0],
        "rewrite: {} NAND bytes with delta on, {} with it off",
        cost[1],
        cost[0]
    );
}
