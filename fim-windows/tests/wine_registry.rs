//! Registry snapshot and RegNotifyChangeKeyValue tests. They need a Windows
//! registry: `cargo xtask test` runs them under Wine (`cargo test -p fim-windows
//! --target x86_64-pc-windows-gnu`); they also run unchanged on real Windows.
//! Each test works in a private HKCU\Software\fim-test-<random> key and
//! deletes it afterwards.
#![cfg(windows)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fim_windows::change::{RegistryActivity, RegistryValueState, blake3_hex};
use fim_windows::reconcile::Reconciler;
use fim_windows::snapshot::diff;
use fim_windows::windows::reg_notify::KeyWatcher;
use fim_windows::windows::registry::{
    create_key, delete_tree, delete_value, open_key, read_snapshot, set_value,
};

const REG_SZ: u32 = 1;
const REG_BINARY: u32 = 3;
const REG_DWORD: u32 = 4;

/// A private test key, deleted with its subtree on drop.
struct TestKey {
    path: String,
}

impl TestKey {
    fn new(label: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = format!(
            r"HKCU\Software\fim-test-{label}-{}-{nanos:x}",
            std::process::id()
        );
        create_key(&path).expect("create test key");
        Self { path }
    }
}

impl Drop for TestKey {
    fn drop(&mut self) {
        let _ = delete_tree(&self.path);
    }
}

fn sz(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain([0])
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

fn summary(
    changes: &[fim_windows::change::RegistryChange],
    root: &str,
) -> Vec<(RegistryActivity, String, String)> {
    changes
        .iter()
        .map(|c| {
            let rel = c
                .key_path
                .strip_prefix(root)
                .unwrap_or(&c.key_path)
                .to_string();
            (c.activity, rel, c.value_name.clone().unwrap_or_default())
        })
        .collect()
}

#[test]
fn snapshot_reads_values_types_digests_and_subkeys() {
    let t = TestKey::new("read");
    let key = open_key(&t.path, 0x20019 | 0x20006)
        .unwrap()
        .expect("key exists");
    set_value(&key, "Path", REG_SZ, &sz(r"C:\x.exe")).unwrap();
    set_value(&key, "Level", REG_DWORD, &7u32.to_le_bytes()).unwrap();
    set_value(&key, "", REG_BINARY, &[1, 2, 3]).unwrap();
    create_key(&format!(r"{}\Child", t.path)).unwrap();

    let snap = read_snapshot(&[(t.path.clone(), false)], 100, 1).unwrap();
    let entry = snap.keys.get(&t.path).expect("root in snapshot");
    assert_eq!(
        entry.values.get("Path"),
        Some(&RegistryValueState {
            value_type: REG_SZ,
            size: sz(r"C:\x.exe").len() as u64,
            blake3: Some(blake3_hex(&sz(r"C:\x.exe")))
        })
    );
    assert_eq!(
        entry.values.get("Level").map(|v| (v.value_type, v.size)),
        Some((REG_DWORD, 4))
    );
    assert_eq!(
        entry.values.get("").and_then(|v| v.blake3.clone()),
        Some(blake3_hex(&[1, 2, 3]))
    );
    assert_eq!(entry.subkeys, vec!["Child".to_string()]);
    assert_eq!(
        snap.keys.len(),
        1,
        "non-recursive snapshot must not descend"
    );

    let recursive = read_snapshot(&[(t.path.clone(), true)], 100, 1).unwrap();
    assert!(recursive.keys.contains_key(&format!(r"{}\Child", t.path)));
    let limited = read_snapshot(&[(t.path.clone(), true)], 1, 1).unwrap();
    assert!(limited.truncated);
}

#[test]
fn snapshot_diff_sees_value_and_subkey_changes() {
    let t = TestKey::new("diff");
    let key = open_key(&t.path, 0x20019 | 0x20006)
        .unwrap()
        .expect("key exists");
    set_value(&key, "Keep", REG_SZ, &sz("same")).unwrap();
    set_value(&key, "Change", REG_DWORD, &1u32.to_le_bytes()).unwrap();
    set_value(&key, "Remove", REG_SZ, &sz("bye")).unwrap();
    create_key(&format!(r"{}\Old", t.path)).unwrap();
    let roots = [(t.path.clone(), true)];
    let before = read_snapshot(&roots, 100, 1).unwrap();

    set_value(&key, "Change", REG_DWORD, &2u32.to_le_bytes()).unwrap();
    delete_value(&key, "Remove").unwrap();
    set_value(&key, "Added", REG_BINARY, &[9]).unwrap();
    delete_tree(&format!(r"{}\Old", t.path)).unwrap();
    let new_key = create_key(&format!(r"{}\New", t.path)).unwrap();
    set_value(&new_key, "Inner", REG_SZ, &sz("v")).unwrap();
    let after = read_snapshot(&roots, 100, 2).unwrap();

    let changes = diff(&before, &after);
    assert_eq!(
        summary(&changes, &t.path),
        vec![
            (RegistryActivity::SetValue, String::new(), "Added".into()),
            (RegistryActivity::SetValue, String::new(), "Change".into()),
            (
                RegistryActivity::DeleteValue,
                String::new(),
                "Remove".into()
            ),
            (RegistryActivity::CreateKey, r"\New".into(), String::new()),
            (RegistryActivity::SetValue, r"\New".into(), "Inner".into()),
            (RegistryActivity::DeleteKey, r"\Old".into(), String::new()),
        ]
    );
    let change = &changes[1];
    assert_eq!(
        change
            .previous_value
            .as_ref()
            .and_then(|v| v.blake3.clone()),
        Some(blake3_hex(&1u32.to_le_bytes()))
    );
    assert_eq!(
        change.value.as_ref().and_then(|v| v.blake3.clone()),
        Some(blake3_hex(&2u32.to_le_bytes()))
    );

    // A change ETW reported is not repeated; the one ETW lost is caught.
    let mut reconciler = Reconciler::new();
    reconciler.apply_snapshot(before);
    reconciler.note_etw(&changes[1]);
    let missed = reconciler.apply_snapshot(after);
    assert_eq!(missed.len(), changes.len() - 1);
    assert!(
        missed
            .iter()
            .all(|c| c.value_name.as_deref() != Some("Change"))
    );
}

#[test]
fn reg_notify_wakes_on_change_within_bounded_wait() {
    let t = TestKey::new("notify");
    let watcher = KeyWatcher::new(&t.path, true).unwrap().expect("key exists");
    // Nothing changed yet: the watcher must not fire.
    assert!(
        !watcher.wait(200).unwrap(),
        "watcher fired without a change"
    );

    let key = open_key(&t.path, 0x20019 | 0x20006)
        .unwrap()
        .expect("key exists");
    let started = Instant::now();
    set_value(&key, "Trigger", REG_DWORD, &1u32.to_le_bytes()).unwrap();
    assert!(
        watcher.wait(5000).unwrap(),
        "no notification within 5 s of a value change"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Re-armed: a subkey change in the subtree wakes it again.
    create_key(&format!(r"{}\Sub", t.path)).unwrap();
    assert!(
        watcher.wait(5000).unwrap(),
        "no notification for a subkey creation after re-arm"
    );
    assert!(
        !watcher.wait(200).unwrap(),
        "spurious wake after the changes were consumed"
    );
}

#[test]
fn snapshot_expands_wildcard_key_paths_on_the_live_registry() {
    let t = TestKey::new("glob");
    for sub in [r"a\Sub", r"b\Sub", r"c\Other", r"d\Deep\Sub"] {
        create_key(&format!(r"{}\{sub}", t.path)).unwrap();
    }
    let keys = |pattern: &str| -> Vec<String> {
        let snap = read_snapshot(&[(format!(r"{}\{pattern}", t.path), false)], 100, 1).unwrap();
        assert!(!snap.truncated);
        snap.keys
            .keys()
            .map(|k| k.strip_prefix(&t.path).unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(r"*\Sub"), vec![r"\a\Sub", r"\b\Sub"]);
    assert_eq!(keys(r"**\Sub"), vec![r"\a\Sub", r"\b\Sub", r"\d\Deep\Sub"]);
    assert_eq!(keys(r"?\Oth*"), vec![r"\c\Other"]);
}
