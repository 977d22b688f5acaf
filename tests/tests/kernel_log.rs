//! The kernel side's diagnostics (fim-ebpf's diag.rs) on every backend: with
//! `SensorConfig::kernel_log` the programs with log calls load, and a path walk cut short (a
//! path longer than the kernel's 4096-byte buffer) reaches the log as a debug record with the
//! target `fim::kernel`, naming the pid that made the change. Without it the sensor loads
//! programs without a single log call: the conformance scenario of such a path checks that on
//! the shared sensors, which run without it (a sensor start is half a minute under TCG).
//!
//! Natively on the tracepoint backend; in the VMs (`cargo xtask vm-test --filter kernel_log`)
//! on lsm and fentry, where the log calls must also pass the 6.1 and 6.12 verifiers.

use std::{
    ffi::OsStr,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use fim::sensor::{Backend, SensorConfig, kernel_log::TARGET};
use fim_tests::{
    TestEnv, collect, deep_tree, run_actor, test_env, trees, watched_tree_config, with_own_sensor,
};

/// Part of the message of a record whose path was cut short (fim-ebpf's diag.rs).
const WALK_STOPPED: &str = "with a path cut short";

/// Every `fim::kernel` record this process logs, as "LEVEL message".
static CAPTURED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target() == TARGET
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}", record.level(), record.args());
            CAPTURED.lock().unwrap().push(line);
        }
    }

    fn flush(&self) {}
}

fn capture() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn captured() -> Vec<String> {
    CAPTURED.lock().unwrap().clone()
}

/// The actor makes `leaf` in `deep` (relative to its cwd there); the sensor must report it,
/// flagged truncated. Returns the actor's pid.
fn provoke(
    runtime: &tokio::runtime::Runtime,
    sensor: &mut fim::sensor::Sensor,
    deep: &Path,
    leaf: &str,
) -> u32 {
    let pid = run_actor(&[
        OsStr::new("--cwd"),
        deep.as_os_str(),
        OsStr::new("mkdir"),
        OsStr::new(leaf),
    ])
    .expect("actor");
    let events = collect(runtime, sensor, pid, 1, Duration::from_secs(20));
    assert!(
        events.iter().any(|e| e.truncated()),
        "the actor's mkdir of {leaf} was not reported truncated: {events:#?}"
    );
    pid
}

fn diagnostics_when_on(backend: Backend) {
    capture();
    let base = trees()
        .watched
        .join(format!("kernel-log-{}", backend.name()));
    std::fs::create_dir_all(&base).unwrap();
    let deep = deep_tree(&base, &"n".repeat(200), 24);
    let on = SensorConfig {
        kernel_log: true,
        ..watched_tree_config()
    };
    with_own_sensor(backend, &on, |runtime, sensor| {
        assert!(
            sensor.kernel_log_calls(),
            "the {} backend started without its log calls",
            backend.name()
        );
        let pid = provoke(runtime, sensor, &deep, "leaf");
        let wanted = format!("DEBUG pid {pid}: ");
        // The records are forwarded by a task on this runtime: let it run.
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !captured()
                .iter()
                .any(|l| l.starts_with(&wanted) && l.contains(WALK_STOPPED))
            {
                assert!(
                    Instant::now() < deadline,
                    "no diagnostic {wanted:?}...{WALK_STOPPED:?} on {} after 20 s; captured: {:#?}",
                    backend.name(),
                    captured()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    });
}

#[test]
fn kernel_log_lsm() {
    diagnostics_when_on(Backend::Lsm);
}

#[test]
fn kernel_log_fentry() {
    diagnostics_when_on(Backend::Fentry);
}

/// Natively only: in the VMs a start of the tracepoint backend with its log calls takes one to
/// several minutes under TCG (its many programs, each verified with the log calls), too much
/// for every test run. Its programs passed the 6.1 verifier with them when this test last ran
/// there, and should one refuse them, fim runs the backend without (`sensor::start`).
#[test]
fn kernel_log_tracepoint() {
    if test_env() == TestEnv::Vm {
        eprintln!("kernel_log_tracepoint runs natively only (minutes under TCG)");
        return;
    }
    diagnostics_when_on(Backend::Tracepoint);
}
