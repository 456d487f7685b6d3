//! `nandbox serve` and `nandbox stats`. (Being written: the NBD server.)

use clap::Args;

/// Options of `nandbox serve`.
#[derive(Args)]
pub struct ServeArgs {}

/// Options of `nandbox stats`.
#[derive(Args)]
pub struct StatsArgs {}

pub fn run(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not built yet")
}

pub fn stats(_args: StatsArgs) -> anyhow::Result<()> {
    anyhow::bail!("stats is not built yet")
}
