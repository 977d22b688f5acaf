//! The TOML schema of one configuration file, as written (before merging and validation).
//!
//! Values that validation may reject are `Spanned` so the error can point at them.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub state_dir: Option<Spanned<String>>,
    pub output: Option<OutputSection>,
    pub metrics: Option<MetricsSection>,
    pub hashing: Option<HashingSection>,
    pub store: Option<StoreSection>,
    pub sensor: Option<SensorSection>,
    pub scan: Option<ScanSection>,
    pub fleet: Option<crate::fleet::FleetSection>,
    #[serde(default)]
    pub rule: Vec<RuleEntry>,
    #[serde(default)]
    pub authorized: Vec<Spanned<AuthorizedEntry>>,
    #[serde(default)]
    pub excluded: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Absolute path of the JSON-lines file; absent means stdout.
    pub file: Option<Spanned<String>>,
    pub max_size_mb: Option<Spanned<u64>>,
    pub keep: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub address: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashingSection {
    pub max_file_size: Option<u64>,
    pub scan_bytes_per_sec: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorSection {
    pub ring_buffer_kib: Option<Spanned<u64>>,
}

/// `[scan]`: durations are strings with units (`"12h"`); `0` (or `"0"`) turns scheduled scans
/// off. Any TOML value is accepted here so that validation can say what is wrong with it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanSection {
    pub interval: Option<Spanned<toml::Value>>,
    pub spread: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub retention_days: Option<u32>,
    pub max_changes: Option<u64>,
    pub content_max_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    pub name: Spanned<String>,
    pub group: Option<Spanned<String>>,
    pub path: Spanned<String>,
    pub path_type: Option<Spanned<String>>,
    pub recursive: Option<Spanned<bool>>,
    pub enabled: Option<bool>,
    pub upload_content: Option<bool>,
    #[serde(default)]
    pub ignore: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizedEntry {
    /// Changes made by this executable are labelled authorized.
    pub exe: Option<Spanned<String>>,
    /// Changes made inside dpkg/apt transactions are labelled authorized.
    pub package_managers: Option<Spanned<bool>>,
}
