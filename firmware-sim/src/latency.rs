//! The latency model: NAND time on a virtual clock, with channels and dies in parallel.
//!
//! [`Timed`] wraps any [`Nand`] and, for each operation, works out when it would finish on the
//! profile's hardware: a read occupies its die for the read time and then its channel for the
//! transfer; a program occupies the channel for the transfer and then the die for the program
//! time; an erase occupies the die. Each erase block is modelled as a superblock striped over
//! every die (page `p` lives on die `p mod dies`), so a log written in page order keeps all dies
//! busy, as an SSD controller's striping does.
//!
//! The virtual clock is anchored to the caller: before each host request the firmware sets
//! `now` (nanoseconds since the device started, taken from the wall clock), and after it reads
//! the latest completion of the operations the request caused. In `virtual` mode that time is
//! only accounted; in `real` mode the reply waits for it.

use nandbox_core::nand::{BlockId, Geometry, Nand, PageId};

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

/// Busy-until times of every die and channel.
#[derive(Clone, Debug)]
pub struct LatencyModel {
    profile: Profile,
    page_bytes: u64,
    die_free_at: Vec<u64>,
    channel_free_at: Vec<u64>,
    now: u64,
    latest: u64,
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
        }
    }

    /// Starts a request at virtual time `now_ns`.
    pub fn begin(&mut self, now_ns: u64) {
        self.now = now_ns;
        self.latest = now_ns;
    }

    /// When the last NAND operation of the current request finishes.
    pub fn completion(&self) -> u64 {
        self.latest
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
    }

    /// Accounts an erase of a (superblock) block: every die erases its share.
    pub fn erase(&mut self) {
        let mut done = 0;
        for free_at in &mut self.die_free_at {
            *free_at = self.now.max(*free_at) + self.profile.erase_ns;
            done = done.max(*free_at);
        }
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
            m.erase();
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
