//! Raw-socket probe of the running server with hostile and careless clients (issue 9): unknown
//! options and commands, offsets that wrap 2^64, 33 MiB and 65 MiB payloads, truncated headers, a
//! client vanishing mid-payload, clients claiming large writes and stalling, 1,000
//! connect/disconnect cycles, and idle clients holding connections open.
//!
//! Throughout, a well-behaved client writes and verifies data on its own region and must see no
//! error; at the end the server is still up, the idle clients still work, and the server's
//! resident memory has not grown with what the hostile clients claimed they would send. Each case
//! and the server's answer is printed as a table (run with `--nocapture`).
//!
//! The NBD parser lives in the binary crate, so it is probed here over a socket against the real
//! server rather than from a cargo-fuzz target; the cases that are seeded byte streams (garbage
//! after the greeting, random request headers) are deterministic from their seeds.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nandbox_tests::raw_nbd::{RawNbd, IHAVEOPT, REP_ACK, REQ_MAGIC};
use nandbox_tests::{pseudo_random, Server};

const OPT_GO: u32 = 7;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const MIB: u64 = 1 << 20;
/// Export size of the probed server.
const SIZE: u64 = 64 * MIB;

/// errno names of the NBD protocol's error values.
fn errno(e: u32) -> String {
    match e {
        0 => "ok".into(),
        1 => "EPERM".into(),
        5 => "EIO".into(),
        12 => "ENOMEM".into(),
        22 => "EINVAL".into(),
        28 => "ENOSPC".into(),
        75 => "EOVERFLOW".into(),
        95 => "ENOTSUP".into(),
        108 => "ESHUTDOWN".into(),
        other => format!("errno {other}"),
    }
}

/// Option reply types, by name.
fn reply_name(t: u32) -> String {
    match t {
        1 => "ACK".into(),
        x if x == (1 << 31) + 1 => "ERR_UNSUP".into(),
        x if x == (1 << 31) + 3 => "ERR_INVALID".into(),
        x if x == (1 << 31) + 6 => "ERR_UNKNOWN".into(),
        x if x == (1 << 31) + 9 => "ERR_TOO_BIG".into(),
        other => format!("reply {other:#x}"),
    }
}

/// A raw client with the probe's shorthand: simple replies, flags always 0.
struct Client(RawNbd);

impl std::ops::Deref for Client {
    type Target = RawNbd;
    fn deref(&self) -> &RawNbd {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut RawNbd {
        &mut self.0
    }
}

impl Client {
    /// Connects and greets with FIXED_NEWSTYLE | NO_ZEROES.
    fn greet(port: u16) -> Client {
        Client(RawNbd::greet(port, 3))
    }

    /// Greets and negotiates NBD_OPT_GO for the default export (simple replies).
    fn open(port: u16) -> Client {
        let mut c = Self::greet(port);
        c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
        loop {
            let (t, _) = c.option_reply(OPT_GO);
            if t == REP_ACK {
                return c;
            }
            assert_eq!(t, 3, "GO: INFO replies, then ACK; got {}", reply_name(t));
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        self.0.send_option(option, data);
    }

    fn header(kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        RawNbd::header(0, kind, cookie, offset, len)
    }

    fn request(&mut self, kind: u16, cookie: u64, offset: u64, len: u32, payload: &[u8]) {
        self.0.request(0, kind, cookie, offset, len, payload);
    }

    /// Reads a simple reply header: its error, after checking the cookie.
    fn reply(&mut self, cookie: u64) -> u32 {
        let (err, got) = self.simple();
        assert_eq!(got, cookie);
        err
    }

    fn write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> u32 {
        self.request(CMD_WRITE, cookie, offset, data.len() as u32, data);
        self.reply(cookie)
    }

    fn read(&mut self, cookie: u64, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(CMD_READ, cookie, offset, len, &[]);
        match self.reply(cookie) {
            0 => Ok(self.bytes(len as usize)),
            e => Err(e),
        }
    }

    /// A full round trip still works on this connection.
    fn healthy(&mut self, cookie: u64) -> bool {
        self.read(cookie, 0, 4096).is_ok()
    }
}

/// Resident set size of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The well-behaved client: writes then verifies 64 KiB blocks in the last 8 MiB of the
/// export until told to stop; returns (round trips, errors seen).
fn good_client(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut c = Client::open(port);
        let (mut n, mut errors) = (0u64, Vec::new());
        let start = Instant::now();
        while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(600) {
            let off = SIZE - 8 * MIB + (n % 128) * 65536;
            let data = pseudo_random(n + 1, 65536);
            match c.write(2 * n, off, &data) {
                0 => {}
                e => errors.push(format!("write {n}: {}", errno(e))),
            }
            match c.read(2 * n + 1, off, 65536) {
                Ok(back) if back == data => {}
                Ok(_) => errors.push(format!("read {n}: wrong data")),
                Err(e) => errors.push(format!("read {n}: {}", errno(e))),
            }
            n += 1;
        }
        (n, errors)
    })
}

struct Table(Vec<(String, String)>);

impl Table {
    fn row(&mut self, case: impl Into<String>, behaviour: impl Into<String>) {
        let (case, behaviour) = (case.into(), behaviour.into());
        println!("probe: {case:<58} -> {behaviour}");
        self.0.push((case, behaviour));
    }
    fn print(&self) {
        println!("\n| case | errno / behaviour |\n|---|---|");
        for (c, b) in &self.0 {
            println!("| {c} | {b} |");
        }
    }
}

#[test]
fn hostile_clients_leave_the_server_up_and_other_clients_unharmed() {
    // The device lives in an image file, so the server's RSS is its buffers and bookkeeping,
    // not the flash contents the clients write (a RAM device grows by what is stored, which
    // says nothing about leaks).
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("probe.img");
    let server = Server::start(&["--size", "64MiB", "--image", image.to_str().unwrap()]);
    let port = server.port();
    let pid = server.pid();
    let mut t = Table(Vec::new());

    // Fill the device once, so the RAM NAND's own growth does not count as a leak later.
    {
        let mut c = Client::open(port);
        let block = vec![0x5au8; 4 << 20];
        for i in 0..(SIZE / (4 << 20)) {
            assert_eq!(c.write(i, i * (4 << 20), &block), 0);
        }
        c.request(CMD_FLUSH, 99, 0, 0, &[]);
        assert_eq!(c.reply(99), 0);
    }
    // Idle clients: one in transmission, one that never gets past the greeting.
    let mut idle = Client::open(port);
    let idle_greeting = Client::greet(port);
    let stop = Arc::new(AtomicBool::new(false));
    let good = good_client(port, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let rss_start = rss_kib(pid);

    // --- Handshake phase ---
    {
        let mut c = Client::greet(port);
        c.option(0xdead_beef, b"unknown option data");
        let (r, _) = c.option_reply(0xdead_beef);
        t.row("unknown option 0xdeadbeef", reply_name(r));
        c.option(0x7fff_ffff, &[]);
        let (r, _) = c.option_reply(0x7fff_ffff);
        t.row("unknown option 0x7fffffff, no data", reply_name(r));
        // An option claiming 64 MiB of data but sending 1 KiB, then vanishing.
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&9u32.to_be_bytes());
        m.extend_from_slice(&(64u32 << 20).to_be_bytes());
        c.s.write_all(&m).unwrap();
        c.s.write_all(&[1u8; 1024]).unwrap();
        drop(c);
        t.row(
            "option claiming 64 MiB, 1 KiB sent, client gone",
            "connection dropped",
        );
    }
    {
        let mut c = Client::greet(port);
        c.s.write_all(&IHAVEOPT.to_be_bytes()[..5]).unwrap();
        c.s.shutdown(Shutdown::Write).unwrap();
        let closed = c.closed_within(Duration::from_secs(10));
        t.row(
            "option header truncated (5 of 16 bytes), then EOF",
            if closed {
                "connection closed"
            } else {
                "still open (!)"
            },
        );
        assert!(closed);
    }
    {
        // Seeded garbage instead of options.
        let mut closed = 0;
        for seed in 0..20 {
            let mut c = Client::greet(port);
            let _ = c.s.write_all(&pseudo_random(seed + 100, 300));
            if c.closed_within(Duration::from_secs(10)) {
                closed += 1;
            }
        }
        t.row(
            "20 seeded 300-byte garbage streams after the greeting",
            format!("{closed}/20 connections closed"),
        );
        assert_eq!(closed, 20);
    }

    // --- Transmission phase ---
    let mut c = Client::open(port);
    for kind in [5u16, 42, 0xffff] {
        c.request(kind, 1, 0, 512, &[]);
        let e = c.reply(1);
        t.row(format!("unknown command {kind}"), errno(e));
        assert_ne!(e, 0);
    }
    for (name, offset, len) in [
        (
            "read offset 2^64-4096, len 8192 (wraps)",
            u64::MAX - 4095,
            8192u32,
        ),
        ("read offset 2^64-1, len 1", u64::MAX, 1),
        ("read offset = size, len 4096", SIZE, 4096),
        (
            "read offset size-4096, len 8192 (past end)",
            SIZE - 4096,
            8192,
        ),
    ] {
        let e = c.read(2, offset, len).err().unwrap_or(0);
        t.row(name, errno(e));
        assert_ne!(e, 0, "{name} must fail");
    }
    c.request(CMD_WRITE, 3, u64::MAX - 4095, 8192, &[7u8; 8192]);
    let e = c.reply(3);
    t.row(
        "write offset 2^64-4096, len 8192 (wraps), payload sent",
        errno(e),
    );
    assert_ne!(e, 0);
    c.request(4, 4, u64::MAX - 4095, 8192, &[]);
    let e = c.reply(4);
    t.row("trim offset 2^64-4096, len 8192 (wraps)", errno(e));
    assert_ne!(e, 0);
    let e = c.read(5, 0, 33 << 20).err().unwrap_or(0);
    t.row("read of 33 MiB (over the 32 MiB maximum)", errno(e));
    assert_ne!(e, 0);
    for mib in [33u32, 65] {
        let payload = vec![0xc3u8; (mib as usize) << 20];
        let before = rss_kib(pid);
        let e = c.write(6, 0, &payload);
        let grew = rss_kib(pid).saturating_sub(before);
        t.row(
            format!("write of {mib} MiB with its payload"),
            format!(
                "{}, payload skipped, stream in sync, RSS +{} KiB",
                errno(e),
                grew
            ),
        );
        assert_ne!(e, 0);
        assert!(c.healthy(7), "stream in sync after a {mib} MiB write");
    }
    assert_eq!(
        c.read(8, 0, 4096).unwrap(),
        vec![0x5au8; 4096],
        "refused writes must not land"
    );
    // Seeded random request headers with a valid magic: each is answered or drops the
    // connection; either way the server stays up.
    {
        let mut answered = 0;
        let mut dropped = 0;
        for seed in 0..50u64 {
            let mut r = Client::open(port);
            let mut h = pseudo_random(seed + 1000, 28);
            h[..4].copy_from_slice(&REQ_MAGIC.to_be_bytes());
            h[4..6].copy_from_slice(&[0, 0]);
            // Commands other than WRITE, so no payload is owed.
            let kind = u16::from_be_bytes([h[6], h[7]]);
            if kind == CMD_WRITE || kind == CMD_DISC {
                h[6..8].copy_from_slice(&0x1234u16.to_be_bytes());
            }
            // Keep lengths small so a valid read does not stream megabytes.
            let len = u32::from_be_bytes([h[24], h[25], h[26], h[27]]) % 65536;
            h[24..28].copy_from_slice(&len.to_be_bytes());
            r.s.write_all(&h).unwrap();
            r.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut rh = [0u8; 16];
            match r.s.read_exact(&mut rh) {
                Ok(()) => answered += 1,
                Err(_) => dropped += 1,
            }
        }
        t.row(
            "50 seeded random request headers (valid magic)",
            format!("{answered} answered with an error or data, {dropped} dropped"),
        );
    }
    {
        let mut r = Client::open(port);
        r.s.write_all(&Client::header(CMD_READ, 9, 0, 4096)[..13])
            .unwrap();
        r.s.shutdown(Shutdown::Write).unwrap();
        let closed = r.closed_within(Duration::from_secs(10));
        t.row(
            "request header truncated (13 of 28 bytes), then EOF",
            if closed {
                "connection closed"
            } else {
                "still open (!)"
            },
        );
        assert!(closed);
    }
    {
        let mut r = Client::open(port);
        r.s.write_all(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
        r.s.write_all(&[0u8; 24]).unwrap();
        let closed = r.closed_within(Duration::from_secs(10));
        t.row(
            "request with a bad magic",
            if closed {
                "connection closed"
            } else {
                "still open (!)"
            },
        );
        assert!(closed);
    }
    {
        // A 1 MiB write of which 100 KiB arrive before the client vanishes: nothing lands.
        let mut r = Client::open(port);
        r.s.write_all(&Client::header(CMD_WRITE, 10, 16 * MIB, 1 << 20))
            .unwrap();
        r.s.write_all(&vec![0x11u8; 100 << 10]).unwrap();
        drop(r);
        std::thread::sleep(Duration::from_millis(300));
        let landed = c.read(11, 16 * MIB, 1 << 20).unwrap() != vec![0x5au8; 1 << 20];
        t.row(
            "client vanishes mid-payload (100 KiB of a 1 MiB write)",
            if landed {
                "partial write landed (!)"
            } else {
                "write discarded, data unchanged"
            },
        );
        assert!(!landed);
    }
    {
        // Clients that claim a full 32 MiB write, send 64 KiB and stall: memory must follow
        // what arrived, not what was claimed.
        let before = rss_kib(pid);
        let mut stalled = Vec::new();
        for i in 0..8u64 {
            let mut r = Client::open(port);
            r.s.write_all(&Client::header(CMD_WRITE, 20 + i, i * 4 * MIB, 32 << 20))
                .unwrap();
            r.s.write_all(&vec![0x22u8; 64 << 10]).unwrap();
            stalled.push(r);
        }
        std::thread::sleep(Duration::from_millis(500));
        let grew = rss_kib(pid).saturating_sub(before);
        t.row(
            "8 clients claim 32 MiB writes (256 MiB), send 64 KiB, stall",
            format!("RSS +{} KiB; other clients unaffected", grew),
        );
        assert!(
            grew < 64 * 1024,
            "RSS grew {grew} KiB with 8 x 32 MiB claimed but 512 KiB sent"
        );
        assert!(c.healthy(30));
        drop(stalled);
    }
    {
        let start = Instant::now();
        let mut full = 0;
        for i in 0..1000u64 {
            if i % 2 == 0 {
                drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
            } else {
                let mut r = Client::open(port);
                r.request(CMD_DISC, i, 0, 0, &[]);
                full += 1;
            }
        }
        t.row(
            "1,000 connect/disconnect cycles",
            format!(
                "all accepted ({full} with handshake + DISC) in {:.1} s",
                start.elapsed().as_secs_f64()
            ),
        );
    }

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let (rounds, errors) = good.join().expect("good client");
    t.row(
        "well-behaved client during all of the above",
        format!("{rounds} write+verify rounds, {} errors", errors.len()),
    );
    assert!(
        errors.is_empty(),
        "the well-behaved client saw errors: {errors:?}"
    );
    assert!(rounds > 0);
    let ok = idle.healthy(40);
    t.row(
        "idle client (transmission) afterwards",
        if ok { "still served" } else { "broken (!)" },
    );
    assert!(ok);
    drop(idle_greeting);
    let rss_end = rss_kib(pid);
    t.row(
        "server RSS start -> end",
        format!("{rss_start} KiB -> {rss_end} KiB"),
    );
    assert!(
        rss_end < rss_start + 64 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
    t.print();
}

/// Safe defaults: with no --listen the server binds loopback only, and it serves at most the
/// default connection limit at once, closing the rest on accept.
#[test]
fn defaults_listen_on_loopback_only_and_limit_connections() {
    // No --listen: the default is 127.0.0.1:10809 (a fixed port: another server may hold it, in
    // which case the error names the address it tried).
    let dir = nandbox_tests::scratch_dir();
    let log = dir.path().join("serve.log");
    let mut child = std::process::Command::new(nandbox_tests::nandbox_bin())
        .args(["serve", "--size", "4MiB", "--control", "none"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("serve.err")).unwrap())
        .spawn()
        .expect("spawn nandbox serve");
    let pid = child.id();
    let start = Instant::now();
    let mut listening = Vec::new();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        listening = listen_sockets_of(pid);
        if !listening.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let exited = child.try_wait().ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    if exited.is_some() {
        let err = std::fs::read_to_string(dir.path().join("serve.err")).unwrap_or_default();
        assert!(
            err.contains("127.0.0.1:10809"),
            "default serve exited; its error must name the loopback address: {err}"
        );
        println!("default listener: port busy, error names 127.0.0.1:10809");
    } else {
        println!("default listeners of pid {pid}: {listening:?}");
        assert!(!listening.is_empty(), "the default server listens");
        assert!(
            listening.iter().all(|a| a.starts_with("127.0.0.1:")),
            "without --listen only loopback may be bound: {listening:?}"
        );
    }

    // The connection limit (default 64): one more is closed on accept; the others still work.
    let server = Server::start(&["--size", "4MiB"]);
    let mut held: Vec<Client> = (0..64).map(|_| Client::greet(server.port())).collect();
    let mut extra = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 18];
    let refused = !matches!(extra.read(&mut buf), Ok(n) if n > 0);
    println!(
        "65th connection with 64 held: {}",
        if refused {
            "closed on accept"
        } else {
            "served (!)"
        }
    );
    assert!(
        refused,
        "a 65th connection was served past the default limit"
    );
    let mut first = held.remove(0);
    first.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    loop {
        if first.option_reply(OPT_GO).0 == REP_ACK {
            break;
        }
    }
    assert!(first.healthy(1), "a held connection still works");
    drop(held);
    // With the others gone, a new client is served again.
    std::thread::sleep(Duration::from_millis(300));
    let mut again = Client::open(server.port());
    assert!(again.healthy(2));
}

/// TCP listening sockets of `pid`, as "ip:port", from /proc/net/tcp{,6} and the pid's fds.
fn listen_sockets_of(pid: u32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().into_owned();
                if let Some(i) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    inodes.insert(i.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            let (addr, port) = f[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            let ip = if v6 {
                format!("[{addr}]")
            } else {
                let n = u32::from_str_radix(addr, 16).unwrap();
                std::net::Ipv4Addr::from(n.swap_bytes()).to_string()
            };
            out.push(format!("{ip}:{port}"));
        }
    }
    out
}
