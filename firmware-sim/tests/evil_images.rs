//! Evil images (after littlefs's `test_evil`): a real image, written through the firmware and
//! shut down cleanly, is damaged in one place at a time — truncated, a bit flipped in the file
//! header, a block-state record, the newest checkpoint, both checkpoint packs, a node page, a data
//! page, a spare record — and then opened again.
//!
//! What must hold (DESIGN.md, "Guarantees"): opening either recovers (every LBA reads its flushed
//! content, or an error for an LBA whose only copy is damaged) or is refused with an error that
//! names the damage. Never a panic, never another block's data or garbage returned as data.
//!
//! Opening is done twice: in-process through `Ftl::probe` + `Ftl::mount` on the image (so a panic
//! fails the test with its backtrace) and through `Firmware::start` (what `serve --image` runs),
//! whose error text is what a user sees.

mod ftl_support;

use std::path::{Path, PathBuf};

use ftl_support::{content, version_of, Rng, BLOCK};
use nandbox_core::format::{SlotKind, SpareRecord};
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::{Nand, PageId};
use nandbox_sim::firmware::{Firmware, FirmwareConfig};
use nandbox_sim::profile::SLC;
use nandbox_sim::{OwnedFtlMemory, SimNand};

/// Logical blocks of the test device (4 MiB).
const LOGICAL: u32 = 1024;

/// A scratch directory removed with its contents when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("nandbox-evil-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create scratch directory");
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A used image and the version each LBA holds in it (0 = never written / trimmed).
struct Pristine {
    dir: Scratch,
    versions: Vec<u32>,
}

impl Pristine {
    fn path(&self) -> PathBuf {
        self.dir.0.join("pristine.img")
    }

    /// A fresh copy of the pristine image to damage.
    fn copy(&self, name: &str) -> PathBuf {
        let to = self.dir.0.join(name);
        std::fs::copy(self.path(), &to).expect("copy image");
        to
    }
}

fn fw_config(image: &Path) -> FirmwareConfig {
    let mut c = FirmwareConfig::new(SLC, LOGICAL as u64 * BLOCK as u64);
    c.image = Some(image.to_path_buf());
    c.node_cache_slots = 8;
    // No idle-time GC: the image's layout then depends only on the workload, so each damage
    // case below hits the same pages on every run instead of whatever timing produced.
    c.background = false;
    c
}

/// Writes a used image: every LBA written, a skewed set overwritten many times (so GC ran and
/// several checkpoints exist), some trimmed, everything flushed, clean shutdown.
fn pristine(test: &str) -> Pristine {
    let dir = Scratch::new(test);
    let path = dir.0.join("pristine.img");
    let fw = Firmware::start(fw_config(&path)).expect("create image");
    let mut versions = vec![0u32; LOGICAL as usize];
    let mut rng = Rng::new(9);
    let mut v = 1;
    let mut write = |fw: &Firmware, lba: u32, versions: &mut Vec<u32>| {
        v += 1;
        fw.write(lba as u64 * BLOCK as u64, content(lba, v).to_vec(), false)
            .expect("write");
        versions[lba as usize] = v;
    };
    for lba in 0..LOGICAL {
        write(&fw, lba, &mut versions);
    }
    for i in 0..3000 {
        let lba = rng.below(LOGICAL as u64 / 16) as u32;
        write(&fw, lba, &mut versions);
        if i % 500 == 499 {
            fw.flush().expect("flush");
        }
    }
    fw.trim(900 * BLOCK as u64, 10 * BLOCK as u64, false)
        .expect("trim");
    versions[900..910].fill(0);
    fw.flush().expect("flush");
    fw.shutdown().expect("shutdown");
    Pristine { dir, versions }
}

/// How an open went.
#[derive(Debug)]
enum Outcome {
    /// Mounted; `unreadable` LBAs returned an error, all others their pristine content.
    Recovered { unreadable: Vec<u32> },
    /// Refused with this message.
    Refused(String),
}

/// Opens `image` in-process (probe + mount + read every LBA), checking every LBA that reads
/// returns its pristine version. Panics in the FTL fail the test here, with a backtrace.
fn mount_in_process(image: &Path, p: &Pristine) -> Outcome {
    let mut nand = match SimNand::open_image_read_only(image) {
        Ok(n) => n,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let g = nand.geometry();
    let mut scratch = vec![0u8; (g.page_bytes + g.spare_bytes) as usize];
    let cfg = match Ftl::probe(&mut nand, &mut scratch) {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    assert!(
        cfg.check(&g).is_ok(),
        "{}: probe returned a configuration the geometry cannot hold: {cfg:?}",
        image.display()
    );
    let mut mem = OwnedFtlMemory::new(&g, &cfg);
    let mut ftl = match Ftl::mount(nand, mem.lend()) {
        Ok(f) => f,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let mut unreadable = Vec::new();
    let mut buf = [0u8; BLOCK];
    for lba in 0..LOGICAL {
        match ftl.read(Lba(lba), &mut buf) {
            Ok(()) => {
                let got = version_of(lba, &buf);
                assert_eq!(
                    got,
                    Some(p.versions[lba as usize]),
                    "{}: LBA {lba} reads {got:?}, flushed version {}",
                    image.display(),
                    p.versions[lba as usize]
                );
            }
            Err(_) => unreadable.push(lba),
        }
    }
    Outcome::Recovered { unreadable }
}

/// Opens `image` as `serve --image` does; on success reads every LBA through the firmware.
fn start_firmware(image: &Path, p: &Pristine) -> Outcome {
    let fw = match Firmware::start(fw_config(image)) {
        Ok(fw) => fw,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !msg.contains("died"),
                "{}: the firmware thread panicked while mounting: {msg}",
                image.display()
            );
            return Outcome::Refused(msg);
        }
    };
    let mut unreadable = Vec::new();
    for lba in 0..LOGICAL {
        match fw.read(lba as u64 * BLOCK as u64, BLOCK) {
            Ok(buf) => assert_eq!(
                version_of(lba, buf.as_slice().try_into().unwrap()),
                Some(p.versions[lba as usize]),
                "{}: LBA {lba} through the firmware",
                image.display()
            ),
            Err(_) => unreadable.push(lba),
        }
    }
    let _ = fw.shutdown();
    Outcome::Recovered { unreadable }
}

/// Pages of the image by what their first slot's spare record says.
struct PageMap {
    /// (page, sequence) of every checkpoint page.
    checkpoints: Vec<(u32, u64)>,
    /// (page, sequence) of the first page of every checkpoint pack.
    pack_heads: Vec<(u32, u64)>,
    nodes: Vec<u32>,
    /// (page, LBA) of every data page.
    data: Vec<(u32, u32)>,
}

fn page_map(image: &Path) -> PageMap {
    let mut nand = SimNand::open_image_read_only(image).unwrap();
    let g = nand.geometry();
    let mut spare = vec![0u8; g.spare_bytes as usize];
    let mut m = PageMap {
        checkpoints: vec![],
        pack_heads: vec![],
        nodes: vec![],
        data: vec![],
    };
    for p in 0..g.blocks * g.pages_per_block {
        nand.read_spare(PageId(p), &mut spare).unwrap();
        if let Ok(r) = SpareRecord::parse(&spare) {
            match r.kind {
                SlotKind::Checkpoint => {
                    m.checkpoints.push((p, r.seq));
                    if r.owner == 0 {
                        m.pack_heads.push((p, r.seq));
                    }
                }
                SlotKind::Node => m.nodes.push(p),
                SlotKind::Data => m.data.push((p, r.owner)),
                _ => {}
            }
        }
    }
    m
}

fn flip(image: &Path, page: u32, byte: usize, bit: u8) {
    let mut nand = SimNand::open_image(image).unwrap();
    nand.flip_bit(PageId(page), byte, bit);
    nand.sync().unwrap();
}

fn flip_spare(image: &Path, page: u32, byte: usize, bit: u8) {
    let mut nand = SimNand::open_image(image).unwrap();
    nand.flip_spare_bit(PageId(page), byte, bit);
    nand.sync().unwrap();
}

fn flip_file(image: &Path, at: u64, bit: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, at).unwrap();
}

/// Both openings agree, and the outcome is recovery or a refusal whose text contains one of
/// `names`.
fn open_both(image: &Path, p: &Pristine, names: &[&str]) -> Outcome {
    let a = mount_in_process(image, p);
    let b = start_firmware(image, p);
    for o in [&a, &b] {
        if let Outcome::Refused(msg) = o {
            let lower = msg.to_lowercase();
            assert!(
                names.iter().any(|n| lower.contains(n)),
                "{}: refusal `{msg}` does not name the damage (expected one of {names:?})",
                image.display()
            );
        }
    }
    match (&a, &b) {
        (Outcome::Refused(_), Outcome::Refused(_)) => {}
        (Outcome::Recovered { unreadable: x }, Outcome::Recovered { unreadable: y }) => {
            assert_eq!(
                x,
                y,
                "{}: in-process and firmware disagree",
                image.display()
            )
        }
        _ => panic!("{}: in-process {a:?} but firmware {b:?}", image.display()),
    }
    b
}

#[test]
fn truncated_images_are_refused_naming_the_truncation() {
    let p = pristine("truncated_images_are_ref");
    let full = std::fs::metadata(p.path()).unwrap().len();
    let pages_at = 4096 + 4096; // header, then the block states (one 4 KiB page here)
    for len in [
        0,
        7,
        4095,
        4096,
        4096 + 100,
        pages_at,
        pages_at + 5000,
        full / 2,
        full - 1,
    ] {
        let img = p.copy(&format!("trunc-{len}.img"));
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(len)
            .unwrap();
        // (Truncated to nothing, the file is named as empty.)
        let o = open_both(
            &img,
            &p,
            &["truncated", "magic", "header", "block-state", "empty"],
        );
        println!("truncated to {len} bytes: {o:?}");
        assert!(
            matches!(o, Outcome::Refused(_)),
            "an image truncated to {len} of {full} bytes was accepted"
        );
    }
}

#[test]
fn header_and_block_state_flips_are_refused() {
    let p = pristine("header_and_block_state_f");
    // Magic, geometry and CRC bytes of the header; then block-state records.
    for (i, at) in [
        0u64,
        13,
        25,
        29,
        4096 + 1,
        4096 + 16 * 3 + 5,
        4096 + 16 * 7 + 13,
    ]
    .into_iter()
    .enumerate()
    {
        let img = p.copy(&format!("hdr-{i}.img"));
        flip_file(&img, at, (i % 8) as u8);
        let o = open_both(&img, &p, &["header", "magic", "block-state", "block state"]);
        println!("header byte {at} flipped: {o:?}");
        assert!(
            matches!(o, Outcome::Refused(_)),
            "flip at byte {at} accepted"
        );
    }
}

#[test]
fn newest_checkpoint_damaged_falls_back_or_is_refused() {
    let p = pristine("newest_checkpoint_damage");
    let m = page_map(&p.path());
    let newest = m
        .checkpoints
        .iter()
        .map(|c| c.1)
        .max()
        .expect("a checkpoint");
    let pack: Vec<u32> = m
        .checkpoints
        .iter()
        .filter(|c| c.1 + 64 > newest)
        .map(|c| c.0)
        .collect();
    for (i, &page) in pack.iter().enumerate().take(4) {
        for (j, byte) in [3usize, 100, 4000].into_iter().enumerate() {
            let img = p.copy(&format!("cp-{i}-{j}.img"));
            flip(&img, page, byte, (j * 3 % 8) as u8);
            // The pack was completely written (sealed), so damage to it is rot: refused naming
            // the pack, never a silent fall back to the older one. A flip in the seal page
            // itself leaves the pack valid.
            let o = open_both(&img, &p, &["checkpoint pack at block"]);
            println!("checkpoint page {page} byte {byte} flipped: {o:?}");
            if let Outcome::Recovered { unreadable } = &o {
                assert!(
                    unreadable.is_empty(),
                    "a damaged checkpoint lost data although the other pack and the log hold it: \
                     {unreadable:?}"
                );
            }
        }
    }
}

#[test]
fn every_checkpoint_damaged_is_refused_naming_the_checkpoint() {
    let p = pristine("every_checkpoint_damaged");
    let m = page_map(&p.path());
    let img = p.copy("cp-all.img");
    for &(page, _) in &m.checkpoints {
        flip(&img, page, 17, 2);
    }
    let o = open_both(&img, &p, &["checkpoint"]);
    println!("every checkpoint page flipped: {o:?}");
    assert!(matches!(o, Outcome::Refused(_)));
}

#[test]
fn node_page_flips_recover_or_refuse_and_never_return_wrong_data() {
    let p = pristine("node_page_flips_recover_");
    let m = page_map(&p.path());
    assert!(!m.nodes.is_empty(), "the image has node pages");
    let mut rng = Rng::new(3);
    for i in 0..6 {
        let page = m.nodes[rng.below(m.nodes.len() as u64) as usize];
        let byte = rng.below(BLOCK as u64) as usize;
        let img = p.copy(&format!("node-{i}.img"));
        flip(&img, page, byte, (i % 8) as u8);
        let o = open_both(&img, &p, &["node", "corrupt", "checkpoint", "crc"]);
        println!("node page {page} byte {byte} flipped: {o:?}");
    }
}

#[test]
fn a_flipped_data_page_reads_as_an_error_never_as_data() {
    let p = pristine("a_flipped_data_page_read");
    let m = page_map(&p.path());
    // A live copy: the newest data page of an LBA that still holds data.
    let mut newest = std::collections::HashMap::new();
    for &(page, lba) in &m.data {
        newest.insert(lba, page);
    }
    let mut rng = Rng::new(5);
    let mut live: Vec<(u32, u32)> = newest
        .into_iter()
        .filter(|&(lba, _)| p.versions[lba as usize] != 0)
        .collect();
    live.sort();
    for i in 0..4 {
        let (lba, page) = live[rng.below(live.len() as u64) as usize];
        let img = p.copy(&format!("data-{i}.img"));
        flip(&img, page, 8 + rng.below(4000) as usize, 5);
        let o = open_both(&img, &p, &["corrupt", "crc", "data"]);
        println!("data page {page} (LBA {lba}) flipped: {o:?}");
        match o {
            Outcome::Recovered { unreadable } => assert!(
                unreadable.iter().all(|&u| u == lba),
                "only LBA {lba} may be unreadable, not {unreadable:?}"
            ),
            Outcome::Refused(_) => {}
        }
    }
}

#[test]
fn one_spare_copy_damaged_is_harmless_both_copies_are_caught() {
    let p = pristine("one_spare_copy_damaged_i");
    let m = page_map(&p.path());
    let (page, lba) = *m.data.last().expect("data pages");
    // One copy: the other still names the owner; nothing is lost.
    let img = p.copy("spare-one.img");
    flip_spare(&img, page, 9, 1);
    let o = open_both(&img, &p, &["spare", "corrupt"]);
    println!("spare copy 1 of page {page} (LBA {lba}) flipped: {o:?}");
    // Both copies: the slot's owner is unknown; recovery or refusal, never wrong data.
    let img = p.copy("spare-both.img");
    flip_spare(&img, page, 9, 1);
    flip_spare(&img, page, 32 + 9, 1);
    let o = open_both(&img, &p, &["spare", "corrupt", "record"]);
    println!("both spare copies of page {page} flipped: {o:?}");
}

#[test]
fn random_flips_anywhere_never_panic_or_return_wrong_data() {
    let p = pristine("random_flips_anywhere_ne");
    let full = std::fs::metadata(p.path()).unwrap().len();
    let mut rng = Rng::new(11);
    for i in 0..12 {
        let img = p.copy(&format!("rand-{i}.img"));
        for _ in 0..(1 + i % 6) {
            let at = 8192 + rng.below(full - 8192);
            flip_file(&img, at, rng.below(8) as u8);
        }
        // Any name is fine here; what matters is no panic and no wrong data.
        let a = mount_in_process(&img, &p);
        let b = start_firmware(&img, &p);
        println!("random flips #{i}: in-process {a:?}, firmware {b:?}");
    }
}

/// Rewrites the newest checkpoint pack's header with `edit` and makes every CRC on the way
/// consistent again (header CRC, the slot's data CRC in both spare copies, each copy's CRC): a
/// crafted image, not a damaged one, which only the fields' own range checks can stop.
fn forge_newest_checkpoint(image: &Path, edit: impl Fn(&mut [u8])) {
    let m = page_map(image);
    let &(page, _) = m
        .pack_heads
        .iter()
        .max_by_key(|h| h.1)
        .expect("a checkpoint pack");
    let mut nand = SimNand::open_image(image).unwrap();
    let g = nand.geometry();
    let mut data = vec![0u8; g.page_bytes as usize];
    let mut spare = vec![0u8; g.spare_bytes as usize];
    nand.read(PageId(page), &mut data, &mut spare).unwrap();
    let (old_data, old_spare) = (data.clone(), spare.clone());
    edit(&mut data);
    let crc = crc32fast::hash(&data[..124]);
    data[124..128].copy_from_slice(&crc.to_le_bytes());
    let data_crc = crc32fast::hash(&data[..BLOCK]);
    for copy in [0, 32] {
        spare[copy + 20..copy + 24].copy_from_slice(&data_crc.to_le_bytes());
        let c = crc32fast::hash(&spare[copy..copy + 28]);
        spare[copy + 28..copy + 32].copy_from_slice(&c.to_le_bytes());
    }
    for (i, (a, b)) in old_data.iter().zip(&data).enumerate() {
        for bit in 0..8 {
            if (a ^ b) >> bit & 1 == 1 {
                nand.flip_bit(PageId(page), i, bit);
            }
        }
    }
    for (i, (a, b)) in old_spare.iter().zip(&spare).enumerate() {
        for bit in 0..8 {
            if (a ^ b) >> bit & 1 == 1 {
                nand.flip_spare_bit(PageId(page), i, bit);
            }
        }
    }
    nand.sync().unwrap();
}

/// `serve --image` and `nandbox check` allocate the FTL's RAM from what `Ftl::probe` reads off
/// flash, before `mount` runs: a crafted image asking for 2^32 cache slots would abort the
/// process on a 16 TiB allocation. `probe` checks the configuration (commit 280ef44); this pins it
/// with CRC-consistent forgeries, which random damage never produces.
#[test]
fn a_forged_checkpoint_asking_for_huge_memory_is_refused_before_allocating() {
    let p = pristine("forged_checkpoint");
    for (name, at, value) in [
        ("cache", 36usize, u32::MAX),
        ("cache-zero", 36, 0),
        ("logical", 32, u32::MAX),
    ] {
        let img = p.copy(&format!("forged-{name}.img"));
        forge_newest_checkpoint(&img, |d| {
            d[at..at + 4].copy_from_slice(&value.to_le_bytes())
        });
        // The forged pack is refused; the older pack may still mount the device.
        let o = open_both(
            &img,
            &p,
            &["checkpoint", "config", "cache", "capacity", "blocks"],
        );
        println!("forged checkpoint ({name} = {value}): {o:?}");
    }
}

/// One flipped bit in a live node page (the copy the NAT points to) costs that node's group of
/// 256 LBAs, not the device: the image mounts, every other LBA reads its flushed content, and
/// each LBA of the group fails with an error naming the node page (group, LBAs, slot address),
/// in-process and through the firmware — not a refusal of the whole image over "data CRC
/// mismatch (at N)".
#[test]
fn a_flipped_live_node_page_costs_its_group_and_is_named() {
    let p = pristine("a_flipped_live_node_page");
    // Where each group's live node page is: mount a read-only view and ask the NAT. A page
    // counts only if the file holds that node there (the mount's own checkpoint could have
    // moved it in the overlay).
    let nodes: Vec<(u32, u32)> = {
        let mut nand = SimNand::open_image_read_only(&p.path()).unwrap();
        let g = nand.geometry();
        let mut scratch = vec![0u8; (g.page_bytes + g.spare_bytes) as usize];
        let cfg = Ftl::probe(&mut nand, &mut scratch).unwrap();
        let mut mem = OwnedFtlMemory::new(&g, &cfg);
        let ftl = Ftl::mount(nand, mem.lend()).unwrap();
        let locs: Vec<(u32, u32)> = (0..LOGICAL / 256)
            .filter_map(|n| ftl.node_location(n).map(|s| (n, s.0)))
            .collect();
        let mut file = SimNand::open_image_read_only(&p.path()).unwrap();
        let mut spare = vec![0u8; g.spare_bytes as usize];
        locs.into_iter()
            .filter(|&(n, slot)| {
                file.read_spare(PageId(slot), &mut spare).unwrap();
                matches!(SpareRecord::parse(&spare),
                    Ok(r) if r.kind == SlotKind::Node && r.owner == n)
            })
            .collect()
    };
    assert!(nodes.len() >= 2, "live node pages found: {nodes:?}");
    let mut rng = Rng::new(21);
    for (i, &(node, slot)) in nodes.iter().enumerate() {
        let img = p.copy(&format!("live-node-{i}.img"));
        // SLC: one slot per page, so the slot address is the page.
        let byte = rng.below(BLOCK as u64) as usize;
        flip(&img, slot, byte, (i % 8) as u8);
        let o = open_both(&img, &p, &["node page of group"]);
        let group: Vec<u32> = (node * 256..(node + 1) * 256).collect();
        if let Outcome::Recovered { unreadable } = &o {
            println!(
                "live node page of group {node} (slot {slot}) byte {byte} flipped: mounted, \
                 {} LBAs unreadable",
                unreadable.len()
            );
        }
        match o {
            Outcome::Recovered { unreadable } => assert_eq!(
                unreadable, group,
                "exactly group {node}'s LBAs are lost, every other LBA reads"
            ),
            Outcome::Refused(msg) => panic!("one damaged node page refused the image: {msg}"),
        }
        // What a user sees for such an LBA, through the firmware (`serve --image`).
        let fw = Firmware::start(fw_config(&img)).expect("start over a damaged node page");
        let err = fw
            .read(group[7] as u64 * BLOCK as u64, BLOCK)
            .expect_err("an LBA of the damaged group");
        let msg = err.to_string();
        let name = format!(
            "node page of group {node} (LBAs {}..={}) at slot {slot}",
            group[0], group[255]
        );
        assert!(msg.contains(&name), "`{msg}` does not name {name}");
        let _ = fw.shutdown();
    }
}
