//! The systemd unit in `dist/fim.service` is valid (`systemd-analyze verify`) and keeps the
//! settings the daemon depends on. Needs `systemd-analyze` (`cargo xtask setup` installs it).

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../dist/fim.service");

/// The value(s) of a `Key=` line, trimmed; `None` when the key is absent.
fn setting(key: &str) -> Option<String> {
    let values: Vec<&str> = UNIT
        .lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect();
    (!values.is_empty()).then(|| values.join(" "))
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // verify insists that ExecStart exists: point it at the binary this test was built with.
    let unit = UNIT.replace("/usr/local/bin/fim", env!("CARGO_BIN_EXE_fim"));
    let path = dir.path().join("fim.service");
    std::fs::write(&path, unit).expect("writing the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): run `cargo xtask setup`, which installs it")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed ({}):\n{stderr}",
        out.status
    );
    // Unknown or misspelt settings are only warnings: they must not pass either.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fim.service"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze warns about the unit:\n{stderr}"
    );
}

#[test]
fn the_unit_keeps_what_the_daemon_needs() {
    assert_eq!(
        setting("ExecStart").as_deref(),
        Some("/usr/local/bin/fim run")
    );
    assert_eq!(setting("Restart").as_deref(), Some("on-failure"));
    // fim says READY=1 after its start scan and pings the watchdog from its event loop
    // (tests/service_notify.rs); the start may take long on a big tree.
    assert_eq!(setting("Type").as_deref(), Some("notify"));
    assert_eq!(setting("WatchdogSec").as_deref(), Some("30s"));
    assert_eq!(setting("TimeoutStartSec").as_deref(), Some("15min"));
    // Only the daemon itself (the main process) notifies.
    assert_eq!(setting("NotifyAccess"), None);
    assert_eq!(setting("LimitMEMLOCK").as_deref(), Some("infinity"));
    assert_eq!(setting("ProtectSystem").as_deref(), Some("strict"));
    // Watched ssh keys live under /root and /home: readable, not hidden.
    assert_eq!(setting("ProtectHome").as_deref(), Some("read-only"));
    // Host paths from the kernel must name the same files fim opens.
    assert_eq!(setting("PrivateTmp").as_deref(), Some("no"));
    assert_eq!(setting("PrivateDevices"), None);
    assert_eq!(setting("ProtectKernelModules"), None);
    let writable = setting("ReadWritePaths").unwrap_or_default();
    for dir in ["/var/lib/fim", "/var/log/fim"] {
        assert!(writable.split(' ').any(|d| d == dir), "{dir} not writable");
    }
    let bounding = setting("CapabilityBoundingSet").unwrap_or_default();
    let mut caps: Vec<&str> = bounding.split(' ').collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "CAP_BPF",
            "CAP_DAC_READ_SEARCH",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
            "CAP_SYS_RESOURCE"
        ]
    );
    assert_eq!(
        setting("AmbientCapabilities"),
        setting("CapabilityBoundingSet")
    );
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dist/fim.service")
            .is_file()
    );
}
