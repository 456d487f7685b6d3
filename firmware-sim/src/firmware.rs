//! The firmware runner: the FTL behind a lock, run by the host's submitting threads and by a
//! firmware thread of its own.
//!
//! Byte-addressed requests become 4 KiB FTL operations (read-modify-write for unaligned edges).
//! [`Firmware::submit_batch`] is the fast path: the submitting thread (an NBD connection's)
//! takes the lock and runs its burst itself, then hands each result to its [`Completer`] and
//! flushes it once, so a burst costs no thread hand-off at all. The firmware thread takes the
//! blocking calls ([`Firmware::read`] and friends: tests, tools, the control endpoint) from a
//! bounded queue and, whenever no submitter wants the FTL, spends its time on background work
//! (`Ftl::idle`: garbage collection a few pages at a time, wear levelling, checkpoints).
//!
//! Requests are executed one at a time, in the order they take the lock, so a FLUSH covers
//! every write that was completed before it, whichever connection sent it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use nandbox_core::ftl::CachePolicy;
use nandbox_core::ftl::{blocks_for_capacity, Error as FtlError, Ftl, FtlConfig, Lba};
use nandbox_core::nand::{Geometry, Nand, SLOT_BYTES};
use nandbox_core::stats::Stats;

use crate::latency::{CausalClock, LatencyMode, LatencyModel, Timed, Wait};
use crate::memory::{OwnedFtlMemory, DEFAULT_COMPACT_CACHE_SLOTS};
use crate::profile::Profile;
use crate::trace::{RecordKind, TraceWriter};
use crate::SimNand;

const BLOCK: u64 = SLOT_BYTES as u64;

/// How to build the device.
#[derive(Clone, Debug)]
pub struct FirmwareConfig {
    /// NAND part.
    pub profile: Profile,
    /// Logical capacity in bytes (a multiple of 4096).
    pub logical_bytes: u64,
    /// Persist to this image file (reopened when it exists, created otherwise).
    pub image: Option<PathBuf>,
    /// Never write a reopened image: the mount's checkpoint, background work and shutdown go to
    /// a RAM overlay, lost at exit (a read-only export of an image someone wants kept as is).
    pub image_read_only: bool,
    /// What modelled NAND time is used for.
    pub latency: LatencyMode,
    /// Node pages kept in RAM (used at format; an image keeps the count it was formatted with).
    pub node_cache_slots: u32,
    /// Compact page slots cached in RAM, 4 KiB each (0: none); not kept in an image.
    pub compact_cache_slots: u32,
    /// Keep updates as inline deltas (MedFS); `--delta on|off`.
    pub delta: bool,
    /// Store float-weight blocks ZipNN-coded and packed; `--compress on|off`.
    pub compress: bool,
    /// Node cache eviction policy; `--node-cache score|lru`.
    pub node_cache_policy: CachePolicy,
    /// Power-loss protection (`--plp on|off`): write buffers count as durable, so FLUSH and
    /// FUA program nothing; a shutdown runs the power-fail dump ([`nandbox_core::ftl::Ftl::power_fail`]).
    pub plp: bool,
    /// Over-provisioning, percent of the logical size.
    pub op_percent: u32,
    /// Requests that may wait in the submission queue.
    pub queue_depth: usize,
    /// Spend idle time on background work (GC, wear levelling, delta maintenance). Off makes
    /// the NAND contents depend only on the requests, not on their timing: for tests that need
    /// one exact layout.
    pub background: bool,
    /// Record every request run, and every background step, to this block trace
    /// ([`crate::trace`]).
    pub trace: Option<PathBuf>,
}

impl FirmwareConfig {
    /// A RAM device of `logical_bytes` on `profile` with the default settings.
    pub fn new(profile: Profile, logical_bytes: u64) -> Self {
        FirmwareConfig {
            profile,
            logical_bytes,
            image: None,
            image_read_only: false,
            latency: LatencyMode::Off,
            node_cache_slots: DEFAULT_NODE_CACHE_SLOTS,
            compact_cache_slots: DEFAULT_COMPACT_CACHE_SLOTS as u32,
            delta: true,
            compress: true,
            node_cache_policy: CachePolicy::Score,
            plp: false,
            op_percent: crate::profile::DEFAULT_OP_PERCENT,
            queue_depth: 256,
            background: true,
            trace: None,
        }
    }
}

/// Node cache slots unless configured: 1,024 node pages (4 MiB of RAM).
pub const DEFAULT_NODE_CACHE_SLOTS: u32 = 1024;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwareError {
    /// Out of range or malformed.
    Invalid(String),
    /// The device cannot take more data.
    NoSpace,
    /// The FTL or the NAND failed.
    Io(String),
    /// The firmware thread has stopped.
    Stopped,
}

impl std::fmt::Display for FirmwareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "invalid request: {why}"),
            Self::NoSpace => f.write_str("no space left on device"),
            Self::Io(why) => write!(f, "device error: {why}"),
            Self::Stopped => f.write_str("firmware stopped"),
        }
    }
}

impl std::error::Error for FirmwareError {}

/// Counters of a running device.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The FTL's counters by cause.
    pub stats: Stats,
    /// Erase count of every block.
    pub erase_counts: Vec<u32>,
    /// Bad blocks.
    pub bad_blocks: u32,
    /// Which blocks are bad.
    pub bad_block_list: Vec<u32>,
    /// The array's shape.
    pub geometry: Geometry,
    /// The NAND part.
    pub profile: Profile,
    /// Logical capacity in bytes.
    pub logical_bytes: u64,
    /// Modelled latency of reads and writes (empty when the mode is `off`).
    pub latency: LatencySummary,
    /// Seconds since the device started.
    pub uptime_s: f64,
    /// Records written to the block trace so far, when one is kept: where a phase of the
    /// workload starts, for `nandbox replay --snapshot`.
    pub trace_records: Option<u64>,
}

/// Modelled request latencies, nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct LatencySummary {
    /// Reads measured.
    pub reads: u64,
    /// Mean read latency.
    pub read_mean_ns: u64,
    /// 99th percentile read latency.
    pub read_p99_ns: u64,
    /// Writes measured.
    pub writes: u64,
    /// Mean write latency.
    pub write_mean_ns: u64,
    /// 99th percentile write latency.
    pub write_p99_ns: u64,
    /// Replies with a modelled due time (`real` mode) that the host reported sending
    /// ([`Firmware::note_reply_late`]).
    pub replies: u64,
    /// Median of how long after its due time a reply began to go out: the host's own delay on
    /// top of the model, before the transport's.
    pub reply_late_p50_ns: u64,
    /// 99th percentile of the same.
    pub reply_late_p99_ns: u64,
}

/// A completed request: its result and, in `real` latency mode, when the reply may go out.
pub struct Completion<T> {
    /// The result.
    pub result: Result<T, FirmwareError>,
    /// Reply no earlier than this.
    pub not_before: Option<Instant>,
}

impl<T> Completion<T> {
    /// Waits until the modelled completion time (real latency mode), then gives the result.
    pub fn wait(self) -> Result<T, FirmwareError> {
        if let Some(at) = self.not_before {
            wait_until(at);
        }
        self.result
    }
}

/// Waits shorter than this are about as long as a NAND read, where a sleep's overshoot (timer
/// slack plus wake-up, tens of microseconds on a busy machine) would be a large error: their last
/// [`SPIN_NS`] is spun. Longer waits (programs, a full write buffer) just sleep, so many waiting
/// workers do not burn the CPU the firmware thread needs.
const PRECISE_BELOW_NS: u64 = 250_000;
/// The spun tail of a short wait.
pub const SPIN_NS: u64 = 30_000;

/// Gives this thread a 1 ns timer slack (the default 50 µs would be half a NAND read time), once.
/// Threads that wait for modelled completion times call it before they sleep.
pub fn precise_timers() {
    thread_local! {
        static PRECISE_TIMERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    PRECISE_TIMERS.with(|set| {
        if !set.get() {
            // Best effort: without it sleeps are only less precise.
            let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
            set.set(true);
        }
    });
}

/// Waits until `at` (a modelled completion time): sleeps, then spins the last stretch of a short
/// wait so the sleep's overshoot does not land on the reply.
pub fn wait_until(at: Instant) {
    precise_timers();
    let left = at.saturating_duration_since(Instant::now());
    if left >= Duration::from_nanos(PRECISE_BELOW_NS) {
        std::thread::sleep(left);
        return;
    }
    let spin = Duration::from_nanos(SPIN_NS);
    if left > spin {
        std::thread::sleep(left - spin);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

/// A request for [`Firmware::submit`]. Buffers travel with the request and come back in its
/// [`Output`], so a submitter can recycle them instead of allocating (and zeroing) per request.
#[derive(Debug)]
pub enum Request {
    /// Read `len` bytes at `offset` into `buf` (its contents are overwritten; it is resized to
    /// `len`, so a recycled buffer of the right size costs nothing).
    Read {
        offset: u64,
        len: usize,
        buf: Vec<u8>,
    },
    /// Write `data` at `offset`; durable before completion when `fua`.
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    /// Discard a range (see [`Firmware::trim`]).
    Trim { offset: u64, len: u64, fua: bool },
    /// Write zeroes over a range (see [`Firmware::write_zeroes`]).
    WriteZeroes {
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    },
    /// Make every write completed so far durable.
    Flush,
    /// Allocation of a range as runs of (bytes, mapped).
    Mapping { offset: u64, len: u64 },
}

/// What a finished [`Request`] gives back.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Trim, zeroes, flush.
    Done,
    /// A read's data (the request's buffer).
    Read(Vec<u8>),
    /// A write's buffer, handed back for reuse.
    Written(Vec<u8>),
    /// A mapping's runs.
    Mapping(Vec<(u64, bool)>),
}

/// The submitter's side of a queue pair: where the firmware delivers completions.
///
/// Both methods run on the submitting thread, after the FTL's lock is released, and must not
/// block on the client: they should hand the result over, e.g. to a queue that a writer thread
/// drains.
pub trait Completer: Send + Sync {
    /// Request `tag` finished. In `real` latency mode `not_before` is when the modelled NAND
    /// time is over: the reply must not reach the client earlier.
    fn complete(
        &self,
        tag: u64,
        result: Result<Output, FirmwareError>,
        not_before: Option<Instant>,
    );
    /// The end of a burst of completions: push out what `complete` gathered.
    fn flush(&self);
}

enum Job {
    /// A blocking call's request; a job dropped unrun drops the sender, which the caller sees
    /// as `Stopped`.
    Io(Request, SyncSender<Completion<Output>>),
    /// One step of background work, run now (for a replay, whose device has no idle time of
    /// its own); answers whether more is pending.
    Idle(SyncSender<bool>),
    Stats(SyncSender<Snapshot>),
    Shutdown(SyncSender<Completion<()>>),
}

/// A job and when it was submitted: the modelled NAND time of a request starts at submission,
/// as a real device's starts when the host rings the doorbell, not when the firmware gets to it.
type Submitted = (Instant, Job);

/// A running device: the firmware thread, the queue into it, and the FTL both share.
pub struct Firmware {
    tx: SyncSender<Submitted>,
    /// The FTL, run by submitters themselves ([`Firmware::submit_batch`]) and by the firmware
    /// thread (blocking calls, background work).
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    logical_bytes: u64,
    /// How late the host sent replies, as it reports them: kept here, not on the firmware
    /// thread, so a report costs the sender a short lock, never a trip through the queue.
    reply_late: Mutex<LatencyLog>,
}

type Dev = Timed<SimNand>;

/// Opens or creates the NAND array the config asks for.
fn open_nand(config: &FirmwareConfig) -> Result<(SimNand, bool), FirmwareError> {
    if let Some(path) = config.image.as_deref().filter(|path| path.exists()) {
        // A reopened image keeps its own geometry and size, whatever the config asks.
        let sim = if config.image_read_only {
            SimNand::open_image_read_only(path)
        } else {
            SimNand::open_image(path)
        }
        .map_err(|e| FirmwareError::Io(format!("{}: {e}", path.display())))?;
        return Ok((sim, true));
    }
    // Beyond u32 the size fails the check below like any other too large one.
    let logical_blocks = u32::try_from(config.logical_bytes / BLOCK).unwrap_or(u32::MAX);
    let p = config.profile;
    // Checked before a byte of RAM or an image file is committed to the device: an impossible
    // size must fail at once with the reason and the limit, not after allocating its memory
    // (gigabytes) and leaving an unformatted image behind.
    if let Err(why) = new_device_fits(config, logical_blocks) {
        let most = largest_fitting(config) as u64 * BLOCK;
        if most == 0 {
            return Err(FirmwareError::Invalid(why));
        }
        return Err(FirmwareError::Invalid(format!(
            "size {} is too large for the {} profile ({why}); the largest {} device is {} \
             bytes ({} GiB)",
            config.logical_bytes,
            p.name,
            p.name,
            most,
            most >> 30
        )));
    }
    let geometry = new_geometry(config, logical_blocks);
    match &config.image {
        None => Ok((SimNand::new_ram(geometry), false)),
        Some(path) => {
            let sim = SimNand::create_image(path, geometry)
                .map_err(|e| FirmwareError::Io(format!("{}: {e}", path.display())))?;
            Ok((sim, false))
        }
    }
}

/// The geometry of a new device of `logical_blocks` blocks with `config`'s profile and
/// over-provisioning.
fn new_geometry(config: &FirmwareConfig, logical_blocks: u32) -> Geometry {
    let p = config.profile;
    let blocks = blocks_for_capacity(
        p.page_bytes,
        p.pages_per_block,
        logical_blocks,
        config.op_percent,
    );
    p.geometry(blocks)
}

/// Whether a new device of `logical_blocks` blocks can be formatted with `config`'s profile and
/// settings: its geometry is addressable and the FTL accepts the configuration.
fn new_device_fits(config: &FirmwareConfig, logical_blocks: u32) -> Result<(), String> {
    let geometry = new_geometry(config, logical_blocks);
    geometry.validate().map_err(|e| e.to_string())?;
    let spb = geometry.slots_per_page() * geometry.pages_per_block;
    FtlConfig {
        logical_blocks,
        node_cache_slots: config.node_cache_slots.min(spb),
    }
    .check(&geometry)
    .map_err(|e| e.to_string())
}

/// The most 4 KiB blocks a new device with `config`'s profile and settings can export (0 when
/// none fits): a bisection, as the limits grow with the size.
fn largest_fitting(config: &FirmwareConfig) -> u32 {
    let (mut lo, mut hi) = (0u32, u32::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if new_device_fits(config, mid).is_ok() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

impl Firmware {
    /// Builds the device (formatting a new array or mounting an existing image) and starts the
    /// firmware thread. Errors (a corrupt image, a bad size) are reported before any thread runs.
    pub fn start(config: FirmwareConfig) -> Result<Firmware, FirmwareError> {
        if config.logical_bytes == 0 || !config.logical_bytes.is_multiple_of(BLOCK) {
            return Err(FirmwareError::Invalid(format!(
                "size {} is not a non-zero multiple of 4096",
                config.logical_bytes
            )));
        }
        let (tx, rx) = mpsc::sync_channel(config.queue_depth.max(1));
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let cfg = config.clone();
        let thread = std::thread::Builder::new()
            .name("nandbox-firmware".into())
            .spawn(move || run_thread(cfg, rx, ready_tx))
            .map_err(|e| FirmwareError::Io(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok((logical_bytes, shared))) => Ok(Firmware {
                tx,
                shared,
                thread: Mutex::new(Some(thread)),
                logical_bytes,
                reply_late: Mutex::new(LatencyLog::new()),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(FirmwareError::Io(
                    "firmware thread died while starting".into(),
                ))
            }
        }
    }

    /// Logical capacity in bytes (from the image when one was reopened).
    pub fn size(&self) -> u64 {
        self.logical_bytes
    }

    /// Runs `req` and waits for it (and, in `real` latency mode, for its modelled time).
    fn call(&self, req: Request) -> Result<Output, FirmwareError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send((Instant::now(), Job::Io(req, reply)))
            .map_err(|_| FirmwareError::Stopped)?;
        rx.recv().map_err(|_| FirmwareError::Stopped)?.wait()
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), FirmwareError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.logical_bytes => Ok(()),
            _ => Err(FirmwareError::Invalid(format!(
                "range {offset}+{len} beyond the device"
            ))),
        }
    }

    /// Runs `req`; its result goes to `to` as request `tag` (see [`Firmware::submit_batch`]).
    pub fn submit(&self, req: Request, tag: u64, to: &Arc<dyn Completer>) {
        self.submit_batch(std::iter::once((tag, req)), to);
    }

    /// Runs a burst of requests on the calling thread, in order, under the FTL's lock, then
    /// hands every result to `to` and flushes it once. A request out of range completes with
    /// `Invalid`; after shutdown every request completes with `Stopped`.
    ///
    /// The submitter runs its requests itself, as a drive's host interface would hand them to
    /// a free core, instead of queueing them for the firmware thread: on a small machine the
    /// wake-ups and context switches of that hand-off (the submitter's, then the firmware's,
    /// per burst) cost more than a 4 KiB request's FTL work. Requests still run one at a time
    /// and in the order they take the lock, so a FLUSH covers every write completed before it,
    /// whichever connection sent it.
    pub fn submit_batch(
        &self,
        reqs: impl IntoIterator<Item = (u64, Request)>,
        to: &Arc<dyn Completer>,
    ) {
        let submitted = Instant::now();
        let mut done = Vec::new();
        self.shared.hosts.fetch_add(1, Ordering::SeqCst);
        self.shared.bursts.fetch_add(1, Ordering::Relaxed);
        {
            let mut runner = self.shared.lock();
            for (tag, req) in reqs {
                if let Err(e) = self.check_request(&req) {
                    done.push((tag, Err(e), None));
                    continue;
                }
                let Some(r) = runner.as_mut() else {
                    done.push((tag, Err(FirmwareError::Stopped), None));
                    continue;
                };
                r.record_request(&req);
                let (result, not_before) = r.run(submitted, req);
                done.push((tag, result, not_before));
            }
        }
        self.shared.hosts.fetch_sub(1, Ordering::SeqCst);
        if done.is_empty() {
            return;
        }
        for (tag, result, not_before) in done {
            to.complete(tag, result, not_before);
        }
        to.flush();
    }

    /// Checks a request's range against the device.
    fn check_request(&self, req: &Request) -> Result<(), FirmwareError> {
        let range = match req {
            Request::Read { offset, len, .. } => Some((*offset, *len as u64)),
            Request::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            Request::Trim { offset, len, .. }
            | Request::WriteZeroes { offset, len, .. }
            | Request::Mapping { offset, len } => Some((*offset, *len)),
            Request::Flush => None,
        };
        match range {
            Some((offset, len)) => self.check(offset, len),
            None => Ok(()),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, FirmwareError> {
        self.check(offset, len as u64)?;
        let buf = Vec::new();
        match self.call(Request::Read { offset, len, buf })? {
            Output::Read(data) => Ok(data),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `data` at `offset`; durable before returning when `fua`.
    pub fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), FirmwareError> {
        self.check(offset, data.len() as u64)?;
        self.call(Request::Write { offset, data, fua }).map(drop)
    }

    /// Discards a range: whole 4 KiB blocks are unmapped, partial edges are zeroed.
    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), FirmwareError> {
        self.check(offset, len)?;
        self.call(Request::Trim { offset, len, fua }).map(drop)
    }

    /// Writes zeroes over a range: as unmapped blocks, which read as zeroes, unless `no_hole`
    /// asks for the zeroes to be allocated, in which case zero blocks are written.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), FirmwareError> {
        self.check(offset, len)?;
        let req = Request::WriteZeroes {
            offset,
            len,
            fua,
            no_hole,
        };
        self.call(req).map(drop)
    }

    /// Makes every write completed so far durable.
    pub fn flush(&self) -> Result<(), FirmwareError> {
        self.call(Request::Flush).map(drop)
    }

    /// Allocation of `[offset, offset+len)` as runs of (bytes, mapped).
    pub fn mapping(&self, offset: u64, len: u64) -> Result<Vec<(u64, bool)>, FirmwareError> {
        self.check(offset, len)?;
        match self.call(Request::Mapping { offset, len })? {
            Output::Mapping(runs) => Ok(runs),
            other => Err(unexpected(other)),
        }
    }

    /// Runs one step of background work (GC, wear levelling, delta maintenance) now, as the
    /// device does by itself when idle; answers whether more is pending. For replays, which run
    /// with [`FirmwareConfig::background`] off and put the steps where the trace has them.
    pub fn idle_step(&self) -> Result<bool, FirmwareError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send((Instant::now(), Job::Idle(reply)))
            .map_err(|_| FirmwareError::Stopped)?;
        rx.recv().map_err(|_| FirmwareError::Stopped)
    }

    /// The device's counters.
    pub fn snapshot(&self) -> Result<Snapshot, FirmwareError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send((Instant::now(), Job::Stats(reply)))
            .map_err(|_| FirmwareError::Stopped)?;
        let mut snapshot = rx.recv().map_err(|_| FirmwareError::Stopped)?;
        let late = self.reply_late.lock().unwrap_or_else(|p| p.into_inner());
        let (_, p50, p99) = late.mean_p50_p99();
        snapshot.latency.replies = late.count;
        snapshot.latency.reply_late_p50_ns = p50;
        snapshot.latency.reply_late_p99_ns = p99;
        Ok(snapshot)
    }

    /// Records that a reply with a modelled due time (`real` mode) began to go out `late` after
    /// it. The host calls it so the stats can show whether its own hand-offs keep to the model.
    pub fn note_reply_late(&self, late: Duration) {
        let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        self.reply_late
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(ns);
    }

    /// Flushes and stops the firmware thread. Later calls fail with `Stopped`.
    pub fn shutdown(&self) -> Result<(), FirmwareError> {
        let (reply, rx) = mpsc::sync_channel(1);
        let result = self
            .tx
            .send((Instant::now(), Job::Shutdown(reply)))
            .map_err(|_| FirmwareError::Stopped)
            .and_then(|()| rx.recv().map_err(|_| FirmwareError::Stopped))
            .and_then(Completion::wait);
        if let Some(t) = self
            .thread
            .lock()
            .map_err(|_| FirmwareError::Stopped)?
            .take()
        {
            let _ = t.join();
        }
        match result {
            Err(FirmwareError::Stopped) => Ok(()),
            other => other,
        }
    }
}

/// An output of the wrong kind for its request: a firmware bug, reported rather than panicked on.
fn unexpected(output: Output) -> FirmwareError {
    FirmwareError::Io(format!("firmware answered with {output:?}"))
}

impl Drop for Firmware {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Latency samples kept for percentiles: a bounded reservoir, so memory does not grow.
struct LatencyLog {
    count: u64,
    sum: u128,
    samples: Vec<u64>,
    rng: crate::SplitMix64,
}

const RESERVOIR: usize = 16_384;

impl LatencyLog {
    fn new() -> Self {
        LatencyLog {
            count: 0,
            sum: 0,
            samples: Vec::new(),
            rng: crate::SplitMix64::new(1),
        }
    }

    fn record(&mut self, ns: u64) {
        self.count += 1;
        self.sum += ns as u128;
        if self.samples.len() < RESERVOIR {
            self.samples.push(ns);
        } else {
            let i = self.rng.next_u64() % self.count;
            if (i as usize) < RESERVOIR {
                self.samples[i as usize] = ns;
            }
        }
    }

    fn mean_p50_p99(&self) -> (u64, u64, u64) {
        if self.count == 0 {
            return (0, 0, 0);
        }
        let mut s = self.samples.clone();
        s.sort_unstable();
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        ((self.sum / self.count as u128) as u64, at(0.5), at(0.99))
    }
}

/// What submitters and the firmware thread share.
struct Shared {
    /// The FTL and its bookkeeping; `None` once the device is shut down.
    runner: Mutex<Option<Runner>>,
    /// Submitters waiting for or holding `runner`: background work steps aside for them.
    hosts: AtomicUsize,
    /// Bursts run so far: while none comes, the firmware thread looks for work less often.
    bursts: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<Runner>> {
        // A panic while holding the lock leaves the FTL as it was at the panic: later requests
        // still get answers (errors if the FTL is inconsistent), never a hang.
        self.runner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Runner {
    /// Its tables are leaked ([`leak_memory`]) so it can be shared between threads.
    ftl: Ftl<'static, Dev>,
    config: FirmwareConfig,
    started: Instant,
    /// Virtual time in `virtual` latency mode (see [`CausalClock`]).
    clock: CausalClock,
    reads: LatencyLog,
    writes: LatencyLog,
    block: Vec<u8>,
    /// Where requests are recorded, while recording works.
    trace: Option<TraceWriter>,
    /// Records written to it.
    trace_records: u64,
}

/// How often the firmware thread looks for background work while the host is active, and
/// while it has been quiet since the last look.
const IDLE_POLL: Duration = Duration::from_millis(2);
const QUIET_POLL: Duration = Duration::from_millis(50);
/// How long background work waits while a submitter wants the FTL.
const STEP_ASIDE: Duration = Duration::from_micros(50);

/// The FTL's tables for the life of the process. The FTL borrows its memory, and an FTL that
/// several threads run must not borrow from one thread's stack; the tables (a few MiB for a
/// 1 GiB device, the node and compact page caches mostly) are allocated once per device started, which is once
/// per `nandbox serve` process. The NAND array itself is owned by the FTL and freed with it.
fn leak_memory(memory: OwnedFtlMemory) -> &'static mut OwnedFtlMemory {
    Box::leak(Box::new(memory))
}

type Ready = Result<(u64, Arc<Shared>), FirmwareError>;

fn run_thread(config: FirmwareConfig, rx: Receiver<Submitted>, ready: SyncSender<Ready>) {
    let (sim, existing) = match open_nand(&config) {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let geometry = sim.geometry();
    let model = match config.latency {
        LatencyMode::Off => None,
        _ => Some(LatencyModel::new(config.profile, &geometry)),
    };
    let mut nand = Timed::new(sim, model);
    let ftl_config = if existing {
        // An image carries its own configuration: size the memory from what is on flash.
        let mut scratch = vec![0u8; (geometry.page_bytes + geometry.spare_bytes) as usize];
        match Ftl::probe(&mut nand, &mut scratch) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(FirmwareError::Io(format!("mount: {e}"))));
                return;
            }
        }
    } else {
        let slots_per_block = geometry.slots_per_page() * geometry.pages_per_block;
        FtlConfig {
            logical_blocks: (config.logical_bytes / BLOCK) as u32,
            node_cache_slots: config.node_cache_slots.min(slots_per_block),
        }
    };
    let memory = leak_memory(
        OwnedFtlMemory::new(&geometry, &ftl_config)
            .with_compact_cache(config.compact_cache_slots as usize),
    );
    let ftl = if existing {
        Ftl::mount(nand, memory.lend()).map_err(|e| FirmwareError::Io(format!("mount: {e}")))
    } else {
        Ftl::format(nand, ftl_config, memory.lend())
            .map_err(|e| FirmwareError::Io(format!("format: {e}")))
    };
    let ftl = match ftl {
        Ok(f) => f,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ftl = ftl;
    ftl.set_delta(config.delta);
    ftl.set_plp(config.plp);
    ftl.set_compress(config.compress);
    ftl.set_cache_policy(config.node_cache_policy);
    if let Some(m) = ftl.nand_mut().model() {
        m.reset();
    }
    let logical_bytes = ftl.logical_blocks() as u64 * BLOCK;
    let trace = match &config.trace {
        Some(path) => match TraceWriter::create(path, logical_bytes) {
            Ok(t) => Some(t),
            Err(e) => {
                let why = format!("creating trace {}: {e}", path.display());
                let _ = ready.send(Err(FirmwareError::Io(why)));
                return;
            }
        },
        None => None,
    };
    let runner = Runner {
        ftl,
        config,
        started: Instant::now(),
        clock: CausalClock::default(),
        reads: LatencyLog::new(),
        writes: LatencyLog::new(),
        block: vec![0; SLOT_BYTES],
        trace,
        trace_records: 0,
    };
    let shared = Arc::new(Shared {
        runner: Mutex::new(Some(runner)),
        hosts: AtomicUsize::new(0),
        bursts: AtomicU64::new(0),
    });
    if ready
        .send(Ok((logical_bytes, Arc::clone(&shared))))
        .is_err()
    {
        return;
    }
    serve(&shared, rx);
}

/// The firmware thread: blocking calls and control jobs from the queue, and, whenever no
/// submitter wants the FTL, background work one bounded step at a time.
fn serve(shared: &Shared, rx: Receiver<Submitted>) {
    let background = shared.lock().as_ref().is_some_and(|r| r.config.background);
    let mut pending = background;
    let mut seen = u64::MAX;
    loop {
        let bursts = shared.bursts.load(Ordering::Relaxed);
        let wait = match (pending, bursts == seen) {
            (true, _) => Duration::ZERO,
            (false, false) => IDLE_POLL,
            (false, true) => QUIET_POLL,
        };
        seen = bursts;
        match rx.recv_timeout(wait) {
            Ok(job) => {
                let mut guard = shared.lock();
                let Some(r) = guard.as_mut() else { return };
                if !r.handle(job) {
                    *guard = None;
                    return;
                }
                pending = background;
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if !background {
            continue;
        }
        if shared.hosts.load(Ordering::SeqCst) > 0 {
            // Pending work waits a moment; without any, the next look is an idle poll away.
            if pending {
                std::thread::sleep(STEP_ASIDE);
            }
            continue;
        }
        let mut guard = shared.lock();
        let Some(r) = guard.as_mut() else { return };
        // Background NAND work starts now, not when the last request did.
        r.begin(Instant::now());
        r.record(RecordKind::Idle, 0, 0, &[]);
        pending = r.ftl.idle().unwrap_or(false);
    }
    if let Some(mut r) = shared.lock().take() {
        let _ = r.ftl.power_fail();
        r.end_trace();
    }
}

fn io<E: std::fmt::Display>(e: FtlError<E>) -> FirmwareError {
    match e {
        FtlError::NoSpace => FirmwareError::NoSpace,
        FtlError::OutOfRange { .. } => FirmwareError::Invalid(e.to_string()),
        other => FirmwareError::Io(other.to_string()),
    }
}

impl Runner {
    /// Appends a record to the trace, if one is kept. A trace that cannot be written is given
    /// up (named on stderr), never a reason to fail the host's I/O.
    fn record(&mut self, kind: RecordKind, offset: u64, len: u64, data: &[u8]) {
        if let Some(t) = &mut self.trace {
            if let Err(e) = t.record(kind, offset, len, data) {
                eprintln!("nandbox: trace recording stopped: {e}");
                self.trace = None;
            } else {
                self.trace_records += 1;
            }
        }
    }

    /// Writes out what the trace still buffers.
    fn end_trace(&mut self) {
        if let Some(mut t) = self.trace.take() {
            if let Err(e) = t.flush() {
                eprintln!("nandbox: trace recording stopped: {e}");
            }
        }
    }

    /// Records a request before it runs.
    fn record_request(&mut self, req: &Request) {
        if self.trace.is_none() {
            return;
        }
        match req {
            Request::Read { offset, len, .. } => {
                self.record(RecordKind::Read, *offset, *len as u64, &[])
            }
            Request::Write { offset, data, fua } => self.record(
                RecordKind::Write { fua: *fua },
                *offset,
                data.len() as u64,
                data,
            ),
            Request::Trim { offset, len, fua } => {
                self.record(RecordKind::Trim { fua: *fua }, *offset, *len, &[])
            }
            Request::WriteZeroes {
                offset,
                len,
                fua,
                no_hole,
            } => self.record(
                RecordKind::Zeroes {
                    fua: *fua,
                    no_hole: *no_hole,
                },
                *offset,
                *len,
                &[],
            ),
            Request::Flush => self.record(RecordKind::Flush, 0, 0, &[]),
            Request::Mapping { .. } => {}
        }
    }

    /// Starts the latency clock for a request submitted at `submitted`.
    fn begin(&mut self, submitted: Instant) -> u64 {
        let mut now = self.wall_ns(submitted);
        if self.config.latency == LatencyMode::Virtual {
            now = self.clock.now(now);
        }
        if let Some(m) = self.ftl.nand_mut().model() {
            m.begin(now);
        }
        now
    }

    /// Nanoseconds from the device's start to `at`.
    fn wall_ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_nanos() as u64
    }

    /// Ends a request: records its modelled latency and says when its reply may go out.
    fn end(&mut self, began: u64, wait: Wait) -> Option<Instant> {
        let done = self.ftl.nand_mut().model().map(|m| m.complete(wait))?;
        let latency = done.saturating_sub(began);
        if self.config.latency == LatencyMode::Virtual {
            // The reply goes out now (it never waits in this mode).
            let wall = self.wall_ns(Instant::now());
            self.clock.replied(wall, done);
        }
        if wait == Wait::AllOps {
            self.reads.record(latency)
        } else {
            self.writes.record(latency)
        }
        match self.config.latency {
            LatencyMode::Real => Some(self.started + Duration::from_nanos(done)),
            _ => None,
        }
    }

    /// Handles one job; false once the device is shut down.
    fn handle(&mut self, (submitted, job): Submitted) -> bool {
        match job {
            Job::Io(req, reply) => {
                self.record_request(&req);
                let (result, not_before) = self.run(submitted, req);
                let _ = reply.send(Completion { result, not_before });
            }
            Job::Idle(reply) => {
                self.record(RecordKind::Idle, 0, 0, &[]);
                let _ = reply.send(self.ftl.idle().unwrap_or(false));
            }
            Job::Stats(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Job::Shutdown(reply) => {
                self.end_trace();
                let mut result = self.ftl.power_fail().map_err(io);
                if result.is_ok() {
                    let sync = self.ftl.nand_mut().inner_mut().sync();
                    result = sync.map_err(|e| FirmwareError::Io(e.to_string()));
                }
                let _ = reply.send(Completion {
                    result,
                    not_before: None,
                });
                return false;
            }
        }
        true
    }

    /// Runs one request: its result and, in `real` latency mode, when its reply may go out.
    fn run(
        &mut self,
        submitted: Instant,
        req: Request,
    ) -> (Result<Output, FirmwareError>, Option<Instant>) {
        // FUA and flush wait for the flash; plain writes only for room in the write buffer.
        // With power-loss protection the buffer is durable: nothing waits for the flash.
        let durable = if self.config.plp {
            Wait::Buffered
        } else {
            Wait::Durable
        };
        let write_wait = |fua: bool| if fua { durable } else { Wait::Buffered };
        let (result, wait) = match req {
            Request::Read {
                offset,
                len,
                mut buf,
            } => {
                let t = self.begin(submitted);
                buf.resize(len, 0);
                let result = self.read(offset, &mut buf).map(|()| Output::Read(buf));
                return (result, self.end(t, Wait::AllOps));
            }
            Request::Mapping { offset, len } => {
                return (self.mapping(offset, len).map(Output::Mapping), None);
            }
            Request::Write { offset, data, fua } => {
                let t = self.begin(submitted);
                let result = self.write(offset, &data).and_then(|()| self.fua(fua));
                ((t, result.map(|()| Output::Written(data))), write_wait(fua))
            }
            Request::Trim { offset, len, fua }
            | Request::WriteZeroes {
                offset,
                len,
                fua,
                no_hole: false,
            } => {
                let t = self.begin(submitted);
                let result = self.discard(offset, len).and_then(|()| self.fua(fua));
                ((t, result.map(|()| Output::Done)), write_wait(fua))
            }
            Request::WriteZeroes {
                offset,
                len,
                fua,
                no_hole: true,
            } => {
                let t = self.begin(submitted);
                let result = self
                    .write_zero_blocks(offset, len)
                    .and_then(|()| self.fua(fua));
                ((t, result.map(|()| Output::Done)), write_wait(fua))
            }
            Request::Flush => {
                let t = self.begin(submitted);
                let result = self.ftl.flush().map_err(io);
                ((t, result.map(|()| Output::Done)), durable)
            }
        };
        let (t, result) = result;
        (result, self.end(t, wait))
    }

    /// Makes the request durable when it carried FUA.
    fn fua(&mut self, fua: bool) -> Result<(), FirmwareError> {
        if fua {
            self.ftl.flush().map_err(io)
        } else {
            Ok(())
        }
    }

    fn read(&mut self, offset: u64, out: &mut [u8]) -> Result<(), FirmwareError> {
        let len = out.len();
        let mut done = 0usize;
        while done < len {
            let at = offset + done as u64;
            let lba = Lba((at / BLOCK) as u32);
            let skip = (at % BLOCK) as usize;
            let take = (SLOT_BYTES - skip).min(len - done);
            if skip == 0 && take == SLOT_BYTES {
                let dst: &mut [u8; SLOT_BYTES] = (&mut out[done..done + SLOT_BYTES])
                    .try_into()
                    .expect("4 KiB");
                self.ftl.read(lba, dst).map_err(io)?;
            } else {
                let buf: &mut [u8; SLOT_BYTES] =
                    self.block.as_mut_slice().try_into().expect("4 KiB");
                self.ftl.read(lba, buf).map_err(io)?;
                out[done..done + take].copy_from_slice(&self.block[skip..skip + take]);
            }
            done += take;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FirmwareError> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let lba = Lba((at / BLOCK) as u32);
            let skip = (at % BLOCK) as usize;
            let take = (SLOT_BYTES - skip).min(data.len() - done);
            let whole = (data.len() - done) / SLOT_BYTES * SLOT_BYTES;
            if skip == 0 && whole > 0 {
                // The aligned blocks in one call: the FTL treats a run covering whole groups
                // as the sequential stream it is (see `Ftl::write_blocks`).
                self.ftl
                    .write_blocks(lba, &data[done..done + whole])
                    .map_err(io)?;
                done += whole;
                continue;
            }
            // Read-modify-write of a partial block, inside the device.
            let buf: &mut [u8; SLOT_BYTES] = self.block.as_mut_slice().try_into().expect("4 KiB");
            self.ftl.read(lba, buf).map_err(io)?;
            buf[skip..skip + take].copy_from_slice(&data[done..done + take]);
            self.ftl.write(lba, buf).map_err(io)?;
            done += take;
        }
        Ok(())
    }

    /// Unmaps whole blocks and zeroes partial edges.
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), FirmwareError> {
        let end = offset + len;
        let first_whole = offset.div_ceil(BLOCK);
        let last_whole = end / BLOCK;
        if first_whole >= last_whole {
            return self.write(offset, &vec![0; len as usize]);
        }
        if !offset.is_multiple_of(BLOCK) {
            let edge = first_whole * BLOCK - offset;
            self.write(offset, &vec![0; edge as usize])?;
        }
        let count = (last_whole - first_whole) as u32;
        self.ftl.trim(Lba(first_whole as u32), count).map_err(io)?;
        if !end.is_multiple_of(BLOCK) {
            let tail = end - last_whole * BLOCK;
            self.write(last_whole * BLOCK, &vec![0; tail as usize])?;
        }
        Ok(())
    }

    /// Writes allocated zeroes, a block at a time so no buffer grows with the request.
    fn write_zero_blocks(&mut self, offset: u64, len: u64) -> Result<(), FirmwareError> {
        let zeros = vec![0u8; SLOT_BYTES];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let piece = (BLOCK - at % BLOCK).min(end - at);
            self.write(at, &zeros[..piece as usize])?;
            at += piece;
        }
        Ok(())
    }

    fn mapping(&mut self, offset: u64, len: u64) -> Result<Vec<(u64, bool)>, FirmwareError> {
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let lba = Lba((at / BLOCK) as u32);
            let next = ((at / BLOCK) + 1) * BLOCK;
            let piece = next.min(end) - at;
            let mapped = self.ftl.is_mapped(lba).map_err(io)?;
            match runs.last_mut() {
                Some((n, m)) if *m == mapped => *n += piece,
                _ => runs.push((piece, mapped)),
            }
            at += piece;
        }
        Ok(runs)
    }

    fn snapshot(&mut self) -> Snapshot {
        let geometry = self.ftl.nand_mut().geometry();
        let erase_counts = self.ftl.nand_mut().inner().erase_counts().to_vec();
        let mut bad_block_list = Vec::new();
        for b in 0..geometry.blocks {
            if self
                .ftl
                .nand_mut()
                .is_bad(nandbox_core::nand::BlockId(b))
                .unwrap_or(false)
            {
                bad_block_list.push(b);
            }
        }
        let bad_blocks = bad_block_list.len() as u32;
        let (read_mean_ns, _, read_p99_ns) = self.reads.mean_p50_p99();
        let (write_mean_ns, _, write_p99_ns) = self.writes.mean_p50_p99();
        Snapshot {
            stats: *self.ftl.stats(),
            erase_counts,
            bad_blocks,
            bad_block_list,
            geometry,
            profile: self.config.profile,
            logical_bytes: self.ftl.logical_blocks() as u64 * BLOCK,
            latency: LatencySummary {
                reads: self.reads.count,
                read_mean_ns,
                read_p99_ns,
                writes: self.writes.count,
                write_mean_ns,
                write_p99_ns,
                // Filled in by `Firmware::snapshot`, which keeps them.
                ..LatencySummary::default()
            },
            uptime_s: self.started.elapsed().as_secs_f64(),
            trace_records: self.trace.as_ref().map(|_| self.trace_records),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lateness_reports_count_median_and_p99() {
        let fw = Firmware::start(FirmwareConfig::new(crate::profile::FEMU, 4 << 20)).unwrap();
        assert_eq!(fw.snapshot().unwrap().latency.replies, 0);
        // 1..=100 µs in a scrambled order: the median and p99 must not depend on the order.
        for i in 0..100u64 {
            fw.note_reply_late(Duration::from_micros((i * 37) % 100 + 1));
        }
        let l = fw.snapshot().unwrap().latency;
        assert_eq!(l.replies, 100);
        // Nearest rank on 100 sorted samples: index 50 (51 µs) and index 98 (99 µs).
        assert_eq!(l.reply_late_p50_ns, 51_000);
        assert_eq!(l.reply_late_p99_ns, 99_000);
    }
}
