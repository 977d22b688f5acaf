//! The registry baseline: what the watched keys look like (value names,
//! types, sizes, BLAKE3 of data, subkeys, security descriptor digest), and
//! the diff between two snapshots expressed as registry changes.

use std::collections::{BTreeMap, VecDeque};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::change::{RegistryActivity, RegistryChange, RegistryValueState};
use crate::glob::{glob_match, has_glob};

/// What a snapshot needs from a registry: the Windows reader
/// (`windows::registry::WinRegistry`) and, in tests, an in-memory fake.
pub trait RegistryReader {
    /// One key's values, subkey names and security digest; Ok(None) when
    /// the key does not exist (or vanished while being read).
    fn read_key(&self, path: &str) -> Result<Option<KeySnapshot>>;

    /// Direct subkey names; Ok(None) when the key does not exist.
    fn subkeys(&self, path: &str) -> Result<Option<Vec<String>>> {
        Ok(self.read_key(path)?.map(|k| k.subkeys))
    }
}

/// Turn snapshot roots whose key path has `*`, `?` or `**` segments into
/// the concrete keys that exist now, by enumerating subkeys segment by
/// segment (`*`/`?` match one key name, `**` any depth including none).
/// At most `max_keys` keys are enumerated; the bool is true when that bound
/// cut the expansion short. Roots without globs are returned unchanged
/// (whether they exist or not); duplicate keys merge their recursion flag.
pub fn expand_roots(
    reader: &dyn RegistryReader,
    roots: &[(String, bool)],
    max_keys: usize,
) -> Result<(Vec<(String, bool)>, bool)> {
    let mut out: BTreeMap<String, (String, bool)> = BTreeMap::new();
    let mut budget = max_keys;
    let mut truncated = false;
    for (pattern, recursive) in roots {
        let keys = if has_glob(pattern) {
            let (keys, cut) = expand_pattern(reader, pattern, &mut budget)?;
            truncated |= cut;
            keys
        } else {
            vec![pattern.clone()]
        };
        for key in keys {
            let entry = out.entry(key.to_lowercase()).or_insert((key, false));
            entry.1 |= *recursive;
        }
    }
    Ok((out.into_values().collect(), truncated))
}

fn expand_pattern(
    reader: &dyn RegistryReader,
    pattern: &str,
    budget: &mut usize,
) -> Result<(Vec<String>, bool)> {
    let mut segments = pattern.split('\\');
    let mut current: Vec<String> = segments.next().map(str::to_string).into_iter().collect();
    for segment in segments {
        let mut next = Vec::new();
        for key in &current {
            if !has_glob(segment) {
                next.push(format!("{key}\\{segment}"));
                continue;
            }
            if segment == "**" {
                // The key itself and every key below it.
                let mut queue = VecDeque::from([key.clone()]);
                while let Some(k) = queue.pop_front() {
                    if *budget == 0 {
                        // Partial keys are at the wrong depth: none at all.
                        return Ok((Vec::new(), true));
                    }
                    *budget -= 1;
                    for sub in reader.subkeys(&k)?.unwrap_or_default() {
                        queue.push_back(format!("{k}\\{sub}"));
                    }
                    next.push(k);
                }
                continue;
            }
            if *budget == 0 {
                return Ok((Vec::new(), true));
            }
            *budget -= 1;
            for sub in reader.subkeys(key)?.unwrap_or_default() {
                if glob_match(segment, &sub) {
                    next.push(format!("{key}\\{sub}"));
                }
            }
        }
        current = dedup(next);
    }
    // Literal segments after a glob were appended unchecked: keep the keys
    // that exist.
    let mut existing = Vec::new();
    for key in current {
        if *budget == 0 {
            return Ok((existing, true));
        }
        *budget -= 1;
        if reader.subkeys(&key)?.is_some() {
            existing.push(key);
        }
    }
    Ok((existing, false))
}

fn dedup(mut keys: Vec<String>) -> Vec<String> {
    keys.sort_by_key(|k| k.to_lowercase());
    keys.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    keys
}

/// Snapshot the given roots (key path or key pattern, recursive), reading
/// at most `max_keys` keys. Missing roots are simply absent (their creation
/// shows up in a later diff); a bound hit marks the snapshot truncated.
pub fn take_snapshot(
    reader: &dyn RegistryReader,
    roots: &[(String, bool)],
    max_keys: usize,
    taken_ms: u64,
) -> Result<RegistrySnapshot> {
    let (concrete, expansion_cut) = expand_roots(reader, roots, max_keys)?;
    let mut snapshot = RegistrySnapshot {
        taken_ms,
        truncated: expansion_cut,
        ..Default::default()
    };
    let mut queue: VecDeque<(String, bool)> = concrete.into_iter().collect();
    while let Some((path, recursive)) = queue.pop_front() {
        if snapshot.keys.len() >= max_keys {
            snapshot.truncated = true;
            break;
        }
        let Some(entry) = reader.read_key(&path)? else {
            continue;
        };
        if recursive {
            for sub in &entry.subkeys {
                queue.push_back((format!("{path}\\{sub}"), true));
            }
        }
        snapshot.keys.insert(path, entry);
    }
    Ok(snapshot)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySnapshot {
    /// Value name ("" is the default value) -> state.
    pub values: BTreeMap<String, RegistryValueState>,
    /// Direct subkey names (also present as their own entries when the
    /// watch is recursive).
    pub subkeys: Vec<String>,
    /// BLAKE3 of the self-relative security descriptor (owner, group, DACL).
    pub security_digest: Option<String>,
}

/// Keys by canonical path (HKLM\..., HKU\...), compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    pub taken_ms: u64,
    pub keys: BTreeMap<String, KeySnapshot>,
    /// True when the reader stopped at the key limit: deletions beyond the
    /// limit cannot be inferred, so diff ignores missing keys then.
    pub truncated: bool,
}

impl RegistrySnapshot {
    fn by_lower(&self) -> BTreeMap<String, (&String, &KeySnapshot)> {
        self.keys
            .iter()
            .map(|(k, v)| (k.to_lowercase(), (k, v)))
            .collect()
    }
}

/// Changes that turn `before` into `after`. Deterministic order: by key,
/// then key-level change before value changes, values by name.
pub fn diff(before: &RegistrySnapshot, after: &RegistrySnapshot) -> Vec<RegistryChange> {
    let old = before.by_lower();
    let new = after.by_lower();
    let time = after.taken_ms;
    let mut out = Vec::new();
    let mut all_keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    all_keys.sort();
    all_keys.dedup();
    for lower in all_keys {
        match (old.get(lower), new.get(lower)) {
            (None, Some((path, key))) => {
                out.push(RegistryChange::new(
                    RegistryActivity::CreateKey,
                    (*path).clone(),
                    time,
                ));
                for (name, value) in &key.values {
                    let mut c =
                        RegistryChange::new(RegistryActivity::SetValue, (*path).clone(), time);
                    c.value_name = Some(name.clone());
                    c.value = Some(value.clone());
                    out.push(c);
                }
            }
            (Some((path, _)), None) => {
                if !after.truncated {
                    out.push(RegistryChange::new(
                        RegistryActivity::DeleteKey,
                        (*path).clone(),
                        time,
                    ));
                }
            }
            (Some((_, old_key)), Some((path, new_key))) => {
                if old_key.security_digest != new_key.security_digest {
                    let mut c = RegistryChange::new(
                        RegistryActivity::SetKeySecurity,
                        (*path).clone(),
                        time,
                    );
                    c.security_digest = new_key.security_digest.clone();
                    c.previous_security_digest = old_key.security_digest.clone();
                    out.push(c);
                }
                diff_subkeys(path, old_key, new_key, &old, &new, time, &mut out);
                diff_values(path, old_key, new_key, time, &mut out);
            }
            (None, None) => {}
        }
    }
    if after.truncated {
        return out;
    }
    infer_renames(&old, &new, out)
}

fn parent(lower: &str) -> &str {
    lower.rsplit_once('\\').map_or("", |(p, _)| p)
}

/// BLAKE3 over a key's subtree as the snapshot holds it: every key at or
/// below `root`, by path relative to it, with its values, subkey names and
/// security digest. Two keys with the same digest look the same apart from
/// their own name.
fn subtree_digest(root: &str, keys: &BTreeMap<String, (&String, &KeySnapshot)>) -> String {
    let below = format!("{root}\\");
    let mut hasher = blake3::Hasher::new();
    for (lower, (_, key)) in keys
        .range(root.to_string()..)
        .take_while(|(k, _)| *k == root || k.starts_with(&below))
    {
        let rel = &lower[root.len()..];
        let mut subkeys: Vec<String> = key.subkeys.iter().map(|s| s.to_lowercase()).collect();
        subkeys.sort();
        let entry = serde_json::json!([rel, key.values, subkeys, key.security_digest]);
        hasher.update(entry.to_string().as_bytes());
        hasher.update(b"\n");
    }
    hasher.finalize().to_hex().to_string()
}

/// Kernel-Registry has no rename event, so a renamed key shows up in a
/// diff as a vanished key and a new sibling. Where exactly one vanished key
/// and exactly one appeared key under the same parent have the same
/// subtree digest, report one RenameKey (at the new path, with the old
/// path) instead of the deletes and creates of both subtrees.
fn infer_renames(
    old: &BTreeMap<String, (&String, &KeySnapshot)>,
    new: &BTreeMap<String, (&String, &KeySnapshot)>,
    changes: Vec<RegistryChange>,
) -> Vec<RegistryChange> {
    // Topmost vanished / appeared keys (a subtree moves with its root).
    let top = |from: &BTreeMap<String, (&String, &KeySnapshot)>,
               other: &BTreeMap<String, (&String, &KeySnapshot)>|
     -> Vec<String> {
        from.keys()
            .filter(|k| !other.contains_key(*k))
            .filter(|k| {
                // Keep k unless its parent vanished (appeared) too.
                let p = parent(k);
                !from.contains_key(p) || other.contains_key(p)
            })
            .cloned()
            .collect()
    };
    let vanished = top(old, new);
    let appeared = top(new, old);
    let mut candidates: BTreeMap<(String, String), (Vec<String>, Vec<String>)> = BTreeMap::new();
    for k in &vanished {
        let slot = candidates
            .entry((parent(k).to_string(), subtree_digest(k, old)))
            .or_default();
        slot.0.push(k.clone());
    }
    for k in &appeared {
        if let Some(slot) = candidates.get_mut(&(parent(k).to_string(), subtree_digest(k, new))) {
            slot.1.push(k.clone());
        }
    }
    // new lower path -> old lower path, unambiguous pairs only.
    let renames: BTreeMap<String, String> = candidates
        .into_values()
        .filter(|(v, a)| v.len() == 1 && a.len() == 1)
        .map(|(v, a)| (a[0].clone(), v[0].clone()))
        .collect();
    if renames.is_empty() {
        return changes;
    }
    fn within<'a>(path: &str, mut roots: impl Iterator<Item = &'a String>) -> bool {
        let lower = path.to_lowercase();
        roots.any(|r| lower == *r || lower.starts_with(&format!("{r}\\")))
    }
    let mut out = Vec::with_capacity(changes.len());
    for change in changes {
        let lower = change.key_path.to_lowercase();
        if change.activity == RegistryActivity::CreateKey
            && let Some(old_lower) = renames.get(&lower)
        {
            let mut rename = change.clone();
            rename.activity = RegistryActivity::RenameKey;
            rename.previous_key_path = old.get(old_lower).map(|(p, _)| (*p).clone());
            out.push(rename);
            continue;
        }
        let moved_in = within(&change.key_path, renames.keys())
            && matches!(
                change.activity,
                RegistryActivity::CreateKey | RegistryActivity::SetValue
            );
        let moved_out = within(&change.key_path, renames.values())
            && change.activity == RegistryActivity::DeleteKey;
        if !(moved_in || moved_out) {
            out.push(change);
        }
    }
    out
}

/// Subkey list changes of keys watched without recursion (recursive
/// watches see the subkey as its own entry, reported by the key pass).
fn diff_subkeys(
    path: &str,
    old: &KeySnapshot,
    new: &KeySnapshot,
    old_keys: &BTreeMap<String, (&String, &KeySnapshot)>,
    new_keys: &BTreeMap<String, (&String, &KeySnapshot)>,
    time: u64,
    out: &mut Vec<RegistryChange>,
) {
    let names = |k: &KeySnapshot| -> BTreeMap<String, String> {
        k.subkeys
            .iter()
            .map(|s| (s.to_lowercase(), s.clone()))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    let tracked = |child: &str| {
        let lower = format!("{}\\{child}", path.to_lowercase());
        old_keys.contains_key(&lower) || new_keys.contains_key(&lower)
    };
    for (lower, name) in &after {
        if !before.contains_key(lower) && !tracked(lower) {
            out.push(RegistryChange::new(
                RegistryActivity::CreateKey,
                format!("{path}\\{name}"),
                time,
            ));
        }
    }
    for (lower, name) in &before {
        if !after.contains_key(lower) && !tracked(lower) {
            out.push(RegistryChange::new(
                RegistryActivity::DeleteKey,
                format!("{path}\\{name}"),
                time,
            ));
        }
    }
}

fn diff_values(
    path: &str,
    old: &KeySnapshot,
    new: &KeySnapshot,
    time: u64,
    out: &mut Vec<RegistryChange>,
) {
    let lower = |m: &BTreeMap<String, RegistryValueState>| -> BTreeMap<String, (String, RegistryValueState)> {
        m.iter().map(|(k, v)| (k.to_lowercase(), (k.clone(), v.clone()))).collect()
    };
    let old_values = lower(&old.values);
    let new_values = lower(&new.values);
    let mut names: Vec<&String> = old_values.keys().chain(new_values.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (old_values.get(name), new_values.get(name)) {
            (None, Some((n, v))) => {
                let mut c = RegistryChange::new(RegistryActivity::SetValue, path.to_string(), time);
                c.value_name = Some(n.clone());
                c.value = Some(v.clone());
                out.push(c);
            }
            (Some((n, v)), None) => {
                let mut c =
                    RegistryChange::new(RegistryActivity::DeleteValue, path.to_string(), time);
                c.value_name = Some(n.clone());
                c.previous_value = Some(v.clone());
                out.push(c);
            }
            (Some((_, before)), Some((n, after))) if before != after => {
                let mut c = RegistryChange::new(RegistryActivity::SetValue, path.to_string(), time);
                c.value_name = Some(n.clone());
                c.value = Some(after.clone());
                c.previous_value = Some(before.clone());
                out.push(c);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::blake3_hex;

    fn value(t: u32, data: &[u8]) -> RegistryValueState {
        RegistryValueState {
            value_type: t,
            size: data.len() as u64,
            blake3: Some(blake3_hex(data)),
        }
    }

    /// (key path, values, security digest)
    type KeySpec<'a> = (
        &'a str,
        &'a [(&'a str, RegistryValueState)],
        Option<&'a str>,
    );

    fn snap(keys: &[KeySpec]) -> RegistrySnapshot {
        RegistrySnapshot {
            taken_ms: 10,
            keys: keys
                .iter()
                .map(|(k, vals, sd)| {
                    (
                        k.to_string(),
                        KeySnapshot {
                            values: vals
                                .iter()
                                .map(|(n, v)| (n.to_string(), v.clone()))
                                .collect(),
                            subkeys: vec![],
                            security_digest: sd.map(str::to_string),
                        },
                    )
                })
                .collect(),
            truncated: false,
        }
    }

    #[test]
    fn identical_snapshots_have_no_diff() {
        let a = snap(&[(r"HKLM\A", &[("x", value(1, b"a"))], Some("sd"))]);
        assert!(diff(&a, &a.clone()).is_empty());
    }

    #[test]
    fn detects_value_set_modify_delete_and_type_change() {
        let a = snap(&[(
            r"HKLM\A",
            &[
                ("keep", value(1, b"a")),
                ("mod", value(4, b"1")),
                ("gone", value(1, b"g")),
                ("ty", value(1, b"z")),
            ],
            None,
        )]);
        let b = snap(&[(
            r"HKLM\A",
            &[
                ("keep", value(1, b"a")),
                ("mod", value(4, b"2")),
                ("new", value(3, b"n")),
                ("ty", value(2, b"z")),
            ],
            None,
        )]);
        let changes = diff(&a, &b);
        let summary: Vec<(RegistryActivity, &str)> = changes
            .iter()
            .map(|c| (c.activity, c.value_name.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            summary,
            vec![
                (RegistryActivity::DeleteValue, "gone"),
                (RegistryActivity::SetValue, "mod"),
                (RegistryActivity::SetValue, "new"),
                (RegistryActivity::SetValue, "ty"),
            ]
        );
        assert_eq!(changes[1].previous_value, Some(value(4, b"1")));
        assert_eq!(changes[3].value.as_ref().unwrap().value_type, 2);
    }

    #[test]
    fn detects_key_create_delete_and_security_change_case_insensitively() {
        let a = snap(&[(r"HKLM\A", &[], Some("sd1")), (r"HKLM\A\Old", &[], None)]);
        let b = snap(&[
            (r"hklm\a", &[], Some("sd2")),
            (r"HKLM\A\New", &[("v", value(1, b"x"))], None),
        ]);
        let changes = diff(&a, &b);
        let summary: Vec<(RegistryActivity, &str)> = changes
            .iter()
            .map(|c| (c.activity, c.key_path.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (RegistryActivity::SetKeySecurity, r"hklm\a"),
                (RegistryActivity::CreateKey, r"HKLM\A\New"),
                (RegistryActivity::SetValue, r"HKLM\A\New"),
                (RegistryActivity::DeleteKey, r"HKLM\A\Old"),
            ]
        );
        assert_eq!(changes[0].previous_security_digest.as_deref(), Some("sd1"));
    }

    #[test]
    fn subkey_list_changes_of_non_recursive_keys_are_reported_once() {
        let mut a = snap(&[(r"HKLM\A", &[], None)]);
        let mut b = a.clone();
        a.keys.get_mut(r"HKLM\A").unwrap().subkeys = vec!["Old".into()];
        b.keys.get_mut(r"HKLM\A").unwrap().subkeys = vec!["New".into()];
        let summary: Vec<(RegistryActivity, String)> = diff(&a, &b)
            .into_iter()
            .map(|c| (c.activity, c.key_path))
            .collect();
        assert_eq!(
            summary,
            vec![
                (RegistryActivity::CreateKey, r"HKLM\A\New".to_string()),
                (RegistryActivity::DeleteKey, r"HKLM\A\Old".to_string())
            ]
        );
        // Recursive: the child is its own entry, so only the key pass reports it.
        b.keys.insert(
            r"HKLM\A\New".into(),
            KeySnapshot {
                values: BTreeMap::new(),
                subkeys: vec![],
                security_digest: None,
            },
        );
        a.keys.get_mut(r"HKLM\A").unwrap().subkeys.clear();
        let creates = diff(&a, &b)
            .into_iter()
            .filter(|c| c.activity == RegistryActivity::CreateKey)
            .count();
        assert_eq!(creates, 1);
    }

    #[test]
    fn truncated_snapshot_does_not_infer_deletions() {
        let a = snap(&[(r"HKLM\A", &[], None), (r"HKLM\B", &[], None)]);
        let mut b = snap(&[(r"HKLM\A", &[], None)]);
        b.truncated = true;
        assert!(diff(&a, &b).is_empty());
    }

    fn with_subkeys(mut s: RegistrySnapshot, key: &str, subkeys: &[&str]) -> RegistrySnapshot {
        s.keys.get_mut(key).unwrap().subkeys = subkeys.iter().map(|k| k.to_string()).collect();
        s
    }

    fn renamed_tree(new_name: &str, inner: &[u8]) -> RegistrySnapshot {
        let a = snap(&[
            (r"HKLM\A", &[], None),
            (
                &format!(r"HKLM\A\{new_name}"),
                &[("v", value(1, b"same"))],
                Some("sd"),
            ),
            (
                &format!(r"HKLM\A\{new_name}\Sub"),
                &[("w", value(4, inner))],
                None,
            ),
        ]);
        let a = with_subkeys(a, r"HKLM\A", &[new_name]);
        with_subkeys(a, &format!(r"HKLM\A\{new_name}"), &["Sub"])
    }

    fn summary_of(changes: &[RegistryChange]) -> Vec<(RegistryActivity, String, Option<String>)> {
        changes
            .iter()
            .map(|c| (c.activity, c.key_path.clone(), c.previous_key_path.clone()))
            .collect()
    }

    #[test]
    fn a_key_replaced_by_an_identical_sibling_is_a_rename() {
        let before = renamed_tree("Old", b"1");
        let after = renamed_tree("New", b"1");
        assert_eq!(
            summary_of(&diff(&before, &after)),
            vec![(
                RegistryActivity::RenameKey,
                r"HKLM\A\New".to_string(),
                Some(r"HKLM\A\Old".to_string())
            )]
        );
    }

    #[test]
    fn different_content_parent_or_ambiguity_is_not_a_rename() {
        // A value below differs: delete + create, as before.
        let changes = diff(&renamed_tree("Old", b"1"), &renamed_tree("New", b"2"));
        assert!(
            changes
                .iter()
                .all(|c| c.activity != RegistryActivity::RenameKey)
        );
        assert_eq!(
            changes
                .iter()
                .filter(|c| c.activity == RegistryActivity::DeleteKey)
                .count(),
            2
        );
        // Same content under another parent: a move, which RegRenameKey
        // cannot do; not inferred.
        let before = snap(&[(r"HKLM\A\Old", &[("v", value(1, b"x"))], None)]);
        let after = snap(&[(r"HKLM\B\Old", &[("v", value(1, b"x"))], None)]);
        assert!(
            diff(&before, &after)
                .iter()
                .all(|c| c.activity != RegistryActivity::RenameKey)
        );
        // Two identical keys vanished, one appeared: which one was renamed
        // is unknown, so nothing is inferred.
        let before = snap(&[(r"HKLM\A\One", &[], None), (r"HKLM\A\Two", &[], None)]);
        let after = snap(&[(r"HKLM\A\New", &[], None)]);
        assert_eq!(
            summary_of(&diff(&before, &after)),
            vec![
                (RegistryActivity::CreateKey, r"HKLM\A\New".to_string(), None),
                (RegistryActivity::DeleteKey, r"HKLM\A\One".to_string(), None),
                (RegistryActivity::DeleteKey, r"HKLM\A\Two".to_string(), None),
            ]
        );
        // A truncated snapshot infers neither deletions nor renames.
        let mut after = renamed_tree("New", b"1");
        after.truncated = true;
        assert!(
            diff(&renamed_tree("Old", b"1"), &after)
                .iter()
                .all(|c| c.activity == RegistryActivity::CreateKey
                    || c.activity == RegistryActivity::SetValue)
        );
    }

    /// An in-memory registry: keys by path, subkey lists derived from them.
    struct FakeRegistry {
        keys: BTreeMap<String, KeySnapshot>,
    }

    impl FakeRegistry {
        fn new(paths: &[&str]) -> Self {
            let mut keys: BTreeMap<String, KeySnapshot> = BTreeMap::new();
            for path in paths {
                let mut prefix = String::new();
                for seg in path.split('\\') {
                    let parent = prefix.clone();
                    prefix = if prefix.is_empty() {
                        seg.to_string()
                    } else {
                        format!("{prefix}\\{seg}")
                    };
                    let fresh = !keys.contains_key(&prefix.to_lowercase());
                    keys.entry(prefix.to_lowercase()).or_insert(KeySnapshot {
                        values: BTreeMap::from([("p".to_string(), value(1, prefix.as_bytes()))]),
                        subkeys: vec![],
                        security_digest: None,
                    });
                    if fresh && !parent.is_empty() {
                        keys.get_mut(&parent.to_lowercase())
                            .unwrap()
                            .subkeys
                            .push(seg.to_string());
                    }
                }
            }
            Self { keys }
        }
    }

    impl RegistryReader for FakeRegistry {
        fn read_key(&self, path: &str) -> Result<Option<KeySnapshot>> {
            Ok(self.keys.get(&path.to_lowercase()).cloned())
        }
    }

    fn registry() -> FakeRegistry {
        FakeRegistry::new(&[
            r"HKU\S-1-5-21-1\Software\Run\Child",
            r"HKU\S-1-5-21-2\Software\Other",
            r"HKU\.DEFAULT\Software\Run",
            r"HKU\S-1-5-18\Software\Run",
            r"HKLM\A\Run",
            r"HKLM\A\x\Run",
            r"HKLM\A\x\y\Run",
            r"HKLM\A\x\y\NotRun",
        ])
    }

    fn keys_of(snapshot: &RegistrySnapshot) -> Vec<&str> {
        snapshot.keys.keys().map(String::as_str).collect()
    }

    #[test]
    fn wildcard_segments_are_expanded_by_enumerating_subkeys() {
        let reg = registry();
        let roots = vec![(r"HKU\S-1-5-21-*\Software\Run".to_string(), false)];
        let snap = take_snapshot(&reg, &roots, 100, 7).unwrap();
        // S-1-5-21-2 has no Run key; .DEFAULT and S-1-5-18 do not match.
        assert_eq!(keys_of(&snap), vec![r"HKU\S-1-5-21-1\Software\Run"]);
        assert!(!snap.truncated);
        let roots = vec![(r"HKU\*\Software\Run".to_string(), true)];
        let snap = take_snapshot(&reg, &roots, 100, 7).unwrap();
        assert_eq!(
            keys_of(&snap),
            vec![
                r"HKU\.DEFAULT\Software\Run",
                r"HKU\S-1-5-18\Software\Run",
                r"HKU\S-1-5-21-1\Software\Run",
                r"HKU\S-1-5-21-1\Software\Run\Child",
            ]
        );
    }

    #[test]
    fn double_star_segments_match_any_depth_including_none() {
        let reg = registry();
        let roots = vec![(r"HKLM\A\**\Run".to_string(), false)];
        let (expanded, cut) = expand_roots(&reg, &roots, 100).unwrap();
        assert!(!cut);
        assert_eq!(
            expanded,
            vec![
                (r"HKLM\A\Run".to_string(), false),
                (r"HKLM\A\x\Run".to_string(), false),
                (r"HKLM\A\x\y\Run".to_string(), false),
            ]
        );
    }

    #[test]
    fn expansion_is_bounded_and_a_cut_snapshot_infers_no_deletions() {
        let reg = registry();
        let roots = vec![(r"HKLM\A\**\Run".to_string(), false)];
        let (_, cut) = expand_roots(&reg, &roots, 2).unwrap();
        assert!(cut);
        let full = take_snapshot(&reg, &roots, 100, 1).unwrap();
        let cut_short = take_snapshot(&reg, &roots, 2, 2).unwrap();
        assert!(cut_short.truncated);
        assert!(cut_short.keys.len() < full.keys.len());
        assert!(
            diff(&full, &cut_short).is_empty(),
            "{:?}",
            diff(&full, &cut_short)
        );
    }

    #[test]
    fn concrete_roots_pass_through_and_duplicates_merge_recursion() {
        let reg = registry();
        let roots = vec![
            (r"HKLM\A\Run".to_string(), false),
            (r"HKLM\*\run".to_string(), true),
            (r"HKLM\Missing".to_string(), false),
        ];
        let (expanded, _) = expand_roots(&reg, &roots, 100).unwrap();
        assert_eq!(
            expanded,
            vec![
                (r"HKLM\A\Run".to_string(), true),
                (r"HKLM\Missing".to_string(), false),
            ]
        );
    }
}
