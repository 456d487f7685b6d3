//! Real clients against the real binary: qemu-io, nbdcopy, fio's nbd engine, two libnbd
//! connections sharing one device, and a kill -9 and restart of an `--image` device.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{pseudo_random, require_tool, run, run_ok, sha256_file, Server};

const TIMEOUT: Duration = Duration::from_secs(300);
const PYTHON: &str = "/usr/bin/python3";

fn python_ok(script: &str, args: &[&str]) -> String {
    require_tool("nbdsh");
    let out = run(
        Command::new(PYTHON).arg("-c").arg(script).args(args),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ALL OK"),
        "probe failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs qemu-io commands against the export; asserts none of them reported a failure.
fn qemu_io(server: &Server, cmds: &[&str]) -> String {
    let mut cmd = Command::new(require_tool("qemu-io"));
    cmd.args(["-f", "raw"]);
    for c in cmds {
        cmd.args(["-c", c]);
    }
    cmd.arg(server.uri());
    let out = run_ok(&mut cmd, TIMEOUT);
    for bad in ["Pattern verification failed", "failed", "error"] {
        assert!(!out.contains(bad), "qemu-io reported `{bad}`:\n{out}");
    }
    out
}

#[test]
fn qemu_io_patterns_discard_zeroes_flush_and_fua() {
    let server = Server::start(&["--size", "64MiB"]);
    let out = qemu_io(
        &server,
        &[
            "write -P 0xa5 0 1M",
            "write -P 0x5a 1M 64k",
            "write -f -P 0x3c 2M 4k", // FUA
            "write -P 0x11 3M 512",   // sub-4 KiB: read-modify-write in the device
            "flush",
            "read -P 0xa5 0 1M",
            "read -P 0x5a 1M 64k",
            "read -P 0x3c 2M 4k",
            "read -P 0x11 3M 512",
            "read -P 0 3146240 3584",
            "discard 0 512k",
            "read -P 0 0 512k",
            "read -P 0xa5 512k 512k",
            "write -z 1M 32k",
            "read -P 0 1M 32k",
            "read -P 0x5a 1081344 32k",
            "write -z -u 2M 4k",
            "read -P 0 2M 4k",
            "flush",
        ],
    );
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    // A second qemu-io process sees what the first one flushed.
    qemu_io(
        &server,
        &["read -P 0xa5 512k 512k", "read -P 0x5a 1081344 32k"],
    );
}

#[test]
fn nbdcopy_256_mib_in_and_out_over_four_connections() {
    let server = Server::start(&["--size", "256MiB"]);
    let dir = nandbox_tests::scratch_dir();
    let src = dir.path().join("src.img");
    let back = dir.path().join("back.img");
    let mut f = std::fs::File::create(&src).unwrap();
    for chunk in 0..64u64 {
        std::io::Write::write_all(&mut f, &pseudo_random(chunk + 1, 4 << 20)).unwrap();
    }
    drop(f);
    let nbdcopy = require_tool("nbdcopy");
    let uri = server.uri();
    let src_s = src.to_str().unwrap();
    let back_s = back.to_str().unwrap();
    run_ok(
        Command::new(&nbdcopy).args(["--connections=4", "--flush", src_s, &uri]),
        TIMEOUT,
    );
    run_ok(
        Command::new(&nbdcopy).args(["--connections=4", &uri, back_s]),
        TIMEOUT,
    );
    assert_eq!(sha256_file(&src), sha256_file(&back));
}

#[test]
fn fio_nbd_engine_random_writes_verify_crc32c() {
    let server = Server::start(&["--size", "128MiB"]);
    let fio = require_tool("fio");
    // fio leaves verify state files in its working directory: keep them out of the checkout.
    let scratch = nandbox_tests::scratch_dir();
    let out = run_ok(
        Command::new(fio).current_dir(scratch.path()).args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", server.uri()),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randrepeat=1",
            "--output-format=terse",
            "--terse-version=3",
        ]),
        TIMEOUT,
    );
    // terse v3: field 5 is the error count.
    let line = out
        .lines()
        .find(|l| l.starts_with("3;"))
        .unwrap_or_else(|| panic!("no terse line:\n{out}"));
    assert_eq!(
        line.split(';').nth(4),
        Some("0"),
        "fio reported errors:\n{out}"
    );
}

#[test]
fn write_and_flush_on_one_connection_are_read_on_another() {
    let server = Server::start(&["--size", "32MiB"]);
    python_ok(
        r#"
import sys, nbd
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(sys.argv[1]); b.connect_uri(sys.argv[1])
assert a.can_multi_conn() and b.can_multi_conn()
for i in range(64):
    data = bytes([i + 1]) * 65536
    a.pwrite(data, i * 65536 * 3)
    if i % 2:
        a.flush()
    assert b.pread(65536, i * 65536 * 3) == data, i
    b.trim(65536, i * 65536 * 3)
    b.flush()
    assert a.pread(65536, i * 65536 * 3) == bytes(65536), i
print("ALL OK")
"#,
        &[&server.uri()],
    );
}

#[test]
fn data_flushed_on_any_connection_survives_kill_9_and_restart_with_image() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap().to_string();
    let args = ["--size", "64MiB", "--image", &image_s];
    let mut server = Server::start(&args);
    python_ok(
        r#"
import sys, nbd
h, other = nbd.NBD(), nbd.NBD()
h.connect_uri(sys.argv[1])
other.connect_uri(sys.argv[1])
for i in range(256):
    h.pwrite(bytes([i % 251 + 1]) * 4096, i * 4096 * 7)
h.pwrite(b"a" * 512, 5 * 2**20 + 512)  # not 4 KiB aligned: read-modify-write in the device
# A FLUSH on another connection covers the writes this one completed (CAN_MULTI_CONN).
other.flush()
h.pwrite(b"F" * 8192, 40 * 2**20, nbd.CMD_FLAG_FUA)
print("ALL OK")
"#,
        &[&server.uri()],
    );
    server.kill9();
    server.restart(&args);
    python_ok(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for i in range(256):
    assert h.pread(4096, i * 4096 * 7) == bytes([i % 251 + 1]) * 4096, i
assert h.pread(8192, 40 * 2**20) == b"F" * 8192
assert h.pread(4096, 4096) == bytes(4096)
assert h.pread(1536, 5 * 2**20) == bytes(512) + b"a" * 512 + bytes(512)
print("ALL OK")
"#,
        &[&server.uri()],
    );
}
