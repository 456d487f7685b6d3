//! Helpers shared by the end-to-end tests: finding the built `nandbox` binary, free ports,
//! scratch directories, a [`Server`] guard that runs `nandbox serve`, and bounded command runs.
//!
//! The tests drive the real binary. The test command (see README) builds it in the same profile
//! before running the tests, so it sits next to the test executables' `deps/` directory.

pub mod raw_nbd;

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

/// A scratch directory removed (with its contents) when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nandbox-test-")
        .tempdir()
        .expect("create a scratch directory")
}

/// Where a [`Server`] listens for NBD.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Tcp(u16),
    Unix(PathBuf),
}

/// A running `nandbox serve`, killed (SIGKILL) and reaped when dropped.
///
/// It listens on a free 127.0.0.1 port (or a unix socket in its own scratch directory) with its
/// control endpoint on another free port; `start` returns once the NBD socket accepts
/// connections. The server's stdout and stderr go to a log file shown when it fails to start.
pub struct Server {
    child: Option<std::process::Child>,
    pub endpoint: Endpoint,
    /// Control endpoint address, `127.0.0.1:PORT`.
    pub control: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

/// How long a server may take to accept its first connection.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Server {
    /// Starts `nandbox serve` on TCP with `extra` arguments (e.g. `["--size", "64MiB"]`).
    pub fn start(extra: &[&str]) -> Server {
        Self::launch(Endpoint::Tcp(free_port()), extra)
    }

    /// Starts `nandbox serve --unix <scratch>/nbd.sock` with `extra` arguments.
    pub fn start_unix(extra: &[&str]) -> Server {
        Self::launch(Endpoint::Unix(PathBuf::new()), extra)
    }

    fn launch(endpoint: Endpoint, extra: &[&str]) -> Server {
        let dir = scratch_dir();
        let endpoint = match endpoint {
            Endpoint::Unix(_) => Endpoint::Unix(dir.path().join("nbd.sock")),
            tcp => tcp,
        };
        let control = format!("127.0.0.1:{}", free_port());
        let log = dir.path().join("server.log");
        let mut server = Server {
            child: None,
            endpoint,
            control,
            log,
            dir,
        };
        // A free port can be taken by a parallel test between our probe and the server's bind:
        // then pick new ports and try again, a bounded number of times.
        for attempt in 0.. {
            match server.spawn(extra) {
                Ok(()) => return server,
                Err(why) if attempt < 4 && why.contains("Address already in use") => {
                    if let Endpoint::Tcp(_) = server.endpoint {
                        server.endpoint = Endpoint::Tcp(free_port());
                    }
                    server.control = format!("127.0.0.1:{}", free_port());
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!()
    }

    /// (Re)starts the process with the same endpoint and control address.
    fn spawn(&mut self, extra: &[&str]) -> Result<(), String> {
        let mut cmd = std::process::Command::new(nandbox_bin());
        cmd.arg("serve").args(["--control", &self.control]);
        match &self.endpoint {
            Endpoint::Tcp(port) => cmd.args(["--listen", &format!("127.0.0.1:{port}")]),
            Endpoint::Unix(path) => cmd.arg("--unix").arg(path),
        };
        cmd.args(extra);
        let _ = std::fs::remove_file(&self.log);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        cmd.stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .stdin(std::process::Stdio::null());
        let child = cmd.spawn().expect("spawn nandbox serve");
        self.child = Some(child);
        self.wait_until_accepting()
    }

    /// Waits until the server has printed its startup line (it does so after binding every
    /// listener) and its NBD socket accepts; a connection alone could reach another test's
    /// server that took the port.
    fn wait_until_accepting(&mut self) -> Result<(), String> {
        let start = std::time::Instant::now();
        loop {
            let started = self.log_text().contains("nandbox: serving");
            let up = started
                && match &self.endpoint {
                    Endpoint::Tcp(port) => {
                        std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok()
                    }
                    Endpoint::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
                };
            if up {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "nandbox serve exited with {status} before accepting:\n{}",
                    self.log_text()
                ));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "nandbox serve did not accept within {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// NBD URI of the export, as libnbd, qemu and nbdcopy take it.
    pub fn uri(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(port) => format!("nbd://127.0.0.1:{port}"),
            Endpoint::Unix(path) => format!("nbd+unix:///?socket={}", path.display()),
        }
    }

    /// TCP port (panics for a unix-socket server).
    pub fn port(&self) -> u16 {
        match self.endpoint {
            Endpoint::Tcp(port) => port,
            Endpoint::Unix(_) => panic!("server listens on a unix socket"),
        }
    }

    /// The server's scratch directory (for images, stats files), removed on drop.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Everything the server printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Kills the server with SIGKILL, like a power cut of the host process, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. "TERM", "INT") and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        timeout: std::time::Duration,
    ) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let sent = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for nandbox") {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nandbox did not exit within {timeout:?} of SIG{signal}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts the server again (after `kill9` or a signal) with the same endpoint and `extra`.
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill9();
        if let Err(why) = self.spawn(extra) {
            panic!("restart failed: {why}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command to completion with a time limit; panics with its output when it fails.
pub fn run_ok(cmd: &mut std::process::Command, timeout: std::time::Duration) -> String {
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command to completion, killing it after `timeout`, and returns its output.
pub fn run(cmd: &mut std::process::Command, timeout: std::time::Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout pipe");
    let mut se = child.stderr.take().expect("stderr pipe");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read file");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The model-weight fixtures (`../shared/fixtures` beside the checkout, or `NANDBOX_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("NANDBOX_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

/// Runs the `nandbox` binary with `args` to completion; fails the test if it panicked, whatever
/// its exit status.
pub fn nandbox_cli(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(nandbox_bin())
        .args(args)
        .output()
        .expect("run nandbox");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "nandbox {args:?} panicked: {stderr}"
    );
    out
}

/// `GET path` from a control endpoint at `addr`: the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect control endpoint");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}
