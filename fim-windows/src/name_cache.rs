//! Bounded object -> name maps. ETW names a FileObject/FileKey/KeyObject only
//! on some events (create, open, name-create); later events carry just the
//! kernel pointer, so fim remembers names. The bound keeps a long-running
//! agent's memory flat: the oldest insertion is evicted first.

use std::collections::{HashMap, VecDeque};

#[derive(Debug)]
pub struct NameCache {
    capacity: usize,
    names: HashMap<u64, String>,
    /// Insertion order; may hold stale keys whose entry was removed or
    /// re-inserted, skipped at eviction time.
    order: VecDeque<(u64, u64)>,
    generation: HashMap<u64, u64>,
    next_generation: u64,
    evicted: u64,
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
        }
    }

    pub fn insert(&mut self, object: u64, name: String) {
        if object == 0 {
            return;
        }
        self.next_generation += 1;
        self.generation.insert(object, self.next_generation);
        self.order.push_back((object, self.next_generation));
        self.names.insert(object, name);
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
        self.names.get(&object).map(String::as_str)
    }

    pub fn remove(&mut self, object: u64) -> Option<String> {
        self.generation.remove(&object);
        self.names.remove(&object)
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
    fn null_object_is_never_cached() {
        let mut c = NameCache::new(2);
        c.insert(0, "x".into());
        assert!(c.is_empty());
    }
}
