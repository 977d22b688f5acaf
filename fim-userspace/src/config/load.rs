//! Finding, parsing, validating and merging configuration files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, ConfigErrors, line_column};
use super::file::{ConfigFile, RuleEntry};
use super::pattern::{IgnorePattern, PathPattern};
use super::rule::{PathType, Rule, RuleSet};
use super::scan::{MAX_SCAN_INTERVAL, ScanSchedule, format_duration, parse_duration};
use super::{Config, Hashing, Output, StoreSettings};

/// One configuration file's path and text.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
}

fn read_source(path: &Path) -> Result<ConfigSource, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read: {e}")))?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(ConfigSource {
            path: path.to_path_buf(),
            text,
        }),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]);
            let (line, column) = line_column(&prefix, valid);
            Err(ConfigError {
                file: path.to_path_buf(),
                line,
                column,
                message: "the file is not valid UTF-8".to_string(),
            })
        }
    }
}

/// The main file (if it exists or was given) followed by `conf.d/*.toml` sorted by name.
/// `required`: the main file was named explicitly and must exist.
pub fn discover(main: &Path, required: bool) -> Result<Vec<ConfigSource>, ConfigErrors> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    if required || main.symlink_metadata().is_ok() {
        match read_source(main) {
            Ok(source) => sources.push(source),
            Err(e) => errors.push(e),
        }
    }
    let conf_d = main.parent().unwrap_or(Path::new("/")).join("conf.d");
    match std::fs::read_dir(&conf_d) {
        Ok(entries) => {
            let mut drop_ins: Vec<PathBuf> = Vec::new();
            for entry in entries {
                match entry {
                    Ok(entry) => {
                        let path = entry.path();
                        if path.extension().is_some_and(|e| e.as_bytes() == b"toml") {
                            drop_ins.push(path);
                        }
                    }
                    Err(e) => errors.push(ConfigError::whole_file(
                        &conf_d,
                        format!("cannot list the directory: {e}"),
                    )),
                }
            }
            drop_ins.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
            for path in drop_ins {
                match read_source(&path) {
                    Ok(source) => sources.push(source),
                    Err(e) => errors.push(e),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => errors.push(ConfigError::whole_file(
            &conf_d,
            format!("cannot list the directory: {e}"),
        )),
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Collects errors for one file while its values are applied to the configuration.
struct FileContext<'a> {
    source: &'a ConfigSource,
    errors: &'a mut Vec<ConfigError>,
}

impl FileContext<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        self.errors.push(ConfigError::at(
            &self.source.path,
            &self.source.text,
            Some(span),
            message,
        ));
    }

    fn location(&self, span: Range<usize>) -> String {
        ConfigError::at(
            &self.source.path,
            &self.source.text,
            Some(span),
            String::new(),
        )
        .location()
    }

    /// A `[scan]` duration: a string such as `"12h"`, or `0`; an error at it otherwise.
    fn duration(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<Duration> {
        let parsed = match value.get_ref() {
            toml::Value::String(text) => {
                parse_duration(text).map_err(|message| format!("{text:?}: {message}"))
            }
            toml::Value::Integer(0) => Ok(Duration::ZERO),
            toml::Value::Integer(n) => Err(format!(
                "{n}: no unit (write a string such as \"{n}s\" or \"{n}h\")"
            )),
            other => Err(format!(
                "must be a duration string such as \"12h\", not a {}",
                other.type_str()
            )),
        };
        match parsed {
            Ok(duration) if duration > MAX_SCAN_INTERVAL => {
                self.error(
                    value.span(),
                    format!(
                        "[scan] {key} is longer than {}",
                        format_duration(MAX_SCAN_INTERVAL)
                    ),
                );
                None
            }
            Ok(duration) => Some(duration),
            Err(message) => {
                self.error(value.span(), format!("[scan] {key} {message}"));
                None
            }
        }
    }

    /// An absolute path value, or an error at it.
    fn absolute_path(&mut self, value: &Spanned<String>, what: &str) -> Option<PathBuf> {
        let text = value.get_ref();
        if text.starts_with('/') {
            Some(PathBuf::from(text))
        } else {
            self.error(
                value.span(),
                format!("{what} {text:?} is not absolute (it must start with '/')"),
            );
            None
        }
    }
}

pub fn merge(sources: &[ConfigSource]) -> Result<Config, ConfigErrors> {
    if sources.is_empty() {
        return Ok(Config::builtin());
    }
    let mut config = Config::builtin();
    config.rules = RuleSet::default();
    let mut rules = Vec::new();
    // Rule name -> where it was first defined, for the duplicate message.
    let mut rule_names: HashMap<String, String> = HashMap::new();
    let mut output_file: Option<PathBuf> = None;
    let mut output_max_size_mb = DEFAULT_OUTPUT_MAX_SIZE_MB;
    let mut output_keep = DEFAULT_OUTPUT_KEEP;
    // `[scan]` as set so far (the spread's default depends on the final interval), and where
    // the spread was set, for the check against the interval once every file is read.
    let mut scan_interval = config.scan.interval;
    let mut scan_spread: Option<(Duration, usize, Range<usize>)> = None;
    let mut errors = Vec::new();

    for (index, source) in sources.iter().enumerate() {
        let first_error = errors.len();
        let file: ConfigFile = match toml::from_str(&source.text) {
            Ok(file) => file,
            Err(e) => {
                errors.push(ConfigError::at(
                    &source.path,
                    &source.text,
                    e.span(),
                    e.message().trim_end().to_string(),
                ));
                continue;
            }
        };
        let mut cx = FileContext {
            source,
            errors: &mut errors,
        };
        if let Some(dir) = &file.state_dir
            && let Some(path) = cx.absolute_path(dir, "state_dir")
        {
            config.state_dir = path;
        }
        if let Some(output) = &file.output {
            if let Some(path) = &output.file {
                output_file = cx.absolute_path(path, "output file").or(output_file);
            }
            let rotation = output.max_size_mb.as_ref().map(|s| s.span());
            if let Some(span) = rotation.or(output.keep.as_ref().map(|k| k.span()))
                && output_file.is_none()
                && output.file.is_none()
            {
                cx.error(
                    span,
                    "max_size_mb and keep apply only with an output `file`".to_string(),
                );
            }
            if let Some(size) = &output.max_size_mb {
                if *size.get_ref() == 0 {
                    cx.error(size.span(), "max_size_mb must be at least 1".to_string());
                } else {
                    output_max_size_mb = *size.get_ref();
                }
            }
            if let Some(keep) = &output.keep {
                output_keep = *keep.get_ref();
            }
        }
        if let Some(metrics) = &file.metrics
            && let Some(address) = &metrics.address
        {
            match address.get_ref().parse::<SocketAddr>() {
                Ok(parsed) => config.metrics_address = parsed,
                Err(e) => cx.error(
                    address.span(),
                    format!(
                        "metrics address {:?} is not an IP:port address: {e}",
                        address.get_ref()
                    ),
                ),
            }
        }
        if let Some(hashing) = &file.hashing {
            config.hashing = Hashing {
                max_file_size: hashing
                    .max_file_size
                    .unwrap_or(config.hashing.max_file_size),
                scan_bytes_per_sec: hashing
                    .scan_bytes_per_sec
                    .unwrap_or(config.hashing.scan_bytes_per_sec),
            };
        }
        if let Some(sensor) = &file.sensor
            && let Some(kib) = &sensor.ring_buffer_kib
        {
            let value = *kib.get_ref();
            if (4..=MAX_RING_BUFFER_KIB).contains(&value) && value.is_power_of_two() {
                config.ring_buffer_bytes = (value * 1024) as u32;
            } else {
                cx.error(
                    kib.span(),
                    format!(
                        "ring_buffer_kib must be a power of two from 4 to {MAX_RING_BUFFER_KIB}"
                    ),
                );
            }
        }
        if let Some(scan) = &file.scan {
            if let Some(value) = &scan.interval
                && let Some(interval) = cx.duration(value, "interval")
            {
                scan_interval = (!interval.is_zero()).then_some(interval);
            }
            if let Some(value) = &scan.spread
                && let Some(spread) = cx.duration(value, "spread")
            {
                scan_spread = Some((spread, index, value.span()));
            }
        }
        if let Some(store) = &file.store {
            config.store = StoreSettings {
                retention_days: store.retention_days.unwrap_or(config.store.retention_days),
                max_changes: store.max_changes.unwrap_or(config.store.max_changes),
                content_max_size: store
                    .content_max_size
                    .unwrap_or(config.store.content_max_size),
            };
        }
        if let Some(fleet) = &file.fleet {
            config.fleet = crate::fleet::settings::validate(fleet, &mut |span, message| {
                cx.error(span, message)
            });
        }
        for entry in &file.rule {
            if let Some(rule) = validate_rule(&mut cx, entry, &mut rule_names) {
                rules.push(rule);
            }
        }
        for entry in &file.authorized {
            let span = entry.span();
            let entry = entry.get_ref();
            match (&entry.exe, &entry.package_managers) {
                (Some(exe), None) => {
                    if let Some(path) = cx.absolute_path(exe, "authorized exe") {
                        config.authorized.exes.push(path);
                    }
                }
                (None, Some(flag)) => {
                    config.authorized.package_managers |= *flag.get_ref();
                }
                _ => cx.error(
                    span,
                    "an [[authorized]] entry needs exactly one of `exe` or `package_managers`"
                        .to_string(),
                ),
            }
        }
        for exe in &file.excluded {
            if let Some(path) = cx.absolute_path(exe, "excluded exe") {
                config.excluded.push(path);
            }
        }
        config.sources.push(source.path.clone());
        // Report each file's problems in the order they appear in it.
        errors[first_error..].sort_by_key(|e| (e.line, e.column));
    }

    config.output = match output_file {
        Some(path) => Output::File {
            path,
            max_size_bytes: output_max_size_mb.saturating_mul(1 << 20),
            keep: output_keep,
        },
        None => Output::Stdout,
    };
    config.scan = ScanSchedule::new(scan_interval, scan_spread.as_ref().map(|s| s.0));
    if let (Some(interval), Some((spread, index, span))) = (scan_interval, scan_spread)
        && spread > interval
    {
        let source = &sources[index];
        errors.push(ConfigError::at(
            &source.path,
            &source.text,
            Some(span),
            format!(
                "[scan] spread {} is longer than the interval {}",
                format_duration(spread),
                format_duration(interval)
            ),
        ));
    }
    config.rules = RuleSet::new(rules);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

fn validate_rule(
    cx: &mut FileContext<'_>,
    entry: &RuleEntry,
    names: &mut HashMap<String, String>,
) -> Option<Rule> {
    let mut ok = true;
    let name = entry.name.get_ref().trim();
    if name.is_empty() {
        cx.error(entry.name.span(), "rule name is empty".to_string());
        ok = false;
    } else if let Some(first) = names.get(name) {
        cx.error(
            entry.name.span(),
            format!("duplicate rule name {name:?} (first defined at {first})"),
        );
        ok = false;
    } else {
        names.insert(name.to_string(), cx.location(entry.name.span()));
    }
    let group = match &entry.group {
        Some(group) if group.get_ref().trim().is_empty() => {
            cx.error(group.span(), "rule group is empty".to_string());
            ok = false;
            String::new()
        }
        Some(group) => group.get_ref().trim().to_string(),
        None => "default".to_string(),
    };
    let path = match PathPattern::new(entry.path.get_ref()) {
        Ok(path) => Some(path),
        Err(message) => {
            cx.error(entry.path.span(), message);
            None
        }
    };
    let path_type = match &entry.path_type {
        None => PathType::Folder,
        Some(text) => match PathType::parse(text.get_ref()) {
            Some(t) => t,
            None => {
                cx.error(
                    text.span(),
                    format!(
                        "unknown path_type {:?} (expected \"file\" or \"folder\")",
                        text.get_ref()
                    ),
                );
                ok = false;
                PathType::Folder
            }
        },
    };
    let recursive = entry.recursive.as_ref().is_some_and(|r| *r.get_ref());
    if let Some(r) = &entry.recursive
        && *r.get_ref()
        && path_type == PathType::File
    {
        cx.error(
            r.span(),
            "recursive applies only to rules with path_type = \"folder\"".to_string(),
        );
        ok = false;
    }
    let mut ignore = Vec::with_capacity(entry.ignore.len());
    for pattern in &entry.ignore {
        match IgnorePattern::new(pattern.get_ref()) {
            Ok(p) => ignore.push(p),
            Err(message) => {
                cx.error(pattern.span(), message);
                ok = false;
            }
        }
    }
    let path = path?;
    ok.then(|| Rule {
        name: name.to_string(),
        group,
        path,
        path_type,
        recursive,
        enabled: entry.enabled.unwrap_or(true),
        upload_content: entry.upload_content.unwrap_or(false),
        ignore,
    })
}
