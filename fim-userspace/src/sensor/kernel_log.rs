//! The kernel side's diagnostics (fim-ebpf's diag.rs): a full map or ring buffer, a path walk
//! that stopped before the root, the fallbacks the programs take. `fim run --kernel-log`
//! turns them on; they arrive through aya-log as debug records with the target
//! [`TARGET`], in the daemon's log.
//!
//! Off (the default) means off in the kernel: the sensor loads the programs built without a
//! single log call (fim-ebpf without its `kernel-log` feature), which cost what they cost
//! before aya-log, at load too, and no reader is attached. A switched-off level alone would
//! not do: the verifier drops dead log calls only after reading them, which made each load of
//! the lsm programs about a quarter longer in the 6.1 test VM.

use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// The `log` target of the kernel's diagnostics.
pub const TARGET: &str = "fim::kernel";

/// The ring buffer aya-log's programs write to (aya-log-ebpf's `AYA_LOGS`).
const LOG_MAP: &str = "AYA_LOGS";

/// Sets the programs' log level before load: debug when `on`, else nothing at all (for an
/// object with log calls loaded without `--kernel-log`, e.g. a packager's single
/// FIM_EBPF_OBJECT). An object built without log calls has no level: fine.
pub(super) fn set_level(loader: &mut EbpfLoader<'_>, on: bool) {
    static DEBUG: u8 = aya_log::Level::Debug as u8;
    static NOTHING: u8 = 0;
    loader.override_global(aya_log::LEVEL, if on { &DEBUG } else { &NOTHING }, false);
}

/// The diagnostics of one loaded object: forwarded to the log, or off (and whether the
/// object has log calls all the same).
pub(super) enum KernelLog {
    Forwarding(tokio::task::JoinHandle<()>),
    Off { calls: bool },
}

impl KernelLog {
    /// Starts forwarding `ebpf`'s diagnostics when `on` (on the current tokio runtime).
    pub(super) fn start(ebpf: &mut Ebpf, on: bool) -> Result<KernelLog> {
        if !on {
            return Ok(KernelLog::Off {
                calls: ebpf.map(LOG_MAP).is_some(),
            });
        }
        let logger = EbpfLogger::init(ebpf).context(
            "--kernel-log: this eBPF object has no aya-log ring buffer (built without fim-ebpf's \
             kernel-log feature)",
        )?;
        // SAFETY: the logger owns its ring buffer's fd, which stays open and unchanged until
        // the AsyncFd (which owns the logger) is dropped.
        let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
            .context("registering the kernel log's ring buffer with tokio")?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("--kernel-log: the sensor must start inside a tokio runtime")?;
        let task = runtime.spawn(async move {
            loop {
                let Ok(mut ready) = logger.readable_mut().await else {
                    return;
                };
                // aya-log panics on a record it cannot decode: never expected from fim's own
                // programs, but it must not take the daemon's log reader with it silently.
                let flushed = catch_unwind(AssertUnwindSafe(|| ready.get_inner_mut().flush()));
                if flushed.is_err() {
                    log::warn!(
                        target: TARGET,
                        "a kernel diagnostic could not be decoded: kernel diagnostics stop here"
                    );
                    return;
                }
                ready.clear_ready();
            }
        });
        Ok(KernelLog::Forwarding(task))
    }

    /// Whether the loaded programs have log calls in them.
    pub(super) fn calls(&self) -> bool {
        match self {
            KernelLog::Forwarding(_) => true,
            KernelLog::Off { calls } => *calls,
        }
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        if let KernelLog::Forwarding(task) = self {
            task.abort();
        }
    }
}
