//! File handles of the places fim marks, and the way back from a handle to a path.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use super::decode::{Handle, MAX_HANDLE_BYTES};

/// An object opened for marking: an `O_PATH` descriptor of exactly the inode whose handle
/// it carries (no symlink followed), so the mark lands on the inode the handle names even if
/// the path changes in between.
pub struct Opened {
    pub fd: OwnedFd,
    pub handle: Handle,
    pub is_dir: bool,
    /// Regular file with more than one link.
    pub links: u64,
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `open(path, flags | O_CLOEXEC)`.
fn open_path(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` (not following a final symlink) and reads its handle and type.
pub fn open(path: &Path) -> io::Result<Opened> {
    let fd = open_path(path, libc::O_PATH | libc::O_NOFOLLOW)?;
    // SAFETY: fstat fills the struct it is given.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    let handle = handle_of(&fd)?;
    let kind = st.st_mode & libc::S_IFMT;
    Ok(Opened {
        fd,
        handle,
        is_dir: kind == libc::S_IFDIR,
        links: if kind == libc::S_IFREG {
            st.st_nlink
        } else {
            1
        },
    })
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    bytes: u32,
    kind: i32,
    data: [u8; MAX_HANDLE_BYTES],
}

/// The handle and filesystem id fanotify reports for the object `fd` refers to.
pub fn handle_of(fd: &OwnedFd) -> io::Result<Handle> {
    let mut raw = RawHandle {
        bytes: MAX_HANDLE_BYTES as u32,
        kind: 0,
        data: [0; MAX_HANDLE_BYTES],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `raw` is a file_handle with `bytes` of room; the empty path with AT_EMPTY_PATH
    // names `fd` itself.
    let rc = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut raw).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs fills the struct it is given.
    let fsid = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(fd.as_raw_fd(), &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        // `fsid_t` is two ints; libc keeps them private.
        std::mem::transmute::<libc::fsid_t, [i32; 2]>(st.f_fsid)
    };
    let len = (raw.bytes as usize).min(MAX_HANDLE_BYTES);
    Ok(Handle {
        fsid: Handle::fsid_of(fsid),
        kind: raw.kind,
        bytes: raw.data[..len].to_vec(),
    })
}

/// A descriptor that `open_by_handle_at` accepts as the filesystem to look a handle up in
/// (it must not be `O_PATH`): the directory at `path`.
pub fn mount_fd(path: &Path) -> io::Result<OwnedFd> {
    open_path(path, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// Opens the object `handle` names (`O_PATH`), looked up in the filesystem of `mount`.
pub fn open_handle(mount: &OwnedFd, handle: &Handle) -> io::Result<OwnedFd> {
    let mut raw = RawHandle {
        bytes: handle.bytes.len().min(MAX_HANDLE_BYTES) as u32,
        kind: handle.kind,
        data: [0; MAX_HANDLE_BYTES],
    };
    raw.data[..raw.bytes as usize].copy_from_slice(&handle.bytes[..raw.bytes as usize]);
    // SAFETY: a valid file_handle; the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut raw).cast(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path the kernel shows for an open descriptor; `None` for an object that has no name
/// any more (" (deleted)") or no path under this process's root.
pub fn path_of(fd: &OwnedFd) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let bytes = link.as_os_str().as_bytes();
    if !bytes.starts_with(b"/") || bytes.ends_with(b" (deleted)") {
        return None;
    }
    Some(link)
}

/// `fanotify_mark` on the object `fd` refers to. The kernel takes no `O_PATH` descriptor
/// there, so the mark goes through the descriptor's /proc link, which the kernel resolves to
/// exactly that object (not to whatever has its path now).
pub fn mark(group: &OwnedFd, flags: libc::c_uint, mask: u64, fd: &OwnedFd) -> io::Result<()> {
    let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the group is open and the path a valid NUL-terminated string.
    let rc = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            flags,
            mask,
            libc::AT_FDCWD,
            link.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
