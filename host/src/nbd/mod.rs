//! The NBD server: listeners, connections, and the protocol layers below them.
//!
//! Layers, each using only those below it:
//! - [`wire`]: constants and checked views of every message (no I/O);
//! - [`handshake`]: fixed-newstyle negotiation up to transmission;
//! - [`transmission`]: one connection's requests, its queue pair into the device, replies;
//! - this module: accepting TCP or unix connections, the connection limit, and stopping.
//!
//! Each connection runs on its own thread against the one shared [`BlockDevice`]; a client that
//! breaks the protocol loses only its own connection.

pub mod handshake;
pub mod transmission;
pub mod wire;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::device::BlockDevice;
use handshake::ExportInfo;
use transmission::Limits;

/// How long a client may take over the handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected socket of either family.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self, how: Shutdown) {
        // Already-closed sockets are fine: shutting down is best effort by nature.
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        // Forwarded so a reply header and its data leave in one sendmsg.
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name of the one export (the empty name also selects it).
    pub export_name: String,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Per-connection limits.
    pub limits: Limits,
}

/// A running NBD server over one device.
pub struct Server {
    device: Arc<dyn BlockDevice>,
    config: Config,
    stopping: AtomicBool,
    next_id: AtomicU64,
    /// A handle on every live connection, so `stop` can end them.
    live: Mutex<HashMap<u64, Stream>>,
}

impl Server {
    pub fn new(device: Arc<dyn BlockDevice>, config: Config) -> Arc<Self> {
        Arc::new(Self {
            device,
            config,
            stopping: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Accepts TCP connections until [`Server::stop`]; never returns otherwise.
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            match conn {
                Ok(s) => {
                    // Replies are written whole; Nagle would only add latency to small ones.
                    let _ = s.set_nodelay(true);
                    self.spawn(Stream::Tcp(s));
                }
                Err(e) => accept_error(e),
            }
        }
    }

    /// Accepts unix-socket connections until [`Server::stop`].
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            match conn {
                Ok(s) => self.spawn(Stream::Unix(s)),
                Err(e) => accept_error(e),
            }
        }
    }

    /// Stops accepting, ends every connection's reading, and waits (up to `grace`) for their
    /// in-flight requests to be answered. Returns the number of connections still open.
    pub fn stop(&self, grace: Duration) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        for s in self.lock_live().values() {
            s.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.lock_live().is_empty() {
                return 0;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.lock_live().len()
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(self: &Arc<Self>, stream: Stream) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut live = self.lock_live();
            if live.len() >= self.config.max_connections || self.stopping.load(Ordering::SeqCst) {
                eprintln!(
                    "nandbox: connection refused: limit of {} reached",
                    self.config.max_connections
                );
                stream.shutdown(Shutdown::Both);
                return;
            }
            match stream.try_clone() {
                Ok(handle) => {
                    live.insert(id, handle);
                }
                Err(e) => {
                    eprintln!("nandbox: connection dropped: {e}");
                    return;
                }
            }
        }
        let server = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                if let Err(e) = server.connection(&stream) {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                    ) {
                        eprintln!("nandbox: connection {id} closed: {e}");
                    }
                }
                stream.shutdown(Shutdown::Both);
                server.lock_live().remove(&id);
            });
        if let Err(e) = spawned {
            eprintln!("nandbox: cannot start a connection thread: {e}");
            self.lock_live().remove(&id);
        }
    }

    fn connection(&self, stream: &Stream) -> io::Result<()> {
        let export = ExportInfo {
            name: self.config.export_name.clone(),
            size: self.device.size(),
            read_only: self.device.read_only(),
        };
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut hs = stream.try_clone()?;
        let Some(neg) = handshake::negotiate(&mut hs, &export, &self.stopping)? else {
            return Ok(());
        };
        stream.set_read_timeout(None)?;
        let (device, limits) = (&*self.device, self.config.limits);
        // Hand over the concrete socket types, not `Stream`: std's own sockets read into
        // uninitialised capacity, so a write payload is not zero-filled before it is received.
        match stream {
            Stream::Tcp(s) => {
                let direct = try_send(s.try_clone()?);
                transmission::serve(s.try_clone()?, s.try_clone()?, direct, device, neg, limits)
            }
            Stream::Unix(s) => {
                let direct = try_send(s.try_clone()?);
                transmission::serve(s.try_clone()?, s.try_clone()?, direct, device, neg, limits)
            }
        }
    }
}

/// A send on `socket` that never blocks (`MSG_DONTWAIT`) and never raises SIGPIPE, for
/// replies sent from the thread that completes them: a client that stops reading fills its socket and
/// gets its replies from its own writer thread, never stalling the device.
fn try_send<S: std::os::fd::AsFd + Send + Sync + 'static>(
    socket: S,
) -> Option<transmission::TrySend> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
    Some(Box::new(move |iov: &[io::IoSlice<'_>]| {
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        sendmsg(&socket, iov, &mut SendAncillaryBuffer::default(), flags).map_err(io::Error::from)
    }))
}

fn accept_error(e: io::Error) {
    eprintln!("nandbox: accept failed: {e}");
    // Out of descriptors and the like: give the system a moment rather than spin.
    std::thread::sleep(Duration::from_millis(50));
}

#[cfg(test)]
mod tests {
    //! Hostile bytes into the handshake and the transmission loop: whatever arrives, the server
    //! answers or hangs up, and never panics or allocates what a header claims.

    use super::handshake::{negotiate, ExportInfo, Negotiated};
    use super::transmission::{self, Limits};
    use super::wire::{cmd, Request};
    use crate::device::{BlockDevice, DevError, Extent, ZeroFlags};
    use std::io::{Cursor, Read, Write};
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// A plain in-memory disk, only for these tests.
    struct VecDisk(Mutex<Vec<u8>>);

    impl BlockDevice for VecDisk {
        fn size(&self) -> u64 {
            self.0.lock().unwrap().len() as u64
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
            let d = self.0.lock().unwrap();
            buf.copy_from_slice(&d[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8], _fua: bool) -> Result<(), DevError> {
            let mut d = self.0.lock().unwrap();
            d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
            Ok(())
        }
        fn flush(&self) -> Result<(), DevError> {
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64, _fua: bool) -> Result<(), DevError> {
            self.0.lock().unwrap()[offset as usize..(offset + len) as usize].fill(0);
            Ok(())
        }
        fn write_zeroes(&self, offset: u64, len: u64, _f: ZeroFlags) -> Result<(), DevError> {
            self.trim(offset, len, false)
        }
        fn block_status(&self, _offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
            Ok(vec![Extent {
                length: len,
                flags: 0,
            }])
        }
        fn stats_json(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn shutdown(&self) -> Result<(), DevError> {
            Ok(())
        }
    }

    /// Input from a byte vector, output into another: a socket with a scripted client.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn option(opt: u32, data: &[u8]) -> Vec<u8> {
        let mut m = super::wire::magic::IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&opt.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    #[test]
    fn random_options_never_panic() {
        let export = ExportInfo {
            name: "x".into(),
            size: 1 << 20,
            read_only: false,
        };
        let stop = AtomicBool::new(false);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let mut input = 3u32.to_be_bytes().to_vec();
            for _ in 0..rng.below(6) {
                let opt = [1, 2, 3, 6, 7, 8, 9, 10, 99][rng.below(9) as usize];
                let len = rng.below(40) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if len >= 4 && rng.below(2) == 0 {
                    // Plausible length prefixes reach deeper into the parsers.
                    let claim = rng.below(len as u64 + 3) as u32;
                    data[..4].copy_from_slice(&claim.to_be_bytes());
                }
                let mut m = option(opt, &data);
                if rng.below(10) == 0 {
                    let at = rng.below(m.len() as u64) as usize;
                    m[at] ^= 1 << rng.below(8);
                }
                if rng.below(20) == 0 {
                    m.truncate(rng.below(m.len() as u64) as usize);
                }
                input.extend_from_slice(&m);
            }
            let mut s = Duplex {
                input: Cursor::new(input),
                output: Vec::new(),
            };
            let _ = negotiate(&mut s, &export, &stop);
        }
    }

    #[test]
    fn a_huge_claimed_option_length_is_drained_not_allocated() {
        let export = ExportInfo {
            name: String::new(),
            size: 1 << 20,
            read_only: false,
        };
        let mut input = 3u32.to_be_bytes().to_vec();
        let mut m = option(9, &[]);
        m[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
        input.extend_from_slice(&m);
        input.extend_from_slice(&[0u8; 1000]); // the client stops long before 4 GiB
        let mut s = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        assert!(negotiate(&mut s, &export, &AtomicBool::new(false)).is_err());
    }

    #[test]
    fn random_request_streams_never_panic_and_replies_stay_framed() {
        let disk = VecDisk(Mutex::new(vec![0u8; 1 << 20]));
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..400 {
            let structured = round % 2 == 0;
            let neg = Negotiated {
                structured,
                base_allocation: round % 3 == 0,
                block_size_agreed: round % 5 == 0,
                tx_flags: super::handshake::transmission_flags(false, structured),
            };
            let mut input = Vec::new();
            for i in 0..rng.below(20) {
                let kind = [
                    cmd::READ,
                    cmd::WRITE,
                    cmd::FLUSH,
                    cmd::TRIM,
                    5,
                    cmd::WRITE_ZEROES,
                    cmd::BLOCK_STATUS,
                    77,
                ][rng.below(8) as usize];
                let offset = match rng.below(4) {
                    0 => rng.next(),
                    1 => (1 << 20) - rng.below(8192),
                    _ => rng.below(1 << 20),
                };
                let len = match rng.below(4) {
                    0 => rng.next() as u32,
                    1 => 0,
                    _ => rng.below(16384) as u32,
                };
                let flags = if rng.below(4) == 0 {
                    rng.next() as u16
                } else {
                    0
                };
                input.extend_from_slice(&Request::build(flags, kind, i, offset, len));
                if kind == cmd::WRITE {
                    // Send the payload the header claims, up to a bound; short streams end early.
                    let n = (len as usize).min(70_000);
                    input.extend((0..n).map(|j| j as u8));
                }
                if rng.below(30) == 0 {
                    let at = rng.below(input.len() as u64) as usize;
                    input[at] ^= 0x80;
                }
            }
            let mut out = Vec::new();
            let _ = transmission::serve(
                Cursor::new(input),
                &mut out,
                None,
                &disk,
                neg,
                Limits::default(),
            );
            // With structured replies the output is self-describing: every message must parse
            // and they must tile the output exactly. (Simple READ replies carry unframed data.)
            if structured {
                let mut at = 0;
                while at < out.len() {
                    let magic = u32::from_be_bytes(out[at..at + 4].try_into().unwrap());
                    if magic == super::wire::magic::STRUCTURED_REPLY {
                        let len = u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap());
                        at += 20 + len as usize;
                    } else {
                        assert_eq!(magic, super::wire::magic::SIMPLE_REPLY);
                        at += 16;
                    }
                }
                assert_eq!(at, out.len());
            }
        }
    }

    #[test]
    fn requests_beyond_the_byte_budget_wait_and_all_complete() {
        // Four 20 MiB writes and reads against a 32 MiB budget: at most one is in flight.
        let mib = 1usize << 20;
        let disk = VecDisk(Mutex::new(vec![0u8; 96 * mib]));
        let neg = Negotiated {
            structured: false,
            base_allocation: false,
            block_size_agreed: false,
            tx_flags: super::handshake::transmission_flags(false, false),
        };
        let mut input = Vec::new();
        for i in 0..4u64 {
            let len = 20 * mib as u32;
            input.extend_from_slice(&Request::build(0, cmd::WRITE, i, i * 24 * mib as u64, len));
            input.extend(std::iter::repeat_n(i as u8 + 1, len as usize));
        }
        for i in 0..4u64 {
            let len = 20 * mib as u32;
            input.extend_from_slice(&Request::build(
                0,
                cmd::READ,
                10 + i,
                i * 24 * mib as u64,
                len,
            ));
        }
        let limits = Limits {
            inflight_bytes: 32 * mib,
            inflight_requests: 8,
        };
        let mut out = Vec::new();
        transmission::serve(Cursor::new(input), &mut out, None, &disk, neg, limits).unwrap();
        // Four 16-byte write replies and four read replies of 16 bytes + 20 MiB, in some order.
        assert_eq!(out.len(), 8 * 16 + 4 * 20 * mib);
        let d = disk.0.lock().unwrap();
        for i in 0..4usize {
            assert!(d[i * 24 * mib..i * 24 * mib + 20 * mib]
                .iter()
                .all(|&b| b == i as u8 + 1));
        }
    }

    /// A device with a thread of its own: each request completes on a thread of its own, later
    /// submissions first, and carries a modelled completion time the reply must wait for.
    struct Async {
        disk: std::sync::Arc<VecDisk>,
        hold: std::time::Duration,
    }

    struct AsyncQueue {
        disk: std::sync::Arc<VecDisk>,
        done: std::sync::Arc<dyn crate::device::Completer>,
        hold: std::time::Duration,
        submitted: std::sync::atomic::AtomicU64,
    }

    impl crate::device::Queue for AsyncQueue {
        fn submit(&self, tag: u64, req: crate::device::Request) {
            use crate::device::{Output, Request as Req};
            let n = self
                .submitted
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (disk, done) = (self.disk.clone(), self.done.clone());
            let not_before = std::time::Instant::now() + self.hold;
            std::thread::spawn(move || {
                // Later submissions complete first.
                std::thread::sleep(std::time::Duration::from_millis(20u64.saturating_sub(n)));
                let result = match req {
                    Req::Read {
                        offset,
                        len,
                        mut buf,
                    } => {
                        buf.resize(len, 0);
                        disk.read(offset, &mut buf).map(|()| Output::Read(buf))
                    }
                    Req::Write { offset, data, fua } => disk
                        .write(offset, &data, fua)
                        .map(|()| Output::Written(data)),
                    _ => Ok(Output::Done),
                };
                done.complete(tag, result, Some(not_before));
                done.flush();
            });
        }
    }

    impl BlockDevice for Async {
        fn size(&self) -> u64 {
            self.disk.size()
        }
        fn read_only(&self) -> bool {
            false
        }
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
            self.disk.read(offset, buf)
        }
        fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
            self.disk.write(offset, data, fua)
        }
        fn flush(&self) -> Result<(), DevError> {
            Ok(())
        }
        fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
            self.disk.trim(offset, len, fua)
        }
        fn write_zeroes(&self, offset: u64, len: u64, f: ZeroFlags) -> Result<(), DevError> {
            self.disk.write_zeroes(offset, len, f)
        }
        fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
            self.disk.block_status(offset, len)
        }
        fn stats_json(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn shutdown(&self) -> Result<(), DevError> {
            Ok(())
        }
        fn queue(
            &self,
            done: std::sync::Arc<dyn crate::device::Completer>,
        ) -> Option<Box<dyn crate::device::Queue>> {
            Some(Box::new(AsyncQueue {
                disk: self.disk.clone(),
                done,
                hold: self.hold,
                submitted: 0.into(),
            }))
        }
    }

    #[test]
    fn out_of_order_completions_are_matched_by_cookie_and_held_until_due() {
        let hold = std::time::Duration::from_millis(40);
        let mut data = vec![0u8; 64 * 1024];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 4096) as u8;
        }
        let disk = Async {
            disk: std::sync::Arc::new(VecDisk(Mutex::new(data))),
            hold,
        };
        let neg = Negotiated {
            structured: false,
            base_allocation: false,
            block_size_agreed: false,
            tx_flags: super::handshake::transmission_flags(false, false),
        };
        let mut input = Vec::new();
        for i in 0..16u64 {
            input.extend_from_slice(&Request::build(0, cmd::READ, 100 + i, i * 4096, 4096));
        }
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        transmission::serve(
            Cursor::new(input),
            &mut out,
            None,
            &disk,
            neg,
            Limits::default(),
        )
        .unwrap();
        // No reply left before its modelled completion time.
        assert!(started.elapsed() >= hold);
        assert_eq!(out.len(), 16 * (16 + 4096));
        let mut seen = Vec::new();
        for reply in out.chunks_exact(16 + 4096) {
            assert_eq!(&reply[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0]);
            let cookie = u64::from_be_bytes(reply[8..16].try_into().unwrap());
            let block = (cookie - 100) as u8;
            assert!(reply[16..].iter().all(|&b| b == block), "cookie {cookie}");
            seen.push(cookie);
        }
        seen.sort_unstable();
        assert_eq!(seen, (100..116).collect::<Vec<_>>());
    }

    /// A socket shared by the writer thread and a direct, non-blocking send: every write
    /// appends to the same stream.
    #[derive(Clone)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn direct_sends_the_socket_takes_in_part_are_finished_by_the_writer() {
        // The direct send takes at most 1,000 bytes a call and refuses every other call, as a
        // full socket would: the writer must send each rest before any other reply, so the
        // stream still tiles into whole replies, each with the data of its request.
        let disk = VecDisk(Mutex::new(
            (0..1u32 << 20).map(|i| (i % 251) as u8).collect(),
        ));
        let neg = Negotiated {
            structured: true,
            base_allocation: false,
            block_size_agreed: false,
            tx_flags: super::handshake::transmission_flags(false, true),
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut input = Vec::new();
        let mut asked = std::collections::HashMap::new();
        for cookie in 0..300u64 {
            let len = 1 + rng.below(9000) as u32;
            let offset = rng.below((1 << 20) - len as u64);
            asked.insert(cookie, (offset, len));
            input.extend_from_slice(&Request::build(0, cmd::READ, cookie, offset, len));
        }
        let sink = Shared(std::sync::Arc::new(Mutex::new(Vec::new())));
        let direct_sink = sink.clone();
        let calls = std::sync::atomic::AtomicU64::new(0);
        let direct: transmission::TrySend = Box::new(move |iov: &[std::io::IoSlice<'_>]| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 2 == 1 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut out = direct_sink.0.lock().unwrap();
            let mut room = 1000;
            for s in iov {
                let n = s.len().min(room);
                out.extend_from_slice(&s[..n]);
                room -= n;
            }
            Ok(1000 - room)
        });
        transmission::serve(
            Cursor::new(input),
            sink.clone(),
            Some(direct),
            &disk,
            neg,
            Limits::default(),
        )
        .unwrap();
        let out = sink.0.lock().unwrap();
        let d = disk.0.lock().unwrap();
        let mut at = 0;
        while at < out.len() {
            let magic = u32::from_be_bytes(out[at..at + 4].try_into().unwrap());
            assert_eq!(magic, super::wire::magic::STRUCTURED_REPLY, "at byte {at}");
            let kind = u16::from_be_bytes(out[at + 6..at + 8].try_into().unwrap());
            assert_eq!(kind, super::wire::chunk::TYPE_OFFSET_DATA);
            let cookie = u64::from_be_bytes(out[at + 8..at + 16].try_into().unwrap());
            let len = u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap()) as usize;
            let (offset, want) = asked.remove(&cookie).expect("one reply per request");
            let body = &out[at + 20..at + 20 + len];
            assert_eq!(u64::from_be_bytes(body[..8].try_into().unwrap()), offset);
            assert_eq!(len - 8, want as usize);
            assert_eq!(
                &body[8..],
                &d[offset as usize..offset as usize + want as usize]
            );
            at += 20 + len;
        }
        assert!(asked.is_empty(), "{} requests unanswered", asked.len());
    }
}
