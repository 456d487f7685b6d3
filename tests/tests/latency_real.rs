//! `serve --latency real` through a real client: replies wait for the modelled NAND time, and the
//! stats count every reply that had a due time and say how late the server sent it.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{nandbox_bin, run_ok, Server};

fn stats(server: &Server) -> serde_json::Value {
    let out = run_ok(
        Command::new(nandbox_bin()).args(["stats", "--json", "--control", &server.control]),
        Duration::from_secs(30),
    );
    serde_json::from_str(&out).expect("stats --json prints JSON")
}

#[test]
fn real_latency_replies_wait_for_the_model_and_are_counted() {
    let server = Server::start_unix(&["--size", "16MiB", "--latency", "real"]);
    // One 512 KiB write of random bytes (which nothing codes or packs), a flush (so the reads come from NAND, not the write buffer), then 20
    // 4 KiB reads one at a time, each of another page (a page still in its die's register would
    // cost only its transfer); the client times the reads.
    let out = run_ok(
        Command::new("/usr/bin/python3").args([
            "-c",
            "import os, sys, time, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             d = os.urandom(524288)\nh.pwrite(d, 0)\nh.flush()\nt = time.monotonic()\n\
             for i in range(20):\n    o = i * 4 * 4096\n    assert h.pread(4096, o) == d[o:o + 4096]\n\
             print(time.monotonic() - t)",
            &server.uri(),
        ]),
        Duration::from_secs(60),
    );
    let reads_s: f64 = out.trim().parse().expect("elapsed seconds");
    let s = stats(&server);
    let d = &s["device"];
    let page = d["page_bytes"].as_f64().unwrap();
    let spare = page / 4096.0 * 64.0;
    let model_s = d["read_ns"].as_f64().unwrap() / 1e9
        + (page + spare) / d["channel_mb_s"].as_f64().unwrap() / 1e6;
    // A QD1 read cannot be answered before its modelled time: 20 of them take at least 20 times it.
    assert!(
        reads_s >= 20.0 * model_s,
        "20 reads took {reads_s} s, under 20 x the model's {model_s} s"
    );
    let l = &s["latency"];
    assert_eq!(l["reads"], 20, "{l}");
    // Every request the firmware ran in real mode had a due time: the write, the flush, the reads.
    assert_eq!(l["replies"], 22, "{l}");
    let p50 = l["reply_late_p50_ns"].as_u64().unwrap();
    let p99 = l["reply_late_p99_ns"].as_u64().unwrap();
    assert!(p50 <= p99, "{l}");
    let table = run_ok(
        Command::new(nandbox_bin()).args(["stats", "--control", &server.control]),
        Duration::from_secs(30),
    );
    assert!(table.contains("replies sent"), "{table}");
    assert!(
        table.contains("after their modelled time (22 replies)"),
        "{table}"
    );
}
