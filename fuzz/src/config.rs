//! The `config` target: configuration text through the real parser and validator
//! (`Config::from_sources`), then through what the daemon does with a valid configuration
//! (summary, watch roots, matching paths, pruning walks).
//!
//! The input is split at NUL bytes (never valid in TOML text) into up to four files: the main
//! file and drop-ins, so merging and duplicate names across files are exercised too. Bytes that
//! are not UTF-8 are replaced (the loader refuses such a file before parsing, with its own
//! located error).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fim::config::{Config, ConfigSource, RuleSet, line_column};

const FILES: [&str; 4] = [
    "/etc/fim/fim.toml",
    "/etc/fim/conf.d/10-a.toml",
    "/etc/fim/conf.d/20-b.toml",
    "/etc/fim/conf.d/30-c.toml",
];

/// The sources an input stands for.
pub fn sources(data: &[u8]) -> Vec<ConfigSource> {
    data.split(|&b| b == 0)
        .zip(FILES)
        .map(|(text, path)| ConfigSource {
            path: PathBuf::from(path),
            text: String::from_utf8_lossy(text).into_owned(),
        })
        .collect()
}

/// Checks one input. Panics (a fuzzer crash) when an invariant does not hold.
pub fn check(data: &[u8]) {
    let sources = sources(data);
    match Config::from_sources(&sources) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without any problem in it");
            for error in &errors.0 {
                let source = sources
                    .iter()
                    .find(|s| s.path == error.file)
                    .unwrap_or_else(|| panic!("error in an unknown file: {error}"));
                // Every problem in a text is located at a real line and column of it.
                assert!(error.line >= 1, "unlocated error: {error}");
                let lines: Vec<&str> = source.text.split('\n').collect();
                assert!(error.line <= lines.len(), "line past the end: {error}");
                let width = lines[error.line - 1].chars().count();
                assert!(
                    error.column >= 1 && error.column <= width + 1,
                    "column outside its line: {error}"
                );
                assert!(!error.message.trim().is_empty(), "empty message at {error}");
                let shown = error.to_string();
                assert!(shown.starts_with(&error.location()), "{shown}");
            }
            let _ = errors.to_string();
        }
        Ok(config) => valid(&config, &sources),
    }
    // line_column never panics and stays in range, wherever the offset falls.
    if let Some(source) = sources.first() {
        for offset in [0, data.len() / 2, data.len(), usize::MAX] {
            let (line, column) = line_column(&source.text, offset);
            assert!(line >= 1 && column >= 1);
        }
    }
}

fn valid(config: &Config, sources: &[ConfigSource]) {
    let paths: Vec<PathBuf> = sources.iter().map(|s| s.path.clone()).collect();
    assert_eq!(config.sources, paths);
    let summary = config.summary();
    assert!(
        summary.contains(&format!("{} rules", config.rules.len())),
        "{summary}"
    );
    assert!(config.state_dir.is_absolute());
    for exe in config.excluded.iter().chain(&config.authorized.exes) {
        assert!(exe.is_absolute());
    }
    rules_are_usable(&config.rules);
}

/// Paths worth asking about: each rule's literal prefix, things below it, the pattern with its
/// wildcards filled in, and a few awkward names.
fn sample_paths(rules: &RuleSet) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![
        b"/".to_vec(),
        b"/etc/passwd".to_vec(),
        b"/etc/ssh/sshd_config".to_vec(),
        b"/home/alice/.ssh/authorized_keys".to_vec(),
        b"/tmp/a\nb/\xff\xfe".to_vec(),
        b"//etc//passwd/".to_vec(),
        b"relative/path".to_vec(),
        Vec::new(),
    ];
    for rule in rules.rules().iter().take(16) {
        let prefix = rule.path.literal_prefix().as_os_str().as_bytes().to_vec();
        let filled: Vec<u8> = rule
            .path
            .as_str()
            .bytes()
            .filter(|b| !b"[]{}\\".contains(b))
            .map(|b| if b == b'*' || b == b'?' { b'x' } else { b })
            .collect();
        for tail in [&b""[..], b"/x", b"/x/y", b"/.a.swp", b"/x\n\xff"] {
            let mut p = prefix.clone();
            if p != b"/" || tail.is_empty() {
                p.extend_from_slice(tail);
            } else {
                p = tail.to_vec();
            }
            out.push(p);
            let mut f = filled.clone();
            f.extend_from_slice(tail);
            out.push(f);
        }
    }
    out
}

fn rules_are_usable(rules: &RuleSet) {
    let roots = rules.watch_roots();
    for root in &roots {
        assert!(root.path.is_absolute(), "relative root {:?}", root.path);
    }
    for path in sample_paths(rules) {
        let Some(rule) = rules.match_bytes(&path) else {
            continue;
        };
        assert!(rule.enabled, "a disabled rule matched");
        let shown = Path::new(OsStr::from_bytes(&path));
        assert!(shown.is_absolute(), "a relative path matched: {shown:?}");
        // The sensor and the scanner start from the watch roots: whatever a rule matches must
        // lie under one, within its depth.
        let normal: PathBuf = shown.components().collect();
        let root = roots
            .iter()
            .find(|root| {
                normal.strip_prefix(&root.path).is_ok_and(|rest| {
                    root.max_depth
                        .is_none_or(|depth| rest.components().count() <= depth)
                })
            })
            .unwrap_or_else(|| {
                panic!(
                    "{shown:?} matches rule {:?} ({}) but no watch root covers it: {roots:?}",
                    rule.name,
                    rule.path.as_str()
                )
            });
        // A walk from that root must reach it: every directory between is descended into.
        let mut dir = normal.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&root.path)) {
            assert!(
                rules.should_descend(d),
                "{shown:?} matches rule {:?} ({}) but a walk from {:?} does not descend into {d:?}",
                rule.name,
                rule.path.as_str(),
                root.path
            );
            dir = d.parent();
        }
    }
}
