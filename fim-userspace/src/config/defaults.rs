//! Built-in settings, and the rule set used when no configuration file exists at all.

use super::pattern::{IgnorePattern, PathPattern};
use super::rule::{PathType, Rule, RuleSet};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/fim/fim.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fim";
/// Loopback only: metrics reveal what is watched, so exposing them is an explicit choice.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9717";
/// Larger files get metadata only (flagged), so one huge file cannot stall a scan.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 30;
pub const DEFAULT_OUTPUT_MAX_SIZE_MB: u64 = 100;
pub const DEFAULT_OUTPUT_KEEP: u32 = 5;
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
pub const DEFAULT_MAX_CHANGES: u64 = 1_000_000;
pub const DEFAULT_CONTENT_MAX_SIZE: u64 = 5 << 20;
/// The kernel ring buffer: 8 MiB holds ~40,000 records while user space catches up.
pub const DEFAULT_RING_BUFFER_KIB: u32 = 8192;
pub const MAX_RING_BUFFER_KIB: u64 = 1 << 20;

/// (name, group, path, path_type, recursive, ignore)
type DefaultRule = (
    &'static str,
    &'static str,
    &'static str,
    PathType,
    bool,
    &'static [&'static str],
);

const DEFAULT_RULES: &[DefaultRule] = &[
    // Broad coverage of configuration; the more specific rules below take their paths over.
    (
        "etc",
        "config",
        "/etc",
        PathType::Folder,
        true,
        &["/etc/adjtime", "/etc/mtab"],
    ),
    (
        "bin",
        "system-binaries",
        "/bin",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "sbin",
        "system-binaries",
        "/sbin",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "usr-bin",
        "system-binaries",
        "/usr/bin",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "usr-sbin",
        "system-binaries",
        "/usr/sbin",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "systemd",
        "system-binaries",
        "/usr/lib/systemd",
        PathType::Folder,
        true,
        &[],
    ),
    ("boot", "boot", "/boot", PathType::Folder, true, &[]),
    (
        "crontab",
        "scheduler",
        "/etc/crontab",
        PathType::File,
        false,
        &[],
    ),
    (
        "cron-dirs",
        "scheduler",
        "/etc/cron.*",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "spool-cron",
        "scheduler",
        "/var/spool/cron",
        PathType::Folder,
        true,
        &[],
    ),
    ("root-ssh", "ssh", "/root/.ssh", PathType::Folder, true, &[]),
    (
        "authorized-keys",
        "ssh",
        "/home/*/.ssh/authorized_keys",
        PathType::File,
        false,
        &[],
    ),
    ("ssh-config", "ssh", "/etc/ssh", PathType::Folder, true, &[]),
    (
        "accounts",
        "auth",
        "/etc/{passwd,shadow,group,gshadow}",
        PathType::File,
        false,
        &[],
    ),
    (
        "sudoers",
        "auth",
        "/etc/sudoers",
        PathType::File,
        false,
        &[],
    ),
    (
        "sudoers-d",
        "auth",
        "/etc/sudoers.d",
        PathType::Folder,
        true,
        &[],
    ),
    ("pam", "auth", "/etc/pam.d", PathType::Folder, true, &[]),
    (
        "security",
        "auth",
        "/etc/security",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "ld-so-conf",
        "linker",
        "/etc/ld.so.conf",
        PathType::File,
        false,
        &[],
    ),
    (
        "ld-so-conf-d",
        "linker",
        "/etc/ld.so.conf.d",
        PathType::Folder,
        true,
        &[],
    ),
    (
        "ld-so-preload",
        "linker",
        "/etc/ld.so.preload",
        PathType::File,
        false,
        &[],
    ),
];

/// The rules that apply when no configuration file exists.
pub fn default_rules() -> RuleSet {
    let rules = DEFAULT_RULES
        .iter()
        .filter_map(|&(name, group, path, path_type, recursive, ignore)| {
            // The table above is fixed and covered by a test; a bad entry is dropped, never a panic.
            let path = PathPattern::new(path).ok()?;
            let ignore = ignore
                .iter()
                .map(|p| IgnorePattern::new(p))
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            Some(Rule {
                name: name.to_string(),
                group: group.to_string(),
                path,
                path_type,
                recursive,
                enabled: true,
                upload_content: false,
                ignore,
            })
        })
        .collect();
    RuleSet::new(rules)
}

/// How many default rules the table defines (lets a test prove none was dropped).
pub fn default_rule_count() -> usize {
    DEFAULT_RULES.len()
}
