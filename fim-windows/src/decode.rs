//! Turns normalised Kernel-File / Kernel-Registry events into [`Change`]s,
//! keeping the object -> name caches that later events depend on.

use std::collections::HashSet;

use crate::change::{
    Change, FileActivity, FileChange, RegistryActivity, RegistryChange, RegistryValueState,
    blake3_hex,
};
use crate::etw_event::{EtwEvent, FieldValue, Provider};
use crate::name_cache::NameCache;
use crate::nt_path::DeviceMap;
use crate::reg_path;

/// Kernel-File event ids (manifest task names in comments).
mod file_event {
    pub const NAME_CREATE: u16 = 10;
    pub const NAME_DELETE: u16 = 11;
    pub const CREATE: u16 = 12;
    pub const CLEANUP: u16 = 13;
    pub const CLOSE: u16 = 14;
    pub const WRITE: u16 = 16;
    pub const SET_INFORMATION: u16 = 17;
    pub const DELETE_PATH: u16 = 26;
    pub const RENAME_PATH: u16 = 27;
    pub const CREATE_NEW_FILE: u16 = 30;
    pub const SET_SECURITY: u16 = 31;
}

/// Kernel-Registry event ids (manifest opcodes).
mod registry_event {
    pub const CREATE_KEY: u16 = 1;
    pub const OPEN_KEY: u16 = 2;
    pub const DELETE_KEY: u16 = 3;
    pub const SET_VALUE_KEY: u16 = 5;
    pub const DELETE_VALUE_KEY: u16 = 6;
    pub const CLOSE_KEY: u16 = 13;
    pub const SET_SECURITY_KEY: u16 = 15;
}

/// FILE_INFORMATION_CLASS values that matter for integrity.
const FILE_BASIC_INFORMATION: u64 = 4;
const FILE_ALLOCATION_INFORMATION: u64 = 19;
const FILE_END_OF_FILE_INFORMATION: u64 = 20;

/// REG_CREATED_NEW_KEY: CreateKey also fires for opens of existing keys.
const REG_CREATED_NEW_KEY: u64 = 1;

pub struct EtwDecoder {
    devices: DeviceMap,
    file_objects: NameCache,
    file_keys: NameCache,
    key_objects: NameCache,
    /// FileObjects already reported as written since their last cleanup:
    /// one Update per open, not one per WriteFile call.
    written: HashSet<u64>,
    /// "ControlSet001": the kernel names keys by the real control set while
    /// rules and snapshots use the CurrentControlSet link.
    current_control_set: Option<String>,
}

impl EtwDecoder {
    pub fn new(devices: DeviceMap, cache_capacity: usize) -> Self {
        Self {
            devices,
            file_objects: NameCache::new(cache_capacity),
            file_keys: NameCache::new(cache_capacity),
            key_objects: NameCache::new(cache_capacity),
            written: HashSet::new(),
            current_control_set: None,
        }
    }

    pub fn set_current_control_set(&mut self, name: Option<String>) {
        self.current_control_set = name;
    }

    /// Kernel key path -> HKLM/HKU form with CurrentControlSet restored.
    fn hive_path(&self, kernel_path: &str) -> Option<String> {
        let path = reg_path::kernel_to_hive(kernel_path)?;
        Some(match &self.current_control_set {
            Some(set) => reg_path::alias_control_set(&path, set),
            None => path,
        })
    }

    pub fn cache_evictions(&self) -> u64 {
        self.file_objects.evicted() + self.file_keys.evicted() + self.key_objects.evicted()
    }

    pub fn decode(&mut self, event: &EtwEvent) -> Option<Change> {
        match event.provider {
            Provider::KernelFile => self.decode_file(event).map(Change::File),
            Provider::KernelRegistry => self.decode_registry(event).map(Change::Registry),
        }
    }

    fn file_name(&self, event: &EtwEvent) -> Option<String> {
        let by_object = event
            .number("FileObject")
            .and_then(|o| self.file_objects.get(o));
        let by_key = event.number("FileKey").and_then(|k| self.file_keys.get(k));
        by_object.or(by_key).map(str::to_string)
    }

    fn file_change(
        &self,
        event: &EtwEvent,
        activity: FileActivity,
        nt_path: Option<String>,
    ) -> FileChange {
        let (path, resolved) = match nt_path {
            Some(p) => {
                let mapped = self.devices.to_dos(&p);
                (mapped.path, mapped.resolved)
            }
            // Never drop a change because its name is unknown: report the
            // object so the operator sees something happened.
            None => (
                format!(
                    "<unknown FileObject 0x{:x}>",
                    event.number("FileObject").unwrap_or(0)
                ),
                false,
            ),
        };
        FileChange {
            activity,
            path,
            new_path: None,
            pid: event.pid,
            time_ms: event.time_ms,
            truncated_path: !resolved,
        }
    }

    fn decode_file(&mut self, e: &EtwEvent) -> Option<FileChange> {
        use file_event::*;
        let object = e.number("FileObject").unwrap_or(0);
        match e.event_id {
            NAME_CREATE => {
                self.file_keys
                    .insert(e.number("FileKey")?, e.text("FileName")?.to_string());
                None
            }
            NAME_DELETE => {
                self.file_keys.remove(e.number("FileKey")?);
                None
            }
            CREATE | CREATE_NEW_FILE => {
                let name = e.text("FileName")?.to_string();
                self.file_objects.insert(object, name.clone());
                (e.event_id == CREATE_NEW_FILE)
                    .then(|| self.file_change(e, FileActivity::Create, Some(name)))
            }
            CLEANUP => {
                self.written.remove(&object);
                None
            }
            CLOSE => {
                self.written.remove(&object);
                self.file_objects.remove(object);
                None
            }
            WRITE => self.first_write(e, object),
            SET_INFORMATION => match e.number("InfoClass")? {
                FILE_BASIC_INFORMATION => {
                    Some(self.file_change(e, FileActivity::SetAttributes, self.file_name(e)))
                }
                FILE_ALLOCATION_INFORMATION | FILE_END_OF_FILE_INFORMATION => {
                    self.first_write(e, object)
                }
                _ => None,
            },
            DELETE_PATH => {
                let name = e
                    .text("FilePath")
                    .map(str::to_string)
                    .or_else(|| self.file_name(e));
                Some(self.file_change(e, FileActivity::Delete, name))
            }
            RENAME_PATH => {
                // FilePath is the destination; the source is the name the
                // caches hold for this FileObject/FileKey.
                let new_nt = e.text("FilePath")?.to_string();
                let old_nt = self.file_name(e);
                let mut change = self.file_change(
                    e,
                    FileActivity::Rename,
                    old_nt.clone().or(Some(new_nt.clone())),
                );
                if old_nt.is_none() {
                    change.truncated_path = true;
                }
                let new_mapped = self.devices.to_dos(&new_nt);
                change.truncated_path |= !new_mapped.resolved;
                change.new_path = Some(new_mapped.path);
                self.file_objects.insert(object, new_nt.clone());
                if let Some(key) = e.number("FileKey") {
                    self.file_keys.insert(key, new_nt);
                }
                Some(change)
            }
            SET_SECURITY => Some(self.file_change(e, FileActivity::SetSecurity, self.file_name(e))),
            _ => None,
        }
    }

    fn first_write(&mut self, e: &EtwEvent, object: u64) -> Option<FileChange> {
        if object != 0 && !self.written.insert(object) {
            return None;
        }
        Some(self.file_change(e, FileActivity::Update, self.file_name(e)))
    }

    /// Resolve the key an event is about: an absolute KeyName wins, else the
    /// name cached for its KeyObject (joined with a relative KeyName).
    fn key_path(&self, e: &EtwEvent) -> (String, bool) {
        let name = e.text("KeyName").unwrap_or("");
        if let Some(path) = self.hive_path(name) {
            return (path, true);
        }
        match e.number("KeyObject").and_then(|o| self.key_objects.get(o)) {
            Some(cached)
                if name.is_empty() || cached.to_lowercase().ends_with(&name.to_lowercase()) =>
            {
                (cached.to_string(), true)
            }
            Some(cached) => (reg_path::join(cached, name), true),
            None => (name.to_string(), false),
        }
    }

    fn decode_registry(&mut self, e: &EtwEvent) -> Option<RegistryChange> {
        use registry_event::*;
        if e.number("Status").unwrap_or(0) != 0 {
            return None; // failed operations change nothing
        }
        let key_object = e.number("KeyObject").unwrap_or(0);
        match e.event_id {
            CREATE_KEY | OPEN_KEY => {
                let relative = e.text("RelativeName").unwrap_or("");
                let resolved = self.hive_path(relative).or_else(|| {
                    let base = e
                        .number("BaseObject")
                        .and_then(|b| self.key_objects.get(b))
                        .map(str::to_string);
                    let base = base.or_else(|| e.text("BaseName").and_then(|b| self.hive_path(b)));
                    base.map(|b| reg_path::join(&b, relative))
                });
                let (path, known) = match resolved {
                    Some(p) => (p, true),
                    None => (relative.to_string(), false),
                };
                if known {
                    self.key_objects.insert(key_object, path.clone());
                }
                let created = e.event_id == CREATE_KEY
                    && e.number("Disposition") == Some(REG_CREATED_NEW_KEY);
                created.then(|| self.registry_change(e, RegistryActivity::CreateKey, path, known))
            }
            CLOSE_KEY => {
                if let Some(path) = e.text("KeyName").and_then(|k| self.hive_path(k)) {
                    self.key_objects.insert(key_object, path);
                }
                None
            }
            DELETE_KEY => {
                let (path, known) = self.key_path(e);
                self.key_objects.remove(key_object);
                Some(self.registry_change(e, RegistryActivity::DeleteKey, path, known))
            }
            SET_SECURITY_KEY => {
                let (path, known) = self.key_path(e);
                Some(self.registry_change(e, RegistryActivity::SetKeySecurity, path, known))
            }
            SET_VALUE_KEY => {
                let (path, known) = self.key_path(e);
                let mut change = self.registry_change(e, RegistryActivity::SetValue, path, known);
                change.value_name = Some(e.text("ValueName").unwrap_or("").to_string());
                change.value = captured_value(e, "Type", "DataSize", "CapturedData");
                change.previous_value =
                    captured_value(e, "PreviousDataType", "PreviousDataSize", "PreviousData")
                        .filter(|v| v.size > 0 || v.value_type != 0);
                Some(change)
            }
            DELETE_VALUE_KEY => {
                let (path, known) = self.key_path(e);
                let mut change =
                    self.registry_change(e, RegistryActivity::DeleteValue, path, known);
                change.value_name = Some(e.text("ValueName").unwrap_or("").to_string());
                Some(change)
            }
            _ => None,
        }
    }

    fn registry_change(
        &self,
        e: &EtwEvent,
        activity: RegistryActivity,
        path: String,
        known: bool,
    ) -> RegistryChange {
        let mut change = RegistryChange::new(activity, path, e.time_ms);
        change.pid = Some(e.pid);
        change.truncated_path = !known;
        change
    }
}

/// The value state an event describes. The kernel captures only a prefix of
/// large data, so the digest is given only when the capture is complete.
fn captured_value(
    e: &EtwEvent,
    type_field: &str,
    size_field: &str,
    data_field: &str,
) -> Option<RegistryValueState> {
    let value_type = u32::try_from(e.number(type_field)?).ok()?;
    let size = e.number(size_field)?;
    let blake3 = match e.fields.get(data_field) {
        Some(FieldValue::Bytes(b)) => {
            let bytes = decode_hex(&b.hex)?;
            (bytes.len() as u64 == size).then(|| blake3_hex(&bytes))
        }
        _ => None,
    };
    Some(RegistryValueState {
        value_type,
        size,
        blake3,
    })
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::etw_event::HexBytes;

    fn event(provider: Provider, id: u16, fields: &[(&str, FieldValue)]) -> EtwEvent {
        EtwEvent {
            provider,
            event_id: id,
            version: 1,
            time_ms: 1000,
            pid: 77,
            tid: 0,
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }
    fn n(v: u64) -> FieldValue {
        FieldValue::Number(v)
    }
    fn s(v: &str) -> FieldValue {
        FieldValue::Text(v.into())
    }
    fn decoder() -> EtwDecoder {
        EtwDecoder::new(
            DeviceMap::from_pairs([(r"\Device\HarddiskVolume3".to_string(), "C:".to_string())]),
            64,
        )
    }

    #[test]
    fn write_resolves_name_from_create_and_coalesces_until_cleanup() {
        let mut d = decoder();
        let create = event(
            Provider::KernelFile,
            12,
            &[
                ("FileObject", n(5)),
                ("FileName", s(r"\Device\HarddiskVolume3\a.txt")),
            ],
        );
        assert_eq!(d.decode(&create), None);
        let write = event(
            Provider::KernelFile,
            16,
            &[("FileObject", n(5)), ("FileKey", n(9))],
        );
        let Some(Change::File(c)) = d.decode(&write) else {
            panic!("no change")
        };
        assert_eq!(
            (c.activity, c.path.as_str(), c.truncated_path),
            (FileActivity::Update, r"C:\a.txt", false)
        );
        assert_eq!(
            d.decode(&write),
            None,
            "second write on the same open is coalesced"
        );
        d.decode(&event(Provider::KernelFile, 13, &[("FileObject", n(5))]));
        assert!(
            d.decode(&write).is_some(),
            "cleanup ends the coalescing window"
        );
    }

    #[test]
    fn write_falls_back_to_file_key_name() {
        let mut d = decoder();
        d.decode(&event(
            Provider::KernelFile,
            10,
            &[
                ("FileKey", n(9)),
                ("FileName", s(r"\Device\HarddiskVolume3\k")),
            ],
        ));
        let Some(Change::File(c)) = d.decode(&event(
            Provider::KernelFile,
            16,
            &[("FileObject", n(1)), ("FileKey", n(9))],
        )) else {
            panic!()
        };
        assert_eq!(c.path, r"C:\k");
    }

    #[test]
    fn unknown_name_is_reported_as_truncated_not_dropped() {
        let mut d = decoder();
        let Some(Change::File(c)) =
            d.decode(&event(Provider::KernelFile, 31, &[("FileObject", n(0x10))]))
        else {
            panic!()
        };
        assert!(c.truncated_path);
        assert_eq!(c.path, "<unknown FileObject 0x10>");
    }

    #[test]
    fn registry_key_object_cache_resolves_relative_set_value() {
        let mut d = decoder();
        let open = event(
            Provider::KernelRegistry,
            2,
            &[
                ("BaseObject", n(0)),
                ("KeyObject", n(0xAA)),
                ("Status", n(0)),
                ("BaseName", s("")),
                ("RelativeName", s(r"\REGISTRY\MACHINE\SOFTWARE\Fim")),
            ],
        );
        assert_eq!(d.decode(&open), None);
        let set = event(
            Provider::KernelRegistry,
            5,
            &[
                ("KeyObject", n(0xAA)),
                ("Status", n(0)),
                ("Type", n(4)),
                ("DataSize", n(4)),
                ("KeyName", s("")),
                ("ValueName", s("Level")),
                ("CapturedDataSize", n(4)),
                (
                    "CapturedData",
                    FieldValue::Bytes(HexBytes {
                        hex: "01000000".into(),
                    }),
                ),
                ("PreviousDataType", n(0)),
                ("PreviousDataSize", n(0)),
                ("PreviousDataCapturedSize", n(0)),
                (
                    "PreviousData",
                    FieldValue::Bytes(HexBytes { hex: String::new() }),
                ),
            ],
        );
        let Some(Change::Registry(c)) = d.decode(&set) else {
            panic!()
        };
        assert_eq!(c.key_path, r"HKLM\SOFTWARE\Fim");
        assert_eq!(c.value_name.as_deref(), Some("Level"));
        let v = c.value.unwrap();
        assert_eq!(v.blake3, Some(blake3_hex(&[1, 0, 0, 0])));
        assert_eq!(c.previous_value, None);
    }

    #[test]
    fn create_key_reports_only_new_keys_and_failed_ops_are_ignored() {
        let mut d = decoder();
        let mk = |disp: u64, status: u64| {
            event(
                Provider::KernelRegistry,
                1,
                &[
                    ("BaseObject", n(0)),
                    ("KeyObject", n(1)),
                    ("Status", n(status)),
                    ("Disposition", n(disp)),
                    ("BaseName", s(r"\REGISTRY\USER\S-1-5-21-9")),
                    ("RelativeName", s(r"Software\X")),
                ],
            )
        };
        let Some(Change::Registry(c)) = d.decode(&mk(1, 0)) else {
            panic!()
        };
        assert_eq!(c.key_path, r"HKU\S-1-5-21-9\Software\X");
        assert_eq!(d.decode(&mk(2, 0)), None);
        assert_eq!(d.decode(&mk(1, 0xC000_0022)), None);
    }

    #[test]
    fn partial_capture_has_no_digest() {
        let e = event(
            Provider::KernelRegistry,
            5,
            &[
                ("Type", n(3)),
                ("DataSize", n(100)),
                (
                    "CapturedData",
                    FieldValue::Bytes(HexBytes { hex: "00".into() }),
                ),
            ],
        );
        let v = captured_value(&e, "Type", "DataSize", "CapturedData").unwrap();
        assert_eq!(v.blake3, None);
        assert_eq!(decode_hex("zz"), None);
    }
}
