//! Reconciling ETW with snapshot diffs. ETW reports changes as they happen;
//! the periodic (or RegNotifyChangeKeyValue-triggered) snapshot is the safety
//! net. A snapshot diff entry is reported only if no ETW event since the
//! previous snapshot already explained it, so a lost ETW event is still
//! caught, and nothing is reported twice.

use std::collections::HashSet;

use crate::change::{RegistryActivity, RegistryChange};
use crate::snapshot::{RegistrySnapshot, diff};

/// What ETW reported since the last snapshot, by (activity kind, key, value).
#[derive(Debug, Default)]
pub struct Reconciler {
    baseline: Option<RegistrySnapshot>,
    seen: HashSet<(Kind, String, String)>,
}

/// SetValue from ETW and from a diff describe the same fact; so do the
/// other pairs. Kept coarse on purpose: ETW does not carry the digest of
/// large values, so the match is on what changed, not on the new content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Key,
    KeySecurity,
    Value,
}

fn kind(activity: RegistryActivity) -> Kind {
    match activity {
        RegistryActivity::CreateKey | RegistryActivity::DeleteKey | RegistryActivity::RenameKey => {
            Kind::Key
        }
        RegistryActivity::SetKeySecurity => Kind::KeySecurity,
        RegistryActivity::SetValue | RegistryActivity::DeleteValue => Kind::Value,
    }
}

fn identity(change: &RegistryChange) -> (Kind, String, String) {
    (
        kind(change.activity),
        change.key_path.to_lowercase(),
        change.value_name.clone().unwrap_or_default().to_lowercase(),
    )
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn has_baseline(&self) -> bool {
        self.baseline.is_some()
    }

    /// Remember an ETW-reported change so the next diff does not repeat it.
    pub fn note_etw(&mut self, change: &RegistryChange) {
        self.seen.insert(identity(change));
        if change.activity == RegistryActivity::DeleteKey {
            // A deleted key also loses its values and subkeys: one event
            // explains them all, so remember the whole subtree by prefix.
            self.seen.insert((
                Kind::Key,
                format!("{}\\", change.key_path.to_lowercase()),
                String::new(),
            ));
        }
    }

    fn explained(&self, change: &RegistryChange) -> bool {
        if self.seen.contains(&identity(change)) {
            return true;
        }
        let key = change.key_path.to_lowercase();
        self.seen.iter().any(|(k, prefix, _)| {
            *k == Kind::Key && prefix.ends_with('\\') && key.starts_with(prefix.as_str())
        })
    }

    /// Install a new snapshot; returns the diff entries ETW missed. The
    /// first snapshot is the baseline and reports nothing.
    pub fn apply_snapshot(&mut self, snapshot: RegistrySnapshot) -> Vec<RegistryChange> {
        let missed = match &self.baseline {
            None => Vec::new(),
            Some(before) => diff(before, &snapshot)
                .into_iter()
                .filter(|c| !self.explained(c))
                .collect(),
        };
        self.baseline = Some(snapshot);
        self.seen.clear();
        missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::RegistryValueState;
    use crate::snapshot::KeySnapshot;

    fn snapshot(values: &[(&str, u8)]) -> RegistrySnapshot {
        let mut s = RegistrySnapshot::default();
        s.keys.insert(
            r"HKLM\Run".into(),
            KeySnapshot {
                values: values
                    .iter()
                    .map(|(n, d)| {
                        (
                            n.to_string(),
                            RegistryValueState {
                                value_type: 1,
                                size: 1,
                                blake3: Some(d.to_string()),
                            },
                        )
                    })
                    .collect(),
                subkeys: vec![],
                security_digest: None,
            },
        );
        s
    }

    fn etw_set(name: &str) -> RegistryChange {
        let mut c = RegistryChange::new(RegistryActivity::SetValue, r"HKLM\RUN".into(), 1);
        c.value_name = Some(name.into());
        c
    }

    #[test]
    fn first_snapshot_is_baseline_only() {
        let mut r = Reconciler::new();
        assert!(r.apply_snapshot(snapshot(&[("a", 1)])).is_empty());
        assert!(r.has_baseline());
    }

    #[test]
    fn etw_seen_changes_are_not_repeated_but_lost_ones_are_caught() {
        let mut r = Reconciler::new();
        r.apply_snapshot(snapshot(&[("a", 1)]));
        r.note_etw(&etw_set("A")); // seen live (case differs on purpose)
        let missed = r.apply_snapshot(snapshot(&[("a", 2), ("lost", 3)]));
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].value_name.as_deref(), Some("lost"));
        // The seen-set is per snapshot interval.
        let missed = r.apply_snapshot(snapshot(&[("a", 9), ("lost", 3)]));
        assert_eq!(missed.len(), 1);
        assert_eq!(missed[0].value_name.as_deref(), Some("a"));
    }

    #[test]
    fn deleted_key_explains_its_subtree() {
        let mut r = Reconciler::new();
        let mut before = snapshot(&[("a", 1)]);
        before.keys.insert(
            r"HKLM\Run\Sub".into(),
            KeySnapshot {
                values: Default::default(),
                subkeys: vec![],
                security_digest: None,
            },
        );
        r.apply_snapshot(before);
        r.note_etw(&RegistryChange::new(
            RegistryActivity::DeleteKey,
            r"HKLM\Run".into(),
            1,
        ));
        let missed = r.apply_snapshot(RegistrySnapshot::default());
        assert!(missed.is_empty(), "{missed:?}");
    }
}
