//! Rules: which paths are watched, under which name and group, and which rule a path falls under.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::pattern::{IgnorePattern, PathPattern, PrefixRelation};

/// Whether a rule names files or folders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathType {
    /// The rule's path matches the watched entries themselves.
    File,
    /// The rule's path matches folders; their entries (all descendants when `recursive`) are
    /// watched, and so is the folder itself.
    Folder,
}

impl PathType {
    pub fn parse(text: &str) -> Option<PathType> {
        match text {
            "file" => Some(PathType::File),
            "folder" => Some(PathType::Folder),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PathType::File => "file",
            PathType::Folder => "folder",
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub group: String,
    pub path: PathPattern,
    pub path_type: PathType,
    pub recursive: bool,
    pub enabled: bool,
    pub upload_content: bool,
    pub ignore: Vec<IgnorePattern>,
}

/// Where a rule applies to a path: the depth (in components) of the path or ancestor that
/// matched the rule's pattern.
struct RuleHit {
    base_depth: usize,
}

impl Rule {
    /// Where this rule covers the path, if it does (ignores not considered).
    fn hit(&self, path: &[u8], ends: &[usize]) -> Option<RuleHit> {
        let depth = ends.len();
        if depth < self.path.literal_components() {
            return None;
        }
        // Cheap pre-check: the literal prefix must be a prefix of the path.
        let literal = self.path.literal_prefix().as_os_str().as_bytes();
        let prefix_end = if self.path.literal_components() == 0 {
            1
        } else {
            ends[self.path.literal_components() - 1]
        };
        if &path[..prefix_end] != literal {
            return None;
        }
        match self.path_type {
            PathType::File => self
                .path
                .matches(path)
                .then_some(RuleHit { base_depth: depth }),
            PathType::Folder => {
                let levels_up = if self.recursive { depth } else { depth.min(1) };
                (0..=levels_up).find_map(|up| {
                    let base_depth = depth - up;
                    let prefix = if base_depth == 0 {
                        &path[..1]
                    } else {
                        &path[..ends[base_depth - 1]]
                    };
                    self.path.matches(prefix).then_some(RuleHit { base_depth })
                })
            }
        }
    }

    /// Ignore patterns apply to the path and its ancestors below the rule's literal prefix, so
    /// ignoring a directory ignores everything in it.
    fn ignores(&self, path: &[u8], ends: &[usize]) -> bool {
        if self.ignore.is_empty() {
            return false;
        }
        let first = self.path.literal_components() + 1;
        (first..=ends.len()).any(|depth| {
            let prefix = &path[..ends[depth - 1]];
            let name_start = if depth == 1 { 1 } else { ends[depth - 2] + 1 };
            let name = &path[name_start..ends[depth - 1]];
            self.ignore.iter().any(|p| p.matches(prefix, name))
        })
    }

    /// Whether something strictly below the directory (given by its components) could match.
    fn may_match_below(&self, components: &[&[u8]]) -> bool {
        match self.path.relation(components) {
            PrefixRelation::Disjoint => false,
            PrefixRelation::Partial | PrefixRelation::AnyDepth => true,
            PrefixRelation::Below { extra } => match self.path_type {
                PathType::File => false,
                PathType::Folder => self.recursive || extra == 0,
            },
        }
    }

    /// Ordering key: deeper match first, then file rules over folders, then longer literal.
    fn specificity(&self, hit: &RuleHit) -> (usize, bool, usize) {
        (
            hit.base_depth,
            self.path_type == PathType::File,
            self.path.literal_prefix().as_os_str().len(),
        )
    }
}

/// A directory or file the sensor and the scanner start from, and how deep below it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchRoot {
    pub path: PathBuf,
    /// Levels below `path` that rules can match (0: the path itself); `None`: unbounded.
    pub max_depth: Option<usize>,
}

impl WatchRoot {
    fn covers(&self, other: &WatchRoot) -> bool {
        let Ok(rest) = other.path.strip_prefix(&self.path) else {
            return false;
        };
        let distance = rest.components().count();
        match (self.max_depth, other.max_depth) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => distance + theirs <= mine,
        }
    }
}

/// The ordered set of rules of a configuration.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

/// End offsets (exclusive) of each component of a normalised absolute path.
fn component_ends(path: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    for (i, &b) in path.iter().enumerate().skip(1) {
        if b == b'/' {
            ends.push(i);
        }
    }
    if path.len() > 1 {
        ends.push(path.len());
    }
    ends
}

/// Drops trailing and repeated slashes so `//etc//passwd/` is treated as `/etc/passwd`.
fn normalise(path: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if path.first() != Some(&b'/') {
        return None;
    }
    let clean = !path.windows(2).any(|w| w == b"//") && (path.len() == 1 || !path.ends_with(b"/"));
    if clean {
        return Some(std::borrow::Cow::Borrowed(path));
    }
    let mut out = Vec::with_capacity(path.len());
    for part in path.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Some(std::borrow::Cow::Owned(out))
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        RuleSet { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn enabled(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.enabled)
    }

    /// The enabled rule an absolute path falls under: the most specific one (deepest matching
    /// path, then file over folder rules, then longest literal prefix, then first defined).
    /// `None` when no rule covers the path, when that rule ignores it, or for a relative path.
    pub fn match_path(&self, path: impl AsRef<OsStr>) -> Option<&Rule> {
        self.match_bytes(path.as_ref().as_bytes())
    }

    /// [`RuleSet::match_path`] on raw bytes (paths from the kernel are not UTF-8).
    pub fn match_bytes(&self, path: &[u8]) -> Option<&Rule> {
        let path = normalise(path)?;
        let ends = component_ends(&path);
        let mut best: Option<(&Rule, (usize, bool, usize))> = None;
        for rule in self.enabled() {
            let Some(hit) = rule.hit(&path, &ends) else {
                continue;
            };
            let key = rule.specificity(&hit);
            if best.as_ref().is_none_or(|(_, best_key)| key > *best_key) {
                best = Some((rule, key));
            }
        }
        let (rule, _) = best?;
        (!rule.ignores(&path, &ends)).then_some(rule)
    }

    /// Whether a walk must descend into this directory: some enabled rule could match
    /// something below it and does not ignore the directory as a whole.
    pub fn should_descend(&self, dir: impl AsRef<OsStr>) -> bool {
        let Some(dir) = normalise(dir.as_ref().as_bytes()) else {
            return false;
        };
        let ends = component_ends(&dir);
        let mut start = 1;
        let components: Vec<&[u8]> = ends
            .iter()
            .map(|&end| {
                let c = &dir[start..end];
                start = end + 1;
                c
            })
            .collect();
        self.enabled()
            .any(|rule| rule.may_match_below(&components) && !rule.ignores(&dir, &ends))
    }

    /// The roots the sensor must watch and the scanner must walk, without roots another root
    /// already covers.
    pub fn watch_roots(&self) -> Vec<WatchRoot> {
        let mut roots: Vec<WatchRoot> = self
            .enabled()
            .map(|rule| {
                let below_prefix = rule.path.component_count() - rule.path.literal_components();
                let max_depth = if rule.path.has_any_depth()
                    || (rule.path_type == PathType::Folder && rule.recursive)
                {
                    None
                } else if rule.path_type == PathType::Folder {
                    Some(below_prefix + 1)
                } else {
                    Some(below_prefix)
                };
                WatchRoot {
                    path: rule.path.literal_prefix().to_path_buf(),
                    max_depth,
                }
            })
            .collect();
        // Broadest first, so a covering root is kept before what it covers.
        roots.sort_by(|a, b| {
            a.path
                .components()
                .count()
                .cmp(&b.path.components().count())
                .then(b.max_depth.is_none().cmp(&a.max_depth.is_none()))
                .then(b.max_depth.cmp(&a.max_depth))
                .then(a.path.cmp(&b.path))
        });
        let mut kept: Vec<WatchRoot> = Vec::new();
        for root in roots {
            if !kept.iter().any(|k| k.covers(&root)) {
                kept.push(root);
            }
        }
        kept.sort_by(|a, b| a.path.cmp(&b.path));
        kept
    }
}
