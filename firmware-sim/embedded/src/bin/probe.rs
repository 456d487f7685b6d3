//! Size probe: an image that calls every public operation of the core once (format, mount,
//! read, write, trim, flush, idle; ZipNN compress and decompress) and nothing else: no test
//! harness and no formatted output, so its `.text`/`.rodata` measure what the core costs in
//! flash. Inputs pass through `black_box` so nothing is folded away. It prints the peak stack of
//! the FTL calls and of the codec calls (painted stack, repainted between the two; digits
//! formatted by hand so `core::fmt` stays out), and exits through semihosting, with success only
//! if every call returned `Ok`.
#![no_std]
#![no_main]

use core::hint::black_box;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};
use nandbox_core::{
    codec::{
        entropy::{DecoderTables, EncoderScratch},
        zipnn::{self, Dtype, Segment},
    },
    ftl::{Ftl, Lba},
};
use nandbox_embedded::{
    board::{self, BLOCKS, CODEC_CHUNK, GEOMETRY},
    ftl_ram::{FtlRam, FtlRecords, CONFIG},
    ram_nand::RamNand,
    selftest_codec::CodecMemory,
    stack, static_once,
};

fn exercise() -> Option<()> {
    let (data, spare) = board::take_nand_memory()?;
    let bench = board::take_testbench()?;
    let ram = static_once!(FtlRam = FtlRam::ZERO)?;
    let records = static_once!(Option<FtlRecords> = None)?;
    let codec = static_once!(
        CodecMemory = CodecMemory {
            encoder: EncoderScratch::new(),
            decoder: DecoderTables::new(),
            planes: [0; CODEC_CHUNK as usize],
            segments: [Segment {
                dtype: Dtype::Raw,
                len: 0
            }],
        }
    )?;
    let mut nand = RamNand::<BLOCKS>::new(GEOMETRY, data, spare, black_box(1))?;

    let mut ftl = Ftl::format(&mut nand, black_box(CONFIG), ram.lend(records)).ok()?;
    bench.page.fill(black_box(0x5A));
    ftl.write(Lba(black_box(7)), &bench.page).ok()?;
    ftl.trim(Lba(black_box(9)), black_box(3)).ok()?;
    ftl.flush().ok()?;
    ftl.idle().ok()?;
    let _ = ftl.into_nand();
    let mut ftl = Ftl::mount(&mut nand, ram.lend(records)).ok()?;
    ftl.read(Lba(black_box(7)), &mut bench.readback).ok()?;
    black_box(ftl.stats());
    print_stack_peak(
        b"FTL: format, write, trim, flush, idle, mount, read",
        stack::peak_use().0,
    );
    stack::repaint();

    let len = black_box(bench.sample.len());
    let coded = zipnn::compress(
        black_box(Dtype::Bf16),
        CODEC_CHUNK,
        &bench.sample[..len],
        &mut codec.planes,
        &mut bench.coded,
        &mut codec.encoder,
    )
    .ok()?;
    zipnn::decompress(
        &bench.coded[..coded],
        &mut codec.planes,
        &mut codec.segments,
        &mut bench.decoded,
        &mut codec.decoder,
    )
    .ok()?;
    print_stack_peak(b"ZipNN: compress and decompress", stack::peak_use().0);
    (bench.readback == bench.page && bench.decoded == bench.sample).then_some(())
}

/// Writes `footprint: probe stack peak, WHAT: N bytes` without `core::fmt`.
fn print_stack_peak(what: &[u8], bytes: usize) {
    let mut line = *b": stack peak           ";
    let mut digits = [0u8; 10];
    let mut n = bytes;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = line.len() - 10;
    for i in 0..len {
        line[start + i] = digits[len - 1 - i];
    }
    if let Ok(mut out) = hio::hstdout() {
        let _ = out.write_all(b"footprint: probe, ");
        let _ = out.write_all(what);
        let _ = out.write_all(&line[..start + len]);
        let _ = out.write_all(b" bytes\n");
    }
}

#[entry]
fn main() -> ! {
    let ok = exercise().is_some();
    let status = if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    };
    debug::exit(status);
    cortex_m::asm::udf()
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    debug::exit(debug::EXIT_FAILURE);
    cortex_m::asm::udf()
}
