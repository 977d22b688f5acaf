//! Hard links and other names in the event loop: the inode map the sensor keeps of watched
//! files with more than one link, and the alias resolver's view of the baseline.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Config;
use crate::pipeline::{Aliases, InodeNames, NoNames};
use crate::sensor::{Sensor, WatchRoot};
use crate::store::{DATABASE_FILE, ReadOnlyStore, Store};

use super::completeness::Layer;
use super::rescan::LinkedScan;

/// The baseline's paths by inode, read through a read-only connection of the event loop's
/// own (the change worker writes; WAL lets this read what it committed).
struct StoreNames(ReadOnlyStore);

impl InodeNames for StoreNames {
    fn paths_of_inode(&mut self, st_dev: u64, ino: u64) -> Vec<Vec<u8>> {
        self.0.paths_of_inode(st_dev, ino).unwrap_or_else(|e| {
            log::warn!("looking up baseline rows by inode: {e:#}");
            Vec::new()
        })
    }
}

/// The alias resolver over the store of `config` (its roots are set with the others', see
/// `EventLoop::roots_in_force`).
pub(super) fn aliases(config: &Config) -> Aliases {
    let names: Box<dyn InodeNames> =
        match Store::open_read_only(&config.state_dir.join(DATABASE_FILE)) {
            Ok(store) => Box::new(StoreNames(store)),
            Err(e) => {
                log::warn!(
                    "changes made through other names are found by the watched roots only: {e:#}"
                );
                Box::new(NoNames)
            }
        };
    Aliases::new(names)
}

/// The rule id the sensor gives a path: its root's (the most specific one).
fn rule_of(roots: &[WatchRoot], path: &[u8]) -> u32 {
    roots
        .iter()
        .filter(|root| {
            let root = root.path.as_os_str().as_encoded_bytes();
            path.starts_with(root)
                && (root == b"/" || path.len() == root.len() || path.get(root.len()) == Some(&b'/'))
        })
        .max_by_key(|root| root.path.as_os_str().len())
        .map_or(1, |root| root.rule_id)
}

/// What a rescan found linked goes to the sensor (their inodes are watched through every
/// name), to the completeness layer (the same, through fanotify marks on the watched names)
/// and to the resolver (their other watched names are reported too).
pub(super) fn apply_scan(
    sensor: &mut Sensor,
    layer: &mut Layer,
    aliases: &mut Aliases,
    roots: &[WatchRoot],
    scan: LinkedScan,
) {
    let keys: HashSet<(u64, u64)> = scan.files.iter().map(|f| (f.dev, f.inode)).collect();
    let failed = sensor.watch_links(
        scan.files
            .iter()
            .map(|f| (f.dev, f.inode, rule_of(roots, &f.path))),
    );
    if failed > 0 {
        log::warn!(
            "{failed} watched files with other hard links did not fit in the sensor's map: \
             changes through their other names are found by scans"
        );
    }
    if scan.everything {
        sensor.prune_links(&keys, scan.started);
    }
    layer.linked(&scan.files, |path| rule_of(roots, path), scan.everything);
    aliases.set_linked(keys, scan.everything);
}

/// A link record at a watched name: the file has another name now, perhaps outside every
/// rule, and changes through it must be seen (lsm and fentry already watch its inode; the
/// tracepoint backend's user space learns it here).
pub(super) fn note_link(
    sensor: &mut Sensor,
    layer: &mut Layer,
    aliases: &mut Aliases,
    roots: &[WatchRoot],
    watched: &[u8],
) {
    let path = Path::new(std::ffi::OsStr::from_bytes(watched));
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_file() {
        return;
    }
    let rule_id = rule_of(roots, watched);
    sensor.note_link(meta.dev(), meta.ino(), rule_id);
    layer.link(path, rule_id);
    aliases.set_linked([(meta.dev(), meta.ino())], false);
}
