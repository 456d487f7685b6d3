//! Pinned costs: a fixed workload's exact NAND reads, spare reads, programs and erases, phase
//! by phase, so a write-amplification or read-amplification regression fails here. Each figure
//! is derived in the comment next to it; if a change moves one, re-derive it before re-pinning.

mod ftl_support;

use ftl_support::*;
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::Geometry;
use nandbox_sim::{NandCounters, OwnedFtlMemory, SimNand};

/// (reads, spare reads, programs, erases) since `before`.
fn delta(ftl: &Ftl<'_, SimNand>, before: &mut NandCounters) -> [u64; 4] {
    let now = ftl.nand().counters();
    let d = [
        now.reads - before.reads,
        now.spare_reads - before.spare_reads,
        now.programs - before.programs,
        now.erases - before.erases,
    ];
    *before = now;
    d
}

#[test]
fn pinned_costs_one_slot_pages() {
    // 1024 LBAs = 4 node groups; 4 KiB pages, 32 per block: blocks_for_capacity gives
    // ceil(1024*1.07/32) = 35 user blocks + 1 node block + 4 checkpoint + 3 logs + 6 GC + 1 = 50.
    let logical = 1024;
    let geo: Geometry = small_geometry(1, 32, logical);
    assert_eq!(geo.blocks, 50);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut c = NandCounters::default();
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    // Format: every block erased once (50), then checkpoint block 0 erased again as the first
    // pack goes into it (1). The pack is a header slot plus one payload slot (4 NAT entries +
    // 50 block entries = 416 bytes): 2 pages, then its seal page: 3 programs.
    assert_eq!(delta(&ftl, &mut c), [0, 0, 3, 51], "format");

    for lba in 0..256 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    // 256 writes: one program each (one slot per page), 256/32 = 8 blocks opened and erased.
    // The mapping change of each is replayable from its spare record, so no node page is
    // written and nothing is read (node 0 was never written: no node read either).
    assert_eq!(delta(&ftl, &mut c), [0, 0, 256, 8], "256 writes + flush");

    let mut buf = [0u8; BLOCK];
    for lba in 0..256 {
        ftl.read(Lba(lba), &mut buf).unwrap();
    }
    // One page read per host read; the node is cached.
    assert_eq!(delta(&ftl, &mut c), [256, 0, 0, 0], "256 reads");

    for lba in 0..64 {
        ftl.write(Lba(lba), &content(lba, 2)).unwrap();
    }
    ftl.trim(Lba(64), 64).unwrap();
    ftl.flush().unwrap();
    // 64 overwrites: 64 programs filling two new hot blocks (2 erases). The trim leaves no
    // record, so the flush writes node 0 (1 program into a new node block: 1 erase).
    assert_eq!(delta(&ftl, &mut c), [0, 0, 65, 3], "overwrite, trim, flush");

    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).unwrap();
    let mount = delta(&ftl, &mut c);
    // Mount, by steps:
    // - spare reads: the checkpoint-area walk reads 4 pages of block 0 (a 2-page pack, its
    //   seal, then an erased page) and page 0 of blocks 1-3 (erased): 7. Roll-forward reads
    //   page 0 of the 46 data blocks: 46. Pass 2 reads one spare per replayed slot: 256 + 64
    //   data + 1 node = 321. 7 + 46 + 321 = 374.
    // - page reads: pack validation 2 + loading its payload page 1 = 3. Pass 1 validates every
    //   page written after the format checkpoint: 8 + 2 full blocks (320 pages) and the node
    //   block's page 0 plus its first erased page (2) = 322. Pass 2 loads node 0 once (1): its
    //   newest copy (the flush's) postdates every replayed data slot of its group, so none is
    //   applied and the node stays clean. 3 + 322 + 1 = 326.
    // - the mount checkpoint has no dirty node to write: one 2-page pack and its seal into
    //   checkpoint block 1, erased first (the block the last pack went to is never appended to
    //   after a mount).
    assert_eq!(mount, [326, 374, 3, 1], "mount");
    for lba in 0..256 {
        ftl.read(Lba(lba), &mut buf).unwrap();
        let want = if lba < 64 {
            2
        } else if lba < 128 {
            0
        } else {
            1
        };
        assert_eq!(version_of(lba, &buf), Some(want));
    }
    // 192 mapped LBAs, one page read each; trimmed ones read as zeros without touching flash.
    assert_eq!(delta(&ftl, &mut c), [192, 0, 0, 0], "reads after mount");
}

#[test]
fn pinned_costs_four_slot_pages() {
    // 16 KiB pages of four 4 KiB slots, 16 pages per block (64 slots).
    let logical = 1024;
    let geo: Geometry = small_geometry(4, 16, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut c = NandCounters::default();
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    // Every block once, checkpoint block 0 again; the pack (2 slots) rounds up to one page,
    // then its seal page.
    assert_eq!(
        delta(&ftl, &mut c),
        [0, 0, 2, geo.blocks as u64 + 1],
        "format"
    );

    for lba in 0..10 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    // 10 slots: two full pages and one page with 2 data slots + 2 padding slots; 1 block.
    assert_eq!(delta(&ftl, &mut c), [0, 0, 3, 1], "10 writes + flush");
    let st = *ftl.stats();
    assert_eq!(
        st.program_bytes[nandbox_core::Cause::Padding as usize],
        2 * 4096
    );
    assert_eq!(
        st.program_bytes[nandbox_core::Cause::Data as usize],
        10 * 4096
    );

    for lba in 10..16 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    // A flush never appends to a programmed page: the 6 new slots take pages 3 and 4, the
    // second padded with 2 slots.
    assert_eq!(delta(&ftl, &mut c), [0, 0, 2, 0], "6 writes + flush");

    let mut buf = [0u8; BLOCK];
    for lba in 0..16 {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(1));
    }
    // Each 4 KiB host read costs one 16 KiB page read.
    assert_eq!(delta(&ftl, &mut c), [16, 0, 0, 0], "16 reads");
}

#[test]
fn pinned_costs_delta_on() {
    // The one-slot geometry above (50 blocks, 4 KiB pages, 32 per block) with the delta engine
    // on. The delta-off figures above stay as they are: the engine is a run-time choice.
    let logical = 1024;
    let geo: Geometry = small_geometry(1, 32, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut c = NandCounters::default();
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    set_delta(&mut ftl, true);
    delta(&ftl, &mut c);

    for lba in 0..32 {
        ftl.write(Lba(lba), &content_small(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    // First versions have no base: 32 full programs filling one block (1 erase), as with the
    // engine off.
    assert_eq!(
        delta(&ftl, &mut c),
        [0, 0, 32, 1],
        "32 first writes + flush"
    );

    for lba in 0..16 {
        ftl.write(Lba(lba), &content_small(lba, 2)).unwrap();
    }
    // 16 updates of ~130 changed bytes: each reads its base (16 reads) and programs nothing.
    assert_eq!(delta(&ftl, &mut c), [16, 0, 0, 0], "16 delta writes");
    let st = *ftl.stats();
    assert_eq!(st.deltas_inlined, 16);
    assert_eq!(st.reads[nandbox_core::Cause::Delta as usize], 16);
    ftl.flush().unwrap();
    // The flush writes the delta log: one slot carrying the 16 deltas, into the hot log, whose
    // first block the first writes filled (a new block: 1 erase); counted under the delta
    // cause. Node 0 is not written: roll-forward replays the log into it.
    assert_eq!(delta(&ftl, &mut c), [0, 0, 1, 1], "flush of the deltas");
    assert_eq!(
        ftl.stats().program_bytes[nandbox_core::Cause::Delta as usize],
        4096
    );

    let mut buf = [0u8; BLOCK];
    for lba in 0..32 {
        ftl.read(Lba(lba), &mut buf).unwrap();
        let want = if lba < 16 { 2 } else { 1 };
        assert_eq!(version_of(lba, &buf), Some(want));
    }
    // One base (or data) page read per host read, delta or not: the node is cached.
    assert_eq!(delta(&ftl, &mut c), [32, 0, 0, 0], "32 reads");
    assert_eq!(ftl.stats().delta_reads, 16);
    assert_eq!(ftl.stats().host_read_nand_reads, 32);

    for lba in 0..8 {
        ftl.write(Lba(lba), &content_small(lba, 7)).unwrap();
    }
    // Version 7 rewrites the whole body: each write reads its base, finds the delta over the
    // threshold and writes the block whole into the hot log (8 refusals in a row are not yet a
    // streak to skip: see `a_group_of_large_updates_skips_most_attempts_until_one_is_small`);
    // a slot is programmed when the next one needs room, so 7 of the 8 are (8 reads, 7
    // programs). The old deltas die with them.
    assert_eq!(delta(&ftl, &mut c), [8, 0, 7, 0], "8 full rewrites");
    assert_eq!(ftl.stats().deltas_too_large, 8);
    assert_eq!(ftl.stats().deltas_skipped, 0);
    ftl.flush().unwrap();
    // The last buffered slot only: replaying the 8 rewrites makes their logged deltas stale
    // (their base CRC no longer matches), so node 0 need not be written.
    assert_eq!(delta(&ftl, &mut c), [0, 0, 1, 0], "flush");

    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).unwrap();
    set_delta(&mut ftl, true);
    delta(&ftl, &mut c);
    for lba in 0..32 {
        ftl.read(Lba(lba), &mut buf).unwrap();
        let want = if lba < 8 {
            7
        } else if lba < 16 {
            2
        } else {
            1
        };
        assert_eq!(version_of(lba, &buf), Some(want), "LBA {lba} after remount");
    }
    // The deltas came back from the delta log into node 0, which the mount's roll-forward
    // left cached: one page read per host read.
    assert_eq!(delta(&ftl, &mut c), [32, 0, 0, 0], "reads after remount");
    assert_eq!(ftl.stats().delta_reads, 8);
}

/// A group whose updates are whole new contents stops paying a base read for each: after 13
/// refused attempts in a row it tries one write in four, and the first small delta ends the
/// streak, after which every update is tried again.
#[test]
fn a_group_of_large_updates_skips_most_attempts_until_one_is_small() {
    let logical = 1024;
    let geo: Geometry = small_geometry(1, 32, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    set_delta(&mut ftl, true);
    for lba in 0..32 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    let before = *ftl.stats();

    for lba in 0..31 {
        ftl.write(Lba(lba), &content(lba, 2)).unwrap();
    }
    // Writes 1-13 are tried and refused (the streak); 14-16 skipped; then one in four is
    // tried: 17, 21, 25 and 29. 17 tried, 14 skipped, one base read per try.
    let st = *ftl.stats();
    assert_eq!(st.deltas_too_large - before.deltas_too_large, 17);
    assert_eq!(st.deltas_skipped - before.deltas_skipped, 14);
    assert_eq!(
        st.reads[nandbox_core::Cause::Delta as usize]
            - before.reads[nandbox_core::Cause::Delta as usize],
        17
    );

    for lba in 0..16 {
        let mut small = content(lba, 2);
        small[100..110].fill(lba as u8);
        ftl.write(Lba(lba), &small).unwrap();
    }
    // Writes 30 and 31 were skipped, and so is the next (32, the first small update); 33 is
    // tried, inlined, and ends the streak: the other fourteen small updates are tried and
    // inlined too.
    let now = *ftl.stats();
    assert_eq!(now.deltas_skipped - st.deltas_skipped, 1);
    assert_eq!(now.deltas_inlined - st.deltas_inlined, 15);
    assert_eq!(now.deltas_too_large, st.deltas_too_large);
    let mut buf = [0u8; BLOCK];
    for lba in 0..16 {
        ftl.read(Lba(lba), &mut buf).unwrap();
        let mut want = content(lba, 2);
        want[100..110].fill(lba as u8);
        assert!(buf == want, "LBA {lba}");
    }
}

/// A flush that must write a node (a trim changed it; nothing replays a trim) puts it in the
/// padding of the data page it programs anyway: one page program, not a data page and a node
/// page. The trim and the write survive an unclean stop after the flush.
#[test]
fn a_node_written_by_a_flush_rides_in_the_data_page() {
    let logical = 1024;
    let geo: Geometry = small_geometry(4, 16, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    for lba in 0..8 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    let mut before = ftl.nand().counters();
    ftl.write(Lba(300), &content(300, 2)).unwrap();
    ftl.trim(Lba(5), 1).unwrap();
    ftl.flush().unwrap();
    // One program: slot 0 the data, slot 1 the node of group 0, slots 2..4 padding.
    assert_eq!(delta(&ftl, &mut before), [0, 0, 1, 0]);
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).unwrap();
    let mut buf = [0u8; BLOCK];
    ftl.read(Lba(5), &mut buf).unwrap();
    assert_eq!(version_of(5, &buf), Some(0), "the trim was flushed");
    ftl.read(Lba(300), &mut buf).unwrap();
    assert_eq!(version_of(300, &buf), Some(2));
    ftl.read(Lba(4), &mut buf).unwrap();
    assert_eq!(version_of(4, &buf), Some(1));
    assert_eq!(ftl.check().unwrap().problems(), 0);
}

/// Coded blocks (issue 5) on four-slot pages: 64 blocks of constant BF16 weights (but for the
/// LBA in their first bytes) code to 1.25 KiB each (the sign and low mantissa bits, 5 of every
/// 16, go raw: on real weights they are noise) and pack four to five per slot, so the flush
/// programs five pages where the same blocks written plain take sixteen; reads cost one page each; overwriting half of them plain
/// and trimming the other half frees the packed slot.
#[test]
fn pinned_costs_coded_blocks() {
    let logical = 1024;
    let geo: Geometry = small_geometry(4, 16, logical);
    let cfg = config(logical, 4);
    // 1.0 in BF16 (0x3F80) in every element, the first 8 bytes naming the LBA: detected as
    // BF16 (one exponent), every plane nearly constant.
    let weights = |lba: u32| {
        let mut b = [0u8; BLOCK];
        for c in b.chunks_mut(2) {
            c.copy_from_slice(&0x3F80u16.to_le_bytes());
        }
        b[..4].copy_from_slice(&lba.to_le_bytes());
        b
    };
    let mut pages = Vec::new();
    for on in [false, true] {
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        let mut c = NandCounters::default();
        let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
        ftl.set_compress(on);
        delta(&ftl, &mut c);
        for lba in 0..64 {
            ftl.write(Lba(lba), &weights(lba)).unwrap();
        }
        ftl.flush().unwrap();
        pages.push(delta(&ftl, &mut c));
        if !on {
            continue;
        }
        let st = *ftl.stats();
        assert_eq!(st.blocks_coded, 64);
        assert!(st.coded_bytes_saved > 64 * 2700, "{st:?}");
        let mut buf = [0u8; BLOCK];
        for lba in 0..64 {
            ftl.read(Lba(lba), &mut buf).unwrap();
            assert!(buf == weights(lba), "LBA {lba}");
        }
        // One page read per host read (the node is cached), each decoding its record, and one
        // more for each of the 4 records that cross from one page into the next.
        assert_eq!(delta(&ftl, &mut c), [68, 0, 0, 0], "64 coded reads");
        assert_eq!(ftl.stats().coded_reads, 64);
        for lba in 0..32 {
            ftl.write(Lba(lba), &content(lba, 2)).unwrap();
        }
        ftl.trim(Lba(32), 32).unwrap();
        ftl.flush().unwrap();
        // 32 plain overwrites: 8 pages into the open hot block. The trim leaves no record:
        // the flush writes node 0 (1 page into a new node block: 1 erase).
        assert_eq!(delta(&ftl, &mut c), [0, 0, 9, 1], "overwrite, trim, flush");
        assert_eq!(ftl.check().unwrap().problems(), 0);
    }
    // Plain: 64 slots = 16 pages; the hot block opened (1 erase). Coded: 64 records of
    // 1,251 bytes + 12-byte directory entries flow over 20 slots: 5 pages, same erase.
    assert_eq!(pages[0], [0, 0, 16, 1], "64 plain writes + flush");
    assert_eq!(pages[1], [0, 0, 5, 1], "64 coded writes + flush");
}

/// A run of blocks covering a whole node group (a sequential stream) is written whole: no base
/// is read and no delta kept, so the old blocks die whole instead of living on as bases. A run
/// that covers no whole group, and the blocks of a run outside the groups it covers, still try
/// deltas.
#[test]
fn a_run_covering_a_whole_group_is_written_whole() {
    // The one-slot geometry of the tests above: 1024 LBAs = 4 groups of 256.
    let logical = 1024;
    let geo: Geometry = small_geometry(1, 32, logical);
    let cfg = config(logical, 4);
    let run = |first: u32, count: u32, v: u32| -> Vec<u8> {
        (first..first + count)
            .flat_map(|lba| content_small(lba, v))
            .collect()
    };

    // With room to spare a covered group's updates still try deltas (a rewritten checkpoint
    // is mostly small updates).
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    set_delta(&mut ftl, true);
    ftl.write_blocks(Lba(0), &run(0, 512, 1)).unwrap();
    ftl.flush().unwrap();
    assert!(ftl.free_blocks() > nandbox_core::ftl::STREAM_SHORT_FREE);
    ftl.write_blocks(Lba(256), &run(256, 256, 2)).unwrap();
    assert_eq!(ftl.stats().reads[nandbox_core::Cause::Delta as usize], 256);
    assert!(ftl.stats().deltas_inlined > 0);

    // Short of space (every LBA written), a covered group is a stream: written whole.
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut c = NandCounters::default();
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    set_delta(&mut ftl, true);
    ftl.write_blocks(Lba(0), &run(0, logical, 1)).unwrap();
    ftl.flush().unwrap();
    assert!(ftl.free_blocks() <= nandbox_core::ftl::STREAM_SHORT_FREE);
    delta(&ftl, &mut c);
    let before = *ftl.stats();

    // LBAs 16..528: group 1 (256..512) is covered, the 240 LBAs of group 0 and the 16 of
    // group 2 are not. Their updates read their bases and become deltas; group 1's are written
    // whole without a read.
    ftl.write_blocks(Lba(16), &run(16, 512, 2)).unwrap();
    let st = *ftl.stats();
    assert_eq!(
        st.reads[nandbox_core::Cause::Delta as usize]
            - before.reads[nandbox_core::Cause::Delta as usize],
        256
    );
    assert_eq!(
        st.deltas_inlined + st.deltas_refused + st.deltas_too_large
            - (before.deltas_inlined + before.deltas_refused + before.deltas_too_large),
        256,
        "a delta attempt for each uncovered update, none for the covered group"
    );
    assert!(st.deltas_inlined > before.deltas_inlined);
    assert_eq!(st.host_writes - before.host_writes, 512);
    ftl.flush().unwrap();
}

/// On a full device the delta store beyond the inline areas is held to a budget: rewriting every
/// block in place, pass after pass, each update changing a run of 5% of its bytes, costs no
/// more NAND programs with deltas than without. The device is the 64 MiB `tlc` one (16 KiB
/// pages, 256 per block: one or two spare blocks), its whole node table cached, and it runs an
/// idle step after each write, as a served device does between requests. (Unbounded, compact
/// pages took the spare blocks and GC copied mostly valid ones: 1.40 times the programs of
/// deltas off over passes 2 to 4; live over NBD the NAND bytes per host byte reached 2.5.)
#[test]
fn a_full_device_rewritten_in_place_costs_no_more_with_deltas() {
    let logical = 16_384;
    let geo = small_geometry(4, 256, logical);
    let cfg = config(logical, 1024);
    let run = 205;
    let mut programs = [0u64; 2];
    for (i, on) in [false, true].into_iter().enumerate() {
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
        set_delta(&mut ftl, on);
        let mut last = write_bases(&mut ftl, logical);
        let mut before = 0;
        for pass in 0..4u32 {
            if pass == 1 {
                // The first pass fills the store; the later ones are the steady state.
                before = ftl.nand().counters().programs;
            }
            for lba in 0..logical {
                let mut new = last[lba as usize];
                let at = (lba as usize * 97 + pass as usize * 31) % (BLOCK - run);
                for (j, b) in new[at..at + run].iter_mut().enumerate() {
                    *b ^= 1 + ((j as u32 + lba + pass) % 255) as u8;
                }
                ftl.write(Lba(lba), &new).unwrap();
                last[lba as usize] = new;
                ftl.idle().unwrap();
                if lba % 256 == 255 {
                    ftl.flush().unwrap();
                }
            }
        }
        programs[i] = ftl.nand().counters().programs - before;
        let mut buf = [0u8; BLOCK];
        for (lba, want) in last.iter().enumerate() {
            ftl.read(Lba(lba as u32), &mut buf).unwrap();
            assert!(buf == *want, "delta {on}: LBA {lba}");
        }
        assert_eq!(ftl.check().unwrap().problems(), 0);
    }
    assert!(
        programs[1] <= programs[0],
        "programs over passes 2 to 4: delta off {}, on {}",
        programs[0],
        programs[1]
    );
}
