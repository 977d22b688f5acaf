//! Kernel records written field by field, independently of `RecordHeader::parse` (which reads
//! the header as one unaligned struct): the decoder target cross-checks the two, and the seed
//! corpus is built with it.

use std::mem::offset_of;

use fim_common::{Actor, Args, RecordHeader, Target};

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The header's bytes as the kernel lays them out (native endianness, `repr(C)` offsets).
pub fn header_bytes(h: &RecordHeader) -> Vec<u8> {
    let mut b = vec![0u8; RecordHeader::SIZE];
    put(
        &mut b,
        offset_of!(RecordHeader, kind),
        &h.kind.to_ne_bytes(),
    );
    put(&mut b, offset_of!(RecordHeader, backend), &[h.backend]);
    put(&mut b, offset_of!(RecordHeader, _reserved), &[h._reserved]);
    put(
        &mut b,
        offset_of!(RecordHeader, flags),
        &h.flags.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(RecordHeader, path1_len),
        &h.path1_len.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(RecordHeader, path2_len),
        &h.path2_len.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(RecordHeader, _pad),
        &h._pad.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(RecordHeader, rule_id),
        &h.rule_id.to_ne_bytes(),
    );
    put(
        &mut b,
        offset_of!(RecordHeader, ktime_ns),
        &h.ktime_ns.to_ne_bytes(),
    );

    let a = offset_of!(RecordHeader, actor);
    let actor = &h.actor;
    for (field, value) in [
        (offset_of!(Actor, tgid), actor.tgid),
        (offset_of!(Actor, pid), actor.pid),
        (offset_of!(Actor, ppid), actor.ppid),
        (offset_of!(Actor, uid), actor.uid),
        (offset_of!(Actor, gid), actor.gid),
        (offset_of!(Actor, euid), actor.euid),
        (offset_of!(Actor, loginuid), actor.loginuid),
        (offset_of!(Actor, mnt_ns), actor.mnt_ns),
    ] {
        put(&mut b, a + field, &value.to_ne_bytes());
    }
    put(
        &mut b,
        a + offset_of!(Actor, start_boottime_ns),
        &actor.start_boottime_ns.to_ne_bytes(),
    );
    put(
        &mut b,
        a + offset_of!(Actor, cgroup_id),
        &actor.cgroup_id.to_ne_bytes(),
    );
    put(&mut b, a + offset_of!(Actor, comm), &actor.comm);

    let t = offset_of!(RecordHeader, target);
    put(
        &mut b,
        t + offset_of!(Target, dev),
        &h.target.dev.to_ne_bytes(),
    );
    put(
        &mut b,
        t + offset_of!(Target, mode),
        &h.target.mode.to_ne_bytes(),
    );
    for (field, value) in [
        (offset_of!(Target, ino), h.target.ino),
        (offset_of!(Target, dir_ino), h.target.dir_ino),
        (offset_of!(Target, dir2_ino), h.target.dir2_ino),
    ] {
        put(&mut b, t + field, &value.to_ne_bytes());
    }

    let g = offset_of!(RecordHeader, args);
    for (field, value) in [
        (offset_of!(Args, mode), h.args.mode),
        (offset_of!(Args, uid), h.args.uid),
        (offset_of!(Args, gid), h.args.gid),
        (offset_of!(Args, flags), h.args.flags),
    ] {
        put(&mut b, g + field, &value.to_ne_bytes());
    }
    b
}

/// A whole ring-buffer item: the header (with the two lengths set from the strings) and the
/// strings.
pub fn record(header: &RecordHeader, path1: &[u8], path2: &[u8]) -> Vec<u8> {
    let mut h = *header;
    h.path1_len = u16::try_from(path1.len()).expect("path1 longer than u16::MAX");
    h.path2_len = u16::try_from(path2.len()).expect("path2 longer than u16::MAX");
    let mut item = header_bytes(&h);
    item.extend_from_slice(path1);
    item.extend_from_slice(path2);
    item
}

/// A `comm` field from a name (truncated to 15 bytes, NUL-padded like the kernel's).
pub fn comm(name: &[u8]) -> [u8; fim_common::record::COMM_LEN] {
    let mut comm = [0u8; fim_common::record::COMM_LEN];
    let n = name.len().min(comm.len() - 1);
    comm[..n].copy_from_slice(&name[..n]);
    comm
}
