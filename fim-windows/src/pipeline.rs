//! The platform-independent agent core: ETW event -> decode -> rule match
//! -> enrichment -> OCSF record, and snapshot -> reconcile -> OCSF record.
//! The Windows agent and the `replay` subcommand both drive this.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::actor::{ProcessResolver, StaticProcesses};
use crate::change::{Backend, Change, FileActivity, RegistryChange, blake3_hex};
use crate::decode::{DecoderStats, EtwDecoder};
use crate::etw_event::{EtwEvent, EtwFixture};
use crate::lost_events::{LossReport, LostEventAccounting, SessionCounters};
use crate::nt_path::DeviceMap;
use crate::ocsf::{self, Emission, FileContent, FileFacts};
use crate::reconcile::Reconciler;
use crate::rules::RuleSet;
use crate::snapshot::RegistrySnapshot;

pub trait FileInspector {
    /// Size, kind and BLAKE3 of the file as it is now; None if gone. With
    /// `content_cap`, a hashed file's first `content_cap` bytes are returned
    /// too (`FileFacts::content`), from the same read as the hash.
    fn inspect(&self, path: &str, content_cap: Option<u64>) -> Option<FileFacts>;
}

/// Hash a byte stream and keep its first `content_cap` bytes.
fn hash_and_capture(
    mut reader: impl Read,
    content_cap: Option<u64>,
) -> std::io::Result<(String, Option<FileContent>)> {
    let mut hasher = blake3::Hasher::new();
    let mut kept: Option<FileContent> = content_cap.map(|_| FileContent {
        data: Vec::new(),
        truncated: false,
    });
    let cap = content_cap.map_or(0, |c| usize::try_from(c).unwrap_or(usize::MAX));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(content) = kept.as_mut() {
            let room = cap - content.data.len();
            let take = n.min(room);
            content.data.extend_from_slice(&buf[..take]);
            content.truncated |= take < n;
        }
    }
    Ok((hasher.finalize().to_hex().to_string(), kept))
}

/// Reads the real file system; content is hashed up to a size limit.
pub struct FsInspector {
    pub max_hash_bytes: u64,
}

impl FileInspector for FsInspector {
    fn inspect(&self, path: &str, content_cap: Option<u64>) -> Option<FileFacts> {
        let meta = std::fs::metadata(path).ok()?;
        let (blake3, content) = if meta.is_file() && meta.len() <= self.max_hash_bytes {
            let file = std::fs::File::open(path).ok()?;
            // The file may have grown since metadata(): hash what is there,
            // but never more than the hash limit.
            let (hash, content) =
                hash_and_capture(file.take(self.max_hash_bytes), content_cap).ok()?;
            (Some(hash), content)
        } else {
            (None, None)
        };
        Some(FileFacts {
            size: meta.len(),
            is_dir: meta.is_dir(),
            blake3,
            content,
        })
    }
}

/// A fixture's file contents, keyed case-insensitively by DOS path.
pub struct StaticFiles {
    files: BTreeMap<String, String>,
}

impl StaticFiles {
    pub fn new(files: &BTreeMap<String, String>) -> Self {
        Self {
            files: files
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.clone()))
                .collect(),
        }
    }
}

impl FileInspector for StaticFiles {
    fn inspect(&self, path: &str, content_cap: Option<u64>) -> Option<FileFacts> {
        let content = self.files.get(&path.to_lowercase())?;
        // Same code path as the real file system: one read, hash and prefix.
        let (hash, captured) = hash_and_capture(content.as_bytes(), content_cap).ok()?;
        debug_assert_eq!(hash, blake3_hex(content.as_bytes()));
        Some(FileFacts {
            size: content.len() as u64,
            is_dir: false,
            blake3: Some(hash),
            content: captured,
        })
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    pub events: u64,
    pub changes: u64,
    pub reported: u64,
    pub snapshot_reported: u64,
}

pub struct Pipeline {
    decoder: EtwDecoder,
    rules: RuleSet,
    reconciler: Reconciler,
    lost: LostEventAccounting,
    hostname: String,
    processes: Box<dyn ProcessResolver>,
    inspector: Box<dyn FileInspector>,
    pub stats: PipelineStats,
}

impl Pipeline {
    pub fn new(
        rules: RuleSet,
        devices: DeviceMap,
        cache_capacity: usize,
        hostname: String,
        processes: Box<dyn ProcessResolver>,
        inspector: Box<dyn FileInspector>,
    ) -> Self {
        Self {
            decoder: EtwDecoder::new(devices, cache_capacity),
            rules,
            reconciler: Reconciler::new(),
            lost: LostEventAccounting::new(),
            hostname,
            processes,
            inspector,
            stats: PipelineStats::default(),
        }
    }

    pub fn set_current_control_set(&mut self, name: Option<String>) {
        self.decoder.set_current_control_set(name);
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Decode one event: the records of the changes it completes (none,
    /// its own, or held requests its OperationEnd confirmed or timed out).
    pub fn on_etw_event(&mut self, event: &EtwEvent) -> Vec<Value> {
        self.stats.events += 1;
        let changes = self.decoder.decode(event);
        self.report(changes)
    }

    /// Report held requests whose OperationEnd did not come within the
    /// timeout by `now_ms` (epoch ms); the agent calls it when idle.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Value> {
        let mut changes = Vec::new();
        self.decoder.expire(now_ms, &mut changes);
        self.report(changes)
    }

    /// Report every held request (end of a replay).
    pub fn flush(&mut self) -> Vec<Value> {
        let changes = self.decoder.flush();
        self.report(changes)
    }

    /// Name KeyObjects opened before the session (see
    /// [`EtwDecoder::seed_key_objects`]), keeping those of `snapshot`'s keys.
    pub fn seed_key_objects(
        &mut self,
        handles: impl IntoIterator<Item = (u64, String)>,
        snapshot: &RegistrySnapshot,
    ) -> usize {
        let watched: std::collections::HashSet<String> =
            snapshot.keys.keys().map(|k| k.to_lowercase()).collect();
        self.decoder
            .seed_key_objects(handles, |path| watched.contains(&path.to_lowercase()))
    }

    pub fn decoder_stats(&self) -> &DecoderStats {
        &self.decoder.stats
    }

    fn report(&mut self, changes: Vec<Change>) -> Vec<Value> {
        let mut out = Vec::new();
        for change in changes {
            self.stats.changes += 1;
            if let Some(record) = self.record(&change) {
                self.stats.reported += 1;
                out.push(record);
            }
        }
        out
    }

    fn record(&mut self, change: &Change) -> Option<Value> {
        let matched = self.rules.match_change(change)?;
        let pid = match change {
            Change::File(f) => Some(f.pid),
            Change::Registry(r) => r.pid,
        };
        let process = pid.and_then(|pid| self.processes.resolve(pid));
        let em = Emission {
            hostname: &self.hostname,
            rule: &matched.name,
            group: &matched.group,
            backend: Backend::Etw,
            authorized: self.rules.is_authorized(process.as_ref()),
        };
        Some(match change {
            Change::File(f) => {
                let content_cap = matched
                    .upload_content
                    .then_some(self.rules.content_max_size);
                let facts = match f.activity {
                    FileActivity::Delete => None,
                    _ => self
                        .inspector
                        .inspect(f.new_path.as_deref().unwrap_or(&f.path), content_cap),
                };
                ocsf::file_record(f, facts.as_ref(), process.as_ref(), &em)
            }
            Change::Registry(r) => {
                self.reconciler.note_etw(r);
                ocsf::registry_record(r, process.as_ref(), &em)
            }
        })
    }

    /// Install a registry snapshot; returns records for what ETW missed.
    pub fn on_snapshot(&mut self, snapshot: RegistrySnapshot) -> Vec<Value> {
        let missed: Vec<RegistryChange> = self.reconciler.apply_snapshot(snapshot);
        let mut out = Vec::new();
        for change in missed {
            let Some(matched) = self.rules.match_registry(&change) else {
                continue;
            };
            let em = Emission {
                hostname: &self.hostname,
                rule: &matched.name,
                group: &matched.group,
                backend: Backend::Snapshot,
                // A snapshot diff has no actor to authorise.
                authorized: false,
            };
            out.push(ocsf::registry_record(&change, None, &em));
        }
        self.stats.snapshot_reported += out.len() as u64;
        out
    }

    /// Feed the session's loss counters; Some means "snapshot now".
    pub fn on_session_counters(&mut self, counters: SessionCounters) -> Option<LossReport> {
        self.lost.observe(counters)
    }

    pub fn cache_evictions(&self) -> u64 {
        self.decoder.cache_evictions()
    }
}

/// Run a fixture through the pipeline with the given rules; one JSON value
/// per reported change, in order.
pub fn replay_fixture(fixture: &EtwFixture, rules: RuleSet, hostname: &str) -> Vec<Value> {
    replay_fixture_with_stats(fixture, rules, hostname).0
}

/// [`replay_fixture`], plus what the decoder counted (unknown versions,
/// failed operations, seeded keys).
pub fn replay_fixture_with_stats(
    fixture: &EtwFixture,
    rules: RuleSet,
    hostname: &str,
) -> (Vec<Value>, DecoderStats) {
    let devices = DeviceMap::from_pairs(fixture.device_map.clone());
    let mut pipeline = Pipeline::new(
        rules,
        devices,
        4096,
        hostname.to_string(),
        Box::new(StaticProcesses::new(&fixture.processes)),
        Box::new(StaticFiles::new(&fixture.files)),
    );
    pipeline.set_current_control_set(fixture.current_control_set.clone());
    // Handles open before the session, kept for the baseline's keys.
    if let Some(baseline) = fixture.snapshots.iter().find(|s| s.after_event == 0) {
        let handles = fixture
            .key_handles
            .iter()
            .map(|h| (h.object, h.name.clone()));
        pipeline.seed_key_objects(handles, &baseline.snapshot);
    }
    let mut out = Vec::new();
    let snapshots_at = |n: usize| fixture.snapshots.iter().filter(move |s| s.after_event == n);
    for (i, event) in fixture.events.iter().enumerate() {
        for s in snapshots_at(i) {
            out.extend(pipeline.on_snapshot(s.snapshot.clone()));
        }
        out.extend(pipeline.on_etw_event(event));
    }
    out.extend(pipeline.flush());
    for s in snapshots_at(fixture.events.len()) {
        out.extend(pipeline.on_snapshot(s.snapshot.clone()));
    }
    (out, pipeline.decoder_stats().clone())
}

pub fn load_fixture(path: &Path) -> Result<EtwFixture> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading fixture {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing fixture {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_inspector_hashes_the_whole_file_and_keeps_a_capped_prefix() {
        let dir = std::env::temp_dir().join(format!("fim-windows-inspect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let path = path.to_str().unwrap();
        let inspector = FsInspector {
            max_hash_bytes: 1 << 20,
        };
        let plain = inspector.inspect(path, None).unwrap();
        assert_eq!(plain.blake3, Some(blake3_hex(&data)));
        assert_eq!(plain.content, None);
        // Cap below the size, across read-buffer boundaries: prefix, flagged.
        let capped = inspector.inspect(path, Some(70_000)).unwrap();
        assert_eq!(capped.blake3, Some(blake3_hex(&data)));
        let content = capped.content.unwrap();
        assert_eq!(content.data, &data[..70_000]);
        assert!(content.truncated);
        // Cap exactly the size: whole file, not truncated.
        let exact = inspector.inspect(path, Some(200_000)).unwrap().content;
        assert_eq!(
            exact,
            Some(FileContent {
                data: data.clone(),
                truncated: false
            })
        );
        // A file over the hash limit has no hash, so no content either.
        let small_limit = FsInspector {
            max_hash_bytes: 1000,
        };
        let big = small_limit.inspect(path, Some(10)).unwrap();
        assert_eq!((big.blake3, big.content), (None, None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A registry in memory for the snapshot walk.
    struct MemRegistry(BTreeMap<String, crate::snapshot::KeySnapshot>);

    impl crate::snapshot::RegistryReader for MemRegistry {
        fn read_key(&self, path: &str) -> Result<Option<crate::snapshot::KeySnapshot>> {
            Ok(self.0.get(path).cloned())
        }
    }

    fn key(subkeys: &[&str], values: &[(&str, &[u8])]) -> crate::snapshot::KeySnapshot {
        crate::snapshot::KeySnapshot {
            values: values
                .iter()
                .map(|(n, d)| {
                    (
                        n.to_string(),
                        crate::change::RegistryValueState {
                            value_type: 1,
                            size: d.len() as u64,
                            blake3: Some(blake3_hex(d)),
                        },
                    )
                })
                .collect(),
            subkeys: subkeys.iter().map(|s| s.to_string()).collect(),
            security_digest: None,
        }
    }

    #[test]
    fn wildcard_registry_rules_are_snapshotted_and_their_changes_reported() {
        let config = crate::rules::Config::parse(
            "[[registry_rule]]\nname = 'per-user Run'\nkey_path = 'HKU\\*\\Software\\Run'\n",
            "t",
        )
        .unwrap();
        let rules = RuleSet::compile(&config, &|_| None, None).unwrap();
        let roots = rules.snapshot_roots();
        let mut reg = MemRegistry(BTreeMap::from([
            ("HKU".to_string(), key(&["S-1", "S-2"], &[])),
            (r"HKU\S-1".to_string(), key(&["Software"], &[])),
            (r"HKU\S-1\Software".to_string(), key(&["Run"], &[])),
            (
                r"HKU\S-1\Software\Run".to_string(),
                key(&[], &[("a", b"1")]),
            ),
            (r"HKU\S-2".to_string(), key(&[], &[])),
        ]));
        let mut pipeline = Pipeline::new(
            rules,
            DeviceMap::new(),
            16,
            "h".into(),
            Box::new(StaticProcesses::new(&[])),
            Box::new(StaticFiles::new(&BTreeMap::new())),
        );
        let take = |reg: &MemRegistry, t| crate::snapshot::take_snapshot(reg, &roots, 100, t);
        assert!(pipeline.on_snapshot(take(&reg, 1).unwrap()).is_empty());
        reg.0.insert(
            r"HKU\S-1\Software\Run".to_string(),
            key(&[], &[("a", b"2")]),
        );
        let records = pipeline.on_snapshot(take(&reg, 2).unwrap());
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0]["reg_value"]["path"], r"HKU\S-1\Software\Run");
        assert_eq!(records[0]["activity_name"], "Modify");
        assert_eq!(records[0]["unmapped"]["fim"]["rule"], "per-user Run");
        assert_eq!(records[0]["unmapped"]["fim"]["backend"], "snapshot");
    }
}
