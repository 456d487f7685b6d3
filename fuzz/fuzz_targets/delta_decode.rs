//! The delta engine's on-flash bytes from untrusted input: XOR delta runs, the inline delta area
//! of a node page, and compact pages. Parsing and applying must return `Ok` or `Err`, never panic
//! or index out of bounds; what the encoders write must parse back to what they were given.
//!
//! Input: byte 0 picks the path, the rest is the material.
//! - 0: `xor::apply` of the rest onto a base block (runs, or byte planes when the rest starts
//!   with the planes tag); then `encode(new, base)` and `planes::encode_best(new, base)` of two
//!   blocks stretched from the rest must `apply` back to `new`.
//! - 1: the rest (padded to 4 KiB) as a node page image whose inline area is the first two bytes
//!   long: every entry must lie inside the area, and applying each must not panic.
//! - 2: the rest as a compact page (its CRC recomputed when bit 6 of byte 0 is set, so parsing
//!   goes past it; a sound page's moved flags cleared must parse again with none); with bit 7
//!   set, a compact page built from deltas cut out of the rest must parse back entry for entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nandbox_core::delta::{compact, inline, planes, xor};
use nandbox_core::nand::SLOT_BYTES;

fn stretch(bytes: &[u8], salt: u8) -> Vec<u8> {
    (0..SLOT_BYTES)
        .map(|i| {
            if bytes.is_empty() {
                salt
            } else {
                // Mostly equal blocks with sparse differences, like real overwrites.
                let b = bytes[i % bytes.len()];
                if salt != 0 && (i * 31 + b as usize).is_multiple_of(97) {
                    b ^ salt
                } else {
                    b
                }
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let mut block = stretch(rest, 0);
            let _ = xor::apply(&mut block, rest);
            let base = stretch(rest, 0);
            let new = stretch(rest, mode | 1);
            let mut out = vec![0u8; SLOT_BYTES + 64];
            if let Ok(n) = xor::encode(&new, &base, &mut out) {
                let mut b = base.clone();
                xor::apply(&mut b, &out[..n]).expect("applying a fresh encoding");
                assert!(b == new, "delta round trip");
            }
            let (mut best, mut scratch) = (vec![0u8; 1012], vec![0u8; 1012]);
            if let Ok(n) = planes::encode_best(&new, &base, &mut best, &mut scratch) {
                let mut b = base.clone();
                xor::apply(&mut b, &best[..n]).expect("applying a fresh best encoding");
                assert!(b == new, "best delta round trip");
            }
        }
        1 => {
            let mut img = rest.to_vec();
            img.resize(SLOT_BYTES, 0);
            let len = u16::from_le_bytes([img[0], img[1]]) as usize;
            for e in inline::entries(&img, len).take(4096) {
                let Ok(e) = e else { break };
                assert!(
                    e.data + e.len <= e.end && e.end <= SLOT_BYTES,
                    "entry inside the page"
                );
                let mut block = vec![0u8; SLOT_BYTES];
                let _ = xor::apply(&mut block, &img[e.data..e.data + e.len]);
            }
            let _ = inline::find(&img, len, 3);
            let _ = inline::count(&img, len);
        }
        _ => {
            let mut page = rest.to_vec();
            page.resize(SLOT_BYTES, 0);
            if mode & 0x80 != 0 {
                let node = u32::from_le_bytes([page[8], page[9], page[10], page[11]]);
                let mut built = vec![0u8; SLOT_BYTES];
                let mut b = compact::Builder::new(&mut built, node, (mode >> 2) & 15);
                for chunk in rest.chunks(37) {
                    let off = chunk.first().copied().unwrap_or(0) as u16;
                    if !b.add(&mut built, off, chunk.len() % 2 == 0, 1, 2, chunk) {
                        break;
                    }
                }
                let count = b.count();
                b.finish(&mut built);
                let v = compact::CompactView::new_checked(&built, node)
                    .expect("a page the builder wrote parses");
                let entries: Vec<_> = v.entries().collect();
                assert_eq!(entries.len(), count as usize);
                for (e, chunk) in entries.iter().zip(rest.chunks(37)) {
                    let e = e.expect("a built entry parses");
                    assert_eq!(e.delta, chunk);
                }
            }
            if mode & 0x40 != 0 {
                // Make the page's own CRC (bytes 28..32, over the page with them zeroed) right,
                // so the fuzzer reaches the count, length and entry checks behind it.
                page[28..32].fill(0);
                let crc = crc32fast::hash(&page);
                page[28..32].copy_from_slice(&crc.to_le_bytes());
            }
            let node = u32::from_le_bytes([page[8], page[9], page[10], page[11]]);
            if let Ok(v) = compact::CompactView::new_checked(&page, node) {
                for e in v.entries().take(4096) {
                    let Ok(e) = e else { break };
                    let mut block = vec![0u8; SLOT_BYTES];
                    let _ = xor::apply(&mut block, e.delta);
                }
                let _ = v.find(1);
                let _ = v.index();
            }
            let mut copy = page.clone();
            if compact::clear_moved(&mut copy, node).is_some() {
                let v = compact::CompactView::new_checked(&copy, node)
                    .expect("a cleared sound page parses");
                assert!(v.entries().all(|e| !e.expect("entry").moved));
            }
        }
    }
});
