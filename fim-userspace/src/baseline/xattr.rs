//! A digest of a path's extended attributes (security.*, user.*, trusted.* as far as we may
//! read them), so a changed SELinux label, capability or ACL shows up as drift.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How often a list/get is retried when the attributes grow between the size query and the read.
const RACE_RETRIES: usize = 4;

/// BLAKE3 over the attributes sorted by name, each as (name length, name, value length,
/// value), so no two different attribute sets hash alike. `Ok(None)`: no attributes (or the
/// file system has none). Symlinks are not followed (`l*xattr`).
pub fn xattr_digest(path: &Path) -> std::io::Result<Option<[u8; 32]>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    digest(&Target::Path(&c_path))
}

/// [`xattr_digest`] of an open file (no path lookup; the same inode the caller examines).
pub fn xattr_digest_fd(fd: BorrowedFd<'_>) -> std::io::Result<Option<[u8; 32]>> {
    digest(&Target::Fd(fd.as_raw_fd()))
}

/// What the attributes are read from.
enum Target<'a> {
    Path(&'a CString),
    Fd(RawFd),
}

fn digest(target: &Target<'_>) -> std::io::Result<Option<[u8; 32]>> {
    let names = match list(target) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut names: Vec<&[u8]> = names.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        return Ok(None);
    }
    names.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    for name in names {
        let Ok(c_name) = CString::new(name) else {
            continue;
        };
        let value = match get(target, &c_name) {
            Ok(value) => value,
            // Removed between list and get: the digest reflects what is left.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(Some(*hasher.finalize().as_bytes()))
}

/// Calls a size-query-then-fill libc function, retrying on ERANGE (the data grew meanwhile).
fn read_sized(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> std::io::Result<Vec<u8>> {
    for _ in 0..RACE_RETRIES {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr().cast(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ERANGE))
}

fn list(target: &Target<'_>) -> std::io::Result<Vec<u8>> {
    // Most files have no attributes: one call with a small stack buffer answers that (and
    // usually returns the names too) without the size query.
    let mut small = [0u8; 256];
    // SAFETY: the pointer/length pair describes `small`; paths are NUL-terminated.
    let got = unsafe { list_raw(target, small.as_mut_ptr().cast(), small.len()) };
    if got >= 0 {
        return Ok(small[..got as usize].to_vec());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ERANGE) {
        return Err(err);
    }
    // SAFETY: as above; the buffer pointer/length pair comes from read_sized.
    read_sized(|buf, len| unsafe { list_raw(target, buf.cast(), len) })
}

/// # Safety
/// `buf` must be valid for `len` bytes (or null with `len` 0).
unsafe fn list_raw(target: &Target<'_>, buf: *mut libc::c_char, len: usize) -> isize {
    // SAFETY: forwarded from the caller; the path is NUL-terminated.
    unsafe {
        match target {
            Target::Path(path) => libc::llistxattr(path.as_ptr(), buf, len),
            Target::Fd(fd) => libc::flistxattr(*fd, buf, len),
        }
    }
}

fn get(target: &Target<'_>, name: &CString) -> std::io::Result<Vec<u8>> {
    // SAFETY: NUL-terminated path and name; the buffer pointer/length pair comes from
    // read_sized.
    read_sized(|buf, len| unsafe {
        match target {
            Target::Path(path) => libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf, len),
            Target::Fd(fd) => libc::fgetxattr(*fd, name.as_ptr(), buf, len),
        }
    })
}
