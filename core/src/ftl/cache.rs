//! The node cache's eviction policy, behind a small seam.
//!
//! The FTL keeps node pages in a fixed number of RAM slots. Which slot to give up when a new node
//! is needed is the policy's choice: [`Lru`], or [`Score`], which weighs access frequency with
//! the share of the inline area a page fills with live deltas (the IMPRESS idea: keep the chunks
//! rich in valuable entries). [`CachePolicy`] picks one at run time.
//!
//! # Score
//!
//! LRU with a delta bonus: a page is evicted by the key `stamp + B · inline_len / AREA`, where
//! `stamp` is the cache clock (one tick per node access) at its last use and `B` =
//! [`DELTA_BONUS_PER_SLOT`] × the number of slots. A page whose inline area is full of live
//! deltas is thus kept as if it had been used `B` accesses later than it was: with 64 slots it
//! outlives a delta-free page of the same age by 192 accesses of other pages. Evicting a
//! delta-rich page costs more than a re-read: it is dirty (a write-back programs it), and every
//! later read of one of its delta LBAs needs it again. Without deltas the key is the stamp, so
//! the policy is exactly LRU, and a page no longer used ages out like any other (a pure
//! frequency count would keep yesterday's hot page and evict every newcomer first; that lost
//! to LRU in bench/delta.sh). The older stamp breaks ties.

use super::config::CacheSlot;
use crate::format::inline_delta::AREA;

/// Accesses of bonus per cache slot for a page whose inline area is full of live deltas.
pub const DELTA_BONUS_PER_SLOT: u64 = 3;

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

/// LRU with a bonus for the share of live inline deltas.
#[derive(Clone, Copy, Debug, Default)]
pub struct Score;

impl Score {
    /// The slot's eviction key in a cache of `slots` slots (lower = evict first).
    pub fn key(slot: &CacheSlot, slots: usize) -> u64 {
        let bonus = DELTA_BONUS_PER_SLOT * slots as u64;
        slot.stamp + bonus * u64::from(slot.inline_len).min(AREA as u64) / AREA as u64
    }
}

impl EvictionPolicy for Score {
    fn touch(&self, slot: &mut CacheSlot, clock: u64) {
        slot.stamp = clock;
    }

    fn victim(&self, slots: &[CacheSlot]) -> usize {
        let mut best = 0;
        let mut best_key = (u64::MAX, u64::MAX);
        for (i, s) in slots.iter().enumerate() {
            if s.node_plus_one == 0 {
                return i;
            }
            let key = (Self::key(s, slots.len()), s.stamp);
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
    /// LRU with a bonus for the share of live inline deltas.
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

    fn slot(node: u32, stamp: u64, inline_len: u16) -> CacheSlot {
        CacheSlot {
            node_plus_one: node,
            stamp,
            inline_len,
            ..CacheSlot::default()
        }
    }

    #[test]
    fn score_keeps_delta_rich_pages_that_lru_would_drop() {
        // Slot 0: least recent, but full of deltas; slot 1: recent, no deltas.
        let slots = [slot(1, 10, AREA as u16), slot(2, 14, 0)];
        assert_eq!(Lru.victim(&slots), 0);
        assert_eq!(Score.victim(&slots), 1);
        // A delta-rich page unused for longer than its bonus goes anyway.
        let bonus = DELTA_BONUS_PER_SLOT * 2;
        let slots = [slot(1, 10, AREA as u16), slot(2, 11 + bonus, 0)];
        assert_eq!(Score.victim(&slots), 0);
        // Half full, half the bonus.
        let slots = [slot(1, 10, AREA as u16 / 2), slot(2, 10 + bonus / 2 + 1, 0)];
        assert_eq!(Score.victim(&slots), 0);
        // Empty slots first.
        assert_eq!(Score.victim(&[slot(1, 1, 0), slot(0, 0, 0)]), 1);
    }

    #[test]
    fn without_deltas_score_is_lru() {
        let mut rng = 0x1234_5678_u64;
        for _ in 0..100 {
            let slots: [CacheSlot; 8] = core::array::from_fn(|i| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                slot(i as u32 + 1, rng >> 40, 0)
            });
            assert_eq!(Score.victim(&slots), Lru.victim(&slots));
        }
    }
}
