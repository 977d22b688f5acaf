//! The fleet's command-line parts: `fim fleet ...`, `fim collector`, and the `--fleet`
//! options of the query commands. Defined here so `main.rs` only names them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

use super::admin::{self, Admin, InitOptions, PutError, Role};
use super::settings::{Auth, FleetSettings, Tls};

/// sysexits.h EX_CONFIG, as `fim check-config` returns for an invalid file.
const EXIT_CONFIG: u8 = 78;

/// How a central command reaches NATS: flags, or the `[fleet]` section of a configuration.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsArgs {
    /// NATS server URL (repeatable); default: `[fleet] servers` of --config.
    #[arg(long = "server")]
    pub servers: Vec<String>,
    /// nkey seed file of the identity to use.
    #[arg(long)]
    pub nkey_seed_file: Option<PathBuf>,
    /// .creds file of the identity to use.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// CA certificate (PEM) of the servers.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Configuration whose `[fleet]` section names servers and credentials.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl NatsArgs {
    /// Settings for a central identity (`inbox` names its reply subjects).
    pub fn settings(&self, inbox: &str) -> Result<FleetSettings> {
        let mut settings = match &self.config {
            Some(path) => crate::config::Config::load(Some(path))
                .map_err(|e| anyhow!("invalid configuration:\n{e}"))?
                .fleet
                .ok_or_else(|| anyhow!("{} has no [fleet] section", path.display()))?,
            None => FleetSettings::new(Vec::new(), inbox),
        };
        settings.host_id = inbox.to_string();
        if !self.servers.is_empty() {
            settings.servers = self.servers.clone();
        }
        if settings.servers.is_empty() {
            bail!("name the NATS servers with --server URL (or --config with a [fleet] section)");
        }
        if let Some(path) = &self.nkey_seed_file {
            settings.auth = Auth::NkeySeedFile(path.clone());
        }
        if let Some(path) = &self.credentials {
            settings.auth = Auth::Credentials(path.clone());
        }
        if let Some(ca) = &self.ca {
            settings.tls = Tls {
                ca: Some(ca.clone()),
                ..settings.tls
            };
        }
        Ok(settings)
    }
}

/// The `--fleet` options of `fim who`, `fim events` and `fim status`.
#[derive(clap::Args, Debug, Clone)]
pub struct FleetQueryArgs {
    /// Ask the central PostgreSQL store (every host) instead of this host's store.
    #[arg(long)]
    pub fleet: bool,
    /// With --fleet: only this host.
    #[arg(long, requires = "fleet")]
    pub host: Option<String>,
    /// With --fleet: the PostgreSQL connection string (default: $FIM_POSTGRES).
    #[arg(long, requires = "fleet")]
    pub postgres: Option<String>,
}

impl FleetQueryArgs {
    pub fn connect(&self) -> Result<super::query::Central> {
        super::query::Central::connect(&postgres(self.postgres.as_deref())?)
    }
}

fn postgres(given: Option<&str>) -> Result<String> {
    match given {
        Some(s) => Ok(s.to_string()),
        None => std::env::var("FIM_POSTGRES").map_err(|_| {
            anyhow!(
                "name the central store with --postgres \"host=... dbname=...\" or $FIM_POSTGRES"
            )
        }),
    }
}

/// `fim collector`.
#[derive(clap::Args, Debug, Clone)]
pub struct CollectorArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// PostgreSQL connection string (default: $FIM_POSTGRES).
    #[arg(long)]
    pub postgres: Option<String>,
    /// Where the collector serves its Prometheus metrics.
    #[arg(long, default_value = "127.0.0.1:9718")]
    pub metrics: std::net::SocketAddr,
}

/// `fim fleet ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum FleetCommand {
    /// Create (or update) the streams and the rule bucket.
    Init {
        #[command(flatten)]
        nats: NatsArgs,
        /// Replicas of each stream (1 for a single server, 3 for a cluster).
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Days rows stay in the events stream.
        #[arg(long, default_value_t = 7)]
        max_age_days: u64,
        /// S2-compress the streams (NATS 2.10 or newer; refused on older servers).
        #[arg(long)]
        compression: bool,
        /// How long the server remembers message ids (a retry inside it is a duplicate).
        #[arg(long, default_value_t = 120)]
        duplicate_window_secs: u64,
    },
    /// Central rule sets per host group.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Set the groups a host follows (replaces its previous assignment).
    Assign {
        host: String,
        groups: Vec<String>,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Issue an nkey: write its seed (mode 0600) and print the server's user entry with
    /// the permissions of the role (a host: its own subjects and its groups' rules only).
    Credentials {
        /// The host id (as in its [fleet] host_id), or `--collector` / `--admin`.
        host: Option<String>,
        /// The groups the host may read rules of.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long, conflicts_with_all = ["host", "admin"])]
        collector: bool,
        #[arg(long, conflicts_with_all = ["host", "collector"])]
        admin: bool,
        /// Where to write the seed (must not exist).
        #[arg(long)]
        seed_out: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum RulesCommand {
    /// Check a rule set file like `fim check-config` does and store it as the group's
    /// next revision (errors as file:line:col, exit 78).
    Put {
        file: PathBuf,
        #[arg(long)]
        group: String,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// The revisions of a group's rule set.
    History {
        group: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Make an earlier revision the newest one again.
    Rollback {
        group: String,
        revision: u64,
        #[command(flatten)]
        nats: NatsArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `fim fleet ...`.
pub fn fleet(command: &FleetCommand) -> ExitCode {
    match command {
        FleetCommand::Rules {
            command: RulesCommand::Put { file, group, nats },
        } => put(file, group, nats),
        other => exit(fleet_other(other)),
    }
}

fn put(file: &Path, group: &str, nats: &NatsArgs) -> ExitCode {
    // The checks first: a bad file never needs the servers.
    if let Ok(text) = std::fs::read_to_string(file)
        && let Err(errors) = super::rules::validate(file, &text)
    {
        for error in &errors.0 {
            eprintln!("{error}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = (|| -> Result<u64, PutError> {
        let settings = nats.settings("admin").map_err(PutError::Other)?;
        let rt = runtime().map_err(PutError::Other)?;
        rt.block_on(async {
            let admin = Admin::connect(&settings).await.map_err(PutError::Other)?;
            admin.put_rules(file, group).await
        })
    })();
    match result {
        Ok(revision) => {
            println!("group {group}: revision {revision} stored");
            ExitCode::SUCCESS
        }
        Err(PutError::Invalid(errors)) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
        Err(PutError::Other(e)) => {
            eprintln!("fim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fleet_other(command: &FleetCommand) -> Result<()> {
    match command {
        FleetCommand::Init {
            nats,
            replicas,
            max_age_days,
            compression,
            duplicate_window_secs,
        } => {
            let settings = nats.settings("admin")?;
            runtime()?.block_on(async {
                let admin = Admin::connect(&settings).await?;
                admin
                    .init(&InitOptions {
                        replicas: *replicas,
                        max_age: std::time::Duration::from_secs(max_age_days * 86_400),
                        compression: *compression,
                        duplicate_window: std::time::Duration::from_secs(*duplicate_window_secs),
                    })
                    .await?;
                println!(
                    "streams {} and {} and bucket {} ready ({replicas} replicas, NATS {})",
                    super::subjects::EVENTS_STREAM,
                    super::subjects::STATUS_STREAM,
                    super::subjects::RULES_BUCKET,
                    admin.version
                );
                Ok(())
            })
        }
        FleetCommand::Rules { command } => match command {
            RulesCommand::Put { .. } => unreachable!("handled by fleet()"),
            RulesCommand::History { group, json, nats } => {
                let settings = nats.settings("admin")?;
                let history = runtime()?
                    .block_on(async { Admin::connect(&settings).await?.history(group).await })?;
                admin::print_history(group, &history, *json)
            }
            RulesCommand::Rollback {
                group,
                revision,
                nats,
            } => {
                let settings = nats.settings("admin")?;
                let new = runtime()?.block_on(async {
                    Admin::connect(&settings)
                        .await?
                        .rollback(group, *revision)
                        .await
                })?;
                println!("group {group}: revision {revision} restored as revision {new}");
                Ok(())
            }
        },
        FleetCommand::Assign { host, groups, nats } => {
            let settings = nats.settings("admin")?;
            let revision = runtime()?
                .block_on(async { Admin::connect(&settings).await?.assign(host, groups).await })?;
            println!(
                "host {host} follows {} (revision {revision})",
                if groups.is_empty() {
                    "no group".to_string()
                } else {
                    groups.join(", ")
                }
            );
            Ok(())
        }
        FleetCommand::Credentials {
            host,
            groups,
            collector,
            admin,
            seed_out,
        } => {
            let role = match (host, collector, admin) {
                (Some(host), false, false) => Role::Host {
                    host: host.clone(),
                    groups: groups.clone(),
                },
                (None, true, false) => Role::Collector,
                (None, false, true) => Role::Admin,
                _ => bail!("name a HOST, or --collector, or --admin"),
            };
            admin::check_role(&role)?;
            let (seed, user) = admin::issue(&role)?;
            admin::write_seed(seed_out, &seed)?;
            println!(
                "# seed written to {} (keep it secret; give it to its owner as [fleet] nkey_seed_file)",
                seed_out.display()
            );
            println!(
                "# add this entry to the nats-server configuration's authorization.users list:"
            );
            println!("{}", serde_json::to_string_pretty(&user)?);
            Ok(())
        }
    }
}

/// Runs `fim collector` until SIGINT or SIGTERM.
pub fn collector(args: &CollectorArgs) -> ExitCode {
    exit((|| {
        let settings = super::collector::CollectorSettings {
            nats: args.nats.settings("collector")?,
            postgres: postgres(args.postgres.as_deref())?,
        };
        runtime()?.block_on(async {
            let (metrics, registry) = super::metrics::CollectorMetrics::new();
            let listener = crate::metrics::bind(args.metrics).await?;
            tokio::spawn(crate::metrics::serve(
                listener,
                std::sync::Arc::new(registry),
            ));
            log::info!("collector metrics on http://{}/metrics", args.metrics);
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                let _ = stop_tx.send(true);
            });
            super::collector::run(settings, metrics, stop).await
        })
    })())
}
