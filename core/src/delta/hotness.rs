//! Per-group hotness: read and write counts that decay with age, and their online clustering
//! into four classes.
//!
//! Each cached node page carries a [`Heat`]: counts of reads and writes to its group, halved
//! once per [`HALF_LIFE`] ticks of the FTL's access clock since the last access (recency). The
//! [`Classifier`] keeps running means of both counts over the groups it is shown (an
//! exponentially weighted mean, weight 1/16), and a group is *hot* on an axis when its count is
//! above that axis' mean: an online two-cluster split per axis whose threshold follows the
//! workload. The four classes decide what happens to a group's evicted deltas (compact pages for
//! read-cold groups, rebuilds otherwise), how much a new delta may cost (write-hot groups keep
//! overwriting theirs), and whether idle time restores its full pages (read-hot, write-cold
//! groups whose reads pay a delta penalty).

/// Access-clock ticks after which a group's counts halve.
pub const HALF_LIFE: u64 = 4096;

/// Read and write counts of one group, with the tick of the last access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heat {
    /// Decayed read count.
    pub reads: u16,
    /// Decayed write count.
    pub writes: u16,
    /// Clock tick of the last access.
    pub last: u64,
}

impl Heat {
    fn decay(&mut self, now: u64) {
        let halvings = (now.saturating_sub(self.last) / HALF_LIFE).min(16) as u32;
        self.reads = self.reads.checked_shr(halvings).unwrap_or(0);
        self.writes = self.writes.checked_shr(halvings).unwrap_or(0);
        if halvings > 0 {
            self.last = now;
        }
    }

    /// Records a read at tick `now`.
    pub fn read(&mut self, now: u64) {
        self.decay(now);
        self.reads = self.reads.saturating_add(1);
        self.last = now;
    }

    /// Records a write at tick `now`.
    pub fn write(&mut self, now: u64) {
        self.decay(now);
        self.writes = self.writes.saturating_add(1);
        self.last = now;
    }

    /// The counts as they stand at tick `now`.
    pub fn at(&self, now: u64) -> Heat {
        let mut h = *self;
        h.decay(now);
        h
    }
}

/// The four hotness classes of MedFS's Delta Chunk Maintenance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Read-hot, write-hot.
    ReadHotWriteHot,
    /// Read-hot, write-cold.
    ReadHotWriteCold,
    /// Read-cold, write-hot: evicted deltas go to compact pages.
    ReadColdWriteHot,
    /// Read-cold, write-cold.
    ReadColdWriteCold,
}

impl Class {
    /// Read-hot classes.
    pub fn read_hot(self) -> bool {
        matches!(self, Class::ReadHotWriteHot | Class::ReadHotWriteCold)
    }
    /// Write-hot classes.
    pub fn write_hot(self) -> bool {
        matches!(self, Class::ReadHotWriteHot | Class::ReadColdWriteHot)
    }
}

/// Running means of read and write counts, in 1/16 units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Classifier {
    mean_reads_x16: u32,
    mean_writes_x16: u32,
}

impl Classifier {
    /// Folds a group's heat into the means and returns its class.
    pub fn classify(&mut self, h: Heat) -> Class {
        let r = (h.reads as u32) << 4;
        let w = (h.writes as u32) << 4;
        // Exponentially weighted means, weight 1/16.
        self.mean_reads_x16 = self.mean_reads_x16 - self.mean_reads_x16 / 16 + r / 16;
        self.mean_writes_x16 = self.mean_writes_x16 - self.mean_writes_x16 / 16 + w / 16;
        self.class_of(h)
    }

    /// The class of `h` against the current means, without updating them.
    pub fn class_of(&self, h: Heat) -> Class {
        let rh = ((h.reads as u32) << 4) > self.mean_reads_x16;
        let wh = ((h.writes as u32) << 4) > self.mean_writes_x16;
        match (rh, wh) {
            (true, true) => Class::ReadHotWriteHot,
            (true, false) => Class::ReadHotWriteCold,
            (false, true) => Class::ReadColdWriteHot,
            (false, false) => Class::ReadColdWriteCold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decay_with_age() {
        let mut h = Heat::default();
        for t in 0..8 {
            h.write(t);
        }
        assert_eq!(h.at(8).writes, 8);
        assert_eq!(h.at(8 + 2 * HALF_LIFE).writes, 2);
    }

    #[test]
    fn classes_follow_the_running_means() {
        let mut c = Classifier::default();
        let busy = Heat {
            reads: 0,
            writes: 50,
            last: 0,
        };
        let idle = Heat {
            reads: 1,
            writes: 1,
            last: 0,
        };
        for _ in 0..64 {
            c.classify(idle);
        }
        assert_eq!(c.class_of(busy), Class::ReadColdWriteHot);
        let reader = Heat {
            reads: 40,
            writes: 0,
            last: 0,
        };
        assert_eq!(c.class_of(reader), Class::ReadHotWriteCold);
        assert_eq!(c.class_of(idle), Class::ReadColdWriteCold);
        assert_eq!(
            c.class_of(Heat {
                reads: 9,
                writes: 9,
                last: 0
            }),
            Class::ReadHotWriteHot
        );
    }
}
