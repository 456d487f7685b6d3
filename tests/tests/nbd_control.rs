//! The control endpoint and the process life cycle: GET /stats and /metrics while serving,
//! `nandbox stats`, and a clean SIGTERM/SIGINT that flushes, writes `--stats-out` and exits 0.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{http_get, nandbox_bin, run_ok, Server};

fn write_some(server: &Server, bytes: usize) {
    let out = run_ok(
        Command::new("/usr/bin/python3").args([
            "-c",
            "import sys, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             h.pwrite(b'x' * int(sys.argv[2]), 0)\nh.pread(4096, 0)\nh.flush()\nprint('ok')",
            &server.uri(),
            &bytes.to_string(),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.contains("ok"));
}

#[test]
fn stats_json_and_prometheus_metrics_count_host_io() {
    let server = Server::start(&["--size", "16MiB"]);
    write_some(&server, 1 << 20);
    let (status, body) = http_get(&server.control, "/stats");
    assert!(status.contains("200"), "{status}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    for key in [
        "host_read_bytes",
        "host_write_bytes",
        "nand_read_pages",
        "nand_program_pages",
        "nand_erase_blocks",
        "waf",
    ] {
        assert!(stats[key].is_number(), "{key} missing in {stats}");
    }
    for cause in [
        "data",
        "delta",
        "node",
        "compact",
        "gc",
        "checkpoint",
        "padding",
        "total",
    ] {
        assert!(
            stats["nand_program_bytes"][cause].is_number(),
            "nand_program_bytes.{cause} missing"
        );
    }
    for k in ["min", "max", "mean"] {
        assert!(
            stats["erase_count"][k].is_number(),
            "erase_count.{k} missing"
        );
    }
    assert!(
        stats["host_write_bytes"].as_u64().unwrap() >= 1 << 20,
        "{stats}"
    );
    assert!(
        stats["host_read_bytes"].as_u64().unwrap() >= 4096,
        "{stats}"
    );

    let (status, metrics) = http_get(&server.control, "/metrics");
    assert!(status.contains("200"), "{status}");
    let written = stats["host_write_bytes"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!("nandbox_host_write_bytes_total {written}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE nandbox_host_write_bytes_total counter"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nandbox_nand_program_bytes_total{cause=\"gc\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("nandbox_waf "), "{metrics}");
    assert!(metrics.contains("nandbox_erase_count_max "), "{metrics}");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        assert!(name.starts_with("nandbox_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    let (status, _) = http_get(&server.control, "/nope");
    assert!(status.contains("404"), "{status}");

    let table = run_ok(
        Command::new(nandbox_bin()).args(["stats", "--control", &server.control]),
        Duration::from_secs(30),
    );
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("writes ") && l.contains(&written.to_string())),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("gc ")),
        "{table}"
    );
    let json = run_ok(
        Command::new(nandbox_bin()).args(["stats", "--json", "--control", &server.control]),
        Duration::from_secs(30),
    );
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("stats --json is JSON");
    assert_eq!(parsed["host_write_bytes"], stats["host_write_bytes"]);
}

#[test]
fn sigterm_and_sigint_flush_write_stats_out_and_exit_zero() {
    for signal in ["TERM", "INT"] {
        let dir = nandbox_tests::scratch_dir();
        let out = dir.path().join("final.json");
        let out_s = out.to_str().unwrap().to_string();
        let mut server = Server::start(&["--size", "16MiB", "--stats-out", &out_s]);
        write_some(&server, 65536);
        let status = server.signal_and_wait(signal, Duration::from_secs(30));
        assert!(
            status.success(),
            "exit after SIG{signal}: {status}\n{}",
            server.log_text()
        );
        let text = std::fs::read_to_string(&out).expect("--stats-out written");
        let stats: serde_json::Value = serde_json::from_str(&text).expect("final stats JSON");
        assert!(
            stats["host_write_bytes"].as_u64().unwrap() >= 65536,
            "{stats}"
        );
    }
}

#[test]
fn sigterm_with_a_client_still_connected_exits_cleanly() {
    use std::io::BufRead;
    let dir = nandbox_tests::scratch_dir();
    let out = dir.path().join("final.json");
    let out_s = out.to_str().unwrap().to_string();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap().to_string();
    let args = ["--size", "16MiB", "--image", &image_s];
    let mut server = Server::start(&[&args[..], &["--stats-out", &out_s]].concat());
    let mut client = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, time, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             h.pwrite(b'y' * 1048576, 0)\nprint('ready', flush=True)\ntime.sleep(60)",
            &server.uri(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start python client");
    let mut line = String::new();
    std::io::BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let status = server.signal_and_wait("TERM", Duration::from_secs(30));
    let _ = client.kill();
    let _ = client.wait();
    assert!(status.success(), "{status}\n{}", server.log_text());
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(
        stats["host_write_bytes"].as_u64().unwrap() >= 1 << 20,
        "{stats}"
    );
    assert!(
        stats["nand_program_pages"].as_u64().unwrap() > 0,
        "the final flush programmed nothing: {stats}"
    );
    // The client never flushed: the shutdown's flush is what makes its write survive.
    server.restart(&args);
    let out = run_ok(
        Command::new("/usr/bin/python3").args([
            "-c",
            "import sys, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             assert h.pread(1048576, 0) == b'y' * 1048576\nprint('ok')",
            &server.uri(),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.contains("ok"));
}

#[test]
fn serve_refuses_bad_sizes_and_non_loopback_control() {
    for (args, why) in [
        (vec!["--size", "1000"], "multiple of 4096"),
        (vec!["--size", "1PB"], "suffix"),
        (vec!["--control", "0.0.0.0:0"], "loopback"),
    ] {
        let out = nandbox_tests::run(
            Command::new(nandbox_bin())
                .arg("serve")
                .args(["--listen", "127.0.0.1:0"])
                .args(&args),
            Duration::from_secs(30),
        );
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let help = run_ok(
        Command::new(nandbox_bin()).args(["serve", "--help"]),
        Duration::from_secs(30),
    );
    for flag in [
        "--listen",
        "--unix",
        "--size",
        "--image",
        "--profile",
        "--latency",
        "--control",
        "--read-only",
        "--export",
        "--stats-out",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn sigint_removes_the_unix_socket() {
    let mut server = Server::start_unix(&["--size", "16MiB"]);
    let nandbox_tests::Endpoint::Unix(path) = server.endpoint.clone() else {
        unreachable!()
    };
    assert!(path.exists());
    let status = server.signal_and_wait("INT", Duration::from_secs(30));
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "socket file left behind");
}

/// Eight 4 KiB writes, each followed by a FLUSH, at distinct offsets of 0x5a-filled blocks
/// numbered in their first byte.
fn write_flush_eight(server: &Server) {
    let out = run_ok(
        Command::new("/usr/bin/python3").args([
            "-c",
            "import sys, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             for i in range(8):\n    h.pwrite(bytes([i]) + b'\\x5a' * 4095, i * 65536)\n    h.flush()\n\
             print('ok')",
            &server.uri(),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.contains("ok"));
}

/// `--plp on`: a FLUSH programs no padding (the write buffer is durable), SIGTERM runs the
/// power-fail dump, and the image reopens with every write; `--plp off` pads every flush.
#[test]
fn plp_flushes_program_no_padding_and_sigterm_dumps_the_buffer() {
    let mut padding = Vec::new();
    for plp in ["off", "on"] {
        let dir = nandbox_tests::scratch_dir();
        let out = dir.path().join("final.json");
        let image = dir.path().join("dev.img");
        let (out_s, image_s) = (out.to_str().unwrap(), image.to_str().unwrap());
        let args = [
            "--size",
            "16MiB",
            "--profile",
            "tlc",
            "--image",
            image_s,
            "--plp",
            plp,
        ];
        let mut server = Server::start(&[&args[..], &["--stats-out", out_s]].concat());
        write_flush_eight(&server);
        let status = server.signal_and_wait("TERM", Duration::from_secs(30));
        assert!(status.success(), "{status}\n{}", server.log_text());
        let stats: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        padding.push(stats["nand_program_bytes"]["padding"].as_u64().unwrap());
        assert_eq!(stats["device"]["plp"], (plp == "on"), "{stats}");

        server.restart(&args);
        let got = run_ok(
            Command::new("/usr/bin/python3").args([
                "-c",
                "import sys, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
                 print(all(h.pread(4096, i * 65536) == bytes([i]) + b'\\x5a' * 4095 \
                 for i in range(8)))",
                &server.uri(),
            ]),
            Duration::from_secs(60),
        );
        assert_eq!(
            got.trim(),
            "True",
            "--plp {plp}: data after SIGTERM and reopen"
        );
    }
    // tlc pages hold four 4 KiB slots: each of the eight flushes pads three without PLP; with
    // it only the final dump may pad one page.
    assert!(
        padding[0] >= 8 * 3 * 4096,
        "--plp off padding {}",
        padding[0]
    );
    assert!(padding[1] <= 3 * 4096, "--plp on padding {}", padding[1]);
}
