//! The fleet's metrics: the agent's publisher (added to the daemon's `/metrics`) and the
//! collector's (served by `fim collector`). No labels: one host, one collector each.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The agent side (`fim run` with `[fleet]`).
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    pub outbox_depth: Gauge,
    pub published: Counter,
    pub duplicates: Counter,
    pub publish_errors: Counter,
    pub gaps: Counter,
    pub rules_revision: Gauge,
    pub rules_rejected: Counter,
    pub connected: Gauge,
    pub permission_denied: Counter,
}

impl AgentMetrics {
    /// The metrics and the registry that exposes them (prefix `fim_fleet`).
    pub fn new() -> (AgentMetrics, Registry) {
        let m = AgentMetrics::default();
        let mut r = Registry::with_prefix("fim_fleet");
        r.register(
            "outbox_depth",
            "Store rows (changes and health) not yet acknowledged by the stream",
            m.outbox_depth.clone(),
        );
        r.register(
            "published",
            "Rows the stream acknowledged (duplicates included)",
            m.published.clone(),
        );
        r.register(
            "duplicates_acknowledged",
            "Acknowledgements that said the row was already in the stream (a retry the server de-duplicated)",
            m.duplicates.clone(),
        );
        r.register(
            "publish_errors",
            "Publishes that failed or were not acknowledged in time (retried)",
            m.publish_errors.clone(),
        );
        r.register(
            "gap_rows",
            "Rows never published (pruned or beyond max_backlog), each recorded in a fleet_gap row",
            m.gaps.clone(),
        );
        r.register(
            "rules_revision",
            "The highest central rule-set revision applied (0: none)",
            m.rules_revision.clone(),
        );
        r.register(
            "rules_rejected",
            "Central rule-set revisions that could not be applied (the last good one stays)",
            m.rules_rejected.clone(),
        );
        r.register(
            "connected",
            "Whether the agent is connected to a NATS server (1) or not (0)",
            m.connected.clone(),
        );
        r.register(
            "permission_denied",
            "Operations the server refused as outside this host's permissions (publishing or \
             reading as another host)",
            m.permission_denied.clone(),
        );
        (m, r)
    }
}

/// The collector side (`fim collector`).
#[derive(Debug, Clone, Default)]
pub struct CollectorMetrics {
    pub consumed: Counter,
    pub inserted: Counter,
    pub duplicates: Counter,
    pub lag: Gauge,
    pub errors: Counter,
    pub malformed: Counter,
}

impl CollectorMetrics {
    pub fn new() -> (CollectorMetrics, Registry) {
        let m = CollectorMetrics::default();
        let mut r = Registry::with_prefix("fim_collector");
        r.register(
            "consumed",
            "Messages taken from the stream",
            m.consumed.clone(),
        );
        r.register(
            "inserted",
            "Rows inserted into PostgreSQL",
            m.inserted.clone(),
        );
        r.register(
            "duplicates",
            "Messages whose row PostgreSQL already held (a redelivery or a retried publish)",
            m.duplicates.clone(),
        );
        r.register(
            "lag",
            "Messages in the stream not yet delivered to the collector",
            m.lag.clone(),
        );
        r.register(
            "errors",
            "Failed batches (not acknowledged: the stream delivers them again)",
            m.errors.clone(),
        );
        r.register(
            "malformed",
            "Messages that could not be decoded (acknowledged and logged, never retried)",
            m.malformed.clone(),
        );
        (m, r)
    }
}
