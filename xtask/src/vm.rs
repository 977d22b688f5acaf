//! Kernel tests in QEMU: the LSM and fentry backends cannot load on the CI machine's own
//! kernel, so they are tested on Debian's 6.1 and 6.12 cloud kernels booted under TCG.
//!
//! The test binaries of the `fim-tests` crate are built statically, packed with busybox into an
//! initramfs whose `/init` runs them and powers off; the serial console is streamed, and
//! libtest's result lines are counted.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{self, Counts},
    paths,
    setup::Apt,
};

/// One test kernel: a label, the Debian suite it comes from, and how its package is named.
pub(crate) struct KernelSpec {
    pub(crate) label: &'static str,
    suite: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    KernelSpec {
        label: "6.12",
        suite: "bookworm-backports",
        prefix: "linux-image-6.12.",
        suffix: "-cloud-amd64-unsigned",
    },
];

/// Wall-clock limit for one kernel's boot and tests under TCG.
const VM_TIMEOUT: Duration = Duration::from_secs(1800);
/// The same for a benchmark run, whose length the caller chooses (rounds, iterations,
/// `--profile`): only a hang should hit it.
const VM_BENCH_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn kernel_dir(label: &str) -> PathBuf {
    paths::cache().join("kernels").join(label)
}

/// The QEMU major version the VM tests need. Debian 12's QEMU 7.2 corrupts the slab allocator
/// of the 6.12 kernel under TCG (a double fault in kmem_cache_alloc, in one boot out of two to
/// four, with or without fim: reproduced with a busybox-only initramfs, with every CPU model
/// tried); QEMU 10 from bookworm-backports booted it 26 times out of 26.
const QEMU_MIN_MAJOR: u32 = 10;

fn qemu_major() -> Option<u32> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

/// Installs qemu-system-x86 from bookworm-backports unless a new enough QEMU is there.
pub fn ensure_qemu() -> Result<()> {
    cmd::step(&format!(
        "QEMU >= {QEMU_MIN_MAJOR} (qemu-system-x86 from bookworm-backports)"
    ));
    if let Some(major) = qemu_major()
        && major >= QEMU_MIN_MAJOR
    {
        println!("    present (QEMU {major})");
        return Ok(());
    }
    let private = PrivateApt::prepare()?;
    println!("    installing qemu-system-x86 from bookworm-backports");
    cmd::run(
        private
            .command("apt-get")
            .args([
                "-q",
                "-y",
                "install",
                "--no-install-recommends",
                "-t",
                "bookworm-backports",
            ])
            .arg("qemu-system-x86")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing QEMU from bookworm-backports failed (setup needs root)")?;
    match qemu_major() {
        Some(major) if major >= QEMU_MIN_MAJOR => Ok(()),
        other => bail!(
            "QEMU is still {other:?} after the install; the VM tests need >= {QEMU_MIN_MAJOR}"
        ),
    }
}

/// Downloads the test kernels into the cache when missing.
pub fn ensure_kernels(apt: &mut Apt) -> Result<()> {
    for spec in KERNELS {
        cmd::step(&format!(
            "test kernel {} (Debian {}, cloud flavour)",
            spec.label, spec.suite
        ));
        let dir = kernel_dir(spec.label);
        if dir.join("vmlinuz").exists() {
            let release = fs::read_to_string(dir.join("package")).unwrap_or_default();
            println!("    present: {}", release.trim());
            continue;
        }
        fetch_kernel(spec, apt)
            .with_context(|| format!("fetching the {} test kernel", spec.label))?;
    }
    Ok(())
}

/// A private apt configuration listing the bookworm and bookworm-backports suites of the same
/// archive the machine already uses (the machine's own sources may not list backports).
struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn prepare() -> Result<PrivateApt> {
        let root = paths::cache().join("apt");
        for dir in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let (uri, keyring) = debian_archive()?;
        let signed = keyring
            .map(|k| format!("[signed-by={k}] "))
            .unwrap_or_default();
        let sources = KERNELS
            .iter()
            .map(|k| format!("deb {signed}{uri} {} main\n", k.suite))
            .collect::<Vec<_>>()
            .concat();
        fs::write(root.join("sources.list"), sources)?;
        let private = PrivateApt { root };
        println!("    apt-get update (private lists for the kernel suites)");
        cmd::run(private.command("apt-get").args(["-q", "update"]))?;
        Ok(private)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let r = &self.root;
        command
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                r.join("sources.list").display()
            ))
            .arg("-o")
            .arg("Dir::Etc::SourceParts=/dev/null")
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", r.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", r.join("cache").display()))
            // The cache is root-owned and private; apt's _apt sandbox user cannot write it.
            .arg("-o")
            .arg("APT::Sandbox::User=root");
        command
    }
}

/// The URI (and keyring) of the Debian archive in the machine's apt sources.
fn debian_archive() -> Result<(String, Option<String>)> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        if name.ends_with(".sources") {
            // deb822 stanzas separated by blank lines.
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
                };
                let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                    continue;
                };
                if suites
                    .split_whitespace()
                    .any(|s| s == "bookworm" || s == "trixie")
                {
                    let uri = uris
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    return Ok((uri, field("Signed-By:")));
                }
            }
        } else if name.ends_with(".list") {
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("deb "))
            {
                let words: Vec<&str> = line
                    .split_whitespace()
                    .filter(|w| !w.starts_with('['))
                    .collect();
                if words.len() >= 3 && (words[2] == "bookworm" || words[2] == "trixie") {
                    return Ok((words[1].to_string(), None));
                }
            }
        }
    }
    bail!(
        "no Debian bookworm/trixie archive found in /etc/apt/sources.list{{,.d/}}: cannot fetch test kernels"
    )
}

fn fetch_kernel(spec: &KernelSpec, apt: &mut Apt) -> Result<()> {
    let _ = apt; // the machine's own apt lists are not touched
    let private = PrivateApt::prepare()?;
    let names = cmd::output(private.command("apt-cache").args(["pkgnames", spec.prefix]))?;
    let package = names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(spec.prefix) && n.ends_with(spec.suffix))
        .max_by_key(|n| version_key(&n[spec.prefix.len()..n.len() - spec.suffix.len()]))
        .with_context(|| {
            format!(
                "no {}*{} package in {}",
                spec.prefix, spec.suffix, spec.suite
            )
        })?
        .to_string();
    println!("    downloading {package}");
    let download = paths::cache().join("kernels").join("download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download)?;
    cmd::run(
        private
            .command("apt-get")
            .current_dir(&download)
            .args(["-q", "download", &package]),
    )?;
    let deb = fs::read_dir(&download)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    // Only ./boot is needed: the cloud kernel has what the tests use built in.
    let unpack = download.join("unpack");
    fs::create_dir_all(&unpack)?;
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' ./boot",
        deb.display(),
        unpack.display()
    )))?;
    let vmlinuz = fs::read_dir(unpack.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the kernel package has no boot/vmlinuz-*")?;
    let dir = kernel_dir(spec.label);
    fs::create_dir_all(&dir)?;
    fs::copy(&vmlinuz, dir.join("vmlinuz.partial"))?;
    fs::write(dir.join("package"), format!("{package}\n"))?;
    fs::rename(dir.join("vmlinuz.partial"), dir.join("vmlinuz"))?;
    let _ = fs::remove_dir_all(&download);
    println!("    cached {}", dir.join("vmlinuz").display());
    Ok(())
}

/// Orders version fragments like `54` or `95+deb12.1` numerically.
fn version_key(fragment: &str) -> Vec<u64> {
    fragment
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `cargo xtask vm-test --kernel LABEL|all`.
/// The kernels `which` names: `all` or one label.
pub(crate) fn select(which: &str) -> Result<Vec<&'static KernelSpec>> {
    Ok(match which {
        "all" => KERNELS.iter().collect(),
        label => {
            vec![KERNELS.iter().find(|k| k.label == label).with_context(|| {
                format!(
                    "unknown kernel {label:?}; choose one of: all, {}",
                    labels().join(", ")
                )
            })?]
        }
    })
}

/// Fails, pointing at `cargo xtask setup`, unless the kernels, QEMU and busybox are there.
pub(crate) fn check_ready(selected: &[&KernelSpec]) -> Result<()> {
    for spec in selected {
        if !kernel_dir(spec.label).join("vmlinuz").exists() {
            bail!(
                "test kernel {} is not cached under {}: run `cargo xtask setup`",
                spec.label,
                paths::cache().display()
            );
        }
    }
    if qemu_major().is_none_or(|major| major < QEMU_MIN_MAJOR)
        || !Path::new("/bin/busybox").exists()
    {
        bail!("QEMU >= {QEMU_MIN_MAJOR} or busybox-static is missing: run `cargo xtask setup`");
    }
    Ok(())
}

/// `filter`: libtest name filters for every test binary (none: all tests).
pub fn run(which: &str, filter: &[String]) -> Result<Counts> {
    let selected = select(which)?;
    check_ready(&selected)?;
    if filter
        .iter()
        .any(|f| f.is_empty() || f.contains(char::is_whitespace))
    {
        bail!("a --filter is one test-name fragment, without spaces");
    }
    let initramfs = build_initramfs(None, filter)?;
    let mut total = Counts::default();
    let mut per_kernel = Vec::new();
    for spec in selected {
        let counts = boot_and_test(spec, &initramfs, VM_TIMEOUT, Run::Test)?;
        counts.print_closing(spec.label);
        per_kernel.push((spec.label, counts));
        total.add(counts);
    }
    for (label, counts) in &per_kernel {
        counts.print_closing(label);
    }
    Ok(total)
}

/// What a VM boots for. Each has its own initramfs and console logs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Test,
    /// The benchmark, with the guest's clock following the host's: as noisy as the host.
    Bench,
    /// The benchmark under QEMU's instruction counting (`-icount shift=0,sleep=off`) on one
    /// vCPU: guest time is the number of guest instructions executed (1 ns each), so the same
    /// run gives the same figures whatever else the host is doing.
    BenchIcount,
}

impl Run {
    fn console_log(self, label: &str) -> PathBuf {
        let name = match self {
            Run::Test => format!("console-{label}.log"),
            Run::Bench | Run::BenchIcount => format!("console-bench-{label}.log"),
        };
        paths::target().join("vm").join(name)
    }
}

/// `cargo xtask bench sensor -- --vm [--icount] [--kernel all|6.1|6.12] [ARGS]`: the sensor
/// benchmark inside each test kernel's VM (all three backends load there), ratios measured within the same VM. Under TCG
/// every instruction is emulated: compare ratios, not seconds, with the native run. With
/// `--icount` the guest's clock counts instructions instead of host time (see `Run`), which
/// makes the ratios repeatable to about a percent on a busy host; it counts all the work
/// (the workload, the kernel programs and fim's reader alike, on one vCPU), so it is an upper
/// bound on the wall-time ratio of a machine with an idle second CPU.
pub fn bench(args: &[String]) -> Result<()> {
    let run = if args.iter().any(|a| a == "--icount") {
        Run::BenchIcount
    } else {
        Run::Bench
    };
    let mut kernels = "all";
    let mut rest: Vec<&str> = Vec::new();
    let mut it = args.iter().map(String::as_str);
    while let Some(arg) = it.next() {
        match arg {
            "--icount" => {}
            "--kernel" => kernels = it.next().context("--kernel needs all, 6.1 or 6.12")?,
            other => rest.push(other),
        }
    }
    let selected = select(kernels)?;
    let initramfs = build_initramfs(Some(&rest.join(" ")), &[])?;
    let suffix = if run == Run::BenchIcount {
        "-icount"
    } else {
        ""
    };
    for spec in selected {
        boot_and_test(spec, &initramfs, VM_BENCH_TIMEOUT, run)?;
        let log = run.console_log(spec.label);
        let text =
            fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
        let json = text
            .lines()
            .find_map(|l| {
                l.split_once("FIM-VM: BENCH-JSON ")
                    .map(|(_, j)| j.to_string())
            })
            .with_context(|| format!("the benchmark printed no result on {}", spec.label))?;
        let out = paths::target()
            .join("bench")
            .join(format!("sensor-vm-{}{suffix}.json", spec.label));
        fs::create_dir_all(out.parent().context("bench dir")?)?;
        fs::write(&out, json)?;
        println!("[{}] written to {}", spec.label, out.display());
    }
    Ok(())
}

fn labels() -> Vec<&'static str> {
    KERNELS.iter().map(|k| k.label).collect()
}

/// Integration tests that need host tools the initramfs does not have (a Prometheus
/// server; the fleet's NATS and PostgreSQL servers, whose real daemon runs the tracepoint
/// backend natively); they exercise no kernel code of their own, and `cargo test` runs them
/// natively. Also the
/// hostile-files test: it asserts the tracepoint backend's exact reports (in the VMs the
/// daemon runs on lsm) and times file changes against a hashing rate, which TCG's slowness
/// would upset; the conformance scenarios cover the kernel side of the same paths on every
/// backend.
const NATIVE_ONLY_TESTS: &[&str] = &["prometheus", "daemon_prometheus", "hostile", "fleet"];

/// A cargo command for static builds for the VM's target: static so the initramfs needs no
/// libc; without debuginfo so it stays small and boots fast.
fn static_cargo() -> Command {
    let rustflags_var = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        TARGET.to_uppercase().replace('-', "_")
    );
    let mut c = crate::testing::cargo();
    c.env(
        &rustflags_var,
        "-C target-feature=+crt-static -C strip=debuginfo",
    );
    c
}

/// The sensor benchmark, built like the native one (`cargo xtask bench sensor`): optimised.
/// The debug build used to go in, which inflated both sides of every ratio: the workload's
/// own user-space code ran unoptimised (a bigger baseline, so smaller ratios), and so did
/// the reader draining the ring buffer (which, on the icount VM's one vCPU, counts in the
/// watched wall time).
fn build_static_bench() -> Result<PathBuf> {
    cmd::step("building the static sensor benchmark (release) for the VM");
    build_static_bin("fim-tests", "fim-sensor-bench", Profile::Release)
}

/// The cargo profile of a static build for the guest.
#[derive(Clone, Copy)]
pub(crate) enum Profile {
    Debug,
    Release,
}

/// Builds one binary of `package` statically for the guest; returns its path.
pub(crate) fn build_static_bin(package: &str, bin: &str, profile: Profile) -> Result<PathBuf> {
    let mut cargo = static_cargo();
    cargo.arg("build");
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            cargo.arg("--release");
            "release"
        }
    };
    cmd::run(cargo.args(["--package", package, "--bin", bin, "--target", TARGET]))?;
    Ok(paths::target().join(TARGET).join(dir).join(bin))
}

/// Static builds of the integration test binaries and the test actor.
fn build_static_tests() -> Result<(Vec<PathBuf>, PathBuf)> {
    cmd::step("building static test binaries for the VM");
    cmd::run(static_cargo().args([
        "build",
        "--package",
        "fim-tests",
        "--bins",
        "--target",
        TARGET,
    ]))?;
    let json = cmd::output(static_cargo().args([
        "test",
        "--package",
        "fim-tests",
        "--tests",
        "--no-run",
        "--target",
        TARGET,
        "--message-format",
        "json-render-diagnostics",
    ]))?;
    let mut tests = Vec::new();
    for line in json.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["profile"]["test"].as_bool() == Some(true);
        let is_integration = message["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|v| v == "test"));
        if let (true, true, Some(exe)) = (is_test, is_integration, message["executable"].as_str()) {
            let name = message["target"]["name"].as_str().unwrap_or_default();
            if NATIVE_ONLY_TESTS.contains(&name) {
                println!("    {name}: runs natively only");
                continue;
            }
            tests.push(PathBuf::from(exe));
        }
    }
    if tests.is_empty() {
        bail!("no integration test binaries were built for the VM");
    }
    let actor = paths::target()
        .join(TARGET)
        .join("debug")
        .join("fim-test-actor");
    Ok((tests, actor))
}

/// The first lines of every guest's `/init`: busybox's applets, the file systems the tests and
/// fim need, loopback, and the two markers the host reads (the kernel ran `/init`; its LSMs).
pub(crate) const INIT_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security
# Loopback for the tests that talk to fim's metrics endpoint.
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
echo
echo "FIM-VM: KERNEL $(uname -r)"
echo "FIM-VM: LSM $(cat /sys/kernel/security/lsm)"
"#;

/// The rest of `cargo xtask vm-test`'s (and the VM benchmark's) `/init`.
const TEST_INIT: &str = r#"# TCG makes every syscall slow: the burst test uses fewer files in the VM.
export FIM_TEST_ENV=vm FIM_TEST_ACTOR=/bin/fim-test-actor PATH=/bin RUST_BACKTRACE=1 FIM_BURST_FILES=5000
if [ -f /bench-args ]; then
  # `cargo xtask bench sensor -- --vm`: the sensor benchmark instead of the tests.
  /bin/fim-sensor-bench $(cat /bench-args) --out /tmp/sensor.json
  echo "FIM-VM: BENCH-JSON $(tr -d '\n' < /tmp/sensor.json)"
  echo "FIM-VM: DONE"
  poweroff -f
fi
for t in /tests/*; do
  echo "FIM-VM: BEGIN $t"
  # `cargo xtask vm-test --filter NAME`: only the tests whose names contain NAME.
  "$t" --test-threads=1 $(cat /test-filter 2>/dev/null)
  echo "FIM-VM: EXIT $t $?"
done
echo "FIM-VM: DONE"
poweroff -f
"#;

/// The guest path of the test actor in every initramfs.
const GUEST_ACTOR: &str = "/bin/fim-test-actor";

/// An initramfs being assembled in `target/vm/NAME/` and packed into `target/vm/NAME.cpio.gz`:
/// busybox-static as `/bin/*` and the test actor, plus what each kind of run adds.
pub(crate) struct Initramfs {
    root: PathBuf,
}

impl Initramfs {
    /// A fresh tree `target/vm/NAME` with busybox-static, the test actor, and the mount points
    /// of `INIT_PRELUDE`.
    pub(crate) fn new(name: &str, actor: &Path) -> Result<Initramfs> {
        Initramfs::at(
            paths::target().join("vm").join(name),
            Path::new("/bin/busybox"),
            actor,
        )
    }

    /// The same in `root`, with this busybox.
    pub(crate) fn at(root: PathBuf, busybox: &Path, actor: &Path) -> Result<Initramfs> {
        let _ = fs::remove_dir_all(&root);
        for dir in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(root.join(dir))
                .with_context(|| format!("creating {}", root.join(dir).display()))?;
        }
        let tree = Initramfs { root };
        tree.copy(busybox, Path::new("/bin/busybox"))
            .context("copying busybox (busybox-static)")?;
        tree.copy(actor, Path::new(GUEST_ACTOR))?;
        Ok(tree)
    }

    /// Where the guest's absolute path `guest` lives in the tree; its parent is created.
    pub(crate) fn place(&self, guest: &Path) -> Result<PathBuf> {
        let relative = guest_relative(guest)?;
        let host = self.root.join(relative);
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(host)
    }

    /// Copies the host file `host` (through symlinks, with its permission bits) to `guest`.
    pub(crate) fn copy(&self, host: &Path, guest: &Path) -> Result<()> {
        let to = self.place(guest)?;
        fs::copy(host, &to)
            .with_context(|| format!("copying {} to {}", host.display(), to.display()))?;
        Ok(())
    }

    /// Makes `guest` a symbolic link to `target` (kept as it is, relative or not).
    pub(crate) fn symlink(&self, target: &Path, guest: &Path) -> Result<()> {
        let at = self.place(guest)?;
        let _ = fs::remove_file(&at);
        std::os::unix::fs::symlink(target, &at)
            .with_context(|| format!("making the symlink {}", at.display()))
    }

    /// The tree's directory on the host.
    #[cfg(test)]
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `contents` to `guest` with permission bits `mode`.
    pub(crate) fn write(&self, guest: &Path, contents: &[u8], mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let to = self.place(guest)?;
        fs::write(&to, contents).with_context(|| format!("writing {}", to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// `/init`: `INIT_PRELUDE`, then `body`.
    pub(crate) fn init(&self, body: &str) -> Result<()> {
        self.write(
            Path::new("/init"),
            [INIT_PRELUDE, body].concat().as_bytes(),
            0o755,
        )
    }

    /// Packs the tree into a gzip cpio image beside it; returns the image's path.
    pub(crate) fn pack(&self) -> Result<PathBuf> {
        let image = self.root.with_extension("cpio.gz");
        cmd::run(Command::new("sh").arg("-c").arg(format!(
            "cd '{}' && find . | cpio --quiet -o -H newc -R 0:0 | gzip -1 > '{}'",
            self.root.display(),
            image.display()
        )))?;
        Ok(image)
    }
}

/// A guest path made relative to the guest's root: absolute, with no `.` or `..` components.
pub(crate) fn guest_relative(guest: &Path) -> Result<PathBuf> {
    use std::path::Component;
    let mut components = guest.components();
    let mut relative = PathBuf::new();
    if components.next() != Some(Component::RootDir) {
        bail!("guest path {} is not absolute", guest.display());
    }
    for component in components {
        match component {
            Component::Normal(name) => relative.push(name),
            _ => bail!("guest path {} has a `.` or `..` component", guest.display()),
        }
    }
    if relative.as_os_str().is_empty() {
        bail!("guest path {} names the root", guest.display());
    }
    Ok(relative)
}

fn build_initramfs(bench_args: Option<&str>, filter: &[String]) -> Result<PathBuf> {
    let (tests, actor) = build_static_tests()?;
    cmd::step("packing the initramfs");
    // The benchmark gets its own image (and console logs), so a test run can build and boot
    // while a long benchmark is still booting its second kernel.
    let name = if bench_args.is_some() {
        "initramfs-bench"
    } else {
        "initramfs"
    };
    let tree = Initramfs::new(name, &actor)?;
    for test in &tests {
        let name = test.file_name().context("test binary without a name")?;
        tree.copy(test, &Path::new("/tests").join(name))?;
    }
    if !filter.is_empty() {
        tree.write(
            Path::new("/test-filter"),
            filter.join(" ").as_bytes(),
            0o644,
        )?;
    }
    if let Some(args) = bench_args {
        let bench = build_static_bench()?;
        tree.copy(&bench, Path::new("/bin/fim-sensor-bench"))?;
        tree.write(Path::new("/bench-args"), args.as_bytes(), 0o644)?;
    }
    tree.init(TEST_INIT)?;
    tree.pack()
}

/// What the console said, as far as results go.
#[derive(Default)]
struct ConsoleState {
    counts: Counts,
    /// Test binaries that started and have not reported a result line yet.
    running: Option<String>,
    result_seen: bool,
    done: bool,
    lsm: Option<String>,
}

impl ConsoleState {
    fn observe(&mut self, line: &str) {
        if let Some(c) = Counts::parse_libtest_summary(line) {
            self.counts.add(c);
            self.result_seen = true;
        } else if let Some(bin) = line.strip_prefix("FIM-VM: BEGIN ") {
            self.running = Some(bin.to_string());
            self.result_seen = false;
        } else if let Some(rest) = line.strip_prefix("FIM-VM: EXIT ") {
            let ok = rest.rsplit(' ').next() == Some("0");
            if !ok && !self.result_seen {
                // The binary died without a summary (panic in setup, crash): one failure.
                self.counts.failed += 1;
            }
            self.running = None;
        } else if line.starts_with("FIM-VM: DONE") {
            self.done = true;
        } else if let Some(lsm) = line.strip_prefix("FIM-VM: LSM ") {
            self.lsm = Some(lsm.to_string());
        }
    }
}

/// Whether a console line is `INIT_PRELUDE`'s first marker: `/init` ran, the kernel booted. It
/// may share its line with the BIOS's last words ("Booting from ROM..").
fn init_started(line: &str) -> bool {
    line.contains("FIM-VM: KERNEL ")
}

/// Removes terminal escape sequences (`ESC [ params final` and two-byte `ESC x`).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) {
                    break;
                }
            }
        }
    }
    out
}

/// How often a kernel that crashes before `/init` runs is booted again. With Debian 12's QEMU
/// 7.2 the 6.12 kernel often died in the slab allocator before any fim code ran; QEMU 10 (which
/// setup installs) has not shown it, but a boot failure is still an infrastructure fault, not a
/// test result, so it is retried and reported; anything after `/init` started counts.
const BOOT_ATTEMPTS: u32 = 4;

fn boot_and_test(spec: &KernelSpec, initramfs: &Path, limit: Duration, run: Run) -> Result<Counts> {
    let counts = boot_until_init(spec.label, || {
        boot_once(spec, initramfs, limit, run).map(|(counts, end)| (counts, end.booted))
    })?;
    Ok(counts.unwrap_or(Counts {
        passed: 0,
        failed: 1,
    }))
}

/// Runs `attempt` (one boot, returning its result and whether `/init` ran) until `/init` runs,
/// at most `BOOT_ATTEMPTS` times; `None` when it never did (reported as a failure here).
pub(crate) fn boot_until_init<T>(
    label: &str,
    mut attempt: impl FnMut() -> Result<(T, bool)>,
) -> Result<Option<T>> {
    for n in 1..=BOOT_ATTEMPTS {
        let (result, booted) = attempt()?;
        if booted {
            return Ok(Some(result));
        }
        eprintln!(
            "[{label}] WARNING: the kernel crashed before /init ran (boot attempt {n}/{BOOT_ATTEMPTS})"
        );
    }
    eprintln!("[{label}] FAILURE: the kernel did not boot in {BOOT_ATTEMPTS} attempts");
    Ok(None)
}

fn boot_once(
    spec: &KernelSpec,
    initramfs: &Path,
    limit: Duration,
    run: Run,
) -> Result<(Counts, BootEnd)> {
    let mut state = ConsoleState::default();
    let boot = Boot {
        spec,
        initramfs,
        limit,
        icount: run == Run::BenchIcount,
        log: run.console_log(spec.label),
    };
    let end = boot.run(&mut |line| {
        println!("[{}] {line}", spec.label);
        state.observe(line);
    })?;
    let mut counts = state.counts;
    if !state.done {
        let why = if end.timed_out {
            format!("timed out after {limit:?}")
        } else {
            "stopped early".to_string()
        };
        eprintln!(
            "[{}] FAILURE: the kernel did not finish the test run ({why}; last binary: {})",
            spec.label,
            state.running.as_deref().unwrap_or("none")
        );
        counts.failed += 1;
    }
    if state
        .lsm
        .as_deref()
        .is_none_or(|l| !l.split(',').any(|s| s == "bpf"))
    {
        eprintln!(
            "[{}] FAILURE: bpf is not in the VM's LSM list ({:?})",
            spec.label, state.lsm
        );
        counts.failed += 1;
    }
    Ok((counts, end))
}

/// One boot of a test kernel with an initramfs under QEMU/TCG.
pub(crate) struct Boot<'a> {
    pub(crate) spec: &'a KernelSpec,
    pub(crate) initramfs: &'a Path,
    /// Wall-clock limit; the VM is killed when it is reached.
    pub(crate) limit: Duration,
    /// Instruction counting on one vCPU (see `Run::BenchIcount`).
    pub(crate) icount: bool,
    /// Where every console line goes.
    pub(crate) log: PathBuf,
}

/// How a boot ended.
pub(crate) struct BootEnd {
    /// `/init` ran (its first marker was seen).
    pub(crate) booted: bool,
    /// The watchdog killed the VM at its limit.
    pub(crate) timed_out: bool,
}

impl Boot<'_> {
    /// Boots, handing every console line (escape sequences removed) to `on_line` as it comes,
    /// until the guest powers off or the limit is reached.
    pub(crate) fn run(&self, on_line: &mut dyn FnMut(&str)) -> Result<BootEnd> {
        let spec = self.spec;
        let dir = kernel_dir(spec.label);
        let package = fs::read_to_string(dir.join("package")).unwrap_or_default();
        cmd::step(&format!(
            "booting kernel {} ({}) under QEMU/TCG",
            spec.label,
            package.trim()
        ));
        let limit = self.limit;
        let mut log = fs::File::create(&self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        let started = Instant::now();
        // CPU model: under TCG `-cpu max` and `-cpu qemu64` both crash Debian's 6.12.95 cloud
        // kernel at boot (a NULL call in the entropy code); Nehalem boots 6.1 and 6.12 reliably.
        let mut qemu = Command::new("qemu-system-x86_64");
        // Under instruction counting one clock serves all vCPUs, so a second vCPU's work would
        // land inside whatever the first is timing (a program's run time included). With one
        // vCPU every interval holds only what ran in it: fim's reader still counts, as it takes
        // turns with the workload on the same CPU.
        let cpus = if self.icount {
            qemu.args(["-icount", "shift=0,sleep=off"]);
            "1"
        } else {
            "2"
        };
        let mut child = qemu
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "Nehalem",
                "-m",
                "1024",
                "-smp",
                cpus,
                "-nographic",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.initramfs)
            .args([
                "-append",
                "console=ttyS0 panic=-1 quiet lsm=lockdown,capability,landlock,bpf",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let stdout = child.stdout.take().context("no QEMU stdout")?;
        let child = Arc::new(Mutex::new(child));
        // The watchdog kills a VM that hangs; the reader then sees EOF.
        let watchdog = {
            let child = Arc::clone(&child);
            std::thread::spawn(move || {
                while started.elapsed() < limit {
                    std::thread::sleep(Duration::from_millis(500));
                    if let Ok(mut c) = child.lock()
                        && c.try_wait().ok().flatten().is_some()
                    {
                        return false;
                    }
                }
                if let Ok(mut c) = child.lock() {
                    let _ = c.kill();
                }
                true
            })
        };
        let mut booted = false;
        let mut reader = BufReader::new(stdout);
        let mut raw = Vec::new();
        use std::io::Write;
        loop {
            raw.clear();
            if reader.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            // SeaBIOS clears the screen with escape sequences that end up on /init's first line.
            let line = strip_escapes(line);
            let _ = writeln!(log, "{line}");
            booted |= init_started(&line);
            on_line(&line);
        }
        let timed_out = watchdog.join().unwrap_or(false);
        let status = child
            .lock()
            .map_err(|_| anyhow::anyhow!("QEMU handle poisoned"))?
            .wait()?;
        println!(
            "[{}] QEMU exited ({status}) after {:.1}s; console log: {}",
            spec.label,
            started.elapsed().as_secs_f64(),
            self.log.display()
        );
        Ok(BootEnd { booted, timed_out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_kernel_package_wins() {
        let mut v = vec!["95+deb12", "90+deb12.1", "9+deb12"];
        v.sort_by_key(|s| version_key(s));
        assert_eq!(v, vec!["9+deb12", "90+deb12.1", "95+deb12"]);
        assert!(version_key("54") > version_key("50"));
    }

    #[test]
    fn escape_sequences_are_stripped() {
        assert_eq!(
            strip_escapes("\u{1b}c\u{1b}[?7l\u{1b}[2JFIM-VM: KERNEL 6.1"),
            "FIM-VM: KERNEL 6.1"
        );
        assert_eq!(
            strip_escapes("test result: ok. 1 passed; 0 failed"),
            "test result: ok. 1 passed; 0 failed"
        );
    }

    #[test]
    fn console_without_done_or_with_crashed_binary_fails() {
        let mut s = ConsoleState::default();
        for line in [
            "FIM-VM: BEGIN /tests/a",
            "test result: ok. 3 passed; 0 failed; 0 ignored",
            "FIM-VM: EXIT /tests/a 0",
        ] {
            s.observe(line);
        }
        assert_eq!((s.counts.passed, s.counts.failed), (3, 0));
        s.observe("FIM-VM: BEGIN /tests/b");
        s.observe("FIM-VM: EXIT /tests/b 101");
        assert_eq!(s.counts.failed, 1);
        assert!(!s.done);
        s.observe("FIM-VM: DONE");
        assert!(s.done);
    }

    #[test]
    fn init_marker_is_found_after_the_bios_words() {
        assert!(!init_started(
            "SeaBIOS (version 1.16.3-debian-1.16.3-2~bpo12+1)"
        ));
        assert!(init_started("Booting from ROM..FIM-VM: KERNEL 6.12.95"));
    }
}
