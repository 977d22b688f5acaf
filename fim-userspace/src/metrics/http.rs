//! The `/metrics` endpoint: a deliberately small HTTP/1.1 server on tokio.
//!
//! It answers one request per connection and closes it. Every connection has a deadline and
//! a bounded request head, and only so many are served at once, so a slow or hostile client
//! can neither hold the daemon's memory nor block Prometheus for long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Exposition;

/// The media type of what [`super::Metrics::encode`] produces (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The whole exchange (reading the request, writing the response) must fit in this.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// A request head larger than this is refused (Prometheus sends a few hundred bytes).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;

/// Binds the metrics endpoint, with an error that names the address and the setting.
pub async fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| {
        format!("binding the metrics endpoint to {address} (the `[metrics] address` setting)")
    })
}

/// Serves `GET /metrics` on `listener` until the task is dropped. Never returns and never
/// panics on input; failed connections are logged at debug level.
pub async fn serve<E: Exposition + ?Sized>(listener: TcpListener, metrics: Arc<E>) {
    serve_with_deadline(listener, metrics, CONNECTION_DEADLINE).await
}

pub(super) async fn serve_with_deadline<E: Exposition + ?Sized>(
    listener: TcpListener,
    metrics: Arc<E>,
    deadline: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually a per-connection error (aborted) or a full file table: wait a
                // little instead of spinning, and keep serving.
                log::warn!("metrics endpoint: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics endpoint: {peer}: too many connections, closing");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(deadline, exchange(stream, &*metrics)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("metrics endpoint: {peer}: {e:#}"),
                Err(_) => log::debug!("metrics endpoint: {peer}: timed out"),
            }
        });
    }
}

/// A response: status line, and the body (with its content type) if any.
struct Response {
    status: &'static str,
    content_type: &'static str,
    allow: bool,
    body: String,
    send_body: bool,
}

impl Response {
    fn plain(status: &'static str, body: &str) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: format!("{body}\n"),
            send_body: true,
        }
    }
}

async fn exchange<E: Exposition + ?Sized>(mut stream: TcpStream, metrics: &E) -> Result<()> {
    let response = match read_head(&mut stream).await? {
        Head::Complete(head) => respond(&head, metrics),
        Head::TooLarge => {
            Response::plain("431 Request Header Fields Too Large", "request too large")
        }
        // The client went away before finishing its request: nobody to answer.
        Head::Closed => return Ok(()),
    };
    let mut bytes = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        bytes.push_str("Allow: GET, HEAD\r\n");
    }
    bytes.push_str("\r\n");
    if response.send_body {
        bytes.push_str(&response.body);
    }
    stream
        .write_all(bytes.as_bytes())
        .await
        .context("writing the response")?;
    stream.shutdown().await.context("closing the connection")?;
    // Closing a socket with unread input makes the kernel send a reset, which can destroy the
    // response before the client reads it: drain what the client still sends, briefly.
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Head> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .context("reading the request")?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end_of_head(&head) {
            head.truncate(end);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head ends: at the first empty line (CRLF CRLF, or bare LF LF from lenient
/// clients).
fn find_end_of_head(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn respond<E: Exposition + ?Sized>(head: &[u8], metrics: &E) -> Response {
    let bad = || Response::plain("400 Bad Request", "bad request");
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return bad();
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Response::plain("404 Not Found", "not found: fim serves /metrics");
    }
    match method {
        "GET" | "HEAD" => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            allow: false,
            body: metrics.encode(),
            send_body: method == "GET",
        },
        _ => Response {
            allow: true,
            ..Response::plain("405 Method Not Allowed", "only GET and HEAD")
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::activity;
    use std::time::Instant;

    async fn start(deadline: Duration) -> (SocketAddr, Arc<Metrics>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(serve_with_deadline(listener, metrics.clone(), deadline));
        (address, metrics)
    }

    /// Sends raw bytes, returns everything the server answers until it closes.
    async fn exchange_raw(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("server did not close the connection")
            .unwrap();
        String::from_utf8(answer).unwrap()
    }

    fn split(answer: &str) -> (&str, &str) {
        answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {answer:?}"))
    }

    #[tokio::test]
    async fn get_metrics_serves_the_exposition() {
        let (address, metrics) = start(CONNECTION_DEADLINE).await;
        metrics.change(activity::CREATE, Some("config"));
        let answer = exchange_raw(
            address,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = split(&answer);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        assert!(body.contains("fim_events_total{activity=\"create\"} 1\n"));
        assert!(body.ends_with("# EOF\n"));
        // Query strings are ignored.
        let answer = exchange_raw(address, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn head_has_no_body_and_other_methods_are_refused() {
        let (address, _) = start(CONNECTION_DEADLINE).await;
        let answer = exchange_raw(address, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        let (head, body) = split(&answer);
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert_eq!(body, "");
        let answer = exchange_raw(address, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"), "{answer}");
    }

    #[tokio::test]
    async fn other_paths_are_not_found() {
        let (address, _) = start(CONNECTION_DEADLINE).await;
        for path in ["/", "/metrics/", "/metricsx", "/../metrics"] {
            let request = format!("GET {path} HTTP/1.1\r\n\r\n");
            let answer = exchange_raw(address, request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
        }
    }

    #[tokio::test]
    async fn garbage_gets_bad_request_and_the_server_keeps_serving() {
        let (address, _) = start(CONNECTION_DEADLINE).await;
        let garbage: [&[u8]; 6] = [
            b"\r\n\r\n",
            b"hello\n\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1\xff\xfe\r\n\r\n",
        ];
        for request in garbage {
            let answer = exchange_raw(address, request).await;
            assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?}: {answer}");
        }
        // A huge head without an end is cut off.
        let answer = exchange_raw(address, &vec![b'A'; 64 * 1024]).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // A client that connects and leaves at once.
        drop(TcpStream::connect(address).await.unwrap());
        let answer = exchange_raw(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_and_does_not_block_others() {
        let deadline = Duration::from_millis(300);
        let (address, _) = start(deadline).await;
        let started = Instant::now();
        let mut silent = TcpStream::connect(address).await.unwrap();
        // Half a request, then nothing.
        silent.write_all(b"GET /metr").await.unwrap();
        let answer = exchange_raw(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
            .await
            .expect("the server kept a silent client open past its deadline");
        assert!(read.is_ok_and(|n| n == 0) || rest.is_empty());
        assert!(started.elapsed() >= deadline);
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap();
        let error = bind(address).await.expect_err("the port is taken");
        let message = format!("{error:#}");
        assert!(message.contains(&address.to_string()), "{message}");
        assert!(message.contains("[metrics] address"), "{message}");
    }
}
