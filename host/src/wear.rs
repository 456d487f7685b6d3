//! `nandbox wear`: how much flash life a workload cost.
//!
//! Reads the per-block erase counts, bad blocks and write counters of a running device (from its
//! control endpoint, `GET /stats`) or of an image file (offline, read-only), and reports:
//! erase-count spread (min, mean, max, standard deviation, a histogram and a block heat map),
//! write amplification by cause, and the projected lifetime: P/E cycles left at the profile's
//! endurance, host terabytes still writable at the observed write amplification (TBW), and days
//! left at the observed host write rate. `--svg` draws the histogram and the heat map.
//!
//! The projection assumes what an SSD's rated endurance assumes: wear levelling spreads the
//! remaining cycles over every good block, so the device can still program
//! `good blocks x block bytes x mean cycles left` NAND bytes, of which `1 / WAF` are host bytes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use nandbox_core::ftl::Ftl;
use nandbox_core::nand::{BlockId, Nand};
use nandbox_sim::profile::Profile;
use nandbox_sim::{OwnedFtlMemory, SimNand};
use serde_json::{json, Value};

use crate::control;

/// Options of `nandbox wear`.
#[derive(Args, Debug)]
pub struct WearArgs {
    /// Control endpoint of a running device (`nandbox serve --control`) [default:
    /// 127.0.0.1:10810, serve's own default, unless --image is given].
    #[arg(long, value_name = "ADDR", conflicts_with = "image")]
    control: Option<String>,
    /// Image file written by `nandbox serve --image`, read offline and never modified.
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// NAND profile of an image, for its endurance (the image header records the geometry, not
    /// the profile name) [default: the profile whose geometry the image has].
    #[arg(long, value_name = "NAME", value_parser = ["tlc", "femu", "slc"])]
    profile: Option<String>,
    /// Also draw the erase-count histogram and block heat map to this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What the report is computed from, whichever the source.
#[derive(Debug, Clone)]
pub struct WearInput {
    /// Where the figures came from, for the reader.
    pub source: String,
    /// Profile name.
    pub profile: String,
    /// How the profile was chosen.
    pub profile_from: String,
    /// Rated P/E cycles per block.
    pub pe_cycles: u32,
    /// Data bytes per page.
    pub page_bytes: u32,
    /// Pages per erase block.
    pub pages_per_block: u32,
    /// Erase count of every block, block 0 first.
    pub erase_counts: Vec<u32>,
    /// Bad blocks, when their numbers are known.
    pub bad_blocks: Vec<u32>,
    /// Bad block count (from a device that reports only the count).
    pub bad_block_count: u32,
    /// Host bytes written since the device started (a running device only).
    pub host_write_bytes: Option<u64>,
    /// NAND bytes programmed since start, by cause (a running device only).
    pub program_bytes_by_cause: Vec<(String, u64)>,
    /// Host and NAND bytes over the device's life (from the checkpoints).
    pub lifetime_host_write_bytes: u64,
    /// See `lifetime_host_write_bytes`.
    pub lifetime_program_bytes: u64,
    /// Seconds the device has been running (a running device only).
    pub uptime_s: Option<f64>,
}

/// The control endpoint `nandbox serve` listens on by default.
const DEFAULT_CONTROL: &str = "127.0.0.1:10810";

/// Runs `nandbox wear`.
pub fn run(args: WearArgs) -> anyhow::Result<()> {
    // The picture written over the image it reports on would destroy the device.
    if let (Some(image), Some(svg)) = (&args.image, &args.svg) {
        crate::outpath::ensure_not_input(image, svg)?;
    }
    let input = match (&args.control, &args.image) {
        (None, Some(path)) => from_image(path, args.profile.as_deref())?,
        // As `nandbox stats`, the control address defaults to what `nandbox serve` starts with.
        (control, _) => {
            if args.profile.is_some() {
                bail!("--profile is for --image; a running device reports its own profile");
            }
            from_control(control.as_deref().unwrap_or(DEFAULT_CONTROL))?
        }
    };
    let report = report(&input);
    if let Some(path) = &args.svg {
        let svg = draw_svg(&input, &report)?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        render_text(&input, &report)
    };
    if let (false, Some(path)) = (args.json, &args.svg) {
        text.push_str(&format!("picture: {}\n", path.display()));
    }
    crate::stats_view::emit(&text)?;
    Ok(())
}

fn u64_at(v: &Value, key: &str) -> anyhow::Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("/stats has no number `{key}`"))
}

/// Reads a running device's `/stats`.
pub fn from_control(addr: &str) -> anyhow::Result<WearInput> {
    let body = control::get(addr, "/stats")?;
    let stats: Value =
        serde_json::from_str(&body).context("the control endpoint sent invalid JSON")?;
    from_stats(&stats, &format!("control http://{addr}"))
}

/// Builds the input from a `/stats` document.
pub fn from_stats(stats: &Value, source: &str) -> anyhow::Result<WearInput> {
    let device = stats.get("device").context("/stats has no `device`")?;
    let erase_counts = stats
        .get("erase_counts")
        .and_then(Value::as_array)
        .context("/stats has no `erase_counts` (a nandbox older than the wear report?)")?
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .context("an erase count is not a number")
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let mut by_cause = Vec::new();
    if let Some(Value::Object(m)) = stats.get("nand_program_bytes") {
        for (cause, v) in m {
            if let (false, Some(n)) = (cause == "total", v.as_u64()) {
                by_cause.push((cause.clone(), n));
            }
        }
    }
    let bad_blocks: Vec<u32> = stats
        .get("bad_block_list")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    Ok(WearInput {
        source: source.to_string(),
        profile: device
            .get("profile")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string(),
        profile_from: "reported by the device".into(),
        pe_cycles: u64_at(device, "pe_cycles")? as u32,
        page_bytes: u64_at(device, "page_bytes")? as u32,
        pages_per_block: u64_at(device, "pages_per_block")? as u32,
        bad_block_count: stats
            .get("bad_blocks")
            .and_then(Value::as_u64)
            .map(|n| n as u32)
            .unwrap_or(bad_blocks.len() as u32),
        bad_blocks,
        erase_counts,
        host_write_bytes: Some(u64_at(stats, "host_write_bytes")?),
        program_bytes_by_cause: by_cause,
        lifetime_host_write_bytes: u64_at(stats, "lifetime_host_write_bytes").unwrap_or(0),
        lifetime_program_bytes: u64_at(stats, "lifetime_program_bytes").unwrap_or(0),
        uptime_s: device.get("uptime_s").and_then(Value::as_f64),
    })
}

/// A spinner with a message and the elapsed time, for CLI work that takes a while on a large
/// image (its steps give no count to show a bar against).
pub(crate) fn spinner(message: &str) -> ProgressBar {
    // Draws on stderr only when it is a terminal, so scripts and --json see nothing of it.
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Reads an image offline: erase counts and bad blocks from the block states, lifetime write
/// counters by mounting it in a RAM overlay (the file is never written).
pub fn from_image(path: &Path, profile: Option<&str>) -> anyhow::Result<WearInput> {
    let bar = spinner(&format!("{}: reading block states", path.display()));
    let mut nand = SimNand::open_image_read_only(path)
        .with_context(|| format!("{}: cannot open image", path.display()))?;
    let geometry = nand.geometry();
    // Taken before mounting: roll-forward may erase blocks in the overlay.
    let erase_counts = nand.erase_counts().to_vec();
    let mut bad_blocks = Vec::new();
    for b in 0..geometry.blocks {
        if nand.is_bad(BlockId(b)).unwrap_or(false) {
            bad_blocks.push(b);
        }
    }
    let by_geometry = nandbox_sim::profile::ALL.iter().copied().find(|p| {
        p.page_bytes == geometry.page_bytes && p.pages_per_block == geometry.pages_per_block
    });
    let (chosen, profile_from): (Profile, String) = match (profile, by_geometry) {
        (Some(name), _) => {
            let p = Profile::by_name(name).ok_or_else(|| anyhow!("unknown profile {name}"))?;
            if (p.page_bytes, p.pages_per_block) != (geometry.page_bytes, geometry.pages_per_block)
            {
                bail!(
                    "--profile {name} has {} B pages x {}, the image {} B x {}",
                    p.page_bytes,
                    p.pages_per_block,
                    geometry.page_bytes,
                    geometry.pages_per_block
                );
            }
            (p, "given with --profile".into())
        }
        (None, Some(p)) => (
            p,
            format!(
                "inferred from the image geometry: {} B pages x {} per block",
                p.page_bytes, p.pages_per_block
            ),
        ),
        (None, None) => bail!(
            "{}: no profile has {} B pages x {} per block; give --profile",
            path.display(),
            geometry.page_bytes,
            geometry.pages_per_block
        ),
    };
    bar.set_message(format!("{}: mounting (roll-forward)", path.display()));
    let mut scratch = vec![0u8; (geometry.page_bytes + geometry.spare_bytes) as usize];
    let lifetime = match Ftl::probe(&mut nand, &mut scratch) {
        Ok(config) => {
            let mut memory = OwnedFtlMemory::new(&geometry, &config);
            match Ftl::mount(nand, memory.lend()) {
                Ok(ftl) => Some((
                    ftl.stats().lifetime_host_write_bytes,
                    ftl.stats().lifetime_program_bytes,
                )),
                Err(e) => {
                    bar.suspend(|| {
                        eprintln!("nandbox: {}: mount failed ({e}); no WAF", path.display())
                    });
                    None
                }
            }
        }
        Err(e) => {
            bar.suspend(|| {
                eprintln!(
                    "nandbox: {}: no usable checkpoint ({e}); no WAF",
                    path.display()
                )
            });
            None
        }
    };
    bar.finish_and_clear();
    let (lifetime_host_write_bytes, lifetime_program_bytes) = lifetime.unwrap_or((0, 0));
    Ok(WearInput {
        source: format!("image {}", path.display()),
        profile: chosen.name.to_string(),
        profile_from,
        pe_cycles: chosen.pe_cycles,
        page_bytes: geometry.page_bytes,
        pages_per_block: geometry.pages_per_block,
        bad_block_count: bad_blocks.len() as u32,
        bad_blocks,
        erase_counts,
        host_write_bytes: None,
        program_bytes_by_cause: Vec::new(),
        lifetime_host_write_bytes,
        lifetime_program_bytes,
        uptime_s: None,
    })
}

/// One histogram bar: blocks whose erase count is in `from..=to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bin {
    /// Lowest erase count of the bin.
    pub from: u32,
    /// Highest erase count of the bin.
    pub to: u32,
    /// Blocks in it.
    pub blocks: u32,
}

/// Most bars a histogram gets; wider spreads share bars.
const MAX_BINS: u32 = 40;

/// Erase-count histogram of the good blocks: one bar per count while the spread allows.
pub fn histogram(counts: &[u32]) -> Vec<Bin> {
    let (Some(&min), Some(&max)) = (counts.iter().min(), counts.iter().max()) else {
        return Vec::new();
    };
    let width = (max - min) / MAX_BINS + 1;
    let bins = (max - min) / width + 1;
    let mut out: Vec<Bin> = (0..bins)
        .map(|i| Bin {
            from: min + i * width,
            to: min + i * width + width - 1,
            blocks: 0,
        })
        .collect();
    for &c in counts {
        out[((c - min) / width) as usize].blocks += 1;
    }
    out
}

/// The report `--json` prints; the text and the picture show the same figures.
pub fn report(input: &WearInput) -> Value {
    let bad: std::collections::HashSet<u32> = input.bad_blocks.iter().copied().collect();
    let good: Vec<u32> = input
        .erase_counts
        .iter()
        .enumerate()
        .filter(|(b, _)| !bad.contains(&(*b as u32)))
        .map(|(_, &c)| c)
        .collect();
    let n = good.len().max(1) as f64;
    let mean = good.iter().map(|&c| c as f64).sum::<f64>() / n;
    let var = good.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / n;
    let min = good.iter().copied().min().unwrap_or(0);
    let max = good.iter().copied().max().unwrap_or(0);
    let pe = input.pe_cycles as f64;

    let host = input.host_write_bytes.unwrap_or(0);
    let waf_since_start = (host > 0).then(|| {
        input
            .program_bytes_by_cause
            .iter()
            .map(|(_, b)| *b)
            .sum::<u64>() as f64
            / host as f64
    });
    let by_cause: serde_json::Map<String, Value> = input
        .program_bytes_by_cause
        .iter()
        .map(|(c, b)| {
            let share = if host > 0 {
                json!(*b as f64 / host as f64)
            } else {
                Value::Null
            };
            (c.clone(), share)
        })
        .collect();
    let waf_lifetime = (input.lifetime_host_write_bytes > 0)
        .then(|| input.lifetime_program_bytes as f64 / input.lifetime_host_write_bytes as f64);
    // The run's own WAF when it wrote, else the device's lifetime figure.
    let waf = waf_since_start.or(waf_lifetime);

    let block_bytes = input.page_bytes as f64 * input.pages_per_block as f64;
    let cycles_left_mean = (pe - mean).max(0.0);
    let nand_bytes_left = good.len() as f64 * block_bytes * cycles_left_mean;
    let tbw_left = waf.map(|w| nand_bytes_left / w / 1e12);
    let rate_per_day = match (input.host_write_bytes, input.uptime_s) {
        (Some(b), Some(s)) if b > 0 && s > 0.0 => Some(b as f64 / s * 86_400.0),
        _ => None,
    };
    let days_left = match (tbw_left, rate_per_day) {
        (Some(tb), Some(r)) => Some(tb * 1e12 / r),
        _ => None,
    };
    json!({
        "source": input.source,
        "profile": {
            "name": input.profile,
            "from": input.profile_from,
            "pe_cycles": input.pe_cycles,
        },
        "geometry": {
            "blocks": input.erase_counts.len(),
            "page_bytes": input.page_bytes,
            "pages_per_block": input.pages_per_block,
        },
        "erase_counts": input.erase_counts,
        "bad_blocks": {
            "count": input.bad_block_count,
            "blocks": input.bad_blocks,
        },
        "erase_count": {
            "min": min,
            "mean": mean,
            "max": max,
            "stddev": var.sqrt(),
            "good_blocks": good.len(),
        },
        "histogram": histogram(&good)
            .iter()
            .map(|b| json!({"from": b.from, "to": b.to, "blocks": b.blocks}))
            .collect::<Vec<_>>(),
        "waf": {
            "since_start": waf_since_start,
            "by_cause": by_cause,
            "lifetime": waf_lifetime,
        },
        "host_write_bytes": input.host_write_bytes,
        "lifetime_host_write_bytes": input.lifetime_host_write_bytes,
        "lifetime_program_bytes": input.lifetime_program_bytes,
        "uptime_s": input.uptime_s,
        "projection": {
            "waf": waf,
            "pe_cycles_left_worst_block": input.pe_cycles.saturating_sub(max),
            "pe_cycles_left_mean": cycles_left_mean,
            "life_used_percent": if pe > 0.0 { mean / pe * 100.0 } else { 0.0 },
            "nand_bytes_left": nand_bytes_left,
            "tbw_left_tb": tbw_left,
            "host_write_bytes_per_day": rate_per_day,
            "days_left": days_left,
        },
    })
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", units[unit])
}

/// Heat-map shading for the terminal, coolest first.
const SHADES: &[u8] = b" .:-=+*#%@";

/// Blocks per heat-map row: a multiple of 8 near `sqrt(2 * blocks)`, so the map is about twice
/// as wide as tall, at most 64 (a terminal line).
fn heat_columns(blocks: usize) -> usize {
    let side = ((2 * blocks) as f64).sqrt().ceil() as usize;
    side.div_ceil(8).clamp(1, 8) * 8
}

/// The human-readable report.
pub fn render_text(input: &WearInput, r: &Value) -> String {
    let mut out = String::new();
    let ec = &r["erase_count"];
    let p = &r["projection"];
    let _ = writeln!(out, "nandbox wear: {}", input.source);
    let _ = writeln!(
        out,
        "profile          {} ({}), rated {} P/E cycles",
        input.profile, input.profile_from, input.pe_cycles
    );
    let _ = writeln!(
        out,
        "blocks           {} of {} pages x {} B, {} bad{}",
        input.erase_counts.len(),
        input.pages_per_block,
        input.page_bytes,
        input.bad_block_count,
        if input.bad_blocks.is_empty() {
            String::new()
        } else {
            format!(" ({:?})", input.bad_blocks)
        }
    );
    let _ = writeln!(
        out,
        "erase count      min {}  mean {:.2}  max {}  stddev {:.2}",
        ec["min"],
        f(&ec["mean"]).unwrap_or(0.0),
        ec["max"],
        f(&ec["stddev"]).unwrap_or(0.0)
    );
    match f(&r["waf"]["since_start"]) {
        Some(w) => {
            let mut causes: Vec<String> = Vec::new();
            if let Value::Object(m) = &r["waf"]["by_cause"] {
                for (c, v) in m {
                    if let Some(x) = f(v).filter(|x| *x > 0.0) {
                        causes.push(format!("{c} {x:.3}"));
                    }
                }
            }
            let _ = writeln!(
                out,
                "WAF              {w:.3} since start = {}",
                causes.join(" + ")
            );
        }
        None => {
            let _ = writeln!(out, "WAF              no host writes since start");
        }
    }
    if let Some(w) = f(&r["waf"]["lifetime"]) {
        let _ = writeln!(
            out,
            "WAF lifetime     {w:.3} ({} host, {} NAND, as of the last checkpoint)",
            human_bytes(input.lifetime_host_write_bytes as f64),
            human_bytes(input.lifetime_program_bytes as f64)
        );
    }
    let _ = writeln!(
        out,
        "P/E cycles left  {} on the most worn block, {:.1} on average ({:.3}% of life used)",
        p["pe_cycles_left_worst_block"],
        f(&p["pe_cycles_left_mean"]).unwrap_or(0.0),
        f(&p["life_used_percent"]).unwrap_or(0.0)
    );
    match (f(&p["tbw_left_tb"]), f(&p["waf"])) {
        (Some(tb), Some(w)) => {
            let _ = writeln!(
                out,
                "TBW left         {tb:.3} TB of host writes at WAF {w:.3} ({} of NAND programs)",
                human_bytes(f(&p["nand_bytes_left"]).unwrap_or(0.0))
            );
        }
        _ => {
            let _ = writeln!(out, "TBW left         unknown: no WAF observed yet");
        }
    }
    match (f(&p["days_left"]), f(&p["host_write_bytes_per_day"])) {
        (Some(d), Some(rate)) => {
            let _ = writeln!(
                out,
                "days left        {d:.1} at {}/day (host writes over {:.0} s of uptime)",
                human_bytes(rate),
                input.uptime_s.unwrap_or(0.0)
            );
        }
        _ if input.uptime_s.is_none() => {
            let _ = writeln!(
                out,
                "days left        unknown: an image records no write rate (ask a running device)"
            );
        }
        _ => {
            let _ = writeln!(out, "days left        unknown: no host writes since start");
        }
    }
    let _ = writeln!(out, "\nerase-count histogram (good blocks)");
    let bins = r["histogram"].as_array().cloned().unwrap_or_default();
    let most = bins
        .iter()
        .filter_map(|b| b["blocks"].as_u64())
        .max()
        .unwrap_or(1)
        .max(1);
    for b in &bins {
        let n = b["blocks"].as_u64().unwrap_or(0);
        let label = if b["from"] == b["to"] {
            format!("{}", b["from"])
        } else {
            format!("{}-{}", b["from"], b["to"])
        };
        let bar = "#".repeat(((n * 50).div_ceil(most)) as usize);
        let _ = writeln!(out, "  {label:>11} {n:>7} {bar}");
    }
    let cols = heat_columns(input.erase_counts.len());
    let (min, max) = (
        ec["min"].as_u64().unwrap_or(0) as u32,
        ec["max"].as_u64().unwrap_or(0) as u32,
    );
    let _ = writeln!(
        out,
        "\nblock heat map ({cols} blocks per row; ' ' = {min} erases ... '@' = {max}, X = bad)"
    );
    let bad: std::collections::HashSet<u32> = input.bad_blocks.iter().copied().collect();
    for (row, chunk) in input.erase_counts.chunks(cols).enumerate() {
        let line: String = chunk
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if bad.contains(&((row * cols + i) as u32)) {
                    'X'
                } else {
                    SHADES[shade(c, min, max, SHADES.len())] as char
                }
            })
            .collect();
        let _ = writeln!(out, "  {:>7} |{line}|", row * cols);
    }
    out
}

/// Index `0..levels` of `c` between `min` and `max`.
fn shade(c: u32, min: u32, max: u32, levels: usize) -> usize {
    if max <= min {
        return 0;
    }
    let x = (c.clamp(min, max) - min) as f64 / (max - min) as f64;
    ((x * (levels - 1) as f64).round() as usize).min(levels - 1)
}

/// Heat colour of `c` between `min` and `max`: dark blue (least worn) through teal and yellow
/// to red (most worn).
fn heat_color(c: u32, min: u32, max: u32) -> plotters::style::RGBColor {
    const STOPS: [(u8, u8, u8); 4] = [(40, 60, 150), (40, 160, 150), (240, 210, 60), (200, 40, 40)];
    let x = if max > min {
        (c.clamp(min, max) - min) as f64 / (max - min) as f64
    } else {
        0.0
    };
    let seg = (x * (STOPS.len() - 1) as f64).min((STOPS.len() - 1) as f64 - 1e-9);
    let i = seg.floor() as usize;
    let t = seg - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * t).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    plotters::style::RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

const SVG_WIDTH: u32 = 960;
const HIST_HEIGHT: u32 = 420;

/// Draws the histogram and the heat map as one SVG: two plotters drawings, each in a group
/// (`id="histogram"`, `id="heatmap"`) so a reader or a test can find them.
pub fn draw_svg(input: &WearInput, r: &Value) -> anyhow::Result<String> {
    let hist = draw_histogram(input, r)?;
    let cols = heat_columns(input.erase_counts.len());
    let rows = input.erase_counts.len().div_ceil(cols).max(1);
    let heat_height = (160 + rows * (760 / cols).clamp(6, 24)).min(1400) as u32;
    let heat = draw_heatmap(input, r, cols, rows, heat_height)?;
    let height = HIST_HEIGHT + heat_height;
    let inner = |svg: &str, y: u32| -> String {
        // Drop the XML declaration plotters writes; position the drawing with y=.
        let start = svg.find("<svg").unwrap_or(0);
        svg[start..].replacen("<svg ", &format!("<svg y=\"{y}\" "), 1)
    };
    let title = format!(
        "nandbox wear: {} ({} blocks, profile {})",
        input.source,
        input.erase_counts.len(),
        input.profile
    );
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{SVG_WIDTH}\" height=\"{height}\" viewBox=\"0 0 {SVG_WIDTH} {height}\">\n\
         <title>{}</title>\n<g id=\"histogram\">\n{}\n</g>\n<g id=\"heatmap\">\n{}\n</g>\n</svg>\n",
        xml_escape(&title),
        inner(&hist, 0),
        inner(&heat, HIST_HEIGHT)
    ))
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Axis labels at whole numbers only (counts and block numbers have no fractions).
fn integer_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        format!("{:.0}", x.round())
    } else {
        String::new()
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the SVG: {e}")
}

fn draw_histogram(input: &WearInput, r: &Value) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let bins: Vec<Bin> = r["histogram"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| Bin {
                    from: b["from"].as_u64().unwrap_or(0) as u32,
                    to: b["to"].as_u64().unwrap_or(0) as u32,
                    blocks: b["blocks"].as_u64().unwrap_or(0) as u32,
                })
                .collect()
        })
        .unwrap_or_default();
    // Bars are centred on their counts: bin `from..=to` spans `from - 0.5 .. to + 0.5`.
    let lo = bins.first().map(|b| b.from).unwrap_or(0);
    let hi = bins.last().map(|b| b.to).unwrap_or(0);
    let (x0, x1) = (lo as f64 - 0.5, hi as f64 + 0.5);
    let ymax = bins.iter().map(|b| b.blocks).max().unwrap_or(1).max(1) as f64 * 1.1;
    let ec = &r["erase_count"];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SVG_WIDTH, HIST_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let caption = format!(
            "Erase-count histogram: {} good blocks, min {} / mean {:.2} / max {}, stddev {:.2} (rated {} P/E)",
            ec["good_blocks"],
            ec["min"],
            ec["mean"].as_f64().unwrap_or(0.0),
            ec["max"],
            ec["stddev"].as_f64().unwrap_or(0.0),
            input.pe_cycles
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0f64..ymax)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("erase count (P/E cycles per block)")
            .y_desc("blocks")
            .x_labels(((hi - lo) as usize + 1).clamp(2, 20))
            .x_label_formatter(&integer_label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(bins.iter().map(|b| {
                let color = heat_color(b.from, lo, hi);
                let mut bar = Rectangle::new(
                    [
                        (b.from as f64 - 0.5, 0.0),
                        (b.to as f64 + 0.5, b.blocks as f64),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 1, 1);
                bar
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn draw_heatmap(
    input: &WearInput,
    r: &Value,
    cols: usize,
    rows: usize,
    height: u32,
) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let ec = &r["erase_count"];
    let (min, max) = (
        ec["min"].as_u64().unwrap_or(0) as u32,
        ec["max"].as_u64().unwrap_or(0) as u32,
    );
    let bad: std::collections::HashSet<u32> = input.bad_blocks.iter().copied().collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SVG_WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (map_area, legend_area) = root.split_horizontally(SVG_WIDTH - 130);
        let mut chart = ChartBuilder::on(&map_area)
            .caption(
                format!(
                    "Block heat map: erase count of each block, {cols} blocks per row{}",
                    if bad.is_empty() {
                        String::new()
                    } else {
                        format!(" (black = bad, {} blocks)", bad.len())
                    }
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..cols as f64, 0f64..rows as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("block number mod row width")
            .y_desc("first block of row")
            .x_labels(cols.min(16) + 1)
            .y_labels(rows.min(24) + 1)
            .x_label_formatter(&integer_label)
            .y_label_formatter(&|y| {
                // A label at the top edge of each row: its first block.
                let row = rows as f64 - y;
                if (row - row.round()).abs() > 1e-6 || row.round() as usize >= rows {
                    return String::new();
                }
                format!("{:.0}", row.round() * cols as f64)
            })
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(input.erase_counts.iter().enumerate().map(|(b, &c)| {
                let (row, col) = (b / cols, b % cols);
                let y = (rows - 1 - row) as f64;
                let color = if bad.contains(&(b as u32)) {
                    BLACK
                } else {
                    heat_color(c, min, max)
                };
                Rectangle::new(
                    [(col as f64, y), (col as f64 + 1.0, y + 1.0)],
                    color.filled(),
                )
            }))
            .map_err(plot_err)?;

        // The colour scale, so a colour reads as an erase count.
        let top = (max.max(min + 1)) as f64;
        let mut legend = ChartBuilder::on(&legend_area)
            .caption("erases", ("sans-serif", 14))
            .margin_top(40)
            .margin_bottom(52)
            .margin_right(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, min as f64..top)
            .map_err(plot_err)?;
        legend
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(((top - min as f64) as usize + 1).clamp(2, 10))
            .y_label_style(("sans-serif", 13))
            .y_label_formatter(&integer_label)
            .draw()
            .map_err(plot_err)?;
        let steps = 64;
        legend
            .draw_series((0..steps).map(|i| {
                let lo = min as f64 + (top - min as f64) * i as f64 / steps as f64;
                let hi = min as f64 + (top - min as f64) * (i + 1) as f64 / steps as f64;
                Rectangle::new(
                    [(0.0, lo), (1.0, hi)],
                    heat_color(lo.round() as u32, min, max).filled(),
                )
            }))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(counts: Vec<u32>, bad: Vec<u32>) -> WearInput {
        WearInput {
            source: "test".into(),
            profile: "tlc".into(),
            profile_from: "test".into(),
            pe_cycles: 3000,
            page_bytes: 16384,
            pages_per_block: 256,
            bad_block_count: bad.len() as u32,
            bad_blocks: bad,
            erase_counts: counts,
            host_write_bytes: Some(1 << 30),
            program_bytes_by_cause: vec![("data".into(), 1 << 30), ("gc".into(), 1 << 29)],
            lifetime_host_write_bytes: 1 << 30,
            lifetime_program_bytes: 3 << 29,
            uptime_s: Some(86_400.0),
        }
    }

    #[test]
    fn histogram_has_one_bar_per_count_until_the_spread_is_wide() {
        let h = histogram(&[3, 3, 5, 4, 3]);
        assert_eq!(
            h,
            vec![
                Bin {
                    from: 3,
                    to: 3,
                    blocks: 3
                },
                Bin {
                    from: 4,
                    to: 4,
                    blocks: 1
                },
                Bin {
                    from: 5,
                    to: 5,
                    blocks: 1
                },
            ]
        );
        let wide: Vec<u32> = (0..1000).collect();
        let h = histogram(&wide);
        assert!(h.len() as u32 <= MAX_BINS);
        assert_eq!(h.iter().map(|b| b.blocks).sum::<u32>(), 1000);
        assert_eq!(h.last().map(|b| b.to >= 999), Some(true));
    }

    #[test]
    fn projection_follows_waf_endurance_and_write_rate() {
        // 10 good blocks at 1000 erases (block 10 is bad and ignored): 2000 cycles left each.
        let mut counts = vec![1000; 10];
        counts.push(2900);
        let r = report(&input(counts, vec![10]));
        assert_eq!(r["erase_count"]["max"], 1000);
        assert_eq!(r["erase_count"]["stddev"], 0.0);
        let waf = r["projection"]["waf"].as_f64().unwrap();
        assert!((waf - 1.5).abs() < 1e-12);
        let nand_left = 10.0 * 16384.0 * 256.0 * 2000.0;
        let tb = r["projection"]["tbw_left_tb"].as_f64().unwrap();
        assert!((tb - nand_left / 1.5 / 1e12).abs() < 1e-9);
        // 1 GiB a day.
        let days = r["projection"]["days_left"].as_f64().unwrap();
        assert!((days - nand_left / 1.5 / (1u64 << 30) as f64).abs() < 1e-6);
        assert_eq!(r["projection"]["pe_cycles_left_worst_block"], 2000);
        assert_eq!(r["waf"]["by_cause"]["gc"], 0.5);
    }

    #[test]
    fn svg_holds_both_drawings_and_is_well_formed_enough_to_nest() {
        let counts: Vec<u32> = (0..100).map(|b| 1 + b % 7).collect();
        let i = input(counts, vec![3]);
        let svg = draw_svg(&i, &report(&i)).unwrap();
        assert!(svg.contains("<g id=\"histogram\">"));
        assert!(svg.contains("<g id=\"heatmap\">"));
        assert!(svg.contains("Erase-count histogram"));
        assert!(svg.contains("Block heat map"));
        assert_eq!(svg.matches("<?xml").count(), 1);
        assert_eq!(svg.matches("<svg").count(), 3);
        assert_eq!(svg.matches("</svg>").count(), 3);
    }
}
