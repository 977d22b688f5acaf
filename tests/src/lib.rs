//! Helpers shared by fim's integration tests: where they run (natively or in a QEMU VM), what
//! that environment must support, the test actor that performs syscalls on request, and one
//! shared sensor per backend (loading a backend costs seconds under QEMU, so every scenario
//! of a test binary reuses it).

pub mod child;
pub mod daemon;
pub mod fleet;
pub mod prometheus;

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use fim::sensor::{self, Backend, Event, SensorConfig, WatchRoot};

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

/// Runs the actor with `args` (byte strings) and waits; returns its pid. Fails if the actor
/// could not do what it was asked.
pub fn run_actor<S: AsRef<OsStr>>(args: &[S]) -> Result<u32> {
    let mut child = Command::new(actor_path())
        .args(args)
        .spawn()
        .with_context(|| format!("spawning {}", actor_path().display()))?;
    let pid = child.id();
    let status = child.wait().context("waiting for the test actor")?;
    if !status.success() {
        bail!(
            "test actor failed ({status}) for {:?}",
            args.iter()
                .map(|a| a.as_ref().to_owned())
                .collect::<Vec<_>>()
        );
    }
    Ok(pid)
}

/// The watched and the unwatched tree every scenario of this process works in.
pub struct Trees {
    pub watched: PathBuf,
    pub unwatched: PathBuf,
}

pub fn trees() -> &'static Trees {
    static TREES: OnceLock<Trees> = OnceLock::new();
    TREES.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("fim-conformance-{}", std::process::id()));
        let watched = base.join("watched");
        let unwatched = base.join("unwatched");
        std::fs::create_dir_all(&watched).expect("creating the watched tree");
        std::fs::create_dir_all(&unwatched).expect("creating the unwatched tree");
        Trees {
            watched: std::fs::canonicalize(watched).expect("canonical watched path"),
            unwatched: std::fs::canonicalize(unwatched).expect("canonical unwatched path"),
        }
    })
}

/// The rule id the conformance sensors give the watched tree.
pub const WATCHED_RULE: u32 = 42;

struct Shared {
    runtime: tokio::runtime::Runtime,
    sensor: Mutex<Result<sensor::Sensor, String>>,
}

fn shared(backend: Backend) -> &'static Shared {
    static SHARED: [OnceLock<Shared>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let slot = Backend::ALL
        .iter()
        .position(|b| *b == backend)
        .expect("known backend");
    SHARED[slot].get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let config = watched_tree_config();
        let sensor = runtime
            .block_on(sensor::start(backend, &config))
            .map_err(|e| format!("{e:#}"));
        Shared {
            runtime,
            sensor: Mutex::new(sensor),
        }
    })
}

/// The shared sensors' configuration: the watched tree, recursively, under `WATCHED_RULE`.
pub fn watched_tree_config() -> SensorConfig {
    SensorConfig {
        roots: vec![WatchRoot {
            path: trees().watched.clone(),
            rule_id: WATCHED_RULE,
            recursive: true,
        }],
        ..SensorConfig::default()
    }
}

/// Runs `body` with a sensor of its own for `backend`, started from `config` and detached
/// when it returns; where the backend cannot start, as [`with_sensor`].
pub fn with_own_sensor(
    backend: Backend,
    config: &SensorConfig,
    body: impl FnOnce(&tokio::runtime::Runtime, &mut sensor::Sensor),
) {
    require_root();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(sensor::start(backend, config)) {
        Ok(mut sensor) => body(&runtime, &mut sensor),
        Err(e) => unavailable(backend, &format!("{e:#}")),
    }
}

/// Runs `body` with this process's shared sensor for `backend`. Where the backend is required
/// it must have started; elsewhere its failure must name the backend and the kernel (and the
/// test then ends there, saying so).
pub fn with_sensor(
    backend: Backend,
    body: impl FnOnce(&tokio::runtime::Runtime, &mut sensor::Sensor),
) {
    require_root();
    let shared = shared(backend);
    let mut guard = shared
        .sensor
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match guard.as_mut() {
        Ok(sensor) => body(&shared.runtime, sensor),
        Err(message) => unavailable(backend, message),
    }
}

/// A backend failed to start: it must not be one this environment requires, and the failure
/// must name it and the kernel.
pub fn unavailable(backend: Backend, message: &str) {
    assert!(
        !required_backends().contains(&backend),
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
}

/// File events of process `pid` (its exec record is left out: see [`collect_all`]),
/// collected until `expected` arrived (plus a grace period to catch unexpected extras) or
/// `timeout` passed.
pub fn collect(
    runtime: &tokio::runtime::Runtime,
    sensor: &mut sensor::Sensor,
    pid: u32,
    expected: usize,
    timeout: Duration,
) -> Vec<Event> {
    collect_all(runtime, sensor, pid, expected, timeout, false)
}

/// [`collect`], keeping exec records when `with_exec`.
pub fn collect_all(
    runtime: &tokio::runtime::Runtime,
    sensor: &mut sensor::Sensor,
    pid: u32,
    expected: usize,
    timeout: Duration,
    with_exec: bool,
) -> Vec<Event> {
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut mine = Vec::new();
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let until = grace.unwrap_or(deadline).min(deadline);
            let mut batch = Vec::new();
            match tokio::time::timeout_at(until, sensor.recv(&mut batch)).await {
                Err(_) => return mine,
                Ok(Err(e)) => panic!("sensor failed: {e:#}"),
                Ok(Ok(())) => {}
            }
            mine.extend(batch.into_iter().filter(|e| {
                e.actor.tgid == pid && (with_exec || e.kind != sensor::EventKind::Exec)
            }));
            if mine.len() >= expected && grace.is_none() {
                grace = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
        }
    })
}

/// Discards whatever the sensor already holds (events of earlier scenarios).
pub fn drain(runtime: &tokio::runtime::Runtime, sensor: &mut sensor::Sensor) {
    runtime.block_on(async {
        loop {
            let mut batch = Vec::new();
            match tokio::time::timeout(Duration::from_millis(50), sensor.recv(&mut batch)).await {
                Ok(Ok(())) => continue,
                _ => return,
            }
        }
    });
}

/// A path as bytes (for comparing with event paths, which are bytes).
pub fn bytes(path: &Path) -> Vec<u8> {
    path.as_os_str().as_bytes().to_vec()
}

/// The content the test actor's `big` operation writes: byte `offset + i` of the file goes to
/// `out[i]`. Not periodic at any power of two, so a hash over the wrong range cannot match.
pub fn pattern(offset: usize, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        let at = offset + i;
        *byte = (at % 251) as u8 ^ (at >> 20) as u8;
    }
}

/// Creates `levels` directories named `name` below `base`, one `mkdirat` at a time (the
/// whole path is longer than a syscall accepts); returns the deepest.
pub fn deep_tree(base: &Path, name: &str, levels: usize) -> PathBuf {
    let c = |p: &OsStr| std::ffi::CString::new(p.as_bytes()).unwrap();
    let component = c(OsStr::new(name));
    let mut path = base.to_path_buf();
    // SAFETY: valid strings and descriptors this function owns.
    unsafe {
        let mut fd = libc::open(
            c(base.as_os_str()).as_ptr(),
            libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        assert!(fd >= 0, "open {base:?}");
        for _ in 0..levels {
            assert_eq!(libc::mkdirat(fd, component.as_ptr(), 0o755), 0, "mkdirat");
            let next = libc::openat(fd, component.as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC);
            assert!(next >= 0, "openat");
            libc::close(fd);
            fd = next;
            path.push(name);
        }
        libc::close(fd);
    }
    path
}
