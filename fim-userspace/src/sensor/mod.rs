//! The kernel sensor: loads one backend's programs, proves they fire, and delivers records.
//!
//! Backends are tried best first (LSM, fentry, tracepoint). A backend only counts when it loads,
//! attaches AND delivers the record of a self-test operation: an LSM program attached on a
//! kernel without `bpf` in `lsm=` loads fine but never fires, and must not be trusted.

mod programs;

use std::{
    collections::VecDeque,
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Btf, Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{FEntry, Lsm, TracePoint},
};
use fim_common::EventKind;
pub use fim_common::{Backend, Record};
use tokio::io::unix::AsyncFd;

use crate::host;
use programs::{Attach, programs};

/// The eBPF object built by build.rs from the `fim-ebpf` crate.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fim-ebpf.o"));

/// How long a freshly attached backend gets to deliver its self-test record.
pub const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One attached backend and the ring buffer it writes to.
pub struct Sensor {
    backend: Backend,
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    /// Records read while waiting for something else (the self-test); handed out first.
    pending: VecDeque<Record>,
    malformed: u64,
    // Dropped last: detaches and unloads the programs.
    _ebpf: Ebpf,
}

impl Sensor {
    /// Loads and attaches `backend`'s programs. Does not prove they fire: see [`start`].
    pub fn attach(backend: Backend) -> Result<Sensor> {
        host::raise_memlock_limit();
        let release = host::kernel_release();
        if backend == Backend::Lsm {
            let lsms = host::active_lsms().context("checking whether BPF LSM is active")?;
            if !lsms.iter().any(|l| l == "bpf") {
                bail!(
                    "BPF LSM is not active on kernel {release}: /sys/kernel/security/lsm is `{}`; \
                     add `bpf` to the `lsm=` boot parameter to use the lsm backend",
                    lsms.join(",")
                );
            }
        }
        if backend == Backend::Tracepoint {
            host::ensure_tracefs()?;
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("parsing fim's embedded eBPF object")?;
        let btf = match backend {
            Backend::Lsm | Backend::Fentry => Some(Btf::from_sys_fs().with_context(|| {
                format!("reading kernel BTF (/sys/kernel/btf/vmlinux) on {release}")
            })?),
            Backend::Tracepoint => None,
        };
        for spec in programs(backend) {
            attach_program(&mut ebpf, spec, btf.as_ref())
                .with_context(|| format!("{} backend on kernel {release}", backend.name()))?;
        }
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .context("eBPF object has no EVENTS map")?,
        )
        .context("EVENTS is not a ring buffer")?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map("LOST")
                .context("eBPF object has no LOST map")?,
        )
        .context("LOST is not a per-CPU array")?;
        Ok(Sensor {
            backend,
            // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
            // AsyncFd (which owns the RingBuf) is dropped.
            ring: unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow!("registering the ring buffer with tokio: {e}"))?,
            lost,
            pending: VecDeque::new(),
            malformed: 0,
            _ebpf: ebpf,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Waits until at least one record is available and appends everything available to `out`.
    pub async fn recv(&mut self, out: &mut Vec<Record>) -> Result<()> {
        if !self.pending.is_empty() {
            out.extend(self.pending.drain(..));
            return Ok(());
        }
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .context("waiting on the ring buffer")?;
            let before = out.len();
            drain(guard.get_inner_mut(), out, &mut self.malformed);
            // Clear readiness, then drain once more: a record submitted between the first drain
            // and clear_ready would otherwise wait for the next wake-up.
            guard.clear_ready();
            drain(guard.get_inner_mut(), out, &mut self.malformed);
            if out.len() > before {
                return Ok(());
            }
        }
    }

    /// Ring-buffer reservations that failed in the kernel for this backend, summed over CPUs.
    pub fn lost_events(&self) -> Result<u64> {
        let per_cpu = self
            .lost
            .get(&(self.backend as u32), 0)
            .context("reading the LOST map")?;
        Ok(per_cpu.iter().sum())
    }

    /// Ring-buffer items too short to be a record (never expected; counted, not trusted).
    pub fn malformed_records(&self) -> u64 {
        self.malformed
    }

    /// Performs an unlink in a private directory and waits for this process's record of it.
    pub async fn self_test(&mut self, timeout: Duration) -> Result<()> {
        let dir = SelfTestDir::create()?;
        let file = dir.path.join("probe");
        std::fs::write(&file, b"fim self-test")
            .with_context(|| format!("writing {}", file.display()))?;
        unlinkat(&file)?;
        let me = std::process::id();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            match tokio::time::timeout_at(deadline, self.recv(&mut batch)).await {
                Err(_) => bail!(
                    "the {} backend attached but did not deliver its self-test event within {:?}; \
                     its hooks do not fire on this kernel",
                    self.backend.name(),
                    timeout
                ),
                Ok(result) => result?,
            }
            let mut found = false;
            for record in batch.drain(..) {
                if !found
                    && record.actor.tgid == me
                    && record.event_kind() == Some(EventKind::Unlink)
                    && record.backend() == Some(self.backend)
                {
                    found = true;
                } else {
                    self.pending.push_back(record);
                }
            }
            if found {
                return Ok(());
            }
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Record>, malformed: &mut u64) {
    while let Some(item) = ring.next() {
        match Record::from_bytes(&item) {
            Some(record) => out.push(record),
            None => *malformed += 1,
        }
    }
}

fn attach_program(ebpf: &mut Ebpf, spec: &programs::ProgramSpec, btf: Option<&Btf>) -> Result<()> {
    let name = spec.name;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} is missing from the eBPF object"))?;
    match &spec.attach {
        Attach::Lsm { hook } => {
            let btf = btf.context("LSM programs need kernel BTF")?;
            let lsm: &mut Lsm = program.try_into()?;
            lsm.load(hook, btf).map_err(|e| {
                explain(
                    e.into(),
                    &format!("loading LSM program {name} (hook {hook})"),
                )
            })?;
            lsm.attach().map_err(|e| {
                explain(
                    e.into(),
                    &format!("attaching LSM program {name} (hook {hook})"),
                )
            })?;
        }
        Attach::Fentry { function } => {
            let btf = btf.context("fentry programs need kernel BTF")?;
            let fentry: &mut FEntry = program.try_into()?;
            fentry.load(function, btf).map_err(|e| {
                explain(
                    e.into(),
                    &format!("loading fentry program {name} ({function})"),
                )
            })?;
            fentry.attach().map_err(|e| {
                explain(
                    e.into(),
                    &format!("attaching fentry program {name} ({function})"),
                )
            })?;
        }
        Attach::SyscallTracepoints { events } => {
            let tracepoint: &mut TracePoint = program.try_into()?;
            tracepoint
                .load()
                .map_err(|e| explain(e.into(), &format!("loading tracepoint program {name}")))?;
            for event in *events {
                tracepoint.attach("syscalls", event).map_err(|e| {
                    explain(e.into(), &format!("attaching {name} to syscalls:{event}"))
                })?;
            }
        }
    }
    Ok(())
}

/// The kernel-internal "operation not supported" errno, which BPF syscalls can leak to user space.
const ENOTSUPP: i32 = 524;

/// Adds what the raw errno means for fim to an aya error, so the log says why, not just what.
fn explain(error: anyhow::Error, doing: &str) -> anyhow::Error {
    let errno = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error);
    let hint = match errno {
        Some(libc::EPERM) => {
            "; the kernel refused this program type with EPERM (not permitted for this kernel \
             configuration or without CAP_BPF/CAP_SYS_ADMIN)"
        }
        Some(libc::EINVAL) => "; the kernel rejected the program or its attach target (EINVAL)",
        Some(libc::ENOENT) => "; the attach target does not exist on this kernel (ENOENT)",
        Some(ENOTSUPP) | Some(libc::EOPNOTSUPP) => "; not supported by this kernel",
        _ => "",
    };
    error.context(format!("{doing}{hint}"))
}

/// The outcome of backend selection: the running sensor and why better backends were skipped.
pub struct Selection {
    pub sensor: Sensor,
    pub skipped: Vec<(Backend, anyhow::Error)>,
}

/// Attaches `backend` and proves it fires.
pub async fn start(backend: Backend) -> Result<Sensor> {
    let mut sensor = Sensor::attach(backend)?;
    sensor.self_test(SELF_TEST_TIMEOUT).await?;
    Ok(sensor)
}

/// Starts the best backend that works, or exactly `forced` when given.
pub async fn start_best(forced: Option<Backend>) -> Result<Selection> {
    if let Some(backend) = forced {
        let sensor = start(backend)
            .await
            .with_context(|| format!("the forced backend {} failed", backend.name()))?;
        return Ok(Selection {
            sensor,
            skipped: Vec::new(),
        });
    }
    let mut skipped = Vec::new();
    for backend in Backend::ALL {
        match start(backend).await {
            Ok(sensor) => return Ok(Selection { sensor, skipped }),
            Err(error) => skipped.push((backend, error)),
        }
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|(b, e)| format!("{}: {e:#}", b.name()))
        .collect();
    bail!(
        "no sensor backend works on kernel {}:\n  {}",
        host::kernel_release(),
        reasons.join("\n  ")
    )
}

/// A private directory for the self-test, removed on drop.
struct SelfTestDir {
    path: PathBuf,
}

impl SelfTestDir {
    fn create() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("fim-selftest-{}-{}", std::process::id(), nonce()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(SelfTestDir { path })
    }
}

impl Drop for SelfTestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `unlinkat(AT_FDCWD, path, 0)`: the syscall every backend's unlink program observes.
fn unlinkat(path: &Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::unlinkat(libc::AT_FDCWD, c_path.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("unlinking {}", path.display()));
    }
    Ok(())
}
