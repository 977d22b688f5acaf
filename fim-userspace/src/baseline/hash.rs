//! Hashing regular files safely: never blocking on a FIFO swapped in, never following a
//! symlink, bounded memory for any size, and never reporting a half-written file's hash.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::entry::timestamp_ns;
use super::mapped::{self, Mapped};

/// Files below [`mapped::MIN_SIZE`] take one read; larger ones are mapped, or read in
/// chunks of this size when mapping is not possible. One buffer per hashing thread.
pub const READ_BUFFER: usize = 256 << 10;
/// Attempts before a file that keeps changing is recorded as unstable.
pub const HASH_ATTEMPTS: u32 = 3;

/// The metadata a hash is valid for, taken with `fstat` on the hashed descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub nlink: u32,
}

impl Snapshot {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Snapshot {
        Snapshot {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime_ns: timestamp_ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: timestamp_ns(meta.ctime(), meta.ctime_nsec()),
            nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        }
    }
}

/// What hashing one path found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOutcome {
    /// A stable hash and the metadata it belongs to; `content` when it was asked for.
    Hashed {
        digest: [u8; 32],
        snapshot: Snapshot,
        bytes_read: u64,
        attempts: u32,
        content: Option<Vec<u8>>,
    },
    /// Changed during every attempt; the last metadata seen.
    Unstable { snapshot: Snapshot, attempts: u32 },
    /// Cannot be opened or read.
    Unreadable { errno: i32 },
    /// The path no longer names a regular file (replaced, removed, or a symlink now).
    NotRegular,
}

/// A shared bytes-per-second budget for all hashing threads (0 = unlimited).
pub struct ReadBudget {
    bytes_per_sec: u64,
    state: Mutex<(Option<Instant>, u64)>,
}

impl ReadBudget {
    pub fn new(bytes_per_sec: u64) -> ReadBudget {
        ReadBudget {
            bytes_per_sec,
            state: Mutex::new((None, 0)),
        }
    }

    /// Accounts for `bytes` read and sleeps while the scan is ahead of its budget.
    fn spend(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let wait = {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let start = *state.0.get_or_insert_with(Instant::now);
            state.1 += bytes;
            let due = Duration::try_from_secs_f64(state.1 as f64 / self.bytes_per_sec as f64)
                .unwrap_or(Duration::MAX);
            due.checked_sub(start.elapsed())
        };
        if let Some(wait) = wait {
            std::thread::sleep(wait);
        }
    }
}

/// Options for [`hash_file`].
pub struct HashRequest<'a> {
    pub budget: &'a ReadBudget,
    /// Keep the content in memory when the file is at most this large (for content versions).
    pub keep_content_up_to: Option<u64>,
    /// Called after the first chunk of each attempt is read. Lets tests change a file while it
    /// is being hashed, deterministically; `None` in production.
    pub mid_read: Option<&'a (dyn Fn(u32) + Sync)>,
}

fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        // O_NOFOLLOW: a symlink swapped in is not followed; O_NONBLOCK: a FIFO swapped in
        // does not block the open; O_NOCTTY: a terminal device never becomes ours.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Hashes the regular file at `path` with BLAKE3, retrying when it changes underneath
/// (size, mtime, ctime or inode differ between the `fstat` before and after reading, or the
/// bytes read differ from the size).
pub fn hash_file(path: &Path, request: &HashRequest<'_>, buffer: &mut Vec<u8>) -> HashOutcome {
    hash_opened(path, None, request, buffer)
}

/// A regular file opened without following symlinks, with the `fstat` taken right after.
pub struct OpenedFile {
    pub file: File,
    pub snapshot: Snapshot,
}

/// What opening a path for hashing found.
pub enum Opened {
    File(OpenedFile),
    /// A symlink, a directory, a FIFO... or nothing any more.
    NotRegular,
    Unreadable {
        errno: i32,
    },
}

/// Opens `path` for hashing: never follows a final symlink, never blocks on a FIFO.
pub fn open_regular(path: &Path) -> Opened {
    let file = match open_no_follow(path) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Opened::NotRegular,
        Err(e) if e.kind() == ErrorKind::NotFound => return Opened::NotRegular,
        Err(e) => {
            return Opened::Unreadable {
                errno: errno_of(&e),
            };
        }
    };
    match file.metadata() {
        Ok(meta) if meta.file_type().is_file() => Opened::File(OpenedFile {
            snapshot: Snapshot::of(&meta),
            file,
        }),
        Ok(_) => Opened::NotRegular,
        Err(e) => Opened::Unreadable {
            errno: errno_of(&e),
        },
    }
}

/// [`hash_file`] with the first attempt on a file the caller already opened with
/// [`open_regular`] (saves an open and an `fstat`); later attempts open `path` again.
pub fn hash_opened(
    path: &Path,
    mut opened: Option<OpenedFile>,
    request: &HashRequest<'_>,
    buffer: &mut Vec<u8>,
) -> HashOutcome {
    if buffer.len() < READ_BUFFER {
        buffer.resize(READ_BUFFER, 0);
    }
    let mut last = None;
    for attempt in 1..=HASH_ATTEMPTS {
        let OpenedFile {
            mut file,
            snapshot: before,
        } = match opened.take() {
            Some(opened) => opened,
            None => match open_regular(path) {
                Opened::File(opened) => opened,
                Opened::NotRegular => return HashOutcome::NotRegular,
                Opened::Unreadable { errno } => return HashOutcome::Unreadable { errno },
            },
        };
        let mut content = request
            .keep_content_up_to
            .filter(|limit| before.size <= *limit)
            .map(|_| Vec::with_capacity(before.size as usize));
        let mut hasher = blake3::Hasher::new();
        let mut bytes_read = 0u64;
        let mut first_chunk = true;
        let mut mapped = false;
        if content.is_none() && before.size >= mapped::MIN_SIZE {
            let windows = mapped::hash(&file, before.size, &mut hasher, |n| {
                bytes_read += n as u64;
                request.budget.spend(n as u64);
                if std::mem::take(&mut first_chunk)
                    && let Some(hook) = request.mid_read
                {
                    hook(attempt);
                }
            });
            match windows {
                Mapped::Done => mapped = true,
                Mapped::Faulted => {
                    // Shrunk while mapped: a change, like a differing fstat.
                    last = Some(file.metadata().map_or(before, |meta| Snapshot::of(&meta)));
                    continue;
                }
                Mapped::Unavailable => {
                    hasher.reset();
                    bytes_read = 0;
                }
            }
        }
        if !mapped {
            loop {
                let n = match file.read(&mut buffer[..READ_BUFFER]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return HashOutcome::Unreadable {
                            errno: errno_of(&e),
                        };
                    }
                };
                hasher.update(&buffer[..n]);
                if let Some(content) = content.as_mut() {
                    content.extend_from_slice(&buffer[..n]);
                }
                bytes_read += n as u64;
                request.budget.spend(n as u64);
                if first_chunk {
                    first_chunk = false;
                    if let Some(hook) = request.mid_read {
                        hook(attempt);
                    }
                }
                // All the bytes the fstat announced: no read just to see end-of-file (one syscall
                // per small file). A file that grew meanwhile shows in the fstat after.
                if bytes_read == before.size {
                    break;
                }
            }
        }
        let after = match file.metadata() {
            Ok(meta) => Snapshot::of(&meta),
            Err(e) => {
                return HashOutcome::Unreadable {
                    errno: errno_of(&e),
                };
            }
        };
        if before == after && bytes_read == before.size {
            return HashOutcome::Hashed {
                digest: *hasher.finalize().as_bytes(),
                snapshot: after,
                bytes_read,
                attempts: attempt,
                content,
            };
        }
        last = Some(after);
    }
    match last {
        Some(snapshot) => HashOutcome::Unstable {
            snapshot,
            attempts: HASH_ATTEMPTS,
        },
        None => HashOutcome::NotRegular,
    }
}
