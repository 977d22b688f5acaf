//! Which kernel programs make up each backend, and where they attach.

use fim_common::Backend;

/// Where one program of the eBPF object attaches.
pub enum Attach {
    /// A BPF LSM hook (`security_<hook>` without the prefix).
    Lsm { hook: &'static str },
    /// fentry on a kernel function.
    Fentry { function: &'static str },
    /// One program attached to several `syscalls:*` tracepoints.
    SyscallTracepoints { events: &'static [&'static str] },
}

pub struct ProgramSpec {
    /// The function name of the program in `fim-ebpf`.
    pub name: &'static str,
    pub attach: Attach,
}

/// The programs of each backend. glibc's `unlink()` uses the `unlink` syscall while coreutils'
/// `rm` uses `unlinkat`, so a syscall family is always covered as a whole.
pub fn programs(backend: Backend) -> &'static [ProgramSpec] {
    match backend {
        Backend::Lsm => &[ProgramSpec {
            name: "lsm_path_unlink",
            attach: Attach::Lsm {
                hook: "path_unlink",
            },
        }],
        Backend::Fentry => &[ProgramSpec {
            name: "fentry_vfs_unlink",
            attach: Attach::Fentry {
                function: "vfs_unlink",
            },
        }],
        Backend::Tracepoint => &[ProgramSpec {
            name: "tp_sys_enter_unlinkat",
            attach: Attach::SyscallTracepoints {
                events: &["sys_enter_unlinkat", "sys_enter_unlink"],
            },
        }],
    }
}
