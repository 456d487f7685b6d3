//! Self-test of the FTL on the microcontroller, over the strict RAM NAND.
//!
//! Format; fill every logical block; overwrite at random several times the capacity so garbage
//! collection must run; trim; idle work; a clean remount; then a series of power cuts at
//! Fibonacci-spaced NAND operation indices during a random mix of writes, trims, idle steps and
//! flushes, each followed by a remount and a check of DESIGN.md's guarantees: every block reads its
//! content at the last successful flush or a later one handed to the FTL (zeros if trimmed since),
//! never a torn mix, never garbage, never another block's data. Every page written says which block and
//! generation it is ([`pattern`]), so a read is identified exactly.
//!
//! The FTL's RAM is statics sized at build time by `FtlMemory::required_plain` (no codec memory on this board), so it shows in `.bss`.

use core::mem::size_of;

use cortex_m_semihosting::hprintln;
use nandbox_core::{
    ftl::{
        blocks_for_capacity, BlockInfo, CachePolicy, CacheSlot, Error, Ftl, FtlConfig, FtlMemory,
        Lba,
    },
    nand::{BlockId, Geometry, NandFault, SLOT_BYTES},
};

use crate::{
    board::{Testbench, BLOCKS, GEOMETRY, LOGICAL_BLOCKS},
    ftl_ram::{FtlRam, FtlRecords, CONFIG, REQ},
    pattern::{self, Model},
    ram_nand::RamNand,
    report::Report,
    static_once,
};

type Nand<'n, 'm> = &'n mut RamNand<'m, BLOCKS>;

/// The block marked bad at the factory, inside the data area.
const FACTORY_BAD: BlockId = BlockId(11);
type TheFtl<'r, 'n, 'm> = Ftl<'r, Nand<'n, 'm>>;

/// A 64 MiB device of the `femu` profile: 4 KiB pages, 256 pages per block, 7% over-provisioning
/// on 16384 exported blocks, plus the FTL's reserved blocks.
pub const FEMU_64MIB: Geometry = Geometry {
    page_bytes: 4096,
    spare_bytes: 64,
    pages_per_block: 256,
    blocks: blocks_for_capacity(4096, 256, 16384, 7),
};

/// Prints the RAM the core needs, here and for the 64 MiB goal, as the core itself computes it.
pub fn print_memory() {
    let ftl = size_of::<TheFtl<'static, 'static, 'static>>();
    let nand = size_of::<Nand<'static, 'static>>();
    hprintln!(
        "footprint: FTL here: lent tables {} bytes + Ftl struct {} bytes (NAND handle {} inside)",
        REQ.total_bytes(),
        ftl,
        nand
    );
    hprintln!(
        "footprint:   nat+node_index {} B, node cache {} x ({} + {}) B, blocks {} x {} B, valid bitmap {} B, page buffers {} B",
        REQ.nodes * 8,
        REQ.cache_slots,
        SLOT_BYTES,
        size_of::<CacheSlot>(),
        REQ.blocks,
        size_of::<BlockInfo>(),
        REQ.bitmap_words * 4,
        REQ.page_buffer_bytes
    );
    for slots in [2u32, 4, 6, 8, 64] {
        let cfg = FtlConfig {
            logical_blocks: 16384,
            node_cache_slots: slots,
        };
        let req = FtlMemory::required_plain(&FEMU_64MIB, &cfg);
        let ok = cfg.check(&FEMU_64MIB).is_ok();
        let total = req.total_bytes() + ftl - nand;
        hprintln!(
            "footprint: 64 MiB femu ({} blocks x 256 x 4 KiB), {} cache slots: {} bytes = {}.{} KiB ({}; config {})",
            FEMU_64MIB.blocks,
            slots,
            total,
            total / 1024,
            (total % 1024) * 10 / 1024,
            if total <= 64 * 1024 { "fits 64 KiB" } else { "over 64 KiB" },
            if ok { "valid" } else { "rejected" }
        );
    }
}

/// Verifies every LBA against what the guarantees allow ([`pattern::Model`]), and settles the
/// model on what was read. Returns the number of mismatches, printing the first few.
fn verify_all(
    ftl: &mut TheFtl<'_, '_, '_>,
    bench: &mut Testbench,
    what: &str,
) -> Result<u32, Error<crate::ram_nand::RamNandError>> {
    let mut bad = 0;
    for l in 0..LOGICAL_BLOCKS {
        ftl.read(Lba(l), &mut bench.readback)?;
        let seen = pattern::identify(&bench.readback, l);
        let model = &mut bench.model[l as usize];
        if model.allows(seen) {
            model.settle(seen);
        } else {
            bad += 1;
            if bad <= 3 {
                let (durable, since, latest, trimmed) = model.describe();
                hprintln!(
                    "     {}: LBA {} reads {:?}; durable {}, handed since {}..={}, trimmed {}",
                    what,
                    l,
                    seen,
                    durable,
                    since,
                    latest,
                    trimmed
                );
            }
        }
    }
    Ok(bad)
}

/// xorshift32 for the workload's choices.
struct Rng(u32);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x % n
    }
}

/// Writes one LBA at its next generation, recording it as handed to the FTL before the call
/// (a write cut by power loss may or may not survive).
fn write_next(
    ftl: &mut TheFtl<'_, '_, '_>,
    bench: &mut Testbench,
    l: u32,
    generation: &mut u32,
) -> Result<(), Error<crate::ram_nand::RamNandError>> {
    *generation += 1;
    bench.model[l as usize].write(*generation);
    pattern::fill(&mut bench.page, l, *generation);
    ftl.write(Lba(l), &bench.page)
}

/// Marks everything handed to the FTL so far as durable (after a flush returned Ok).
fn mark_durable(bench: &mut Testbench) {
    for m in bench.model.iter_mut() {
        m.flushed();
    }
}

/// Trims `count` blocks from `first`, recording that they may read zeros from now on (a trim
/// cut by power loss may or may not survive; generations written later stay allowed).
fn trim(
    ftl: &mut TheFtl<'_, '_, '_>,
    bench: &mut Testbench,
    first: u32,
    count: u32,
) -> Result<(), Error<crate::ram_nand::RamNandError>> {
    for m in &mut bench.model[first as usize..(first + count) as usize] {
        m.trim();
    }
    ftl.trim(Lba(first), count)
}

fn is_power_loss<E: NandFault>(e: &Error<E>) -> bool {
    matches!(e, Error::Nand(n) if n.kind() == nandbox_core::nand::FaultKind::PowerLoss)
}

/// Runs the FTL checks twice over a fresh array in `data`/`spare`: plain (delta off, LRU node
/// cache, the core's defaults after format and mount) and with the delta engine on and the
/// score-based node cache (the product's defaults).
pub fn run(report: &mut Report, data: &mut [u8], spare: &mut [u8], bench: &mut Testbench) {
    let (Some(ram), Some(records)) = (
        static_once!(FtlRam = FtlRam::ZERO),
        static_once!(Option<FtlRecords> = None),
    ) else {
        report.check("ftl: memory handed out once", false);
        return;
    };
    for (delta, scope) in [(false, ""), (true, "delta on: ")] {
        report.set_scope(scope);
        run_mode(report, data, spare, bench, ram, records, delta);
    }
    report.set_scope("");
}

/// Delta compression and its node-cache policy are RAM choices, reset by format and mount.
fn configure(ftl: &mut TheFtl<'_, '_, '_>, delta: bool) {
    ftl.set_delta(delta);
    ftl.set_cache_policy(if delta {
        CachePolicy::Score
    } else {
        CachePolicy::Lru
    });
}

/// Prints the delta engine's counters.
fn print_delta(ftl: &TheFtl<'_, '_, '_>, what: &str) {
    let s = ftl.stats();
    hprintln!(
        "     {}: deltas inlined {} ({} B), too large {}, evicted {}, compacted {}, compact pages {}, rebuilt {}, delta reads {}",
        what,
        s.deltas_inlined,
        s.delta_inline_bytes,
        s.deltas_too_large,
        s.deltas_evicted,
        s.deltas_compacted,
        s.compact_pages,
        s.pages_rebuilt,
        s.delta_reads
    );
}

fn run_mode(
    report: &mut Report,
    data: &mut [u8],
    spare: &mut [u8],
    bench: &mut Testbench,
    ram: &mut FtlRam,
    records: &mut Option<FtlRecords>,
    delta: bool,
) {
    let Some(mut nand) = RamNand::<BLOCKS>::new(GEOMETRY, data, spare, 0xC0FFEE) else {
        report.check("ftl: array matches its geometry", false);
        return;
    };
    // One block bad from the factory: the FTL must find it and never program or erase it (the
    // array refuses both, and the refusals are counted).
    nand.factory_bad(FACTORY_BAD);
    bench.model.fill(Model::default());
    let mut generation = 0u32;

    let Some(mut ftl) = report.check_ok(
        "ftl: format a 2 MiB device on 24 good blocks of 25",
        Ftl::format(&mut nand, CONFIG, ram.lend(records)),
    ) else {
        return;
    };
    configure(&mut ftl, delta);

    // Fresh device: zeros everywhere, and out-of-range is an error, not a panic.
    let zeros = ftl.read(Lba(0), &mut bench.readback).is_ok()
        && ftl
            .read(Lba(LOGICAL_BLOCKS - 1), &mut bench.readback)
            .is_ok()
        && bench.readback.iter().all(|&b| b == 0);
    report.check("ftl: a never-written block reads zeros", zeros);
    report.check(
        "ftl: an LBA past the end is refused",
        matches!(
            ftl.write(Lba(LOGICAL_BLOCKS), &bench.page),
            Err(Error::OutOfRange { .. })
        ),
    );

    // Fill, flush, read everything back.
    let mut filled = Ok(());
    for l in 0..LOGICAL_BLOCKS {
        filled = write_next(&mut ftl, bench, l, &mut generation);
        if filled.is_err() {
            break;
        }
    }
    let filled = filled.and_then(|()| ftl.flush());
    if report
        .check_ok("ftl: fill every block and flush", filled)
        .is_some()
    {
        mark_durable(bench);
    }
    let r = verify_all(&mut ftl, bench, "fill");
    report.check(
        "ftl: every block reads back what was written",
        matches!(r, Ok(0)),
    );

    // Overwrite 4x the capacity at random, flushing every 64 writes and spot-reading as we go.
    let before = *ftl.stats();
    let mut rng = Rng(0x2545_F491);
    let mut spot_bad = 0u32;
    let mut result = Ok(());
    for i in 0..4 * LOGICAL_BLOCKS {
        let l = rng.below(LOGICAL_BLOCKS);
        result = write_next(&mut ftl, bench, l, &mut generation);
        if result.is_ok() && i % 64 == 63 {
            result = ftl.flush();
            mark_durable(bench);
        }
        if result.is_ok() && i % 7 == 0 {
            let r = rng.below(LOGICAL_BLOCKS);
            result = ftl.read(Lba(r), &mut bench.readback);
            let seen = pattern::identify(&bench.readback, r);
            if result.is_ok() && seen != bench.model[r as usize].expected() {
                spot_bad += 1;
            }
        }
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|()| ftl.flush());
    if report
        .check_ok("ftl: overwrite 4x the capacity at random", result)
        .is_some()
    {
        mark_durable(bench);
    }
    report.check(
        "ftl: reads during overwrites see the latest write",
        spot_bad == 0,
    );
    let after = *ftl.stats();
    let host = after.host_write_bytes - before.host_write_bytes;
    let nand_bytes = after.nand_program_bytes() - before.nand_program_bytes();
    hprintln!(
        "     ftl: {} GC blocks, {} erases, WAF {}.{:02} over the overwrite phase",
        after.gc_blocks - before.gc_blocks,
        after.erases - before.erases,
        nand_bytes / host.max(1),
        nand_bytes % host.max(1) * 100 / host.max(1)
    );
    report.check(
        "ftl: garbage collection reclaimed blocks",
        after.gc_blocks > before.gc_blocks && after.erases > before.erases,
    );
    let r = verify_all(&mut ftl, bench, "overwrite");
    report.check(
        "ftl: after GC every block holds its latest data",
        matches!(r, Ok(0)),
    );
    if delta {
        print_delta(&ftl, "ftl");
        // Versions of a block differ in ~130 bytes: updates must be kept as inline deltas, and
        // some reads must have been served by applying one.
        let s = ftl.stats();
        report.check(
            "ftl: small updates were kept as inline deltas and read through them",
            s.deltas_inlined > 0 && s.delta_reads > 0,
        );
    }

    // Trim a range: it reads zeros, also after a flush.
    let trimmed = trim(&mut ftl, bench, 100, 32).and_then(|()| ftl.flush());
    if trimmed.is_ok() {
        mark_durable(bench);
    }
    report.check("ftl: trim 32 blocks and flush", trimmed.is_ok());
    let r = verify_all(&mut ftl, bench, "trim");
    report.check(
        "ftl: trimmed blocks read zeros, others untouched",
        matches!(r, Ok(0)),
    );

    // Background work is bounded and leaves the data alone.
    let mut steps = 0;
    let mut idle = Ok(true);
    while steps < 64 && matches!(idle, Ok(true)) {
        idle = ftl.idle();
        steps += 1;
    }
    report.check("ftl: idle work runs in bounded steps", idle.is_ok());

    // Clean remount: everything flushed is there.
    let _ = ftl.into_nand();
    let Some(mut ftl) = report.check_ok(
        "ftl: clean remount",
        Ftl::mount(&mut nand, ram.lend(records)),
    ) else {
        return;
    };
    configure(&mut ftl, delta);
    let r = verify_all(&mut ftl, bench, "remount");
    report.check(
        "ftl: after remount every block holds its flushed data",
        matches!(r, Ok(0)),
    );

    // Power cuts at Fibonacci-spaced NAND operation indices, each during a random workload of
    // writes, small trims, idle steps (cost-benefit GC, wear levelling) and flushes that runs
    // until the cut lands (bounded); then remount and check.
    let cuts = [
        1u32, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584,
    ];
    let mut cut_ok = 0;
    let mut tripped = 0;
    let mut sweep_deltas = 0;
    for (n, &cut) in cuts.iter().enumerate() {
        ftl.nand_mut().cut_power_after(cut);
        let mut lost = false;
        for _ in 0..8000u32 {
            let l = rng.below(LOGICAL_BLOCKS);
            let r = match rng.below(100) {
                0..=84 => write_next(&mut ftl, bench, l, &mut generation),
                85..=89 => {
                    let count = (1 + rng.below(4)).min(LOGICAL_BLOCKS - l);
                    trim(&mut ftl, bench, l, count)
                }
                90..=92 => ftl.idle().map(|_| ()),
                _ => ftl.flush().map(|()| mark_durable(bench)),
            };
            if let Err(e) = r {
                lost = is_power_loss(&e);
                if !lost {
                    hprintln!("     cut {}: unexpected error {:?}", cut, e);
                }
                break;
            }
        }
        if lost {
            tripped += 1;
        }
        sweep_deltas += ftl.stats().deltas_inlined;
        let cells = ftl.into_nand();
        cells.disarm();
        cells.power_cycle();
        match Ftl::mount(cells, ram.lend(records)) {
            Ok(mut f) => {
                configure(&mut f, delta);
                let r = verify_all(&mut f, bench, "power cut");
                if matches!(r, Ok(0)) {
                    cut_ok += 1;
                } else {
                    hprintln!("     cut at op {} (#{}): {:?}", cut, n, r.map_err(|_| ()));
                }
                ftl = f;
            }
            Err(e) => {
                hprintln!(
                    "     cut at op {} (#{}): remount failed: {:?}; NAND {:?}",
                    cut,
                    n,
                    e,
                    nand_counts(&mut nand)
                );
                report.check("ftl: remount after every power cut", false);
                return;
            }
        }
    }
    hprintln!(
        "     ftl: {} of {} cuts landed mid-workload; total NAND ops {}",
        tripped,
        cuts.len(),
        ftl.nand().counts().total()
    );
    report.check(
        "ftl: power cuts tore the workload (the cuts really happened)",
        tripped == cuts.len() as u32,
    );
    report.check(
        "ftl: after each cut + remount, every block reads flushed or later data",
        cut_ok == cuts.len(),
    );
    let counts = ftl.nand().counts();
    report.check(
        "ftl: the FTL never broke the NAND contract (nor touched the bad block)",
        counts.violations == 0 && ftl.is_bad_block(FACTORY_BAD),
    );
    hprintln!("     ftl: NAND {:?}", counts);
    if delta {
        hprintln!("     ftl: {} deltas inlined during the sweep", sweep_deltas);
        report.check(
            "ftl: the cuts landed among inline-delta writes",
            sweep_deltas > 0,
        );
    }
}

fn nand_counts(nand: &mut RamNand<'_, BLOCKS>) -> crate::ram_nand::OpCounts {
    nand.counts()
}
