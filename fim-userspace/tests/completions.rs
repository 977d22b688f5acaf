//! `fim completions SHELL` covers every subcommand `fim --help` lists.

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
