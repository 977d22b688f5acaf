//! A digest of a path's extended attributes (security.*, user.*, trusted.* as far as we may
//! read them), so a changed SELinux label, capability or ACL shows up as drift.

use std::ffi::CString;
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
    let names = match list(&c_path) {
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
        let value = match get(&c_path, &c_name) {
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

fn list(path: &CString) -> std::io::Result<Vec<u8>> {
    // SAFETY: `path` is NUL-terminated; the buffer pointer/length pair comes from read_sized.
    read_sized(|buf, len| unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) })
}

fn get(path: &CString, name: &CString) -> std::io::Result<Vec<u8>> {
    // SAFETY: as in `list`.
    read_sized(|buf, len| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf, len) })
}
