//! A real Prometheus server for tests: started on a free port with a temporary database, it
//! scrapes the given targets every second, and its HTTP query API tells what it ingested.
//!
//! Debian's `prometheus` package provides the binary (`cargo xtask setup` installs it);
//! `FIM_PROMETHEUS` names another one. A missing binary is an error, never a skipped test.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The labels of one series of a query result (including `__name__`, `job`, `instance`).
pub type Labels = BTreeMap<String, String>;

/// How long the server may take to become ready (it replays nothing: the database is new).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Prometheus; killed when dropped.
pub struct PrometheusServer {
    child: Child,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

/// Finds the Prometheus binary: `override_path` (from `FIM_PROMETHEUS`) if set, otherwise
/// `prometheus` in one of the directories of `path_var` (`PATH`).
pub fn locate_binary(
    override_path: Option<OsString>,
    path_var: Option<OsString>,
) -> Result<PathBuf> {
    let setup_hint = "run `cargo xtask setup`, which installs Debian's prometheus package";
    if let Some(path) = override_path {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "FIM_PROMETHEUS names {}, which is not a file; {setup_hint}",
                path.display()
            );
        }
        return Ok(path);
    }
    let path_var = path_var.unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "the `prometheus` binary is not installed (not on PATH {:?}, FIM_PROMETHEUS \
                 unset): the metrics tests need a real Prometheus server; {setup_hint}",
                path_var
            )
        })
}

/// A TCP port nothing listens on right now (for Prometheus itself, or for fim's endpoint in
/// end-to-end tests). Another process may take it before it is used; callers retry.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

fn config_yaml(scrape_targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = scrape_targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: fim\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

impl PrometheusServer {
    /// Starts Prometheus scraping `scrape_targets` (job `fim`, every second) and waits until
    /// it answers `/-/ready`.
    pub fn start(scrape_targets: &[SocketAddr]) -> Result<PrometheusServer> {
        let binary = locate_binary(std::env::var_os("FIM_PROMETHEUS"), std::env::var_os("PATH"))?;
        Self::start_with(&binary, scrape_targets)
    }

    /// [`start`](Self::start) with an explicit binary.
    pub fn start_with(binary: &Path, scrape_targets: &[SocketAddr]) -> Result<PrometheusServer> {
        // The free port can be taken between probing and binding: try a few.
        let mut attempt = 1;
        loop {
            match Self::try_start(binary, scrape_targets) {
                Ok(server) => return Ok(server),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_start(binary: &Path, scrape_targets: &[SocketAddr]) -> Result<PrometheusServer> {
        let dir = tempfile::Builder::new()
            .prefix("fim-prometheus-")
            .tempdir()
            .context("creating a directory for Prometheus")?;
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, config_yaml(scrape_targets))
            .with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.path().join("prometheus.log");
        let log = fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let address = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = PrometheusServer {
            child,
            address,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Where Prometheus itself listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What Prometheus logged so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query; returns each series' labels and value.
    pub fn query(&self, expr: &str) -> Result<Vec<(Labels, f64)>> {
        let body = self
            .get_json(&format!("/api/v1/query?query={}", percent_encode(expr)))
            .with_context(|| format!("querying {expr:?}"))?;
        parse_query_result(&body).with_context(|| format!("result of {expr:?}: {body}"))
    }

    /// Queries `expr` until `predicate` accepts the result (returned), or fails after
    /// `timeout` with the last result, the scrape targets' health and Prometheus's log.
    pub fn wait_for(
        &self,
        expr: &str,
        predicate: impl Fn(&[(Labels, f64)]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<(Labels, f64)>> {
        let started = Instant::now();
        loop {
            let last = self.query(expr);
            if let Ok(result) = &last
                && predicate(result)
            {
                return last;
            }
            if started.elapsed() >= timeout {
                bail!(
                    "Prometheus never returned the expected result for {expr:?} within {:?}; \
                     last result: {last:?}\nscrape targets: {}\nPrometheus log:\n{}",
                    timeout,
                    self.targets_health()
                        .unwrap_or_else(|e| format!("unknown ({e:#})")),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One line per scrape target: its URL, health and last error.
    pub fn targets_health(&self) -> Result<String> {
        let body = self.get_json("/api/v1/targets")?;
        let mut text = String::new();
        let targets = body["data"]["activeTargets"]
            .as_array()
            .context("no activeTargets in /api/v1/targets")?;
        for target in targets {
            let _ = write!(
                text,
                "{} {} {:?}; ",
                target["scrapeUrl"].as_str().unwrap_or("?"),
                target["health"].as_str().unwrap_or("?"),
                target["lastError"].as_str().unwrap_or("")
            );
        }
        Ok(text)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("checking on Prometheus")? {
                bail!(
                    "Prometheus exited during start-up ({status}); its log:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = http_get(self.address, "/-/ready") {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "Prometheus was not ready on {} after {READY_TIMEOUT:?}; its log:\n{}",
                    self.address,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (status, body) = http_get(self.address, path)?;
        let value: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "HTTP {status} from Prometheus {path} is not JSON: {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        if status != 200 || value["status"] != "success" {
            bail!(
                "Prometheus {path}: HTTP {status}: {} {}",
                value["errorType"].as_str().unwrap_or(""),
                value["error"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the `data` of an instant query: a vector (one entry per series) or a scalar.
fn parse_query_result(body: &serde_json::Value) -> Result<Vec<(Labels, f64)>> {
    let data = &body["data"];
    let sample_value = |pair: &serde_json::Value| -> Result<f64> {
        let text = pair[1].as_str().context("sample value is not a string")?;
        match text {
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => text
                .parse()
                .with_context(|| format!("sample value {text:?} is not a number")),
        }
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .context("vector result without a list")?
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .context("series without labels")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                Ok((labels, sample_value(&series["value"])?))
            })
            .collect(),
        Some("scalar") => Ok(vec![(Labels::new(), sample_value(&data["result"])?)]),
        other => bail!("unsupported result type {other:?}"),
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986 unreserved characters).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A plain HTTP/1.0 GET: the server answers without chunking and closes the connection, so
/// the body is everything after the head.
pub fn http_get(address: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")
        .with_context(|| format!("sending GET {path} to {address}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the answer to GET {path} from {address}"))?;
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("GET {path} from {address}: no HTTP head in the answer"))?;
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path} from {address}: bad status line in {head:?}"))?;
    Ok((status, answer[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_to_run_setup() {
        let error = locate_binary(None, Some("/nonexistent-a:/nonexistent-b".into()))
            .expect_err("no prometheus there");
        assert!(
            format!("{error:#}").contains("cargo xtask setup"),
            "{error:#}"
        );
        let error = locate_binary(Some("/nonexistent/prometheus".into()), None)
            .expect_err("override names nothing");
        assert!(
            format!("{error:#}").contains("cargo xtask setup"),
            "{error:#}"
        );
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode("fim_events_total{activity=\"create\"}"),
            "fim_events_total%7Bactivity%3D%22create%22%7D"
        );
    }

    #[test]
    fn config_lists_every_target() {
        let yaml = config_yaml(&[
            "127.0.0.1:9717".parse().unwrap(),
            "[::1]:1".parse().unwrap(),
        ]);
        assert!(
            yaml.contains("targets: [\"127.0.0.1:9717\", \"[::1]:1\"]"),
            "{yaml}"
        );
        assert!(yaml.contains("scrape_interval: 1s"));
    }

    #[test]
    fn parses_vector_and_scalar_results() {
        let vector = serde_json::json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {"__name__": "up", "job": "fim"}, "value": [1.5, "1"]},
                       {"metric": {}, "value": [1.5, "NaN"]}]}});
        let result = parse_query_result(&vector).unwrap();
        assert_eq!(result.len(), 2);
        assert_eq!(result[0].0["job"], "fim");
        assert_eq!(result[0].1, 1.0);
        assert!(result[1].1.is_nan());
        let scalar = serde_json::json!({"data": {"resultType": "scalar", "result": [1.5, "42"]}});
        assert_eq!(
            parse_query_result(&scalar).unwrap(),
            vec![(Labels::new(), 42.0)]
        );
    }
}
