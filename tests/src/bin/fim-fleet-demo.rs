//! `cargo xtask fleet-demo`: three hosts, a 3-node JetStream cluster and PostgreSQL on this
//! machine (loopback ports, a temporary directory), the collector, a rules push, and the
//! fleet queries. Stops everything on Ctrl-C (or at once with `--exit`).

use std::time::Duration;

use anyhow::Result;
use fim_tests::fleet::{Fleet, fim, nats_servers, wait_for};

fn main() -> Result<()> {
    let exit = std::env::args().any(|a| a == "--exit");
    let (label, nats) = nats_servers().remove(1);
    let dir = tempfile::tempdir()?;
    println!(
        "starting a 3-node NATS {label} cluster, PostgreSQL 15 and the collector in {}",
        dir.path().display()
    );
    let hosts: &[(&str, &[&str])] = &[("web-1", &["web"]), ("web-2", &["web"]), ("db-1", &["db"])];
    let fleet = Fleet::start(&nats, dir.path(), hosts)?;
    let mut agents = Vec::new();
    for (host, groups) in hosts {
        let config = fleet.host_config(host, host, groups)?;
        agents.push(fleet.agent(&config, &["--generate", "200", "--rate", "50"])?);
    }
    let out = fleet.put_rules(
        "web",
        "[[rule]]\nname = \"www\"\ngroup = \"web\"\npath = \"/srv/www\"\nrecursive = true\n",
    )?;
    print!("$ fim fleet rules put web.toml --group web\n{out}");
    wait_for("the hosts' rows", Duration::from_secs(60), || {
        Ok(fleet.count("SELECT count(*) FROM fim_changes") >= 600)
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let pg = fleet.pg.url();
    print!(
        "$ fim status --fleet\n{}",
        fim(&["status", "--fleet", "--postgres", &pg])?
    );
    print!(
        "$ fim who /srv/fleet-test/f7 --fleet\n{}",
        fim(&["who", "/srv/fleet-test/f7", "--fleet", "--postgres", &pg])?
    );
    println!("PostgreSQL: psql \"{pg}\" -c 'SELECT * FROM \"ConfigurationChange\" LIMIT 5'");
    if !exit {
        println!("running; Ctrl-C stops everything");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
            }
            let _ = tx.send(());
        });
        let _ = rx.recv();
    }
    // The hosts first, then the collector, PostgreSQL and the cluster (their guards).
    drop(agents);
    Ok(())
}
