//! The Prometheus alert rules fim ships (`dist/fim-alerts.yml`) are valid (`promtool check
//! rules`), pass their unit tests (`promtool test rules tests/alerts/fim-alerts.test.yml`:
//! each alert fires on the series that mean trouble and stays quiet on a healthy fim), and
//! only use metrics fim exports. Needs promtool (Debian's prometheus package, which `cargo
//! xtask setup` installs).

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run `cargo xtask setup`, which installs prometheus")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules() {
    let text = promtool(&["check", "rules", "dist/fim-alerts.yml"], &manifest());
    assert!(text.contains("SUCCESS: 9 rules found"), "{text}");
}

#[test]
fn promtool_unit_tests_pass() {
    let text = promtool(
        &["test", "rules", "fim-alerts.test.yml"],
        &manifest().join("tests/alerts"),
    );
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_is_unit_tested_and_uses_metrics_fim_exports() {
    let rules = std::fs::read_to_string(manifest().join("dist/fim-alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(manifest().join("tests/alerts/fim-alerts.test.yml")).unwrap();
    // What a running fim exports once a sensor backend runs (which also starts its loss
    // counter at zero).
    let metrics = fim::metrics::Metrics::new();
    metrics.sensor("tracepoint");
    let exported = metrics.encode();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    for alert in &alerts {
        let firing = tests
            .split("alertname: ")
            .skip(1)
            .filter(|t| t.starts_with(alert))
            .any(|t| {
                t.split("eval_time")
                    .next()
                    .unwrap_or("")
                    .contains("exp_labels")
            });
        assert!(firing, "{alert} has no unit test in which it fires");
    }
    // Every fim_* name an expression uses is in the exposition (a renamed metric would make
    // its alert silently never fire).
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("fim_") {
            // A family without series yet (no backend has lost anything) has its TYPE line,
            // which names a counter without `_total`.
            let family = word.strip_suffix("_total").unwrap_or(word);
            assert!(
                exported
                    .lines()
                    .any(|l| l.starts_with(&format!("# TYPE {family} ")) || l.starts_with(word)),
                "{word} is used by an alert but fim does not export it:\n{exported}"
            );
        }
    }
}
