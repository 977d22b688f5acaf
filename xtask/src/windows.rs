//! fim-windows, the Windows sibling crate: what its checks need on a Linux machine (the mingw
//! target, Wine, a Wine prefix with the ProcessPrng shim) and the checks themselves (clippy for
//! the Windows target, the release `.exe`, the test suite under Wine).
//!
//! Its Linux unit and fixture tests need nothing of this: they run in the workspace `cargo test`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    cmd::{self, Counts},
    paths,
    setup::Apt,
};

/// The Rust target fim-windows.exe is built for (MinGW-w64 toolchain, linked by
/// `x86_64-w64-mingw32-gcc`).
pub const TARGET: &str = "x86_64-pc-windows-gnu";

/// Debian packages: the MinGW-w64 C toolchain (Rust's linker for the target, and the shim's
/// compiler) and Wine (64-bit loader), which runs the Windows test binaries.
const PACKAGES: &[&str] = &["gcc-mingw-w64-x86-64", "wine", "wine64"];

/// How long creating a Wine prefix may take before setup gives up.
const WINEBOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Source of the test-only `bcryptprimitives.dll` (Wine 8.0 lacks `ProcessPrng`, which Rust's
/// std calls for random numbers).
fn shim_source() -> PathBuf {
    paths::workspace().join("fim-windows/wine/processprng_shim.c")
}

const SHIM_COMPILER: &str = "x86_64-w64-mingw32-gcc";
const SHIM_FLAGS: &[&str] = &["-shared", "-O2"];
const SHIM_LIBS: &[&str] = &["-ladvapi32"];
const SHIM_DLL: &str = "bcryptprimitives.dll";

/// The Wine prefix for the tests: `FIM_WINEPREFIX`, else `<cache>/wineprefix`.
pub fn wine_prefix() -> PathBuf {
    std::env::var_os("FIM_WINEPREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::cache().join("wineprefix"))
}

/// Sets the environment every Wine command of ours runs with: our prefix, no debug chatter, no
/// display (setup and tests are headless; Wine then shows no dialogs).
fn wine_env(cmd: &mut Command) -> &mut Command {
    cmd.env("WINEPREFIX", wine_prefix())
        .env("WINEDEBUG", "-all")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
}

/// Setup for fim-windows (part of `cargo xtask setup`): idempotent, quick when done.
pub fn setup(apt: &mut Apt) -> Result<()> {
    ensure_rust_target()?;
    apt.ensure_packages(PACKAGES)?;
    ensure_wine_prefix()?;
    ensure_shim()
}

fn ensure_rust_target() -> Result<()> {
    cmd::step(&format!(
        "Rust target {TARGET} (fim-windows.exe and its tests)"
    ));
    // No clean_cargo_env: the target must be added to the toolchain this cargo runs with, which
    // is the one the checks below use.
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == TARGET) {
        println!("    present");
        return Ok(());
    }
    println!("    installing");
    cmd::run(Command::new("rustup").args(["target", "add", TARGET]))
}

fn ensure_wine_prefix() -> Result<()> {
    let prefix = wine_prefix();
    cmd::step(&format!("Wine prefix {}", prefix.display()));
    if prefix_ready(&prefix) {
        println!("    present");
        return Ok(());
    }
    if let Some(parent) = prefix.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let log = paths::cache().join("wineboot.log");
    println!(
        "    creating it with `wineboot -i` (about a minute; log: {})",
        log.display()
    );
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut wineboot = Command::new("wineboot");
    wine_env(&mut wineboot)
        .arg("-i")
        // The .NET and HTML engines (Mono, Gecko) would be offered for download; the tests need
        // neither.
        .env("WINEDLLOVERRIDES", "mscoree=d;mshtml=d")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    run_with_timeout(&mut wineboot, WINEBOOT_TIMEOUT)
        .with_context(|| format!("creating the Wine prefix failed (see {})", log.display()))?;
    // wineboot returns before the server has written the registry files.
    cmd::run(wine_env(&mut Command::new("wineserver")).arg("-w"))?;
    ensure!(
        prefix_ready(&prefix),
        "`wineboot -i` finished but {} has no system.reg or system32 (see {})",
        prefix.display(),
        log.display()
    );
    Ok(())
}

fn prefix_ready(prefix: &Path) -> bool {
    prefix.join("system.reg").is_file() && system32(prefix).is_dir()
}

fn system32(prefix: &Path) -> PathBuf {
    prefix.join("drive_c/windows/system32")
}

/// Builds the ProcessPrng shim into the prefix's system32. The inputs of the installed build (the
/// source and the compiler command) and the built DLL are kept in `<prefix>/.fim-shim/`; it is
/// rebuilt when the source or the command changed, or when the DLL in system32 is no longer ours
/// (a Wine upgrade refreshes system32).
fn ensure_shim() -> Result<()> {
    cmd::step(&format!(
        "ProcessPrng shim ({SHIM_DLL} in the Wine prefix, test-only)"
    ));
    let source_path = shim_source();
    let source =
        fs::read(&source_path).with_context(|| format!("reading {}", source_path.display()))?;
    let prefix = wine_prefix();
    let sys32 = system32(&prefix);
    let installed = sys32.join(SHIM_DLL);
    let stamp_dir = prefix.join(".fim-shim");
    let stamp_source = stamp_dir.join("processprng_shim.c");
    let stamp_command = stamp_dir.join("command");
    let built = stamp_dir.join(SHIM_DLL);
    let command_line = shim_command_line();

    let same = |path: &Path, want: &[u8]| fs::read(path).ok().as_deref() == Some(want);
    let up_to_date = same(&stamp_source, &source)
        && same(&stamp_command, command_line.as_bytes())
        && fs::read(&built)
            .ok()
            .is_some_and(|dll| same(&installed, &dll));
    if up_to_date {
        println!("    up to date");
        return Ok(());
    }

    println!("    building it from {}", source_path.display());
    fs::create_dir_all(&stamp_dir).with_context(|| format!("creating {}", stamp_dir.display()))?;
    // Forget the old build first, so an interrupted rebuild is redone.
    let _ = fs::remove_file(&stamp_source);
    cmd::run(
        Command::new(SHIM_COMPILER)
            .args(SHIM_FLAGS)
            .arg("-o")
            .arg(&built)
            .arg(&source_path)
            .args(SHIM_LIBS),
    )
    .context("building the ProcessPrng shim failed (is gcc-mingw-w64-x86-64 installed?)")?;
    fs::copy(&built, &installed)
        .with_context(|| format!("copying {} to {}", built.display(), installed.display()))?;
    fs::write(&stamp_command, &command_line)
        .with_context(|| format!("writing {}", stamp_command.display()))?;
    fs::write(&stamp_source, &source)
        .with_context(|| format!("writing {}", stamp_source.display()))?;
    Ok(())
}

fn shim_command_line() -> String {
    let mut words = vec![SHIM_COMPILER];
    words.extend(SHIM_FLAGS);
    words.extend(SHIM_LIBS);
    words.join(" ") + "\n"
}

/// Runs a command to completion, killing it after `limit`.
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<()> {
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", cmd::describe(cmd)))?;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("`{}` failed: {status}", cmd::describe(cmd));
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{}` did not finish within {}s",
                cmd::describe(cmd),
                limit.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Gate: clippy on fim-windows for the Windows target (its `cfg(windows)` code: ETW, registry,
/// process enrichment), all targets, warnings denied.
pub fn clippy(mut cargo: Command) -> Result<()> {
    cmd::step(&format!(
        "clippy -D warnings (fim-windows, {TARGET}, all targets)"
    ));
    cmd::run(
        cargo
            .args(["clippy", "--package", "fim-windows", "--target", TARGET])
            .args(["--all-targets", "--", "-D", "warnings"]),
    )
}

/// Gate: the release fim-windows.exe, built with MinGW, must be a PE32+ x86-64 executable.
pub fn build_exe(mut cargo: Command) -> Result<()> {
    cmd::step(&format!("fim-windows.exe (release, {TARGET}) is PE32+"));
    cmd::run(cargo.args([
        "build",
        "--package",
        "fim-windows",
        "--release",
        "--target",
        TARGET,
    ]))?;
    let exe = paths::target().join(TARGET).join("release/fim-windows.exe");
    let bytes = fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    check_pe32_plus_x64(&bytes).with_context(|| format!("{}", exe.display()))?;
    println!("    {}: PE32+ x86-64, {} bytes", exe.display(), bytes.len());
    Ok(())
}

/// PE checks without `file`: `MZ`, `PE\0\0` at `e_lfanew`, machine AMD64, optional-header magic
/// 0x20b (PE32+).
fn check_pe32_plus_x64(bytes: &[u8]) -> Result<()> {
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_le_bytes(
            bytes.get(off..off + 2)?.try_into().ok()?,
        ))
    };
    ensure!(bytes.starts_with(b"MZ"), "no MZ header: not a PE file");
    let e_lfanew = bytes
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .context("truncated DOS header")?;
    ensure!(
        bytes.get(e_lfanew..e_lfanew + 4) == Some(b"PE\0\0".as_slice()),
        "no PE signature at e_lfanew {e_lfanew:#x}"
    );
    let machine = u16_at(e_lfanew + 4).context("truncated COFF header")?;
    ensure!(
        machine == 0x8664,
        "machine {machine:#06x} is not AMD64 (0x8664)"
    );
    let magic = u16_at(e_lfanew + 24).context("truncated optional header")?;
    ensure!(
        magic == 0x20b,
        "optional-header magic {magic:#05x} is not PE32+ (0x20b)"
    );
    Ok(())
}

/// Phase `wine`: fim-windows' whole test suite built for Windows and run by Wine (the unit and
/// fixture tests again, plus the live-registry tests in `tests/wine_registry.rs`).
pub fn wine_tests(mut cargo: Command) -> Result<Counts> {
    cmd::step(&format!(
        "fim-windows tests under Wine ({TARGET}, prefix {})",
        wine_prefix().display()
    ));
    let started = Instant::now();
    wine_env(&mut cargo)
        // Our ProcessPrng shim before any builtin bcryptprimitives.
        .env("WINEDLLOVERRIDES", "bcryptprimitives=n,b")
        .env(
            format!(
                "CARGO_TARGET_{}_RUNNER",
                TARGET.to_uppercase().replace('-', "_")
            ),
            "wine",
        )
        .args([
            "test",
            "--no-fail-fast",
            "--package",
            "fim-windows",
            "--target",
            TARGET,
        ]);
    let mut counts = cmd::run_counting(&mut cargo)?;
    if counts.passed == 0 && counts.failed == 0 {
        eprintln!("FAILURE: no fim-windows test ran under Wine: counted as one failure");
        counts.failed = 1;
    }
    println!(
        "    wine: {} passed, {} failed in {:.0}s",
        counts.passed,
        counts.failed,
        started.elapsed().as_secs_f64()
    );
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::check_pe32_plus_x64;

    fn pe(machine: u16, magic: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x100];
        b[..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
        b[0x98..0x9a].copy_from_slice(&magic.to_le_bytes());
        b
    }

    #[test]
    fn recognises_pe32_plus_amd64() {
        check_pe32_plus_x64(&pe(0x8664, 0x20b)).unwrap();
    }

    #[test]
    fn rejects_other_files() {
        assert!(check_pe32_plus_x64(&pe(0x8664, 0x10b)).is_err()); // PE32
        assert!(check_pe32_plus_x64(&pe(0x014c, 0x20b)).is_err()); // i386
        assert!(check_pe32_plus_x64(b"\x7fELF").is_err());
        assert!(check_pe32_plus_x64(b"MZ").is_err());
        let mut bad_offset = pe(0x8664, 0x20b);
        bad_offset[0x3c..0x40].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(check_pe32_plus_x64(&bad_offset).is_err());
    }
}
