//! `fim-windows selftest`: what the live providers really send, checked on
//! a real Windows host. The Windows side (`windows/selftest.rs`) makes a
//! fixed set of changes while an ETW session like the agent's runs; this
//! module (platform-independent, unit-tested on Linux) reads the events it
//! got and answers the questions the fixtures cannot: the path RenamePath
//! carries, whether delete-on-close raises DeletePath, CreateNewFile,
//! Write for cached and for mapped writes, a key opened before the session,
//! and the event versions this build uses.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::change::{Change, FileActivity, RegistryActivity};
use crate::decode::EtwDecoder;
use crate::etw_event::{EtwEvent, Provider};
use crate::etw_layout::file_event;
use crate::nt_path::DeviceMap;

/// The changes the selftest makes (DOS paths, one key), and who makes them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pid: u32,
    /// Created with CREATE_NEW, then written through the cache.
    pub created: String,
    /// Written through a mapped view (FlushViewOfFile).
    pub mapped: String,
    pub rename_from: String,
    pub rename_to: String,
    /// Opened with FILE_FLAG_DELETE_ON_CLOSE and closed.
    pub delete_on_close: String,
    /// An existing file opened with CREATE_ALWAYS (overwrite) and closed.
    pub overwritten: String,
    /// A hard link made to `rename_to`.
    pub link: String,
    /// Renamed onto an existing file without replace: must fail.
    pub collision_from: String,
    pub collision_to: String,
    /// HKU\<sid>\Software\fim-selftest-N, opened before the session.
    pub key_path: String,
    pub value_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// fim reports the change as it happened.
    Pass,
    /// fim misses or misreports it on this build.
    Fail,
    /// An observation the decoder does not depend on.
    Note,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    /// (provider, event id, version) -> events seen.
    pub versions: BTreeMap<(Provider, u16, u8), u64>,
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The raw events, with the DOS name each FileObject/FileKey had.
struct Raw<'a> {
    events: &'a [EtwEvent],
    devices: &'a DeviceMap,
    names: HashMap<u64, String>,
}

impl<'a> Raw<'a> {
    fn new(events: &'a [EtwEvent], devices: &'a DeviceMap) -> Self {
        let mut names = HashMap::new();
        for e in events.iter().filter(|e| e.provider == Provider::KernelFile) {
            let name = e.text("FileName").map(|n| devices.to_dos(n).path);
            let object = match e.event_id {
                file_event::NAME_CREATE => e.number("FileKey"),
                file_event::CREATE | file_event::CREATE_NEW_FILE => e.number("FileObject"),
                _ => None,
            };
            if let (Some(object), Some(name)) = (object, name) {
                names.insert(object, name);
            }
        }
        Self {
            events,
            devices,
            names,
        }
    }

    fn file(&self, id: u16) -> impl Iterator<Item = &'a EtwEvent> + '_ {
        self.events
            .iter()
            .filter(move |e| e.provider == Provider::KernelFile && e.event_id == id)
    }

    fn dos(&self, e: &EtwEvent, field: &str) -> Option<String> {
        e.text(field).map(|p| self.devices.to_dos(p).path)
    }

    /// The name of the file an event is about (by FileObject, then FileKey).
    fn name_of(&self, e: &EtwEvent) -> Option<&str> {
        ["FileObject", "FileKey"]
            .iter()
            .filter_map(|f| e.number(f))
            .find_map(|o| self.names.get(&o))
            .map(String::as_str)
    }

    fn operation_end(&self, irp: u64) -> Option<u64> {
        self.file(file_event::OPERATION_END)
            .find(|e| e.number("Irp") == Some(irp))
            .and_then(|e| e.number("Status"))
    }
}

/// Decode the events as the agent would (with the handle-table seeds) and
/// answer each question.
pub fn analyze(
    plan: &Plan,
    events: &[EtwEvent],
    devices: &DeviceMap,
    key_seeds: Vec<(u64, String)>,
    current_control_set: Option<String>,
) -> Report {
    let mut report = Report::default();
    for e in events {
        *report
            .versions
            .entry((e.provider, e.event_id, e.version))
            .or_default() += 1;
    }
    let mut decoder = EtwDecoder::new(devices.clone(), 1 << 16);
    decoder.set_current_control_set(current_control_set);
    let seeded = decoder.seed_key_objects(key_seeds, |p| same(p, &plan.key_path));
    let mut changes = Vec::new();
    for e in events {
        changes.extend(decoder.decode(e));
    }
    changes.extend(decoder.flush());
    let files: Vec<_> = changes
        .iter()
        .filter_map(|c| match c {
            Change::File(f) => Some(f),
            Change::Registry(_) => None,
        })
        .collect();
    let raw = Raw::new(events, devices);
    let mut check = |name, verdict, detail: String| {
        report.checks.push(Check {
            name,
            verdict,
            detail,
        })
    };
    use Verdict::*;

    // CreateNewFile.
    let created: Vec<_> = raw
        .file(file_event::CREATE_NEW_FILE)
        .filter(|e| {
            raw.dos(e, "FileName")
                .is_some_and(|p| same(&p, &plan.created))
        })
        .collect();
    let reported = files
        .iter()
        .any(|f| f.activity == FileActivity::Create && same(&f.path, &plan.created));
    match created.first() {
        Some(e) => {
            let irp = e.number("Irp");
            let create_first = raw
                .file(file_event::CREATE)
                .position(|c| c.number("Irp") == irp)
                .zip(events.iter().position(|x| std::ptr::eq(x, *e)))
                .map(|(c, n)| if c < n { "after" } else { "before" });
            let verdict = if reported { Pass } else { Fail };
            let order = create_first
                .map_or("with no Create (12) of the same IRP".to_string(), |o| {
                    format!("{o} the Create (12) of the same IRP")
                });
            check(
                "CreateNewFile",
                verdict,
                format!("event 30 v{} for {}, {order}", e.version, plan.created),
            );
        }
        None => check(
            "CreateNewFile",
            Fail,
            format!("no event 30 for {}", plan.created),
        ),
    }

    // RenamePath: which name FilePath carries.
    let renames: Vec<_> = raw
        .file(file_event::RENAME_PATH)
        .filter(|e| e.pid == plan.pid)
        .filter_map(|e| raw.dos(e, "FilePath"))
        .filter(|p| same(p, &plan.rename_to) || same(p, &plan.rename_from))
        .collect();
    let decoded = files.iter().any(|f| {
        f.activity == FileActivity::Rename
            && same(&f.path, &plan.rename_from)
            && f.new_path
                .as_deref()
                .is_some_and(|n| same(n, &plan.rename_to))
    });
    match renames.first() {
        Some(p) if same(p, &plan.rename_to) => check(
            "RenamePath FilePath",
            if decoded { Pass } else { Fail },
            format!(
                "the destination ({p}); fim reported {} -> {}: {}",
                plan.rename_from,
                plan.rename_to,
                if decoded { "yes" } else { "no" }
            ),
        ),
        Some(p) => check(
            "RenamePath FilePath",
            Fail,
            format!(
                "the source ({p}): fim takes FilePath as the destination, so its renames are wrong on this build"
            ),
        ),
        None => check(
            "RenamePath FilePath",
            Fail,
            format!(
                "no event 27 naming {} or {}",
                plan.rename_from, plan.rename_to
            ),
        ),
    }

    // Delete-on-close.
    let delete_path = raw.file(file_event::DELETE_PATH).any(|e| {
        raw.dos(e, "FilePath")
            .is_some_and(|p| same(&p, &plan.delete_on_close))
    });
    let deletes = files
        .iter()
        .filter(|f| f.activity == FileActivity::Delete && same(&f.path, &plan.delete_on_close))
        .count();
    check(
        "DeletePath on delete-on-close",
        if deletes == 1 { Pass } else { Fail },
        format!(
            "event 26 {}; fim reported {deletes} Delete of {}",
            if delete_path { "raised" } else { "not raised" },
            plan.delete_on_close
        ),
    );

    // Writes: through the cache, and through a mapping (any pid: the
    // modified page writer may do it).
    let writes_to = |path: &str| -> Vec<&EtwEvent> {
        raw.file(file_event::WRITE)
            .filter(|e| raw.name_of(e).is_some_and(|n| same(n, path)))
            .collect()
    };
    let updated = |path: &str| {
        files
            .iter()
            .any(|f| f.activity == FileActivity::Update && same(&f.path, path))
    };
    let cached = writes_to(&plan.created);
    let seen = cached.iter().any(|e| e.pid == plan.pid);
    check(
        "Write (cached)",
        if seen && updated(&plan.created) {
            Pass
        } else {
            Fail
        },
        match cached.first() {
            Some(e) => format!(
                "{} event 16, first v{} by pid {}; fim reported an Update: {}",
                cached.len(),
                e.version,
                e.pid,
                if updated(&plan.created) { "yes" } else { "no" }
            ),
            None => format!("no event 16 for {}", plan.created),
        },
    );
    let mapped = writes_to(&plan.mapped);
    check(
        "Write (mapped)",
        if !mapped.is_empty() && updated(&plan.mapped) {
            Pass
        } else {
            Fail
        },
        match mapped.first() {
            Some(e) => format!(
                "{} event 16, first by pid {} IOFlags 0x{:x}",
                mapped.len(),
                e.pid,
                e.number("IOFlags").unwrap_or(0)
            ),
            None => format!(
                "no event 16 for {}: a change through a mapped view is not seen on this build",
                plan.mapped
            ),
        },
    );

    // Overwrite (CREATE_ALWAYS on an existing file, no Write).
    let dispositions: Vec<u64> = raw
        .file(file_event::CREATE)
        .filter(|e| {
            raw.dos(e, "FileName")
                .is_some_and(|p| same(&p, &plan.overwritten))
        })
        .filter_map(|e| e.number("CreateOptions").map(|o| o >> 24))
        .collect();
    let emptied = files
        .iter()
        .any(|f| f.activity == FileActivity::Update && same(&f.path, &plan.overwritten));
    check(
        "Overwrite open",
        if emptied { Pass } else { Fail },
        format!(
            "Create (12) dispositions {dispositions:?} (5 = FILE_OVERWRITE_IF); fim reported an Update: {}",
            if emptied { "yes" } else { "no" }
        ),
    );

    // Hard link.
    let link = files.iter().any(|f| {
        f.activity == FileActivity::HardLink
            && same(&f.path, &plan.link)
            && f.source_path
                .as_deref()
                .is_some_and(|s| same(s, &plan.rename_to))
    });
    let link_events = raw
        .file(file_event::SET_LINK_PATH)
        .filter(|e| raw.dos(e, "FilePath").is_some_and(|p| same(&p, &plan.link)))
        .count();
    check(
        "SetLinkPath",
        if link { Pass } else { Fail },
        format!(
            "{link_events} event 28 for {}; fim reported the link to {}: {}",
            plan.link,
            plan.rename_to,
            if link { "yes" } else { "no" }
        ),
    );

    // A rename that fails (target exists, no replace).
    let failed = raw.file(file_event::RENAME_PATH).find(|e| {
        raw.dos(e, "FilePath")
            .is_some_and(|p| same(&p, &plan.collision_to))
    });
    let misreported = files.iter().any(|f| {
        f.activity == FileActivity::Rename
            && f.new_path
                .as_deref()
                .is_some_and(|n| same(n, &plan.collision_to))
    });
    match failed {
        Some(e) => {
            let status = e.number("Irp").and_then(|irp| raw.operation_end(irp));
            check(
                "Failed rename",
                if misreported { Fail } else { Pass },
                match status {
                    Some(s) => format!(
                        "OperationEnd status 0x{s:08x}; fim reported it as done: {}",
                        if misreported { "yes" } else { "no" }
                    ),
                    None => "no OperationEnd (24) for its IRP: reported as done after the timeout"
                        .to_string(),
                },
            );
        }
        None => check(
            "Failed rename",
            Note,
            format!(
                "no event 27 for {} (the rename was refused before the file system)",
                plan.collision_to
            ),
        ),
    }

    // A key opened before the session.
    let set_values: Vec<_> = events
        .iter()
        .filter(|e| {
            e.provider == Provider::KernelRegistry
                && e.event_id == crate::etw_layout::registry_event::SET_VALUE_KEY
                && e.text("ValueName") == Some(plan.value_name.as_str())
        })
        .collect();
    let resolved = changes.iter().any(|c| {
        matches!(c, Change::Registry(r) if r.activity == RegistryActivity::SetValue
            && same(&r.key_path, &plan.key_path)
            && r.value_name.as_deref() == Some(plan.value_name.as_str()))
    });
    check(
        "Key opened before the session",
        if resolved { Pass } else { Fail },
        match set_values.first() {
            Some(e) => format!(
                "SetValueKey KeyName {:?}, KeyObject 0x{:x}; named from the handle table: {}; fim resolved {}: {}",
                e.text("KeyName").unwrap_or(""),
                e.number("KeyObject").unwrap_or(0),
                if seeded > 0 { "yes" } else { "no" },
                plan.key_path,
                if resolved { "yes" } else { "no" }
            ),
            None => format!("no event 5 for value {}", plan.value_name),
        },
    );

    // Versions and order.
    let unknown = &decoder.stats.unknown_versions;
    check(
        "Event versions",
        if unknown.is_empty() { Pass } else { Fail },
        if unknown.is_empty() {
            "every consumed event had a known version".to_string()
        } else {
            format!("no layout for {unknown:?}")
        },
    );
    let late = events
        .windows(2)
        .filter(|w| w[1].time_ms < w[0].time_ms)
        .count();
    check(
        "Delivery order",
        if late == 0 { Pass } else { Note },
        format!("{late} events arrived after a later-stamped one"),
    );
    report
}

/// The selftest's output: one line per check, the versions seen, a total.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let tag = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Note => "NOTE",
        };
        let _ = writeln!(out, "[{tag}] {}: {}", c.name, c.detail);
    }
    let versions: Vec<String> = report
        .versions
        .iter()
        .map(|((p, id, v), n)| {
            let p = match p {
                Provider::KernelFile => "File",
                Provider::KernelRegistry => "Registry",
            };
            format!("{p} {id} v{v} x{n}")
        })
        .collect();
    let _ = writeln!(out, "versions seen: {}", versions.join(", "));
    let count = |v| report.checks.iter().filter(|c| c.verdict == v).count();
    let _ = writeln!(
        out,
        "selftest: {} passed, {} failed, {} notes",
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Note)
    );
    out
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        let dir = r"C:\Users\admin\AppData\Local\Temp\fim-selftest-900\";
        let p = |n: &str| format!("{dir}{n}");
        Plan {
            pid: 900,
            created: p("created.txt"),
            mapped: p("mapped.bin"),
            rename_from: p("rename-src.txt"),
            rename_to: p("rename-dst.txt"),
            delete_on_close: p("doc.txt"),
            overwritten: p("overwritten.txt"),
            link: p("link.txt"),
            collision_from: p("collide-src.txt"),
            collision_to: p("collide-dst.txt"),
            key_path: r"HKU\S-1-5-21-1-2-3-500\Software\fim-selftest-900".into(),
            value_name: "selftest".into(),
        }
    }

    fn session() -> (Vec<EtwEvent>, DeviceMap) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/selftest_expected_session.json");
        let fixture = crate::pipeline::load_fixture(&path).unwrap();
        (fixture.events, DeviceMap::from_pairs(fixture.device_map))
    }

    fn seeds() -> Vec<(u64, String)> {
        vec![(
            0xFFFF_C080_0090_0010,
            r"\REGISTRY\USER\S-1-5-21-1-2-3-500\Software\fim-selftest-900".into(),
        )]
    }

    fn verdicts(report: &Report) -> Vec<(&'static str, Verdict)> {
        report.checks.iter().map(|c| (c.name, c.verdict)).collect()
    }

    #[test]
    fn expected_behaviour_passes_every_check() {
        let (events, devices) = session();
        let report = analyze(&plan(), &events, &devices, seeds(), None);
        let text = render(&report);
        assert!(!report.failed(), "{text}");
        assert_eq!(report.checks.len(), 11, "{text}");
        assert!(
            text.contains("[PASS] RenamePath FilePath: the destination"),
            "{text}"
        );
        assert!(
            text.contains(
                "[PASS] DeletePath on delete-on-close: event 26 raised; fim reported 1 Delete"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "[PASS] Failed rename: OperationEnd status 0xc0000035; fim reported it as done: no"
            ),
            "{text}"
        );
        assert!(text.contains("named from the handle table: yes"), "{text}");
        assert!(
            text.contains("versions seen: File 10 v0 x1, File 12 v1 x"),
            "{text}"
        );
        assert!(
            text.ends_with("selftest: 11 passed, 0 failed, 0 notes\n"),
            "{text}"
        );
    }

    #[test]
    fn a_provider_that_breaks_an_assumption_fails_its_check() {
        let (mut events, devices) = session();
        let plan = plan();
        // RenamePath carrying the source name, no mapped write, an unknown
        // Write version, and no handle-table seed.
        for e in &mut events {
            if e.event_id == file_event::RENAME_PATH
                && e.text("FilePath")
                    .is_some_and(|p| p.ends_with("rename-dst.txt"))
            {
                let src = e
                    .text("FilePath")
                    .unwrap()
                    .replace("rename-dst", "rename-src");
                e.fields
                    .insert("FilePath".into(), crate::etw_event::FieldValue::Text(src));
            }
        }
        events.retain(|e| !(e.event_id == file_event::WRITE && e.pid == 4));
        if let Some(w) = events.iter_mut().find(|e| e.event_id == file_event::WRITE) {
            w.version = 3;
        }
        let report = analyze(&plan, &events, &devices, Vec::new(), None);
        let failed: Vec<_> = verdicts(&report)
            .into_iter()
            .filter(|(_, v)| *v == Verdict::Fail)
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            failed,
            vec![
                "RenamePath FilePath",
                "Write (cached)",
                "Write (mapped)",
                "Key opened before the session",
                "Event versions"
            ],
            "{}",
            render(&report)
        );
    }
}
