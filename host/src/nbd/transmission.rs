//! The transmission phase of one connection: requests in, replies out, many in flight.
//!
//! A small pool of workers per connection takes turns reading a request (under a mutex on the
//! read half), then calls the device and writes the reply itself under a mutex on the write
//! half, so replies leave as soon as they are ready (matched by cookie, possibly out of order).
//! Memory is bounded per connection by a budget of in-flight payload bytes and requests that a
//! worker takes *before* it allocates a buffer, so a header that claims a huge length costs
//! nothing until it has been checked and admitted.
//!
//! Every request is checked here against the export (range, flags, read-only) and answered
//! with the error the protocol names; the device only ever sees valid, in-range requests.

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use super::handshake::{self, Negotiated, BASE_ALLOCATION_ID, MAX_PAYLOAD, MIN_BLOCK};
use super::wire::{self, chunk, cmd, cmd_flag, errno, tx_flag, Request};
use crate::device::{BlockDevice, DevError, Extent, ZeroFlags};

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Worker threads calling the device.
    pub workers: usize,
    /// Payload bytes (READ buffers and WRITE data) in flight at once; at least [`MAX_PAYLOAD`].
    pub inflight_bytes: usize,
    /// Requests admitted and not yet answered.
    pub inflight_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            workers: 8,
            inflight_bytes: 2 * MAX_PAYLOAD as usize,
            inflight_requests: 128,
        }
    }
}

/// Upper bound on the span one BLOCK_STATUS looks at; the spec lets a server answer less.
const MAX_STATUS_SPAN: u32 = 1 << 30;
/// Upper bound on extents in one BLOCK_STATUS reply.
const MAX_EXTENTS: usize = 4096;

/// A validated command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        flags: ZeroFlags,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
    Disconnect,
}

/// Why a request is refused: the NBD error value and a message for structured replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub why: &'static str,
}

const fn refuse(errno: u32, why: &'static str) -> Refusal {
    Refusal { errno, why }
}

/// The export as transmission sees it.
#[derive(Debug, Clone, Copy)]
pub struct Export {
    pub size: u64,
    pub read_only: bool,
}

/// Checks one request header against the export and the agreement; returns the command or the
/// error the protocol (and nbdkit, where the spec leaves room) gives for it.
pub fn validate(
    kind: u16,
    flags: u16,
    offset: u64,
    len: u32,
    export: Export,
    neg: &Negotiated,
) -> Result<Op, Refusal> {
    let fua = flags & cmd_flag::FUA != 0;
    let allowed = match kind {
        cmd::READ if neg.tx_flags & tx_flag::SEND_DF != 0 => cmd_flag::FUA | cmd_flag::DF,
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM => cmd_flag::FUA,
        cmd::WRITE_ZEROES if neg.tx_flags & tx_flag::SEND_FAST_ZERO != 0 => {
            cmd_flag::FUA | cmd_flag::NO_HOLE | cmd_flag::FAST_ZERO
        }
        cmd::WRITE_ZEROES => cmd_flag::FUA | cmd_flag::NO_HOLE,
        cmd::BLOCK_STATUS => cmd_flag::FUA | cmd_flag::REQ_ONE,
        cmd::DISC => return Ok(Op::Disconnect),
        _ => return Err(refuse(errno::EINVAL, "unknown command")),
    };
    if flags & !allowed != 0 {
        return Err(refuse(
            errno::EINVAL,
            "command flag not valid for this command",
        ));
    }
    let writes = matches!(kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && export.read_only {
        return Err(refuse(errno::EPERM, "export is read-only"));
    }
    if kind == cmd::FLUSH {
        if offset != 0 || len != 0 {
            return Err(refuse(
                errno::EINVAL,
                "FLUSH offset and length must be zero",
            ));
        }
        return Ok(Op::Flush);
    }
    if kind == cmd::BLOCK_STATUS && !neg.base_allocation {
        return Err(refuse(errno::EINVAL, "no metadata context was selected"));
    }
    if len == 0 {
        return Err(refuse(errno::EINVAL, "zero-length request"));
    }
    let Some(end) = offset.checked_add(u64::from(len)) else {
        return Err(refuse(errno::EINVAL, "offset + length overflows"));
    };
    if end > export.size {
        return Err(if matches!(kind, cmd::WRITE | cmd::WRITE_ZEROES) {
            refuse(errno::ENOSPC, "write beyond the end of the export")
        } else {
            refuse(errno::EINVAL, "request beyond the end of the export")
        });
    }
    if matches!(kind, cmd::READ | cmd::WRITE) && len > MAX_PAYLOAD {
        return Err(refuse(
            errno::EINVAL,
            "payload larger than the maximum block size",
        ));
    }
    // A client that asked for the block-size info promised to honour it; others may send any
    // alignment, which the device serves by read-modify-write.
    let block = u64::from(MIN_BLOCK);
    if neg.block_size_agreed
        && (!offset.is_multiple_of(block) || !u64::from(len).is_multiple_of(block))
    {
        return Err(refuse(
            errno::EINVAL,
            "request not aligned to the minimum block size",
        ));
    }
    Ok(match kind {
        cmd::READ => Op::Read { offset, len },
        cmd::WRITE => Op::Write { offset, len, fua },
        cmd::TRIM => Op::Trim { offset, len, fua },
        cmd::WRITE_ZEROES => Op::WriteZeroes {
            offset,
            len,
            flags: ZeroFlags {
                fua,
                no_hole: flags & cmd_flag::NO_HOLE != 0,
                fast_zero: flags & cmd_flag::FAST_ZERO != 0,
            },
        },
        _ => Op::BlockStatus {
            offset,
            len,
            req_one: flags & cmd_flag::REQ_ONE != 0,
        },
    })
}

fn dev_errno(e: &DevError) -> u32 {
    match e {
        DevError::Invalid(_) => errno::EINVAL,
        DevError::NoSpace => errno::ENOSPC,
        DevError::ReadOnly => errno::EPERM,
        DevError::NotSupported => errno::ENOTSUP,
        DevError::Io(_) => errno::EIO,
    }
}

/// Counting semaphore over in-flight bytes and requests.
struct Budget {
    used: Mutex<BudgetUse>,
    freed: Condvar,
    max_bytes: usize,
    max_requests: usize,
}

#[derive(Default)]
struct BudgetUse {
    bytes: usize,
    requests: usize,
    /// Someone waits in `acquire`: only then is a release worth a wake-up (a syscall).
    waiting: bool,
}

impl Budget {
    fn acquire(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        // A request larger than the whole budget still runs, alone.
        while used.requests >= self.max_requests
            || (used.bytes > 0 && used.bytes + bytes > self.max_bytes)
        {
            used.waiting = true;
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        used.bytes += bytes;
        used.requests += 1;
    }
    fn release(&self, bytes: usize) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.bytes -= bytes;
        used.requests -= 1;
        if std::mem::take(&mut used.waiting) {
            // Only the worker holding the read half ever waits here: one to wake.
            self.freed.notify_all();
        }
    }
}

/// The write half, shared by the reader (for errors found at parse time) and the workers.
struct Replier<W: Write> {
    out: Mutex<W>,
    structured: bool,
    /// Set once a write fails: the client is gone, later replies are dropped.
    broken: AtomicBool,
}

impl<W: Write> Replier<W> {
    fn send(&self, bytes: &[u8]) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if out.write_all(bytes).and_then(|()| out.flush()).is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    fn ok(&self, cookie: u64) {
        // Simple replies are allowed for every command but READ, even when structured.
        let mut b = [0u8; wire::SIMPLE_REPLY_LEN];
        wire::emit_simple_reply(&mut b, 0, cookie);
        self.send(&b);
    }

    fn error(&self, cookie: u64, errno: u32, why: &str) {
        if self.structured {
            self.send(&wire::error_chunk(cookie, errno, why));
        } else {
            let mut b = [0u8; wire::SIMPLE_REPLY_LEN];
            wire::emit_simple_reply(&mut b, errno, cookie);
            self.send(&b);
        }
    }

    /// Sends a READ's data: header and data leave in one vectored write, without copying the
    /// data into a buffer with room for the header.
    fn read_ok(&self, cookie: u64, offset: u64, data: &[u8]) {
        let mut head = [0u8; wire::CHUNK_LEN + 8];
        let head: &[u8] = if self.structured {
            // One OFFSET_DATA chunk (≤ 32 MiB + 8, fits the u32 length) ends the reply.
            let len = (data.len() + 8) as u32;
            let kind = chunk::TYPE_OFFSET_DATA;
            wire::emit_chunk(&mut head, chunk::FLAG_DONE, kind, cookie, len);
            head[wire::CHUNK_LEN..].copy_from_slice(&offset.to_be_bytes());
            &head
        } else {
            wire::emit_simple_reply(&mut head, 0, cookie);
            &head[..wire::SIMPLE_REPLY_LEN]
        };
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if write_all_vectored(&mut *out, head, data).is_err() {
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    fn block_status(&self, cookie: u64, extents: &[Extent]) {
        let payload = 4 + 8 * extents.len();
        let mut b = vec![0u8; wire::CHUNK_LEN + payload];
        let kind = chunk::TYPE_BLOCK_STATUS;
        wire::emit_chunk(&mut b, chunk::FLAG_DONE, kind, cookie, payload as u32);
        let body = &mut b[wire::CHUNK_LEN..];
        body[..4].copy_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for (e, slot) in extents.iter().zip(body[4..].chunks_exact_mut(8)) {
            slot[..4].copy_from_slice(&e.length.to_be_bytes());
            slot[4..].copy_from_slice(&e.flags.to_be_bytes());
        }
        self.send(&b);
    }
}

/// Writes `head` then `data` with as few syscalls as the socket allows.
fn write_all_vectored<W: Write>(out: &mut W, head: &[u8], data: &[u8]) -> io::Result<()> {
    let (mut head, mut data) = (head, data);
    while !head.is_empty() || !data.is_empty() {
        let n = out.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(data)])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        data = &data[n - from_head..];
    }
    out.flush()
}

/// One admitted request: the command, its cookie, its budget share and any write payload.
struct Job {
    cookie: u64,
    op: Op,
    cost: usize,
    data: Vec<u8>,
}

/// Serves requests until the client disconnects, breaks the protocol, or `reader` reaches EOF
/// (the server shuts the read half down to stop a connection). Waits for every admitted request
/// to be answered before returning.
///
/// Every worker takes its turn at the read half (under a mutex), reads one request and its
/// payload, lets go, runs it and writes the reply itself. This is nbdkit's model: compared with a
/// dedicated reader handing requests over a queue, it saves a thread wake-up per request, which
/// on a small machine is most of the cost of a 4 KiB request.
pub fn serve<R: Read + Send, W: Write + Send>(
    reader: R,
    writer: W,
    device: &dyn BlockDevice,
    neg: Negotiated,
    limits: Limits,
) -> io::Result<()> {
    let export = Export {
        size: device.size(),
        read_only: device.read_only(),
    };
    let replier = Replier {
        out: Mutex::new(writer),
        structured: neg.structured,
        broken: false.into(),
    };
    let budget = Budget {
        used: Mutex::new(BudgetUse::default()),
        freed: Condvar::new(),
        max_bytes: limits.inflight_bytes.max(MAX_PAYLOAD as usize),
        max_requests: limits.inflight_requests.max(1),
    };
    // `None` once the stream has ended: the other workers then finish what they hold and stop.
    // Room for a burst of small requests per read syscall; larger payloads bypass the buffer
    // once it is drained, so a small one also means less payload copied through it.
    let input = Mutex::new(Some(BufReader::with_capacity(64 << 10, reader)));
    let failure: Mutex<Option<io::Error>> = Mutex::new(None);
    let work = || loop {
        let job = {
            let mut input = input.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = input.as_mut() else { return };
            match next_job(r, export, &neg, &replier, &budget) {
                Ok(Some(job)) => job,
                Ok(None) => {
                    *input = None;
                    return;
                }
                Err(e) => {
                    *input = None;
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return;
                }
            }
        };
        let cost = job.cost;
        execute(job, device, &replier);
        budget.release(cost);
    };
    std::thread::scope(|scope| {
        for _ in 1..limits.workers.max(1) {
            let spawned = std::thread::Builder::new()
                .name("nbd-worker".into())
                .stack_size(WORKER_STACK)
                .spawn_scoped(scope, work);
            if spawned.is_err() {
                break; // out of threads: serve with those we have (at least this one)
            }
        }
        work();
    });
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Workers keep no large buffers on their stacks (payloads and the discard buffer are heap).
const WORKER_STACK: usize = 256 << 10;

/// Reads the next request; answers refused ones itself. `Ok(None)` at DISC or a clean EOF.
fn next_job<R: Read, W: Write>(
    reader: &mut BufReader<R>,
    export: Export,
    neg: &Negotiated,
    replier: &Replier<W>,
    budget: &Budget,
) -> io::Result<Option<Job>> {
    loop {
        let mut header = [0u8; Request::<&[u8]>::LEN];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            // The client went away between requests: an ordinary end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let Ok(req) = Request::new_checked(&header[..]) else {
            // Without the magic there is no telling where the next request starts.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad request magic",
            ));
        };
        let (kind, cookie, len) = (req.kind(), req.cookie(), req.length());
        match validate(kind, req.flags(), req.offset(), len, export, neg) {
            Err(refusal) => {
                if kind == cmd::WRITE {
                    // Keep the stream in sync: the payload follows whatever we think of it.
                    handshake::discard(reader, u64::from(len))?;
                }
                replier.error(cookie, refusal.errno, refusal.why);
            }
            Ok(Op::Disconnect) => return Ok(None),
            Ok(op) => {
                let cost = match op {
                    Op::Read { len, .. } | Op::Write { len, .. } => len as usize,
                    _ => 0,
                };
                budget.acquire(cost);
                let mut data = Vec::new();
                if let Op::Write { len, .. } = op {
                    // Read into reserved capacity: std sockets fill it without zeroing it first.
                    data = Vec::with_capacity(len as usize);
                    let got = reader.by_ref().take(u64::from(len)).read_to_end(&mut data);
                    if got.is_err() || data.len() != len as usize {
                        budget.release(cost);
                        return Err(got.err().unwrap_or_else(|| {
                            io::Error::new(io::ErrorKind::UnexpectedEof, "write payload cut short")
                        }));
                    }
                }
                return Ok(Some(Job {
                    cookie,
                    op,
                    cost,
                    data,
                }));
            }
        }
    }
}

fn execute<W: Write>(job: Job, device: &dyn BlockDevice, replier: &Replier<W>) {
    let cookie = job.cookie;
    let result = match job.op {
        Op::Read { offset, len } => match device.read_vec(offset, len as usize) {
            Ok(data) if data.len() == len as usize => {
                return replier.read_ok(cookie, offset, &data);
            }
            // Never send a reply whose length disagrees with its header.
            Ok(_) => Err(DevError::Io("device returned a short read".into())),
            Err(e) => Err(e),
        },
        Op::Write { offset, fua, .. } => device.write_vec(offset, job.data, fua),
        Op::Flush => device.flush(),
        Op::Trim { offset, len, fua } => device.trim(offset, u64::from(len), fua),
        Op::WriteZeroes { offset, len, flags } => {
            device.write_zeroes(offset, u64::from(len), flags)
        }
        Op::BlockStatus {
            offset,
            len,
            req_one,
        } => match device.block_status(offset, len.min(MAX_STATUS_SPAN)) {
            Ok(extents) => {
                let extents = shape_extents(extents, len, req_one);
                return replier.block_status(cookie, &extents);
            }
            Err(e) => Err(e),
        },
        Op::Disconnect => Ok(()),
    };
    match result {
        Ok(()) => replier.ok(cookie),
        Err(e) => replier.error(cookie, dev_errno(&e), &e.to_string()),
    }
}

/// Makes a device's extent list a valid reply: no zero lengths, adjacent equal runs merged,
/// never past the requested length, one extent for REQ_ONE, at least one extent always.
pub fn shape_extents(extents: Vec<Extent>, len: u32, req_one: bool) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    let mut covered: u32 = 0;
    for e in extents {
        if covered >= len {
            break;
        }
        let length = e.length.min(len - covered);
        if length == 0 {
            continue;
        }
        covered += length;
        let full = out.len() == MAX_EXTENTS;
        match out.last_mut() {
            Some(last) if last.flags == e.flags => last.length += length,
            _ if full => break,
            _ => out.push(Extent {
                length,
                flags: e.flags,
            }),
        }
    }
    if out.is_empty() {
        // Status 0 ("allocated, contents unknown") is always a safe answer.
        out.push(Extent {
            length: len,
            flags: 0,
        });
    }
    if req_one {
        out.truncate(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(structured: bool, meta: bool, agreed: bool) -> Negotiated {
        Negotiated {
            structured,
            base_allocation: meta,
            block_size_agreed: agreed,
            tx_flags: handshake::transmission_flags(false, structured),
        }
    }
    const EXP: Export = Export {
        size: 1 << 20,
        read_only: false,
    };

    #[test]
    fn errno_for_each_bad_request() {
        let n = neg(true, false, false);
        let e = |kind, flags, off, len, exp| {
            validate(kind, flags, off, len, exp, &n).map_err(|r| r.errno)
        };
        assert_eq!(
            e(cmd::WRITE, 0, (1 << 20) - 512, 1024, EXP),
            Err(errno::ENOSPC)
        );
        assert_eq!(
            e(cmd::WRITE_ZEROES, 0, 1 << 20, 512, EXP),
            Err(errno::ENOSPC)
        );
        assert_eq!(
            e(cmd::READ, 0, (1 << 20) - 512, 1024, EXP),
            Err(errno::EINVAL)
        );
        assert_eq!(e(cmd::TRIM, 0, 2 << 20, 512, EXP), Err(errno::EINVAL));
        assert_eq!(e(cmd::READ, 0, 0, 0, EXP), Err(errno::EINVAL));
        assert_eq!(e(cmd::WRITE, 0, 0, 0, EXP), Err(errno::EINVAL));
        assert_eq!(
            e(cmd::READ, 0, u64::MAX - 100, 512, EXP),
            Err(errno::EINVAL)
        );
        assert_eq!(
            e(cmd::WRITE, 0, u64::MAX - 100, 512, EXP),
            Err(errno::EINVAL)
        );
        assert_eq!(e(99, 0, 0, 512, EXP), Err(errno::EINVAL));
        assert_eq!(e(cmd::READ, 1 << 9, 0, 512, EXP), Err(errno::EINVAL));
        assert_eq!(
            e(cmd::WRITE, cmd_flag::NO_HOLE, 0, 512, EXP),
            Err(errno::EINVAL)
        );
        assert_eq!(e(cmd::BLOCK_STATUS, 0, 0, 512, EXP), Err(errno::EINVAL));
        let ro = Export {
            read_only: true,
            ..EXP
        };
        assert_eq!(e(cmd::WRITE, 0, 0, 512, ro), Err(errno::EPERM));
        assert_eq!(e(cmd::TRIM, 0, 0, 512, ro), Err(errno::EPERM));
        assert_eq!(e(cmd::FLUSH, 0, 0, 0, ro), Ok(Op::Flush));
        let big = Export {
            size: 1 << 40,
            read_only: false,
        };
        assert_eq!(
            e(cmd::WRITE, 0, 0, MAX_PAYLOAD + 512, big),
            Err(errno::EINVAL)
        );
        assert!(e(cmd::TRIM, 0, 0, u32::MAX - 511, big).is_ok());
    }

    #[test]
    fn alignment_is_enforced_only_on_clients_that_agreed() {
        let free = neg(false, false, false);
        let bound = neg(false, false, true);
        assert!(validate(cmd::WRITE, 0, 1, 3, EXP, &free).is_ok());
        assert_eq!(
            validate(cmd::WRITE, 0, 1, 3, EXP, &bound).map_err(|r| r.errno),
            Err(errno::EINVAL)
        );
        assert!(validate(cmd::WRITE, 0, 512, 1024, EXP, &bound).is_ok());
    }

    #[test]
    fn df_is_valid_only_with_structured_replies() {
        assert!(validate(
            cmd::READ,
            cmd_flag::DF,
            0,
            512,
            EXP,
            &neg(true, false, false)
        )
        .is_ok());
        assert!(validate(
            cmd::READ,
            cmd_flag::DF,
            0,
            512,
            EXP,
            &neg(false, false, false)
        )
        .is_err());
    }

    #[test]
    fn extents_are_clipped_merged_and_never_empty() {
        let x = |length, flags| Extent { length, flags };
        assert_eq!(
            shape_extents(vec![x(4096, 3), x(4096, 3), x(8192, 0)], 10000, false),
            vec![x(8192, 3), x(1808, 0)]
        );
        assert_eq!(
            shape_extents(vec![x(4096, 3), x(4096, 0)], 8192, true),
            vec![x(4096, 3)]
        );
        assert_eq!(shape_extents(vec![x(0, 3)], 512, false), vec![x(512, 0)]);
    }
}
