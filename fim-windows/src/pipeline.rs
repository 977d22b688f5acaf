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
use crate::decode::EtwDecoder;
use crate::etw_event::{EtwEvent, EtwFixture};
use crate::lost_events::{LossReport, LostEventAccounting, SessionCounters};
use crate::nt_path::DeviceMap;
use crate::ocsf::{self, Emission, FileFacts};
use crate::reconcile::Reconciler;
use crate::rules::RuleSet;
use crate::snapshot::RegistrySnapshot;

pub trait FileInspector {
    /// Size, kind and BLAKE3 of the file as it is now; None if gone.
    fn inspect(&self, path: &str) -> Option<FileFacts>;
}

/// Reads the real file system; content is hashed up to a size limit.
pub struct FsInspector {
    pub max_hash_bytes: u64,
}

impl FileInspector for FsInspector {
    fn inspect(&self, path: &str) -> Option<FileFacts> {
        let meta = std::fs::metadata(path).ok()?;
        let blake3 = if meta.is_file() && meta.len() <= self.max_hash_bytes {
            let mut hasher = blake3::Hasher::new();
            let mut file = std::fs::File::open(path).ok()?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).ok()?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Some(hasher.finalize().to_hex().to_string())
        } else {
            None
        };
        Some(FileFacts {
            size: meta.len(),
            is_dir: meta.is_dir(),
            blake3,
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
    fn inspect(&self, path: &str) -> Option<FileFacts> {
        self.files
            .get(&path.to_lowercase())
            .map(|content| FileFacts {
                size: content.len() as u64,
                is_dir: false,
                blake3: Some(blake3_hex(content.as_bytes())),
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

    pub fn on_etw_event(&mut self, event: &EtwEvent) -> Option<Value> {
        self.stats.events += 1;
        let change = self.decoder.decode(event)?;
        self.stats.changes += 1;
        let matched = self.rules.match_change(&change)?;
        let process = self.processes.resolve(event.pid);
        let em = Emission {
            hostname: &self.hostname,
            rule: &matched.name,
            group: &matched.group,
            backend: Backend::Etw,
        };
        let record = match &change {
            Change::File(f) => {
                let facts = match f.activity {
                    FileActivity::Delete => None,
                    _ => self
                        .inspector
                        .inspect(f.new_path.as_deref().unwrap_or(&f.path)),
                };
                ocsf::file_record(f, facts.as_ref(), process.as_ref(), &em)
            }
            Change::Registry(r) => {
                self.reconciler.note_etw(r);
                ocsf::registry_record(r, process.as_ref(), &em)
            }
        };
        self.stats.reported += 1;
        Some(record)
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
    let mut out = Vec::new();
    let snapshots_at = |n: usize| fixture.snapshots.iter().filter(move |s| s.after_event == n);
    for (i, event) in fixture.events.iter().enumerate() {
        for s in snapshots_at(i) {
            out.extend(pipeline.on_snapshot(s.snapshot.clone()));
        }
        out.extend(pipeline.on_etw_event(event));
    }
    for s in snapshots_at(fixture.events.len()) {
        out.extend(pipeline.on_snapshot(s.snapshot.clone()));
    }
    out
}

pub fn load_fixture(path: &Path) -> Result<EtwFixture> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading fixture {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing fixture {}", path.display()))
}
