//! Running commands with clear messages, and reading test counts out of their output.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Prints a step header so long runs are easy to follow.
pub fn step(what: &str) {
    println!("==> {what}");
}

/// Describes a command for messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs a command with inherited stdio; fails with the command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails when it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", describe(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command can be started and succeeds (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Removes the variables an outer cargo exports for its own toolchain, so a nested cargo (for
/// the nightly eBPF build, or another target) chooses its own.
pub fn clean_cargo_env(cmd: &mut Command) -> &mut Command {
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Passed and failed test counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
    }

    /// The plain closing line, `LABEL: N passed, N failed`.
    pub fn print_closing(&self, label: &str) {
        println!("{label}: {} passed, {} failed", self.passed, self.failed);
    }

    /// Reads libtest's `test result: ok. 3 passed; 1 failed; ...` line.
    pub fn parse_libtest_summary(line: &str) -> Option<Counts> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let number_before = |word: &str| -> Option<u64> {
            let idx = rest.find(word)?;
            rest[..idx]
                .trim_end()
                .rsplit([' ', '.', ';'])
                .next()?
                .parse()
                .ok()
        };
        Some(Counts {
            passed: number_before(" passed")?,
            failed: number_before(" failed")?,
        })
    }
}

/// Runs `cargo test`-like commands, echoing output and summing libtest's result lines. A
/// non-zero exit with no failure counted (a build error, a crash) counts as one failure.
pub fn run_counting(cmd: &mut Command) -> Result<Counts> {
    cmd.stdout(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", describe(cmd)))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        println!("{line}");
        if let Some(c) = Counts::parse_libtest_summary(&line) {
            counts.add(c);
        }
    }
    let status = child.wait()?;
    if !status.success() && counts.failed == 0 {
        eprintln!(
            "`{}` failed ({status}) without a failing test: counted as one failure",
            describe(cmd)
        );
        counts.failed += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn parses_libtest_summaries() {
        let c = Counts::parse_libtest_summary(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
        )
        .unwrap();
        assert_eq!((c.passed, c.failed), (3, 2));
        let c = Counts::parse_libtest_summary("test result: ok. 12 passed; 0 failed; 1 ignored")
            .unwrap();
        assert_eq!((c.passed, c.failed), (12, 0));
        assert!(Counts::parse_libtest_summary("test foo ... ok").is_none());
    }
}
