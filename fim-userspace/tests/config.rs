//! Configuration loading, validation (each error at its exact file:line:col), default rules,
//! rule matching and watch roots.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fim::config::{Config, ConfigSource, Output, PathType, WatchRoot, default_rule_count};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

fn sources(files: &[(&str, &str)]) -> Vec<ConfigSource> {
    files
        .iter()
        .map(|(path, text)| ConfigSource {
            path: PathBuf::from(path),
            text: text.to_string(),
        })
        .collect()
}

/// The rendered errors of loading these files (panics if loading succeeds).
fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match Config::from_sources(&sources(files)) {
        Ok(_) => panic!("configuration unexpectedly valid: {files:?}"),
        Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn config(files: &[(&str, &str)]) -> Config {
    Config::from_sources(&sources(files)).unwrap_or_else(|e| panic!("{e}"))
}

const RULE: &str = "[[rule]]\nname = \"a\"\npath = \"/etc\"\n";

#[test]
fn fixture_loads_with_drop_ins_merged_in_name_order() {
    let config =
        Config::load(Some(&fixture_dir().join("fim.toml"))).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.state_dir, Path::new("/var/lib/fim-test"));
    assert_eq!(
        config.output,
        Output::File {
            path: PathBuf::from("/var/log/fim/events.jsonl"),
            max_size_bytes: 50 << 20,
            keep: 3
        }
    );
    // 20-metrics.toml overrides the main file.
    assert_eq!(
        config.metrics_address,
        "[::1]:9801".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.hashing.max_file_size, 1 << 20);
    assert_eq!(config.hashing.scan_bytes_per_sec, 0);
    assert_eq!(config.store.retention_days, 30);
    assert_eq!(config.store.max_changes, 5000);
    assert_eq!(config.store.content_max_size, 1024);
    assert_eq!(
        config.authorized.exes,
        vec![PathBuf::from("/usr/bin/puppet")]
    );
    assert!(config.authorized.package_managers);
    assert_eq!(
        config.excluded,
        vec![PathBuf::from("/usr/sbin/backup-agent")]
    );
    let names: Vec<&str> = config
        .rules
        .rules()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["etc", "sshd", "old", "authorized-keys"]);
    let sshd = &config.rules.rules()[1];
    assert_eq!(sshd.path_type, PathType::File);
    assert!(sshd.upload_content && sshd.enabled && !sshd.recursive);
    assert!(!config.rules.rules()[2].enabled);
    // The README in conf.d is not a *.toml file and is not read.
    assert_eq!(config.sources.len(), 3);
    assert_eq!(
        config.summary(),
        format!(
            "configuration OK: 4 rules, 3 enabled ({}, {}, {})",
            fixture_dir().join("fim.toml").display(),
            fixture_dir().join("conf.d/10-keys.toml").display(),
            fixture_dir().join("conf.d/20-metrics.toml").display()
        )
    );
}

#[test]
fn defaults_apply_to_omitted_keys() {
    let config = config(&[("/c/fim.toml", RULE)]);
    assert_eq!(config.state_dir, Path::new("/var/lib/fim"));
    assert_eq!(config.output, Output::Stdout);
    assert_eq!(
        config.metrics_address,
        "127.0.0.1:9717".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(config.hashing.max_file_size, 1 << 30);
    assert_eq!(config.store.content_max_size, 5 << 20);
    let rule = &config.rules.rules()[0];
    assert_eq!(rule.group, "default");
    assert_eq!(rule.path_type, PathType::Folder);
    assert!(rule.enabled && !rule.recursive && !rule.upload_content);
    // A configuration file replaces the built-in rules entirely.
    assert_eq!(config.rules.len(), 1);
}

#[test]
fn an_explicit_config_path_must_exist() {
    let missing = fixture_dir().join("no-such-file.toml");
    let errors = Config::load(Some(&missing)).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    let message = errors.to_string();
    assert!(
        message.starts_with(&format!("{}: cannot read:", missing.display())),
        "{message}"
    );
}

#[test]
fn no_file_at_all_means_the_builtin_rules() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("fim.toml");
    let config = Config::load_default_location(&main).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.sources.is_empty());
    assert_eq!(config.rules.len(), default_rule_count());
    assert!(config.summary().contains("built-in defaults"));

    // A drop-in alone is a configuration: its rules replace the defaults.
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(dir.path().join("conf.d/x.toml"), RULE).unwrap();
    let config = Config::load_default_location(&main).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.rules.len(), 1);
    assert_eq!(config.sources, [dir.path().join("conf.d/x.toml")]);
}

#[test]
fn syntax_error_is_located() {
    assert_eq!(
        errors(&[("/c/fim.toml", "state_dir = \"/x\"\n[[rule]\nname = \"a\"\n")]),
        ["/c/fim.toml:2:8: unclosed array table, expected `]`"]
    );
}

#[test]
fn unknown_keys_are_errors_at_the_key() {
    let got = errors(&[("/c/fim.toml", "colour = \"red\"\n")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("/c/fim.toml:1:1: unknown field `colour`"),
        "{got:?}"
    );
    let got = errors(&[(
        "/c/fim.toml",
        "[[rule]]\nname = \"a\"\npath = \"/etc\"\n  recurse = true\n",
    )]);
    assert!(
        got[0].starts_with("/c/fim.toml:4:3: unknown field `recurse`"),
        "{got:?}"
    );
    let got = errors(&[("/c/fim.toml", "[metrics]\nport = 1\n")]);
    assert!(
        got[0].starts_with("/c/fim.toml:2:1: unknown field `port`"),
        "{got:?}"
    );
}

#[test]
fn wrong_value_type_is_located_at_the_value() {
    let got = errors(&[(
        "/c/fim.toml",
        "[[rule]]\nname = \"a\"\npath = \"/etc\"\nrecursive = \"yes\"\n",
    )]);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("/c/fim.toml:4:13: "), "{got:?}");
}

#[test]
fn relative_rule_path_is_located_at_the_value() {
    assert_eq!(
        errors(&[(
            "/c/fim.toml",
            "[[rule]]\nname = \"a\"\npath = \"etc/passwd\"\n"
        )]),
        ["/c/fim.toml:3:8: path \"etc/passwd\" is not absolute (it must start with '/')"]
    );
}

#[test]
fn empty_rule_name_is_located() {
    assert_eq!(
        errors(&[("/c/fim.toml", "[[rule]]\nname = \"  \"\npath = \"/etc\"\n")]),
        ["/c/fim.toml:2:8: rule name is empty"]
    );
}

#[test]
fn duplicate_rule_name_across_files_points_at_both() {
    assert_eq!(
        errors(&[
            ("/c/fim.toml", RULE),
            (
                "/c/conf.d/10.toml",
                "\n[[rule]]\nname = \"a\"\npath = \"/usr\"\n"
            ),
        ]),
        ["/c/conf.d/10.toml:3:8: duplicate rule name \"a\" (first defined at /c/fim.toml:2:8)"]
    );
}

#[test]
fn invalid_glob_is_located() {
    let got = errors(&[(
        "/c/fim.toml",
        "[[rule]]\nname = \"a\"\npath = \"/etc/[abc\"\n",
    )]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("/c/fim.toml:3:8: invalid glob \"/etc/[abc\": "),
        "{got:?}"
    );
    let got = errors(&[(
        "/c/fim.toml",
        "[[rule]]\nname = \"a\"\npath = \"/etc\"\nignore = [\"*.swp\", \"{a\"]\n",
    )]);
    assert!(
        got[0].starts_with("/c/fim.toml:4:20: invalid glob \"{a\": "),
        "{got:?}"
    );
}

#[test]
fn unknown_path_type_is_located() {
    assert_eq!(
        errors(&[(
            "/c/fim.toml",
            "[[rule]]\nname = \"a\"\npath = \"/etc\"\npath_type = \"dir\"\n"
        )]),
        ["/c/fim.toml:4:13: unknown path_type \"dir\" (expected \"file\" or \"folder\")"]
    );
}

#[test]
fn recursive_file_rule_is_located() {
    assert_eq!(
        errors(&[(
            "/c/fim.toml",
            "[[rule]]\nname = \"a\"\npath = \"/etc/passwd\"\npath_type = \"file\"\nrecursive = true\n"
        )]),
        ["/c/fim.toml:5:13: recursive applies only to rules with path_type = \"folder\""]
    );
}

#[test]
fn bad_metrics_address_is_located() {
    let got = errors(&[("/c/fim.toml", "[metrics]\naddress = \"localhost:9717\"\n")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with(
            "/c/fim.toml:2:11: metrics address \"localhost:9717\" is not an IP:port address"
        ),
        "{got:?}"
    );
}

#[test]
fn other_settings_are_validated() {
    let got = errors(&[(
        "/c/fim.toml",
        "state_dir = \"var/lib\"\nexcluded = [\"backup\"]\n[output]\nkeep = 2\n[[authorized]]\n",
    )]);
    assert_eq!(
        got,
        [
            "/c/fim.toml:1:13: state_dir \"var/lib\" is not absolute (it must start with '/')",
            "/c/fim.toml:2:13: excluded exe \"backup\" is not absolute (it must start with '/')",
            "/c/fim.toml:4:8: max_size_mb and keep apply only with an output `file`",
            "/c/fim.toml:5:1: an [[authorized]] entry needs exactly one of `exe` or `package_managers`",
        ]
    );
}

#[test]
fn every_error_of_every_file_is_reported() {
    let got = errors(&[
        (
            "/c/fim.toml",
            "[[rule]]\nname = \"\"\npath = \"rel\"\npath_type = \"x\"\n",
        ),
        ("/c/conf.d/a.toml", "oops"),
    ]);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(got[0].starts_with("/c/fim.toml:2:8: "));
    assert!(got[1].starts_with("/c/fim.toml:3:8: "));
    assert!(got[2].starts_with("/c/fim.toml:4:13: "));
    assert!(got[3].starts_with("/c/conf.d/a.toml:1:"));
}

#[test]
fn non_utf8_file_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fim.toml");
    std::fs::write(&path, b"state_dir = \"/x\"\nname = \"\xff\"\n").unwrap();
    let errors = Config::load(Some(&path)).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!("{}:2:9: the file is not valid UTF-8", path.display())
    );
}

#[test]
fn default_rules_cover_the_usual_places_in_sensible_groups() {
    let config = Config::builtin();
    let rules = &config.rules;
    assert_eq!(
        rules.len(),
        default_rule_count(),
        "a default rule failed to compile"
    );
    let group_of = |path: &str| rules.match_path(path).map(|r| r.group.as_str());
    for (path, group) in [
        ("/etc/hosts", "config"),
        ("/etc/systemd/system/evil.service", "config"),
        ("/bin/ls", "system-binaries"),
        ("/sbin/init", "system-binaries"),
        ("/usr/bin/sudo", "system-binaries"),
        ("/usr/sbin/sshd", "system-binaries"),
        ("/usr/lib/systemd/system/ssh.service", "system-binaries"),
        ("/boot/vmlinuz-6.1.0", "boot"),
        ("/boot/grub/grub.cfg", "boot"),
        ("/etc/crontab", "scheduler"),
        ("/etc/cron.d/backdoor", "scheduler"),
        ("/etc/cron.daily/logrotate", "scheduler"),
        ("/var/spool/cron/crontabs/root", "scheduler"),
        ("/root/.ssh/authorized_keys", "ssh"),
        ("/home/alice/.ssh/authorized_keys", "ssh"),
        ("/etc/ssh/sshd_config", "ssh"),
        ("/etc/passwd", "auth"),
        ("/etc/shadow", "auth"),
        ("/etc/sudoers", "auth"),
        ("/etc/sudoers.d/90-cloud", "auth"),
        ("/etc/pam.d/sshd", "auth"),
        ("/etc/security/limits.conf", "auth"),
        ("/etc/ld.so.conf", "linker"),
        ("/etc/ld.so.conf.d/libc.conf", "linker"),
        ("/etc/ld.so.preload", "linker"),
    ] {
        assert_eq!(group_of(path), Some(group), "{path}");
    }
    for unwatched in [
        "/home/alice/notes.txt",
        "/home/alice/.ssh/id_ed25519",
        "/var/log/syslog",
        "/tmp/x",
        "/etc/adjtime",
    ] {
        assert_eq!(group_of(unwatched), None, "{unwatched}");
    }
    let roots = rules.watch_roots();
    let root = |p: &str, d: Option<usize>| WatchRoot {
        path: PathBuf::from(p),
        max_depth: d,
    };
    assert_eq!(
        roots,
        [
            root("/bin", None),
            root("/boot", None),
            root("/etc", None),
            root("/home", Some(3)),
            root("/root/.ssh", None),
            root("/sbin", None),
            root("/usr/bin", None),
            root("/usr/lib/systemd", None),
            root("/usr/sbin", None),
            root("/var/spool/cron", None),
        ]
    );
}

/// The rules most tests below match against.
fn matching_rules() -> Config {
    config(&[(
        "/c/fim.toml",
        r#"
[[rule]]
name = "etc"
path = "/etc"
recursive = true
ignore = ["*.swp", "/etc/skip", "/etc/**/cache"]

[[rule]]
name = "ssh"
path = "/etc/ssh"
recursive = true

[[rule]]
name = "sshd"
path = "/etc/ssh/sshd_config"
path_type = "file"

[[rule]]
name = "flat"
path = "/srv/flat"

[[rule]]
name = "keys"
path = "/home/*/.ssh/authorized_keys"
path_type = "file"

[[rule]]
name = "cron"
path = "/var/cron.*"
recursive = true

[[rule]]
name = "deep"
path = "/data/**/secret"
path_type = "file"

[[rule]]
name = "off"
path = "/opt"
recursive = true
enabled = false
"#,
    )])
}

fn rule_for(config: &Config, path: &[u8]) -> Option<String> {
    config
        .rules
        .match_path(OsStr::from_bytes(path))
        .map(|r| r.name.clone())
}

#[test]
fn the_most_specific_enabled_rule_wins() {
    let c = matching_rules();
    assert_eq!(rule_for(&c, b"/etc/hosts").as_deref(), Some("etc"));
    assert_eq!(rule_for(&c, b"/etc").as_deref(), Some("etc"));
    assert_eq!(rule_for(&c, b"/etc/ssh/ssh_config").as_deref(), Some("ssh"));
    assert_eq!(rule_for(&c, b"/etc/ssh").as_deref(), Some("ssh"));
    assert_eq!(
        rule_for(&c, b"/etc/ssh/sshd_config").as_deref(),
        Some("sshd")
    );
    // A sibling whose name starts the same is not inside /etc/ssh.
    assert_eq!(rule_for(&c, b"/etc/sshd").as_deref(), Some("etc"));
    assert_eq!(
        rule_for(&c, b"/opt/app").as_deref(),
        None,
        "disabled rules never match"
    );
    assert_eq!(rule_for(&c, b"/usr/bin/ls"), None);
    assert_eq!(rule_for(&c, b"relative/etc/hosts"), None);
    // Repeated and trailing slashes do not defeat a rule.
    assert_eq!(
        rule_for(&c, b"//etc//ssh/sshd_config/").as_deref(),
        Some("sshd")
    );
}

#[test]
fn recursion_and_path_type_are_honoured() {
    let c = matching_rules();
    assert_eq!(rule_for(&c, b"/srv/flat").as_deref(), Some("flat"));
    assert_eq!(rule_for(&c, b"/srv/flat/a").as_deref(), Some("flat"));
    assert_eq!(rule_for(&c, b"/srv/flat/sub/a"), None, "not recursive");
    assert_eq!(rule_for(&c, b"/etc/a/b/c/d").as_deref(), Some("etc"));
    assert_eq!(
        rule_for(&c, b"/etc/ssh/sshd_config/x").as_deref(),
        Some("ssh"),
        "file rules match only the file"
    );
}

#[test]
fn globs_match_one_component_and_double_star_many() {
    let c = matching_rules();
    assert_eq!(
        rule_for(&c, b"/home/alice/.ssh/authorized_keys").as_deref(),
        Some("keys")
    );
    assert_eq!(rule_for(&c, b"/home/alice/.ssh/id_rsa"), None);
    assert_eq!(
        rule_for(&c, b"/home/a/b/.ssh/authorized_keys"),
        None,
        "* does not cross '/'"
    );
    assert_eq!(rule_for(&c, b"/var/cron.d/x/y").as_deref(), Some("cron"));
    assert_eq!(rule_for(&c, b"/var/cronx"), None);
    assert_eq!(rule_for(&c, b"/data/secret").as_deref(), Some("deep"));
    assert_eq!(rule_for(&c, b"/data/a/b/c/secret").as_deref(), Some("deep"));
    assert_eq!(rule_for(&c, b"/data/a/secret2"), None);
}

#[test]
fn ignore_patterns_cover_names_paths_and_whole_directories() {
    let c = matching_rules();
    assert_eq!(rule_for(&c, b"/etc/.passwd.swp"), None);
    assert_eq!(rule_for(&c, b"/etc/skip"), None);
    assert_eq!(
        rule_for(&c, b"/etc/skip/inside/file"),
        None,
        "an ignored directory's contents"
    );
    assert_eq!(rule_for(&c, b"/etc/skipped").as_deref(), Some("etc"));
    assert_eq!(rule_for(&c, b"/etc/app/cache/x").as_deref(), None);
    // Ignores belong to their rule: the ssh rule has none.
    assert_eq!(rule_for(&c, b"/etc/ssh/a.swp").as_deref(), Some("ssh"));
}

#[test]
fn invalid_utf8_and_newlines_in_names_cannot_escape_rules() {
    let c = matching_rules();
    assert_eq!(rule_for(&c, b"/etc/\xff\xfe\n").as_deref(), Some("etc"));
    assert_eq!(
        rule_for(&c, b"/home/\xffevil\n/.ssh/authorized_keys").as_deref(),
        Some("keys")
    );
    assert_eq!(
        rule_for(&c, b"/data/a\nb/\xc3(/secret").as_deref(),
        Some("deep")
    );
    assert_eq!(rule_for(&c, b"/var/cron.\n/x").as_deref(), Some("cron"));
    // ...and cannot sneak past an ignore either way.
    assert_eq!(rule_for(&c, b"/etc/x\n.swp"), None);
    assert_eq!(rule_for(&c, b"/etc/x.swp\n").as_deref(), Some("etc"));
    assert_eq!(rule_for(&c, b"/etc/\xff/cache/y"), None);
}

#[test]
fn should_descend_prunes_walks() {
    let c = matching_rules();
    let r = &c.rules;
    assert!(r.should_descend("/"));
    assert!(r.should_descend("/home"));
    assert!(r.should_descend("/home/alice"));
    assert!(r.should_descend("/home/alice/.ssh"));
    assert!(!r.should_descend("/home/alice/Documents"));
    assert!(!r.should_descend("/home/alice/.ssh/authorized_keys"));
    assert!(r.should_descend("/srv/flat"));
    assert!(!r.should_descend("/srv/flat/sub"));
    assert!(
        !r.should_descend("/etc/skip"),
        "ignored directories are not walked"
    );
    assert!(r.should_descend("/data/x/y"));
    assert!(!r.should_descend("/opt"), "disabled rule");
    assert!(!r.should_descend("/usr"));
}

#[test]
fn watch_roots_are_minimal() {
    let c = matching_rules();
    let root = |p: &str, d: Option<usize>| WatchRoot {
        path: PathBuf::from(p),
        max_depth: d,
    };
    assert_eq!(
        c.rules.watch_roots(),
        [
            root("/data", None),
            root("/etc", None),
            root("/home", Some(3)),
            root("/srv/flat", Some(1)),
            root("/var", None),
        ]
    );
}

#[test]
fn the_ring_buffer_size_is_a_power_of_two_in_kib() {
    assert_eq!(config(&[("/f.toml", RULE)]).ring_buffer_bytes, 8 << 20);
    let small = format!("{RULE}[sensor]\nring_buffer_kib = 4\n");
    assert_eq!(config(&[("/f.toml", &small)]).ring_buffer_bytes, 4096);
    for bad in ["3", "6", "0", "2097152"] {
        let text = format!("{RULE}[sensor]\nring_buffer_kib = {bad}\n");
        let errors = errors(&[("/f.toml", &text)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("/f.toml:5:19: ring_buffer_kib must be a power of two"),
            "{errors:?}"
        );
    }
}

#[test]
fn the_scan_interval_is_a_duration_with_a_random_spread() {
    use std::time::Duration;
    const H: u64 = 3600;
    // Default: every 12 hours, spread a tenth of that, at most an hour.
    let default = config(&[("/f.toml", RULE)]).scan;
    assert_eq!(default.interval, Some(Duration::from_secs(12 * H)));
    assert_eq!(default.spread, Duration::from_secs(H));
    let with = |scan: &str| {
        let text = format!("{RULE}[scan]\n{scan}\n");
        config(&[("/f.toml", &text)]).scan
    };
    let short = with("interval = \"30m\"");
    assert_eq!(short.interval, Some(Duration::from_secs(1800)));
    assert_eq!(short.spread, Duration::from_secs(180));
    let exact = with("interval = \"2s\"\nspread = \"0\"");
    assert_eq!(exact.interval, Some(Duration::from_secs(2)));
    assert_eq!(exact.spread, Duration::ZERO);
    assert_eq!(
        with("interval = \"1h30m\"\nspread = \"5m\"").spread,
        Duration::from_secs(300)
    );
    // "0" (or 0) turns scheduled scans off.
    for off in ["interval = \"0\"", "interval = 0", "interval = \"0s\""] {
        assert_eq!(with(off).interval, None, "{off}");
    }
    // A drop-in overrides the interval; the default spread follows it.
    let merged = config(&[
        ("/c/fim.toml", &format!("{RULE}[scan]\ninterval = \"1h\"\n")),
        ("/c/conf.d/a.toml", "[scan]\ninterval = \"10m\"\n"),
    ])
    .scan;
    assert_eq!(merged.interval, Some(Duration::from_secs(600)));
    assert_eq!(merged.spread, Duration::from_secs(60));
}

#[test]
fn bad_scan_settings_are_located() {
    let at = |scan: &str| {
        let text = format!("{RULE}[scan]\n{scan}\n");
        errors(&[("/f.toml", &text)])
    };
    assert_eq!(
        at("interval = \"12x\""),
        [
            "/f.toml:5:12: [scan] interval \"12x\": unknown unit 'x' (use s, m, h or d, e.g. \
             \"12h\" or \"1h30m\")"
        ]
    );
    assert_eq!(
        at("interval = 12"),
        ["/f.toml:5:12: [scan] interval 12: no unit (write a string such as \"12s\" or \"12h\")"]
    );
    assert_eq!(
        at("interval = \"\""),
        ["/f.toml:5:12: [scan] interval \"\": empty"]
    );
    assert_eq!(
        at("interval = true"),
        ["/f.toml:5:12: [scan] interval must be a duration string such as \"12h\", not a boolean"]
    );
    assert_eq!(
        at("interval = \"400d\""),
        ["/f.toml:5:12: [scan] interval is longer than 366d"]
    );
    assert_eq!(
        at("spread = \"1h-\""),
        ["/f.toml:5:10: [scan] spread \"1h-\": expected a number at \"-\""]
    );
    assert_eq!(
        at("interval = \"1h\"\nspread = \"2h\""),
        ["/f.toml:6:10: [scan] spread 2h is longer than the interval 1h"]
    );
    assert_eq!(
        at("every = \"1h\"")[0].split(": ").next(),
        Some("/f.toml:5:1")
    );
}
