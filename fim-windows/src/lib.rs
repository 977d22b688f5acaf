//! fim-windows: the Windows sibling of fim.
//!
//! Everything that decides *what happened* (ETW decoding, path and key
//! mapping, rules, registry baseline diffs, reconciliation, OCSF output) is
//! platform-independent and unit-tested on Linux. Only the thin readers that
//! talk to the OS live under `windows/` and are `cfg(windows)`.

pub mod actor;
pub mod change;
pub mod decode;
pub mod etw_event;
pub mod etw_filter;
pub mod etw_layout;
pub mod glob;
pub mod lost_events;
pub mod name_cache;
pub mod nt_path;
pub mod ocsf;
pub mod pipeline;
pub mod reconcile;
pub mod reg_path;
pub mod rules;
pub mod selftest;
pub mod snapshot;

#[cfg(windows)]
pub mod windows;
