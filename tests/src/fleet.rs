//! Real servers for the fleet tests: a 3-node NATS JetStream cluster and a PostgreSQL
//! instance, each on loopback ports in a temporary directory, stopped when dropped. Both
//! nats-server versions the project supports are tested: Debian's 2.9.10 and the pinned
//! newer one `cargo xtask setup` installs. A missing server fails the test, loudly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fim::fleet::admin::Role;
use fim::store::{Actor, ChangeRecord, activity};
use serde_json::{Value, json};

use crate::child::KillOnDrop;
use crate::prometheus::{free_port, http_get};

/// The nats-server binaries to test against: (label, path).
pub fn nats_servers() -> Vec<(&'static str, PathBuf)> {
    let debian = PathBuf::from("/usr/sbin/nats-server");
    let cache = std::env::var_os("FIM_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/fim")
        });
    let pinned = cache.join("nats-server-2.15.1/nats-server");
    for (what, path) in [
        ("Debian's nats-server 2.9.10", &debian),
        ("the pinned nats-server 2.15.1", &pinned),
    ] {
        assert!(
            path.exists(),
            "{what} is not at {} (run `cargo xtask setup`)",
            path.display()
        );
    }
    vec![("2.9.10", debian), ("2.15.1", pinned)]
}

/// The fim binary cargo built next to the tests (`fim collector`, `fim fleet`, queries):
/// in `target/<profile>`, where a binary of this crate runs from, and the parent of the
/// `deps` directory an integration test runs from.
pub fn fim_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the running test binary");
    let mut dir = exe.parent().expect("target/<profile>");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let fim = dir.join("fim");
    assert!(
        fim.exists(),
        "{} is missing: build the workspace first",
        fim.display()
    );
    fim
}

/// A binary of this crate (`fim-fleet-agent`).
pub fn test_binary(name: &str) -> PathBuf {
    fim_binary().with_file_name(name)
}

struct Node {
    config: PathBuf,
    client: u16,
    http: u16,
    child: Option<KillOnDrop>,
}

/// A JetStream cluster of `nodes` servers on 127.0.0.1.
pub struct NatsCluster {
    pub dir: tempfile::TempDir,
    binary: PathBuf,
    nodes: Vec<Node>,
}

/// An nkey identity in the cluster's configuration.
pub struct Identity {
    pub seed_file: PathBuf,
}

impl NatsCluster {
    /// Starts the cluster with these users (nats-server `authorization.users` entries,
    /// as `fim fleet credentials` prints them) and waits until JetStream has a leader.
    pub fn start(binary: &Path, nodes: usize, users: &[Value]) -> Result<NatsCluster> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..nodes)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, _, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let mut list = Vec::new();
        for (i, (client, http, route)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&store)?;
            let mut config = json!({
                "server_name": format!("n{i}"),
                "host": "127.0.0.1",
                "port": client,
                "http": format!("127.0.0.1:{http}"),
                "jetstream": {"store_dir": store, "max_memory_store": 64 << 20, "max_file_store": 4u64 << 30},
                "max_payload": 1 << 20,
            });
            if nodes > 1 {
                config["cluster"] = json!({
                    "name": "fim-test",
                    "listen": format!("127.0.0.1:{route}"),
                    "routes": routes,
                });
            }
            if !users.is_empty() {
                config["authorization"] = json!({"users": users});
            }
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
            list.push(Node {
                config: path,
                client: *client,
                http: *http,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            dir,
            binary: binary.to_path_buf(),
            nodes: list,
        };
        for i in 0..nodes {
            cluster.start_node(i)?;
        }
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(cluster)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect()
    }

    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(node.config.with_extension("log"))?;
        let child = KillOnDrop::spawn(
            Command::new(&self.binary)
                .arg("-c")
                .arg(&node.config)
                .stdout(Stdio::null())
                .stderr(log),
        )
        .with_context(|| format!("starting {}", self.binary.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill();
        }
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        Ok(())
    }

    /// Every running node answers /healthz with JetStream ready.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let address = SocketAddr::from(([127, 0, 0, 1], node.http));
            loop {
                if let Ok((200, _)) = http_get(address, "/healthz") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("nats-server on port {} did not become healthy", node.client);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Messages in a stream, from the first running node's monitoring endpoint.
    pub fn stream_messages(&self, stream: &str) -> Result<u64> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let address = SocketAddr::from(([127, 0, 0, 1], node.http));
            let Ok((200, body)) = http_get(address, "/jsz?streams=true") else {
                continue;
            };
            let value: Value = serde_json::from_slice(&body)?;
            for account in value["account_details"].as_array().into_iter().flatten() {
                for s in account["stream_detail"].as_array().into_iter().flatten() {
                    if s["name"] == stream {
                        return Ok(s["state"]["messages"].as_u64().unwrap_or(0));
                    }
                }
            }
        }
        bail!("no running node reports stream {stream}")
    }
}

/// A PostgreSQL 15 instance of its own (initdb in a temporary directory owned by the
/// `postgres` user: PostgreSQL refuses to run as root).
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<KillOnDrop>,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL program run as the `postgres` user (set before exec, so the server itself
/// is the child: its kill-on-drop guard reaches it).
fn as_postgres(program: &str) -> Result<Command> {
    let name = std::ffi::CString::new("postgres")?;
    // SAFETY: getpwnam with a valid C string; the fields are read at once.
    let (uid, gid) = unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        if entry.is_null() {
            bail!("there is no postgres user (is PostgreSQL installed? run `cargo xtask setup`)");
        }
        ((*entry).pw_uid, (*entry).pw_gid)
    };
    let mut command = Command::new(Path::new(PG_BIN).join(program));
    std::os::unix::process::CommandExt::uid(&mut command, uid);
    std::os::unix::process::CommandExt::gid(&mut command, gid);
    Ok(command)
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "PostgreSQL 15 is not installed at {PG_BIN} (run `cargo xtask setup`)"
        );
        let dir = tempfile::Builder::new().prefix("fim-pg").tempdir()?;
        let data = dir.path().join("data");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()?;
        if !chown.success() {
            bail!("chown postgres {} failed", dir.path().display());
        }
        let out = as_postgres("initdb")?
            .args(["-U", "fim", "--auth=trust", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()?;
        if !out.status.success() {
            bail!("initdb: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("postgres.log"))?;
        let child = KillOnDrop::spawn(
            as_postgres("postgres")?
                .arg("-D")
                .arg(&data)
                .args([
                    "-p",
                    &port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                ])
                .arg(dir.path())
                // A test instance: no fsync (the tests kill processes, not the machine).
                .args([
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "shared_buffers=128MB",
                ])
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let pg = Postgres {
            dir,
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()?;
            if ready.success() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not start (see {}/postgres.log)",
                    pg.dir.path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(pg)
    }

    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=fim dbname=postgres", self.port)
    }

    /// One value of a query, through psql.
    pub fn scalar(&self, sql: &str) -> Result<String> {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "fim",
                "-d",
                "postgres",
            ])
            .args(["-At", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: fast shutdown (its guard kills it if that takes too long).
            child.signal(libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The `i`-th change a stand-in host (`fim-fleet-agent`, the benchmarks) writes into its
/// store: path `/srv/fleet-test/f<i mod 1000>`, one in seven a creation, the rest content
/// updates, by `/usr/bin/fleet-writer` (pid 1000 + i mod 50, root).
pub fn stand_in_change(i: u64, host: &str) -> ChangeRecord {
    ChangeRecord {
        time_ns: fim::daemon::now_ns(),
        host: host.to_string(),
        activity: if i.is_multiple_of(7) {
            activity::CREATE
        } else {
            activity::UPDATE
        },
        path: format!("/srv/fleet-test/f{}", i % 1000).into_bytes(),
        rule: Some("fleet-test".into()),
        group: Some("fleet".into()),
        backend: "tracepoint".into(),
        changed: vec!["content".into()],
        hash_after: Some(blake3::hash(&i.to_le_bytes()).to_hex().to_string()),
        size: Some(i),
        actor: Actor {
            pid: Some(1000 + (i % 50) as u32),
            ppid: Some(1),
            exe: Some(b"/usr/bin/fleet-writer".to_vec()),
            cmdline: Some(format!("fleet-writer --n {i}").into_bytes()),
            uid: Some(0),
            user: Some("root".into()),
            comm: Some("fleet-writer".into()),
            ..Actor::default()
        },
        ..ChangeRecord::default()
    }
}

/// An nkey user of `role` written into `dir`: (seed file, the server's user entry).
pub fn identity(
    dir: &Path,
    name: &str,
    role: &fim::fleet::admin::Role,
) -> Result<(PathBuf, Value)> {
    let (seed, user) = fim::fleet::admin::issue(role)?;
    let path = dir.join(format!("{name}.nk"));
    fim::fleet::admin::write_seed(&path, &seed)?;
    Ok((path, user))
}

/// Runs `fim ARGS` and returns stdout; fails with stderr.
pub fn fim(args: &[&str]) -> Result<String> {
    let out = Command::new(fim_binary()).args(args).output()?;
    if !out.status.success() {
        bail!(
            "fim {}: exit {:?}: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls until `done` or fails after `timeout`, describing what it waited for. A wait of
/// more than 5 s is printed (with `--nocapture`): where a scenario spends its time.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if done()? {
            if started.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "    waited {:.1}s for {what}",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test fleet: the cluster, PostgreSQL, the collector and the identities.
pub struct Fleet {
    pub dir: PathBuf,
    pub cluster: NatsCluster,
    pub pg: Postgres,
    collector: Option<KillOnDrop>,
    /// The running collector's metrics address.
    pub collector_metrics: String,
    pub admin: Identity,
    collector_key: Identity,
    hosts: Vec<(String, Identity)>,
}

pub fn server_args(cluster: &NatsCluster, key: &Identity) -> Vec<String> {
    let mut args = Vec::new();
    for url in cluster.urls() {
        args.push("--server".to_string());
        args.push(url);
    }
    args.push("--nkey-seed-file".into());
    args.push(key.seed_file.display().to_string());
    args
}

impl Fleet {
    /// `hosts`: (host id, groups its credentials may read).
    pub fn start(nats: &Path, dir: &Path, hosts: &[(&str, &[&str])]) -> Result<Fleet> {
        let mut users = Vec::new();
        let (admin, user) = identity(dir, "admin", &Role::Admin)?;
        users.push(user);
        let (collector_key, user) = identity(dir, "collector", &Role::Collector)?;
        users.push(user);
        let mut ids = Vec::new();
        for (host, groups) in hosts {
            let role = Role::Host {
                host: host.to_string(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
            };
            let (seed, user) = identity(dir, host, &role)?;
            users.push(user);
            ids.push((host.to_string(), Identity { seed_file: seed }));
        }
        let cluster = NatsCluster::start(nats, 3, &users)?;
        let admin = Identity { seed_file: admin };
        // A duplicate window longer than any test, so a replay is all duplicates.
        let mut init = vec![
            "fleet".to_string(),
            "init".into(),
            "--replicas".into(),
            "3".into(),
            "--duplicate-window-secs".into(),
            "900".into(),
        ];
        init.extend(server_args(&cluster, &admin));
        // The meta leader may take a moment after the nodes are up.
        wait_for("fim fleet init", Duration::from_secs(60), || {
            Ok(fim(&init.iter().map(String::as_str).collect::<Vec<_>>()).is_ok())
        })?;
        let pg = Postgres::start()?;
        let mut fleet = Fleet {
            dir: dir.to_path_buf(),
            cluster,
            pg,
            collector: None,
            collector_metrics: String::new(),
            admin,
            collector_key: Identity {
                seed_file: collector_key,
            },
            hosts: ids,
        };
        fleet.start_collector()?;
        Ok(fleet)
    }

    pub fn start_collector(&mut self) -> Result<()> {
        let mut args = vec!["collector".to_string()];
        args.extend(server_args(&self.cluster, &self.collector_key));
        self.collector_metrics = format!("127.0.0.1:{}", free_port()?);
        args.extend([
            "--postgres".into(),
            self.pg.url(),
            "--metrics".into(),
            self.collector_metrics.clone(),
        ]);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("collector.log"))?;
        self.collector = Some(KillOnDrop::spawn(
            Command::new(fim_binary())
                .args(&args)
                .stdout(Stdio::null())
                .stderr(log),
        )?);
        Ok(())
    }

    pub fn kill_collector(&mut self) {
        if let Some(mut child) = self.collector.take() {
            child.kill();
        }
    }

    pub fn key(&self, host: &str) -> &Identity {
        &self
            .hosts
            .iter()
            .find(|(h, _)| h == host)
            .expect("a host of this fleet")
            .1
    }

    /// Writes a stand-in host's fim.toml (its own state directory, a rule on a tree nothing
    /// writes to) and returns its path.
    pub fn host_config(&self, host: &str, key_of: &str, groups: &[&str]) -> Result<PathBuf> {
        self.write_config(
            host,
            key_of,
            groups,
            "[[rule]]\nname = \"local\"\npath = \"/srv/fleet-test\"\nrecursive = true\n",
            "",
        )
    }

    /// Writes `<dir>/<host>.toml`: the state directory `<dir>/<host>/state`, then `local`
    /// (outputs, metrics, rules), then `[fleet]` with this cluster, `key_of`'s key, the host
    /// id, `groups`, a 1 s heartbeat and the lines in `fleet_extra`.
    pub fn write_config(
        &self,
        host: &str,
        key_of: &str,
        groups: &[&str],
        local: &str,
        fleet_extra: &str,
    ) -> Result<PathBuf> {
        let state = self.dir.join(host);
        std::fs::create_dir_all(&state)?;
        let servers: Vec<String> = self
            .cluster
            .urls()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect();
        let groups: Vec<String> = groups.iter().map(|g| format!("{g:?}")).collect();
        let path = self.dir.join(format!("{host}.toml"));
        std::fs::write(
            &path,
            format!(
                "state_dir = {:?}\n{local}\n\
                 [fleet]\nservers = [{}]\nnkey_seed_file = {:?}\nhost_id = {host:?}\ngroups = [{}]\nheartbeat_seconds = 1\n{fleet_extra}",
                state.join("state").display().to_string(),
                servers.join(", "),
                self.key(key_of).seed_file.display().to_string(),
                groups.join(", "),
            ),
        )?;
        Ok(path)
    }

    /// The real daemon, `fim run` on the tracepoint backend (the one this machine's kernel
    /// loads), with this configuration; its log next to it.
    pub fn daemon(&self, config: &Path) -> Result<KillOnDrop> {
        let log = std::fs::File::create(config.with_extension("log"))?;
        Ok(KillOnDrop::spawn(
            Command::new(fim_binary())
                .args(["run", "--backend", "tracepoint", "--config"])
                .arg(config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        )?)
    }

    pub fn agent(&self, config: &Path, extra: &[&str]) -> Result<KillOnDrop> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.with_extension("log"))?;
        Ok(KillOnDrop::spawn(
            Command::new(test_binary("fim-fleet-agent"))
                .arg("--config")
                .arg(config)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(log),
        )?)
    }

    /// Fails when the collector has exited (a wait for its rows would only time out).
    pub fn collector_alive(&mut self) -> Result<()> {
        if let Some(child) = self.collector.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("the collector exited: {status} (see collector.log)");
        }
        Ok(())
    }

    pub fn count(&self, sql: &str) -> u64 {
        self.pg
            .scalar(sql)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn admin_args(&self) -> Vec<String> {
        server_args(&self.cluster, &self.admin)
    }

    /// `fim fleet ARGS` as the administrator: the command, to run and look at.
    pub fn admin_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(fim_binary());
        command.arg("fleet").args(args).args(self.admin_args());
        command
    }

    /// `fim fleet ARGS` as the administrator; its output, or its error with stderr.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["fleet"];
        all.extend(args);
        let admin = self.admin_args();
        all.extend(admin.iter().map(String::as_str));
        fim(&all)
    }

    /// `fim fleet rules put` of `source` (written to `<dir>/<group>.toml`) for `group`.
    pub fn put_rules(&self, group: &str, source: &str) -> Result<String> {
        let file = self.dir.join(format!("{group}.toml"));
        std::fs::write(&file, source)?;
        let file = file.to_str().context("a UTF-8 temporary path")?;
        self.admin(&["rules", "put", file, "--group", group])
    }

    /// Stores `source` as `group`'s rule set without the checks `put` makes (as an old or
    /// compromised admin tool could), returning its revision.
    pub fn force_rules(&self, group: &str, source: &str) -> Result<u64> {
        let mut settings = fim::fleet::FleetSettings::new(self.cluster.urls(), "admin");
        settings.auth = fim::fleet::settings::Auth::NkeySeedFile(self.admin.seed_file.clone());
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let admin = fim::fleet::admin::Admin::connect(&settings).await?;
            let doc = fim::fleet::rules::RuleSetDoc::new(
                "forced.toml",
                source.to_string(),
                0,
                "test".into(),
            );
            admin.put_doc(group, &doc).await
        })
    }
}
