//! The daemon in this process, for end-to-end tests: started on a configuration, stopped
//! through its stop future (as SIGTERM would), and helpers to read what it produced.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fim::config::Config;
use serde_json::Value;

use crate::prometheus::http_get;

pub struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Daemon {
    pub fn start(config_file: &Path) -> Daemon {
        Daemon::start_with(config_file, None)
    }

    /// The daemon on `backend` (`None`: the best that works, as `fim run` picks).
    pub fn start_with(config_file: &Path, backend: Option<fim::sensor::Backend>) -> Daemon {
        let config = Config::load(Some(config_file)).expect("valid test configuration");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(fim::daemon::run_until(config, backend, async move {
                let _ = stopped.await;
            }))
        });
        Daemon {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Whether the daemon has already stopped (it failed to start, say); then its error.
    pub fn failed(&mut self) -> Option<String> {
        if !self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            return None;
        }
        let result = self.thread.take().unwrap().join().expect("daemon thread");
        Some(match result {
            Ok(()) => "the daemon stopped by itself".to_string(),
            Err(e) => format!("{e:#}"),
        })
    }

    pub fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let Some(thread) = self.thread.take() else {
            return;
        };
        let result = thread.join().expect("daemon thread");
        result.expect("the daemon stopped with an error");
    }
}

/// How long a daemon test waits for `fim run` to attach its sensor and finish the start
/// scan. Attaching the tracepoint backend's ~70 programs took 12 s on a loaded 2-core
/// machine, and two daemon tests start at once: generous, so a loaded machine does not fail
/// them (a daemon that never gets there still fails, only later).
pub const START_SCAN_TIMEOUT: Duration = Duration::from_secs(120);

pub fn metric(address: SocketAddr, name: &str) -> Option<f64> {
    let (status, body) = http_get(address, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every complete line of a JSON-lines output file, parsed. The daemon may be in the middle
/// of writing the last one (its buffered writer can split a line across writes): a line
/// without its newline yet is not an event yet.
pub fn json_lines(output: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(output).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("every output line is JSON"))
        .collect()
}

/// The OCSF events in the output file about paths below `tree`.
pub fn events(output: &Path, tree: &Path) -> Vec<Value> {
    let prefix = tree.to_string_lossy().into_owned();
    json_lines(output)
        .into_iter()
        .filter(|e| {
            e["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&prefix))
        })
        .collect()
}

pub fn find<'a>(events: &'a [Value], activity: i64, path: &Path) -> &'a Value {
    let path = path.to_string_lossy();
    events
        .iter()
        .find(|e| e["activity_id"] == activity && e["file"]["path"] == *path)
        .unwrap_or_else(|| panic!("no activity {activity} for {path} in {events:#?}"))
}

pub fn write_config(dir: &Path, tree: &Path, metrics: SocketAddr) -> PathBuf {
    let path = dir.join("fim.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[output]\nfile = \"{}\"\n[metrics]\naddress = \"{metrics}\"\n\n\
             [[rule]]\nname = \"tree\"\ngroup = \"daemon-test\"\npath = \"{}\"\nrecursive = true\n",
            dir.join("state").display(),
            dir.join("out/fim.json").display(),
            tree.display()
        ),
    )
    .unwrap();
    path
}
