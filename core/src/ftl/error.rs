//! Error types of the FTL: one per operation family, generic over the NAND error, all sharing
//! `Corrupted` (bytes on flash failed a check) and `Nand` (the backend failed).

use core::fmt;

use super::LBAS_PER_NODE;
use crate::nand::GeometryError;

/// What failed a check on flash, and where (a slot address, page, block or node id, as `what`
/// says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// What was wrong.
    pub what: &'static str,
    /// The address it was found at (meaning given by `what`; the slot address when `node` is
    /// set).
    pub at: u32,
    /// The node (group of [`LBAS_PER_NODE`] LBAs) whose node page is damaged, when the damage is
    /// in a node page: a user then knows which LBAs are affected, not just a flash address.
    pub node: Option<u32>,
}

impl Corruption {
    /// The same damage, found while reading the node page of group `node` (`at` must be that
    /// page's slot address).
    pub(crate) const fn in_node(self, node: u32) -> Corruption {
        Corruption {
            node: Some(node),
            ..self
        }
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.node {
            Some(g) => {
                let first = g as u64 * LBAS_PER_NODE as u64;
                write!(
                    f,
                    "node page of group {g} (LBAs {first}..={}) at slot {}: {}",
                    first + LBAS_PER_NODE as u64 - 1,
                    self.at,
                    self.what
                )
            }
            None => write!(f, "{} (at {})", self.what, self.at),
        }
    }
}

/// The single place corruption errors are built, so a fuzzing build could turn them into panics.
pub(crate) const fn corrupted(what: &'static str, at: u32) -> Corruption {
    Corruption {
        what,
        at,
        node: None,
    }
}

/// Why a configuration cannot be used on a geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The geometry itself is unusable.
    Geometry(GeometryError),
    /// No logical blocks.
    NoCapacity,
    /// Fewer than 2 or more than the allowed number of node cache slots.
    CacheSlots,
    /// More 4 KiB slots per page than the FTL supports.
    PageTooLarge,
    /// The mapping of this many logical blocks does not fit one checkpoint pack, which must
    /// fit one erase block: the capacity is too large for the geometry's block size.
    MappingTooLarge {
        /// Pages a checkpoint pack and its seal would take.
        pack_pages: u64,
        /// Pages in one erase block.
        pages_per_block: u32,
    },
    /// The array has too few blocks for this capacity plus reserves.
    TooFewBlocks {
        /// Blocks needed.
        needed: u32,
        /// Good blocks available.
        available: u32,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Geometry(g) => write!(f, "geometry: {g}"),
            Self::NoCapacity => f.write_str("zero logical blocks"),
            Self::CacheSlots => f.write_str("node cache slots out of range"),
            Self::PageTooLarge => f.write_str("page holds more 4 KiB slots than supported"),
            Self::MappingTooLarge {
                pack_pages,
                pages_per_block,
            } => write!(
                f,
                "capacity too large for the geometry: its checkpoint needs {pack_pages} pages, \
                 an erase block has {pages_per_block}"
            ),
            Self::TooFewBlocks { needed, available } => {
                write!(f, "needs {needed} good blocks, array has {available}")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

/// Errors of read, write, trim, flush, idle, is_mapped and check.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<E> {
    /// The NAND backend failed (including power loss).
    Nand(E),
    /// Bytes on flash failed a check; no data was returned.
    Corrupted(Corruption),
    /// The LBA range lies outside the device.
    OutOfRange {
        /// First LBA asked for.
        lba: u32,
        /// Blocks asked for.
        count: u32,
        /// Logical blocks of the device.
        capacity: u32,
    },
    /// Garbage collection found nothing to reclaim: the device cannot take the write.
    NoSpace,
    /// A lent buffer is too small.
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Elements needed.
        needed: usize,
    },
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nand(e) => write!(f, "NAND: {e}"),
            Self::Corrupted(c) => write!(f, "corrupted: {c}"),
            Self::OutOfRange {
                lba,
                count,
                capacity,
            } => write!(f, "LBA {lba}+{count} beyond capacity {capacity}"),
            Self::NoSpace => f.write_str("no space left: nothing to reclaim"),
            Self::BufferTooSmall { what, needed } => {
                write!(f, "buffer {what} too small: {needed} needed")
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for Error<E> {}

impl<E> Error<E> {
    /// Names node `g` in a corruption error met while reading its node page.
    pub(crate) fn in_node(self, g: u32) -> Self {
        match self {
            Self::Corrupted(c) => Self::Corrupted(c.in_node(g)),
            e => e,
        }
    }
}

/// Errors of [`super::Ftl::format`].
#[derive(Debug)]
#[non_exhaustive]
pub enum FormatError<E> {
    /// The NAND backend failed.
    Nand(E),
    /// Bytes on flash failed a check.
    Corrupted(Corruption),
    /// The configuration does not fit the geometry.
    Config(ConfigError),
    /// A lent buffer is too small.
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Elements needed.
        needed: usize,
    },
    /// Too many blocks went bad while formatting.
    NoSpace,
}

impl<E: fmt::Display> fmt::Display for FormatError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nand(e) => write!(f, "NAND: {e}"),
            Self::Corrupted(c) => write!(f, "corrupted: {c}"),
            Self::Config(c) => write!(f, "configuration: {c}"),
            Self::BufferTooSmall { what, needed } => {
                write!(f, "buffer {what} too small: {needed} needed")
            }
            Self::NoSpace => f.write_str("too many bad blocks"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for FormatError<E> {}

/// Errors of [`super::Ftl::mount`].
#[derive(Debug)]
#[non_exhaustive]
pub enum MountError<E> {
    /// The NAND backend failed.
    Nand(E),
    /// Bytes on flash failed a check: the named structure is damaged.
    Corrupted(Corruption),
    /// No checkpoint anywhere: the media was never formatted (it reads erased).
    Unformatted,
    /// The checkpoint was written for another geometry (a truncated or resized image).
    GeometryMismatch {
        /// Blocks the checkpoint describes.
        formatted_blocks: u32,
        /// Blocks the NAND has.
        actual_blocks: u32,
    },
    /// The on-flash configuration is not usable.
    Config(ConfigError),
    /// A lent buffer is too small for the on-flash configuration.
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Elements needed.
        needed: usize,
    },
    /// Recovery needed space the device does not have.
    NoSpace,
    /// The newest checkpoint pack fails its checks although it was completely written (its
    /// seal page is programmed): damage on flash, not a power cut. An older pack cannot stand in
    /// for it, since blocks may have been erased and reused since that one was written.
    CheckpointDamaged {
        /// Checkpoint-area block holding the pack.
        block: u32,
        /// Page (within the block) where the pack starts.
        page: u32,
        /// The pack's sequence number.
        seq: u64,
        /// Which check failed.
        why: &'static str,
        /// Whether an older pack exists (which mounting refuses to use).
        older: bool,
    },
}

impl<E: fmt::Display> fmt::Display for MountError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nand(e) => write!(f, "NAND: {e}"),
            Self::Corrupted(c) => write!(f, "corrupted: {c}"),
            Self::Unformatted => f.write_str("unformatted media: no checkpoint found"),
            Self::GeometryMismatch {
                formatted_blocks,
                actual_blocks,
            } => write!(
                f,
                "formatted for {formatted_blocks} blocks, NAND has {actual_blocks} (truncated or resized)"
            ),
            Self::Config(c) => write!(f, "on-flash configuration: {c}"),
            Self::BufferTooSmall { what, needed } => {
                write!(f, "buffer {what} too small: {needed} needed")
            }
            Self::NoSpace => f.write_str("no space to complete recovery"),
            Self::CheckpointDamaged {
                block,
                page,
                seq,
                why,
                older,
            } => {
                write!(
                    f,
                    "checkpoint pack at block {block} page {page} (seq {seq}) {why}; it was \
                     completely written, so this is damage on flash, not a power cut"
                )?;
                if *older {
                    f.write_str("; an older pack exists but using it could return stale data")
                } else {
                    f.write_str("; no older pack exists")
                }
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for MountError<E> {}

impl<E> From<Error<E>> for MountError<E> {
    fn from(e: Error<E>) -> Self {
        match e {
            Error::Nand(e) => MountError::Nand(e),
            Error::Corrupted(c) => MountError::Corrupted(c),
            Error::NoSpace | Error::OutOfRange { .. } => MountError::NoSpace,
            Error::BufferTooSmall { what, needed } => MountError::BufferTooSmall { what, needed },
        }
    }
}

impl<E> From<Error<E>> for FormatError<E> {
    fn from(e: Error<E>) -> Self {
        match e {
            Error::Nand(e) => FormatError::Nand(e),
            Error::Corrupted(c) => FormatError::Corrupted(c),
            Error::NoSpace | Error::OutOfRange { .. } => FormatError::NoSpace,
            Error::BufferTooSmall { what, needed } => FormatError::BufferTooSmall { what, needed },
        }
    }
}
