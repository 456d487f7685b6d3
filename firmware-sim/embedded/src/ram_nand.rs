//! A NAND array in RAM for the microcontroller: fixed size, no allocation, strict contract.
//!
//! This is the embedded counterpart of firmware-sim's `SimNand`, cut down to what fits a
//! microcontroller: the page bytes live in a buffer lent by the caller (a static in its own
//! linker section), per-block state lives in const-generic arrays. It is never kinder than
//! hardware: a second program of a page without an erase, a program below the block's write
//! point, or a program into a block left undefined by a torn erase is refused as a
//! [`FaultKind::ContractViolation`]; and a deterministic countdown cuts power in the middle of an
//! operation, leaving a torn page or block, after which every operation fails with
//! [`FaultKind::PowerLoss`] until [`RamNand::power_cycle`].

use core::fmt;

use nandbox_core::nand::{BlockId, FaultKind, Geometry, Nand, NandFault, PageId};

/// An error from the RAM array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamNandError(pub FaultKind);

impl fmt::Display for RamNandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            FaultKind::ContractViolation => f.write_str("ram nand: NAND contract violated"),
            FaultKind::PowerLoss => f.write_str("ram nand: power lost"),
            other => write!(f, "ram nand: {other:?}"),
        }
    }
}

impl NandFault for RamNandError {
    fn kind(&self) -> FaultKind {
        self.0
    }
}

/// Operations counted since the array was made, across power cycles. Operations refused for
/// breaking the contract, or attempted while power is off, reach no cell and are not counted as
/// reads, programs or erases; refusals are counted apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Page reads, spare-only reads included.
    pub reads: u32,
    /// Page programs, torn ones included.
    pub programs: u32,
    /// Block erases, torn ones included.
    pub erases: u32,
    /// Operations refused for breaking the contract: firmware bugs, so the FTL self-test
    /// requires zero.
    pub violations: u32,
}

impl OpCounts {
    /// All operations: the index space of the power-cut countdown.
    pub const fn total(&self) -> u32 {
        self.reads + self.programs + self.erases
    }
}

/// A fixed-size NAND array of `BLOCKS` erase blocks held in caller-lent RAM.
pub struct RamNand<'m, const BLOCKS: usize> {
    geometry: Geometry,
    data: &'m mut [u8],
    spare: &'m mut [u8],
    /// Lowest page of each block that may still be programmed: the physical state that
    /// "program once, ascending order" is checked against. A torn erase sets it past the end,
    /// because the block is undefined until it is erased again.
    write_point: [u32; BLOCKS],
    bad: [bool; BLOCKS],
    /// Operations left before the cut; the operation that brings it to zero is torn.
    cut_countdown: Option<u32>,
    powered: bool,
    /// Picks how a torn operation is left (how much of it reached the cells).
    tear_seed: u32,
    counts: OpCounts,
}

impl<'m, const BLOCKS: usize> RamNand<'m, BLOCKS> {
    /// A factory-fresh array: `data` and `spare` are filled with the erased value `0xFF`.
    ///
    /// Returns `None` when the geometry is invalid, is not `BLOCKS` blocks, or the buffers are
    /// not exactly the array's data and spare sizes.
    pub fn new(
        geometry: Geometry,
        data: &'m mut [u8],
        spare: &'m mut [u8],
        tear_seed: u32,
    ) -> Option<Self> {
        geometry.validate().ok()?;
        let pages = geometry.total_pages() as usize;
        if geometry.blocks as usize != BLOCKS
            || data.len() != pages * geometry.page_bytes as usize
            || spare.len() != pages * geometry.spare_bytes as usize
        {
            return None;
        }
        data.fill(0xFF);
        spare.fill(0xFF);
        Some(Self {
            geometry,
            data,
            spare,
            write_point: [0; BLOCKS],
            bad: [false; BLOCKS],
            cut_countdown: None,
            powered: true,
            tear_seed,
            counts: OpCounts::default(),
        })
    }

    /// Cuts power during the `n`th operation from now (`n = 0`: the very next one). That
    /// operation is torn; it and every later one fail with [`FaultKind::PowerLoss`].
    pub fn cut_power_after(&mut self, n: u32) {
        self.cut_countdown = Some(n);
    }

    /// Disarms a pending power cut.
    pub fn disarm(&mut self) {
        self.cut_countdown = None;
    }

    /// Whether power has been cut and not yet restored.
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// Restores power: the cells keep whatever the cut left in them.
    pub fn power_cycle(&mut self) {
        self.powered = true;
        self.cut_countdown = None;
    }

    /// Operations so far.
    pub fn counts(&self) -> OpCounts {
        self.counts
    }

    /// Marks a block bad as the factory would, before the firmware first sees the array.
    pub fn factory_bad(&mut self, block: BlockId) {
        if let Some(b) = self.bad.get_mut(block.0 as usize) {
            *b = true;
        }
    }

    /// Counts one operation against the power-cut countdown: `Err` if power is already off,
    /// `Ok(true)` if this operation is the one the cut tears.
    fn start_op(&mut self) -> Result<bool, RamNandError> {
        if !self.powered {
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        match self.cut_countdown {
            Some(0) => {
                self.powered = false;
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

    /// Next deterministic tear choice (xorshift32; never zero for a non-zero seed).
    fn next_tear(&mut self) -> u32 {
        let mut x = self.tear_seed | 1;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.tear_seed = x;
        x
    }

    /// Refuses an operation that breaks the contract, and counts it.
    fn violation(&mut self) -> RamNandError {
        self.counts.violations += 1;
        RamNandError(FaultKind::ContractViolation)
    }

    fn check_page(&mut self, page: PageId) -> Result<(usize, usize), RamNandError> {
        if page.0 >= self.geometry.total_pages() {
            return Err(self.violation());
        }
        Ok((page.0 as usize, self.geometry.block_of(page).0 as usize))
    }

    fn data_range(&self, page: usize) -> core::ops::Range<usize> {
        let n = self.geometry.page_bytes as usize;
        page * n..(page + 1) * n
    }

    fn spare_range(&self, page: usize) -> core::ops::Range<usize> {
        let n = self.geometry.spare_bytes as usize;
        page * n..(page + 1) * n
    }
}

impl<const BLOCKS: usize> Nand for RamNand<'_, BLOCKS> {
    type Error = RamNandError;

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, page: PageId, data: &mut [u8], spare: &mut [u8]) -> Result<(), Self::Error> {
        let (p, _) = self.check_page(page)?;
        if data.len() != self.geometry.page_bytes as usize
            || spare.len() != self.geometry.spare_bytes as usize
        {
            return Err(self.violation());
        }
        let torn = self.start_op()?;
        self.counts.reads += 1;
        if torn {
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        data.copy_from_slice(&self.data[self.data_range(p)]);
        spare.copy_from_slice(&self.spare[self.spare_range(p)]);
        Ok(())
    }

    fn read_spare(&mut self, page: PageId, spare: &mut [u8]) -> Result<(), Self::Error> {
        let (p, _) = self.check_page(page)?;
        if spare.len() != self.geometry.spare_bytes as usize {
            return Err(self.violation());
        }
        let torn = self.start_op()?;
        self.counts.reads += 1;
        if torn {
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        spare.copy_from_slice(&self.spare[self.spare_range(p)]);
        Ok(())
    }

    fn program(&mut self, page: PageId, data: &[u8], spare: &[u8]) -> Result<(), Self::Error> {
        let (p, b) = self.check_page(page)?;
        let in_block = self.geometry.page_in_block(page);
        if data.len() != self.geometry.page_bytes as usize
            || spare.len() != self.geometry.spare_bytes as usize
            || self.bad[b]
            || in_block < self.write_point[b]
        {
            return Err(self.violation());
        }
        let torn = self.start_op()?;
        self.counts.programs += 1;
        // From here on the page has been touched: it can never be programmed again before an
        // erase, whether the program completed or was torn.
        self.write_point[b] = in_block + 1;
        let dr = self.data_range(p);
        let sr = self.spare_range(p);
        if torn {
            // A torn program leaves the page anywhere between erased and fully written; the
            // cut may land before the spare area (written last here) is in place. Programming
            // only clears bits, so the torn bytes are the AND of old and new.
            let data_bytes = match self.next_tear() % 4 {
                0 => 0,
                1 => data.len() / 3,
                2 => data.len() / 2 + 7,
                _ => data.len(),
            };
            let spare_bytes = if data_bytes == data.len() {
                spare.len() / 2
            } else {
                0
            };
            for (cell, new) in self.data[dr].iter_mut().zip(&data[..data_bytes]) {
                *cell &= *new;
            }
            for (cell, new) in self.spare[sr].iter_mut().zip(&spare[..spare_bytes]) {
                *cell &= *new;
            }
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        for (cell, new) in self.data[dr].iter_mut().zip(data) {
            *cell &= *new;
        }
        for (cell, new) in self.spare[sr].iter_mut().zip(spare) {
            *cell &= *new;
        }
        Ok(())
    }

    fn erase(&mut self, block: BlockId) -> Result<(), Self::Error> {
        let b = block.0 as usize;
        if b >= BLOCKS || self.bad[b] {
            return Err(self.violation());
        }
        let torn = self.start_op()?;
        self.counts.erases += 1;
        let ppb = self.geometry.pages_per_block as usize;
        let first = b * ppb;
        // A torn erase gets through only the first pages of the block; the rest keep their
        // old bytes, and the block may not be programmed until it is erased again.
        let erased_pages = if torn {
            self.next_tear() as usize % ppb
        } else {
            ppb
        };
        for p in first..first + erased_pages {
            let dr = self.data_range(p);
            let sr = self.spare_range(p);
            self.data[dr].fill(0xFF);
            self.spare[sr].fill(0xFF);
        }
        if torn {
            self.write_point[b] = self.geometry.pages_per_block;
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        self.write_point[b] = 0;
        Ok(())
    }

    fn is_bad(&mut self, block: BlockId) -> Result<bool, Self::Error> {
        if !self.powered {
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        match self.bad.get(block.0 as usize) {
            Some(&b) => Ok(b),
            None => Err(self.violation()),
        }
    }

    fn mark_bad(&mut self, block: BlockId) -> Result<(), Self::Error> {
        if !self.powered {
            return Err(RamNandError(FaultKind::PowerLoss));
        }
        match self.bad.get_mut(block.0 as usize) {
            Some(b) => {
                *b = true;
                Ok(())
            }
            None => Err(self.violation()),
        }
    }
}

/// The FTL takes its NAND by value; lending it `&mut RamNand` keeps the array with the test
/// across a power cut and a failed mount, as the cells outlive the firmware on real hardware.
impl<const BLOCKS: usize> Nand for &mut RamNand<'_, BLOCKS> {
    type Error = RamNandError;

    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }

    fn read(&mut self, page: PageId, data: &mut [u8], spare: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(page, data, spare)
    }

    fn read_spare(&mut self, page: PageId, spare: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read_spare(page, spare)
    }

    fn program(&mut self, page: PageId, data: &[u8], spare: &[u8]) -> Result<(), Self::Error> {
        (**self).program(page, data, spare)
    }

    fn erase(&mut self, block: BlockId) -> Result<(), Self::Error> {
        (**self).erase(block)
    }

    fn is_bad(&mut self, block: BlockId) -> Result<bool, Self::Error> {
        (**self).is_bad(block)
    }

    fn mark_bad(&mut self, block: BlockId) -> Result<(), Self::Error> {
        (**self).mark_bad(block)
    }
}
