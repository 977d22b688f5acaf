//! The fim daemon's library: everything the `fim` binary does, reusable by tests and benches.

pub mod host;
pub mod sensor;
