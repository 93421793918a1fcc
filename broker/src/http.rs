//! The operations listener: `/healthz`, `/metrics` (Prometheus text), `/v1/dispatch` (the
//! seeds' IPConf: a ranked list of broker endpoints for clients to try, by load) and the
//! admin API under `/v1/admin/` (see [`crate::admin`]).
//!
//! A deliberately small HTTP/1.1 responder: one request per connection, request head at most
//! 8 KiB, body (admin only) at most 64 KiB, all read within 5 seconds. Anything else gets a 4xx
//! and a close.

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
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").map_or(head.len(), |p| p + 4);
    let text = String::from_utf8_lossy(head.get(..end).unwrap_or_default()).into_owned();
    let mut body = head.get(end..).unwrap_or_default().to_vec();
    let mut lines = text.lines();
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default().to_owned());
    let header = |name: &str| {
        text.lines().skip(1).find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_owned())
        })
    };
    let path = path.split('?').next().unwrap_or_default().to_owned();
    if let Some(admin_path) = path.strip_prefix("/v1/admin/") {
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        if length > crate::admin::MAX_BODY {
            return respond(&mut stream, "413 Payload Too Large", "text/plain", "body too large\n").await;
        }
        while body.len() < length {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        body.truncate(length);
        let reply = crate::admin::handle(shared, method, admin_path, header("authorization").as_deref(), &body);
        return respond(&mut stream, reply.status, "application/json", &reply.body).await;
    }
    if method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", "only GET\n").await;
    }
    match path.as_str() {
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        "/metrics" => {
            let mut body = shared.metrics.render(shared.gauge.count.load(Ordering::Relaxed));
            let timings = shared.store.commit_timings();
            timings.apply_seconds.render(
                "tern_store_group_apply_seconds",
                "One group commit's transaction (every queued write applied to the engine).",
                &mut body,
            );
            timings.sync_seconds.render(
                "tern_store_sync_seconds",
                "One store flush (fdatasync) that a commit waited for.",
                &mut body,
            );
            body.push_str(&format!(
                "# HELP tern_store_bytes Store size on disk.\n# TYPE tern_store_bytes gauge\ntern_store_bytes {}\n",
                shared.store.size_on_disk()
            ));
            #[cfg(feature = "mqtt")]
            body.push_str(&format!(
                "# HELP tern_mqtt_parked_connections Idle MQTT connections waiting without a task.\n# TYPE tern_mqtt_parked_connections gauge\ntern_mqtt_parked_connections {}\n",
                shared.mqtt.parked().get()
            ));
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
    let load = shared.gauge.count.load(Ordering::Relaxed);
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
