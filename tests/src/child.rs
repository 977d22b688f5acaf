//! Child processes a test starts (fleet agents, `fim run`, the collector, servers), killed
//! and reaped when their guard is dropped: a test that fails or panics half-way leaves
//! nothing running behind it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};

/// A child killed with SIGKILL and reaped when dropped (if it still runs).
///
/// It also gets SIGKILL from the kernel when the thread that started it ends
/// (`PR_SET_PDEATHSIG`): killed from outside, a test binary does not run its destructors,
/// and its children must not outlive it. So start a guarded child from the thread that
/// keeps it (a test's own thread), not from a short-lived helper thread.
pub struct KillOnDrop(Child);

impl KillOnDrop {
    pub fn spawn(command: &mut Command) -> io::Result<KillOnDrop> {
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().map(KillOnDrop)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL (a crash, as `kill -9`) and reaped; nothing if it has already exited.
    pub fn kill(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }

    /// A signal of the caller's choice (SIGTERM to stop a daemon cleanly, say).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with the pid of a child this guard has not reaped yet.
        unsafe {
            libc::kill(self.0.id() as i32, signal);
        }
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.0.try_wait()
    }

    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.0.wait()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}
