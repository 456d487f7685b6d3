//! The control endpoint: a tiny HTTP/1.1 server on loopback that serves the device's counters,
//! `GET /stats` as JSON (`BlockDevice::stats_json` as-is) and `GET /metrics` in the Prometheus
//! text format; plus the matching client used by `nandbox stats`.
//!
//! One request per connection, answered on the listener's thread with short socket timeouts, so
//! a stuck client delays the next scrape by at most a few seconds and costs no memory.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::device::BlockDevice;

const IO_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_REQUEST_HEAD: usize = 8 << 10;

/// Binds the control endpoint; refuses addresses that are not loopback, since it has no auth.
pub fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("control address {addr}"))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!(
            "control address {addr} is not a loopback address; the endpoint has no authentication"
        );
    }
    TcpListener::bind(&addrs[..]).with_context(|| format!("binding control endpoint {addr}"))
}

/// Serves requests forever.
pub fn serve(listener: TcpListener, device: Arc<dyn BlockDevice>) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let response = match read_request_line(&mut conn) {
            Some((method, path)) => route(&method, &path, &*device),
            None => response(400, "text/plain", "bad request\n"),
        };
        let _ = conn.write_all(&response);
    }
}

fn read_request_line(conn: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let path = target.split('?').next()?.to_string();
    Some((method, path))
}

fn route(method: &str, path: &str, device: &dyn BlockDevice) -> Vec<u8> {
    if method != "GET" {
        return response(405, "text/plain", "only GET is served\n");
    }
    match path {
        "/stats" => {
            let body = device.stats_json().to_string() + "\n";
            response(200, "application/json", &body)
        }
        "/metrics" => response(
            200,
            "text/plain; version=0.0.4",
            &render_metrics(&device.stats_json()),
        ),
        _ => response(404, "text/plain", "not found: try /stats or /metrics\n"),
    }
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Counters with conventional Prometheus names: (stats key, metric name, help).
const COUNTERS: &[(&str, &str, &str)] = &[
    (
        "host_read_bytes",
        "nandbox_host_read_bytes_total",
        "Bytes read by NBD clients.",
    ),
    (
        "host_write_bytes",
        "nandbox_host_write_bytes_total",
        "Bytes written by NBD clients.",
    ),
    (
        "nand_read_pages",
        "nandbox_nand_read_pages_total",
        "NAND page reads.",
    ),
    (
        "nand_program_pages",
        "nandbox_nand_program_pages_total",
        "NAND page programs.",
    ),
    (
        "nand_erase_blocks",
        "nandbox_nand_erase_blocks_total",
        "NAND block erases.",
    ),
    (
        "host_reads",
        "nandbox_host_reads_total",
        "NBD read requests.",
    ),
    (
        "host_writes",
        "nandbox_host_writes_total",
        "NBD write requests.",
    ),
    (
        "host_flushes",
        "nandbox_host_flushes_total",
        "NBD flush requests.",
    ),
    (
        "host_trims",
        "nandbox_host_trims_total",
        "NBD trim requests.",
    ),
    (
        "nand_spare_reads",
        "nandbox_nand_spare_reads_total",
        "NAND spare-area-only reads.",
    ),
    (
        "lifetime_host_write_bytes",
        "nandbox_lifetime_host_write_bytes_total",
        "Bytes written by hosts over the device's life (as of the last checkpoint plus this run).",
    ),
    (
        "lifetime_program_bytes",
        "nandbox_lifetime_nand_program_bytes_total",
        "Bytes programmed to NAND over the device's life.",
    ),
    (
        "checkpoints",
        "nandbox_checkpoints_total",
        "Checkpoints written.",
    ),
    (
        "gc_blocks",
        "nandbox_gc_blocks_total",
        "Blocks collected by garbage collection.",
    ),
    (
        "wear_level_moves",
        "nandbox_wear_level_moves_total",
        "Blocks moved by static wear levelling.",
    ),
    (
        "retired_blocks",
        "nandbox_retired_blocks_total",
        "Blocks retired after a program or erase failure.",
    ),
    (
        "node_cache_hits",
        "nandbox_node_cache_hits_total",
        "Node (mapping) page cache hits.",
    ),
    (
        "node_cache_misses",
        "nandbox_node_cache_misses_total",
        "Node (mapping) page cache misses.",
    ),
];

/// Upper bounds of the `nandbox_erase_count` histogram buckets: fixed, so scrapes compare, and
/// spanning fresh blocks to SLC's 100,000 rated cycles.
const ERASE_COUNT_BUCKETS: &[u64] = &[
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// The per-block erase counts as a Prometheus histogram (`_bucket{le=..}`, `_sum`, `_count`).
fn erase_count_histogram(out: &mut String, counts: &[Value]) {
    let counts: Vec<u64> = counts.iter().filter_map(Value::as_u64).collect();
    metric_head(
        out,
        "nandbox_erase_count",
        "Erase count of each block (P/E cycles used), over all blocks.",
        "histogram",
    );
    for le in ERASE_COUNT_BUCKETS {
        let n = counts.iter().filter(|&&c| c <= *le).count();
        let _ = writeln!(out, "nandbox_erase_count_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "nandbox_erase_count_bucket{{le=\"+Inf\"}} {}",
        counts.len()
    );
    let _ = writeln!(
        out,
        "nandbox_erase_count_sum {}",
        counts.iter().sum::<u64>()
    );
    let _ = writeln!(out, "nandbox_erase_count_count {}", counts.len());
}

/// Per-cause breakdowns, exported as one counter with a `cause` label each.
const BY_CAUSE: &[(&str, &str, &str)] = &[
    (
        "nand_program_bytes",
        "nandbox_nand_program_bytes_total",
        "Bytes programmed to NAND, by cause.",
    ),
    (
        "nand_program_pages_by_cause",
        "nandbox_nand_program_pages_by_cause_total",
        "NAND page programs, by cause.",
    ),
    (
        "nand_read_pages_by_cause",
        "nandbox_nand_read_pages_by_cause_total",
        "NAND page reads, by cause.",
    ),
];

/// Renders the stats JSON in the Prometheus text exposition format.
///
/// Known keys get conventional names and types; per-cause objects (`nand_program_bytes`, ...)
/// become one counter with a `cause` label (their `total` entry is left out, as `sum()` gives
/// it and a label value that double-counts would break that). Any other numeric key, nested keys joined by `_`, is
/// exported as a gauge named after it, so new counters show up without a change here.
pub fn render_metrics(stats: &Value) -> String {
    let mut out = String::new();
    let mut known: Vec<&str> = Vec::new();
    for (key, name, help) in COUNTERS {
        if let Some(v) = stats.get(key).and_then(number) {
            metric_head(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {v}");
            known.push(key);
        }
    }
    for (key, name, help) in BY_CAUSE {
        if let Some(Value::Object(causes)) = stats.get(key) {
            metric_head(&mut out, name, help, "counter");
            for (cause, v) in causes {
                if let (false, Some(v)) = (cause == "total", number(v)) {
                    let _ = writeln!(out, "{name}{{cause=\"{}\"}} {v}", escape_label(cause));
                }
            }
            known.push(key);
        }
    }
    if let Some(v) = stats.get("waf").and_then(number) {
        metric_head(
            &mut out,
            "nandbox_waf",
            "Write amplification: NAND bytes programmed per host byte written.",
            "gauge",
        );
        let _ = writeln!(out, "nandbox_waf {v}");
        known.push("waf");
    }
    if let Some(Value::Object(ec)) = stats.get("erase_count") {
        for (stat, v) in ec {
            if let Some(v) = number(v) {
                let name = format!("nandbox_erase_count_{}", sanitize(stat));
                metric_head(
                    &mut out,
                    &name,
                    &format!("Per-block erase count, {stat} over all blocks."),
                    "gauge",
                );
                let _ = writeln!(out, "{name} {v}");
            }
        }
        known.push("erase_count");
    }
    if let Some(Value::Array(counts)) = stats.get("erase_counts") {
        erase_count_histogram(&mut out, counts);
        known.push("erase_counts");
    }
    if let Value::Object(map) = stats {
        for (key, v) in map {
            if !known.contains(&key.as_str()) {
                generic(&mut out, &format!("nandbox_{}", sanitize(key)), v);
            }
        }
    }
    out
}

fn generic(out: &mut String, name: &str, v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                generic(out, &format!("{name}_{}", sanitize(k)), v);
            }
        }
        _ => {
            if let Some(n) = number(v) {
                metric_head(out, name, "nandbox device statistic.", "gauge");
                let _ = writeln!(out, "{name} {n}");
            }
        }
    }
}

fn metric_head(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn number(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        _ => None,
    }
}

fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// GETs `path` from the control endpoint at `addr`; returns the body of a 200 response.
pub fn get(addr: &str, path: &str) -> anyhow::Result<String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .with_context(|| format!("control address {addr}"))?
        .collect();
    let first = addrs
        .first()
        .with_context(|| format!("control address {addr} resolves to nothing"))?;
    let mut conn = TcpStream::connect_timeout(first, IO_TIMEOUT).with_context(|| {
        format!("connecting to the control endpoint at {addr} (is `nandbox serve` running?)")
    })?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    // Whatever listens there may not be a control endpoint: name it in every failure, as a
    // bare 'Resource temporarily unavailable' (a read timeout) tells the user nothing.
    let no_answer = || format!("control endpoint at {addr} did not answer GET {path}");
    // An NBD server greets first and may drop the connection as soon as it reads the request
    // (a write then fails with a broken pipe, a read with a reset): what it sent is kept, so
    // its greeting still names the mistake.
    let sent = write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let received = read_kept(&mut conn, &mut raw, 64 << 20);
    // A common slip is the NBD port (10809) for the control port (10810): say so.
    if raw.starts_with(b"NBDMAGIC") {
        bail!(
            "{addr} is an NBD port, not the control endpoint (that is `nandbox serve --control`, \
             127.0.0.1:10810 by default)"
        );
    }
    sent.with_context(no_answer)?;
    received.with_context(no_answer)?;
    let not_http =
        || format!("{addr} did not answer GET {path} with HTTP: not a control endpoint?");
    let text = String::from_utf8(raw).ok().with_context(not_http)?;
    let (head, body) = text.split_once("\r\n\r\n").with_context(not_http)?;
    let status = head.lines().next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        bail!("control endpoint answered `{status}`");
    }
    Ok(body.to_string())
}

/// Reads `conn` to its end (at most `limit` bytes) into `raw`, keeping what arrived before an
/// error.
fn read_kept(conn: &mut TcpStream, raw: &mut Vec<u8>, limit: usize) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    while raw.len() < limit {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => raw.extend_from_slice(&buf[..n.min(limit - raw.len())]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_use_conventional_names_and_export_unknown_keys() {
        let stats = serde_json::json!({
            "host_write_bytes": 8192,
            "nand_program_bytes": {"data": 4096, "gc": 16384, "total": 20480},
            "waf": 2.5,
            "erase_count": {"min": 1, "max": 9, "mean": 4.5},
            "erase_counts": [1, 2, 9, 3],
            "lifetime_host_write_bytes": 4096,
            "delta": {"inline_hits": 7, "name": "x"},
            "host_flushes": 3,
            "nand_read_pages_by_cause": {"gc": 5, "total": 5},
        });
        let m = render_metrics(&stats);
        assert!(m.contains(
            "# TYPE nandbox_host_write_bytes_total counter\nnandbox_host_write_bytes_total 8192\n"
        ));
        assert!(m.contains("nandbox_nand_program_bytes_total{cause=\"gc\"} 16384\n"));
        assert!(!m.contains("cause=\"total\""));
        assert!(m.contains("nandbox_waf 2.5\n"));
        assert!(m.contains("nandbox_erase_count_max 9\n"));
        assert!(m.contains("# TYPE nandbox_erase_count histogram\n"));
        assert!(m.contains("nandbox_erase_count_bucket{le=\"1\"} 1\n"));
        assert!(m.contains("nandbox_erase_count_bucket{le=\"5\"} 3\n"));
        assert!(m.contains("nandbox_erase_count_bucket{le=\"+Inf\"} 4\n"));
        assert!(m.contains("nandbox_erase_count_sum 15\nnandbox_erase_count_count 4\n"));
        assert!(m.contains("nandbox_lifetime_host_write_bytes_total 4096\n"));
        assert!(m.contains("nandbox_delta_inline_hits 7\n"));
        assert!(!m.contains("delta_name"));
        assert!(m.contains("nandbox_host_flushes_total 3\n"));
        assert!(m.contains("nandbox_nand_read_pages_by_cause_total{cause=\"gc\"} 5\n"));
    }
}
