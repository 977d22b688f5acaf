//! The acting process: ids from helpers, the rest from `task_struct`.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task,
            bpf_get_current_task_btf,
        },
    },
    macros::map,
    maps::PerCpuArray,
};
use fim_common::Actor;

use crate::kernel::{field, load, load_ptr, off, read, read_ptr, set_field};

/// The current task as a number: for the read helper (`kernel::read`).
pub fn current_task() -> *const u8 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// The current task as a typed pointer (5.11+, every program type fim uses): for
/// `kernel::load`, an instruction per member instead of a helper call.
#[inline(always)]
pub fn current_task_btf() -> *const u8 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task_btf() as *const u8 }
}

/// The actor of the last record on this CPU (lsm and fentry), and what it was derived from.
///
/// A record's actor costs about 770 instructions on 6.1: five helpers (ids, comm, cgroup)
/// and three reads for the mount namespace. Changes come in runs from one process, and
/// everything behind the actor hangs off the task through pointers to objects the kernel
/// never changes in place: credentials are replaced, not edited (`commit_creds`), and so are
/// the namespace set (`switch_task_namespaces`) and the cgroup set (a migration moves the
/// task to another `css_set`); the parent's tgid stays with the parent (a reparented task
/// gets a new `real_parent`); the group leader's start time stays with the leader. The pid
/// changes when a thread execs (`de_thread`), and comm in place (`prctl`, exec): both are
/// compared by value. The login uid is written in place too, so it is always loaded afresh.
///
/// Per CPU, written with the task cleared first and set last and read the other way round,
/// as `dirmemo`, so a program interleaved on this CPU never takes a half-written entry.
#[repr(C)]
struct ActorMemo {
    task: u64,
    /// Thread and process id: a thread that execs takes the leader's pid.
    pid_tgid: u64,
    /// The task's own start time: a task freed and another allocated at its address.
    start: u64,
    cred: u64,
    parent: u64,
    leader: u64,
    nsproxy: u64,
    /// The task's `css_set`.
    cgroups: u64,
    comm: [u64; 2],
    actor: Actor,
}

#[map]
static ACTORMEMO: PerCpuArray<ActorMemo> = PerCpuArray::with_max_entries(1, 0);

/// Fills `actor` for the current task, from this CPU's memo when `MEMO` (the lsm and fentry
/// programs; the tracepoint ones are at the 6.1 verifier's limit) and nothing it depends on
/// changed since.
#[inline(always)]
pub fn fill<const MEMO: bool>(actor: &mut Actor) {
    let cgroups = off!(task_cgroups);
    if !MEMO || !crate::kernel::offsets_loaded() || cgroups == 0 {
        fill_fresh(actor);
        return;
    }
    let Some(memo) = ACTORMEMO.get_ptr_mut(0) else {
        fill_fresh(actor);
        return;
    };
    let task = current_task_btf();
    let comm = off!(task_comm);
    // Each part of the key is compared as soon as it is loaded (nothing held on the stack,
    // which the 6.1 verifier limits across calls), and loaded again for a new entry.
    let same = field!(memo, task) == task as u64
        && field!(memo, pid_tgid) == bpf_get_current_pid_tgid()
        && field!(memo, start) == load::<u64>(task, off!(task_start_boottime))
        && field!(memo, cred) == load::<u64>(task, off!(task_cred))
        && field!(memo, parent) == load::<u64>(task, off!(task_real_parent))
        && field!(memo, leader) == load::<u64>(task, off!(task_group_leader))
        && field!(memo, nsproxy) == load::<u64>(task, off!(task_nsproxy))
        && field!(memo, cgroups) == load::<u64>(task, cgroups)
        && field!(memo, comm) == [load::<u64>(task, comm), load::<u64>(task, comm + 8)];
    if same {
        // SAFETY: both are valid map values; see `ActorMemo` for the order.
        unsafe { core::ptr::copy_nonoverlapping(&raw const (*memo).actor, actor, 1) };
        if field!(memo, task) == task as u64 {
            actor.loginuid = loginuid();
            return;
        }
    }
    // The key is stored before the actor is read: if something changes meanwhile, the memo
    // holds the older key, which the next check finds changed.
    set_field!(memo, task, 0);
    set_field!(memo, pid_tgid, bpf_get_current_pid_tgid());
    set_field!(memo, start, load::<u64>(task, off!(task_start_boottime)));
    set_field!(memo, cred, load::<u64>(task, off!(task_cred)));
    set_field!(memo, parent, load::<u64>(task, off!(task_real_parent)));
    set_field!(memo, leader, load::<u64>(task, off!(task_group_leader)));
    set_field!(memo, nsproxy, load::<u64>(task, off!(task_nsproxy)));
    set_field!(memo, cgroups, load::<u64>(task, cgroups));
    set_field!(
        memo,
        comm,
        [load::<u64>(task, comm), load::<u64>(task, comm + 8)]
    );
    fill_fresh(actor);
    // SAFETY: as above.
    unsafe { core::ptr::copy_nonoverlapping(actor, &raw mut (*memo).actor, 1) };
    set_field!(memo, task, task as u64);
}

/// The current task's login uid (`u32::MAX` without CONFIG_AUDIT or offsets).
#[inline(always)]
fn loginuid() -> u32 {
    let offset = off!(task_loginuid);
    if !crate::kernel::offsets_loaded() || offset == 0 {
        return u32::MAX;
    }
    load::<u32>(current_task_btf(), offset)
}

/// Fills `actor` for the current task from the kernel. Fields that cannot be read stay at
/// their sentinel (`u32::MAX` for ids) rather than being guessed.
#[inline(always)]
fn fill_fresh(actor: &mut Actor) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    actor.tgid = (pid_tgid >> 32) as u32;
    actor.pid = pid_tgid as u32;
    actor.uid = uid_gid as u32;
    actor.gid = (uid_gid >> 32) as u32;
    // Straight into the record: aya's wrapper goes through a zeroed stack buffer, which the
    // BPF target zeroes and copies a byte at a time. The helper fills all 16 bytes (zeroes
    // on failure).
    // SAFETY: `comm` is 16 writable bytes.
    unsafe { bpf_get_current_comm(actor.comm.as_mut_ptr().cast(), actor.comm.len() as u32) };
    // SAFETY: no preconditions.
    actor.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    actor.ppid = u32::MAX;
    actor.euid = u32::MAX;
    actor.loginuid = u32::MAX;
    actor.mnt_ns = 0;
    actor.start_boottime_ns = 0;
    if !crate::kernel::offsets_loaded() {
        return;
    }
    let task = current_task_btf();
    let parent = load_ptr(task, off!(task_real_parent));
    if !parent.is_null() {
        actor.ppid = load::<u32>(parent, off!(task_tgid));
    }
    let cred = load_ptr(task, off!(task_cred));
    if !cred.is_null() {
        actor.euid = load::<u32>(cred, off!(cred_euid));
    }
    actor.loginuid = loginuid();
    let leader = load_ptr(task, off!(task_group_leader));
    if !leader.is_null() {
        actor.start_boottime_ns = load::<u64>(leader, off!(task_start_boottime));
    }
    // Through the helper: `nsproxy` is null once an exiting task has left its namespaces,
    // and files it wrote are released after that (see `kernel::load`).
    if let Ok(nsproxy) = read_ptr(current_task(), off!(task_nsproxy))
        && !nsproxy.is_null()
        && let Ok(mnt_ns) = read_ptr(nsproxy, off!(nsproxy_mnt_ns))
    {
        actor.mnt_ns = read::<u32>(mnt_ns, off!(mnt_namespace_ns_inum)).unwrap_or(0);
    }
}
