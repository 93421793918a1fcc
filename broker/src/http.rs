//! The operations listener: `/healthz`, `/metrics` (Prometheus text) and `/v1/dispatch` (the
//! seeds' IPConf: a ranked list of broker endpoints for clients to try, by load).
//!
//! A deliberately small HTTP/1.1 responder: GET only, one request per connection, request head
//! at most 8 KiB and read within 5 seconds. Anything else gets a 4xx and a close.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::Shared;

const MAX_HEAD: usize = 8 * 1024;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &shared)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
            )
            .await;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET\n").await;
    }
    match path.split('?').next().unwrap_or_default() {
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/metrics" => {
            let body = shared.metrics.render(shared.connections.load(Ordering::Relaxed));
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        "/v1/dispatch" => respond(&mut stream, "200 OK", "application/json", &dispatch(shared)).await,
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

/// The ranked endpoint list. A single node returns itself, in the shape a cluster fills with
/// its nodes ranked by load (fewest connections first); clients cache it for `ttl_secs` and try
/// the next entry when one fails (REQ-HSK-017).
fn dispatch(shared: &Shared) -> String {
    let load = shared.connections.load(Ordering::Relaxed);
    let advertise = |addr: std::net::SocketAddr, tls: bool| {
        format!("{{\"address\":\"{addr}\",\"tls\":{tls},\"connections\":{load}}}")
    };
    let mut endpoints = vec![advertise(shared.native_addr, false)];
    if let Some(tls) = shared.tls_addr {
        endpoints.push(advertise(tls, true));
    }
    format!("{{\"version\":1,\"ttl_secs\":300,\"endpoints\":[{}]}}\n", endpoints.join(","))
}

async fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
