//! fim's kernel programs. Entry points are thin: they pick the arguments and call one shared
//! function per hook (`hooks` for LSM and fexit, `syscalls` for tracepoints) that returns a
//! `Result`, so the real work can use `?`.
#![no_std]
#![no_main]
// The BPF target has no `fetch_add`; the intrinsic gives its `lock xadd` (see `presence`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod actor;
mod diag;
mod dirmemo;
mod emit;
mod exec;
mod filter;
mod forks;
mod hooks;
mod kernel;
mod path;
mod pathmemo;
mod presence;
mod syscalls;
mod writers;

use aya_ebpf::{
    macros::{fentry, fexit, lsm, tracepoint},
    programs::{FEntryContext, FExitContext, LsmContext, TracePointContext},
};
use fim_common::{Args, Backend, EventKind};
use syscalls::{Pending, Shape, arg, stash};

// ---------------------------------------------------------------------------------------------
// LSM: never deny. Each program returns the previous hook's verdict (its last argument) and
// reports nothing when that verdict already refused the operation.

macro_rules! lsm_program {
    ($name:ident, $hook:literal, $nargs:literal, |$ctx:ident, $b:ident| $body:expr) => {
        #[lsm(hook = $hook)]
        pub fn $name($ctx: LsmContext) -> i32 {
            let previous: i32 = $ctx.arg($nargs);
            if previous == 0 && !kernel::floor() {
                let $b = Backend::Lsm;
                let _: Result<(), i64> = $body;
            }
            previous
        }
    };
}

// The fexit programs attach to the security_* functions that call the LSM hooks: the same
// arguments, and the return value says whether every LSM allowed the operation.
macro_rules! fexit_program {
    ($name:ident, $function:literal, |$ctx:ident, $b:ident| $body:expr) => {
        #[fexit(function = $function)]
        pub fn $name($ctx: FExitContext) -> i32 {
            if !kernel::floor() && $ctx.ret::<i32>() == Ok(0) {
                let $b = Backend::Fentry;
                let _: Result<(), i64> = $body;
            }
            0
        }
    };
}

macro_rules! both {
    ($lsm_name:ident, $fexit_name:ident, $hook:literal, $function:literal, $nargs:literal, |$ctx:ident, $b:ident| $body:expr) => {
        lsm_program!($lsm_name, $hook, $nargs, |$ctx, $b| $body);
        fexit_program!($fexit_name, $function, |$ctx, $b| $body);
    };
}

fn mode_args(mode: u64) -> Args {
    Args {
        mode: mode as u32 & 0xffff,
        ..Args::default()
    }
}

both!(
    lsm_path_mknod,
    fexit_path_mknod,
    "path_mknod",
    "security_path_mknod",
    4,
    |ctx, b| hooks::dir_entry(
        EventKind::Create,
        b,
        ctx.arg(0),
        ctx.arg(1),
        mode_args(ctx.arg(2)),
        core::ptr::null()
    )
);
both!(
    lsm_path_mkdir,
    fexit_path_mkdir,
    "path_mkdir",
    "security_path_mkdir",
    3,
    |ctx, b| hooks::dir_entry(
        EventKind::Mkdir,
        b,
        ctx.arg(0),
        ctx.arg(1),
        mode_args(ctx.arg(2)),
        core::ptr::null()
    )
);
both!(
    lsm_path_rmdir,
    fexit_path_rmdir,
    "path_rmdir",
    "security_path_rmdir",
    2,
    |ctx, b| hooks::dir_entry(
        EventKind::Rmdir,
        b,
        ctx.arg(0),
        ctx.arg(1),
        Args::default(),
        core::ptr::null()
    )
);
both!(
    lsm_path_unlink,
    fexit_path_unlink,
    "path_unlink",
    "security_path_unlink",
    2,
    |ctx, b| hooks::dir_entry(
        EventKind::Unlink,
        b,
        ctx.arg(0),
        ctx.arg(1),
        Args::default(),
        core::ptr::null()
    )
);
both!(
    lsm_path_symlink,
    fexit_path_symlink,
    "path_symlink",
    "security_path_symlink",
    3,
    |ctx, b| {
        hooks::dir_entry(
            EventKind::Symlink,
            b,
            ctx.arg(0),
            ctx.arg(1),
            Args::default(),
            ctx.arg(2),
        )
    }
);
both!(
    lsm_path_link,
    fexit_path_link,
    "path_link",
    "security_path_link",
    3,
    |ctx, b| hooks::link(b, ctx.arg(0), ctx.arg(1), ctx.arg(2))
);
both!(
    lsm_path_rename,
    fexit_path_rename,
    "path_rename",
    "security_path_rename",
    5,
    |ctx, b| hooks::rename(
        b,
        ctx.arg(0),
        ctx.arg(1),
        ctx.arg(2),
        ctx.arg(3),
        ctx.arg::<u64>(4) as u32
    )
);
both!(
    lsm_path_truncate,
    fexit_path_truncate,
    "path_truncate",
    "security_path_truncate",
    1,
    // bpf_d_path: fexit on security_path_truncate always; the LSM hook only from the kernel
    // that made path hooks sleepable (6.8), so not there.
    |ctx, b| {
        hooks::on_path(
            EventKind::Truncate,
            b,
            ctx.arg(0),
            Args::default(),
            b == Backend::Fentry,
        )
    }
);
// Since 6.2, ftruncate and truncating opens (kernel >= 6.2 has no path_truncate call there).
both!(
    lsm_file_truncate,
    fexit_file_truncate,
    "file_truncate",
    "security_file_truncate",
    1,
    |ctx, b| hooks::file_truncate(b, ctx.arg(0))
);
both!(
    lsm_path_chmod,
    fexit_path_chmod,
    "path_chmod",
    "security_path_chmod",
    2,
    |ctx, b| hooks::on_path(
        EventKind::Chmod,
        b,
        ctx.arg(0),
        mode_args(ctx.arg(1)),
        false
    )
);
both!(
    lsm_path_chown,
    fexit_path_chown,
    "path_chown",
    "security_path_chown",
    3,
    |ctx, b| hooks::on_path(
        EventKind::Chown,
        b,
        ctx.arg(0),
        Args {
            uid: ctx.arg::<u64>(1) as u32,
            gid: ctx.arg::<u64>(2) as u32,
            ..Args::default()
        },
        false
    )
);
both!(
    lsm_file_open,
    fexit_file_open,
    "file_open",
    "security_file_open",
    1,
    |ctx, b| hooks::file_open(b, ctx.arg(0))
);
both!(
    lsm_inode_setxattr,
    fexit_inode_setxattr,
    "inode_setxattr",
    "security_inode_setxattr",
    6,
    |ctx, b| { hooks::xattr(EventKind::SetXattr, b, ctx.arg(1), ctx.arg(2)) }
);
both!(
    lsm_inode_removexattr,
    fexit_inode_removexattr,
    "inode_removexattr",
    "security_inode_removexattr",
    3,
    |ctx, b| hooks::xattr(EventKind::RemoveXattr, b, ctx.arg(1), ctx.arg(2))
);
// The hook is mmap_file(file, reqprot, prot, flags); security_mmap_file(file, prot, flags).
lsm_program!(lsm_mmap_file, "mmap_file", 4, |ctx, b| hooks::mmap(
    b,
    ctx.arg(0),
    ctx.arg(2),
    ctx.arg(3)
));
fexit_program!(fexit_mmap_file, "security_mmap_file", |ctx, b| hooks::mmap(
    b,
    ctx.arg(0),
    ctx.arg(1),
    ctx.arg(2)
));

// The release of a file (void hook: nothing to pass on, nothing to deny). fentry, not fexit:
// security_file_free returns nothing whose success could be checked.
#[lsm(hook = "file_free_security")]
pub fn lsm_file_free_security(ctx: LsmContext) -> i32 {
    if kernel::floor() {
        return 0;
    }
    let _ = hooks::file_closed::<true>(Backend::Lsm, ctx.arg(0));
    0
}

#[fentry(function = "security_file_free")]
pub fn fentry_file_free(ctx: FEntryContext) -> u32 {
    if kernel::floor() {
        return 0;
    }
    let _ = hooks::file_closed::<true>(Backend::Fentry, ctx.arg(0));
    0
}

// A dentry got its inode: the memos' dentry generation (see `dirmemo::instantiated`). fentry:
// nothing to check after.
#[lsm(hook = "d_instantiate")]
pub fn lsm_d_instantiate(ctx: LsmContext) -> i32 {
    if kernel::floor() {
        return 0;
    }
    dirmemo::instantiated(ctx.arg(1));
    0
}

#[fentry(function = "security_d_instantiate")]
pub fn fentry_d_instantiate(ctx: FEntryContext) -> u32 {
    if kernel::floor() {
        return 0;
    }
    dirmemo::instantiated(ctx.arg(1));
    0
}

// A dentry is about to move (rename, exchange, a directory alias spliced in; rename_lock is
// held): the memos' dentry generation when it is a directory (see `dirmemo::moving`). Both lsm
// and fentry attach it, first of all: no program may memoise before moves count.
#[fentry(function = "__d_move")]
pub fn fentry_d_move(ctx: FEntryContext) -> u32 {
    if kernel::floor() {
        return 0;
    }
    let exchange: u64 = ctx.arg(2);
    // A bool argument: only its low byte is defined.
    dirmemo::moving(ctx.arg(0), ctx.arg(1), exchange as u8 != 0);
    0
}

// ---------------------------------------------------------------------------------------------
// Tracepoints: one sys_enter program per argument layout, one shared sys_exit program.

macro_rules! enter {
    ($name:ident, |$ctx:ident| $pending:expr) => {
        #[tracepoint]
        pub fn $name($ctx: TracePointContext) -> u32 {
            if let Some(pending) = $pending {
                stash(pending);
            }
            0
        }
    };
}

/// A dirfd or fd argument: syscall tracepoints store an `int` zero-extended to 8 bytes, so
/// AT_FDCWD arrives as 0xffffff9c and must be sign-extended from 32 bits.
fn fd(raw: u64) -> i64 {
    raw as i32 as i64
}

fn path_op(kind: EventKind, dfd: u64, path: u64) -> Pending {
    Pending {
        dfd1: fd(dfd),
        p1: path,
        ..Pending::new(kind, Shape::Path)
    }
}

const AT_FDCWD: u64 = -100i64 as u64;
const AT_REMOVEDIR: u64 = 0x200;

enter!(tp_enter_unlink, |ctx| Some(path_op(
    EventKind::Unlink,
    AT_FDCWD,
    arg(&ctx, 0)
)));
enter!(tp_enter_unlinkat, |ctx| {
    let kind = if arg(&ctx, 2) & AT_REMOVEDIR != 0 {
        EventKind::Rmdir
    } else {
        EventKind::Unlink
    };
    Some(path_op(kind, arg(&ctx, 0), arg(&ctx, 1)))
});
enter!(tp_enter_rmdir, |ctx| Some(path_op(
    EventKind::Rmdir,
    AT_FDCWD,
    arg(&ctx, 0)
)));
enter!(tp_enter_mkdir, |ctx| Some(Pending {
    mode: arg(&ctx, 1) as u32,
    ..path_op(EventKind::Mkdir, AT_FDCWD, arg(&ctx, 0))
}));
enter!(tp_enter_mkdirat, |ctx| Some(Pending {
    mode: arg(&ctx, 2) as u32,
    ..path_op(EventKind::Mkdir, arg(&ctx, 0), arg(&ctx, 1))
}));
// mknod(path, mode, dev) and mknodat(dfd, path, mode, dev): FIFOs, device nodes, sockets and
// regular files made without open(2) (mkfifo(3) and mknod(3) use mknodat).
enter!(tp_enter_mknod, |ctx| Some(Pending {
    mode: arg(&ctx, 1) as u32,
    ..path_op(EventKind::Create, AT_FDCWD, arg(&ctx, 0))
}));
enter!(tp_enter_mknodat, |ctx| Some(Pending {
    mode: arg(&ctx, 2) as u32,
    ..path_op(EventKind::Create, arg(&ctx, 0), arg(&ctx, 1))
}));
enter!(tp_enter_chmod, |ctx| Some(Pending {
    mode: arg(&ctx, 1) as u32,
    ..path_op(EventKind::Chmod, AT_FDCWD, arg(&ctx, 0))
}));
enter!(tp_enter_fchmodat, |ctx| Some(Pending {
    mode: arg(&ctx, 2) as u32,
    ..path_op(EventKind::Chmod, arg(&ctx, 0), arg(&ctx, 1))
}));
enter!(tp_enter_fchmod, |ctx| Some(Pending {
    mode: arg(&ctx, 1) as u32,
    dfd1: fd(arg(&ctx, 0)),
    ..Pending::new(EventKind::Chmod, Shape::Fd)
}));
enter!(tp_enter_chown, |ctx| Some(Pending {
    uid: arg(&ctx, 1) as u32,
    gid: arg(&ctx, 2) as u32,
    ..path_op(EventKind::Chown, AT_FDCWD, arg(&ctx, 0))
}));
enter!(tp_enter_fchownat, |ctx| Some(Pending {
    uid: arg(&ctx, 2) as u32,
    gid: arg(&ctx, 3) as u32,
    ..path_op(EventKind::Chown, arg(&ctx, 0), arg(&ctx, 1))
}));
enter!(tp_enter_fchown, |ctx| Some(Pending {
    uid: arg(&ctx, 1) as u32,
    gid: arg(&ctx, 2) as u32,
    dfd1: fd(arg(&ctx, 0)),
    ..Pending::new(EventKind::Chown, Shape::Fd)
}));
enter!(tp_enter_truncate, |ctx| Some(path_op(
    EventKind::Truncate,
    AT_FDCWD,
    arg(&ctx, 0)
)));
enter!(tp_enter_ftruncate, |ctx| Some(Pending {
    dfd1: fd(arg(&ctx, 0)),
    ..Pending::new(EventKind::Truncate, Shape::Fd)
}));
fn open_op(dfd: u64, path: u64, open_flags: u32, mode: u64) -> Option<Pending> {
    if open_flags & (syscalls::WRITE_INTENT | syscalls::O_CREAT) == 0 {
        return None;
    }
    Some(Pending {
        dfd1: fd(dfd),
        p1: path,
        flags: open_flags,
        mode: mode as u32,
        ..Pending::new(EventKind::OpenWrite, Shape::Open)
    })
}
enter!(tp_enter_open, |ctx| open_op(
    AT_FDCWD,
    arg(&ctx, 0),
    arg(&ctx, 1) as u32,
    arg(&ctx, 2)
));
enter!(tp_enter_openat, |ctx| open_op(
    arg(&ctx, 0),
    arg(&ctx, 1),
    arg(&ctx, 2) as u32,
    arg(&ctx, 3)
));
enter!(tp_enter_creat, |ctx| open_op(
    AT_FDCWD,
    arg(&ctx, 0),
    syscalls::O_CREAT | 0o1 | 0o1000,
    arg(&ctx, 1)
));
enter!(tp_enter_openat2, |ctx| {
    // struct open_how { u64 flags; u64 mode; u64 resolve; } in user memory.
    let how = arg(&ctx, 2) as *const u64;
    // SAFETY: the helper checks the user address.
    let how_flags = unsafe { aya_ebpf::helpers::bpf_probe_read_user(how) }.unwrap_or(0);
    let how_mode =
        unsafe { aya_ebpf::helpers::bpf_probe_read_user(how.wrapping_add(1)) }.unwrap_or(0);
    open_op(arg(&ctx, 0), arg(&ctx, 1), how_flags as u32, how_mode)
});
fn two_paths(
    kind: EventKind,
    dfd1: u64,
    p1: u64,
    dfd2: u64,
    p2: u64,
    flags: u64,
) -> Option<Pending> {
    Some(Pending {
        dfd1: fd(dfd1),
        p1,
        dfd2: fd(dfd2),
        p2,
        flags: flags as u32,
        ..Pending::new(kind, Shape::TwoPaths)
    })
}
enter!(tp_enter_rename, |ctx| two_paths(
    EventKind::Rename,
    AT_FDCWD,
    arg(&ctx, 0),
    AT_FDCWD,
    arg(&ctx, 1),
    0
));
enter!(tp_enter_renameat, |ctx| two_paths(
    EventKind::Rename,
    arg(&ctx, 0),
    arg(&ctx, 1),
    arg(&ctx, 2),
    arg(&ctx, 3),
    0
));
enter!(tp_enter_renameat2, |ctx| two_paths(
    EventKind::Rename,
    arg(&ctx, 0),
    arg(&ctx, 1),
    arg(&ctx, 2),
    arg(&ctx, 3),
    arg(&ctx, 4)
));
enter!(tp_enter_link, |ctx| two_paths(
    EventKind::Link,
    AT_FDCWD,
    arg(&ctx, 0),
    AT_FDCWD,
    arg(&ctx, 1),
    0
));
enter!(tp_enter_linkat, |ctx| two_paths(
    EventKind::Link,
    arg(&ctx, 0),
    arg(&ctx, 1),
    arg(&ctx, 2),
    arg(&ctx, 3),
    0
));
enter!(tp_enter_symlink, |ctx| Some(Pending {
    p1: arg(&ctx, 0),
    p2: arg(&ctx, 1),
    ..Pending::new(EventKind::Symlink, Shape::Symlink)
}));
enter!(tp_enter_symlinkat, |ctx| Some(Pending {
    p1: arg(&ctx, 0),
    dfd2: fd(arg(&ctx, 1)),
    p2: arg(&ctx, 2),
    ..Pending::new(EventKind::Symlink, Shape::Symlink)
}));
fn xattr_op(kind: EventKind, path: u64, name: u64) -> Option<Pending> {
    Some(Pending {
        p1: path,
        p2: name,
        ..Pending::new(kind, Shape::Xattr)
    })
}
enter!(tp_enter_setxattr, |ctx| xattr_op(
    EventKind::SetXattr,
    arg(&ctx, 0),
    arg(&ctx, 1)
));
enter!(tp_enter_removexattr, |ctx| xattr_op(
    EventKind::RemoveXattr,
    arg(&ctx, 0),
    arg(&ctx, 1)
));
enter!(tp_enter_fsetxattr, |ctx| Some(Pending {
    dfd1: fd(arg(&ctx, 0)),
    p2: arg(&ctx, 1),
    ..Pending::new(EventKind::SetXattr, Shape::Fd)
}));
enter!(tp_enter_fremovexattr, |ctx| Some(Pending {
    dfd1: fd(arg(&ctx, 0)),
    p2: arg(&ctx, 1),
    ..Pending::new(EventKind::RemoveXattr, Shape::Fd)
}));

// Program executions (attribution), one program per backend so the record names it.
macro_rules! exec_program {
    ($name:ident, $backend:expr) => {
        #[tracepoint]
        pub fn $name(_ctx: TracePointContext) -> u32 {
            let _ = exec::exec($backend);
            0
        }
    };
}
exec_program!(exec_lsm, Backend::Lsm);
exec_program!(exec_fentry, Backend::Fentry);
exec_program!(exec_tracepoint, Backend::Tracepoint);

/// A process or thread forked: its start time by pid, for the completeness layer's actors.
#[tracepoint]
pub fn tp_fork(ctx: TracePointContext) -> u32 {
    let _ = forks::fork(&ctx);
    0
}

/// close(fd): a tracked writer's close is `Modified`; reported at enter, while the fd is valid.
#[tracepoint]
pub fn tp_enter_close(ctx: TracePointContext) -> u32 {
    let _ = syscalls::close(fd(arg(&ctx, 0)));
    0
}

#[tracepoint]
pub fn tp_exit(ctx: TracePointContext) -> u32 {
    let _ = syscalls::exit(&ctx);
    0
}

/// The open family's exits: decided on the file that was opened.
#[tracepoint]
pub fn tp_exit_open(ctx: TracePointContext) -> u32 {
    let _ = syscalls::exit_open(&ctx);
    0
}

// open_by_handle_at(mount_fd, handle, flags): a file reached by a handle, not a name.
enter!(tp_enter_open_by_handle_at, |ctx| open_op(
    AT_FDCWD,
    0,
    arg(&ctx, 2) as u32,
    0
));

/// Does nothing: `cargo xtask bench sensor` attaches it wherever the tracepoint backend
/// attaches, to measure what the attach points cost before any of fim's work.
#[tracepoint]
pub fn tp_noop(_ctx: TracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier guarantees this is unreachable; a loop is the only thing allowed here.
    loop {}
}

/// GPL-compatible licence: helpers such as `bpf_probe_read_kernel` and `bpf_d_path` are only
/// offered to GPL programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
