//! A service manager's notification socket, as the tests bind it: a real datagram socket (a
//! path or an abstract name) whose messages a thread collects with their arrival times.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One datagram received.
#[derive(Debug, Clone)]
pub struct Message {
    pub at: Instant,
    pub text: String,
}

impl Message {
    /// Whether one of its newline-separated assignments is exactly `assignment`.
    pub fn has(&self, assignment: &str) -> bool {
        self.text.lines().any(|l| l == assignment)
    }

    /// The value of its `KEY=` assignment.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

pub struct Listener {
    /// What to set `NOTIFY_SOCKET` to.
    pub variable: OsString,
    messages: Arc<Mutex<Vec<Message>>>,
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// A socket at `path`.
    pub fn at_path(path: &Path) -> Listener {
        let socket = UnixDatagram::bind(path).expect("binding the notification socket");
        Listener::start(socket, path.as_os_str().to_owned())
    }

    /// A socket in the abstract namespace (`NOTIFY_SOCKET=@name`).
    pub fn abstract_named(name: &str) -> Listener {
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).expect("binding the abstract socket");
        Listener::start(socket, format!("@{name}").into())
    }

    fn start(socket: UnixDatagram, variable: OsString) -> Listener {
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (messages, done) = (Arc::clone(&messages), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !done.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        let message = Message {
                            at: Instant::now(),
                            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        };
                        messages.lock().unwrap().push(message);
                    }
                }
            })
        };
        Listener {
            variable,
            messages,
            done,
            thread: Some(thread),
        }
    }

    /// Everything received so far, in order.
    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// The first message that `matches`, waiting up to `within` for it.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        matches: impl Fn(&Message) -> bool,
    ) -> Message {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self.messages().into_iter().find(&matches) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; received: {:#?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The `WATCHDOG=1` pings received after `since`.
pub fn pings_after(messages: &[Message], since: Instant) -> Vec<Instant> {
    messages
        .iter()
        .filter(|m| m.at >= since && m.has("WATCHDOG=1"))
        .map(|m| m.at)
        .collect()
}
