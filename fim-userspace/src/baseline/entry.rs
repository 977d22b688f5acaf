//! What the baseline records about one path.

use std::fmt::Write as _;

/// The type of a file system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Char,
    Block,
}

impl FileKind {
    pub const ALL: [FileKind; 7] = [
        FileKind::File,
        FileKind::Dir,
        FileKind::Symlink,
        FileKind::Fifo,
        FileKind::Socket,
        FileKind::Char,
        FileKind::Block,
    ];

    /// From `st_mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::Char,
            libc::S_IFBLK => FileKind::Block,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Dir => "dir",
            FileKind::Symlink => "symlink",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::Char => "char",
            FileKind::Block => "block",
        }
    }

    pub fn parse(name: &str) -> Option<FileKind> {
        FileKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why an entry has no content hash although it is a regular file (or could not be examined).
/// Stored as bit flags in the `flags` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryFlags(pub u32);

impl EntryFlags {
    /// Larger than `hashing.max_file_size`: metadata only.
    pub const TOO_LARGE: u32 = 1;
    /// Kept changing while being hashed, even after retries.
    pub const UNSTABLE: u32 = 2;
    /// Could not be opened, read or listed (`errno` says why).
    pub const UNREADABLE: u32 = 4;
    /// Not a file's state but a placeholder: a creation was reported, and the path was gone
    /// before it could be examined. Its delete or rename record removes it; if that record
    /// never comes (fim killed first), the next scan finds the path gone and reports it.
    pub const VANISHED: u32 = 8;
    /// Never stored: a change to an inode without a name (a file opened with `O_TMPFILE`,
    /// which the kernel calls `#<inode>`), reported on the directory it was created in.
    pub const UNNAMED: u32 = 16;

    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::TOO_LARGE, "too_large"),
            (Self::UNSTABLE, "unstable"),
            (Self::UNREADABLE, "unreadable"),
            (Self::VANISHED, "vanished"),
            (Self::UNNAMED, "unnamed"),
        ]
        .into_iter()
        .filter(|(flag, _)| self.has(*flag))
        .map(|(_, name)| name)
        .collect()
    }
}

/// One path's recorded state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaselineEntry {
    /// Absolute path, raw bytes.
    pub path: Vec<u8>,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`); the type is `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub dev: u64,
    /// BLAKE3 of the content (regular files that could be hashed).
    pub blake3: Option<[u8; 32]>,
    /// BLAKE3 over the sorted extended attributes; `None` when there are none.
    pub xattr_digest: Option<[u8; 32]>,
    pub link_target: Option<Vec<u8>>,
    pub flags: EntryFlags,
    /// The errno behind `UNREADABLE`.
    pub errno: Option<i32>,
    /// When this entry was examined (ns since the epoch).
    pub scanned_at_ns: i64,
    /// The link count when examined. Not stored (0 in rows read from the store): a scan and
    /// the change worker use it to keep the watched files with other names (hard links)
    /// known to the sensor.
    pub nlink: u32,
}

impl BaselineEntry {
    /// An entry that records no state of its own (times, owner, content all zero or absent),
    /// only that `path` is there and why it has nothing else: `flags` and `errno` say.
    pub fn without_state(
        path: Vec<u8>,
        kind: FileKind,
        flags: EntryFlags,
        errno: Option<i32>,
        scanned_at_ns: i64,
    ) -> BaselineEntry {
        BaselineEntry {
            path,
            kind,
            size: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            dev: 0,
            blake3: None,
            xattr_digest: None,
            link_target: None,
            flags,
            errno,
            scanned_at_ns,
            nlink: 0,
        }
    }

    /// The fields whose equality lets a rescan reuse the previous hash: any write to the
    /// file changes mtime or ctime, a replacement changes the inode.
    pub fn same_identity_and_times(&self, other: &BaselineEntry) -> bool {
        self.dev == other.dev
            && self.inode == other.inode
            && self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
            && self.kind == other.kind
    }
}

/// Nanoseconds since the epoch from `stat` seconds and nanoseconds. Saturates instead of
/// overflowing: anyone can set a file's mtime past 2262 (the end of i64 nanoseconds).
pub fn timestamp_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(digest.len() * 2);
    for &b in digest {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Parses 64 hex digits back into a digest.
pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// A path for people and JSON: valid UTF-8 as is, every invalid byte as `\xNN`.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for chunk in path.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let digest = *blake3::hash(b"x").as_bytes();
        assert_eq!(parse_hex32(&hex(&digest)), Some(digest));
        assert_eq!(parse_hex32("zz"), None);
        assert_eq!(parse_hex32(&"g".repeat(64)), None);
    }

    #[test]
    fn display_path_escapes_only_invalid_bytes() {
        assert_eq!(display_path(b"/etc/h\xc3\xa9\xff\n"), "/etc/h\u{e9}\\xff\n");
    }

    #[test]
    fn kinds_round_trip() {
        for mode in [
            libc::S_IFREG,
            libc::S_IFDIR,
            libc::S_IFLNK,
            libc::S_IFIFO,
            libc::S_IFSOCK,
            libc::S_IFCHR,
            libc::S_IFBLK,
        ] {
            let kind = FileKind::from_mode(mode | 0o644).unwrap();
            assert_eq!(FileKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(FileKind::from_mode(0), None);
    }
}
