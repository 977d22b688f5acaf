//! fim's fuzz targets, as plain functions: each `fuzz_targets/*.rs` is one call into here, and
//! `tests/` runs the same checks over the committed seed corpus without libFuzzer.
//!
//! - [`decoder`]: kernel ring-buffer items -> `Event::decode` -> the record's consumers
//! - [`config`]: configuration text -> `Config::from_sources` -> rules in use
//! - [`ocsf`]: change records -> the OCSF JSON line of the output -> read back

pub mod config;
pub mod decoder;
pub mod ocsf;
pub mod record;
