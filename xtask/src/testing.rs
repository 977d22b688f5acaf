//! `cargo xtask build|run|test`.

use std::{os::unix::process::CommandExt, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, Counts},
    fuzz, paths, setup, vm, vm_run, windows,
};

pub(crate) fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(paths::workspace());
    c
}

pub fn build_release() -> Result<()> {
    cmd::step("building fim (release)");
    cmd::run(cargo().args([
        "build",
        "--release",
        "--package",
        "fim-userspace",
        "--bin",
        "fim",
    ]))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Setup (build part), build, then replace this process with `fim run ARGS`.
pub fn run_fim(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "fim loads eBPF programs and must run as root: run `sudo -E env PATH=\"$PATH\" cargo xtask run`"
        );
    }
    setup::run(setup::Scope::Build)?;
    build_release()?;
    let fim = paths::target().join("release").join("fim");
    cmd::step(&format!(
        "starting {} run {}",
        fim.display(),
        args.join(" ")
    ));
    let error = Command::new(&fim).arg("run").args(args).exec();
    Err(error).with_context(|| format!("executing {}", fim.display()))
}

/// Builds binaries of the test crate (benchmark harnesses, the fleet's stand-in host).
fn build_harness(bins: &[&str], release: bool) -> Result<()> {
    let profile = if release { "release" } else { "debug" };
    cmd::step(&format!("building {} ({profile})", bins.join(", ")));
    let mut build = cargo();
    build.args(["build", "--package", "fim-tests"]);
    if release {
        build.arg("--release");
    }
    for bin in bins {
        build.args(["--bin", bin]);
    }
    cmd::run(&mut build)
}

/// `cargo xtask bench WHAT`: builds the harness in release mode and runs it (as root).
pub fn bench(what: &str, args: &[String]) -> Result<()> {
    let bin = match what {
        "sensor" => "fim-sensor-bench",
        "pipeline" => "fim-pipeline-bench",
        "who" => {
            build_release()?;
            build_harness(&["fim-who-bench"], true)?;
            let fim = paths::target().join("release").join("fim");
            return cmd::run(
                Command::new(paths::target().join("release").join("fim-who-bench"))
                    .current_dir(paths::workspace())
                    .arg("--fim")
                    .arg(&fim)
                    .args(args),
            );
        }
        "fleet" => return fleet_bench(args),
        "scan" => return crate::bench::scan(args),
        "memory" => return crate::bench::memory(args),
        other => {
            bail!(
                "unknown benchmark {other:?}; available: sensor, pipeline, who, fleet, scan, memory"
            )
        }
    };
    if what == "sensor" && args.first().map(String::as_str) == Some("--vm") {
        setup::run(setup::Scope::All)?;
        return crate::vm::bench(&args[1..]);
    }
    if what == "sensor" && !is_root() {
        bail!("the {what} benchmark loads eBPF programs and must run as root");
    }
    setup::run(setup::Scope::Build)?;
    build_harness(&[bin], true)?;
    let out = paths::target().join("bench").join(format!("{what}.json"));
    cmd::step(&format!("running the {what} benchmark"));
    cmd::run(
        Command::new(paths::target().join("release").join(bin))
            .current_dir(paths::workspace())
            .args(args)
            .arg("--out")
            .arg(&out),
    )
}

/// `cargo xtask bench fleet`: the fleet's figures on servers it starts itself (as root: the
/// real daemon loads its eBPF programs). Release builds of fim, the stand-in host and the
/// harness.
fn fleet_bench(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the fleet benchmark runs fim run (eBPF) and PostgreSQL: run it as root");
    }
    setup::run(setup::Scope::All)?;
    build_release()?;
    build_harness(&["fim-fleet-agent", "fim-fleet-bench"], true)?;
    cmd::step("running the fleet benchmark");
    cmd::run(
        Command::new(paths::target().join("release").join("fim-fleet-bench"))
            .current_dir(paths::workspace())
            .args(args),
    )
}

/// `cargo xtask fleet-demo`: builds fim and the demo, then runs it.
pub fn fleet_demo() -> Result<()> {
    setup::run(setup::Scope::All)?;
    cmd::step("building fim and the fleet demo");
    cmd::run(cargo().args(["build", "--package", "fim-userspace", "--bin", "fim"]))?;
    build_harness(&["fim-fleet-agent", "fim-fleet-demo"], false)?;
    let demo = paths::target().join("debug").join("fim-fleet-demo");
    let error = Command::new(&demo).exec();
    Err(error).with_context(|| format!("executing {}", demo.display()))
}

/// The whole suite. Returns whether everything passed; prints the closing counts.
pub fn run_all(with_vm: bool) -> Result<bool> {
    let started = Instant::now();
    // A fresh machine must be able to run the suite with this one command.
    setup::run(setup::Scope::All).context("setup failed; the test suite cannot run")?;
    let mut phases: Vec<(&str, Counts)> = Vec::new();
    let mut gate_failures = Vec::new();

    cmd::step("cargo fmt --check");
    if let Err(e) = cmd::run(cargo().args(["fmt", "--all", "--", "--check"])) {
        gate_failures.push(format!("formatting: {e:#}"));
    }
    cmd::step("clippy -D warnings (host crates, all targets)");
    if let Err(e) = cmd::run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"])) {
        gate_failures.push(format!("clippy (host): {e:#}"));
    }
    cmd::step("clippy -D warnings (eBPF crate, bpfel-unknown-none)");
    if let Err(e) = cmd::run(
        cmd::clean_cargo_env(&mut Command::new("rustup"))
            .current_dir(paths::workspace())
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "fim-ebpf",
                "--release",
                // The log calls too (the build without them only leaves empty functions).
                "--features",
                "kernel-log",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
            ])
            .arg(paths::target().join("ebpf"))
            .args(["--", "-D", "warnings"]),
    ) {
        gate_failures.push(format!("clippy (eBPF): {e:#}"));
    }
    if let Err(e) = windows::clippy(cargo()) {
        gate_failures.push(format!("clippy (Windows): {e:#}"));
    }
    if let Err(e) = windows::build_exe(cargo()) {
        gate_failures.push(format!("fim-windows.exe: {e:#}"));
    }

    cmd::step("unit tests and native integration tests (as root)");
    if !is_root() {
        eprintln!("FAILURE: the native integration tests load eBPF programs and need root");
        phases.push((
            "native",
            Counts {
                passed: 0,
                failed: 1,
            },
        ));
    } else {
        phases.push((
            "native",
            cmd::run_counting(cargo().args(["test", "--no-fail-fast"]))?,
        ));
    }

    // After the native tests, so the eBPF object fim-userspace embeds is already built.
    let fuzz_targets = fuzz::all();
    cmd::step(&format!(
        "fuzzing ({} targets, {} s each)",
        fuzz_targets.len(),
        fuzz::TEST_SECONDS
    ));
    match fuzz::run(&fuzz_targets, fuzz::TEST_SECONDS, false, true) {
        Ok(counts) => phases.push(("fuzz", counts)),
        Err(e) => {
            eprintln!("FAILURE: the fuzz targets could not run: {e:#}");
            phases.push((
                "fuzz",
                Counts {
                    passed: 0,
                    failed: fuzz_targets.len() as u64,
                },
            ));
        }
    }

    match windows::wine_tests(cargo()) {
        Ok(counts) => phases.push(("wine", counts)),
        Err(e) => {
            eprintln!("FAILURE: the Wine tests could not run: {e:#}");
            phases.push((
                "wine",
                Counts {
                    passed: 0,
                    failed: 1,
                },
            ));
        }
    }

    if with_vm {
        cmd::step("VM kernel tests (6.1 and 6.12)");
        match vm::run("all", &[]) {
            Ok(counts) => phases.push(("vm", counts)),
            Err(e) => {
                eprintln!("FAILURE: VM tests could not run: {e:#}");
                phases.push((
                    "vm",
                    Counts {
                        passed: 0,
                        failed: 1,
                    },
                ));
            }
        }
        cmd::step("cargo xtask vm-run on both kernels (the example script)");
        match vm_run::check() {
            Ok(counts) => phases.push(("vm-run", counts)),
            Err(e) => {
                eprintln!("FAILURE: the vm-run check could not run: {e:#}");
                phases.push((
                    "vm-run",
                    Counts {
                        passed: 0,
                        failed: 1,
                    },
                ));
            }
        }
    } else {
        println!("NOTE: VM kernel tests skipped (--no-vm); CI never skips them");
    }

    println!();
    println!("summary ({:.0}s):", started.elapsed().as_secs_f64());
    for failure in &gate_failures {
        println!("  FAILED gate: {failure}");
    }
    let mut total = Counts::default();
    for (name, counts) in &phases {
        println!(
            "  {name}: {} passed, {} failed",
            counts.passed, counts.failed
        );
        total.add(*counts);
    }
    total.failed += gate_failures.len() as u64;
    total.print_closing("total");
    Ok(total.failed == 0)
}
