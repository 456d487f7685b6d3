//! `nandbox zipnn compress|decompress`.

use clap::Subcommand;

/// The ZipNN file tool's commands.
#[derive(Subcommand)]
pub enum ZipnnCommand {}

pub fn run(cmd: ZipnnCommand) -> anyhow::Result<()> {
    match cmd {}
}
