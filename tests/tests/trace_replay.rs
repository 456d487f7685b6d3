//! Block traces: `nandbox serve --trace` records what a real client made the device do, and
//! `nandbox replay` runs it through a fresh device. With the same settings the replay programs
//! exactly the NAND bytes the live device did (background steps included, where they ran);
//! with other settings it shows what they cost on the same workload; a damaged trace is refused
//! by name.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{http_get, nandbox_bin, run, run_ok, scratch_dir, Server};

fn http_stats(addr: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, "/stats");
    assert!(status.contains("200"), "{status}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// Fills 4 MiB, then updates 300 random blocks in a few bytes each (deltas), trims and zeroes a
/// little, reads some back, flushing as it goes.
const CLIENT: &str = "
import sys, random, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
rng = random.Random(5)
blocks = [bytearray(rng.randbytes(4096)) for _ in range(1024)]
h.pwrite(b''.join(blocks), 0)
h.flush()
for k in range(300):
    b = rng.randrange(1024)
    at = rng.randrange(4000)
    blocks[b][at:at + 40] = rng.randbytes(40)
    h.pwrite(bytes(blocks[b]), b * 4096)
    if k % 10 == 9:
        h.flush()
    if k % 7 == 0:
        assert h.pread(4096, b * 4096) == bytes(blocks[b])
h.trim(65536, 8 << 20)
h.zero(4096, 12 << 20)
h.pwrite(b'tail' * 128, (4 << 20) + 512)
h.flush()
print('ok')
";

#[test]
fn a_replay_with_the_same_settings_programs_what_the_live_device_did() {
    let dir = scratch_dir();
    let trace = dir.path().join("run.trace");
    let trace_s = trace.to_str().unwrap();
    let mut server = Server::start(&["--size", "64MiB", "--trace", trace_s]);
    let out = run_ok(
        Command::new("/usr/bin/python3").args(["-c", CLIENT, &server.uri()]),
        Duration::from_secs(120),
    );
    assert!(out.contains("ok"), "{out}");
    let live = http_stats(&server.control);
    let records = live["trace_records"]
        .as_u64()
        .expect("trace_records in /stats");
    assert!(records > 300, "{live}");
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{status:?}");

    // Same settings: the counters at that record are the live device's, byte for byte.
    let snap = dir.path().join("snap.json");
    let snap_arg = format!("{records}={}", snap.display());
    let end = run_ok(
        Command::new(nandbox_bin()).args(["replay", trace_s, "--snapshot", &snap_arg, "--json"]),
        Duration::from_secs(120),
    );
    let replayed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&snap).expect("snapshot written"))
            .expect("snapshot JSON");
    for key in [
        "host_write_bytes",
        "host_writes",
        "nand_program_bytes",
        "nand_erase_blocks",
    ] {
        assert_eq!(
            replayed[key], live[key],
            "{key}: replay {replayed} live {live}"
        );
    }
    assert_eq!(replayed["delta"]["inlined"], live["delta"]["inlined"]);
    assert!(live["delta"]["inlined"].as_u64().unwrap() >= 100, "{live}");
    let end: serde_json::Value = serde_json::from_str(&end).expect("replay --json");
    assert!(
        end["host_write_bytes"].as_u64() >= live["host_write_bytes"].as_u64(),
        "{end}"
    );

    // Another setting, the same workload: delta off programs more for the updates.
    let off = run_ok(
        Command::new(nandbox_bin()).args(["replay", trace_s, "--delta", "off", "--json"]),
        Duration::from_secs(120),
    );
    let off: serde_json::Value = serde_json::from_str(&off).expect("replay --json");
    assert_eq!(off["host_write_bytes"], end["host_write_bytes"]);
    assert_eq!(off["delta"]["inlined"], 0);
    assert!(
        off["nand_program_bytes"]["total"].as_u64() > end["nand_program_bytes"]["total"].as_u64(),
        "delta off {} vs on {}",
        off["nand_program_bytes"],
        end["nand_program_bytes"]
    );

    // A trace cut inside a write's data is refused, naming where.
    let bytes = std::fs::read(&trace).unwrap();
    let cut = dir.path().join("cut.trace");
    std::fs::write(&cut, &bytes[..24 + 24 + 1000]).unwrap();
    let out = run(
        Command::new(nandbox_bin()).args(["replay", cut.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a cut trace replayed: {err}");
    assert!(
        err.contains("trace record at byte") && err.contains("truncated"),
        "{err}"
    );
    // Not a trace at all.
    let out = run(
        Command::new(nandbox_bin()).args(["replay", "/etc/hostname"]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a nandbox trace"),
        "{err}"
    );
}
