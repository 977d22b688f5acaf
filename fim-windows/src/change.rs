//! What fim reports: a change to a file or to the registry, independent of
//! whether ETW or a snapshot diff saw it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileActivity {
    Create,
    Update,
    Delete,
    Rename,
    SetAttributes,
    SetSecurity,
    /// A new name (hard link, `path`) for an existing file (`source_path`).
    HardLink,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub activity: FileActivity,
    /// DOS path (C:\...) or the raw NT path when no drive letter is known.
    pub path: String,
    /// The new path of a rename.
    pub new_path: Option<String>,
    /// The existing name a hard link (`path`) was made to.
    pub source_path: Option<String>,
    pub pid: u32,
    pub time_ms: u64,
    /// The name could not be fully resolved (cache miss, unmapped device).
    pub truncated_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryActivity {
    CreateKey,
    DeleteKey,
    SetKeySecurity,
    SetValue,
    DeleteValue,
    /// Inferred from a snapshot diff: a key vanished and a sibling with an
    /// identical subtree appeared (`previous_key_path` is the old path).
    RenameKey,
}

/// What fim knows about one value's content: never the data itself, only
/// its type, size and BLAKE3 digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryValueState {
    /// Win32 REG_* type number.
    pub value_type: u32,
    pub size: u64,
    /// BLAKE3 of the data; None when only part of the data was captured.
    pub blake3: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryChange {
    pub activity: RegistryActivity,
    /// HKLM\..., HKU\<SID>\... form.
    pub key_path: String,
    pub value_name: Option<String>,
    pub value: Option<RegistryValueState>,
    pub previous_value: Option<RegistryValueState>,
    /// Security descriptor digests for SetKeySecurity seen by snapshots.
    pub security_digest: Option<String>,
    pub previous_security_digest: Option<String>,
    /// The key's path before a RenameKey.
    pub previous_key_path: Option<String>,
    pub pid: Option<u32>,
    pub time_ms: u64,
    pub truncated_path: bool,
}

impl RegistryChange {
    pub fn new(activity: RegistryActivity, key_path: String, time_ms: u64) -> Self {
        Self {
            activity,
            key_path,
            value_name: None,
            value: None,
            previous_value: None,
            security_digest: None,
            previous_security_digest: None,
            previous_key_path: None,
            pid: None,
            time_ms,
            truncated_path: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    File(FileChange),
    Registry(RegistryChange),
}

/// Where a change was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Etw,
    Snapshot,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Etw => "etw",
            Backend::Snapshot => "snapshot",
        }
    }
}

pub fn blake3_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}
