//! The NBD server: listeners, connections, and the protocol layers below them.
//!
//! Layers, each using only those below it:
//! - [`wire`]: constants and checked views of every message (no I/O);
//! - [`handshake`]: fixed-newstyle negotiation up to transmission;
//! - [`transmission`]: one connection's requests, workers and replies;
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
        transmission::serve(
            stream.try_clone()?,
            stream.try_clone()?,
            &*self.device,
            neg,
            self.config.limits,
        )
    }
}

fn accept_error(e: io::Error) {
    eprintln!("nandbox: accept failed: {e}");
    // Out of descriptors and the like: give the system a moment rather than spin.
    std::thread::sleep(Duration::from_millis(50));
}
