//! The fleet end to end, on a real 3-node NATS JetStream cluster and a real PostgreSQL
//! (started here on loopback ports, stopped at the end), against Debian's nats-server
//! 2.9.10 and the pinned 2.15.1: agents publish their stores, the collector writes
//! PostgreSQL exactly once, central rules are pushed, rejected and rolled back, `fim who
//! --fleet` equals the union of the hosts' own `fim who`, and a host cannot publish as
//! another.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use fim_tests::fleet::{Fleet, fim, nats_servers, wait_for};
use fim_tests::prometheus::free_port;
use serde_json::Value;

/// The tail of every log a failed scenario left (agents, collector, servers).
fn dump_logs(dir: &Path) {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        eprintln!("=== {}", log.display());
        for line in tail.iter().rev() {
            eprintln!("{line}");
        }
    }
}

fn applied_rules(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn metric(address: &str, name: &str) -> Option<f64> {
    let (status, body) = fim_tests::prometheus::http_get(address.parse().ok()?, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

#[test]
fn fleet_end_to_end_on_both_servers() {
    run_on_both(end_to_end);
}

fn end_to_end(nats: &Path, dir: &Path) -> Result<()> {
    let hosts: &[(&str, &[&str])] = &[("h1", &["web"]), ("h2", &["web"]), ("h3", &["db"])];
    // h3's key may also read group web's rules (it is assigned there later).
    let keys: &[(&str, &[&str])] = &[("h1", &["web"]), ("h2", &["web"]), ("h3", &["db", "web"])];
    let mut fleet = Fleet::start(nats, dir, keys)?;
    // fim reads the server's version and refuses what an older one would silently ignore:
    // stream compression needs 2.10.
    let version = std::process::Command::new(nats).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    let old = version.contains("v2.9.");
    let init = fleet.admin(&[
        "init",
        "--replicas",
        "3",
        "--duplicate-window-secs",
        "900",
        "--compression",
    ]);
    match (old, init) {
        (true, Err(e)) => assert!(
            format!("{e:#}").contains("does not support stream compression (needs 2.10.0"),
            "{e:#}"
        ),
        (true, Ok(out)) => anyhow::bail!("{version}: --compression accepted: {out}"),
        (false, result) => {
            result?;
        }
    }
    let mut agents = Vec::new();
    // h1's metrics show the applied and the rejected revisions.
    let h1_metrics = format!("127.0.0.1:{}", free_port()?);
    for (host, groups) in hosts {
        let config = fleet.host_config(host, host, groups)?;
        let applied = dir.join(format!("{host}.applied"));
        let mut args = vec!["--generate", "300", "--applied", applied.to_str().unwrap()];
        if *host == "h1" {
            args.extend(["--metrics", &h1_metrics]);
        }
        agents.push(fleet.agent(&config, &args)?);
    }
    wait_for("900 rows in PostgreSQL", Duration::from_secs(120), || {
        fleet.collector_alive()?;
        Ok(fleet.count("SELECT count(*) FROM fim_changes") == 900)
    })?;
    assert_eq!(
        fleet.count("SELECT count(DISTINCT (host, store, id)) FROM fim_changes"),
        900
    );
    // The view has the model's columns plus the process and the host.
    let row = fleet.pg.scalar(
        "SELECT \"Computer\" || '|' || \"ChangeCategory\" || '|' || \"FileSystemPath\" || '|' || \
         \"InitiatingProcessFolderPath\" || '|' || \"InitiatingProcessCommandLine\" || '|' || \"HostId\" \
         FROM \"ConfigurationChange\" WHERE \"HostId\" = 'h2' ORDER BY \"TimeGenerated\" LIMIT 1",
    )?;
    assert!(
        row.contains("|/srv/fleet-test/f")
            && row.contains("|/usr/bin/fleet-writer|fleet-writer --n ")
            && row.ends_with("|h2"),
        "{row}"
    );

    // `fim who --fleet` is the union of every host's own `fim who`.
    let path = "/srv/fleet-test/f7";
    let mut local = BTreeSet::new();
    for (host, _) in hosts {
        let store = dir.join(host).join("state/fim.db");
        for v in json_lines(&fim(&[
            "who",
            path,
            "--json",
            "--store",
            store.to_str().unwrap(),
        ])?) {
            local.insert((
                host.to_string(),
                v["id"].as_i64().unwrap(),
                v["time_ns"].as_i64().unwrap(),
            ));
        }
    }
    let fleet_rows = who_fleet(&fleet, path)?;
    assert!(local.len() >= 3, "{local:?}");
    assert_eq!(fleet_rows, local);
    let local_who = local.clone();
    let events = json_lines(&fim(&[
        "events",
        "--fleet",
        "--host",
        "h3",
        "--path",
        "/srv/fleet-test/f1*",
        "--json",
        "--limit",
        "1000",
        "--postgres",
        &fleet.pg.url(),
    ])?);
    assert!(
        !events.is_empty() && events.iter().all(|e| e["host"] == "h3"),
        "{events:?}"
    );
    // The local command's filters mean the same across the fleet: its answer is the union
    // of every host's own `fim events` with them.
    let filters = [
        "--activity",
        "create",
        "--pid",
        "1007",
        "--exe",
        "/usr/bin/fleet-writer",
        "--uid",
        "0",
        "--path",
        "/srv/fleet-test/f*7",
        "--since",
        "2020-01-01T00:00:00Z",
        "--json",
    ];
    let mut local = BTreeSet::new();
    for (host, _) in hosts {
        let store = dir.join(host).join("state/fim.db");
        let mut args = vec!["events", "--store", store.to_str().unwrap()];
        args.extend(filters);
        for v in json_lines(&fim(&args)?) {
            local.insert((host.to_string(), v["id"].as_i64().unwrap()));
        }
    }
    let pg = fleet.pg.url();
    let mut args = vec!["events", "--fleet", "--postgres", &pg];
    args.extend(filters);
    let fleet_rows: BTreeSet<(String, i64)> = json_lines(&fim(&args)?)
        .iter()
        .map(|v| {
            (
                v["host"].as_str().unwrap().to_string(),
                v["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(local.len() >= 3, "{local:?}");
    assert_eq!(fleet_rows, local);

    // Central rules: a good rule set reaches the group's hosts, live.
    let out = fleet.put_rules(
        "web",
        "[[rule]]\nname = \"www\"\ngroup = \"web\"\npath = \"/srv/www\"\nrecursive = true\n",
    )?;
    let revision: f64 = out
        .split_whitespace()
        .skip_while(|w| *w != "revision")
        .nth(1)
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no revision in {out:?}"))?;
    for host in ["h1", "h2"] {
        wait_for(
            &format!("{host} applying the web rules"),
            Duration::from_secs(60),
            || {
                Ok(applied_rules(&dir.join(format!("{host}.applied")))
                    .last()
                    .is_some_and(|a| a["rules"].as_array().unwrap().iter().any(|r| r == "www")))
            },
        )?;
    }
    assert!(
        applied_rules(&dir.join("h3.applied")).is_empty(),
        "h3 is not in group web"
    );
    wait_for(
        "the applied revisions in PostgreSQL",
        Duration::from_secs(30),
        || {
            Ok(
                fleet.count("SELECT count(*) FROM fim_hosts WHERE applied->'revisions' ? 'web'")
                    == 2,
            )
        },
    )?;

    wait_for(
        "h1's applied revision metric",
        Duration::from_secs(30),
        || Ok(metric(&h1_metrics, "fim_fleet_rules_revision") == Some(revision)),
    )?;

    // A bad rule set is refused at put, located.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nname = \"x\"\npath = \"relative\"\n")?;
    let out = fleet
        .admin_command(&["rules", "put", bad.to_str().unwrap(), "--group", "web"])
        .output()?;
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:8:", bad.display())),
        "{stderr}"
    );

    // One forced onto the bucket anyway leaves every agent on its last good revision, with
    // the error published.
    let before: Vec<usize> = ["h1", "h2"]
        .iter()
        .map(|h| applied_rules(&dir.join(format!("{h}.applied"))).len())
        .collect();
    let forced = fleet.force_rules("web", "[[rule]]\nname = \"y\"\npath = \"relative\"\n")?;
    wait_for(
        "the rejection in PostgreSQL",
        Duration::from_secs(30),
        || {
            Ok(fleet.count(&format!(
            "SELECT count(*) FROM fim_hosts WHERE (rejected->'revisions'->>'web')::bigint = {forced} \
             AND rejected->>'error' LIKE '%fleet:web@{forced}:3:8:%'"
        )) == 2)
        },
    )?;
    assert_eq!(
        metric(&h1_metrics, "fim_fleet_rules_rejected_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&h1_metrics, "fim_fleet_rules_revision"),
        Some(revision),
        "h1 left its last good revision"
    );
    for (h, n) in ["h1", "h2"].iter().zip(before) {
        assert_eq!(
            applied_rules(&dir.join(format!("{h}.applied"))).len(),
            n,
            "{h} applied the bad set"
        );
    }
    // Rollback to the good revision: applied again, the rejection cleared.
    let revisions = json_lines(&fleet.admin(&["rules", "history", "web", "--json"])?);
    assert_eq!(revisions.len(), 2, "{revisions:?}");
    let good = revisions[0]["revision"].as_u64().unwrap().to_string();
    fleet.admin(&["rules", "rollback", "web", &good])?;
    wait_for("the rollback applied", Duration::from_secs(30), || {
        Ok(fleet.count("SELECT count(*) FROM fim_hosts WHERE rejected IS NULL AND applied->'revisions' ? 'web'") == 2)
    })?;

    // `fim fleet assign` moves h3 into group web as well, live.
    fleet.admin(&["assign", "h3", "db", "web"])?;
    wait_for("h3 applying web's rules", Duration::from_secs(60), || {
        Ok(applied_rules(&dir.join("h3.applied"))
            .last()
            .is_some_and(|a| a["rules"].as_array().unwrap().iter().any(|r| r == "www")))
    })?;
    wait_for(
        "h3's revision in PostgreSQL",
        Duration::from_secs(30),
        || {
            Ok(fleet.count(
                "SELECT count(*) FROM fim_hosts WHERE host = 'h3' AND applied->'revisions' ? 'web'",
            ) == 1)
        },
    )?;
    // A host reads only its own groups' rules: h1's key reads web's set but is refused db's.
    assert!(read_rules(&fleet, "h1", "web").is_ok());
    let refused = read_rules(&fleet, "h1", "db");
    assert!(refused.is_err(), "h1 read group db's rules: {refused:?}");

    // A host cannot publish as another: h4's agent holding h1's key is refused, counted,
    // and nothing of "h4" reaches the stream.
    let imposter_metrics = format!("127.0.0.1:{}", free_port()?);
    let imposter_config = fleet.host_config("h4", "h1", &[])?;
    let mut imposter = fleet.agent(
        &imposter_config,
        &["--generate", "5", "--metrics", &imposter_metrics],
    )?;
    wait_for("the refusal counted", Duration::from_secs(30), || {
        Ok(
            metric(&imposter_metrics, "fim_fleet_permission_denied_total")
                .is_some_and(|v| v >= 1.0)
                && metric(&imposter_metrics, "fim_fleet_publish_errors_total")
                    .is_some_and(|v| v >= 1.0),
        )
    })?;
    imposter.kill();
    assert_eq!(
        fleet.count("SELECT count(*) FROM fim_changes WHERE host = 'h4'"),
        0
    );

    // `fim status --fleet`: every host, online, with its rules.
    let status = json_lines(&fim(&[
        "status",
        "--fleet",
        "--json",
        "--postgres",
        &fleet.pg.url(),
    ])?);
    let hosts_seen: Vec<&str> = status.iter().map(|s| s["host"].as_str().unwrap()).collect();
    assert_eq!(hosts_seen, ["h1", "h2", "h3"], "{status:?}");
    assert!(
        status
            .iter()
            .all(|s| s["online"] == true && s["changes"] == 300),
        "{status:?}"
    );
    for mut agent in agents {
        agent.kill();
    }
    // Offline hosts keep their history.
    std::thread::sleep(Duration::from_secs(3));
    let status = json_lines(&fim(&[
        "status",
        "--fleet",
        "--offline-after",
        "2",
        "--json",
        "--postgres",
        &fleet.pg.url(),
    ])?);
    assert!(
        status.len() == 3
            && status
                .iter()
                .all(|s| s["online"] == false && s["changes"] == 300),
        "{status:?}"
    );
    let after = who_fleet(&fleet, path)?;
    assert_eq!(after, local_who);
    fleet.kill_collector();
    Ok(())
}

/// `fim who PATH --fleet`: (host, id, time) of each row.
fn who_fleet(fleet: &Fleet, path: &str) -> Result<BTreeSet<(String, i64, i64)>> {
    let pg = fleet.pg.url();
    Ok(json_lines(&fim(&[
        "who",
        path,
        "--json",
        "--fleet",
        "--postgres",
        &pg,
    ])?)
    .iter()
    .map(|v| {
        (
            v["host"].as_str().unwrap().to_string(),
            v["id"].as_i64().unwrap(),
            v["time_ns"].as_i64().unwrap(),
        )
    })
    .collect())
}

/// Group `group`'s current rule set, read from the bucket with `host`'s key (as its agent
/// reads it: a direct get on the key's subject).
fn read_rules(fleet: &Fleet, host: &str, group: &str) -> Result<usize> {
    let mut settings = fim::fleet::FleetSettings::new(fleet.cluster.urls(), host);
    settings.auth = fim::fleet::settings::Auth::NkeySeedFile(fleet.key(host).seed_file.clone());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = fim::fleet::nats::connect(&settings, host).await?;
        let js = fim::fleet::nats::jetstream(client);
        let bucket = format!("KV_{}", fim::fleet::subjects::RULES_BUCKET);
        let stream = js
            .get_stream_no_info(bucket)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let key = fim::fleet::subjects::bucket_subject(&fim::fleet::subjects::group_key(group));
        let message = tokio::time::timeout(
            Duration::from_secs(10),
            stream.direct_get_last_for_subject(key),
        )
        .await?
        .map_err(|e| anyhow::anyhow!(e))?;
        Ok(message.payload.len())
    })
}

fn store_changes(config: &Path) -> u64 {
    let db = config.with_extension("").join("state/fim.db");
    rusqlite::Connection::open(db)
        .and_then(|c| c.query_row("SELECT count(*) FROM changes", [], |r| r.get(0)))
        .unwrap_or(0)
}

fn outbox_cursor(config: &Path) -> i64 {
    let db = config.with_extension("").join("state/fim.db");
    rusqlite::Connection::open(db)
        .and_then(|c| {
            c.query_row(
                "SELECT value FROM fleet_outbox WHERE key = 'change.cursor'",
                [],
                |r| r.get::<_, String>(0),
            )
        })
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

type Scenario = fn(&Path, &Path) -> Result<()>;

/// Runs `scenario` against one server version in a temporary directory; on failure the
/// logs' tails, then the error. Prints how long it took (the suite's time is bounded).
fn run_on(label: &str, nats: &Path, scenario: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    if let Err(e) = scenario(nats, dir.path()) {
        dump_logs(dir.path());
        panic!("nats-server {label}: {e:#}");
    }
    eprintln!(
        "    nats-server {label}: passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn run_on_both(scenario: Scenario) {
    for (label, nats) in nats_servers() {
        run_on(label, &nats, scenario);
    }
}

/// For what does not depend on the server's version: the newer server only.
fn run_on_newer(scenario: Scenario) {
    let (label, nats) = nats_servers().remove(1);
    run_on(label, &nats, scenario);
}

/// The whole cluster down while 50,000 changes happen and the agent is killed -9 twice;
/// then everything back: the stream and PostgreSQL hold exactly the 50,000, ids
/// contiguous, the outbox empty.
#[test]
fn cluster_down_and_agent_killed_loses_nothing() {
    run_on_both(outage);
}

fn outage(nats: &Path, dir: &Path) -> Result<()> {
    const N: u64 = 50_000;
    let mut fleet = Fleet::start(nats, dir, &[("h1", &[])])?;
    let config = fleet.host_config("h1", "h1", &[])?;
    fleet.cluster.kill_all();
    let generate = ["--generate", "50000", "--rate", "25000"];
    let mut agent = fleet.agent(&config, &generate)?;
    for kill in 1..=2 {
        std::thread::sleep(Duration::from_millis(600));
        agent.kill();
        let stored = store_changes(&config);
        assert!(
            stored < N,
            "kill {kill}: all {N} changes were in the store already: not mid-flight"
        );
        agent = fleet.agent(&config, &generate)?;
    }
    wait_for(
        "50,000 changes in the store",
        Duration::from_secs(60),
        || Ok(store_changes(&config) == N),
    )?;
    assert_eq!(
        outbox_cursor(&config),
        0,
        "nothing can be acknowledged while the cluster is down"
    );
    fleet.cluster.start_all()?;
    fleet.cluster.wait_ready(Duration::from_secs(60))?;
    wait_for(
        "50,000 rows in PostgreSQL",
        Duration::from_secs(180),
        || {
            fleet.collector_alive()?;
            Ok(fleet.count("SELECT count(*) FROM fim_changes") == N)
        },
    )?;
    wait_for("the outbox drained", Duration::from_secs(30), || {
        Ok(outbox_cursor(&config) == N as i64)
    })?;
    let span = fleet.pg.scalar("SELECT min(id) || ' ' || max(id) || ' ' || count(DISTINCT id) FROM fim_changes WHERE host = 'h1'")?;
    assert_eq!(span, "1 50000 50000");
    assert_eq!(
        fleet
            .cluster
            .stream_messages(fim::fleet::subjects::EVENTS_STREAM)?,
        N
    );
    agent.kill();
    Ok(())
}

/// The real daemon (`fim run`, tracepoint backend, natively) with `[fleet]`: a file the
/// kernel saw change becomes a PostgreSQL row with the process that changed it; a rules
/// push adds a root live (its existing files scanned in, a later change under it reported
/// with its process, a write through io_uring only reported by the completeness layer with
/// its process) while the root it kept goes on being reported; the stop row follows.
#[test]
fn the_real_daemon_publishes_what_the_kernel_saw_and_follows_a_rules_push() {
    fim_tests::require_root();
    run_on_newer(real_daemon);
}

fn real_daemon(nats: &Path, dir: &Path) -> Result<()> {
    let fleet = Fleet::start(nats, dir, &[("d1", &["web"])])?;
    let tree = dir.join("watched");
    let pushed = dir.join("pushed");
    for d in [&tree, &pushed] {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(pushed.join("before"), "there before the push\n")?;
    let local = format!(
        "[output]\nfile = {:?}\n[metrics]\naddress = \"127.0.0.1:{}\"\n\n\
         [[rule]]\nname = \"kept\"\ngroup = \"local\"\npath = {:?}\nrecursive = true\n",
        dir.join("out.json").display().to_string(),
        free_port()?,
        tree.display().to_string(),
    );
    let config = fleet.write_config("d1", "d1", &["web"], &local, "")?;
    let mut daemon = fleet.daemon(&config)?;
    let alive = |daemon: &mut fim_tests::child::KillOnDrop| -> Result<()> {
        match daemon.try_wait()? {
            Some(status) => anyhow::bail!("fim run exited: {status}"),
            None => Ok(()),
        }
    };
    // Its start scan, published like every health row.
    wait_for(
        "the start scan in PostgreSQL",
        Duration::from_secs(120),
        || {
            alive(&mut daemon)?;
            Ok(
                fleet.count("SELECT count(*) FROM fim_health WHERE host = 'd1' AND kind = 'scan'")
                    == 1,
            )
        },
    )?;

    // A change the kernel saw, with its process.
    let actor = fim_tests::actor_path();
    // The newest row of `path` with this activity: "pid exe backend".
    let row = |path: &Path, activity: i32| {
        fleet
            .pg
            .scalar(&format!(
                "SELECT pid || ' ' || coalesce(exe, '') || ' ' || backend FROM fim_changes \
                 WHERE host = 'd1' AND path = '{}' AND activity = {activity} ORDER BY id DESC LIMIT 1",
                path.display()
            ))
            .unwrap_or_default()
    };
    let created = tree.join("app.conf");
    let pid = fim_tests::run_actor(&["create".as_ref(), created.as_os_str()])?;
    let expected = format!("{pid} {} tracepoint", actor.display());
    wait_for("the created file's row", Duration::from_secs(60), || {
        alive(&mut daemon)?;
        Ok(row(&created, 1) == expected)
    })?;
    let view = fleet.pg.scalar(&format!(
        "SELECT \"ChangeCategory\" || ' ' || \"InitiatingProcessId\" || ' ' || \"RuleName\" || ' ' || \"HostId\" \
         FROM \"ConfigurationChange\" WHERE \"FileSystemPath\" = '{}'",
        created.display()
    ))?;
    assert_eq!(view, format!("Added {pid} kept d1"));

    // A central rule set adds a root, live.
    fleet.put_rules(
        "web",
        &format!(
            "[[rule]]\nname = \"pushed\"\ngroup = \"web\"\npath = {:?}\nrecursive = true\n",
            pushed.display().to_string()
        ),
    )?;
    wait_for("the push applied", Duration::from_secs(60), || {
        alive(&mut daemon)?;
        Ok(fleet.count(
            "SELECT count(*) FROM fim_hosts WHERE host = 'd1' AND applied->'revisions' ? 'web'",
        ) == 1)
    })?;
    // What was there already enters through the scan of the new root (no process known).
    let before = pushed.join("before");
    wait_for("the new root's scan", Duration::from_secs(60), || {
        Ok(fleet.count(&format!(
            "SELECT count(*) FROM fim_changes WHERE host = 'd1' AND path = '{}' AND rule = 'pushed'",
            before.display()
        )) == 1)
    })?;
    // A change under the new root, and one under the kept root, each with its process.
    let after = pushed.join("after");
    let pid = fim_tests::run_actor(&["create".as_ref(), after.as_os_str()])?;
    let kept_pid = fim_tests::run_actor(&["write".as_ref(), created.as_os_str()])?;
    wait_for(
        "the changes after the push",
        Duration::from_secs(60),
        || {
            alive(&mut daemon)?;
            Ok(
                row(&after, 1) == format!("{pid} {} tracepoint", actor.display())
                    && row(&created, 3) == format!("{kept_pid} {} tracepoint", actor.display()),
            )
        },
    )?;
    // A write under the new root through io_uring only: no system call the tracepoint
    // backend sees, so only the completeness layer's marks on the new root report it in
    // real time, with its process (a rescan would report it without one).
    let uring_pid = fim_tests::run_actor(&[
        "uring-write".as_ref(),
        before.as_os_str(),
        "changed by io_uring".as_ref(),
    ])?;
    wait_for(
        "the io_uring write under the new root",
        Duration::from_secs(60),
        || {
            alive(&mut daemon)?;
            Ok(row(&before, 3).starts_with(&format!("{uring_pid} {} ", actor.display())))
        },
    )?;

    // Stopped (SIGTERM), its stop row is published before it exits.
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait()?;
    assert!(status.success(), "fim run: {status}");
    wait_for("the stop row", Duration::from_secs(30), || {
        Ok(fleet.count("SELECT count(*) FROM fim_health WHERE host = 'd1' AND kind = 'stop'") == 1)
    })?;
    Ok(())
}

/// The whole cluster down while 3,000 changes happen with `max_backlog = 1000`: when it is
/// back, the oldest 2,000 are not published but named, never a silent hole: a `fleet_gap`
/// row (ids 1..=2000) and a `fleet_resync` row (the latest state of the 1,000 paths they
/// touched) reach PostgreSQL in order with the newest 1,000 changes. One server version:
/// the bound is the agent's, not the server's.
#[test]
fn a_backlog_overflow_arrives_as_a_gap_and_a_resync() {
    run_on_newer(overflow);
}

fn overflow(nats: &Path, dir: &Path) -> Result<()> {
    let mut fleet = Fleet::start(nats, dir, &[("h1", &[])])?;
    let config = fleet.write_config(
        "h1",
        "h1",
        &[],
        "[[rule]]\nname = \"local\"\npath = \"/srv/fleet-test\"\n",
        "max_backlog = 1000\n",
    )?;
    fleet.cluster.kill_all();
    let mut agent = fleet.agent(&config, &["--generate", "3000"])?;
    wait_for(
        "3,000 changes in the store",
        Duration::from_secs(60),
        || Ok(store_changes(&config) == 3000),
    )?;
    fleet.cluster.start_all()?;
    fleet.cluster.wait_ready(Duration::from_secs(60))?;
    wait_for(
        "the newest 1,000 changes and the gap's rows in PostgreSQL",
        Duration::from_secs(120),
        || {
            fleet.collector_alive()?;
            Ok(fleet.count("SELECT count(*) FROM fim_changes") == 1000
                && fleet.count("SELECT count(*) FROM fim_health WHERE kind LIKE 'fleet_%'") == 2)
        },
    )?;
    let span = fleet
        .pg
        .scalar("SELECT min(id) || ' ' || max(id) FROM fim_changes WHERE host = 'h1'")?;
    assert_eq!(span, "2001 3000");
    let gap = fleet.pg.scalar(
        "SELECT (detail::jsonb)->>'first_id' || ' ' || ((detail::jsonb)->>'last_id') || ' ' || \
         ((detail::jsonb)->>'count') || ' ' || lost_events FROM fim_health WHERE kind = 'fleet_gap'",
    )?;
    assert_eq!(gap, "1 2000 2000 2000");
    let resync = fleet.pg.scalar(
        "SELECT ((detail::jsonb)->>'paths_total') || ' ' || \
         jsonb_array_length((detail::jsonb)->'paths') FROM fim_health WHERE kind = 'fleet_resync'",
    )?;
    assert_eq!(resync, "1000 1000");
    // The gap comes before the changes after it, in the host's health order.
    let order = fleet.pg.scalar(
        "SELECT string_agg(kind, ',' ORDER BY id) FROM fim_health WHERE kind LIKE 'fleet_%'",
    )?;
    assert_eq!(order, "fleet_gap,fleet_resync");
    wait_for("the gap in the heartbeat", Duration::from_secs(30), || {
        Ok(fleet.count("SELECT gaps FROM fim_hosts WHERE host = 'h1'") == 2000)
    })?;
    agent.kill();
    Ok(())
}

/// 100,000 changes replayed while the agent and the collector are each killed -9 twenty
/// times and one of the three brokers is killed and restarted: PostgreSQL holds each row
/// once, and the duplicate counters show the retries were de-duplicated. Each agent kill
/// waits for publishing to have moved past the next twentieth of the rows and must find
/// rows still unacknowledged, so every kill lands mid-flight whatever the machine's speed.
#[test]
fn kills_everywhere_still_exactly_once() {
    run_on_both(kills);
}

fn kills(nats: &Path, dir: &Path) -> Result<()> {
    const N: u64 = 100_000;
    const KILLS: u64 = 20;
    let mut fleet = Fleet::start(nats, dir, &[("h1", &[])])?;
    let config = fleet.host_config("h1", "h1", &[])?;
    let mut duplicates = 0.0;
    let mut collector_duplicates = 0.0;
    let mut collector_kills_mid_flight = 0;
    let mut agent_metrics = format!("127.0.0.1:{}", free_port()?);
    let start_agent = |fleet: &Fleet, metrics: &str| {
        fleet.agent(&config, &["--generate", "100000", "--metrics", metrics])
    };
    let mut agent = start_agent(&fleet, &agent_metrics)?;
    for round in 0..KILLS {
        let threshold = (round + 1) * N / (KILLS + 2);
        wait_for(
            &format!("acknowledged rows past {threshold} (kill {})", round + 1),
            Duration::from_secs(90),
            || {
                if let Some(status) = agent.try_wait()? {
                    anyhow::bail!("the agent exited: {status}");
                }
                Ok(outbox_cursor(&config) >= threshold as i64)
            },
        )?;
        duplicates +=
            metric(&agent_metrics, "fim_fleet_duplicates_acknowledged_total").unwrap_or(0.0);
        agent.kill();
        let acknowledged = outbox_cursor(&config);
        assert!(
            acknowledged < N as i64,
            "kill {}: all {N} rows were acknowledged already ({acknowledged}): not mid-flight",
            round + 1
        );
        agent_metrics = format!("127.0.0.1:{}", free_port()?);
        agent = start_agent(&fleet, &agent_metrics)?;
        std::thread::sleep(Duration::from_millis(150));
        collector_duplicates +=
            metric(&fleet.collector_metrics, "fim_collector_duplicates_total").unwrap_or(0.0);
        if fleet.count("SELECT count(*) FROM fim_changes") < N {
            collector_kills_mid_flight += 1;
        }
        fleet.kill_collector();
        fleet.start_collector()?;
        match round {
            5 => fleet.cluster.kill_node(1),
            12 => fleet.cluster.start_node(1)?,
            _ => {}
        }
    }
    wait_for(
        "100,000 rows in PostgreSQL",
        Duration::from_secs(240),
        || {
            fleet.collector_alive()?;
            Ok(fleet.count("SELECT count(*) FROM fim_changes") == N)
        },
    )?;
    assert_eq!(
        fleet.count("SELECT count(DISTINCT (host, store, id)) FROM fim_changes"),
        N
    );
    assert_eq!(store_changes(&config), N);
    assert_eq!(
        fleet
            .cluster
            .stream_messages(fim::fleet::subjects::EVENTS_STREAM)?,
        N
    );
    eprintln!(
        "    kills: {KILLS} of the agent (each mid-flight), {KILLS} of the collector \
         ({collector_kills_mid_flight} with rows still to insert); duplicates acknowledged to \
         the agent: {duplicates}, rows the collector found already inserted: \
         {collector_duplicates}"
    );
    // Now the whole store again, as after a lost cursor: every row is sent once more and
    // the server acknowledges each as a duplicate of what it holds; nothing new is stored.
    agent.kill();
    {
        let db = rusqlite::Connection::open(config.with_extension("").join("state/fim.db"))?;
        db.execute_batch(
            "UPDATE fleet_outbox SET value = '0' WHERE key = 'change.cursor';
             INSERT OR REPLACE INTO fleet_outbox (key, value) VALUES ('uncertain', '1');",
        )?;
    }
    agent_metrics = format!("127.0.0.1:{}", free_port()?);
    let mut agent = start_agent(&fleet, &agent_metrics)?;
    wait_for("the replay acknowledged", Duration::from_secs(120), || {
        Ok(
            metric(&agent_metrics, "fim_fleet_published_total").is_some_and(|v| v >= N as f64)
                && outbox_cursor(&config) == N as i64,
        )
    })?;
    let replayed = metric(&agent_metrics, "fim_fleet_duplicates_acknowledged_total").unwrap_or(0.0);
    assert_eq!(replayed, N as f64, "every replayed row is a duplicate");
    assert_eq!(
        fleet
            .cluster
            .stream_messages(fim::fleet::subjects::EVENTS_STREAM)?,
        N
    );
    assert_eq!(fleet.count("SELECT count(*) FROM fim_changes"), N);
    // The agent's and the collector's gauges agree: nothing left to send or to deliver.
    assert_eq!(metric(&agent_metrics, "fim_fleet_outbox_depth"), Some(0.0));
    assert_eq!(metric(&agent_metrics, "fim_fleet_connected"), Some(1.0));
    wait_for("the collector's lag at 0", Duration::from_secs(30), || {
        Ok(metric(&fleet.collector_metrics, "fim_collector_lag") == Some(0.0))
    })?;
    agent.kill();
    Ok(())
}

/// 50 agents (own state directories and host ids) receive a rules push and all apply it;
/// a bad rule set forced onto the bucket leaves all 50 on the last good revision with the
/// error published.
#[test]
fn fifty_agents_follow_a_rules_push() {
    run_on_both(fifty);
}

fn fifty(nats: &Path, dir: &Path) -> Result<()> {
    const AGENTS: usize = 50;
    let names: Vec<String> = (0..AGENTS).map(|i| format!("a{i:02}")).collect();
    let hosts: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &["all"][..])).collect();
    let fleet = Fleet::start(nats, dir, &hosts)?;
    let mut agents = Vec::new();
    for name in &names {
        let config = fleet.host_config(name, name, &["all"])?;
        let applied = dir.join(format!("{name}.applied"));
        agents.push(fleet.agent(&config, &["--applied", applied.to_str().unwrap()])?);
    }
    wait_for("50 heartbeats", Duration::from_secs(120), || {
        Ok(fleet.count("SELECT count(*) FROM fim_hosts") == AGENTS as u64)
    })?;
    fleet.put_rules(
        "all",
        "[[rule]]\nname = \"pushed\"\npath = \"/srv/pushed\"\n",
    )?;
    let has = |name: &str, rule: &str| {
        applied_rules(&dir.join(format!("{name}.applied")))
            .last()
            .is_some_and(|a| a["rules"].as_array().unwrap().iter().any(|r| r == rule))
    };
    wait_for(
        "every agent applying the push",
        Duration::from_secs(120),
        || Ok(names.iter().all(|n| has(n, "pushed"))),
    )?;
    wait_for(
        "every agent reporting the revision",
        Duration::from_secs(60),
        || {
            Ok(
                fleet.count("SELECT count(*) FROM fim_hosts WHERE applied->'revisions' ? 'all'")
                    == AGENTS as u64,
            )
        },
    )?;
    fleet.force_rules(
        "all",
        "[[rule]]\nname = \"broken\"\npath = \"/srv/x\"\npath_type = \"weird\"\n",
    )?;
    wait_for(
        "every agent rejecting the bad set",
        Duration::from_secs(120),
        || {
            Ok(fleet.count("SELECT count(*) FROM fim_hosts WHERE rejected->>'error' LIKE '%unknown path_type%'") == AGENTS as u64)
        },
    )?;
    assert!(
        names.iter().all(|n| has(n, "pushed")),
        "an agent left its last good revision"
    );
    for mut agent in agents {
        agent.kill();
    }
    Ok(())
}
