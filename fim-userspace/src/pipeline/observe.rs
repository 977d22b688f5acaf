//! From a kernel record to an observation: who did it (enrichment), which rule covers it, and
//! whether the actor is authorized or excluded.

use std::path::PathBuf;
use std::sync::Arc;

use super::alias::Aliases;
use crate::config::{Authorized, RuleSet};
use crate::sensor::{Event, EventKind};
use crate::store::Actor;
use fim_common::flags;

/// The process behind a record: its attribution and the executables of its ancestors
/// (nearest first), which tell a package-manager transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub actor: Actor,
    pub ancestors: Vec<Vec<u8>>,
}

/// Turns the kernel's view of a process into the attribution stored with a change.
pub trait Enrich: Send {
    fn actor(&mut self, event: &Event) -> Arc<Process>;

    /// A program execution the kernel reported (executable and arguments): remember it, so
    /// the process's changes are attributed even after it is gone.
    fn exec(&mut self, _event: &Event) {}
}

/// Attribution from the kernel record alone (pid, parent, uids, comm): what is known for
/// certain even when /proc has nothing left to say.
#[derive(Default)]
pub struct KernelOnly;

impl Enrich for KernelOnly {
    fn actor(&mut self, event: &Event) -> Arc<Process> {
        Arc::new(Process {
            actor: kernel_actor(event),
            ancestors: Vec::new(),
        })
    }
}

/// The attribution the record itself carries.
pub fn kernel_actor(event: &Event) -> Actor {
    let a = &event.actor;
    Actor {
        pid: Some(a.tgid),
        ppid: Some(a.ppid),
        uid: Some(a.uid),
        login_uid: (a.loginuid != u32::MAX).then_some(a.loginuid),
        comm: Some(event.comm()),
        ..Actor::default()
    }
}

/// The rule a path falls under, as the change records name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub name: String,
    pub group: String,
    pub upload_content: bool,
}

/// One kernel record that matters: its rule and attribution decided.
#[derive(Debug, Clone)]
pub struct Observation {
    pub event: Event,
    pub process: Arc<Process>,
    /// The rule of `event.path` (for renames and links: of either path).
    pub rule: Option<RuleRef>,
    /// The rule of `event.path2` for renames and links (where the object went).
    pub rule2: Option<RuleRef>,
    pub authorized: bool,
}

/// Executables whose changes happen inside package-manager transactions.
const PACKAGE_MANAGERS: &[&[u8]] = &[
    b"/usr/bin/dpkg",
    b"/usr/bin/apt",
    b"/usr/bin/apt-get",
    b"/usr/lib/apt/methods/",
    b"/usr/bin/unattended-upgrade",
    b"/usr/bin/rpm",
    b"/usr/bin/dnf",
    b"/usr/bin/yum",
];

/// Rule matching and actor policy for observations.
pub struct Classifier {
    rules: Arc<RuleSet>,
    authorized: Authorized,
    excluded: Vec<PathBuf>,
}

/// What the classifier decided about one record.
pub enum Verdict {
    Report(Box<Observation>),
    /// The record at each of its watched names: made through another name of a watched
    /// object (`Aliases::resolve`), or through one watched name of a file that has others.
    Reports(Vec<Observation>),
    /// No enabled rule covers the path(s), or a rule ignores them.
    NoRule,
    /// The kernel decided the record watched (under this rule id) on its inode, but no
    /// watched name was found for the name that was used: the rule's roots must be rescanned
    /// so the change is still reported.
    Unresolved(u32),
    /// The actor is an excluded executable.
    Excluded,
    /// A program execution: fed to the enrichment, not a change.
    Exec,
}

impl Classifier {
    pub fn new(rules: Arc<RuleSet>, authorized: Authorized, excluded: Vec<PathBuf>) -> Classifier {
        Classifier {
            rules,
            authorized,
            excluded,
        }
    }

    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Puts a new rule set in force (central rules applied live).
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.rules = rules;
    }

    fn rule(&self, path: &[u8]) -> Option<RuleRef> {
        self.rules.match_bytes(path).map(|r| RuleRef {
            name: r.name.clone(),
            group: r.group.clone(),
            upload_content: r.upload_content,
        })
    }

    /// Matches the record's paths against the rules, then attributes it.
    pub fn classify(&self, event: Event, enrich: &mut dyn Enrich) -> Verdict {
        if event.kind == EventKind::Exec {
            enrich.exec(&event);
            return Verdict::Exec;
        }
        let (rule, rule2) = self.rules_of(&event);
        self.attribute(event, rule, rule2, enrich)
    }

    /// `classify`, and a record made through another name of a watched object goes to its
    /// watched name(s) (see `Aliases`).
    pub fn classify_with(
        &self,
        event: Event,
        enrich: &mut dyn Enrich,
        aliases: &mut Aliases,
    ) -> Verdict {
        if event.kind == EventKind::Exec {
            enrich.exec(&event);
            return Verdict::Exec;
        }
        let (rule, rule2) = self.rules_of(&event);
        if rule.is_none() && rule2.is_none() {
            if event.truncated() && event.flags & flags::FILTER_UNDECIDED == 0 {
                // A path too long to build whole keeps its leaf end, which no rule matches.
                // The kernel found it below one of its roots: it is reported there (once,
                // flagged truncated), as `ROOT/…/LEAF-END`, which says what is known and
                // cannot be taken for a real path.
                // The close of a file written under such a path is the same change as its
                // open, which was reported (truncated) already.
                if event.kind == EventKind::Modified {
                    return Verdict::NoRule;
                }
                let Some(root) = aliases.roots_of(event.rule_id).into_iter().next() else {
                    return Verdict::NoRule;
                };
                let root = root.as_os_str().as_encoded_bytes();
                let rule = self.rule(root);
                let mut event = event;
                let mut path = root.to_vec();
                path.extend_from_slice("/\u{2026}".as_bytes());
                if event.path.first() != Some(&b'/') {
                    path.push(b'/');
                }
                path.extend_from_slice(&event.path);
                event.path = path;
                return self.attribute(event, rule, None, enrich);
            }
            if !Aliases::is_candidate(&event) {
                return Verdict::NoRule;
            }
            let rule_id = event.rule_id;
            let resolved = aliases.resolve(&event);
            if resolved.is_empty() {
                return Verdict::Unresolved(rule_id);
            }
            return self.attribute_all(resolved, enrich);
        }
        let others = aliases.other_names(&event);
        let first = self.attribute(event, rule, rule2, enrich);
        if others.is_empty() {
            return first;
        }
        match first {
            Verdict::Report(o) => match self.attribute_all(others, enrich) {
                Verdict::Reports(mut more) => {
                    more.insert(0, *o);
                    Verdict::Reports(more)
                }
                _ => Verdict::Report(o),
            },
            other => other,
        }
    }

    fn rules_of(&self, event: &Event) -> (Option<RuleRef>, Option<RuleRef>) {
        let rule = self.rule(&event.path);
        let rule2 = if matches!(event.kind, EventKind::Rename | EventKind::Link) {
            self.rule(&event.path2)
        } else {
            None
        };
        (rule, rule2)
    }

    /// The observations of several records of one change (one actor).
    fn attribute_all(&self, events: Vec<Event>, enrich: &mut dyn Enrich) -> Verdict {
        let mut observations = Vec::with_capacity(events.len());
        for event in events {
            let (rule, rule2) = self.rules_of(&event);
            match self.attribute(event, rule, rule2, enrich) {
                Verdict::Report(o) => observations.push(*o),
                Verdict::Excluded => return Verdict::Excluded,
                _ => {}
            }
        }
        if observations.is_empty() {
            Verdict::NoRule
        } else {
            Verdict::Reports(observations)
        }
    }

    /// Attributes a record whose rules are known: excluded, authorized, or reported.
    fn attribute(
        &self,
        event: Event,
        rule: Option<RuleRef>,
        rule2: Option<RuleRef>,
        enrich: &mut dyn Enrich,
    ) -> Verdict {
        if rule.is_none() && rule2.is_none() {
            return Verdict::NoRule;
        }
        let process = enrich.actor(&event);
        let exe = process.actor.exe.as_deref();
        if let Some(exe) = exe
            && self
                .excluded
                .iter()
                .any(|x| x.as_os_str().as_encoded_bytes() == exe)
        {
            return Verdict::Excluded;
        }
        let authorized = exe.is_some_and(|exe| {
            self.authorized
                .exes
                .iter()
                .any(|a| a.as_os_str().as_encoded_bytes() == exe)
        }) || (self.authorized.package_managers
            && exe
                .into_iter()
                .chain(process.ancestors.iter().map(Vec::as_slice))
                .any(is_package_manager));
        Verdict::Report(Box::new(Observation {
            event,
            process,
            rule,
            rule2,
            authorized,
        }))
    }
}

fn is_package_manager(exe: &[u8]) -> bool {
    PACKAGE_MANAGERS.iter().any(|pm| {
        if pm.ends_with(b"/") {
            exe.starts_with(pm)
        } else {
            exe == *pm
        }
    })
}
