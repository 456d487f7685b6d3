//! The block device an export serves: the seam between the NBD server and the firmware.
//!
//! The NBD layer validates requests (ranges, flags, read-only) before it calls in, so a device
//! sees only in-range, non-empty requests; it still checks and answers `Invalid` rather than
//! trusting its caller.
//!
//! Connections use a device through a queue pair ([`BlockDevice::open_queue`]): requests are
//! submitted without waiting, and results come back to the connection's [`Completer`], in
//! batches, from whatever thread runs the device.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Why a device operation failed; the NBD layer maps each to the errno the protocol names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevError {
    /// The request is malformed or out of range (EINVAL).
    Invalid(String),
    /// The write does not fit (ENOSPC).
    NoSpace,
    /// The export is read-only (EPERM).
    ReadOnly,
    /// A fast zero was asked for and cannot be done faster than writing (ENOTSUP).
    NotSupported,
    /// The device failed: media error, corrupt flash, power lost (EIO).
    Io(String),
}

impl std::fmt::Display for DevError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid request: {why}"),
            Self::NoSpace => f.write_str("no space left on device"),
            Self::ReadOnly => f.write_str("device is read-only"),
            Self::NotSupported => f.write_str("operation not supported"),
            Self::Io(why) => write!(f, "I/O error: {why}"),
        }
    }
}

impl std::error::Error for DevError {}

/// Flags of a WRITE_ZEROES request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// Durable before the reply (NBD_CMD_FLAG_FUA).
    pub fua: bool,
    /// The zeroes must be allocated, not a hole (NBD_CMD_FLAG_NO_HOLE).
    pub no_hole: bool,
    /// Fail with `NotSupported` unless zeroing is faster than writing (NBD_CMD_FLAG_FAST_ZERO).
    pub fast_zero: bool,
}

/// One run of a BLOCK_STATUS reply for `base:allocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes covered.
    pub length: u32,
    /// NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2).
    pub flags: u32,
}

/// A request submitted through a [`Queue`]. Buffers travel with it and come back in its
/// [`Output`], so a connection can recycle them.
#[derive(Debug)]
pub enum Request {
    /// Read `len` bytes at `offset` into `buf` (overwritten and resized to `len`).
    Read {
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    },
    /// Write `data` at `offset`.
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Discard a range.
    Trim { offset: u64, len: u64, fua: bool },
    /// Write zeroes over a range.
    WriteZeroes {
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    },
    /// Describe allocation (see [`BlockDevice::block_status`]).
    BlockStatus { offset: u64, len: u32 },
}

/// What a finished [`Request`] gives back.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Flush, trim, zeroes.
    Done,
    /// A read's data.
    Read(Vec<u8>),
    /// A write's buffer, handed back for reuse.
    Written(Vec<u8>),
    /// A block-status answer.
    Extents(Vec<Extent>),
}

/// The connection's side of a queue pair.
///
/// Called from the device's own thread: both methods must hand over and return, never wait for
/// the client.
pub trait Completer: Send + Sync {
    /// Request `tag` finished; its reply must not reach the client before `not_before` (the
    /// modelled completion time in `--latency real`).
    fn complete(&self, tag: u64, result: Result<Output, DevError>, not_before: Option<Instant>);
    /// The end of a burst of completions: push out what `complete` gathered.
    fn flush(&self);
}

/// The submission side of a queue pair.
pub trait Queue: Send + Sync {
    /// Submits request `tag`; its result goes to the queue's completer, exactly once.
    fn submit(&self, tag: u64, req: Request);
    /// Submits a burst of requests, in order (emptying `burst`). Devices that can take a burst
    /// at once (one lock, one flush of the completer) override it.
    fn submit_batch(&self, burst: &mut Vec<(u64, Request)>) {
        for (tag, req) in burst.drain(..) {
            self.submit(tag, req);
        }
    }
    /// A reply with a modelled due time began to go out `late` after it (for the stats).
    fn replied(&self, late: std::time::Duration) {
        let _ = late;
    }
}

/// Opens a queue pair on `device` whose completions go to `done`: the device's own queue if it
/// has one, else one that runs each request on the submitting thread.
pub fn open_queue<'a>(
    device: &'a dyn BlockDevice,
    done: Arc<dyn Completer>,
) -> Box<dyn Queue + 'a> {
    match device.queue(Arc::clone(&done)) {
        Some(queue) => queue,
        None => Box::new(InlineQueue { device, done }),
    }
}

/// The queue of a device with no thread of its own.
struct InlineQueue<'a> {
    device: &'a dyn BlockDevice,
    done: Arc<dyn Completer>,
}

impl Queue for InlineQueue<'_> {
    fn submit(&self, tag: u64, req: Request) {
        let d = self.device;
        let result = match req {
            Request::Read {
                offset,
                len,
                mut buf,
            } => {
                buf.resize(len, 0);
                d.read(offset, &mut buf).map(|()| Output::Read(buf))
            }
            Request::Write { offset, data, fua } => {
                d.write(offset, &data, fua).map(|()| Output::Written(data))
            }
            Request::Flush => d.flush().map(|()| Output::Done),
            Request::Trim { offset, len, fua } => d.trim(offset, len, fua).map(|()| Output::Done),
            Request::WriteZeroes { offset, len, flags } => {
                d.write_zeroes(offset, len, flags).map(|()| Output::Done)
            }
            Request::BlockStatus { offset, len } => {
                d.block_status(offset, len).map(Output::Extents)
            }
        };
        self.done.complete(tag, result, None);
        self.done.flush();
    }
}

/// A block device as the NBD server sees it. All methods may be called from many threads.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset` (any alignment).
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError>;
    /// Writes `data` at `offset` (any alignment); durable before return when `fua`.
    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError>;
    /// Makes every write completed so far, on any connection, durable.
    fn flush(&self) -> Result<(), DevError>;
    /// Discards a range; later reads of it return zeroes.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError>;
    /// Writes zeroes over a range.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), DevError>;
    /// Describes allocation of `[offset, offset + len)` as extents (at least one, covering a
    /// prefix of the range).
    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError>;
    /// Live counters, as the JSON object `GET /stats` returns.
    fn stats_json(&self) -> serde_json::Value;
    /// Flushes and stops the device (called once, at clean shutdown).
    fn shutdown(&self) -> Result<(), DevError>;
    /// Runs one step of background work now; whether more is pending. Devices without any
    /// have none to do.
    fn idle_step(&self) -> Result<bool, DevError> {
        Ok(false)
    }
    /// A queue pair into the device's own thread, for devices that have one; `None` (the
    /// default) makes [`open_queue`] run requests on the submitting thread.
    fn queue(&self, done: Arc<dyn Completer>) -> Option<Box<dyn Queue>> {
        let _ = done;
        None
    }
}

/// What `serve` asks of the backend.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Export size in bytes (a multiple of 4096).
    pub size: u64,
    /// Persist to this sparse image file (created when missing, reopened when present).
    pub image: Option<PathBuf>,
    /// Geometry profile name: tlc, femu or slc.
    pub profile: String,
    /// Latency mode: off, virtual or real.
    pub latency: String,
    /// Refuse writes.
    pub read_only: bool,
    /// Dies working in parallel, when not the profile's own (latency model only).
    pub dies: Option<u32>,
    /// Keep updates as inline deltas (MedFS).
    pub delta: bool,
    /// Power-loss protection: FLUSH programs nothing; shutdown runs the power-fail dump.
    pub plp: bool,
    /// Store float-weight blocks ZipNN-coded (issue 5).
    pub compress: bool,
    /// Node cache policy: `score` or `lru`.
    pub node_cache: String,
    /// Node cache slots, when not the default (used when the device is formatted).
    pub node_cache_slots: Option<u32>,
    /// Compact page cache slots, when not the default.
    pub compact_cache_slots: Option<u32>,
    /// Record every request to this block trace.
    pub trace: Option<PathBuf>,
    /// Spend idle time on background work (off for a replay, which runs the trace's own steps).
    pub background: bool,
}
