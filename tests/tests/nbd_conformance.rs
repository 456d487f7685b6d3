//! Strict conformance probes through libnbd (Debian's python3-libnbd) with its client-side
//! checks off, so every malformed request really reaches the server: each errno case of issue 3,
//! in both simple and structured reply modes, and after each one the same connection must still
//! write and read correctly. Also the handshake options through libnbd's option mode.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{require_tool, run, Server};

/// Debian's python3 carries the `nbd` module; the python3 first on PATH may not.
const PYTHON: &str = "/usr/bin/python3";
const TIMEOUT: Duration = Duration::from_secs(120);

fn python() -> &'static str {
    require_tool("nbdsh");
    assert!(
        std::path::Path::new(PYTHON).is_file(),
        "{PYTHON} is missing: install python3-libnbd"
    );
    PYTHON
}

/// Runs `script` with `args` (sys.argv[1:]); the script prints PASS lines and ends with "ALL OK".
fn probe(script: &str, args: &[&str]) -> String {
    let out = run(
        Command::new(python()).arg("-c").arg(script).args(args),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ALL OK"),
        "probe failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

const ERRNO_PROBES: &str = r#"
import sys, nbd
uri, structured = sys.argv[1], sys.argv[2] == "1"
h = nbd.NBD()
h.set_request_structured_replies(structured)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated() == structured
h.set_strict_mode(0)
size = h.get_size()
M = 2**64

def expect(name, want, fn):
    try:
        fn()
    except nbd.Error as e:
        assert e.errno == want, f"{name}: got errno {e.errno} ({e.string}), want {want}"
    else:
        raise AssertionError(f"{name}: succeeded, want errno {want}")
    # The connection must still work, and the failed request must not have written anything.
    pattern = bytes([len(name) % 251 + 1]) * 4096
    h.pwrite(pattern, 8192)
    assert h.pread(4096, 8192) == pattern, f"{name}: connection broken afterwards"
    print("PASS", name)

expect("write straddling the end", "ENOSPC", lambda: h.pwrite(b"x" * 4096, size - 2048))
expect("write past the end", "ENOSPC", lambda: h.pwrite(b"x" * 4096, size))
expect("write far past the end", "ENOSPC", lambda: h.pwrite(b"x" * 512, 2**62))
expect("zero past the end", "ENOSPC", lambda: h.zero(4096, size))
expect("read straddling the end", "EINVAL", lambda: h.pread(4096, size - 2048))
expect("read past the end", "EINVAL", lambda: h.pread(512, size))
expect("trim straddling the end", "EINVAL", lambda: h.trim(8192, size - 4096))
expect("trim past the end", "EINVAL", lambda: h.trim(4096, size + 4096))
expect("zero-length read", "EINVAL", lambda: h.pread(0, 0))
expect("zero-length write", "EINVAL", lambda: h.pwrite(b"", 0))
expect("zero-length trim", "EINVAL", lambda: h.trim(0, 0))
expect("zero-length zero", "EINVAL", lambda: h.zero(0, 0))
expect("zero-length block status", "EINVAL", lambda: h.block_status(0, 0, lambda *a: 0))
expect("read wrapping 2^64", "EINVAL", lambda: h.pread(4096, M - 2048))
expect("write wrapping 2^64", "EINVAL", lambda: h.pwrite(b"x" * 4096, M - 2048))
expect("trim wrapping 2^64", "EINVAL", lambda: h.trim(4096, M - 2048))
expect("block status past the end", "EINVAL", lambda: h.block_status(4096, size, lambda *a: 0))
expect("unknown flag on read", "EINVAL", lambda: h.pread(512, 0, 1 << 9))
expect("NO_HOLE on write", "EINVAL", lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_NO_HOLE))
expect("REQ_ONE on trim", "EINVAL", lambda: h.trim(4096, 0, nbd.CMD_FLAG_REQ_ONE))
expect("payload over 32 MiB", "EINVAL", lambda: h.pwrite(bytes(32 * 2**20 + 4096), 0))
expect("read over 32 MiB", "EINVAL", lambda: h.pread(32 * 2**20 + 4096, 0))
# libnbd asked for the block-size info, so it promised 512-byte alignment: hold it to that.
expect("write not aligned to 512", "EINVAL", lambda: h.pwrite(b"abc", 4097))
expect("read not aligned to 512", "EINVAL", lambda: h.pread(100, 512))
if not structured:
    expect("DF without structured replies", "EINVAL", lambda: h.pread(512, 0, nbd.CMD_FLAG_DF))

# What must work: FUA writes, writes not 4 KiB aligned (read-modify-write), flush, trim and zero reading
# back as zeroes, a large trim and zero (the kernel sends 1 GiB ones), fast zero or ENOTSUP.
h.pwrite(b"F" * 4096, 0, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 0) == b"F" * 4096
h.pwrite(b"a" * 512, 512)
assert h.pread(2048, 0) == b"F" * 512 + b"a" * 512 + b"F" * 1024
h.flush()
h.trim(8192, 0)
assert h.pread(8192, 0) == bytes(8192)
h.pwrite(b"Z" * 8192, 16384)
h.zero(8192, 16384, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
assert h.pread(8192, 16384) == bytes(8192)
h.trim(size, 0)
h.zero(size, 0)
assert h.pread(4096, size - 4096) == bytes(4096)
try:
    h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO)
except nbd.Error as e:
    assert e.errno == "ENOTSUP", f"fast zero: errno {e.errno}"
print("PASS valid commands")

# base:allocation: a written block is data, a trimmed one reads as zeroes.
if structured:
    h.pwrite(b"D" * 65536, 1 << 20)
    h.trim(65536, (1 << 20) + 65536)
    seen = []
    def cb(ctx, offset, entries, err):
        assert ctx == nbd.CONTEXT_BASE_ALLOCATION
        seen.append(list(entries))
    h.block_status(131072, 1 << 20, cb)
    ext = seen[0]
    assert ext[0] >= 65536 and ext[1] & 2 == 0, f"data extent expected first: {ext}"
    total, zero_seen = 0, False
    for i in range(0, len(ext), 2):
        if total >= 65536 and ext[i + 1] & 2:
            zero_seen = True
        total += ext[i]
    assert zero_seen, f"trimmed range not reported as zero: {ext}"
    assert total <= 131072
    seen.clear()
    h.block_status(131072, 1 << 20, cb, nbd.CMD_FLAG_REQ_ONE)
    assert len(seen[0]) == 2 and seen[0][0] <= 131072, seen
    h.pread(65536, 0, nbd.CMD_FLAG_DF)
    print("PASS block status")

h.shutdown()
print("ALL OK")
"#;

#[test]
fn errno_cases_with_simple_replies_keep_the_connection_working() {
    let server = Server::start(&["--size", "64MiB"]);
    probe(ERRNO_PROBES, &[&server.uri(), "0"]);
}

#[test]
fn errno_cases_with_structured_replies_keep_the_connection_working() {
    let server = Server::start(&["--size", "64MiB"]);
    probe(ERRNO_PROBES, &[&server.uri(), "1"]);
}

#[test]
fn read_only_export_refuses_every_write_with_eperm() {
    let server = Server::start(&["--size", "16MiB", "--read-only"]);
    probe(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
assert h.is_read_only() and not h.can_trim() and not h.can_zero()
h.set_strict_mode(0)
for name, fn in [("write", lambda: h.pwrite(b"x" * 512, 0)),
                 ("fua write", lambda: h.pwrite(b"x" * 512, 0, nbd.CMD_FLAG_FUA)),
                 ("trim", lambda: h.trim(4096, 0)),
                 ("zero", lambda: h.zero(4096, 0))]:
    try:
        fn()
        raise AssertionError(name + " succeeded on a read-only export")
    except nbd.Error as e:
        assert e.errno == "EPERM", f"{name}: errno {e.errno}"
    assert h.pread(512, 0) == bytes(512)
    print("PASS", name)
h.flush()
print("ALL OK")
"#,
        &[&server.uri()],
    );
}

#[test]
fn handshake_options_list_info_meta_contexts_and_abort() {
    let server = Server::start(&["--size", "16MiB", "--export", "disk0"]);
    let uri = format!("{}/disk0", server.uri());
    probe(
        r#"
import sys, nbd
uri = sys.argv[1]
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_uri(uri)
names = []
h.opt_list(lambda name, desc: names.append(name))
assert names == ["disk0"], names
h.set_export_name("disk0")
h.opt_info()
assert h.get_size() == 16 * 2**20
assert h.get_block_size(nbd.SIZE_MINIMUM) == 512
assert h.get_block_size(nbd.SIZE_PREFERRED) == 4096
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 2**20
assert h.can_multi_conn() and h.can_flush() and h.can_fua() and h.can_trim()
assert h.can_zero() and h.can_fast_zero() and not h.is_read_only()
assert h.get_canonical_export_name() == "disk0"
h.set_export_name("nope")
try:
    h.opt_info()
    raise AssertionError("unknown export accepted")
except nbd.Error:
    pass
h.set_export_name("disk0")
ctxs = []
assert h.opt_list_meta_context(lambda name: ctxs.append(name)) >= 1
assert "base:allocation" in ctxs, ctxs
h.add_meta_context("base:allocation")
h.opt_go()
assert h.can_meta_context("base:allocation")
assert h.pread(512, 0) == bytes(512)
h.shutdown()
print("PASS info, list, meta contexts, go")

h = nbd.NBD()
h.set_opt_mode(True)
h.connect_uri(uri)
h.opt_abort()
print("PASS abort")

# The default (empty) name reaches the export too, without structured replies and
# through the old NBD_OPT_EXPORT_NAME path.
h = nbd.NBD()
h.set_export_name("")
h.set_request_structured_replies(False)
h.connect_uri(uri.rsplit("/", 1)[0] + "/")
assert h.get_size() == 16 * 2**20
h.shutdown()
print("ALL OK")
"#,
        &[&uri],
    );
}

#[test]
fn unix_socket_serves_the_same_protocol() {
    let server = Server::start_unix(&["--size", "16MiB"]);
    probe(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"u" * 4096, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(4096, 4096) == b"u" * 4096
print("ALL OK")
"#,
        &[&server.uri()],
    );
}
