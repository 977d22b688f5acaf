//! `cargo xtask bench pipeline`: the daemon's user-space pipeline without the kernel.
//!
//! 1. The hot path on one core: ring-buffer items decoded, enriched from the process cache
//!    (filled by exec records, as the sensor does) and matched against the built-in rules,
//!    then assembled into jobs. Target >= 200,000 events/s.
//! 2. Persistence: change rows through the store's batching writer into SQLite (WAL).
//!    Target >= 50,000 changes/s.
//!
//! Medians of `--rounds` runs; a table on stdout and JSON in `--out`.
//!
//! Usage: fim-pipeline-bench [--rounds R] [--events N] [--changes N] [--out FILE]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use fim::config::{Authorized, default_rules};
use fim::enrich::ProcessCache;
use fim::pipeline::{Assembler, Classifier, Enrich, Verdict};
use fim::sensor::{Backend, Event, EventKind};
use fim::store::{Actor, ChangeRecord, Store, StoreOp, WriterSettings, activity};
use fim_common::{Actor as KernelActor, RecordHeader, flags};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn number(args: &[String], name: &str, default: usize) -> Result<usize> {
    flag(args, name)
        .map(|v| v.parse().with_context(|| format!("{name} {v}")))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

/// A ring-buffer item as the kernel writes it.
fn item(kind: EventKind, pid: u32, path: &[u8], path2: &[u8], extra_flags: u16) -> Vec<u8> {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"tool");
    let header = RecordHeader {
        kind: kind as u16,
        backend: Backend::Lsm as u8,
        flags: flags::TARGET_KNOWN | extra_flags,
        path1_len: path.len() as u16,
        path2_len: path2.len() as u16,
        rule_id: 1,
        ktime_ns: 1_000_000_000,
        actor: KernelActor {
            tgid: pid,
            pid,
            ppid: 1,
            uid: 0,
            loginuid: 1000,
            start_boottime_ns: u64::from(pid) * 1_000_000,
            comm,
            ..KernelActor::default()
        },
        ..RecordHeader::default()
    };
    let mut bytes = vec![0u8; RecordHeader::SIZE];
    // SAFETY: RecordHeader is plain old data of exactly SIZE bytes.
    unsafe {
        std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<RecordHeader>(), header);
    }
    bytes.extend_from_slice(path);
    bytes.extend_from_slice(path2);
    bytes
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Events per second through decode -> enrich (cache) -> rules -> assembly.
fn hot_path(events: usize) -> Result<f64> {
    const PROCESSES: u32 = 100;
    let kinds = [
        EventKind::OpenWrite,
        EventKind::Modified,
        EventKind::Chmod,
        EventKind::Create,
        EventKind::Unlink,
        EventKind::Rename,
    ];
    let paths: Vec<Vec<u8>> = (0..1000)
        .map(|i| match i % 4 {
            0 => format!("/etc/app/conf.d/{i}.conf").into_bytes(),
            1 => format!("/usr/bin/tool{i}").into_bytes(),
            2 => format!("/etc/ssh/sshd_config.d/{i}").into_bytes(),
            // No rule covers these (kernel-undecided records that user space drops).
            _ => format!("/var/tmp/scratch/{i}").into_bytes(),
        })
        .collect();
    let items: Vec<Vec<u8>> = (0..events)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let path = &paths[i % paths.len()];
            let path2 = if kind == EventKind::Rename {
                &paths[(i + 1) % paths.len()][..]
            } else {
                &[]
            };
            item(kind, 1000 + (i as u32 % PROCESSES), path, path2, 0)
        })
        .collect();
    let classifier = Classifier::new(
        std::sync::Arc::new(default_rules()),
        Authorized {
            exes: vec!["/usr/sbin/cfgmgmt".into()],
            package_managers: true,
        },
        Vec::new(),
    );
    let mut cache = ProcessCache::new();
    for pid in 1000..1000 + PROCESSES {
        let exec = item(
            EventKind::Exec,
            pid,
            b"/usr/bin/tool",
            b"tool\0--flag\0",
            flags::PATH2_IS_STRING,
        );
        cache.exec(&Event::decode(&exec).context("decoding an exec item")?);
    }
    let mut assembler = Assembler::new(0);
    let mut jobs = Vec::new();
    let mut reported = 0usize;
    let started = Instant::now();
    for bytes in &items {
        let Some(event) = Event::decode(bytes) else {
            continue;
        };
        if let Verdict::Report(o) = classifier.classify(event, &mut cache) {
            reported += 1;
            assembler.observe(*o, &mut jobs);
        }
        if jobs.len() > 1024 {
            jobs.clear();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        reported > events / 2,
        "too few events matched a rule ({reported})"
    );
    anyhow::ensure!(cache.misses == 0, "{} cache misses", cache.misses);
    Ok(events as f64 / seconds)
}

/// Changes per second through the batching writer into SQLite.
fn persistence(changes: usize) -> Result<f64> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let store = Store::open(dir.path())?;
    let writer = store.spawn_writer(WriterSettings::default())?;
    let actor = Actor {
        pid: Some(4242),
        ppid: Some(1),
        exe: Some(b"/usr/bin/vi".to_vec()),
        cmdline: Some(b"vi /etc/app/conf".to_vec()),
        uid: Some(0),
        user: Some("root".into()),
        comm: Some("vi".into()),
        ..Actor::default()
    };
    let started = Instant::now();
    for i in 0..changes {
        writer.send(StoreOp::Change(ChangeRecord {
            time_ns: i as i64,
            host: "bench".into(),
            activity: activity::UPDATE,
            path: format!("/etc/app/conf.d/{}.conf", i % 10_000).into_bytes(),
            rule: Some("etc".into()),
            group: Some("system".into()),
            backend: "lsm".into(),
            changed: vec!["content".into()],
            hash_before: Some("ab".repeat(32)),
            hash_after: Some("cd".repeat(32)),
            size: Some(123),
            actor: actor.clone(),
            ..ChangeRecord::default()
        }))?;
    }
    writer.shutdown()?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(changes as f64 / seconds)
}

fn run(args: &[String]) -> Result<()> {
    let rounds = number(args, "--rounds", 5)?;
    let events = number(args, "--events", 1_000_000)?;
    let changes = number(args, "--changes", 200_000)?;
    let out = flag(args, "--out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench/pipeline.json"));
    let mut hot = Vec::new();
    let mut stored = Vec::new();
    for round in 1..=rounds {
        hot.push(hot_path(events)?);
        stored.push(persistence(changes)?);
        eprintln!("round {round}/{rounds} done");
    }
    let (hot_med, stored_med) = (median(hot.clone()), median(stored.clone()));
    println!(
        "{:<44} {:>14} {:>12} {:>6}",
        "stage", "median /s", "target /s", "met"
    );
    for (stage, value, target) in [
        (
            "decode + enrich (cache) + rules + assembly",
            hot_med,
            200_000.0,
        ),
        ("changes persisted to SQLite", stored_med, 50_000.0),
    ] {
        println!(
            "{stage:<44} {value:>14.0} {target:>12.0} {:>6}",
            if value >= target { "yes" } else { "NO" }
        );
    }
    let report = serde_json::json!({
        "rounds": rounds,
        "events_per_round": events,
        "changes_per_round": changes,
        "hot_path_events_per_s": {"median": hot_med, "samples": hot, "target": 200_000},
        "persisted_changes_per_s": {"median": stored_med, "samples": stored, "target": 50_000},
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim-pipeline-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
