//! MQTT 3.1.1 and 5 for IoT devices (spec chapter 15): an MQTT connection is a device of a
//! Tern user, on the same router, store, tokens and access rules as native connections.
//!
//! Connections are served here, by Tern's own connection handling, with the rumqtt project's
//! MQTT codec (`packets`). rumqttd's server is not embedded: it keeps queues in memory behind a
//! QoS 0 local link (a PUBACK could precede Tern's durable store), it preallocates 20 KiB of
//! buffers per connection and its accept loop sleeps between connections; the figures are in
//! BENCHMARKS.md. An idle connection here holds no buffers at all: bytes are read into the read
//! buffer of the worker thread once the socket is readable, and only a partial packet is kept;
//! and once it has been quiet a while it has no task either (`park`).

mod conn;
mod outgoing;
mod packets;
#[cfg(unix)]
mod park;
mod topics;

/// Without Unix file descriptors idle connections keep their tasks.
#[cfg(not(unix))]
mod park {
    pub(super) fn available() -> bool {
        false
    }

    pub(super) fn park(socket: std::net::TcpStream, conn: super::conn::Idle) {
        if let Some(runtime) = conn.runtime().cloned() {
            let _context = runtime.enter();
            match tokio::net::TcpStream::from_std(socket) {
                Ok(io) => drop(runtime.spawn(super::conn::resume(io, conn))),
                Err(_) => drop(runtime.spawn(super::conn::abandon(conn))),
            }
        }
    }

    pub(super) fn revive(_token: usize) {}
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use tern_codec::ids::StreamId;
use tern_codec::proto;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::server::{Shared, ToConnection};

/// TLS ALPN protocol id of MQTT (spec 15, 13-tls).
pub(crate) const ALPN: &[u8] = b"mqtt";

/// What the router and the sweeper leave for an MQTT connection. A connection waits on this
/// and on its socket with one `poll_fn`: no timer, channel or watch future of its own; a
/// parked one (`park`) has no task, and news revives it.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    queue: Mutex<Vec<ToConnection>>,
    /// `NEWS_*` bits.
    news: AtomicU8,
    closed: AtomicBool,
    /// Sweeps since the connection last did anything (the sweeper counts, the connection
    /// resets); at `PARK_AFTER_SWEEPS` the sweeper suggests parking.
    quiet_sweeps: AtomicU8,
    /// When the connection is silent too long (ms since the epoch; 0: never): the sweeper sets
    /// `NEWS_EXPIRED` after it.
    deadline_ms: AtomicU64,
    /// 1 + the `park` token of a parked connection, 0 while it has a task.
    parked: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

/// The user's inbox has new messages (the connection reads them from the store).
const NEWS_INBOX: u8 = 1;
/// The queue has messages.
const NEWS_QUEUE: u8 = 2;
/// The connection was silent past its deadline.
const NEWS_EXPIRED: u8 = 4;
/// The broker is shutting down.
const NEWS_SHUTDOWN: u8 = 8;
/// The connection has been quiet for a while: park it if it has nothing in progress.
const NEWS_QUIET: u8 = 16;

impl Mailbox {
    pub(crate) fn send(&self, m: ToConnection) -> Result<(), ()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(());
        }
        lock(&self.queue).push(m);
        self.signal(NEWS_QUEUE);
        Ok(())
    }

    pub(crate) fn deliver(&self, d: proto::Deliver) -> Result<(), ()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(());
        }
        if StreamId::from_proto(d.stream.as_ref()) == Some(StreamId::Inbox) {
            self.signal(NEWS_INBOX);
            return Ok(());
        }
        self.send(ToConnection::Deliver(Box::new(d)))
    }

    fn signal(&self, bit: u8) {
        // SeqCst with `park::park`'s store of `parked` and load of `news`: either this sees
        // the connection parked, or the parking sees the news.
        self.news.fetch_or(bit, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) != 0 {
            let token = self.parked.swap(0, Ordering::SeqCst);
            if token != 0 {
                return park::revive(token - 1);
            }
        }
        // Woken outside the lock: waking may run code that takes other locks.
        let waker = lock(&self.waker).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ready when something is waiting; otherwise remembers `cx`'s waker.
    fn poll_news(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.news.load(Ordering::Acquire) != 0 {
            return Poll::Ready(());
        }
        {
            let mut slot = lock(&self.waker);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        // A signal between the check and the registration found no waker: look again.
        if self.news.load(Ordering::Acquire) != 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Takes the news bits and the queue.
    fn take(&self) -> (u8, Vec<ToConnection>) {
        let news = self.news.swap(0, Ordering::AcqRel);
        let queue = if news & NEWS_QUEUE != 0 { std::mem::take(&mut *lock(&self.queue)) } else { Vec::new() };
        (news, queue)
    }

    /// The connection must hear from the device within `silence` (or never, with `None`).
    fn expect_within(&self, silence: Option<Duration>) {
        let deadline =
            silence.map_or(0, |d| crate::unix_now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2));
        self.deadline_ms.store(deadline, Ordering::Release);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The connection did something: it is not quiet.
    fn active(&self) {
        if self.quiet_sweeps.load(Ordering::Relaxed) != 0 {
            self.quiet_sweeps.store(0, Ordering::Relaxed);
        }
    }

    fn has_news(&self) -> bool {
        self.news.load(Ordering::SeqCst) != 0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every open MQTT connection's mailbox, for the sweeper.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<u64, Arc<Mailbox>>>,
    /// The broker's runtime, on which parked connections are revived.
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Connections parked right now (`park`).
    parked: ParkedGauge,
}

/// How many connections are parked, and a signal when that changes.
#[derive(Debug, Default)]
pub(crate) struct ParkedGauge {
    count: AtomicU64,
    changed: tokio::sync::Notify,
}

impl ParkedGauge {
    /// One more connection parked.
    pub(super) fn parked(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// One parked connection revived.
    pub(super) fn revived(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until exactly `n` connections are parked.
    pub(crate) async fn until(&self, n: u64) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(Ordering::Acquire) == n {
                return;
            }
            changed.await;
        }
    }
}

impl Registry {
    /// MQTT connections parked right now: idle, waiting without a task.
    pub(crate) fn parked(&self) -> &ParkedGauge {
        &self.parked
    }

    fn add(&self, conn_id: u64, mailbox: Arc<Mailbox>) {
        lock(&self.conns).insert(conn_id, mailbox);
    }

    fn remove(&self, conn_id: u64) {
        lock(&self.conns).remove(&conn_id);
    }

    /// Raises `bit` on every connection for which `due` holds.
    fn signal_where(&self, bit: u8, due: impl Fn(&Mailbox) -> bool) {
        for m in lock(&self.conns).values() {
            if due(m) {
                m.signal(bit);
            }
        }
    }

    /// One sweep: connections silent past their deadline expire; connections quiet for
    /// `PARK_AFTER_SWEEPS` sweeps in a row are told so, once, and park if they can.
    fn sweep(&self, now_ms: u64) {
        for m in lock(&self.conns).values() {
            let deadline = m.deadline_ms.load(Ordering::Acquire);
            if deadline != 0 && now_ms > deadline {
                m.signal(NEWS_EXPIRED);
                continue;
            }
            if m.parked.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let quiet = m.quiet_sweeps.load(Ordering::Relaxed);
            if quiet < PARK_AFTER_SWEEPS {
                m.quiet_sweeps.store(quiet + 1, Ordering::Relaxed);
                if quiet + 1 == PARK_AFTER_SWEEPS {
                    m.signal(NEWS_QUIET);
                }
            }
        }
    }
}

/// How often the sweeper looks for silent connections: keep-alive timeouts are late by at most
/// this much.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Sweeps without activity after which a connection parks (about a second): long enough that
/// a connection in use is not parked and revived between its packets.
const PARK_AFTER_SWEEPS: u8 = 4;

/// One task for all MQTT connections' timers: keep-alive and CONNECT timeouts, and shutdown.
pub(crate) async fn sweeper(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => shared.mqtt.sweep(crate::unix_now_ms()),
            _ = shutdown.changed() => {
                shared.mqtt.signal_where(NEWS_SHUTDOWN, |_| true);
                return;
            }
        }
    }
}

/// Byte streams an MQTT connection runs on.
pub(crate) trait MqttIo: Send {
    /// Whether an idle connection on this stream can wait without a task (`park`).
    const PARKABLE: bool;
    /// The socket, for parking (only called when `PARKABLE`).
    fn into_socket(self) -> std::io::Result<std::net::TcpStream>;
    /// Appends what the peer sent once there is something; `Ready(Ok(0))` is the end of stream.
    fn poll_read_more(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<std::io::Result<usize>>;
    fn write_all(&mut self, bytes: &[u8]) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    fn shutdown(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Size of the per-thread read buffer.
const READ_SCRATCH: usize = 16 * 1024;

thread_local! {
    /// One read buffer per worker thread, shared by all its connections: a connection keeps
    /// only the bytes of a partial packet, and nothing is zeroed per read.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_SCRATCH]);
}

impl MqttIo for TcpStream {
    const PARKABLE: bool = true;

    fn into_socket(self) -> std::io::Result<std::net::TcpStream> {
        self.into_std()
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        loop {
            match self.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let read: std::io::Result<usize> = SCRATCH.with_borrow_mut(|scratch| {
                let n = self.try_read(scratch)?;
                buf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                Ok(n)
            });
            match read {
                // Readiness was stale: poll again, which registers the waker.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
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
    /// The TLS session's state (rustls buffers) would have to be parked too; TLS devices
    /// keep their tasks.
    const PARKABLE: bool = false;

    fn into_socket(self) -> std::io::Result<std::net::TcpStream> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "MQTT over TLS is not parked"))
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = tokio::io::ReadBuf::new(scratch);
            match std::pin::Pin::new(&mut *self).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    buf.extend_from_slice(rb.filled());
                    Poll::Ready(Ok(rb.filled().len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
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
    // Port 1883 is often taken by another MQTT broker: say which listener failed, and how to move it.
    let hint = |a: SocketAddr| format!("MQTT listener on {a} (move it with --mqtt-listen, or --no-mqtt)");
    let tcp = match options.mqtt_listen {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| hint(a))?),
        None => None,
    };
    let tls = match (options.mqtt_tls_listen, &options.tls) {
        (Some(a), Some(t)) => {
            let mut config = (*crate::tls::server_config(&t.cert, &t.key)?).clone();
            config.alpn_protocols = vec![ALPN.to_vec()];
            let l = TcpListener::bind(a).await.with_context(|| format!("MQTT TLS listener on {a}"))?;
            Some((l, tokio_rustls::TlsAcceptor::from(Arc::new(config))))
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
