//! nandbox-core: the firmware of an emulated flash SSD.
//!
//! `#![no_std]`, no allocator, no `unsafe`: every buffer is lent by the caller or sized by a
//! const generic, and running out of room is an error, never a reallocation.
//!
//! # Layers
//!
//! Each module uses only those listed above it:
//!
//! 1. [`nand`] — the `Nand` trait and its contract, geometry, addresses.
//! 2. [`format`] — on-flash byte layouts (spare record, node page, checkpoint), CRC-checked views.
//! 3. [`codec`] — entropy coding and the model-weight codecs (ZipNN, QStore); [`delta`] — delta
//!    encoding, inline deltas, hotness and compact pages (MedFS).
//! 4. [`stats`] — counters by cause.
//! 5. [`ftl`] — the log-structured flash translation layer: node pages, NAT, GC, wear levelling,
//!    checkpoints and roll-forward recovery.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod nand;

pub mod delta;
pub mod format;
pub mod ftl;
pub mod stats;
#[cfg(test)]
mod test_rng;

pub use ftl::{
    blocks_for_capacity, CheckReport, Error, FormatError, Ftl, FtlConfig, FtlMemory, Lba,
    MemoryRequirements, MountError,
};
pub use stats::{Cause, Stats};
