//! Media faults: bit flips and corrupt pages are caught by CRCs and reported, never returned as
//! data; corrupt, unformatted and truncated media are refused at mount with an error naming
//! the damage; program and erase failures and factory bad blocks retire blocks without losing
//! data.

mod ftl_support;

use ftl_support::*;
use nandbox_core::format::{Ppa, SlotKind, SpareRecord};
use nandbox_core::ftl::{Error, Ftl, MountError, CP_AREA_BLOCKS};
use nandbox_core::nand::{BlockId, Geometry, Nand, PageId};
use nandbox_core::Lba;
use nandbox_sim::{FaultConfig, OwnedFtlMemory, SimNand};

fn page_of(geo: &Geometry, p: Ppa) -> (PageId, usize) {
    let spp = geo.slots_per_page();
    (PageId(p.0 / spp), (p.0 % spp) as usize)
}

#[test]
fn transient_bit_flips_are_retried_or_reported_never_returned() {
    let logical = 512;
    let geo = small_geometry(4, 16, logical);
    let cfg = config(logical, 3);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    for lba in 0..logical {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    // One read in three now returns a flipped bit somewhere in the page or its spare.
    ftl.nand_mut().set_faults(FaultConfig {
        seed: 5,
        bit_flip_per_read: 0.3,
        ..FaultConfig::default()
    });
    let mut buf = [0u8; BLOCK];
    let (mut good, mut reported) = (0, 0);
    for round in 0..4 {
        for lba in 0..logical {
            match ftl.read(Lba(lba), &mut buf) {
                Ok(()) => {
                    assert_eq!(version_of(lba, &buf), Some(1), "round {round} LBA {lba}");
                    good += 1;
                }
                Err(Error::Corrupted(c)) => {
                    assert!(!c.what.is_empty());
                    reported += 1;
                }
                Err(e) => panic!("LBA {lba}: {e}"),
            }
        }
    }
    let flips = ftl.nand().counters().injected_bit_flips;
    eprintln!(
        "{good} good reads, {reported} reported, {flips} flips injected, {} retried",
        ftl.stats().read_retries
    );
    assert!(flips > 500, "the fault injector flipped bits");
    assert!(
        ftl.stats().read_retries > 100,
        "transient flips are retried"
    );
    assert!(good > 1800);
    // Mount also survives transient flips (it retries too), and the data is all there.
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("mount with transient flips");
    ftl.nand_mut().set_faults(FaultConfig::default());
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(1));
    }
}

#[test]
fn corrupt_data_spare_and_node_pages_are_reported_by_name() {
    let logical = 1024;
    let geo = small_geometry(1, 32, logical);
    let cfg = config(logical, 2);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    for lba in 0..logical {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    let mut buf = [0u8; BLOCK];

    // A flipped data bit: the data CRC catches it.
    let (page, slot) = page_of(&geo, ftl.locate(Lba(10)).unwrap().unwrap());
    ftl.nand_mut().flip_bit(page, slot * BLOCK + 100, 3);
    match ftl.read(Lba(10), &mut buf) {
        Err(Error::Corrupted(c)) => assert_eq!(c.what, "data CRC mismatch"),
        other => panic!("expected a CRC error, got {other:?}"),
    }
    // One flipped spare bit: the record's second copy still names the slot's owner.
    let (page, slot) = page_of(&geo, ftl.locate(Lba(20)).unwrap().unwrap());
    ftl.nand_mut().flip_spare_bit(page, slot * 64 + 9, 0);
    ftl.read(Lba(20), &mut buf).unwrap();
    assert_eq!(version_of(20, &buf), Some(1));
    // Both copies damaged: the record is refused and the read reports it.
    ftl.nand_mut().flip_spare_bit(page, slot * 64 + 32 + 9, 0);
    match ftl.read(Lba(20), &mut buf) {
        Err(Error::Corrupted(c)) => assert_eq!(c.what, "spare record damaged"),
        other => panic!("expected a record error, got {other:?}"),
    }
    // Neighbours are untouched.
    ftl.read(Lba(11), &mut buf).unwrap();
    assert_eq!(version_of(11, &buf), Some(1));
    let report = ftl.check().unwrap();
    assert_eq!(report.bad_data_crc, 1, "{report:?}");
    assert_eq!(report.bad_records, 1, "{report:?}");
    assert_eq!(report.problems(), 2, "{report:?}");

    // A damaged node page costs its group, not the device: the mount succeeds, the group's
    // LBAs (512..=767) fail naming the node page, every other LBA reads and writes. A
    // remount's checkpoint writes every cached node, so node 2 is on flash afterwards.
    let nand = ftl.into_nand();
    let ftl = Ftl::mount(nand, mem.lend()).unwrap();
    let node = ftl
        .node_location(2)
        .expect("node 2 is on flash after a mount");
    let (page, slot) = page_of(&geo, node);
    let mut nand = ftl.into_nand();
    nand.flip_bit(page, slot * BLOCK + 40, 1);
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("mount over one damaged node page");
    let expect_node_error = |r: Result<(), Error<_>>, what: &str| match r {
        Err(Error::Corrupted(c)) => {
            assert_eq!(c.what, "data CRC mismatch", "{what}");
            assert_eq!(c.at, node.0, "{what}: the node page's slot address");
            assert_eq!(c.node, Some(2), "{what}: the node named");
            let msg = Error::<nandbox_sim::SimError>::Corrupted(c).to_string();
            assert!(
                msg.contains("node page of group 2 (LBAs 512..=767)")
                    && msg.contains(&format!("slot {}", node.0)),
                "{what}: {msg}"
            );
        }
        other => panic!("{what}: expected the damaged node page, got {other:?}"),
    };
    for lba in [512, 600, 767] {
        expect_node_error(ftl.read(Lba(lba), &mut buf), "read");
    }
    expect_node_error(ftl.write(Lba(700), &content(700, 3)), "write");
    for lba in (0..logical).filter(|l| !(512..768).contains(l) && *l != 10 && *l != 20) {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(1), "LBA {lba}");
    }
    for lba in [0, 300, 800, 1023] {
        ftl.write(Lba(lba), &content(lba, 2)).unwrap();
    }
    ftl.flush().unwrap();
    let report = ftl.check().unwrap();
    assert_eq!(report.bad_nodes, 1, "{report:?}");
    // LBA 10's data and LBA 20's records are still damaged too; nothing else is wrong.
    assert_eq!(report.problems(), 3, "{report:?}");
    // And it stays that way across another mount (whose checkpoint keeps the damaged page).
    let nand = ftl.into_nand();
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("second mount");
    expect_node_error(ftl.read(Lba(513), &mut buf), "read after remount");
    for lba in [0, 300, 800, 1023] {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(2), "LBA {lba} after remount");
    }
}

#[test]
fn unformatted_garbage_and_truncated_media_are_refused() {
    let logical = 512;
    let geo = small_geometry(1, 32, logical);
    let cfg = config(logical, 2);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);

    // Never formatted: every page reads erased.
    match Ftl::mount(SimNand::new_ram(geo), mem.lend()) {
        Err(MountError::Unformatted) => {}
        Err(e) => panic!("expected Unformatted, got {e}"),
        Ok(_) => panic!("mounted blank media"),
    }

    // Garbage where checkpoints belong.
    let mut nand = SimNand::new_ram(geo);
    let mut rng = Rng::new(3);
    let mut data = vec![0u8; geo.page_bytes as usize];
    let mut spare = vec![0u8; geo.spare_bytes as usize];
    for b in 0..CP_AREA_BLOCKS {
        for n in 0..4 {
            data.iter_mut().for_each(|x| *x = rng.next_u64() as u8);
            spare.iter_mut().for_each(|x| *x = rng.next_u64() as u8);
            nand.program(geo.page(BlockId(b), n), &data, &spare)
                .unwrap();
        }
    }
    match Ftl::mount(nand, mem.lend()) {
        Err(MountError::Corrupted(c)) => {
            assert_eq!(c.what, "no valid checkpoint pack in the checkpoint area")
        }
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok(_) => panic!("mounted garbage"),
    }

    // Every checkpoint pack damaged.
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    for lba in 0..64 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    let mut nand = ftl.into_nand();
    let mut s = vec![0u8; geo.spare_bytes as usize];
    for b in 0..CP_AREA_BLOCKS {
        for n in 0..geo.pages_per_block {
            let page = geo.page(BlockId(b), n);
            nand.read_spare(page, &mut s).unwrap();
            if s.iter().any(|&x| x != 0xFF) {
                nand.flip_bit(page, 200, 0);
            }
        }
    }
    // The newest pack is sealed (completely written), so this is rot, not a cut: refused,
    // naming the pack, rather than another pack tried.
    match Ftl::mount(nand, mem.lend()) {
        Err(e @ MountError::CheckpointDamaged { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("checkpoint pack at block"), "{msg}");
            assert!(msg.contains("fails its CRC"), "{msg}");
        }
        Err(e) => panic!("expected CheckpointDamaged, got {e}"),
        Ok(_) => panic!("mounted with every checkpoint damaged"),
    }

    // Truncated: the same pages on an array with fewer blocks.
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    for lba in 0..64 {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    ftl.flush().unwrap();
    let mut full = ftl.into_nand();
    // The intact array reports the configuration it was formatted with.
    let mut scratch = vec![0u8; (geo.page_bytes + geo.spare_bytes) as usize];
    assert_eq!(Ftl::probe(&mut full, &mut scratch).unwrap(), cfg);
    let short_geo = Geometry {
        blocks: geo.blocks - 8,
        ..geo
    };
    let mut short = SimNand::new_ram(short_geo);
    for page in 0..short_geo.total_pages() {
        full.read(PageId(page), &mut data, &mut spare).unwrap();
        if data.iter().chain(spare.iter()).any(|&x| x != 0xFF) {
            short.program(PageId(page), &data, &spare).unwrap();
        }
    }
    match Ftl::mount(short, mem.lend()) {
        Err(MountError::GeometryMismatch {
            formatted_blocks,
            actual_blocks,
        }) => {
            assert_eq!(formatted_blocks, geo.blocks);
            assert_eq!(actual_blocks, geo.blocks - 8);
        }
        Err(e) => panic!("expected GeometryMismatch, got {e}"),
        Ok(_) => panic!("mounted a truncated array"),
    }
}

#[test]
fn program_and_erase_failures_and_factory_bad_blocks_lose_nothing() {
    let logical = 1024;
    let mut geo = small_geometry(1, 32, logical);
    geo.blocks += 16; // room for the blocks this test retires
    let cfg = config(logical, 3);
    let faults = FaultConfig {
        seed: 77,
        bit_flip_per_read: 0.0,
        program_fail_rate: 0.0005,
        erase_fail_rate: 0.005,
        factory_bad_blocks: 4,
    };
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::with_faults(geo, faults), cfg, mem.lend()).unwrap();
    let factory_bad = (0..geo.blocks)
        .filter(|&b| ftl.is_bad_block(BlockId(b)))
        .count();
    assert!(factory_bad >= 4, "factory bad blocks are skipped");
    let mut disk = vec![0u32; logical as usize];
    let mut rng = Rng::new(9);
    let mut buf = [0u8; BLOCK];
    let mut retired = 0;
    for i in 0..8000u32 {
        let lba = rng.below(logical as u64) as u32;
        if let Err(e) = ftl.write(Lba(lba), &content(lba, i + 1)) {
            let bad = (0..geo.blocks)
                .filter(|&b| ftl.is_bad_block(BlockId(b)))
                .count();
            panic!(
                "write {i}: {e} ({bad} bad blocks, {} free)",
                ftl.free_blocks()
            );
        }
        disk[lba as usize] = i + 1;
        if i % 500 == 499 {
            ftl.flush().unwrap();
            retired += ftl.stats().retired_blocks;
            let nand = ftl.into_nand();
            ftl = Ftl::mount(nand, mem.lend()).unwrap_or_else(|e| panic!("mount at {i}: {e}"));
        }
    }
    retired += ftl.stats().retired_blocks;
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(disk[lba as usize]), "LBA {lba}");
    }
    let report = ftl.check().unwrap();
    assert_eq!(report.problems(), 0, "{report:?}");
    let bad_now = (0..geo.blocks)
        .filter(|&b| ftl.is_bad_block(BlockId(b)))
        .count();
    eprintln!("factory bad {factory_bad}, retired {retired}, bad now {bad_now}");
    assert!(retired >= 2, "failures happened and blocks were retired");
    assert!(bad_now > factory_bad);
}

#[test]
fn random_media_damage_never_panics_or_returns_garbage() {
    // Flip random bits in programmed pages (data and spare, any structure) of a used device,
    // then mount and read everything: every outcome is an error or correct data.
    let logical = 512;
    let geo = small_geometry(1, 16, logical);
    let cfg = config(logical, 2);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut rng = Rng::new(1234);
    let (mut mounted, mut refused, mut read_errors, mut stale) = (0, 0, 0, 0);
    for round in 0..150 {
        let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
        let mut disk = vec![0u32; logical as usize];
        for i in 0..1500u32 {
            let lba = rng.below(logical as u64) as u32;
            ftl.write(Lba(lba), &content(lba, i + 1)).unwrap();
            disk[lba as usize] = i + 1;
            if i % 300 == 299 {
                ftl.flush().unwrap();
            }
        }
        ftl.flush().unwrap();
        let mut nand = ftl.into_nand();
        let mut spare = vec![0u8; geo.spare_bytes as usize];
        let flips = 1 + rng.below(8);
        let mut done = 0;
        let mut hits = Vec::new();
        while done < flips {
            let page = PageId(rng.below(geo.total_pages() as u64) as u32);
            nand.read_spare(page, &mut spare).unwrap();
            if spare.iter().all(|&b| b == 0xFF) {
                continue;
            }
            hits.push(page.0);
            if rng.below(4) == 0 {
                hits.push(u32::MAX);
                nand.flip_spare_bit(
                    page,
                    rng.below(geo.spare_bytes as u64) as usize,
                    rng.below(8) as u8,
                );
            } else {
                nand.flip_bit(
                    page,
                    rng.below(geo.page_bytes as u64) as usize,
                    rng.below(8) as u8,
                );
            }
            done += 1;
        }
        let mut ftl = match Ftl::mount(nand, mem.lend()) {
            Ok(f) => f,
            Err(MountError::Corrupted(_) | MountError::CheckpointDamaged { .. }) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("round {round}: unexpected mount error {e}"),
        };
        mounted += 1;
        let mut buf = [0u8; BLOCK];
        for lba in 0..logical {
            match ftl.read(Lba(lba), &mut buf) {
                Ok(()) => {
                    // Never garbage, never another block's data. A damaged page at the very
                    // end of a block written after the checkpoint cannot be told from one torn
                    // by a cut, so recovery may stop before it: an older version is possible.
                    let v = version_of(lba, &buf).unwrap_or_else(|| {
                        panic!("round {round}: LBA {lba} returned garbage; flips {hits:?}")
                    });
                    assert!(
                        v <= disk[lba as usize],
                        "round {round}: LBA {lba} from the future"
                    );
                    if v != disk[lba as usize] {
                        stale += 1;
                    }
                }
                Err(Error::Corrupted(_)) => read_errors += 1,
                Err(e) => panic!("round {round}: LBA {lba}: {e}"),
            }
        }
    }
    eprintln!(
        "{mounted} mounted, {refused} refused, {read_errors} reads reported corrupt, \
         {stale} stale"
    );
    assert!(mounted > 0 && read_errors > 0);
}

/// A page-by-page copy of a RAM array (programmed pages only).
fn copy_nand(src: &mut SimNand) -> SimNand {
    let geo = src.geometry();
    let mut dst = SimNand::new_ram(geo);
    let mut data = vec![0u8; geo.page_bytes as usize];
    let mut spare = vec![0u8; geo.spare_bytes as usize];
    for page in 0..geo.total_pages() {
        src.read(PageId(page), &mut data, &mut spare).unwrap();
        if data.iter().chain(spare.iter()).any(|&x| x != 0xFF) {
            dst.program(PageId(page), &data, &spare).unwrap();
        }
    }
    dst
}

/// The newest checkpoint pack on `nand`: (first page, slots) from its head record.
fn newest_pack(nand: &mut SimNand) -> (PageId, u32) {
    let geo = nand.geometry();
    let mut spare = vec![0u8; geo.spare_bytes as usize];
    let mut best: Option<(u64, PageId, u32)> = None;
    for b in 0..CP_AREA_BLOCKS {
        for n in 0..geo.pages_per_block {
            let page = geo.page(BlockId(b), n);
            nand.read_spare(page, &mut spare).unwrap();
            if let Ok(r) = SpareRecord::parse(&spare) {
                if r.kind == SlotKind::Checkpoint
                    && r.owner == 0
                    && best.is_none_or(|(s, _, _)| r.seq > s)
                {
                    best = Some((r.seq, page, r.aux));
                }
            }
        }
    }
    let (_, page, nslots) = best.expect("a checkpoint pack");
    (page, nslots)
}

/// A used device: random overwrites with flushes (GC, several checkpoints), then, after one
/// more checkpoint, enough flushed writes that blocks it released get erased and reused. No
/// checkpoint ends it: the last pack is a few blocks old. Returns the array and each LBA's
/// flushed version (0 = never written).
fn used_device(geo: Geometry, mem: &mut OwnedFtlMemory, seed: u64) -> (SimNand, Vec<u32>) {
    let logical = 512;
    let slots = geo.slots_per_page();
    let mut ftl = Ftl::format(SimNand::new_ram(geo), config(logical, 3), mem.lend()).unwrap();
    let mut disk = vec![0u32; logical as usize];
    let mut rng = Rng::new(100 + seed);
    let mut v = 0;
    let mut write = |ftl: &mut Ftl<'_, SimNand>, disk: &mut Vec<u32>, n: u32| {
        for _ in 0..n {
            v += 1;
            let lba = rng.below(logical as u64) as u32;
            ftl.write(Lba(lba), &content(lba, v)).unwrap();
            disk[lba as usize] = v;
            if v % 40 == 0 {
                ftl.flush().unwrap();
            }
        }
    };
    write(&mut ftl, &mut disk, 3000 + 500 * seed as u32);
    let cps = ftl.stats().checkpoints;
    while ftl.stats().checkpoints == cps {
        write(&mut ftl, &mut disk, 1);
    }
    let cps = ftl.stats().checkpoints;
    write(
        &mut ftl,
        &mut disk,
        (4 + seed as u32) * geo.pages_per_block * slots,
    );
    ftl.flush().unwrap();
    assert_eq!(
        ftl.stats().checkpoints,
        cps,
        "no checkpoint after the last one"
    );
    (ftl.into_nand(), disk)
}

/// Reads every LBA and checks it holds exactly its flushed version.
fn assert_exact<N: Nand>(ftl: &mut Ftl<'_, N>, disk: &[u32], case: &str)
where
    N::Error: std::fmt::Display,
{
    let mut buf = [0u8; BLOCK];
    for (lba, &want) in disk.iter().enumerate() {
        let lba = lba as u32;
        ftl.read(Lba(lba), &mut buf)
            .unwrap_or_else(|e| panic!("{case}: LBA {lba}: {e}"));
        if want == 0 {
            assert!(buf.iter().all(|&b| b == 0), "{case}: LBA {lba}");
        } else {
            assert_eq!(
                version_of(lba, &buf),
                Some(want),
                "{case}: LBA {lba} is stale"
            );
        }
    }
}

/// Bit rot in the newest checkpoint pack (not a power cut: the pack was completely written and
/// the FTL went on using it). Falling back to the previous pack and rolling forward would miss
/// what happened since the newest one (blocks it released were erased and reused), so the only
/// acceptable outcomes are the newest state exactly, or a refusal naming the damaged pack.
/// Layouts: 4 KiB pages (a pack of several pages) and 16 KiB pages of four slots (a one-page
/// pack, where the damaged page is also the pack's last); several workloads each.
#[test]
fn bit_rot_in_the_newest_checkpoint_pack_never_mounts_stale_data() {
    let logical = 512;
    let (mut exact, mut refused) = (0, 0);
    for (slots, ppb) in [(1u32, 16u32), (4, 16)] {
        let geo = small_geometry(slots, ppb, logical);
        let cfg = config(logical, 3);
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        for seed in 0..4u64 {
            let (mut pristine, disk) = used_device(geo, &mut mem, seed);
            let (head, nslots) = newest_pack(&mut pristine);
            let pages = nslots / slots;
            let block = head.0 / ppb;
            for damage in 0..3 {
                let mut nand = copy_nand(&mut pristine);
                let mut r = Rng::new(seed * 7 + damage);
                let what = match damage {
                    0 => {
                        // A bit of a pack page's data (header, NAT, block table or padding).
                        let page = PageId(head.0 + r.below(pages as u64) as u32);
                        let byte = r.below(geo.page_bytes as u64) as usize;
                        nand.flip_bit(page, byte, (r.below(8)) as u8);
                        format!("data byte {byte} of page {}", page.0)
                    }
                    1 => {
                        // Both copies of the head slot's record: the pack is found through
                        // its other records and its seal.
                        nand.flip_spare_bit(head, 9, 1);
                        nand.flip_spare_bit(head, 32 + 9, 1);
                        "both copies of the head record".to_string()
                    }
                    _ => {
                        // The last page of the pack: the place a power cut would tear.
                        let page = PageId(head.0 + pages - 1);
                        nand.flip_bit(page, 77, 4);
                        format!("the pack's last page {}", page.0)
                    }
                };
                let case = format!("{slots}-slot pages, seed {seed}, {what}");
                match Ftl::mount(nand, mem.lend()) {
                    Ok(mut ftl) => {
                        assert_exact(&mut ftl, &disk, &case);
                        exact += 1;
                    }
                    Err(e @ MountError::CheckpointDamaged { .. }) => {
                        let msg = e.to_string();
                        let name =
                            format!("checkpoint pack at block {block} page {}", head.0 % ppb);
                        assert!(msg.contains(&name), "{case}: `{msg}` does not name {name}");
                        assert!(msg.contains("stale"), "{case}: {msg}");
                        refused += 1;
                    }
                    Err(e) => panic!("{case}: unexpected mount error {e}"),
                }
            }
        }
    }
    eprintln!("{exact} mounted the newest state, {refused} refused naming the pack");
    assert!(refused > 0);
}

/// The other side of the rule: a power cut at any step of writing a checkpoint (the erase of
/// the next checkpoint block, any page of the pack, its seal) still mounts, with exactly the
/// flushed state. The cut pack is unsealed, so mount passes over it to the previous pack; a cut
/// during the seal leaves a complete pack, which is used. A third mount then checks that what
/// the recovery left (a torn pack beside newer ones) does not trip the rule later.
#[test]
fn a_power_cut_while_a_checkpoint_is_written_mounts_the_previous_pack() {
    let mut cuts = 0;
    for (slots, ppb) in [(1u32, 16u32), (4, 16)] {
        let geo = small_geometry(slots, ppb, 512);
        let cfg = config(512, 3);
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        for seed in 0..2u64 {
            let (mut pristine, disk) = used_device(geo, &mut mem, seed);
            // A mount ends with a checkpoint: its last operations are the erase of the next
            // checkpoint block, the pack's pages and the seal. Count them on an uncut mount.
            let mut nand = copy_nand(&mut pristine);
            let before = nand.ops();
            drop(Ftl::mount(Lent(&mut nand), mem.lend()).unwrap());
            let total = nand.ops() - before;
            let (_, nslots) = newest_pack(&mut nand);
            let tail = (nslots / slots + 1 + 1) as u64;
            for k in total - tail - 2..total {
                let case = format!("{slots}-slot pages, seed {seed}, cut after {k} of {total} ops");
                let mut nand = copy_nand(&mut pristine);
                nand.power_cut_after(k);
                match Ftl::mount(Lent(&mut nand), mem.lend()) {
                    Err(MountError::Nand(_)) => {}
                    Err(e) => panic!("{case}: {e}"),
                    Ok(_) => panic!("{case}: the cut did not hit the mount"),
                }
                cuts += 1;
                nand.restore_power();
                let mut ftl = Ftl::mount(Lent(&mut nand), mem.lend())
                    .unwrap_or_else(|e| panic!("{case}: remount: {e}"));
                assert_exact(&mut ftl, &disk, &case);
                drop(ftl);
                let mut ftl = Ftl::mount(Lent(&mut nand), mem.lend())
                    .unwrap_or_else(|e| panic!("{case}: third mount: {e}"));
                assert_exact(&mut ftl, &disk, &case);
            }
        }
    }
    assert!(cuts >= 16);
}
