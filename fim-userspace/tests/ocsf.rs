//! A real `fim run`'s OCSF output passes an independent OCSF 1.3.0 validator
//! (`tests/ocsf/validate.py`: pydantic-ocsf's models and the schema's own JSON, in the private
//! virtual environment `cargo xtask setup` makes): every activity the daemon writes, on
//! ordinary and hostile names, changes found by the start scan (attribution unknown), an
//! O_TMPFILE write, and the Detection Finding of a tampered baseline.
//!
//! Natively on the tracepoint backend (forced, like the robustness tests); needs root.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::Fim;

/// The validator's interpreter: the virtual environment `cargo xtask setup` installs
/// pydantic-ocsf into (under `FIM_CACHE_DIR`, default `~/.cache/fim`).
fn validator_python() -> PathBuf {
    let cache = std::env::var_os("FIM_CACHE_DIR").map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/var/cache"), PathBuf::from)
                .join(".cache/fim")
        },
        PathBuf::from,
    );
    let python = cache.join("ocsf-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`, which installs the OCSF validator",
        python.display()
    );
    python
}

fn validator_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ocsf/validate.py")
}

impl Fim {
    fn start(config: &Path, db: &Path) -> Fim {
        let child = Command::new(env!("CARGO_BIN_EXE_fim"))
            .args(["run", "--backend", "tracepoint", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("starting fim run");
        let fim = Fim(child);
        common::wait_for_start_scan(db, fim.0.id(), Duration::from_secs(180));
        fim
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let status = self.0.wait().expect("waiting for fim run");
        assert!(status.success(), "fim run exited with {status}");
    }
}

fn lines(output: &Path) -> Vec<Value> {
    let text = std::fs::read(output).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).expect("an output line is JSON"))
        .collect()
}

/// Waits until the output, from its line `since` on, holds an event of every activity in
/// `wanted` whose `file.path` or `file_result.path` ends with its suffix; returns the number of
/// lines then.
fn wait_for(output: &Path, since: usize, wanted: &[(&str, &str)]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = lines(output);
        let events = &all[since.min(all.len())..];
        let missing: Vec<&(&str, &str)> = wanted
            .iter()
            .filter(|(activity, suffix)| {
                !events.iter().any(|e| {
                    e["activity_name"] == *activity
                        && ["file", "file_result"]
                            .iter()
                            .any(|f| e[f]["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
                })
            })
            .collect();
        if missing.is_empty() {
            return all.len();
        }
        assert!(
            Instant::now() < deadline,
            "not on the output after 30 s: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let c_name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Writes through a file opened with O_TMPFILE in `dir` (an inode without a name).
fn tmpfile_write(dir: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o600)
        .open(dir)
        .expect("open(O_TMPFILE)");
    file.write_all(b"never named\n").unwrap();
}

#[test]
fn a_real_daemon_run_validates_against_ocsf_1_3() {
    common::require_root();
    let python = validator_python();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    std::fs::create_dir_all(tree.join("sub dir")).unwrap();
    let output = root.join("out/fim.json");
    let db = root.join("state/fim.db");
    let config = root.join("fim.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[output]\nfile = \"{}\"\n[metrics]\naddress = \"127.0.0.1:0\"\n\
             [[rule]]\nname = \"tree\"\ngroup = \"ocsf\"\npath = \"{}\"\nrecursive = true\n",
            root.join("state").display(),
            output.display(),
            tree.display()
        ),
    )
    .unwrap();
    // Names a SIEM must survive: a newline, a tab, invalid UTF-8, a leading dash, 255 bytes,
    // spaces and a shell metacharacter, one that looks like the kernel's name for an
    // unnamed inode, and an ordinary one with an extension.
    let hostile: Vec<Vec<u8>> = vec![
        b"line\nbreak".to_vec(),
        b"tab\there".to_vec(),
        b"bad\xff\xfeutf8".to_vec(),
        b"-rf".to_vec(),
        vec![b'n'; 255],
        b"sub dir/a $(x) .conf".to_vec(),
        b"#12345".to_vec(),
        b"app.conf".to_vec(),
    ];
    let path_of = |name: &[u8]| tree.join(OsStr::from_bytes(name));
    for name in &hostile {
        std::fs::write(path_of(name), b"before\n").unwrap();
    }

    // One kind of change at a time, each waited for, so that no examination folds the next
    // change into the one before (a chmod right after a write is reported with the write).
    let fim = Fim::start(&config, &db);
    let mut seen_lines = 0;
    let mut step = |wanted: Vec<(&str, Vec<u8>)>| {
        let text: Vec<(&str, String)> = wanted
            .iter()
            .map(|(a, n)| (*a, String::from_utf8_lossy(n).into_owned()))
            .collect();
        let refs: Vec<(&str, &str)> = text.iter().map(|(a, n)| (*a, n.as_str())).collect();
        seen_lines = wait_for(&output, seen_lines, &refs);
    };
    for (i, name) in hostile.iter().enumerate() {
        std::fs::write(path_of(name), format!("after {i}\n")).unwrap();
    }
    step(hostile.iter().map(|n| ("Update", n.clone())).collect());
    for name in &hostile {
        std::fs::set_permissions(path_of(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    step(
        hostile
            .iter()
            .map(|n| ("Set Attributes", n.clone()))
            .collect(),
    );
    let new = path_of(b"new\nfile.txt");
    std::fs::write(&new, b"created\n").unwrap();
    std::fs::create_dir(tree.join("made dir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tree.join("link")).unwrap();
    step(vec![
        ("Create", b"new\nfile.txt".to_vec()),
        ("Create", b"made dir".to_vec()),
        ("Create", b"link".to_vec()),
    ]);
    std::os::unix::fs::chown(&new, Some(1), Some(1)).unwrap();
    setxattr(&path_of(b"app.conf"), "security.fim_ocsf_test", b"1");
    step(vec![
        ("Set Attributes", b"new\nfile.txt".to_vec()),
        ("Set Security", b"app.conf".to_vec()),
    ]);
    std::fs::rename(&new, path_of(b"renamed \xff.txt")).unwrap();
    std::fs::remove_file(path_of(b"-rf")).unwrap();
    std::fs::remove_dir(tree.join("made dir")).unwrap();
    step(vec![
        ("Rename", b"renamed \xff.txt".to_vec()),
        ("Delete", b"-rf".to_vec()),
        ("Delete", b"made dir".to_vec()),
    ]);
    tmpfile_write(&tree);
    let tree_text = tree.to_str().unwrap();
    step(vec![("Update", tree_text.as_bytes().to_vec())]);
    fim.stop();

    // Changes while fim is stopped (found by the next start's scan, attribution unknown),
    // and a baseline row edited behind fim's back (a Detection Finding at that start).
    std::fs::write(path_of(b"app.conf"), b"changed while down\n").unwrap();
    std::fs::write(path_of(b"added while down"), b"x\n").unwrap();
    std::fs::remove_file(path_of(b"tab\there")).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("DROP TRIGGER baseline_set_update")
            .unwrap();
        conn.execute(
            "UPDATE baseline SET size = size + 1 WHERE path = ?1",
            [path_of(b"line\nbreak").as_os_str().as_bytes()],
        )
        .unwrap();
    }
    let fim = Fim::start(&config, &db);
    wait_for(
        &output,
        seen_lines,
        &[
            ("Update", "app.conf"),
            ("Create", "added while down"),
            ("Delete", "tab\there"),
        ],
    );
    fim.stop();

    let events = lines(&output);
    let seen: BTreeSet<(i64, i64)> = events
        .iter()
        .map(|e| {
            (
                e["class_uid"].as_i64().unwrap(),
                e["activity_id"].as_i64().unwrap(),
            )
        })
        .collect();
    for expected in [
        (1001, 1),
        (1001, 3),
        (1001, 4),
        (1001, 5),
        (1001, 6),
        (1001, 7),
        (2004, 1),
    ] {
        assert!(
            seen.contains(&expected),
            "no {expected:?} event in {seen:?}"
        );
    }
    let unknown = events
        .iter()
        .filter(|e| e["unmapped"]["fim"]["attribution"] == "unknown")
        .count();
    assert!(
        unknown >= 3,
        "the scan's changes (attribution unknown) are missing"
    );
    let unnamed: Vec<&Value> = events
        .iter()
        .filter(|e| e["unmapped"]["fim"]["flags"] == serde_json::json!(["unnamed"]))
        .collect();
    assert_eq!(unnamed.len(), 1, "one O_TMPFILE write, reported once");
    assert_eq!(unnamed[0]["file"]["path"], tree_text);
    assert!(
        events.iter().all(|e| !e["file"]["path"]
            .as_str()
            .is_some_and(|p| p.contains("/#") && !p.ends_with("/#12345"))),
        "a `#<inode>` path that never existed is on the output"
    );

    let started = Instant::now();
    let out = Command::new(&python)
        .arg(validator_script())
        .arg(&output)
        .output()
        .expect("running the OCSF validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{stdout}{stderr}(validated in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "the OCSF validator refused fim's output ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("the validator's summary line");
    assert_eq!(summary["checked"].as_u64(), Some(events.len() as u64));
    assert_eq!(summary["failed"], 0);
}

/// The Windows agent's output: its fixture replays (`fim-windows/tests/fixture_replay.rs`
/// checks that replaying the recorded ETW events prints exactly these lines) through the same
/// validator: File System Activity, and the Windows extension's Registry Key and Registry
/// Value Activity as the System Activity class they extend.
#[test]
fn the_windows_agents_output_validates_against_ocsf_1_3() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fim-windows/tests/fixtures");
    let out = Command::new(validator_python())
        .arg(validator_script())
        .arg(fixtures.join("kernel_file_events.expected.jsonl"))
        .arg(fixtures.join("kernel_registry_events.expected.jsonl"))
        .output()
        .expect("running the OCSF validator");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the OCSF validator refused fim-windows' output ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("the validator's summary line");
    assert_eq!(summary["checked"], 15, "{summary}");
    let by = summary["by_class_and_activity"].as_object().unwrap();
    assert!(
        by.keys().any(|k| k.starts_with("file_activity/")),
        "{summary}"
    );
    assert!(by.keys().any(|k| k.starts_with("system/")), "{summary}");
}
