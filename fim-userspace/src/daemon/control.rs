//! The daemon's side of the control socket (`crate::control`): `fim scan --now` asks the
//! scan thread for a scan and waits for its outcome.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::control::{MAX_REQUEST, socket_path};

use super::scheduled::ScanRequests;

/// A client has this long to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Clients served (or waiting for a scan) at once; more are told to come back later.
const MAX_CLIENTS: usize = 16;

/// The socket file while the daemon serves it; removed when dropped.
pub(super) struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the control socket of `state_dir` from now on. Without it only `fim scan --now`
/// is missing, so a failure is logged, not fatal.
pub(super) fn serve(state_dir: &Path, requests: Arc<ScanRequests>) -> Option<ControlSocket> {
    let path = socket_path(state_dir);
    match bind(&path) {
        Ok(listener) => {
            log::info!("fim scan --now is served on {}", path.display());
            tokio::spawn(accept(listener, requests));
            Some(ControlSocket { path })
        }
        Err(e) => {
            log::warn!("fim scan --now will not reach this daemon: {e:#}");
            None
        }
    }
}

/// Binds `path` mode 0600, replacing a socket file left by a daemon that is gone (never one
/// another daemon still serves, nor anything that is not a socket).
fn bind(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another fim daemon serves {} (two daemons on one state directory?)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // The state directory is 0700 already; the socket is its owner's only too.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

async fn accept(listener: UnixListener, requests: Arc<ScanRequests>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("control socket: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = Arc::clone(&requests);
        let slot = slots.clone().try_acquire_owned();
        tokio::spawn(async move {
            let mut stream = stream;
            let result = match slot {
                Ok(_slot) => exchange(&mut stream, &requests).await,
                Err(_) => {
                    answer(
                        &mut stream,
                        &json!({"error": format!(
                            "{MAX_CLIENTS} clients are waiting already; try again later"
                        )}),
                    )
                    .await
                }
            };
            if let Err(e) = result {
                log::debug!("control socket: {e:#}");
            }
        });
    }
}

/// One client: its request, then the answers.
async fn exchange(stream: &mut UnixStream, requests: &ScanRequests) -> Result<()> {
    let peer = stream
        .peer_cred()
        .context("reading the client's credentials")?;
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if peer.uid() != 0 && peer.uid() != own {
        return answer(
            stream,
            &json!({"error": "only root may ask fim for a scan"}),
        )
        .await;
    }
    let request = match tokio::time::timeout(REQUEST_DEADLINE, read_request(stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return answer(stream, &json!({"error": format!("{e:#}")})).await,
        Err(_) => bail!("no request within {REQUEST_DEADLINE:?}"),
    };
    if request["command"] != "scan" {
        return answer(
            stream,
            &json!({"error": format!("unknown request {request} (expected {{\"command\": \"scan\"}})")}),
        )
        .await;
    }
    let (reply, running) = match requests.submit() {
        Ok(submitted) => submitted,
        Err(why) => return answer(stream, &json!({"error": why})).await,
    };
    answer(
        stream,
        &json!({"accepted": true, "running": running.map(|k| k.name())}),
    )
    .await?;
    // Waits for the scan; a client that hangs up stops waiting (the scan goes on).
    let (read, mut write) = stream.split();
    let mut gone = [0u8; 1];
    let mut read = read;
    tokio::select! {
        reply = reply => {
            let value = match reply {
                Ok(Ok(result)) => json!({"result": *result}),
                Ok(Err(why)) => json!({"error": why}),
                Err(_) => json!({"error": "fim is stopping: the scan did not finish"}),
            };
            let mut line = value.to_string();
            line.push('\n');
            write.write_all(line.as_bytes()).await.context("answering")?;
        }
        _ = read.read(&mut gone) => {}
    }
    Ok(())
}

/// The request line (at most `MAX_REQUEST` bytes), as JSON.
async fn read_request(stream: &mut UnixStream) -> Result<Value> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    reader
        .read_line(&mut line)
        .await
        .context("reading the request")?;
    if line.len() > MAX_REQUEST {
        bail!("the request is longer than {MAX_REQUEST} bytes");
    }
    serde_json::from_str(line.trim()).with_context(|| format!("the request {line:?} is not JSON"))
}

async fn answer(stream: &mut UnixStream, value: &Value) -> Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .await
        .context("answering")?;
    Ok(())
}
