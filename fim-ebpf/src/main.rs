//! fim's kernel programs. Each entry point is thin: it calls a `try_*` function that returns a
//! `Result`, so the control flow of the real work can use `?`.
#![no_std]
#![no_main]

mod emit;

use aya_ebpf::{
    macros::{fentry, lsm, tracepoint},
    programs::{FEntryContext, LsmContext, TracePointContext},
};
use fim_common::{Backend, EventKind};

/// LSM `path_unlink(const struct path *dir, struct dentry *dentry)`.
/// Never denies: it returns what the previous LSM in the chain decided.
#[lsm(hook = "path_unlink")]
pub fn lsm_path_unlink(ctx: LsmContext) -> i32 {
    // The third argument of a BPF LSM program is the return value of the previous hook.
    let previous: i32 = ctx.arg(2);
    if previous != 0 {
        // Someone else already refused the operation: nothing will change on disk.
        return previous;
    }
    let _ = emit::event(EventKind::Unlink, Backend::Lsm);
    previous
}

/// fentry on `vfs_unlink`, for kernels without `bpf` in `lsm=`.
#[fentry(function = "vfs_unlink")]
pub fn fentry_vfs_unlink(_ctx: FEntryContext) -> u32 {
    let _ = emit::event(EventKind::Unlink, Backend::Fentry);
    0
}

/// `syscalls:sys_enter_unlinkat`, the fallback that loads on every kernel with tracepoints.
#[tracepoint]
pub fn tp_sys_enter_unlinkat(_ctx: TracePointContext) -> u32 {
    let _ = emit::event(EventKind::Unlink, Backend::Tracepoint);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier guarantees this is unreachable; a loop is the only thing allowed here.
    loop {}
}

/// GPL-compatible licence: helpers such as `bpf_d_path` are only offered to GPL programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
