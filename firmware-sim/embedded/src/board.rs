//! The board: the simulated NAND array's geometry and the RAM that holds it.
//!
//! The array's bytes are statics in the `.nand_array` linker section, which `memory.x` places in
//! the mps2-an386's 16 MiB PSRAM, apart from the firmware's own `.bss`: the footprint report must
//! count what the firmware needs, not the medium it manages.

use core::{
    mem::MaybeUninit,
    ptr::addr_of_mut,
    sync::atomic::{AtomicBool, Ordering},
};

use nandbox_core::nand::Geometry;

/// Erase blocks in the array.
pub const BLOCKS: usize = 24;

/// The array: SLC-like 4 KiB pages with the 64 spare bytes per slot the FTL needs, 64 pages per
/// block, 24 blocks: 6 MiB, small enough that the self-test writes it over several times.
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
