//! The MedFS mechanisms, mapped onto an LBA-addressed device where the node page plays the
//! inode. Each mechanism has its own module:
//!
//! - [`xor`] — delta encoding: the XOR of a new block with its base, as (skip, length, literal)
//!   runs, so unchanged bytes cost nothing; the size threshold that decides delta or full write.
//! - [`planes`] — ZipNN's delta mode: the XOR of float blocks grouped into byte planes, for
//!   updates that touch a few mantissa bits of many weights.
//! - [`inline`] — Delta Chunk Inlining: deltas kept tail-to-head in a node page's inline area,
//!   FIFO order, and the benefit model that decides whether a new delta may replace old ones.
//! - [`hotness`] — per-group read/write heat and its online clustering into four classes.
//! - [`compact`] — compact pages: evicted deltas of read-cold groups packed together.
//! - [`log`] — the delta log: new deltas packed into one slot per flush, replayed at mount.
//!
//! The FTL glue (when to encode, evict, rebuild, restore) is `ftl::delta`. Deltas are always
//! against the base block the node page still points to, never chained.

pub mod compact;
pub mod hotness;
pub mod inline;
pub mod log;
pub mod planes;
pub mod xor;
