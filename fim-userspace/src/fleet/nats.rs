//! Connecting to NATS as one host (authentication, TLS, the host's own inbox prefix) and
//! reading what the server can do.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;

use super::settings::{Auth, FleetSettings};
use super::subjects;

/// How long a JetStream API request or a publish acknowledgement may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes in flight (sent, acknowledgement not yet back) at most.
pub const MAX_IN_FLIGHT: usize = 8192;

/// Connection options for this host's identity.
pub async fn options(settings: &FleetSettings, name: &str) -> Result<async_nats::ConnectOptions> {
    let mut options = match &settings.auth {
        Auth::None => async_nats::ConnectOptions::new(),
        Auth::Credentials(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading the NATS credentials {}", path.display()))?,
        Auth::NkeySeedFile(path) => {
            let seed = std::fs::read_to_string(path)
                .with_context(|| format!("reading the nkey seed {}", path.display()))?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
        }
    };
    if let Some(ca) = &settings.tls.ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &settings.tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options
        .name(name)
        // Replies (acks, direct gets) arrive below the host's own prefix: its permissions
        // let it subscribe there and nowhere else.
        .custom_inbox_prefix(subjects::inbox_prefix(&settings.host_id))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(6)).min(5000))
        }))
}

/// Connects (retrying in the background until a server answers).
pub async fn connect(settings: &FleetSettings, name: &str) -> Result<async_nats::Client> {
    connect_with(settings, name, None).await
}

/// [`connect`], with the connection's events (connected, disconnected, server errors such
/// as a permissions violation) sent to `events`.
pub async fn connect_with(
    settings: &FleetSettings,
    name: &str,
    events: Option<tokio::sync::mpsc::UnboundedSender<async_nats::Event>>,
) -> Result<async_nats::Client> {
    let mut options = options(settings, name).await?;
    if let Some(events) = events {
        options = options.event_callback(move |event| {
            let _ = events.send(event);
            async {}
        });
    }
    options
        .connect(settings.servers.clone())
        .await
        .with_context(|| format!("connecting to NATS at {}", settings.servers.join(", ")))
}

/// A JetStream context with fim's timeouts and in-flight window.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(MAX_IN_FLIGHT)
        .backpressure_on_inflight(true)
        .build(client)
}

/// A server version, as its INFO says (`2.9.10`, `2.15.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion(pub u32, pub u32, pub u32);

/// What fim uses that not every server has. An older server would silently ignore the
/// settings these stand for (an unknown JSON field is dropped), so fim asks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Direct gets by subject (resuming from the stream; reading one rule set): 2.9.
    DirectGet,
    /// Stream compression (`fim fleet init --compression s2`): 2.10.
    Compression,
    /// Consumers with several filter subjects: 2.10.
    MultiFilter,
}

impl Feature {
    pub fn since(self) -> ServerVersion {
        match self {
            Feature::DirectGet => ServerVersion(2, 9, 0),
            Feature::Compression | Feature::MultiFilter => ServerVersion(2, 10, 0),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Feature::DirectGet => "direct get",
            Feature::Compression => "stream compression",
            Feature::MultiFilter => "consumers with several filter subjects",
        }
    }
}

impl ServerVersion {
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        Some(ServerVersion(
            parts.next()??,
            parts.next()??,
            parts.next()??,
        ))
    }

    pub fn supports(self, feature: Feature) -> bool {
        self >= feature.since()
    }

    /// An error naming the feature and the version it needs, when this server lacks it.
    pub fn require(self, feature: Feature) -> Result<()> {
        if !self.supports(feature) {
            let ServerVersion(a, b, c) = feature.since();
            bail!(
                "the NATS server is {self}, which does not support {} (needs {a}.{b}.{c} or \
                 newer); an older server would silently ignore the setting, so fim refuses it",
                feature.name()
            );
        }
        Ok(())
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The version of the server `client` is connected to. The first INFO can lag the
/// connection a little: waits for it up to a few seconds.
pub async fn server_version(client: &async_nats::Client) -> Result<ServerVersion> {
    for _ in 0..50 {
        let info = client.server_info();
        if let Some(version) = ServerVersion::parse(&info.version) {
            return Ok(version);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the NATS server did not say its version")
}

/// The oldest server fim works with.
pub fn require_minimum(version: ServerVersion) -> Result<()> {
    version.require(Feature::DirectGet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_gate_features() {
        let old = ServerVersion::parse("2.9.10").unwrap();
        let new = ServerVersion::parse("v2.15.1-beta+abc").unwrap();
        assert_eq!(new, ServerVersion(2, 15, 1));
        assert!(old.supports(Feature::DirectGet));
        assert!(!old.supports(Feature::Compression));
        assert!(new.supports(Feature::MultiFilter));
        let refused = old.require(Feature::Compression).unwrap_err().to_string();
        assert!(
            refused.contains("2.9.10") && refused.contains("2.10.0"),
            "{refused}"
        );
        assert!(require_minimum(ServerVersion(2, 8, 4)).is_err());
        assert_eq!(ServerVersion::parse("junk"), None);
    }
}
