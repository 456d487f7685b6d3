//! GC and wear levelling under sustained random writes: 20× the capacity of 4 KiB random
//! writes onto a 64 MiB `femu` device must complete, keep the erase counts level
//! (max ≤ 1.25 × mean + 2) and keep every block readable. WAF is printed.

mod ftl_support;

use ftl_support::*;
use nandbox_core::ftl::{blocks_for_capacity, Ftl, FtlConfig, Lba};
use nandbox_core::nand::BlockId;
use nandbox_sim::{profile, OwnedFtlMemory, SimNand};

#[test]
fn twenty_device_writes_on_femu_64mib_keep_wear_level() {
    let p = profile::FEMU;
    let logical = (64 << 20) / BLOCK as u32;
    let blocks = blocks_for_capacity(p.page_bytes, p.pages_per_block, logical, 7);
    let geo = p.geometry(blocks);
    let cfg = FtlConfig::new(logical);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    let mut disk = vec![0u32; logical as usize];
    let mut rng = Rng::new(20);
    let mut data = [0u8; BLOCK];
    let writes = 20 * logical as u64;
    for i in 0..writes {
        let lba = rng.below(logical as u64) as u32;
        let v = i as u32 + 1;
        // Cheap content that still names its LBA and version.
        data[..4].copy_from_slice(&lba.to_le_bytes());
        data[4..8].copy_from_slice(&v.to_le_bytes());
        ftl.write(Lba(lba), &data)
            .unwrap_or_else(|e| panic!("write {i} of {writes}: {e}"));
        disk[lba as usize] = v;
        if i % 4096 == 4095 {
            ftl.flush().unwrap();
        }
    }
    ftl.flush().unwrap();
    let st = *ftl.stats();
    let counts: Vec<u32> = (0..blocks)
        .filter(|&b| !ftl.is_bad_block(BlockId(b)))
        .map(|b| ftl.erase_count(BlockId(b)))
        .collect();
    let max = *counts.iter().max().unwrap() as f64;
    let mean = counts.iter().map(|&c| c as f64).sum::<f64>() / counts.len() as f64;
    let min = *counts.iter().min().unwrap();
    eprintln!(
        "femu 64 MiB, {blocks} blocks, {writes} random 4 KiB writes: WAF {:.3} \
         (data {} node {} gc {} checkpoint {} padding {} bytes), erases {}, \
         erase count min {min} mean {mean:.1} max {max}, GC blocks {}, wear-level moves {}, \
         checkpoints {}",
        st.waf(),
        st.program_bytes[0],
        st.program_bytes[2],
        st.program_bytes[4],
        st.program_bytes[5],
        st.program_bytes[6],
        st.erases,
        st.gc_blocks,
        st.wear_level_moves,
        st.checkpoints,
    );
    assert!(
        max <= 1.25 * mean + 2.0,
        "erase counts uneven: max {max}, mean {mean:.1}"
    );
    assert!(st.waf() >= 1.0);
    // Every block still reads its last version.
    let mut buf = [0u8; BLOCK];
    for lba in (0..logical).step_by(7) {
        ftl.read(Lba(lba), &mut buf).unwrap();
        let v = u32::from_le_bytes(buf[4..8].try_into().unwrap());
        let want = disk[lba as usize];
        if want == 0 {
            assert!(buf.iter().all(|&b| b == 0));
        } else {
            assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), lba);
            assert_eq!(v, want, "LBA {lba}");
        }
    }
}

#[test]
fn static_wear_levelling_moves_cold_data() {
    // 16 MiB femu device. The first 80% of the LBAs are written once and never again; all
    // later writes hit the last 20%. Without static wear levelling the blocks holding the cold
    // 80% would never be erased again while the rest wear out.
    let p = profile::FEMU;
    let logical = (16 << 20) / BLOCK as u32;
    let blocks = blocks_for_capacity(p.page_bytes, p.pages_per_block, logical, 7);
    let geo = p.geometry(blocks);
    let cfg = FtlConfig::new(logical);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).unwrap();
    let cold = logical * 8 / 10;
    for lba in 0..logical {
        ftl.write(Lba(lba), &content(lba, 1)).unwrap();
    }
    let mut rng = Rng::new(21);
    let mut last = vec![1u32; logical as usize];
    for i in 0..30 * logical {
        let lba = cold + rng.below((logical - cold) as u64) as u32;
        last[lba as usize] = i + 2;
        ftl.write(Lba(lba), &content(lba, i + 2)).unwrap();
    }
    ftl.flush().unwrap();
    let counts: Vec<u32> = (0..blocks)
        .filter(|&b| !ftl.is_bad_block(BlockId(b)) && !ftl.is_reserved_block(BlockId(b)))
        .map(|b| ftl.erase_count(BlockId(b)))
        .collect();
    let max = *counts.iter().max().unwrap();
    let min = *counts.iter().min().unwrap();
    let moves = ftl.stats().wear_level_moves;
    eprintln!(
        "skewed writes: erase counts min {min} max {max}, {moves} wear-levelling moves, WAF {:.2}",
        ftl.stats().waf()
    );
    assert!(moves > 0, "static wear levelling moved cold blocks");
    assert!(
        max - min <= 3 * 8,
        "erase-count spread {min}..{max} stays bounded"
    );
    let mut buf = [0u8; BLOCK];
    for lba in (0..logical).step_by(5) {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(version_of(lba, &buf), Some(last[lba as usize]), "LBA {lba}");
    }
}
