//! Model-based test: random writes, reads, trims, flushes, idle steps and clean remounts on a
//! small device, checked after every read against a plain reference disk.

mod ftl_support;

use ftl_support::*;
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::Geometry;
use nandbox_sim::{OwnedFtlMemory, SimNand};

/// Delta counters summed over every mount of a run.
#[derive(Default, Debug)]
struct DeltaTotals {
    inlined: u64,
    rebuilt: u64,
    compact_pages: u64,
    restored: u64,
    delta_reads: u64,
    coded: u64,
    coded_reads: u64,
    compact_cache_hits: u64,
}

impl DeltaTotals {
    fn add(&mut self, s: &nandbox_core::Stats) {
        self.inlined += s.deltas_inlined;
        self.rebuilt += s.pages_rebuilt;
        self.compact_pages += s.compact_pages;
        self.restored += s.pages_restored;
        self.delta_reads += s.delta_reads;
        self.coded += s.blocks_coded;
        self.coded_reads += s.coded_reads;
        self.compact_cache_hits += s.compact_cache_hits;
    }
}

fn run(seed: u64, geo: Geometry, logical: u32, cache: u32, ops: u32) {
    run_with(seed, geo, logical, cache, ops, Switches::default());
}

/// The FTL's switches for a model run.
#[derive(Clone, Copy, Default)]
struct Switches {
    delta: bool,
    compress: bool,
    /// Compact cache entries.
    compact_cache: usize,
}

fn run_with(
    seed: u64,
    geo: Geometry,
    logical: u32,
    cache: u32,
    ops: u32,
    sw: Switches,
) -> DeltaTotals {
    let Switches {
        delta,
        compress,
        compact_cache,
    } = sw;
    let cfg = config(logical, cache);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg).with_compact_cache(compact_cache);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, delta);
    ftl.set_compress(compress);
    let mut totals = DeltaTotals::default();
    // Reference disk: the version each LBA holds (0 = zeros).
    let mut disk = vec![0u32; logical as usize];
    let mut next_version = 1u32;
    let mut rng = Rng::new(seed);
    let mut buf = [0u8; BLOCK];
    let mut remounts = 0;
    let mut gc_blocks = 0;
    let mut checkpoints = 0;
    // Writes concentrate on a hot quarter half of the time, so GC sees skew.
    let pick = |rng: &mut Rng| -> u32 {
        if rng.below(2) == 0 {
            rng.below(logical as u64 / 4) as u32
        } else {
            rng.below(logical as u64) as u32
        }
    };
    for op in 0..ops {
        match rng.below(200) {
            0..=109 => {
                let lba = pick(&mut rng);
                let v = next_version;
                next_version += 1;
                // With compress on, three writes in four are float weights (stored coded).
                let block = if compress && !v.is_multiple_of(4) {
                    content_float(lba, v)
                } else {
                    content_for(delta, lba, v)
                };
                ftl.write(Lba(lba), &block)
                    .unwrap_or_else(|e| panic!("seed {seed} op {op}: write {lba}: {e}"));
                disk[lba as usize] = v;
            }
            110..=159 => {
                let lba = pick(&mut rng);
                ftl.read(Lba(lba), &mut buf)
                    .unwrap_or_else(|e| panic!("seed {seed} op {op}: read {lba}: {e}"));
                assert_eq!(
                    version_of(lba, &buf),
                    Some(disk[lba as usize]),
                    "seed {seed} op {op}: read {lba}"
                );
                assert_eq!(ftl.is_mapped(Lba(lba)).unwrap(), disk[lba as usize] != 0);
            }
            160..=161 => {
                let first = rng.below(logical as u64) as u32;
                let count = (rng.below(64) as u32 + 1).min(logical - first);
                ftl.trim(Lba(first), count)
                    .unwrap_or_else(|e| panic!("seed {seed} op {op}: trim: {e}"));
                disk[first as usize..(first + count) as usize].fill(0);
            }
            162..=177 => ftl.flush().expect("flush"),
            178..=198 => {
                ftl.idle().expect("idle");
            }
            _ => {
                ftl.flush().expect("flush");
                gc_blocks += ftl.stats().gc_blocks;
                checkpoints += ftl.stats().checkpoints;
                totals.add(ftl.stats());
                let nand = ftl.into_nand();
                ftl = Ftl::mount(nand, mem.lend())
                    .unwrap_or_else(|e| panic!("seed {seed} op {op}: mount: {e}"));
                set_delta(&mut ftl, delta);
                ftl.set_compress(compress);
                remounts += 1;
            }
        }
    }
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(
            version_of(lba, &buf),
            Some(disk[lba as usize]),
            "final {lba}"
        );
    }
    let report = ftl.check().expect("check");
    assert_eq!(report.problems(), 0, "seed {seed}: {report:?}");
    gc_blocks += ftl.stats().gc_blocks;
    checkpoints += ftl.stats().checkpoints;
    totals.add(ftl.stats());
    assert!(gc_blocks > 20, "seed {seed}: the run should exercise GC");
    assert!(
        checkpoints > remounts,
        "seed {seed}: checkpoints beyond mounts"
    );
    eprintln!("seed {seed}: {remounts} remounts, {gc_blocks} GC blocks, {checkpoints} checkpoints");
    assert!(remounts > 10, "seed {seed}: remounts");
    // A final clean remount reads the same disk.
    ftl.flush().unwrap();
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).unwrap();
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(
            version_of(lba, &buf),
            Some(disk[lba as usize]),
            "remounted {lba}"
        );
    }
    assert_eq!(ftl.check().unwrap().problems(), 0);
    totals
}

#[test]
fn model_one_slot_pages() {
    let logical = 1024;
    let geo = small_geometry(1, 32, logical);
    for seed in 1..=3 {
        run(seed, geo, logical, 3, 10_000);
    }
}

#[test]
fn model_four_slot_pages() {
    let logical = 2048;
    let geo = small_geometry(4, 16, logical);
    for seed in 11..=13 {
        run(seed, geo, logical, 4, 10_000);
    }
}

/// The same model with the delta engine on (score cache): updates become inline deltas,
/// which get evicted (rebuilt or compacted) and read back through. (Its groups are read about
/// as often as written, so idle restores, which need twelve reads per write, are left to
/// `ftl_power_cut::power_cut_at_every_op_of_idle_restores`.)
#[test]
fn model_delta_on() {
    let mut all = DeltaTotals::default();
    // A one-entry compact cache churns: each entry must be dropped as its block is erased.
    for (seed, slots, ppb, logical, cache, ccache) in [
        (41, 1, 32, 1024, 3, 1),
        (42, 4, 16, 2048, 4, 0),
        (43, 4, 16, 2048, 4, 8),
    ] {
        let geo = small_geometry(slots, ppb, logical);
        let sw = Switches {
            delta: true,
            compress: false,
            compact_cache: ccache,
        };
        let t = run_with(seed, geo, logical, cache, 10_000, sw);
        eprintln!("seed {seed}: {t:?}");
        all.inlined += t.inlined;
        all.rebuilt += t.rebuilt;
        all.compact_pages += t.compact_pages;
        all.restored += t.restored;
        all.delta_reads += t.delta_reads;
        all.compact_cache_hits += t.compact_cache_hits;
    }
    assert!(all.inlined > 1000, "{all:?}");
    assert!(all.compact_cache_hits > 0, "{all:?}");
    assert!(all.rebuilt > 0 && all.delta_reads > 0, "{all:?}");
    assert!(all.compact_pages > 0, "{all:?}");
}

/// The same model with float-weight blocks stored coded (issue 5), delta off and on: coded
/// over coded, plain over coded, trims, GC moving packed records, remounts.
#[test]
fn model_compress_on() {
    let mut all = DeltaTotals::default();
    for (seed, slots, ppb, logical, cache, delta) in [
        (51, 1, 32, 1024, 3, false),
        (52, 4, 16, 2048, 4, false),
        (53, 4, 16, 2048, 4, true),
    ] {
        let geo = small_geometry(slots, ppb, logical);
        let sw = Switches {
            delta,
            compress: true,
            compact_cache: 4,
        };
        let t = run_with(seed, geo, logical, cache, 10_000, sw);
        eprintln!("seed {seed}: {t:?}");
        all.coded += t.coded;
        all.coded_reads += t.coded_reads;
        all.inlined += t.inlined;
    }
    assert!(all.coded > 8000, "{all:?}");
    assert!(all.coded_reads > 3000, "{all:?}");
    assert!(all.inlined > 0, "{all:?}");
}

#[test]
fn idle_gc_until_done_then_crash_and_recover() {
    // Background work alone (GC, wear levelling, checkpoints from idle) must leave a device
    // that recovers from a crash: roll-forward stays bounded however long idle runs.
    let logical = 2048;
    let geo = small_geometry(1, 32, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    let mut rng = Rng::new(99);
    let mut disk = vec![0u32; logical as usize];
    for i in 0..3 * logical {
        let lba = rng.below(logical as u64) as u32;
        ftl.write(Lba(lba), &content(lba, i + 1)).unwrap();
        disk[lba as usize] = i + 1;
    }
    ftl.flush().unwrap();
    let mut steps = 0;
    while ftl.idle().unwrap() {
        steps += 1;
        assert!(steps < 10_000, "idle() keeps finding work");
    }
    assert!(steps > 0, "there was background work");
    // Crash: no flush, no checkpoint.
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).unwrap();
    let mut buf = [0u8; BLOCK];
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(disk[lba as usize]), "LBA {lba}");
    }
    assert_eq!(ftl.check().unwrap().problems(), 0);
}

#[test]
fn model_real_profiles() {
    // The shipped geometries themselves: 256-page blocks (1,024 slots on tlc), 64 on slc.
    use nandbox_core::ftl::blocks_for_capacity;
    use nandbox_sim::profile;
    for (p, logical) in [
        (profile::TLC, 4096),
        (profile::FEMU, 4096),
        (profile::SLC, 2048),
    ] {
        let blocks = blocks_for_capacity(p.page_bytes, p.pages_per_block, logical, 7);
        run(31, p.geometry(blocks), logical, 8, 10_000);
    }
}

/// Every LBA reads `last[lba]` and `check` finds nothing wrong.
fn reads_are_and_check_is_clean(ftl: &mut Ftl<'_, SimNand>, last: &[[u8; BLOCK]], at: &str) {
    let mut buf = [0u8; BLOCK];
    for (lba, want) in last.iter().enumerate() {
        ftl.read(Lba(lba as u32), &mut buf).unwrap();
        assert!(buf == *want, "{at}: LBA {lba}");
    }
    let rep = ftl.check().unwrap();
    assert_eq!(rep.problems(), 0, "{at}: {rep:?}");
}

/// A group whose deltas outgrow its inline area many times over spills them into several
/// compact pages (not one), in batches: nearly every update stays a delta, and every LBA reads
/// its last version after a clean remount and after an unclean stop, with a clean `check`.
#[test]
fn deltas_spill_into_several_compact_pages() {
    let logical = 256;
    let g = small_geometry(1, 16, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    let base = write_bases(&mut ftl, logical);
    let mut last = base.clone();
    // Half the group is updated.
    let hot = logical / 2;
    for round in 0..3u32 {
        for lba in 0..hot {
            let v = 2 + round * logical + lba;
            let new = updated(&base[lba as usize], lba, v, 30);
            ftl.write(Lba(lba), &new).unwrap();
            last[lba as usize] = new;
        }
        ftl.flush().unwrap();
    }
    let s = *ftl.stats();
    // 128 deltas of ~160 bytes are ~7 times the 2,980-byte inline area; a compact page takes
    // a batch of at least 1 KiB, so far fewer pages than deltas.
    let updates = u64::from(3 * hot);
    assert!(
        s.compact_pages >= 8 && s.compact_pages <= updates / 4,
        "compact pages written: {}",
        s.compact_pages
    );
    assert!(
        s.deltas_inlined >= updates * 8 / 10,
        "updates kept as deltas: {} of {updates}; refused {}",
        s.deltas_inlined,
        s.deltas_refused
    );
    reads_are_and_check_is_clean(&mut ftl, &last, "live");
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("remount");
    set_delta(&mut ftl, true);
    reads_are_and_check_is_clean(&mut ftl, &last, "after remount");
    // Unflushed updates may be lost by an unclean stop, flushed ones not.
    let flushed = last.clone();
    for lba in (0..logical).step_by(3) {
        let new = updated(&base[lba as usize], lba, 5000 + lba, 30);
        ftl.write(Lba(lba), &new).unwrap();
    }
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("mount after unclean stop");
    let mut buf = [0u8; BLOCK];
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        let unflushed = updated(&base[lba as usize], lba, 5000 + lba, 30);
        assert!(
            buf == flushed[lba as usize] || (lba % 3 == 0 && buf == unflushed),
            "after unclean stop: LBA {lba}"
        );
    }
    assert_eq!(ftl.check().unwrap().problems(), 0);
}

/// A compaction is redone by roll-forward from its compact page, so the flush after it programs
/// no node page for it (the node stays where it was): after an unclean stop
/// every flushed update reads back and `check` is clean. Also with each flush right after the
/// compaction, and with further updates (in the room the compaction made) logged behind it.
#[test]
fn a_compaction_costs_no_node_write_and_is_replayed_from_its_page() {
    let logical = 256;
    let g = small_geometry(4, 16, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    let base = write_bases(&mut ftl, logical);
    let mut last = base.clone();
    let mut unmoved_flushes = 0;
    let mut v = 2;
    for round in 0..12u32 {
        let node_before = ftl.node_location(0);
        let compactions = ftl.stats().compact_pages;
        // Updates until a compaction happened, then a few more behind it.
        let mut after = None;
        for k in 0..400u32 {
            let lba = (round * 37 + k * 11) % (logical / 2);
            let new = updated(&base[lba as usize], lba, v, 40);
            v += 1;
            ftl.write(Lba(lba), &new).unwrap();
            last[lba as usize] = new;
            if after.is_none() && ftl.stats().compact_pages > compactions {
                after = Some(k);
            }
            if after.is_some_and(|a| k >= a + round % 4) {
                break;
            }
        }
        assert!(after.is_some(), "round {round}: no compaction");
        ftl.flush().unwrap();
        unmoved_flushes += u32::from(ftl.node_location(0) == node_before);
        let nand = ftl.into_nand();
        ftl = Ftl::mount(nand, mem.lend()).expect("mount after unclean stop");
        set_delta(&mut ftl, true);
        reads_are_and_check_is_clean(&mut ftl, &last, &format!("round {round}"));
    }
    // (A mount ends with a checkpoint, which writes the node; the flushes measured follow it.)
    assert!(
        unmoved_flushes >= 10,
        "the flush after a compaction wrote the node in {} of 12 rounds",
        12 - unmoved_flushes
    );
}

/// A group whose every block is updated in turn (a file system journal wrapping around) keeps
/// its updates as deltas round after round: the compacted ones leave 4-byte markers, so the
/// area always has room to gather the next batch. (With 12-byte markers, 248 of them filled
/// the area after the first round and every later update went whole.)
#[test]
fn a_group_rewritten_in_turn_keeps_its_updates_as_deltas() {
    let logical = 256;
    // With room to spare: on a full device the delta store beyond the inline area has a budget.
    let g = roomy_geometry(1, 16, logical);
    let cfg = config(logical, 4);
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    let base = write_bases(&mut ftl, logical);
    let mut last = base.clone();
    let rounds = 4u32;
    for round in 0..rounds {
        for lba in 0..logical {
            let new = updated(&base[lba as usize], lba, 2 + round * logical + lba, 12);
            ftl.write(Lba(lba), &new).unwrap();
            last[lba as usize] = new;
            if lba % 8 == 7 {
                ftl.flush().unwrap();
            }
        }
    }
    let s = *ftl.stats();
    let updates = u64::from(rounds * logical);
    assert!(
        s.deltas_inlined >= updates * 9 / 10,
        "updates kept as deltas: {} of {updates}; refused {}, too large {}",
        s.deltas_inlined,
        s.deltas_refused,
        s.deltas_too_large
    );
    reads_are_and_check_is_clean(&mut ftl, &last, "live");
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("remount");
    reads_are_and_check_is_clean(&mut ftl, &last, "after remount");
}

/// Node pages written by the previous firmware (version 3: every inline entry, a marker too,
/// ends in a 12-byte header with the CRCs) still mount and read back: their inline areas are
/// converted when loaded and every block reads as written, through inline deltas and markers.
#[test]
fn version_3_node_pages_are_read_and_upgraded() {
    use nandbox_core::delta::inline;
    use nandbox_core::format::{crc32, SlotKind, SpareRecord};
    use nandbox_core::nand::{PageId, SPARE_BYTES_PER_SLOT};

    let logical = 768;
    // Room to spare: the test is about formats, not about GC under pressure.
    let g = small_geometry(4, 16, 2 * logical);
    // Two cached nodes for three groups: nodes are written back with their inline areas.
    let cfg = config(logical, 2);
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    let base = write_bases(&mut ftl, logical);
    let mut last = base.clone();
    let mut rng = Rng::new(7);
    for i in 0..3000u32 {
        // The first half of each group: its markers fit the version 3 layout (12 bytes each).
        let lba = rng.below(u64::from(logical)) as u32 & !128;
        let new = updated(&base[lba as usize], lba, 2 + i, 20);
        ftl.write(Lba(lba), &new).unwrap();
        last[lba as usize] = new;
        if i % 16 == 15 {
            ftl.flush().unwrap();
        }
    }
    ftl.flush().unwrap();
    assert!(ftl.stats().compact_pages > 0, "no compaction: no markers");
    // Reads through the groups in turn evict every node after its last change, so the newest
    // copy of each on flash holds its whole inline area.
    let mut buf = [0u8; BLOCK];
    for lba in (0..2 * logical).step_by(256) {
        ftl.read(Lba(lba % logical), &mut buf).unwrap();
    }
    ftl.flush().unwrap();
    let newest: Vec<u32> = (0..3)
        .filter_map(|n| ftl.node_location(n))
        .map(|p| p.0)
        .collect();
    let mut nand = ftl.into_nand();

    // Rewrite every node page with an inline area as version 3 laid it out.
    let (mut nodes, mut markers, mut deltas) = (0, 0, 0);
    let mut patched = Vec::new();
    for page in 0..g.blocks * g.pages_per_block {
        nand.patch_page(PageId(page), |data, spare| {
            for slot in 0..(g.page_bytes as usize / BLOCK) {
                let sp = &mut spare[slot * SPARE_BYTES_PER_SLOT as usize..][..64];
                let Ok(mut rec) = SpareRecord::parse(sp) else {
                    continue;
                };
                let node = &mut data[slot * BLOCK..(slot + 1) * BLOCK];
                let len = u16::from_le_bytes([node[22], node[23]]) as usize;
                if rec.kind != SlotKind::Node || len == 0 {
                    continue;
                }
                assert_eq!(u16::from_le_bytes([node[4], node[5]]), 4);
                // Markers took 12 bytes then: an area of many may not have fitted.
                let need: usize = inline::entries(node, len)
                    .map(|e| e.expect("sound area").len + 12)
                    .sum();
                if need > inline::AREA {
                    continue;
                }
                let mut old = [0u8; BLOCK];
                let mut olen = 0;
                for e in inline::entries(node, len) {
                    let e = e.expect("sound area");
                    let end = BLOCK - olen;
                    let h = end - 12;
                    let (raw_off, raw_len) = if e.in_compact {
                        markers += 1;
                        (e.off | 0x8000, u16::from(e.page))
                    } else {
                        deltas += 1;
                        old[h - e.len..h].copy_from_slice(&node[e.data..e.data + e.len]);
                        (e.off, e.len as u16)
                    };
                    old[h..h + 2].copy_from_slice(&raw_off.to_le_bytes());
                    old[h + 2..h + 4].copy_from_slice(&raw_len.to_le_bytes());
                    old[h + 4..h + 8].copy_from_slice(&e.base_crc.to_le_bytes());
                    old[h + 8..h + 12].copy_from_slice(&e.new_crc.to_le_bytes());
                    olen += e.len + 12;
                }
                node[BLOCK - len..].fill(0);
                node[BLOCK - olen..].copy_from_slice(&old[BLOCK - olen..]);
                node[4..6].copy_from_slice(&3u16.to_le_bytes());
                node[22..24].copy_from_slice(&(olen as u16).to_le_bytes());
                node[28..32].fill(0);
                let crc = crc32(&[&node[..]]);
                node[28..32].copy_from_slice(&crc.to_le_bytes());
                rec.data_crc = crc32(&[&node[..]]);
                rec.write(sp);
                nodes += 1;
                patched.push(page * (g.page_bytes / BLOCK as u32) + slot as u32);
            }
        });
    }
    assert!(
        nodes > 0 && markers > 0 && deltas > 0,
        "nodes {nodes} markers {markers} deltas {deltas}"
    );
    assert!(
        newest.iter().all(|p| patched.contains(p)),
        "the newest node copies {newest:?} are among the rewritten ones"
    );
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("mount of version 3 nodes");
    set_delta(&mut ftl, true);

    reads_are_and_check_is_clean(&mut ftl, &last, "version 3 nodes");
    // Written back in today's layout, they read the same after another mount.
    for lba in (0..logical).step_by(5) {
        let new = updated(&base[lba as usize], lba, 9000 + lba, 20);
        ftl.write(Lba(lba), &new).unwrap();
        last[lba as usize] = new;
    }
    ftl.flush().unwrap();
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("remount");
    reads_are_and_check_is_clean(&mut ftl, &last, "after the upgrade");
}

/// A rewrite of a block still in the write buffer replaces it there: no slot is spent, reads
/// see the newest version at once, and a flush then a remount (clean or not) keeps it.
#[test]
fn a_rewrite_in_the_write_buffer_costs_no_slot_and_survives() {
    let logical = 1024;
    // Eight slots a page: the writes of a round fit in one buffered page.
    let g = small_geometry(8, 16, logical);
    let cfg = config(logical, 2);
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    let mut last: Vec<[u8; BLOCK]> = (0..logical).map(|l| content(l, 0)).collect();
    let mut buf = [0u8; BLOCK];
    for round in 0..20u32 {
        let lba = (round * 37) % logical;
        ftl.write(Lba(lba), &content(lba, 1 + 3 * round)).unwrap();
        // Neighbours written in between, in the same buffered page.
        for k in 1..=(round % 4) {
            let n = (lba + k) % logical;
            last[n as usize] = content(n, 2 + 3 * round);
            ftl.write(Lba(n), &last[n as usize]).unwrap();
        }
        let before = *ftl.stats();
        let newest = content(lba, 3 + 3 * round);
        ftl.write(Lba(lba), &newest).unwrap();
        last[lba as usize] = newest;
        let s = *ftl.stats();
        assert_eq!(
            s.buffer_overwrites,
            before.buffer_overwrites + 1,
            "round {round}"
        );
        assert_eq!(
            s.program_bytes, before.program_bytes,
            "round {round}: the rewrite spent a slot"
        );
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert!(buf == newest, "round {round}: read before the flush");
        ftl.flush().unwrap();
        if round % 3 == 0 {
            // Unclean stop after the flush.
            let nand = ftl.into_nand();
            ftl = Ftl::mount(nand, mem.lend()).expect("remount");
            set_delta(&mut ftl, true);
        }
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert!(buf == newest, "round {round}: read after the flush");
    }
    reads_are_and_check_is_clean(&mut ftl, &last, "end");
}

/// A rewrite in the write buffer that puts back the content of the block's earlier base (a
/// block toggling between two versions) is not done in place: roll-forward would take the slot
/// for that base moved by GC and apply the old delta over it. Written to a new slot, it reads
/// back after an unclean stop.
#[test]
fn a_buffered_rewrite_back_to_an_old_base_survives_a_cut() {
    let logical = 256;
    let g = small_geometry(8, 16, logical);
    let cfg = config(logical, 2);
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(g), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    let lba = 9;
    let base = content(lba, 1);
    ftl.write(Lba(lba), &base).unwrap();
    ftl.flush().unwrap();
    let small = updated(&base, lba, 2, 10);
    ftl.write(Lba(lba), &small).unwrap();
    assert_eq!(ftl.stats().deltas_inlined, 1);
    ftl.flush().unwrap();
    // Rewritten whole (too different for a delta), then back to the base's content while
    // the whole block is still buffered.
    ftl.write(Lba(lba), &content(lba, 3)).unwrap();
    let before = ftl.stats().buffer_overwrites;
    ftl.write(Lba(lba), &base).unwrap();
    assert_eq!(ftl.stats().buffer_overwrites, before, "rewritten in place");
    // A rewrite of that in turn may go in place again.
    ftl.write(Lba(lba), &content(lba, 4)).unwrap();
    ftl.write(Lba(lba), &base).unwrap();
    ftl.flush().unwrap();
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("remount");
    let mut buf = [0u8; BLOCK];
    ftl.read(Lba(lba), &mut buf).unwrap();
    assert!(buf == base, "reads version {:?}", version_of(lba, &buf));
}
