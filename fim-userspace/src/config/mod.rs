//! Configuration: `/etc/fim/fim.toml` plus `conf.d/*.toml` next to it, merged and validated.
//!
//! Loading reports every problem at once, each located at `file:line:col`. Without any
//! configuration file the built-in default rule set ([`default_rules`]) applies.

mod defaults;
mod error;
mod file;
mod load;
mod pattern;
mod rule;
mod scan;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use defaults::*;
pub use error::{ConfigError, ConfigErrors, line_column};
pub use load::ConfigSource;
pub use pattern::{IgnorePattern, PathPattern, PrefixRelation};
pub use rule::{PathType, Rule, RuleSet, WatchRoot};
pub use scan::{
    DEFAULT_SCAN_INTERVAL, MAX_DEFAULT_SPREAD, ScanSchedule, default_spread, format_duration,
    parse_duration,
};

/// Where change events are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// A JSON-lines file rotated at `max_size_bytes`, keeping `keep` rotated files.
    File {
        path: PathBuf,
        max_size_bytes: u64,
        keep: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashing {
    /// Files larger than this get metadata only (and are flagged as such).
    pub max_file_size: u64,
    /// Read budget of baseline scans; 0 means unlimited.
    pub scan_bytes_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Change and health rows older than this are pruned.
    pub retention_days: u32,
    /// At most this many change rows are kept (the oldest go first).
    pub max_changes: u64,
    /// Larger files are not kept as content versions for `upload_content` rules.
    pub content_max_size: u64,
}

/// Which actors' changes are labelled authorized (they are still recorded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorized {
    pub exes: Vec<PathBuf>,
    /// Changes made inside dpkg/apt transactions.
    pub package_managers: bool,
}

/// The merged, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub output: Output,
    pub metrics_address: SocketAddr,
    pub hashing: Hashing,
    pub store: StoreSettings,
    /// The kernel ring buffer's size in bytes (`[sensor] ring_buffer_kib`).
    pub ring_buffer_bytes: u32,
    /// `[scan]`: the scheduled full scan.
    pub scan: ScanSchedule,
    pub rules: RuleSet,
    pub authorized: Authorized,
    /// Actors whose changes are not reported at all.
    pub excluded: Vec<PathBuf>,
    /// The files this configuration came from, in merge order; empty for the built-in one.
    pub sources: Vec<PathBuf>,
    /// `[fleet]`: publish to NATS JetStream and follow central rules (off when absent).
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// Forward the kernel side's diagnostics to the log (`fim run --kernel-log`; no file
    /// setting).
    pub kernel_log: bool,
}

impl Config {
    /// The configuration used when no file exists: default settings and [`default_rules`].
    pub fn builtin() -> Config {
        Config {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            output: Output::Stdout,
            metrics_address: DEFAULT_METRICS_ADDRESS
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9717))),
            hashing: Hashing {
                max_file_size: DEFAULT_MAX_FILE_SIZE,
                scan_bytes_per_sec: 0,
            },
            store: StoreSettings {
                retention_days: DEFAULT_RETENTION_DAYS,
                max_changes: DEFAULT_MAX_CHANGES,
                content_max_size: DEFAULT_CONTENT_MAX_SIZE,
            },
            ring_buffer_bytes: DEFAULT_RING_BUFFER_KIB * 1024,
            scan: ScanSchedule::default(),
            rules: default_rules(),
            authorized: Authorized::default(),
            excluded: Vec::new(),
            sources: Vec::new(),
            fleet: None,
            kernel_log: false,
        }
    }

    /// Loads the main file (`config_path`, or [`DEFAULT_CONFIG_PATH`]) and the `conf.d/*.toml`
    /// files in its directory. An explicitly given file must exist; the default one may not.
    pub fn load(config_path: Option<&Path>) -> Result<Config, ConfigErrors> {
        let sources = match config_path {
            Some(path) => load::discover(path, true)?,
            None => load::discover(Path::new(DEFAULT_CONFIG_PATH), false)?,
        };
        Config::from_sources(&sources)
    }

    /// Like [`Config::load`] with `main` standing in for the default location: it may be
    /// absent, and with no file at all (nor drop-ins) the built-in configuration applies.
    pub fn load_default_location(main: &Path) -> Result<Config, ConfigErrors> {
        Config::from_sources(&load::discover(main, false)?)
    }

    /// Merges already-read files in order: later scalar settings override earlier ones; rules,
    /// authorized and excluded actors accumulate. No sources means [`Config::builtin`].
    pub fn from_sources(sources: &[ConfigSource]) -> Result<Config, ConfigErrors> {
        load::merge(sources)
    }

    /// One line for `fim check-config`.
    pub fn summary(&self) -> String {
        let enabled = self.rules.enabled().count();
        let origin = if self.sources.is_empty() {
            "built-in defaults (no configuration file)".to_string()
        } else {
            let files: Vec<String> = self
                .sources
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            files.join(", ")
        };
        format!(
            "configuration OK: {} rules, {} enabled ({origin})",
            self.rules.len(),
            enabled
        )
    }
}
