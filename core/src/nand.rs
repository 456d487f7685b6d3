//! The NAND array as the firmware sees it: geometry, addresses and the [`Nand`] trait.
//!
//! This is the bottom layer of the core. Everything above it (formats, FTL, delta engine) talks to
//! flash only through [`Nand`], statically dispatched, so the same firmware logic runs over the
//! simulator on a host and over a RAM array on a microcontroller.

use core::fmt;

/// Size of one logical block, and of one slot inside a NAND page: the unit the FTL maps.
pub const SLOT_BYTES: usize = 4096;

/// Index of an erase block, counted from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockId(pub u32);

/// Index of a NAND page across the whole array: `block * pages_per_block + page_in_block`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageId(pub u32);

/// Shape of a NAND array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Data bytes per page; a whole multiple of [`SLOT_BYTES`].
    pub page_bytes: u32,
    /// Spare (out-of-band) bytes per page.
    pub spare_bytes: u32,
    /// Pages in one erase block.
    pub pages_per_block: u32,
    /// Erase blocks in the array, bad ones included.
    pub blocks: u32,
}

/// Why a geometry cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GeometryError {
    /// The page is not a whole, non-zero number of 4 KiB slots.
    PageNotSlotMultiple,
    /// Fewer spare bytes per slot than the FTL's spare record needs.
    SpareTooSmall,
    /// No pages per block, or no blocks.
    Empty,
    /// The array has more pages than a [`PageId`] can address.
    TooLarge,
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::PageNotSlotMultiple => "page size is not a non-zero multiple of 4096 bytes",
            Self::SpareTooSmall => "spare area too small for one record per 4 KiB slot",
            Self::Empty => "geometry has no blocks or no pages per block",
            Self::TooLarge => "geometry has more pages than a 32-bit page index can address",
        };
        f.write_str(what)
    }
}

impl core::error::Error for GeometryError {}

/// Spare bytes the FTL needs for each 4 KiB slot of a page.
pub const SPARE_BYTES_PER_SLOT: u32 = 64;

impl Geometry {
    /// Checks the geometry once, up front, so a bad one fails before any flash is touched.
    pub const fn validate(&self) -> Result<(), GeometryError> {
        if self.page_bytes == 0 || !self.page_bytes.is_multiple_of(SLOT_BYTES as u32) {
            return Err(GeometryError::PageNotSlotMultiple);
        }
        if self.pages_per_block == 0 || self.blocks == 0 {
            return Err(GeometryError::Empty);
        }
        if self.spare_bytes < self.slots_per_page() * SPARE_BYTES_PER_SLOT {
            return Err(GeometryError::SpareTooSmall);
        }
        if (self.pages_per_block as u64) * (self.blocks as u64) > u32::MAX as u64 / 16 {
            return Err(GeometryError::TooLarge);
        }
        Ok(())
    }

    /// 4 KiB slots in one page.
    pub const fn slots_per_page(&self) -> u32 {
        self.page_bytes / SLOT_BYTES as u32
    }

    /// Pages in the whole array.
    pub const fn total_pages(&self) -> u32 {
        self.pages_per_block * self.blocks
    }

    /// Data bytes in one erase block.
    pub const fn block_bytes(&self) -> u64 {
        self.page_bytes as u64 * self.pages_per_block as u64
    }

    /// Data bytes in the whole array.
    pub const fn total_bytes(&self) -> u64 {
        self.block_bytes() * self.blocks as u64
    }

    /// The block a page belongs to.
    pub const fn block_of(&self, page: PageId) -> BlockId {
        BlockId(page.0 / self.pages_per_block)
    }

    /// A page's index inside its block.
    pub const fn page_in_block(&self, page: PageId) -> u32 {
        page.0 % self.pages_per_block
    }

    /// The `n`th page of `block`.
    pub const fn page(&self, block: BlockId, n: u32) -> PageId {
        PageId(block.0 * self.pages_per_block + n)
    }
}

/// What kind of failure a NAND operation met, as far as the firmware must react to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// The program did not verify: the page's contents are undefined and the block must be
    /// retired once its valid data is moved.
    ProgramFailed,
    /// The erase did not complete: the block is bad from now on.
    EraseFailed,
    /// The data could not be read back (uncorrectable).
    ReadFailed,
    /// The operation broke the NAND contract (program twice, out of order, out of range).
    /// A firmware bug, never a media fault.
    ContractViolation,
    /// Power was lost: the device is gone until it is mounted again.
    PowerLoss,
    /// Anything else the backend reports (an I/O error of an image file, say).
    Other,
}

/// A NAND backend's error type says which [`FaultKind`] it is.
pub trait NandFault: fmt::Debug + fmt::Display {
    /// How the firmware should treat this failure.
    fn kind(&self) -> FaultKind;
}

/// A raw NAND flash array.
///
/// # Contract
///
/// - **Erased state.** Every data and spare byte of an erased page reads `0xFF`.
/// - **Program once.** A page is programmed at most once between two erases of its block, data
///   and spare together in one operation; programming can only clear bits, so a second program
///   is an error ([`FaultKind::ContractViolation`]), never a merge.
/// - **Order.** Pages of a block are programmed in ascending order; skipping pages is allowed,
///   going back is not.
/// - **Power cut.** If power is lost during a program, that page is undefined afterwards: it may
///   read as erased, as fully written, or as any mix of the two, and it may not be programmed
///   again until its block is erased. If power is lost during an erase, the whole block is
///   undefined until erased again. Pages and blocks not in flight are unaffected.
/// - **Faults.** Reads may return flipped bits: nothing above this trait trusts bytes without a
///   CRC. A failed program or erase is reported with the matching [`FaultKind`]; the block is
///   then to be retired.
/// - **Bad blocks.** [`Nand::is_bad`] reports blocks marked bad at the factory or by
///   [`Nand::mark_bad`]; the firmware never programs or erases them.
///
/// `data` (and `page_buf`) must be exactly `page_bytes` long and `spare` exactly `spare_bytes`
/// long for [`Nand::read`], [`Nand::read_slot`], [`Nand::read_slot_into`] and [`Nand::program`].
pub trait Nand {
    /// The backend's error.
    type Error: NandFault;

    /// Shape of the array.
    fn geometry(&self) -> Geometry;

    /// Reads one page's data and spare area.
    fn read(&mut self, page: PageId, data: &mut [u8], spare: &mut [u8]) -> Result<(), Self::Error>;

    /// Reads only the spare area of a page (cheaper on real parts: no data transfer).
    fn read_spare(&mut self, page: PageId, spare: &mut [u8]) -> Result<(), Self::Error>;

    /// Reads what one 4 KiB slot of a page needs: that slot's bytes, into the same place of
    /// `data` (a whole page buffer, as for [`Nand::read`]), and the whole spare area. The other
    /// slots' bytes in `data` are unspecified afterwards. It is one page read in every other
    /// respect (counted, timed, torn by a power cut and flipped by read faults as
    /// [`Nand::read`] would be): a real part senses the page whole and transfers only the
    /// columns asked for. The default reads the whole page.
    fn read_slot(
        &mut self,
        page: PageId,
        slot: u32,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), Self::Error> {
        let _ = slot;
        self.read(page, data, spare)
    }

    /// Reads the slots of a page whose bits are set in `slots` (bit `n` for slot `n`), each into
    /// its place in `data` (a whole page buffer), and the whole spare area; the other slots'
    /// bytes are unspecified afterwards. One page read, as [`Nand::read_slot`] is: a part
    /// senses the page whole and transfers the columns asked for. The default reads the page.
    fn read_slots(
        &mut self,
        page: PageId,
        slots: u32,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), Self::Error> {
        let _ = slots;
        self.read(page, data, spare)
    }

    /// [`Nand::read_slot`] with the slot's bytes delivered straight into `dst`: the same one
    /// page read in every respect (counted, timed, torn, flipped), minus the trip through a page
    /// buffer, which a host read would otherwise copy out of again. `page_buf` is a whole page
    /// buffer, as `data` is for [`Nand::read_slot`]; its contents are unspecified afterwards.
    /// The default reads the slot into `page_buf` and copies it.
    fn read_slot_into(
        &mut self,
        page: PageId,
        slot: u32,
        dst: &mut [u8; SLOT_BYTES],
        page_buf: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), Self::Error> {
        self.read_slot(page, slot, page_buf, spare)?;
        let at = slot as usize * SLOT_BYTES;
        if let Some(src) = page_buf.get(at..at + SLOT_BYTES) {
            dst.copy_from_slice(src);
        }
        Ok(())
    }

    /// Programs one page's data and spare area. See the contract above.
    fn program(&mut self, page: PageId, data: &[u8], spare: &[u8]) -> Result<(), Self::Error>;

    /// Erases one block, setting every byte of it to `0xFF`.
    fn erase(&mut self, block: BlockId) -> Result<(), Self::Error>;

    /// Whether the block is marked bad.
    fn is_bad(&mut self, block: BlockId) -> Result<bool, Self::Error>;

    /// Marks a block bad, for good.
    fn mark_bad(&mut self, block: BlockId) -> Result<(), Self::Error>;
}
