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

/// How a program reads kernel memory.
///
/// `Probe` calls `bpf_probe_read_kernel`: it works on any address, including pointers that
/// came out of an earlier read or out of map memory, which the verifier only knows as numbers
/// (the tracepoint backend's pointers are all of that kind).
///
/// `Direct` is a plain load. LSM and fentry programs get typed (BTF) pointers as arguments,
/// and the verifier keeps the type through member offsets it knows (the offsets live in a
/// frozen read-only map, so it does) and through pointer members it loads; it turns each
/// such load into a single fault-safe instruction, where the helper costs a call and a
/// checked copy. A load that faults gives 0, so callers check pointers for null as they
/// would anyway. Only for pointers the verifier knows as typed.
pub trait Access {
    fn read<T: Copy>(base: *const u8, offset: usize) -> Result<T, i64>;

    #[inline(always)]
    fn read_ptr(base: *const u8, offset: usize) -> Result<*const u8, i64> {
        Self::read::<u64>(base, offset).map(|p| p as *const u8)
    }
}

pub struct Probe;

impl Access for Probe {
    #[inline(always)]
    fn read<T: Copy>(base: *const u8, offset: usize) -> Result<T, i64> {
        read(base, offset)
    }
}

pub struct Direct;

impl Access for Direct {
    #[inline(always)]
    fn read<T: Copy>(base: *const u8, offset: usize) -> Result<T, i64> {
        // SAFETY: see `Access`: the verifier accepts this load only on a typed pointer at a
        // member it knows, and makes it fault-safe.
        Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(offset).cast::<T>()) })
    }
}
