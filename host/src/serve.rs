//! `nandbox serve` (the NBD server with its control endpoint) and `nandbox stats`.
//!
//! `serve` opens the device, binds the NBD listener (TCP and/or unix socket) and the control
//! endpoint, and serves until SIGINT or SIGTERM; then it stops accepting, lets in-flight requests
//! finish, shuts the device down (which flushes), writes the final stats JSON if asked, and exits 0.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::control;
use crate::device::{BlockDevice, DeviceOptions};
use crate::nbd::{self, transmission::Limits};

/// Geometry profile of the simulated NAND.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Profile {
    /// 16 KiB pages (four 4 KiB slots), 256 pages per block, 3,000 P/E cycles.
    Tlc,
    /// 4 KiB pages, 256 per block (the FEMU default geometry).
    Femu,
    /// 4 KiB pages, 64 per block, 100,000 P/E cycles.
    Slc,
}

/// How NAND latency is modelled.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Latency {
    /// As fast as the host allows.
    Off,
    /// Time is accounted on a virtual clock, not slept.
    Virtual,
    /// Replies wait for the modelled time.
    Real,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// Node cache eviction policy.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NodeCache {
    /// Access frequency weighted by the share of live inline deltas a page holds.
    Score,
    /// Least recently used.
    Lru,
}

/// Options of `nandbox serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TCP address for NBD [default: 127.0.0.1:10809, unless --unix is given alone]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Also (or, without --listen, only) serve NBD on this unix socket.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Export size: bytes or with a binary suffix (4096, 512MiB, 1GiB); a multiple of 4096.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Keep the NAND in this sparse image file (created if missing, reopened if present; a
    /// reopened image keeps its own size, geometry, profile and node-cache size over --size).
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// NAND geometry profile [default: tlc; a reopened image runs with the profile of its own
    /// geometry, and naming another one is an error].
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// NAND latency model.
    #[arg(long, value_enum, default_value_t = Latency::Off)]
    latency: Latency,
    /// Loopback address of the HTTP control endpoint (GET /stats, GET /metrics), or `none`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10810")]
    control: String,
    /// Refuse writes; clients see a read-only export. A reopened --image is not written either:
    /// the device's own bookkeeping (the mount's checkpoint, background work) stays in RAM.
    #[arg(long)]
    read_only: bool,
    /// Dies the latency model runs in parallel [default: the profile's, 32 for tlc]. Fewer
    /// dies lower the flash's write bound (dies x page size / program time) below what the host
    /// can drive, so `--latency real` shows the flash's speed rather than the host's.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    dies: Option<u32>,
    /// Export name (clients asking for the empty name get this export too).
    #[arg(long, value_name = "NAME", default_value = "", value_parser = parse_export_name)]
    export: String,
    /// At clean shutdown (SIGINT/SIGTERM), write the final stats JSON to this file.
    #[arg(long, value_name = "FILE")]
    stats_out: Option<PathBuf>,
    #[command(flatten)]
    firmware: FirmwareArgs,
    /// Record every request the device runs (with the data of writes) to this block trace, to
    /// replay it later through other settings with `nandbox replay`.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Most NBD connections served at once; more are closed on accept.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_connections: usize,
}

/// The firmware's switches, shared by `serve` and `replay`.
#[derive(Args, Debug)]
pub struct FirmwareArgs {
    /// Keep updates of blocks already on flash as small XOR deltas inline in node pages.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub delta: OnOff,
    /// Power-loss protection, as on enterprise SSDs: the write buffer counts as durable (a
    /// hold-up capacitor programs it when power fails), so FLUSH and FUA program no padding.
    /// The emulator runs that dump on SIGINT, SIGTERM and shutdown; kill -9 is a capacitor that
    /// failed, and writes not yet programmed are lost.
    #[arg(long, value_enum, default_value_t = OnOff::Off)]
    pub plp: OnOff,
    /// Store 4 KiB blocks that look like BF16/FP16/FP32 weights ZipNN-coded, packed several
    /// to a page. With --delta on, a small update of a block already on flash (plain or
    /// coded) is kept as a delta first, byte-plane coded where that is smaller (ZipNN's delta
    /// mode for checkpoints).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub compress: OnOff,
    /// Node cache eviction policy.
    #[arg(long, value_enum, default_value_t = NodeCache::Score)]
    pub node_cache: NodeCache,
    /// Node pages cached in RAM, 4 KiB each [default: 1024]; used when the device is formatted.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=65535))]
    pub node_cache_slots: Option<u32>,
    /// Compact page slots (packed deltas) cached in RAM, 4 KiB each; 0 reads every compacted
    /// delta from flash [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=65535))]
    pub compact_cache_slots: Option<u32>,
}

impl FirmwareArgs {
    /// Device options with these switches and the given rest.
    pub fn options(&self, size: u64, profile: Profile, latency: Latency) -> DeviceOptions {
        DeviceOptions {
            size,
            image: None,
            profile: format!("{profile:?}").to_lowercase(),
            latency: format!("{latency:?}").to_lowercase(),
            read_only: false,
            dies: None,
            delta: self.delta == OnOff::On,
            plp: self.plp == OnOff::On,
            compress: self.compress == OnOff::On,
            node_cache: format!("{:?}", self.node_cache).to_lowercase(),
            node_cache_slots: self.node_cache_slots,
            compact_cache_slots: self.compact_cache_slots,
            trace: None,
            background: true,
        }
    }
}

/// Options of `nandbox stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Address of the running device's control endpoint.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10810")]
    control: String,
    /// Print the raw JSON instead of a table.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Refresh the table every SECONDS, with rates over the interval, until Ctrl-C.
    #[arg(long, value_name = "SECONDS")]
    watch: Option<f64>,
    /// With --watch, stop after N tables.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

/// Parses `--export`: the NBD protocol caps names at 4096 bytes, and clients refuse a longer
/// one in the export list (`nbdinfo --list` fails) even though the server would offer it.
fn parse_export_name(s: &str) -> Result<String, String> {
    if s.len() > 4096 {
        return Err(format!(
            "an export name is at most 4096 bytes (NBD), this one has {}",
            s.len()
        ));
    }
    Ok(s.to_string())
}

/// Parses a size such as `4096`, `512MiB`, `1GiB`, `2G` (suffixes are binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size (try 4096, 512MiB, 1GiB)"))?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size suffix `{other}` (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    let size = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if size == 0 || !size.is_multiple_of(4096) {
        return Err(format!("size {size} must be a non-zero multiple of 4096"));
    }
    Ok(size)
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    if let (Some(given), Some(image)) = (args.profile, &args.image) {
        let given = format!("{given:?}").to_lowercase();
        match crate::backend::image_profile(image) {
            Some(p) if p.name != given => bail!(
                "--profile {given}: image {} was made with profile {} ({} B pages x {} per \
                 block); omit --profile to reopen it",
                image.display(),
                p.name,
                p.page_bytes,
                p.pages_per_block
            ),
            _ => {}
        }
    }
    // A trace or stats file written over the image (a slip of tab completion) would destroy
    // the device it records; the stats written over the trace would end it.
    if let Some(image) = &args.image {
        for out in [&args.trace, &args.stats_out].into_iter().flatten() {
            crate::outpath::ensure_not_input(image, out)?;
        }
    }
    if let (Some(trace), Some(stats)) = (&args.trace, &args.stats_out) {
        crate::outpath::ensure_not_input(trace, stats)?;
    }
    if let Some(path) = &args.stats_out {
        crate::outpath::check_writable(path)
            .with_context(|| format!("--stats-out {}", path.display()))?;
    }
    let options = DeviceOptions {
        image: args.image.clone(),
        read_only: args.read_only,
        dies: args.dies,
        trace: args.trace.clone(),
        ..args.firmware.options(
            args.size,
            args.profile.unwrap_or(Profile::Tlc),
            args.latency,
        )
    };
    let device = crate::backend::open(&options).context("opening the device")?;

    let listen = match (args.listen, &args.unix) {
        (Some(addr), _) => Some(addr),
        (None, None) => Some(SocketAddr::from(([127, 0, 0, 1], 10809))),
        (None, Some(_)) => None,
    };
    let tcp = match listen {
        Some(addr) => {
            Some(TcpListener::bind(addr).with_context(|| format!("binding NBD listener {addr}"))?)
        }
        None => None,
    };
    let unix = match &args.unix {
        Some(path) => {
            if path.exists() {
                // A socket left by an earlier run would make bind fail; anything else is not ours.
                let meta = std::fs::symlink_metadata(path)?;
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    bail!("{} exists and is not a socket", path.display());
                }
                // A socket someone still accepts on belongs to a running server: unlinking it
                // would cut that server off from new clients without a word.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    bail!(
                        "{} is in use: another server is listening on it",
                        path.display()
                    );
                }
                std::fs::remove_file(path)?;
            }
            Some(
                UnixListener::bind(path)
                    .with_context(|| format!("binding unix socket {}", path.display()))?,
            )
        }
        None => None,
    };
    let control_listener = match args.control.as_str() {
        "none" | "off" => None,
        addr => Some(control::bind(addr)?),
    };

    let server = nbd::Server::new(
        Arc::clone(&device),
        nbd::Config {
            export_name: args.export.clone(),
            max_connections: args.max_connections.max(1),
            limits: Limits::default(),
        },
    );
    install_signal_handler(
        Arc::clone(&server),
        Arc::clone(&device),
        args.stats_out.clone(),
        args.unix.clone(),
    )?;

    // What the device runs, not what was asked: a reopened image keeps its own size and
    // geometry over --size and --profile.
    let stats = device.stats_json();
    let profile = stats["device"]["profile"].as_str().unwrap_or("?");
    let mut line = format!("nandbox: serving {} bytes ({profile}", device.size());
    line.push_str(if args.read_only { ", read-only)" } else { ")" });
    if let Some(l) = &tcp {
        line.push_str(&format!(" on nbd://{}/{}", l.local_addr()?, args.export));
    }
    if let Some(path) = &args.unix {
        line.push_str(&format!(
            " on nbd+unix:///{}?socket={}",
            args.export,
            path.display()
        ));
    }
    if let Some(c) = &control_listener {
        line.push_str(&format!(", control http://{}", c.local_addr()?));
    }
    println!("{line}");

    if let Some(c) = control_listener {
        let device = Arc::clone(&device);
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control::serve(c, device))?;
    }
    match (tcp, unix) {
        (Some(t), Some(u)) => {
            let s = Arc::clone(&server);
            std::thread::Builder::new()
                .name("accept-unix".into())
                .spawn(move || s.serve_unix(u))?;
            server.serve_tcp(t);
        }
        (Some(t), None) => server.serve_tcp(t),
        (None, Some(u)) => server.serve_unix(u),
        (None, None) => unreachable!("at least one listener is always configured"),
    }
    // Accept loops return only once stopping; the signal thread exits the process.
    loop {
        std::thread::park();
    }
}

/// On SIGINT or SIGTERM: stop serving, flush and stop the device, write the stats, exit 0.
fn install_signal_handler(
    server: Arc<nbd::Server>,
    device: Arc<dyn BlockDevice>,
    stats_out: Option<PathBuf>,
    unix_socket: Option<PathBuf>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Some(sig) = signals.forever().next() else {
                return;
            };
            eprintln!("nandbox: signal {sig}: shutting down");
            let left = server.stop(Duration::from_secs(10));
            if left > 0 {
                eprintln!(
                    "nandbox: {left} connection(s) still busy after 10 s; shutting down anyway"
                );
            }
            let mut code = 0;
            // Flush first and take the counters then: a stopped device can no longer report them,
            // and shutting down after a flush adds no NAND work they would miss.
            if let Err(e) = device.flush() {
                eprintln!("nandbox: final flush failed: {e}");
                code = 1;
            }
            let stats = device.stats_json();
            if let Err(e) = device.shutdown() {
                eprintln!("nandbox: device shutdown failed: {e}");
                code = 1;
            }
            if let Some(path) = stats_out {
                let json = serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n";
                if let Err(e) = std::fs::write(&path, json) {
                    eprintln!("nandbox: writing {}: {e}", path.display());
                    code = 1;
                }
            }
            if let Some(path) = unix_socket {
                // Our own socket file; nobody can connect to it any more.
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(code);
        })?;
    Ok(())
}

pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    if args.json {
        crate::stdout::text(&control::get(&args.control, "/stats")?)?;
        return Ok(());
    }
    crate::stats_view::run(&args.control, args.watch, args.count)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_must_be_4k_multiples() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1000").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("1PiB").is_err());
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }
}
