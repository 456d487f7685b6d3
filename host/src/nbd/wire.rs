//! NBD wire structures: the protocol's constants and every fixed-size message as named
//! big-endian byte ranges read or written through checked views (smoltcp `mod field` style).
//!
//! Nothing here trusts its input: a view is built with `new_checked`, which refuses a buffer too
//! short for the message, and variable-length option data is walked with [`Cursor`], whose every
//! read is bounds-checked. Malformed bytes become a [`Malformed`] error, never a panic.
//!
//! NBD is big-endian ("network byte order") throughout, unlike nandbox's on-flash formats.

use std::ops::Range;

/// Magic numbers that open each kind of message.
pub mod magic {
    /// "NBDMAGIC": the first 8 bytes the server sends.
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// "IHAVEOPT": newstyle negotiation, and the prefix of every option request.
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// Prefix of every fixed-newstyle option reply.
    pub const OPTION_REPLY: u64 = 0x0003_e889_0455_65a9;
    /// Prefix of every transmission request.
    pub const REQUEST: u32 = 0x2560_9513;
    /// Prefix of a simple reply.
    pub const SIMPLE_REPLY: u32 = 0x6744_6698;
    /// Prefix of a structured reply chunk.
    pub const STRUCTURED_REPLY: u32 = 0x668e_33ef;
}

/// Handshake flags (server, 16 bits) and client flags (32 bits).
pub mod handshake_flag {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

/// Transmission flags (16 bits), sent with the export size.
pub mod tx_flag {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option numbers of the handshake.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types; errors have bit 31 set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    const ERR: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERR + 1;
    pub const ERR_POLICY: u32 = ERR + 2;
    pub const ERR_INVALID: u32 = ERR + 3;
    pub const ERR_UNKNOWN: u32 = ERR + 6;
    pub const ERR_SHUTDOWN: u32 = ERR + 7;
    pub const ERR_TOO_BIG: u32 = ERR + 9;
}

/// Information types inside NBD_REP_INFO (answers to NBD_OPT_INFO and NBD_OPT_GO).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission command types.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags of a request.
pub mod cmd_flag {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk flags and types.
pub mod chunk {
    pub const FLAG_DONE: u16 = 1 << 0;
    pub const TYPE_OFFSET_DATA: u16 = 1;
    pub const TYPE_BLOCK_STATUS: u16 = 5;
    pub const TYPE_ERROR: u16 = (1 << 15) + 1;
}

/// Error values of the transmission phase (the protocol fixes them; they match Linux errno).
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const ENOTSUP: u32 = 95;
}

/// Bytes that do not form the message they should.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed NBD message")
    }
}

impl std::error::Error for Malformed {}

fn be_u16(b: &[u8], r: Range<usize>) -> u16 {
    let mut a = [0; 2];
    a.copy_from_slice(&b[r]);
    u16::from_be_bytes(a)
}

fn be_u32(b: &[u8], r: Range<usize>) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[r]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8], r: Range<usize>) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

/// An option request header: `IHAVEOPT`, option, length of the data that follows.
pub struct OptionHeader<T: AsRef<[u8]>> {
    buffer: T,
}

mod option_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const OPTION: Range<usize> = 8..12;
    pub const LENGTH: Range<usize> = 12..16;
}

impl<T: AsRef<[u8]>> OptionHeader<T> {
    /// Size of the header on the wire.
    pub const LEN: usize = option_field::LENGTH.end;

    /// Wraps `buffer`, refusing one too short or without the `IHAVEOPT` magic.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let view = Self { buffer };
        if view.buffer.as_ref().len() < Self::LEN || view.magic() != magic::IHAVEOPT {
            return Err(Malformed);
        }
        Ok(view)
    }
    fn magic(&self) -> u64 {
        be_u64(self.buffer.as_ref(), option_field::MAGIC)
    }
    pub fn option(&self) -> u32 {
        be_u32(self.buffer.as_ref(), option_field::OPTION)
    }
    pub fn length(&self) -> u32 {
        be_u32(self.buffer.as_ref(), option_field::LENGTH)
    }
}

mod option_reply_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..8;
    pub const OPTION: Range<usize> = 8..12;
    pub const TYPE: Range<usize> = 12..16;
    pub const LENGTH: Range<usize> = 16..20;
}

/// Size of an option reply header.
pub const OPTION_REPLY_LEN: usize = option_reply_field::LENGTH.end;

/// Appends an option reply (header and `data`) to `out`.
pub fn emit_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    let start = out.len();
    out.resize(start + OPTION_REPLY_LEN, 0);
    let h = &mut out[start..];
    h[option_reply_field::MAGIC].copy_from_slice(&magic::OPTION_REPLY.to_be_bytes());
    h[option_reply_field::OPTION].copy_from_slice(&option.to_be_bytes());
    h[option_reply_field::TYPE].copy_from_slice(&reply_type.to_be_bytes());
    // Option data is bounded by the server's own replies (names ≤ 4096 bytes): fits in u32.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    h[option_reply_field::LENGTH].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// A transmission request header (28 bytes; a WRITE's payload follows it).
pub struct Request<T: AsRef<[u8]>> {
    buffer: T,
}

mod request_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const OFFSET: Range<usize> = 16..24;
    pub const LENGTH: Range<usize> = 24..28;
}

impl<T: AsRef<[u8]>> Request<T> {
    /// Size of the header on the wire.
    pub const LEN: usize = request_field::LENGTH.end;

    /// Wraps `buffer`, refusing one too short or without the request magic.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let view = Self { buffer };
        let b = view.buffer.as_ref();
        if b.len() < Self::LEN || be_u32(b, request_field::MAGIC) != magic::REQUEST {
            return Err(Malformed);
        }
        Ok(view)
    }
    pub fn flags(&self) -> u16 {
        be_u16(self.buffer.as_ref(), request_field::FLAGS)
    }
    pub fn kind(&self) -> u16 {
        be_u16(self.buffer.as_ref(), request_field::TYPE)
    }
    pub fn cookie(&self) -> u64 {
        be_u64(self.buffer.as_ref(), request_field::COOKIE)
    }
    pub fn offset(&self) -> u64 {
        be_u64(self.buffer.as_ref(), request_field::OFFSET)
    }
    pub fn length(&self) -> u32 {
        be_u32(self.buffer.as_ref(), request_field::LENGTH)
    }
}

#[cfg(test)]
impl Request<[u8; 28]> {
    /// Builds a request header, as a client would.
    pub fn build(flags: u16, kind: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[request_field::MAGIC].copy_from_slice(&magic::REQUEST.to_be_bytes());
        b[request_field::FLAGS].copy_from_slice(&flags.to_be_bytes());
        b[request_field::TYPE].copy_from_slice(&kind.to_be_bytes());
        b[request_field::COOKIE].copy_from_slice(&cookie.to_be_bytes());
        b[request_field::OFFSET].copy_from_slice(&offset.to_be_bytes());
        b[request_field::LENGTH].copy_from_slice(&length.to_be_bytes());
        b
    }
}

mod simple_reply_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const ERROR: Range<usize> = 4..8;
    pub const COOKIE: Range<usize> = 8..16;
}

/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = simple_reply_field::COOKIE.end;

/// Writes a simple reply header into the first [`SIMPLE_REPLY_LEN`] bytes of `out`.
pub fn emit_simple_reply(out: &mut [u8], error: u32, cookie: u64) {
    let h = &mut out[..SIMPLE_REPLY_LEN];
    h[simple_reply_field::MAGIC].copy_from_slice(&magic::SIMPLE_REPLY.to_be_bytes());
    h[simple_reply_field::ERROR].copy_from_slice(&error.to_be_bytes());
    h[simple_reply_field::COOKIE].copy_from_slice(&cookie.to_be_bytes());
}

mod chunk_field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const FLAGS: Range<usize> = 4..6;
    pub const TYPE: Range<usize> = 6..8;
    pub const COOKIE: Range<usize> = 8..16;
    pub const LENGTH: Range<usize> = 16..20;
}

/// Size of a structured reply chunk header.
pub const CHUNK_LEN: usize = chunk_field::LENGTH.end;

/// Writes a structured reply chunk header into the first [`CHUNK_LEN`] bytes of `out`.
pub fn emit_chunk(out: &mut [u8], flags: u16, kind: u16, cookie: u64, length: u32) {
    let h = &mut out[..CHUNK_LEN];
    h[chunk_field::MAGIC].copy_from_slice(&magic::STRUCTURED_REPLY.to_be_bytes());
    h[chunk_field::FLAGS].copy_from_slice(&flags.to_be_bytes());
    h[chunk_field::TYPE].copy_from_slice(&kind.to_be_bytes());
    h[chunk_field::COOKIE].copy_from_slice(&cookie.to_be_bytes());
    h[chunk_field::LENGTH].copy_from_slice(&length.to_be_bytes());
}

/// A structured error chunk (NBD_REPLY_TYPE_ERROR, final) carrying `message`.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    // The protocol caps strings at 4096 bytes; ours are short, but cut on a char boundary anyway.
    let mut end = message.len().min(4096);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let msg = &message.as_bytes()[..end];
    let payload = 4 + 2 + msg.len();
    let mut out = vec![0u8; CHUNK_LEN + payload];
    emit_chunk(
        &mut out,
        chunk::FLAG_DONE,
        chunk::TYPE_ERROR,
        cookie,
        payload as u32,
    );
    out[CHUNK_LEN..CHUNK_LEN + 4].copy_from_slice(&error.to_be_bytes());
    out[CHUNK_LEN + 4..CHUNK_LEN + 6].copy_from_slice(&(msg.len() as u16).to_be_bytes());
    out[CHUNK_LEN + 6..].copy_from_slice(msg);
    out
}

/// A bounds-checked reader over option data: every field read fails cleanly past the end.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.data.len() {
            return Err(Malformed);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }
    pub fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(be_u16(self.bytes(2)?, 0..2))
    }
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(be_u32(self.bytes(4)?, 0..4))
    }
    /// A string prefixed by its 32-bit length; longer than 4096 bytes is malformed.
    pub fn string(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u32()? as usize;
        if len > 4096 {
            return Err(Malformed);
        }
        self.bytes(len)
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_refuses_bad_magic_or_short_buffers() {
        let b = Request::build(cmd_flag::FUA, cmd::WRITE, 0xdead_beef, 1 << 40, 4096);
        let r = Request::new_checked(&b[..]).unwrap();
        assert_eq!(
            (r.flags(), r.kind(), r.cookie(), r.offset(), r.length()),
            (cmd_flag::FUA, cmd::WRITE, 0xdead_beef, 1 << 40, 4096)
        );
        assert!(Request::new_checked(&b[..27]).is_err());
        let mut bad = b;
        bad[0] ^= 1;
        assert!(Request::new_checked(&bad[..]).is_err());
    }

    #[test]
    fn cursor_never_reads_past_the_end() {
        let data = [0, 0, 0, 9, b'a'];
        let mut c = Cursor::new(&data);
        assert_eq!(c.string(), Err(Malformed));
        let mut c = Cursor::new(&[0, 1]);
        assert_eq!(c.u32(), Err(Malformed));
        assert_eq!(c.u16(), Ok(1));
        assert!(c.is_empty());
    }

    #[test]
    fn error_chunk_lengths_are_consistent() {
        let c = error_chunk(7, errno::EINVAL, "bad");
        assert_eq!(c.len(), CHUNK_LEN + 6 + 3);
        assert_eq!(u32::from_be_bytes(c[16..20].try_into().unwrap()), 9);
        assert_eq!(u16::from_be_bytes(c[24..26].try_into().unwrap()), 3);
    }
}
