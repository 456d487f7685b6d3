//! `nandbox`: an emulated flash SSD served over NBD, and the tools around it.

mod backend;
mod check;
mod control;
mod device;
mod nbd;
mod outpath;
mod qstore_cli;
mod replay;
mod safetensors;
mod serve;
mod stats_view;
mod stdout;
mod wear;
mod zipnn_cli;

use clap::{Parser, Subcommand};

/// An emulated flash SSD that runs real FTL firmware, served over NBD.
#[derive(Parser)]
#[command(name = "nandbox", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an emulated SSD over NBD (a 1 GiB TLC device in RAM on 127.0.0.1:10809 by default).
    Serve(serve::ServeArgs),
    /// Print the live counters of a running device.
    Stats(serve::StatsArgs),
    /// Replay a block trace recorded by `serve --trace` through a fresh device; print its counters.
    Replay(replay::ReplayArgs),
    /// Report flash wear: erase counts, WAF by cause, projected lifetime; --svg draws it.
    Wear(wear::WearArgs),
    /// Check an image file offline for consistency.
    Check(check::CheckArgs),
    /// Compress or decompress model weights with the ZipNN codec.
    #[command(subcommand)]
    Zipnn(zipnn_cli::ZipnnCommand),
    /// Store a model once for high precision and INT8 (QStore).
    #[command(subcommand)]
    Qstore(qstore_cli::QstoreCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Stats(args) => serve::stats(args),
        Command::Replay(args) => replay::run(args),
        Command::Wear(args) => wear::run(args),
        Command::Check(args) => check::run(args),
        Command::Zipnn(cmd) => zipnn_cli::run(cmd),
        Command::Qstore(cmd) => qstore_cli::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our stdout went away (`| head`): the output simply ends.
        Err(e) if stdout::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nandbox: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
