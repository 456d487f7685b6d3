//! The sparse image file behind a persistent `SimNand`.
//!
//! Layout (all integers little-endian; see docs/FORMAT.md, "Image file"):
//!
//! | bytes            | what                                                        |
//! |------------------|-------------------------------------------------------------|
//! | 0..4096          | header: magic, version, geometry, CRC32                     |
//! | 4096..B          | block states, 16 bytes per block, B rounded up to 4096      |
//! | B..              | pages, `page_bytes + spare_bytes` each, stored inverted     |
//!
//! Page bytes are stored XOR 0xFF so that a hole in the sparse file, which reads as zeros,
//! reads back as erased flash (0xFF): erasing a block punches a hole and costs no disk space.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nandbox_core::nand::{BlockId, Geometry, PageId};

mod header {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const VERSION: Range<usize> = 8..12;
    pub const PAGE_BYTES: Range<usize> = 12..16;
    pub const SPARE_BYTES: Range<usize> = 16..20;
    pub const PAGES_PER_BLOCK: Range<usize> = 20..24;
    pub const BLOCKS: Range<usize> = 24..28;
    pub const CRC: Range<usize> = 28..32;
    pub const LEN: usize = 4096;
}

mod block_state {
    use core::ops::Range;
    pub const WRITE_POINT: Range<usize> = 0..4;
    pub const ERASE_COUNT: Range<usize> = 4..8;
    pub const FLAGS: Range<usize> = 8..12;
    pub const CRC: Range<usize> = 12..16;
    pub const LEN: usize = 16;
    pub const FLAG_BAD: u32 = 1;
}

const MAGIC: &[u8; 8] = b"NBXIMAGE";
const VERSION: u32 = 1;

/// Why an image file cannot be opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum ImageError {
    /// Reading or writing the file failed.
    Io(std::io::Error),
    /// The file is empty (as `touch` or `mktemp` leave it): no image, and none is made in it.
    Empty,
    /// The file does not start with the nandbox image magic.
    BadMagic,
    /// The file is of a format version this build does not know.
    UnsupportedVersion(u32),
    /// The header's CRC does not match: the header is corrupt.
    HeaderCrc,
    /// The geometry in the header is impossible.
    BadGeometry(String),
    /// The file is shorter than its geometry requires.
    Truncated {
        /// Bytes the geometry needs.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// A block's state record is corrupt.
    BlockState(u32),
    /// Another process (a running `nandbox serve`) has the image open for writing.
    Locked,
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "image I/O error: {e}"),
            Self::Empty => f.write_str(
                "the file is empty, not a nandbox image (a new image is created only where no \
                 file exists: remove it, or name a new path)",
            ),
            Self::BadMagic => f.write_str("not a nandbox image (bad magic in header)"),
            Self::UnsupportedVersion(v) => write!(
                f,
                "image format version {v} is not supported (this build reads {VERSION})"
            ),
            Self::HeaderCrc => f.write_str("image header is corrupt (CRC mismatch)"),
            Self::BadGeometry(why) => write!(f, "image header has an impossible geometry: {why}"),
            Self::Truncated { expected, actual } => {
                write!(
                    f,
                    "image is truncated: {actual} bytes, its geometry needs {expected}"
                )
            }
            Self::BlockState(b) => write!(
                f,
                "image block-state record of block {b} is corrupt (CRC mismatch)"
            ),
            Self::Locked => f.write_str(
                "image is in use by another process (a `nandbox serve` has it open; stop it \
                 first)",
            ),
        }
    }
}

impl std::error::Error for ImageError {}

impl From<std::io::Error> for ImageError {
    fn from(e: std::io::Error) -> Self {
        ImageError::Io(e)
    }
}

/// Per-block state read back from an image.
pub struct BlockStates {
    /// Lowest programmable page of each block.
    pub write_point: Vec<u32>,
    /// Erases of each block.
    pub erase_counts: Vec<u32>,
    /// Bad-block marks.
    pub bad: Vec<bool>,
}

/// An open image file.
pub struct ImageFile {
    file: File,
    geometry: Geometry,
    pages_at: u64,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn pages_offset(g: &Geometry) -> u64 {
    let states = g.blocks as u64 * block_state::LEN as u64;
    header::LEN as u64 + states.div_ceil(4096) * 4096
}

/// Takes the image's writer lock (`flock`, exclusive, without waiting): two devices writing one
/// image would each program pages the other believes erased and corrupt it. The lock goes with
/// the file descriptor, so it is released when the device closes or its process dies (even by
/// `kill -9`), and a stale lock never blocks a restart.
fn lock_for_writing(file: &File) -> Result<(), ImageError> {
    lock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
}

fn lock(file: &File, how: rustix::fs::FlockOperation) -> Result<(), ImageError> {
    match rustix::fs::flock(file, how) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(ImageError::Locked),
        Err(e) => Err(ImageError::Io(e.into())),
    }
}

fn total_len(g: &Geometry) -> u64 {
    pages_offset(g) + g.total_pages() as u64 * (g.page_bytes + g.spare_bytes) as u64
}

impl ImageFile {
    /// Creates a new image (refusing to overwrite an existing file).
    pub fn create(path: &Path, geometry: Geometry) -> std::io::Result<ImageFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        lock_for_writing(&file).map_err(|e| match e {
            ImageError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::WouldBlock, other.to_string()),
        })?;
        let mut head = vec![0u8; header::LEN];
        head[header::MAGIC].copy_from_slice(MAGIC);
        head[header::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        head[header::PAGE_BYTES].copy_from_slice(&geometry.page_bytes.to_le_bytes());
        head[header::SPARE_BYTES].copy_from_slice(&geometry.spare_bytes.to_le_bytes());
        head[header::PAGES_PER_BLOCK].copy_from_slice(&geometry.pages_per_block.to_le_bytes());
        head[header::BLOCKS].copy_from_slice(&geometry.blocks.to_le_bytes());
        let crc = crc32fast::hash(&head[..header::CRC.start]);
        head[header::CRC].copy_from_slice(&crc.to_le_bytes());
        file.set_len(total_len(&geometry))?;
        file.write_all_at(&head, 0)?;
        Ok(ImageFile {
            file,
            pages_at: pages_offset(&geometry),
            geometry,
        })
    }

    /// Opens an existing image for reading and writing, checking its header, length and block
    /// states.
    pub fn open(path: &Path) -> Result<(ImageFile, BlockStates), ImageError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        lock_for_writing(&file)?;
        Self::open_with(file)
    }

    /// Opens an existing image for reading only (writes to it fail). It takes the lock shared:
    /// readers coexist, but not with a writer changing the pages under them.
    pub fn open_read_only(path: &Path) -> Result<(ImageFile, BlockStates), ImageError> {
        let file = OpenOptions::new().read(true).open(path)?;
        lock(&file, rustix::fs::FlockOperation::NonBlockingLockShared)?;
        Self::open_with(file)
    }

    fn open_with(file: File) -> Result<(ImageFile, BlockStates), ImageError> {
        let actual = file.metadata()?.len();
        let mut head = vec![0u8; header::LEN];
        if actual == 0 {
            return Err(ImageError::Empty);
        }
        if actual < header::CRC.end as u64 {
            return Err(ImageError::Truncated {
                expected: header::LEN as u64,
                actual,
            });
        }
        file.read_exact_at(&mut head[..header::CRC.end], 0)?;
        if &head[header::MAGIC] != MAGIC {
            return Err(ImageError::BadMagic);
        }
        let version = le32(&head[header::VERSION]);
        if version != VERSION {
            return Err(ImageError::UnsupportedVersion(version));
        }
        if crc32fast::hash(&head[..header::CRC.start]) != le32(&head[header::CRC]) {
            return Err(ImageError::HeaderCrc);
        }
        let geometry = Geometry {
            page_bytes: le32(&head[header::PAGE_BYTES]),
            spare_bytes: le32(&head[header::SPARE_BYTES]),
            pages_per_block: le32(&head[header::PAGES_PER_BLOCK]),
            blocks: le32(&head[header::BLOCKS]),
        };
        geometry
            .validate()
            .map_err(|e| ImageError::BadGeometry(e.to_string()))?;
        let expected = total_len(&geometry);
        if actual < expected {
            return Err(ImageError::Truncated { expected, actual });
        }
        let mut raw = vec![0u8; geometry.blocks as usize * block_state::LEN];
        file.read_exact_at(&mut raw, header::LEN as u64)?;
        let mut states = BlockStates {
            write_point: Vec::new(),
            erase_counts: Vec::new(),
            bad: Vec::new(),
        };
        for (b, rec) in raw.chunks_exact(block_state::LEN).enumerate() {
            let (wp, ec, flags) = if rec.iter().all(|&x| x == 0) {
                (0, 0, 0) // never written: a fresh block
            } else {
                if crc32fast::hash(&rec[..block_state::CRC.start]) != le32(&rec[block_state::CRC]) {
                    return Err(ImageError::BlockState(b as u32));
                }
                (
                    le32(&rec[block_state::WRITE_POINT]),
                    le32(&rec[block_state::ERASE_COUNT]),
                    le32(&rec[block_state::FLAGS]),
                )
            };
            if wp > geometry.pages_per_block {
                return Err(ImageError::BlockState(b as u32));
            }
            states.write_point.push(wp);
            states.erase_counts.push(ec);
            states.bad.push(flags & block_state::FLAG_BAD != 0);
        }
        Ok((
            ImageFile {
                file,
                pages_at: pages_offset(&geometry),
                geometry,
            },
            states,
        ))
    }

    /// The geometry in the header.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn page_at(&self, page: PageId) -> u64 {
        self.pages_at
            + page.0 as u64 * (self.geometry.page_bytes + self.geometry.spare_bytes) as u64
    }

    /// Reads a page's data and spare (erased reads 0xFF).
    pub fn read_page(
        &self,
        page: PageId,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> std::io::Result<()> {
        let at = self.page_at(page);
        self.file.read_exact_at(data, at)?;
        self.file.read_exact_at(spare, at + data.len() as u64)?;
        invert(data);
        invert(spare);
        Ok(())
    }

    /// Reads only a page's spare area.
    pub fn read_spare(&self, page: PageId, spare: &mut [u8]) -> std::io::Result<()> {
        let at = self.page_at(page) + self.geometry.page_bytes as u64;
        self.file.read_exact_at(spare, at)?;
        invert(spare);
        Ok(())
    }

    /// Stores a page's raw bytes (data then spare).
    pub fn write_page(&self, page: PageId, raw: &[u8]) -> std::io::Result<()> {
        let mut stored = raw.to_vec();
        invert(&mut stored);
        self.file.write_all_at(&stored, self.page_at(page))
    }

    /// Returns `pages` consecutive pages from `first` to the erased state by punching a hole.
    pub fn erase_pages(&self, first: PageId, pages: u32) -> std::io::Result<()> {
        let len = (self.geometry.page_bytes + self.geometry.spare_bytes) as u64 * pages as u64;
        let at = self.page_at(first);
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, flags, at, len) {
            Ok(()) => Ok(()),
            // Filesystems without hole punching: write the erased pattern (zeros, inverted).
            Err(_) => self.file.write_all_at(&vec![0u8; len as usize], at),
        }
    }

    /// Records a block's write point, erase count and bad mark.
    pub fn write_block_state(
        &self,
        block: BlockId,
        write_point: u32,
        erase_count: u32,
        bad: bool,
    ) -> std::io::Result<()> {
        let mut rec = [0u8; block_state::LEN];
        rec[block_state::WRITE_POINT].copy_from_slice(&write_point.to_le_bytes());
        rec[block_state::ERASE_COUNT].copy_from_slice(&erase_count.to_le_bytes());
        let flags = if bad { block_state::FLAG_BAD } else { 0 };
        rec[block_state::FLAGS].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&rec[..block_state::CRC.start]);
        rec[block_state::CRC].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(
            &rec,
            header::LEN as u64 + block.0 as u64 * block_state::LEN as u64,
        )
    }

    /// Flushes the file to stable storage.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn invert(bytes: &mut [u8]) {
    for b in bytes {
        *b = !*b;
    }
}
