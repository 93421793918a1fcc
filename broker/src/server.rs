//! The broker: listener, shared state, and the router from users to their live connections.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_codec::proto;
use tern_codec::session::{BrokerConfig, BrokerSession};
use tern_codec::{Frame, ReasonCode};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::store::Store;
use crate::token::TokenKey;

/// What `tern serve` needs.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Native protocol listener (port 0 picks one).
    pub listen: SocketAddr,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Session limits.
    pub session: BrokerConfig,
    /// How long a dropped session stays resumable.
    pub resume_grace: Duration,
    /// Most simultaneous connections; more are refused with SERVER_BUSY.
    pub max_connections: usize,
    /// Groups up to this size use write fan-out, larger ones read fan-out (REQ-GRP-002).
    pub write_fanout_threshold: usize,
    /// A TLS listener, when configured.
    pub tls: Option<TlsOptions>,
    /// Conversations up to this size get read receipts; larger ones do not (REQ-GRP-008).
    pub receipt_threshold: usize,
    /// The operations HTTP listener (`/healthz`, `/metrics`, `/v1/dispatch`), when set.
    pub http: Option<SocketAddr>,
    /// PUBLISHes per second one connection may sustain, and its burst; beyond it PUBACK says
    /// RATE_LIMITED and nothing is stored.
    pub publish_rate: (f64, f64),
    /// Key-bundle claims per second and burst, per (claimant, target device) (REQ-E2E-003).
    pub claim_rate: (f64, f64),
    /// Message retention per conversation, enforced every `compaction_interval`.
    pub retention: crate::store::Retention,
    /// How often compaction runs when retention is set.
    pub compaction_interval: Duration,
    /// The store engine; `None`: the one the data directory already holds, fjall for a new one.
    pub engine: Option<crate::store::Engine>,
    /// The MQTT listener (spec chapter 15), when set; `tern serve` defaults to 127.0.0.1:1883.
    pub mqtt_listen: Option<SocketAddr>,
    /// The MQTT-over-TLS listener (needs `tls` for its certificate), when set.
    pub mqtt_tls_listen: Option<SocketAddr>,
}

/// The TLS listener's address and PEM files.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Address (port 0 picks one).
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl BrokerOptions {
    /// Defaults: listen on `listen`, store in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        BrokerOptions {
            listen,
            data_dir,
            session: BrokerConfig::default(),
            resume_grace: Duration::from_secs(120),
            max_connections: 19_000,
            write_fanout_threshold: 500,
            tls: None,
            receipt_threshold: 100,
            http: None,
            publish_rate: (1000.0, 2000.0),
            claim_rate: (0.1, 10.0),
            retention: crate::store::Retention::default(),
            compaction_interval: Duration::from_secs(60),
            engine: None,
            mqtt_listen: None,
            mqtt_tls_listen: None,
        }
    }
}

/// A message for a connection task.
#[derive(Debug)]
pub(crate) enum ToConnection {
    /// Push this DELIVER.
    Deliver(Box<proto::Deliver>),
    /// Push this room or telemetry message, shared with the other connections it goes to
    /// (sent to MQTT connections; native ones get their own copy as `Deliver`).
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    Live(Arc<LiveDeliver>),
    /// Close with this reason (takeover, shutdown).
    Close(ReasonCode),
    /// Close with SESSION_TAKEN_OVER and hand the session to the connection that resumes it
    /// (the same device reconnected, naming this session, before this link was seen to die).
    HandOver(tokio::sync::oneshot::Sender<Parked>),
    /// Send this frame (RECEIPT, PRESENCE).
    Frame(Box<Frame>),
    /// A read fan-out conversation has news: send NOTIFY.
    Notify {
        /// The conversation.
        conversation_id: u64,
    },
}

/// A room or telemetry message on its way to every subscriber at once: one copy for all of
/// them, and the bytes of a presentation that many connections send alike (an MQTT 3.1.1 QoS 0
/// PUBLISH of the raw topic), encoded by the first connection that needs them. Encoding and
/// copying per subscriber were a good part of a delivery's own cost at 10k subscribers.
#[derive(Debug)]
pub(crate) struct LiveDeliver {
    pub(crate) deliver: proto::Deliver,
    encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl LiveDeliver {
    /// The shared form of `d` when it goes to more than one connection (for one, sharing would
    /// only add a copy: measured as a few percent more CPU per message on MQTT point to point).
    pub(crate) fn shared_by(connections: usize, d: &proto::Deliver) -> Option<Arc<Self>> {
        (connections > 1).then(|| Arc::new(LiveDeliver { deliver: d.clone(), encoded: std::sync::OnceLock::new() }))
    }

    /// The shared presentation's bytes (every caller must pass the same `encode`).
    #[cfg_attr(not(feature = "mqtt"), allow(dead_code))]
    pub(crate) fn encoded(&self, encode: impl FnOnce(&proto::Deliver) -> bytes::Bytes) -> &bytes::Bytes {
        self.encoded.get_or_init(|| encode(&self.deliver))
    }
}

/// Where the router sends work for one connection: a native connection's channel, or an MQTT
/// connection's mailbox (lighter, for fleets of idle devices).
#[derive(Debug, Clone)]
pub(crate) enum Outbox {
    Native(mpsc::UnboundedSender<ToConnection>),
    #[cfg(feature = "mqtt")]
    Mqtt(Arc<crate::mqtt::Mailbox>),
}

impl Outbox {
    /// Queues a message; an error means the connection is gone.
    pub(crate) fn send(&self, m: ToConnection) -> Result<(), ()> {
        match self {
            Outbox::Native(tx) => tx.send(m).map_err(|_| ()),
            #[cfg(feature = "mqtt")]
            Outbox::Mqtt(mailbox) => mailbox.send(m),
        }
    }

    /// Hands over a message to deliver; an error means the connection is gone. An MQTT
    /// connection reads stored messages from the inbox itself, so for it an inbox message is
    /// only a wake-up.
    pub(crate) fn deliver(&self, d: proto::Deliver) -> Result<(), ()> {
        match self {
            Outbox::Native(tx) => tx.send(ToConnection::Deliver(Box::new(d))).map_err(|_| ()),
            #[cfg(feature = "mqtt")]
            Outbox::Mqtt(mailbox) => mailbox.deliver(d),
        }
    }

    /// Hands over a room or telemetry message `d`, in its shared form `live` if it has one.
    pub(crate) fn deliver_live(&self, d: &proto::Deliver, live: Option<&Arc<LiveDeliver>>) -> Result<(), ()> {
        match (self, live) {
            #[cfg(feature = "mqtt")]
            (Outbox::Mqtt(mailbox), Some(live)) => mailbox.send(ToConnection::Live(live.clone())),
            _ => self.deliver(d.clone()),
        }
    }
}

/// A live connection of one device.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) conn_id: u64,
    pub(crate) tx: Outbox,
    /// The session this connection carries (what a resuming CONNECT names).
    pub(crate) session_id: Vec<u8>,
    /// When this device came online, or last changed status (ms since the epoch).
    pub(crate) since_ms: u64,
    /// ONLINE or AWAY, as the device reports (REQ-PRS-003).
    pub(crate) status: proto::PresenceStatus,
}

/// A user's live devices. Most users have one to three, so a small vector (one allocation the
/// size of its entries) instead of a hash map per user: it keeps a fleet of single-device users
/// (IoT) a few hundred bytes lighter per connection.
#[derive(Debug, Default)]
pub(crate) struct DeviceMap(Vec<(String, Live)>);

impl DeviceMap {
    pub(crate) fn get(&self, device: &str) -> Option<&Live> {
        self.0.iter().find(|(d, _)| d == device).map(|(_, l)| l)
    }

    pub(crate) fn get_mut(&mut self, device: &str) -> Option<&mut Live> {
        self.0.iter_mut().find(|(d, _)| d == device).map(|(_, l)| l)
    }

    /// Inserts or replaces the device's entry.
    pub(crate) fn insert(&mut self, device: String, live: Live) {
        match self.get_mut(&device) {
            Some(slot) => *slot = live,
            None => {
                // Most users have one or two live devices: grow by one, not to four at once
                // (an entry is about 90 bytes, on every idle connection).
                self.0.reserve_exact(1);
                self.0.push((device, live));
            }
        }
    }

    pub(crate) fn remove(&mut self, device: &str) -> Option<Live> {
        let i = self.0.iter().position(|(d, _)| d == device)?;
        Some(self.0.swap_remove(i).1)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Live)> {
        self.0.iter().map(|(d, l)| (d, l))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(d, _)| d)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Live> {
        self.0.iter().map(|(_, l)| l)
    }
}

/// A session whose link dropped, kept for resume until its grace period ends.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) session_id: Vec<u8>,
    pub(crate) machine: BrokerSession,
    pub(crate) parked_at: tokio::time::Instant,
}

/// Users' live connections and parked sessions.
#[derive(Default)]
pub(crate) struct Router {
    pub(crate) live: HashMap<String, DeviceMap>,
    /// Parked sessions by user, then device (so a delivery finds a user's in O(1)).
    pub(crate) parked: HashMap<String, HashMap<String, Parked>>,
    /// Who watches whose presence: watched user → watcher connection → its channel.
    pub(crate) watchers: HashMap<String, HashMap<u64, Outbox>>,
    /// When each user's last device went offline (ms).
    pub(crate) last_seen: HashMap<String, u64>,
    /// Room subscribers: room conversation → connection → its channel.
    pub(crate) rooms: HashMap<u64, HashMap<u64, Outbox>>,
    /// Telemetry subscriptions by the user whose devices publish: (connection, filter, outbox).
    pub(crate) telemetry: HashMap<String, Vec<(u64, String, Outbox)>>,
}

impl Router {
    /// Sends a DELIVER to every live device of `user` but the connection `except` (a parked
    /// session's machine queues it for its resume).
    pub(crate) fn push(&mut self, user: &str, except: Option<u64>, d: proto::Deliver, now: std::time::Instant) {
        let live =
            self.live.get(user).map_or(0, |devices| devices.values().filter(|l| Some(l.conn_id) != except).count());
        let parked = self.parked.get(user).map_or(0, HashMap::len);
        let mut copies = crate::copies(d, live + parked);
        if let Some(devices) = self.live.get(user) {
            for (live, d) in devices.values().filter(|l| Some(l.conn_id) != except).zip(copies.by_ref()) {
                let _ = live.tx.deliver(d);
            }
        }
        for (parked, d) in self.parked.get_mut(user).into_iter().flat_map(HashMap::values_mut).zip(copies) {
            let _ = parked.machine.deliver(now, d);
        }
    }
}

impl Router {
    /// Adds a connection to a room's audience.
    pub(crate) fn subscribe_room(&mut self, room: u64, conn_id: u64, tx: Outbox) {
        self.rooms.entry(room).or_default().insert(conn_id, tx);
    }

    /// Removes a connection from a room's audience; whether it was there.
    pub(crate) fn unsubscribe_room(&mut self, room: u64, conn_id: u64) -> bool {
        let removed = self.rooms.get_mut(&room).is_some_and(|subs| subs.remove(&conn_id).is_some());
        self.rooms.retain(|_, subs| !subs.is_empty());
        removed
    }

    /// Removes a closing connection from every room and telemetry subscription.
    pub(crate) fn leave_all_rooms(&mut self, conn_id: u64) {
        for subs in self.rooms.values_mut() {
            subs.remove(&conn_id);
        }
        self.rooms.retain(|_, subs| !subs.is_empty());
        for subs in self.telemetry.values_mut() {
            subs.retain(|(c, _, _)| *c != conn_id);
        }
        self.telemetry.retain(|_, subs| !subs.is_empty());
    }

    /// Adds a telemetry filter (below `device/{owner}/`) for a connection.
    pub(crate) fn subscribe_telemetry(&mut self, owner: &str, conn_id: u64, filter: &str, tx: Outbox) {
        let subs = self.telemetry.entry(owner.to_owned()).or_default();
        if !subs.iter().any(|(c, f, _)| *c == conn_id && f == filter) {
            subs.push((conn_id, filter.to_owned(), tx));
        }
    }

    /// Removes a telemetry filter of a connection; whether it was there.
    pub(crate) fn unsubscribe_telemetry(&mut self, owner: &str, conn_id: u64, filter: &str) -> bool {
        let Some(subs) = self.telemetry.get_mut(owner) else { return false };
        let before = subs.len();
        subs.retain(|(c, f, _)| !(*c == conn_id && f == filter));
        let removed = subs.len() != before;
        self.telemetry.retain(|_, subs| !subs.is_empty());
        removed
    }

    /// Sends a telemetry message of one of `owner`'s devices to every connection with a
    /// matching filter, once per connection.
    pub(crate) fn broadcast_telemetry(&mut self, owner: &str, d: &proto::Deliver) {
        let Some(subs) = self.telemetry.get_mut(owner) else { return };
        let live = LiveDeliver::shared_by(subs.len(), d);
        // A set, not a list: a user's telemetry can have 10k subscribers (a linear search here
        // cost 50M comparisons per message at 10k, under the router lock).
        let mut sent: HashSet<u64> = HashSet::with_capacity(subs.len());
        // Subscribers mostly share one filter: a run of equal filters is matched once.
        let mut last_match: Option<(String, bool)> = None;
        subs.retain(|(conn_id, filter, tx)| {
            let matches = match &last_match {
                Some((f, m)) if f == filter => *m,
                _ => {
                    let m = tern_codec::ids::topic_matches(filter, &d.topic);
                    last_match = Some((filter.clone(), m));
                    m
                }
            };
            if !matches || sent.contains(conn_id) {
                return true;
            }
            sent.insert(*conn_id);
            tx.deliver_live(d, live.as_ref()).is_ok()
        });
    }

    /// Sends a room message to everyone subscribed now.
    pub(crate) fn broadcast_room(&mut self, room: u64, d: &proto::Deliver) {
        if let Some(subs) = self.rooms.get_mut(&room) {
            let live = LiveDeliver::shared_by(subs.len(), d);
            subs.retain(|_, tx| tx.deliver_live(d, live.as_ref()).is_ok());
        }
    }

    /// A connection of `user`'s `device` ended: if it is still the device's live one (not
    /// taken over), the device goes offline — removed, `last_seen` noted when it was the
    /// user's last, OFFLINE announced. Whether it was the live one.
    pub(crate) fn leave(&mut self, user: &str, device: &str, conn_id: u64, now_ms: u64) -> bool {
        let ours = self.live.get(user).and_then(|d| d.get(device)).is_some_and(|l| l.conn_id == conn_id);
        if !ours {
            return false;
        }
        if let Some(devices) = self.live.get_mut(user) {
            devices.remove(device);
            if devices.is_empty() {
                self.live.remove(user);
                self.last_seen.insert(user.to_owned(), now_ms);
            }
        }
        self.announce(user, device, proto::PresenceStatus::Offline, now_ms);
        true
    }

    /// Tells `user`'s watchers that one of their devices changed state (REQ-PRS-001).
    pub(crate) fn announce(&mut self, user: &str, device: &str, status: proto::PresenceStatus, since_ms: u64) {
        let frame = Frame::Presence(proto::Presence {
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            status: status as i32,
            since_ms,
        });
        if let Some(watchers) = self.watchers.get_mut(user) {
            // A closed watcher connection drops out here.
            watchers.retain(|_, tx| tx.send(ToConnection::Frame(Box::new(frame.clone()))).is_ok());
        }
    }

    /// The current presence of `user`: each online device, or one OFFLINE entry.
    pub(crate) fn presence_of(&self, user: &str) -> Vec<proto::Presence> {
        let online: Vec<proto::Presence> = self
            .live
            .get(user)
            .into_iter()
            .flat_map(|d| d.iter())
            .map(|(device, l)| proto::Presence {
                user_id: user.to_owned(),
                device_id: device.clone(),
                status: l.status as i32,
                since_ms: l.since_ms,
            })
            .collect();
        if online.is_empty() {
            let since_ms = self.last_seen.get(user).copied().unwrap_or(0);
            return vec![proto::Presence {
                user_id: user.to_owned(),
                device_id: String::new(),
                status: proto::PresenceStatus::Offline as i32,
                since_ms,
            }];
        }
        online
    }

    /// Sends `frame` to every live device of `users` but the connection `except`.
    pub(crate) fn send_frame(&self, users: &[String], except: Option<u64>, frame: &Frame) {
        for u in users {
            for live in self.live.get(u).into_iter().flat_map(|d| d.values()).filter(|l| Some(l.conn_id) != except) {
                let _ = live.tx.send(ToConnection::Frame(Box::new(frame.clone())));
            }
        }
    }

    /// Sends NOTIFY for `conversation_id` to every live device of `members`.
    pub(crate) fn notify(&self, members: &std::collections::HashSet<String>, conversation_id: u64) {
        // Walk the smaller side: a large group has few of its members online.
        let online = |m: &String| self.live.get(m).into_iter().flat_map(|devices| devices.values());
        let mut send = |live: &Live| {
            let _ = live.tx.send(ToConnection::Notify { conversation_id });
        };
        if self.live.len() < members.len() {
            for (user, devices) in &self.live {
                if members.contains(user) {
                    devices.values().for_each(&mut send);
                }
            }
        } else {
            members.iter().flat_map(online).for_each(send);
        }
    }
}

/// Counts open connections and signals when the last one ends.
#[derive(Debug, Default)]
pub(crate) struct Gauge {
    pub(crate) count: AtomicU64,
    pub(crate) idle: Notify,
}

impl Gauge {
    /// A connection ended.
    pub(crate) fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) tokens: TokenKey,
    /// The data directory's secret (tokens and the admin key derive from it).
    pub(crate) secret: [u8; 32],
    pub(crate) options: BrokerOptions,
    router: Mutex<Router>,
    pub(crate) next_conn_id: AtomicU64,
    /// Open connections; kept apart from the rest so a finished connection task can drop
    /// its handle on the store before it counts itself out (shutdown then closes the store).
    pub(crate) gauge: Arc<Gauge>,
    /// Counters for `/metrics`.
    pub(crate) metrics: crate::metrics::Metrics,
    /// Bound addresses, advertised by `/v1/dispatch`.
    pub(crate) native_addr: SocketAddr,
    pub(crate) tls_addr: Option<SocketAddr>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Key-claim budgets (REQ-E2E-003).
    pub(crate) claims: crate::connection::ClaimLimiter,
    /// Seq blocks of live conversations (rooms, telemetry): conversation → (next, last reserved).
    live_seqs: Mutex<HashMap<u64, (u64, u64)>>,
    /// Group members, for routing.
    pub(crate) members: crate::members::MemberCache,
    /// Open MQTT connections, for their timers and shutdown.
    #[cfg(feature = "mqtt")]
    pub(crate) mqtt: crate::mqtt::Registry,
}

/// Seqs a live conversation reserves in the store at a time.
const LIVE_SEQ_BLOCK: u64 = 1024;

impl Shared {
    /// The router; a poisoned lock (a panicked task) is still usable: its data is plain maps.
    pub(crate) fn router(&self) -> MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers the next message of a live conversation from an in-memory block, reserving a new
    /// block in the store when one runs out: seqs keep growing across restarts (a restart
    /// leaves a gap) without a store write per room or telemetry message.
    pub(crate) fn next_live_seq(&self, conv: u64) -> Result<u64, crate::store::StoreError> {
        let mut seqs = self.live_seqs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = seqs.entry(conv).or_insert((1, 0));
        if entry.0 > entry.1 {
            let first = self.store.reserve_live_seqs(conv, LIVE_SEQ_BLOCK)?;
            *entry = (first, first + LIVE_SEQ_BLOCK - 1);
        }
        let seq = entry.0;
        entry.0 += 1;
        Ok(seq)
    }
}

/// A running broker.
pub struct Broker {
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
    mqtt_tls_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    pub(crate) shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Opens the store, binds the listener and starts accepting.
    pub async fn start(options: BrokerOptions) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(&options.data_dir)?;
        let store =
            Store::open_with(&options.data_dir, crate::store::Engine::resolve(&options.data_dir, options.engine)?)?;
        let secret = crate::token::load_or_create_secret(&options.data_dir)?;
        let tokens = TokenKey::new(&secret);
        let listener = TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let tls = match &options.tls {
            Some(t) => {
                let config = crate::tls::server_config(&t.cert, &t.key)?;
                let l = TcpListener::bind(t.listen).await?;
                Some((l, tokio_rustls::TlsAcceptor::from(config)))
            }
            None => None,
        };
        let tls_addr = match &tls {
            Some((l, _)) => Some(l.local_addr()?),
            None => None,
        };
        let http = match options.http {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let http_addr = match &http {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        #[cfg(feature = "mqtt")]
        let (mqtt, mqtt_tls) = crate::mqtt::bind(&options).await?;
        #[cfg(not(feature = "mqtt"))]
        if options.mqtt_listen.is_some() || options.mqtt_tls_listen.is_some() {
            anyhow::bail!("this broker was built without the `mqtt` feature");
        }
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            store,
            tokens,
            secret,
            options,
            router: Mutex::new(Router::default()),
            next_conn_id: AtomicU64::new(1),
            gauge: Arc::new(Gauge::default()),
            metrics: crate::metrics::Metrics::default(),
            native_addr: addr,
            tls_addr,
            shutdown,
            claims: crate::connection::ClaimLimiter::default(),
            live_seqs: Mutex::new(HashMap::new()),
            members: crate::members::MemberCache::default(),
            #[cfg(feature = "mqtt")]
            mqtt: crate::mqtt::Registry::default(),
        });
        let mut tasks = vec![tokio::spawn(accept_loop(listener, shared.clone(), None))];
        if let Some((l, acceptor)) = tls {
            tracing::info!(addr = ?tls_addr, "listening (TLS)");
            tasks.push(tokio::spawn(accept_loop(l, shared.clone(), Some(acceptor))));
        }
        #[cfg(not(feature = "mqtt"))]
        let (mqtt_addr, mqtt_tls_addr) = (None, None);
        #[cfg(feature = "mqtt")]
        let (mut mqtt_addr, mut mqtt_tls_addr) = (None, None);
        #[cfg(feature = "mqtt")]
        {
            if let Some(l) = mqtt {
                mqtt_addr = crate::mqtt::addr_of(&l);
                tracing::info!(addr = ?mqtt_addr, "listening (MQTT)");
                tasks.push(tokio::spawn(crate::mqtt::accept_loop(l, shared.clone(), None)));
            }
            if let Some((l, acceptor)) = mqtt_tls {
                mqtt_tls_addr = crate::mqtt::addr_of(&l);
                tracing::info!(addr = ?mqtt_tls_addr, "listening (MQTT over TLS)");
                tasks.push(tokio::spawn(crate::mqtt::accept_loop(l, shared.clone(), Some(acceptor))));
            }
            if mqtt_addr.is_some() || mqtt_tls_addr.is_some() {
                tasks.push(tokio::spawn(crate::mqtt::sweeper(shared.clone())));
            }
        }
        if let Some(l) = http {
            tracing::info!(addr = ?http_addr, "listening (HTTP operations)");
            tasks.push(tokio::spawn(crate::http::serve(l, shared.clone())));
        }
        if shared.options.retention != crate::store::Retention::default() {
            tasks.push(tokio::spawn(compaction(shared.clone())));
        }
        tracing::info!(%addr, "listening (native protocol)");
        Ok(Broker { addr, tls_addr, mqtt_addr, mqtt_tls_addr, http_addr, shared, stop, accept_tasks: tasks })
    }

    /// The bound native-protocol address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound TLS address, if a TLS listener is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The bound MQTT address, if an MQTT listener is configured.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// The bound MQTT-over-TLS address, if configured.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls_addr
    }

    /// The bound HTTP operations address, if configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The admin API key (`Authorization: Bearer <key>`).
    pub fn admin_key(&self) -> String {
        crate::admin::admin_key(&self.shared.secret)
    }

    /// Mints a token for `user` on `device` valid for `ttl`.
    pub fn issue_token(&self, user: &str, device: &str, ttl: Duration) -> Result<String, String> {
        self.shared.tokens.issue(user, device, crate::unix_now() + ttl.as_secs())
    }

    /// Connections open right now.
    pub fn connections(&self) -> u64 {
        self.shared.gauge.count.load(Ordering::Relaxed)
    }

    /// Idle MQTT connections waiting without a task right now (`/metrics`:
    /// `tern_mqtt_parked_connections`).
    #[cfg(feature = "mqtt")]
    pub fn mqtt_parked(&self) -> u64 {
        self.shared.mqtt.parked().get()
    }

    /// Waits until exactly `n` MQTT connections are parked (for tests and for operators'
    /// tools that wait for a fleet to settle).
    #[cfg(feature = "mqtt")]
    pub async fn until_mqtt_parked(&self, n: u64) {
        self.shared.mqtt.parked().until(n).await;
    }

    /// Graceful shutdown: stop accepting, tell every client SERVER_SHUTTING_DOWN, wait for the
    /// connection tasks to finish their commits, flush the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for task in self.accept_tasks {
            task.abort();
            let _ = task.await;
        }
        {
            let router = self.shared.router();
            for devices in router.live.values() {
                for live in devices.values() {
                    let _ = live.tx.send(ToConnection::Close(ReasonCode::ServerShuttingDown));
                }
            }
        }
        // Each connection task drops its count when it ends and the last one signals `idle`.
        loop {
            let idle = self.shared.gauge.idle.notified();
            if self.shared.gauge.count.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
        self.shared.store.flush().await?;
        Ok(())
    }
}

/// Background retention: one compaction pass per interval, off the async threads.
async fn compaction(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.options.compaction_interval);
    loop {
        tick.tick().await;
        let (store, retention) = (shared.store.clone(), shared.options.retention);
        match tokio::task::spawn_blocking(move || store.compact(retention, crate::unix_now_ms())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "retention compaction"),
            Ok(Err(e)) => tracing::error!(error = %e, "retention compaction failed"),
            _ => {}
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if *shared.shutdown.borrow() {
            break;
        }
        // Small frames must leave at once (Nagle off), as the seeds' weak-network advice says.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => crate::connection::run(shared, stream, peer).await,
                Some(acceptor) => {
                    // The handshake is bounded like CONNECT: a silent peer is dropped.
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => crate::connection::run(shared, tls_stream, peer).await,
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}
