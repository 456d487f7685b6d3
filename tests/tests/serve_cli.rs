//! `nandbox serve` and `nandbox stats` used the way a new user would, with the mistakes a new
//! user makes: a second server on an image or socket already in use, an image reopened with
//! other flags, an impossible size, an unwritable stats file, `stats` pointed at the wrong
//! port. Each case must end in a clear error naming the problem, or in a device that reports
//! what it really is, never in a panic, a silently wrong device or a corrupted image.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{http_get, nandbox_bin, run, Server};

/// `nandbox serve` with `args` that is expected to exit by itself (refusing to start); returns
/// its exit status success and its stderr. A server that starts instead is killed at the time
/// limit and fails the test.
fn serve_expecting_exit(args: &[&str]) -> (bool, String) {
    let port = nandbox_tests::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = run(
        Command::new(nandbox_bin())
            .args(["serve", "--listen", &listen, "--control", "none"])
            .args(args),
        Duration::from_secs(30),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_server_on_an_image_in_use_is_refused() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap();
    let args = ["--size", "16MiB", "--image", image_s];
    let mut first = Server::start(&args);
    // Two devices writing one image would each program pages the other thinks erased.
    let (ok, err) = serve_expecting_exit(&args);
    assert!(!ok, "a second server on {image_s} started");
    assert!(err.contains("in use"), "{err}");
    // The lock dies with its holder, even by kill -9: a restart is never blocked by it.
    first.kill9();
    first.restart(&args);
}

#[test]
fn a_reopened_image_reports_its_own_size_and_profile_and_refuses_another_profile() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap();
    let mut server = Server::start(&["--size", "16MiB", "--profile", "slc", "--image", image_s]);
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{}", server.log_text());

    // Reopened with the defaults' flags: the image's 16 MiB and slc, not 1 GiB and tlc.
    server.restart(&["--size", "1GiB", "--image", image_s]);
    let log = server.log_text();
    assert!(
        log.contains("serving 16777216 bytes (slc)"),
        "the startup line must describe the image's device: {log}"
    );
    let (_, body) = http_get(&server.control, "/stats");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(stats["device"]["logical_bytes"], 16 << 20, "{body}");
    assert_eq!(stats["device"]["profile"], "slc", "{body}");
    assert_eq!(stats["device"]["pe_cycles"], 100_000, "{body}");
    assert_eq!(stats["device"]["page_bytes"], 4096, "{body}");
    server.kill9();

    // Naming another profile for it is a mistake, not a device with tlc timings and endurance
    // on slc geometry.
    let (ok, err) = serve_expecting_exit(&["--profile", "tlc", "--image", image_s]);
    assert!(!ok, "--profile tlc on an slc image started");
    assert!(
        err.contains("--profile tlc") && err.contains("slc"),
        "{err}"
    );
}

#[test]
fn a_unix_socket_in_use_is_not_taken_over() {
    let first = Server::start_unix(&["--size", "16MiB"]);
    let nandbox_tests::Endpoint::Unix(sock) = first.endpoint.clone() else {
        unreachable!("started on a unix socket")
    };
    let (ok, err) = serve_expecting_exit(&["--unix", sock.to_str().unwrap()]);
    assert!(!ok, "a second server took over {}", sock.display());
    assert!(err.contains("in use"), "{err}");
    // The first server still has its socket.
    std::os::unix::net::UnixStream::connect(&sock)
        .unwrap_or_else(|e| panic!("the first server lost {}: {e}", sock.display()));
}

#[test]
fn a_stale_unix_socket_is_replaced() {
    let dir = nandbox_tests::scratch_dir();
    let sock = dir.path().join("stale.sock");
    // A socket file nobody accepts on, as a killed server leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let server = Server::start(&["--size", "16MiB", "--unix", sock.to_str().unwrap()]);
    std::os::unix::net::UnixStream::connect(&sock).expect("the new server listens on it");
    drop(server);
}

#[test]
fn a_size_beyond_the_profile_fails_at_once_naming_the_largest_that_fits() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("big.img");
    let image_s = image.to_str().unwrap();
    // 1 TiB of slc: its mapping would not fit one checkpoint pack in a 64-page block.
    let (ok, err) =
        serve_expecting_exit(&["--profile", "slc", "--size", "1TiB", "--image", image_s]);
    assert!(!ok, "a 1 TiB slc device started");
    assert!(
        err.contains("too large for the slc profile") && !err.contains("needs 0 good blocks"),
        "{err}"
    );
    assert!(!image.exists(), "a refused size left an image behind");
    let largest: u64 = err
        .split("the largest slc device is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no largest size in: {err}"));
    // The limit it names is the real one: one block more fails, the limit itself serves.
    let over = (largest + 4096).to_string();
    let (ok, err) = serve_expecting_exit(&["--profile", "slc", "--size", &over]);
    assert!(!ok && err.contains("too large"), "{err}");
    let server = Server::start(&["--profile", "slc", "--size", &largest.to_string()]);
    assert!(
        server
            .log_text()
            .contains(&format!("serving {largest} bytes (slc)")),
        "{}",
        server.log_text()
    );
}

#[test]
fn an_unwritable_stats_out_is_refused_before_serving() {
    let dir = nandbox_tests::scratch_dir();
    // Found only at shutdown, this would lose the final stats of the whole run.
    for bad in [
        dir.path().join("missing/stats.json"),
        dir.path().to_path_buf(),
    ] {
        let (ok, err) =
            serve_expecting_exit(&["--size", "16MiB", "--stats-out", bad.to_str().unwrap()]);
        assert!(!ok, "serve started with --stats-out {}", bad.display());
        assert!(err.contains("--stats-out"), "{err}");
    }
    // A writable path is not left behind by the check.
    let fine = dir.path().join("stats.json");
    let server = Server::start(&["--size", "16MiB", "--stats-out", fine.to_str().unwrap()]);
    assert!(!fine.exists(), "the check left {} behind", fine.display());
    drop(server);
}

#[test]
fn stats_with_a_bad_watch_interval_or_a_silent_port_fails_with_a_clear_error() {
    // Something listening that is not a control endpoint: it accepts (the kernel's backlog)
    // and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = nandbox_tests::nandbox_cli(&["stats", "--control", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("control endpoint") && err.contains(&addr),
        "{err}"
    );

    for watch in ["1e30", "0", "nan"] {
        let out = nandbox_tests::nandbox_cli(&["stats", "--control", &addr, "--watch", watch]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--watch {watch}");
        assert!(err.contains("--watch"), "--watch {watch}: {err}");
    }
}

#[test]
fn a_trace_or_stats_file_naming_the_image_or_trace_is_refused() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap();
    let mut server = Server::start(&["--size", "16MiB", "--image", image_s]);
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{}", server.log_text());
    let before = nandbox_tests::sha256_file(&image);
    // The same file by another spelling, as a slip of tab completion would give.
    let other_spelling = format!("{}/./dev.img", dir.path().display());
    for flag in ["--trace", "--stats-out"] {
        let (ok, err) = serve_expecting_exit(&["--image", image_s, flag, &other_spelling]);
        assert!(!ok, "serve started with {flag} over its image");
        assert!(err.contains("same file"), "{err}");
        assert_eq!(
            nandbox_tests::sha256_file(&image),
            before,
            "{flag} over the image changed it"
        );
    }
    // A replay snapshot over the trace it reads.
    let trace = dir.path().join("t.trace");
    let trace_s = trace.to_str().unwrap();
    let mut server = Server::start(&["--size", "16MiB", "--trace", trace_s]);
    server.signal_and_wait("TERM", Duration::from_secs(60));
    let before = nandbox_tests::sha256_file(&trace);
    let out =
        nandbox_tests::nandbox_cli(&["replay", trace_s, "--snapshot", &format!("0={trace_s}")]);
    assert!(
        !out.status.success(),
        "replay wrote a snapshot over its trace"
    );
    assert_eq!(nandbox_tests::sha256_file(&trace), before);
}

#[test]
fn a_read_only_export_leaves_its_image_unchanged_and_offline_tools_wait_for_the_writer() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap();
    let mut writer = Server::start(&["--size", "16MiB", "--image", image_s]);
    // An offline check of an image a device is writing would read pages changing under it.
    for tool in [["check", "--image", image_s], ["wear", "--image", image_s]] {
        let out = nandbox_tests::nandbox_cli(&tool);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tool:?} ran on an image in use");
        assert!(err.contains("in use"), "{tool:?}: {err}");
    }
    let status = writer.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{}", writer.log_text());
    let before = nandbox_tests::sha256_file(&image);

    // Served read-only (its mount writes a checkpoint, into RAM), then stopped cleanly.
    let mut reader = Server::start(&["--read-only", "--image", image_s]);
    // Readers share the image; a writer may not change it under them.
    let (ok, err) = serve_expecting_exit(&["--image", image_s]);
    assert!(!ok && err.contains("in use"), "{err}");
    let out = nandbox_tests::nandbox_cli(&["check", "--image", image_s]);
    assert!(
        out.status.success(),
        "check beside a read-only export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = reader.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{}", reader.log_text());
    assert_eq!(
        nandbox_tests::sha256_file(&image),
        before,
        "serve --read-only changed its image"
    );
}

#[test]
fn an_empty_image_file_is_named_as_empty_and_left_alone() {
    let dir = nandbox_tests::scratch_dir();
    // What `mktemp` or `touch` leaves: not an image, and not one truncated from a geometry.
    let image = dir.path().join("empty.img");
    std::fs::write(&image, b"").unwrap();
    let (ok, err) = serve_expecting_exit(&["--size", "16MiB", "--image", image.to_str().unwrap()]);
    assert!(!ok, "serve started on an empty file");
    assert!(
        err.contains("empty") && !err.contains("geometry needs"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 0);
}

#[test]
fn replay_snapshot_files_are_checked_before_the_replay_runs() {
    let dir = nandbox_tests::scratch_dir();
    let trace = dir.path().join("t.trace");
    let trace_s = trace.to_str().unwrap();
    let mut server = Server::start(&["--size", "16MiB", "--trace", trace_s]);
    server.signal_and_wait("TERM", Duration::from_secs(60));
    let missing = dir.path().join("missing/at1.json");
    let late = dir.path().join("late.json");
    // The unwritable snapshot comes after a good one: nothing may be written before refusing.
    let args = [
        "replay".to_string(),
        trace_s.to_string(),
        "--snapshot".into(),
        format!("0={}", late.display()),
        "--snapshot".into(),
        format!("1={}", missing.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = nandbox_tests::nandbox_cli(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--snapshot") && err.contains("missing"),
        "{err}"
    );
    assert!(
        !late.exists(),
        "a snapshot was written before the bad one was refused"
    );

    let out = nandbox_tests::nandbox_cli(&["replay", trace_s, "--snapshot", "3="]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no FILE"), "{err}");
}

#[test]
fn an_export_name_longer_than_nbd_allows_is_refused() {
    let long = "a".repeat(4097);
    let (ok, err) = serve_expecting_exit(&["--size", "16MiB", "--export", &long]);
    assert!(!ok, "served an export name clients cannot list");
    assert!(err.contains("--export") && err.contains("4096"), "{err}");
}

#[test]
fn stats_pointed_at_the_nbd_port_says_so() {
    let server = Server::start(&["--size", "16MiB"]);
    let nbd = format!("127.0.0.1:{}", server.port());
    for tool in ["stats", "wear"] {
        let out = nandbox_tests::nandbox_cli(&[tool, "--control", &nbd]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tool} read stats from an NBD port");
        assert!(
            err.contains("NBD port") && err.contains(&nbd),
            "{tool}: {err}"
        );
    }
}
