//! The daemon's control socket, `<state_dir>/fim.sock`, and its client (`fim scan --now`).
//!
//! A Unix stream socket, mode 0600 in the 0700 state directory, answering root (and the
//! daemon's own user) only. One request per connection, as one JSON line:
//! `{"command": "scan"}`. The daemon answers with JSON lines: first `{"accepted": true,
//! "running": KIND or null}` (the scan running now, which the request waits for), then,
//! once a scan that started after the request is over, `{"result": {...}}` (see
//! docs/scheduled-scan.md), or at any point `{"error": "..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The socket's file name in the state directory.
pub const SOCKET_FILE: &str = "fim.sock";
/// A request line longer than this is refused.
pub const MAX_REQUEST: usize = 1024;

/// Where the daemon of this state directory listens.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// The request `fim scan --now` sends.
pub fn scan_request() -> String {
    format!("{}\n", json!({"command": "scan"}))
}

/// Asks the daemon serving `state_dir` for a full scan and waits for its outcome (the
/// `result` object). `accepted` is called with the daemon's first answer.
pub fn request_scan(state_dir: &Path, accepted: impl FnOnce(&Value)) -> Result<Value> {
    let path = socket_path(state_dir);
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "no fim daemon is running for the state directory {} (nothing listens on {}); \
                 `fim scan` (without --now) scans without the daemon",
                state_dir.display(),
                path.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "cannot reach the daemon at {}: permission denied (run fim scan --now as \
                 root, like the daemon)",
                path.display()
            ),
            _ => format!("cannot reach the daemon at {}", path.display()),
        };
        anyhow::Error::new(e).context(hint)
    })?;
    stream
        .write_all(scan_request().as_bytes())
        .with_context(|| format!("sending the request to {}", path.display()))?;
    let mut lines = BufReader::new(stream).lines();
    let mut accepted = Some(accepted);
    loop {
        let line = match lines.next() {
            Some(line) => line.with_context(|| format!("reading from {}", path.display()))?,
            None => bail!(
                "the daemon closed the connection before the scan finished (did it stop?); \
                 nothing is lost: the next scan, or the next start's, compares everything again"
            ),
        };
        let value: Value = serde_json::from_str(&line)
            .with_context(|| format!("the daemon's answer {line:?} is not JSON"))?;
        if let Some(error) = value.get("error") {
            bail!("the daemon: {}", error.as_str().unwrap_or_default());
        }
        if let Some(result) = value.get("result") {
            return Ok(result.clone());
        }
        if value.get("accepted").is_some()
            && let Some(accepted) = accepted.take()
        {
            accepted(&value);
        }
    }
}

/// Prints a scan's outcome the way `fim scan` prints its own: a summary line, the drift
/// summary, then each difference.
pub fn print_scan_result(out: &mut impl Write, result: &Value) -> std::io::Result<()> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let stats = &result["stats"];
    writeln!(
        out,
        "{} scan by the daemon (pid {}): {} entries ({} hashed, {} unchanged, {} unreadable, \
         {} unstable, {} too large) in {:.1}s",
        result["kind"].as_str().unwrap_or("requested"),
        n(&result["pid"]),
        n(&stats["entries"]),
        n(&stats["files_hashed"]),
        n(&stats["hashes_reused"]),
        n(&stats["unreadable"]),
        n(&stats["unstable"]),
        n(&stats["too_large"]),
        result["duration_s"].as_f64().unwrap_or(0.0)
    )?;
    if result["first_scan"].as_bool() == Some(true) {
        return writeln!(out, "drift: none (the baseline was empty; it was created)");
    }
    let counts = &result["counts"];
    writeln!(
        out,
        "drift: {} added, {} removed, {} modified",
        n(&counts["added"]),
        n(&counts["removed"]),
        n(&counts["modified"])
    )?;
    let paths = |key: &str| -> Vec<Value> { result[key].as_array().cloned().unwrap_or_default() };
    // The paths come as text already (display_path's form); Debug quotes and escapes them
    // like `fim scan` does.
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    for entry in paths("added") {
        writeln!(out, "  added     {:?}", text(&entry["path"]))?;
    }
    for entry in paths("removed") {
        writeln!(out, "  removed   {:?}", text(&entry["path"]))?;
    }
    for modified in paths("modified") {
        let fields: Vec<String> = modified["changed"]
            .as_array()
            .map(|c| c.iter().map(text).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "  modified  {:?} ({})",
            text(&modified["path"]),
            fields.join(", ")
        )?;
    }
    if result["listed_all"].as_bool() == Some(false) {
        writeln!(
            out,
            "  (more differences than listed: all are on the output and in the store)"
        )?;
    }
    Ok(())
}
