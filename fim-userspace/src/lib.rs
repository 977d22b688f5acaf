//! The fim daemon's library: everything the `fim` binary does, reusable by tests and benches.

pub mod baseline;
pub mod completions;
pub mod config;
pub mod control;
pub mod daemon;
pub mod enrich;
pub mod fleet;
pub mod host;
pub mod manpages;
pub mod metrics;
pub mod output;
pub mod owner_only;
pub mod pipeline;
pub mod query;
pub mod sensor;
pub mod store;
