//! Manual pages for the `fim` command line (`fim man-pages DIR`, which `cargo xtask install`
//! and `cargo xtask package` run): `fim.1` and one page per subcommand (`fim-who.1`, ...),
//! generated from the CLI definition itself so they never drift from `fim --help`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the reference behind the pages lives, named at the end of every page.
const SEE_ALSO: &str = "The reference (configuration, output fields, backends, store, \
operations, security model) is in the docs/ directory of fim's source, installed as \
/usr/share/doc/fim/docs by the Debian package.";

/// Renders the page of `command` (already named as its page, e.g. `fim-who`).
fn render(command: clap::Command, see_also: &str) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command).section("1");
    let mut page = Vec::new();
    man.render(&mut page).context("rendering a manual page")?;
    page.extend_from_slice(b".SH \"SEE ALSO\"\n");
    page.extend_from_slice(see_also.as_bytes());
    page.push(b'\n');
    Ok(page)
}

/// Writes `fim.1` and `fim-SUBCOMMAND.1` for every visible subcommand into `dir`; returns
/// the files written.
pub fn write_all(command: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // clap's own `help` subcommand is `fim help` / `--help`, not a page of its own.
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let name = command.get_name().to_string();
    let version = command.get_version().map(str::to_string);
    let subcommands: Vec<clap::Command> = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    let mut pages = Vec::new();
    let listed: Vec<String> = subcommands
        .iter()
        .map(|sub| format!("\\fB{name}-{}\\fR(1)", sub.get_name()))
        .collect();
    pages.push((
        name.clone(),
        render(command, &format!("{}\n.PP\n{SEE_ALSO}", listed.join(", ")))?,
    ));
    for sub in subcommands {
        let page_name = format!("{name}-{}", sub.get_name());
        let usage_name = format!("{name} {}", sub.get_name());
        let mut sub = sub.name(page_name.clone()).bin_name(usage_name);
        if let Some(version) = &version {
            sub = sub.version(version.clone());
        }
        pages.push((
            page_name,
            render(sub, &format!("\\fB{name}\\fR(1)\n.PP\n{SEE_ALSO}"))?,
        ));
    }
    let mut written = Vec::new();
    for (page_name, page) in pages {
        let path = dir.join(format!("{page_name}.1"));
        fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
