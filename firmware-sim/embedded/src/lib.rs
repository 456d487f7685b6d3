//! nandbox-core as firmware on a Cortex-M4F (QEMU's `mps2-an386`): the board, a strict NAND
//! array in RAM, and the self-test the image runs. Two images link this library: the self-test
//! (`src/main.rs`) and a size probe (`src/bin/probe.rs`) that exercises only the core's API, so
//! its code size is the core's, without the test harness and its formatting.
#![no_std]

pub mod bf16;
pub mod board;
pub mod ftl_ram;
pub mod pattern;
pub mod ram_nand;
pub mod report;
pub mod selftest_codec;
pub mod selftest_ftl;
pub mod selftest_nand;
pub mod stack;
