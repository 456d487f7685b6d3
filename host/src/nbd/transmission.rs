//! The transmission phase of one connection: requests in, replies out, many in flight.
//!
//! Three threads per connection, around a queue pair into the device (an NVMe submission and
//! completion queue, in effect). Two readers take turns at the socket: the one whose turn it is
//! reads requests, checks them and submits the burst it read at once (the firmware runs it
//! right there, on that thread, see `Firmware::submit_batch`); a burst with a large write it
//! runs after giving the socket to the other, so receiving the next payload overlaps running
//! this one. The device hands results to the connection's
//! [`Completer`], which turns them into replies; a writer thread sends what has gathered, many
//! replies per system call, matched by cookie and possibly out of order. A burst of requests
//! thus costs few thread wake-ups, not several per request, which on a small machine is most of
//! the cost of a 4 KiB request. Where the socket allows a non-blocking send, small bursts of replies skip
//! the writer too: the thread that completes them (the one that ran them) sends them itself, and
//! leaves to the writer only what the socket does not take at once (so a client that stops
//! reading never stalls the device).
//!
//! Memory is bounded per connection by a budget of in-flight payload bytes and requests that the
//! reader takes *before* it allocates a buffer, so a header that claims a huge length costs
//! nothing until it has been checked and admitted. Payload buffers are recycled: a write's buffer
//! comes back from the device, a read's once its reply is sent.
//!
//! In `--latency real` a completion carries the time its modelled NAND work ends; the writer
//! holds the reply until then, waiting precisely (short sleeps, then a spin).
//!
//! Every request is checked here against the export (range, flags, read-only) and answered
//! with the error the protocol names; the device only ever sees valid, in-range requests.

use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::handshake::{self, Negotiated, BASE_ALLOCATION_ID, MAX_PAYLOAD, MIN_BLOCK};
use super::wire::{self, chunk, cmd, cmd_flag, errno, tx_flag, Request};
use crate::device::{self, BlockDevice, Completer, DevError, Extent, Output, Queue, ZeroFlags};

/// Per-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Payload bytes (READ buffers and WRITE data) in flight at once; at least [`MAX_PAYLOAD`].
    pub inflight_bytes: usize,
    /// Requests admitted and not yet answered.
    pub inflight_requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
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

/// What building a request's reply needs, kept from admission to completion.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A simple reply (or an error).
    Plain,
    /// Data at `offset`.
    Read { offset: u64 },
    /// Extents for a request of `len` bytes.
    Status { len: u32, req_one: bool },
}

#[derive(Debug)]
struct Admitted {
    cookie: u64,
    shape: Shape,
    cost: usize,
}

/// Payload buffers a connection keeps for reuse: eight 1 MiB requests' worth, so a QD8 stream
/// of 1 MiB requests allocates nothing, while an idle connection holds little memory.
const POOL_BYTES: usize = 8 << 20;

/// Room for the longest reply header: a structured OFFSET_DATA chunk and its offset.
const HEAD_MAX: usize = wire::CHUNK_LEN + 8;

/// A reply ready to go out.
struct Reply {
    head: [u8; HEAD_MAX],
    head_len: usize,
    /// Read data, or a whole reply built on the heap (errors, extents).
    body: Vec<u8>,
    /// The body is a read buffer: back to the pool once sent.
    recycle: bool,
    /// Budget bytes held, and whether a request slot is held (refusals at parse time hold none).
    cost: usize,
    admitted: bool,
    /// The modelled completion time (`--latency real`): not sent before.
    not_before: Option<Instant>,
}

impl Reply {
    fn new(body: Vec<u8>) -> Self {
        Reply {
            head: [0; HEAD_MAX],
            head_len: 0,
            body,
            recycle: false,
            cost: 0,
            admitted: false,
            not_before: None,
        }
    }

    fn simple(cookie: u64, errno: u32) -> Self {
        let mut r = Reply::new(Vec::new());
        wire::emit_simple_reply(&mut r.head, errno, cookie);
        r.head_len = wire::SIMPLE_REPLY_LEN;
        r
    }

    fn error(structured: bool, cookie: u64, errno: u32, why: &str) -> Self {
        if structured {
            Reply::new(wire::error_chunk(cookie, errno, why))
        } else {
            Reply::simple(cookie, errno)
        }
    }

    /// A READ's data: a header and the buffer itself, sent with one vectored write.
    fn read(structured: bool, cookie: u64, offset: u64, data: Vec<u8>) -> Self {
        let mut r = Reply::new(data);
        if structured {
            // One OFFSET_DATA chunk (≤ 32 MiB + 8, fits the u32 length) ends the reply.
            let len = (r.body.len() + 8) as u32;
            let kind = chunk::TYPE_OFFSET_DATA;
            wire::emit_chunk(&mut r.head, chunk::FLAG_DONE, kind, cookie, len);
            r.head[wire::CHUNK_LEN..].copy_from_slice(&offset.to_be_bytes());
            r.head_len = HEAD_MAX;
        } else {
            wire::emit_simple_reply(&mut r.head, 0, cookie);
            r.head_len = wire::SIMPLE_REPLY_LEN;
        }
        r.recycle = true;
        r
    }

    fn block_status(cookie: u64, extents: &[Extent]) -> Self {
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
        Reply::new(b)
    }
}

/// The connection's state shared by its reader, its writer and the device's completions.
#[derive(Default)]
struct State {
    /// Admitted requests by tag (the index); `free` lists the empty slots.
    admitted: Vec<Option<Admitted>>,
    free: Vec<usize>,
    /// Budget in use.
    bytes: usize,
    requests: usize,
    /// Replies not yet sent.
    replies: Vec<Reply>,
    /// Payload buffers to reuse, and their total capacity.
    pool: Vec<Vec<u8>>,
    pool_bytes: usize,
    /// Someone waits on the matching condvar: only then is a wake-up (a syscall) worth it.
    reader_waits: bool,
    writer_waits: bool,
    /// The reader has stopped: the writer ends once every admitted request is answered.
    ended: bool,
    /// A thread is writing to the socket with the lock released (the writer, or the device's
    /// thread sending directly): nobody else may start.
    sending: bool,
    /// A batch a direct send left unfinished (the socket was full) and the bytes of it already
    /// sent: the writer sends the rest before anything else.
    partial: Option<(Vec<Reply>, usize)>,
}

/// One connection's completion side: implements [`Completer`] for the device.
struct Conn {
    state: Mutex<State>,
    to_reader: Condvar,
    to_writer: Condvar,
    structured: bool,
    max_bytes: usize,
    max_requests: usize,
    /// A send that never blocks, where the socket allows one: replies then go out from the
    /// thread that completes them (see [`Completer::flush`] below).
    direct: Option<TrySend>,
}

/// A vectored send that never blocks: it writes what the socket takes at once (an error of
/// kind `WouldBlock` when that is nothing) and returns the bytes written.
pub type TrySend = Box<dyn Fn(&[IoSlice<'_>]) -> io::Result<usize> + Send + Sync>;

/// Replies of at most this many bytes together are sent by the completing thread itself when
/// it flushes its completions, sparing the writer thread's wake-up (a futex wake and a context
/// switch, most of the cost of a 4 KiB request on a small machine). That thread is the
/// connection's own (the firmware runs each connection's burst on it), so copying even 1 MiB
/// read replies into the socket delays no other connection: on a 1 MiB sequential read it
/// beat handing them to the writer (about 2,700 MiB/s against 2,200 on a shared 2-core
/// machine). The send never blocks: what the socket does not take goes to the writer.
const DIRECT_MAX: usize = 2 * MAX_PAYLOAD as usize;

impl Conn {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes budget for a request (waiting for room), a tag and a buffer to fill. Before it
    /// waits it calls `submit_held`: room only comes back from requests the device has.
    fn admit(
        &self,
        cookie: u64,
        shape: Shape,
        cost: usize,
        submit_held: &mut dyn FnMut(),
    ) -> (u64, Vec<u8>) {
        let mut st = self.lock();
        let full = |st: &State| {
            // A request larger than the whole budget still runs, alone.
            st.requests >= self.max_requests || (st.bytes > 0 && st.bytes + cost > self.max_bytes)
        };
        if full(&st) {
            drop(st);
            submit_held();
            st = self.lock();
        }
        while full(&st) {
            st.reader_waits = true;
            st = self.to_reader.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.bytes += cost;
        st.requests += 1;
        let entry = Admitted {
            cookie,
            shape,
            cost,
        };
        let tag = match st.free.pop() {
            Some(i) => {
                st.admitted[i] = Some(entry);
                i
            }
            None => {
                st.admitted.push(Some(entry));
                st.admitted.len() - 1
            }
        };
        let buf = if cost > 0 {
            st.take_buffer()
        } else {
            Vec::new()
        };
        (tag as u64, buf)
    }

    /// Gives back the admission of a request that will not be submitted.
    fn withdraw(&self, tag: u64) {
        let mut st = self.lock();
        if let Some(a) = st.admitted.get_mut(tag as usize).and_then(Option::take) {
            st.free.push(tag as usize);
            st.bytes -= a.cost;
            st.requests -= 1;
        }
    }

    /// Queues a reply found at parse time (a refused request) and wakes the writer.
    fn refuse(&self, cookie: u64, refusal: Refusal) {
        let mut st = self.lock();
        let reply = Reply::error(self.structured, cookie, refusal.errno, refusal.why);
        st.replies.push(reply);
        self.wake_writer(&mut st);
    }

    fn wake_writer(&self, st: &mut State) {
        // The flag stays set while there is nothing to do: the writer still sleeps, and the
        // next reply must wake it.
        let work = !st.replies.is_empty() || st.partial.is_some() || (st.ended && st.requests == 0);
        if st.writer_waits && work {
            st.writer_waits = false;
            self.to_writer.notify_one();
        }
    }

    /// The reader has stopped.
    fn end(&self) {
        let mut st = self.lock();
        st.ended = true;
        st.writer_waits = false;
        self.to_writer.notify_one();
    }

    /// Sends replies as they become due until the reader has ended and every admitted request
    /// is answered. After a failed write the rest are dropped (the client is gone), still
    /// giving back their budget so the reader never waits for room that will not come.
    fn write_loop<W: Write>(&self, out: &mut W, queue: &dyn Queue) {
        nandbox_sim::firmware::precise_timers();
        let mut batch: Vec<Reply> = Vec::new();
        let mut broken = false;
        let mut st = self.lock();
        loop {
            if st.sending {
                // The completing thread is sending: it wakes us if it leaves work.
                st.writer_waits = true;
                st = self.to_writer.wait(st).unwrap_or_else(|p| p.into_inner());
                st.writer_waits = false;
                continue;
            }
            if let Some((mut rest, sent)) = st.partial.take() {
                st.sending = true;
                drop(st);
                if !broken {
                    broken = send_all(out, &rest, sent).is_err();
                }
                st = self.lock();
                st.sending = false;
                self.release(&mut st, &mut rest);
                continue;
            }
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            if st.replies.iter().all(|r| r.not_before.is_none()) {
                std::mem::swap(&mut batch, &mut st.replies);
            } else {
                let mut i = 0;
                while i < st.replies.len() {
                    match st.replies[i].not_before {
                        Some(at) if at > now => {
                            next = Some(next.map_or(at, |n| n.min(at)));
                            i += 1;
                        }
                        _ => batch.push(st.replies.swap_remove(i)),
                    }
                }
            }
            if !batch.is_empty() {
                st.sending = true;
                drop(st);
                if !broken {
                    broken = send_all(out, &batch, 0).is_err();
                }
                // How late past its modelled time each reply went out: the stats show whether
                // the hand-offs between threads stay hidden inside the model.
                for at in batch.iter().filter_map(|r| r.not_before) {
                    queue.replied(now.saturating_duration_since(at));
                }
                st = self.lock();
                st.sending = false;
                self.release(&mut st, &mut batch);
                continue;
            }
            if st.ended && st.requests == 0 {
                return;
            }
            match next {
                None => {
                    st.writer_waits = true;
                    st = self.to_writer.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.writer_waits = false;
                }
                Some(at) => {
                    let left = at.saturating_duration_since(now);
                    let spin = Duration::from_nanos(nandbox_sim::firmware::SPIN_NS);
                    if left > spin {
                        st.writer_waits = true;
                        st = self
                            .to_writer
                            .wait_timeout(st, left - spin)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        st.writer_waits = false;
                    } else {
                        // The last stretch is spun: a sleep would overshoot it, and so would
                        // a yield on a busy machine (the scheduler may run others for a slice).
                        drop(st);
                        while Instant::now() < at {
                            std::hint::spin_loop();
                        }
                        st = self.lock();
                    }
                }
            }
        }
    }
}

impl Conn {
    /// Gives back the budget and buffers of sent replies (emptying `batch`) and wakes a reader
    /// waiting for room.
    fn release(&self, st: &mut State, batch: &mut Vec<Reply>) {
        for r in batch.drain(..) {
            st.bytes -= r.cost;
            if r.admitted {
                st.requests -= 1;
            }
            if r.recycle {
                st.recycle(r.body);
            }
        }
        if std::mem::take(&mut st.reader_waits) {
            self.to_reader.notify_one();
        }
    }

    /// Sends the gathered replies from the calling thread (the one completing them), without ever
    /// blocking, when nobody else is sending, none waits for a modelled time and they are
    /// small. What the socket does not take at once is left to the writer.
    fn send_direct<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let Some(try_send) = &self.direct else {
            return st;
        };
        if st.sending || st.partial.is_some() || st.replies.is_empty() {
            return st;
        }
        let mut bytes = 0;
        for r in &st.replies {
            if r.not_before.is_some() {
                return st;
            }
            bytes += r.head_len + r.body.len();
        }
        if bytes > DIRECT_MAX {
            return st;
        }
        let mut batch = std::mem::take(&mut st.replies);
        st.sending = true;
        drop(st);
        let sent = try_send_all(try_send, &batch);
        let mut st = self.lock();
        st.sending = false;
        if sent == bytes {
            self.release(&mut st, &mut batch);
        } else {
            // A full socket (or a broken one, which the writer will find).
            st.partial = Some((batch, sent));
        }
        st
    }
}

impl State {
    fn take_buffer(&mut self) -> Vec<u8> {
        match self.pool.pop() {
            Some(b) => {
                self.pool_bytes -= b.capacity();
                b
            }
            None => Vec::new(),
        }
    }

    /// Keeps a payload buffer for reuse, up to [`POOL_BYTES`] of them.
    fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0 && self.pool_bytes + buf.capacity() <= POOL_BYTES {
            self.pool_bytes += buf.capacity();
            self.pool.push(buf);
        }
    }
}

impl Completer for Conn {
    fn complete(&self, tag: u64, result: Result<Output, DevError>, not_before: Option<Instant>) {
        let mut st = self.lock();
        let Some(Admitted {
            cookie,
            shape,
            cost,
        }) = st.admitted.get_mut(tag as usize).and_then(Option::take)
        else {
            // Not ours, or completed twice: a device bug; nothing to answer.
            return;
        };
        st.free.push(tag as usize);
        let mut reply = match (result, shape) {
            (Ok(Output::Read(data)), Shape::Read { offset }) if data.len() == cost => {
                Reply::read(self.structured, cookie, offset, data)
            }
            (Ok(Output::Extents(extents)), Shape::Status { len, req_one }) => {
                let extents = shape_extents(extents, len, req_one);
                Reply::block_status(cookie, &extents)
            }
            (Ok(Output::Written(buf)), Shape::Plain) => {
                st.recycle(buf);
                Reply::simple(cookie, 0)
            }
            (Ok(Output::Done), Shape::Plain) => Reply::simple(cookie, 0),
            // Never send a reply whose length or kind disagrees with its request.
            (Ok(_), _) => {
                let why = "device answered with the wrong kind or length of data";
                Reply::error(self.structured, cookie, errno::EIO, why)
            }
            (Err(e), _) => Reply::error(self.structured, cookie, dev_errno(&e), &e.to_string()),
        };
        reply.cost = cost;
        reply.admitted = true;
        reply.not_before = not_before;
        st.replies.push(reply);
    }

    fn flush(&self) {
        let st = self.lock();
        let mut st = self.send_direct(st);
        self.wake_writer(&mut st);
    }
}

/// The bytes of `batch`'s replies, headers and bodies, in order.
fn slices(batch: &[Reply]) -> Vec<IoSlice<'_>> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for r in batch {
        if r.head_len > 0 {
            slices.push(IoSlice::new(&r.head[..r.head_len]));
        }
        if !r.body.is_empty() {
            slices.push(IoSlice::new(&r.body));
        }
    }
    slices
}

/// Sends what the socket takes of `batch` without blocking; returns the bytes sent.
fn try_send_all(try_send: &TrySend, batch: &[Reply]) -> usize {
    let mut slices = slices(batch);
    let mut slices = &mut slices[..];
    let mut sent = 0;
    while !slices.is_empty() {
        match try_send(slices) {
            Ok(0) => break,
            Ok(n) => {
                sent += n;
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

/// Writes every reply of `batch` but its first `skip` bytes (sent already), headers and bodies,
/// with as few system calls as the socket allows.
fn send_all<W: Write>(out: &mut W, batch: &[Reply], skip: usize) -> io::Result<()> {
    let mut slices = slices(batch);
    let mut slices = &mut slices[..];
    IoSlice::advance_slices(&mut slices, skip);
    while !slices.is_empty() {
        let n = out.write_vectored(slices)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    out.flush()
}

/// Serves requests until the client disconnects, breaks the protocol, or `reader` reaches EOF
/// (the server shuts the read half down to stop a connection). Waits for every admitted request
/// to be answered before returning. `direct`, when given, is a non-blocking send on the same socket as `writer`, through which
/// small replies go out from the thread that completes them (see [`TrySend`]).
pub fn serve<R: Read + Send, W: Write + Send>(
    reader: R,
    mut writer: W,
    direct: Option<TrySend>,
    device: &dyn BlockDevice,
    neg: Negotiated,
    limits: Limits,
) -> io::Result<()> {
    let export = Export {
        size: device.size(),
        read_only: device.read_only(),
    };
    let conn = Arc::new(Conn {
        state: Mutex::new(State::default()),
        to_reader: Condvar::new(),
        to_writer: Condvar::new(),
        structured: neg.structured,
        max_bytes: limits.inflight_bytes.max(MAX_PAYLOAD as usize),
        max_requests: limits.inflight_requests.max(1),
        direct,
    });
    let done: Arc<dyn Completer> = conn.clone();
    let queue = device::open_queue(device, done);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("nbd-writer".into())
            .stack_size(WRITER_STACK)
            .spawn_scoped(scope, || conn.write_loop(&mut writer, &*queue))?;
        let result = read_loop(reader, export, &neg, &conn, &*queue);
        conn.end();
        // The writer only returns; a panic in it is a bug worth seeing.
        if let Err(panic) = writer.join() {
            std::panic::resume_unwind(panic);
        }
        result
    })
}

/// The writer keeps no large buffers on its stack.
const WRITER_STACK: usize = 256 << 10;

/// Room for a burst of small requests per read system call; larger payloads bypass the buffer
/// once it is drained, so they are not copied through it.
const READ_BUFFER: usize = 256 << 10;

/// Write payloads from this size on are read past the buffer, and so is the header after them.
const BIG_PAYLOAD: u32 = 64 << 10;

/// Threads per connection that take turns reading requests: while one runs the burst of
/// large writes it read (the firmware's work, on that thread), the next reads the following
/// requests from the socket. With one, a 1 MiB write's receive (a kernel copy) and its FTL work
/// (staging, CRC, the NAND program) took turns on one core; nbdkit overlaps them the same way,
/// with a pool of threads taking turns at the socket. `bench/nbd.sh`, 1 MiB sequential writes
/// QD8, the same machine minutes apart: 0.58x nbdkit's throughput with one reader, 0.76x with
/// two.
const READERS: usize = 2;

/// The read half of the socket and where the readers are in its stream, held by the reader
/// whose turn it is.
struct Intake<R> {
    reader: BufReader<R>,
    /// The last request was a write with a payload of at least BIG_PAYLOAD.
    after_payload: bool,
    /// A reader met DISC, EOF or a broken stream: the others stop at their next turn.
    ended: bool,
}

/// Reads, checks and submits requests until DISC, EOF or a broken stream, on [`READERS`]
/// threads taking turns. Returns once every reader has submitted what it read.
fn read_loop<R: Read + Send>(
    reader: R,
    export: Export,
    neg: &Negotiated,
    conn: &Conn,
    queue: &dyn Queue,
) -> io::Result<()> {
    let intake = Mutex::new(Intake {
        reader: BufReader::with_capacity(READ_BUFFER, reader),
        after_payload: false,
        ended: false,
    });
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..READERS)
            .map(|_| {
                std::thread::Builder::new()
                    .name("nbd-reader".into())
                    .spawn_scoped(scope, || take_turns(&intake, export, neg, conn, queue))
            })
            .collect();
        let mut result = take_turns(&intake, export, neg, conn, queue);
        for other in others {
            let other = match other {
                // No second reader: this one has read to the end alone.
                Err(e) => Err(e),
                // A panic in a reader is a bug worth seeing.
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            };
            result = result.and(other);
        }
        result
    })
}

/// One reader's turns: take the socket and read the requests found in one read of it (a burst,
/// submitted together so the device finds them queued at once), burst after burst, until one
/// holds a large write; give the socket to the next reader and run that one. Ends at DISC, EOF
/// or a broken stream met by any reader.
fn take_turns<R: Read>(
    intake: &Mutex<Intake<R>>,
    export: Export,
    neg: &Negotiated,
    conn: &Conn,
    queue: &dyn Queue,
) -> io::Result<()> {
    let mut burst: Vec<(u64, device::Request)> = Vec::new();
    loop {
        let mut turn = intake.lock().unwrap_or_else(|p| p.into_inner());
        // The turn lasts until a burst with a large write: that one runs after the socket is
        // given to the next reader, because the next payload's receive is the cost worth
        // overlapping. Other bursts run within the turn, as with one reader:
        // - reads: their replies go out from this thread, and two readers sending 1 MiB
        //   replies at once sent them through the writer thread instead (sequential reads fell
        //   from 2,700 to 2,250 MiB/s);
        // - small writes: handing over after each burst woke the other reader for every burst,
        //   and the overlap did not pay for that (4 KiB random writes QD32 on a freshly filled
        //   device fell from 70,000 to 63,000 IOPS).
        loop {
            if turn.ended {
                return Ok(());
            }
            let end = loop {
                let Intake {
                    reader,
                    after_payload,
                    ..
                } = &mut *turn;
                match next_request(reader, export, neg, conn, after_payload, &mut || {
                    submit(queue, &mut burst)
                }) {
                    Ok(Some(job)) => burst.push(job),
                    Ok(None) => break Some(Ok(())),
                    Err(e) => break Some(Err(e)),
                }
                if reader.buffer().len() < Request::<&[u8]>::LEN {
                    // Nothing more already received: hand over what we have before we may block.
                    break None;
                }
            };
            if end.is_some() {
                turn.ended = true;
            }
            let hand_over = end.is_some()
                || burst.iter().any(|(_, req)| {
                    matches!(req, device::Request::Write { data, .. }
                        if data.len() >= BIG_PAYLOAD as usize)
                });
            if hand_over {
                drop(turn);
                submit(queue, &mut burst);
                match end {
                    Some(result) => return result,
                    None => break,
                }
            }
            submit(queue, &mut burst);
        }
    }
}

fn submit(queue: &dyn Queue, burst: &mut Vec<(u64, device::Request)>) {
    if !burst.is_empty() {
        queue.submit_batch(burst);
    }
}

/// Reads the next request and admits it; answers refused ones itself. `Ok(None)` at DISC or a
/// clean EOF.
fn next_request<R: Read>(
    reader: &mut BufReader<R>,
    export: Export,
    neg: &Negotiated,
    conn: &Conn,
    after_payload: &mut bool,
    submit_held: &mut dyn FnMut(),
) -> io::Result<Option<(u64, device::Request)>> {
    loop {
        let mut header = [0u8; Request::<&[u8]>::LEN];
        let got = if std::mem::take(after_payload) && reader.buffer().is_empty() {
            // After a large payload the next request is likely another: its header is read
            // alone, so the buffer's refill does not take in its payload to be copied out.
            reader.get_mut().read_exact(&mut header)
        } else {
            reader.read_exact(&mut header)
        };
        match got {
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
        let op = match validate(kind, req.flags(), req.offset(), len, export, neg) {
            Err(refusal) => {
                if kind == cmd::WRITE {
                    // Keep the stream in sync: the payload follows whatever we think of it.
                    handshake::discard(reader, u64::from(len))?;
                }
                conn.refuse(cookie, refusal);
                continue;
            }
            Ok(Op::Disconnect) => return Ok(None),
            Ok(op) => op,
        };
        let (shape, cost) = match op {
            Op::Read { offset, len } => (Shape::Read { offset }, len as usize),
            Op::Write { len, .. } => (Shape::Plain, len as usize),
            Op::BlockStatus { len, req_one, .. } => (Shape::Status { len, req_one }, 0),
            _ => (Shape::Plain, 0),
        };
        let (tag, mut buf) = conn.admit(cookie, shape, cost, submit_held);
        let request = match op {
            Op::Read { offset, len } => device::Request::Read {
                offset,
                len: len as usize,
                buf,
            },
            Op::Write { offset, len, fua } => {
                // What the buffer already holds, then the rest straight from the socket, exactly:
                // a refill of the buffer would pull the next payload in only to copy it out.
                // Read into reserved capacity: std sockets fill it without zeroing it first.
                buf.clear();
                let held = reader.buffer().len().min(len as usize);
                buf.extend_from_slice(&reader.buffer()[..held]);
                reader.consume(held);
                let rest = u64::from(len) - held as u64;
                let got = reader.get_mut().take(rest).read_to_end(&mut buf);
                *after_payload = len >= BIG_PAYLOAD;
                if got.is_err() || buf.len() != len as usize {
                    // The stream is broken: nothing more is answered.
                    conn.withdraw(tag);
                    return Err(got.err().unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "write payload cut short")
                    }));
                }
                device::Request::Write {
                    offset,
                    data: buf,
                    fua,
                }
            }
            Op::Flush => device::Request::Flush,
            Op::Trim { offset, len, fua } => device::Request::Trim {
                offset,
                len: u64::from(len),
                fua,
            },
            Op::WriteZeroes { offset, len, flags } => device::Request::WriteZeroes {
                offset,
                len: u64::from(len),
                flags,
            },
            Op::BlockStatus { offset, len, .. } => device::Request::BlockStatus {
                offset,
                len: len.min(MAX_STATUS_SPAN),
            },
            Op::Disconnect => unreachable!("handled above"),
        };
        return Ok(Some((tag, request)));
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
