//! `fim run --kernel-log` writes the kernel side's diagnostics to its log (target
//! `fim::kernel`), even where RUST_LOG asks for warnings only; without the flag none is
//! written, even with RUST_LOG=debug. Provoked by a path longer than the kernel's path buffer
//! (4096 bytes), which the path walk cannot build whole.
//!
//! Natively on the tracepoint backend (forced, like the robustness tests); needs root. The
//! in-kernel side of "off" (no record written at all) is checked per backend, in the VMs too,
//! by the tests crate's kernel_log test.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Fim, require_root};

/// Part of the message of a record whose path was cut short (fim-ebpf's diag.rs).
const WALK_STOPPED: &str = "with a path cut short";

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    db: PathBuf,
    tree: PathBuf,
    output: PathBuf,
}

fn setup() -> Setup {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let (state, tree) = (root.join("state"), root.join("tree"));
    std::fs::create_dir(&state).unwrap();
    std::fs::create_dir(&tree).unwrap();
    let output = root.join("out.jsonl");
    let config = root.join("fim.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[output]\nfile = \"{}\"\n[metrics]\naddress = \"127.0.0.1:0\"\n\
             [[rule]]\nname = \"tree\"\ngroup = \"kernel-log\"\npath = \"{}\"\nrecursive = true\n",
            state.display(),
            output.display(),
            tree.display()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config,
        db: state.join("fim.db"),
        tree,
        output,
    }
}

/// `fim run` on the tracepoint backend with `extra` arguments and RUST_LOG, its log in `log`,
/// once its start scan is done.
fn start(setup: &Setup, extra: &[&str], rust_log: &str, log: &Path) -> Fim {
    let child = Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(["run", "--backend", "tracepoint", "--config"])
        .arg(&setup.config)
        .args(extra)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting fim run");
    let fim = Fim(child);
    common::wait_for_start_scan(&setup.db, fim.id(), Duration::from_secs(240));
    fim
}

fn stop(mut fim: Fim) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(fim.id() as i32, libc::SIGTERM) };
    let status = fim.wait().expect("waiting for fim run");
    assert!(status.success(), "fim run exited with {status}");
}

/// Makes `base`, 24 directories of 200-byte names below it (one mkdirat at a time: the whole
/// path is longer than a syscall accepts) and a directory `leaf` in the deepest.
fn deeper_than_the_path_buffer(base: &Path, leaf: &str) {
    std::fs::create_dir(base).unwrap();
    let name = CString::new("n".repeat(200)).unwrap();
    let leaf = CString::new(leaf).unwrap();
    // SAFETY: valid strings and descriptors this function owns.
    unsafe {
        let base = CString::new(base.as_os_str().as_bytes()).unwrap();
        let mut fd = libc::open(base.as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC);
        assert!(fd >= 0, "open the tree");
        for _ in 0..24 {
            assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o755), 0, "mkdirat");
            let next = libc::openat(fd, name.as_ptr(), libc::O_DIRECTORY | libc::O_CLOEXEC);
            assert!(next >= 0, "openat");
            libc::close(fd);
            fd = next;
        }
        assert_eq!(libc::mkdirat(fd, leaf.as_ptr(), 0o755), 0, "mkdirat leaf");
        libc::close(fd);
    }
}

/// Creates `name` in the tree and waits until the output has its record: the daemon has
/// processed what the kernel sent before it.
fn mark(setup: &Setup, name: &str) {
    std::fs::write(setup.tree.join(name), b"marker\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let path = format!("\"{}\"", setup.tree.join(name).display());
    while !std::fs::read_to_string(&setup.output)
        .unwrap_or_default()
        .contains(&path)
    {
        assert!(Instant::now() < deadline, "no record of {name} after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kernel_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" fim::kernel]") && !l.contains("kernel diagnostics on"))
        .map(str::to_string)
        .collect()
}

#[test]
fn kernel_log_flag_shows_the_kernel_diagnostics_and_only_then() {
    let setup = setup();
    let log_on = setup.tree.parent().unwrap().join("on.log");
    let log_off = setup.tree.parent().unwrap().join("off.log");

    // On, with RUST_LOG asking for warnings only: the flag still shows them.
    let fim = start(&setup, &["--kernel-log"], "warn", &log_on);
    deeper_than_the_path_buffer(&setup.tree.join("on"), "leaf-on");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = kernel_lines(&log_on);
        if lines
            .iter()
            .any(|l| l.contains(WALK_STOPPED) && l.contains(" DEBUG "))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no kernel diagnostic of the cut-short path walk after 60 s; fim::kernel lines: \
             {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop(fim);

    // Off, with RUST_LOG=debug: the same situation, no diagnostic.
    let fim = start(&setup, &[], "debug", &log_off);
    deeper_than_the_path_buffer(&setup.tree.join("off"), "leaf-off");
    mark(&setup, "marker-off");
    // Had the kernel sent diagnostics, they would have come before the marker's record.
    std::thread::sleep(Duration::from_secs(1));
    stop(fim);
    let lines = kernel_lines(&log_off);
    assert!(
        lines.is_empty(),
        "kernel diagnostics without --kernel-log: {lines:#?}"
    );
}
