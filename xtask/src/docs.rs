//! The documentation's links: every relative link in README.md and docs/*.md must name a
//! file of the repository, and every `#anchor` a heading of the page it points at (as
//! GitHub makes anchors from headings). A moved or renamed section fails `cargo test`.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use pulldown_cmark::{Event, Parser, Tag, TagEnd};

/// GitHub's anchor for a heading's text: lower case, everything but letters, digits, `-`,
/// `_` and spaces dropped, spaces turned into `-`.
fn slug(text: &str) -> String {
    text.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// What one page offers and asks for: its anchors, and its links (destination, line).
#[derive(Default)]
struct Page {
    anchors: BTreeSet<String>,
    links: Vec<(String, usize)>,
}

fn read_page(text: &str) -> Page {
    let mut page = Page::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut heading: Option<String> = None;
    for (event, range) in Parser::new(text).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::End(TagEnd::Heading(_)) => {
                if let Some(text) = heading.take() {
                    let base = slug(&text);
                    // A repeated heading gets `-1`, `-2`, ... as on GitHub.
                    let count = seen.entry(base.clone()).or_insert(0);
                    let anchor = match *count {
                        0 => base.clone(),
                        n => format!("{base}-{n}"),
                    };
                    *count += 1;
                    page.anchors.insert(anchor);
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                let line = text[..range.start].matches('\n').count() + 1;
                page.links.push((dest_url.to_string(), line));
            }
            _ => {}
        }
    }
    page
}

/// `base` joined with a relative `link`, with `..` applied; None when it climbs out of the
/// repository.
fn resolve(root: &Path, base: &Path, link: &str) -> Option<PathBuf> {
    let mut path = base.to_path_buf();
    for component in Path::new(link).components() {
        match component {
            Component::ParentDir => {
                if !path.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            Component::Normal(name) => path.push(name),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(root.join(path))
}

/// Every broken relative link and anchor in `pages` (paths relative to `root`), as
/// `page:line: message`.
pub fn broken_links(root: &Path, pages: &[PathBuf]) -> Result<Vec<String>> {
    let mut parsed: HashMap<PathBuf, Page> = HashMap::new();
    let mut anchors_of = |file: &Path| -> Result<BTreeSet<String>> {
        if !parsed.contains_key(file) {
            let text = fs::read_to_string(root.join(file))
                .with_context(|| format!("reading {}", file.display()))?;
            parsed.insert(file.to_path_buf(), read_page(&text));
        }
        Ok(parsed[file].anchors.clone())
    };
    let mut problems = Vec::new();
    for page in pages {
        let text = fs::read_to_string(root.join(page))
            .with_context(|| format!("reading {}", page.display()))?;
        for (link, line) in read_page(&text).links {
            let at = format!("{}:{line}", page.display());
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                let dir = page.parent().unwrap_or(Path::new(""));
                match resolve(root, dir, file) {
                    Some(full) => full.strip_prefix(root).unwrap_or(&full).to_path_buf(),
                    None => {
                        problems.push(format!("{at}: `{link}` leaves the repository"));
                        continue;
                    }
                }
            };
            if !root.join(&target).exists() {
                problems.push(format!(
                    "{at}: `{link}`: {} does not exist",
                    target.display()
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if target.extension().is_none_or(|e| e != "md") {
                problems.push(format!(
                    "{at}: `{link}`: an anchor into a file that is not Markdown"
                ));
                continue;
            }
            if !anchors_of(&target)?.contains(anchor) {
                problems.push(format!(
                    "{at}: `{link}`: {} has no heading with anchor #{anchor}",
                    target.display()
                ));
            }
        }
    }
    Ok(problems)
}

/// README.md, every page under docs/, and the Windows sibling's README.
pub fn pages(root: &Path) -> Result<Vec<PathBuf>> {
    let mut pages = vec![
        PathBuf::from("README.md"),
        PathBuf::from("fim-windows/README.md"),
    ];
    let docs = root.join("docs");
    let mut found: Vec<PathBuf> = fs::read_dir(&docs)
        .with_context(|| format!("listing {}", docs.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .filter_map(|path| path.strip_prefix(root).ok().map(Path::to_path_buf))
        .collect();
    found.sort();
    pages.extend(found);
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(
            slug("Never silent: crash, overflow, downtime and back-pressure tests"),
            "never-silent-crash-overflow-downtime-and-back-pressure-tests"
        );
        assert_eq!(
            slug("Where the sensor's instructions go"),
            "where-the-sensors-instructions-go"
        );
        assert_eq!(
            slug("What each backend sees (conformance scenarios)"),
            "what-each-backend-sees-conformance-scenarios"
        );
        assert_eq!(slug("fim — File Integrity"), "fim--file-integrity");
    }

    #[test]
    fn headings_with_code_and_repeats_get_their_anchors() {
        let page = read_page("# `fim run`\n\n## Rules (`[[rule]]`)\n\n## Rules (`[[rule]]`)\n");
        let anchors: Vec<&str> = page.anchors.iter().map(String::as_str).collect();
        assert_eq!(anchors, ["fim-run", "rules-rule", "rules-rule-1"]);
    }

    #[test]
    fn a_broken_link_or_anchor_is_found_and_code_is_not_a_link() {
        let root = tempfile_dir();
        fs::create_dir_all(root.join("docs")).unwrap();
        fs::write(root.join("docs/a.md"), "# A\n\n## Part one\n").unwrap();
        fs::write(
            root.join("README.md"),
            "# R\n\n[ok](docs/a.md#part-one) [self](#r) [gone](docs/b.md)\n\
             [bad anchor](docs/a.md#part-two) [up](../outside.md) [web](https://example.invalid/x)\n\
             `[not a link](nowhere.md)`\n",
        )
        .unwrap();
        let problems = broken_links(&root, &[PathBuf::from("README.md")]).unwrap();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].contains("README.md:3: `docs/b.md`"),
            "{problems:#?}"
        );
        assert!(problems[1].contains("#part-two"), "{problems:#?}");
        assert!(
            problems[2].contains("leaves the repository"),
            "{problems:#?}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fim-docs-links-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn every_relative_link_and_anchor_in_the_docs_resolves() {
        let root = crate::paths::workspace();
        let pages = pages(&root).unwrap();
        assert!(pages.len() > 5, "docs/ holds too few pages: {pages:?}");
        let problems = broken_links(&root, &pages).unwrap();
        assert!(
            problems.is_empty(),
            "broken links:\n{}",
            problems.join("\n")
        );
    }
}
