//! Helpers shared by fim's integration tests: where they run (natively or in a QEMU VM), what
//! that environment must support, and the test actor that performs syscalls on request.

use std::{
    path::PathBuf,
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use fim::sensor::{Backend, Record, Sensor};

/// Where the tests run. The VM harness (`cargo xtask vm-test`) sets `FIM_TEST_ENV=vm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestEnv {
    Native,
    Vm,
}

pub fn test_env() -> TestEnv {
    match std::env::var("FIM_TEST_ENV").as_deref() {
        Ok("vm") => TestEnv::Vm,
        _ => TestEnv::Native,
    }
}

/// The backends that MUST work here. In the VMs (Debian 6.1 and 6.12 booted with `bpf` in
/// `lsm=`) that is all of them; natively only the tracepoint backend is guaranteed (the CI
/// machine's kernel refuses LSM and tracing programs). `FIM_EXPECT_BACKENDS` overrides.
pub fn required_backends() -> Vec<Backend> {
    if let Ok(list) = std::env::var("FIM_EXPECT_BACKENDS") {
        return list
            .split(',')
            .filter_map(|name| Backend::ALL.into_iter().find(|b| b.name() == name.trim()))
            .collect();
    }
    match test_env() {
        TestEnv::Vm => Backend::ALL.to_vec(),
        TestEnv::Native => vec![Backend::Tracepoint],
    }
}

/// Integration tests load eBPF programs: they need root. Fails loudly rather than skipping.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "fim's integration tests load eBPF programs and must run as root (euid is {euid})"
    );
}

/// The test actor binary: a separate process that performs the syscalls a test asks for.
/// `FIM_TEST_ACTOR` names it (the VM harness sets it); otherwise it is cargo's build of it,
/// next to the `deps/` directory that holds the running test binary.
pub fn actor_path() -> PathBuf {
    if let Some(path) = std::env::var_os("FIM_TEST_ACTOR") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("locating the running test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary is not under target/<profile>/deps");
    profile_dir.join("fim-test-actor")
}

/// A finished actor run: its pid (for attribution checks) and exit status.
pub struct ActorRun {
    pub pid: u32,
    pub status: ExitStatus,
}

/// Runs the actor with `args` and waits for it; fails if it could not do what it was asked.
pub fn run_actor(args: &[&str]) -> Result<ActorRun> {
    let mut child = Command::new(actor_path())
        .args(args)
        .spawn()
        .with_context(|| format!("spawning {} {args:?}", actor_path().display()))?;
    let pid = child.id();
    let status = child.wait().context("waiting for the test actor")?;
    if !status.success() {
        bail!("test actor {args:?} failed: {status}");
    }
    Ok(ActorRun { pid, status })
}

/// A fresh directory under /tmp, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("fim-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Collects records until `want` matches one or `timeout` passes; returns everything seen.
pub async fn wait_for_record(
    sensor: &mut Sensor,
    timeout: Duration,
    want: impl Fn(&Record) -> bool,
) -> Result<Vec<Record>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let mut batch = Vec::new();
        match tokio::time::timeout_at(deadline, sensor.recv(&mut batch)).await {
            Err(_) => bail!(
                "no matching record within {timeout:?} from the {} backend ({} other records seen)",
                sensor.backend().name(),
                seen.len()
            ),
            Ok(result) => result?,
        }
        let found = batch.iter().any(&want);
        seen.extend(batch);
        if found {
            return Ok(seen);
        }
    }
}

/// A single-threaded tokio runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}
