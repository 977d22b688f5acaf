//! Where things live: the workspace, and the cache outside git for downloaded/built tools.

use std::path::PathBuf;

/// The workspace root (xtask's parent directory).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cache for things that must survive a fresh clone but never enter git: test kernels, the LLVM
/// prefix bpf-linker links against, apt lists for the backports suite. `FIM_CACHE_DIR`
/// overrides; default `$HOME/.cache/fim`.
pub fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("FIM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    home.join(".cache").join("fim")
}

pub fn target() -> PathBuf {
    workspace().join("target")
}
