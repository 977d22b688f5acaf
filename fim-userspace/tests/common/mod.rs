//! Helpers the tests that run `fim run` as a separate process share.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Fails unless the test runs as root: it starts `fim run`, which loads eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test starts `fim run`, which loads eBPF programs: run it as root (euid {euid})"
    );
}

/// Waits until the fim with this pid has finished its start scan (a `scan` health row after
/// its `start` row).
pub fn wait_for_start_scan(db: &Path, pid: u32, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done = rusqlite::Connection::open(db).ok().and_then(|conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM health WHERE kind = 'scan'
                    AND id > (SELECT max(id) FROM health WHERE kind = 'start'
                              AND detail LIKE ?1))",
                [format!("% pid {pid} %")],
                |r| r.get::<_, bool>(0),
            )
            .ok()
        });
        if done == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "the start scan did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `fim run`; killed if the test fails while it runs.
pub struct Fim(pub Child);

impl Drop for Fim {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Fim {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Fim {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}
