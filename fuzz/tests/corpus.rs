//! The seed corpus, without libFuzzer: `cargo test` in fuzz/ checks that the committed seeds
//! are the ones built here, and runs every input of `corpus/<target>/` through its target's
//! checks. `FIM_FUZZ_WRITE_SEEDS=1 cargo test` rewrites the seeds after a change here.

use std::path::{Path, PathBuf};

use fim::store::{Actor, ChangeRecord, activity};
use fim_common::{Backend, EventKind, RecordHeader, flags};
use fim_fuzz::{config, decoder, ocsf, record};
use serde_json::json;

/// Named seed inputs of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn header(kind: EventKind, backend: Backend, flag_bits: u16) -> RecordHeader {
    let mut h = RecordHeader {
        kind: kind as u16,
        backend: backend as u8,
        flags: flag_bits,
        rule_id: 1,
        ktime_ns: 5_000_000_000_000,
        ..RecordHeader::default()
    };
    h.actor.tgid = 4242;
    h.actor.pid = 4242;
    h.actor.ppid = 1;
    h.actor.loginuid = 1000;
    h.actor.start_boottime_ns = 4_000_000_000_000;
    h.actor.comm = record::comm(b"vim");
    h.target.dev = 8 << 20 | 1;
    h.target.ino = 131_077;
    h.target.mode = 0o100644; // S_IFREG | 0644
    h
}

fn decoder_seeds() -> Seeds {
    let known = flags::TARGET_KNOWN;
    let mut exec = header(EventKind::Exec, Backend::Tracepoint, flags::PATH2_IS_STRING);
    exec.actor.comm = record::comm(b"sshd-session");
    let mut chmod = header(EventKind::Chmod, Backend::Fentry, known);
    chmod.args.mode = 0o4755;
    let mut open = header(
        EventKind::OpenWrite,
        Backend::Tracepoint,
        flags::FILTER_UNDECIDED,
    );
    open.args.flags = 0o1101; // O_WRONLY|O_CREAT|O_TRUNC
    open.rule_id = 0;
    vec![
        (
            "create-lsm",
            record::record(
                &header(EventKind::Create, Backend::Lsm, known),
                b"/etc/passwd",
                b"",
            ),
        ),
        (
            "rename-fentry",
            record::record(
                &header(EventKind::Rename, Backend::Fentry, known),
                b"/etc/ssh/sshd_config.tmp",
                b"/etc/ssh/sshd_config",
            ),
        ),
        (
            "exec-tracepoint",
            record::record(&exec, b"/usr/bin/vim", b"vim\0/etc/hosts\0"),
        ),
        (
            "undecided-dotdot",
            record::record(&open, b"/tmp/../etc/./cron.d//job", b""),
        ),
        ("chmod-fentry", record::record(&chmod, b"/usr/bin/su", b"")),
        (
            "setxattr-security",
            record::record(
                &header(
                    EventKind::SetXattr,
                    Backend::Lsm,
                    known | flags::PATH2_IS_STRING,
                ),
                b"/etc/shadow",
                b"security.selinux",
            ),
        ),
        (
            "modified-truncated",
            record::record(
                &header(
                    EventKind::Modified,
                    Backend::Lsm,
                    known | flags::PATH1_TRUNCATED,
                ),
                b"/deep/a\n\xff/b",
                b"",
            ),
        ),
    ]
}

/// The built-in rules written as a configuration file.
fn builtin_rules_toml() -> String {
    let rules = fim::config::default_rules();
    let mut text = String::from("# The built-in rule set as a configuration file.\n");
    for rule in rules.rules() {
        let ignore: Vec<String> = rule
            .ignore
            .iter()
            .map(|p| format!("{:?}", p.as_str()))
            .collect();
        text.push_str(&format!(
            "\n[[rule]]\nname = {:?}\ngroup = {:?}\npath = {:?}\npath_type = {:?}\n",
            rule.name,
            rule.group,
            rule.path.as_str(),
            rule.path_type.name()
        ));
        if rule.recursive {
            text.push_str("recursive = true\n");
        }
        if !ignore.is_empty() {
            text.push_str(&format!("ignore = [{}]\n", ignore.join(", ")));
        }
    }
    text
}

fn config_seeds() -> Seeds {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fim-userspace/tests/fixtures/config");
    let read = |p: &str| std::fs::read(fixtures.join(p)).expect("the config fixtures");
    let mut main_and_drop_ins = read("fim.toml");
    for drop_in in ["conf.d/10-keys.toml", "conf.d/20-metrics.toml"] {
        main_and_drop_ins.push(0);
        main_and_drop_ins.extend(read(drop_in));
    }
    let readme_rule = b"[[rule]]\nname = \"web-config\"\ngroup = \"app\"\npath = \"/srv/www/*/config\"\nrecursive = true\nignore = [\"*.swp\", \"/srv/www/*/config/cache\"]\n".to_vec();
    let errors = b"state_dir = \"relative\"\n[[rule]]\nname = \"a\"\npath = \"/x/../y\"\n\n[[rule]]\nname = \"a\"\npath = \"/srv/[a\"\npath_type = \"file\"\nrecursive = true\n[metrics]\naddress = \"localhost\"\n".to_vec();
    vec![
        ("builtin-rules", builtin_rules_toml().into_bytes()),
        ("fixture-main-and-drop-ins", main_and_drop_ins),
        ("readme-rule", readme_rule),
        ("located-errors", errors),
    ]
}

fn ocsf_seeds() -> Seeds {
    let actor = Actor {
        pid: Some(4242),
        ppid: Some(1),
        exe: Some(b"/usr/bin/vim".to_vec()),
        cmdline: Some(b"vim /etc/hosts".to_vec()),
        uid: Some(0),
        user: Some("root".into()),
        login_uid: Some(1000),
        login_user: Some("alice".into()),
        comm: Some("vim".into()),
        start_time_ns: Some(1_780_000_000_123_456_789),
        ..Actor::default()
    };
    let create = ChangeRecord {
        time_ns: 1_780_000_001_000_000_000,
        host: "web-1".into(),
        activity: activity::CREATE,
        path: b"/etc/hosts".to_vec(),
        rule: Some("etc".into()),
        group: Some("config".into()),
        backend: "lsm".into(),
        changed: vec!["content".into(), "size".into()],
        hash_after: Some("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262".into()),
        size: Some(230),
        kind: Some(fim::baseline::FileKind::File),
        actor: actor.clone(),
        ..ChangeRecord::default()
    };
    let rename = ChangeRecord {
        activity: activity::RENAME,
        path: b"/etc/cron.d/job\n\xff".to_vec(),
        new_path: Some(b"/etc/cron.d/\x1b[31mjob".to_vec()),
        backend: "tracepoint".into(),
        actor: Actor {
            exe: Some(b"/tmp/\xfe\xffdrop".to_vec()),
            container_id: Some(
                "4f1c3c6e0a9b2d7e8f00112233445566778899aabbccddeeff00112233445566".into(),
            ),
            ..actor.clone()
        },
        ..create.clone()
    };
    let delete = ChangeRecord {
        activity: activity::DELETE,
        backend: "scan".into(),
        hash_after: None,
        hash_before: Some("00".repeat(32)),
        previous: Some(
            json!({"hash": "00", "size": 12, "mode": 33188, "uid": 0, "gid": 0, "type": "file"}),
        ),
        truncated_path: true,
        authorized: true,
        actor: Actor::default(),
        ..create.clone()
    };
    let security = ChangeRecord {
        activity: activity::SET_SECURITY,
        changed: vec!["xattr".into()],
        path: Vec::new(),
        ..create.clone()
    };
    [
        ("create", create),
        ("rename-binary", rename),
        ("delete-scan", delete),
        ("security-empty-path", security),
    ]
    .into_iter()
    .map(|(name, c)| (name, ocsf::change_to_bytes(&c)))
    .collect()
}

fn seeds() -> Vec<(&'static str, Seeds)> {
    vec![
        ("decoder", decoder_seeds()),
        ("config", config_seeds()),
        ("ocsf", ocsf_seeds()),
    ]
}

#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("FIM_FUZZ_WRITE_SEEDS").is_some();
    for (target, seeds) in seeds() {
        let dir = corpus_dir(target);
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let committed = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("{}: {e}; run with FIM_FUZZ_WRITE_SEEDS=1", path.display())
                });
                assert!(
                    committed == bytes,
                    "{} is stale; run with FIM_FUZZ_WRITE_SEEDS=1",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn change_encoding_round_trips() {
    for (name, bytes) in ocsf_seeds() {
        let change = ocsf::change_from_bytes(&bytes);
        assert_eq!(ocsf::change_to_bytes(&change), bytes, "{name}");
    }
}

#[test]
fn every_corpus_input_passes_its_target() {
    for (target, check) in [
        ("decoder", decoder::check as fn(&[u8])),
        ("config", config::check),
        ("ocsf", ocsf::check),
    ] {
        let dir = corpus_dir(target);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            check(&std::fs::read(&path).unwrap());
            inputs += 1;
        }
        assert!(inputs > 0, "no seeds in {}", dir.display());
    }
}

#[test]
fn seeds_decode_to_what_they_were_built_from() {
    for (name, bytes) in decoder_seeds() {
        let event =
            fim::sensor::Event::decode(&bytes).unwrap_or_else(|| panic!("{name} does not decode"));
        assert_eq!(event.actor.tgid, 4242, "{name}");
    }
    let config = fim::config::Config::from_sources(&config::sources(&config_seeds()[0].1))
        .expect("the built-in rules as a file are valid");
    assert_eq!(config.rules.len(), fim::config::default_rule_count());
}
