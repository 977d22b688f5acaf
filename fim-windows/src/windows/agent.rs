//! The Windows agent loop: ETW events and registry snapshots into the
//! pipeline, OCSF lines to stdout.

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use windows_sys::Win32::Storage::FileSystem::QueryDosDeviceW;

use super::etw_session::EtwSession;
use super::key_handles::open_key_objects;
use super::process_info::{WindowsProcesses, current_user_sid};
use super::reg_notify::{KeyWatcher, wait_any};
use super::registry::{WinRegistry, read_dword, read_snapshot};
use super::wide::{from_wide, to_wide};
use crate::etw_event::EtwEvent;
use crate::nt_path::DeviceMap;
use crate::pipeline::{FsInspector, Pipeline};
use crate::rules::{Config, RuleSet};
use crate::snapshot::expand_roots;

enum Input {
    Etw(EtwEvent),
    RegistryChanged,
    /// ProcessTrace returned: without ETW the agent must not pretend to run.
    EtwStopped(String),
}

/// Drive letters -> NT device names via QueryDosDeviceW.
pub fn device_map() -> DeviceMap {
    let mut map = DeviceMap::new();
    for letter in b'A'..=b'Z' {
        let drive = format!("{}:", letter as char);
        let wide = to_wide(&drive);
        let mut buf = vec![0u16; 1024];
        // SAFETY: buffer and its length in characters.
        let n = unsafe { QueryDosDeviceW(wide.as_ptr(), buf.as_mut_ptr(), buf.len() as u32) };
        if n > 0 {
            map.insert(&from_wide(&buf), &drive);
        }
    }
    map
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn emit(records: impl IntoIterator<Item = serde_json::Value>) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for r in records {
        writeln!(out, "{r}").context("writing to stdout")?;
    }
    out.flush().context("flushing stdout")
}

pub fn run(config: Config) -> Result<()> {
    let sid = current_user_sid();
    let lookup = |name: &str| std::env::var(name).ok();
    let rules = RuleSet::compile(&config, &lookup, sid.as_deref())?;
    let roots = rules.snapshot_roots();
    let settings = config.agent.clone();
    let hostname = std::env::var("COMPUTERNAME").unwrap_or_else(|_| "unknown".into());
    let mut pipeline = Pipeline::new(
        rules,
        device_map(),
        settings.name_cache_capacity,
        hostname,
        Box::new(WindowsProcesses::new(4096)),
        Box::new(FsInspector {
            max_hash_bytes: 64 * 1024 * 1024,
        }),
    );

    // The kernel names HKLM\SYSTEM\ControlSet00N; rules use CurrentControlSet.
    let current =
        read_dword(r"HKLM\SYSTEM\Select", "Current")?.map(|n| format!("ControlSet{n:03}"));
    pipeline.set_current_control_set(current);

    // Baseline before ETW starts, so the first diff has something to compare.
    let baseline = read_snapshot(&roots, settings.max_snapshot_keys, now_ms())?;
    let session = EtwSession::start()?;
    // Keys opened before the session (KeyName is often empty, so ETW never
    // names them): seed their KeyObjects from the handle table, taken after
    // the session started so no handle opened in between is missed.
    match open_key_objects() {
        Ok(handles) => {
            let seeded = pipeline.seed_key_objects(handles, &baseline);
            eprintln!("fim-windows: {seeded} watched keys named from open handles");
        }
        Err(e) => eprintln!("fim-windows: open key handles not read: {e:#}"),
    }
    emit(pipeline.on_snapshot(baseline))?;

    let (tx, rx) = mpsc::channel::<Input>();
    let (etw_tx, etw_rx) = mpsc::channel::<EtwEvent>();
    let name = session.name();
    let stopped = tx.clone();
    std::thread::spawn(move || {
        let reason = match EtwSession::consume(&name, etw_tx) {
            Ok(()) => "ETW session ended".to_string(),
            Err(e) => format!("{e:#}"),
        };
        let _ = stopped.send(Input::EtwStopped(reason));
    });
    let forward = tx.clone();
    std::thread::spawn(move || {
        for event in etw_rx {
            if forward.send(Input::Etw(event)).is_err() {
                break;
            }
        }
    });
    // RegNotifyChangeKeyValue needs concrete keys: patterns are expanded
    // once here; keys matching a pattern later are still snapshotted
    // (periodically), just not watched for an early snapshot.
    let (watch_roots, _) = expand_roots(&WinRegistry, &roots, settings.max_snapshot_keys)?;
    std::thread::spawn(move || {
        // Notifications are bound to the registering thread: arm and wait here.
        let watchers: Vec<KeyWatcher> = watch_roots
            .iter()
            .filter_map(
                |(path, recursive)| match KeyWatcher::new(path, *recursive) {
                    Ok(w) => w,
                    Err(e) => {
                        eprintln!("fim-windows: cannot watch {path}: {e:#}");
                        None
                    }
                },
            )
            .collect();
        loop {
            match wait_any(&watchers, 1000) {
                Ok(Some(_)) => {
                    if tx.send(Input::RegistryChanged).is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("fim-windows: registry watcher: {e:#}");
                    break;
                }
            }
        }
    });

    let interval = Duration::from_secs(settings.snapshot_interval_secs.max(1));
    let poll = Duration::from_secs(settings.lost_event_poll_secs.max(1));
    let (mut last_snapshot, mut last_poll) = (Instant::now(), Instant::now());
    // Let ETW deliver the events of a burst before the early snapshot runs,
    // so reconciliation attributes them to ETW rather than to the diff.
    let mut snapshot_due: Option<Instant> = None;
    let mut last_summary: Option<String> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Input::Etw(event)) => emit(pipeline.on_etw_event(&event))?,
            Ok(Input::RegistryChanged) => {
                snapshot_due.get_or_insert(Instant::now() + Duration::from_secs(2));
            }
            Ok(Input::EtwStopped(reason)) => anyhow::bail!("ETW consumer stopped: {reason}"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Deletes/renames whose OperationEnd never came.
        emit(pipeline.on_tick(now_ms()))?;
        if last_poll.elapsed() >= poll {
            last_poll = Instant::now();
            let summary = pipeline.decoder_stats().summary();
            if summary != last_summary {
                if let Some(s) = &summary {
                    eprintln!("fim-windows: decoder: {s}");
                }
                last_summary = summary;
            }
            if let Some(loss) = pipeline.on_session_counters(session.counters()?) {
                eprintln!(
                    "fim-windows: ETW lost {} events / {} buffers: snapshot now",
                    loss.events, loss.buffers
                );
                snapshot_due = Some(Instant::now());
            }
        }
        let due = snapshot_due.is_some_and(|t| Instant::now() >= t)
            || last_snapshot.elapsed() >= interval;
        if due {
            let snapshot = read_snapshot(&roots, settings.max_snapshot_keys, now_ms())?;
            emit(pipeline.on_snapshot(snapshot))?;
            last_snapshot = Instant::now();
            snapshot_due = None;
        }
    }
    Ok(())
}
