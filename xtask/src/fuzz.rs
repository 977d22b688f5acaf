//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (libFuzzer, nightly toolchain), for a
//! long run by hand and for the short fuzz phase of `cargo xtask test`.
//!
//! Built without a sanitizer by default: the code under test is safe Rust apart from one
//! bounds-checked unaligned read, overflow checks and debug assertions stay on, and the config
//! target runs about five times as many inputs per second as under AddressSanitizer. `--asan`
//! builds with AddressSanitizer into `fuzz/target/asan` (its own target dir, so switching does
//! not rebuild everything each time).
//!
//! Corpus discipline: `fuzz/corpus/<target>/` holds the committed seeds and is only read.
//! libFuzzer writes the inputs it finds into the first corpus directory it is given, so every
//! run gets `fuzz/scratch/<target>/` first (git-ignored, kept between local runs so a long run
//! goes on from the last one) and the seeds second. Crashes land in `fuzz/artifacts/<target>/`
//! (git-ignored); each one becomes a regression test in the crate that owns the code.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, Counts},
    paths,
};

/// One fuzz target (`fuzz/fuzz_targets/<name>.rs`).
pub struct Target {
    pub name: &'static str,
    /// Longest input tried (`-max_len`).
    pub max_len: usize,
}

pub const TARGETS: &[Target] = &[
    // A record header (120 bytes) and two paths of up to 4096 bytes, and a little more.
    Target {
        name: "decoder",
        max_len: 8448,
    },
    Target {
        name: "config",
        max_len: 8192,
    },
    Target {
        name: "ocsf",
        max_len: 4096,
    },
];

/// Seconds per target of `cargo xtask fuzz` (the long run by hand).
pub const LONG_RUN_SECONDS: u64 = 600;
/// Seconds per target of the fuzz phase of `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;

/// Memory limit of one fuzzing process (libFuzzer counts it as a failure when exceeded).
const RSS_LIMIT_MB: u32 = 2048;
/// One input running longer than this is a failure (a hang).
const INPUT_TIMEOUT_SECONDS: u32 = 30;

fn fuzz_dir() -> PathBuf {
    paths::workspace().join("fuzz")
}

/// `rustup run nightly cargo fuzz` from the workspace, clean of the outer cargo's toolchain.
fn cargo_fuzz() -> Command {
    let mut c = Command::new("rustup");
    cmd::clean_cargo_env(&mut c);
    c.current_dir(paths::workspace())
        .args(["run", "nightly", "cargo", "fuzz"]);
    c
}

/// The build options `cargo fuzz build` and `cargo fuzz run` both get.
fn build_options(cmd: &mut Command, asan: bool) {
    if asan {
        cmd.args(["--sanitizer", "address", "--target-dir"])
            .arg(fuzz_dir().join("target").join("asan"));
    } else {
        cmd.args(["--sanitizer", "none"]);
    }
}

fn select(names: &[&str]) -> Result<Vec<&'static Target>> {
    names
        .iter()
        .map(|name| {
            TARGETS.iter().find(|t| t.name == *name).with_context(|| {
                let known: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                format!("unknown fuzz target {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Builds the targets, then fuzzes each for `seconds`. Passed: targets that ran clean; failed:
/// targets that crashed or could not build or run. `asan`: with AddressSanitizer. `quiet`
/// leaves out libFuzzer's progress lines (the test suite's log); everything else it prints is
/// shown.
pub fn run(names: &[&str], seconds: u64, asan: bool, quiet: bool) -> Result<Counts> {
    let targets = select(names)?;
    cmd::step(&format!(
        "building fuzz target(s) {} (nightly, {})",
        names.join(", "),
        if asan {
            "AddressSanitizer"
        } else {
            "no sanitizer"
        }
    ));
    let mut build = cargo_fuzz();
    build.arg("build").arg("--fuzz-dir").arg(fuzz_dir());
    build_options(&mut build, asan);
    if let [one] = targets.as_slice() {
        build.arg(one.name);
    }
    if let Err(e) = cmd::run(&mut build) {
        eprintln!("FAILURE: the fuzz targets do not build: {e:#}");
        return Ok(Counts {
            passed: 0,
            failed: targets.len() as u64,
        });
    }
    let mut outcomes = Vec::new();
    for target in targets {
        cmd::step(&format!("fuzzing {} for {seconds} s", target.name));
        let outcome = run_one(target, seconds, asan, quiet).unwrap_or_else(|e| {
            eprintln!("FAILURE: fuzz target {} could not run: {e:#}", target.name);
            Outcome::not_run(target.name)
        });
        outcomes.push(outcome);
    }
    let mut counts = Counts::default();
    println!();
    for outcome in &outcomes {
        outcome.print();
        if outcome.clean() {
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    if counts.failed > 0 {
        println!(
            "  a crash input is in fuzz/artifacts/<target>/: reproduce it with \
             `rustup run nightly cargo fuzz run --sanitizer none <target> <file>` (the \
             reproduce line above has the exact options), fix the code, and keep the input as a \
             regression #[test] in the crate that owns the code"
        );
    }
    Ok(counts)
}

struct Outcome {
    name: &'static str,
    ran: bool,
    succeeded: bool,
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
    seconds: f64,
    /// Inputs in the scratch corpus after the run.
    corpus: usize,
    /// Crash, leak, timeout and out-of-memory inputs this run left in fuzz/artifacts.
    new_failures: Vec<PathBuf>,
}

impl Outcome {
    fn not_run(name: &'static str) -> Outcome {
        Outcome {
            name,
            ran: false,
            succeeded: false,
            runs: None,
            execs_per_sec: None,
            seconds: 0.0,
            corpus: 0,
            new_failures: Vec::new(),
        }
    }

    fn clean(&self) -> bool {
        self.ran && self.succeeded && self.new_failures.is_empty()
    }

    fn print(&self) {
        let verdict = if self.clean() { "clean" } else { "FAILED" };
        let runs = self.runs.map_or("?".to_string(), |r| r.to_string());
        let rate = self
            .execs_per_sec
            .map_or("?".to_string(), |r| r.to_string());
        println!(
            "  fuzz {}: {verdict}, {runs} runs in {:.0} s ({rate}/s), corpus {} inputs, new crashes {}",
            self.name,
            self.seconds,
            self.corpus,
            self.new_failures.len()
        );
        for failure in &self.new_failures {
            println!("    {}", failure.display());
        }
        if !self.ran {
            println!("    did not run");
        } else if !self.succeeded && self.new_failures.is_empty() {
            println!("    libFuzzer failed without leaving an input (see its output above)");
        }
    }
}

/// The failure inputs libFuzzer leaves (`crash-`, `leak-`, `timeout-`, `oom-` + hash).
fn failure_inputs(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut found = BTreeSet::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if ["crash-", "leak-", "timeout-", "oom-"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            found.insert(path);
        }
    }
    Ok(found)
}

/// The number after `key` in a libFuzzer line (`Done 123 runs`, `stat::...: 123`).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn run_one(target: &Target, seconds: u64, asan: bool, quiet: bool) -> Result<Outcome> {
    let scratch = fuzz_dir().join("scratch").join(target.name);
    let seeds = fuzz_dir().join("corpus").join(target.name);
    let artifacts = fuzz_dir().join("artifacts").join(target.name);
    if !seeds.is_dir() {
        bail!("no seed corpus at {}", seeds.display());
    }
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let before = failure_inputs(&artifacts)?;

    let mut run = cargo_fuzz();
    run.arg("run").arg("--fuzz-dir").arg(fuzz_dir());
    build_options(&mut run, asan);
    run.arg(target.name)
        .arg(&scratch)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", target.max_len))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = run
        .spawn()
        .with_context(|| format!("starting `{}`", cmd::describe(&run)))?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut runs = None;
    let mut execs_per_sec = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        let progress = line.starts_with('#')
            && [" NEW ", " REDUCE ", " pulse ", " RELOAD "]
                .iter()
                .any(|w| line.contains(w));
        if !(quiet && progress) {
            eprintln!("{line}");
        }
        if let Some(n) = number_after(&line, "stat::number_of_executed_units:") {
            runs = Some(n);
        } else if line.starts_with("Done ") && runs.is_none() {
            runs = number_after(&line, "Done ");
        }
        if let Some(n) = number_after(&line, "stat::average_exec_per_sec:") {
            execs_per_sec = Some(n);
        }
    }
    let status = child.wait()?;
    let seconds_taken = started.elapsed().as_secs_f64();
    let after = failure_inputs(&artifacts)?;
    let corpus = fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
    Ok(Outcome {
        name: target.name,
        ran: true,
        succeeded: status.success(),
        runs,
        execs_per_sec,
        seconds: seconds_taken,
        corpus,
        new_failures: after.difference(&before).cloned().collect(),
    })
}

/// All targets, by name.
pub fn all() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_numbers() {
        assert_eq!(
            number_after(
                "stat::number_of_executed_units: 1234567",
                "stat::number_of_executed_units:"
            ),
            Some(1234567)
        );
        assert_eq!(
            number_after("Done 98765 runs in 21 second(s)", "Done "),
            Some(98765)
        );
        assert_eq!(number_after("#1 INITED cov: 2", "Done "), None);
    }

    #[test]
    fn every_target_has_a_seed_corpus_and_a_source() {
        for target in TARGETS {
            let dir = fuzz_dir().join("corpus").join(target.name);
            assert!(
                dir.read_dir().is_ok_and(|mut d| d.next().is_some()),
                "{}",
                dir.display()
            );
            let source = fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{}.rs", target.name));
            assert!(source.is_file(), "{}", source.display());
        }
        assert!(select(&["nope"]).is_err());
    }
}
