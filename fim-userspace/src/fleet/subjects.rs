//! Names on the wire: subjects, streams, the rule bucket and its keys, message ids. One
//! place, because the permissions issued to every host (see `credentials`) are written in
//! the same terms.

/// Change rows of one host: `fim.v1.change.<host>`.
pub fn change(host: &str) -> String {
    format!("fim.v1.change.{host}")
}

/// Health rows (start, stop, loss, rescan, integrity, gaps) of one host.
pub fn health(host: &str) -> String {
    format!("fim.v1.health.{host}")
}

/// Heartbeats of one host.
pub fn heartbeat(host: &str) -> String {
    format!("fim.v1.heartbeat.{host}")
}

/// What one host applied of the central rules (revision, digest or error).
pub fn applied(host: &str) -> String {
    format!("fim.v1.applied.{host}")
}

/// The stream of change and health rows (replicated, de-duplicating, the collector's source).
pub const EVENTS_STREAM: &str = "FIM_EVENTS";
pub const EVENTS_SUBJECTS: [&str; 2] = ["fim.v1.change.*", "fim.v1.health.*"];
/// The stream of heartbeats and applied-rule reports (a few kept per host).
pub const STATUS_STREAM: &str = "FIM_STATUS";
pub const STATUS_SUBJECTS: [&str; 2] = ["fim.v1.heartbeat.*", "fim.v1.applied.*"];
/// The key-value bucket of rule sets and host assignments.
pub const RULES_BUCKET: &str = "fim-rules";
/// The collector's durable consumers.
pub const COLLECTOR_EVENTS: &str = "fim-collector";
pub const COLLECTOR_STATUS: &str = "fim-collector-status";

/// The key of a group's rule set.
pub fn group_key(group: &str) -> String {
    format!("group.{group}")
}

/// The key of a host's group assignment.
pub fn host_key(host: &str) -> String {
    format!("host.{host}")
}

/// The subject a bucket key is stored under (what a watcher subscribes to).
pub fn bucket_subject(key: &str) -> String {
    format!("$KV.{RULES_BUCKET}.{key}")
}

/// The inbox prefix of one host's connection: replies to it (acks, direct gets) arrive
/// below it, and its permissions let it read nothing else.
pub fn inbox_prefix(host: &str) -> String {
    format!("_INBOX_{host}")
}

/// What a row's message id says: host, store, kind and row id. The server drops a second
/// message with the same id inside its duplicate window; the collector's unique key is the
/// same triple.
pub fn message_id(host: &str, store: &str, kind: RowKind, id: i64) -> String {
    format!("{host}:{store}:{}:{id}", kind.letter())
}

/// The two kinds of outbox rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    Change,
    Health,
}

impl RowKind {
    pub fn letter(self) -> &'static str {
        match self {
            RowKind::Change => "c",
            RowKind::Health => "h",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RowKind::Change => "change",
            RowKind::Health => "health",
        }
    }

    pub fn subject(self, host: &str) -> String {
        match self {
            RowKind::Change => change(host),
            RowKind::Health => health(host),
        }
    }
}

/// Headers every outbox message carries (the collector and a restarting agent read them).
pub const HEADER_STORE: &str = "Fim-Store";
pub const HEADER_ID: &str = "Fim-Id";
pub const HEADER_HOST: &str = "Fim-Host";

/// A host id or group name must be one subject token: letters, digits, `-` and `_`, at most
/// 64 characters (no `.`, `*`, `>` or spaces, which would change what a subject or a
/// permission matches).
pub fn check_token(value: &str, what: &str) -> Result<(), String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} must be 1 to 64 letters, digits, '-' or '_' (it becomes a NATS \
             subject token)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_that_would_widen_a_subject_are_refused() {
        assert!(check_token("web-1_a", "host").is_ok());
        for bad in ["", "a.b", "*", ">", "a b", "ä", &"x".repeat(65)] {
            assert!(check_token(bad, "host").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn message_ids_name_host_store_kind_and_row() {
        assert_eq!(
            message_id("h1", "s", RowKind::Health, 7),
            "h1:s:h:7".to_string()
        );
        assert_eq!(RowKind::Change.subject("h1"), "fim.v1.change.h1");
    }
}
