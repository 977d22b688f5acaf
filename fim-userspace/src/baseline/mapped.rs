//! Hashing large files through a read-only mapping instead of `read(2)`.
//!
//! With a warm page cache, `read(2)` spends about as long copying a file into our buffer as
//! BLAKE3 spends hashing it; a mapping lets BLAKE3 read the page cache directly. The file
//! is mapped a window at a time ([`WINDOW`]), so what the mapping adds to the resident set
//! stays bounded for any file size.
//!
//! The danger of mapping files we do not control: when one shrinks while mapped, touching a
//! page past its new end raises SIGBUS, which would kill the daemon (any user who can
//! truncate a watched file could do it). So a SIGBUS handler is installed once: a fault
//! inside a window registered here is answered by mapping a zero page over the faulting
//! page, and the window is marked faulted; the hash is then discarded and the file hashed
//! again (it changed, which the `fstat` afterwards confirms). Faults anywhere else go to the
//! handler that was there before (Rust's stack-overflow handler) or to the default action,
//! exactly as without us.

use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Bytes mapped at a time.
pub const WINDOW: usize = 16 << 20;
/// Files at least this large are mapped; smaller ones take a single `read(2)`.
pub const MIN_SIZE: u64 = 64 << 10;

/// One mapped window in use (`end` = 0: none).
struct Slot {
    used: AtomicBool,
    start: AtomicUsize,
    end: AtomicUsize,
    faulted: AtomicBool,
}

const SLOTS: usize = 64;
static REGISTRY: [Slot; SLOTS] = [const {
    Slot {
        used: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; SLOTS];
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// The SIGBUS disposition before ours (to chain to); set once, before ours is installed.
struct Previous(libc::sigaction);
// SAFETY: a plain C struct of integers and function addresses, written once before use.
unsafe impl Sync for Previous {}
// SAFETY: as above.
unsafe impl Send for Previous {}
static PREVIOUS: OnceLock<Previous> = OnceLock::new();
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Installs the SIGBUS handler once; false when that failed (then nothing is mapped).
fn installed() -> bool {
    *INSTALLED.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE_SIZE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: zeroed sigaction structs are valid; the calls only read/write them.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return false;
            }
            let _ = PREVIOUS.set(Previous(old));
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) == 0
        }
    })
}

/// Only async-signal-safe work: atomics, mmap, sigaction, and calling the previous handler.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &REGISTRY {
        let (start, end) = (
            slot.start.load(Ordering::Acquire),
            slot.end.load(Ordering::Acquire),
        );
        if addr >= start && addr < end {
            let page = addr & !(PAGE_SIZE.load(Ordering::Relaxed) - 1);
            // SAFETY: replaces one page inside a window this module mapped and still owns.
            let mapped = unsafe {
                libc::mmap(
                    page as *mut c_void,
                    PAGE_SIZE.load(Ordering::Relaxed),
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if mapped != libc::MAP_FAILED {
                slot.faulted.store(true, Ordering::Release);
                return;
            }
        }
    }
    // Not ours: what would have happened without us.
    match PREVIOUS.get() {
        Some(Previous(previous))
            if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN =>
        {
            if previous.sa_flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous handler was installed as an SA_SIGINFO handler.
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(sig, info, context);
            } else {
                // SAFETY: the previous handler was installed as a plain handler.
                let handler: extern "C" fn(libc::c_int) =
                    unsafe { std::mem::transmute(previous.sa_sigaction) };
                handler(sig);
            }
        }
        _ => {
            // Restore the default action; returning re-runs the faulting access, which
            // then terminates the process as it would have without this handler.
            // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask.
            unsafe {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
            }
        }
    }
}

/// A claimed registry slot, released on drop.
struct Claim(&'static Slot);

impl Claim {
    fn take() -> Option<Claim> {
        REGISTRY.iter().find_map(|slot| {
            slot.used
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .ok()
                .map(|_| {
                    slot.faulted.store(false, Ordering::Release);
                    Claim(slot)
                })
        })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.end.store(0, Ordering::Release);
        self.0.start.store(0, Ordering::Release);
        self.0.used.store(false, Ordering::Release);
    }
}

/// What [`hash`] found.
pub enum Mapped {
    /// All `size` bytes hashed.
    Done,
    /// The file shrank under the mapping (SIGBUS): the hash is worthless, try again.
    Faulted,
    /// Mapping is not possible here (no handler, no free slot, mmap refused): use read(2).
    Unavailable,
}

/// Feeds the first `size` bytes of `file` to `hasher` through mappings of [`WINDOW`] bytes;
/// `after_window` runs after each window with its length.
pub fn hash(
    file: &File,
    size: u64,
    hasher: &mut blake3::Hasher,
    mut after_window: impl FnMut(usize),
) -> Mapped {
    if !installed() {
        return Mapped::Unavailable;
    }
    let Some(claim) = Claim::take() else {
        return Mapped::Unavailable;
    };
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(WINDOW as u64) as usize;
        // SAFETY: a fresh read-only mapping of our own descriptor; the kernel picks the
        // address. MAP_POPULATE maps what the page cache holds up front (fewer faults).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            // Only possible before anything was hashed on the first window (nothing else
            // differs between windows); later, treat it as a change and let the caller retry.
            return if offset == 0 {
                Mapped::Unavailable
            } else {
                Mapped::Faulted
            };
        }
        let start = ptr as usize;
        claim.0.start.store(start, Ordering::Release);
        claim.0.end.store(start + len, Ordering::Release);
        // SAFETY: `len` readable bytes are mapped at `ptr` until the munmap below; a page the
        // file loses meanwhile is replaced by zeros (see the module comment), never unmapped.
        // Another process may change the bytes while we read them, as with read(2): the
        // fstat after hashing detects that and the hash is discarded.
        let window = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        hasher.update(window);
        claim.0.end.store(0, Ordering::Release);
        claim.0.start.store(0, Ordering::Release);
        // SAFETY: unmaps exactly the mapping made above, no longer referenced.
        unsafe { libc::munmap(ptr, len) };
        if claim.0.faulted.load(Ordering::Acquire) {
            return Mapped::Faulted;
        }
        offset += len as u64;
        after_window(len);
    }
    Mapped::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_mapped_hash_equals_the_plain_hash() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..(WINDOW + 12345)).map(|i| (i % 253) as u8).collect();
        file.write_all(&data).unwrap();
        let mut hasher = blake3::Hasher::new();
        let mut windows = Vec::new();
        assert!(matches!(
            hash(&file, data.len() as u64, &mut hasher, |n| windows.push(n)),
            Mapped::Done
        ));
        assert_eq!(hasher.finalize(), blake3::hash(&data));
        assert_eq!(windows, [WINDOW, 12345]);
    }

    #[test]
    fn a_file_truncated_under_the_mapping_is_a_fault_not_a_crash() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![1u8; 1 << 20]).unwrap();
        // Announced size larger than the file: the pages past the end raise SIGBUS.
        let mut hasher = blake3::Hasher::new();
        let size = 1u64 << 21;
        assert!(matches!(
            hash(&file, size, &mut hasher, |_| {}),
            Mapped::Faulted
        ));
        // The slot is free again and mapping still works.
        let mut hasher = blake3::Hasher::new();
        assert!(matches!(
            hash(&file, 1 << 20, &mut hasher, |_| {}),
            Mapped::Done
        ));
        assert_eq!(hasher.finalize(), blake3::hash(&vec![1u8; 1 << 20]));
    }
}
