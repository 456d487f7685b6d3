//! `nandbox wear` against the real binary: after a known workload that makes garbage collection
//! erase blocks, the report (`--json`) and the picture (`--svg`) show the same erase counts as
//! the device's `/stats`, from a running device and from its image offline (which stays
//! unchanged); and `nandbox stats --watch` redraws the live table.

use std::process::Command;
use std::time::Duration;

use nandbox_tests::{nandbox_bin, run_ok, scratch_dir, sha256_file, Server};
use serde_json::Value;

const DEVICE: &str = "64MiB";
const DEVICE_BYTES: usize = 64 << 20;
/// Three full overwrites: on a 64 MiB tlc device (about 17 blocks of 4 MiB) the second and
/// third passes can only be written by collecting blocks the first pass filled.
const PASSES: usize = 3;

fn http_get(addr: &str, path: &str) -> String {
    let (status, body) = nandbox_tests::http_get(addr, path);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    body
}

fn stats(server: &Server) -> Value {
    serde_json::from_str(&http_get(&server.control, "/stats")).expect("/stats is JSON")
}

/// Overwrites the whole device `PASSES` times with distinct data (no delta can shortcut a
/// pass), in 1 MiB writes through libnbd, then flushes.
fn overwrite_device(server: &Server) {
    let out = run_ok(
        Command::new("/usr/bin/python3").args([
            "-c",
            "import sys, os, nbd\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             size, passes = int(sys.argv[2]), int(sys.argv[3])\n\
             for p in range(passes):\n\
             \x20   for off in range(0, size, 1 << 20):\n\
             \x20       h.pwrite(os.urandom(1 << 20), off)\n\
             h.flush()\nprint('ok')",
            &server.uri(),
            &DEVICE_BYTES.to_string(),
            &PASSES.to_string(),
        ]),
        Duration::from_secs(300),
    );
    assert!(out.contains("ok"), "{out}");
}

fn wear(args: &[&str]) -> Value {
    let out = run_ok(
        Command::new(nandbox_bin()).arg("wear").args(args),
        Duration::from_secs(120),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("wear --json: {e}:\n{out}"))
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("an array of erase counts")
        .iter()
        .map(|c| c.as_u64().expect("a count"))
        .collect()
}

/// The SVG parses as XML and holds the histogram (one bar per bin) and the heat map (a cell
/// per block), under the ids and titles the report gives them.
fn check_svg(path: &std::path::Path, blocks: usize, bins: usize) {
    let text = std::fs::read_to_string(path).expect("SVG written");
    let doc = roxmltree::Document::parse(&text).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    let group = |id: &str| {
        root.descendants()
            .find(|n| n.attribute("id") == Some(id))
            .unwrap_or_else(|| panic!("no element with id {id}"))
    };
    let texts = |n: roxmltree::Node| -> String {
        n.descendants()
            .filter(|t| t.is_text())
            .filter_map(|t| t.text())
            .collect::<Vec<_>>()
            .join("|")
    };
    let rects = |n: roxmltree::Node| n.descendants().filter(|r| r.has_tag_name("rect")).count();
    let hist = group("histogram");
    let hist_text = texts(hist);
    assert!(hist_text.contains("Erase-count histogram"), "{hist_text}");
    assert!(hist_text.contains("erase count (P/E cycles per block)"));
    assert!(hist_text.contains("blocks"));
    assert!(rects(hist) >= bins, "{} rects for {bins} bins", rects(hist));
    let heat = group("heatmap");
    let heat_text = texts(heat);
    assert!(heat_text.contains("Block heat map"), "{heat_text}");
    assert!(heat_text.contains("first block of row"));
    // A cell per block, plus the colour scale.
    assert!(
        rects(heat) >= blocks + 64,
        "{} rects for {blocks} blocks",
        rects(heat)
    );
}

#[test]
fn wear_report_and_svg_agree_with_stats_live_and_offline() {
    let dir = scratch_dir();
    let image = dir.path().join("wear.img");
    let final_stats = dir.path().join("final.json");
    let mut server = Server::start(&[
        "--size",
        DEVICE,
        "--image",
        image.to_str().unwrap(),
        "--stats-out",
        final_stats.to_str().unwrap(),
    ]);
    overwrite_device(&server);

    // Idle garbage collection may still erase a block between two looks: retry until /stats
    // reads the same before and after the report (bounded).
    let svg = server.dir().join("wear.svg");
    let mut agreed = None;
    for _ in 0..20 {
        let before = stats(&server);
        let report = wear(&[
            "--control",
            &server.control,
            "--json",
            "--svg",
            svg.to_str().unwrap(),
        ]);
        let after = stats(&server);
        if before["erase_counts"] == after["erase_counts"]
            && before["host_write_bytes"] == after["host_write_bytes"]
        {
            agreed = Some((after, report));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (st, report) = agreed.expect("the device kept erasing for 20 tries");

    // The workload is what we think: every byte written PASSES times, and GC erased blocks.
    assert_eq!(
        st["host_write_bytes"].as_u64(),
        Some((PASSES * DEVICE_BYTES) as u64)
    );
    let ec = counts(&st["erase_counts"]);
    let blocks = st["device"]["blocks"].as_u64().unwrap() as usize;
    assert_eq!(ec.len(), blocks);
    assert_eq!(
        ec.iter().sum::<u64>(),
        st["nand_erase_blocks"].as_u64().unwrap(),
        "per-block erase counts add up to the erase counter"
    );
    assert!(
        *ec.iter().max().unwrap() >= 3,
        "three overwrites must recycle blocks: {ec:?}"
    );

    // The report shows the device's figures.
    assert_eq!(counts(&report["erase_counts"]), ec);
    assert_eq!(report["erase_count"]["min"], st["erase_count"]["min"]);
    assert_eq!(report["erase_count"]["max"], st["erase_count"]["max"]);
    let mean = report["erase_count"]["mean"].as_f64().unwrap();
    assert!((mean - st["erase_count"]["mean"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(report["bad_blocks"]["count"], st["bad_blocks"]);
    let waf = report["waf"]["since_start"].as_f64().unwrap();
    assert!((waf - st["waf"].as_f64().unwrap()).abs() < 1e-9, "{waf}");
    assert_eq!(report["host_write_bytes"], st["host_write_bytes"]);
    let hist = report["histogram"].as_array().unwrap();
    let in_bins: u64 = hist.iter().map(|b| b["blocks"].as_u64().unwrap()).sum();
    assert_eq!(
        in_bins,
        ec.len() as u64 - st["bad_blocks"].as_u64().unwrap()
    );
    let max = *ec.iter().max().unwrap();
    let in_top_bin = ec.iter().filter(|&&c| c == max).count() as u64;
    assert_eq!(hist.last().unwrap()["blocks"].as_u64(), Some(in_top_bin));
    // Projected life: the worst block's cycles left at tlc's 3,000, and a finite TBW and days.
    assert_eq!(report["profile"]["pe_cycles"], 3000);
    assert_eq!(
        report["projection"]["pe_cycles_left_worst_block"].as_u64(),
        Some(3000 - max)
    );
    assert!(report["projection"]["tbw_left_tb"].as_f64().unwrap() > 0.0);
    assert!(report["projection"]["days_left"].as_f64().unwrap() > 0.0);
    check_svg(&svg, blocks, hist.len());

    // The live table: `--watch` redraws it (twice here) and adds rates from the second on.
    let table = run_ok(
        Command::new(nandbox_bin()).args([
            "stats",
            "--control",
            &server.control,
            "--watch",
            "0.2",
            "--count",
            "2",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(table.matches("NAND by cause").count(), 2, "{table}");
    assert_eq!(table.matches("per second").count(), 1, "{table}");
    let written = (PASSES * DEVICE_BYTES).to_string();
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("writes ") && l.contains(&written)),
        "{table}"
    );

    // Offline: the image reports the erase counts the device had at its clean shutdown, is
    // recognised as tlc by its geometry, and is not modified by being read.
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{status}");
    let last: Value =
        serde_json::from_str(&std::fs::read_to_string(&final_stats).unwrap()).unwrap();
    let digest = sha256_file(&image);
    let offline_svg = server.dir().join("offline.svg");
    let offline = wear(&[
        "--image",
        image.to_str().unwrap(),
        "--json",
        "--svg",
        offline_svg.to_str().unwrap(),
    ]);
    assert_eq!(
        sha256_file(&image),
        digest,
        "wear --image changed the image"
    );
    assert_eq!(
        counts(&offline["erase_counts"]),
        counts(&last["erase_counts"])
    );
    assert_eq!(offline["profile"]["name"], "tlc");
    assert!(offline["profile"]["from"]
        .as_str()
        .unwrap()
        .contains("inferred"));
    // Lifetime WAF comes from the last checkpoint: at most the host bytes of the three passes
    // (writes after it are only in the log), and at least the first pass (GC of the later
    // passes needed checkpoints).
    let lifetime = offline["lifetime_host_write_bytes"].as_u64().unwrap();
    assert!(
        (DEVICE_BYTES as u64..=(PASSES * DEVICE_BYTES) as u64).contains(&lifetime),
        "{lifetime}"
    );
    assert!(offline["waf"]["lifetime"].as_f64().unwrap() >= 1.0);
    assert!(offline["projection"]["days_left"].is_null());
    check_svg(
        &offline_svg,
        blocks,
        offline["histogram"].as_array().unwrap().len(),
    );
}

/// The README's `nandbox wear --svg wear.svg` names no source: like `nandbox stats`, it asks the
/// control endpoint `nandbox serve` starts on by default, rather than failing on a missing flag.
#[test]
fn wear_without_a_source_asks_the_default_control_endpoint() {
    let dir = nandbox_tests::scratch_dir();
    let svg = dir.path().join("wear.svg");
    let out = nandbox_tests::nandbox_cli(&["wear", "--svg", svg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Whether a device runs on this machine's default port is not ours to know: either the
    // report came from it, or the error names the address it tried.
    assert!(
        out.status.success() || err.contains("127.0.0.1:10810"),
        "{}: {err}",
        out.status
    );
    assert!(!err.contains("required"), "{err}");
}

/// `wear --image ssd.img --svg ssd.img` (a slip of tab completion) must not write the picture
/// over the image it reports on.
#[test]
fn wear_refuses_to_draw_over_its_image() {
    let dir = nandbox_tests::scratch_dir();
    let image = dir.path().join("dev.img");
    let image_s = image.to_str().unwrap();
    let mut server = Server::start(&["--size", "16MiB", "--image", image_s]);
    let status = server.signal_and_wait("TERM", Duration::from_secs(60));
    assert!(status.success(), "{}", server.log_text());
    let before = sha256_file(&image);
    let out = nandbox_tests::nandbox_cli(&["wear", "--image", image_s, "--svg", image_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "wear drew over its image");
    assert!(err.contains("same file"), "{err}");
    assert_eq!(sha256_file(&image), before, "the image changed");
}
