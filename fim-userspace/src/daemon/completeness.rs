//! The completeness layer (fanotify, `sensor::fanotify`) in the daemon: started beside the
//! tracepoint backend, its events held for the kernel records that may explain them
//! (`pipeline::dedup`), the rest released into the event loop like the sensor's records.
//!
//! The lsm and fentry backends see every operation on a watched inode themselves; the layer
//! runs with the tracepoint backend only (docs/completeness.md). Where it cannot start, or
//! fails later, the daemon says so (a log line and a health row) and goes on: what only the
//! layer would have seen is then found by rescans.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;

use crate::pipeline::Dedup;
use crate::sensor::fanotify::{Completeness, WatchedLink, monotonic_ns};
use crate::sensor::{Backend, Event, EventKind, Source, WatchRoot};

use super::path_from_bytes;
use crate::baseline::LinkedFile;

/// The health row's kind when the layer is not running.
pub(super) const UNAVAILABLE: &str = "completeness_unavailable";
/// The backend label of the layer's own counters (lost and malformed events).
pub(super) const LABEL: &str = "fanotify";

/// The layer, or nothing (another backend, or it could not start), and its deduplication.
pub(super) struct Layer {
    inner: Option<Completeness>,
    dedup: Dedup,
    /// Events read by `recv`, before they are held.
    read: Vec<Event>,
}

/// Why the layer is not running, for the health row, when it should be.
pub(super) struct Unavailable(pub(super) String);

impl Layer {
    /// Nothing to complete.
    pub(super) fn none() -> Layer {
        Layer {
            inner: None,
            dedup: Dedup::new(),
            read: Vec::new(),
        }
    }

    /// The layer for `backend` on `roots`: started for the tracepoint backend only, then
    /// given its roots by `set_roots` (as a live rules change gives them). An error starting
    /// it is returned beside an empty layer, for the caller to record.
    pub(super) async fn start(
        backend: Backend,
        roots: &[WatchRoot],
    ) -> (Layer, Option<Unavailable>) {
        if backend != Backend::Tracepoint {
            return (Layer::none(), None);
        }
        let started = Completeness::start(backend, &[]).await.and_then(|layer| {
            let mut layer = Layer {
                inner: Some(layer),
                ..Layer::none()
            };
            layer.set_roots(roots)?;
            Ok(layer)
        });
        match started {
            Ok(layer) => (layer, None),
            Err(e) => {
                let why = format!(
                    "{e:#}; changes the tracepoint backend cannot see (io_uring, other names \
                     and mounts of watched files) are found by rescans only"
                );
                log::warn!("{why}");
                (Layer::none(), Some(Unavailable(why)))
            }
        }
    }

    /// Marks `roots` in place of the roots marked before (at the start, and at each live rules
    /// change): new marks are placed before the old ones go, so a directory kept is never
    /// unmarked in between. What could not be marked is logged; an error is the layer failing.
    pub(super) fn set_roots(&mut self, roots: &[WatchRoot]) -> Result<()> {
        let Some(layer) = self.inner.as_mut() else {
            return Ok(());
        };
        for problem in layer.set_roots(roots)? {
            log::warn!("not watched by the completeness layer: {problem}");
        }
        log::info!(
            "completeness layer (fanotify) running on {} directories",
            layer.watched_directories()
        );
        Ok(())
    }

    /// Waits for the layer's next events and holds them; never completes without a layer.
    /// Cancel-safe, like `Completeness::recv`.
    pub(super) async fn recv(&mut self) -> Result<()> {
        let Some(layer) = self.inner.as_mut() else {
            return std::future::pending().await;
        };
        layer.recv(&mut self.read).await?;
        self.hold_read();
        Ok(())
    }

    /// Holds whatever the layer has queued now: called before a batch of sensor records is
    /// noted, so a record cannot be noted before the event it explains is held.
    pub(super) fn read_now(&mut self) -> Result<()> {
        let Some(layer) = self.inner.as_mut() else {
            return Ok(());
        };
        layer.read_now(&mut self.read)?;
        self.hold_read();
        Ok(())
    }

    fn hold_read(&mut self) {
        for event in self.read.drain(..) {
            self.dedup.hold(event);
        }
    }

    /// A kernel record after classification, at its watched name.
    pub(super) fn note(&mut self, event: &Event) {
        if self.inner.is_some() && event.source == Source::Kernel {
            self.dedup.note(event, monotonic_ns());
        }
    }

    /// The held events no kernel record explained, due now, into `out`.
    pub(super) fn release(&mut self, out: &mut Vec<Event>) {
        self.dedup.release(monotonic_ns(), out);
    }

    /// The daemon stops: what the layer has queued is read, then everything held released.
    pub(super) fn finish(&mut self, out: &mut Vec<Event>) {
        if let Err(e) = self.read_now() {
            log::warn!("reading the completeness layer at shutdown: {e:#}");
        }
        self.stop(out);
    }

    /// The layer stopped working: dropped, and everything it held released (a change may be
    /// reported twice, never not at all).
    pub(super) fn stop(&mut self, out: &mut Vec<Event>) {
        self.inner = None;
        self.dedup.release(u64::MAX, out);
    }

    /// Events the kernel dropped from the layer's queue, and those it could not decode.
    pub(super) fn trouble(&self) -> Option<(u64, u64)> {
        self.inner
            .as_ref()
            .map(|l| (l.lost_events(), l.malformed_events()))
    }

    /// A sensor record that makes a directory appear under a watched tree: the layer marks
    /// it (and lists what is already in it).
    pub(super) fn new_name(&mut self, event: &Event) {
        let Some(layer) = self.inner.as_mut() else {
            return;
        };
        if event.source != Source::Kernel {
            return;
        }
        let path = match event.kind {
            EventKind::Mkdir => &event.path,
            EventKind::Rename => &event.path2,
            _ => return,
        };
        let path = Path::new(std::ffi::OsStr::from_bytes(path));
        if event.kind == EventKind::Rename && !path.is_dir() {
            return;
        }
        layer.watch_new_directory(path);
    }

    /// Watched names of multi-link files a rescan saw: all of them (`everything`) or more.
    pub(super) fn linked(
        &mut self,
        files: &[LinkedFile],
        rule_of: impl Fn(&[u8]) -> u32,
        everything: bool,
    ) {
        let Some(layer) = self.inner.as_mut() else {
            return;
        };
        let links: Vec<WatchedLink> = files
            .iter()
            .map(|f| WatchedLink {
                rule_id: rule_of(&f.path),
                path: path_from_bytes(&f.path),
            })
            .collect();
        let problems = if everything {
            layer.set_links(&links)
        } else {
            layer.watch_links(&links)
        };
        report_problems(&problems);
    }

    /// A watched name of a file that just got another link.
    pub(super) fn link(&mut self, path: &Path, rule_id: u32) {
        if let Some(layer) = self.inner.as_mut() {
            let problems = layer.watch_links(&[WatchedLink {
                path: path.to_path_buf(),
                rule_id,
            }]);
            report_problems(&problems);
        }
    }
}

fn report_problems(problems: &[String]) {
    if let Some(first) = problems.first() {
        log::warn!(
            "the completeness layer could not watch {} linked file(s) (first: {first}): \
             changes through their other names are found by rescans",
            problems.len()
        );
    }
}
