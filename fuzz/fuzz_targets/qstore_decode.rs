//! QStore bytes from untrusted files: the file header and directory, INT8 records alone, and
//! high-precision records decoded against their INT8 record. Every path must return `Ok` or
//! `Err`, never panic. Half the inputs get their CRCs recomputed first, so the fuzzer reaches the
//! length and stream checks behind the CRC instead of stopping at it every time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nandbox_core::codec::qstore::chunk;
use nandbox_core::codec::qstore::format::{DirEntry, FileHeader, HEADER_LEN};
use nandbox_core::codec::qstore::{HalfKind, Workspace, CHUNK_WEIGHTS, MAX_CHUNK_ROWS};

/// Rewrites the CRC at `crc` as the CRC32 of every other byte of `rec`.
fn fix_crc(rec: &mut [u8], crc: core::ops::Range<usize>) {
    if rec.len() < crc.end {
        return;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[..crc.start]);
    h.update(&rec[crc.end..]);
    let v = h.finalize();
    rec[crc].copy_from_slice(&v.to_le_bytes());
}

/// Fixes an INT8 record's CRC (header bytes 32..36, over the header and payload).
fn fix_int8(rec: &mut [u8]) {
    if let Ok(len) = chunk::int8_record_len(rec) {
        if let Some(r) = rec.get_mut(..len) {
            fix_crc(r, 32..36);
        }
    }
}

/// Fixes a high-precision record's CRC (header bytes 24..28).
fn fix_hp(rec: &mut [u8]) {
    if let Ok(len) = chunk::hp_record_len(rec) {
        if let Some(r) = rec.get_mut(..len) {
            fix_crc(r, 24..28);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 11 {
        return;
    }
    let selector = data[0];
    let cols = u32::from_le_bytes(data[1..5].try_into().unwrap());
    let col0 = u32::from_le_bytes(data[5..9].try_into().unwrap());
    let split = u16::from_le_bytes(data[9..11].try_into().unwrap()) as usize;
    let mut rest = data[11..].to_vec();
    let fix = selector & 0x80 != 0;
    let kind = if selector & 0x40 != 0 {
        HalfKind::Fp16
    } else {
        HalfKind::Bf16
    };
    let mut ws = Box::new(Workspace::new());
    match selector % 3 {
        0 => {
            // File header and directory.
            if fix && rest.len() >= HEADER_LEN {
                let crc = crc32fast::hash(&rest[..HEADER_LEN - 4]);
                rest[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
            }
            let Ok(h) = FileHeader::new_checked(&rest, rest.len() as u64) else {
                return;
            };
            let dir_end = HEADER_LEN as u64 + h.dir_len;
            let dir = &rest[HEADER_LEN..dir_end as usize];
            let mut at = 0;
            for _ in 0..h.tensors.min(4096) {
                let Ok((e, len)) = DirEntry::parse(&dir[at..]) else {
                    return;
                };
                assert!(len > 0 && at + len <= dir.len(), "entry length in range");
                let _ = e.check_ranges(h.int8_len, h.hp_len);
                at += len;
            }
        }
        1 => {
            if fix {
                fix_int8(&mut rest);
            }
            let mut q = vec![0i8; CHUNK_WEIGHTS];
            let mut scales = vec![0f32; MAX_CHUNK_ROWS + 1];
            if let Ok((n, rows)) =
                chunk::decode_int8(&rest, cols, col0, &mut q, &mut scales, &mut ws)
            {
                assert!(n <= CHUNK_WEIGHTS && rows <= MAX_CHUNK_ROWS + 1);
            }
        }
        _ => {
            let split = split.min(rest.len());
            let (i8rec, hprec) = rest.split_at_mut(split);
            if fix {
                fix_int8(i8rec);
                fix_hp(hprec);
            }
            let mut out = vec![0u16; CHUNK_WEIGHTS];
            if let Ok(n) = chunk::decode_hp(kind, cols, col0, i8rec, hprec, &mut ws, &mut out) {
                assert!(n <= CHUNK_WEIGHTS);
            }
        }
    }
});
