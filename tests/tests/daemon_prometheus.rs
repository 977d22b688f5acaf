//! fim's metrics as a real Prometheus server sees them while the daemon runs: changes by a
//! separate process counted in `fim_events_total`, the baseline in `fim_baseline_files`.
//! Natively only: the VMs have no Prometheus (tests/daemon.rs checks the endpoint there).

use std::net::SocketAddr;
use std::time::Duration;

use fim_tests::daemon::{Daemon, START_SCAN_TIMEOUT, events, metric, wait_until, write_config};
use fim_tests::prometheus::{PrometheusServer, free_port};
use fim_tests::{require_root, run_actor};

#[test]
fn prometheus_scrapes_the_daemons_counts() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let tree = std::fs::canonicalize(dir.path()).unwrap().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"initial\n").unwrap();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let config = write_config(dir.path(), &tree, metrics);
    let output = dir.path().join("out/fim.json");
    let daemon = Daemon::start(&config);
    wait_until("the start scan", START_SCAN_TIMEOUT, || {
        metric(metrics, "fim_baseline_files") == Some(2.0)
    });
    let prometheus = PrometheusServer::start(&[metrics])
        .expect("starting Prometheus (installed by `cargo xtask setup`; this test needs it)");
    for name in ["b", "c", "d"] {
        run_actor(&["create".as_ref(), tree.join(name).as_os_str()]).expect("actor");
    }
    run_actor(&["unlink".as_ref(), tree.join("a").as_os_str()]).expect("actor");
    wait_until("four change events", Duration::from_secs(20), || {
        events(&output, &tree).len() >= 4
    });
    prometheus
        .wait_for(
            "fim_events_total{activity=\"create\"}",
            |r| r.first().is_some_and(|(_, v)| *v == 3.0),
            Duration::from_secs(20),
        )
        .expect("fim_events_total{activity=\"create\"} == 3 in Prometheus");
    prometheus
        .wait_for(
            "fim_events_total{activity=\"delete\"}",
            |r| r.first().is_some_and(|(_, v)| *v == 1.0),
            Duration::from_secs(20),
        )
        .expect("fim_events_total{activity=\"delete\"} == 1 in Prometheus");
    // The tree, b, c and d.
    prometheus
        .wait_for(
            "fim_baseline_files",
            |r| r.first().is_some_and(|(_, v)| *v == 4.0),
            Duration::from_secs(20),
        )
        .expect("fim_baseline_files == 4 in Prometheus");
    prometheus
        .wait_for(
            "fim_sensor_info",
            |r| !r.is_empty(),
            Duration::from_secs(20),
        )
        .expect("fim_sensor_info in Prometheus");
    daemon.stop();
}
