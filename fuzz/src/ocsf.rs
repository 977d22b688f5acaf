//! The `ocsf` target: a change record built from the input (any path bytes: invalid UTF-8,
//! newlines, control bytes), written as the output sink writes it (one OCSF JSON object and a
//! newline) and read back: exactly one line, valid JSON, and every value of the output
//! contract recoverable (paths exactly, through the `*_hex` fields when they are not UTF-8).
//!
//! The input is a small hand-rolled encoding of a `ChangeRecord` ([`change_from_bytes`],
//! [`change_to_bytes`]): stable, so the seed corpus keeps its meaning, and total, so every
//! byte string is some record.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fim::baseline::FileKind;
use fim::output::{OcsfContext, activity_id, activity_name, event, type_id};
use fim::store::{Actor, ChangeRecord, activity};
use serde_json::{Map, Value};

const ACTIVITIES: [i64; 7] = [
    activity::CREATE,
    activity::UPDATE,
    activity::DELETE,
    activity::RENAME,
    activity::SET_ATTRIBUTES,
    activity::SET_SECURITY,
    activity::OTHER,
];

const KINDS: [FileKind; 7] = FileKind::ALL;

/// Which optional fields are present: bit numbers of the leading `u32`.
mod bit {
    pub const NEW_PATH: u32 = 0;
    pub const RULE: u32 = 1;
    pub const GROUP: u32 = 2;
    pub const PREVIOUS: u32 = 3;
    pub const HASH_BEFORE: u32 = 4;
    pub const HASH_AFTER: u32 = 5;
    pub const SIZE: u32 = 6;
    pub const KIND: u32 = 7;
    pub const AUTHORIZED: u32 = 8;
    pub const TRUNCATED: u32 = 9;
    pub const PID: u32 = 10;
    pub const PPID: u32 = 11;
    pub const EXE: u32 = 12;
    pub const CMDLINE: u32 = 13;
    pub const UID: u32 = 14;
    pub const USER: u32 = 15;
    pub const LOGIN_UID: u32 = 16;
    pub const LOGIN_USER: u32 = 17;
    pub const CONTAINER: u32 = 18;
    pub const COMM: u32 = 19;
    pub const START: u32 = 20;
}

/// Reads the encoding; past the end everything reads as zero / empty.
struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.fixed())
    }

    /// Length (one byte below 0x80, else two bytes: 15 bits) then the bytes.
    fn bytes(&mut self) -> Vec<u8> {
        let first = self.byte() as usize;
        let len = if first < 0x80 {
            first
        } else {
            ((first & 0x7f) << 8) | self.byte() as usize
        };
        self.take(len).to_vec()
    }

    fn string(&mut self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// A JSON value without floats (the `previous` column holds integers and strings).
    fn value(&mut self, depth: u32) -> Value {
        let tag = self.byte() % 7;
        match tag {
            0 => Value::Null,
            1 => Value::Bool(self.byte() & 1 == 1),
            2 => Value::from(self.u64()),
            3 => Value::from(self.i64()),
            4 => Value::String(self.string()),
            5 if depth < 3 => {
                let n = self.byte() % 8;
                Value::Array((0..n).map(|_| self.value(depth + 1)).collect())
            }
            6 if depth < 3 => {
                let n = self.byte() % 8;
                let mut map = Map::new();
                for _ in 0..n {
                    let key = self.string();
                    let value = self.value(depth + 1);
                    map.insert(key, value);
                }
                Value::Object(map)
            }
            _ => Value::Null,
        }
    }
}

/// The change record an input stands for.
pub fn change_from_bytes(data: &[u8]) -> ChangeRecord {
    let mut r = Reader { data };
    let present = r.u32();
    let has = |b: u32| present & (1 << b) != 0;
    let selector = r.byte();
    let activity = match ACTIVITIES.get(selector as usize) {
        Some(id) => *id,
        None => r.i64(),
    };
    let time_ns = r.i64();
    let host = r.string();
    let path = r.bytes();
    let backend = r.string();
    let changed = (0..r.byte() % 8).map(|_| r.string()).collect();
    let mut c = ChangeRecord {
        time_ns,
        host,
        activity,
        path,
        backend,
        changed,
        authorized: has(bit::AUTHORIZED),
        truncated_path: has(bit::TRUNCATED),
        ..ChangeRecord::default()
    };
    c.new_path = has(bit::NEW_PATH).then(|| r.bytes());
    c.rule = has(bit::RULE).then(|| r.string());
    c.group = has(bit::GROUP).then(|| r.string());
    c.previous = has(bit::PREVIOUS).then(|| r.value(0));
    c.hash_before = has(bit::HASH_BEFORE).then(|| r.string());
    c.hash_after = has(bit::HASH_AFTER).then(|| r.string());
    c.size = has(bit::SIZE).then(|| r.u64());
    c.kind = has(bit::KIND).then(|| KINDS[(r.byte() % 7) as usize]);
    c.actor = Actor {
        pid: has(bit::PID).then(|| r.u32()),
        ppid: has(bit::PPID).then(|| r.u32()),
        exe: has(bit::EXE).then(|| r.bytes()),
        cmdline: has(bit::CMDLINE).then(|| r.bytes()),
        uid: has(bit::UID).then(|| r.u32()),
        user: has(bit::USER).then(|| r.string()),
        login_uid: has(bit::LOGIN_UID).then(|| r.u32()),
        login_user: has(bit::LOGIN_USER).then(|| r.string()),
        container_id: has(bit::CONTAINER).then(|| r.string()),
        comm: has(bit::COMM).then(|| r.string()),
        start_time_ns: has(bit::START).then(|| r.i64()),
    };
    c
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn bytes(&mut self, b: &[u8]) {
        assert!(b.len() < 0x8000, "too long for the encoding");
        if b.len() < 0x80 {
            self.out.push(b.len() as u8);
        } else {
            self.out.push(0x80 | (b.len() >> 8) as u8);
            self.out.push(b.len() as u8);
        }
        self.out.extend_from_slice(b);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.out.push(0),
            Value::Bool(b) => self.out.extend([1, *b as u8]),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    self.out.push(2);
                    self.out.extend(u.to_le_bytes());
                } else {
                    let i = n.as_i64().expect("no floats in the encoding");
                    self.out.push(3);
                    self.out.extend(i.to_le_bytes());
                }
            }
            Value::String(s) => {
                self.out.push(4);
                self.bytes(s.as_bytes());
            }
            Value::Array(items) => {
                assert!(items.len() < 8);
                self.out.extend([5, items.len() as u8]);
                items.iter().for_each(|i| self.value(i));
            }
            Value::Object(map) => {
                assert!(map.len() < 8);
                self.out.extend([6, map.len() as u8]);
                for (k, v) in map {
                    self.bytes(k.as_bytes());
                    self.value(v);
                }
            }
        }
    }
}

/// The encoding of a change record (for the seed corpus); `change_from_bytes` inverts it.
pub fn change_to_bytes(c: &ChangeRecord) -> Vec<u8> {
    let a = &c.actor;
    let flags = [
        (bit::NEW_PATH, c.new_path.is_some()),
        (bit::RULE, c.rule.is_some()),
        (bit::GROUP, c.group.is_some()),
        (bit::PREVIOUS, c.previous.is_some()),
        (bit::HASH_BEFORE, c.hash_before.is_some()),
        (bit::HASH_AFTER, c.hash_after.is_some()),
        (bit::SIZE, c.size.is_some()),
        (bit::KIND, c.kind.is_some()),
        (bit::AUTHORIZED, c.authorized),
        (bit::TRUNCATED, c.truncated_path),
        (bit::PID, a.pid.is_some()),
        (bit::PPID, a.ppid.is_some()),
        (bit::EXE, a.exe.is_some()),
        (bit::CMDLINE, a.cmdline.is_some()),
        (bit::UID, a.uid.is_some()),
        (bit::USER, a.user.is_some()),
        (bit::LOGIN_UID, a.login_uid.is_some()),
        (bit::LOGIN_USER, a.login_user.is_some()),
        (bit::CONTAINER, a.container_id.is_some()),
        (bit::COMM, a.comm.is_some()),
        (bit::START, a.start_time_ns.is_some()),
    ];
    let present = flags
        .iter()
        .filter(|(_, on)| *on)
        .fold(0u32, |acc, (b, _)| acc | (1 << b));
    let mut w = Writer { out: Vec::new() };
    w.out.extend(present.to_le_bytes());
    match ACTIVITIES.iter().position(|id| *id == c.activity) {
        Some(i) => w.out.push(i as u8),
        None => {
            w.out.push(0xff);
            w.out.extend(c.activity.to_le_bytes());
        }
    }
    w.out.extend(c.time_ns.to_le_bytes());
    w.bytes(c.host.as_bytes());
    w.bytes(&c.path);
    w.bytes(c.backend.as_bytes());
    assert!(c.changed.len() < 8);
    w.out.push(c.changed.len() as u8);
    c.changed.iter().for_each(|s| w.bytes(s.as_bytes()));
    if let Some(p) = &c.new_path {
        w.bytes(p);
    }
    for s in [&c.rule, &c.group].into_iter().flatten() {
        w.bytes(s.as_bytes());
    }
    if let Some(v) = &c.previous {
        w.value(v);
    }
    for s in [&c.hash_before, &c.hash_after].into_iter().flatten() {
        w.bytes(s.as_bytes());
    }
    if let Some(size) = c.size {
        w.out.extend(size.to_le_bytes());
    }
    if let Some(kind) = c.kind {
        let i = KINDS.iter().position(|k| *k == kind).expect("a known kind");
        w.out.push(i as u8);
    }
    for id in [a.pid, a.ppid].into_iter().flatten() {
        w.out.extend(id.to_le_bytes());
    }
    for b in [&a.exe, &a.cmdline].into_iter().flatten() {
        w.bytes(b);
    }
    if let Some(uid) = a.uid {
        w.out.extend(uid.to_le_bytes());
    }
    if let Some(user) = &a.user {
        w.bytes(user.as_bytes());
    }
    if let Some(uid) = a.login_uid {
        w.out.extend(uid.to_le_bytes());
    }
    for s in [&a.login_user, &a.container_id, &a.comm]
        .into_iter()
        .flatten()
    {
        w.bytes(s.as_bytes());
    }
    if let Some(start) = a.start_time_ns {
        w.out.extend(start.to_le_bytes());
    }
    w.out
}

/// The line the output sink writes for a change (`OutputSink::write`: the event serialised
/// with serde_json, then a newline).
pub fn line(change: &ChangeRecord, ctx: &OcsfContext) -> Vec<u8> {
    let mut line = Vec::with_capacity(4096);
    serde_json::to_writer(&mut line, &event(change, ctx)).expect("an OCSF event serialises");
    line.push(b'\n');
    line
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digits"))
        .collect()
}

/// The exact bytes of a path field: its text, or the hex in `raw` when it is not UTF-8.
fn path_back(text: &Value, raw: &Value, key: &str, original: &[u8]) -> Vec<u8> {
    let text = text.as_str().expect("a path is a string");
    match raw.get(key) {
        Some(hex) => {
            assert!(
                std::str::from_utf8(original).is_err(),
                "{key} for a UTF-8 path"
            );
            assert_eq!(text, String::from_utf8_lossy(original));
            unhex(hex.as_str().expect("hex is a string"))
        }
        None => text.as_bytes().to_vec(),
    }
}

fn file_parts(file: &Value, path: &[u8]) {
    let p = Path::new(OsStr::from_bytes(path));
    match p.file_name() {
        Some(name) => assert_eq!(file["name"], Value::from(name.to_string_lossy())),
        // OCSF requires a name: a path without a last component (`/`) is named by itself.
        None => assert_eq!(file["name"], file["path"]),
    }
    match p.parent() {
        Some(parent) => assert_eq!(file["parent_folder"], Value::from(parent.to_string_lossy())),
        None => assert!(file.get("parent_folder").is_none()),
    }
}

/// Checks one input. Panics (a fuzzer crash) when an invariant does not hold.
pub fn check(data: &[u8]) {
    let change = change_from_bytes(data);
    let ctx = OcsfContext::new(change.host.clone());
    let line = line(&change, &ctx);

    // One line: the only newline is the last byte, and no raw control byte at all.
    assert_eq!(line.last(), Some(&b'\n'));
    assert!(
        !line[..line.len() - 1].iter().any(|&b| b < 0x20),
        "a raw control byte in the line"
    );
    let text = std::str::from_utf8(&line).expect("the line is UTF-8");
    let e: Value = serde_json::from_str(&text[..text.len() - 1]).expect("the line is JSON");
    assert_eq!(
        e,
        event(&change, &ctx),
        "the line reads back as a different event"
    );

    // The contract's ids pass through; anything else is 99 (Other).
    let id = match activity_name(change.activity) {
        "Other" => activity::OTHER,
        _ => change.activity,
    };
    assert_eq!(activity_id(change.activity), id);
    assert_eq!(e["class_uid"], 1001);
    assert_eq!(e["activity_id"], id);
    assert_eq!(e["activity_name"], activity_name(id));
    assert_eq!(
        e["type_uid"].as_i64(),
        Some(100_100 + id),
        "type_uid is class_uid * 100 + activity_id"
    );
    assert_eq!(
        e["type_name"],
        format!("File System Activity: {}", activity_name(id))
    );
    assert_eq!(e["time"], change.time_ns / 1_000_000);
    assert_eq!(e["device"]["hostname"], change.host.as_str());

    let fim = &e["unmapped"]["fim"];
    let raw = fim.get("raw").cloned().unwrap_or(Value::Null);
    let any_binary = std::str::from_utf8(&change.path).is_err()
        || change
            .new_path
            .as_deref()
            .is_some_and(|p| std::str::from_utf8(p).is_err())
        || change
            .actor
            .exe
            .as_deref()
            .is_some_and(|p| std::str::from_utf8(p).is_err());
    assert_eq!(
        fim.get("raw").is_some(),
        any_binary,
        "raw iff a path is not UTF-8"
    );

    let file = &e["file"];
    assert_eq!(
        path_back(&file["path"], &raw, "path_hex", &change.path),
        change.path
    );
    file_parts(file, &change.path);
    assert_eq!(file["type_id"], type_id(change.kind));
    assert_eq!(file.get("size").and_then(Value::as_u64), change.size);
    match &change.hash_after {
        Some(hash) => {
            let hashes = file["hashes"].as_array().expect("hashes is an array");
            assert_eq!(hashes.len(), 1);
            assert_eq!(hashes[0]["algorithm"], "BLAKE3");
            assert_eq!(hashes[0]["value"], hash.as_str());
        }
        None => assert!(file.get("hashes").is_none()),
    }
    match &change.new_path {
        Some(new_path) => {
            let result = &e["file_result"];
            assert_eq!(
                path_back(&result["path"], &raw, "new_path_hex", new_path),
                *new_path
            );
            file_parts(result, new_path);
        }
        None => {
            assert!(e.get("file_result").is_none());
            assert!(raw.get("new_path_hex").is_none());
        }
    }

    let a = &change.actor;
    let process = &e["actor"]["process"];
    assert_eq!(
        process.get("pid").and_then(Value::as_u64),
        a.pid.map(u64::from)
    );
    match &a.exe {
        Some(exe) => assert_eq!(
            path_back(&process["file"]["path"], &raw, "exe_hex", exe),
            *exe
        ),
        None => {
            assert!(process.get("file").is_none());
            assert!(raw.get("exe_hex").is_none());
        }
    }
    match &a.cmdline {
        Some(cmd) => assert_eq!(process["cmd_line"], String::from_utf8_lossy(cmd).as_ref()),
        None => assert!(process.get("cmd_line").is_none()),
    }
    assert_eq!(
        process["parent_process"]["pid"].as_u64(),
        a.ppid.map(u64::from)
    );
    assert_eq!(
        process.get("created_time").and_then(Value::as_i64),
        a.start_time_ns.map(|s| s / 1_000_000)
    );
    let user = &e["actor"]["user"];
    assert_eq!(
        user.get("uid").and_then(Value::as_str),
        a.uid.map(|u| u.to_string()).as_deref()
    );
    assert_eq!(user.get("name").and_then(Value::as_str), a.user.as_deref());

    assert_eq!(fim["rule"], Value::from(change.rule.clone()));
    assert_eq!(fim["group"], Value::from(change.group.clone()));
    assert_eq!(fim["backend"], change.backend.as_str());
    assert_eq!(fim["changed"], Value::from(change.changed.clone()));
    assert_eq!(
        fim["previous"],
        change.previous.clone().unwrap_or(Value::Null)
    );
    assert_eq!(fim["authorized"], change.authorized);
    assert_eq!(fim["truncated_path"], change.truncated_path);
    assert_eq!(
        fim.get("login_uid").and_then(Value::as_u64),
        a.login_uid.map(u64::from)
    );
    assert_eq!(
        fim.get("login_user").and_then(Value::as_str),
        a.login_user.as_deref()
    );
    assert_eq!(
        fim.get("container_id").and_then(Value::as_str),
        a.container_id.as_deref()
    );
    assert_eq!(fim.get("attribution").is_some(), a.pid.is_none());
}
