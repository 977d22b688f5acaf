//! Reading kernel memory at offsets user space found in the running kernel's BTF.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;
use fim_common::KernelOffsets;

/// Filled by user space before load (`EbpfLoader::set_global`); zero means "unknown".
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Reads one offset. Volatile so the compiler cannot fold the zero initialiser into the code.
macro_rules! off {
    ($field:ident) => {{
        // The macro is also used inside unsafe blocks.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const $crate::kernel::OFFSETS.$field) };
        value as usize
    }};
}
pub(crate) use off;

/// Reads field `$field` of a per-CPU map value (`$state`, a pointer from `get_ptr_mut`).
/// Volatile: programs on one CPU share these values, so every access stays where it is.
macro_rules! field {
    ($state:expr, $field:ident) => {{
        // SAFETY: `state` is a valid per-CPU map value.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const (*$state).$field) };
        value
    }};
}
pub(crate) use field;

/// Writes field `$field` of a per-CPU map value (see `field!`).
macro_rules! set_field {
    ($state:expr, $field:ident, $value:expr) => {{
        let value = $value;
        // SAFETY: `state` is a valid per-CPU map value.
        #[allow(unused_unsafe)]
        unsafe {
            core::ptr::write_volatile(&raw mut (*$state).$field, value)
        }
    }};
}
pub(crate) use set_field;

/// Set by user space only for the sensor benchmark's floor rows: every hook program returns
/// at once (what attaching costs before fim does anything). In frozen read-only data, so the
/// verifier drops the branch that is not taken.
#[unsafe(no_mangle)]
pub static FLOOR: u8 = 0;

#[inline(always)]
pub fn floor() -> bool {
    // SAFETY: volatile so the zero initialiser is not folded into the code.
    unsafe { core::ptr::read_volatile(&raw const FLOOR) != 0 }
}

pub fn offsets_loaded() -> bool {
    off!(loaded) != 0
}

/// Reads a `T` at `base + offset` from kernel memory.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: usize) -> Result<T, i64> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper checks the source address; the destination is a local of size T.
    let rc = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            base.wrapping_add(offset).cast(),
        )
    };
    if rc != 0 {
        return Err(rc);
    }
    // SAFETY: the helper succeeded, so all bytes were written.
    Ok(unsafe { value.assume_init() })
}

/// Reads a kernel pointer at `base + offset`.
#[inline(always)]
pub fn read_ptr(base: *const u8, offset: usize) -> Result<*const u8, i64> {
    read::<u64>(base, offset).map(|p| p as *const u8)
}

/// A pointer as a plain number. Pointers the kernel hands to LSM and fentry programs are typed
/// (BTF) and the verifier rejects arithmetic on them beyond adding offsets; copying the value
/// through the read helper gives a number it lets programs hash.
#[inline(always)]
pub fn as_number(pointer: *const u8) -> u64 {
    let value = pointer as u64;
    read::<u64>((&raw const value).cast(), 0).unwrap_or(0)
}

/// A plain load at `base + offset`: the current task's own fields, and pointers that can
/// never be null where they are read (see `member`).
///
/// `bpf_get_current_task_btf` gives the task as a typed (BTF) pointer, and the verifier
/// turns a load through one, at a member offset it knows (ours sit in frozen rodata), into a
/// single instruction, where `bpf_probe_read_kernel` is a helper call and a checked copy.
/// But a verifier that takes a member for trusted also takes it for never null: it drops a
/// null check on it as dead code and makes loads through it plain ones that fault. 6.12 does
/// that with a dentry's `d_inode`, which is null for a name about to be created, and it
/// crashed the 6.12 test VM when the filter walk read every dentry's inode this way. So
/// these loads are kept to members that are never null where fim reads them: the task's
/// `real_parent`, `group_leader`, `cred`; `fs`, which only syscall and open paths read (null
/// only once the task is exiting), null-checked all the same; a hook's `struct path`
/// members, a dentry's `d_parent` and `d_sb`, and the inode of a dentry's *parent* (a dentry
/// holds a reference on its parent, and a referenced dentry stays positive: rmdir only
/// unhashes it), and for the same reason the inode of a hook's dentry that names an existing
/// object (`filter::check`'s `positive`). A hook's dentry that names something about to be
/// created is negative: its inode goes through the helper, as does everything about the file
/// of `mmap_file`, which is null for anonymous memory.
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: see above: the verifier accepts this load only on a typed pointer at a member
    // it knows.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset).cast::<T>()) }
}

/// `load` of a pointer member.
#[inline(always)]
pub fn load_ptr(base: *const u8, offset: usize) -> *const u8 {
    load::<u64>(base, offset) as *const u8
}

/// A member of `base`: a plain `load` when `TYPED` (the caller holds a typed pointer the
/// verifier knows, and the member cannot be null where it is read: see `load`), else through
/// the helper.
#[inline(always)]
pub fn member<T: Copy, const TYPED: bool>(base: *const u8, offset: usize) -> Result<T, i64> {
    if TYPED {
        Ok(load::<T>(base, offset))
    } else {
        read::<T>(base, offset)
    }
}

/// `member` of a pointer.
#[inline(always)]
pub fn member_ptr<const TYPED: bool>(base: *const u8, offset: usize) -> Result<*const u8, i64> {
    member::<u64, TYPED>(base, offset).map(|p| p as *const u8)
}
