//! `fim completions SHELL` covers every subcommand `fim --help` lists, and so do the manual
//! pages `fim man-pages DIR` writes: one per subcommand, each naming every option of its
//! subcommand, rendered by groff without a warning. The pages need `man` and `groff`
//! (Debian's man-db and groff-base, which `cargo xtask setup` installs).

use std::path::Path;
use std::process::Command;

fn fim(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fim"))
        .args(args)
        .output()
        .expect("running fim");
    assert!(
        out.status.success(),
        "fim {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("fim printed UTF-8")
}

/// The subcommands listed under "Commands:" in `fim --help` (without clap's own `help`).
fn subcommands() -> Vec<String> {
    let help = fim(&["--help"]);
    let listed: Vec<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    // Guard against a help format this parser does not understand passing vacuously.
    for known in ["run", "scan", "check-config"] {
        assert!(
            listed.iter().any(|name| name == known),
            "{known} not found in `fim --help`:\n{help}"
        );
    }
    listed
}

#[test]
fn bash_completion_names_every_subcommand() {
    let script = fim(&["completions", "bash"]);
    assert!(
        script.contains("complete -F"),
        "not a bash completion:\n{script}"
    );
    for name in subcommands() {
        assert!(
            script
                .split(|c: char| c.is_whitespace() || c == '"')
                .any(|word| word == name),
            "bash completion does not offer `{name}`"
        );
    }
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let names = subcommands();
    for shell in ["zsh", "fish"] {
        let script = fim(&["completions", shell]);
        for name in &names {
            assert!(
                script.contains(name.as_str()),
                "{shell} completion does not offer `{name}`"
            );
        }
    }
    assert!(fim(&["completions", "zsh"]).starts_with("#compdef fim"));
}

/// The long options `fim SUB --help` lists.
fn long_options(sub: &str) -> Vec<String> {
    fim(&[sub, "--help"])
        .split_whitespace()
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.trim_end_matches(',').to_string())
        .filter(|word| word != "--help")
        .collect()
}

/// The page as `man` formats it for a terminal, and groff's warnings (all enabled).
fn render(page: &Path) -> (String, String) {
    let text = Command::new("man")
        .env("MANWIDTH", "200")
        .args(["--no-hyphenation", "--no-justification", "-l"])
        .arg(page)
        .output()
        .unwrap_or_else(|e| panic!("cannot run man ({e}): install man-db"));
    assert!(text.status.success(), "man -l {} failed", page.display());
    let warnings = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
        .unwrap_or_else(|e| panic!("cannot run groff ({e}): install groff-base"));
    // man marks bold and underline by overstriking (`c\x08c`): keep the last character.
    let mut plain = String::new();
    for c in String::from_utf8_lossy(&text.stdout).chars() {
        if c == '\x08' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    (
        plain,
        String::from_utf8_lossy(&warnings.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_has_a_page_naming_its_options() {
    let dir = tempfile::tempdir().expect("temporary directory");
    fim(&["man-pages", dir.path().to_str().expect("UTF-8 temp path")]);
    let subs = subcommands();
    let mut expected: Vec<String> = subs.iter().map(|s| format!("fim-{s}.1")).collect();
    expected.push("fim.1".to_string());
    expected.sort();
    let mut written: Vec<String> = std::fs::read_dir(dir.path())
        .expect("listing the pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, expected);

    let (main, warnings) = render(&dir.path().join("fim.1"));
    assert!(warnings.is_empty(), "groff warns about fim.1:\n{warnings}");
    for sub in &subs {
        assert!(
            main.contains(&format!("fim-{sub}(1)")),
            "fim(1) does not name fim-{sub}(1)"
        );
        let (page, warnings) = render(&dir.path().join(format!("fim-{sub}.1")));
        assert!(
            warnings.is_empty(),
            "groff warns about fim-{sub}.1:\n{warnings}"
        );
        assert!(
            page.contains(&format!("fim {sub}")),
            "fim-{sub}(1) lacks its synopsis:\n{page}"
        );
        for option in long_options(sub) {
            assert!(
                page.contains(&option),
                "fim-{sub}(1) does not document {option}:\n{page}"
            );
        }
    }
}
