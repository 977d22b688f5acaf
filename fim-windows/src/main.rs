//! fim-windows: `run` is the Windows agent; `replay` runs the
//! platform-independent pipeline on an ETW fixture (any OS).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use fim_windows::pipeline::{load_fixture, replay_fixture_with_stats};
use fim_windows::rules::{Config, DEFAULT_CONFIG, RuleSet};

#[derive(Parser)]
#[command(
    name = "fim-windows",
    version,
    about = "fim for Windows: ETW file and registry integrity monitoring, OCSF output"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (Windows only): ETW session + registry baseline, OCSF JSON lines on stdout.
    Run {
        /// TOML config; the built-in rule set is used when absent.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the decoding/rules/OCSF pipeline on an ETW fixture (JSON) and print OCSF lines.
    Replay {
        fixture: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Environment used to expand %VARS% in rules, NAME=VALUE (replay does not read the real environment).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        #[arg(long, default_value = "replay-host")]
        hostname: String,
    },
    /// Check on this Windows host what the ETW providers send for a fixed set of changes
    /// (rename, delete-on-close, new file, cached and mapped writes, a key opened before the
    /// session) and whether fim decodes it right; exits 1 if a check fails. Needs Administrator.
    Selftest,
    /// Validate a config file.
    CheckConfig { config: PathBuf },
    /// Print the built-in rule set.
    DefaultConfig,
}

fn load_config(path: Option<&PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::builtin()),
    }
}

/// Replay's default environment mirrors a stock Windows install.
fn replay_env(pairs: &[String]) -> Result<Vec<(String, String)>> {
    let mut env = vec![
        ("windir".to_string(), r"C:\Windows".to_string()),
        ("SystemRoot".to_string(), r"C:\Windows".to_string()),
        ("ProgramData".to_string(), r"C:\ProgramData".to_string()),
        ("ProgramFiles".to_string(), r"C:\Program Files".to_string()),
    ];
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?}: expected NAME=VALUE"))?;
        env.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let config = load_config(config.as_ref())?;
            run_agent(config)
        }
        Command::Replay {
            fixture,
            config,
            env,
            hostname,
        } => {
            let config = load_config(config.as_ref())?;
            let env = replay_env(&env)?;
            let lookup = |name: &str| {
                env.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let rules = RuleSet::compile(&config, &lookup, None)?;
            let fixture = load_fixture(&fixture)?;
            let (records, stats) = replay_fixture_with_stats(&fixture, rules, &hostname);
            for record in records {
                println!("{record}");
            }
            if let Some(summary) = stats.summary() {
                eprintln!("fim-windows: decoder: {summary}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest => run_selftest(),
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            println!(
                "ok: {} file rules, {} registry rules",
                config.file_rules.len(),
                config.registry_rules.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::DefaultConfig => {
            print!("{}", DEFAULT_CONFIG.trim_start());
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(windows)]
fn run_agent(config: Config) -> Result<ExitCode> {
    fim_windows::windows::agent::run(config)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(windows))]
fn run_agent(_config: Config) -> Result<ExitCode> {
    eprintln!(
        "fim-windows: `run` needs Windows (ETW and the registry). On this system use `fim-windows replay FIXTURE.json` \
         to run the same pipeline on recorded events, or the Linux fim daemon."
    );
    Ok(ExitCode::from(2))
}

#[cfg(windows)]
fn run_selftest() -> Result<ExitCode> {
    Ok(if fim_windows::windows::selftest::run()? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(not(windows))]
fn run_selftest() -> Result<ExitCode> {
    eprintln!(
        "fim-windows: `selftest` needs Windows: it checks what the live ETW providers send. \
         See docs/windows.md for what it prints."
    );
    Ok(ExitCode::from(2))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fim-windows: {e:#}");
            ExitCode::FAILURE
        }
    }
}
