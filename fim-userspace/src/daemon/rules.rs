//! The rule set in force, shared by the threads that match paths outside the event loop: the
//! change worker (its examinations and rescans) and the scan thread. A live rules change
//! (`[fleet]`, see `EventLoop::apply_rules`) replaces it once for all of them; each reads it
//! when it starts a piece of work (an examination, a scan), so a scan runs on one rule set.

use std::sync::{Arc, RwLock};

use crate::config::RuleSet;

#[derive(Clone)]
pub(super) struct LiveRules(Arc<RwLock<Arc<RuleSet>>>);

impl LiveRules {
    pub(super) fn new(rules: RuleSet) -> LiveRules {
        LiveRules(Arc::new(RwLock::new(Arc::new(rules))))
    }

    /// The rules in force now.
    pub(super) fn get(&self) -> Arc<RuleSet> {
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `rules` in force for every holder.
    pub(super) fn set(&self, rules: Arc<RuleSet>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = rules;
    }
}
