//! Codecs for data the device stores: entropy coding and the model-weight codecs.
//!
//! - [`entropy`]: an order-0 rANS coder over bytes with a compact, self-describing block format
//!   (raw / constant / coded chosen per block), working only in caller-lent buffers.
//! - [`huffman`]: length-limited canonical Huffman in four streams, decoding two symbols per
//!   table lookup: ZipNN's index stream of big chunks, where decoding speed matters most.
//! - [`tans`]: table-driven ANS in four lanes of two states, as close to the entropy as rANS
//!   and decoding with a load, two shifts and an add per symbol: ZipNN's FP16 index streams.
//! - [`zipnn`]: ZipNN grouping of BF16/FP16/FP32 weights (exponent and top mantissa bits
//!   coded by [`huffman`], [`tans`] or [`entropy`], one symbol per element; sign and low
//!   mantissa bits raw), in a chunked, CRC-checked container.
//! - `qstore`: one file serving a model at high precision and at INT8.
//! - [`weights`]: telling 4 KiB blocks of float weights from other data, coding one block.

use core::fmt;

pub mod entropy;
pub mod huffman;
pub mod qstore;
pub mod tans;
pub mod weights;
pub mod zipnn;

/// Errors of the codecs in this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The output buffer is too small; at least this many bytes are needed.
    BufferTooSmall(usize),
    /// The encoded bytes are inconsistent (bad table, stream overrun, wrong final state, ...).
    Corrupted,
    /// The input is longer than the format can describe.
    TooLarge,
    /// Encoding with a caller-supplied histogram met a symbol whose count in it is zero.
    SymbolNotInModel(u8),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::BufferTooSmall(n) => write!(f, "output buffer too small: {n} bytes needed"),
            CodecError::Corrupted => write!(f, "corrupted coded data"),
            CodecError::TooLarge => write!(f, "input too large for the format"),
            CodecError::SymbolNotInModel(s) => {
                write!(
                    f,
                    "symbol {s:#04x} has no probability in the supplied histogram"
                )
            }
        }
    }
}

impl core::error::Error for CodecError {}
