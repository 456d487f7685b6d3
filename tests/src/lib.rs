//! Helpers shared by the end-to-end tests: finding the built `nandbox` binary, free ports,
//! scratch directories.
//!
//! The tests drive the real binary. The test command (see README) builds it in the same profile
//! before running the tests, so it sits next to the test executables' `deps/` directory.

use std::path::PathBuf;

/// Path of the `nandbox` binary built in the same cargo profile as the running test.
///
/// Panics with a message saying how to build it when it is missing: a test never skips.
pub fn nandbox_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    // target/<profile>/deps/<test> -> target/<profile>/nandbox
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("nandbox");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --profile <same profile> -p nandbox`",
        bin.display()
    );
    bin
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Fails the test, loudly, when an external tool it needs is not installed.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed; run the README's test command, which installs it");
}
