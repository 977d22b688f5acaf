//! What travels on the subjects: JSON documents, one per message. Byte strings (paths,
//! executables, command lines need not be UTF-8) travel as a JSON string when they are UTF-8
//! and as `{"hex": "..."}` otherwise, so they arrive exactly.

use serde::{Deserialize, Serialize};

use crate::store::{Actor, ChangeRecord, HealthRecord};

/// A byte string on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WireBytes {
    Text(String),
    Hex { hex: String },
}

impl WireBytes {
    pub fn from_bytes(bytes: &[u8]) -> WireBytes {
        match std::str::from_utf8(bytes) {
            Ok(text) => WireBytes::Text(text.to_string()),
            Err(_) => WireBytes::Hex {
                hex: crate::baseline::hex(bytes),
            },
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            WireBytes::Text(text) => text.as_bytes().to_vec(),
            WireBytes::Hex { hex } => unhex(hex).unwrap_or_else(|| hex.as_bytes().to_vec()),
        }
    }

    /// Text for display and queries (invalid UTF-8 as U+FFFD).
    pub fn display(&self) -> String {
        crate::baseline::display_path(&self.to_bytes())
    }

    /// The exact bytes as hex when they are not UTF-8 (kept beside the text centrally).
    pub fn hex(&self) -> Option<String> {
        match self {
            WireBytes::Text(_) => None,
            WireBytes::Hex { hex } => Some(hex.clone()),
        }
    }
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn wire(bytes: &Option<Vec<u8>>) -> Option<WireBytes> {
    bytes.as_deref().map(WireBytes::from_bytes)
}

/// One change row of one host's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeMessage {
    /// The row id in the host's store (contiguous per store).
    pub id: i64,
    /// The store's identity (a new store starts its ids again).
    pub store: String,
    /// The fleet host id.
    pub host: String,
    /// The host name the row was recorded under (`Computer`).
    pub computer: String,
    pub time_ns: i64,
    pub activity: i64,
    pub path: WireBytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_path: Option<WireBytes>,
    pub rule: Option<String>,
    pub group: Option<String>,
    pub backend: String,
    pub changed: Vec<String>,
    pub previous: Option<serde_json::Value>,
    pub hash_before: Option<String>,
    pub hash_after: Option<String>,
    pub size: Option<u64>,
    pub authorized: bool,
    pub truncated_path: bool,
    /// The name the change was made through when it is not `path` (another hard link, a
    /// bind mount, another mount namespace); absent in messages of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_path: Option<WireBytes>,
    pub pid: Option<u32>,
    pub ppid: Option<u32>,
    pub exe: Option<WireBytes>,
    pub cmdline: Option<WireBytes>,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub login_uid: Option<u32>,
    pub login_user: Option<String>,
    pub container_id: Option<String>,
    pub comm: Option<String>,
    pub process_start_ns: Option<i64>,
}

impl ChangeMessage {
    pub fn new(host: &str, store: &str, id: i64, c: &ChangeRecord) -> ChangeMessage {
        let a = &c.actor;
        ChangeMessage {
            id,
            store: store.to_string(),
            host: host.to_string(),
            computer: c.host.clone(),
            time_ns: c.time_ns,
            activity: c.activity,
            path: WireBytes::from_bytes(&c.path),
            new_path: wire(&c.new_path),
            rule: c.rule.clone(),
            group: c.group.clone(),
            backend: c.backend.clone(),
            changed: c.changed.clone(),
            previous: c.previous.clone(),
            hash_before: c.hash_before.clone(),
            hash_after: c.hash_after.clone(),
            size: c.size,
            authorized: c.authorized,
            truncated_path: c.truncated_path,
            used_path: wire(&c.used_path),
            pid: a.pid,
            ppid: a.ppid,
            exe: wire(&a.exe),
            cmdline: wire(&a.cmdline),
            uid: a.uid,
            user: a.user.clone(),
            login_uid: a.login_uid,
            login_user: a.login_user.clone(),
            container_id: a.container_id.clone(),
            comm: a.comm.clone(),
            process_start_ns: a.start_time_ns,
        }
    }

    /// The row as the local query commands know it (for the same output shapes).
    pub fn to_record(&self) -> ChangeRecord {
        ChangeRecord {
            time_ns: self.time_ns,
            host: self.computer.clone(),
            activity: self.activity,
            path: self.path.to_bytes(),
            new_path: self.new_path.as_ref().map(WireBytes::to_bytes),
            rule: self.rule.clone(),
            group: self.group.clone(),
            backend: self.backend.clone(),
            changed: self.changed.clone(),
            previous: self.previous.clone(),
            hash_before: self.hash_before.clone(),
            hash_after: self.hash_after.clone(),
            size: self.size,
            kind: None,
            flags: Default::default(),
            authorized: self.authorized,
            truncated_path: self.truncated_path,
            used_path: self.used_path.as_ref().map(WireBytes::to_bytes),
            actor: Actor {
                pid: self.pid,
                ppid: self.ppid,
                exe: self.exe.as_ref().map(WireBytes::to_bytes),
                cmdline: self.cmdline.as_ref().map(WireBytes::to_bytes),
                uid: self.uid,
                user: self.user.clone(),
                login_uid: self.login_uid,
                login_user: self.login_user.clone(),
                container_id: self.container_id.clone(),
                comm: self.comm.clone(),
                start_time_ns: self.process_start_ns,
            },
        }
    }
}

/// One health row of one host's store, or a record the publisher itself makes (a gap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthMessage {
    pub id: i64,
    pub store: String,
    pub host: String,
    pub time_ns: i64,
    /// `start`, `stop`, `loss`, `scan`, `rescan`, `integrity`, `store_rows_dropped`,
    /// `fleet_gap`, ...
    pub kind: String,
    pub backend: Option<String>,
    pub detail: Option<String>,
    pub lost_events: u64,
    /// Structured detail (a gap's id range and the paths it touched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl HealthMessage {
    pub fn new(host: &str, store: &str, id: i64, h: &HealthRecord) -> HealthMessage {
        HealthMessage {
            id,
            store: store.to_string(),
            host: host.to_string(),
            time_ns: h.time_ns,
            kind: h.kind.clone(),
            backend: h.backend.clone(),
            detail: h.detail.clone(),
            lost_events: h.lost_events,
            data: None,
        }
    }
}

/// What a host applied of the central rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRules {
    /// group -> revision in the bucket (0: the group has no rule set).
    pub revisions: std::collections::BTreeMap<String, u64>,
    /// BLAKE3 over the applied rule sets (hex).
    pub digest: String,
}

/// An applied-rules report: the revisions in force and, when the newest could not be
/// applied, why (the host stays on `applied`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMessage {
    pub host: String,
    pub time_ns: i64,
    pub applied: AppliedRules,
    /// The revisions that were refused, with the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejected>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub revisions: std::collections::BTreeMap<String, u64>,
    pub error: String,
}

/// A heartbeat: the host is alive, with what `fim status --fleet` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatMessage {
    pub host: String,
    pub computer: String,
    pub time_ns: i64,
    pub version: String,
    pub store: String,
    pub backend: Option<String>,
    pub groups: Vec<String>,
    pub applied: AppliedRules,
    /// Rows not yet acknowledged by the stream.
    pub backlog: u64,
    /// Kernel events lost, as recorded in the store's loss rows.
    pub losses: u64,
    /// Rows skipped because the backlog overflowed.
    pub gaps: u64,
    pub published: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_strings_arrive_exactly() {
        for bytes in [&b"/etc/passwd"[..], b"/tmp/\xff\xfe bad", b""] {
            let wire = WireBytes::from_bytes(bytes);
            let json = serde_json::to_string(&wire).unwrap();
            let back: WireBytes = serde_json::from_str(&json).unwrap();
            assert_eq!(back.to_bytes(), bytes);
        }
        assert_eq!(
            serde_json::to_string(&WireBytes::from_bytes(b"\xff")).unwrap(),
            r#"{"hex":"ff"}"#
        );
    }

    #[test]
    fn a_change_row_survives_the_trip() {
        let record = ChangeRecord {
            time_ns: 5,
            host: "web".into(),
            activity: 3,
            path: b"/etc/x\xff".to_vec(),
            changed: vec!["content".into()],
            used_path: Some(b"/elsewhere/x\xfe".to_vec()),
            actor: Actor {
                pid: Some(9),
                exe: Some(b"/usr/bin/vi".to_vec()),
                ..Actor::default()
            },
            ..ChangeRecord::default()
        };
        let message = ChangeMessage::new("h1", "s1", 42, &record);
        let json = serde_json::to_vec(&message).unwrap();
        let back: ChangeMessage = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, message);
        assert_eq!(back.to_record(), record);
    }
}
