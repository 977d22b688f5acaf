//! The watchdog pings come from the event loop itself: while it is stuck, they stop, though
//! every other thread of the daemon runs on. The daemon runs in this process (so the test can
//! block its event loop: the stop future it polls sleeps once when asked), on the tracepoint
//! backend; needs root. One test in this binary: it sets `NOTIFY_SOCKET` for the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fim::config::Config;
use fim::sensor::Backend;

// Shared with service_notify.rs, which uses the rest of it.
#[allow(dead_code)]
mod notify_listener;
use notify_listener::{Listener, pings_after};

/// How long the event loop is blocked.
const STALL: Duration = Duration::from_secs(3);

/// The daemon's stop future: polled by the event loop on every wake-up, it blocks the loop's
/// thread once when `stall` is set, as a handler stuck in a system call would.
struct StallThenStop {
    stall: Arc<AtomicBool>,
    stop: tokio::sync::oneshot::Receiver<()>,
}

impl Future for StallThenStop {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stall.swap(false, Ordering::SeqCst) {
            std::thread::sleep(STALL);
        }
        Pin::new(&mut self.stop).poll(cx).map(|_| ())
    }
}

#[test]
fn a_stuck_event_loop_stops_the_watchdog_pings() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test loads eBPF programs: run it as root");
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let tree = root.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let config_path = root.join("fim.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"{}\"\n[output]\nfile = \"{}\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n\n\
             [[rule]]\nname = \"tree\"\ngroup = \"stall\"\npath = \"{}\"\nrecursive = true\n",
            root.join("state").display(),
            root.join("out/fim.json").display(),
            tree.display()
        ),
    )
    .unwrap();
    let config = Config::load(Some(&config_path)).expect("the test configuration");

    let listener = Listener::abstract_named(&format!("fim-test-stall-{}", std::process::id()));
    // SAFETY: the only test of this binary, and no other thread of it reads the environment
    // yet.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", &listener.variable);
        // A ping every 200 ms.
        std::env::set_var("WATCHDOG_USEC", "400000");
    }
    let stall = Arc::new(AtomicBool::new(false));
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let daemon = {
        let stop_future = StallThenStop {
            stall: Arc::clone(&stall),
            stop: stopped,
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(fim::daemon::run_until(
                config,
                Some(Backend::Tracepoint),
                stop_future,
            ))
        })
    };

    let ready = listener.wait_for("READY=1", Duration::from_secs(180), |m| m.has("READY=1"));
    std::thread::sleep(Duration::from_secs(1));
    let stalled_at = Instant::now();
    stall.store(true, Ordering::SeqCst);
    std::thread::sleep(STALL + Duration::from_secs(2));
    let _ = stop.send(());
    daemon
        .join()
        .expect("the daemon thread")
        .expect("the daemon stopped with an error");

    let pings = pings_after(&listener.messages(), ready.at);
    let before = pings.iter().filter(|&&at| at < stalled_at).count();
    assert!(before >= 3, "pings before the stall: {pings:?}");
    // The longest silence after the stall was asked for: the whole stall, give or take the
    // tick it took the loop to poll the stop future.
    let silence = pings
        .windows(2)
        .filter(|w| w[1] > stalled_at)
        .map(|w| w[1] - w[0])
        .max()
        .expect("pings after the stall");
    assert!(
        silence >= STALL - Duration::from_millis(500),
        "the pings went on while the event loop was stuck (longest gap {silence:?}): {pings:?}"
    );
    let resumed = pings
        .iter()
        .filter(|&&at| at > stalled_at + STALL + Duration::from_millis(300))
        .count();
    assert!(resumed >= 2, "no pings once the loop ran again: {pings:?}");
}
