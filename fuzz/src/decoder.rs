//! The `decoder` target: one ring-buffer item, as the kernel would push it, through the
//! decoder and then through the user-space code that consumes a decoded record without a
//! kernel (classification, attribution from the record, change assembly, undecided-path
//! normalisation, command lines of exec records).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use fim::config::{Authorized, default_rules};
use fim::pipeline::{Assembler, Classifier, JobKind, KernelOnly, Verdict, kernel_actor};
use fim::sensor::{Event, undecided};
use fim::store::activity;
use fim_common::record::{COMM_LEN, PATH_CAP};
use fim_common::{Backend, EventKind, RecordHeader, flags};

use crate::record::header_bytes;

/// A realistic wall-clock-minus-monotonic offset (mid 2026, in ns), as the daemon computes it.
const CLOCK_OFFSET_NS: i64 = 1_780_000_000_000_000_000;

/// The built-in rules, compiled once (their globs are regexes: far slower to build than to use).
static RULES: LazyLock<Arc<fim::config::RuleSet>> = LazyLock::new(|| Arc::new(default_rules()));

/// Checks one item. Panics (a fuzzer crash) when an invariant does not hold.
pub fn check(item: &[u8]) {
    let parsed = RecordHeader::parse(item);
    let decoded = Event::decode(item);

    let Some((header, path1, path2)) = parsed else {
        assert!(
            decoded.is_none(),
            "decoded an item the header parser refused"
        );
        refusal_is_justified(item);
        return;
    };
    let (len1, len2) = (header.path1_len as usize, header.path2_len as usize);
    assert!(
        len1 <= PATH_CAP && len2 <= PATH_CAP,
        "a path beyond PATH_CAP"
    );
    assert_eq!(path1.len(), len1);
    assert_eq!(path2.len(), len2);
    let end = RecordHeader::SIZE + len1 + len2;
    assert!(end <= item.len(), "the strings run past the item");
    assert_eq!(path1, &item[RecordHeader::SIZE..RecordHeader::SIZE + len1]);
    assert_eq!(path2, &item[RecordHeader::SIZE + len1..end]);
    // Field-by-field re-encoding gives back the header bytes: nothing misplaced or dropped.
    assert_eq!(header_bytes(&header), &item[..RecordHeader::SIZE]);

    let known =
        EventKind::from_raw(header.kind).is_some() && Backend::from_raw(header.backend).is_some();
    assert_eq!(
        decoded.is_some(),
        known,
        "decode must refuse exactly the unknown kinds/backends"
    );
    let Some(event) = decoded else {
        return;
    };
    assert_eq!(event.kind as u16, header.kind);
    assert!(EventKind::ALL.contains(&event.kind));
    assert_eq!(event.backend as u8, header.backend);
    assert!(Backend::ALL.contains(&event.backend));
    assert_eq!(event.flags, header.flags);
    assert_eq!(event.rule_id, header.rule_id);
    assert_eq!(event.ktime_ns, header.ktime_ns);
    assert_eq!(event.path, path1);
    assert_eq!(event.path2, path2);
    // Bytes after the two strings are not part of the record.
    let trimmed = Event::decode(&item[..end]).expect("the record without its tail decodes");
    assert_eq!(format!("{trimmed:?}"), format!("{event:?}"));

    accessors(&event);
    consumers(&event);
    undecided_paths(&event);
}

/// `parse` refused: check that it had a reason.
fn refusal_is_justified(item: &[u8]) {
    if item.len() < RecordHeader::SIZE {
        return;
    }
    let at = |offset: usize| u16::from_ne_bytes([item[offset], item[offset + 1]]) as usize;
    let len1 = at(std::mem::offset_of!(RecordHeader, path1_len));
    let len2 = at(std::mem::offset_of!(RecordHeader, path2_len));
    assert!(
        len1 > PATH_CAP || len2 > PATH_CAP || item.len() - RecordHeader::SIZE < len1 + len2,
        "a well-formed item of {} bytes was refused (lengths {len1}, {len2})",
        item.len()
    );
}

fn accessors(event: &Event) {
    assert_eq!(
        event.path_buf().as_os_str().as_bytes(),
        event.path.as_slice()
    );
    assert_eq!(
        event.path2_buf().as_os_str().as_bytes(),
        event.path2.as_slice()
    );
    assert_eq!(
        event.truncated(),
        event.flags & (flags::PATH1_TRUNCATED | flags::PATH2_TRUNCATED) != 0
    );
    let comm = event.comm();
    let raw = &event.actor.comm;
    let len = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    assert!(!comm.contains('\0'), "comm keeps a NUL");
    match std::str::from_utf8(&raw[..len]) {
        Ok(text) => assert_eq!(comm, text),
        Err(_) => assert!(comm.contains('\u{fffd}')),
    }
}

/// What the daemon does with a decoded record before anything touches the filesystem.
fn consumers(event: &Event) {
    let actor = kernel_actor(event);
    assert_eq!(actor.pid, Some(event.actor.tgid));
    assert_eq!(actor.ppid, Some(event.actor.ppid));
    assert_eq!(actor.uid, Some(event.actor.uid));
    assert_eq!(actor.login_uid.is_none(), event.actor.loginuid == u32::MAX);
    assert_eq!(actor.comm, Some(event.comm()));

    if event.kind == EventKind::Exec {
        let line = fim::enrich::command_line(&event.path2);
        assert!(!line.contains(&0), "a command line keeps a NUL");
        let any_arg = event.path2.split(|&b| b == 0).any(|a| !a.is_empty());
        assert_eq!(line.is_empty(), !any_arg);
    }

    let rules = Arc::clone(&RULES);
    let authorized = Authorized {
        exes: vec![PathBuf::from("/usr/bin/puppet")],
        package_managers: true,
    };
    let classifier = Classifier::new(Arc::clone(&rules), authorized, Vec::new());
    let verdict = classifier.classify(event.clone(), &mut KernelOnly);
    let observation = match verdict {
        Verdict::Exec => {
            assert_eq!(event.kind, EventKind::Exec);
            return;
        }
        Verdict::NoRule => {
            assert!(rules.match_bytes(&event.path).is_none());
            return;
        }
        // No excluded executables were configured, and KernelOnly knows no executable.
        Verdict::Excluded => panic!("excluded without an excluded executable"),
        Verdict::Report(observation) => observation,
        // Only `classify_with` resolves other names into several reports or none found.
        Verdict::Reports(_) | Verdict::Unresolved(_) => {
            panic!("classify without aliases gave several reports or an unresolved name")
        }
    };
    assert!(observation.rule.is_some() || observation.rule2.is_some());
    assert!(
        !observation.authorized,
        "KernelOnly knows no executable to authorize"
    );

    let mut assembler = Assembler::new(CLOCK_OFFSET_NS);
    let mut jobs = Vec::new();
    assembler.observe(*observation, &mut jobs);
    // Long after: settled sessions and long writers are issued; then whatever is left.
    assembler.tick(event.ktime_ns.saturating_add(60_000_000_000), &mut jobs);
    assembler.flush_all(&mut jobs);
    assert_eq!(assembler.open_sessions(), 0);
    for job in &jobs {
        assert!(
            [
                activity::CREATE,
                activity::UPDATE,
                activity::DELETE,
                activity::RENAME,
                activity::SET_ATTRIBUTES,
                activity::SET_SECURITY,
            ]
            .contains(&job.activity),
            "job activity {}",
            job.activity
        );
        assert!(job.path == event.path || job.path == event.path2);
        assert_eq!(job.backend, event.backend.name());
        assert_eq!(job.truncated_path, event.truncated());
        if job.what == JobKind::Rename {
            assert_eq!(job.new_path.as_deref(), Some(event.path2.as_slice()));
        }
    }
}

/// The roots user space decides undecided records with (as `undecided::spellings` gives them).
fn roots() -> Vec<(PathBuf, u32, bool)> {
    vec![
        (PathBuf::from("/etc"), 1, true),
        (PathBuf::from("/etc/ssh"), 2, true),
        (PathBuf::from("/root/.ssh"), 3, false),
        (PathBuf::from("/srv/a\nb"), 4, true),
    ]
}

/// `undecided::decide`: never panics; decided paths come out canonical; a kept undecided
/// record is one under a root, a dropped one is under none.
fn undecided_paths(event: &Event) {
    let roots = roots();
    let mut decided = event.clone();
    let keep = undecided::decide(&mut decided, &roots);
    if event.truncated() || event.flags & flags::PATH_FS_RELATIVE != 0 {
        assert!(
            keep,
            "truncated or fs-relative records are kept, never guessed away"
        );
        assert_eq!(decided.path, event.path);
        return;
    }
    assert!(
        undecided::is_canonical(&decided.path),
        "not canonical after decide: {:?}",
        OsStr::from_bytes(&decided.path)
    );
    if undecided::is_canonical(&event.path) {
        assert_eq!(decided.path, event.path, "a canonical path was rewritten");
    }
    if event.flags & flags::FILTER_UNDECIDED == 0 {
        assert!(keep, "a decided record was dropped");
        assert_eq!(decided.rule_id, event.rule_id);
        return;
    }
    let two_paths = event.flags & flags::PATH2_IS_STRING == 0 && !event.path2.is_empty();
    let rule1 = undecided::rule_for(&decided.path, &roots);
    let rule2 = two_paths
        .then(|| undecided::rule_for(&decided.path2, &roots))
        .flatten();
    if keep {
        assert_eq!(decided.flags & flags::FILTER_UNDECIDED, 0);
        assert_eq!(Some(decided.rule_id), rule1.or(rule2));
        let root = roots
            .iter()
            .find(|(_, rule, _)| *rule == decided.rule_id)
            .map(|(path, _, _)| path.as_path())
            .expect("the rule is a root's");
        let under = |p: &[u8]| {
            let p = Path::new(OsStr::from_bytes(p));
            p.starts_with(root) || p.parent() == Some(root)
        };
        assert!(under(&decided.path) || (two_paths && under(&decided.path2)));
    } else {
        assert!(
            rule1.is_none() && rule2.is_none(),
            "dropped a record under a root"
        );
    }
}
