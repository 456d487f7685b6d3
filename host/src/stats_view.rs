//! `nandbox stats` as a person reads it: the `/stats` document laid out as a table (host I/O,
//! NAND work by cause, write amplification, wear, modelled latency), and with `--watch` the same
//! table refreshed, with rates over the last interval.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::control;

/// Causes in the order the table shows them (the FTL's own order).
const CAUSES: [&str; 7] = [
    "data",
    "delta",
    "node",
    "compact",
    "gc",
    "checkpoint",
    "padding",
];

/// Keys the table lays out itself; any other number in `/stats` is listed under "other".
const SHOWN: &[&str] = &[
    "host_read_bytes",
    "host_write_bytes",
    "host_reads",
    "host_writes",
    "host_trims",
    "host_flushes",
    "nand_read_pages",
    "nand_read_pages_by_cause",
    "nand_program_pages",
    "nand_program_pages_by_cause",
    "nand_program_bytes",
    "nand_erase_blocks",
    "waf",
    "erase_count",
    "erase_counts",
    "bad_blocks",
    "bad_block_list",
    "latency",
    "device",
    "lifetime_host_write_bytes",
    "lifetime_program_bytes",
];

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", units[unit])
    }
}

fn micros(ns: f64) -> String {
    format!("{:.1} us", ns / 1000.0)
}

/// Renders the table for `cur`; with `prev` (an earlier sample and the seconds between them) a
/// rate column is added.
pub fn render(cur: &Value, prev: Option<(&Value, f64)>) -> String {
    let mut out = String::new();
    let d = &cur["device"];
    let _ = writeln!(
        out,
        "nandbox: {} device, {} logical, {} blocks of {} x {} B pages, up {:.0} s",
        d["profile"].as_str().unwrap_or("?"),
        human_bytes(num(d, "logical_bytes")),
        d["blocks"],
        d["pages_per_block"],
        d["page_bytes"],
        num(d, "uptime_s")
    );
    let rate = |path: &[&str]| -> Option<f64> {
        let (p, secs) = prev?;
        let get = |v: &Value| {
            path.iter()
                .try_fold(v, |v, k| v.get(k))
                .and_then(Value::as_f64)
        };
        Some((get(cur)? - get(p)?) / secs.max(1e-9))
    };
    let with_rate = prev.is_some();
    let _ = writeln!(
        out,
        "\n{:<22} {:>14} {:>24}{}",
        "host",
        "requests",
        "bytes",
        if with_rate { "   per second" } else { "" }
    );
    for (name, ops, bytes) in [
        ("reads", "host_reads", Some("host_read_bytes")),
        ("writes", "host_writes", Some("host_write_bytes")),
        ("trims", "host_trims", None),
        ("flushes", "host_flushes", None),
    ] {
        // Exact bytes as well as rounded: scripts and tests compare them with what they wrote.
        let mut line = format!(
            "  {name:<20} {:>14} {:>24}",
            num(cur, ops),
            bytes
                .map(|b| format!("{} ({})", num(cur, b), human_bytes(num(cur, b))))
                .unwrap_or_default()
        );
        if let Some(r) = rate(&[ops]) {
            let _ = write!(line, "  {r:>9.0}/s");
            if let Some(b) = bytes.and_then(|b| rate(&[b])) {
                let _ = write!(line, " {}/s", human_bytes(b));
            }
        }
        let _ = writeln!(out, "{line}");
    }

    let _ = writeln!(
        out,
        "\n{:<22} {:>14} {:>14} {:>14}{}",
        "NAND by cause",
        "page reads",
        "page programs",
        "bytes programmed",
        if with_rate { "  programmed/s" } else { "" }
    );
    for cause in CAUSES.iter().chain(["total"].iter()) {
        let reads = &cur["nand_read_pages_by_cause"][cause];
        let pages = &cur["nand_program_pages_by_cause"][cause];
        let bytes = &cur["nand_program_bytes"][cause];
        if reads.is_null() && pages.is_null() && bytes.is_null() {
            continue;
        }
        let mut line = format!(
            "  {cause:<20} {:>14} {:>14} {:>14}",
            reads.as_u64().unwrap_or(0),
            pages.as_u64().unwrap_or(0),
            human_bytes(bytes.as_f64().unwrap_or(0.0))
        );
        if let Some(r) = rate(&["nand_program_bytes", cause]) {
            let _ = write!(line, "  {:>12}/s", human_bytes(r));
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "  {:<20} {:>14}",
        "erases",
        num(cur, "nand_erase_blocks")
    );

    let host = num(cur, "host_write_bytes");
    let _ = writeln!(out);
    if host > 0.0 {
        let mut line = format!("WAF                    {:.3}", num(cur, "waf"));
        let parts: Vec<String> = CAUSES
            .iter()
            .filter_map(|c| {
                let b = cur["nand_program_bytes"][c].as_f64()?;
                (b > 0.0).then(|| format!("{c} {:.3}", b / host))
            })
            .collect();
        let _ = write!(line, " = {}", parts.join(" + "));
        let _ = writeln!(out, "{line}");
    } else {
        let _ = writeln!(out, "WAF                    - (no host writes yet)");
    }
    let lifetime_host = num(cur, "lifetime_host_write_bytes");
    if lifetime_host > 0.0 {
        let _ = writeln!(
            out,
            "WAF over the lifetime  {:.3} ({} host, {} NAND)",
            num(cur, "lifetime_program_bytes") / lifetime_host,
            human_bytes(lifetime_host),
            human_bytes(num(cur, "lifetime_program_bytes"))
        );
    }
    let ec = &cur["erase_count"];
    let _ = writeln!(
        out,
        "erase count            min {}  mean {:.2}  max {}  of {} P/E; {} bad blocks",
        ec["min"],
        num(ec, "mean"),
        ec["max"],
        d["pe_cycles"],
        cur["bad_blocks"]
    );
    let l = &cur["latency"];
    if num(l, "reads") + num(l, "writes") > 0.0 {
        let _ = writeln!(
            out,
            "modelled latency       read mean {} p99 {} ({} reads); write mean {} p99 {} ({} writes)",
            micros(num(l, "read_mean_ns")),
            micros(num(l, "read_p99_ns")),
            l["reads"],
            micros(num(l, "write_mean_ns")),
            micros(num(l, "write_p99_ns")),
            l["writes"]
        );
    } else {
        let _ = writeln!(
            out,
            "modelled latency       - (serve --latency virtual or real)"
        );
    }
    if num(l, "replies") > 0.0 {
        let _ = writeln!(
            out,
            "replies sent           p50 {} p99 {} after their modelled time ({} replies)",
            micros(num(l, "reply_late_p50_ns")),
            micros(num(l, "reply_late_p99_ns")),
            l["replies"]
        );
    }

    let mut other = Vec::new();
    if let Value::Object(map) = cur {
        for (k, v) in map {
            if !SHOWN.contains(&k.as_str()) {
                flatten(k, v, &mut other);
            }
        }
    }
    if !other.is_empty() {
        let _ = writeln!(out, "\nother");
        let width = other.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in other {
            let _ = writeln!(out, "  {k:<width$}  {v}");
        }
    }
    out
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{prefix}.{k}"), v, rows);
            }
        }
        Value::Number(n) if prefix.ends_with("bytes") => {
            rows.push((prefix.into(), human_bytes(n.as_f64().unwrap_or(0.0))))
        }
        Value::Number(n) => rows.push((prefix.into(), n.to_string())),
        Value::String(s) => rows.push((prefix.into(), s.clone())),
        Value::Bool(b) => rows.push((prefix.into(), b.to_string())),
        _ => {}
    }
}

fn fetch(addr: &str) -> anyhow::Result<Value> {
    let body = control::get(addr, "/stats")?;
    serde_json::from_str(&body)
        .map_err(|e| anyhow::anyhow!("the control endpoint sent invalid JSON: {e}"))
}

/// Writes `text` to standard output; `false` once the reader has gone away (`| head`), which
/// ends the output quietly rather than as an error.
pub(crate) fn emit(text: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Prints the table once, or every `watch` seconds (`count` times, or until Ctrl-C).
pub fn run(addr: &str, watch: Option<f64>, count: Option<u64>) -> anyhow::Result<()> {
    let Some(every) = watch else {
        emit(&render(&fetch(addr)?, None))?;
        return Ok(());
    };
    // Checked before the first fetch, so a bad value fails even with nothing to watch; a huge
    // value is an error, not a panic in Duration::from_secs_f64.
    let interval = match Duration::try_from_secs_f64(every.max(0.1)) {
        Ok(d) if every > 0.0 => d,
        _ => anyhow::bail!("--watch takes a positive number of seconds, got {every}"),
    };
    let clear = std::io::stdout().is_terminal();
    let mut prev: Option<(Value, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let cur = fetch(addr)?;
        let now = Instant::now();
        let table = render(
            &cur,
            prev.as_ref()
                .map(|(p, at)| (p, now.duration_since(*at).as_secs_f64())),
        );
        let mut text = String::new();
        if clear {
            // Clear the screen and home the cursor, as `watch` does.
            text.push_str("\x1b[2J\x1b[H");
        } else if shown > 0 {
            text.push('\n');
        }
        text.push_str(&table);
        if clear {
            text.push_str(&format!("\nevery {every} s; Ctrl-C ends\n"));
        }
        if !emit(&text)? {
            return Ok(());
        }
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        prev = Some((cur, now));
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_causes_waf_and_rates() {
        let a = serde_json::json!({
            "device": {"profile": "tlc", "logical_bytes": 1u64 << 30, "blocks": 275,
                       "pages_per_block": 256, "page_bytes": 16384, "uptime_s": 10.0,
                       "pe_cycles": 3000},
            "host_writes": 10, "host_write_bytes": 40960,
            "nand_program_bytes": {"data": 40960, "gc": 8192, "total": 49152},
            "waf": 1.2,
            "erase_count": {"min": 1, "max": 3, "mean": 1.5},
            "delta": {"inlined": 4},
        });
        let mut b = a.clone();
        b["host_writes"] = 30.into();
        b["host_write_bytes"] = (3 * 40960).into();
        let t = render(&b, Some((&a, 2.0)));
        assert!(
            t.contains("WAF                    1.200 = data 0.333 + gc 0.067"),
            "{t}"
        );
        // 20 writes in 2 s.
        assert!(t.contains("       10/s"), "{t}");
        assert!(t.contains("delta.inlined  4"), "{t}");
        assert!(!t.contains("erase_counts"));
    }
}
