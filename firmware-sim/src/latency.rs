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
//! Writes go through a DRAM write buffer of [`WRITE_BUFFER_PAGES_PER_DIE`] pages per die, as in
//! an SSD controller: a host write completes once its data has room in the buffer, and a page's
//! room is given back when its program finishes. While the buffer has room, writes complete at
//! once; when the host writes faster than the dies program, writes wait for room, so the
//! sustained write rate is bounded by `dies * page_bytes / program time`. A read waits for its
//! NAND reads; a flush (or FUA write) waits until every program issued so far has finished.
//!
//! The virtual clock is anchored to the caller: when a host request is submitted the firmware
//! takes `now` (nanoseconds since the device started, from the wall clock), and after running it
//! asks the model when the request completes. In `virtual` mode that time is only accounted (an
//! open-loop model: the host is never slowed, so a host faster than the flash sees the modelled
//! queues grow); in `real` mode the reply waits for it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

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
        let sensed = self.now.max(self.die_free_at[die]) + self.profile.read_ns;
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
        self.die_free_at[die] = done;
        self.finish(done);
        self.buffered.push(Reverse(done));
        self.durable_at = self.durable_at.max(done);
    }

    /// Accounts an erase of `block`, charged to one die (see the module docs).
    pub fn erase(&mut self, block: BlockId) {
        let die = block.0 as usize % self.die_free_at.len();
        let done = self.now.max(self.die_free_at[die]) + self.profile.erase_ns;
        self.die_free_at[die] = done;
        self.finish(done);
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
}
