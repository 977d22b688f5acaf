//! End-to-end proof of the sensor plumbing for each backend: load, attach, self-test, and a
//! record of a separate process's unlink arriving with that process's pid.

use std::time::Duration;

use fim::sensor::{self, Backend};
use fim_common::EventKind;
use fim_tests::{TempDir, TestEnv, require_root, required_backends, run_actor, runtime, test_env};

/// Checks one backend: where it is required it must work end to end; elsewhere it must
/// either work or fail with a reason that names what failed and on which kernel.
fn check_backend(backend: Backend) {
    require_root();
    let required = required_backends().contains(&backend);
    runtime().block_on(async {
        let mut sensor = match sensor::start(backend).await {
            Ok(sensor) => sensor,
            Err(error) => {
                let message = format!("{error:#}");
                assert!(
                    !required,
                    "the {} backend must work in {:?} but failed: {message}",
                    backend.name(),
                    test_env()
                );
                eprintln!(
                    "NOTE: the {} backend is unavailable here, as expected: {message}",
                    backend.name()
                );
                assert!(
                    message.contains(backend.name()),
                    "failure does not name the backend: {message}"
                );
                assert!(
                    message.contains(&fim::host::kernel_release()),
                    "failure does not name the kernel: {message}"
                );
                return;
            }
        };
        let dir = TempDir::new(backend.name()).unwrap();
        let file = dir.path.join("victim");
        std::fs::write(&file, b"x").unwrap();
        let actor = run_actor(&["unlinkat", file.to_str().unwrap()]).unwrap();
        let seen = fim_tests::wait_for_record(&mut sensor, Duration::from_secs(10), |r| {
            r.actor.tgid == actor.pid && r.event_kind() == Some(EventKind::Unlink)
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e:#}", backend.name()));
        let record = seen.iter().find(|r| r.actor.tgid == actor.pid).unwrap();
        assert_eq!(record.backend(), Some(backend));
        assert_eq!(record.actor.uid, 0);
        let comm_len = record.actor.comm.iter().position(|&b| b == 0).unwrap_or(16);
        assert_eq!(
            &record.actor.comm[..comm_len],
            b"fim-test-actor",
            "comm of the actor"
        );
        assert_eq!(
            sensor.lost_events().unwrap(),
            0,
            "records were lost in a one-event test"
        );
    });
}

#[test]
fn lsm_backend_reports_unlink_with_actor_pid() {
    check_backend(Backend::Lsm);
}

#[test]
fn fentry_backend_reports_unlink_with_actor_pid() {
    check_backend(Backend::Fentry);
}

#[test]
fn tracepoint_backend_reports_unlink_with_actor_pid() {
    check_backend(Backend::Tracepoint);
}

/// In the VMs the kernel is booted with `bpf` in `lsm=`; if that ever silently stops being
/// true the LSM results above would be meaningless, so it is asserted on its own.
#[test]
fn bpf_lsm_is_active_in_the_vm() {
    require_root();
    let lsms = fim::host::active_lsms().expect("reading /sys/kernel/security/lsm");
    eprintln!("active LSMs: {}", lsms.join(","));
    if test_env() == TestEnv::Vm {
        assert!(
            lsms.iter().any(|l| l == "bpf"),
            "bpf missing from the VM's LSM list: {lsms:?}"
        );
    }
}
