//! The event ids dispatched lately, to drop an event the homeserver delivers a
//! second time in another transaction (a retry after a crash between dispatch and
//! recording the transaction, or a homeserver that re-batches).

use std::collections::{HashSet, VecDeque};

use ruma::{EventId, OwnedEventId};

/// A set of at most `capacity` event ids; the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct RecentEvents {
    capacity: usize,
    order: VecDeque<OwnedEventId>,
    ids: HashSet<OwnedEventId>,
}

impl RecentEvents {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::with_capacity(capacity),
            ids: HashSet::with_capacity(capacity),
        }
    }

    pub fn contains(&self, id: &EventId) -> bool {
        self.ids.contains(id)
    }

    pub fn insert(&mut self, id: OwnedEventId) {
        if self.ids.contains(&id) {
            return;
        }
        while self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        self.order.push_back(id.clone());
        self.ids.insert(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> OwnedEventId {
        EventId::parse(format!("$e{n}")).unwrap()
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let mut recent = RecentEvents::new(2);
        recent.insert(id(1));
        recent.insert(id(2));
        recent.insert(id(1));
        assert!(recent.contains(&id(1)) && recent.contains(&id(2)));
        recent.insert(id(3));
        assert!(!recent.contains(&id(1)));
        assert!(recent.contains(&id(2)) && recent.contains(&id(3)));
    }
}
