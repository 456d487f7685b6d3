//! Coded blocks through the real binary (issue 5, in the device): each fixture's tensor payload
//! is written over NBD with nbdcopy to `nandbox serve` (compress on by default), read back
//! bit-exact (sha256), and the control endpoint, `/metrics` and `nandbox stats` show the blocks
//! coded and the bytes saved; with `--compress off` nothing is coded and the NAND bytes
//! programmed are higher.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{fixtures_dir, nandbox_bin, require_tool, run_ok, sha256_file, Server};

const TIMEOUT: Duration = Duration::from_secs(120);

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect control endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .expect("HTTP response")
        .1
        .to_string()
}

fn stats(server: &Server) -> serde_json::Value {
    serde_json::from_str(&http_get(&server.control, "/stats")).expect("stats JSON")
}

/// Writes the payload of `fixture` (padded to whole 4 KiB blocks) to a fresh device and reads
/// it back; returns (blocks, stats after).
fn round_trip(fixture: &str, extra: &[&str]) -> (u64, serde_json::Value, Server) {
    let bytes = std::fs::read(fixtures_dir().join(fixture)).expect("fixture");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut payload = bytes[8 + n..].to_vec();
    payload.resize(payload.len().next_multiple_of(4096), 0);
    let mut args = vec!["--size", "32MiB"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let dir = nandbox_tests::scratch_dir();
    let src = dir.path().join("payload.bin");
    let back = dir.path().join("back.bin");
    std::fs::write(&src, &payload).unwrap();
    let nbdcopy = require_tool("nbdcopy");
    let uri = server.uri();
    run_ok(
        Command::new(&nbdcopy).args(["--flush", src.to_str().unwrap(), &uri]),
        TIMEOUT,
    );
    run_ok(
        Command::new(&nbdcopy).args([&uri, back.to_str().unwrap()]),
        TIMEOUT,
    );
    let f = std::fs::OpenOptions::new().write(true).open(&back).unwrap();
    f.set_len(payload.len() as u64).unwrap();
    drop(f);
    assert_eq!(
        sha256_file(&src),
        sha256_file(&back),
        "{fixture}: read back differs"
    );
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
