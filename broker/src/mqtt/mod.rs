//! MQTT 3.1.1 and 5 for IoT devices (spec chapter 15): an MQTT connection is a device of a
//! Tern user, on the same router, store, tokens and access rules as native connections.
//!
//! Connections are served here, by Tern's own connection handling, with the rumqtt project's
//! MQTT codec (`packets`). rumqttd's server is not embedded: it keeps queues in memory behind a
//! QoS 0 local link (a PUBACK could precede Tern's durable store), it preallocates 20 KiB of
//! buffers per connection and its accept loop sleeps between connections; the figures are in
//! BENCHMARKS.md. An idle connection here holds no buffers at all: bytes are read into the read
//! buffer of the worker thread once the socket is readable, and only a partial packet is kept.

mod conn;
mod packets;
mod topics;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::ids::StreamId;
use tern_codec::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::{Shared, ToConnection};

/// TLS ALPN protocol id of MQTT (spec 15, 13-tls).
pub(crate) const ALPN: &[u8] = b"mqtt";

/// What the router leaves for an MQTT connection.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<ToConnection>>,
    /// The user's inbox has new messages (the connection reads them from the store).
    inbox_news: AtomicBool,
    closed: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Mailbox {
    pub(crate) fn send(&self, m: ToConnection) -> Result<(), ()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(());
        }
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(m);
        self.wake.notify_one();
        Ok(())
    }

    pub(crate) fn deliver(&self, d: &proto::Deliver) -> Result<(), ()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(());
        }
        if StreamId::from_proto(d.stream.as_ref()) == Some(StreamId::Inbox) {
            self.inbox_news.store(true, Ordering::Release);
            self.wake.notify_one();
            return Ok(());
        }
        self.send(ToConnection::Deliver(Box::new(d.clone())))
    }

    fn take(&self) -> (bool, VecDeque<ToConnection>) {
        let news = self.inbox_news.swap(false, Ordering::AcqRel);
        let queue = std::mem::take(&mut *self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        (news, queue)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Byte streams an MQTT connection runs on.
pub(crate) trait MqttIo: Send {
    /// Appends what the peer sent (waiting for at least one byte); 0 means end of stream.
    fn read_more(&mut self, buf: &mut BytesMut) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
    fn write_all(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    fn shutdown(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Size of the per-thread read buffer.
const READ_SCRATCH: usize = 16 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by all its idle connections: a connection keeps
    /// only the bytes of a partial packet, and nothing is zeroed per read.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_SCRATCH]);
}

impl MqttIo for TcpStream {
    async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        loop {
            self.readable().await?;
            let read: std::io::Result<usize> = SCRATCH.with_borrow_mut(|scratch| {
                let n = self.try_read(scratch)?;
                buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                Ok(n)
            });
            match read {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        AsyncWriteExt::write_all(self, bytes).await
    }

    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

impl MqttIo for tokio_rustls::server::TlsStream<TcpStream> {
    async fn read_more(&mut self, buf: &mut BytesMut) -> std::io::Result<usize> {
        buf.reserve(4096);
        self.read_buf(buf).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        AsyncWriteExt::write_all(self, bytes).await?;
        self.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

/// Accepts MQTT connections (over TLS when `tls` is set) until shutdown.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if *shared.shutdown.borrow() {
            break;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        match &tls {
            None => {
                tokio::spawn(conn::run(shared, stream, peer));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => conn::run(shared, tls_stream, peer).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "MQTT TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "MQTT TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Binds the MQTT listeners of `options` (TCP, and TLS with the broker's certificate).
pub(crate) async fn bind(
    options: &crate::BrokerOptions,
) -> anyhow::Result<(Option<TcpListener>, Option<(TcpListener, tokio_rustls::TlsAcceptor)>)> {
    let tcp = match options.mqtt_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let tls = match (options.mqtt_tls_listen, &options.tls) {
        (Some(a), Some(t)) => {
            let mut config = (*crate::tls::server_config(&t.cert, &t.key)?).clone();
            config.alpn_protocols = vec![ALPN.to_vec()];
            Some((TcpListener::bind(a).await?, tokio_rustls::TlsAcceptor::from(Arc::new(config))))
        }
        (Some(_), None) => anyhow::bail!("an MQTT TLS listener needs --tls-cert and --tls-key"),
        (None, _) => None,
    };
    Ok((tcp, tls))
}

/// Socket address helper for logs.
pub(crate) fn addr_of(l: &TcpListener) -> Option<SocketAddr> {
    l.local_addr().ok()
}
