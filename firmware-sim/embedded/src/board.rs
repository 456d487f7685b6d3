//! The board: the simulated NAND array's geometry, the RAM that holds it, and the test bench's
//! buffers.
//!
//! The array's bytes and the self-test's own buffers (sample data, read-back pages) are statics
//! in the `.nand_array` and `.testbench` linker sections, which `memory.x` places in the
//! mps2-an386's 16 MiB PSRAM, apart from `.bss`: the footprint report must count what the
//! firmware needs (FTL state, the memory lent to it), not the medium it manages nor the harness
//! that checks it.

use core::{
    mem::MaybeUninit,
    ptr::addr_of_mut,
    sync::atomic::{AtomicBool, Ordering},
};

use nandbox_core::{
    codec::zipnn::{self, Dtype},
    nand::Geometry,
};

use crate::pattern::Model;

/// Erase blocks in the array.
pub const BLOCKS: usize = 25;

/// The array: SLC-like 4 KiB pages with the 64 spare bytes per slot the FTL needs, 64 pages per
/// block, 25 blocks (one of them marked bad at the factory by the FTL self-test): 6.25 MiB, small
/// enough that the self-test writes it over several times.
pub const GEOMETRY: Geometry = Geometry {
    page_bytes: 4096,
    spare_bytes: 64,
    pages_per_block: 64,
    blocks: BLOCKS as u32,
};

const DATA_BYTES: usize = GEOMETRY.total_bytes() as usize;
const SPARE_BYTES: usize = (GEOMETRY.total_pages() * GEOMETRY.spare_bytes) as usize;

// Checked at build time: a bad geometry never reaches the board.
const _: () = assert!(GEOMETRY.validate().is_ok());

#[link_section = ".nand_array"]
static mut NAND_DATA: MaybeUninit<[u8; DATA_BYTES]> = MaybeUninit::uninit();
#[link_section = ".nand_array"]
static mut NAND_SPARE: MaybeUninit<[u8; SPARE_BYTES]> = MaybeUninit::uninit();
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Hands out the array's data and spare bytes, once; `None` on any later call.
///
/// The bytes are initialised here (to the erased value), since `.nand_array` is `NOLOAD` and
/// cortex-m-rt does not touch it.
pub fn take_nand_memory() -> Option<(&'static mut [u8], &'static mut [u8])> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the swap above lets exactly one caller past, so no other reference to either
    // static is ever created. Each is filled through a raw pointer before the reference to it
    // is made, so no reference to uninitialised bytes exists; u8 has no invalid values.
    unsafe {
        let data = addr_of_mut!(NAND_DATA);
        let spare = addr_of_mut!(NAND_SPARE);
        data.cast::<u8>().write_bytes(0xFF, DATA_BYTES);
        spare.cast::<u8>().write_bytes(0xFF, SPARE_BYTES);
        Some(((*data).assume_init_mut(), (*spare).assume_init_mut()))
    }
}

/// 4 KiB logical blocks the FTL exports on this array: 2 MiB, what 24 good blocks of 64 pages hold
/// after the checkpoint area, open logs, GC reserve and 7% over-provisioning.
pub const LOGICAL_BLOCKS: u32 = 512;

/// Bytes in the BF16 codec sample: an odd count, so a trailing half element is carried too.
pub const SAMPLE_BYTES: usize = 12 * 1024 + 1;
/// ZipNN chunk size in the image: one 4 KiB logical block, the unit the device would code.
pub const CODEC_CHUNK: u32 = 4096;
/// Room for the coded sample: the codec's own worst-case bound.
pub const CODED_BYTES: usize = zipnn::max_compressed_len(Dtype::Bf16, CODEC_CHUNK, SAMPLE_BYTES);

/// The self-test's working buffers. None of this is firmware state.
pub struct Testbench {
    /// One page of data to write or compare.
    pub page: [u8; 4096],
    /// A second page, for reading back.
    pub readback: [u8; 4096],
    /// One page's spare area.
    pub spare: [u8; GEOMETRY.spare_bytes as usize],
    /// The BF16 sample.
    pub sample: [u8; SAMPLE_BYTES],
    /// The coded sample.
    pub coded: [u8; CODED_BYTES],
    /// The sample decoded again.
    pub decoded: [u8; SAMPLE_BYTES],
    /// Per LBA: what it may read (see [`Model`]).
    pub model: [Model; LOGICAL_BLOCKS as usize],
}

#[link_section = ".testbench"]
static mut TESTBENCH: MaybeUninit<Testbench> = MaybeUninit::uninit();
static BENCH_TAKEN: AtomicBool = AtomicBool::new(false);

/// Hands out the test bench, zeroed, once; `None` on any later call.
pub fn take_testbench() -> Option<&'static mut Testbench> {
    if BENCH_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the swap lets exactly one caller past, so this is the only reference ever made to
    // TESTBENCH. It is zeroed through a raw pointer first; all-zero bytes are a valid
    // `Testbench` (it holds byte arrays and `Model`s, whose all-zero state is a fresh block).
    unsafe {
        let bench = addr_of_mut!(TESTBENCH);
        bench.write_bytes(0, 1);
        Some((*bench).assume_init_mut())
    }
}

/// Hands out a `&'static mut` to a static initialised at build time, once; `None` on any later
/// call. Unlike `cortex_m::singleton!`, the value is never built on the stack (the codec's tables
/// are 24 KiB), so the stack figure stays the firmware's own.
#[macro_export]
macro_rules! static_once {
    ($ty:ty = $init:expr) => {{
        static mut VALUE: $ty = $init;
        static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
        if TAKEN.swap(true, core::sync::atomic::Ordering::AcqRel) {
            None
        } else {
            // SAFETY: the swap lets exactly one caller past, so this is the only reference
            // ever made to VALUE, which is private to this expansion.
            Some(unsafe { &mut *core::ptr::addr_of_mut!(VALUE) })
        }
    }};
}
