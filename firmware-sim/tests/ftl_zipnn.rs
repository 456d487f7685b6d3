//! Coded blocks in the FTL (issue 5, in the device): float-weight blocks stored ZipNN-coded and
//! packed. Every fixture's tensor payload round-trips through the device (also after a
//! remount), coded LBAs can be overwritten (coded or plain) and trimmed, GC under pressure
//! moves packed records, `check` finds the image consistent, and non-float data is never coded.

mod ftl_support;

use ftl_support::*;
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::Geometry;
use nandbox_core::stats::Cause;
use nandbox_sim::{OwnedFtlMemory, SimNand};

fn payload(name: &str) -> Vec<u8> {
    let dir = std::env::var("NANDBOX_FIXTURES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures").into());
    let path = format!("{dir}/{name}");
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"));
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    b[8 + n..].to_vec()
}

fn blocks_of(p: &[u8]) -> Vec<[u8; BLOCK]> {
    p.chunks(BLOCK)
        .map(|c| {
            let mut b = [0u8; BLOCK];
            b[..c.len()].copy_from_slice(c);
            b
        })
        .collect()
}

fn tlc(logical: u32) -> Geometry {
    small_geometry(4, 256, logical)
}

fn read_all<N: nandbox_core::nand::Nand>(ftl: &mut Ftl<'_, N>, want: &[[u8; BLOCK]], what: &str)
where
    N::Error: std::fmt::Debug,
{
    let mut buf = [0u8; BLOCK];
    for (i, w) in want.iter().enumerate() {
        ftl.read(Lba(i as u32), &mut buf)
            .unwrap_or_else(|e| panic!("{what}: read {i}: {e}"));
        assert!(buf == *w, "{what}: block {i} differs");
    }
}

/// Every fixture's payload, written to a fresh device with compress on, reads back bit-exact
/// before and after a remount, is nearly all coded, and costs fewer NAND bytes than its size
/// (BF16: well under 3/4 of it; the benchmark's figure is in bench/zipnn-device.sh).
#[test]
fn fixtures_round_trip_coded() {
    for (name, max_ratio) in [
        ("minilm-l0l5-bf16.safetensors", 0.72),
        ("minilm-l0l5-f16.safetensors", 0.92),
        ("minilm-l0l5-f32.safetensors", 0.90),
    ] {
        let blocks = blocks_of(&payload(name));
        let logical = blocks.len() as u32 + 512;
        let geo = tlc(logical);
        let cfg = config(logical, 64);
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
        assert!(ftl.set_compress(true));
        let before = *ftl.stats();
        for (i, b) in blocks.iter().enumerate() {
            ftl.write(Lba(i as u32), b).expect("write");
        }
        ftl.flush().expect("flush");
        let st = *ftl.stats();
        let data = (st.program_bytes[Cause::Data as usize]
            - before.program_bytes[Cause::Data as usize])
            + (st.program_bytes[Cause::Padding as usize]
                - before.program_bytes[Cause::Padding as usize]);
        let ratio = data as f64 / (blocks.len() * BLOCK) as f64;
        eprintln!(
            "{name}: {} blocks, {} coded, {} saved bytes, data+padding programmed / payload = {ratio:.4}",
            blocks.len(),
            st.blocks_coded,
            st.coded_bytes_saved
        );
        assert!(
            st.blocks_coded as f64 >= 0.97 * blocks.len() as f64,
            "{name}: only {} of {} coded",
            st.blocks_coded,
            blocks.len()
        );
        assert!(ratio < max_ratio, "{name}: ratio {ratio}");
        read_all(&mut ftl, &blocks, name);
        assert!(ftl.stats().coded_reads >= st.blocks_coded);
        let rep = ftl.check().expect("check");
        assert_eq!(rep.problems(), 0, "{name}: {rep:?}");
        let nand = ftl.into_nand();
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        let mut ftl = Ftl::mount(nand, mem.lend()).expect("mount");
        read_all(&mut ftl, &blocks, name);
        let rep = ftl.check().expect("check");
        assert_eq!(rep.problems(), 0, "{name} after remount: {rep:?}");
    }
}

/// An FTL lent no codec memory (as the embedded board is) needs no reference counts and four
/// fewer page buffers: it stores float blocks plain, and an image holding coded blocks mounts or
/// is refused without a panic, its coded blocks read as errors naming the missing memory while
/// plain blocks read back.
#[test]
fn without_codec_memory_blocks_are_plain_and_coded_ones_are_errors() {
    let blocks = blocks_of(&payload("minilm-l0l5-bf16.safetensors"));
    let coded = 256.min(blocks.len());
    let logical = (coded + 256) as u32;
    let geo = tlc(logical);
    let cfg = config(logical, 64);
    let plain = nandbox_core::ftl::FtlMemory::required_plain(&geo, &cfg);
    let full = nandbox_core::ftl::FtlMemory::required(&geo, &cfg);
    assert_eq!(plain.slots, 0);
    assert!(plain.total_bytes() + 4 * (geo.page_bytes as usize) < full.total_bytes());

    // Compress asked for, but no codec memory: float blocks go plain.
    let mut mem = OwnedFtlMemory::with_requirements(&plain);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend_plain()).expect("format");
    assert!(!ftl.set_compress(true));
    for (i, b) in blocks[..coded].iter().enumerate() {
        ftl.write(Lba(i as u32), b).unwrap();
    }
    ftl.flush().unwrap();
    assert_eq!(ftl.stats().blocks_coded, 0);
    read_all(&mut ftl, &blocks[..coded], "plain");
    assert_eq!(ftl.check().unwrap().problems(), 0);

    // A device that coded them, remounted without codec memory: at once (roll-forward meets
    // the packed slots), and after enough plain writes for checkpoints to cover them (mount
    // succeeds, the coded blocks read as errors).
    let mut outcomes = Vec::new();
    for rewrites in [0u32, 3000] {
        let geo = small_geometry(4, 16, logical);
        let plain = nandbox_core::ftl::FtlMemory::required_plain(&geo, &cfg);
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
        assert!(ftl.set_compress(true));
        for (i, b) in blocks[..coded].iter().enumerate() {
            ftl.write(Lba(i as u32), b).unwrap();
        }
        for v in 0..=rewrites {
            ftl.write(
                Lba(coded as u32 + v % 64),
                &content(coded as u32 + v % 64, v),
            )
            .unwrap();
        }
        ftl.flush().unwrap();
        assert!(ftl.stats().blocks_coded > 0);
        let last = coded as u32 + rewrites % 64;
        let nand = ftl.into_nand();
        let mut mem = OwnedFtlMemory::with_requirements(&plain);
        match Ftl::mount(nand, mem.lend_plain()) {
            Err(e) => {
                assert!(e.to_string().contains("no codec memory"), "{e}");
                outcomes.push("refused");
            }
            Ok(mut ftl) => {
                let mut buf = [0u8; BLOCK];
                let e = ftl
                    .read(Lba(0), &mut buf)
                    .expect_err("a coded block without memory");
                assert!(e.to_string().contains("no codec memory"), "{e}");
                ftl.read(Lba(last), &mut buf).unwrap();
                assert!(buf == content(last, rewrites));
                assert!(ftl.check().is_ok());
                outcomes.push("mounted");
            }
        }
    }
    assert_eq!(outcomes, ["refused", "mounted"]);
}

/// Random and text-like blocks are never coded, and with compress on they cost exactly what
/// they cost with it off.
#[test]
fn non_float_data_costs_nothing_extra() {
    let logical = 2048;
    let geo = tlc(logical);
    let mut programs = Vec::new();
    for on in [false, true] {
        let cfg = config(logical, 16);
        let mut mem = OwnedFtlMemory::new(&geo, &cfg);
        let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
        ftl.set_compress(on);
        let mut text = [0u8; BLOCK];
        for (i, b) in text.iter_mut().enumerate() {
            *b = b"the quick brown fox jumps over the lazy dog; "[i % 45];
        }
        for round in 1..4 {
            for lba in 0..1500 {
                let b = if lba % 5 == 0 {
                    text
                } else {
                    content(lba, round)
                };
                ftl.write(Lba(lba), &b).unwrap();
            }
            ftl.flush().unwrap();
        }
        assert_eq!(ftl.stats().blocks_coded, 0);
        programs.push((
            ftl.stats().program_bytes,
            ftl.stats().reads,
            ftl.stats().erases,
        ));
    }
    assert_eq!(programs[0], programs[1]);
}

fn run_mixed(geo: Geometry, logical: u32, ops: u32, seed: u64, delta: bool) {
    run_mixed_with(geo, logical, ops, seed, delta, content_float);
}

fn run_mixed_with(
    geo: Geometry,
    logical: u32,
    ops: u32,
    seed: u64,
    delta: bool,
    float: fn(u32, u32) -> [u8; BLOCK],
) {
    let cfg = config(logical, 8);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, delta);
    ftl.set_compress(true);
    let mut disk = vec![0u32; logical as usize];
    let mut rng = Rng::new(seed);
    let mut v = 1;
    let mut buf = [0u8; BLOCK];
    let mut coded = 0;
    let mut gc = 0;
    for op in 0..ops {
        let lba = if rng.below(3) == 0 {
            rng.below(logical as u64 / 8) as u32
        } else {
            rng.below(logical as u64) as u32
        };
        match rng.below(100) {
            0..=69 => {
                v += 1;
                // Mostly weights (coded), some random blocks (plain) over the same LBAs.
                let b = if v % 5 == 0 {
                    content(lba, v)
                } else {
                    float(lba, v)
                };
                ftl.write(Lba(lba), &b)
                    .unwrap_or_else(|e| panic!("op {op}: write: {e}"));
                disk[lba as usize] = v;
            }
            70..=74 => {
                let n = (rng.below(20) as u32 + 1).min(logical - lba);
                ftl.trim(Lba(lba), n).unwrap();
                for d in &mut disk[lba as usize..(lba + n) as usize] {
                    *d = 0;
                }
            }
            75..=79 => ftl.flush().unwrap(),
            80..=84 => {
                ftl.idle().unwrap();
            }
            _ => {
                ftl.read(Lba(lba), &mut buf)
                    .unwrap_or_else(|e| panic!("op {op}: read {lba}: {e}"));
                assert_eq!(
                    version_of(lba, &buf),
                    Some(disk[lba as usize]),
                    "op {op} lba {lba}"
                );
            }
        }
        if op % 5000 == 4999 {
            coded += ftl.stats().blocks_coded;
            gc += ftl.stats().gc_blocks;
            ftl.flush().unwrap();
            let rep = ftl.check().unwrap();
            assert_eq!(rep.problems(), 0, "op {op}: {rep:?}");
            let nand = ftl.into_nand();
            mem = OwnedFtlMemory::new(&geo, &cfg);
            ftl = Ftl::mount(nand, mem.lend()).expect("mount");
            set_delta(&mut ftl, delta);
            ftl.set_compress(true);
        }
    }
    for lba in 0..logical {
        ftl.read(Lba(lba), &mut buf).unwrap();
        assert_eq!(
            version_of(lba, &buf),
            Some(disk[lba as usize]),
            "final lba {lba}"
        );
    }
    coded += ftl.stats().blocks_coded;
    gc += ftl.stats().gc_blocks;
    assert!(coded > ops as u64 / 3, "coded {coded}");
    assert!(gc > 10, "GC under pressure: {gc} blocks");
}

/// Overwrites (coded over coded, plain over coded, coded over plain), trims, flushes, idle GC
/// and remounts on a small, full device: every read is the last write, `check` stays clean.
#[test]
fn overwrite_trim_and_gc_of_coded_blocks() {
    run_mixed(small_geometry(4, 16, 1024), 1024, 30_000, 1, false);
    run_mixed(small_geometry(1, 64, 1024), 1024, 30_000, 2, false);
    run_mixed(small_geometry(4, 16, 1024), 1024, 20_000, 3, true);
}

/// Sparse updates of coded float blocks are kept as deltas over the coded version (its record
/// in a packed slot is the base), through rebuilds, compactions, GC moving the records, idle
/// restores and remounts: every read is the last write, `check` stays clean.
#[test]
fn coded_blocks_are_delta_bases_under_gc() {
    run_mixed_with(
        small_geometry(4, 16, 1024),
        1024,
        30_000,
        4,
        true,
        content_float_update,
    );
    run_mixed_with(
        small_geometry(1, 64, 1024),
        1024,
        20_000,
        5,
        true,
        content_float_update,
    );
}

/// A checkpoint-style rewrite of coded weights: each block changed in ~3% of its elements
/// costs a delta of a few hundred bytes instead of a coded record of ~2,800, and reads back
/// exact, also after each of two stops following a flush (the delta log, not a checkpoint,
/// carries the deltas).
#[test]
fn sparse_updates_of_coded_blocks_become_deltas() {
    let logical = 1024;
    let blocks = 512u32;
    let geo = tlc(logical);
    let cfg = config(logical, 64);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
    set_delta(&mut ftl, true);
    ftl.set_compress(true);
    let write_all = |ftl: &mut Ftl<'_, SimNand>, v: u32| {
        for lba in 0..blocks {
            ftl.write(Lba(lba), &content_float_update(lba, v)).unwrap();
        }
        ftl.flush().unwrap();
    };
    write_all(&mut ftl, 1);
    let coded = ftl.stats().blocks_coded;
    assert!(coded >= blocks as u64 * 97 / 100, "coded {coded}");
    let before = *ftl.stats();
    write_all(&mut ftl, 2);
    let after = *ftl.stats();
    let inlined = after.deltas_inlined - before.deltas_inlined;
    // A group's inline area and its 16 compact pages hold about half of its 256 blocks' deltas
    // of this size; the rest are coded whole again.
    assert!(
        inlined >= blocks as u64 * 4 / 10,
        "deltas {inlined}: {after:?}"
    );
    let programmed = after.nand_program_bytes() - before.nand_program_bytes();
    let host = (blocks as u64) * BLOCK as u64;
    eprintln!(
        "update: {inlined} deltas ({} bytes), NAND/host {:.3}",
        after.delta_inline_bytes - before.delta_inline_bytes,
        programmed as f64 / host as f64
    );
    // Coded whole, the update would cost about 0.7 of the host bytes.
    assert!(
        programmed * 2 < host,
        "update programmed {programmed} NAND bytes for {host} host bytes"
    );
    let want: Vec<[u8; BLOCK]> = (0..blocks).map(|l| content_float_update(l, 2)).collect();
    read_all(&mut ftl, &want, "after the update");
    assert_eq!(ftl.check().unwrap().problems(), 0);
    let nand = ftl.into_nand();
    mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("mount");
    read_all(&mut ftl, &want, "after a stop");
    set_delta(&mut ftl, true);
    ftl.set_compress(true);
    write_all(&mut ftl, 3);
    let want: Vec<[u8; BLOCK]> = (0..blocks).map(|l| content_float_update(l, 3)).collect();
    let nand = ftl.into_nand();
    mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::mount(nand, mem.lend()).expect("second mount");
    read_all(&mut ftl, &want, "after the second stop");
    assert_eq!(ftl.check().unwrap().problems(), 0);
}

/// A flipped bit in a packed slot on flash: reads of every LBA coded there fail as corrupted,
/// naming the slot; the others still read; nothing panics.
#[test]
fn damaged_packed_slot_is_reported_never_returned() {
    use nandbox_core::nand::PageId;
    use nandbox_core::Error;
    let logical = 512;
    let geo = tlc(logical);
    let cfg = config(logical, 8);
    let mut mem = OwnedFtlMemory::new(&geo, &cfg);
    let mut ftl = Ftl::format(SimNand::new_ram(geo), cfg, mem.lend()).expect("format");
    ftl.set_compress(true);
    for lba in 0..64 {
        ftl.write(Lba(lba), &content_float(lba, 3)).unwrap();
    }
    ftl.flush().unwrap();
    let p = ftl.locate(Lba(20)).unwrap().unwrap();
    let spp = geo.slots_per_page();
    ftl.nand_mut()
        .flip_bit(PageId(p.0 / spp), (p.0 % spp) as usize * BLOCK + 700, 2);
    let mut buf = [0u8; BLOCK];
    let mut failed = 0;
    for lba in 0..64 {
        match ftl.read(Lba(lba), &mut buf) {
            Ok(()) => assert_eq!(version_of(lba, &buf), Some(3), "LBA {lba}"),
            Err(Error::Corrupted(c)) => {
                failed += 1;
                assert!(!c.what.is_empty());
            }
            Err(e) => panic!("LBA {lba}: {e}"),
        }
    }
    assert!(failed >= 1, "the damaged slot's blocks are reported");
    assert!(failed < 8, "only the damaged slot's blocks: {failed}");
    assert!(ftl.check().unwrap().problems() > 0);
}
