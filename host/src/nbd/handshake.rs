//! The fixed-newstyle handshake and option haggling, up to the start of transmission.
//!
//! One export is served, under its configured name and as the default export (the empty name).
//! Every option the protocol's baseline requires is answered; anything else gets
//! `NBD_REP_ERR_UNSUP` and haggling goes on. Option data is read only after its announced length
//! has been checked against [`MAX_OPTION_DATA`]; a longer option is drained in bounded chunks and
//! refused with `NBD_REP_ERR_TOO_BIG`, so a client cannot make the server allocate what it claims.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use super::wire::{self, handshake_flag, info, opt, rep, tx_flag, Cursor, Malformed, OptionHeader};

/// Smallest request alignment the export advertises (NBD_INFO_BLOCK_SIZE minimum).
pub const MIN_BLOCK: u32 = 512;
/// Alignment at which requests avoid read-modify-write inside the device.
pub const PREFERRED_BLOCK: u32 = 4096;
/// Largest READ or WRITE payload served (NBD_INFO_BLOCK_SIZE maximum).
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Largest option data read into memory; names are at most 4096 bytes, so this leaves room for
/// a generous list of meta-context queries.
pub const MAX_OPTION_DATA: u32 = 64 << 10;
/// Options accepted in one handshake before the client is deemed to be stalling the server.
const MAX_OPTIONS: usize = 1024;

/// Context id handed out for `base:allocation`, the only metadata context served.
pub const BASE_ALLOCATION_ID: u32 = 1;
const BASE_ALLOCATION: &[u8] = b"base:allocation";

/// What the handshake needs to know about the export.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub size: u64,
    pub read_only: bool,
}

impl ExportInfo {
    /// Whether a client's export name selects this export (the empty name is the default).
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// What the client and server agreed on, which governs transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Structured replies are in use (READ answered with chunks, errors with messages).
    pub structured: bool,
    /// `base:allocation` was selected: BLOCK_STATUS is allowed.
    pub base_allocation: bool,
    /// The client asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO and so promised to honour it.
    pub block_size_agreed: bool,
    /// Transmission flags sent to the client.
    pub tx_flags: u16,
}

/// The transmission flags of an export, as advertised: only what the server really does.
pub fn transmission_flags(read_only: bool, structured: bool) -> u16 {
    let mut flags = tx_flag::HAS_FLAGS | tx_flag::SEND_FLUSH | tx_flag::SEND_FUA;
    // The device's cache (if any) is shared by all connections and FLUSH covers them all.
    flags |= tx_flag::CAN_MULTI_CONN;
    if read_only {
        flags |= tx_flag::READ_ONLY;
    } else {
        flags |= tx_flag::SEND_TRIM | tx_flag::SEND_WRITE_ZEROES | tx_flag::SEND_FAST_ZERO;
    }
    if structured {
        // Reads are always answered with a single data chunk, so "don't fragment" holds.
        flags |= tx_flag::SEND_DF;
    }
    flags
}

/// Runs the handshake on `s`. Returns `Ok(None)` when the session ends without transmission
/// (NBD_OPT_ABORT, an unknown export name under NBD_OPT_EXPORT_NAME, a protocol violation).
pub fn negotiate<S: Read + Write>(
    s: &mut S,
    export: &ExportInfo,
    shutting_down: &AtomicBool,
) -> io::Result<Option<Negotiated>> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&wire::magic::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&wire::magic::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(
        &(handshake_flag::FIXED_NEWSTYLE | handshake_flag::NO_ZEROES).to_be_bytes(),
    );
    s.write_all(&hello)?;
    s.flush()?;

    let mut cflags = [0u8; 4];
    s.read_exact(&mut cflags)?;
    let cflags = u32::from_be_bytes(cflags);
    let known = handshake_flag::C_FIXED_NEWSTYLE | handshake_flag::C_NO_ZEROES;
    if cflags & !known != 0 {
        // The spec requires dropping a client that sets flags we did not offer.
        return Ok(None);
    }
    let no_zeroes = cflags & handshake_flag::C_NO_ZEROES != 0;

    let mut state = Haggle {
        structured: false,
        meta_selected: false,
    };
    for _ in 0..MAX_OPTIONS {
        let mut header = [0u8; OptionHeader::<&[u8]>::LEN];
        s.read_exact(&mut header)?;
        let Ok(header) = OptionHeader::new_checked(&header[..]) else {
            return Ok(None);
        };
        let option = header.option();
        let length = header.length();
        if length > MAX_OPTION_DATA {
            if option == opt::EXPORT_NAME {
                // EXPORT_NAME cannot be answered with an error: the spec says hang up.
                return Ok(None);
            }
            discard(s, u64::from(length))?;
            reply(s, option, rep::ERR_TOO_BIG, b"option data too long")?;
            continue;
        }
        let mut data = vec![0u8; length as usize];
        s.read_exact(&mut data)?;

        if shutting_down.load(Ordering::Relaxed) && option != opt::ABORT {
            if option == opt::EXPORT_NAME {
                return Ok(None);
            }
            reply(s, option, rep::ERR_SHUTDOWN, b"server is shutting down")?;
            continue;
        }

        match option {
            opt::EXPORT_NAME => {
                if !export.matches(&data) {
                    return Ok(None);
                }
                let tx_flags = transmission_flags(export.read_only, state.structured);
                let mut out = Vec::with_capacity(10 + 124);
                out.extend_from_slice(&export.size.to_be_bytes());
                out.extend_from_slice(&tx_flags.to_be_bytes());
                if !no_zeroes {
                    out.resize(out.len() + 124, 0);
                }
                s.write_all(&out)?;
                s.flush()?;
                return Ok(Some(Negotiated {
                    structured: state.structured,
                    base_allocation: state.meta_selected,
                    block_size_agreed: false,
                    tx_flags,
                }));
            }
            opt::ABORT => {
                // The client may already have closed; an error writing the ACK changes nothing.
                let _ = reply(s, option, rep::ACK, &[]);
                return Ok(None);
            }
            opt::LIST => {
                if !data.is_empty() {
                    reply(s, option, rep::ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                    continue;
                }
                let mut server = Vec::new();
                server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                server.extend_from_slice(export.name.as_bytes());
                let mut out = Vec::new();
                wire::emit_option_reply(&mut out, option, rep::SERVER, &server);
                wire::emit_option_reply(&mut out, option, rep::ACK, &[]);
                s.write_all(&out)?;
                s.flush()?;
            }
            opt::INFO | opt::GO => {
                if let Some(negotiated) = info_or_go(s, option, &data, export, &state)? {
                    return Ok(Some(negotiated));
                }
            }
            opt::STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply(
                        s,
                        option,
                        rep::ERR_INVALID,
                        b"NBD_OPT_STRUCTURED_REPLY takes no data",
                    )?;
                    continue;
                }
                state.structured = true;
                reply(s, option, rep::ACK, &[])?;
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                meta_context(s, option, &data, export, &mut state)?;
            }
            opt::STARTTLS => {
                reply(
                    s,
                    option,
                    rep::ERR_POLICY,
                    b"TLS is not offered by this server",
                )?;
            }
            _ => {
                reply(s, option, rep::ERR_UNSUP, b"option not supported")?;
            }
        }
    }
    // A client still haggling after this many options is stalling: hard disconnect.
    Ok(None)
}

struct Haggle {
    structured: bool,
    meta_selected: bool,
}

fn reply<S: Write>(s: &mut S, option: u32, reply_type: u32, data: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(wire::OPTION_REPLY_LEN + data.len());
    wire::emit_option_reply(&mut out, option, reply_type, data);
    s.write_all(&out)?;
    s.flush()
}

/// Reads and drops `n` bytes in bounded chunks.
pub fn discard<S: Read>(s: &mut S, mut n: u64) -> io::Result<()> {
    let mut sink = vec![0u8; 64 << 10];
    while n > 0 {
        let step = n.min(sink.len() as u64) as usize;
        s.read_exact(&mut sink[..step])?;
        n -= step as u64;
    }
    Ok(())
}

/// NBD_OPT_INFO and NBD_OPT_GO: returns the agreement when GO succeeds.
fn info_or_go<S: Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    export: &ExportInfo,
    state: &Haggle,
) -> io::Result<Option<Negotiated>> {
    let parsed = (|| -> Result<(&[u8], Vec<u16>), Malformed> {
        let mut c = Cursor::new(data);
        let name = c.string()?;
        let n = c.u16()?;
        let mut requests = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            requests.push(c.u16()?);
        }
        if !c.is_empty() {
            return Err(Malformed);
        }
        Ok((name, requests))
    })();
    let Ok((name, requests)) = parsed else {
        reply(
            s,
            option,
            rep::ERR_INVALID,
            b"malformed NBD_OPT_INFO/NBD_OPT_GO data",
        )?;
        return Ok(None);
    };
    if !export.matches(name) {
        reply(s, option, rep::ERR_UNKNOWN, b"no such export")?;
        return Ok(None);
    }
    let tx_flags = transmission_flags(export.read_only, state.structured);
    let mut out = Vec::new();
    let mut item = Vec::with_capacity(14);
    item.extend_from_slice(&info::EXPORT.to_be_bytes());
    item.extend_from_slice(&export.size.to_be_bytes());
    item.extend_from_slice(&tx_flags.to_be_bytes());
    wire::emit_option_reply(&mut out, option, rep::INFO, &item);
    // Sent whether asked or not: the spec lets a server volunteer information, and a client that
    // did not ask is not bound by it (see `block_size_agreed`).
    item.clear();
    item.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    item.extend_from_slice(&MIN_BLOCK.to_be_bytes());
    item.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
    item.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    wire::emit_option_reply(&mut out, option, rep::INFO, &item);
    if requests.contains(&info::NAME) {
        item.clear();
        item.extend_from_slice(&info::NAME.to_be_bytes());
        item.extend_from_slice(export.name.as_bytes());
        wire::emit_option_reply(&mut out, option, rep::INFO, &item);
    }
    if requests.contains(&info::DESCRIPTION) {
        item.clear();
        item.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
        item.extend_from_slice(b"nandbox emulated flash SSD");
        wire::emit_option_reply(&mut out, option, rep::INFO, &item);
    }
    wire::emit_option_reply(&mut out, option, rep::ACK, &[]);
    s.write_all(&out)?;
    s.flush()?;
    if option != opt::GO {
        return Ok(None);
    }
    Ok(Some(Negotiated {
        structured: state.structured,
        base_allocation: state.meta_selected,
        block_size_agreed: requests.contains(&info::BLOCK_SIZE),
        tx_flags,
    }))
}

/// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT for the `base:` namespace.
fn meta_context<S: Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    export: &ExportInfo,
    state: &mut Haggle,
) -> io::Result<()> {
    let set = option == opt::SET_META_CONTEXT;
    if set {
        // SET replaces the selection even when it fails.
        state.meta_selected = false;
    }
    if !state.structured {
        return reply(
            s,
            option,
            rep::ERR_INVALID,
            b"negotiate structured replies first",
        );
    }
    let parsed = (|| -> Result<(&[u8], Vec<&[u8]>), Malformed> {
        let mut c = Cursor::new(data);
        let name = c.string()?;
        let n = c.u32()?;
        // Each query takes at least 4 bytes: a count beyond that is a lie, caught before looping.
        if n as usize > data.len() / 4 {
            return Err(Malformed);
        }
        let mut queries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            queries.push(c.string()?);
        }
        if !c.is_empty() {
            return Err(Malformed);
        }
        Ok((name, queries))
    })();
    let Ok((name, queries)) = parsed else {
        return reply(
            s,
            option,
            rep::ERR_INVALID,
            b"malformed meta context request",
        );
    };
    if !export.matches(name) {
        return reply(s, option, rep::ERR_UNKNOWN, b"no such export");
    }
    let wanted = if set {
        // Only the exact context name selects it; `base:` alone selects nothing on SET.
        queries.contains(&BASE_ALLOCATION)
    } else {
        // LIST: no query lists everything; `base:` is the namespace wildcard.
        queries.is_empty()
            || queries
                .iter()
                .any(|q| *q == BASE_ALLOCATION || *q == b"base:")
    };
    let mut out = Vec::new();
    if wanted {
        // LIST replies carry id 0 (reserved); SET hands out the id BLOCK_STATUS will carry.
        let id = if set { BASE_ALLOCATION_ID } else { 0 };
        let mut item = Vec::with_capacity(4 + BASE_ALLOCATION.len());
        item.extend_from_slice(&id.to_be_bytes());
        item.extend_from_slice(BASE_ALLOCATION);
        wire::emit_option_reply(&mut out, option, rep::META_CONTEXT, &item);
    }
    wire::emit_option_reply(&mut out, option, rep::ACK, &[]);
    s.write_all(&out)?;
    s.flush()?;
    if set {
        state.meta_selected = wanted;
    }
    Ok(())
}
