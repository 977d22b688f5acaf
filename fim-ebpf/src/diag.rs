//! The kernel side's diagnostics (`fim run --kernel-log`): a map or ring buffer that was full,
//! a path walk that stopped before the top, and the verifier-safe fallbacks the programs
//! take. Sent through aya-log at debug level with the target `fim::kernel`, which the daemon
//! writes to its log; each message starts with the pid of the process whose operation it is
//! about.
//!
//! Only in the build with the `kernel-log` feature, which user space loads for `fim run
//! --kernel-log` (it sets aya-log's level, `AYA_LOG_LEVEL` in frozen read-only data, to
//! debug). Without the feature, the build `fim run` loads otherwise, every function here is
//! empty: a switched-off level alone would leave the verifier the log code to read (and drop)
//! at every load. Each message is a function of its own, not inlined, behind the level check,
//! so the verifier checks one small body per call site instead of the log code inlined into
//! every path of a program.

#[cfg(feature = "kernel-log")]
#[inline(always)]
fn enabled() -> bool {
    use aya_log_ebpf::macro_support::{Level, level_enabled};
    level_enabled(Level::Debug)
}

/// One diagnostic: `name(args)` sends `message` (a literal: aya-log parses it at compile
/// time) with the current tgid for its first `{}`.
macro_rules! diagnostic {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $message:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name($($arg: $ty),*) {
            #[cfg(feature = "kernel-log")]
            if enabled() {
                #[inline(never)]
                fn send($($arg: $ty),*) {
                    let pid = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
                    aya_log_ebpf::debug!(
                        &(),
                        target: "fim::kernel",
                        $message,
                        pid,
                        $($arg),*
                    );
                }
                send($($arg),*);
            }
            #[cfg(not(feature = "kernel-log"))]
            let _ = ($($arg,)*);
        }
    };
}

diagnostic!(
    /// `EVENTS` refused a record (user space is behind): counted in `LOST`.
    ring_full(backend: u8) =>
        "pid {}: ring buffer EVENTS full: a record of backend {} is lost (counted as lost)"
);

diagnostic!(
    /// The scratch record was held by a program this one preempted on the same CPU.
    scratch_held(backend: u8) =>
        "pid {}: scratch record held by a preempted program on this CPU: a record of backend {} is \
         lost (counted as lost)"
);

diagnostic!(
    /// `PENDING` had no room for a watched syscall's arguments.
    pending_full(entries: u32) =>
        "pid {}: map PENDING ({} entries) full: this watched syscall is not reported (counted as lost)"
);

diagnostic!(
    /// `WRITERS` refused a file opened for writing.
    writers_full(entries: u32) =>
        "pid {}: map WRITERS ({} entries) full: the close of this file opened for writing will not be \
         reported as modified"
);

diagnostic!(
    /// `LINKED` refused a watched file's new link.
    linked_full(ino: u64) =>
        "pid {}: map LINKED full: changes through the new link of inode {} are watched only once user \
         space has read its link record"
);

diagnostic!(
    /// A record's path (or second path) was cut short: a path walk stopped before the top of
    /// the mount tree, or a relative path and its base did not fit in the buffer together.
    path_truncated(kind: u16, len1: u32, len2: u32) =>
        "pid {}: record of kind {} with a path cut short (longer than the 4096-byte buffer, or \
         a kernel read failed): {} and {} bytes kept, flagged truncated"
);

diagnostic!(
    /// An open's file has a path too long to build from its dentries: the syscall's string is
    /// used instead.
    open_string_fallback(kept: u32) =>
        "pid {}: open: the file's path is too long to build from its dentries; the syscall's \
         own string is reported instead ({} bytes)"
);

diagnostic!(
    /// The kernel's filter could not decide on a record: user space does.
    filter_undecided(kind: u16) =>
        "pid {}: record of kind {}: the kernel's filter could not decide (a path string with \
         '.', '..' or '//', a path cut short, or a walk at its limit of 64 directories); user \
         space decides"
);
