//! The latency model: NAND time on a virtual clock, with channels and dies in parallel.
//!
//! [`Timed`] wraps any [`Nand`] and, for each operation, works out when it would finish on the
//! profile's hardware: a read occupies its die for the read time and then its channel for the
//! transfer; a program occupies the channel for the transfer and then the die for the program
//! time; an erase occupies the die. Each erase block is modelled as a superblock striped over
//! every die (page `p` lives on die `p mod dies`), so a log written in page order keeps all dies
//! busy, as an SSD controller's striping does.
//!
//! An erase is charged to one die (`block mod dies`) for the full erase time. Each die then sees
//! one full-length erase per `pages_per_block` of its own programs, the same ratio as a real
//! superblock made of one physical block per die; charging every die for every modelled block
//! would make erases `dies` times too frequent.
//!
//! A die keeps the page it last sensed in its page register until its next program or erase: a
//! read of that page again (the next block of a multi-block read, a slot beside one just read)
//! moves the bytes over the channel without sensing again, as a controller does with a
//! change-read-column command.
//!
//! Writes go through a DRAM write buffer of [`WRITE_BUFFER_PAGES_PER_DIE`] pages per die, as in
//! an SSD controller: a host write completes once its data has room in the buffer, and a page's
//! room is given back when its program finishes. While the buffer has room, writes complete at
//! once; when the host writes faster than the dies program, writes wait for room, so the
//! sustained write rate is bounded by `dies * page_bytes / program time`. A read waits for its
//! NAND reads; a flush (or FUA write) waits until every program issued so far has finished.
//!
//! The virtual clock is anchored to the caller: when a host request is submitted the firmware
//! takes `now` (nanoseconds since the device started, from the wall clock), and after running it
//! asks the model when the request completes. In `real` mode the reply waits for that time. In
//! `virtual` mode nothing waits, so the host runs ahead of the flash; [`CausalClock`] keeps the
//! accounting honest: a request sent after the host had a reply starts no earlier than that
//! reply's modelled completion, as it would in `real` mode. Without it a synchronous host
//! (SQLite's point reads, a replayed trace) would be charged for queues it could never build:
//! its next read would land on dies still busy with the reads it had already waited for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use nandbox_core::nand::{BlockId, Geometry, Nand, PageId, SLOT_BYTES};

use crate::profile::Profile;

/// How modelled NAND time is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyMode {
    /// Not modelled: as fast as the host allows.
    Off,
    /// Accounted in the stats, never waited for.
    Virtual,
    /// Replies wait for the modelled time.
    Real,
}

impl LatencyMode {
    /// Parses `off`, `virtual` or `real`.
    pub fn by_name(name: &str) -> Option<LatencyMode> {
        match name {
            "off" => Some(LatencyMode::Off),
            "virtual" => Some(LatencyMode::Virtual),
            "real" => Some(LatencyMode::Real),
            _ => None,
        }
    }
}

/// Pages of DRAM write buffer per die (4 MiB on tlc's 32 dies of 16 KiB pages, a modest SSD
/// DRAM cache). Two would keep a die busy (one programming, one queued) if the host refilled the
/// buffer within a program time; eight ride out the multi-millisecond scheduling stalls of a
/// busy host, as a real drive's buffer rides out a bursty host.
pub const WRITE_BUFFER_PAGES_PER_DIE: usize = 8;

/// No page in a die's page register.
const NO_PAGE: u32 = u32::MAX;

/// Which completion a request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Every NAND operation the request caused (reads).
    AllOps,
    /// Its NAND reads and room in the write buffer (writes, trims).
    Buffered,
    /// Every program issued so far (flush, FUA).
    Durable,
}

/// Busy-until times of every die and channel, and the write buffer.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    profile: Profile,
    page_bytes: u64,
    die_free_at: Vec<u64>,
    /// The page each die's page register holds ([`NO_PAGE`]: none).
    die_page: Vec<u32>,
    channel_free_at: Vec<u64>,
    now: u64,
    /// Latest completion of any operation of the current request.
    latest: u64,
    /// Latest completion of a read of the current request.
    latest_read: u64,
    /// Completion times of programs whose pages still hold room in the write buffer.
    buffered: BinaryHeap<Reverse<u64>>,
    buffer_pages: usize,
    /// When the last buffered write was admitted: room is given out in arrival order.
    admitted_at: u64,
    /// When every program issued so far has finished.
    durable_at: u64,
}

impl LatencyModel {
    /// A model of `profile`'s parallelism, every die idle at time 0.
    pub fn new(profile: Profile, geometry: &Geometry) -> Self {
        LatencyModel {
            page_bytes: geometry.page_bytes as u64,
            die_free_at: vec![0; profile.dies() as usize],
            die_page: vec![NO_PAGE; profile.dies() as usize],
            channel_free_at: vec![0; profile.channels as usize],
            profile,
            now: 0,
            latest: 0,
            latest_read: 0,
            buffered: BinaryHeap::new(),
            buffer_pages: WRITE_BUFFER_PAGES_PER_DIE * profile.dies() as usize,
            admitted_at: 0,
            durable_at: 0,
        }
    }

    /// Forgets all queued work: every die and channel idle, the write buffer empty. The
    /// firmware calls it once the device is formatted or mounted, which happens before the
    /// device's clock starts (a drive is formatted at the factory, not on the host's time).
    pub fn reset(&mut self) {
        self.die_free_at.fill(0);
        self.die_page.fill(NO_PAGE);
        self.channel_free_at.fill(0);
        self.buffered.clear();
        self.admitted_at = 0;
        self.durable_at = 0;
        self.begin(0);
    }

    /// Starts a request submitted at virtual time `now_ns`.
    pub fn begin(&mut self, now_ns: u64) {
        self.now = now_ns;
        self.latest = now_ns;
        self.latest_read = now_ns;
    }

    /// When the last NAND operation of the current request finishes.
    pub fn completion(&self) -> u64 {
        self.latest
    }

    /// When the current request completes, waiting as `wait` says.
    pub fn complete(&mut self, wait: Wait) -> u64 {
        match wait {
            Wait::AllOps => self.latest,
            Wait::Durable => self.latest.max(self.durable_at),
            Wait::Buffered => {
                while let Some(&Reverse(t)) = self.buffered.peek() {
                    if t > self.now {
                        break;
                    }
                    self.buffered.pop();
                }
                // Room for this request's data opens as the oldest programs finish.
                let mut at = self.latest_read.max(self.admitted_at);
                while self.buffered.len() > self.buffer_pages {
                    if let Some(Reverse(t)) = self.buffered.pop() {
                        at = at.max(t);
                    }
                }
                self.admitted_at = at;
                at
            }
        }
    }

    /// Host bytes per second the dies can program: the bound on sustained writes.
    pub fn write_bound_bytes_per_s(&self) -> f64 {
        self.die_free_at.len() as f64 * self.page_bytes as f64 * 1e9
            / self.profile.program_ns as f64
    }

    fn die_of(&self, page: u32) -> usize {
        page as usize % self.die_free_at.len()
    }

    fn channel_of(&self, die: usize) -> usize {
        die % self.channel_free_at.len()
    }

    fn finish(&mut self, at: u64) {
        self.latest = self.latest.max(at);
    }

    /// Accounts a read of `bytes` from `page`.
    pub fn read(&mut self, page: PageId, bytes: u64) {
        let die = self.die_of(page.0);
        let ch = self.channel_of(die);
        let mut sensed = self.now.max(self.die_free_at[die]);
        if self.die_page[die] != page.0 {
            sensed += self.profile.read_ns;
            self.die_page[die] = page.0;
        }
        let done = sensed.max(self.channel_free_at[ch]) + self.profile.transfer_ns(bytes);
        self.die_free_at[die] = done;
        self.channel_free_at[ch] = done;
        self.finish(done);
        self.latest_read = self.latest_read.max(done);
    }

    /// Accounts a program of `page`.
    pub fn program(&mut self, page: PageId) {
        let die = self.die_of(page.0);
        let ch = self.channel_of(die);
        let moved =
            self.now.max(self.channel_free_at[ch]) + self.profile.transfer_ns(self.page_bytes);
        self.channel_free_at[ch] = moved;
        let done = moved.max(self.die_free_at[die]) + self.profile.program_ns;
        self.die_page[die] = NO_PAGE;
        self.die_free_at[die] = done;
        self.finish(done);
        self.buffered.push(Reverse(done));
        self.durable_at = self.durable_at.max(done);
    }

    /// Accounts an erase of `block`, charged to one die (see the module docs).
    pub fn erase(&mut self, block: BlockId) {
        let die = block.0 as usize % self.die_free_at.len();
        let done = self.now.max(self.die_free_at[die]) + self.profile.erase_ns;
        self.die_page[die] = NO_PAGE;
        self.die_free_at[die] = done;
        self.finish(done);
    }
}

/// The virtual time of `virtual` mode: the wall clock, moved on by the waits for replies that a
/// host in `real` mode would have had.
///
/// Times are nanoseconds since the device started. Virtual time is wall time plus `skew`, the
/// waiting the host skipped so far. A reply handed to the host at wall time `w` with modelled
/// completion `d` means that every request sent after `w` may depend on it, so it starts no
/// earlier than `d`; that raises `skew` when the host came back sooner than the flash would
/// have let it. Requests sent before the reply went out (queue depth above one) are not held.
#[derive(Clone, Debug, Default)]
pub struct CausalClock {
    skew: u64,
    /// (wall time a reply went out, its modelled completion), oldest first: the replies that
    /// requests yet to start may have waited for.
    replied: VecDeque<(u64, u64)>,
}

impl CausalClock {
    /// The virtual time of a request sent at wall time `wall_ns`.
    pub fn now(&mut self, wall_ns: u64) -> u64 {
        while let Some(&(at, done)) = self.replied.front() {
            if at > wall_ns {
                break;
            }
            self.replied.pop_front();
            self.skew = self.skew.max(done.saturating_sub(wall_ns));
        }
        wall_ns + self.skew
    }

    /// A reply completing at virtual time `done_ns` went out at wall time `wall_ns`.
    pub fn replied(&mut self, wall_ns: u64, done_ns: u64) {
        match self.replied.back_mut() {
            // Replies of one burst: the latest completion stands for them all.
            Some((at, done)) if *at == wall_ns => *done = (*done).max(done_ns),
            _ => self.replied.push_back((wall_ns, done_ns)),
        }
    }
}

/// A NAND array whose operations are timed by a [`LatencyModel`] (when one is set).
pub struct Timed<N> {
    inner: N,
    model: Option<LatencyModel>,
}

impl<N: Nand> Timed<N> {
    /// Wraps `inner`; with `model` `None` nothing is timed.
    pub fn new(inner: N, model: Option<LatencyModel>) -> Self {
        Timed { inner, model }
    }

    /// The wrapped array.
    pub fn inner(&self) -> &N {
        &self.inner
    }

    /// The wrapped array, mutably.
    pub fn inner_mut(&mut self) -> &mut N {
        &mut self.inner
    }

    /// Unwraps the array.
    pub fn into_inner(self) -> N {
        self.inner
    }

    /// The model, if time is modelled.
    pub fn model(&mut self) -> Option<&mut LatencyModel> {
        self.model.as_mut()
    }
}

impl<N: Nand> Nand for Timed<N> {
    type Error = N::Error;

    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }

    fn read(&mut self, page: PageId, data: &mut [u8], spare: &mut [u8]) -> Result<(), N::Error> {
        if let Some(m) = &mut self.model {
            m.read(page, (data.len() + spare.len()) as u64);
        }
        self.inner.read(page, data, spare)
    }

    fn read_slot(
        &mut self,
        page: PageId,
        slot: u32,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), N::Error> {
        // Timed as the whole-page read it replaces, so the model's figures stay as they were.
        if let Some(m) = &mut self.model {
            m.read(page, (data.len() + spare.len()) as u64);
        }
        self.inner.read_slot(page, slot, data, spare)
    }

    fn read_slots(
        &mut self,
        page: PageId,
        slots: u32,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), N::Error> {
        // Timed as the whole-page read it replaces, as `read_slot` is.
        if let Some(m) = &mut self.model {
            m.read(page, (data.len() + spare.len()) as u64);
        }
        self.inner.read_slots(page, slots, data, spare)
    }

    fn read_slot_into(
        &mut self,
        page: PageId,
        slot: u32,
        dst: &mut [u8; SLOT_BYTES],
        page_buf: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), N::Error> {
        if let Some(m) = &mut self.model {
            m.read(page, (page_buf.len() + spare.len()) as u64);
        }
        self.inner.read_slot_into(page, slot, dst, page_buf, spare)
    }

    fn read_spare(&mut self, page: PageId, spare: &mut [u8]) -> Result<(), N::Error> {
        if let Some(m) = &mut self.model {
            m.read(page, spare.len() as u64);
        }
        self.inner.read_spare(page, spare)
    }

    fn program(&mut self, page: PageId, data: &[u8], spare: &[u8]) -> Result<(), N::Error> {
        if let Some(m) = &mut self.model {
            m.program(page);
        }
        self.inner.program(page, data, spare)
    }

    fn erase(&mut self, block: BlockId) -> Result<(), N::Error> {
        if let Some(m) = &mut self.model {
            m.erase(block);
        }
        self.inner.erase(block)
    }

    fn is_bad(&mut self, block: BlockId) -> Result<bool, N::Error> {
        self.inner.is_bad(block)
    }

    fn mark_bad(&mut self, block: BlockId) -> Result<(), N::Error> {
        self.inner.mark_bad(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::TLC;

    /// A host that submits 4 KiB writes as fast as the model admits them, one page program per
    /// four writes (the FTL fills a 16 KiB page from four slots), for `pages` pages; returns when
    /// the last write and the one halfway through were acknowledged.
    fn saturating_writes(dies: u32, pages: u32) -> ((u64, u64), LatencyModel) {
        let mut p = TLC;
        p.channels = dies.min(p.channels);
        p.dies_per_channel = dies / p.channels;
        let geo = p.geometry(64);
        let mut m = LatencyModel::new(p, &geo);
        let mut now = 0;
        let mut half = 0;
        for page in 0..pages {
            if page == pages / 2 {
                half = now;
            }
            for slot in 0..4 {
                m.begin(now);
                if slot == 3 {
                    m.program(PageId(page % (geo.pages_per_block * geo.blocks)));
                }
                // The next write arrives the moment this one is acknowledged.
                now = m.complete(Wait::Buffered);
            }
        }
        ((half, now), m)
    }

    #[test]
    fn buffered_writes_sustain_dies_times_page_over_program_time() {
        for dies in [1, 2, 4, 32] {
            let pages = 8000;
            let ((half, end), m) = saturating_writes(dies, pages);
            // The second half: the buffer filled long before (it admits its first pages at once).
            let rate = (pages / 2) as f64 * TLC.page_bytes as f64 * 1e9 / (end - half) as f64;
            let bound = m.write_bound_bytes_per_s();
            // The transfer of each page over a channel overlaps the other dies' programs: within
            // 3% of the bound.
            assert!(
                (rate / bound - 1.0).abs() < 0.03,
                "{dies} dies: {rate:.0} B/s against a bound of {bound:.0}"
            );
        }
    }

    #[test]
    fn writes_complete_at_once_while_the_buffer_has_room() {
        let (_, mut m) = saturating_writes(32, 0);
        m.begin(1_000);
        m.program(PageId(0));
        assert_eq!(m.complete(Wait::Buffered), 1_000);
        // A flush waits for the program: transfer of 16 KiB at 800 MB/s, then 900 µs.
        m.begin(2_000);
        let durable = m.complete(Wait::Durable);
        assert_eq!(durable, 1_000 + 20_480 + 900_000);
    }

    #[test]
    fn a_read_waits_for_sense_and_transfer_and_queues_behind_an_erase() {
        let geo = TLC.geometry(64);
        let mut m = LatencyModel::new(TLC, &geo);
        m.begin(0);
        m.read(PageId(5), 4096);
        assert_eq!(m.complete(Wait::AllOps), 75_000 + 5_120);
        // Block 5 erases on die 5, where page 5 lives: the read waits for the erase.
        m.begin(1_000_000);
        m.erase(BlockId(5));
        m.read(PageId(5), 4096);
        assert_eq!(
            m.complete(Wait::AllOps),
            1_000_000 + 4_500_000 + 75_000 + 5_120
        );
        // Another die is free.
        m.begin(1_000_000);
        m.read(PageId(6), 4096);
        assert_eq!(m.complete(Wait::AllOps), 1_000_000 + 75_000 + 5_120);
    }

    #[test]
    fn a_page_still_in_the_die_register_is_not_sensed_again() {
        let geo = TLC.geometry(64);
        let mut m = LatencyModel::new(TLC, &geo);
        m.begin(0);
        m.read(PageId(5), 4096);
        m.read(PageId(5), 4096);
        // One sense, two transfers.
        assert_eq!(m.complete(Wait::AllOps), 75_000 + 2 * 5_120);
        // Another page on the same die is sensed; then page 5 is gone from the register.
        m.begin(1_000_000);
        m.read(PageId(5 + 32), 4096);
        m.read(PageId(5), 4096);
        assert_eq!(m.complete(Wait::AllOps), 1_000_000 + 2 * (75_000 + 5_120));
        // A program on the die overwrites the register too.
        m.begin(2_000_000);
        m.program(PageId(5 + 64));
        m.begin(3_000_000);
        m.read(PageId(5), 4096);
        assert_eq!(m.complete(Wait::AllOps), 3_000_000 + 75_000 + 5_120);
    }

    #[test]
    fn the_causal_clock_holds_a_request_sent_after_a_reply_to_that_reply() {
        let mut c = CausalClock::default();
        assert_eq!(c.now(1_000), 1_000);
        // Its reply went out at wall 2 µs, modelled to complete at 100 µs.
        c.replied(2_000, 100_000);
        // Sent before the reply (queue depth 2): not held.
        assert_eq!(c.now(1_500), 1_500);
        // Sent after it: starts at the completion, and the host's later time moves with it.
        assert_eq!(c.now(3_000), 100_000);
        assert_eq!(c.now(4_000), 101_000);
        // A reply that completed long ago in virtual time changes nothing.
        c.replied(5_000, 50_000);
        assert_eq!(c.now(6_000), 103_000);
    }
}
