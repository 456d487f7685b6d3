//! The simulator enforces the NAND contract and injects faults as documented.

use nandbox_core::nand::{BlockId, FaultKind, Geometry, Nand, NandFault, PageId};
use nandbox_sim::image::ImageError;
use nandbox_sim::{profile, FaultConfig, SimNand};

fn small() -> Geometry {
    profile::FEMU.geometry(8)
}

fn page(sim: &SimNand, fill: u8) -> (Vec<u8>, Vec<u8>) {
    let g = sim.geometry();
    (
        vec![fill; g.page_bytes as usize],
        vec![fill ^ 0x5A; g.spare_bytes as usize],
    )
}

fn read(sim: &mut SimNand, p: PageId) -> (Vec<u8>, Vec<u8>) {
    let g = sim.geometry();
    let (mut d, mut s) = (
        vec![0; g.page_bytes as usize],
        vec![0; g.spare_bytes as usize],
    );
    sim.read(p, &mut d, &mut s).unwrap();
    (d, s)
}

#[test]
fn erased_pages_read_ff_and_programs_read_back() {
    let mut sim = SimNand::new_ram(small());
    let (d, s) = read(&mut sim, PageId(3));
    assert!(d.iter().chain(&s).all(|&b| b == 0xFF));
    let (d, s) = page(&sim, 0x11);
    sim.program(PageId(0), &d, &s).unwrap();
    assert_eq!(read(&mut sim, PageId(0)), (d, s));
}

#[test]
fn second_program_and_out_of_order_program_are_refused() {
    let mut sim = SimNand::new_ram(small());
    let (d, s) = page(&sim, 1);
    sim.program(PageId(2), &d, &s).unwrap();
    let twice = sim.program(PageId(2), &d, &s).unwrap_err();
    assert_eq!(twice.kind(), FaultKind::ContractViolation);
    let backwards = sim.program(PageId(1), &d, &s).unwrap_err();
    assert_eq!(backwards.kind(), FaultKind::ContractViolation);
    sim.erase(BlockId(0)).unwrap();
    sim.program(PageId(0), &d, &s).unwrap();
    assert_eq!(sim.erase_counts()[0], 1);
    assert_eq!(sim.counters().programs, 2);
}

#[test]
fn wrong_buffer_sizes_and_ranges_are_refused() {
    let mut sim = SimNand::new_ram(small());
    let (d, s) = page(&sim, 1);
    assert!(sim.program(PageId(0), &d[..100], &s).is_err());
    assert!(sim.program(PageId(8 * 256), &d, &s).is_err());
    assert!(sim.erase(BlockId(8)).is_err());
}

#[test]
fn power_cut_tears_the_operation_in_flight_and_stops_everything_after() {
    let mut sim = SimNand::with_faults(
        small(),
        FaultConfig {
            seed: 7,
            ..Default::default()
        },
    );
    let (d, s) = page(&sim, 0x00);
    sim.program(PageId(0), &d, &s).unwrap();
    sim.power_cut_after(1);
    sim.program(PageId(1), &d, &s).unwrap();
    let torn = sim.program(PageId(2), &d, &s).unwrap_err();
    assert_eq!(torn.kind(), FaultKind::PowerLoss);
    assert!(sim.power_lost());
    let (mut rd, mut rs) = (vec![0; d.len()], vec![0; s.len()]);
    assert_eq!(
        sim.read(PageId(0), &mut rd, &mut rs).unwrap_err().kind(),
        FaultKind::PowerLoss
    );
    sim.restore_power();
    // The torn page is written: it can't be programmed again before an erase.
    assert_eq!(
        sim.program(PageId(2), &d, &s).unwrap_err().kind(),
        FaultKind::ContractViolation
    );
    assert_eq!(read(&mut sim, PageId(1)).0, d);
}

#[test]
fn torn_erase_leaves_block_unprogrammable_until_erased() {
    let mut sim = SimNand::new_ram(small());
    let (d, s) = page(&sim, 0x22);
    sim.program(PageId(0), &d, &s).unwrap();
    sim.power_cut_after(0);
    assert!(sim.erase(BlockId(0)).is_err());
    sim.restore_power();
    assert!(sim.program(PageId(5), &d, &s).is_err());
    sim.erase(BlockId(0)).unwrap();
    sim.program(PageId(5), &d, &s).unwrap();
}

/// A slot read is a page read that copies one slot: the same bytes in that slot and the spare,
/// the same count, the same power-cut step and the same fault draws (a flip lands where the
/// page read's would, when that is in the bytes transferred).
#[test]
fn slot_reads_match_page_reads_in_bytes_counts_and_faults() {
    let geo = profile::TLC.geometry(4);
    let (pb, sb) = (geo.page_bytes as usize, geo.spare_bytes as usize);
    let data: Vec<u8> = (0..pb).map(|i| (i / 4096 * 0x40 + i % 61) as u8).collect();
    let spare: Vec<u8> = (0..sb).map(|i| i as u8 ^ 0x33).collect();
    let faults = FaultConfig {
        seed: 7,
        bit_flip_per_read: 1.0,
        ..Default::default()
    };
    let mut whole = SimNand::with_faults(geo, faults);
    let mut sliced = SimNand::with_faults(geo, faults);
    for sim in [&mut whole, &mut sliced] {
        sim.program(PageId(0), &data, &spare).unwrap();
    }
    let mut landed = 0;
    for round in 0..400 {
        let slot = round % 4;
        let (mut d1, mut s1) = (vec![0u8; pb], vec![0u8; sb]);
        let (mut d2, mut s2) = (vec![0xA5u8; pb], vec![0u8; sb]);
        whole.read(PageId(0), &mut d1, &mut s1).unwrap();
        sliced
            .read_slot(PageId(0), slot as u32, &mut d2, &mut s2)
            .unwrap();
        let r = slot * 4096..(slot + 1) * 4096;
        assert_eq!(d1[r.clone()], d2[r.clone()], "round {round}");
        assert_eq!(s1, s2, "round {round}");
        landed += usize::from(d1[r.clone()] != data[r] || s1 != spare);
    }
    // Every read flipped a bit; those in the transferred bytes (about a third) were seen alike.
    assert!((60..250).contains(&landed), "{landed} flips landed");
    assert_eq!(whole.counters(), sliced.counters());
    assert_eq!(sliced.counters().reads, 400);

    let mut sim = SimNand::new_ram(geo);
    let (mut d, mut s) = (vec![0u8; pb], vec![0u8; sb]);
    sim.read_slot(PageId(1), 3, &mut d, &mut s).unwrap();
    assert!(d[3 * 4096..].iter().chain(&s).all(|&b| b == 0xFF), "erased");
    let e = sim.read_slot(PageId(1), 4, &mut d, &mut s).unwrap_err();
    assert_eq!(e.kind(), FaultKind::ContractViolation);
    let e = sim
        .read_slot(PageId(1), 0, &mut d[..4096], &mut s)
        .unwrap_err();
    assert_eq!(e.kind(), FaultKind::ContractViolation);
    sim.power_cut_after(0);
    let e = sim.read_slot(PageId(1), 0, &mut d, &mut s).unwrap_err();
    assert_eq!(e.kind(), FaultKind::PowerLoss);
}

/// A slot read into a slot-sized buffer is the slot read it replaces: the same bytes, counts
/// and faults (the same seed flips the same bits), and the same refusals.
#[test]
fn slot_reads_into_a_slot_buffer_match_slot_reads() {
    let geo = profile::TLC.geometry(4);
    let (pb, sb) = (geo.page_bytes as usize, geo.spare_bytes as usize);
    let data: Vec<u8> = (0..pb).map(|i| (i / 4096 * 0x40 + i % 61) as u8).collect();
    let spare: Vec<u8> = (0..sb).map(|i| i as u8 ^ 0x33).collect();
    let faults = FaultConfig {
        seed: 11,
        bit_flip_per_read: 1.0,
        ..Default::default()
    };
    let mut sliced = SimNand::with_faults(geo, faults);
    let mut direct = SimNand::with_faults(geo, faults);
    for sim in [&mut sliced, &mut direct] {
        sim.program(PageId(0), &data, &spare).unwrap();
    }
    let mut landed = 0;
    for round in 0..400 {
        let slot = round % 4;
        let (mut d1, mut s1) = (vec![0u8; pb], vec![0u8; sb]);
        let (mut page_buf, mut s2) = (vec![0u8; pb], vec![0u8; sb]);
        let mut dst = [0u8; 4096];
        sliced
            .read_slot(PageId(0), slot as u32, &mut d1, &mut s1)
            .unwrap();
        direct
            .read_slot_into(PageId(0), slot as u32, &mut dst, &mut page_buf, &mut s2)
            .unwrap();
        let r = slot * 4096..(slot + 1) * 4096;
        assert_eq!(d1[r.clone()], dst[..], "round {round}");
        assert_eq!(s1, s2, "round {round}");
        landed += usize::from(dst[..] != data[r] || s2 != spare);
    }
    assert!((60..250).contains(&landed), "{landed} flips landed");
    assert_eq!(sliced.counters(), direct.counters());

    let mut sim = SimNand::new_ram(geo);
    let (mut d, mut s, mut dst) = (vec![0u8; pb], vec![0u8; sb], [0u8; 4096]);
    sim.read_slot_into(PageId(1), 3, &mut dst, &mut d, &mut s)
        .unwrap();
    assert!(dst.iter().chain(&s).all(|&b| b == 0xFF), "erased");
    let e = sim
        .read_slot_into(PageId(1), 4, &mut dst, &mut d, &mut s)
        .unwrap_err();
    assert_eq!(e.kind(), FaultKind::ContractViolation);
    let e = sim
        .read_slot_into(PageId(1), 0, &mut dst, &mut d[..4096], &mut s)
        .unwrap_err();
    assert_eq!(e.kind(), FaultKind::ContractViolation);
    sim.power_cut_after(0);
    let e = sim
        .read_slot_into(PageId(1), 0, &mut dst, &mut d, &mut s)
        .unwrap_err();
    assert_eq!(e.kind(), FaultKind::PowerLoss);
}

#[test]
fn injected_faults_follow_the_seed() {
    let faults = FaultConfig {
        seed: 42,
        bit_flip_per_read: 1.0,
        factory_bad_blocks: 2,
        ..Default::default()
    };
    let mut a = SimNand::with_faults(small(), faults);
    let mut b = SimNand::with_faults(small(), faults);
    let bad_a: Vec<bool> = (0..8).map(|i| a.is_bad(BlockId(i)).unwrap()).collect();
    let bad_b: Vec<bool> = (0..8).map(|i| b.is_bad(BlockId(i)).unwrap()).collect();
    assert_eq!(bad_a, bad_b);
    assert_eq!(bad_a.iter().filter(|&&x| x).count(), 2);
    let (ra, rb) = (read(&mut a, PageId(0)), read(&mut b, PageId(0)));
    assert_eq!(ra, rb);
    let flipped: u32 = ra.0.iter().chain(&ra.1).map(|x| (!x).count_ones()).sum();
    assert_eq!(flipped, 1, "exactly one bit flipped per read");
}

#[test]
fn image_survives_reopen_and_keeps_block_state() {
    let dir = tempdir();
    let path = dir.join("nand.img");
    let g = small();
    {
        let mut sim = SimNand::create_image(&path, g).unwrap();
        let (d, s) = page(&sim, 0x33);
        sim.erase(BlockId(1)).unwrap();
        sim.program(PageId(256), &d, &s).unwrap();
        sim.mark_bad(BlockId(5)).unwrap();
    }
    let mut sim = SimNand::open_image(&path).unwrap();
    assert_eq!(sim.geometry(), g);
    let (d, s) = page(&sim, 0x33);
    assert_eq!(read(&mut sim, PageId(256)), (d.clone(), s.clone()));
    assert!(read(&mut sim, PageId(257)).0.iter().all(|&b| b == 0xFF));
    assert_eq!(sim.erase_counts()[1], 1);
    assert!(sim.is_bad(BlockId(5)).unwrap());
    assert!(
        sim.program(PageId(256), &d, &s).is_err(),
        "write point persisted"
    );
    sim.erase(BlockId(1)).unwrap();
    assert!(read(&mut sim, PageId(256)).0.iter().all(|&b| b == 0xFF));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damaged_images_are_refused_with_the_reason() {
    let dir = tempdir();
    let path = dir.join("nand.img");
    drop(SimNand::create_image(&path, small()).unwrap());
    let bytes = std::fs::read(&path).unwrap();

    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(matches!(
        SimNand::open_image(&path).err().unwrap(),
        ImageError::Truncated { .. }
    ));

    let mut bad = bytes.clone();
    bad[0] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        SimNand::open_image(&path).err().unwrap(),
        ImageError::BadMagic
    ));

    let mut bad = bytes.clone();
    bad[13] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        SimNand::open_image(&path).err().unwrap(),
        ImageError::HeaderCrc
    ));

    std::fs::write(&path, &bytes[..10]).unwrap();
    let err = SimNand::open_image(&path).err().unwrap();
    assert!(err.to_string().contains("truncated"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "nandbox-sim-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn read_only_image_never_changes_the_file() {
    let dir = tempdir().join("ro");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("nand.img");
    {
        let mut sim = SimNand::create_image(&path, small()).unwrap();
        let (d, s) = page(&sim, 0x44);
        sim.program(PageId(0), &d, &s).unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let mut sim = SimNand::open_image_read_only(&path).unwrap();
    let (d, s) = page(&sim, 0x55);
    assert_eq!(read(&mut sim, PageId(0)).0, page(&sim, 0x44).0);
    sim.program(PageId(1), &d, &s).unwrap();
    assert_eq!(
        read(&mut sim, PageId(1)).0,
        d,
        "the overlay holds the new page"
    );
    sim.erase(BlockId(0)).unwrap();
    assert!(read(&mut sim, PageId(0)).0.iter().all(|&b| b == 0xFF));
    drop(sim);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A read of some slots is the page read it replaces for those slots: the same bytes, counts
/// and faults (the same seed flips the same bits where they were transferred), and a mask
/// naming a slot the page does not have is refused.
#[test]
fn reads_of_some_slots_match_page_reads_in_those_slots() {
    let geo = profile::TLC.geometry(4);
    let (pb, sb) = (geo.page_bytes as usize, geo.spare_bytes as usize);
    let data: Vec<u8> = (0..pb).map(|i| (i / 4096 * 0x40 + i % 59) as u8).collect();
    let spare: Vec<u8> = (0..sb).map(|i| i as u8 ^ 0x5A).collect();
    let faults = FaultConfig {
        seed: 13,
        bit_flip_per_read: 1.0,
        ..Default::default()
    };
    let mut whole = SimNand::with_faults(geo, faults);
    let mut masked = SimNand::with_faults(geo, faults);
    for sim in [&mut whole, &mut masked] {
        sim.program(PageId(0), &data, &spare).unwrap();
    }
    let mut landed = 0;
    for round in 0..400u32 {
        let slots = 1 + round % 15;
        let (mut d1, mut s1) = (vec![0u8; pb], vec![0u8; sb]);
        let (mut d2, mut s2) = (vec![0xA5u8; pb], vec![0u8; sb]);
        whole.read(PageId(0), &mut d1, &mut s1).unwrap();
        masked
            .read_slots(PageId(0), slots, &mut d2, &mut s2)
            .unwrap();
        assert_eq!(s1, s2, "round {round}");
        for slot in 0..4 {
            let r = slot * 4096..(slot + 1) * 4096;
            if slots & (1 << slot) != 0 {
                assert_eq!(d1[r.clone()], d2[r.clone()], "round {round} slot {slot}");
                landed += usize::from(d1[r] != data[slot * 4096..(slot + 1) * 4096]);
            } else {
                // Not transferred: the buffer keeps what it held.
                assert!(
                    d2[r].iter().all(|&b| b == 0xA5),
                    "round {round} slot {slot}"
                );
            }
        }
    }
    assert!(landed > 40, "{landed} flips landed in transferred slots");
    assert_eq!(whole.counters(), masked.counters());
    assert_eq!(masked.counters().reads, 400);

    let mut sim = SimNand::new_ram(geo);
    let (mut d, mut s) = (vec![0u8; pb], vec![0u8; sb]);
    sim.read_slots(PageId(1), 0b1001, &mut d, &mut s).unwrap();
    assert!(d.iter().chain(&s).all(|&b| b == 0xFF), "erased");
    let e = sim
        .read_slots(PageId(1), 0b1_0000, &mut d, &mut s)
        .unwrap_err();
    assert_eq!(e.kind(), FaultKind::ContractViolation);
    sim.power_cut_after(0);
    let e = sim.read_slots(PageId(1), 1, &mut d, &mut s).unwrap_err();
    assert_eq!(e.kind(), FaultKind::PowerLoss);
}
