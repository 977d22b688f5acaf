//! `fim check-config` and `fim scan` as a user runs them (no root, temporary directories).

use std::path::Path;
use std::process::{Command, Output};

fn fim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running fim")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(dir: &Path, tree: &Path) -> String {
    let path = dir.join("fim.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n\n[[rule]]\nname = \"tree\"\ngroup = \"test\"\npath = \"{}\"\nrecursive = true\n",
            dir.join("state").display(),
            tree.display()
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_config_exits_78_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("fim.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = \"a\"\npath = \"etc\"\n[metrics]\naddress = \"nope\"\n",
    )
    .unwrap();
    let out = fim(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with(&format!(
        "{}:3:8: path \"etc\" is not absolute",
        bad.display()
    )));
    assert!(lines[1].starts_with(&format!("{}:5:11: metrics address \"nope\"", bad.display())));
    assert!(out.stdout.is_empty());
}

#[test]
fn check_config_summarises_a_valid_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), dir.path());
    let out = fim(&["check-config", "--config", &config]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("configuration OK: 1 rules, 1 enabled ({config})\n")
    );
}

#[test]
fn scan_creates_the_baseline_then_reports_drift() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"one").unwrap();
    std::fs::write(tree.join("gone"), b"x").unwrap();
    let config = write_config(dir.path(), &tree);

    let first = fim(&["scan", "--config", &config]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let stdout = text(&first.stdout);
    assert!(
        stdout.starts_with("baseline: 3 entries (2 hashed, 0 unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("drift: none (first scan, baseline created)"),
        "{stdout}"
    );
    assert!(dir.path().join("state/fim.db").exists());

    std::fs::write(tree.join("a"), b"one two").unwrap();
    std::fs::remove_file(tree.join("gone")).unwrap();
    std::fs::write(tree.join("new\nline"), b"n").unwrap();
    let second = fim(&["scan", "--config", &config, "--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let drift: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(drift["first_scan"], false);
    assert_eq!(
        drift["added"][0]["path"],
        format!("{}/new\nline", tree.display())
    );
    assert_eq!(
        drift["removed"][0]["path"],
        format!("{}/gone", tree.display())
    );
    let modified = drift["modified"].as_array().unwrap();
    assert_eq!(modified.len(), 1);
    assert_eq!(
        modified[0]["changed"],
        serde_json::json!(["content", "size"])
    );
    assert_eq!(modified[0]["previous"]["size"], 3);

    // The drift was recorded as changes (attribution unknown) and the baseline replaced.
    let store = fim::store::Store::open_read_only(&dir.path().join("state/fim.db")).unwrap();
    let rows = store
        .query("SELECT ChangeCategory, RuleName, Backend FROM ConfigurationChange ORDER BY ChangeCategory")
        .unwrap();
    assert_eq!(rows.rows.len(), 3);
    let third = fim(&["scan", "--config", &config]);
    let stdout = text(&third.stdout);
    assert!(
        stdout.contains("drift: 0 added, 0 removed, 0 modified"),
        "{stdout}"
    );
    assert!(stdout.contains("(0 hashed, 2 unchanged"), "{stdout}");
}

#[test]
fn scan_applies_store_retention() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let config = write_config(dir.path(), &tree);
    let mut text = std::fs::read_to_string(&config).unwrap();
    // The longest retention must not overflow the cutoff computation.
    text = text.replacen(
        "\n\n",
        "\n[store]\nmax_changes = 1\nretention_days = 4294967295\n\n",
        1,
    );
    std::fs::write(&config, text).unwrap();
    assert!(fim(&["scan", "--config", &config]).status.success());
    for name in ["a", "b", "c"] {
        std::fs::write(tree.join(name), name).unwrap();
    }
    assert!(fim(&["scan", "--config", &config]).status.success());
    let store = fim::store::Store::open_read_only(&dir.path().join("state/fim.db")).unwrap();
    let rows = store.query("SELECT path FROM changes").unwrap().rows;
    assert_eq!(rows.len(), 1, "three additions, one kept: {rows:?}");
    let health = store.query("SELECT kind FROM health").unwrap().rows;
    assert_eq!(health.len(), 1);
}

#[test]
fn run_with_a_malformed_configuration_exits_78_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("fim.toml");
    let state = dir.path().join("state");
    std::fs::write(
        &bad,
        format!(
            "state_dir = \"{}\"\nunknown_key = 1\n[[rule]]\nname = \"a\"\npath = \"/etc\"\n",
            state.display()
        ),
    )
    .unwrap();
    let out = fim(&["run", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("{}:2:1:", bad.display())),
        "{}",
        text(&out.stderr)
    );
    // Nothing started: no store was created, nothing was printed.
    assert!(!state.exists());
    assert!(out.stdout.is_empty());
}

/// The attack the baseline's MACs are for: a file replaced while fim is not running, and its
/// stored hash rewritten to match. The next scan raises the integrity alert naming the path,
/// drops the forged row and reports the file as found, and `fim status` shows the alert.
#[test]
fn a_baseline_edited_offline_raises_the_integrity_alert() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("sshd"), b"genuine").unwrap();
    std::fs::write(tree.join("other"), b"fine").unwrap();
    let config = write_config(dir.path(), &tree);
    let first = fim(&["scan", "--config", &config]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));

    std::fs::write(tree.join("sshd"), b"trojan!").unwrap();
    let db = dir.path().join("state/fim.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let meta = std::fs::metadata(tree.join("sshd")).unwrap();
        use std::os::unix::fs::MetadataExt;
        conn.execute_batch("DROP TRIGGER baseline_set_update")
            .unwrap();
        conn.execute(
            "UPDATE baseline SET blake3 = ?1, size = ?2, mtime = ?3, ctime = ?4 WHERE path = ?5",
            rusqlite::params![
                blake3::hash(b"trojan!").to_hex().as_str(),
                meta.len() as i64,
                meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                tree.join("sshd").to_str().unwrap().as_bytes(),
            ],
        )
        .unwrap();
    }
    let second = fim(&["scan", "--config", &config, "--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let stderr = text(&second.stderr);
    assert!(stderr.contains("BASELINE INTEGRITY ALERT"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/sshd", tree.display())),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["integrity"]["alert"], true, "{report:#}");
    // Without a row to compare with, the file is reported as found, with its real hash.
    assert_eq!(
        report["added"][0]["path"],
        format!("{}/sshd", tree.display()),
        "{report:#}"
    );
    assert_eq!(report["modified"].as_array().unwrap().len(), 0);

    let status = fim(&["status", "--config", &config]);
    let stdout = text(&status.stdout);
    assert!(stdout.contains("INTEGRITY ALERT"), "{stdout}");
    assert!(stdout.contains("1 of 3 baseline rows fail"), "{stdout}");
    // The next scan is clean again.
    let third = fim(&["scan", "--config", &config, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    assert_eq!(report["integrity"]["alert"], false, "{report:#}");
}
