//! The normalised ETW event: what the real-time session hands to the
//! platform-independent decoder, and what the JSON fixtures contain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The two providers fim subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Provider {
    #[serde(rename = "Microsoft-Windows-Kernel-File")]
    KernelFile,
    #[serde(rename = "Microsoft-Windows-Kernel-Registry")]
    KernelRegistry,
}

impl Provider {
    /// {EDD08927-9CC4-4E65-B970-C2560FB5C289}
    pub const KERNEL_FILE_GUID: (u32, u16, u16, [u8; 8]) = (
        0xEDD0_8927,
        0x9CC4,
        0x4E65,
        [0xB9, 0x70, 0xC2, 0x56, 0x0F, 0xB5, 0xC2, 0x89],
    );
    /// {70EB4F03-C1DE-4F73-A051-33D13D5413BD}
    pub const KERNEL_REGISTRY_GUID: (u32, u16, u16, [u8; 8]) = (
        0x70EB_4F03,
        0xC1DE,
        0x4F73,
        [0xA0, 0x51, 0x33, 0xD1, 0x3D, 0x54, 0x13, 0xBD],
    );
}

/// One property value as decoded from the event's user data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// Pointers, integers and status codes.
    Number(u64),
    /// UnicodeString properties.
    Text(String),
    /// Binary properties, hex encoded in fixtures.
    Bytes(HexBytes),
}

/// Bytes that serialise as `{"hex": "..."}` so fixtures stay readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HexBytes {
    pub hex: String,
}

impl HexBytes {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// A provider event with its header facts and named properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtwEvent {
    pub provider: Provider,
    pub event_id: u16,
    #[serde(default)]
    pub version: u8,
    /// Event time, epoch milliseconds (converted from the header's FILETIME).
    pub time_ms: u64,
    /// Process id from the event header: the process that issued the I/O.
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    #[serde(default)]
    pub fields: BTreeMap<String, FieldValue>,
}

impl EtwEvent {
    pub fn number(&self, name: &str) -> Option<u64> {
        match self.fields.get(name) {
            Some(FieldValue::Number(n)) => Some(*n),
            _ => None,
        }
    }

    /// A text property; empty strings count as absent because the kernel
    /// leaves names empty whenever it did not capture them.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.fields.get(name) {
            Some(FieldValue::Text(s)) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        }
    }
}

/// 100ns intervals between 1601-01-01 and 1970-01-01.
const FILETIME_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// Convert an ETW header timestamp (FILETIME, 100ns since 1601) to epoch ms.
pub fn filetime_to_epoch_ms(filetime: u64) -> u64 {
    filetime.saturating_sub(FILETIME_UNIX_EPOCH) / 10_000
}

/// A fixture file: a note on provenance plus the events, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtwFixture {
    pub note: String,
    #[serde(default)]
    pub processes: Vec<crate::actor::ProcessInfo>,
    #[serde(default)]
    pub device_map: BTreeMap<String, String>,
    /// The ControlSet00N that HKLM\SYSTEM\CurrentControlSet links to.
    #[serde(default)]
    pub current_control_set: Option<String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    pub events: Vec<EtwEvent>,
    /// Registry snapshots applied after `after_event` events were handled.
    #[serde(default)]
    pub snapshots: Vec<FixtureSnapshot>,
    /// Key handles open before the session started (what the agent reads
    /// from the system handle table): seeded for the baseline's keys.
    #[serde(default)]
    pub key_handles: Vec<KeyHandle>,
}

/// A registry key object named by an open handle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHandle {
    /// The key object's kernel address (the events' KeyObject).
    pub object: u64,
    /// `\REGISTRY\MACHINE\...` or `\REGISTRY\USER\...`.
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureSnapshot {
    pub after_event: usize,
    pub snapshot: crate::snapshot::RegistrySnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_conversion_matches_known_instant() {
        // 2026-11-28T00:00:00Z = 1795824000 s since the Unix epoch.
        let filetime = FILETIME_UNIX_EPOCH + 1_795_824_000 * 10_000_000;
        assert_eq!(filetime_to_epoch_ms(filetime), 1_795_824_000_000);
        assert_eq!(filetime_to_epoch_ms(0), 0);
    }

    #[test]
    fn empty_text_counts_as_absent() {
        let mut e = EtwEvent {
            provider: Provider::KernelFile,
            event_id: 12,
            version: 1,
            time_ms: 0,
            pid: 1,
            tid: 0,
            fields: BTreeMap::new(),
        };
        e.fields
            .insert("FileName".into(), FieldValue::Text(String::new()));
        assert_eq!(e.text("FileName"), None);
        e.fields
            .insert("FileName".into(), FieldValue::Text("x".into()));
        assert_eq!(e.text("FileName"), Some("x"));
    }
}
