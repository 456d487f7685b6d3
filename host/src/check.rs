//! `nandbox check --image PATH`: offline consistency check of an image.

use clap::Args;

/// Options of `nandbox check`.
#[derive(Args)]
pub struct CheckArgs {}

pub fn run(_args: CheckArgs) -> anyhow::Result<()> {
    anyhow::bail!("check is not built yet")
}
