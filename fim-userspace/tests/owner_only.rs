//! The store, its WAL and shared-memory files, its key and the event output (rotated files
//! too) are the owner's only, whatever the umask and whatever the mode of a state directory
//! that already existed; files an older fim left wider are mended; an exposed state
//! directory is warned about. (Its own test binary: it sets the process-wide umask.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fim::config::Output;
use fim::output::{OcsfContext, OutputSink};
use fim::store::{ChangeRecord, HealthRecord, Store, StoreOp};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn fims_files_are_the_owners_only_whatever_the_umask() {
    // SAFETY: umask has no preconditions; this binary holds this one test.
    unsafe { libc::umask(0) };
    let dir = tempfile::tempdir().unwrap();
    // A state directory that already existed, readable and writable by everyone.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(fim::owner_only::exposed_dir_warning(&state).is_some());

    let mut store = Store::open(&state).unwrap();
    store
        .write(&[StoreOp::Health(HealthRecord {
            time_ns: 1,
            kind: "start".into(),
            backend: None,
            detail: None,
            lost_events: 0,
        })])
        .unwrap();
    for file in ["fim.db", "fim.db-wal", "fim.db-shm"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&state.join("baseline.key")), 0o400);
    drop(store);

    // Files an older fim created 0644 are mended at the next open.
    for file in ["fim.db", "fim.db-wal", "fim.db-shm"] {
        let path = state.join(file);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    drop(Store::open(&state).unwrap());
    assert_eq!(mode(&state.join("fim.db")), 0o600);

    // The output, in a directory anyone can read, rotated twice.
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = out_dir.join("fim.json");
    let output = Output::File {
        path: path.clone(),
        max_size_bytes: 2048,
        keep: 3,
    };
    let mut sink = OutputSink::open(&output, OcsfContext::new("h".into())).unwrap();
    let change = ChangeRecord {
        path: b"/etc/passwd".to_vec(),
        backend: "scan".into(),
        ..ChangeRecord::default()
    };
    for _ in 0..20 {
        sink.write(&change).unwrap();
        sink.flush().unwrap();
    }
    drop(sink);
    let rotated = out_dir.join("fim.json.2");
    assert!(rotated.exists(), "the output did not rotate twice");
    for file in ["fim.json", "fim.json.1", "fim.json.2"] {
        assert_eq!(mode(&out_dir.join(file)), 0o600, "{file}");
    }
    // An output file an older fim created 0640 is mended when reopened.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    drop(OutputSink::open(&output, OcsfContext::new("h".into())).unwrap());
    assert_eq!(mode(&path), 0o600);

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(fim::owner_only::exposed_dir_warning(&state).is_none());
}
