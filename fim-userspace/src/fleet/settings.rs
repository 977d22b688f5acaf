//! The `[fleet]` section of fim.toml: where the brokers are, how this host proves who it is,
//! what it is called and which groups it belongs to. Absent means no fleet: nothing is
//! published and nothing central is read.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::subjects;

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// NATS server URLs (`nats://host:4222`, `tls://...`); all nodes of the cluster, or some.
    pub servers: Spanned<Vec<String>>,
    /// A `.creds` file (JWT and nkey seed) for operator-mode deployments.
    pub credentials: Option<Spanned<String>>,
    /// A file holding this host's nkey seed (`SU...`), for servers configured with nkey users.
    pub nkey_seed_file: Option<Spanned<String>>,
    /// PEM file of the CA that signed the servers' certificates.
    pub ca: Option<Spanned<String>>,
    /// PEM client certificate and key, for servers that verify clients.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// This host's name in the fleet (subjects, keys, queries); default /etc/machine-id.
    pub host_id: Option<Spanned<String>>,
    /// Rule groups this host belongs to until `fim fleet assign` says otherwise.
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// Unpublished change rows kept at most; past it the oldest are skipped with a gap record.
    pub max_backlog: Option<Spanned<u64>>,
    /// Seconds between heartbeats.
    pub heartbeat_seconds: Option<Spanned<u64>>,
}

/// The validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    pub servers: Vec<String>,
    pub auth: Auth,
    pub tls: Tls,
    pub host_id: String,
    pub groups: Vec<String>,
    pub max_backlog: u64,
    pub heartbeat: Duration,
}

/// How the agent authenticates to NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Credentials(PathBuf),
    NkeySeedFile(PathBuf),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
}

pub const DEFAULT_MAX_BACKLOG: u64 = 1_000_000;
pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 30;
const MACHINE_ID: &str = "/etc/machine-id";

impl FleetSettings {
    /// Settings for tools and tests that build them in code.
    pub fn new(servers: Vec<String>, host_id: &str) -> FleetSettings {
        FleetSettings {
            servers,
            auth: Auth::None,
            tls: Tls::default(),
            host_id: host_id.to_string(),
            groups: Vec::new(),
            max_backlog: DEFAULT_MAX_BACKLOG,
            heartbeat: Duration::from_secs(DEFAULT_HEARTBEAT_SECONDS),
        }
    }
}

/// Validates the section; every problem goes to `error` with the span it is about.
pub fn validate(
    section: &FleetSection,
    error: &mut dyn FnMut(Range<usize>, String),
) -> Option<FleetSettings> {
    let mut ok = true;
    let mut fail = |span: Range<usize>, message: String| {
        ok = false;
        error(span, message);
    };
    let servers = section.servers.get_ref().clone();
    if servers.is_empty() {
        fail(
            section.servers.span(),
            "servers is empty: name at least one NATS URL (nats://host:4222)".into(),
        );
    }
    for server in &servers {
        let scheme = server.split("://").next().unwrap_or("");
        if !server.contains("://") || !["nats", "tls", "ws", "wss"].contains(&scheme) {
            fail(
                section.servers.span(),
                format!(
                    "server {server:?} is not a NATS URL (nats://host:port or tls://host:port)"
                ),
            );
        }
    }
    let mut absolute = |value: &Option<Spanned<String>>, what: &str| -> Option<PathBuf> {
        let value = value.as_ref()?;
        if value.get_ref().starts_with('/') {
            Some(PathBuf::from(value.get_ref()))
        } else {
            fail(
                value.span(),
                format!(
                    "{what} {:?} is not absolute (it must start with '/')",
                    value.get_ref()
                ),
            );
            None
        }
    };
    let credentials = absolute(&section.credentials, "credentials");
    let nkey = absolute(&section.nkey_seed_file, "nkey_seed_file");
    let ca = absolute(&section.ca, "ca");
    let cert = absolute(&section.cert, "cert");
    let key = absolute(&section.key, "key");
    let auth = match (credentials, nkey) {
        (Some(_), Some(_)) => {
            if let Some(n) = &section.nkey_seed_file {
                fail(
                    n.span(),
                    "give either credentials or nkey_seed_file, not both".into(),
                );
            }
            Auth::None
        }
        (Some(c), None) => Auth::Credentials(c),
        (None, Some(n)) => Auth::NkeySeedFile(n),
        (None, None) => Auth::None,
    };
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            let span = section
                .cert
                .as_ref()
                .or(section.key.as_ref())
                .map_or(0..0, |s| s.span());
            fail(
                span,
                "cert and key go together: give both or neither".into(),
            );
            None
        }
    };
    let host_id = match &section.host_id {
        Some(id) => match subjects::check_token(id.get_ref(), "host_id") {
            Ok(()) => id.get_ref().clone(),
            Err(message) => {
                fail(id.span(), message);
                String::new()
            }
        },
        None => match machine_id() {
            Ok(id) => id,
            Err(message) => {
                fail(section.servers.span(), message);
                String::new()
            }
        },
    };
    let mut groups = Vec::new();
    for group in &section.groups {
        match subjects::check_token(group.get_ref(), "group") {
            Ok(()) => groups.push(group.get_ref().clone()),
            Err(message) => fail(group.span(), message),
        }
    }
    let max_backlog = match &section.max_backlog {
        Some(n) if *n.get_ref() == 0 => {
            fail(n.span(), "max_backlog must be at least 1".into());
            0
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_MAX_BACKLOG,
    };
    let heartbeat = match &section.heartbeat_seconds {
        Some(n) if *n.get_ref() == 0 || *n.get_ref() > 3600 => {
            fail(n.span(), "heartbeat_seconds must be from 1 to 3600".into());
            0
        }
        Some(n) => *n.get_ref(),
        None => DEFAULT_HEARTBEAT_SECONDS,
    };
    ok.then(|| FleetSettings {
        servers,
        auth,
        tls: Tls { ca, client },
        host_id,
        groups,
        max_backlog,
        heartbeat: Duration::from_secs(heartbeat),
    })
}

/// This host's default id: /etc/machine-id (32 lower-case hex digits).
fn machine_id() -> Result<String, String> {
    let text = std::fs::read_to_string(MACHINE_ID).map_err(|e| {
        format!("no host_id given and {MACHINE_ID} cannot be read ({e}): set [fleet] host_id")
    })?;
    let id = text.trim().to_string();
    subjects::check_token(&id, "the machine id")
        .map_err(|m| format!("{m} (from {MACHINE_ID}): set [fleet] host_id"))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates `toml` as a `[fleet]` section: the settings, and each error with the text
    /// its span covers.
    fn check(toml: &str) -> (Option<FleetSettings>, Vec<(String, String)>) {
        let section: FleetSection = toml::from_str(toml).expect("a [fleet] section");
        let mut errors = Vec::new();
        let settings = validate(&section, &mut |span, message| {
            errors.push((toml[span].to_string(), message));
        });
        (settings, errors)
    }

    #[test]
    fn a_complete_section_becomes_settings() {
        let (settings, errors) = check(
            r#"
            servers = ["nats://n1:4222", "tls://n2:4222"]
            credentials = "/etc/fim/fleet.creds"
            ca = "/etc/fim/ca.pem"
            cert = "/etc/fim/cert.pem"
            key = "/etc/fim/key.pem"
            host_id = "web-1"
            groups = ["web", "linux"]
            max_backlog = 5000
            heartbeat_seconds = 10
            "#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let settings = settings.unwrap();
        assert_eq!(settings.servers, ["nats://n1:4222", "tls://n2:4222"]);
        assert_eq!(
            settings.auth,
            Auth::Credentials("/etc/fim/fleet.creds".into())
        );
        assert_eq!(settings.tls.ca, Some("/etc/fim/ca.pem".into()));
        assert_eq!(
            settings.tls.client,
            Some(("/etc/fim/cert.pem".into(), "/etc/fim/key.pem".into()))
        );
        assert_eq!(settings.host_id, "web-1");
        assert_eq!(settings.groups, ["web", "linux"]);
        assert_eq!(settings.max_backlog, 5000);
        assert_eq!(settings.heartbeat, Duration::from_secs(10));

        let (settings, errors) =
            check("servers = [\"nats://n1:4222\"]\nnkey_seed_file = \"/k.nk\"\nhost_id = \"h\"");
        assert!(errors.is_empty(), "{errors:?}");
        let settings = settings.unwrap();
        assert_eq!(settings.auth, Auth::NkeySeedFile("/k.nk".into()));
        assert_eq!(settings.max_backlog, DEFAULT_MAX_BACKLOG);
        assert_eq!(
            settings.heartbeat,
            Duration::from_secs(DEFAULT_HEARTBEAT_SECONDS)
        );
        assert!(settings.groups.is_empty() && settings.tls == Tls::default());
    }

    #[test]
    fn each_mistake_is_reported_where_it_was_written() {
        let (settings, errors) = check(
            r#"
            servers = ["http://n1"]
            credentials = "/c.creds"
            nkey_seed_file = "relative.nk"
            cert = "/cert.pem"
            host_id = "web.1"
            groups = ["ok", "a>b"]
            max_backlog = 0
            heartbeat_seconds = 3601
            "#,
        );
        assert!(settings.is_none());
        let expect = [
            ("[\"http://n1\"]", "is not a NATS URL"),
            ("\"relative.nk\"", "is not absolute"),
            ("\"/cert.pem\"", "cert and key go together"),
            ("\"web.1\"", "host_id \"web.1\" must be 1 to 64"),
            ("\"a>b\"", "group \"a>b\" must be"),
            ("0", "max_backlog must be at least 1"),
            ("3601", "heartbeat_seconds must be from 1 to 3600"),
        ];
        for (text, message) in expect {
            assert!(
                errors.iter().any(|(t, m)| t == text && m.contains(message)),
                "no error {message:?} at {text}: {errors:?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:?}");

        let (settings, errors) =
            check("servers = []\ncredentials = \"/c\"\nnkey_seed_file = \"/n\"\nhost_id = \"h\"");
        assert!(settings.is_none());
        assert_eq!(
            errors,
            [
                (
                    "[]".to_string(),
                    "servers is empty: name at least one NATS URL (nats://host:4222)".to_string()
                ),
                (
                    "\"/n\"".to_string(),
                    "give either credentials or nkey_seed_file, not both".to_string()
                ),
            ]
        );
    }
}
