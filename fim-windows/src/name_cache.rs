//! Bounded object -> name maps. ETW names a FileObject/FileKey/KeyObject only
//! on some events (create, open, name-create); later events carry just the
//! kernel pointer, so fim remembers names. The bound keeps a long-running
//! agent's memory flat: the oldest insertion is evicted first.
//!
//! ETW delivers the events of different CPUs out of order, so a Write or a
//! RenamePath issued before a Close can arrive after it. A closed object's
//! name is therefore kept for a grace period ([`CLOSED_GRACE_MS`] of event
//! time) and still answers for events stamped at or before the close; an
//! event stamped after it (the pointer was reused by an open fim did not
//! see) gets no name rather than a wrong one.

use std::collections::{HashMap, VecDeque};

/// How long (event time) a closed object's name still resolves late events.
pub const CLOSED_GRACE_MS: u64 = 2_000;

#[derive(Debug)]
pub struct NameCache {
    capacity: usize,
    /// Live names and the event time they were learnt at.
    names: HashMap<u64, (String, u64)>,
    /// Insertion order; may hold stale keys whose entry was removed or
    /// re-inserted, skipped at eviction time.
    order: VecDeque<(u64, u64)>,
    generation: HashMap<u64, u64>,
    next_generation: u64,
    evicted: u64,
    /// Names of closed objects: (name, close time), oldest close first in
    /// `closed_order` (stale entries skipped as in `order`).
    closed: HashMap<u64, (String, u64)>,
    closed_order: VecDeque<(u64, u64)>,
}

impl NameCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            names: HashMap::new(),
            order: VecDeque::new(),
            generation: HashMap::new(),
            next_generation: 0,
            evicted: 0,
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
        }
    }

    /// Remember a name learnt from an event of unknown time (seeds).
    pub fn insert(&mut self, object: u64, name: String) {
        self.insert_at(object, name, 0);
    }

    /// Remember `object`'s name as of event time `since_ms`.
    pub fn insert_at(&mut self, object: u64, name: String, since_ms: u64) {
        if object == 0 {
            return;
        }
        self.next_generation += 1;
        self.generation.insert(object, self.next_generation);
        self.order.push_back((object, self.next_generation));
        self.names.insert(object, (name, since_ms));
        while self.names.len() > self.capacity {
            let Some((oldest, generation)) = self.order.pop_front() else {
                break;
            };
            if self.generation.get(&oldest) == Some(&generation) {
                self.names.remove(&oldest);
                self.generation.remove(&oldest);
                self.evicted += 1;
            }
        }
        // Stale order entries accumulate on re-insert/remove: compact when
        // they dominate so the queue stays O(capacity).
        if self.order.len() > self.capacity * 4 {
            let generation = &self.generation;
            self.order.retain(|(o, g)| generation.get(o) == Some(g));
        }
    }

    pub fn get(&self, object: u64) -> Option<&str> {
        self.names.get(&object).map(|(n, _)| n.as_str())
    }

    /// The name `object` had at event time `at_ms`: the live name, unless
    /// the event predates it and the object's previous life was closed at
    /// or after the event (a late event of the earlier open).
    pub fn get_at(&self, object: u64, at_ms: u64) -> Option<&str> {
        let closed = self
            .closed
            .get(&object)
            .filter(|(_, closed_ms)| at_ms <= *closed_ms);
        match (self.names.get(&object), closed) {
            (Some((_, since)), Some((old, _))) if at_ms < *since => Some(old.as_str()),
            (Some((name, _)), _) => Some(name.as_str()),
            (None, Some((old, _))) => Some(old.as_str()),
            (None, None) => None,
        }
    }

    pub fn remove(&mut self, object: u64) -> Option<String> {
        self.generation.remove(&object);
        self.names.remove(&object).map(|(n, _)| n)
    }

    /// The object was closed at event time `at_ms`: its name leaves the
    /// live map but still resolves events stamped up to `at_ms` for
    /// [`CLOSED_GRACE_MS`].
    pub fn close(&mut self, object: u64, at_ms: u64) {
        let Some(name) = self.remove(object) else {
            return;
        };
        self.closed.insert(object, (name, at_ms));
        self.closed_order.push_back((object, at_ms));
        self.expire(at_ms);
    }

    /// Forget closed names whose grace period ended before `now_ms`, and
    /// the oldest beyond capacity.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(object, closed_ms)) = self.closed_order.front() {
            let over = self.closed_order.len() > self.capacity;
            if !over && closed_ms.saturating_add(CLOSED_GRACE_MS) >= now_ms {
                break;
            }
            self.closed_order.pop_front();
            if self
                .closed
                .get(&object)
                .is_some_and(|(_, t)| *t == closed_ms)
            {
                self.closed.remove(&object);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// How many names were dropped for capacity (a hint to raise it).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_beyond_capacity() {
        let mut c = NameCache::new(2);
        c.insert(1, "a".into());
        c.insert(2, "b".into());
        c.insert(3, "c".into());
        assert_eq!(c.get(1), None);
        assert_eq!(c.get(2), Some("b"));
        assert_eq!(c.get(3), Some("c"));
        assert_eq!(c.evicted(), 1);
    }

    #[test]
    fn reinsert_refreshes_position() {
        let mut c = NameCache::new(2);
        c.insert(1, "a".into());
        c.insert(2, "b".into());
        c.insert(1, "a2".into());
        c.insert(3, "c".into());
        assert_eq!(c.get(1), Some("a2"));
        assert_eq!(c.get(2), None);
    }

    #[test]
    fn stays_bounded_under_churn() {
        let mut c = NameCache::new(8);
        for i in 0..10_000u64 {
            c.insert(i % 16 + 1, format!("n{i}"));
            if i % 3 == 0 {
                c.remove(i % 16 + 1);
            }
        }
        assert!(c.len() <= 8);
        assert!(c.order.len() <= 8 * 4 + 1);
    }

    #[test]
    fn closed_names_answer_late_events_for_a_grace_period() {
        let mut c = NameCache::new(8);
        c.insert_at(5, "a".into(), 100);
        c.close(5, 110);
        assert_eq!(c.get(5), None, "no longer live");
        // A Write stamped before the Close but delivered after it.
        assert_eq!(c.get_at(5, 105), Some("a"));
        assert_eq!(c.get_at(5, 110), Some("a"));
        // Stamped after the close: the pointer belongs to an unseen open.
        assert_eq!(c.get_at(5, 111), None);
        // Reused by a new open: late events of the old open keep the old
        // name, events of the new one get the new name.
        c.insert_at(5, "b".into(), 120);
        assert_eq!(c.get_at(5, 108), Some("a"));
        assert_eq!(c.get_at(5, 125), Some("b"));
        // The grace period ends.
        c.expire(110 + CLOSED_GRACE_MS + 1);
        assert_eq!(c.get_at(5, 108), Some("b"));
    }

    #[test]
    fn closed_names_stay_bounded() {
        let mut c = NameCache::new(4);
        for i in 1..=100u64 {
            c.insert_at(i, format!("n{i}"), i);
            c.close(i, i);
        }
        assert!(c.closed.len() <= 4 && c.closed_order.len() <= 4);
        assert_eq!(c.get_at(100, 100), Some("n100"));
    }

    #[test]
    fn null_object_is_never_cached() {
        let mut c = NameCache::new(2);
        c.insert(0, "x".into());
        assert!(c.is_empty());
    }
}
