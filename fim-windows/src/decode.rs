//! Turns normalised Kernel-File / Kernel-Registry events into [`Change`]s,
//! keeping the object -> name caches that later events depend on.
//!
//! Events are decoded by (provider, id, version): a consumed id in a
//! version without a layout is counted in [`DecoderStats::unknown_versions`]
//! and never decoded by guessing. Deletes, renames, hard links and
//! overwriting opens are requests: they are held by their IRP until the
//! matching OperationEnd (24) says whether they succeeded, so a failed one
//! is not reported as done ([`DecoderStats::failed_operations`]); one whose
//! OperationEnd never comes is reported after [`PENDING_TIMEOUT_MS`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::change::{
    Change, FileActivity, FileChange, RegistryActivity, RegistryChange, RegistryValueState,
    blake3_hex,
};
use crate::etw_event::{EtwEvent, FieldValue, Provider};
use crate::etw_layout::{file_event, is_consumed, is_known_version, registry_event};
use crate::name_cache::NameCache;
use crate::nt_path::DeviceMap;
use crate::reg_path;

/// FILE_INFORMATION_CLASS values that matter for integrity.
const FILE_BASIC_INFORMATION: u64 = 4;
const FILE_ALLOCATION_INFORMATION: u64 = 19;
const FILE_END_OF_FILE_INFORMATION: u64 = 20;

/// Create's `CreateOptions` is the IRP's Options: the disposition in the
/// top byte, the FILE_* options below.
const FILE_DELETE_ON_CLOSE: u64 = 0x0000_1000;
const FILE_SUPERSEDE: u64 = 0;
const FILE_OVERWRITE: u64 = 4;
const FILE_OVERWRITE_IF: u64 = 5;

/// REG_CREATED_NEW_KEY: CreateKey also fires for opens of existing keys.
const REG_CREATED_NEW_KEY: u64 = 1;

/// How long (event time) a request waits for its OperationEnd before it
/// is reported anyway (OperationEnd lost, or delivered before it).
pub const PENDING_TIMEOUT_MS: u64 = 2_000;

/// What the decoder counted that did not become a change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DecoderStats {
    /// (provider, event id, version) of consumed events whose version has
    /// no layout: never decoded, only counted.
    pub unknown_versions: BTreeMap<(Provider, u16, u8), u64>,
    /// Deletes, renames, links and overwrites whose OperationEnd carried a
    /// failure status: not reported.
    pub failed_operations: u64,
    /// Requests reported without their OperationEnd (timeout or flush).
    pub unconfirmed_operations: u64,
    /// KeyObject names seeded from handles opened before the session.
    pub seeded_key_objects: u64,
}

/// A change waiting for its IRP's OperationEnd.
#[derive(Debug)]
struct Pending {
    time_ms: u64,
    change: Option<FileChange>,
    /// A rename's new name, applied to the caches once it succeeded.
    renamed: Option<(u64, Option<u64>, String)>,
    /// CreateNewFile saw this IRP: its open created the file, so an
    /// overwrite disposition on the same open empties nothing.
    new_file: bool,
}

pub struct EtwDecoder {
    devices: DeviceMap,
    file_objects: NameCache,
    file_keys: NameCache,
    key_objects: NameCache,
    /// FileObjects already reported as written since their last cleanup:
    /// one Update per open, not one per WriteFile call.
    written: HashSet<u64>,
    /// FileObjects opened with FILE_DELETE_ON_CLOSE: deleted at Cleanup.
    delete_on_close: HashSet<u64>,
    /// FileObjects whose delete was already reported (DeletePath or
    /// delete-on-close), so the other one does not report it twice.
    delete_reported: HashSet<u64>,
    /// Requests by IRP, waiting for OperationEnd; `pending_order` is the
    /// arrival order for the timeout.
    pending: HashMap<u64, Pending>,
    pending_order: VecDeque<(u64, u64)>,
    /// The newest event time seen: the decoder's clock.
    now_ms: u64,
    capacity: usize,
    /// "ControlSet001": the kernel names keys by the real control set while
    /// rules and snapshots use the CurrentControlSet link.
    current_control_set: Option<String>,
    pub stats: DecoderStats,
}

impl DecoderStats {
    /// One line for an operator, None when nothing was counted.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        for ((provider, id, version), n) in &self.unknown_versions {
            parts.push(format!(
                "{n} {provider:?} event {id} records of version {version} (no layout: not decoded)"
            ));
        }
        if self.failed_operations > 0 {
            parts.push(format!(
                "{} failed deletes/renames/links/overwrites not reported",
                self.failed_operations
            ));
        }
        if self.unconfirmed_operations > 0 {
            parts.push(format!(
                "{} requests reported without their OperationEnd",
                self.unconfirmed_operations
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

impl EtwDecoder {
    pub fn new(devices: DeviceMap, cache_capacity: usize) -> Self {
        Self {
            devices,
            file_objects: NameCache::new(cache_capacity),
            file_keys: NameCache::new(cache_capacity),
            key_objects: NameCache::new(cache_capacity),
            written: HashSet::new(),
            delete_on_close: HashSet::new(),
            delete_reported: HashSet::new(),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            now_ms: 0,
            capacity: cache_capacity.max(1),
            current_control_set: None,
            stats: DecoderStats::default(),
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

    /// Name KeyObjects opened before the session started (from the system
    /// handle table: object address, `\REGISTRY\...` name). Only keys for
    /// which `watched` holds (the baseline snapshot's keys) are kept, so the
    /// seed stays as small as the watch list. Returns how many were seeded.
    pub fn seed_key_objects(
        &mut self,
        handles: impl IntoIterator<Item = (u64, String)>,
        watched: impl Fn(&str) -> bool,
    ) -> usize {
        let mut seeded = 0;
        for (object, kernel_name) in handles {
            let Some(path) = self.hive_path(&kernel_name) else {
                continue;
            };
            if object != 0 && watched(&path) && self.key_objects.get(object).is_none() {
                self.key_objects.insert(object, path);
                seeded += 1;
            }
        }
        self.stats.seeded_key_objects += seeded as u64;
        seeded as usize
    }

    pub fn cache_evictions(&self) -> u64 {
        self.file_objects.evicted() + self.file_keys.evicted() + self.key_objects.evicted()
    }

    /// The changes an event completes: none, its own, or requests whose
    /// OperationEnd it carries or whose wait it timed out.
    pub fn decode(&mut self, event: &EtwEvent) -> Vec<Change> {
        let mut out = Vec::new();
        if !is_consumed(event.provider, event.event_id) {
            return out;
        }
        if !is_known_version(event.provider, event.event_id, event.version) {
            *self
                .stats
                .unknown_versions
                .entry((event.provider, event.event_id, event.version))
                .or_default() += 1;
            return out;
        }
        self.now_ms = self.now_ms.max(event.time_ms);
        match event.provider {
            Provider::KernelFile => self.decode_file(event, &mut out),
            Provider::KernelRegistry => {
                out.extend(self.decode_registry(event).map(Change::Registry));
            }
        }
        self.expire(self.now_ms, &mut out);
        out
    }

    /// Report requests that waited longer than [`PENDING_TIMEOUT_MS`] for
    /// their OperationEnd by `now_ms` (the agent calls this on its clock
    /// when events are quiet), and forget expired closed names.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<Change>) {
        self.file_objects.expire(now_ms);
        self.file_keys.expire(now_ms);
        self.key_objects.expire(now_ms);
        while let Some(&(irp, time_ms)) = self.pending_order.front() {
            let over = self.pending_order.len() > self.capacity;
            if !over && time_ms.saturating_add(PENDING_TIMEOUT_MS) >= now_ms {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&irp).is_some_and(|p| p.time_ms == time_ms) {
                self.settle(irp, None, out);
            }
        }
    }

    /// Report every request still waiting (end of a replay).
    pub fn flush(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        while let Some((irp, _)) = self.pending_order.pop_front() {
            if self.pending.contains_key(&irp) {
                self.settle(irp, None, &mut out);
            }
        }
        out
    }

    /// Close a request: `status` None (unknown) or success reports it, a
    /// failure drops it.
    fn settle(&mut self, irp: u64, status: Option<u32>, out: &mut Vec<Change>) {
        let Some(p) = self.pending.remove(&irp) else {
            return;
        };
        let failed = status.is_some_and(|s| (s as i32) < 0);
        if p.change.is_none() {
            return;
        }
        if failed {
            self.stats.failed_operations += 1;
            return;
        }
        if status.is_none() {
            self.stats.unconfirmed_operations += 1;
        }
        self.report(p, out);
    }

    /// A request that succeeded (or whose outcome is unknown): apply a
    /// rename to the caches and report the change.
    fn report(&mut self, p: Pending, out: &mut Vec<Change>) {
        if let Some((object, key, new_nt)) = p.renamed {
            self.file_objects
                .insert_at(object, new_nt.clone(), p.time_ms);
            if let Some(key) = key {
                self.file_keys.insert_at(key, new_nt, p.time_ms);
            }
        }
        out.extend(p.change.map(Change::File));
    }

    /// Hold `change` until the OperationEnd of `irp` (reported at once
    /// when the event carries no IRP).
    fn hold(
        &mut self,
        e: &EtwEvent,
        change: FileChange,
        renamed: Option<(u64, Option<u64>, String)>,
        out: &mut Vec<Change>,
    ) {
        let irp = e.number("Irp").unwrap_or(0);
        if irp == 0 {
            let p = Pending {
                time_ms: e.time_ms,
                change: Some(change),
                renamed,
                new_file: false,
            };
            self.report(p, out);
            return;
        }
        let entry = self.pending.entry(irp).or_insert_with(|| Pending {
            time_ms: e.time_ms,
            change: None,
            renamed: None,
            new_file: false,
        });
        if entry.new_file && change.activity == FileActivity::Update {
            return; // the open created the file: CreateNewFile reports it
        }
        entry.change = Some(change);
        entry.renamed = renamed;
        self.pending_order.push_back((irp, entry.time_ms));
    }

    fn file_name(&self, event: &EtwEvent) -> Option<String> {
        let t = event.time_ms;
        let by_object = event
            .number("FileObject")
            .and_then(|o| self.file_objects.get_at(o, t));
        let by_key = event
            .number("FileKey")
            .and_then(|k| self.file_keys.get_at(k, t));
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
            source_path: None,
            pid: event.pid,
            time_ms: event.time_ms,
            truncated_path: !resolved,
        }
    }

    fn decode_file(&mut self, e: &EtwEvent, out: &mut Vec<Change>) {
        use file_event::*;
        let object = e.number("FileObject").unwrap_or(0);
        match e.event_id {
            NAME_CREATE => {
                if let (Some(key), Some(name)) = (e.number("FileKey"), e.text("FileName")) {
                    self.file_keys.insert_at(key, name.to_string(), e.time_ms);
                }
            }
            NAME_DELETE => {
                if let Some(key) = e.number("FileKey") {
                    self.file_keys.close(key, e.time_ms);
                }
            }
            CREATE | CREATE_NEW_FILE => self.on_create(e, object, out),
            CLEANUP => {
                self.written.remove(&object);
                if self.delete_on_close.remove(&object) && self.delete_reported.insert(object) {
                    out.push(Change::File(self.file_change(
                        e,
                        FileActivity::Delete,
                        self.file_name(e),
                    )));
                }
            }
            CLOSE => {
                self.written.remove(&object);
                self.delete_on_close.remove(&object);
                self.delete_reported.remove(&object);
                self.file_objects.close(object, e.time_ms);
            }
            WRITE => out.extend(self.first_write(e, object).map(Change::File)),
            SET_INFORMATION => match e.number("InfoClass") {
                Some(FILE_BASIC_INFORMATION) => out.push(Change::File(self.file_change(
                    e,
                    FileActivity::SetAttributes,
                    self.file_name(e),
                ))),
                Some(FILE_ALLOCATION_INFORMATION | FILE_END_OF_FILE_INFORMATION) => {
                    out.extend(self.first_write(e, object).map(Change::File));
                }
                _ => {}
            },
            OPERATION_END => {
                if let Some(irp) = e.number("Irp").filter(|i| *i != 0) {
                    let status = e.number("Status").and_then(|s| u32::try_from(s).ok());
                    self.settle(irp, Some(status.unwrap_or(0)), out);
                }
            }
            DELETE_PATH => {
                if object != 0 && !self.delete_reported.insert(object) {
                    return; // already reported by delete-on-close
                }
                let name = e
                    .text("FilePath")
                    .map(str::to_string)
                    .or_else(|| self.file_name(e));
                let change = self.file_change(e, FileActivity::Delete, name);
                self.hold(e, change, None, out);
            }
            RENAME_PATH => {
                // FilePath is the destination; the source is the name the
                // caches hold for this FileObject/FileKey.
                let Some(new_nt) = e.text("FilePath").map(str::to_string) else {
                    return;
                };
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
                let renamed = (object, e.number("FileKey"), new_nt);
                self.hold(e, change, Some(renamed), out);
            }
            SET_LINK_PATH => {
                // FilePath is the new link; the existing name is cached.
                let Some(link_nt) = e.text("FilePath").map(str::to_string) else {
                    return;
                };
                let mut change = self.file_change(e, FileActivity::HardLink, Some(link_nt));
                match self.file_name(e) {
                    Some(source) => {
                        let mapped = self.devices.to_dos(&source);
                        change.truncated_path |= !mapped.resolved;
                        change.source_path = Some(mapped.path);
                    }
                    None => change.truncated_path = true,
                }
                self.hold(e, change, None, out);
            }
            SET_SECURITY => out.push(Change::File(self.file_change(
                e,
                FileActivity::SetSecurity,
                self.file_name(e),
            ))),
            _ => {}
        }
    }

    fn on_create(&mut self, e: &EtwEvent, object: u64, out: &mut Vec<Change>) {
        let Some(name) = e.text("FileName").map(str::to_string) else {
            return;
        };
        self.file_objects.insert_at(object, name.clone(), e.time_ms);
        let options = e.number("CreateOptions");
        if object != 0 && options.is_some_and(|o| o & FILE_DELETE_ON_CLOSE != 0) {
            if self.delete_on_close.len() >= self.capacity {
                self.delete_on_close.clear(); // Closes were lost: start over
            }
            self.delete_on_close.insert(object);
        }
        let irp = e.number("Irp").unwrap_or(0);
        if e.event_id == file_event::CREATE_NEW_FILE {
            // The same open's overwrite disposition (if any) empties nothing.
            if let Some(p) = self.pending.get_mut(&irp).filter(|_| irp != 0) {
                if p.change.as_ref().map(|c| c.activity) == Some(FileActivity::Update) {
                    p.change = None;
                }
                p.new_file = true;
            } else if irp != 0 {
                self.pending.insert(
                    irp,
                    Pending {
                        time_ms: e.time_ms,
                        change: None,
                        renamed: None,
                        new_file: true,
                    },
                );
                self.pending_order.push_back((irp, e.time_ms));
            }
            out.push(Change::File(self.file_change(
                e,
                FileActivity::Create,
                Some(name),
            )));
            return;
        }
        let disposition = options.map(|o| o >> 24);
        if matches!(
            disposition,
            Some(FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF)
        ) {
            // The open empties an existing file with no Write: one Update
            // for the open, confirmed by its OperationEnd.
            let change = self.file_change(e, FileActivity::Update, Some(name));
            if object != 0 {
                self.written.insert(object);
            }
            self.hold(e, change, None, out);
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
        let object = e.number("KeyObject");
        match object.and_then(|o| self.key_objects.get_at(o, e.time_ms)) {
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
                        .and_then(|b| self.key_objects.get_at(b, e.time_ms))
                        .map(str::to_string);
                    let base = base.or_else(|| e.text("BaseName").and_then(|b| self.hive_path(b)));
                    base.map(|b| reg_path::join(&b, relative))
                });
                let (path, known) = match resolved {
                    Some(p) => (p, true),
                    None => (relative.to_string(), false),
                };
                if known {
                    self.key_objects
                        .insert_at(key_object, path.clone(), e.time_ms);
                }
                let created = e.event_id == CREATE_KEY
                    && e.number("Disposition") == Some(REG_CREATED_NEW_KEY);
                created.then(|| self.registry_change(e, RegistryActivity::CreateKey, path, known))
            }
            CLOSE_KEY => {
                if let Some(path) = e.text("KeyName").and_then(|k| self.hive_path(k)) {
                    self.key_objects.insert_at(key_object, path, e.time_ms);
                }
                None
            }
            DELETE_KEY => {
                let (path, known) = self.key_path(e);
                self.key_objects.close(key_object, e.time_ms);
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
        let version = match (provider, id) {
            (Provider::KernelRegistry, _) | (_, 10 | 11 | 24) => 0,
            _ => 1,
        };
        EtwEvent {
            provider,
            event_id: id,
            version,
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
    trait DecodeOne {
        fn decode1(&mut self, e: &EtwEvent) -> Option<Change>;
    }

    impl DecodeOne for EtwDecoder {
        fn decode1(&mut self, e: &EtwEvent) -> Option<Change> {
            let mut changes = self.decode(e);
            assert!(changes.len() <= 1, "{changes:?}");
            changes.pop()
        }
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
        assert_eq!(d.decode1(&create), None);
        let write = event(
            Provider::KernelFile,
            16,
            &[("FileObject", n(5)), ("FileKey", n(9))],
        );
        let Some(Change::File(c)) = d.decode1(&write) else {
            panic!("no change")
        };
        assert_eq!(
            (c.activity, c.path.as_str(), c.truncated_path),
            (FileActivity::Update, r"C:\a.txt", false)
        );
        assert_eq!(
            d.decode1(&write),
            None,
            "second write on the same open is coalesced"
        );
        d.decode1(&event(Provider::KernelFile, 13, &[("FileObject", n(5))]));
        assert!(
            d.decode1(&write).is_some(),
            "cleanup ends the coalescing window"
        );
    }

    fn at(mut e: EtwEvent, time_ms: u64) -> EtwEvent {
        e.time_ms = time_ms;
        e
    }

    #[test]
    fn a_delete_without_operation_end_is_reported_after_the_timeout() {
        let mut d = decoder();
        let delete = event(
            Provider::KernelFile,
            26,
            &[
                ("Irp", n(0x77)),
                ("FileObject", n(3)),
                ("FilePath", s(r"\Device\HarddiskVolume3\gone")),
            ],
        );
        assert!(
            d.decode(&at(delete, 1000)).is_empty(),
            "held for OperationEnd"
        );
        let mut out = Vec::new();
        d.expire(1000 + PENDING_TIMEOUT_MS, &mut out);
        assert!(out.is_empty(), "not yet");
        d.expire(1001 + PENDING_TIMEOUT_MS, &mut out);
        let [Change::File(c)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(
            (c.activity, c.path.as_str()),
            (FileActivity::Delete, r"C:\gone")
        );
        assert_eq!(d.stats.unconfirmed_operations, 1);
        // A late OperationEnd for the settled IRP changes nothing.
        let end = event(
            Provider::KernelFile,
            24,
            &[("Irp", n(0x77)), ("Status", n(0))],
        );
        assert!(d.decode(&at(end, 3500)).is_empty());
    }

    #[test]
    fn delete_on_close_and_delete_path_report_one_delete() {
        let mut d = decoder();
        d.decode1(&event(
            Provider::KernelFile,
            12,
            &[
                ("FileObject", n(8)),
                ("CreateOptions", n(0x0100_1000)),
                ("FileName", s(r"\Device\HarddiskVolume3\t.tmp")),
            ],
        ));
        let cleanup = event(Provider::KernelFile, 13, &[("FileObject", n(8))]);
        let Some(Change::File(c)) = d.decode1(&cleanup) else {
            panic!("delete-on-close reports at Cleanup")
        };
        assert_eq!(
            (c.activity, c.path.as_str()),
            (FileActivity::Delete, r"C:\t.tmp")
        );
        let delete_path = event(
            Provider::KernelFile,
            26,
            &[
                ("FileObject", n(8)),
                ("FilePath", s(r"\Device\HarddiskVolume3\t.tmp")),
            ],
        );
        assert_eq!(d.decode1(&delete_path), None, "already reported");
    }

    #[test]
    fn write_falls_back_to_file_key_name() {
        let mut d = decoder();
        d.decode1(&event(
            Provider::KernelFile,
            10,
            &[
                ("FileKey", n(9)),
                ("FileName", s(r"\Device\HarddiskVolume3\k")),
            ],
        ));
        let Some(Change::File(c)) = d.decode1(&event(
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
            d.decode1(&event(Provider::KernelFile, 31, &[("FileObject", n(0x10))]))
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
        assert_eq!(d.decode1(&open), None);
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
        let Some(Change::Registry(c)) = d.decode1(&set) else {
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
        let Some(Change::Registry(c)) = d.decode1(&mk(1, 0)) else {
            panic!()
        };
        assert_eq!(c.key_path, r"HKU\S-1-5-21-9\Software\X");
        assert_eq!(d.decode1(&mk(2, 0)), None);
        assert_eq!(d.decode1(&mk(1, 0xC000_0022)), None);
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
