//! One report per change when both the sensor's kernel programs and the completeness layer
//! (fanotify, `sensor::fanotify`) saw it.
//!
//! The daemon [`Dedup::note`]s every kernel-sourced event after classification,
//! [`Dedup::hold`]s every completeness event (stamped with the time it was read), and
//! [`Dedup::release`]s held events once they are [`HOLD`] old, except those a kernel event
//! explains. fanotify queues its event during the operation; the tracepoint programs stamp
//! their record at the syscall's exit and user space reads it up to a poll interval later:
//! the hold lets that record arrive first.
//!
//! **When a kernel event explains a held one.** It says the same thing about the same path
//! (content written, attributes changed, created, removed, renamed from and to the same
//! names), and:
//!
//! - it was noted after the held event was read: the job the kernel event makes looks at the
//!   path after the change the held event is about, so nothing of that change is lost when
//!   the held event goes (for a rename or a removal, the kernel event is about the same
//!   names);
//! - the operation it reports ended at most [`BEFORE`] before the held event was read: an
//!   older operation whose record was simply read late is not the same change (its actor
//!   would be reported for it).
//!
//! A held event read after the kernel record of the same operation was noted is therefore
//! reported too: the daemon reads the completeness layer before it notes a batch of sensor
//! records (`Completeness::read_now`), which keeps that rare. What slips through is
//! harmless for content and attributes (the change worker compares with the baseline and
//! reports nothing when nothing differs) and filtered for removals and renames (the worker
//! reports those from the completeness layer only while the baseline still has the old
//! path and it is really gone).
//!
//! **Cost and memory.** A note is one keyed hash of the path and one map insert, and nothing
//! at all while no completeness event is held (a note made then cannot explain anything
//! read later). Notes older than the oldest held event are pruned; at [`MAX_NOTES`] the map
//! is cleared and at [`MAX_HELD`] the oldest held events are released unchecked: either way
//! a change may be reported twice, never not at all.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::time::Duration;

use crate::sensor::{Event, EventKind};

/// How long a completeness event is held for a kernel record to explain it.
pub const HOLD: Duration = Duration::from_millis(100);
/// How long before a held event was read the operation of an explaining kernel record may
/// have ended.
pub const BEFORE: Duration = Duration::from_millis(50);
/// Notes kept at most (one per path and kind of change).
pub const MAX_NOTES: usize = 65_536;
/// Completeness events held at most.
pub const MAX_HELD: usize = 65_536;

/// What an event says happened to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fact {
    Content,
    Attributes,
    Created,
    Removed,
    RenamedFrom,
    RenamedTo,
}

/// The facts an event states, each about its first (false) or second (true) path.
fn facts(kind: EventKind) -> &'static [(Fact, bool)] {
    use EventKind::*;
    match kind {
        Create | Mkdir | Symlink => &[(Fact::Created, false)],
        Link => &[(Fact::Created, true)],
        OpenWrite | Modified | Truncate | MmapSharedWrite | Written => &[(Fact::Content, false)],
        Chmod | Chown | SetXattr | RemoveXattr | AttributesChanged => &[(Fact::Attributes, false)],
        Unlink | Rmdir => &[(Fact::Removed, false)],
        Rename => &[(Fact::RenamedFrom, false), (Fact::RenamedTo, true)],
        Exec => &[],
    }
}

/// When a kernel event stating a fact about a path was noted, and when its operation ended.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    ktime_ns: u64,
    noted_ns: u64,
}

/// The map's keys are already keyed hashes: hashed again, they would only cost.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Holds completeness events and drops those the kernel's records explain.
pub struct Dedup {
    /// A random key per process: paths are chosen by whoever changes files, and a path made
    /// to collide with a watched one must not hide its changes.
    keys: RandomState,
    notes: HashMap<u64, Stamp, BuildHasherDefault<PassThrough>>,
    /// Held events in the order they were read, with that time.
    held: VecDeque<(u64, Event)>,
    /// Pushed out of a full hold: released at the next [`Dedup::release`] unchecked.
    forced: Vec<Event>,
    /// The notes' size that triggers the next pruning.
    prune_at: usize,
    hold_ns: u64,
    before_ns: u64,
    /// Held events dropped as explained, and released as not explained.
    pub suppressed: u64,
    pub released: u64,
    /// Times the notes were cleared at [`MAX_NOTES`] or held events pushed out at
    /// [`MAX_HELD`] (changes then possibly reported twice).
    pub overflows: u64,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new()
    }
}

impl Dedup {
    pub fn new() -> Dedup {
        Dedup::with_window(HOLD, BEFORE)
    }

    /// A deduplication holding events for `hold` and taking kernel records whose operation
    /// ended up to `before` before a held event was read (instead of [`HOLD`] and [`BEFORE`]:
    /// for a machine where everything is that much slower, such as an emulated one).
    pub fn with_window(hold: Duration, before: Duration) -> Dedup {
        Dedup {
            keys: RandomState::new(),
            notes: HashMap::default(),
            held: VecDeque::new(),
            forced: Vec::new(),
            prune_at: 1024,
            hold_ns: hold.as_nanos() as u64,
            before_ns: before.as_nanos() as u64,
            suppressed: 0,
            released: 0,
            overflows: 0,
        }
    }

    fn key(&self, fact: Fact, path: &[u8]) -> u64 {
        self.keys.hash_one((fact, path))
    }

    /// How long events are held.
    pub fn hold_duration(&self) -> Duration {
        Duration::from_nanos(self.hold_ns)
    }

    /// Completeness events waiting.
    pub fn held(&self) -> usize {
        self.held.len() + self.forced.len()
    }

    /// When the oldest held event is due (CLOCK_MONOTONIC ns), if any.
    pub fn next_release_ns(&self) -> Option<u64> {
        self.held.front().map(|(read, _)| read + self.hold_ns)
    }

    /// A kernel-sourced event, after classification. `now_ns`: CLOCK_MONOTONIC now, read
    /// after the completeness events read so far were held.
    pub fn note(&mut self, event: &Event, now_ns: u64) {
        if self.held.is_empty() {
            return;
        }
        for &(fact, second) in facts(event.kind) {
            let path = if second { &event.path2 } else { &event.path };
            if self.notes.len() >= MAX_NOTES {
                self.prune();
                if self.notes.len() >= MAX_NOTES {
                    self.notes.clear();
                    self.overflows += 1;
                }
            }
            let key = self.key(fact, path);
            let stamp = self.notes.entry(key).or_insert(Stamp {
                ktime_ns: 0,
                noted_ns: 0,
            });
            stamp.ktime_ns = stamp.ktime_ns.max(event.ktime_ns);
            stamp.noted_ns = stamp.noted_ns.max(now_ns);
        }
    }

    /// A completeness event, read at `event.ktime_ns`.
    pub fn hold(&mut self, event: Event) {
        if self.held.len() >= MAX_HELD {
            if let Some((_, oldest)) = self.held.pop_front() {
                self.forced.push(oldest);
            }
            self.overflows += 1;
        }
        self.held.push_back((event.ktime_ns, event));
    }

    /// Appends to `out` the held events older than [`HOLD`] at `now_ns` that no kernel event
    /// explains.
    pub fn release(&mut self, now_ns: u64, out: &mut Vec<Event>) {
        self.released += self.forced.len() as u64;
        out.append(&mut self.forced);
        while let Some((read_ns, _)) = self.held.front() {
            if read_ns.saturating_add(self.hold_ns) > now_ns {
                break;
            }
            let Some((read_ns, event)) = self.held.pop_front() else {
                break;
            };
            if self.explained(&event, read_ns) {
                self.suppressed += 1;
            } else {
                self.released += 1;
                out.push(event);
            }
        }
        if self.held.is_empty() {
            self.notes.clear();
        } else if self.notes.len() >= self.prune_at {
            self.prune();
        }
    }

    fn explained(&self, event: &Event, read_ns: u64) -> bool {
        let facts = facts(event.kind);
        !facts.is_empty()
            && facts.iter().all(|&(fact, second)| {
                let path = if second { &event.path2 } else { &event.path };
                self.notes.get(&self.key(fact, path)).is_some_and(|s| {
                    s.noted_ns >= read_ns && s.ktime_ns.saturating_add(self.before_ns) >= read_ns
                })
            })
    }

    /// Forgets the notes made before the oldest held event was read: they explain nothing.
    fn prune(&mut self) {
        match self.held.front() {
            Some(&(oldest, _)) => self.notes.retain(|_, s| s.noted_ns >= oldest),
            None => self.notes.clear(),
        }
        self.prune_at = (self.notes.len() * 2).max(1024);
    }
}

#[cfg(test)]
mod tests {
    use fim_common::{Actor, Args, Backend, Target};

    use super::*;
    use crate::sensor::Source;

    const MS: u64 = 1_000_000;

    fn event(source: Source, kind: EventKind, path: &str, path2: &str, ktime_ns: u64) -> Event {
        Event {
            kind,
            backend: Backend::Tracepoint,
            source,
            flags: 0,
            rule_id: 1,
            ktime_ns,
            actor: Actor::default(),
            target: Target::default(),
            args: Args::default(),
            path: path.as_bytes().to_vec(),
            path2: path2.as_bytes().to_vec(),
            used_path: None,
        }
    }

    fn layer(kind: EventKind, path: &str, read_ms: u64) -> Event {
        event(Source::Fanotify, kind, path, "", read_ms * MS)
    }

    fn kernel(kind: EventKind, path: &str, ktime_ms: u64) -> Event {
        event(Source::Kernel, kind, path, "", ktime_ms * MS)
    }

    fn released(d: &mut Dedup, now_ms: u64) -> Vec<(EventKind, Vec<u8>)> {
        let mut out = Vec::new();
        d.release(now_ms * MS, &mut out);
        out.into_iter().map(|e| (e.kind, e.path)).collect()
    }

    #[test]
    fn a_change_seen_by_both_layers_is_reported_once() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Written, "/etc/a", 1000));
        // The close's record: stamped at the syscall's exit, read after the fanotify event.
        d.note(&kernel(EventKind::Modified, "/etc/a", 1001), 1008 * MS);
        assert!(
            released(&mut d, 1099).is_empty(),
            "released before the hold"
        );
        assert!(released(&mut d, 1100).is_empty());
        assert_eq!((d.suppressed, d.released), (1, 0));
    }

    #[test]
    fn what_only_the_completeness_layer_saw_is_released_after_the_hold() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Create, "/etc/a", 1000));
        d.hold(layer(EventKind::Written, "/etc/a", 1001));
        assert_eq!(d.next_release_ns(), Some(1100 * MS));
        assert!(released(&mut d, 1099).is_empty());
        assert_eq!(
            released(&mut d, 1100),
            [(EventKind::Create, b"/etc/a".to_vec())]
        );
        assert_eq!(
            released(&mut d, 1101),
            [(EventKind::Written, b"/etc/a".to_vec())]
        );
        assert_eq!(d.held(), 0);
    }

    #[test]
    fn a_kernel_record_noted_before_the_read_explains_nothing() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Written, "/etc/other", 990));
        // An earlier write's close, noted before the io_uring write was read: the change
        // worker may have hashed the file before that write.
        d.note(&kernel(EventKind::Modified, "/etc/a", 995), 996 * MS);
        d.hold(layer(EventKind::Written, "/etc/a", 1000));
        let out = released(&mut d, 1100);
        assert!(
            out.contains(&(EventKind::Written, b"/etc/a".to_vec())),
            "{out:?}"
        );
    }

    #[test]
    fn an_old_operation_read_late_explains_nothing() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Written, "/etc/a", 1000));
        // Noted after the read, but the operation ended 60 ms before it.
        d.note(&kernel(EventKind::Modified, "/etc/a", 940), 1010 * MS);
        assert_eq!(released(&mut d, 1100).len(), 1);
        // Within BEFORE (a daemon slow to read fanotify) it does.
        d.hold(layer(EventKind::Written, "/etc/a", 2000));
        d.note(&kernel(EventKind::Modified, "/etc/a", 1960), 2010 * MS);
        assert!(released(&mut d, 2100).is_empty());
    }

    #[test]
    fn the_kernel_record_must_state_the_same_change() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Written, "/etc/a", 1000));
        d.hold(layer(EventKind::Create, "/etc/b", 1000));
        d.hold(layer(EventKind::Unlink, "/etc/c", 1000));
        d.hold(layer(EventKind::AttributesChanged, "/etc/d", 1000));
        d.note(&kernel(EventKind::Chmod, "/etc/a", 1001), 1005 * MS);
        d.note(&kernel(EventKind::Unlink, "/etc/b", 1001), 1005 * MS);
        d.note(&kernel(EventKind::Create, "/etc/c", 1001), 1005 * MS);
        d.note(&kernel(EventKind::Modified, "/etc/d", 1001), 1005 * MS);
        assert_eq!(released(&mut d, 1100).len(), 4);
        // The same statements explain.
        d.hold(layer(EventKind::Rmdir, "/etc/c", 2000));
        d.hold(layer(EventKind::Mkdir, "/etc/b", 2000));
        d.hold(layer(EventKind::AttributesChanged, "/etc/a", 2000));
        d.note(&kernel(EventKind::Rmdir, "/etc/c", 2001), 2005 * MS);
        d.note(&kernel(EventKind::Mkdir, "/etc/b", 2001), 2005 * MS);
        d.note(&kernel(EventKind::SetXattr, "/etc/a", 2001), 2005 * MS);
        assert!(released(&mut d, 2100).is_empty());
    }

    #[test]
    fn a_rename_is_explained_only_by_a_rename_of_both_names() {
        let mut d = Dedup::new();
        let rename =
            |source, from: &str, to: &str, ms| event(source, EventKind::Rename, from, to, ms * MS);
        d.hold(rename(Source::Fanotify, "/w/a", "/w/b", 1000));
        // The same path renamed on at once through io_uring, and removed.
        d.hold(rename(Source::Fanotify, "/w/b", "/w/c", 1001));
        d.hold(layer(EventKind::Unlink, "/w/b", 1001));
        d.note(&rename(Source::Kernel, "/w/a", "/w/b", 1001), 1005 * MS);
        let out = released(&mut d, 1101);
        assert_eq!(
            out,
            [
                (EventKind::Rename, b"/w/b".to_vec()),
                (EventKind::Unlink, b"/w/b".to_vec())
            ]
        );
        assert_eq!(d.suppressed, 1);
        // A link's new name is a creation.
        d.hold(layer(EventKind::Create, "/w/new", 2000));
        d.note(
            &event(
                Source::Kernel,
                EventKind::Link,
                "/w/old",
                "/w/new",
                2001 * MS,
            ),
            2005 * MS,
        );
        assert!(released(&mut d, 2100).is_empty());
    }

    #[test]
    fn notes_cost_nothing_while_nothing_is_held_and_go_once_useless() {
        let mut d = Dedup::new();
        for i in 0..1000 {
            d.note(
                &kernel(EventKind::Modified, &format!("/w/{i}"), 10),
                11 * MS,
            );
        }
        assert!(d.notes.is_empty());
        d.hold(layer(EventKind::Written, "/w/x", 20));
        d.note(&kernel(EventKind::Modified, "/w/y", 21), 22 * MS);
        assert_eq!(d.notes.len(), 1);
        assert_eq!(released(&mut d, 120).len(), 1);
        assert!(d.notes.is_empty(), "no held event left to explain");
    }

    #[test]
    fn a_storm_stays_bounded_and_reports_twice_rather_than_never() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Written, "/w/target", 1000));
        d.note(&kernel(EventKind::Modified, "/w/target", 1001), 1002 * MS);
        // A storm of other kernel records after it: the map is cleared at the cap, and with it
        // the note that explained the held event.
        for i in 0..MAX_NOTES as u64 + 10 {
            d.note(
                &kernel(EventKind::Modified, &format!("/w/{i}"), 1003),
                1003 * MS,
            );
        }
        assert!(d.notes.len() <= MAX_NOTES);
        assert_eq!(d.overflows, 1);
        assert_eq!(
            released(&mut d, 1100),
            [(EventKind::Written, b"/w/target".to_vec())]
        );
        // Held events beyond the cap are released unchecked, none is lost.
        for i in 0..MAX_HELD as u64 + 3 {
            d.hold(layer(EventKind::Written, "/w/h", 2000 + i / 1000));
        }
        assert_eq!(d.held(), MAX_HELD + 3);
        let mut out = Vec::new();
        d.release(2000 * MS, &mut out);
        assert_eq!(out.len(), 3, "the three pushed out, at once");
        d.release(3000 * MS, &mut out);
        assert_eq!(out.len(), MAX_HELD + 3);
    }

    #[test]
    fn notes_older_than_every_held_event_are_pruned() {
        let mut d = Dedup::new();
        d.hold(layer(EventKind::Written, "/w/first", 1000));
        for i in 0..2000 {
            d.note(
                &kernel(EventKind::Modified, &format!("/w/{i}"), 1001),
                1001 * MS,
            );
        }
        d.hold(layer(EventKind::Written, "/w/second", 1050));
        d.note(&kernel(EventKind::Modified, "/w/late", 1051), 1052 * MS);
        // The first is released; only notes from its read on could explain the second.
        let mut out = Vec::new();
        d.release(1100 * MS, &mut out);
        assert_eq!(
            d.notes.len(),
            1,
            "only the note made after the second was read"
        );
    }
}
