//! `nandbox qstore pack|extract|info`.

use clap::Subcommand;

/// The QStore file tool's commands.
#[derive(Subcommand)]
pub enum QstoreCommand {}

pub fn run(cmd: QstoreCommand) -> anyhow::Result<()> {
    match cmd {}
}
