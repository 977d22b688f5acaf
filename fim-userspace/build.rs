//! Builds the eBPF objects (crate `fim-ebpf`, without and with its `kernel-log` feature) and
//! leaves them in OUT_DIR for `include_bytes!`.
//!
//! Why a hand-written build script rather than aya-build: the nested build must use the nightly
//! toolchain (`-Z build-std=core`), must not inherit the outer build's compiler, wrappers (clippy)
//! or rustflags (the static VM-test build sets target rustflags), and should share one target
//! directory (`target/ebpf`) between the native and the static test builds so the eBPF object is
//! compiled once. Doing that explicitly here keeps those rules in one visible place.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("fim-userspace has no parent directory")?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    for watched in [
        "fim-ebpf/src",
        "fim-ebpf/Cargo.toml",
        "fim-common/src",
        "fim-common/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=FIM_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=FIM_EBPF_LOG_OBJECT");

    // An escape hatch for packagers who build the objects separately: FIM_EBPF_OBJECT without
    // log calls, FIM_EBPF_LOG_OBJECT with (fim-ebpf's kernel-log feature; without it,
    // `fim run --kernel-log` loads FIM_EBPF_OBJECT and says its diagnostics are off).
    if let Ok(prebuilt) = env::var("FIM_EBPF_OBJECT") {
        let with_log = env::var("FIM_EBPF_LOG_OBJECT").unwrap_or_else(|_| prebuilt.clone());
        for (from, to) in [(&prebuilt, OBJECT), (&with_log, LOG_OBJECT)] {
            std::fs::copy(from, out_dir.join(to))
                .with_context(|| format!("copying the prebuilt eBPF object {from}"))?;
        }
        return Ok(());
    }

    // Two builds of one crate in one target directory: the second only compiles fim-ebpf
    // itself again. Each object is copied out before the next build replaces it.
    let target_dir = workspace.join("target").join("ebpf");
    let object = target_dir.join("bpfel-unknown-none/release/fim-ebpf");
    for (features, to) in [(None, OBJECT), (Some("kernel-log"), LOG_OBJECT)] {
        build_ebpf(workspace, &target_dir, features)?;
        std::fs::copy(&object, out_dir.join(to))
            .with_context(|| format!("copying the eBPF object {}", object.display()))?;
    }
    Ok(())
}

/// The object `fim run` loads: not one log call in it.
const OBJECT: &str = "fim-ebpf.o";
/// The object `fim run --kernel-log` loads: with the kernel diagnostics' log calls.
const LOG_OBJECT: &str = "fim-ebpf-log.o";

fn build_ebpf(workspace: &Path, target_dir: &Path, features: Option<&str>) -> Result<()> {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace)
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--release",
            "--package",
            "fim-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir);
    if let Some(features) = features {
        cmd.args(["--features", features]);
    }
    // Everything the outer cargo exported for *its* compiler must not leak into the nested one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_TARGET_") && key.ends_with("_RUSTFLAGS") {
            cmd.env_remove(key.as_ref());
        }
    }
    // BTF in the object (bpf-linker --btf): the kernel needs func_info for bpf_loop callbacks,
    // and it gives readable verifier logs.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    );
    let status = cmd.status().context(
        "running `rustup run nightly cargo build` for the eBPF crate; is rustup installed? \
         Run `cargo xtask setup` first",
    )?;
    if !status.success() {
        bail!(
            "building the eBPF crate fim-ebpf failed ({status}). It needs the nightly toolchain with \
             rust-src and bpf-linker on PATH: run `cargo xtask setup`"
        );
    }
    Ok(())
}
