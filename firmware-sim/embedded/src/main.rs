//! nandbox-core as firmware: a self-test image for the Cortex-M4F of QEMU's `mps2-an386`.
//!
//! The image links nandbox-core with a NAND array held in the board's RAM (`ram_nand`), runs
//! the self-test through it, prints each verdict and the footprint through semihosting, and
//! exits through semihosting with status 0 only if every check passed. A panic or a fault exits
//! with a failure status. `run-qemu.sh` builds and boots it.
#![no_std]
#![no_main]

use core::mem::size_of;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::{debug, hprintln};

use nandbox_embedded::{
    board, ram_nand, report::Report, selftest_codec, selftest_ftl, selftest_nand, stack,
};

#[entry]
fn main() -> ! {
    hprintln!(
        "nandbox-embedded: nandbox-core {} on a Cortex-M4F (QEMU mps2-an386)",
        env!("CARGO_PKG_VERSION")
    );
    let mut report = Report::new();
    let (Some((data, spare)), Some(bench)) = (board::take_nand_memory(), board::take_testbench())
    else {
        report.check("board: NAND memory and test bench handed out once", false);
        report.finish();
    };

    selftest_nand::run(&mut report, data, spare, bench);
    selftest_ftl::run(&mut report, data, spare, bench);
    selftest_codec::run(&mut report, bench);
    selftest_ftl::print_memory();

    let (stack_used, stack_reserved) = stack::peak_use();
    hprintln!(
        "footprint: stack peak {} bytes (painted region {} bytes)",
        stack_used,
        stack_reserved
    );
    hprintln!(
        "footprint: size_of RamNand<{}> = {} bytes",
        board::BLOCKS,
        size_of::<ram_nand::RamNand<'static, { board::BLOCKS }>>()
    );
    report.finish()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("PANIC {}", info);
    debug::exit(debug::EXIT_FAILURE);
    cortex_m::asm::udf()
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    hprintln!("HARDFAULT at pc {:#010x}", frame.pc());
    debug::exit(debug::EXIT_FAILURE);
    cortex_m::asm::udf()
}
