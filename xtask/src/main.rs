//! `cargo xtask`: everything a newcomer or CI needs, in one place.
//!
//! - `setup`: install what a fresh machine lacks (idempotent, quick when done)
//! - `build`: build fim (release), with the embedded eBPF object
//! - `run`: setup if needed, build, run `fim run` in the foreground (as root)
//! - `test`: the whole test suite: fmt, clippy (host, eBPF, Windows), the fim-windows.exe build,
//!   unit, native integration, a short fuzz run, Wine and VM tests
//! - `vm-test`: the kernel tests in QEMU on the Debian 6.1 and 6.12 kernels
//! - `vm-run`: a shell script run in a test kernel's VM with fim, for trying scenarios
//! - `fuzz`: the cargo-fuzz targets (decoder, config, ocsf), 10 minutes each by default
//! - `completions`: bash, zsh and fish completions for `fim`
//! - `package`: the Debian package `fim_<version>_amd64.deb`
//! - `install`: the release binary, the systemd unit, the completions and the manual pages,
//!   system-wide

mod bench;
mod cmd;
mod deb;
#[cfg(test)]
mod docs;
mod fuzz;
mod install;
mod paths;
mod setup;
mod testing;
mod vm;
mod vm_run;
mod windows;

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "fim's developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything a fresh machine lacks (nightly rust-src, bpf-linker, Debian packages,
    /// the VM test kernels, the Windows target with MinGW and a Wine prefix). Skips what is
    /// already there.
    Setup {
        /// Only what building fim needs (no QEMU, no test kernels).
        #[arg(long)]
        build_only: bool,
        /// Also what `cargo xtask bench scan` compares with: b3sum (pinned) and Debian's
        /// AIDE (without its daily-check cron job). The benchmark installs them itself too.
        #[arg(long)]
        bench: bool,
    },
    /// Build the `fim` binary (release) with its embedded eBPF object.
    Build,
    /// Set up what building needs, build, and run `fim run` in the foreground (needs root).
    Run {
        /// Arguments passed to `fim run`, e.g. `-- --backend tracepoint`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the whole test suite: fmt, clippy, unit tests, native integration tests, 20 s of
    /// each fuzz target, the fim-windows checks (Windows clippy, .exe build, tests under Wine), VM tests.
    Test {
        /// Skip the QEMU kernel tests (for quick local iterations only; CI never skips them).
        #[arg(long)]
        no_vm: bool,
    },
    /// Benchmarks: `sensor` (workload cost without fim and with each backend that starts
    /// here), `pipeline` (the daemon's user-space throughput with injected records), `who`
    /// (`fim who` on a store of 10 million change rows), `fleet` (publishing, kernel to
    /// PostgreSQL latency, publishing's CPU cost, `who --fleet`, rules put to applied),
    /// `scan` (fim scan vs b3sum and AIDE on the same tree), `memory` (peak RSS of fim scan
    /// over a million files).
    Bench {
        /// Which benchmark: sensor, pipeline, who, fleet, scan or memory.
        what: String,
        /// Arguments for the benchmark, e.g. `-- --rounds 9 --iterations 20000` (sensor),
        /// `-- --rounds 3 --tree /usr/lib [--no-aide]` (scan), `-- --files 1000000` (memory).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Three fleet hosts, a 3-node NATS JetStream cluster and PostgreSQL on this machine
    /// (loopback, temporary directory), the collector, a rules push and the fleet queries.
    FleetDemo,
    /// Generate bash, zsh and fish completions for `fim` (builds the release binary).
    Completions {
        /// Directory for `fim` (bash), `_fim` (zsh) and `fim.fish` (default target/completions).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Install fim as a service: /usr/local/bin/fim, /etc/systemd/system/fim.service, the
    /// shell completions and the manual pages (needs root); then `systemctl enable --now fim`.
    Install {
        /// Install below this directory instead of / (to stage a package).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Fuzz the kernel-record decoder, the configuration parser and the OCSF output (cargo-fuzz,
    /// nightly). Fails when a target crashes; crash inputs land in fuzz/artifacts/<target>/.
    /// `cargo xtask test` runs each target for 20 s.
    Fuzz {
        /// Which target: decoder, config or ocsf (default: all three, one after the other).
        target: Option<String>,
        /// How long to fuzz each target.
        #[arg(long, default_value_t = fuzz::LONG_RUN_SECONDS)]
        seconds: u64,
        /// Build with AddressSanitizer (slower; for memory errors in unsafe code).
        #[arg(long)]
        asan: bool,
    },
    /// Build the Debian package target/package/fim_<version>_amd64.deb (release binary, unit,
    /// /etc/fim/fim.toml as a conffile, manual pages, completions, alert rules, docs).
    Package {
        /// The Debian version (default: the workspace version).
        #[arg(long)]
        version: Option<String>,
        /// Directory for the package (default target/package).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the kernel tests inside QEMU on the Debian test kernels.
    VmTest {
        /// Which kernel: 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Run only the tests whose names contain one of these (libtest filters); for work
        /// on one scenario. Repeatable.
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Boot a test kernel with fim (release, static), busybox and the test actor, run a shell
    /// script inside and print its output; exits with the script's exit status. For trying a
    /// scenario on the lsm or fentry backend (docs/vm-run.md).
    VmRun(vm_run::Args),
}

/// `cargo xtask fuzz`: what building the targets needs, then the run and its closing line.
fn fuzz_task(target: Option<&str>, seconds: u64, asan: bool) -> Result<bool> {
    setup::run(setup::Scope::Build)?;
    setup::ensure_cargo_fuzz()?;
    let names = match target {
        Some(name) => vec![name],
        None => fuzz::all(),
    };
    let counts = fuzz::run(&names, seconds, asan, false)?;
    counts.print_closing("fuzz");
    Ok(counts.failed == 0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<bool> = match cli.task {
        Task::Setup { build_only, bench } => setup::run_with(
            if build_only {
                setup::Scope::Build
            } else {
                setup::Scope::All
            },
            bench,
        )
        .map(|_| true),
        Task::Build => testing::build_release().map(|_| true),
        Task::Run { args } => testing::run_fim(&args).map(|_| true),
        Task::Test { no_vm } => testing::run_all(!no_vm),
        Task::Bench { what, args } => testing::bench(&what, &args).map(|_| true),
        Task::FleetDemo => testing::fleet_demo().map(|_| true),
        Task::Completions { out } => install::completions(out.as_deref()).map(|_| true),
        Task::Install { root } => install::install(&root).map(|_| true),
        Task::Package { version, out } => install::package(version.as_deref(), out.as_deref()),
        Task::Fuzz {
            target,
            seconds,
            asan,
        } => fuzz_task(target.as_deref(), seconds, asan),
        Task::VmRun(args) => match vm_run::run(&args) {
            Ok(code) => return ExitCode::from(code),
            Err(error) => Err(error),
        },
        Task::VmTest { kernel, filter } => vm::run(&kernel, &filter).map(|counts| {
            counts.print_closing("total");
            counts.failed == 0
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
