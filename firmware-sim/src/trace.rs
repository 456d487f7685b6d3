//! Block traces: every request the firmware ran, in the order it ran them, with the data of
//! every write, so a workload recorded once (`nandbox serve --trace`) can be replayed through
//! other configurations (`nandbox replay`) and compared byte for byte of NAND traffic.
//!
//! The firmware thread runs requests one at a time, so its order is the order the FTL saw;
//! background steps (GC, delta maintenance at idle) are recorded where they ran, so a replay
//! with the same settings does the same work at the same points. Layout in docs/FORMAT.md
//! (section "Block trace").

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::Path;

/// First bytes of a trace file.
pub const MAGIC: [u8; 8] = *b"NBXTRACE";
/// The layout written.
pub const VERSION: u32 = 1;
/// Header bytes: magic, version, reserved, logical size.
pub const HEADER_BYTES: usize = 24;
/// Bytes of a record header (the data of a write follows it).
pub const RECORD_BYTES: usize = 24;
/// Longest write a trace may hold: the NBD payload limit.
pub const MAX_WRITE: u64 = 32 << 20;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const LOGICAL_BYTES: Range<usize> = 16..24;
    pub mod record {
        use core::ops::Range;
        pub const KIND: usize = 0;
        pub const FLAGS: usize = 1;
        /// CRC32 of the record (header with these bytes zero, then a write's data).
        pub const CRC: Range<usize> = 4..8;
        pub const OFFSET: Range<usize> = 8..16;
        pub const LEN: Range<usize> = 16..24;
    }
}

const KIND_READ: u8 = 1;
const KIND_WRITE: u8 = 2;
const KIND_TRIM: u8 = 3;
const KIND_ZEROES: u8 = 4;
const KIND_FLUSH: u8 = 5;
const KIND_IDLE: u8 = 6;
const FLAG_FUA: u8 = 1;
const FLAG_NO_HOLE: u8 = 2;

/// One recorded step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A read of `len` bytes (its data is not kept).
    Read { offset: u64, len: u64 },
    /// A write and its data.
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    /// A discard.
    Trim { offset: u64, len: u64, fua: bool },
    /// A write of zeroes.
    Zeroes {
        offset: u64,
        len: u64,
        fua: bool,
        no_hole: bool,
    },
    /// A flush.
    Flush,
    /// One step of background work.
    Idle,
}

/// Writes a trace as the firmware runs.
pub struct TraceWriter {
    out: BufWriter<File>,
}

impl TraceWriter {
    /// Creates (or truncates) `path` for a device of `logical_bytes`.
    pub fn create(path: &Path, logical_bytes: u64) -> std::io::Result<TraceWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let mut h = [0u8; HEADER_BYTES];
        h[field::MAGIC].copy_from_slice(&MAGIC);
        h[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        h[field::LOGICAL_BYTES].copy_from_slice(&logical_bytes.to_le_bytes());
        out.write_all(&h)?;
        Ok(TraceWriter { out })
    }

    /// Appends one record whose data (for a write) is `data`.
    pub fn record(
        &mut self,
        kind: RecordKind,
        offset: u64,
        len: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let (k, flags) = match kind {
            RecordKind::Read => (KIND_READ, 0),
            RecordKind::Write { fua } => (KIND_WRITE, if fua { FLAG_FUA } else { 0 }),
            RecordKind::Trim { fua } => (KIND_TRIM, if fua { FLAG_FUA } else { 0 }),
            RecordKind::Zeroes { fua, no_hole } => (
                KIND_ZEROES,
                (if fua { FLAG_FUA } else { 0 }) | if no_hole { FLAG_NO_HOLE } else { 0 },
            ),
            RecordKind::Flush => (KIND_FLUSH, 0),
            RecordKind::Idle => (KIND_IDLE, 0),
        };
        let mut h = [0u8; RECORD_BYTES];
        h[field::record::KIND] = k;
        h[field::record::FLAGS] = flags;
        h[field::record::OFFSET].copy_from_slice(&offset.to_le_bytes());
        h[field::record::LEN].copy_from_slice(&len.to_le_bytes());
        let data = if k == KIND_WRITE { data } else { &[] };
        debug_assert!(k != KIND_WRITE || data.len() as u64 == len);
        let crc = record_crc(&h, data);
        h[field::record::CRC].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)?;
        Ok(())
    }

    /// Pushes buffered records to the file.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What [`TraceWriter::record`] records (the data of a write is passed beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Read,
    Write { fua: bool },
    Trim { fua: bool },
    Zeroes { fua: bool, no_hole: bool },
    Flush,
    Idle,
}

/// CRC32 of a record: its header with the CRC field zero, then its data.
fn record_crc(header: &[u8; RECORD_BYTES], data: &[u8]) -> u32 {
    let mut h = *header;
    h[field::record::CRC].fill(0);
    let mut c = crc32fast::Hasher::new();
    c.update(&h);
    c.update(data);
    c.finalize()
}

/// A damaged or foreign trace.
fn bad(why: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, why)
}

/// Reads a trace back, record by record.
pub struct TraceReader {
    input: BufReader<File>,
    logical_bytes: u64,
    /// Byte offset of the next record, for errors.
    at: u64,
}

impl TraceReader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path) -> std::io::Result<TraceReader> {
        let file = File::open(path)?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut h = [0u8; HEADER_BYTES];
        input
            .read_exact(&mut h)
            .map_err(|_| bad("not a nandbox trace: shorter than its header".into()))?;
        if h[field::MAGIC] != MAGIC {
            return Err(bad("not a nandbox trace: bad magic".into()));
        }
        let version = u32::from_le_bytes(h[field::VERSION].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "trace version {version} is not supported (this build reads {VERSION})"
            )));
        }
        let logical_bytes = u64::from_le_bytes(h[field::LOGICAL_BYTES].try_into().expect("8"));
        Ok(TraceReader {
            input,
            logical_bytes,
            at: HEADER_BYTES as u64,
        })
    }

    /// Size of the device the trace was recorded on.
    pub fn logical_bytes(&self) -> u64 {
        self.logical_bytes
    }

    /// The next record, `None` at a clean end; an error names the byte offset of a damaged one.
    pub fn next_record(&mut self) -> std::io::Result<Option<Record>> {
        let at = self.at;
        let mut h = [0u8; RECORD_BYTES];
        match self.input.read_exact(&mut h[..1]) {
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            r => r?,
        }
        self.input
            .read_exact(&mut h[1..])
            .map_err(|_| bad(format!("trace record at byte {at} is truncated")))?;
        let flags = h[field::record::FLAGS];
        let offset = u64::from_le_bytes(h[field::record::OFFSET].try_into().expect("8"));
        let len = u64::from_le_bytes(h[field::record::LEN].try_into().expect("8"));
        let fua = flags & FLAG_FUA != 0;
        let stored = u32::from_le_bytes(h[field::record::CRC].try_into().expect("4 bytes"));
        let check = |data: &[u8]| {
            if record_crc(&h, data) == stored {
                Ok(())
            } else {
                Err(bad(format!("trace record at byte {at} fails its CRC")))
            }
        };
        let in_range = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.logical_bytes);
        let record = match h[field::record::KIND] {
            KIND_FLUSH | KIND_IDLE | KIND_READ | KIND_TRIM | KIND_ZEROES if check(&[]).is_err() => {
                return Err(bad(format!("trace record at byte {at} fails its CRC")));
            }
            KIND_FLUSH => Record::Flush,
            KIND_IDLE => Record::Idle,
            _ if !in_range => {
                return Err(bad(format!(
                    "trace record at byte {at} lies past the end of the device"
                )))
            }
            KIND_READ => Record::Read { offset, len },
            KIND_WRITE => {
                if len > MAX_WRITE {
                    return Err(bad(format!(
                        "trace record at byte {at}: a write of {len} bytes is too long"
                    )));
                }
                let mut data = vec![0u8; len as usize];
                self.input.read_exact(&mut data).map_err(|_| {
                    bad(format!(
                        "trace record at byte {at}: the write's data is truncated"
                    ))
                })?;
                check(&data)?;
                Record::Write { offset, data, fua }
            }
            KIND_TRIM => Record::Trim { offset, len, fua },
            KIND_ZEROES => Record::Zeroes {
                offset,
                len,
                fua,
                no_hole: flags & FLAG_NO_HOLE != 0,
            },
            k => {
                return Err(bad(format!(
                    "trace record at byte {at} has unknown kind {k}"
                )))
            }
        };
        self.at += RECORD_BYTES as u64
            + match &record {
                Record::Write { data, .. } => data.len() as u64,
                _ => 0,
            };
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_and_damage_is_named() {
        let dir = std::env::temp_dir().join(format!("nandbox-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.trace");
        let mut w = TraceWriter::create(&path, 1 << 20).unwrap();
        w.record(RecordKind::Write { fua: true }, 4096, 5, b"hello")
            .unwrap();
        w.record(RecordKind::Read, 0, 512, &[]).unwrap();
        w.record(RecordKind::Flush, 0, 0, &[]).unwrap();
        w.record(RecordKind::Idle, 0, 0, &[]).unwrap();
        w.record(
            RecordKind::Zeroes {
                fua: false,
                no_hole: true,
            },
            8192,
            4096,
            &[],
        )
        .unwrap();
        w.record(RecordKind::Trim { fua: false }, 0, 1 << 20, &[])
            .unwrap();
        w.flush().unwrap();
        drop(w);
        let mut r = TraceReader::open(&path).unwrap();
        assert_eq!(r.logical_bytes(), 1 << 20);
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(rec);
        }
        assert_eq!(
            got,
            vec![
                Record::Write {
                    offset: 4096,
                    data: b"hello".to_vec(),
                    fua: true
                },
                Record::Read {
                    offset: 0,
                    len: 512
                },
                Record::Flush,
                Record::Idle,
                Record::Zeroes {
                    offset: 8192,
                    len: 4096,
                    fua: false,
                    no_hole: true
                },
                Record::Trim {
                    offset: 0,
                    len: 1 << 20,
                    fua: false
                },
            ]
        );
        // A write cut short names its record.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..HEADER_BYTES + RECORD_BYTES + 2]).unwrap();
        let mut r = TraceReader::open(&path).unwrap();
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.contains("byte 24") && e.contains("truncated"), "{e}");
        // A bit flipped in a write's data, or in a flush record, fails the record's CRC.
        for at in [
            HEADER_BYTES + RECORD_BYTES + 1,
            HEADER_BYTES + 2 * RECORD_BYTES + 5 + 9,
        ] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 4;
            std::fs::write(&path, &flipped).unwrap();
            let mut r = TraceReader::open(&path).unwrap();
            let e = loop {
                match r.next_record() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("flip at {at} not detected"),
                    Err(e) => break e.to_string(),
                }
            };
            assert!(e.contains("fails its CRC"), "{e}");
        }
        // A record past the device's end is refused.
        let mut bad = bytes.clone();
        bad[HEADER_BYTES + 8..HEADER_BYTES + 16].copy_from_slice(&(1u64 << 20).to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        let e = TraceReader::open(&path)
            .unwrap()
            .next_record()
            .unwrap_err()
            .to_string();
        assert!(e.contains("past the end"), "{e}");
        // Not a trace at all.
        std::fs::write(&path, b"NOTATRACE-and-some-more-bytes").unwrap();
        let e = TraceReader::open(&path).err().unwrap().to_string();
        assert!(e.contains("bad magic"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
