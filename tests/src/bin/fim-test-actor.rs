//! The test actor: a separate process that performs exactly the file operation a test asks
//! for, so tests can check that records are attributed to *this* pid, not the test's.
//!
//! Usage: `fim-test-actor OP ARGS...`; exits 0 when the operation succeeded.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match perform(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim-test-actor {args:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn perform(args: &[std::ffi::OsString]) -> io::Result<()> {
    let op = args.first().and_then(|s| s.to_str()).unwrap_or("");
    let arg = |i: usize| -> io::Result<CString> {
        let raw = args
            .get(i)
            .ok_or_else(|| io::Error::other(format!("{op}: missing argument {i}")))?;
        CString::new(Path::new(raw).as_os_str().as_bytes()).map_err(io::Error::other)
    };
    // SAFETY (all calls below): arguments are valid NUL-terminated strings.
    let rc = match op {
        "unlinkat" => unsafe { libc::unlinkat(libc::AT_FDCWD, arg(1)?.as_ptr(), 0) },
        "unlink" => unsafe { libc::unlink(arg(1)?.as_ptr()) },
        other => return Err(io::Error::other(format!("unknown operation {other:?}"))),
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
