//! The tokio client library: a background task drives the codec's [`ClientSession`] over TCP,
//! reconnecting with backoff and resuming, while the application publishes and receives.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tern_broker::client::{Client, ClientOptions, Incoming};
//! let opts = ClientOptions::new("127.0.0.1:7420".parse()?, "phone", "tern1:alice:phone:…");
//! let mut client = Client::connect(opts).await?;
//! let ack = client.publish("user/bob", b"hello".to_vec()).await?;
//! println!("stored as seq {}", ack.seq);
//! while let Some(Incoming::Message(m)) = client.next().await {
//!     println!("{}: {:?}", m.sender_user, m.payload);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tern_codec::proto;
use tern_codec::session::{backoff, ClientConfig, ClientEvent, ClientSession};
use tern_codec::{ApiError, Frame, ReasonClass, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How to reach a broker and who to be.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker address (native protocol).
    pub addr: SocketAddr,
    /// Session settings (device, token, limits, persisted counters).
    pub session: ClientConfig,
    /// Seed for keepalive jitter and backoff (vary it per device).
    pub seed: u64,
    /// TLS: the server name to verify and the client configuration; plain TCP when `None`.
    pub tls: Option<(rustls::pki_types::ServerName<'static>, std::sync::Arc<rustls::ClientConfig>)>,
}

impl ClientOptions {
    /// Options for `device` with `token` at `addr`.
    pub fn new(addr: SocketAddr, device: &str, token: &str) -> Self {
        let seed = crate::unix_now_ms() ^ device.bytes().fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        ClientOptions {
            addr,
            session: ClientConfig::new(device, Bytes::copy_from_slice(token.as_bytes())),
            seed,
            tls: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker refused the session (bad or expired token, banned, ...).
    #[error("broker refused the connection: {0}")]
    Refused(ReasonCode),
    /// The broker could not be reached.
    #[error("cannot connect")]
    Io(#[from] std::io::Error),
    /// The broker refused the message; nothing was stored.
    #[error("message refused: {0}")]
    Rejected(ReasonCode),
    /// The request was invalid locally.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// Something that arrived for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A message, once, in stream order.
    Message(proto::Deliver),
    /// A whole package, in index order.
    Package(Vec<proto::Deliver>),
    /// Another frame (SYNC_DONE, HISTORY_PAGE, RESPONSE, SUBACK, RECEIPT, PRESENCE, NOTIFY).
    Frame(Box<Frame>),
    /// A session was (re-)established.
    Connected {
        /// The broker resumed the previous session.
        session_present: bool,
    },
}

enum Command {
    Publish {
        topic: String,
        payload: Bytes,
        qos: u32,
        content_type: String,
        reply: oneshot::Sender<Result<proto::PubAck, ClientError>>,
    },
    Send {
        frame: Box<Frame>,
        reply: oneshot::Sender<Result<u32, ClientError>>,
    },
    PublishPackage {
        topic: String,
        payloads: Vec<Bytes>,
        reply: oneshot::Sender<Result<Vec<proto::PubAck>, ClientError>>,
    },
    DropLink,
    Close(oneshot::Sender<()>),
}

/// A package waiting for its outcome: the acks so far and who to tell.
struct PendingPackage {
    acks: Vec<proto::PubAck>,
    reply: oneshot::Sender<Result<Vec<proto::PubAck>, ClientError>>,
}

/// A connected client. Dropping it stops the background task without a DISCONNECT.
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    task: JoinHandle<()>,
    user: String,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Client {
    /// Connects and waits for the broker to accept the session.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(Driver::new(opts, incoming_tx).run(command_rx, ready_tx));
        match ready_rx.await {
            Ok(Ok(user)) => Ok(Client { commands, incoming, task, user }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// The user the broker authenticated (from CONNACK).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Publishes at QoS 2 and waits until the broker has stored it (exactly once, durably).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<proto::PubAck, ClientError> {
        self.publish_qos(topic, payload, 2).await
    }

    /// Publishes at the given QoS; for QoS 1/2 waits for the PUBACK.
    pub async fn publish_qos(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u32,
    ) -> Result<proto::PubAck, ClientError> {
        self.publish_typed(topic, payload, qos, "").await
    }

    /// Publishes with a payload media type (`application/tern-e2ee` for E2EE envelopes).
    pub async fn publish_typed(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: u32,
        content_type: &str,
    ) -> Result<proto::PubAck, ClientError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Publish {
            topic: topic.to_owned(),
            payload: payload.into(),
            qos,
            content_type: content_type.to_owned(),
            reply,
        };
        self.commands.send(cmd).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Publishes a package at QoS 2: the broker stores every member, in order, or none
    /// (spec 7). Returns the members' acknowledgements in index order.
    pub async fn publish_package(&self, topic: &str, payloads: Vec<Bytes>) -> Result<Vec<proto::PubAck>, ClientError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::PublishPackage { topic: topic.to_owned(), payloads, reply };
        self.commands.send(cmd).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends another client frame (SYNC, HISTORY, REQUEST, ...); returns its request id.
    pub async fn send(&self, frame: Frame) -> Result<u32, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Send { frame: Box::new(frame), reply }).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// The next thing that arrived, or `None` once the client has stopped.
    pub async fn next(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Drops the current connection as a network failure would; the client reconnects after
    /// backoff and resumes its session. For tests and diagnostics.
    pub fn drop_link(&self) {
        let _ = self.commands.send(Command::DropLink);
    }

    /// Closes the session with DISCONNECT and stops.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

struct Driver {
    opts: ClientOptions,
    session: ClientSession,
    rng: ChaCha8Rng,
    incoming: mpsc::UnboundedSender<Incoming>,
    acks: HashMap<u64, oneshot::Sender<Result<proto::PubAck, ClientError>>>,
    /// Packages by id, and the package of each member cid.
    packages: HashMap<u64, PendingPackage>,
    package_of: HashMap<u64, u64>,
    ready: Option<oneshot::Sender<Result<String, ClientError>>>,
}

/// How a link ended.
enum LinkEnd {
    /// Lost or refused for a reason worth retrying: reconnect after backoff (or this delay).
    Retry(Option<Duration>),
    /// The application closed the client, or a refusal that retrying cannot fix.
    Stop,
}

impl Driver {
    fn new(opts: ClientOptions, incoming: mpsc::UnboundedSender<Incoming>) -> Driver {
        let session = ClientSession::new(opts.session.clone(), Box::new(ChaCha8Rng::seed_from_u64(opts.seed)));
        let rng = ChaCha8Rng::seed_from_u64(opts.seed.rotate_left(17));
        Driver {
            opts,
            session,
            rng,
            incoming,
            acks: HashMap::new(),
            packages: HashMap::new(),
            package_of: HashMap::new(),
            ready: None,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        ready: oneshot::Sender<Result<String, ClientError>>,
    ) {
        self.ready = Some(ready);
        let mut attempt = 0u32;
        loop {
            let end = match open(self.opts.addr, self.opts.tls.clone()).await {
                Ok(Transport::Plain(stream)) => self.link(stream, &mut commands).await,
                Ok(Transport::Tls(stream)) => self.link(*stream, &mut commands).await,
                Err(e) => {
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(ClientError::Io(e)));
                        return;
                    }
                    LinkEnd::Retry(None)
                }
            };
            let LinkEnd::Retry(hint) = end else { return };
            let (min, max) = self.session.backoff_hint();
            let wait = hint.unwrap_or_else(|| backoff(attempt, min, max, &mut self.rng));
            attempt = attempt.saturating_add(1);
            // Commands keep flowing while we wait: publishes queue in the session.
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => if self.command(cmd).is_err() { return },
                        None => return,
                    },
                }
            }
            if self.session.is_connected() {
                attempt = 0;
            }
        }
    }

    /// Runs one connection until it ends.
    async fn link<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> LinkEnd {
        let (mut rd, mut wr) = tokio::io::split(stream);
        if self.session.connect(now()).is_err() {
            return LinkEnd::Retry(None);
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if let Some(bytes) = self.session.poll_transmit() {
                if wr.write_all(&bytes).await.is_err() {
                    self.session.link_lost(now());
                }
            }
            if let Some(end) = self.drain_events() {
                if let Some(bytes) = self.session.poll_transmit() {
                    let _ = wr.write_all(&bytes).await;
                }
                let _ = wr.shutdown().await;
                return end;
            }
            let deadline = self.session.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                // Cancel-safe: a read that loses the race has consumed nothing.
                read = rd.read(&mut buf) => match read {
                    Ok(0) | Err(_) => self.session.link_lost(now()),
                    Ok(n) => self.session.handle_bytes(now(), buf.get(..n).unwrap_or_default()),
                },
                // Cancel-safe: unreceived commands stay in the channel.
                cmd = commands.recv() => match cmd {
                    Some(Command::DropLink) => self.session.link_lost(now()),
                    Some(cmd) => if self.command(cmd).is_err() { return LinkEnd::Stop },
                    None => self.session.close(now()),
                },
                // Cancel-safe: a sleep can be dropped and recreated.
                () = crate::sleep_until(deadline) => self.session.handle_timeout(now()),
            }
        }
    }

    /// Applies an application command; `Err` when the client is closing.
    fn command(&mut self, cmd: Command) -> Result<(), ()> {
        match cmd {
            Command::Publish { topic, payload, qos, content_type, reply } => {
                match self.session.publish_typed(now(), &topic, payload, qos, &content_type) {
                    Ok(Some(cid)) => {
                        self.acks.insert(cid.0, reply);
                    }
                    Ok(None) => {
                        let _ = reply.send(Ok(proto::PubAck::default()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Send { frame, reply } => {
                let _ = reply.send(self.session.send(now(), *frame).map_err(ClientError::from));
            }
            Command::PublishPackage { topic, payloads, reply } => {
                let first = self.session.next_cid().0;
                let count = payloads.len() as u64;
                match self.session.publish_package(now(), &topic, payloads, 2) {
                    Ok(id) => {
                        for cid in first..first + count {
                            self.package_of.insert(cid, id.0);
                        }
                        self.packages.insert(id.0, PendingPackage { acks: Vec::new(), reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::DropLink => {}
            Command::Close(done) => {
                self.session.close(now());
                let _ = done.send(());
                return Err(());
            }
        }
        Ok(())
    }

    /// Hands events to the application; returns how the link ended, if it did.
    fn drain_events(&mut self) -> Option<LinkEnd> {
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Connected { session_present, user_id } => {
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(user_id));
                    }
                    let _ = self.incoming.send(Incoming::Connected { session_present });
                }
                ClientEvent::Disconnected { reason, by_peer, retry_after } => {
                    tracing::debug!(?reason, by_peer, "link ended");
                    if let Some(ready) = self.ready.take() {
                        // The first session never opened: report why instead of retrying.
                        let err = match (by_peer, reason) {
                            (true, Some(r)) => ClientError::Refused(r),
                            (_, Some(r)) => {
                                ClientError::Io(std::io::Error::other(format!("closed before CONNACK: {r}")))
                            }
                            (_, None) => ClientError::Io(std::io::Error::other("connection closed before CONNACK")),
                        };
                        let _ = ready.send(Err(err));
                        return Some(LinkEnd::Stop);
                    }
                    let fatal = by_peer && reason.is_some_and(|r| r.class() == ReasonClass::Auth);
                    if fatal || reason == Some(ReasonCode::NormalDisconnect) {
                        return Some(LinkEnd::Stop);
                    }
                    return Some(LinkEnd::Retry(retry_after));
                }
                ClientEvent::Acked(ack) if self.package_of.contains_key(&ack.cid) => {
                    let package = self.package_of.remove(&ack.cid);
                    if let Some(p) = package.and_then(|id| self.packages.get_mut(&id)) {
                        p.acks.push(ack);
                    }
                }
                ClientEvent::Acked(ack) => {
                    if let Some(reply) = self.acks.remove(&ack.cid) {
                        let ok = matches!(
                            ReasonCode::from_u32(ack.reason),
                            Some(ReasonCode::Success | ReasonCode::Duplicate)
                        );
                        let result = if ok {
                            Ok(ack)
                        } else {
                            Err(ClientError::Rejected(
                                ReasonCode::from_u32(ack.reason).unwrap_or(ReasonCode::ProtocolError),
                            ))
                        };
                        let _ = reply.send(result);
                    }
                }
                ClientEvent::PackageDone { package_id, reason } => {
                    if let Some(p) = self.packages.remove(&package_id.0) {
                        let result =
                            if reason == ReasonCode::Success { Ok(p.acks) } else { Err(ClientError::Rejected(reason)) };
                        let _ = p.reply.send(result);
                    }
                }
                ClientEvent::CidsRenumbered { offset } => {
                    // Keep waiting callers attached to their (renumbered) cids.
                    self.acks = self.acks.drain().map(|(cid, r)| (cid + offset, r)).collect();
                    self.package_of = self.package_of.drain().map(|(cid, p)| (cid + offset, p)).collect();
                }
                ClientEvent::Message(d) => {
                    let _ = self.incoming.send(Incoming::Message(d));
                }
                ClientEvent::Package(members) => {
                    let _ = self.incoming.send(Incoming::Package(members));
                }
                ClientEvent::Frame(f) => {
                    let _ = self.incoming.send(Incoming::Frame(f));
                }
            }
        }
        None
    }
}

/// Opens TCP (and TLS, when configured, with no fallback to plain TCP: REQ-TLS-004).
async fn open(
    addr: SocketAddr,
    tls: Option<(rustls::pki_types::ServerName<'static>, std::sync::Arc<rustls::ClientConfig>)>,
) -> std::io::Result<Transport> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Transport::Plain(stream)),
        Some((name, config)) => {
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(Transport::Tls(Box::new(tls)))
        }
    }
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}
