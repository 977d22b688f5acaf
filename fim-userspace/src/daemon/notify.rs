//! The service manager's notification protocol (systemd's `sd_notify`): each message is one
//! datagram of newline-separated `KEY=VALUE` assignments (`READY=1`, `STATUS=...`,
//! `WATCHDOG=1`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=...`) sent to the socket `NOTIFY_SOCKET`
//! names: a path, or an abstract name when it starts with `@`. Written here directly (it is
//! one `sendto`) rather than through a libsystemd binding.
//!
//! Without `NOTIFY_SOCKET` fim is not supervised that way and sends nothing. A socket that is
//! invalid, or missing when fim sends, is logged once; fim goes on without it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A send blocks while the manager's queue is full, at most this long (then the message is
/// dropped and logged): a stalled manager must not stall the event loop for long.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Where notifications go, if anywhere, and the watchdog interval the manager asked for.
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
    /// A send failed and was logged: later failures are not.
    warned: AtomicBool,
}

struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for the log.
    name: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, as the service manager sets
    /// them for the process it starts.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(
            socket.as_deref(),
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        )
    }

    /// From the variables' values; `pid` is this process's (a `WATCHDOG_PID` naming another
    /// process means the watchdog is not ours to feed).
    pub(crate) fn new(
        socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let target = socket.and_then(|name| match Target::open(name) {
            Ok(target) => Some(target),
            Err(why) => {
                log::warn!(
                    "NOTIFY_SOCKET={}: {why}; the service manager will not hear from fim",
                    name.to_string_lossy()
                );
                None
            }
        });
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().is_ok_and(|p| p == pid));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours && target.is_some())
            .map(Duration::from_micros);
        Notifier {
            target,
            watchdog,
            warned: AtomicBool::new(false),
        }
    }

    /// The interval within which the manager expects `WATCHDOG=1`, when it asked for pings.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Start-up is complete (`READY=1`), with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A status line the manager shows (`systemctl status`).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// Start-up makes progress: the manager waits `by` from now before it gives up, even past
    /// its start timeout.
    pub fn extend_start(&self, by: Duration, status: &str) {
        self.send(&format!(
            "EXTEND_TIMEOUT_USEC={}\nSTATUS={}",
            by.as_micros(),
            one_line(status)
        ));
    }

    /// The watchdog ping; sent only when the manager asked for one.
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// Shutdown has begun (`STOPPING=1`).
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = target
            .socket
            .send_to_addr(message.as_bytes(), &target.address)
            && !self.warned.swap(true, Ordering::Relaxed)
        {
            log::warn!(
                "cannot notify the service manager at NOTIFY_SOCKET={} ({e}); fim goes on \
                 without it (further failures are not logged)",
                target.name
            );
        }
    }
}

impl Target {
    fn open(name: &OsStr) -> Result<Target, String> {
        let bytes = name.as_bytes();
        let address = match bytes.first() {
            Some(b'@') => abstract_address(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(name).map_err(|e| e.to_string())?,
            Some(_) => {
                return Err("neither an absolute path nor an abstract name (@...)".to_string());
            }
            None => return Err("empty".to_string()),
        };
        let socket = UnixDatagram::unbound().map_err(|e| format!("creating a socket: {e}"))?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(|e| format!("setting a send timeout: {e}"))?;
        Ok(Target {
            socket,
            address,
            name: name.to_string_lossy().into_owned(),
        })
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_: &[u8]) -> Result<SocketAddr, String> {
    Err("abstract sockets exist only on Linux".to_string())
}

/// A status is one line: a newline would start another assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn bound_path() -> (tempfile::TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path)
    }

    #[test]
    fn messages_reach_a_path_socket_one_datagram_each() {
        let (_dir, socket, path) = bound_path();
        let notifier = Notifier::new(Some(path.as_os_str()), None, None, 1);
        notifier.status("start scan: 10 entries\ncompared");
        notifier.ready("watching");
        notifier.stopping("stopping");
        assert_eq!(receive(&socket), "STATUS=start scan: 10 entries compared");
        assert_eq!(receive(&socket), "READY=1\nSTATUS=watching");
        assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=stopping");
        notifier.extend_start(Duration::from_secs(2), "scanning");
        assert_eq!(
            receive(&socket),
            "EXTEND_TIMEOUT_USEC=2000000\nSTATUS=scanning"
        );
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fim-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let variable = format!("@{name}");
        let notifier = Notifier::new(Some(OsStr::new(&variable)), Some("2000000"), None, 1);
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(2)));
        notifier.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_is_fed_only_when_asked_and_only_by_its_process() {
        let (_dir, socket, path) = bound_path();
        let at = |usec: Option<&str>, pid: Option<&str>| {
            Notifier::new(Some(path.as_os_str()), usec, pid, 42).watchdog_interval()
        };
        assert_eq!(at(None, None), None);
        assert_eq!(at(Some("0"), None), None);
        assert_eq!(at(Some("soon"), None), None);
        assert_eq!(
            at(Some("500000"), Some("42")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(at(Some("500000"), Some("43")), None);
        // Without a socket there is nobody to ping.
        assert_eq!(
            Notifier::new(None, Some("500000"), None, 42).watchdog_interval(),
            None
        );
        // Not asked: no ping is sent.
        let quiet = Notifier::new(Some(path.as_os_str()), None, None, 42);
        quiet.watchdog();
        quiet.status("only this");
        assert_eq!(receive(&socket), "STATUS=only this");
    }

    #[test]
    fn an_invalid_or_missing_socket_is_survived() {
        for bad in ["", "relative/notify", "vsock:2:1234"] {
            let notifier = Notifier::new(Some(OsStr::new(bad)), Some("1000000"), None, 1);
            assert!(notifier.target.is_none(), "{bad:?} taken as a socket");
            assert_eq!(notifier.watchdog_interval(), None);
            notifier.ready("nobody listens");
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let notifier = Notifier::new(Some(missing.as_os_str()), None, None, 1);
        assert!(!notifier.warned.load(Ordering::Relaxed));
        notifier.ready("nobody listens");
        assert!(
            notifier.warned.load(Ordering::Relaxed),
            "the failure is logged"
        );
        notifier.status("still nobody");
        // A manager that appears later gets the messages after that.
        let socket = UnixDatagram::bind(&missing).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        notifier.status("now heard");
        assert_eq!(receive(&socket), "STATUS=now heard");
    }
}
