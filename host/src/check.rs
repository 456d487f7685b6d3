//! `nandbox check --image PATH`: offline consistency check of an image.
//!
//! The image is opened read-only: mounting (which rolls the log forward and may write a
//! checkpoint) happens in a RAM overlay, so the check never changes what it inspects.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use nandbox_core::ftl::Ftl;
use nandbox_core::nand::Nand;
use nandbox_sim::{OwnedFtlMemory, SimNand};

use crate::stdout::outln;

/// Options of `nandbox check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Image file written by `nandbox serve --image`.
    #[arg(long, value_name = "PATH")]
    image: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Mounts the image in a RAM overlay and checks every mapping; exits non-zero on any problem.
pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let path = &args.image;
    // A large image takes a while to mount and check: show it on a terminal (stderr only).
    let bar = crate::wear::spinner(&format!("{}: opening", path.display()));
    let mut nand = SimNand::open_image_read_only(path)
        .with_context(|| format!("{}: cannot open image", path.display()))?;
    let geometry = nand.geometry();
    let mut scratch = vec![0u8; (geometry.page_bytes + geometry.spare_bytes) as usize];
    let config = Ftl::probe(&mut nand, &mut scratch)
        .map_err(|e| anyhow::anyhow!("{}: no usable checkpoint: {e}", path.display()))?;
    let mut memory = OwnedFtlMemory::new(&geometry, &config);
    bar.set_message(format!("{}: mounting (roll-forward)", path.display()));
    let mut ftl = Ftl::mount(nand, memory.lend())
        .map_err(|e| anyhow::anyhow!("{}: mount failed: {e}", path.display()))?;
    bar.set_message(format!(
        "{}: checking {} logical blocks",
        path.display(),
        config.logical_blocks
    ));
    let report = ftl
        .check()
        .map_err(|e| anyhow::anyhow!("{}: check stopped: {e}", path.display()))?;
    bar.finish_and_clear();
    let fields = [
        ("nodes_checked", report.nodes_checked as u64),
        ("lbas_mapped", report.lbas_mapped),
        ("bad_nodes", report.bad_nodes as u64),
        ("bad_records", report.bad_records as u64),
        ("wrong_owner", report.wrong_owner as u64),
        ("bad_data_crc", report.bad_data_crc as u64),
        ("bitmap_mismatches", report.bitmap_mismatches as u64),
        (
            "valid_count_mismatches",
            report.valid_count_mismatches as u64,
        ),
        ("unreferenced_valid", report.unreferenced_valid),
        ("nat_errors", report.nat_errors as u64),
        ("problems", report.problems()),
    ];
    // Where the first damage is (a node page names its group and LBAs): the counts alone do
    // not tell a user which blocks to restore.
    let first = report.first_problem.map(|c| c.to_string());
    if args.json {
        let mut map: serde_json::Map<String, serde_json::Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        map.insert("first_problem".into(), first.clone().into());
        outln!("{}", serde_json::Value::Object(map))?;
    } else {
        outln!(
            "{}: {} logical blocks, {} blocks of {} pages of {} bytes",
            path.display(),
            config.logical_blocks,
            geometry.blocks,
            geometry.pages_per_block,
            geometry.page_bytes
        )?;
        for (name, value) in fields {
            outln!("  {name:<24} {value}")?;
        }
        if let Some(first) = &first {
            outln!("  first problem: {first}")?;
        }
    }
    if report.problems() > 0 {
        bail!(
            "{}: {} problems found (first: {})",
            path.display(),
            report.problems(),
            first.as_deref().unwrap_or("unknown")
        );
    }
    Ok(())
}
