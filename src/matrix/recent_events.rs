//! The event ids seen lately, to drop an event delivered a second time (the
//! homeserver retrying a transaction after a crash between dispatch and recording
//! it, or re-batching; a room endpoint hearing one event twice).
//!
//! Each id is kept as a 128-bit keyed digest, not as the id: an id is a 44-byte
//! string held twice (the order and the set), ~135 bytes per entry with the
//! allocator's rounding, and the appservice's 4096 plus 512 per room filled up
//! over the first half hour of the soak as ~2 MB of RSS growth. A digest is 16
//! bytes; two ids share one with a chance of 2⁻¹²⁸ per pair, far below anything
//! else that could drop an event.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

use ruma::EventId;

/// A set of at most `capacity` event ids; the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct RecentEvents {
    capacity: usize,
    order: VecDeque<u128>,
    digests: HashSet<u128>,
    /// Two independent random keys: the two halves of a digest.
    keys: (RandomState, RandomState),
}

impl RecentEvents {
    /// Memory grows with the ids remembered, up to `capacity` of them.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            digests: HashSet::new(),
            keys: (RandomState::new(), RandomState::new()),
        }
    }

    fn digest(&self, id: &EventId) -> u128 {
        let (high, low) = (self.keys.0.hash_one(id), self.keys.1.hash_one(id));
        (u128::from(high) << 64) | u128::from(low)
    }

    pub fn contains(&self, id: &EventId) -> bool {
        self.digests.contains(&self.digest(id))
    }

    /// Remembers `id`; `false` if it was remembered already.
    pub fn insert(&mut self, id: &EventId) -> bool {
        let digest = self.digest(id);
        if !self.digests.insert(digest) {
            return false;
        }
        self.order.push_back(digest);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.digests.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use ruma::OwnedEventId;

    use super::*;

    fn id(n: u32) -> OwnedEventId {
        EventId::parse(format!("$e{n}")).expect("an event id")
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut recent = RecentEvents::new(2);
        assert!(recent.insert(&id(1)));
        assert!(recent.insert(&id(2)));
        assert!(!recent.insert(&id(1)), "seen already");
        assert!(recent.contains(&id(1)) && recent.contains(&id(2)));
        assert!(recent.insert(&id(3)));
        assert!(!recent.contains(&id(1)));
        assert!(recent.contains(&id(2)) && recent.contains(&id(3)));
    }

    #[test]
    fn ten_thousand_ids_are_told_apart() {
        let mut recent = RecentEvents::new(10_000);
        assert!((0..10_000).all(|n| recent.insert(&id(n))));
        assert!((0..10_000).all(|n| recent.contains(&id(n))));
        assert!(!recent.contains(&id(10_000)));
    }
}
