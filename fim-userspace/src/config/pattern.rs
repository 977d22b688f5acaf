//! Absolute path patterns (globs) and ignore patterns, matched against raw path bytes.
//!
//! Paths on Linux are bytes, not text: a file name may hold invalid UTF-8 or a newline, and an
//! attacker choosing such a name must not slip past a rule. globset parses the glob syntax; its
//! regex is recompiled here with `(?s)` because globset's `**` (`.*`) would otherwise stop at a
//! newline byte.

use std::path::PathBuf;

use globset::GlobBuilder;
use regex::bytes::Regex;

/// One glob compiled to a byte regex that matches across newlines and invalid UTF-8.
#[derive(Debug, Clone)]
struct ByteGlob(Regex);

impl ByteGlob {
    fn new(glob: &str) -> Result<ByteGlob, String> {
        let parsed = GlobBuilder::new(glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("invalid glob {glob:?}: {}", glob_error_kind(&e)))?;
        // globset's regex starts with (?-u) (byte semantics); (?s) makes `.` match '\n' too.
        let regex = Regex::new(&format!("(?s){}", parsed.regex()))
            .map_err(|e| format!("invalid glob {glob:?}: {e}"))?;
        Ok(ByteGlob(regex))
    }

    fn is_match(&self, bytes: &[u8]) -> bool {
        self.0.is_match(bytes)
    }
}

fn glob_error_kind(e: &globset::Error) -> String {
    // globset's Display repeats the glob; the kind alone reads better after ours.
    e.kind().to_string()
}

fn has_glob_syntax(component: &str) -> bool {
    component.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// One `/`-separated component of a path pattern.
#[derive(Debug, Clone)]
enum ComponentPattern {
    Literal(Vec<u8>),
    Glob(ByteGlob),
    /// `**`: any number of components, so nothing below it can be ruled out by walking.
    AnyDepth,
}

/// How a directory relates to a pattern, judged component by component (used to prune walks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixRelation {
    /// Some component differs: nothing at or below the directory can match.
    Disjoint,
    /// The directory is a proper prefix of what the pattern could match.
    Partial,
    /// The pattern has a `**` at or above the directory: anything below may match.
    AnyDepth,
    /// The directory's first `component_count()` components match; `extra` are below that.
    Below { extra: usize },
}

/// An absolute path pattern, e.g. `/etc`, `/etc/cron.*`, `/home/*/.ssh/authorized_keys`.
#[derive(Debug, Clone)]
pub struct PathPattern {
    text: String,
    full: ByteGlob,
    components: Vec<ComponentPattern>,
    /// The leading components without glob syntax: where a watch on this pattern starts.
    literal_prefix: PathBuf,
    literal_components: usize,
}

impl PathPattern {
    /// Parses an absolute pattern; `.`/`..` components are refused (the kernel reports
    /// normalised paths, so such a rule could never match), repeated and trailing `/` dropped.
    pub fn new(pattern: &str) -> Result<PathPattern, String> {
        if !pattern.starts_with('/') {
            return Err(format!(
                "path {pattern:?} is not absolute (it must start with '/')"
            ));
        }
        let parts: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
        if let Some(bad) = parts.iter().find(|c| **c == "." || **c == "..") {
            return Err(format!(
                "path {pattern:?} contains a {bad:?} component; write the normalised path"
            ));
        }
        let text = format!("/{}", parts.join("/"));
        let full = ByteGlob::new(&text)?;
        let mut components = Vec::with_capacity(parts.len());
        let mut literal_prefix = PathBuf::from("/");
        let mut literal_components = 0;
        let mut literal_so_far = true;
        for part in &parts {
            let component =
                if *part == "**" {
                    ComponentPattern::AnyDepth
                } else if has_glob_syntax(part) {
                    ComponentPattern::Glob(ByteGlob::new(part).map_err(|e| {
                        format!("{e} (in component {part:?}; a glob may not span '/')")
                    })?)
                } else {
                    ComponentPattern::Literal(part.as_bytes().to_vec())
                };
            if literal_so_far && matches!(component, ComponentPattern::Literal(_)) {
                literal_prefix.push(part);
                literal_components += 1;
            } else {
                literal_so_far = false;
            }
            components.push(component);
        }
        Ok(PathPattern {
            text,
            full,
            components,
            literal_prefix,
            literal_components,
        })
    }

    /// The normalised pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole (normalised, absolute) path matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.full.is_match(path)
    }

    /// The deepest directory (or file) named literally by the pattern.
    pub fn literal_prefix(&self) -> &std::path::Path {
        &self.literal_prefix
    }

    /// The number of components of the literal prefix.
    pub fn literal_components(&self) -> usize {
        self.literal_components
    }

    /// The number of components of the pattern (a `**` counts as one).
    pub fn component_count(&self) -> usize {
        self.components.len()
    }

    /// Whether the pattern contains `**` (its depth is unbounded).
    pub fn has_any_depth(&self) -> bool {
        self.components
            .iter()
            .any(|c| matches!(c, ComponentPattern::AnyDepth))
    }

    /// How the directory with these components relates to the pattern.
    pub fn relation(&self, components: &[&[u8]]) -> PrefixRelation {
        for (pattern, name) in self.components.iter().zip(components) {
            let same = match pattern {
                ComponentPattern::AnyDepth => return PrefixRelation::AnyDepth,
                ComponentPattern::Literal(literal) => literal.as_slice() == *name,
                ComponentPattern::Glob(glob) => glob.is_match(name),
            };
            if !same {
                return PrefixRelation::Disjoint;
            }
        }
        match components.len().checked_sub(self.components.len()) {
            None => {
                // A `**` just below the directory still leaves everything open.
                if matches!(
                    self.components.get(components.len()),
                    Some(ComponentPattern::AnyDepth)
                ) {
                    PrefixRelation::AnyDepth
                } else {
                    PrefixRelation::Partial
                }
            }
            Some(extra) => PrefixRelation::Below { extra },
        }
    }
}

/// A rule's `ignore` entry. Without a `/` it matches a single name (like `*.swp`); with one it
/// must be absolute (or start with `**/`) and matches whole paths.
#[derive(Debug, Clone)]
pub struct IgnorePattern {
    text: String,
    glob: ByteGlob,
    name_only: bool,
}

impl IgnorePattern {
    pub fn new(pattern: &str) -> Result<IgnorePattern, String> {
        if pattern.is_empty() {
            return Err("empty ignore pattern".to_string());
        }
        let name_only = !pattern.contains('/');
        if !name_only && !pattern.starts_with('/') && !pattern.starts_with("**/") {
            return Err(format!(
                "ignore pattern {pattern:?} contains '/' but is not absolute; \
                 use an absolute glob, \"**/{pattern}\", or a bare name pattern"
            ));
        }
        Ok(IgnorePattern {
            text: pattern.to_string(),
            glob: ByteGlob::new(pattern)?,
            name_only,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `path` is the whole path, `name` its last component.
    pub fn matches(&self, path: &[u8], name: &[u8]) -> bool {
        if self.name_only {
            self.glob.is_match(name)
        } else {
            self.glob.is_match(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_finds_the_literal_prefix() {
        let p = PathPattern::new("//home//*/.ssh/authorized_keys/").unwrap();
        assert_eq!(p.as_str(), "/home/*/.ssh/authorized_keys");
        assert_eq!(p.literal_prefix(), std::path::Path::new("/home"));
        assert_eq!(p.literal_components(), 1);
        assert_eq!(p.component_count(), 4);
        let root = PathPattern::new("/").unwrap();
        assert_eq!(root.as_str(), "/");
        assert!(root.matches(b"/"));
    }

    #[test]
    fn refuses_relative_and_dot_components() {
        assert!(
            PathPattern::new("etc")
                .unwrap_err()
                .contains("not absolute")
        );
        assert!(
            PathPattern::new("/etc/../x")
                .unwrap_err()
                .contains("\"..\"")
        );
        assert!(
            PathPattern::new("/etc/[a")
                .unwrap_err()
                .contains("invalid glob")
        );
    }

    #[test]
    fn star_stays_within_one_component_and_double_star_crosses_newlines() {
        let p = PathPattern::new("/etc/cron.*").unwrap();
        assert!(p.matches(b"/etc/cron.d"));
        assert!(p.matches(b"/etc/cron.\nx"));
        assert!(!p.matches(b"/etc/cron.d/job"));
        let deep = PathPattern::new("/srv/**/secret").unwrap();
        assert!(deep.matches(b"/srv/a\nb/\xff\xfe/secret"));
        assert!(deep.matches(b"/srv/secret"));
    }

    #[test]
    fn relation_prunes_by_component() {
        let p = PathPattern::new("/home/*/.ssh/authorized_keys").unwrap();
        assert_eq!(p.relation(&[b"home"]), PrefixRelation::Partial);
        assert_eq!(
            p.relation(&[b"home", b"al\xffice"]),
            PrefixRelation::Partial
        );
        assert_eq!(
            p.relation(&[b"home", b"alice", b"Documents"]),
            PrefixRelation::Disjoint
        );
        assert_eq!(p.relation(&[b"var"]), PrefixRelation::Disjoint);
        assert_eq!(
            p.relation(&[b"home", b"a", b".ssh", b"authorized_keys", b"x"]),
            PrefixRelation::Below { extra: 1 }
        );
        let deep = PathPattern::new("/srv/**/x").unwrap();
        assert_eq!(deep.relation(&[b"srv"]), PrefixRelation::AnyDepth);
        assert_eq!(deep.relation(&[b"srv", b"q"]), PrefixRelation::AnyDepth);
    }

    #[test]
    fn ignore_patterns_match_names_or_whole_paths() {
        let name = IgnorePattern::new("*.swp").unwrap();
        assert!(name.matches(b"/etc/x/.a.swp", b".a.swp"));
        assert!(!name.matches(b"/etc/x.swp/a", b"a"));
        let abs = IgnorePattern::new("/etc/mtab").unwrap();
        assert!(abs.matches(b"/etc/mtab", b"mtab"));
        assert!(
            IgnorePattern::new("cache/x")
                .unwrap_err()
                .contains("not absolute")
        );
        assert!(IgnorePattern::new("**/cache/*").is_ok());
    }
}
