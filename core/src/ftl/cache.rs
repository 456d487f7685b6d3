//! The node cache's eviction policy, behind a small seam.
//!
//! The FTL keeps node pages in a fixed number of RAM slots. Which slot to give up when a new node
//! is needed is the policy's choice; today that is least-recently-used. Issue 4 adds a policy
//! that weighs access frequency against the live inline deltas a page holds; it plugs in here
//! without touching the FTL.

use super::config::CacheSlot;

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
