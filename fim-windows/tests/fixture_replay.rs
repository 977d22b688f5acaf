//! Drives the ETW fixtures (written from the providers' documented event
//! layouts, see each file's "note") through the platform-independent
//! pipeline and checks the exact OCSF output. Runs on any OS.

use std::path::{Path, PathBuf};

use fim_windows::etw_event::Provider;
use fim_windows::pipeline::{load_fixture, replay_fixture, replay_fixture_with_stats};
use fim_windows::rules::{Config, RuleSet};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn env(name: &str) -> Option<String> {
    match name.to_ascii_lowercase().as_str() {
        "windir" | "systemroot" => Some(r"C:\Windows".into()),
        "programdata" => Some(r"C:\ProgramData".into()),
        _ => None,
    }
}

fn replay(name: &str) -> Vec<Value> {
    let fixture = load_fixture(&fixtures().join(format!("{name}.json"))).expect("fixture loads");
    assert!(
        fixture.note.contains("documented")
            && fixture.note.contains("Not captured from a live system"),
        "fixture {name} must say where its layout comes from"
    );
    let rules = RuleSet::compile(&Config::builtin(), &env, None).expect("built-in rules compile");
    replay_fixture(&fixture, rules, "replay-host")
}

fn expected(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}.expected.jsonl")))
        .expect("expected output");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("expected line is JSON"))
        .collect()
}

fn assert_same(name: &str) {
    let got = replay(name);
    let want = expected(name);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "{name}: record {i} differs");
    }
    assert_eq!(got.len(), want.len(), "{name}: record count");
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

#[test]
fn kernel_file_fixture_matches_expected_ocsf() {
    assert_same("kernel_file_events");
}

#[test]
fn kernel_registry_fixture_matches_expected_ocsf() {
    assert_same("kernel_registry_events");
}

#[test]
fn kernel_file_edge_case_fixture_matches_expected_ocsf() {
    assert_same("kernel_file_edge_cases");
}

#[test]
fn kernel_registry_empty_names_fixture_matches_expected_ocsf() {
    assert_same("kernel_registry_empty_names");
}

/// (activity, file.path, file_result.path or previous.path, pid) per record.
fn file_summary(records: &[Value]) -> Vec<(String, String, String, u64)> {
    records
        .iter()
        .map(|r| {
            let other = get(r, "file_result.path")
                .as_str()
                .or(get(r, "unmapped.fim.previous.path").as_str())
                .unwrap_or("");
            (
                r["activity_name"].as_str().unwrap().to_string(),
                get(r, "file.path").as_str().unwrap().to_string(),
                other.to_string(),
                get(r, "actor.process.pid").as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn decoder_edge_cases_are_reported_as_they_happened() {
    let fixture = load_fixture(&fixtures().join("kernel_file_edge_cases.json")).unwrap();
    let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
    let (records, stats) = replay_fixture_with_stats(&fixture, rules, "replay-host");
    let etc = r"C:\Windows\System32\drivers\etc\";
    let row =
        |a: &str, p: &str, o: &str, pid: u64| (a.to_string(), p.to_string(), o.to_string(), pid);
    assert_eq!(
        file_summary(&records),
        vec![
            // A: the Close arrived first; the late Write and SetInformation
            // still get the name, the reused FileObject gets its new one.
            row("Update", &format!("{etc}hosts"), "", 4242),
            row("Set Attributes", &format!("{etc}hosts"), "", 4242),
            row("Set Security", &format!("{etc}networks"), "", 4242),
            row("Create", &format!("{etc}lmhosts.tmp"), "", 5000),
            // RenamePath delivered after its FileObject's Close.
            row(
                "Rename",
                &format!("{etc}lmhosts.tmp"),
                &format!("{etc}lmhosts"),
                5000
            ),
            // B: the denied delete of `protocol` and the colliding rename of
            // `services` are not reported; the later write keeps the name.
            row("Update", &format!("{etc}services"), "", 5000),
            // C: hard links into a watched folder and to a watched file.
            row(
                "Create",
                r"C:\Windows\System32\drivers\evil2.sys",
                r"C:\Users\Public\payload.sys",
                6000,
            ),
            row("Create", r"C:\Users\Public\h", &format!("{etc}hosts"), 6000),
            // D: delete-on-close, at Cleanup.
            row("Delete", &format!("{etc}lmhosts.sam"), "", 6000),
            // E: an overwriting open empties hosts (its Write coalesced); an
            // overwrite that created `quotes` is its Create only; the denied
            // overwrite of networks is not reported; supersede empties.
            row("Update", &format!("{etc}hosts"), "", 4242),
            row("Create", &format!("{etc}quotes"), "", 4242),
            row("Update", &format!("{etc}protocol"), "", 4242),
            // F: version 0 records decoded with their own layout.
            row("Update", r"C:\Windows\System32\drivers\old.sys", "", 4),
        ]
    );
    let link = &records[6];
    assert_eq!(
        get(link, "unmapped.fim.changed"),
        &serde_json::json!(["created", "hard_link"])
    );
    assert_eq!(
        get(link, "file.hashes.0.value"),
        fim_windows::change::blake3_hex(b"MZ").as_str()
    );
    assert!(
        records
            .iter()
            .all(|r| get(r, "unmapped.fim.truncated_path") == false)
    );
    assert_eq!(stats.failed_operations, 3, "{stats:?}");
    assert_eq!(stats.unconfirmed_operations, 0, "{stats:?}");
    assert_eq!(
        stats.unknown_versions.into_iter().collect::<Vec<_>>(),
        vec![((Provider::KernelFile, 16, 2), 1)]
    );
}

#[test]
fn empty_key_names_resolve_through_seeds_and_opens_or_the_snapshot() {
    let fixture = load_fixture(&fixtures().join("kernel_registry_empty_names.json")).unwrap();
    let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
    let (records, stats) = replay_fixture_with_stats(&fixture, rules, "replay-host");
    let summary: Vec<(&str, &str, &str, &str)> = records
        .iter()
        .map(|r| {
            let object = if r["reg_value"].is_object() {
                &r["reg_value"]
            } else {
                &r["reg_key"]
            };
            (
                r["activity_name"].as_str().unwrap(),
                object["path"].as_str().unwrap(),
                object["name"].as_str().unwrap_or(""),
                get(r, "unmapped.fim.backend").as_str().unwrap(),
            )
        })
        .collect();
    let run = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run";
    let evil = r"HKLM\SYSTEM\CurrentControlSet\Services\EvilSvc";
    assert_eq!(
        summary,
        vec![
            // A key opened before the session, named by the handle table.
            ("Set", run, "Persist", "etw"),
            // Named by its OpenKey/CreateKey (relative to a KeyObject).
            ("Create", evil, "", "etw"),
            ("Set", evil, "ImagePath", "etw"),
            // No name from anywhere: the snapshot still reports it, once.
            (
                "Set",
                r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\RunOnce",
                "Lost",
                "snapshot"
            ),
        ]
    );
    assert_eq!(get(&records[0], "actor.process.pid"), 7000);
    assert_eq!(
        stats.seeded_key_objects, 1,
        "only the watched key is seeded"
    );
}

#[test]
fn file_records_carry_the_contract_fields() {
    let records = replay("kernel_file_events");
    let summary: Vec<(u64, u64, &str)> = records
        .iter()
        .map(|r| {
            (
                r["class_uid"].as_u64().unwrap(),
                r["activity_id"].as_u64().unwrap(),
                get(r, "file.path").as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1001, 3, r"C:\Windows\System32\drivers\etc\hosts"),
            (1001, 1, r"C:\Windows\System32\drivers\etc\lmhosts.tmp"),
            (1001, 6, r"C:\Windows\System32\drivers\etc\lmhosts.tmp"),
            (1001, 7, r"C:\Windows\System32\drivers\etc\lmhosts.tmp"),
            (1001, 5, r"C:\Windows\System32\drivers\etc\lmhosts.tmp"),
            (1001, 4, r"C:\Windows\System32\drivers\etc\networks"),
            (1001, 3, r"C:\Windows\System32\drivers\evil.sys"),
        ],
        "two writes on one open are one Update; the unwatched file is not reported"
    );
    let hosts = &records[0];
    assert_eq!(hosts["type_uid"], 100_103);
    assert_eq!(hosts["time"], 1_795_824_000_002u64);
    let content = "127.0.0.1 localhost\n10.0.0.66 update.example\n";
    assert_eq!(get(hosts, "file.size"), content.len());
    assert_eq!(get(hosts, "file.hashes.0.algorithm_id"), 99);
    assert_eq!(
        get(hosts, "file.hashes.0.value"),
        blake3::hash(content.as_bytes()).to_hex().as_str()
    );
    assert_eq!(get(hosts, "actor.process.pid"), 4242);
    assert_eq!(get(hosts, "actor.process.name"), "notepad.exe");
    assert_eq!(
        get(hosts, "actor.process.file.path"),
        r"C:\Windows\System32\notepad.exe"
    );
    assert_eq!(
        get(hosts, "actor.user.uid"),
        "S-1-5-21-1004336348-1177238915-682003330-1001"
    );
    assert_eq!(get(hosts, "actor.user.name"), r"CORP\alice");
    assert_eq!(get(hosts, "metadata.product.name"), "fim");
    assert_eq!(get(hosts, "device.hostname"), "replay-host");
    assert_eq!(get(hosts, "unmapped.fim.backend"), "etw");
    assert_eq!(get(hosts, "unmapped.fim.rule"), "hosts and network files");
    assert_eq!(get(hosts, "unmapped.fim.authorized"), false);

    let rename = &records[4];
    assert_eq!(
        get(rename, "file_result.path"),
        r"C:\Windows\System32\drivers\etc\lmhosts"
    );
    assert_eq!(get(rename, "file_result.size"), "# lmhosts\n".len());
    assert_eq!(
        get(rename, "unmapped.fim.previous.path"),
        r"C:\Windows\System32\drivers\etc\lmhosts.tmp"
    );
    // The driver was named only by NameCreate's FileKey.
    assert_eq!(get(&records[6], "unmapped.fim.rule"), "drivers");
}

#[test]
fn registry_records_use_the_windows_extension_classes() {
    let records = replay("kernel_registry_events");
    let summary: Vec<(u64, u64, &str)> = records
        .iter()
        .map(|r| {
            (
                r["class_uid"].as_u64().unwrap(),
                r["activity_id"].as_u64().unwrap(),
                get(r, "unmapped.fim.backend").as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (201_002, 2, "etw"),      // Updater set
            (201_002, 3, "etw"),      // Updater modified (type and data)
            (201_002, 4, "etw"),      // OldEntry deleted
            (201_001, 1, "etw"),      // EvilSvc created
            (201_001, 6, "etw"),      // EvilSvc security set
            (201_001, 4, "etw"),      // EvilSvc deleted
            (201_002, 2, "snapshot"), // Lost: ETW never saw it
            (201_002, 3, "snapshot"), // Tcpip\Start changed unseen
        ],
        "failed, open-existing and unwatched operations are not reported; ETW-seen changes are not repeated by the snapshot"
    );
    let modify = &records[1];
    assert_eq!(modify["type_uid"], 20_100_203);
    assert_eq!(get(modify, "reg_value.type"), "REG_EXPAND_SZ");
    assert_eq!(get(modify, "reg_value.type_id"), 4);
    assert_eq!(get(modify, "prev_reg_value.type"), "REG_SZ");
    assert_eq!(
        get(modify, "unmapped.fim.changed"),
        &serde_json::json!(["type", "data"])
    );
    let old: Vec<u8> = r"C:\Users\Public\upd.exe"
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    assert_eq!(
        get(modify, "unmapped.fim.previous.blake3"),
        blake3::hash(&old).to_hex().as_str()
    );
    // KeyObject of the CreateKey's base came from a CloseKey naming ControlSet001.
    assert_eq!(
        get(&records[3], "reg_key.path"),
        r"HKLM\SYSTEM\CurrentControlSet\Services\EvilSvc"
    );
    assert_eq!(get(&records[3], "actor.process.name"), "sc.exe");
    assert_eq!(get(&records[6], "reg_value.name"), "Lost");
    assert!(
        get(&records[6], "actor.process").is_null(),
        "a snapshot diff has no process"
    );
}

#[test]
fn cli_replay_prints_the_same_lines() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fim-windows"))
        .arg("replay")
        .arg(fixtures().join("kernel_registry_events.json"))
        .output()
        .expect("run fim-windows");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, expected("kernel_registry_events"));
}

#[test]
fn cli_rejects_unknown_config_keys_with_location() {
    let dir = std::env::temp_dir().join(format!("fim-windows-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bad.toml");
    std::fs::write(
        &config,
        "[[registry_rule]]\nname = 'x'\nkey_path = 'HKLM\\A'\nrecursion = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fim-windows"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.toml:4:1"), "{stderr}");
}

#[cfg(not(windows))]
#[test]
fn run_explains_it_needs_windows() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fim-windows"))
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs Windows"));
}

#[cfg(not(windows))]
#[test]
fn selftest_explains_it_needs_windows() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fim-windows"))
        .arg("selftest")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`selftest` needs Windows"));
}

fn replay_with(name: &str, config: &str) -> Vec<Value> {
    let fixture = load_fixture(&fixtures().join(format!("{name}.json"))).expect("fixture loads");
    let config = Config::parse(config, "test.toml").expect("config parses");
    let rules = RuleSet::compile(&config, &env, None).expect("rules compile");
    replay_fixture(&fixture, rules, "replay-host")
}

const ETC_AND_DRIVERS: &str = r#"
[[rule]]
name = "etc"
path = '%windir%\System32\drivers\etc\*'
path_type = "folder"
upload_content = true

[[rule]]
name = "drivers"
path = '%windir%\System32\drivers\*.sys'
path_type = "file"
"#;

/// (activity, path of the file after the change, unmapped.fim.content)
fn content_summary(records: &[Value]) -> Vec<(String, String, Value)> {
    records
        .iter()
        .map(|r| {
            let file = if r["file_result"].is_object() {
                &r["file_result"]
            } else {
                &r["file"]
            };
            (
                r["activity_name"].as_str().unwrap().to_string(),
                file["path"].as_str().unwrap().to_string(),
                r["unmapped"]["fim"]["content"].clone(),
            )
        })
        .collect()
}

#[test]
fn upload_content_rules_carry_the_file_content_in_base64() {
    let records = replay_with("kernel_file_events", ETC_AND_DRIVERS);
    let hosts = "127.0.0.1 localhost\n10.0.0.66 update.example\n";
    let hosts_b64 = "MTI3LjAuMC4xIGxvY2FsaG9zdAoxMC4wLjAuNjYgdXBkYXRlLmV4YW1wbGUK";
    let etc = r"C:\Windows\System32\drivers\etc";
    assert_eq!(
        content_summary(&records),
        vec![
            (
                "Update".into(),
                format!(r"{etc}\hosts"),
                serde_json::json!({"encoding": "base64", "size": hosts.len(), "truncated": false, "data": hosts_b64})
            ),
            // Not readable in the fixture (no content hash): no content.
            ("Create".into(), format!(r"{etc}\lmhosts.tmp"), Value::Null),
            (
                "Set Attributes".into(),
                format!(r"{etc}\lmhosts.tmp"),
                Value::Null
            ),
            (
                "Set Security".into(),
                format!(r"{etc}\lmhosts.tmp"),
                Value::Null
            ),
            // A rename carries the content found at the new path.
            (
                "Rename".into(),
                format!(r"{etc}\lmhosts"),
                serde_json::json!({"encoding": "base64", "size": 10, "truncated": false, "data": "IyBsbWhvc3RzCg=="})
            ),
            // Deleted: nothing to read.
            ("Delete".into(), format!(r"{etc}\networks"), Value::Null),
            // Hashed, but its rule does not ask for content.
            (
                "Update".into(),
                r"C:\Windows\System32\drivers\evil.sys".into(),
                Value::Null
            ),
        ]
    );
    assert_eq!(get(&records[0], "file.size"), hosts.len());
}

#[test]
fn uploaded_content_is_truncated_at_content_max_size() {
    let config = format!("[agent]\ncontent_max_size = 4\n{ETC_AND_DRIVERS}");
    let records = replay_with("kernel_file_events", &config);
    let content = get(&records[0], "unmapped.fim.content");
    // "127." in base64; the file itself is longer and still fully hashed.
    assert_eq!(
        content,
        &serde_json::json!({"encoding": "base64", "size": 4, "truncated": true, "data": "MTI3Lg=="})
    );
    assert_eq!(get(&records[0], "file.size"), 45);
    let hash = get(&records[0], "file.hashes.0.value").as_str().unwrap();
    assert_eq!(
        hash,
        fim_windows::change::blake3_hex(b"127.0.0.1 localhost\n10.0.0.66 update.example\n")
    );
}

/// (pid, unmapped.fim.authorized) per record.
fn authorized_summary(records: &[Value]) -> Vec<(u64, bool)> {
    records
        .iter()
        .map(|r| {
            (
                get(r, "actor.process.pid").as_u64().unwrap(),
                get(r, "unmapped.fim.authorized").as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn authorized_actors_are_labelled_not_dropped() {
    let alice = "S-1-5-21-1004336348-1177238915-682003330-1001";
    // Image (different case, %windir% expanded) and user both match pid 4242.
    let config = format!(
        "{ETC_AND_DRIVERS}\n[[authorized]]\nexe = '%WINDIR%\\system32\\NOTEPAD.EXE'\nuser = '{alice}'\n"
    );
    let records = replay_with("kernel_file_events", &config);
    assert_eq!(
        authorized_summary(&records),
        vec![
            (4242, true),
            (5000, false),
            (5000, false),
            (5000, false),
            (5000, false),
            (5000, false),
            (4, false),
        ]
    );

    // The right image run by another user is not authorized.
    let config = format!(
        "{ETC_AND_DRIVERS}\n[[authorized]]\nexe = 'C:\\Windows\\System32\\notepad.exe'\nuser = 'S-1-5-18'\n"
    );
    let records = replay_with("kernel_file_events", &config);
    assert!(authorized_summary(&records).iter().all(|(_, a)| !a));

    // A trailing wildcard covers the folder's direct contents, any user; pid 4
    // has no process information and is never authorized.
    let config = format!("{ETC_AND_DRIVERS}\n[[authorized]]\nexe = '%windir%\\System32\\*'\n");
    let records = replay_with("kernel_file_events", &config);
    let summary = authorized_summary(&records);
    assert_eq!(summary.len(), 7);
    assert!(summary[..6].iter().all(|(_, a)| *a));
    assert_eq!(summary[6], (4, false));

    // ...but not a subfolder's: C:\Windows\* does not reach System32\cmd.exe.
    let config = format!("{ETC_AND_DRIVERS}\n[[authorized]]\nexe = '%windir%\\*'\n");
    let records = replay_with("kernel_file_events", &config);
    assert!(authorized_summary(&records).iter().all(|(_, a)| !a));
}

#[test]
fn registry_changes_by_authorized_actors_are_labelled() {
    let fixture = load_fixture(&fixtures().join("kernel_registry_events.json")).unwrap();
    let Some(p) = fixture.processes.iter().find(|p| p.image_path.is_some()) else {
        panic!("registry fixture has a process with an image path");
    };
    let mut config = String::from(fim_windows::rules::DEFAULT_CONFIG);
    config.push_str(&format!(
        "\n[[authorized]]\nexe = '{}'\n",
        p.image_path.as_deref().unwrap().to_uppercase()
    ));
    let records = replay_with("kernel_registry_events", &config);
    let mut by_that_pid = 0;
    for r in &records {
        let pid = get(r, "actor.process.pid").as_u64();
        let authorized = get(r, "unmapped.fim.authorized").as_bool().unwrap();
        assert_eq!(authorized, pid == Some(u64::from(p.pid)), "{r}");
        by_that_pid += usize::from(authorized);
    }
    assert!(by_that_pid > 0);
    // Nothing is dropped: the same number of records as without the entry.
    assert_eq!(records.len(), replay("kernel_registry_events").len());
}

/// The workload replayed as the previous and the precise session filters
/// would deliver it: fewer events, the same records.
#[test]
fn precise_filters_deliver_fewer_events_and_lose_no_change() {
    use fim_windows::etw_filter::{self, delivered};
    let mut fixture = load_fixture(&fixtures().join("workload_mix.json")).unwrap();
    let all = std::mem::take(&mut fixture.events);
    let mut outputs = Vec::new();
    let mut counts = Vec::new();
    for (file, registry) in [
        (
            etw_filter::PREVIOUS_KERNEL_FILE,
            etw_filter::PREVIOUS_KERNEL_REGISTRY,
        ),
        (etw_filter::KERNEL_FILE, etw_filter::KERNEL_REGISTRY),
    ] {
        fixture.events = delivered(&all, &file, &registry).cloned().collect();
        counts.push(fixture.events.len());
        let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
        outputs.push(replay_fixture(&fixture, rules, "replay-host"));
    }
    assert_eq!(outputs[0], outputs[1], "the filters drop no event fim uses");
    let summary: Vec<(&str, &str)> = outputs[1]
        .iter()
        .map(|r| {
            let object = [&r["file"], &r["reg_value"]]
                .into_iter()
                .find(|o| o.is_object())
                .unwrap();
            (
                r["activity_name"].as_str().unwrap(),
                object["path"].as_str().unwrap(),
            )
        })
        .collect();
    let run = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run";
    assert_eq!(
        summary,
        vec![
            ("Update", r"C:\Windows\System32\drivers\etc\networks"),
            ("Set", run),
            ("Set", run),
            ("Set", run),
        ]
    );
    assert_eq!(
        counts[0],
        all.len(),
        "the previous filters let everything through"
    );
    assert!(counts[1] * 2 < counts[0], "{counts:?}");
}
