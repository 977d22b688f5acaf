//! Shell completion scripts for the `fim` command line (`fim completions SHELL`, which
//! `cargo xtask completions` and `cargo xtask install` run).

pub use clap_complete::Shell;

/// The completion script for `shell`, generated from the CLI definition itself, so every
/// subcommand and option is covered as soon as it exists.
pub fn script(shell: Shell, command: &mut clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    // Generated into memory: clap_complete panics when its writer fails, and stdout can be a
    // closed pipe.
    clap_complete::generate(shell, command, "fim", &mut out);
    out
}
