//! Repeated crashes on one device: a long random workload where power is cut at a random point
//! again and again (sometimes during the recovery itself), with transient bit flips on, and the
//! device is checked against the flushed/acknowledged model after every recovery. Catches what
//! a single cut cannot: state that decays over many crash/recover cycles (log heads, prefree
//! blocks, checkpoint rotation, roll-forward over blocks reused between checkpoints).

mod ftl_support;

use ftl_support::*;
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::Nand;
use nandbox_sim::{FaultConfig, OwnedFtlMemory, SimNand};

fn crash_loop(seed: u64, slots: u32, pages_per_block: u32, logical: u32, cycles: u32) {
    let faults = FaultConfig {
        seed,
        bit_flip_per_read: 0.01,
        ..FaultConfig::default()
    };
    crash_loop_with(faults, 0, slots, pages_per_block, logical, cycles, false);
}

fn crash_loop_with(
    faults: FaultConfig,
    extra_blocks: u32,
    slots: u32,
    pages_per_block: u32,
    logical: u32,
    cycles: u32,
    delta: bool,
) {
    let seed = faults.seed;
    let mut geo = small_geometry(slots, pages_per_block, logical);
    geo.blocks += extra_blocks;
    let cfg = config(logical, 3);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::with_faults(geo, faults), cfg, mem.lend()).unwrap();
    set_delta(&mut ftl, delta);
    let mut inlined = 0;
    let mut flushed = vec![0u32; logical as usize];
    let mut since: Vec<Vec<u32>> = vec![Vec::new(); logical as usize];
    let mut rng = Rng::new(seed);
    let mut version = 0u32;
    let mut buf = [0u8; BLOCK];
    let mut cuts_in_recovery = 0;
    let mut retired = 0;
    for cycle in 0..cycles {
        let cut = rng.below(3000);
        ftl.nand_mut().power_cut_after(cut);
        // Run until the cut hits.
        loop {
            let r = rng.below(100);
            let result = match r {
                0..=74 => {
                    let lba = if rng.below(2) == 0 {
                        rng.below(logical as u64 / 8) as u32
                    } else {
                        rng.below(logical as u64) as u32
                    };
                    version += 1;
                    since[lba as usize].push(version);
                    ftl.write(Lba(lba), &content_for(delta, lba, version))
                }
                75..=77 => {
                    let first = rng.below(logical as u64) as u32;
                    let count = (rng.below(32) as u32 + 1).min(logical - first);
                    for l in first..first + count {
                        since[l as usize].push(0);
                    }
                    ftl.trim(Lba(first), count)
                }
                78..=89 => {
                    let r = ftl.flush();
                    if r.is_ok() {
                        for (f, s) in flushed.iter_mut().zip(since.iter_mut()) {
                            if let Some(&last) = s.last() {
                                *f = last;
                            }
                            s.clear();
                        }
                    }
                    r
                }
                _ => ftl.idle().map(|_| ()),
            };
            if let Err(e) = result {
                if !ftl.nand().power_lost() {
                    let bad: Vec<u32> = (0..geo.blocks)
                        .filter(|&b| ftl.is_bad_block(nandbox_core::nand::BlockId(b)))
                        .collect();
                    panic!(
                        "seed {seed} cycle {cycle}: failed without a cut: {e}; free {} bad {bad:?} of {} {:?}",
                        ftl.free_blocks(),
                        geo.blocks,
                        ftl.stats()
                    );
                }
                break;
            }
        }
        retired += ftl.stats().retired_blocks;
        inlined += ftl.stats().deltas_inlined;
        let mut nand = ftl.into_nand();
        nand.restore_power();
        if rng.below(4) == 0 {
            // Cut the recovery too, then recover again.
            nand.power_cut_after(rng.below(300));
            if Ftl::mount(Lent(&mut nand), mem.lend()).is_err() {
                assert!(
                    nand.power_lost(),
                    "seed {seed} cycle {cycle}: mount failed uncut"
                );
                cuts_in_recovery += 1;
            }
            nand.restore_power();
        }
        if let Err(e) = Ftl::mount(Lent(&mut nand), mem.lend()) {
            let bad: Vec<u32> = (0..geo.blocks)
                .filter(|&b| nand.is_bad(nandbox_core::nand::BlockId(b)).unwrap())
                .collect();
            panic!("seed {seed} cycle {cycle}: mount: {e}; bad blocks {bad:?} of {}, retired {retired} {:?}", geo.blocks, nand.counters());
        }
        ftl = Ftl::mount(nand, mem.lend())
            .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: mount: {e}"));
        set_delta(&mut ftl, delta);
        for lba in 0..logical {
            ftl.read(Lba(lba), &mut buf)
                .unwrap_or_else(|e| panic!("seed {seed} cycle {cycle}: read {lba}: {e}"));
            let v = version_of(lba, &buf).unwrap_or_else(|| {
                panic!("seed {seed} cycle {cycle}: LBA {lba} garbage or another block's data")
            });
            assert!(
                flushed[lba as usize] == v || since[lba as usize].contains(&v),
                "seed {seed} cycle {cycle}: LBA {lba} reads {v}; flushed {}, since {:?}",
                flushed[lba as usize],
                since[lba as usize]
            );
            // What is read now is what survives: the new flushed state.
            flushed[lba as usize] = v;
            since[lba as usize].clear();
        }
    }
    let report = ftl.check().unwrap();
    assert_eq!(report.problems(), 0, "seed {seed}: {report:?}");
    assert!(cuts_in_recovery > 10, "seed {seed}: recoveries were cut");
    if delta {
        assert!(
            inlined > 1000,
            "seed {seed}: deltas were written ({inlined})"
        );
    }
    if faults.program_fail_rate > 0.0 {
        assert!(retired >= 2, "seed {seed}: blocks were retired ({retired})");
    }
}

#[test]
fn crash_loop_one_slot_pages() {
    for seed in 1..=3 {
        crash_loop(seed, 1, 16, 256, 150);
    }
}

#[test]
fn crash_loop_four_slot_pages() {
    for seed in 4..=6 {
        crash_loop(seed, 4, 8, 384, 150);
    }
}

#[test]
fn crash_loop_with_program_and_erase_failures() {
    for seed in 7..=8 {
        let faults = FaultConfig {
            seed,
            bit_flip_per_read: 0.01,
            program_fail_rate: 0.00005,
            erase_fail_rate: 0.0005,
            factory_bad_blocks: 2,
        };
        crash_loop_with(faults, 24, 1, 16, 256, 120, false);
    }
}

#[test]
fn crash_loop_delta_on() {
    for (seed, slots, ppb, logical) in [(21, 1, 16, 256), (22, 4, 8, 384)] {
        let faults = FaultConfig {
            seed,
            bit_flip_per_read: 0.01,
            ..FaultConfig::default()
        };
        crash_loop_with(faults, 0, slots, ppb, logical, 150, true);
    }
}

#[test]
fn crash_loop_delta_on_with_program_and_erase_failures() {
    let faults = FaultConfig {
        seed: 23,
        bit_flip_per_read: 0.01,
        program_fail_rate: 0.00005,
        erase_fail_rate: 0.0005,
        factory_bad_blocks: 2,
    };
    crash_loop_with(faults, 24, 1, 16, 256, 120, true);
}

/// Seeds that once read a trimmed-then-cut block as its base: an unflushed trim dropped a
/// marker, a compaction after it took over the marker's (now empty) compact page slot, and
/// roll-forward of that page dropped the marker while the trim itself, unflushed, was not
/// redone, so the block read as its base, a version older than the one flushed.
#[test]
fn crash_loop_delta_on_unflushed_trims() {
    for seed in [24, 26] {
        let faults = FaultConfig {
            seed,
            bit_flip_per_read: 0.01,
            factory_bad_blocks: 2,
            ..FaultConfig::default()
        };
        crash_loop_with(faults, 24, 1, 16, 256, 120, true);
    }
}
