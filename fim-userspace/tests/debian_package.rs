//! The Debian package (`cargo xtask package`, assembled by `xtask/src/deb.rs`, built here
//! from the test build of `fim`): lintian reports no error; installed with dpkg into a
//! throwaway root, it gives a `fim` that runs `check-config` and `scan`, manual pages `man`
//! finds, and a 0700 state directory; an upgrade over an older build keeps the store and the
//! administrator's configuration; removal keeps the store, purge removes it.
//! Needs root, dpkg, lintian and man (`cargo xtask setup` installs lintian).

#[allow(dead_code)]
#[path = "../../xtask/src/deb.rs"]
mod deb;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn build(version: &str, out: &Path) -> PathBuf {
    std::fs::create_dir_all(out).unwrap();
    deb::build(&deb::DebInputs {
        binary: Path::new(env!("CARGO_BIN_EXE_fim")),
        workspace: &Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        version,
        out_dir: out,
    })
    .unwrap_or_else(|e| panic!("building the {version} package: {e:#}"))
}

/// dpkg working on `root` instead of the running system: its own database, and maintainer
/// scripts run without chroot with DPKG_ROOT set (they honour it). `--force-depends`: the
/// throwaway root has no libc6 package to satisfy the Depends with.
fn dpkg(root: &Path) -> Command {
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        .arg(format!(
            "--admindir={}",
            root.join("var/lib/dpkg").display()
        ))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ]);
    c
}

fn changes_in(fim: &Path, db: &Path) -> usize {
    run(Command::new(fim)
        .args(["events", "--json", "--limit", "100000", "--store"])
        .arg(db))
    .lines()
    .filter(|l| l.starts_with('{'))
    .count()
}

#[test]
fn the_package_is_lintian_clean_installs_upgrades_keeping_the_store_and_purges() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg needs root");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let old = build("0.0.1~older", &out);
    let new = build(env!("CARGO_PKG_VERSION"), &out);

    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--display-info"])
        .arg(&new)
        .output()
        .unwrap_or_else(|e| panic!("cannot run lintian ({e}): run `cargo xtask setup`"));
    let report = String::from_utf8_lossy(&lintian.stdout);
    println!("lintian {}:\n{report}", new.display());
    assert!(lintian.status.success(), "lintian found errors:\n{report}");
    assert!(!report.lines().any(|l| l.starts_with("E: ")), "{report}");

    // A throwaway root with an empty dpkg database.
    let root = dir.path().join("root");
    let admin = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admin.join("info")).unwrap();
    std::fs::create_dir_all(admin.join("updates")).unwrap();
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();

    run(dpkg(&root).arg("-i").arg(&old));
    let fim = root.join("usr/bin/fim");
    let state = root.join("var/lib/fim");
    let conffile = root.join("etc/fim/fim.toml");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/fim.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/fim run\n"), "{unit}");
    for setting in ["Type=notify", "WatchdogSec=30s", "TimeoutStartSec=15min"] {
        assert!(unit.contains(&format!("\n{setting}\n")), "{unit}");
    }
    let check = run(Command::new(&fim)
        .arg("check-config")
        .arg("--config")
        .arg(&conffile));
    assert!(check.contains("configuration OK: 21 rules"), "{check}");
    let page = run(Command::new("man")
        .arg(format!(
            "--manpath={}",
            root.join("usr/share/man").display()
        ))
        .args(["-w", "fim-who"]));
    assert!(page.trim().ends_with("man1/fim-who.1.gz"), "{page}");
    assert!(
        root.join("usr/share/bash-completion/completions/fim")
            .exists()
    );
    assert!(root.join("usr/share/fim/fim-alerts.yml").exists());

    // A scan with the store in the package's state directory, twice: a baseline, then drift.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("app.conf"), "a = 1\n").unwrap();
    let config = dir.path().join("scan.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[rule]]\nname = \"t\"\npath = \"{}\"\nrecursive = true\n",
            state.display(),
            tree.display()
        ),
    )
    .unwrap();
    run(Command::new(&fim).arg("scan").arg("--config").arg(&config));
    std::fs::write(tree.join("app.conf"), "a = 2\n").unwrap();
    let drift = run(Command::new(&fim).arg("scan").arg("--config").arg(&config));
    assert!(drift.contains("modified"), "{drift}");
    let db = state.join("fim.db");
    let before = changes_in(&fim, &db);
    assert!(before >= 1, "the scan stored no change");
    // The administrator's own setting in the conffile.
    let mine = format!(
        "{}\n# local: kept across upgrades\n",
        std::fs::read_to_string(&conffile).unwrap()
    );
    std::fs::write(&conffile, &mine).unwrap();

    // Upgrade: the store and the edited conffile stay.
    run(dpkg(&root).arg("-i").arg(&new));
    let status = run(dpkg(&root).args(["-s", "fim"]));
    assert!(
        status.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{status}"
    );
    assert_eq!(
        changes_in(&fim, &db),
        before,
        "the upgrade lost stored changes"
    );
    assert_eq!(std::fs::read_to_string(&conffile).unwrap(), mine);
    let drift = run(Command::new(&fim).arg("scan").arg("--config").arg(&config));
    assert!(
        drift.contains("drift: none") || drift.contains("0 added, 0 removed, 0 modified"),
        "{drift}"
    );

    // Removal keeps the store and the configuration; purge takes both.
    run(dpkg(&root).args(["-r", "fim"]));
    assert!(!fim.exists());
    assert!(db.exists(), "removal (not purge) deleted the store");
    run(dpkg(&root).args(["-P", "fim"]));
    assert!(!state.exists(), "purge left the state directory");
    assert!(!conffile.exists(), "purge left /etc/fim/fim.toml");
}
