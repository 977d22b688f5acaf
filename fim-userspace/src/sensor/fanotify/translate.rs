//! From one fanotify event to zero or more events at watched names, keeping the marks right
//! as watched directories are created, renamed and removed.

use std::{cell::OnceCell, os::fd::OwnedFd, os::unix::ffi::OsStrExt};

use fim_common::{Actor, Args, EventKind, Target, flags};

use super::decode::{Handle, RawEvent};
use super::marks::{DirMark, Name, OBJECT_MASK, Origin, join, os_path};
use super::{Completeness, handle, mark_problem};
use crate::sensor::{Event, Source};

/// A rename as the marks see it.
struct Move<'a> {
    /// The renamed object (`FAN_REPORT_TARGET_FID`).
    object: Option<&'a Handle>,
    old_path: Option<Vec<u8>>,
    new_path: Option<Vec<u8>>,
    /// The new name's watched path and rule, when it is watched.
    new: Option<(Vec<u8>, u32)>,
    /// The new side, when the kernel reported it (its directory is marked).
    new_dir: Option<&'a Handle>,
    new_name: Option<&'a [u8]>,
}

/// What every event made from one fanotify event shares.
pub(super) struct Seen<'a> {
    pid: i32,
    pidfd: Option<&'a OwnedFd>,
    /// Read from /proc when the first event is made (most fanotify events concern nothing
    /// watched, or only the marks).
    actor: OnceCell<Actor>,
    ktime_ns: u64,
    ondir: bool,
    /// fim's own activity: the marks follow it, nothing is reported.
    quiet: bool,
}

impl Seen<'_> {
    /// Made by no known process (entries listed in a newly marked directory).
    pub fn unattributed(ktime_ns: u64, ondir: bool, quiet: bool) -> Seen<'static> {
        Seen {
            pid: 0,
            pidfd: None,
            actor: OnceCell::new(),
            ktime_ns,
            ondir,
            quiet,
        }
    }
}

impl Completeness {
    /// One fanotify event into zero or more events at watched names (and the marks kept
    /// right: directories created, renamed in or out, removed).
    pub(super) fn translate(&mut self, raw: RawEvent, ktime_ns: u64, out: &mut Vec<Event>) {
        let mask = raw.mask;
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            self.lost += 1;
            log::warn!("the fanotify queue overflowed: changes may have gone unreported");
            return;
        }
        let seen = Seen {
            pid: raw.pid,
            pidfd: raw.pidfd.as_ref(),
            actor: OnceCell::new(),
            ktime_ns,
            ondir: mask & libc::FAN_ONDIR != 0,
            quiet: raw.pid == self.me,
        };
        if mask & libc::FAN_RENAME != 0 {
            self.renamed(&raw, &seen, out);
        }
        if mask & libc::FAN_CREATE != 0 {
            self.created(&raw, &seen, out);
        }
        if mask & (libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB) != 0 {
            self.changed(&raw, &seen, out);
        }
        if mask & libc::FAN_DELETE != 0 {
            self.deleted(&raw, &seen, out);
        }
        if mask & (libc::FAN_DELETE_SELF | libc::FAN_MOVE_SELF) != 0 {
            self.root_gone(&raw, &seen, out);
        }
    }

    fn event(&mut self, seen: &Seen, kind: EventKind, path: Vec<u8>, rule_id: u32) -> Event {
        // fim's own activity is not reported: /proc is not read for it.
        let actor = if seen.quiet {
            Actor::default()
        } else {
            *seen
                .actor
                .get_or_init(|| self.actors.actor(seen.pid, seen.pidfd))
        };
        let (flags, target) = if seen.ondir {
            let target = Target {
                mode: libc::S_IFDIR,
                ..Target::default()
            };
            (flags::TARGET_KNOWN, target)
        } else {
            (0, Target::default())
        };
        Event {
            kind,
            backend: self.backend,
            source: Source::Fanotify,
            flags,
            rule_id,
            ktime_ns: seen.ktime_ns,
            actor,
            target,
            args: Args::default(),
            path,
            path2: Vec::new(),
            used_path: None,
        }
    }

    fn emit(seen: &Seen, event: Event, out: &mut Vec<Event>) {
        if !seen.quiet {
            out.push(event);
        }
    }

    /// The watched path and rule of entry `name` of the marked directory `dir`.
    fn watched_entry(&self, dir: &Handle, name: &[u8]) -> Option<(Vec<u8>, u32)> {
        let mark = self.tree.dir(dir)?;
        Some((join(&mark.path, name), mark.covers(name)?))
    }

    /// The path of entry `name` of directory `dir`, marked or not.
    fn resolve(&mut self, dir: &Handle, name: &[u8]) -> Option<Vec<u8>> {
        if let Some(mark) = self.tree.dir(dir) {
            return Some(join(&mark.path, name));
        }
        self.resolve_object(dir).map(|path| join(&path, name))
    }

    /// The path of the object `handle` names now, opened by its handle: a directory, or a
    /// file whose name is still in the kernel's cache (as right after a rename).
    fn resolve_object(&mut self, handle: &Handle) -> Option<Vec<u8>> {
        let path = self
            .mount_fds
            .get(&handle.fsid)
            .and_then(|mount| handle::open_handle(mount, handle).ok())
            .and_then(|fd| handle::path_of(&fd));
        if path.is_none() {
            self.unresolved += 1;
            log::debug!("a file handle of fsid {:x} has no path here", handle.fsid);
        }
        path.map(|p| p.as_os_str().as_bytes().to_vec())
    }

    fn created(&mut self, raw: &RawEvent, seen: &Seen, out: &mut Vec<Event>) {
        let Some((dir, name)) = &raw.dir else { return };
        let Some((path, rule)) = self.watched_entry(dir, name) else {
            return;
        };
        let (recursive, file_rule) = self.tree.dir(dir).map_or((None, false), |mark| {
            (mark.recursive, mark.files.iter().any(|(n, _)| n == name))
        });
        let kind = if seen.ondir {
            EventKind::Mkdir
        } else {
            EventKind::Create
        };
        Self::emit(seen, self.event(seen, kind, path.clone(), rule), out);
        if seen.ondir {
            if let Some(recursive) = recursive {
                self.adopt(&path, recursive, seen, out);
            }
        } else if file_rule {
            // A file rule's file created anew: its inode gets the mark.
            let _ = self.watch_object(&path, rule, Origin::Rule);
        }
    }

    fn deleted(&mut self, raw: &RawEvent, seen: &Seen, out: &mut Vec<Event>) {
        let Some((dir, name)) = &raw.dir else { return };
        let Some((path, rule)) = self.watched_entry(dir, name) else {
            return;
        };
        let kind = if seen.ondir {
            EventKind::Rmdir
        } else {
            EventKind::Unlink
        };
        Self::emit(seen, self.event(seen, kind, path.clone(), rule), out);
        if seen.ondir {
            // The kernel dropped the removed directory's mark with its inode.
            if let Some(object) = &raw.object {
                self.tree.remove_dir(object);
            }
            self.tree.take_below(&path);
        } else if let Some(handle) = self.tree.forget_name(&path) {
            // The inode may live on under another name: its mark goes.
            self.unmark(&handle, &path, OBJECT_MASK);
        }
    }

    /// A rename. The kernel reports the side(s) whose directory is marked: for a rename out
    /// of the watched trees the new name is found from the object's handle, for a rename in
    /// the old name is not known any more (reported as a creation).
    fn renamed(&mut self, raw: &RawEvent, seen: &Seen, out: &mut Vec<Event>) {
        let old = raw.old.as_ref().and_then(|(d, n)| self.watched_entry(d, n));
        let new = raw.new.as_ref().and_then(|(d, n)| self.watched_entry(d, n));
        if old.is_none() && new.is_none() {
            return;
        }
        let old_path = match (&old, &raw.old) {
            (Some((p, _)), _) => Some(p.clone()),
            (None, Some((dir, name))) => self.resolve(dir, name),
            (None, None) => None,
        };
        let new_path = match (&new, &raw.new, &raw.object) {
            (Some((p, _)), _, _) => Some(p.clone()),
            (None, Some((dir, name)), _) => self.resolve(dir, name),
            (None, None, Some(object)) => self.resolve_object(object),
            (None, None, None) => None,
        };
        let (gone, appeared) = if seen.ondir {
            (EventKind::Rmdir, EventKind::Mkdir)
        } else {
            (EventKind::Unlink, EventKind::Create)
        };
        let event = match (&old, &new, &old_path, &new_path) {
            // Renamed within, out of or into the watched trees: one rename, like the sensor's.
            (Some((_, rule)), _, Some(from), Some(to))
            | (None, Some((_, rule)), Some(from), Some(to)) => {
                let mut e = self.event(seen, EventKind::Rename, from.clone(), *rule);
                e.path2 = to.clone();
                e
            }
            // The other side has no path here: what the watched tree saw.
            (Some((from, rule)), _, _, None) => self.event(seen, gone, from.clone(), *rule),
            (_, Some((to, rule)), None, _) => self.event(seen, appeared, to.clone(), *rule),
            _ => return,
        };
        Self::emit(seen, event, out);
        let moved = Move {
            object: raw.object.as_ref(),
            old_path,
            new_path,
            new,
            new_dir: raw.new.as_ref().map(|(dir, _)| dir),
            new_name: raw.new.as_ref().map(|(_, name)| name.as_slice()),
        };
        if seen.ondir {
            self.directory_moved(&moved, seen, out);
        } else {
            self.name_moved(&moved);
        }
    }

    /// Keeps the marks of a renamed directory right: moved within the recursive trees, its
    /// marks follow; moved out, they go; moved in, it is adopted.
    fn directory_moved(&mut self, moved: &Move, seen: &Seen, out: &mut Vec<Event>) {
        let recursive = moved
            .new_dir
            .and_then(|dir| self.tree.dir(dir))
            .and_then(|d| d.recursive);
        let known = moved
            .object
            .and_then(|h| self.tree.dir(h))
            .map(|d| d.path.clone())
            .or_else(|| {
                moved
                    .old_path
                    .clone()
                    .filter(|p| self.tree.dir_at(p).is_some())
            });
        match (known, &moved.new_path, recursive) {
            (Some(from), Some(to), Some(rule)) => self.tree.move_below(&from, to, Some(rule)),
            (Some(from), to, _) => {
                for (handle, mark) in self.tree.take_below(&from) {
                    let at = match to {
                        Some(to) => [to.as_slice(), &mark.path[from.len()..]].concat(),
                        None => mark.path.clone(),
                    };
                    self.unmark(&handle, &at, mark.mask());
                }
            }
            (None, Some(to), Some(rule)) => self.adopt(to, rule, seen, out),
            _ => {}
        }
    }

    /// Keeps the watched names of non-directories right after a rename.
    fn name_moved(&mut self, moved: &Move) {
        if let Some(old) = moved.old_path.as_deref()
            && let Some(handle) = self.tree.object_at(old).cloned()
        {
            let origin = self
                .tree
                .object(&handle)
                .and_then(|names| names.iter().find(|n| n.path == old))
                .map(|n| n.origin);
            let emptied = self.tree.forget_name(old);
            match (origin, &moved.new) {
                // A multi-link file's watched name moved within the watched trees.
                (Some(Origin::Link), Some((to, rule))) => {
                    let name = Name {
                        path: to.clone(),
                        rule: *rule,
                        origin: Origin::Link,
                    };
                    self.tree.add_name(handle, name);
                }
                _ => {
                    if let Some(handle) = emptied {
                        self.unmark(&handle, old, OBJECT_MASK);
                    }
                }
            }
        }
        // Renamed onto a file rule's name (an atomic save): the new inode gets the mark.
        if let (Some((to, rule)), Some(dir), Some(new_name)) =
            (&moved.new, moved.new_dir, moved.new_name)
            && self
                .tree
                .dir(dir)
                .is_some_and(|d| d.files.iter().any(|(n, _)| n == new_name))
        {
            let _ = self.watch_object(to, *rule, Origin::Rule);
        }
    }

    /// A write or attribute change: reported at every watched name the event reaches, through
    /// the directory it was made in and through the object's own mark.
    fn changed(&mut self, raw: &RawEvent, seen: &Seen, out: &mut Vec<Event>) {
        let mut targets: Vec<(Vec<u8>, u32)> = Vec::new();
        let mut used: Option<Vec<u8>> = None;
        if let Some((dir, name)) = &raw.dir
            && let Some(mark) = self.tree.dir(dir)
        {
            let path = join(&mark.path, name);
            if let Some(rule) = mark.covers(name) {
                targets.push((path.clone(), rule));
            }
            used = Some(path);
        }
        if let Some(object) = &raw.object {
            if raw.dir.is_none()
                && let Some(mark) = self.tree.dir(object)
                && let Some(rule) = mark.itself()
            {
                targets.push((mark.path.clone(), rule));
            }
            let names: Vec<Name> = self.tree.object(object).unwrap_or_default().to_vec();
            if !names.is_empty() && used.is_none() {
                used = raw
                    .dir
                    .as_ref()
                    .and_then(|(dir, name)| self.resolve(dir, name));
            }
            for name in names {
                if !targets.iter().any(|(p, _)| *p == name.path) {
                    targets.push((name.path, name.rule));
                }
            }
        }
        let mask = raw.mask;
        for (path, rule) in targets {
            let used_path = used.clone().filter(|u| *u != path);
            if mask & (libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE) != 0 {
                let mut e = self.event(seen, EventKind::Written, path.clone(), rule);
                e.used_path = used_path.clone();
                Self::emit(seen, e, out);
            }
            if mask & libc::FAN_ATTRIB != 0 {
                let mut e = self.event(seen, EventKind::AttributesChanged, path, rule);
                e.used_path = used_path;
                Self::emit(seen, e, out);
            }
        }
    }

    /// A root directory removed or moved away (its parent is not marked, so only its own
    /// mark tells): reported as gone, like the sensor does, and unwatched.
    fn root_gone(&mut self, raw: &RawEvent, seen: &Seen, out: &mut Vec<Event>) {
        let Some(object) = &raw.object else { return };
        let Some(mark) = self.tree.dir(object).cloned() else {
            return;
        };
        let parent_marked = os_path(&mark.path)
            .parent()
            .is_some_and(|p| self.tree.dir_at(p.as_os_str().as_bytes()).is_some());
        if !mark.root || parent_marked {
            return;
        }
        if let Some(rule) = mark.itself() {
            let e = self.event(seen, EventKind::Rmdir, mark.path.clone(), rule);
            Self::emit(seen, e, out);
        }
        let moved = raw.mask & libc::FAN_MOVE_SELF != 0;
        for (handle, below) in self.tree.take_below(&mark.path) {
            if moved {
                self.unmark(&handle, &below.path, below.mask());
            }
        }
    }

    /// Marks the new directory `path` under a recursive root, and every directory below it,
    /// then lists them: entries made before the mark are reported as created (by no known
    /// actor). Directories already marked are left alone.
    pub(super) fn adopt(&mut self, path: &[u8], rule: u32, seen: &Seen, out: &mut Vec<Event>) {
        let mut stack = vec![path.to_vec()];
        while let Some(dir) = stack.pop() {
            let shown = os_path(&dir).to_path_buf();
            let Ok(opened) = handle::open(&shown) else {
                continue;
            };
            if !opened.is_dir
                || self
                    .tree
                    .dir(&opened.handle)
                    .is_some_and(|m| m.path == dir && m.recursive.is_some())
            {
                continue;
            }
            let mark = DirMark {
                path: dir.clone(),
                recursive: Some(rule),
                ..DirMark::default()
            };
            if let Err(e) = self.place(&opened, mark.mask()) {
                log::warn!(
                    "not watched by the completeness layer: {}",
                    mark_problem(&shown, &e)
                );
                continue;
            }
            self.remember_filesystem(&opened.handle, &shown);
            if let Some((stale, old)) = self.tree.insert_dir(opened.handle, mark) {
                self.unmark(&stale, &old.path, old.mask());
            }
            let Ok(entries) = std::fs::read_dir(&shown) else {
                continue;
            };
            for entry in entries.flatten() {
                let child = join(&dir, entry.file_name().as_bytes());
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let seen = Seen::unattributed(seen.ktime_ns, is_dir, seen.quiet);
                let kind = if is_dir {
                    EventKind::Mkdir
                } else {
                    EventKind::Create
                };
                Self::emit(&seen, self.event(&seen, kind, child.clone(), rule), out);
                if is_dir {
                    stack.push(child);
                }
            }
        }
    }
}
