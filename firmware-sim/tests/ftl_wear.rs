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
