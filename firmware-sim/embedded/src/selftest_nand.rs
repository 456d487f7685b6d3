//! Self-test of the RAM NAND's contract: the firmware above it is only as well tested as the
//! array is strict, so the image first proves the array refuses what hardware would refuse.

use nandbox_core::nand::{BlockId, FaultKind, Nand, NandFault};

use crate::{
    board::{Testbench, BLOCKS, GEOMETRY},
    ram_nand::RamNand,
    report::Report,
};

fn kind<T, E: NandFault>(r: Result<T, E>) -> Option<FaultKind> {
    r.err().map(|e| e.kind())
}

/// Runs the contract checks over the lent array; leaves it in an arbitrary state.
pub fn run(report: &mut Report, data: &mut [u8], spare: &mut [u8], bench: &mut Testbench) {
    let Testbench {
        page, spare: oob, ..
    } = bench;
    let Some(mut nand) = RamNand::<BLOCKS>::new(GEOMETRY, data, spare, 0x5eed) else {
        report.check("nand: array matches its geometry", false);
        return;
    };
    let g = nand.geometry();
    let block = BlockId(3);
    let p = |n| g.page(block, n);

    let fresh = nand.read(p(0), page, oob).is_ok()
        && page.iter().all(|&b| b == 0xFF)
        && oob.iter().all(|&b| b == 0xFF);
    report.check("nand: a fresh page reads erased (0xFF)", fresh);

    let pattern = |i: usize| (i as u8).wrapping_mul(31) ^ 0x5A;
    for (i, b) in page.iter_mut().enumerate() {
        *b = pattern(i);
    }
    oob.fill(0x11);
    let programmed = nand.program(p(0), page, oob).is_ok();
    page.fill(0);
    oob.fill(0);
    let back = nand.read(p(0), page, oob).is_ok()
        && page.iter().enumerate().all(|(i, &b)| b == pattern(i))
        && oob.iter().all(|&b| b == 0x11);
    report.check("nand: a programmed page reads back", programmed && back);

    report.check(
        "nand: a second program without erase is refused",
        kind(nand.program(p(0), page, oob)) == Some(FaultKind::ContractViolation),
    );
    let skip = nand.program(p(5), page, oob).is_ok();
    report.check(
        "nand: skipping pages is allowed, going back is refused",
        skip && kind(nand.program(p(3), page, oob)) == Some(FaultKind::ContractViolation),
    );
    report.check(
        "nand: a wrong-sized buffer is refused",
        kind(nand.program(p(6), &page[..100], oob)) == Some(FaultKind::ContractViolation),
    );
    let erased = nand.erase(block).is_ok()
        && nand.read(p(5), page, oob).is_ok()
        && page.iter().all(|&b| b == 0xFF);
    report.check(
        "nand: erase restores 0xFF and allows page 0 again",
        erased && nand.program(p(0), page, oob).is_ok(),
    );

    // Power cut during a program: that op and every later one fail until power returns, and
    // the torn page stays unprogrammable until its block is erased.
    nand.cut_power_after(1);
    let before = nand.program(p(1), page, oob).is_ok();
    let torn = kind(nand.program(p(2), page, oob)) == Some(FaultKind::PowerLoss);
    let dead = kind(nand.read(p(1), page, oob)) == Some(FaultKind::PowerLoss) && !nand.is_powered();
    nand.power_cycle();
    let stuck = kind(nand.program(p(2), page, oob)) == Some(FaultKind::ContractViolation);
    report.check(
        "nand: a power cut tears the op in flight and stops the array",
        before && torn && dead && stuck,
    );

    // Power cut during an erase: the block is undefined and refuses programs until erased.
    nand.cut_power_after(0);
    let torn = kind(nand.erase(block)) == Some(FaultKind::PowerLoss);
    nand.power_cycle();
    let refused = kind(nand.program(p(10), page, oob)) == Some(FaultKind::ContractViolation);
    let healed = nand.erase(block).is_ok() && nand.program(p(0), page, oob).is_ok();
    report.check(
        "nand: a torn erase leaves the block unprogrammable until erased",
        torn && refused && healed,
    );

    // Pinned: 3 reads, 6 programs (torn one included), 3 erases (torn one included); the five
    // refused operations and the read attempted while power was off reached no cell.
    let counts = nand.counts();
    let pinned =
        counts.reads == 3 && counts.programs == 6 && counts.erases == 3 && counts.violations == 5;
    report.check(
        "nand: every operation that reached the cells is counted",
        pinned,
    );
    if !pinned {
        cortex_m_semihosting::hprintln!("     counts {:?}", counts);
    }
}
