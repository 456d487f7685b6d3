//! QStore: one stored model that serves both its high-precision (BF16/FP16) weights and their
//! LLM.int8 quantization, after the QStore paper (arXiv 2505.04081).
//!
//! A 2-D weight tensor is cut into chunks of whole rows (at most [`CHUNK_WEIGHTS`] weights; a row
//! wider than that is cut into pieces, each piece repeating its row's scale). Every chunk is coded
//! as two independent, CRC-checked records that live in different sections of a file:
//!
//! - the **INT8 record** ([`chunk`]): the row scales, kept exactly as f32, and the INT8 values,
//!   entropy coded ([`super::entropy`]). An INT8 load reads only these.
//! - the **high-precision record**: given a weight's INT8 value `q` and its row's scale, the
//!   weight is one of the patterns of a known run ([`quant::RowRanges`]). For `q != 0` its offset
//!   in the run is written with mixed-radix packing ([`radix`], measured uniform inside the run);
//!   for `q = 0`, where the run spans many binades, the magnitude is split into an exponent byte
//!   and a mantissa byte, each entropy coded with statistics shared by all rows of the chunk.
//!   NaN and ±Inf are escapes: position and bits.
//!
//! Layers: [`quant`] (quantizer, runs) → [`radix`] (bit packing) → [`chunk`] (records) →
//! [`format`] (the file's fixed header). The container around the records (directory, sections)
//! is assembled by the host; its layout is in docs/format/qstore.md.

use core::fmt;

use super::CodecError;

pub mod chunk;
pub mod format;
pub mod quant;
pub mod radix;

pub use chunk::{decode_hp, decode_int8, encode_chunk, encode_int8, Workspace};
pub use quant::{quantize, quantize_pattern, quantize_row, row_scale, HalfKind, RowRanges};

/// Most weights in one chunk. 64 Ki keeps a chunk's workspace a few hundred KiB and gives a
/// parallel decoder many chunks even on small tensors.
pub const CHUNK_WEIGHTS: usize = 65_536;

/// Most rows in one chunk, so a chunk of a very narrow tensor keeps its scales in a small,
/// fixed workspace.
pub const MAX_CHUNK_ROWS: usize = 4096;

/// Elements per chunk for a tensor with `cols` columns: as many whole rows as fit (at most
/// [`MAX_CHUNK_ROWS`]), or pieces of [`CHUNK_WEIGHTS`] when one row is wider.
pub const fn chunk_elems(cols: u64) -> u64 {
    let c = CHUNK_WEIGHTS as u64;
    if cols == 0 || cols > c {
        c
    } else {
        let rows = c / cols;
        let rows = if rows > MAX_CHUNK_ROWS as u64 {
            MAX_CHUNK_ROWS as u64
        } else {
            rows
        };
        rows * cols
    }
}

/// Errors of QStore coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QstoreError {
    /// An output buffer is too small; at least this many bytes are needed.
    BufferTooSmall(usize),
    /// Stored bytes are inconsistent; the text says which part.
    Corrupted(&'static str),
    /// A given INT8 value (or scale) does not contain its weight: the weight at this index of
    /// the chunk lies outside the run of its `q`. The tensor must be stored another way.
    NotContained(u32),
    /// The arguments cannot describe a chunk (empty, too many weights, wrong scale count).
    InvalidInput(&'static str),
}

impl fmt::Display for QstoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QstoreError::BufferTooSmall(n) => {
                write!(f, "output buffer too small: {n} bytes needed")
            }
            QstoreError::Corrupted(what) => write!(f, "corrupted: {what}"),
            QstoreError::NotContained(i) => {
                write!(
                    f,
                    "weight {i} of the chunk lies outside the run of its INT8 value"
                )
            }
            QstoreError::InvalidInput(what) => write!(f, "invalid input: {what}"),
        }
    }
}

impl core::error::Error for QstoreError {}

/// Maps an entropy-coder error met while decoding `what`: whatever the coder found, the
/// stored block is wrong, and `what` says which one.
fn decode_err(_: CodecError, what: &'static str) -> QstoreError {
    QstoreError::Corrupted(what)
}

/// Maps an entropy-coder error met while encoding.
fn encode_err(e: CodecError) -> QstoreError {
    match e {
        CodecError::BufferTooSmall(n) => QstoreError::BufferTooSmall(n),
        _ => QstoreError::InvalidInput("entropy coder rejected a stream"),
    }
}
