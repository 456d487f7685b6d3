//! Mounting untrusted flash contents: `Ftl::probe` and `Ftl::mount` must return `Ok` or `Err`,
//! never panic or hang, and a mounted FTL must survive `check` and a read of every LBA.
//!
//! The first input byte picks the source of the flash contents:
//! - even: a real image (formatted, used, GC'd, with an unflushed tail; built once) mutated by
//!   the rest of the input, 5 bytes per edit: kind, page (u16), offset (u16). Kinds: flip a bit,
//!   erase the page (a hole), truncate the block from this page on (a torn block / truncated
//!   file), smear 8 bytes with a constant.
//! - odd: raw pages straight from the input (data then spare, 4,160 bytes a page), the rest
//!   erased: random bytes and whole dumps of real images (see the seed generator).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nandbox_core::ftl::{Ftl, Lba};
use nandbox_core::nand::SLOT_BYTES;
use nandbox_fuzz::{
    config, geometry, load, raw_page_len, real_image, version_of, Lent, PageDump, LOGICAL,
};
use nandbox_sim::OwnedFtlMemory;

fn real() -> &'static PageDump {
    static REAL: OnceLock<PageDump> = OnceLock::new();
    REAL.get_or_init(real_image)
}

fn mutate(edits: &[u8]) -> PageDump {
    let mut pages = real().clone();
    let ppb = geometry().pages_per_block as usize;
    let raw = raw_page_len();
    for e in edits.chunks_exact(5) {
        let kind = e[0];
        let page = u16::from_le_bytes([e[1], e[2]]) as usize % pages.len();
        let off = u16::from_le_bytes([e[3], e[4]]) as usize % raw;
        match kind % 4 {
            0 => {
                if let Some(p) = pages[page].as_mut() {
                    p[off] ^= 1 << (kind >> 5);
                }
            }
            1 => pages[page] = None,
            2 => {
                let end = (page / ppb + 1) * ppb;
                for p in &mut pages[page..end] {
                    *p = None;
                }
            }
            _ => {
                if let Some(p) = pages[page].as_mut() {
                    let end = (off + 8).min(raw);
                    p[off..end].fill(kind);
                }
            }
        }
    }
    pages
}

fn from_raw(bytes: &[u8]) -> PageDump {
    let g = geometry();
    let total = (g.blocks * g.pages_per_block) as usize;
    let mut pages: PageDump = vec![None; total];
    for (slot, chunk) in pages.iter_mut().zip(bytes.chunks(raw_page_len())) {
        let mut p = chunk.to_vec();
        p.resize(raw_page_len(), 0xFF);
        if p.iter().any(|&b| b != 0xFF) {
            *slot = Some(p);
        }
    }
    pages
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let pages = if mode & 1 == 0 {
        mutate(rest)
    } else {
        from_raw(rest)
    };
    let mut nand = load(&pages);
    let g = geometry();
    let mut scratch = vec![0u8; raw_page_len()];
    // The probe reads a configuration off flash; a host sizes memory from it, so anything it
    // returns must be one the geometry can hold.
    if let Ok(c) = Ftl::probe(&mut Lent(&mut nand), &mut scratch) {
        assert!(
            c.check(&g).is_ok(),
            "probe returned a configuration the geometry cannot hold: {c:?}"
        );
    }
    // Memory as a firmware would have it: fixed, for the configuration it was built for.
    let mut mem = OwnedFtlMemory::new(&g, &config());
    let pristine = mode & 1 == 0 && rest.len() < 5;
    let mut ftl = match Ftl::mount(Lent(&mut nand), mem.lend()) {
        Ok(f) => f,
        // The undamaged image must mount: otherwise every mutation only tests the error path.
        Err(e) => {
            assert!(!pristine, "the pristine image does not mount: {e:?}");
            return;
        }
    };
    if pristine {
        let mut buf = [0u8; SLOT_BYTES];
        for lba in 0..LOGICAL {
            ftl.read(Lba(lba), &mut buf).expect("pristine read");
            assert!(
                version_of(lba, &buf).is_some(),
                "pristine LBA {lba} reads garbage"
            );
        }
        assert_eq!(ftl.check().map(|r| r.problems()).ok(), Some(0));
    }
    let _ = ftl.check();
    let mut buf = [0u8; SLOT_BYTES];
    for lba in 0..ftl.logical_blocks().min(LOGICAL) {
        let _ = ftl.read(Lba(lba), &mut buf);
    }
    // A mounted device must also take writes and a flush without panicking.
    let _ = ftl.write(Lba(0), &buf);
    let _ = ftl.flush();
});
