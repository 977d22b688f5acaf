//! Fleet: every host's changes in one place, central rules, queries across hosts.
//!
//! Built on NATS JetStream (transport: replicated, de-duplicating streams; rule store: a
//! key-value bucket) and PostgreSQL (the central store). Off unless `[fleet]` is configured;
//! the single-host default (SQLite, no broker) does not change. Platform-independent: the
//! one step that touches the sensor (applying new rules) is the daemon's [`ApplyRules`].
//!
//! - [`agent`]: inside `fim run`: the outbox publisher, heartbeats, following central rules
//! - [`collector`]: `fim collector`: the stream into PostgreSQL, exactly once
//! - [`admin`]: `fim fleet ...`: streams and bucket, rule sets, assignments, credentials
//! - [`query`]: `fim who|events|status --fleet` against PostgreSQL

pub mod admin;
pub mod agent;
pub mod cli;
pub mod collector;
pub mod metrics;
pub mod nats;
pub mod outbox;
pub mod pg;
pub mod publisher;
pub mod query;
pub mod rules;
pub mod settings;
pub mod subjects;
pub mod wire;

pub use agent::{Agent, ApplyRules, RuleUpdate};
pub use settings::{FleetSection, FleetSettings};
