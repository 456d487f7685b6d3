//! `nandbox replay`: runs a block trace recorded by `nandbox serve --trace` through a fresh
//! device with the settings given, and prints the device's counters at the end.
//!
//! A workload recorded once (say SQLite on ext4, which takes minutes to drive through the
//! kernel) replays in seconds, and replays of one trace with `--delta on` and `--delta off`
//! see exactly the same host requests, so their NAND bytes compare without noise. Background
//! work runs where the recording device ran it, not when the replay happens to be idle.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use nandbox_sim::trace::{Record, TraceReader};

use crate::device::{DeviceOptions, ZeroFlags};
use crate::serve::{parse_size, FirmwareArgs, Latency, Profile};
use crate::stdout::outln;

/// Options of `nandbox replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Trace file written by `nandbox serve --trace`.
    trace: PathBuf,
    /// Size of the replay device [default: the size the trace was recorded on].
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// NAND geometry profile.
    #[arg(long, value_enum, default_value_t = Profile::Tlc)]
    profile: Profile,
    /// NAND latency model (`virtual` accounts modelled time; `real` is refused: a replay has no
    /// host waiting for replies).
    #[arg(long, value_enum, default_value_t = Latency::Off)]
    latency: Latency,
    #[command(flatten)]
    firmware: FirmwareArgs,
    /// Print the counters as JSON (the document `GET /stats` serves) instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the counters as they stand after the first N records to FILE (JSON), e.g.
    /// where a recording's `trace_records` said a phase began; repeatable.
    #[arg(long, value_name = "N=FILE", value_parser = parse_snapshot)]
    snapshot: Vec<(u64, PathBuf)>,
}

fn parse_snapshot(s: &str) -> Result<(u64, PathBuf), String> {
    let (n, file) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not N=FILE"))?;
    let n = n
        .parse()
        .map_err(|_| format!("`{n}` is not a record count"))?;
    if file.is_empty() {
        return Err(format!("`{s}` names no FILE"));
    }
    Ok((n, PathBuf::from(file)))
}

fn write_json(path: &std::path::Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if matches!(args.latency, Latency::Real) {
        bail!("--latency real makes no sense for a replay (use virtual)");
    }
    for (_, path) in &args.snapshot {
        crate::outpath::ensure_not_input(&args.trace, path)?;
        crate::outpath::check_writable(path)
            .with_context(|| format!("--snapshot file {}", path.display()))?;
    }
    let mut trace = TraceReader::open(&args.trace)
        .with_context(|| format!("opening trace {}", args.trace.display()))?;
    let size = args.size.unwrap_or(trace.logical_bytes());
    if size < trace.logical_bytes() {
        bail!(
            "--size {size} is smaller than the {} bytes the trace was recorded on",
            trace.logical_bytes()
        );
    }
    let options = DeviceOptions {
        // The trace's background steps run where it has them, not when the replay idles.
        background: false,
        ..args.firmware.options(size, args.profile, args.latency)
    };
    let device = crate::backend::open(&options).context("opening the device")?;
    let mut buf = Vec::new();
    let mut n = 0u64;
    let snap = |n: u64| -> anyhow::Result<()> {
        for (_, path) in args.snapshot.iter().filter(|(at, _)| *at == n) {
            write_json(path, &device.stats_json())?;
        }
        Ok(())
    };
    snap(0)?;
    while let Some(record) = trace
        .next_record()
        .with_context(|| format!("reading trace {}", args.trace.display()))?
    {
        n += 1;
        let done = match record {
            Record::Read { offset, len } => {
                buf.resize(len as usize, 0);
                device.read(offset, &mut buf)
            }
            Record::Write { offset, data, fua } => device.write(offset, &data, fua),
            Record::Trim { offset, len, fua } => device.trim(offset, len, fua),
            Record::Zeroes {
                offset,
                len,
                fua,
                no_hole,
            } => device.write_zeroes(
                offset,
                len,
                ZeroFlags {
                    fua,
                    no_hole,
                    fast_zero: false,
                },
            ),
            Record::Flush => device.flush(),
            Record::Idle => device.idle_step().map(drop),
        };
        done.with_context(|| format!("replaying record {n} of {}", args.trace.display()))?;
        snap(n)?;
    }
    if let Some((at, _)) = args.snapshot.iter().find(|(at, _)| *at > n) {
        bail!("--snapshot {at}: the trace has only {n} records");
    }
    let stats = device.stats_json();
    device.shutdown().context("stopping the device")?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&stats)?)?;
    } else {
        crate::stdout::text(&crate::stats_view::render(&stats, None))?;
    }
    Ok(())
}
