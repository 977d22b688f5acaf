//! Process enrichment: who made a change. The Windows agent resolves a pid
//! with OpenProcess/QueryFullProcessImageNameW and the process token; replay
//! and tests use the process table carried by the fixture.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Full image path (C:\Windows\System32\reg.exe).
    #[serde(default)]
    pub image_path: Option<String>,
    #[serde(default)]
    pub cmd_line: Option<String>,
    /// Token user SID (S-1-5-...).
    #[serde(default)]
    pub user_sid: Option<String>,
    /// DOMAIN\name for that SID.
    #[serde(default)]
    pub user_name: Option<String>,
}

impl ProcessInfo {
    pub fn name(&self) -> Option<&str> {
        self.image_path
            .as_deref()
            .map(|p| p.rsplit(['\\', '/']).next().unwrap_or(p))
    }
}

pub trait ProcessResolver {
    /// Facts about a live process; None when it already exited or access was
    /// denied (the event is still reported, with just the pid).
    fn resolve(&mut self, pid: u32) -> Option<ProcessInfo>;
}

/// The process table of a fixture.
#[derive(Debug, Default)]
pub struct StaticProcesses {
    by_pid: HashMap<u32, ProcessInfo>,
}

impl StaticProcesses {
    pub fn new(processes: &[ProcessInfo]) -> Self {
        Self {
            by_pid: processes.iter().map(|p| (p.pid, p.clone())).collect(),
        }
    }
}

impl ProcessResolver for StaticProcesses {
    fn resolve(&mut self, pid: u32) -> Option<ProcessInfo> {
        self.by_pid.get(&pid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_the_image_file_name() {
        let p = ProcessInfo {
            pid: 1,
            image_path: Some(r"C:\Windows\regedit.exe".into()),
            cmd_line: None,
            user_sid: None,
            user_name: None,
        };
        assert_eq!(p.name(), Some("regedit.exe"));
        let mut table = StaticProcesses::new(std::slice::from_ref(&p));
        assert_eq!(table.resolve(1), Some(p));
        assert_eq!(table.resolve(2), None);
    }
}
