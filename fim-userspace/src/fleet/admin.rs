//! `fim fleet ...`: the central side's administration. `init` creates the streams and the
//! rule bucket; `rules put|history|rollback` and `assign` manage rule sets and which hosts
//! follow them; `credentials` issues a host's nkey and the server permissions that confine
//! it to its own subjects and its own groups' rules.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv, stream};
use futures::StreamExt;
use serde_json::json;

use super::nats::{Feature, ServerVersion};
use super::rules::{self, Assignment, RuleSetDoc};
use super::settings::FleetSettings;
use super::subjects;
use crate::config::ConfigErrors;

/// How `fim fleet init` sets the streams up.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub replicas: usize,
    /// How long rows stay in the events stream (the collector normally takes them at once).
    pub max_age: Duration,
    /// How long the server remembers message ids to drop retries.
    pub duplicate_window: Duration,
    /// S2 compression of the streams (NATS 2.10+).
    pub compression: bool,
}

impl Default for InitOptions {
    fn default() -> InitOptions {
        InitOptions {
            replicas: 3,
            max_age: Duration::from_secs(7 * 86_400),
            duplicate_window: Duration::from_secs(120),
            compression: false,
        }
    }
}

/// An administrative connection.
pub struct Admin {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub version: ServerVersion,
}

impl Admin {
    pub async fn connect(settings: &FleetSettings) -> Result<Admin> {
        let client = super::nats::connect(settings, "fim fleet admin").await?;
        let version = super::nats::server_version(&client).await?;
        super::nats::require_minimum(version)?;
        Ok(Admin {
            js: super::nats::jetstream(client.clone()),
            client,
            version,
        })
    }

    async fn bucket(&self) -> Result<kv::Store> {
        self.js
            .get_key_value(subjects::RULES_BUCKET)
            .await
            .map_err(|e| anyhow!(e))
            .context("opening the rule bucket (run `fim fleet init` first)")
    }

    /// Creates (or updates) the events and status streams and the rule bucket.
    pub async fn init(&self, options: &InitOptions) -> Result<()> {
        if options.compression {
            self.version.require(Feature::Compression)?;
        }
        let compression = options.compression.then_some(stream::Compression::S2);
        let events = stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            subjects: subjects::EVENTS_SUBJECTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            num_replicas: options.replicas,
            max_age: options.max_age,
            duplicate_window: options.duplicate_window,
            storage: stream::StorageType::File,
            allow_direct: true,
            compression: compression.clone(),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(events)
            .await
            .map_err(|e| anyhow!(e))
            .context("creating the events stream")?;
        let status = stream::Config {
            name: subjects::STATUS_STREAM.into(),
            subjects: subjects::STATUS_SUBJECTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            num_replicas: options.replicas,
            max_messages_per_subject: 16,
            max_age: options.max_age,
            storage: stream::StorageType::File,
            allow_direct: true,
            compression: compression.clone(),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(status)
            .await
            .map_err(|e| anyhow!(e))
            .context("creating the status stream")?;
        // The bucket's stream, made the way a key-value bucket is (created directly: the
        // client's bucket creation does not parse 2.9's answer).
        let bucket = stream::Config {
            name: format!("KV_{}", subjects::RULES_BUCKET),
            description: Some("fim: rule sets per host group, host assignments".into()),
            subjects: vec![format!("$KV.{}.>", subjects::RULES_BUCKET)],
            max_messages_per_subject: 64,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: options.replicas,
            storage: stream::StorageType::File,
            compression: compression.clone(),
            ..Default::default()
        };
        self.js
            .create_or_update_stream(bucket)
            .await
            .map_err(|e| anyhow!(e))
            .context("creating the rule bucket")?;
        Ok(())
    }

    /// Validates a rule set file and stores it as the group's next revision.
    pub async fn put_rules(&self, file: &Path, group: &str) -> Result<u64, PutError> {
        subjects::check_token(group, "group").map_err(|m| PutError::Other(anyhow!(m)))?;
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))
            .map_err(PutError::Other)?;
        rules::validate(file, &text).map_err(PutError::Invalid)?;
        let doc = RuleSetDoc::new(
            &file.display().to_string(),
            text,
            super::publisher::now_ns(),
            rules::who_am_i(),
        );
        self.put_doc(group, &doc).await.map_err(PutError::Other)
    }

    /// Stores a document as is (the checks are the caller's: tests force a bad one in).
    pub async fn put_doc(&self, group: &str, doc: &RuleSetDoc) -> Result<u64> {
        let value = serde_json::to_vec(doc)?;
        self.bucket()
            .await?
            .put(subjects::group_key(group), value.into())
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("storing group {group}'s rule set"))
    }

    /// The revisions of a group's rule set, oldest first.
    pub async fn history(&self, group: &str) -> Result<Vec<(u64, Option<RuleSetDoc>)>> {
        let bucket = self.bucket().await?;
        let mut history = bucket
            .history(subjects::group_key(group))
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("reading group {group}'s history"))?;
        let mut out = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry.map_err(|e| anyhow!(e))?;
            let doc = match entry.operation {
                kv::Operation::Put => serde_json::from_slice(&entry.value).ok(),
                _ => None,
            };
            out.push((entry.revision, doc));
        }
        Ok(out)
    }

    /// Puts an earlier revision's rule set again, as the newest revision.
    pub async fn rollback(&self, group: &str, revision: u64) -> Result<u64> {
        let bucket = self.bucket().await?;
        let key = subjects::group_key(group);
        let entry = bucket
            .entry_for_revision(&key, revision)
            .await
            .map_err(|e| anyhow!(e))?
            .ok_or_else(|| anyhow!("group {group} has no revision {revision} (see `fim fleet rules history {group}`)"))?;
        let mut doc: RuleSetDoc = serde_json::from_slice(&entry.value)
            .with_context(|| format!("revision {revision} is not a rule set"))?;
        // It was valid when it was put; check again with this fim's rules.
        rules::validate(&rules::source_name(group, revision), &doc.toml)
            .map_err(|e| anyhow!("revision {revision} no longer passes the checks:\n{e}"))?;
        doc.rollback_of = Some(revision);
        doc.put_at_ns = super::publisher::now_ns();
        doc.put_by = rules::who_am_i();
        self.put_doc(group, &doc).await
    }

    /// Sets the groups a host follows.
    pub async fn assign(&self, host: &str, groups: &[String]) -> Result<u64> {
        subjects::check_token(host, "host").map_err(|m| anyhow!(m))?;
        for group in groups {
            subjects::check_token(group, "group").map_err(|m| anyhow!(m))?;
        }
        let doc = Assignment {
            groups: groups.to_vec(),
            assigned_at_ns: super::publisher::now_ns(),
        };
        self.bucket()
            .await?
            .put(subjects::host_key(host), serde_json::to_vec(&doc)?.into())
            .await
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("assigning host {host}"))
    }
}

/// Why a put failed: the rule set did not pass the checks (exit 78), or something else.
#[derive(Debug)]
pub enum PutError {
    Invalid(ConfigErrors),
    Other(anyhow::Error),
}

/// Prints a group's history.
pub fn print_history(
    group: &str,
    history: &[(u64, Option<RuleSetDoc>)],
    json_out: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let mut table = crate::query::Table::new(&["revision", "time", "by", "digest", "source"]);
    for (revision, doc) in history {
        match doc {
            Some(doc) if json_out => writeln!(
                out,
                "{}",
                json!({"group": group, "revision": revision, "time": crate::query::format_ns(doc.put_at_ns),
                       "by": doc.put_by, "digest": doc.digest, "source": doc.source,
                       "rollback_of": doc.rollback_of})
            )?,
            None if json_out => writeln!(
                out,
                "{}",
                json!({"group": group, "revision": revision, "deleted": true})
            )?,
            Some(doc) => table.row(vec![
                revision.to_string(),
                crate::query::format_ns(doc.put_at_ns),
                doc.put_by.clone(),
                doc.digest[..16.min(doc.digest.len())].to_string(),
                match doc.rollback_of {
                    Some(r) => format!("{} (rollback to {r})", doc.source),
                    None => doc.source.clone(),
                },
            ]),
            None => table.row(vec![
                revision.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "(deleted)".into(),
            ]),
        }
    }
    if !json_out {
        if table.is_empty() {
            writeln!(out, "group {group} has no rule set")?;
        } else {
            table.print(&mut out)?;
        }
    }
    Ok(())
}

/// Who a set of credentials is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// One host: its own subjects, its own groups' rules.
    Host { host: String, groups: Vec<String> },
    /// The collector: consumes the streams.
    Collector,
    /// Administration: everything (`fim fleet init`, rules, assignments).
    Admin,
}

/// The subject permissions of a role, as a nats-server `permissions` block (JSON, which
/// the server's configuration syntax accepts).
pub fn permissions(role: &Role) -> serde_json::Value {
    match role {
        Role::Host { host, groups } => {
            let bucket = format!("KV_{}", subjects::RULES_BUCKET);
            let mut publish = vec![
                subjects::change(host),
                subjects::health(host),
                subjects::heartbeat(host),
                subjects::applied(host),
                format!(
                    "$JS.API.DIRECT.GET.{}.{}",
                    subjects::EVENTS_STREAM,
                    subjects::change(host)
                ),
                format!(
                    "$JS.API.DIRECT.GET.{}.{}",
                    subjects::EVENTS_STREAM,
                    subjects::health(host)
                ),
                format!(
                    "$JS.API.DIRECT.GET.{bucket}.{}",
                    subjects::bucket_subject(&subjects::host_key(host))
                ),
            ];
            let mut subscribe = vec![
                format!("{}.>", subjects::inbox_prefix(host)),
                subjects::bucket_subject(&subjects::host_key(host)),
            ];
            for group in groups {
                let key = subjects::bucket_subject(&subjects::group_key(group));
                publish.push(format!("$JS.API.DIRECT.GET.{bucket}.{key}"));
                subscribe.push(key);
            }
            json!({"publish": {"allow": publish}, "subscribe": {"allow": subscribe}})
        }
        Role::Collector => json!({
            "publish": {"allow": [
                format!("$JS.API.STREAM.INFO.{}", subjects::EVENTS_STREAM),
                format!("$JS.API.STREAM.INFO.{}", subjects::STATUS_STREAM),
                format!("$JS.API.CONSUMER.>"),
                "$JS.ACK.>",
            ]},
            "subscribe": {"allow": [format!("{}.>", subjects::inbox_prefix("collector"))]},
        }),
        Role::Admin => json!({
            "publish": {"allow": [">"]},
            "subscribe": {"allow": [">"]},
        }),
    }
}

/// A new nkey for `role`: the seed (secret, for the host) and the server's user entry.
pub fn issue(role: &Role) -> Result<(String, serde_json::Value)> {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair
        .seed()
        .map_err(|e| anyhow!("making an nkey seed: {e}"))?;
    let user = json!({"nkey": pair.public_key(), "permissions": permissions(role)});
    Ok((seed, user))
}

/// Writes a seed file readable by root only.
pub fn write_seed(path: &Path, seed: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(format!("{seed}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Checks the role's inputs.
pub fn check_role(role: &Role) -> Result<()> {
    if let Role::Host { host, groups } = role {
        subjects::check_token(host, "host").map_err(|m| anyhow!(m))?;
        for group in groups {
            subjects::check_token(group, "group").map_err(|m| anyhow!(m))?;
        }
        if host == "collector" || host == "admin" {
            bail!("{host:?} is reserved for the collector's and the administrators' inboxes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_may_publish_only_as_itself_and_read_only_its_groups() {
        let p = permissions(&Role::Host {
            host: "h1".into(),
            groups: vec!["web".into()],
        });
        let publish: Vec<&str> = p["publish"]["allow"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(publish.contains(&"fim.v1.change.h1"));
        assert!(
            publish.iter().all(|s| !s.contains('*') && !s.contains('>')),
            "{publish:?}"
        );
        assert!(
            publish
                .iter()
                .all(|s| s.contains("h1") || s.contains("group.web")),
            "{publish:?}"
        );
        let subscribe = p["subscribe"]["allow"].to_string();
        assert!(subscribe.contains("_INBOX_h1.>") && subscribe.contains("group.web"));
        assert!(!subscribe.contains("_INBOX.>"));
        let (seed, user) = issue(&Role::Collector).unwrap();
        assert!(seed.starts_with("SU"));
        assert!(user["nkey"].as_str().unwrap().starts_with('U'));
        assert!(
            check_role(&Role::Host {
                host: "a.b".into(),
                groups: vec![]
            })
            .is_err()
        );
    }
}
