//! The Debian package: `fim_<version>_amd64.deb`, assembled from a `fim` binary and the files
//! in `fim-userspace/dist/` with dpkg-deb. Used by `cargo xtask package` (release binary) and
//! by `fim-userspace/tests/debian_package.rs` (the test build of the same binary), so it needs
//! nothing but std, anyhow and Debian's own tools (dpkg-deb, dpkg-shlibdeps, gzip).
//!
//! Layout: /usr/bin/fim; /lib/systemd/system/fim.service; /etc/fim/fim.toml (a conffile);
//! manual pages, shell completions and the Prometheus alert rules under /usr/share; the docs
//! under /usr/share/doc/fim; maintainer scripts from dist/debian/ (the postinst makes
//! /var/lib/fim, 0700).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// What a package is made of.
pub struct DebInputs<'a> {
    /// The `fim` executable to ship (it also generates the manual pages and completions).
    pub binary: &'a Path,
    /// The workspace root (for dist/, docs/, README.md).
    pub workspace: &'a Path,
    /// The Debian version, e.g. `0.1.0`.
    pub version: &'a str,
    /// Where the staging tree and the .deb go.
    pub out_dir: &'a Path,
}

const MAINTAINER: &str = "fim developers <fim@example.invalid>";

fn run(command: &mut Command) -> Result<Vec<u8>> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Writes `contents` to `root/relative` with `mode`, creating directories 0755.
fn put(root: &Path, relative: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
    let path = root.join(relative);
    let dir = path
        .parent()
        .context("a package path without a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(path)
}

/// `put`, compressed the way Debian wants manual pages and long docs (`gzip -9n`: no name,
/// no time stamp, so builds are reproducible).
fn put_gzipped(root: &Path, relative: &str, contents: &[u8]) -> Result<()> {
    let plain = put(root, relative, contents, 0o644)?;
    run(Command::new("gzip").args(["-9nf"]).arg(&plain))?;
    Ok(())
}

/// The unit for a binary in /usr/bin (the source unit names `cargo xtask install`'s
/// /usr/local/bin) and a reference that exists on the installed system.
fn packaged_unit(unit: &str) -> String {
    unit.replace("/usr/local/bin/fim", "/usr/bin/fim")
        .replace("docs/service.md", "/usr/share/doc/fim/docs/service.md.gz")
        .replace(
            "Installed by `cargo xtask install`",
            "Installed by the fim package",
        )
}

fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: fim\n\
         Upstream-Contact: {MAINTAINER}\n\n\
         Files: *\n\
         Copyright: 2026 fim developers\n\
         License: MIT or Apache-2.0\n \
         fim may be used under the terms of the MIT license or of the Apache License,\n \
         Version 2.0, at your option.\n \
         .\n \
         On Debian systems, the full text of the Apache License, Version 2.0 can be\n \
         found in /usr/share/common-licenses/Apache-2.0.\n \
         .\n \
         The MIT license: Permission is hereby granted, free of charge, to any person\n \
         obtaining a copy of this software and associated documentation files (the\n \
         \"Software\"), to deal in the Software without restriction, including without\n \
         limitation the rights to use, copy, modify, merge, publish, distribute,\n \
         sublicense, and/or sell copies of the Software, and to permit persons to whom\n \
         the Software is furnished to do so, subject to the following conditions: the\n \
         above copyright notice and this permission notice shall be included in all\n \
         copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED \"AS\n \
         IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.\n"
    )
}

fn changelog(version: &str) -> String {
    // A native package's changelog; its date is fixed so builds are reproducible.
    format!(
        "fim ({version}) unstable; urgency=medium\n\n  \
         * Package of fim {version}.\n\n \
         -- {MAINTAINER}  Sun, 06 Dec 2026 00:00:00 +0000\n"
    )
}

/// The `Depends:` of the binary, as dpkg-shlibdeps computes it from the libraries it links.
fn shared_library_depends(binary: &Path, scratch: &Path) -> Result<String> {
    let dir = scratch.join("shlibdeps");
    put(
        &dir,
        "debian/control",
        b"Source: fim\n\nPackage: fim\nArchitecture: amd64\n",
        0o644,
    )?;
    let out = run(Command::new("dpkg-shlibdeps")
        .current_dir(&dir)
        .args(["-O", "-e"])
        .arg(binary))?;
    let text = String::from_utf8_lossy(&out);
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(depends.trim().to_string())
}

fn control(version: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: fim\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Homepage: https://example.invalid/fim\n\
         Description: file integrity monitoring with exact attribution\n \
         fim watches the files that matter on a Linux host (system binaries, /etc,\n \
         boot, cron, ssh keys) and reports within a second that a file was created,\n \
         modified, renamed, deleted or had its mode, owner or extended attributes\n \
         changed, which process did it, and what changed (BLAKE3 before and after).\n \
         .\n \
         Its eBPF sensor uses BPF LSM hooks, fentry or syscall tracepoints; the daemon\n \
         writes OCSF JSON lines, a local SQLite store (`fim who`, `fim events`) and\n \
         Prometheus metrics, and keeps a tamper-evident baseline.\n"
    )
}

fn tree_size_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            bytes += tree_size_kib(&entry.path())? * 1024;
        } else {
            bytes += meta.len();
        }
    }
    Ok(bytes.div_ceil(1024))
}

/// `md5sums` of every file but the conffiles (dpkg keeps theirs itself).
fn md5sums(root: &Path, dir: &Path, out: &mut String) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let relative = path.strip_prefix(root)?;
        if relative.starts_with("DEBIAN") || relative.starts_with("etc") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            md5sums(root, &path, out)?;
        } else {
            let sum = run(Command::new("md5sum").arg(&path))?;
            let sum = String::from_utf8_lossy(&sum);
            let hash = sum
                .split_whitespace()
                .next()
                .context("md5sum printed nothing")?;
            out.push_str(&format!("{hash}  {}\n", relative.display()));
        }
    }
    Ok(())
}

/// Builds the package; returns the path of the .deb.
pub fn build(inputs: &DebInputs) -> Result<PathBuf> {
    let name = format!("fim_{}_amd64", inputs.version);
    let root = inputs.out_dir.join(&name);
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    fs::create_dir_all(&root)?;
    let dist = inputs.workspace.join("fim-userspace/dist");

    // The binary, stripped (the eBPF object it embeds is data and stays).
    let binary = put(&root, "usr/bin/fim", &fs::read(inputs.binary)?, 0o755)?;
    run(Command::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
        ])
        .arg(&binary))?;

    let unit = fs::read_to_string(dist.join("fim.service"))?;
    put(
        &root,
        "lib/systemd/system/fim.service",
        packaged_unit(&unit).as_bytes(),
        0o644,
    )?;
    put(
        &root,
        "etc/fim/fim.toml",
        &fs::read(dist.join("fim.toml"))?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/fim/fim-alerts.yml",
        &fs::read(dist.join("fim-alerts.yml"))?,
        0o644,
    )?;

    // Manual pages and completions, from the binary itself.
    let generated = inputs.out_dir.join(format!("{name}.generated"));
    if generated.exists() {
        fs::remove_dir_all(&generated)?;
    }
    run(Command::new(inputs.binary)
        .arg("man-pages")
        .arg(generated.join("man")))?;
    let mut pages: Vec<_> = fs::read_dir(generated.join("man"))?.collect::<std::io::Result<_>>()?;
    pages.sort_by_key(|e| e.file_name());
    for page in pages {
        let file = page.file_name().to_string_lossy().into_owned();
        put_gzipped(
            &root,
            &format!("usr/share/man/man1/{file}"),
            &fs::read(page.path())?,
        )?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/fim"),
        ("zsh", "usr/share/zsh/vendor-completions/_fim"),
        ("fish", "usr/share/fish/vendor_completions.d/fim.fish"),
    ] {
        let script = run(Command::new(inputs.binary).args(["completions", shell]))?;
        put(&root, path, &script, 0o644)?;
    }

    // Documentation: the README and the reference, compressed past 4 KiB as dh_compress does.
    let doc = "usr/share/doc/fim";
    put(
        &root,
        &format!("{doc}/copyright"),
        copyright().as_bytes(),
        0o644,
    )?;
    put_gzipped(
        &root,
        &format!("{doc}/changelog"),
        changelog(inputs.version).as_bytes(),
    )?;
    let mut docs = vec![inputs.workspace.join("README.md")];
    let mut reference: Vec<PathBuf> = fs::read_dir(inputs.workspace.join("docs"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    reference.sort();
    docs.extend(
        reference
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md")),
    );
    for file in docs {
        let name = file
            .file_name()
            .context("a doc without a name")?
            .to_string_lossy();
        // The reference keeps its place next to the README, so the README's links hold.
        let name = match file.parent() {
            Some(dir) if dir.ends_with("docs") => format!("docs/{name}"),
            _ => name.into_owned(),
        };
        let text = fs::read(&file)?;
        if text.len() > 4096 {
            put_gzipped(&root, &format!("{doc}/{name}"), &text)?;
        } else {
            put(&root, &format!("{doc}/{name}"), &text, 0o644)?;
        }
    }

    // The state directory (/var/lib/fim, 0700) is made by the postinst, not shipped: dpkg
    // would give a shipped one its packaged mode back on every upgrade.

    // Control files.
    let depends = shared_library_depends(&binary, &generated)?;
    let installed = tree_size_kib(&root)?;
    let debian = "DEBIAN";
    put(
        &root,
        &format!("{debian}/control"),
        control(inputs.version, &depends, installed).as_bytes(),
        0o644,
    )?;
    put(
        &root,
        &format!("{debian}/conffiles"),
        b"/etc/fim/fim.toml\n",
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &root,
            &format!("{debian}/{script}"),
            &fs::read(dist.join("debian").join(script))?,
            0o755,
        )?;
    }
    let mut sums = String::new();
    md5sums(&root, &root, &mut sums)?;
    put(&root, &format!("{debian}/md5sums"), sums.as_bytes(), 0o644)?;

    let deb = inputs.out_dir.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb))?;
    Ok(deb)
}
