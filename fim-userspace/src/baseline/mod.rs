//! The baseline: what every watched path looked like at the last scan (type, size, mode,
//! owner, times, inode, xattr digest, link target, BLAKE3 of the content), the parallel scan
//! that builds it (streaming against the store, bounded memory), and the drift between the
//! stored state and what is on disk.

mod drift;
mod engine;
mod entry;
pub mod hash;
mod mapped;
mod rescan;
mod scan;
mod walk;
mod xattr;

pub use drift::{ChangedField, Drift, Modified, changed_fields, entry_json};
pub use entry::{
    BaselineEntry, EntryFlags, FileKind, display_path, hex, parse_hex32, timestamp_ns,
};
pub use rescan::{
    DriftItem, LinkedFile, MAX_LINKED, RescanControl, RescanReport, Scope, observe_and_update,
    rescan, rescan_with,
};
pub use scan::{Baseline, ContentVersion, ScanOptions, ScanReport, ScanStats, observe, scan};
pub use xattr::xattr_digest;
