//! The real backend of an export: the firmware (FTL over simulated NAND) behind [`BlockDevice`].

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use nandbox_core::stats::Cause;
use nandbox_sim::firmware::{self, Firmware, FirmwareConfig, FirmwareError, Snapshot};
use nandbox_sim::latency::LatencyMode;
use nandbox_sim::profile::Profile;
use serde_json::{json, Map, Value};

use crate::device::{
    BlockDevice, Completer, DevError, DeviceOptions, Extent, Output, Queue, Request, ZeroFlags,
};

/// NBD_STATE_HOLE | NBD_STATE_ZERO: an unmapped block reads as zeroes.
const HOLE_ZERO: u32 = 1 | 2;

/// The profile whose geometry an existing image has, or `None` when `path` is not a readable
/// image (opening it for the device then reports why) or no profile has its geometry.
///
/// The image header records the geometry, not the profile's name; a reopened image keeps its
/// geometry whatever `--profile` says, so its timings and rated endurance must come from the
/// profile of that geometry, not from `--profile`.
pub fn image_profile(path: &std::path::Path) -> Option<Profile> {
    use nandbox_core::nand::Nand;
    let g = nandbox_sim::nand::SimNand::open_image_read_only(path)
        .ok()?
        .geometry();
    nandbox_sim::profile::ALL
        .iter()
        .copied()
        .find(|p| p.page_bytes == g.page_bytes && p.pages_per_block == g.pages_per_block)
}

/// Starts the firmware the options describe.
pub fn open(opts: &DeviceOptions) -> anyhow::Result<Arc<dyn BlockDevice>> {
    let named = Profile::by_name(&opts.profile)
        .ok_or_else(|| anyhow!("unknown profile {:?} (tlc, femu or slc)", opts.profile))?;
    let profile = match opts.image.as_deref().filter(|p| p.exists()) {
        Some(path) => image_profile(path).unwrap_or(named),
        None => named,
    };
    let latency = LatencyMode::by_name(&opts.latency).ok_or_else(|| {
        anyhow!(
            "unknown latency mode {:?} (off, virtual or real)",
            opts.latency
        )
    })?;
    let mut profile = profile;
    if let Some(dies) = opts.dies {
        // As many channels as the profile has (at most one per die), dies spread over them.
        let channels = profile.channels.min(dies);
        if !dies.is_multiple_of(channels) {
            return Err(anyhow!(
                "--dies {dies} does not spread evenly over {channels} channels"
            ));
        }
        profile.channels = channels;
        profile.dies_per_channel = dies / channels;
    }
    let mut config = FirmwareConfig::new(profile, opts.size);
    config.image = opts.image.clone();
    config.image_read_only = opts.read_only;
    config.latency = latency;
    config.delta = opts.delta;
    config.plp = opts.plp;
    config.compress = opts.compress;
    config.trace = opts.trace.clone();
    config.background = opts.background;
    config.node_cache_policy = match opts.node_cache.as_str() {
        "lru" => nandbox_sim::firmware::CachePolicy::Lru,
        _ => nandbox_sim::firmware::CachePolicy::Score,
    };
    if let Some(n) = opts.node_cache_slots {
        config.node_cache_slots = n;
    }
    if let Some(n) = opts.compact_cache_slots {
        config.compact_cache_slots = n;
    }
    let firmware = Firmware::start(config).context("starting the device")?;
    Ok(Arc::new(FirmwareDevice {
        firmware: Arc::new(firmware),
        read_only: opts.read_only,
        plp: opts.plp,
    }))
}

struct FirmwareDevice {
    firmware: Arc<Firmware>,
    read_only: bool,
    plp: bool,
}

fn dev(e: FirmwareError) -> DevError {
    match e {
        FirmwareError::Invalid(why) => DevError::Invalid(why),
        FirmwareError::NoSpace => DevError::NoSpace,
        FirmwareError::Io(why) => DevError::Io(why),
        FirmwareError::Stopped => DevError::Io("device stopped".into()),
    }
}

fn writable(read_only: bool) -> Result<(), DevError> {
    if read_only {
        Err(DevError::ReadOnly)
    } else {
        Ok(())
    }
}

impl FirmwareDevice {
    fn writable(&self) -> Result<(), DevError> {
        writable(self.read_only)
    }
}

/// Zeroing by unmapping is much faster than writing, unless allocated zeroes are asked for.
fn fast_zero_possible(flags: ZeroFlags) -> Result<(), DevError> {
    if flags.fast_zero && flags.no_hole {
        Err(DevError::NotSupported)
    } else {
        Ok(())
    }
}

/// A connection's queue pair into the firmware: bursts run on the connection's thread.
struct FirmwareQueue {
    firmware: Arc<Firmware>,
    read_only: bool,
    /// The connection's completer, for requests refused here.
    host: Arc<dyn Completer>,
    /// The same, as the firmware sees it (made once, not per request).
    done: Arc<dyn firmware::Completer>,
}

/// Translates the firmware's completions into the device layer's.
struct Bridge(Arc<dyn Completer>);

impl firmware::Completer for Bridge {
    fn complete(
        &self,
        tag: u64,
        result: Result<firmware::Output, FirmwareError>,
        not_before: Option<Instant>,
    ) {
        let result = result.map_err(dev).map(|out| match out {
            firmware::Output::Done => Output::Done,
            firmware::Output::Read(data) => Output::Read(data),
            firmware::Output::Written(data) => Output::Written(data),
            firmware::Output::Mapping(runs) => Output::Extents(extents(runs)),
        });
        self.0.complete(tag, result, not_before);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

impl FirmwareQueue {
    /// Why the device refuses `req` before running it, if it does.
    fn refusal(&self, req: &Request) -> Option<DevError> {
        let writes = matches!(
            req,
            Request::Write { .. } | Request::Trim { .. } | Request::WriteZeroes { .. }
        );
        match req {
            _ if writes && self.read_only => writable(self.read_only).err(),
            Request::WriteZeroes { flags, .. } => fast_zero_possible(*flags).err(),
            _ => None,
        }
    }
}

/// The firmware's form of a request.
fn firmware_request(req: Request) -> firmware::Request {
    match req {
        Request::Read { offset, len, buf } => firmware::Request::Read { offset, len, buf },
        Request::Write { offset, data, fua } => firmware::Request::Write { offset, data, fua },
        Request::Flush => firmware::Request::Flush,
        Request::Trim { offset, len, fua } => firmware::Request::Trim { offset, len, fua },
        Request::WriteZeroes { offset, len, flags } => firmware::Request::WriteZeroes {
            offset,
            len,
            fua: flags.fua,
            no_hole: flags.no_hole,
        },
        Request::BlockStatus { offset, len } => firmware::Request::Mapping {
            offset,
            len: u64::from(len),
        },
    }
}

impl Queue for FirmwareQueue {
    fn submit(&self, tag: u64, req: Request) {
        if let Some(e) = self.refusal(&req) {
            self.host.complete(tag, Err(e), None);
            self.host.flush();
            return;
        }
        self.firmware.submit(firmware_request(req), tag, &self.done);
    }

    fn submit_batch(&self, burst: &mut Vec<(u64, Request)>) {
        let mut refused = false;
        let run: Vec<(u64, firmware::Request)> = burst
            .drain(..)
            .filter_map(|(tag, req)| match self.refusal(&req) {
                Some(e) => {
                    self.host.complete(tag, Err(e), None);
                    refused = true;
                    None
                }
                None => Some((tag, firmware_request(req))),
            })
            .collect();
        if refused {
            self.host.flush();
        }
        if !run.is_empty() {
            self.firmware.submit_batch(run, &self.done);
        }
    }

    fn replied(&self, late: std::time::Duration) {
        self.firmware.note_reply_late(late);
    }
}

/// BLOCK_STATUS extents of the firmware's (bytes, mapped) runs.
fn extents(runs: Vec<(u64, bool)>) -> Vec<Extent> {
    runs.into_iter()
        .map(|(bytes, mapped)| Extent {
            length: bytes as u32,
            flags: if mapped { 0 } else { HOLE_ZERO },
        })
        .collect()
}

impl BlockDevice for FirmwareDevice {
    fn size(&self) -> u64 {
        self.firmware.size()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DevError> {
        let data = self.firmware.read(offset, buf.len()).map_err(dev)?;
        buf.copy_from_slice(&data);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DevError> {
        self.writable()?;
        self.firmware.write(offset, data.to_vec(), fua).map_err(dev)
    }

    fn flush(&self) -> Result<(), DevError> {
        self.firmware.flush().map_err(dev)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DevError> {
        self.writable()?;
        self.firmware.trim(offset, len, fua).map_err(dev)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), DevError> {
        self.writable()?;
        fast_zero_possible(flags)?;
        self.firmware
            .write_zeroes(offset, len, flags.fua, flags.no_hole)
            .map_err(dev)
    }

    fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, DevError> {
        let runs = self.firmware.mapping(offset, len as u64).map_err(dev)?;
        Ok(extents(runs))
    }

    fn queue(&self, done: Arc<dyn Completer>) -> Option<Box<dyn Queue>> {
        Some(Box::new(FirmwareQueue {
            firmware: Arc::clone(&self.firmware),
            read_only: self.read_only,
            done: Arc::new(Bridge(Arc::clone(&done))),
            host: done,
        }))
    }

    fn stats_json(&self) -> Value {
        match self.firmware.snapshot() {
            Ok(s) => {
                let mut v = snapshot_json(&s);
                v["device"]["plp"] = json!(self.plp);
                v
            }
            Err(e) => json!({ "error": e.to_string() }),
        }
    }

    fn shutdown(&self) -> Result<(), DevError> {
        self.firmware.shutdown().map_err(dev)
    }

    fn idle_step(&self) -> Result<bool, DevError> {
        self.firmware.idle_step().map_err(dev)
    }
}

/// The `/stats` document: the names issue 3 fixed, plus the detail behind them.
pub fn snapshot_json(s: &Snapshot) -> Value {
    let st = &s.stats;
    let by_cause = |v: &[u64; Cause::COUNT]| {
        let mut m = Map::new();
        for c in Cause::ALL {
            m.insert(c.name().into(), json!(v[c as usize]));
        }
        m.insert("total".into(), json!(v.iter().sum::<u64>()));
        Value::Object(m)
    };
    let ec = &s.erase_counts;
    let (min, max) = (
        ec.iter().copied().min().unwrap_or(0),
        ec.iter().copied().max().unwrap_or(0),
    );
    let mean = if ec.is_empty() {
        0.0
    } else {
        ec.iter().map(|&e| e as f64).sum::<f64>() / ec.len() as f64
    };
    let hit_rate = if st.node_cache_hits + st.node_cache_misses == 0 {
        0.0
    } else {
        st.node_cache_hits as f64 / (st.node_cache_hits + st.node_cache_misses) as f64
    };
    let delta = json!({
        "inlined": st.deltas_inlined,
        "inlined_bytes": st.delta_inline_bytes,
        "too_large": st.deltas_too_large,
        "skipped": st.deltas_skipped,
        "refused": st.deltas_refused,
        "evicted": st.deltas_evicted,
        "replaced": st.deltas_replaced,
        "compacted": st.deltas_compacted,
        "compact_pages_written": st.compact_pages,
        "full_pages_rebuilt": st.pages_rebuilt,
        "restored_at_idle": st.pages_restored,
        "reads_through_delta": st.delta_reads,
        "compact_cache_hits": st.compact_cache_hits,
    });
    // Not the delta engine's: rewrites the write buffer absorbed (with or without it).
    let write_buffer = json!({ "overwrites": st.buffer_overwrites });
    let mut doc = json!({
        "host_read_bytes": st.host_read_bytes,
        "host_write_bytes": st.host_write_bytes,
        "host_reads": st.host_reads,
        "host_writes": st.host_writes,
        "host_trims": st.host_trims,
        "host_flushes": st.host_flushes,
        "nand_read_pages": st.nand_reads(),
        "nand_read_pages_by_cause": by_cause(&st.reads),
        "nand_spare_reads": st.spare_reads.iter().sum::<u64>(),
        "nand_program_pages": st.nand_programs(),
        "nand_program_pages_by_cause": by_cause(&st.program_pages),
        "nand_erase_blocks": st.erases,
        "nand_program_bytes": by_cause(&st.program_bytes),
        "waf": st.waf(),
        "erase_count": { "min": min, "max": max, "mean": mean },
        "bad_blocks": s.bad_blocks,
        "bad_block_list": s.bad_block_list,
        "checkpoints": st.checkpoints,
        "gc_blocks": st.gc_blocks,
        "wear_level_moves": st.wear_level_moves,
        "retired_blocks": st.retired_blocks,
        "node_cache_hits": st.node_cache_hits,
        "node_cache_misses": st.node_cache_misses,
        "lifetime_host_write_bytes": st.lifetime_host_write_bytes,
        "lifetime_program_bytes": st.lifetime_program_bytes,
        "latency": {
            "reads": s.latency.reads,
            "read_mean_ns": s.latency.read_mean_ns,
            "read_p99_ns": s.latency.read_p99_ns,
            "writes": s.latency.writes,
            "write_mean_ns": s.latency.write_mean_ns,
            "write_p99_ns": s.latency.write_p99_ns,
            "replies": s.latency.replies,
            "reply_late_p50_ns": s.latency.reply_late_p50_ns,
            "reply_late_p99_ns": s.latency.reply_late_p99_ns,
        },
        "device": {
            "profile": s.profile.name,
            "logical_bytes": s.logical_bytes,
            "page_bytes": s.geometry.page_bytes,
            "pages_per_block": s.geometry.pages_per_block,
            "blocks": s.geometry.blocks,
            "pe_cycles": s.profile.pe_cycles,
            "uptime_s": s.uptime_s,
            "dies": s.profile.dies(),
            "channels": s.profile.channels,
            "read_ns": s.profile.read_ns,
            "program_ns": s.profile.program_ns,
            "erase_ns": s.profile.erase_ns,
            "channel_mb_s": s.profile.channel_mb_s,
        },
        // Per-block erase counts, block 0 first: what `nandbox wear` draws.
        "erase_counts": ec,
    });
    // Delta engine and node cache (issue 4); added here because json! recurses per key.
    if let Value::Object(m) = &mut doc {
        m.insert("node_cache_hit_rate".into(), json!(hit_rate));
        m.insert(
            "nand_reads_per_host_read".into(),
            json!(st.nand_reads_per_host_read()),
        );
        m.insert("delta".into(), delta);
        m.insert("write_buffer".into(), write_buffer);
        if let Some(n) = s.trace_records {
            m.insert("trace_records".into(), json!(n));
        }
        m.insert(
            "zipnn".into(),
            json!({
                "blocks_coded": st.blocks_coded,
                "bytes_saved": st.coded_bytes_saved,
                "not_coded": st.blocks_not_coded,
                "coded_reads": st.coded_reads,
            }),
        );
    }
    doc
}
