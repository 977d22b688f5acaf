//! `cargo xtask vm-run`: boot a test kernel with fim, busybox and the test actor, run a shell
//! script in it and print what the script prints: for trying a scenario on the lsm and fentry
//! backends, which do not load on the CI machine's own kernel, without writing a Rust test.
//!
//! The kernels, QEMU and the initramfs come from `vm` (the machinery of `cargo xtask vm-test`);
//! docs/vm-run.md is the reference. `check` is the test `cargo xtask test` runs.

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, Counts},
    paths,
    vm::{self, Boot, Initramfs, KernelSpec, Profile},
};

#[derive(clap::Args)]
pub struct Args {
    /// Which kernel: 6.1, 6.12 or all (one after the other; the output lines then carry a
    /// `[6.1]`/`[6.12]` prefix).
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// Also put this host file or directory into the guest, at GUEST_PATH (default: the same
    /// absolute path). A dynamically linked program or library brings the interpreter and
    /// libraries `ldd` lists, at their host paths. Repeatable.
    #[arg(long, value_name = "HOST_PATH[:GUEST_PATH]")]
    copy: Vec<String>,
    /// Seconds each kernel may take, boot included, before its VM is killed (exit status 124).
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    /// The script's text, instead of a file.
    #[arg(short = 'c', value_name = "SHELL_TEXT", conflicts_with = "script")]
    command: Option<String>,
    /// The shell script (busybox sh runs it as /run.sh), or `-` to read it from stdin.
    #[arg(required_unless_present = "command")]
    script: Option<PathBuf>,
}

/// `cargo xtask vm-run`: returns the exit status to leave with (the script's, when every
/// kernel ran it; see `Outcome::code`).
pub fn run(args: &Args) -> Result<u8> {
    let kernels = vm::select(&args.kernel)?;
    vm::check_ready(&kernels)?;
    let script = match (&args.command, &args.script) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the script from stdin")?;
            text
        }
        (None, Some(path)) => fs::read_to_string(path)
            .with_context(|| format!("reading the script {}", path.display()))?,
        (None, None) => bail!("give a script file, `-` (stdin) or -c TEXT"),
    };
    let copies = args
        .copy
        .iter()
        .map(|spec| CopySpec::parse(spec))
        .collect::<Result<Vec<_>>>()?;
    let image = build_image("run", Profile::Release, &script, &copies)?;
    let limit = Duration::from_secs(args.timeout);
    let mut runs = Vec::new();
    for spec in &kernels {
        runs.push(run_kernel(spec, &image, limit, kernels.len() > 1)?);
    }
    if runs.len() > 1 {
        let summary: Vec<String> = runs
            .iter()
            .map(|r| format!("{}: {}", r.label, r.outcome))
            .collect();
        cmd::step(&format!("vm-run: {}", summary.join("; ")));
    }
    Ok(exit_code(&runs))
}

/// The rest of the guest's `/init` after `vm::INIT_PRELUDE`: what a systemd host has mounted
/// too (bpffs, tracefs), room for fim's state and output (the initramfs's root is a writable
/// tmpfs), then the script, its exit status, and power off.
const RUN_INIT: &str = r#"mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mkdir -p /root /run /var/lib /var/log /var/tmp
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export FIM_TEST_ACTOR=/bin/fim-test-actor
cd /root
echo "FIM-VM: SCRIPT-START"
sh /run.sh </dev/null
echo "FIM-VM: SCRIPT-EXIT $?"
poweroff -f
"#;

const SCRIPT_START: &str = "FIM-VM: SCRIPT-START";
const SCRIPT_EXIT: &str = "FIM-VM: SCRIPT-EXIT ";

/// `/bin/fim-vm` in the guest: start fim on directories, wait for its output, stop it.
const HELPER: &str = include_str!("../guest/fim-vm");

/// An initramfs image and the name its console logs take after it.
struct Image {
    path: PathBuf,
    name: &'static str,
}

/// Builds fim (static, with its eBPF object) and the test actor, and packs them with the
/// script and the copies into `target/vm/initramfs-NAME.cpio.gz`.
fn build_image(
    name: &'static str,
    fim: Profile,
    script: &str,
    copies: &[CopySpec],
) -> Result<Image> {
    let build = match fim {
        Profile::Debug => "debug",
        Profile::Release => "release",
    };
    cmd::step(&format!("building fim ({build}, static) for the guest"));
    let fim = vm::build_static_bin("fim-userspace", "fim", fim)?;
    cmd::step("building the test actor (static) for the guest");
    let actor = vm::build_static_bin("fim-tests", "fim-test-actor", Profile::Debug)?;
    cmd::step("packing the initramfs");
    let tree = Initramfs::new(&format!("initramfs-{name}"), &actor)?;
    lay_out(&tree, &fim, script, copies)?;
    Ok(Image {
        path: tree.pack()?,
        name,
    })
}

/// What vm-run adds to an initramfs: `/bin/fim`, `/bin/fim-vm`, `/run.sh`, the copies (last,
/// so one can replace anything, `/bin/fim` included) and the init.
fn lay_out(tree: &Initramfs, fim: &Path, script: &str, copies: &[CopySpec]) -> Result<()> {
    tree.copy(fim, Path::new("/bin/fim"))?;
    tree.write(Path::new("/bin/fim-vm"), HELPER.as_bytes(), 0o755)?;
    tree.write(Path::new("/run.sh"), script.as_bytes(), 0o755)?;
    let mut libraries = BTreeSet::new();
    for copy in copies {
        copy.apply(tree, &mut libraries)
            .with_context(|| format!("--copy {}", copy.host.display()))?;
    }
    tree.init(RUN_INIT)
}

/// One `--copy HOST_PATH[:GUEST_PATH]`.
#[derive(Debug, PartialEq)]
struct CopySpec {
    host: PathBuf,
    guest: PathBuf,
}

impl CopySpec {
    fn parse(spec: &str) -> Result<CopySpec> {
        let (host, guest) = split_copy(spec);
        let host = Path::new(host);
        if fs::symlink_metadata(host).is_err() {
            bail!("--copy {spec}: {} does not exist", host.display());
        }
        let guest = match guest {
            Some(guest) => PathBuf::from(guest),
            None => host_absolute(host)
                .with_context(|| format!("--copy {spec}: resolving {}", host.display()))?,
        };
        vm::guest_relative(&guest).with_context(|| format!("--copy {spec}"))?;
        Ok(CopySpec {
            host: host.to_path_buf(),
            guest,
        })
    }

    /// Copies a file, or a directory with everything in it; `libraries` are the files already
    /// brought for dynamically linked programs.
    fn apply(&self, tree: &Initramfs, libraries: &mut BTreeSet<PathBuf>) -> Result<()> {
        let meta =
            fs::metadata(&self.host).with_context(|| format!("reading {}", self.host.display()))?;
        if meta.is_dir() {
            copy_dir(tree, &self.host, &self.guest, libraries)
        } else {
            copy_file(tree, &self.host, &self.guest, libraries)
        }
    }
}

/// `HOST[:GUEST]`: the part after the last `:` is a guest path when it is absolute.
fn split_copy(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((host, guest)) if !host.is_empty() && guest.starts_with('/') => (host, Some(guest)),
        _ => (spec, None),
    }
}

/// The host path made absolute through its directory (the last name is kept, so a copied
/// symlink keeps its own name).
fn host_absolute(host: &Path) -> Result<PathBuf> {
    match (host.parent(), host.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(fs::canonicalize(parent)?.join(name))
        }
        _ => Ok(fs::canonicalize(host)?),
    }
}

fn copy_dir(
    tree: &Initramfs,
    host: &Path,
    guest: &Path,
    libraries: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let dir = tree.place(guest)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut entries: Vec<_> = fs::read_dir(host)
        .with_context(|| format!("reading {}", host.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (from, to) = (entry.path(), guest.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            tree.symlink(&fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_dir(tree, &from, &to, libraries)?;
        } else if kind.is_file() {
            copy_file(tree, &from, &to, libraries)?;
        } else {
            bail!(
                "{}: only regular files, directories and symlinks are copied",
                from.display()
            );
        }
    }
    Ok(())
}

fn copy_file(
    tree: &Initramfs,
    host: &Path,
    guest: &Path,
    libraries: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    tree.copy(host, guest)?;
    for library in dynamic_dependencies(host)? {
        if libraries.insert(library.clone()) {
            tree.copy(&library, &library)?;
        }
    }
    Ok(())
}

/// The ELF interpreter and libraries a dynamically linked file needs, as `ldd` lists them
/// (nothing for a static or non-ELF file). The guest has no libc of its own.
fn dynamic_dependencies(file: &Path) -> Result<Vec<PathBuf>> {
    let mut magic = [0u8; 4];
    let is_elf = fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF";
    if !is_elf {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(file)
        .output()
        .context("running ldd (Debian's libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static program.
        return Ok(Vec::new());
    }
    ldd_files(&text).with_context(|| format!("ldd {}", file.display()))
}

/// The files in `ldd`'s output: `name => /path (addr)` lines and the interpreter's
/// `/path (addr)`; the vDSO has no file. A library ldd could not find is an error.
fn ldd_files(output: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for line in output.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                target
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            files.push(PathBuf::from(path));
        }
    }
    Ok(files)
}

/// How one kernel's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The script ran to its end with this exit status.
    Exited(u8),
    /// The VM reached `--timeout`.
    TimedOut,
    /// The script did not run to its end: the kernel did not boot, crashed or powered off.
    Unfinished,
}

impl Outcome {
    /// vm-run's exit status: the script's, 124 at the time limit (as timeout(1)), 125 when the
    /// kernel did not finish the script.
    fn code(self) -> u8 {
        match self {
            Outcome::Exited(status) => status,
            Outcome::TimedOut => 124,
            Outcome::Unfinished => 125,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(status) => write!(f, "the script exited with status {status}"),
            Outcome::TimedOut => write!(f, "killed at the --timeout limit (exit status 124)"),
            Outcome::Unfinished => {
                write!(f, "the kernel did not finish the script (exit status 125)")
            }
        }
    }
}

/// The first kernel's status that is not 0, else 0.
fn exit_code(runs: &[KernelRun]) -> u8 {
    runs.iter()
        .map(|r| r.outcome.code())
        .find(|&c| c != 0)
        .unwrap_or(0)
}

/// One kernel's run: how it ended and what the script printed.
struct KernelRun {
    label: &'static str,
    outcome: Outcome,
    output: Vec<String>,
}

/// A vm-run console, split into the script's output and the rest.
#[derive(Default)]
struct ScriptConsole {
    /// What came before the script (firmware, kernel, init): shown only when it never ran.
    before: Vec<String>,
    kernel: Option<String>,
    lsm: Option<String>,
    started: bool,
    output: Vec<String>,
    /// The script's exit status, once the init reported it; nothing after it is shown.
    status: Option<u8>,
    ended: bool,
}

impl ScriptConsole {
    /// Takes one console line; returns the script output it carries, if any.
    fn observe(&mut self, line: &str) -> Option<String> {
        if self.ended {
            return None;
        }
        if !self.started {
            if let Some((_, release)) = line.split_once("FIM-VM: KERNEL ") {
                self.kernel = Some(release.to_string());
            } else if let Some(lsm) = line.strip_prefix("FIM-VM: LSM ") {
                self.lsm = Some(lsm.to_string());
            }
            if line == SCRIPT_START {
                self.started = true;
            } else {
                self.before.push(line.to_string());
            }
            return None;
        }
        // The script's last line may lack its newline and share the init's marker line.
        let output = match line.split_once(SCRIPT_EXIT) {
            Some((output, status)) => {
                self.ended = true;
                self.status = status.trim().parse().ok();
                output
            }
            None => line,
        };
        if self.ended && output.is_empty() {
            return None;
        }
        self.output.push(output.to_string());
        Some(output.to_string())
    }
}

/// Boots one kernel with the image and streams the script's output (prefixed with the kernel
/// when `prefixed`); the full console goes to `target/vm/console-IMAGE-LABEL.log`.
fn run_kernel(
    spec: &KernelSpec,
    image: &Image,
    limit: Duration,
    prefixed: bool,
) -> Result<KernelRun> {
    let label = spec.label;
    let prefix = if prefixed {
        format!("[{label}] ")
    } else {
        String::new()
    };
    let log = paths::target()
        .join("vm")
        .join(format!("console-{}-{label}.log", image.name));
    let attempt = || -> Result<((Outcome, Vec<String>), bool)> {
        let mut console = ScriptConsole::default();
        let boot = Boot {
            spec,
            initramfs: &image.path,
            limit,
            icount: false,
            log: log.clone(),
        };
        let end = boot.run(&mut |line| {
            let started = console.started;
            if let Some(output) = console.observe(line) {
                println!("{prefix}{output}");
            }
            if console.started && !started {
                cmd::step(&format!(
                    "[{label}] kernel {}, LSMs {}: running the script",
                    console.kernel.as_deref().unwrap_or("?"),
                    console.lsm.as_deref().unwrap_or("?"),
                ));
            }
        })?;
        if !console.started {
            eprintln!("[{label}] the script did not start; the console said:");
            for line in &console.before {
                eprintln!("[{label}] {line}");
            }
        }
        let outcome = match console.status {
            Some(status) => Outcome::Exited(status),
            None if end.timed_out => Outcome::TimedOut,
            None => Outcome::Unfinished,
        };
        Ok(((outcome, console.output), end.booted))
    };
    let (outcome, output) =
        vm::boot_until_init(label, attempt)?.unwrap_or((Outcome::Unfinished, Vec::new()));
    match outcome {
        Outcome::Exited(_) => cmd::step(&format!("[{label}] {outcome}")),
        _ => eprintln!(
            "[{label}] FAILURE: {outcome}; console log: {}",
            log.display()
        ),
    }
    Ok(KernelRun {
        label,
        outcome,
        output,
    })
}

/// The example script the docs show; `check` runs it on every kernel.
const EXAMPLE: &str = "tests/vm/examples/lsm-write.sh";

/// `check`'s script: a copied dynamic program runs (by its full path: busybox sh runs its own
/// applets, `env` among them, before looking at PATH), the example runs, the status comes back.
const CHECK_SCRIPT: &str = r#"/usr/bin/env --version | head -n 1
sh /root/example.sh
echo "vm-run check: the example exited with $?"
exit 3
"#;

/// What a check boot may take: 30 to 50 s on an idle machine (fim's debug build starts
/// slower than its release build), twice that and more while other builds load the host.
const CHECK_TIMEOUT: Duration = Duration::from_secs(600);

/// `cargo xtask test`'s check of vm-run on both kernels (one boot each): a copied dynamically
/// linked host program (/usr/bin/env, with its libraries) runs, the example script runs fim on
/// the lsm backend and shows the OCSF line of its write, and the script's exit status is
/// vm-run's. One passed or failed count per kernel.
pub fn check() -> Result<Counts> {
    let kernels = vm::select("all")?;
    vm::check_ready(&kernels)?;
    let example = paths::workspace().join(EXAMPLE);
    let copies = [
        CopySpec::parse(&format!("{}:/root/example.sh", example.display()))?,
        CopySpec::parse("/usr/bin/env")?,
    ];
    // fim's debug build: the VM phase before has built its dependencies for the guest, so it
    // costs about 30 s, where the release build costs minutes; the image is otherwise vm-run's.
    let image = build_image("run-check", Profile::Debug, CHECK_SCRIPT, &copies)?;
    let mut counts = Counts::default();
    for spec in &kernels {
        let run = run_kernel(spec, &image, CHECK_TIMEOUT, true)?;
        let problems = check_problems(&run);
        for problem in &problems {
            eprintln!("[{}] FAILURE: vm-run check: {problem}", run.label);
        }
        if problems.is_empty() {
            println!("[{}] vm-run check passed", run.label);
            counts.passed += 1;
        } else {
            counts.failed += 1;
        }
    }
    Ok(counts)
}

/// What is wrong with a check run (nothing when it passed).
fn check_problems(run: &KernelRun) -> Vec<String> {
    let mut problems = Vec::new();
    if run.outcome != Outcome::Exited(3) {
        problems.push(format!("{}, status 3 expected", run.outcome));
    }
    let has = |text: &str| run.output.iter().any(|l| l.contains(text));
    if !has("env (GNU coreutils)") {
        problems.push("the copied /usr/bin/env did not print its version".into());
    }
    if !has("vm-run check: the example exited with 0") {
        problems.push(format!("{EXAMPLE} did not exit with 0"));
    }
    let reported = run.output.iter().any(|line| {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            return false;
        };
        event["file"]["path"] == "/srv/app/app.conf"
            && event["activity_id"] == 3
            && event["unmapped"]["fim"]["backend"] == "lsm"
            && event["actor"]["process"]["cmd_line"] == "fim-test-actor append /srv/app/app.conf"
    });
    if !reported {
        problems.push(
            "the output has no OCSF update of /srv/app/app.conf by fim-test-actor from lsm".into(),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_specs_split_at_an_absolute_guest_path() {
        assert_eq!(split_copy("a/b:/usr/bin/b"), ("a/b", Some("/usr/bin/b")));
        assert_eq!(split_copy("/x/y"), ("/x/y", None));
        assert_eq!(split_copy("odd:name"), ("odd:name", None));
        assert_eq!(split_copy("a:b:/c"), ("a:b", Some("/c")));
        assert_eq!(split_copy(":/c"), (":/c", None));
    }

    #[test]
    fn copy_specs_check_their_paths() {
        let spec = CopySpec::parse("/usr/bin/env").unwrap();
        assert_eq!(spec.guest, Path::new("/usr/bin/env"));
        let spec = CopySpec::parse("/usr/bin/env:/opt/env").unwrap();
        assert_eq!(spec.guest, Path::new("/opt/env"));
        assert!(CopySpec::parse("/no/such/file").is_err());
        assert!(CopySpec::parse("/usr/bin/env:/opt/../env").is_err());
        assert!(CopySpec::parse("/usr/bin/env:/").is_err());
    }

    #[test]
    fn ldd_output_gives_libraries_and_interpreter() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd2b1f2000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1f000000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1f2a0000)\n";
        assert_eq!(
            ldd_files(out).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(ldd_files("\tstatically linked\n").unwrap().is_empty());
        let missing = ldd_files("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(missing.to_string().contains("libfoo.so.1"), "{missing}");
    }

    #[test]
    fn console_shows_only_the_script_and_its_status() {
        let mut c = ScriptConsole::default();
        let shown: Vec<Option<String>> = [
            "SeaBIOS (version 1.16.3)",
            "Booting from ROM..FIM-VM: KERNEL 6.1.0-40-cloud-amd64",
            "FIM-VM: LSM lockdown,capability,landlock,bpf",
            "FIM-VM: SCRIPT-START",
            "hello",
            "",
            "no newlineFIM-VM: SCRIPT-EXIT 7",
            "reboot: Power down",
        ]
        .iter()
        .map(|l| c.observe(l))
        .collect();
        assert_eq!(
            shown,
            vec![
                None,
                None,
                None,
                None,
                Some("hello".into()),
                Some("".into()),
                Some("no newline".into()),
                None
            ]
        );
        assert_eq!(c.kernel.as_deref(), Some("6.1.0-40-cloud-amd64"));
        assert_eq!(c.lsm.as_deref(), Some("lockdown,capability,landlock,bpf"));
        assert_eq!(c.status, Some(7));
        assert_eq!(c.output, vec!["hello", "", "no newline"]);
        assert_eq!(c.before.len(), 3);
    }

    #[test]
    fn exit_status_is_the_first_failure() {
        let run = |outcome| KernelRun {
            label: "x",
            outcome,
            output: Vec::new(),
        };
        assert_eq!(exit_code(&[run(Outcome::Exited(0))]), 0);
        assert_eq!(
            exit_code(&[run(Outcome::Exited(0)), run(Outcome::Exited(4))]),
            4
        );
        assert_eq!(
            exit_code(&[run(Outcome::TimedOut), run(Outcome::Unfinished)]),
            124
        );
        assert_eq!(exit_code(&[run(Outcome::Unfinished)]), 125);
    }

    #[test]
    fn check_needs_status_output_and_the_lsm_event() {
        let event = r#"{"activity_id":3,"file":{"path":"/srv/app/app.conf"},"actor":{"process":{"cmd_line":"fim-test-actor append /srv/app/app.conf"}},"unmapped":{"fim":{"backend":"lsm"}}}"#;
        let mut run = KernelRun {
            label: "6.1",
            outcome: Outcome::Exited(3),
            output: vec![
                "env (GNU coreutils) 9.1".into(),
                event.into(),
                "vm-run check: the example exited with 0".into(),
            ],
        };
        assert!(check_problems(&run).is_empty());
        run.output[1] = event.replace("lsm", "fentry");
        assert_eq!(check_problems(&run).len(), 1);
        run.outcome = Outcome::Exited(0);
        run.output.clear();
        assert_eq!(check_problems(&run).len(), 4);
    }

    /// A scratch directory under the target directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_initramfs_holds_fim_the_helper_the_script_and_the_copies() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch(
            paths::target()
                .join("xtask-test")
                .join(format!("vm-run-{}", std::process::id())),
        );
        let host = scratch.0.join("host");
        fs::create_dir_all(host.join("data/sub")).unwrap();
        let file = |name: &str, text: &str| {
            fs::write(host.join(name), text).unwrap();
            host.join(name)
        };
        let (busybox, actor, fim) = (file("busybox", "bb"), file("actor", "a"), file("fim", "f"));
        file("data/sub/x.txt", "x");
        std::os::unix::fs::symlink("sub/x.txt", host.join("data/link")).unwrap();
        // A dynamically linked program of the host: its libc comes along.
        let sh = fs::canonicalize("/bin/sh").unwrap();
        let copies = [
            CopySpec::parse(&format!("{}:/srv/data", host.join("data").display())).unwrap(),
            CopySpec::parse(&format!("{}:/usr/local/bin/host-sh", sh.display())).unwrap(),
        ];
        let tree = Initramfs::at(scratch.0.join("tree"), &busybox, &actor).unwrap();
        lay_out(&tree, &fim, "echo hi\n", &copies).unwrap();
        let root = tree.root();
        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        let mode = |p: &str| fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(read("bin/busybox"), "bb");
        assert_eq!(read("bin/fim-test-actor"), "a");
        assert_eq!(read("bin/fim"), "f");
        assert_eq!(read("run.sh"), "echo hi\n");
        assert_eq!(mode("run.sh"), 0o755);
        assert_eq!(read("bin/fim-vm"), HELPER);
        assert_eq!(mode("bin/fim-vm"), 0o755);
        let init = read("init");
        assert!(init.starts_with(vm::INIT_PRELUDE), "{init}");
        assert!(init.ends_with(RUN_INIT), "{init}");
        assert_eq!(mode("init"), 0o755);
        assert_eq!(read("srv/data/sub/x.txt"), "x");
        assert_eq!(
            fs::read_link(root.join("srv/data/link")).unwrap(),
            Path::new("sub/x.txt")
        );
        assert!(root.join("usr/local/bin/host-sh").is_file());
        let libc = dynamic_dependencies(&sh).unwrap();
        assert!(
            libc.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libc:?}"
        );
        for library in libc {
            let inside = root.join(library.strip_prefix("/").unwrap());
            assert!(inside.is_file(), "{} is missing", inside.display());
        }
    }
}
