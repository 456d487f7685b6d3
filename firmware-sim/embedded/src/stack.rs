//! Peak stack use, measured by paint.
//!
//! cortex-m-rt's `paint-stack` feature fills everything between `_stack_end` (the end of
//! `.bss`/`.uninit`) and `_stack_start` (the top of RAM) with `0xCCCC_CCCC` at reset, before
//! `main`. The stack grows down from `_stack_start`; the lowest word no longer holding the paint
//! is the high-water mark.

use cortex_m_rt::STACK_PAINT_VALUE;

extern "C" {
    static _stack_start: u32;
    static _stack_end: u32;
}

/// Bytes of stack used so far (deepest point since reset), and the bytes reserved for it.
pub fn peak_use() -> (usize, usize) {
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let bottom = core::ptr::addr_of!(_stack_end) as usize;
    let mut addr = bottom;
    while addr < top {
        // SAFETY: [bottom, top) is the stack region the linker script reserves in RAM; every
        // word of it is readable and was painted at reset, and u32 is valid for any bits.
        let word = unsafe { core::ptr::read_volatile(addr as *const u32) };
        if word != STACK_PAINT_VALUE {
            break;
        }
        addr += 4;
    }
    (top - addr, top - bottom)
}

/// Paints the free part of the stack again, so the next [`peak_use`] measures only what runs
/// after this call.
pub fn repaint() {
    let bottom = core::ptr::addr_of!(_stack_end) as usize;
    // Everything below the current stack pointer is free (no interrupt handler runs in the
    // image); a small margin keeps clear of this function's own frame.
    let sp = cortex_m::register::msp::read() as usize - 32;
    let mut addr = bottom;
    while addr < sp {
        // SAFETY: [bottom, sp) lies in the stack region reserved by the linker script and below
        // every live frame, so no Rust value lives there; writing a u32 to it is sound.
        unsafe { core::ptr::write_volatile(addr as *mut u32, STACK_PAINT_VALUE) };
        addr += 4;
    }
}
