//! The block device an export serves: the seam between the NBD server and the firmware.
//!
//! The NBD layer validates requests (ranges, flags, read-only) before it calls in, so a device
//! sees only in-range, non-empty requests; it still checks and answers `Invalid` rather than
//! trusting its caller.

use std::path::PathBuf;

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
    /// Reads `len` bytes at `offset` into a buffer of its own. A device that produces an owned
    /// buffer anyway (e.g. from another thread) overrides this to save the NBD layer a copy.
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, DevError> {
        let mut buf = vec![0u8; len];
        self.read(offset, &mut buf)?;
        Ok(buf)
    }
    /// Like [`BlockDevice::write`] but takes the buffer, for devices that queue it elsewhere.
    fn write_vec(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), DevError> {
        self.write(offset, &data, fua)
    }
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
}
