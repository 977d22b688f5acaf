//! User names from /etc/passwd, parsed here (no NSS: it is not thread-safe, can block on the
//! network, and a directory service is not what a file monitor should wait for).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// How often the passwd file is checked for changes.
const RECHECK: Duration = Duration::from_secs(2);

pub struct Users {
    path: PathBuf,
    names: HashMap<u32, String>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Users {
    pub fn system() -> Users {
        Users::from_file(PathBuf::from("/etc/passwd"))
    }

    pub fn from_file(path: PathBuf) -> Users {
        Users {
            path,
            names: HashMap::new(),
            mtime: None,
            checked: None,
        }
    }

    fn refresh(&mut self) {
        if self.checked.is_some_and(|at| at.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && mtime == self.mtime {
            return;
        }
        self.mtime = mtime;
        self.names = std::fs::read(&self.path)
            .map(|text| parse(&String::from_utf8_lossy(&text)))
            .unwrap_or_default();
    }

    /// The name of `uid`, `None` when passwd does not list it.
    pub fn name(&mut self, uid: u32) -> Option<String> {
        self.refresh();
        self.names.get(&uid).cloned()
    }
}

/// uid -> name from passwd text; comments, NIS lines and malformed lines are skipped, and the
/// first entry for a uid wins (as getpwuid does).
pub fn parse(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') || line.starts_with(['+', '-']) {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if let Ok(uid) = uid.parse::<u32>()
            && !name.is_empty()
        {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_edge_cases() {
        let names = parse(
            "root:x:0:0:root:/root:/bin/bash\n# comment\n+nisuser::::::\nshort:x\n\
             bad:x:notanumber:0::/:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n\
             alias:x:1000:1000::/:/bin/sh\n:x:5:5::/:/bin/sh\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn file_changes_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, "a:x:1:1::/:/bin/sh\n").unwrap();
        let mut users = Users::from_file(path.clone());
        assert_eq!(users.name(1).as_deref(), Some("a"));
        assert_eq!(users.name(2), None);
    }
}
