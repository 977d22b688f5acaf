//! `fim`: File Integrity Monitoring daemon and CLI.

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use fim::baseline::{self, Drift, ScanOptions, Scope, display_path};
use fim::config::Config;
use fim::sensor::Backend;
use fim::store::{HealthRecord, Retention, Store, StoreOp};

#[derive(Parser)]
#[command(
    name = "fim",
    version,
    about = "File Integrity Monitoring with exact attribution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a shell completion script on stdout (used by `cargo xtask completions`).
    #[command(hide = true)]
    Completions { shell: fim::completions::Shell },
    /// Write the manual pages (fim.1, fim-SUBCOMMAND.1) into DIR (used by `cargo xtask
    /// install` and `cargo xtask package`).
    #[command(hide = true)]
    ManPages { dir: PathBuf },
    /// Run the monitoring daemon in the foreground.
    Run {
        /// Use exactly this sensor backend instead of the best one that works.
        #[arg(long, value_enum)]
        backend: Option<BackendArg>,
        /// Main configuration file (default /etc/fim/fim.toml; conf.d/ next to it is read too).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log the kernel side's diagnostics (a full map or ring buffer, a path walk cut short,
        /// the fallbacks its programs take) at debug level with the target fim::kernel. Off,
        /// the programs send nothing.
        #[arg(long)]
        kernel_log: bool,
    },
    /// Build or check the baseline without the daemon: walk the watched paths, report the
    /// drift from the stored baseline, and store the new one. With --now, ask the running
    /// daemon for a scan instead and wait for it.
    Scan {
        /// Main configuration file (default /etc/fim/fim.toml; conf.d/ next to it is read too).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the full drift as JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// Read and hash every file, even those whose stored hash could be reused.
        #[arg(long, conflicts_with = "now")]
        rehash: bool,
        /// Ask the running daemon (through <state_dir>/fim.sock) for a full scan now, wait
        /// for it and print what it found; its changes are reported like the daemon's others.
        #[arg(long)]
        now: bool,
    },
    /// Who changed PATH: its recorded changes, newest first, with the process behind each,
    /// followed back through renames (the names the file had before).
    Who {
        /// The path (absolute, as fim reports it).
        path: PathBuf,
        /// At most this many changes.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        fleet: fim::fleet::cli::FleetQueryArgs,
    },
    /// Recorded changes matching filters, newest first.
    Events {
        /// Glob over the path or the new path (SQLite GLOB: `*` also matches `/`).
        #[arg(long)]
        path: Option<String>,
        /// Only changes at or after this time: RFC 3339 or relative (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Only changes at or before this time: RFC 3339 or relative.
        #[arg(long)]
        until: Option<String>,
        /// Only this activity (repeatable).
        #[arg(long, value_enum)]
        activity: Vec<ActivityArg>,
        /// Only changes by this process id.
        #[arg(long)]
        pid: Option<u32>,
        /// Only changes by this executable (absolute path).
        #[arg(long)]
        exe: Option<String>,
        /// Only changes by this user id.
        #[arg(long)]
        uid: Option<u32>,
        /// Only changes from this container id.
        #[arg(long)]
        container: Option<String>,
        /// Only changes under rules of this group.
        #[arg(long)]
        group: Option<String>,
        /// Only changes under this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only authorized (true) or unauthorized (false) changes.
        #[arg(long)]
        authorized: Option<bool>,
        /// At most this many changes.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        fleet: fim::fleet::cli::FleetQueryArgs,
    },
    /// Run one read-only SQL statement on the store (tables: baseline, changes, health,
    /// content_versions, meta; view: ConfigurationChange). Writes are refused.
    Sql {
        /// The statement, e.g. "SELECT * FROM ConfigurationChange LIMIT 10".
        statement: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// What changed in PATH between two of its recorded changes (default: the newest one and
    /// the one before), with a unified diff when both contents were kept (upload_content).
    Diff {
        path: PathBuf,
        /// The older change: its id, or a time (RFC 3339 or relative) for the newest change
        /// at or before it.
        #[arg(long)]
        from: Option<String>,
        /// The newer change: id or time, as --from (default: the newest).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Whether the daemon runs (backend, uptime), what the store holds, kernel losses,
    /// rescans and the last scan.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        fleet: fim::fleet::cli::FleetQueryArgs,
        /// With --fleet: a host whose last heartbeat is older than this is shown offline.
        #[arg(long, value_name = "SECONDS", default_value_t = 90, requires = "fleet")]
        offline_after: i64,
    },
    /// Fleet administration: streams, central rule sets, host assignments, credentials.
    Fleet {
        #[command(subcommand)]
        command: fim::fleet::cli::FleetCommand,
    },
    /// Move every host's rows from NATS JetStream into PostgreSQL (exactly once).
    Collector(fim::fleet::cli::CollectorArgs),
    /// Validate the configuration; errors are printed as file:line:col: message (exit 78).
    CheckConfig {
        /// Main configuration file (default /etc/fim/fim.toml; conf.d/ next to it is read too).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Where the query commands find the store, and how they print.
#[derive(clap::Args)]
struct StoreArgs {
    /// Main configuration file whose state_dir holds the store (default /etc/fim/fim.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The store database itself (instead of the configuration's state_dir/fim.db).
    #[arg(long)]
    store: Option<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActivityArg {
    Create,
    Update,
    Delete,
    Rename,
    SetAttributes,
    SetSecurity,
    Other,
}

impl ActivityArg {
    fn id(self) -> i64 {
        use fim::store::activity;
        match self {
            ActivityArg::Create => activity::CREATE,
            ActivityArg::Update => activity::UPDATE,
            ActivityArg::Delete => activity::DELETE,
            ActivityArg::Rename => activity::RENAME,
            ActivityArg::SetAttributes => activity::SET_ATTRIBUTES,
            ActivityArg::SetSecurity => activity::SET_SECURITY,
            ActivityArg::Other => activity::OTHER,
        }
    }
}

/// Runs one query command: opens the store read-only and reports errors like the others.
fn query(
    args: &StoreArgs,
    run: impl FnOnce(&fim::store::ReadOnlyStore, &Path) -> Result<()>,
) -> std::process::ExitCode {
    let result = fim::query::open(args.config.as_deref(), args.store.as_deref())
        .and_then(|(store, path)| run(&store, &path));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one `--fleet` query command against PostgreSQL.
fn fleet_query(
    run: impl FnOnce(&fim::fleet::query::Central) -> Result<()>,
    args: &fim::fleet::cli::FleetQueryArgs,
) -> std::process::ExitCode {
    match args.connect().and_then(|central| run(&central)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where a query command reads: this host's store, or the fleet's.
enum Source<'a> {
    Local(&'a fim::store::ReadOnlyStore),
    Fleet(&'a fim::fleet::query::Central),
}

fn query_either(
    store: &StoreArgs,
    fleet: &fim::fleet::cli::FleetQueryArgs,
    run: impl FnOnce(Source<'_>) -> Result<()>,
) -> std::process::ExitCode {
    if fleet.fleet {
        fleet_query(|c| run(Source::Fleet(c)), fleet)
    } else {
        query(store, |s, _| run(Source::Local(s)))
    }
}

fn bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Lsm,
    Fentry,
    Tracepoint,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Backend {
        match arg {
            BackendArg::Lsm => Backend::Lsm,
            BackendArg::Fentry => Backend::Fentry,
            BackendArg::Tracepoint => Backend::Tracepoint,
        }
    }
}

/// sysexits.h EX_CONFIG: what `fim check-config` returns for an invalid configuration.
const EXIT_CONFIG: u8 = 78;

/// Commands that need no async runtime; `None` for the daemon.
fn run_offline_command(command: &Command) -> Option<std::process::ExitCode> {
    match command {
        Command::Completions { shell } => Some(print_completions(*shell)),
        Command::ManPages { dir } => Some(write_man_pages(dir)),
        Command::CheckConfig { config } => Some(check_config(config.as_deref())),
        Command::Fleet { command } => Some(fim::fleet::cli::fleet(command)),
        Command::Collector(args) => Some(fim::fleet::cli::collector(args)),
        Command::Who {
            path,
            limit,
            store,
            fleet,
        } if fleet.fleet => Some(fleet_query(
            |c| fim::fleet::query::who(c, bytes(path), *limit, fleet.host.as_deref(), store.json),
            fleet,
        )),
        Command::Who {
            path, limit, store, ..
        } => Some(query(store, |s, _| {
            fim::query::who(s, bytes(path), *limit, store.json)
        })),
        Command::Events {
            path,
            since,
            until,
            activity,
            pid,
            exe,
            uid,
            container,
            group,
            rule,
            authorized,
            limit,
            store,
            fleet,
        } => Some(query_either(store, fleet, |source| {
            let now = fim::query::now_ns();
            let time = |t: &Option<String>| {
                t.as_deref()
                    .map(|t| fim::query::parse_time(t, now))
                    .transpose()
            };
            let filter = fim::query::EventFilter {
                path: path.clone(),
                since_ns: time(since)?,
                until_ns: time(until)?,
                activities: activity.iter().map(|a| a.id()).collect(),
                pid: *pid,
                exe: exe.clone(),
                uid: *uid,
                container: container.clone(),
                group: group.clone(),
                rule: rule.clone(),
                authorized: *authorized,
                limit: *limit,
            };
            match source {
                Source::Local(s) => fim::query::events(s, &filter, store.json),
                Source::Fleet(c) => {
                    fim::fleet::query::events(c, &filter, fleet.host.as_deref(), store.json)
                }
            }
        })),
        Command::Sql { statement, store } => Some(query(store, |s, _| {
            fim::query::sql(s, statement, store.json)
        })),
        Command::Diff {
            path,
            from,
            to,
            store,
        } => Some(query(store, |s, _| {
            fim::query::diff(s, bytes(path), from.as_deref(), to.as_deref(), store.json)
        })),
        Command::Status {
            store,
            fleet,
            offline_after,
        } if fleet.fleet => Some(fleet_query(
            |c| fim::fleet::query::status(c, *offline_after, store.json),
            fleet,
        )),
        Command::Status { store, .. } => Some(query(store, |s, path| {
            fim::query::status(s, path, store.json)
        })),
        Command::Scan {
            config, json, now, ..
        } if *now => Some(match scan_now(config.as_deref(), *json) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fim: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }),
        Command::Scan {
            config,
            json,
            rehash,
            ..
        } => Some(match scan(config.as_deref(), *json, *rehash) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e:#}");
                std::process::ExitCode::FAILURE
            }
        }),
        // A bad configuration stops the daemon before anything starts, like check-config.
        Command::Run { config, .. } => match Config::load(config.as_deref()) {
            Ok(_) => None,
            Err(_) => Some(check_config(config.as_deref())),
        },
    }
}

fn print_completions(shell: fim::completions::Shell) -> std::process::ExitCode {
    let script = fim::completions::script(shell, &mut <Cli as clap::CommandFactory>::command());
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("writing the completion script: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn write_man_pages(dir: &Path) -> std::process::ExitCode {
    match fim::manpages::write_all(<Cli as clap::CommandFactory>::command(), dir) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<&Path>) -> std::process::ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}", config.summary());
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors.0 {
                eprintln!("{error}");
            }
            std::process::ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn scan(config_path: Option<&Path>, json: bool, rehash: bool) -> Result<()> {
    let config = Config::load(config_path)
        .map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))?;
    let mut store = Store::open(&config.state_dir)?;
    let checked = std::time::Instant::now();
    let integrity = store
        .check_integrity()
        .context("authenticating the baseline")?;
    log::info!(
        "baseline integrity: {} ({:.2}s)",
        integrity.summary(),
        checked.elapsed().as_secs_f64()
    );
    if integrity.alert() {
        integrity.log_alert();
        store
            .write(&[StoreOp::Health(HealthRecord {
                time_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64),
                kind: "integrity".to_string(),
                backend: None,
                detail: Some(integrity.summary()),
                lost_events: 0,
            })])
            .context("recording the integrity alert")?;
    }
    let options = ScanOptions {
        max_file_size: config.hashing.max_file_size,
        scan_bytes_per_sec: config.hashing.scan_bytes_per_sec,
        content_max_size: config.store.content_max_size,
        progress: std::io::stderr().is_terminal(),
        entries_seen: None,
        rehash,
    };
    // The scan streams against the stored baseline and records each change (attribution
    // unknown: nobody watched while it happened) with the baseline row it explains. Only the
    // drift is kept here, for the report.
    let mut drift = Drift::default();
    let report = baseline::rescan(
        &mut store,
        &config.rules,
        &options,
        &Scope::Everything,
        |item| drift.push(item),
    )
    .context("scanning the watched paths")?;
    for (dir, errno) in &report.unlisted_dirs {
        log::warn!(
            "cannot list {}: {}; files a rule covers inside it are not in the baseline",
            display_path(dir.as_os_str().as_bytes()),
            std::io::Error::from_raw_os_error(*errno)
        );
    }
    let first_scan = report.first_scan;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let stats = &report.stats;
    let health = StoreOp::Health(HealthRecord {
        time_ns: now,
        kind: "scan".to_string(),
        backend: None,
        detail: Some(format!(
            "{} entries, {} hashed, {} reused, {} unreadable, {} unstable, {} too large; {}",
            stats.entries,
            stats.files_hashed,
            stats.hashes_reused,
            stats.unreadable,
            stats.unstable,
            stats.too_large,
            drift.summary()
        )),
        lost_events: 0,
    });
    store.write(&[health]).context("recording the scan")?;
    let retention_ns =
        i64::from(config.store.retention_days).saturating_mul(86_400 * 1_000_000_000);
    store
        .prune(Retention {
            older_than_ns: now.saturating_sub(retention_ns),
            max_changes: config.store.max_changes,
        })
        .context("pruning old rows")?;

    let mut out = std::io::stdout().lock();
    if json {
        let mut value = drift.to_json();
        value["first_scan"] = serde_json::json!(first_scan);
        value["integrity"] = serde_json::json!({
            "alert": integrity.alert(),
            "summary": integrity.summary(),
        });
        value["stats"] = stats.to_json();
        writeln!(out, "{value}")?;
        return Ok(());
    }
    writeln!(
        out,
        "baseline: {} entries ({} hashed, {} unchanged, {} unreadable, {} unstable, {} too large) in {}",
        stats.entries,
        stats.files_hashed,
        stats.hashes_reused,
        stats.unreadable,
        stats.unstable,
        stats.too_large,
        store.path().display()
    )?;
    if first_scan {
        writeln!(out, "drift: none (first scan, baseline created)")?;
        return Ok(());
    }
    writeln!(out, "drift: {}", drift.summary())?;
    // Debug formatting escapes newlines and control characters in hostile names.
    for entry in &drift.added {
        writeln!(out, "  added     {:?}", display_path(&entry.path))?;
    }
    for entry in &drift.removed {
        writeln!(out, "  removed   {:?}", display_path(&entry.path))?;
    }
    for modified in &drift.modified {
        let fields: Vec<&str> = modified.changed.iter().map(|c| c.name()).collect();
        writeln!(
            out,
            "  modified  {:?} ({})",
            display_path(&modified.current.path),
            fields.join(", ")
        )?;
    }
    Ok(())
}

/// `fim scan --now`: the running daemon scans; its outcome is printed like `fim scan`'s.
fn scan_now(config_path: Option<&Path>, json: bool) -> Result<()> {
    let config = Config::load(config_path)
        .map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))?;
    let result = fim::control::request_scan(&config.state_dir, |accepted| {
        if std::io::stderr().is_terminal() {
            match accepted["running"].as_str() {
                Some(kind) => eprintln!(
                    "fim: waiting for the {kind} scan running now to end, then for a new one"
                ),
                None => eprintln!("fim: the daemon is scanning; waiting for it to finish"),
            }
        }
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{result}")?;
    } else {
        fim::control::print_scan_result(&mut out, &result)?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Command::Run {
        kernel_log: true, ..
    } = cli.command
    {
        // The kernel's diagnostics are debug records: asked for, they show whatever RUST_LOG
        // says about other targets.
        logger.filter_module(fim::sensor::kernel_log::TARGET, log::LevelFilter::Debug);
    }
    logger.init();
    if let Some(code) = run_offline_command(&cli.command) {
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            // Handled before the runtime starts.
            Command::Completions { .. }
            | Command::ManPages { .. }
            | Command::Who { .. }
            | Command::Events { .. }
            | Command::Sql { .. }
            | Command::Diff { .. }
            | Command::Status { .. }
            | Command::Fleet { .. }
            | Command::Collector(_) => Ok(()),
            Command::Run {
                backend,
                config,
                kernel_log,
            } => run(backend.map(Backend::from), config.as_deref(), kernel_log).await,
            // Handled before the runtime starts.
            Command::Scan { .. } | Command::CheckConfig { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(forced: Option<Backend>, config_path: Option<&Path>, kernel_log: bool) -> Result<()> {
    let mut settings = Config::load(config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    settings.kernel_log = kernel_log;
    fim::daemon::run(settings, forced).await
}
