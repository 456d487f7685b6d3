//! `SimNand`: a simulated NAND array that is never kinder than hardware.
//!
//! It keeps pages in RAM (sparse: only programmed pages take memory) or in a sparse image file
//! that survives process restarts, enforces the [`Nand`] contract (a second program without an
//! erase, or a program below a block's write point, is an error), counts every operation, and
//! injects faults deterministically from a seed: a power cut after N operations tears the
//! operation in flight, reads may return flipped bits, programs and erases may fail, and some
//! blocks may be bad from the factory.

use std::fmt;
use std::path::Path;

use nandbox_core::nand::{BlockId, FaultKind, Geometry, Nand, NandFault, PageId, SLOT_BYTES};

use crate::image::ImageFile;
use crate::rng::SplitMix64;

/// What went wrong with a simulated NAND operation.
#[derive(Debug)]
pub enum SimError {
    /// The firmware broke the NAND contract; the message says how.
    Contract(String),
    /// Injected program failure.
    ProgramFailed(PageId),
    /// Injected erase failure.
    EraseFailed(BlockId),
    /// Power is off (cut by the fault injector); nothing works until `restore_power`.
    PowerLoss,
    /// The image file could not be read or written.
    Io(std::io::Error),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Contract(why) => write!(f, "NAND contract violated: {why}"),
            Self::ProgramFailed(p) => write!(f, "program of page {} failed", p.0),
            Self::EraseFailed(b) => write!(f, "erase of block {} failed", b.0),
            Self::PowerLoss => f.write_str("power lost"),
            Self::Io(e) => write!(f, "image file I/O: {e}"),
        }
    }
}

impl std::error::Error for SimError {}

impl NandFault for SimError {
    fn kind(&self) -> FaultKind {
        match self {
            Self::Contract(_) => FaultKind::ContractViolation,
            Self::ProgramFailed(_) => FaultKind::ProgramFailed,
            Self::EraseFailed(_) => FaultKind::EraseFailed,
            Self::PowerLoss => FaultKind::PowerLoss,
            Self::Io(_) => FaultKind::Other,
        }
    }
}

/// Faults to inject, all drawn from one seed so a failing run can be replayed exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Seed of the fault generator.
    pub seed: u64,
    /// Probability that a page read returns one flipped bit.
    pub bit_flip_per_read: f64,
    /// Probability that a program fails.
    pub program_fail_rate: f64,
    /// Probability that an erase fails.
    pub erase_fail_rate: f64,
    /// Blocks marked bad before first use, chosen from the seed.
    pub factory_bad_blocks: u32,
}

/// Operation counts since the simulator was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NandCounters {
    /// Full page reads.
    pub reads: u64,
    /// Spare-only reads.
    pub spare_reads: u64,
    /// Page programs.
    pub programs: u64,
    /// Block erases.
    pub erases: u64,
    /// Bits flipped on read by the fault injector.
    pub injected_bit_flips: u64,
}

/// Where page contents live.
enum Store {
    /// Programmed pages only; `None` is erased.
    Ram(Vec<Option<Box<[u8]>>>),
    /// A sparse image file.
    Image(ImageFile),
    /// An image file opened read-only: pages written or erased since opening live in RAM
    /// (`Some(None)` = erased), the file is never written.
    Overlay(ImageFile, std::collections::HashMap<u32, Option<Box<[u8]>>>),
}

/// A simulated NAND array.
pub struct SimNand {
    geometry: Geometry,
    store: Store,
    /// Per block: the lowest page that may be programmed next.
    write_point: Vec<u32>,
    erase_counts: Vec<u32>,
    bad: Vec<bool>,
    faults: FaultConfig,
    rng: SplitMix64,
    /// Operations left before the power cut; `None` when no cut is armed.
    cut_countdown: Option<u64>,
    power_lost: bool,
    counters: NandCounters,
    /// Buffers of erased RAM pages, reused by later programs: handing 16 KiB buffers back to
    /// the allocator at every erase and asking again at every program made the allocator return
    /// memory to the kernel and fault it back in, zeroed, page by page.
    free_pages: Vec<Box<[u8]>>,
}

/// Erased page buffers kept for reuse: two tlc blocks' worth, ~8 MiB.
const FREE_PAGES_KEPT: usize = 512;

impl SimNand {
    /// A RAM-backed array with no faults.
    pub fn new_ram(geometry: Geometry) -> SimNand {
        Self::with_faults(geometry, FaultConfig::default())
    }

    /// A RAM-backed array with the given faults.
    pub fn with_faults(geometry: Geometry, faults: FaultConfig) -> SimNand {
        let pages = geometry.total_pages() as usize;
        let mut pages_vec = Vec::new();
        pages_vec.resize_with(pages, || None);
        let mut sim = SimNand::assemble(geometry, Store::Ram(pages_vec), faults);
        sim.choose_factory_bad_blocks();
        sim
    }

    /// Creates a new image file at `path` (which must not exist) for `geometry`.
    pub fn create_image(path: &Path, geometry: Geometry) -> Result<SimNand, SimError> {
        let image = ImageFile::create(path, geometry).map_err(SimError::Io)?;
        Ok(SimNand::assemble(
            geometry,
            Store::Image(image),
            FaultConfig::default(),
        ))
    }

    /// Opens an existing image file; its header gives the geometry.
    pub fn open_image(path: &Path) -> Result<SimNand, crate::image::ImageError> {
        let (image, state) = ImageFile::open(path)?;
        let geometry = image.geometry();
        let mut sim = SimNand::assemble(geometry, Store::Image(image), FaultConfig::default());
        sim.write_point = state.write_point;
        sim.erase_counts = state.erase_counts;
        sim.bad = state.bad;
        Ok(sim)
    }

    /// Opens an existing image without ever writing to it: programs and erases are kept in RAM
    /// and lost on drop. For offline checks and reports that must not change what they inspect.
    pub fn open_image_read_only(path: &Path) -> Result<SimNand, crate::image::ImageError> {
        let (image, state) = ImageFile::open_read_only(path)?;
        let geometry = image.geometry();
        let store = Store::Overlay(image, Default::default());
        let mut sim = SimNand::assemble(geometry, store, FaultConfig::default());
        sim.write_point = state.write_point;
        sim.erase_counts = state.erase_counts;
        sim.bad = state.bad;
        Ok(sim)
    }

    fn assemble(geometry: Geometry, store: Store, faults: FaultConfig) -> SimNand {
        let blocks = geometry.blocks as usize;
        SimNand {
            geometry,
            store,
            write_point: vec![0; blocks],
            erase_counts: vec![0; blocks],
            bad: vec![false; blocks],
            faults,
            rng: SplitMix64::new(faults.seed),
            cut_countdown: None,
            power_lost: false,
            counters: NandCounters::default(),
            free_pages: Vec::new(),
        }
    }

    fn choose_factory_bad_blocks(&mut self) {
        let blocks = self.geometry.blocks;
        let wanted = self.faults.factory_bad_blocks.min(blocks);
        let mut marked = 0;
        while marked < wanted {
            let b = (self.rng.next_u64() % blocks as u64) as usize;
            if !self.bad[b] {
                self.bad[b] = true;
                marked += 1;
            }
        }
    }

    /// Arms a power cut: `n` more operations complete, the one after them is torn, and every
    /// operation after that fails with [`FaultKind::PowerLoss`].
    pub fn power_cut_after(&mut self, n: u64) {
        self.cut_countdown = Some(n);
    }

    /// Disarms any pending cut and turns power back on (a reboot); contents are kept.
    pub fn restore_power(&mut self) {
        self.cut_countdown = None;
        self.power_lost = false;
    }

    /// Whether a power cut has happened and power is still off.
    pub fn power_lost(&self) -> bool {
        self.power_lost
    }

    /// Operation counts so far.
    pub fn counters(&self) -> NandCounters {
        self.counters
    }

    /// Total operations so far (reads, spare reads, programs, erases).
    pub fn ops(&self) -> u64 {
        let c = &self.counters;
        c.reads + c.spare_reads + c.programs + c.erases
    }

    /// Erase count of every block.
    pub fn erase_counts(&self) -> &[u32] {
        &self.erase_counts
    }

    /// Changes the fault configuration from now on (the generator is reseeded).
    pub fn set_faults(&mut self, faults: FaultConfig) {
        self.faults = faults;
        self.rng = SplitMix64::new(faults.seed);
    }

    /// Flips one bit of a page's stored data (test helper: media corruption).
    pub fn flip_bit(&mut self, page: PageId, byte: usize, bit: u8) {
        self.flip_stored(page, byte, bit);
    }

    /// Flips one bit of a page's stored spare area (test helper: media corruption).
    pub fn flip_spare_bit(&mut self, page: PageId, byte: usize, bit: u8) {
        let at = self.geometry.page_bytes as usize + byte;
        self.flip_stored(page, at, bit);
    }

    /// Rewrites a programmed page's stored data and spare in place with `edit` (test helper:
    /// pages as another firmware version wrote them). Erased pages are left alone.
    pub fn patch_page(&mut self, page: PageId, edit: impl FnOnce(&mut [u8], &mut [u8])) {
        let page_bytes = self.geometry.page_bytes as usize;
        let mut buf = vec![0xFF; self.raw_len()];
        let (d, s) = buf.split_at_mut(page_bytes);
        if self.load(page, d, s).is_err() || d.iter().chain(s.iter()).all(|&b| b == 0xFF) {
            return;
        }
        edit(d, s);
        let _ = self.store_page(page, buf);
    }

    fn flip_stored(&mut self, page: PageId, at: usize, bit: u8) {
        let page_bytes = self.geometry.page_bytes as usize;
        let mut buf = vec![0xFF; self.raw_len()];
        let (d, s) = buf.split_at_mut(page_bytes);
        if self.load(page, d, s).is_err() {
            return;
        }
        if at < buf.len() {
            buf[at] ^= 1 << (bit & 7);
            // Stores even into an erased page: the page then reads as programmed garbage.
            let _ = self.store_page(page, buf);
        }
    }

    /// Flushes an image file's writes to stable storage (no-op in RAM).
    pub fn sync(&mut self) -> Result<(), SimError> {
        match &mut self.store {
            Store::Ram(_) | Store::Overlay(..) => Ok(()),
            Store::Image(img) => img.sync().map_err(SimError::Io),
        }
    }

    fn raw_len(&self) -> usize {
        (self.geometry.page_bytes + self.geometry.spare_bytes) as usize
    }

    /// Counts down to an armed power cut. Returns `Err` when power is already off, `Ok(true)`
    /// when this very operation is the one torn by the cut.
    fn power_step(&mut self) -> Result<bool, SimError> {
        if self.power_lost {
            return Err(SimError::PowerLoss);
        }
        match self.cut_countdown {
            Some(0) => {
                self.power_lost = true;
                self.cut_countdown = None;
                Ok(true)
            }
            Some(n) => {
                self.cut_countdown = Some(n - 1);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    fn check_page(&self, page: PageId) -> Result<(), SimError> {
        if page.0 >= self.geometry.total_pages() {
            return Err(SimError::Contract(format!(
                "page {} out of range ({} pages)",
                page.0,
                self.geometry.total_pages()
            )));
        }
        Ok(())
    }

    fn check_block(&self, block: BlockId) -> Result<(), SimError> {
        if block.0 >= self.geometry.blocks {
            return Err(SimError::Contract(format!(
                "block {} out of range ({} blocks)",
                block.0, self.geometry.blocks
            )));
        }
        Ok(())
    }

    fn check_lengths(&self, data: usize, spare: usize) -> Result<(), SimError> {
        let g = self.geometry;
        if data != g.page_bytes as usize || spare != g.spare_bytes as usize {
            return Err(SimError::Contract(format!(
                "buffers of {data}+{spare} bytes for pages of {}+{}",
                g.page_bytes, g.spare_bytes
            )));
        }
        Ok(())
    }

    /// What every slot read starts with: the contract checks, the power-cut step and the count.
    /// Refuses a slot number the geometry has no slot for.
    fn check_slot(&self, page: PageId, slot: u32) -> Result<(), SimError> {
        if slot >= self.geometry.slots_per_page() {
            return Err(SimError::Contract(format!(
                "slot {slot} of page {} out of range ({} slots)",
                page.0,
                self.geometry.slots_per_page()
            )));
        }
        Ok(())
    }

    /// The checks and the count every page read starts with (whole, by slots or into a slot
    /// buffer): the page and buffer lengths, the power, one read counted.
    fn start_read(&mut self, page: PageId, data: usize, spare: usize) -> Result<(), SimError> {
        self.check_page(page)?;
        self.check_lengths(data, spare)?;
        if self.power_step()? {
            return Err(SimError::PowerLoss);
        }
        self.counters.reads += 1;
        Ok(())
    }

    /// Reads a page's data and spare; erased pages read 0xFF.
    fn load(&mut self, page: PageId, data: &mut [u8], spare: &mut [u8]) -> Result<(), SimError> {
        match &mut self.store {
            Store::Ram(pages) => match &pages[page.0 as usize] {
                Some(bytes) => {
                    let (d, s) = bytes.split_at(data.len());
                    data.copy_from_slice(d);
                    spare.copy_from_slice(s);
                }
                None => {
                    data.fill(0xFF);
                    spare.fill(0xFF);
                }
            },
            Store::Image(img) => img.read_page(page, data, spare).map_err(SimError::Io)?,
            Store::Overlay(img, ram) => match ram.get(&page.0) {
                Some(Some(bytes)) => {
                    let (d, s) = bytes.split_at(data.len());
                    data.copy_from_slice(d);
                    spare.copy_from_slice(s);
                }
                Some(None) => {
                    data.fill(0xFF);
                    spare.fill(0xFF);
                }
                None => img.read_page(page, data, spare).map_err(SimError::Io)?,
            },
        }
        Ok(())
    }

    /// Stores a page's raw bytes; takes them by value so RAM pages keep the buffer, uncopied.
    fn store_page(&mut self, page: PageId, raw: Vec<u8>) -> Result<(), SimError> {
        match &mut self.store {
            Store::Ram(pages) => pages[page.0 as usize] = Some(raw.into_boxed_slice()),
            Store::Image(img) => img.write_page(page, &raw).map_err(SimError::Io)?,
            Store::Overlay(_, ram) => {
                ram.insert(page.0, Some(raw.into_boxed_slice()));
            }
        }
        Ok(())
    }

    fn persist_block_state(&mut self, block: BlockId) -> Result<(), SimError> {
        let b = block.0 as usize;
        let (wp, ec, bad) = (self.write_point[b], self.erase_counts[b], self.bad[b]);
        match &mut self.store {
            Store::Ram(_) | Store::Overlay(..) => Ok(()),
            Store::Image(img) => img
                .write_block_state(block, wp, ec, bad)
                .map_err(SimError::Io),
        }
    }

    fn maybe_flip(&mut self, bytes: &mut [u8]) {
        if self.faults.bit_flip_per_read > 0.0 && self.rng.chance(self.faults.bit_flip_per_read) {
            let bit = self.rng.next_u64() % (bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.counters.injected_bit_flips += 1;
        }
    }

    /// One flip anywhere in the page, data or spare, in proportion to their sizes, as the read
    /// of a whole page would draw it; it lands only if it falls in the bytes transferred
    /// (data bytes `transferred` says were, or the spare), so a slot read draws the same faults
    /// as a page read.
    fn flip_on_read(
        &mut self,
        data: &mut [u8],
        spare: &mut [u8],
        transferred: impl Fn(usize) -> bool,
    ) {
        if self.faults.bit_flip_per_read > 0.0 && self.rng.chance(self.faults.bit_flip_per_read) {
            let bits = (data.len() + spare.len()) as u64 * 8;
            let bit = self.rng.next_u64() % bits;
            let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
            match byte.checked_sub(data.len()) {
                None if transferred(byte) => data[byte] ^= mask,
                None => {}
                Some(i) => spare[i] ^= mask,
            }
            self.counters.injected_bit_flips += 1;
        }
    }

    /// [`Self::flip_on_read`] for a slot read delivered into `dst` (the bytes of `slot` of a
    /// page of `page_len` bytes): the same draws, so both reads meet the same faults.
    fn flip_on_slot_read(&mut self, page_len: usize, slot: u32, dst: &mut [u8], spare: &mut [u8]) {
        if self.faults.bit_flip_per_read > 0.0 && self.rng.chance(self.faults.bit_flip_per_read) {
            let bits = (page_len + spare.len()) as u64 * 8;
            let bit = self.rng.next_u64() % bits;
            let (byte, mask) = ((bit / 8) as usize, 1u8 << (bit % 8));
            let start = slot as usize * SLOT_BYTES;
            match byte.checked_sub(page_len) {
                None if (start..start + SLOT_BYTES).contains(&byte) => dst[byte - start] ^= mask,
                None => {}
                Some(i) => spare[i] ^= mask,
            }
            self.counters.injected_bit_flips += 1;
        }
    }

    /// What a torn or failed program leaves: a prefix of the new bytes, then a few garbage
    /// bytes, then erased bytes — an interrupted program sequence.
    fn torn_image(&mut self, raw: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF; raw.len()];
        let keep = (self.rng.next_u64() % (raw.len() as u64 + 1)) as usize;
        out[..keep].copy_from_slice(&raw[..keep]);
        let garbage_end = (keep + 16).min(raw.len());
        for byte in &mut out[keep..garbage_end] {
            *byte = self.rng.next_u64() as u8;
        }
        out
    }
}

impl Nand for SimNand {
    type Error = SimError;

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, page: PageId, data: &mut [u8], spare: &mut [u8]) -> Result<(), SimError> {
        self.start_read(page, data.len(), spare.len())?;
        self.load(page, data, spare)?;
        self.flip_on_read(data, spare, |_| true);
        Ok(())
    }

    fn read_slot(
        &mut self,
        page: PageId,
        slot: u32,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), SimError> {
        self.check_slot(page, slot)?;
        self.read_slots(page, 1 << slot, data, spare)
    }

    fn read_slots(
        &mut self,
        page: PageId,
        slots: u32,
        data: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), SimError> {
        let spp = self.geometry.slots_per_page();
        if slots >= 1 << spp {
            return Err(SimError::Contract(format!(
                "slot mask {slots:#x} of page {} names a slot out of range ({spp} slots)",
                page.0
            )));
        }
        if !matches!(self.store, Store::Ram(_)) {
            // Image pages are read whole: the file's cost is the syscall, not the copy.
            return self.read(page, data, spare);
        }
        self.start_read(page, data.len(), spare.len())?;
        let page_bytes = data.len();
        if let Store::Ram(pages) = &self.store {
            match &pages[page.0 as usize] {
                Some(bytes) => {
                    for n in (0..spp).filter(|n| slots & (1 << n) != 0) {
                        let range = n as usize * SLOT_BYTES..(n as usize + 1) * SLOT_BYTES;
                        data[range.clone()].copy_from_slice(&bytes[range]);
                    }
                    spare.copy_from_slice(&bytes[page_bytes..]);
                }
                None => {
                    data.fill(0xFF);
                    spare.fill(0xFF);
                }
            }
        }
        self.flip_on_read(data, spare, |byte| slots & (1 << (byte / SLOT_BYTES)) != 0);
        Ok(())
    }

    fn read_slot_into(
        &mut self,
        page: PageId,
        slot: u32,
        dst: &mut [u8; SLOT_BYTES],
        page_buf: &mut [u8],
        spare: &mut [u8],
    ) -> Result<(), SimError> {
        if !matches!(self.store, Store::Ram(_)) {
            // Image pages are read whole anyway (see `read_slots`).
            self.read_slot(page, slot, page_buf, spare)?;
            let at = slot as usize * SLOT_BYTES;
            dst.copy_from_slice(&page_buf[at..at + SLOT_BYTES]);
            return Ok(());
        }
        self.check_slot(page, slot)?;
        self.start_read(page, page_buf.len(), spare.len())?;
        let at = slot as usize * SLOT_BYTES;
        let page_bytes = page_buf.len();
        if let Store::Ram(pages) = &self.store {
            match &pages[page.0 as usize] {
                Some(bytes) => {
                    dst.copy_from_slice(&bytes[at..at + SLOT_BYTES]);
                    spare.copy_from_slice(&bytes[page_bytes..]);
                }
                None => {
                    dst.fill(0xFF);
                    spare.fill(0xFF);
                }
            }
        }
        self.flip_on_slot_read(page_bytes, slot, dst, spare);
        Ok(())
    }

    fn read_spare(&mut self, page: PageId, spare: &mut [u8]) -> Result<(), SimError> {
        self.check_page(page)?;
        self.check_lengths(self.geometry.page_bytes as usize, spare.len())?;
        if self.power_step()? {
            return Err(SimError::PowerLoss);
        }
        self.counters.spare_reads += 1;
        match &mut self.store {
            Store::Ram(pages) => match &pages[page.0 as usize] {
                Some(bytes) => spare.copy_from_slice(&bytes[self.geometry.page_bytes as usize..]),
                None => spare.fill(0xFF),
            },
            Store::Image(img) => img.read_spare(page, spare).map_err(SimError::Io)?,
            Store::Overlay(img, ram) => match ram.get(&page.0) {
                Some(Some(bytes)) => {
                    spare.copy_from_slice(&bytes[self.geometry.page_bytes as usize..])
                }
                Some(None) => spare.fill(0xFF),
                None => img.read_spare(page, spare).map_err(SimError::Io)?,
            },
        }
        self.maybe_flip(spare);
        Ok(())
    }

    fn program(&mut self, page: PageId, data: &[u8], spare: &[u8]) -> Result<(), SimError> {
        self.check_page(page)?;
        self.check_lengths(data.len(), spare.len())?;
        let block = self.geometry.block_of(page);
        let n = self.geometry.page_in_block(page);
        let b = block.0 as usize;
        if self.bad[b] {
            return Err(SimError::Contract(format!(
                "program of page {} in bad block {}",
                page.0, block.0
            )));
        }
        if n < self.write_point[b] {
            return Err(SimError::Contract(format!(
                "program of page {} of block {} below its write point {} (program twice or out of order)",
                n, block.0, self.write_point[b]
            )));
        }
        let torn = self.power_step()?;
        self.counters.programs += 1;
        let mut raw = match self.free_pages.pop() {
            Some(page) => {
                let mut raw = page.into_vec();
                raw.clear();
                raw
            }
            None => Vec::with_capacity(self.raw_len()),
        };
        raw.extend_from_slice(data);
        raw.extend_from_slice(spare);
        self.write_point[b] = n + 1;
        let failed = !torn
            && self.faults.program_fail_rate > 0.0
            && self.rng.chance(self.faults.program_fail_rate);
        if torn || failed {
            let partial = self.torn_image(&raw);
            self.store_page(page, partial)?;
            self.persist_block_state(block)?;
            return Err(if torn {
                SimError::PowerLoss
            } else {
                SimError::ProgramFailed(page)
            });
        }
        self.store_page(page, raw)?;
        self.persist_block_state(block)
    }

    fn erase(&mut self, block: BlockId) -> Result<(), SimError> {
        self.check_block(block)?;
        let b = block.0 as usize;
        if self.bad[b] {
            return Err(SimError::Contract(format!(
                "erase of bad block {}",
                block.0
            )));
        }
        let torn = self.power_step()?;
        self.counters.erases += 1;
        self.erase_counts[b] += 1;
        let failed = !torn
            && self.faults.erase_fail_rate > 0.0
            && self.rng.chance(self.faults.erase_fail_rate);
        let ppb = self.geometry.pages_per_block;
        if torn || failed {
            // Undefined: some pages erased, some not; nothing may be programmed until a
            // complete erase, so the write point stays at the end of the block.
            for n in 0..ppb {
                if self.rng.next_u64().is_multiple_of(2) {
                    self.erase_page(self.geometry.page(block, n))?;
                }
            }
            self.write_point[b] = ppb;
            self.persist_block_state(block)?;
            return Err(if torn {
                SimError::PowerLoss
            } else {
                SimError::EraseFailed(block)
            });
        }
        let first = self.geometry.page(block, 0);
        match &mut self.store {
            Store::Ram(pages) => {
                for page in &mut pages[first.0 as usize..][..ppb as usize] {
                    if let Some(buf) = page.take() {
                        if self.free_pages.len() < FREE_PAGES_KEPT {
                            self.free_pages.push(buf);
                        }
                    }
                }
            }
            Store::Image(img) => img.erase_pages(first, ppb).map_err(SimError::Io)?,
            Store::Overlay(_, ram) => {
                for n in 0..ppb {
                    ram.insert(first.0 + n, None);
                }
            }
        }
        self.write_point[b] = 0;
        self.persist_block_state(block)
    }

    fn is_bad(&mut self, block: BlockId) -> Result<bool, SimError> {
        self.check_block(block)?;
        if self.power_lost {
            return Err(SimError::PowerLoss);
        }
        Ok(self.bad[block.0 as usize])
    }

    fn mark_bad(&mut self, block: BlockId) -> Result<(), SimError> {
        self.check_block(block)?;
        if self.power_lost {
            return Err(SimError::PowerLoss);
        }
        self.bad[block.0 as usize] = true;
        self.persist_block_state(block)
    }
}

impl SimNand {
    fn erase_page(&mut self, page: PageId) -> Result<(), SimError> {
        match &mut self.store {
            Store::Ram(pages) => pages[page.0 as usize] = None,
            Store::Image(img) => img.erase_pages(page, 1).map_err(SimError::Io)?,
            Store::Overlay(_, ram) => {
                ram.insert(page.0, None);
            }
        }
        Ok(())
    }
}
