//! Central rule sets: TOML documents of `[[rule]]` entries, one per host group, in the
//! JetStream key-value bucket `fim-rules` (key `group.<G>`; every put is a revision, the
//! bucket keeps their history), and host assignments (key `host.<H>`). A rule set is
//! validated with the checks `fim check-config` makes before it is stored, and again by
//! every agent before it is applied, merged after the host's own configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError, ConfigErrors, ConfigSource, RuleSet, default_rules};

/// A rule set as stored in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSetDoc {
    /// The TOML text, exactly as put.
    pub toml: String,
    /// The file it came from (for messages).
    pub source: String,
    /// BLAKE3 of `toml` (hex).
    pub digest: String,
    pub put_at_ns: i64,
    /// `user@host` of whoever put it.
    pub put_by: String,
    /// The revision this one restores, for `rules rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

impl RuleSetDoc {
    pub fn new(source: &str, toml: String, put_at_ns: i64, put_by: String) -> RuleSetDoc {
        RuleSetDoc {
            digest: blake3::hash(toml.as_bytes()).to_hex().to_string(),
            toml,
            source: source.to_string(),
            put_at_ns,
            put_by,
            rollback_of: None,
        }
    }
}

/// A host's groups, as `fim fleet assign` stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub groups: Vec<String>,
    pub assigned_at_ns: i64,
}

/// Only rules travel centrally: settings (state_dir, outputs, metrics, fleet) belong to the
/// host, and authorized or excluded actors stay a local decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CentralFile {
    #[serde(default)]
    #[allow(dead_code)]
    rule: Vec<toml::Value>,
}

/// The name a central rule set has in messages: `fleet:<group>@<revision>`.
pub fn source_name(group: &str, revision: u64) -> PathBuf {
    PathBuf::from(format!("fleet:{group}@{revision}"))
}

/// Checks a central rule set the way `fim check-config` checks a file, plus: nothing but
/// `[[rule]]` entries. Errors are located at `file:line:col`.
pub fn validate(path: &Path, text: &str) -> Result<RuleSet, ConfigErrors> {
    if let Err(e) = toml::from_str::<CentralFile>(text) {
        let message = e.message().trim_end().to_string();
        let message = if message.starts_with("unknown field") {
            format!(
                "{message}: a central rule set holds only [[rule]] entries (settings stay in \
                 each host's fim.toml)"
            )
        } else {
            message
        };
        return Err(ConfigErrors(vec![ConfigError::at(
            path,
            text,
            e.span(),
            message,
        )]));
    }
    let source = ConfigSource {
        path: path.to_path_buf(),
        text: text.to_string(),
    };
    Ok(Config::from_sources(&[source])?.rules)
}

/// The rules a host runs: its own configuration's (or the built-in set when it has no
/// file) followed by its groups' central rule sets, checked together (a central rule may
/// not reuse a local rule's name).
pub fn merge(
    local_sources: &[ConfigSource],
    central: &BTreeMap<String, (u64, RuleSetDoc)>,
) -> Result<Arc<RuleSet>, ConfigErrors> {
    let central_sources: Vec<ConfigSource> = central
        .iter()
        .map(|(group, (revision, doc))| ConfigSource {
            path: source_name(group, *revision),
            text: doc.toml.clone(),
        })
        .collect();
    for source in &central_sources {
        validate(&source.path, &source.text)?;
    }
    if !local_sources.is_empty() {
        let mut all = local_sources.to_vec();
        all.extend(central_sources);
        return Ok(Arc::new(Config::from_sources(&all)?.rules));
    }
    // The built-in rules, which have no file to point at, then the central ones.
    let mut rules = default_rules().rules().to_vec();
    if central_sources.is_empty() {
        return Ok(Arc::new(RuleSet::new(rules)));
    }
    let central_rules = Config::from_sources(&central_sources)?.rules;
    let mut errors = Vec::new();
    for rule in central_rules.rules() {
        if rules.iter().any(|r| r.name == rule.name) {
            errors.push(ConfigError::whole_file(
                &central_sources[0].path,
                format!(
                    "rule {:?} has the name of a built-in rule; name it differently",
                    rule.name
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    rules.extend(central_rules.rules().iter().cloned());
    Ok(Arc::new(RuleSet::new(rules)))
}

/// BLAKE3 over what a host applied: each group, its revision and its rule set's digest.
pub fn digest(central: &BTreeMap<String, (u64, RuleSetDoc)>) -> String {
    let mut hasher = blake3::Hasher::new();
    for (group, (revision, doc)) in central {
        hasher.update(format!("{group}\0{revision}\0{}\n", doc.digest).as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// `user@host` for `put_by`.
pub fn who_am_i() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", crate::store::local_hostname())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "[[rule]]\nname = \"web-conf\"\ngroup = \"web\"\npath = \"/etc/nginx\"\nrecursive = true\n";

    #[test]
    fn a_central_rule_set_is_checked_like_a_config_file() {
        let rules = validate(Path::new("web.toml"), GOOD).unwrap();
        assert_eq!(rules.len(), 1);
        let bad = "[[rule]]\nname = \"x\"\npath = \"relative/path\"\n";
        let errors = validate(Path::new("web.toml"), bad)
            .unwrap_err()
            .to_string();
        assert!(errors.starts_with("web.toml:3:8: "), "{errors}");
        let settings = "state_dir = \"/tmp\"\n";
        let errors = validate(Path::new("web.toml"), settings)
            .unwrap_err()
            .to_string();
        assert!(
            errors.starts_with("web.toml:1:1: ") && errors.contains("only [[rule]]"),
            "{errors}"
        );
        let syntax = "[[rule]\n";
        let errors = validate(Path::new("web.toml"), syntax)
            .unwrap_err()
            .to_string();
        assert!(errors.starts_with("web.toml:1:"), "{errors}");
    }

    #[test]
    fn central_rules_follow_the_local_ones_and_may_not_reuse_their_names() {
        let doc = RuleSetDoc::new("web.toml", GOOD.into(), 1, "me".into());
        let central: BTreeMap<_, _> = [("web".to_string(), (7, doc))].into();
        let builtin = merge(&[], &central).unwrap();
        assert_eq!(builtin.len(), default_rules().len() + 1);
        let local = ConfigSource {
            path: "/etc/fim/fim.toml".into(),
            text: GOOD.replace("/etc/nginx", "/srv"),
        };
        let errors = merge(std::slice::from_ref(&local), &central)
            .unwrap_err()
            .to_string();
        assert!(
            errors.contains("fleet:web@7:2:8") && errors.contains("duplicate rule name"),
            "{errors}"
        );
        let renamed = ConfigSource {
            text: local.text.replace("web-conf", "srv"),
            ..local
        };
        assert_eq!(merge(&[renamed], &central).unwrap().len(), 2);
        assert_ne!(digest(&central), digest(&BTreeMap::new()));
    }
}
