//! Files only their owner reads: the store (with its WAL and shared-memory files), its key and
//! the event output hold file contents, command lines and who changed what. They are made
//! mode 0600 (the key 0400) whatever the umask, and whatever the mode of a directory that
//! already existed; a state directory others can read is worth a warning.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// The mode of every file fim writes but the key.
pub const FILE_MODE: u32 = 0o600;

/// Sets `file`'s mode to [`FILE_MODE`] when it differs (a file an older fim or another tool
/// created with a wider mode, or the umask narrowed).
pub fn restrict(file: &File, path: &Path) -> Result<()> {
    let mode = file
        .metadata()
        .with_context(|| format!("stat of {}", path.display()))?
        .permissions()
        .mode()
        & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("making {} readable by its owner only", path.display()))?;
    }
    Ok(())
}

/// Creates `path` as an empty file if it does not exist yet (a file that exists, or that
/// another thread creates first, is left alone), and sets its mode to [`FILE_MODE`] by its
/// path. It never opens the file: closing any descriptor of a file drops every POSIX lock
/// the process holds on it, which SQLite's other connections rely on. (`mknod` makes a
/// regular file without opening it.)
pub fn create_or_restrict(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: a valid NUL-terminated path; mknod has no other preconditions.
    let rc = unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFREG | FILE_MODE, 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e).with_context(|| format!("creating {}", path.display()));
        }
    }
    restrict_path(path)
}

/// Sets the mode of `path` to [`FILE_MODE`] when it exists with another (by its path, see
/// [`create_or_restrict`]); nothing when it does not exist.
pub fn restrict_path(path: &Path) -> Result<()> {
    let mode = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & 0o7777,
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("stat of {}", path.display())),
    };
    if mode != FILE_MODE {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("making {} readable by its owner only", path.display()))?;
    }
    Ok(())
}

/// A warning when users other than the owner can list or enter `dir` (the state directory):
/// fim's own files there are 0600, but anything else put there is exposed.
pub fn exposed_dir_warning(dir: &Path) -> Option<String> {
    let mode = std::fs::metadata(dir).ok()?.permissions().mode() & 0o7777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the state directory {} is mode {mode:04o}: other users can reach what is in it; \
             `chmod 700 {}` makes it the owner's only (fim's own files there are 0600)",
            dir.display(),
            dir.display()
        )
    })
}
