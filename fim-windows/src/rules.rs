//! Rules: the Linux `[[rule]]` tables (files) plus `[[registry_rule]]`
//! (Change Tracking's fields). Windows file paths may use `%winDir%`-style
//! environment variables and a trailing `\*` / `\**` wildcard.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::actor::ProcessInfo;
use crate::change::{Change, FileChange, RegistryActivity, RegistryChange};
use crate::glob::{glob_match, has_glob};
use crate::reg_path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathType {
    File,
    Folder,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    pub name: String,
    #[serde(default)]
    pub group: String,
    pub path: String,
    pub path_type: PathType,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub upload_content: bool,
    #[serde(default)]
    pub ignore: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryRule {
    /// Change Tracking's "item name".
    pub name: String,
    #[serde(default)]
    pub group: String,
    pub key_path: String,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    #[serde(default = "default_snapshot_interval")]
    pub snapshot_interval_secs: u64,
    #[serde(default = "default_cache_capacity")]
    pub name_cache_capacity: usize,
    #[serde(default = "default_max_snapshot_keys")]
    pub max_snapshot_keys: usize,
    #[serde(default = "default_lost_poll")]
    pub lost_event_poll_secs: u64,
    /// Most bytes of a file's content carried by `unmapped.fim.content`
    /// (rules with `upload_content = true`); a larger file is truncated.
    #[serde(default = "default_content_max_size")]
    pub content_max_size: u64,
}

fn default_snapshot_interval() -> u64 {
    300
}
fn default_cache_capacity() -> usize {
    65_536
}
fn default_max_snapshot_keys() -> usize {
    20_000
}
fn default_lost_poll() -> u64 {
    5
}
pub const DEFAULT_CONTENT_MAX_SIZE: u64 = 5 * 1024 * 1024;
fn default_content_max_size() -> u64 {
    DEFAULT_CONTENT_MAX_SIZE
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            snapshot_interval_secs: default_snapshot_interval(),
            name_cache_capacity: default_cache_capacity(),
            max_snapshot_keys: default_max_snapshot_keys(),
            lost_event_poll_secs: default_lost_poll(),
            content_max_size: default_content_max_size(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default, rename = "rule")]
    pub file_rules: Vec<FileRule>,
    #[serde(default, rename = "registry_rule")]
    pub registry_rules: Vec<RegistryRule>,
    /// Actors whose changes are labelled `authorized: true` (still reported).
    #[serde(default)]
    pub authorized: Vec<AuthorizedActor>,
}

/// `[[authorized]]`: a process image (same path syntax as file rules:
/// `%VAR%` expansion, case-insensitive, `*`/`?`/`**` globs, trailing `\*`
/// or `\**`) and optionally the token user SID it must run as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizedActor {
    pub exe: String,
    #[serde(default)]
    pub user: Option<String>,
}

/// The rule set used when no config file is given: autostart locations,
/// services, Winlogon, IFEO and the hosts file.
pub const DEFAULT_CONFIG: &str = r#"
[[registry_rule]]
name = "Run"
group = "autostart"
key_path = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run'

[[registry_rule]]
name = "RunOnce"
group = "autostart"
key_path = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\RunOnce'

[[registry_rule]]
name = "Run (WOW64)"
group = "autostart"
key_path = 'HKLM\SOFTWARE\WOW6432Node\Microsoft\Windows\CurrentVersion\Run'

[[registry_rule]]
name = "Services"
group = "services"
key_path = 'HKLM\SYSTEM\CurrentControlSet\Services'
recursive = true

[[registry_rule]]
name = "Winlogon"
group = "logon"
key_path = 'HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Winlogon'

[[registry_rule]]
name = "Image File Execution Options"
group = "hijack"
key_path = 'HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\Image File Execution Options'
recursive = true

[[registry_rule]]
name = "Session Manager"
group = "boot"
key_path = 'HKLM\SYSTEM\CurrentControlSet\Control\Session Manager'

[[registry_rule]]
name = "Policies System"
group = "policy"
key_path = 'HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System'

[[rule]]
name = "hosts and network files"
group = "network"
path = '%windir%\System32\drivers\etc\*'
path_type = "folder"

[[rule]]
name = "drivers"
group = "system"
path = '%windir%\System32\drivers\*.sys'
path_type = "file"

[[rule]]
name = "scheduled tasks"
group = "autostart"
path = '%windir%\System32\Tasks\**'
path_type = "folder"

[[rule]]
name = "startup folder"
group = "autostart"
path = '%ProgramData%\Microsoft\Windows\Start Menu\Programs\Startup\*'
path_type = "folder"
"#;

impl Config {
    /// Parse TOML; errors name `origin:line:col` like the Linux daemon.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            anyhow::anyhow!("{origin}:{line}:{col}: {}", e.message())
        })?;
        for rule in &config.file_rules {
            if rule.name.trim().is_empty() {
                bail!("{origin}: a [[rule]] has an empty name");
            }
        }
        for rule in &config.registry_rules {
            if rule.name.trim().is_empty() {
                bail!("{origin}: a [[registry_rule]] has an empty name");
            }
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn builtin() -> Self {
        // The built-in text is tested (see tests) so this cannot fail at run time.
        Self::parse(DEFAULT_CONFIG, "<built-in>")
            .unwrap_or_else(|e| panic!("built-in config is invalid: {e:#}"))
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Expand `%NAME%` (case-insensitive) using `lookup`; unknown variables are
/// errors because a rule silently watching a literal `%x%` would be wrong.
pub fn expand_env(path: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('%') else {
            bail!("unterminated %variable% in {path:?}");
        };
        let name = &after[..end];
        let value = lookup(name)
            .with_context(|| format!("environment variable %{name}% in {path:?} is not set"))?;
        out.push_str(value.trim_end_matches('\\'));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out.replace('/', "\\"))
}

/// A rule after expansion, ready for matching.
#[derive(Debug, Clone)]
pub struct CompiledFileRule {
    pub rule: FileRule,
    /// Folder base or file pattern.
    pub pattern: String,
    pub recursive: bool,
}

#[derive(Debug, Clone)]
pub struct CompiledRegistryRule {
    pub rule: RegistryRule,
    pub key_path: String,
    pub recursive: bool,
}

/// An `[[authorized]]` entry after expansion: lower-case image glob.
#[derive(Debug, Clone)]
pub struct CompiledAuthorized {
    pub exe_pattern: String,
    pub user: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RuleSet {
    pub files: Vec<CompiledFileRule>,
    pub registry: Vec<CompiledRegistryRule>,
    pub authorized: Vec<CompiledAuthorized>,
    /// `[agent] content_max_size`, for rules with `upload_content`.
    pub content_max_size: u64,
}

/// Which rule a change matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    pub name: String,
    pub group: String,
    /// The file rule asks for the file's content (`upload_content`).
    pub upload_content: bool,
}

impl RuleSet {
    /// Compile enabled rules. `lookup` resolves environment variables,
    /// `user_sid` expands HKCU.
    pub fn compile(
        config: &Config,
        lookup: &dyn Fn(&str) -> Option<String>,
        user_sid: Option<&str>,
    ) -> Result<Self> {
        let mut files = Vec::new();
        for rule in config.file_rules.iter().filter(|r| r.enabled) {
            let expanded =
                expand_env(&rule.path, lookup).with_context(|| format!("rule {:?}", rule.name))?;
            let (pattern, recursive) = split_trailing_wildcard(&expanded, rule.recursive);
            let is_absolute =
                pattern.as_bytes().get(1) == Some(&b':') || pattern.starts_with("\\\\");
            if !is_absolute {
                bail!(
                    "rule {:?}: path {:?} is not absolute after expansion",
                    rule.name,
                    expanded
                );
            }
            files.push(CompiledFileRule {
                rule: rule.clone(),
                pattern,
                recursive,
            });
        }
        let mut registry = Vec::new();
        for rule in config.registry_rules.iter().filter(|r| r.enabled) {
            let canonical = reg_path::expand_current_user(
                &reg_path::canonical_hive_path(&rule.key_path),
                user_sid,
            );
            let (key_path, recursive) = split_trailing_wildcard(&canonical, rule.recursive);
            if !(key_path.starts_with("HKLM") || key_path.starts_with("HKU")) {
                bail!(
                    "registry_rule {:?}: key_path {:?} must start with HKLM, HKU or HKCU",
                    rule.name,
                    rule.key_path
                );
            }
            registry.push(CompiledRegistryRule {
                rule: rule.clone(),
                key_path,
                recursive,
            });
        }
        let mut authorized = Vec::new();
        for entry in &config.authorized {
            let expanded = expand_env(&entry.exe, lookup)
                .with_context(|| format!("[[authorized]] exe {:?}", entry.exe))?;
            let is_absolute =
                expanded.as_bytes().get(1) == Some(&b':') || expanded.starts_with("\\\\");
            if !is_absolute {
                bail!(
                    "[[authorized]] exe {:?} is not absolute after expansion",
                    entry.exe
                );
            }
            authorized.push(CompiledAuthorized {
                exe_pattern: expanded.to_lowercase(),
                user: entry.user.clone(),
            });
        }
        Ok(Self {
            files,
            registry,
            authorized,
            content_max_size: config.agent.content_max_size,
        })
    }

    /// Whether the process that made a change is an `[[authorized]]` actor:
    /// its image path matches (case-insensitively) and, when the entry names
    /// a user, its token SID is that user. Unknown processes (exited, or a
    /// snapshot-only change) are never authorized.
    pub fn is_authorized(&self, process: Option<&ProcessInfo>) -> bool {
        let Some(p) = process else {
            return false;
        };
        let Some(image) = p.image_path.as_deref() else {
            return false;
        };
        self.authorized.iter().any(|a| {
            glob_match(&a.exe_pattern, image)
                && a.user.as_deref().is_none_or(|want| {
                    p.user_sid
                        .as_deref()
                        .is_some_and(|sid| sid.eq_ignore_ascii_case(want))
                })
        })
    }

    pub fn match_change(&self, change: &Change) -> Option<RuleMatch> {
        match change {
            Change::File(f) => self.match_file(f),
            Change::Registry(r) => self.match_registry(r),
        }
    }

    pub fn match_file(&self, change: &FileChange) -> Option<RuleMatch> {
        // A rename into or out of a watched place both matter.
        // So does a hard link made to a watched file from anywhere.
        let candidates = std::iter::once(change.path.as_str())
            .chain(change.new_path.as_deref())
            .chain(change.source_path.as_deref());
        for path in candidates {
            if let Some(rule) = self.files.iter().find(|r| file_rule_matches(r, path)) {
                return Some(RuleMatch {
                    name: rule.rule.name.clone(),
                    group: rule.rule.group.clone(),
                    upload_content: rule.rule.upload_content,
                });
            }
        }
        None
    }

    pub fn match_registry(&self, change: &RegistryChange) -> Option<RuleMatch> {
        // A rename into or out of a watched place both matter.
        std::iter::once(change.key_path.as_str())
            .chain(change.previous_key_path.as_deref())
            .find_map(|key| self.match_registry_key(change.activity, key))
    }

    fn match_registry_key(&self, activity: RegistryActivity, key: &str) -> Option<RuleMatch> {
        let key = key.to_lowercase();
        let key_ops = matches!(
            activity,
            RegistryActivity::CreateKey | RegistryActivity::DeleteKey | RegistryActivity::RenameKey
        );
        self.registry
            .iter()
            .find(|r| {
                let base = r.key_path.to_lowercase();
                if has_glob(&base) {
                    return glob_match(&base, &key)
                        || (r.recursive && glob_match(&format!("{base}\\**"), &key));
                }
                let under = key
                    .strip_prefix(&base)
                    .and_then(|rest| rest.strip_prefix('\\'));
                key == base
                    || match under {
                        Some(rest) => r.recursive || (key_ops && !rest.contains('\\')),
                        None => false,
                    }
            })
            .map(|r| RuleMatch {
                name: r.rule.name.clone(),
                group: r.rule.group.clone(),
                upload_content: false,
            })
    }

    /// Registry keys the baseline should snapshot, with recursion. Key
    /// paths with globs are returned as patterns: the snapshot expands them
    /// (`snapshot::expand_roots`) against the registry as it is then.
    pub fn snapshot_roots(&self) -> Vec<(String, bool)> {
        let mut roots: BTreeMap<String, bool> = BTreeMap::new();
        for r in &self.registry {
            let entry = roots.entry(r.key_path.clone()).or_insert(false);
            *entry |= r.recursive;
        }
        roots.into_iter().collect()
    }
}

/// `C:\x\*` -> (`C:\x`, recursive flag), `C:\x\**` -> (`C:\x`, true).
fn split_trailing_wildcard(path: &str, recursive: bool) -> (String, bool) {
    let path = path.trim_end_matches('\\');
    if let Some(base) = path.strip_suffix("\\**") {
        return (base.to_string(), true);
    }
    if let Some(base) = path.strip_suffix("\\*") {
        return (base.to_string(), recursive);
    }
    (path.to_string(), recursive)
}

fn file_rule_matches(rule: &CompiledFileRule, path: &str) -> bool {
    let lower = path.to_lowercase();
    let file_name = lower.rsplit('\\').next().unwrap_or(&lower);
    if rule
        .rule
        .ignore
        .iter()
        .any(|g| glob_match(g, &lower) || glob_match(g, file_name))
    {
        return false;
    }
    let pattern = rule.pattern.to_lowercase();
    match rule.rule.path_type {
        PathType::File => glob_match(&pattern, &lower),
        PathType::Folder => {
            let is_under = |base: &str| {
                lower
                    .strip_prefix(base)
                    .and_then(|rest| rest.strip_prefix('\\'))
                    .is_some_and(|rest| {
                        !rest.is_empty() && (rule.recursive || !rest.contains('\\'))
                    })
            };
            if has_glob(&pattern) {
                // Globbed folder: match the parent directory against it.
                let parent = lower.rsplit_once('\\').map_or("", |(p, _)| p);
                glob_match(&pattern, parent)
                    || (rule.recursive && glob_match(&format!("{pattern}\\**"), parent))
            } else {
                lower == pattern || is_under(&pattern)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{FileActivity, FileChange};

    fn env(name: &str) -> Option<String> {
        match name.to_ascii_lowercase().as_str() {
            "windir" => Some(r"C:\Windows".into()),
            "programdata" => Some(r"C:\ProgramData".into()),
            _ => None,
        }
    }

    fn file(path: &str) -> FileChange {
        FileChange {
            activity: FileActivity::Update,
            path: path.into(),
            new_path: None,
            source_path: None,
            pid: 1,
            time_ms: 0,
            truncated_path: false,
        }
    }

    fn reg(activity: RegistryActivity, key: &str) -> RegistryChange {
        RegistryChange::new(activity, key.into(), 0)
    }

    #[test]
    fn builtin_config_compiles() {
        let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
        assert!(rules.files.len() >= 4 && rules.registry.len() >= 8);
        let m = rules
            .match_file(&file(r"C:\WINDOWS\system32\drivers\etc\hosts"))
            .unwrap();
        assert_eq!(m.name, "hosts and network files");
        assert!(
            rules
                .match_file(&file(r"C:\Windows\System32\drivers\etc\sub\x"))
                .is_none()
        );
        assert!(
            rules
                .match_file(&file(r"C:\Windows\System32\Tasks\a\b\c"))
                .is_some()
        );
        assert!(
            rules
                .match_file(&file(r"C:\Windows\System32\drivers\x.sys"))
                .is_some()
        );
        assert!(
            rules
                .match_file(&file(r"C:\Windows\System32\drivers\x.dll"))
                .is_none()
        );
    }

    #[test]
    fn env_expansion_is_case_insensitive_and_unknown_is_an_error() {
        assert_eq!(expand_env(r"%winDir%\x", &env).unwrap(), r"C:\Windows\x");
        let err = expand_env(r"%nope%\x", &env).unwrap_err();
        assert!(format!("{err:#}").contains("%nope%"));
        assert!(expand_env(r"%windir\x", &env).is_err());
    }

    #[test]
    fn unknown_keys_are_errors_with_location() {
        let text = "[[rule]]\nname = \"a\"\npath = 'C:\\x'\npath_type = \"file\"\nbogus = 1\n";
        let err = Config::parse(text, "fim.toml").unwrap_err().to_string();
        assert!(err.starts_with("fim.toml:5:1:"), "{err}");
        assert!(err.contains("bogus"), "{err}");
        let err = Config::parse(
            "[[registry_rule]]\nname='x'\nkey_path='HKLM\\A'\nrecurse=true\n",
            "r.toml",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("r.toml:4:1:"), "{err}");
    }

    #[test]
    fn folder_rule_recursion_and_ignore() {
        let cfg = Config::parse(
            "[[rule]]\nname='app'\ngroup='g'\npath='%ProgramData%\\App'\npath_type='folder'\nrecursive=true\nignore=['*.log']\n",
            "t",
        )
        .unwrap();
        let rules = RuleSet::compile(&cfg, &env, None).unwrap();
        assert!(
            rules
                .match_file(&file(r"C:\ProgramData\App\a\b.ini"))
                .is_some()
        );
        assert!(
            rules
                .match_file(&file(r"C:\ProgramData\App\a\b.log"))
                .is_none()
        );
        assert!(rules.match_file(&file(r"C:\ProgramData\Apple\x")).is_none());
    }

    #[test]
    fn rename_into_watched_folder_matches() {
        let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
        let mut change = file(r"C:\Temp\evil");
        change.new_path = Some(r"C:\Windows\System32\drivers\etc\hosts".into());
        assert!(rules.match_file(&change).is_some());
    }

    #[test]
    fn registry_rule_recursion_and_direct_subkeys() {
        let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
        let run = r"HKLM\SOFTWARE\Microsoft\Windows\CurrentVersion\Run";
        assert_eq!(
            rules
                .match_registry(&reg(RegistryActivity::SetValue, run))
                .unwrap()
                .name,
            "Run"
        );
        assert!(
            rules
                .match_registry(&reg(RegistryActivity::SetValue, &format!(r"{run}\sub")))
                .is_none()
        );
        assert!(
            rules
                .match_registry(&reg(RegistryActivity::CreateKey, &format!(r"{run}\sub")))
                .is_some()
        );
        assert!(
            rules
                .match_registry(&reg(RegistryActivity::SetValue, &format!(r"{run}Once")))
                .is_some()
        );
        assert!(
            rules
                .match_registry(&reg(
                    RegistryActivity::SetValue,
                    r"HKLM\SYSTEM\CurrentControlSet\Services\x\Parameters"
                ))
                .is_some()
        );
        assert!(
            rules
                .match_registry(&reg(RegistryActivity::SetValue, r"HKLM\SOFTWARE\Other"))
                .is_none()
        );
    }

    #[test]
    fn hkcu_and_trailing_wildcard_in_registry_rules() {
        let cfg = Config::parse(
            "[[registry_rule]]\nname='mine'\nkey_path='HKEY_CURRENT_USER\\Software\\Fim\\*'\n",
            "t",
        )
        .unwrap();
        let rules = RuleSet::compile(&cfg, &env, Some("S-1-5-21-7")).unwrap();
        assert_eq!(rules.registry[0].key_path, r"HKU\S-1-5-21-7\Software\Fim");
        assert!(
            rules
                .match_registry(&reg(
                    RegistryActivity::SetValue,
                    r"HKU\S-1-5-21-7\Software\Fim"
                ))
                .is_some()
        );
        assert_eq!(
            rules.snapshot_roots(),
            vec![(r"HKU\S-1-5-21-7\Software\Fim".to_string(), false)]
        );
        let bad =
            Config::parse("[[registry_rule]]\nname='x'\nkey_path='SOFTWARE\\x'\n", "t").unwrap();
        assert!(RuleSet::compile(&bad, &env, None).is_err());
    }

    fn process(image: &str, sid: Option<&str>) -> ProcessInfo {
        ProcessInfo {
            pid: 9,
            image_path: Some(image.into()),
            cmd_line: None,
            user_sid: sid.map(str::to_string),
            user_name: None,
        }
    }

    #[test]
    fn authorized_entries_expand_env_match_case_insensitively_and_check_the_user() {
        let cfg = Config::parse(
            "[[authorized]]\nexe = '%windir%\\System32\\msiexec.exe'\nuser = 'S-1-5-18'\n\
             [[authorized]]\nexe = 'C:\\Program Files\\Vendor\\**'\n",
            "t",
        )
        .unwrap();
        let rules = RuleSet::compile(&cfg, &env, None).unwrap();
        let msi = r"c:\windows\system32\MSIEXEC.exe";
        assert!(rules.is_authorized(Some(&process(msi, Some("s-1-5-18")))));
        assert!(!rules.is_authorized(Some(&process(msi, Some("S-1-5-21-1")))));
        assert!(!rules.is_authorized(Some(&process(msi, None))));
        assert!(!rules.is_authorized(Some(&process(r"C:\Windows\System32\cmd.exe", None))));
        assert!(rules.is_authorized(Some(&process(r"C:\Program Files\Vendor\bin\upd.exe", None))));
        assert!(!rules.is_authorized(None));
        let no_image = ProcessInfo {
            image_path: None,
            ..process("x", None)
        };
        assert!(!rules.is_authorized(Some(&no_image)));
        // Without entries nothing is authorized.
        let none = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
        assert!(!none.is_authorized(Some(&process(msi, Some("S-1-5-18")))));
    }

    #[test]
    fn authorized_entries_are_validated() {
        for bad in [
            "[[authorized]]\nexe = '%nosuchvar%\\x.exe'\n",
            "[[authorized]]\nexe = 'x.exe'\n",
        ] {
            let cfg = Config::parse(bad, "t").unwrap();
            assert!(RuleSet::compile(&cfg, &env, None).is_err(), "{bad}");
        }
        let err =
            Config::parse("[[authorized]]\nexe = 'C:\\x.exe'\nsid = 'S-1'\n", "t").unwrap_err();
        assert!(format!("{err}").starts_with("t:3:1"), "{err}");
    }

    #[test]
    fn content_max_size_defaults_to_5_mib_and_is_configurable() {
        let rules = RuleSet::compile(&Config::builtin(), &env, None).unwrap();
        assert_eq!(rules.content_max_size, 5 * 1024 * 1024);
        let cfg = Config::parse("[agent]\ncontent_max_size = 17\n", "t").unwrap();
        assert_eq!(
            RuleSet::compile(&cfg, &env, None).unwrap().content_max_size,
            17
        );
    }

    #[test]
    fn disabled_rules_do_not_match() {
        let cfg = Config::parse(
            "[[registry_rule]]\nname='x'\nkey_path='HKLM\\A'\nenabled=false\n",
            "t",
        )
        .unwrap();
        let rules = RuleSet::compile(&cfg, &env, None).unwrap();
        assert!(
            rules
                .match_registry(&reg(RegistryActivity::SetValue, r"HKLM\A"))
                .is_none()
        );
    }
}
