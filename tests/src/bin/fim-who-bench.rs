//! `cargo xtask bench who`: `fim who PATH` on a store of 10,000,000 change rows.
//!
//! The store is generated once (target/bench/who-10m.db: 1,000,000 distinct paths, 10 changes
//! each, one in a hundred a rename) and reused. Timed: the real binary end to end (process
//! start included) and the history query alone, medians over several paths.
//!
//! Usage: fim-who-bench --fim PATH [--rows N] [--runs R] [--out FILE]

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
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

fn generate(db: &PathBuf, rows: u64) -> Result<()> {
    let partial = db.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    drop(fim::store::Store::open_path(&partial)?);
    let conn = rusqlite::Connection::open(&partial)?;
    let paths = (rows / 10).max(1);
    eprintln!("generating {rows} change rows over {paths} paths (once)...");
    let started = Instant::now();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows} - 1)
         INSERT INTO changes (time, host, activity, path, new_path, rule, grp, backend, changed,
                              pid, ppid, exe, cmdline, uid, user)
         SELECT 1700000000000000000 + i * 1000000, 'bench',
                CASE WHEN i % 100 = 99 THEN 5 ELSE 3 END,
                CAST('/srv/data/d' || (i % 1000) || '/f' || (i % {paths}) AS BLOB),
                CASE WHEN i % 100 = 99 THEN CAST('/srv/data/d' || (i % 1000) || '/g' || (i % {paths}) AS BLOB) END,
                'bench', 'bench', 'lsm', '[\"content\"]',
                1000 + i % 5000, 1, CAST('/usr/bin/editor' AS BLOB), CAST('editor file' AS BLOB), 0, 'root'
         FROM n;
         COMMIT;"
    ))
    .context("generating the change rows")?;
    drop(conn);
    std::fs::rename(&partial, db)?;
    eprintln!("generated in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let fim = PathBuf::from(flag(args, "--fim").context("--fim PATH")?);
    let rows: u64 = flag(args, "--rows").map_or(Ok(10_000_000), |v| v.parse())?;
    let runs: usize = flag(args, "--runs").map_or(Ok(15), |v| v.parse())?;
    let out = PathBuf::from(flag(args, "--out").unwrap_or("target/bench/who.json".into()));
    let db = PathBuf::from(format!("target/bench/who-{rows}.db"));
    std::fs::create_dir_all("target/bench")?;
    if !db.exists() {
        generate(&db, rows)?;
    }
    let store = fim::store::Store::open_read_only(&db)?;
    let count: i64 = store
        .connection()
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))?;
    let paths = (rows / 10).max(1);
    let targets: Vec<String> = [7u64, 123_456, 500_001, paths - 1]
        .iter()
        .map(|i| format!("/srv/data/d{}/f{}", i % 1000, i % paths))
        // Row 99 is the first rename: its new name's history starts there.
        .chain(std::iter::once(format!("/srv/data/d99/g{}", 99 % paths)))
        .collect();
    let mut end_to_end = Vec::new();
    let mut query_only = Vec::new();
    for _ in 0..runs {
        for path in &targets {
            let started = Instant::now();
            let status = Command::new(&fim)
                .args(["who", path, "--json", "--store"])
                .arg(&db)
                .stdout(Stdio::null())
                .status()?;
            end_to_end.push(started.elapsed().as_secs_f64() * 1000.0);
            if !status.success() {
                bail!("fim who {path} failed: {status}");
            }
            let started = Instant::now();
            let rows = store.changes(
                "(path = ?1 OR (activity = 5 AND new_path = ?1)) AND time <= ?2",
                &[&path.as_bytes(), &i64::MAX],
                50,
            )?;
            query_only.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(!rows.is_empty(), "no history for {path}");
        }
    }
    let (e2e, query) = (median(end_to_end.clone()), median(query_only.clone()));
    println!("store: {} ({count} change rows)", db.display());
    println!("{:<34} {:>10} {:>10}", "measure", "median ms", "target ms");
    println!(
        "{:<34} {e2e:>10.2} {:>10}",
        "fim who (process, end to end)", 50
    );
    println!("{:<34} {query:>10.3} {:>10}", "history query alone", "-");
    let report = serde_json::json!({
        "rows": count, "paths": targets, "runs": runs,
        "fim_who_ms": {"median": e2e, "samples": end_to_end, "target": 50},
        "query_ms": {"median": query, "samples": query_only},
    });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim-who-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
