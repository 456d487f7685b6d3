//! nandbox-sim: the simulated NAND array and the firmware runner around nandbox-core.
//!
//! - [`nand`]: `SimNand`, RAM or image-file backed, contract-enforcing, fault-injecting.
//! - [`image`]: the sparse image file format behind a persistent `SimNand`.
//! - [`latency`]: NAND time on a virtual clock, channels and dies in parallel.
//! - [`profile`]: named geometries and timings (`tlc`, `femu`, `slc`).
//! - [`trace`]: block traces of what the firmware ran, for replay through other settings.
#![forbid(unsafe_code)]

pub mod firmware;
pub mod image;
pub mod latency;
pub mod memory;
pub mod nand;
pub mod profile;
mod rng;
pub mod trace;

pub use memory::OwnedFtlMemory;
pub use nand::{FaultConfig, NandCounters, SimError, SimNand};
pub use rng::SplitMix64;
