//! Which kernel programs make up each backend, where they attach, and the prototypes they
//! rely on (checked against the running kernel's BTF before loading).

use fim_common::Backend;

/// Where one program of the eBPF object attaches.
pub enum Attach {
    /// A BPF LSM hook (`security_<hook>` without the prefix).
    Lsm { hook: &'static str },
    /// fexit on a kernel function.
    Fexit { function: &'static str },
    /// fentry on a kernel function (where there is no result to check).
    Fentry { function: &'static str },
    /// One program on several `syscalls:*` tracepoints; `optional` ones may be absent from
    /// older kernels (e.g. fchmodat2 before 6.6).
    Tracepoints {
        events: &'static [&'static str],
        optional: &'static [&'static str],
    },
    /// One tracepoint outside `syscalls`, e.g. `sched:sched_process_exec`.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
}

/// The exec program of a backend: every backend reports program executions, which is how
/// short-lived processes keep their executable and command line.
macro_rules! exec {
    ($name:literal) => {
        ProgramSpec {
            name: $name,
            attach: Attach::Tracepoint {
                category: "sched",
                name: "sched_process_exec",
            },
            params: &[],
            optional: false,
        }
    };
}

pub struct ProgramSpec {
    /// The function name of the program in `fim-ebpf`.
    pub name: &'static str,
    pub attach: Attach,
    /// Expected parameter types ("_" = not checked). The count is always checked.
    pub params: &'static [&'static str],
    /// A hook only newer kernels have: skipped (not an error) when the kernel's BTF lacks
    /// it; older kernels cover the same operation with another hook.
    pub optional: bool,
}

const P: &str = "struct path *";
const D: &str = "struct dentry *";
const F: &str = "struct file *";
const S: &str = "char *";
const ANY: &str = "_";

macro_rules! lsm {
    ($name:literal, $hook:literal, $params:expr) => {
        ProgramSpec {
            name: $name,
            attach: Attach::Lsm { hook: $hook },
            params: $params,
            optional: false,
        }
    };
}
macro_rules! fexit {
    ($name:literal, $function:literal, $params:expr) => {
        ProgramSpec {
            name: $name,
            attach: Attach::Fexit {
                function: $function,
            },
            params: $params,
            optional: false,
        }
    };
}
macro_rules! tp {
    ($name:literal, $events:expr) => {
        ProgramSpec {
            name: $name,
            attach: Attach::Tracepoints {
                events: $events,
                optional: &[],
            },
            params: &[],
            optional: false,
        }
    };
    ($name:literal, $events:expr, optional $optional:expr) => {
        ProgramSpec {
            name: $name,
            attach: Attach::Tracepoints {
                events: $events,
                optional: $optional,
            },
            params: &[],
            optional: false,
        }
    };
}

/// Records process start times by pid (fim-ebpf's forks.rs), in the tracepoint backend.
/// Optional: without it an actor only the completeness layer saw, and that exited before fim
/// read its event, is reported by pid alone.
pub const FORK: &str = "tp_fork";

/// Counts directory moves for the memos (fim-ebpf's dirmemo.rs), in both the lsm and the
/// fentry backend. Optional: without it (a kernel whose BTF lacks `__d_move`, or that cannot
/// trace it) the memos stay off and every event walks.
pub const D_MOVE: &str = "fentry_d_move";

const D_MOVE_SPEC: ProgramSpec = ProgramSpec {
    name: D_MOVE,
    attach: Attach::Fentry {
        function: "__d_move",
    },
    params: &[D, D, ANY],
    optional: true,
};

// The memos' dentry generation first: no program may memoise before it counts (fim-ebpf's
// dirmemo.rs).
static LSM: &[ProgramSpec] = &[
    D_MOVE_SPEC,
    lsm!("lsm_d_instantiate", "d_instantiate", &[D, ANY]),
    exec!("exec_lsm"),
    lsm!("lsm_path_mknod", "path_mknod", &[P, D, ANY, ANY]),
    lsm!("lsm_path_mkdir", "path_mkdir", &[P, D, ANY]),
    lsm!("lsm_path_rmdir", "path_rmdir", &[P, D]),
    lsm!("lsm_path_unlink", "path_unlink", &[P, D]),
    lsm!("lsm_path_symlink", "path_symlink", &[P, D, S]),
    lsm!("lsm_path_link", "path_link", &[D, P, D]),
    lsm!("lsm_path_rename", "path_rename", &[P, D, P, D, ANY]),
    lsm!("lsm_path_truncate", "path_truncate", &[P]),
    // Since 6.2 ftruncate and O_TRUNC opens call file_truncate instead of path_truncate.
    ProgramSpec {
        optional: true,
        ..lsm!("lsm_file_truncate", "file_truncate", &[F])
    },
    lsm!("lsm_path_chmod", "path_chmod", &[P, ANY]),
    lsm!("lsm_path_chown", "path_chown", &[P, ANY, ANY]),
    lsm!("lsm_file_open", "file_open", &[F]),
    lsm!(
        "lsm_inode_setxattr",
        "inode_setxattr",
        &[ANY, D, S, "void *", ANY, ANY]
    ),
    lsm!("lsm_inode_removexattr", "inode_removexattr", &[ANY, D, S]),
    lsm!("lsm_mmap_file", "mmap_file", &[F, ANY, ANY, ANY]),
    lsm!("lsm_file_free_security", "file_free_security", &[F]),
];

static FEXIT: &[ProgramSpec] = &[
    D_MOVE_SPEC,
    ProgramSpec {
        name: "fentry_d_instantiate",
        attach: Attach::Fentry {
            function: "security_d_instantiate",
        },
        params: &[D, ANY],
        optional: false,
    },
    exec!("exec_fentry"),
    fexit!("fexit_path_mknod", "security_path_mknod", &[P, D, ANY, ANY]),
    fexit!("fexit_path_mkdir", "security_path_mkdir", &[P, D, ANY]),
    fexit!("fexit_path_rmdir", "security_path_rmdir", &[P, D]),
    fexit!("fexit_path_unlink", "security_path_unlink", &[P, D]),
    fexit!("fexit_path_symlink", "security_path_symlink", &[P, D, S]),
    fexit!("fexit_path_link", "security_path_link", &[D, P, D]),
    fexit!(
        "fexit_path_rename",
        "security_path_rename",
        &[P, D, P, D, ANY]
    ),
    fexit!("fexit_path_truncate", "security_path_truncate", &[P]),
    ProgramSpec {
        optional: true,
        ..fexit!("fexit_file_truncate", "security_file_truncate", &[F])
    },
    fexit!("fexit_path_chmod", "security_path_chmod", &[P, ANY]),
    fexit!("fexit_path_chown", "security_path_chown", &[P, ANY, ANY]),
    fexit!("fexit_file_open", "security_file_open", &[F]),
    fexit!(
        "fexit_inode_setxattr",
        "security_inode_setxattr",
        &[ANY, D, S, "void *", ANY, ANY]
    ),
    fexit!(
        "fexit_inode_removexattr",
        "security_inode_removexattr",
        &[ANY, D, S]
    ),
    fexit!("fexit_mmap_file", "security_mmap_file", &[F, ANY, ANY]),
    ProgramSpec {
        name: "fentry_file_free",
        attach: Attach::Fentry {
            function: "security_file_free",
        },
        params: &[F],
        optional: false,
    },
];

static TRACEPOINT: &[ProgramSpec] = &[
    exec!("exec_tracepoint"),
    // Process start times by pid, for the completeness layer's actors (fim-ebpf's forks.rs).
    ProgramSpec {
        name: FORK,
        attach: Attach::Tracepoint {
            category: "sched",
            name: "sched_process_fork",
        },
        params: &[],
        optional: true,
    },
    tp!("tp_enter_unlink", &["sys_enter_unlink"]),
    tp!("tp_enter_unlinkat", &["sys_enter_unlinkat"]),
    tp!("tp_enter_rmdir", &["sys_enter_rmdir"]),
    tp!("tp_enter_mkdir", &["sys_enter_mkdir"]),
    tp!("tp_enter_mkdirat", &["sys_enter_mkdirat"]),
    tp!("tp_enter_mknod", &["sys_enter_mknod"]),
    tp!("tp_enter_mknodat", &["sys_enter_mknodat"]),
    tp!("tp_enter_chmod", &["sys_enter_chmod"]),
    tp!(
        "tp_enter_fchmodat",
        &["sys_enter_fchmodat"],
        optional & ["sys_enter_fchmodat2"]
    ),
    tp!("tp_enter_fchmod", &["sys_enter_fchmod"]),
    tp!("tp_enter_chown", &["sys_enter_chown", "sys_enter_lchown"]),
    tp!("tp_enter_fchownat", &["sys_enter_fchownat"]),
    tp!("tp_enter_fchown", &["sys_enter_fchown"]),
    tp!("tp_enter_truncate", &["sys_enter_truncate"]),
    tp!("tp_enter_ftruncate", &["sys_enter_ftruncate"]),
    tp!("tp_enter_open", &["sys_enter_open"]),
    tp!("tp_enter_openat", &["sys_enter_openat"]),
    tp!("tp_enter_creat", &["sys_enter_creat"]),
    tp!("tp_enter_openat2", &["sys_enter_openat2"]),
    tp!(
        "tp_enter_open_by_handle_at",
        &["sys_enter_open_by_handle_at"]
    ),
    tp!("tp_enter_rename", &["sys_enter_rename"]),
    tp!("tp_enter_renameat", &["sys_enter_renameat"]),
    tp!("tp_enter_renameat2", &["sys_enter_renameat2"]),
    tp!("tp_enter_link", &["sys_enter_link"]),
    tp!("tp_enter_linkat", &["sys_enter_linkat"]),
    tp!("tp_enter_symlink", &["sys_enter_symlink"]),
    tp!("tp_enter_symlinkat", &["sys_enter_symlinkat"]),
    tp!(
        "tp_enter_setxattr",
        &["sys_enter_setxattr", "sys_enter_lsetxattr"]
    ),
    tp!(
        "tp_enter_removexattr",
        &["sys_enter_removexattr", "sys_enter_lremovexattr"]
    ),
    tp!("tp_enter_fsetxattr", &["sys_enter_fsetxattr"]),
    tp!("tp_enter_fremovexattr", &["sys_enter_fremovexattr"]),
    tp!("tp_enter_close", &["sys_enter_close"]),
    tp!(
        "tp_exit",
        &[
            "sys_exit_unlink",
            "sys_exit_unlinkat",
            "sys_exit_rmdir",
            "sys_exit_mkdir",
            "sys_exit_mkdirat",
            "sys_exit_mknod",
            "sys_exit_mknodat",
            "sys_exit_chmod",
            "sys_exit_fchmodat",
            "sys_exit_fchmod",
            "sys_exit_chown",
            "sys_exit_lchown",
            "sys_exit_fchownat",
            "sys_exit_fchown",
            "sys_exit_truncate",
            "sys_exit_ftruncate",
            "sys_exit_rename",
            "sys_exit_renameat",
            "sys_exit_renameat2",
            "sys_exit_link",
            "sys_exit_linkat",
            "sys_exit_symlink",
            "sys_exit_symlinkat",
            "sys_exit_setxattr",
            "sys_exit_lsetxattr",
            "sys_exit_removexattr",
            "sys_exit_lremovexattr",
            "sys_exit_fsetxattr",
            "sys_exit_fremovexattr",
        ],
        optional & ["sys_exit_fchmodat2"]
    ),
    tp!(
        "tp_exit_open",
        &[
            "sys_exit_open",
            "sys_exit_openat",
            "sys_exit_creat",
            "sys_exit_openat2",
            "sys_exit_open_by_handle_at",
        ]
    ),
];

pub fn programs(backend: Backend) -> &'static [ProgramSpec] {
    match backend {
        Backend::Lsm => LSM,
        Backend::Fentry => FEXIT,
        Backend::Tracepoint => TRACEPOINT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memos' generation counts directory moves and new directories before any program
    /// can memoise (fim-ebpf's dirmemo.rs): `Sensor::attach` attaches in list order.
    #[test]
    fn the_memo_generation_programs_come_first() {
        for backend in [Backend::Lsm, Backend::Fentry] {
            let names: Vec<&str> = programs(backend).iter().map(|p| p.name).collect();
            assert_eq!(names[0], D_MOVE, "{backend:?}: {names:?}");
            assert!(
                names[1].ends_with("_d_instantiate"),
                "{backend:?}: {names:?}"
            );
            assert_eq!(
                names.iter().filter(|n| **n == D_MOVE).count(),
                1,
                "{backend:?}"
            );
        }
        assert!(
            programs(Backend::Tracepoint)
                .iter()
                .all(|p| p.name != D_MOVE),
            "the tracepoint backend has no memo"
        );
    }
}
