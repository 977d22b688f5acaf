//! `cargo xtask bench fleet`: the fleet's figures, each in one run on this machine, on real
//! servers started here (a 3-node NATS JetStream cluster with a 3-replica stream, and
//! PostgreSQL 15, on loopback):
//!
//! - publish: a stand-in host (`fim-fleet-agent`: fim's real agent on a real store) publishing
//!   with acknowledgement, sustained (changes written into its store as fast as they come) and
//!   draining a 50,000-change backlog, against both nats-server versions;
//! - latency and CPU: the real daemon (`fim run`, tracepoint) with `[fleet]`, files created at
//!   1,000/s: kernel time of each change to its row being visible in PostgreSQL, and the
//!   daemon's CPU time against the same run with `[fleet]` off (rounds interleaved);
//! - who: `fim who PATH --fleet` (the process, end to end) over 1,000,000 rows from 20 hosts;
//! - rules: 50 stand-in hosts, time from `fim fleet rules put` to each host applying it.
//!
//! Usage: fim-fleet-bench [--rounds R] [--seconds S] [--rate N] [--only SECTION,...]
//!        [--out FILE]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fim::store::{Store, StoreOp};
use fim_tests::child::KillOnDrop;
use fim_tests::daemon::metric;
use fim_tests::fleet::{Fleet, fim_binary, nats_servers, stand_in_change, wait_for};
use fim_tests::prometheus::free_port;
use serde_json::{Value, json};

/// Changes published in a sustained-publish round, and in the backlog a round drains.
const SUSTAINED: u64 = 100_000;
const BACKLOG: u64 = 50_000;
/// The peer's agent publishes at most this many events per second.
const PEER_RATE: f64 = 1_000.0;
const WHO_HOSTS: u64 = 20;
const WHO_ROWS: u64 = 1_000_000;
const RULE_AGENTS: usize = 50;

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..1) by the nearest-rank method.
fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One line of the closing table.
struct Figure {
    measure: String,
    result: String,
    target: String,
    ratio: String,
}

struct Bench {
    rounds: usize,
    seconds: u64,
    rate: u64,
    figures: Vec<Figure>,
    report: serde_json::Map<String, Value>,
}

impl Bench {
    fn figure(&mut self, measure: &str, result: String, target: &str, ratio: String) {
        println!("  {measure}: {result} (target {target}; {ratio})");
        self.figures.push(Figure {
            measure: measure.into(),
            result,
            target: target.into(),
            ratio,
        });
    }
}

/// The machine and kernel the figures come from.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    json!({
        "cpu": model,
        "cpus": cpus,
        "memory_gib": memory,
        "kernel": fim::host::kernel_release(),
        "load_at_start": load(),
    })
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_address() -> Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Polls a host's `fim_fleet_published_total` until it reaches `n`; the (seconds since
/// `started`, published) samples.
fn follow_published(
    agent: &mut KillOnDrop,
    metrics: SocketAddr,
    n: u64,
    started: Instant,
    every: Duration,
) -> Result<Vec<(f64, f64)>> {
    let mut samples = Vec::new();
    let deadline = started + Duration::from_secs(300);
    loop {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited: {status}");
        }
        if let Some(published) = metric(metrics, "fim_fleet_published_total") {
            samples.push((started.elapsed().as_secs_f64(), published));
            if published >= n as f64 {
                return Ok(samples);
            }
        }
        if Instant::now() > deadline {
            bail!("{n} rows not published within 300 s ({samples:?})");
        }
        std::thread::sleep(every);
    }
}

/// The first sample at or past `count` published.
fn when(samples: &[(f64, f64)], count: f64) -> Option<(f64, f64)> {
    samples.iter().copied().find(|(_, p)| *p >= count)
}

/// Sustained publishing: rows are written into the store as fast as the writer goes while
/// the agent publishes; the rate between 10% and 90% of them acknowledged.
fn sustained_round(fleet: &Fleet, host: &str) -> Result<f64> {
    let config = fleet.host_config(host, host, &[])?;
    let metrics = free_address()?;
    let started = Instant::now();
    let mut agent = fleet.agent(
        &config,
        &[
            "--generate",
            &SUSTAINED.to_string(),
            "--metrics",
            &metrics.to_string(),
        ],
    )?;
    let samples = follow_published(
        &mut agent,
        metrics,
        SUSTAINED,
        started,
        Duration::from_millis(50),
    )?;
    let n = SUSTAINED as f64;
    let (Some((t1, p1)), Some((t2, p2))) = (when(&samples, 0.1 * n), when(&samples, 0.9 * n))
    else {
        bail!("no samples between 10% and 90%");
    };
    Ok((p2 - p1) / (t2 - t1))
}

/// A backlog of `BACKLOG` changes in the store before the agent starts (as after an outage);
/// seconds from starting the agent to the last one acknowledged.
fn drain_round(fleet: &Fleet, host: &str) -> Result<f64> {
    let config = fleet.host_config(host, host, &[])?;
    let mut store = Store::open(&config.with_extension("").join("state"))?;
    for chunk in (0..BACKLOG).collect::<Vec<_>>().chunks(5_000) {
        let ops: Vec<StoreOp> = chunk
            .iter()
            .map(|i| StoreOp::Change(stand_in_change(*i, host)))
            .collect();
        store.write(&ops)?;
    }
    drop(store);
    let metrics = free_address()?;
    let started = Instant::now();
    let mut agent = fleet.agent(&config, &["--metrics", &metrics.to_string()])?;
    let samples = follow_published(
        &mut agent,
        metrics,
        BACKLOG,
        started,
        Duration::from_millis(20),
    )?;
    Ok(samples.last().map_or(f64::NAN, |(t, _)| *t))
}

/// Publishing with acknowledgement on a 3-replica stream, both server versions.
fn publish(bench: &mut Bench) -> Result<()> {
    for (label, nats) in nats_servers() {
        println!("publish, nats-server {label}: {} rounds", bench.rounds);
        let dir = tempfile::tempdir()?;
        let hosts: Vec<(String, String)> = (0..bench.rounds)
            .map(|r| (format!("s{r}"), format!("d{r}")))
            .collect();
        let ids: Vec<(&str, &[&str])> = hosts
            .iter()
            .flat_map(|(s, d)| [(s.as_str(), &[][..]), (d.as_str(), &[][..])])
            .collect();
        let mut fleet = Fleet::start(&nats, dir.path(), &ids)?;
        // The collector is not on the acknowledgement path: left out, so the figures are
        // the publishing's alone on this 2-core machine.
        fleet.kill_collector();
        let (mut rates, mut drains) = (Vec::new(), Vec::new());
        for (s, d) in &hosts {
            let rate = sustained_round(&fleet, s)?;
            let drain = drain_round(&fleet, d)?;
            println!("  round: sustained {rate:.0}/s, backlog drained in {drain:.2} s");
            rates.push(rate);
            drains.push(drain);
        }
        let (rate, drain) = (median(rates.clone()), median(drains.clone()));
        let peer = BACKLOG as f64 / PEER_RATE;
        bench.figure(
            &format!("sustained publish with ack, R3, nats-server {label} (changes/s, one agent)"),
            format!("{rate:.0}"),
            ">= 20,000",
            format!("{:.2}x the target", rate / 20_000.0),
        );
        bench.figure(
            &format!("50,000-change backlog drained, nats-server {label} (s)"),
            format!("{drain:.2}"),
            "< 10 (the peer at 1,000/s: 50)",
            format!("{:.1}x faster than the peer", peer / drain),
        );
        bench.report.insert(
            format!("publish_{label}"),
            json!({"sustained_per_s": rates, "drain_s": drains, "peer_drain_s": peer}),
        );
    }
    Ok(())
}

/// CPU time (user + system, all threads) of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Waits until the daemon whose store is in `state` has finished its start scan.
fn wait_for_start_scan(daemon: &mut KillOnDrop, state: &Path) -> Result<()> {
    let db = state.join("fim.db");
    wait_for("the start scan", Duration::from_secs(120), || {
        if let Some(status) = daemon.try_wait()? {
            bail!("fim run exited: {status}");
        }
        Ok(rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM health WHERE kind = 'scan'", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n > 0))
    })
}

/// Creates `count` files `c<i>` in `tree` at `rate` per second (create, write, close).
fn write_files(tree: &Path, count: u64, rate: u64) -> Result<()> {
    let started = Instant::now();
    for i in 0..count {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut file = std::fs::File::create(tree.join(format!("c{i}")))?;
        file.write_all(format!("change {i}\n").as_bytes())?;
    }
    Ok(())
}

/// Follows a host's rows of `prefix*` arriving in PostgreSQL until `count` are there: for
/// each, seconds from the kernel's time of the change to the first poll that saw it (an
/// upper bound: the row was committed before that poll started).
fn follow_rows(url: &str, host: &str, prefix: &str, count: usize) -> Result<Vec<f64>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = fim::fleet::pg::connect(url).await?;
        let (mut seen, mut after) = (HashMap::new(), 0i64);
        let deadline = Instant::now() + Duration::from_secs(600);
        while seen.len() < count {
            let polled_ns = fim::daemon::now_ns();
            let rows = client
                .query(
                    "SELECT id, path, time_ns FROM fim_changes WHERE host = $1 AND id > $2 \
                     ORDER BY id",
                    &[&host, &after],
                )
                .await?;
            for row in rows {
                after = after.max(row.get::<_, i64>(0));
                let path: String = row.get(1);
                if path.starts_with(prefix) {
                    let time_ns: i64 = row.get(2);
                    seen.entry(path)
                        .or_insert((polled_ns - time_ns) as f64 / 1e9);
                }
            }
            if Instant::now() > deadline {
                bail!("only {} of {count} rows arrived", seen.len());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(seen.into_values().collect())
    })
}

/// One run of the real daemon at `rate` changes/s for `seconds`: its CPU seconds over the
/// workload, and with `[fleet]` the latencies of every change to PostgreSQL.
fn daemon_round(
    fleet: &Fleet,
    dir: &Path,
    name: &str,
    with_fleet: bool,
    bench: &Bench,
) -> Result<(f64, Vec<f64>)> {
    let tree = dir.join(format!("tree-{name}"));
    std::fs::create_dir_all(&tree)?;
    let local = format!(
        "[output]\nfile = {:?}\n[metrics]\naddress = \"{}\"\n\n\
         [[rule]]\nname = \"bench\"\npath = {:?}\nrecursive = true\n",
        dir.join(format!("{name}.json")).display().to_string(),
        free_address()?,
        tree.display().to_string(),
    );
    let config = if with_fleet {
        fleet.write_config(name, name, &[], &local, "")?
    } else {
        let path = dir.join(format!("{name}.toml"));
        let state = dir.join(name).join("state");
        std::fs::write(
            &path,
            format!("state_dir = {:?}\n{local}", state.display().to_string()),
        )?;
        path
    };
    let mut daemon = fleet.daemon(&config)?;
    wait_for_start_scan(&mut daemon, &dir.join(name).join("state"))?;
    let count = bench.rate * bench.seconds;
    let follower = with_fleet.then(|| {
        let (url, host) = (fleet.pg.url(), name.to_string());
        let prefix = format!("{}/c", tree.display());
        std::thread::spawn(move || follow_rows(&url, &host, &prefix, count as usize))
    });
    let cpu_before = cpu_seconds(daemon.id())?;
    write_files(&tree, count, bench.rate)?;
    // The last changes' work (hashing, store, publishing) inside the window too.
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_seconds(daemon.id())? - cpu_before;
    let latencies = match follower {
        Some(thread) => thread
            .join()
            .map_err(|_| anyhow::anyhow!("the PostgreSQL follower panicked"))??,
        None => Vec::new(),
    };
    daemon.signal(libc::SIGTERM);
    daemon.wait()?;
    Ok((cpu, latencies))
}

/// The real daemon with and without `[fleet]`, rounds interleaved.
fn latency_and_cpu(bench: &mut Bench) -> Result<()> {
    let (label, nats) = nats_servers().remove(1);
    println!(
        "latency and CPU, nats-server {label}: {} rounds of {} s at {} changes/s, [fleet] on and off",
        bench.rounds, bench.seconds, bench.rate
    );
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..bench.rounds).map(|r| format!("on{r}")).collect();
    let ids: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
    let fleet = Fleet::start(&nats, dir.path(), &ids)?;
    let (mut on, mut off, mut latencies, mut p99s) = (vec![], vec![], vec![], vec![]);
    for r in 0..bench.rounds {
        // Which goes first alternates, so a drift of the machine's load favours neither.
        for with_fleet in [r % 2 == 0, r % 2 == 1] {
            let name = if with_fleet {
                format!("on{r}")
            } else {
                format!("off{r}")
            };
            let (cpu, lat) = daemon_round(&fleet, dir.path(), &name, with_fleet, bench)?;
            if with_fleet {
                let p99 = quantile(lat.clone(), 0.99);
                println!(
                    "  [fleet] on: daemon CPU {cpu:.2} s; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    quantile(lat.clone(), 0.5) * 1e3,
                    p99 * 1e3,
                    quantile(lat.clone(), 1.0) * 1e3
                );
                on.push(cpu);
                p99s.push(p99);
                latencies.extend(lat);
            } else {
                println!("  [fleet] off: daemon CPU {cpu:.2} s");
                off.push(cpu);
            }
        }
    }
    let p99 = quantile(latencies.clone(), 0.99);
    bench.figure(
        &format!(
            "kernel change -> PostgreSQL row at {}/s, real daemon, p99 (ms)",
            bench.rate
        ),
        format!(
            "{:.0} (p50 {:.0}; rounds' p99 {})",
            p99 * 1e3,
            quantile(latencies.clone(), 0.5) * 1e3,
            p99s.iter()
                .map(|p| format!("{:.0}", p * 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "< 1,000",
        format!("{:.2}x the target", p99 / 1.0),
    );
    let (cpu_on, cpu_off) = (median(on.clone()), median(off.clone()));
    let cost = (cpu_on - cpu_off) / cpu_off;
    bench.figure(
        &format!(
            "publishing's share of the daemon's CPU at {}/s (median CPU s, [fleet] on vs off)",
            bench.rate
        ),
        format!("{:+.1}% ({cpu_on:.2} s vs {cpu_off:.2} s)", cost * 100.0),
        "< 5%",
        format!("{:.2}x the daemon without [fleet]", cpu_on / cpu_off),
    );
    bench.report.insert(
        "latency_cpu".into(),
        json!({
            "nats": label, "rate": bench.rate, "seconds": bench.seconds,
            "cpu_on_s": on, "cpu_off_s": off, "p99_s_by_round": p99s,
            "p50_s": quantile(latencies.clone(), 0.5), "p99_s": p99,
            "samples": latencies.len(),
        }),
    );
    Ok(())
}

/// `fim who --fleet` over `WHO_ROWS` rows from `WHO_HOSTS` hosts.
fn who(bench: &mut Bench) -> Result<()> {
    let (label, nats) = nats_servers().remove(1);
    println!("who --fleet: {WHO_ROWS} rows from {WHO_HOSTS} hosts");
    let dir = tempfile::tempdir()?;
    let fleet = Fleet::start(&nats, dir.path(), &[])?;
    wait_for("the collector's schema", Duration::from_secs(60), || {
        Ok(fleet.pg.scalar("SELECT count(*) FROM fim_changes").is_ok())
    })?;
    let started = Instant::now();
    // Host i % 20; 5,000 paths per host, each changed 10 times; one change in a hundred a
    // rename (its new name's history starts there), as in `bench who`.
    fleet.pg.scalar(&format!(
        "INSERT INTO fim_changes (host, store, id, computer, time_ns, activity, path, new_path,
             rule, grp, backend, changed, authorized, truncated_path, pid, ppid, exe, cmdline,
             uid, usr)
         SELECT 'w' || lpad((i % {WHO_HOSTS})::text, 2, '0'), 'bench', i, 'bench',
                1700000000000000000 + i * 1000000,
                CASE WHEN i % 100 = 99 THEN 5 ELSE 3 END,
                '/srv/data/d' || ((i / {WHO_HOSTS}) % 500) || '/f' || ((i / {WHO_HOSTS}) % 5000),
                CASE WHEN i % 100 = 99
                     THEN '/srv/data/d' || ((i / {WHO_HOSTS}) % 500) || '/g' || ((i / {WHO_HOSTS}) % 5000)
                END,
                'bench', 'bench', 'tracepoint', '[\"content\"]', false, false,
                1000 + i % 5000, 1, '/usr/bin/editor', 'editor file', 0, 'root'
         FROM generate_series(0::bigint, {WHO_ROWS} - 1) AS i;
         ANALYZE fim_changes;"
    ))?;
    println!(
        "  {} rows inserted in {:.0} s",
        fleet.count("SELECT count(*) FROM fim_changes"),
        started.elapsed().as_secs_f64()
    );
    let paths = [
        "/srv/data/d7/f7",
        "/srv/data/d123/f1623",
        "/srv/data/d499/f4999",
        "/srv/data/d99/g99",
    ];
    let (url, fim) = (fleet.pg.url(), fim_binary());
    let mut times = Vec::new();
    for _ in 0..bench.rounds.max(5) * 3 {
        for path in paths {
            let started = Instant::now();
            let out = Command::new(&fim)
                .args(["who", path, "--fleet", "--json", "--postgres", &url])
                .stderr(Stdio::inherit())
                .output()?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            if !out.status.success() || out.stdout.is_empty() {
                bail!("fim who {path} --fleet: {}", out.status);
            }
        }
    }
    let ms = median(times.clone());
    bench.figure(
        &format!("fim who PATH --fleet, {WHO_ROWS} rows from {WHO_HOSTS} hosts, end to end (ms)"),
        format!("{ms:.1} (p99 {:.1})", quantile(times.clone(), 0.99)),
        "< 200",
        format!("{:.2}x the target", ms / 200.0),
    );
    bench.report.insert(
        "who".into(),
        json!({"nats": label, "paths": paths, "ms": times}),
    );
    Ok(())
}

/// The applied rule names a stand-in host recorded, newest last: (time_ns, names).
fn applied(path: &Path) -> Vec<(i64, Vec<String>)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let names = v["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(String::from))
                .collect();
            (v["time_ns"].as_i64().unwrap_or(0), names)
        })
        .collect()
}

/// From `fim fleet rules put` to each of `RULE_AGENTS` hosts applying the new set.
fn rules(bench: &mut Bench) -> Result<()> {
    let (label, nats) = nats_servers().remove(1);
    let pushes = bench.rounds.max(3) + 2;
    println!("rules: {RULE_AGENTS} hosts, {pushes} pushes");
    let dir = tempfile::tempdir()?;
    let names: Vec<String> = (0..RULE_AGENTS).map(|i| format!("a{i:02}")).collect();
    let ids: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["all"][..])).collect();
    let fleet = Fleet::start(&nats, dir.path(), &ids)?;
    let files: Vec<PathBuf> = names
        .iter()
        .map(|n| dir.path().join(format!("{n}.applied")))
        .collect();
    let mut agents = Vec::new();
    for (name, file) in names.iter().zip(&files) {
        let config = fleet.host_config(name, name, &["all"])?;
        agents.push(fleet.agent(&config, &["--applied", file.to_str().unwrap_or_default()])?);
    }
    wait_for("every host's heartbeat", Duration::from_secs(180), || {
        Ok(fleet.count("SELECT count(*) FROM fim_hosts") == RULE_AGENTS as u64)
    })?;
    let mut samples = Vec::new();
    for k in 0..pushes {
        let rule = format!("push{k}");
        let put_ns = fim::daemon::now_ns();
        fleet.put_rules(
            "all",
            &format!("[[rule]]\nname = {rule:?}\npath = \"/srv/pushed/{k}\"\n"),
        )?;
        let mut at: Vec<Option<i64>> = vec![None; RULE_AGENTS];
        wait_for(
            &format!("every host applying {rule}"),
            Duration::from_secs(120),
            || {
                for (slot, file) in at.iter_mut().zip(&files) {
                    if slot.is_none() {
                        *slot = applied(file)
                            .into_iter()
                            .find(|(_, names)| names.contains(&rule))
                            .map(|(t, _)| t);
                    }
                }
                Ok(at.iter().all(Option::is_some))
            },
        )?;
        let round: Vec<f64> = at
            .iter()
            .flatten()
            .map(|t| (t - put_ns) as f64 / 1e6)
            .collect();
        println!(
            "  push {k}: p50 {:.0} ms, max {:.0} ms",
            quantile(round.clone(), 0.5),
            quantile(round.clone(), 1.0)
        );
        samples.extend(round);
    }
    drop(agents);
    let p99 = quantile(samples.clone(), 0.99);
    bench.figure(
        &format!("rules put -> applied, {RULE_AGENTS} hosts, {pushes} pushes, p99 (ms)"),
        format!("{p99:.0} (p50 {:.0})", quantile(samples.clone(), 0.5)),
        "none set",
        "-".into(),
    );
    bench.report.insert(
        "rules".into(),
        json!({"nats": label, "hosts": RULE_AGENTS, "put_to_applied_ms": samples}),
    );
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    fim_tests::require_root();
    let only: Vec<String> = flag(args, "--only")
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_else(|| {
            ["publish", "latency", "who", "rules"]
                .map(String::from)
                .to_vec()
        });
    let mut bench = Bench {
        rounds: flag(args, "--rounds").map_or(Ok(3), |v| v.parse())?,
        seconds: flag(args, "--seconds").map_or(Ok(20), |v| v.parse())?,
        rate: flag(args, "--rate").map_or(Ok(1_000), |v| v.parse())?,
        figures: Vec::new(),
        report: serde_json::Map::new(),
    };
    let out = PathBuf::from(flag(args, "--out").unwrap_or("target/bench/fleet.json".into()));
    let machine = machine();
    println!("machine: {machine}");
    let started = Instant::now();
    for section in &only {
        match section.as_str() {
            "publish" => publish(&mut bench)?,
            "latency" => latency_and_cpu(&mut bench)?,
            "who" => who(&mut bench)?,
            "rules" => rules(&mut bench)?,
            other => bail!("unknown section {other:?}: publish, latency, who, rules"),
        }
    }
    println!(
        "\n{} in {:.0} s; load average at the end {}",
        fim::host::kernel_release(),
        started.elapsed().as_secs_f64(),
        load()
    );
    println!("| measure | result | target | ratio |\n| --- | ---: | ---: | ---: |");
    for f in &bench.figures {
        println!(
            "| {} | {} | {} | {} |",
            f.measure, f.result, f.target, f.ratio
        );
    }
    bench.report.insert("machine".into(), machine);
    bench.report.insert("load_at_end".into(), json!(load()));
    bench
        .report
        .insert("seconds".into(), json!(started.elapsed().as_secs()));
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&bench.report)?)?;
    println!("written to {}", out.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fim-fleet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
