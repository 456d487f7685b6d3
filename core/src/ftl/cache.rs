//! The node cache's eviction policy, behind a small seam.
//!
//! The FTL keeps node pages in a fixed number of RAM slots. Which slot to give up when a new node
//! is needed is the policy's choice: [`Lru`], or [`Score`], which weighs access frequency with
//! the share of the inline area a page fills with live deltas (the IMPRESS idea: keep the chunks
//! rich in valuable entries). [`CachePolicy`] picks one at run time.
//!
//! # Score
//!
//! `score = (f + 1) · (4 + 12 · inline_len / AREA)`, where `f` is the slot's access count halved
//! once per [`FREQ_HALF_LIFE`] accesses of the whole cache since the slot was last used (so a
//! slot hot long ago cools down). A page whose inline area is full of deltas counts four times
//! one without: evicting it costs a write-back now and, for every later read of a delta LBA,
//! a node read again; a delta-free page costs only a re-read. The lowest score is evicted, the
//! older stamp on ties.

use super::config::CacheSlot;
use crate::format::inline_delta::AREA;

/// Cache accesses after which a slot's frequency halves.
pub const FREQ_HALF_LIFE: u64 = 1024;

/// Chooses the slot to evict and records accesses.
pub trait EvictionPolicy {
    /// Notes that `slot` was just used; `clock` increases with every access.
    fn touch(&self, slot: &mut CacheSlot, clock: u64);
    /// The slot to reuse: an empty one if any, else the policy's pick.
    fn victim(&self, slots: &[CacheSlot]) -> usize;
}

/// Least recently used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lru;

impl EvictionPolicy for Lru {
    fn touch(&self, slot: &mut CacheSlot, clock: u64) {
        slot.stamp = clock;
    }

    fn victim(&self, slots: &[CacheSlot]) -> usize {
        let mut best = 0;
        let mut best_key = u64::MAX;
        for (i, s) in slots.iter().enumerate() {
            if s.node_plus_one == 0 {
                return i;
            }
            if s.stamp < best_key {
                best_key = s.stamp;
                best = i;
            }
        }
        best
    }
}

/// Frequency and delta share.
#[derive(Clone, Copy, Debug, Default)]
pub struct Score;

impl Score {
    fn freq(slot: &CacheSlot, clock: u64) -> u64 {
        let halvings = (clock.saturating_sub(slot.stamp) / FREQ_HALF_LIFE).min(32) as u32;
        (slot.freq as u64) >> halvings
    }

    /// The slot's score at `clock` (higher = keep).
    pub fn score(slot: &CacheSlot, clock: u64) -> u64 {
        (Self::freq(slot, clock) + 1) * (4 + 12 * slot.inline_len as u64 / AREA as u64)
    }
}

impl EvictionPolicy for Score {
    fn touch(&self, slot: &mut CacheSlot, clock: u64) {
        slot.freq = (Self::freq(slot, clock) as u32).saturating_add(1);
        slot.stamp = clock;
    }

    fn victim(&self, slots: &[CacheSlot]) -> usize {
        let clock = slots.iter().map(|s| s.stamp).max().unwrap_or(0);
        let mut best = 0;
        let mut best_key = (u64::MAX, u64::MAX);
        for (i, s) in slots.iter().enumerate() {
            if s.node_plus_one == 0 {
                return i;
            }
            let key = (Self::score(s, clock), s.stamp);
            if key < best_key {
                best_key = key;
                best = i;
            }
        }
        best
    }
}

/// The policy in force, chosen at run time (`--node-cache score|lru`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// Least recently used.
    #[default]
    Lru,
    /// Frequency weighted by the share of live inline deltas.
    Score,
}

impl EvictionPolicy for CachePolicy {
    fn touch(&self, slot: &mut CacheSlot, clock: u64) {
        match self {
            CachePolicy::Lru => Lru.touch(slot, clock),
            CachePolicy::Score => Score.touch(slot, clock),
        }
    }

    fn victim(&self, slots: &[CacheSlot]) -> usize {
        match self {
            CachePolicy::Lru => Lru.victim(slots),
            CachePolicy::Score => Score.victim(slots),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(node: u32, stamp: u64, freq: u32, inline_len: u16) -> CacheSlot {
        CacheSlot {
            node_plus_one: node,
            stamp,
            freq,
            inline_len,
            ..CacheSlot::default()
        }
    }

    #[test]
    fn score_keeps_delta_rich_pages_that_lru_would_drop() {
        // Slot 0: least recent, but full of deltas; slot 1: recent, no deltas, same frequency.
        let slots = [slot(1, 10, 3, AREA as u16), slot(2, 20, 3, 0)];
        assert_eq!(Lru.victim(&slots), 0);
        assert_eq!(Score.victim(&slots), 1);
        // A much more frequently used page outweighs the delta share.
        let slots = [slot(1, 10, 1, AREA as u16), slot(2, 20, 40, 0)];
        assert_eq!(Score.victim(&slots), 0);
        // Empty slots first.
        assert_eq!(Score.victim(&[slot(1, 1, 0, 0), slot(0, 0, 0, 0)]), 1);
    }

    #[test]
    fn frequency_cools_down_with_age() {
        let mut s = slot(1, 0, 0, 0);
        for t in 0..16 {
            Score.touch(&mut s, t);
        }
        assert_eq!(s.freq, 16);
        assert_eq!(Score::score(&s, 15 + 2 * FREQ_HALF_LIFE), 5 * 4);
    }
}
