//! What a fanotify group reads: event metadata, each followed by its information records
//! (directory and object file handles with names, the pidfd). Kernel data is still checked:
//! a record that does not add up is counted and skipped, never trusted.

use std::os::fd::{FromRawFd, OwnedFd};

/// `struct fanotify_event_metadata`: what precedes every event.
const METADATA_LEN: usize = 24;
/// `FANOTIFY_METADATA_VERSION`.
const METADATA_VERSION: u8 = 3;
/// `struct fanotify_event_info_header`.
const INFO_HEADER_LEN: usize = 4;
/// Header, fsid, then `struct file_handle`'s `handle_bytes` and `handle_type`.
const FID_FIXED_LEN: usize = INFO_HEADER_LEN + 8 + 8;
/// `MAX_HANDLE_SZ`: no filesystem encodes a longer handle.
pub const MAX_HANDLE_BYTES: usize = 128;

/// A file handle as fanotify reports it: the filesystem's id (`statfs`'s `f_fsid`) and the
/// handle the filesystem encodes for the inode (`name_to_handle_at`). Equal handles name the
/// same inode, whatever name, mount or namespace reached it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Handle {
    pub fsid: u64,
    pub kind: i32,
    pub bytes: Vec<u8>,
}

impl Handle {
    /// `f_fsid`'s two 32-bit words as one number (the first in the low half).
    pub fn fsid_of(words: [i32; 2]) -> u64 {
        (words[0] as u32 as u64) | ((words[1] as u32 as u64) << 32)
    }
}

/// A directory handle and the name of an entry in it. The name is empty for a record without
/// one (`FAN_EVENT_INFO_TYPE_DFID`).
pub type DirName = (Handle, Vec<u8>);

/// One event, its records sorted out.
#[derive(Debug, Default)]
pub struct RawEvent {
    pub mask: u64,
    /// The process (thread-group id) that caused it; 0 when it is in another pid namespace.
    pub pid: i32,
    /// A pidfd of that process, when the kernel could make one (it had not exited yet).
    pub pidfd: Option<OwnedFd>,
    /// The directory that holds the name the event is about, and that name.
    pub dir: Option<DirName>,
    /// The object itself (a non-directory's `FID` record, or a directory's own `"."` record).
    pub object: Option<Handle>,
    /// `FAN_RENAME`: the old and the new directory and name.
    pub old: Option<DirName>,
    pub new: Option<DirName>,
}

/// What one read returned, decoded.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<RawEvent>,
    /// Events or records that did not add up (skipped).
    pub malformed: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    u32_at(b, at).map(|v| v as i32)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Takes ownership of a descriptor the kernel put in a record, so that it is closed whatever
/// becomes of the event. Negative values are `FAN_NOFD`/`FAN_NOPIDFD`/`FAN_EPIDFD`.
fn owned(fd: i32) -> Option<OwnedFd> {
    // SAFETY: the kernel created this descriptor for this read and nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Decodes the bytes of one `read` of a fanotify group.
pub fn decode(buf: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    let mut at = 0;
    while at + METADATA_LEN <= buf.len() {
        let (Some(len), Some(meta_len)) = (u32_at(buf, at), u16_at(buf, at + 6)) else {
            break;
        };
        let (len, meta_len) = (len as usize, meta_len as usize);
        if len < METADATA_LEN || at + len > buf.len() || meta_len < METADATA_LEN || meta_len > len {
            // Nothing after this can be framed.
            out.malformed += 1;
            break;
        }
        let event = &buf[at..at + len];
        at += len;
        // The event's own descriptor (FAN_NOFD with file-handle reporting) is closed first.
        drop(owned(i32_at(event, 16).unwrap_or(-1)));
        if event[4] != METADATA_VERSION {
            out.malformed += 1;
            continue;
        }
        let mut raw = RawEvent {
            mask: u64_at(event, 8).unwrap_or(0),
            pid: i32_at(event, 20).unwrap_or(0),
            ..RawEvent::default()
        };
        if !records(&event[meta_len..], &mut raw) {
            out.malformed += 1;
        }
        out.events.push(raw);
    }
    out
}

/// Sorts an event's information records into `raw`; false when one did not add up (the ones
/// before it are kept, a pidfd among them included).
fn records(mut rest: &[u8], raw: &mut RawEvent) -> bool {
    while !rest.is_empty() {
        let Some(len) = u16_at(rest, 2).map(usize::from) else {
            return false;
        };
        if len < INFO_HEADER_LEN || len > rest.len() {
            return false;
        }
        let (record, tail) = rest.split_at(len);
        rest = tail;
        match record[0] {
            libc::FAN_EVENT_INFO_TYPE_PIDFD => {
                let Some(fd) = i32_at(record, INFO_HEADER_LEN) else {
                    return false;
                };
                raw.pidfd = owned(fd);
            }
            kind @ (libc::FAN_EVENT_INFO_TYPE_FID
            | libc::FAN_EVENT_INFO_TYPE_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_DFID
            | libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME
            | libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME) => {
                let Some((handle, name)) = fid_record(record) else {
                    return false;
                };
                match kind {
                    libc::FAN_EVENT_INFO_TYPE_FID => raw.object = Some(handle),
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => raw.old = Some((handle, name)),
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => raw.new = Some((handle, name)),
                    // An event on a directory itself names it "." in its own directory.
                    _ if name == b"." => raw.object = Some(handle),
                    _ if raw.dir.is_none() => raw.dir = Some((handle, name)),
                    _ => {}
                }
            }
            // FAN_FS_ERROR and records of later kernels: not used.
            _ => {}
        }
    }
    true
}

/// A file-handle record: fsid, handle, and for the `*_NAME` kinds the NUL-terminated name
/// after it.
fn fid_record(record: &[u8]) -> Option<(Handle, Vec<u8>)> {
    if record.len() < FID_FIXED_LEN {
        return None;
    }
    let fsid = Handle::fsid_of([
        i32_at(record, INFO_HEADER_LEN)?,
        i32_at(record, INFO_HEADER_LEN + 4)?,
    ]);
    let handle_len = u32_at(record, INFO_HEADER_LEN + 8)? as usize;
    let kind = i32_at(record, INFO_HEADER_LEN + 12)?;
    if handle_len > MAX_HANDLE_BYTES || FID_FIXED_LEN + handle_len > record.len() {
        return None;
    }
    let bytes = record[FID_FIXED_LEN..FID_FIXED_LEN + handle_len].to_vec();
    let after = &record[FID_FIXED_LEN + handle_len..];
    let name_len = after.iter().position(|&b| b == 0).unwrap_or(0);
    let name = after[..name_len].to_vec();
    Some((Handle { fsid, kind, bytes }, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the kernel lays it out: metadata, then the given records.
    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = records.concat();
        let len = (METADATA_LEN + body.len()) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.push(METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        b.extend_from_slice(&body);
        b
    }

    /// A file-handle record, padded to 4 bytes as the kernel does.
    fn fid(kind: u8, fsid: [i32; 2], handle: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![kind, 0, 0, 0];
        b.extend_from_slice(&fsid[0].to_ne_bytes());
        b.extend_from_slice(&fsid[1].to_ne_bytes());
        b.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        b.extend_from_slice(&1i32.to_ne_bytes());
        b.extend_from_slice(handle);
        if let Some(name) = name {
            b.extend_from_slice(name);
            b.push(0);
        }
        while b.len() % 4 != 0 {
            b.push(0);
        }
        let len = b.len() as u16;
        b[2..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    fn pidfd(fd: i32) -> Vec<u8> {
        let mut b = vec![libc::FAN_EVENT_INFO_TYPE_PIDFD, 0, 8, 0];
        b.extend_from_slice(&fd.to_ne_bytes());
        b
    }

    const FSID: [i32; 2] = [7, -1];

    fn handle(bytes: &[u8]) -> Handle {
        Handle {
            fsid: Handle::fsid_of(FSID),
            kind: 1,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn a_modify_names_its_directory_entry_and_object() {
        let buf = event(
            libc::FAN_MODIFY,
            42,
            &[
                fid(
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                    FSID,
                    b"dirh",
                    Some(b"file"),
                ),
                fid(libc::FAN_EVENT_INFO_TYPE_FID, FSID, b"fileh", None),
                pidfd(libc::FAN_NOPIDFD),
            ],
        );
        let d = decode(&buf);
        assert_eq!(d.malformed, 0);
        let e = &d.events[0];
        assert_eq!((e.mask, e.pid), (libc::FAN_MODIFY, 42));
        assert_eq!(e.dir, Some((handle(b"dirh"), b"file".to_vec())));
        assert_eq!(e.object, Some(handle(b"fileh")));
        assert!(e.pidfd.is_none());
        assert_eq!(Handle::fsid_of(FSID), 0xffff_ffff_0000_0007);
    }

    #[test]
    fn a_directory_event_on_itself_is_its_object_and_renames_keep_both_sides() {
        let buf = [
            event(
                libc::FAN_ATTRIB | libc::FAN_ONDIR,
                1,
                &[fid(
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                    FSID,
                    b"d",
                    Some(b"."),
                )],
            ),
            event(
                libc::FAN_RENAME,
                2,
                &[
                    fid(
                        libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                        FSID,
                        b"a",
                        Some(b"x"),
                    ),
                    fid(
                        libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                        FSID,
                        b"b",
                        Some(b"y"),
                    ),
                    fid(libc::FAN_EVENT_INFO_TYPE_FID, FSID, b"o", None),
                ],
            ),
        ]
        .concat();
        let d = decode(&buf);
        assert_eq!((d.events.len(), d.malformed), (2, 0));
        assert_eq!(d.events[0].object, Some(handle(b"d")));
        assert_eq!(d.events[0].dir, None);
        assert_eq!(d.events[1].old, Some((handle(b"a"), b"x".to_vec())));
        assert_eq!(d.events[1].new, Some((handle(b"b"), b"y".to_vec())));
        assert_eq!(d.events[1].object, Some(handle(b"o")));
    }

    #[test]
    fn an_overflow_has_no_records() {
        let d = decode(&event(libc::FAN_Q_OVERFLOW, 0, &[]));
        assert_eq!(d.events.len(), 1);
        assert_eq!(d.events[0].mask, libc::FAN_Q_OVERFLOW);
    }

    #[test]
    fn records_that_do_not_add_up_are_counted_not_trusted() {
        // A handle longer than its record.
        let mut bad = fid(libc::FAN_EVENT_INFO_TYPE_FID, FSID, b"h", None);
        bad[12..16].copy_from_slice(&500u32.to_ne_bytes());
        let d = decode(&event(libc::FAN_MODIFY, 1, &[bad]));
        assert_eq!((d.events.len(), d.malformed), (1, 1));
        assert_eq!(d.events[0].object, None);
        // A record length of zero cannot be stepped over.
        let d = decode(&event(libc::FAN_MODIFY, 1, &[vec![1, 0, 0, 0]]));
        assert_eq!(d.malformed, 1);
        // An event longer than the buffer, a wrong version, and a truncated buffer.
        let mut long = event(libc::FAN_MODIFY, 1, &[]);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(decode(&long).malformed, 1);
        let mut version = event(libc::FAN_MODIFY, 1, &[]);
        version[4] = 9;
        let d = decode(&version);
        assert_eq!((d.events.len(), d.malformed), (0, 1));
        let whole = event(libc::FAN_MODIFY, 1, &[]);
        assert_eq!(decode(&whole[..20]).events.len(), 0);
    }

    #[test]
    fn pidfds_are_owned_and_closed() {
        // SAFETY: a pipe's two descriptors, which the test owns.
        let (r, w) = unsafe {
            let mut fds = [0; 2];
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            (fds[0], fds[1])
        };
        let d = decode(&event(libc::FAN_MODIFY, 1, &[pidfd(w)]));
        assert!(d.events[0].pidfd.is_some());
        drop(d);
        // The write end is closed: the read end sees end of file.
        let mut byte = 0u8;
        // SAFETY: reading one byte into a local.
        let n = unsafe { libc::read(r, (&raw mut byte).cast(), 1) };
        assert_eq!(n, 0);
        // SAFETY: the read end is the test's.
        unsafe { libc::close(r) };
    }
}
