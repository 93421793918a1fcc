//! The embedded store: conversations, messages, inboxes, sync points and the upstream dedup
//! ledger. The logic is written once against the [`KvEngine`] trait; fjall, sled and redb
//! implement it ([`Engine`] picks one), and a clustered backend can implement it later.
//!
//! Everything lives in one ordered keyspace under prefixed big-endian keys, so one transaction can
//! commit a message (or a whole package) together with its inbox entries and the sender's
//! cid outcomes: a crash leaves either all of it or none. Durability comes from
//! [`Store::flush`], which the broker awaits before acknowledging; concurrent commits share one
//! flush (group commit).
//!
//! Keys:
//! - `g/msg_id` → last msg_id; `g/next_conv` → last conversation id
//! - `r/pair/{a}\0{b}` → conversation id of the 1:1 pair (a < b)
//! - `r/m/{conv}/{user}` → the conversation seq at which `user` joined (membership)
//! - `room/{room}` → the room's conversation id (rooms keep only `c/{conv}/last`); `tele/{user}` →
//!   the conversation numbering the telemetry of `user`'s devices
//! - `g/{group}` → the group's conversation id; `ug/{user}/{group}` → (index of a user's groups)
//! - `d/{user}/{device}/conv/{conv}` → the device's sync point on a conversation stream
//! - `c/{conv}/last` → last conversation seq; `c/{conv}/m/{seq}` → message (`proto::Deliver`)
//! - `u/{user}/last` → the inbox head: last inbox seq and total unread (`reads.rs`);
//!   `u/{user}/i/{seq}` → (conversation, conversation seq)
//! - `d/{user}/{device}/cursor` → inbox sync point; `d/{user}/{device}/floor` and
//!   `d/{user}/{device}/cr/{slot}` → the device's cid outcomes (`ledger.rs`)
//! - `c/{conv}/wf` → the last seq of a group stored under write fan-out
//! - `k/...` → the E2EE key directory (`keys.rs`)
//! - `q/...` → MQTT sessions and QoS 2 packet identifiers (`mqtt.rs`)

mod flush;
pub use flush::CommitTimings;
mod groups;
mod held;
mod keys;
mod kv;
mod ledger;
#[cfg(feature = "mqtt")]
mod mqtt;
mod reads;
mod reclaim;
mod retention;
#[cfg(test)]
mod suite;

pub use flush::PendingCommit;
pub use kv::{Engine, Entry, KvEngine, KvTx};
pub use retention::Retention;

#[cfg(feature = "mqtt")]
pub use mqtt::MqttSessionRecord;
pub use reads::UserConversation;

use std::path::Path;

use kv::{Kv, Tx};
use prost::Message;
use tern_codec::ids::StreamId;
use tern_codec::proto;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    /// redb reported an error.
    #[error("store: {0}")]
    Engine(String),
    /// A sled transaction met a concurrent one; it is retried, never reported.
    #[error("store: transaction conflict")]
    Conflict(sled::transaction::UnabortableTransactionError),
    /// A stored record does not decode.
    #[error("store: corrupt record under {0}")]
    Corrupt(String),
}

pub(crate) type TxResult<T> = Result<T, StoreError>;

/// One message to commit: where it goes and who receives it in their inbox.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The sender's cid.
    pub cid: u64,
    /// Conversation it belongs to.
    pub conversation_id: u64,
    /// Users whose inbox receives it (recipients and the sender, for their other devices).
    pub inboxes: Vec<String>,
    /// The message as it will be delivered (stream and seq are filled per inbox).
    pub message: proto::Deliver,
}

/// The outcome of committing one message.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The sender's PUBACK.
    pub ack: proto::PubAck,
    /// `(user, DELIVER on their inbox stream)` for every inbox it went to.
    pub deliveries: Vec<(String, proto::Deliver)>,
}

/// The broker's embedded store.
#[derive(Debug, Clone)]
pub struct Store {
    kv: std::sync::Arc<Kv>,
    group_commit: std::sync::Arc<flush::GroupCommit>,
    /// 1:1 conversation ids by pair key, as read or created: every 1:1 message asks, and a
    /// pair's conversation never changes once created (bounded: emptied when full).
    pairs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, u64>>>,
}

/// Pairs [`Store::conversation_for_pair`] remembers (~100 bytes each).
const PAIRS_HELD: usize = 64 * 1024;

pub(crate) fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(crate) fn read_u64(v: Option<impl AsRef<[u8]>>) -> u64 {
    v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map_or(0, u64::from_be_bytes)
}

/// Increments the counter at `k` inside a transaction, returning the new value.
pub(super) fn bump(tx: &Tx<'_>, k: &[u8]) -> TxResult<u64> {
    let next = read_u64(tx.get(k)?) + 1;
    tx.insert(k, be(next))?;
    Ok(next)
}

/// A stored message as a history entry.
pub(crate) fn history_entry(d: proto::Deliver) -> proto::HistoryEntry {
    proto::HistoryEntry {
        seq: d.conversation_seq,
        msg_id: d.msg_id,
        sender_user: d.sender_user,
        sender_device: d.sender_device,
        payload: d.payload,
        content_type: d.content_type,
        server_time_ms: d.server_time_ms,
    }
}

pub(crate) fn member_key(conv: u64, user: &str) -> Vec<u8> {
    key(&[b"r/m/", &be(conv), b"/", user.as_bytes()])
}

pub(crate) fn device_key(user: &str, device: &str, rest: &[u8]) -> Vec<u8> {
    key(&[b"d/", user.as_bytes(), b"/", device.as_bytes(), b"/", rest])
}

impl Store {
    /// Opens the store in `dir` on the engine it was created with, or creates one on the
    /// default engine.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, Engine::resolve(dir, None)?)
    }

    /// A store on any engine (a clustered backend, say).
    pub fn with_engine(engine: Box<dyn KvEngine>) -> Result<Store, StoreError> {
        Store::from_kv(Kv::new(engine))
    }

    fn from_kv(kv: Kv) -> Result<Store, StoreError> {
        let kv = std::sync::Arc::new(kv);
        let group_commit = std::sync::Arc::new(flush::GroupCommit::start(kv.clone()).map_err(sled::Error::Io)?);
        Ok(Store { kv, group_commit, pairs: Default::default() })
    }

    /// Opens (or creates) the store in `dir` on `engine`.
    pub fn open_with(dir: &Path, engine: Engine) -> Result<Store, StoreError> {
        Store::from_kv(Kv::open(dir, engine)?)
    }

    /// Waits until everything committed so far is on disk; concurrent callers share fsyncs.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.group_commit.flush().await
    }

    /// The conversation of a 1:1 pair, created on first use (REQ-GRP-001).
    pub fn conversation_for_pair(&self, a: &str, b: &str) -> Result<u64, StoreError> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let pair = key(&[b"r/pair/", lo.as_bytes(), b"\0", hi.as_bytes()]);
        let held = || self.pairs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&id) = held().get(&pair) {
            return Ok(id);
        }
        let remember = |id: u64| {
            let mut pairs = held();
            if pairs.len() >= PAIRS_HELD {
                pairs.clear();
            }
            pairs.insert(pair.clone(), id);
            id
        };
        // Read first: a write transaction would wait for the engine's writer (held by the group
        // committer) on a connection's worker thread.
        if let Some(v) = self.kv.get(&pair)? {
            return Ok(remember(read_u64(Some(v))));
        }
        let id = self.kv.transaction(|tx| {
            if let Some(v) = tx.get(&pair)? {
                return Ok(read_u64(Some(v)));
            }
            let id = bump(tx, b"g/next_conv")?;
            tx.insert(pair.as_slice(), be(id))?;
            tx.insert(member_key(id, lo), be(0))?;
            tx.insert(member_key(id, hi), be(0))?;
            Ok(id)
        })?;
        Ok(remember(id))
    }

    /// Whether `user` is a member of the conversation.
    pub fn is_member(&self, conversation_id: u64, user: &str) -> Result<bool, StoreError> {
        Ok(self.kv.get(member_key(conversation_id, user))?.is_some())
    }

    /// Commits messages at once and not yet durably, for the store's own tests (the broker
    /// uses [`Store::commit_durable`]); see there for what a commit stores.
    #[cfg(test)]
    pub(crate) fn commit(
        &self,
        sender: &str,
        device: &str,
        messages: &[NewMessage],
        now_ms: u64,
    ) -> Result<Vec<Committed>, StoreError> {
        self.kv.transaction(|tx| commit_in(tx, sender, device, messages, now_ms))
    }

    /// Commits messages atomically (a package commits whole or not at all, REQ-PKG-003): each
    /// gets the next conversation seq and msg_id, an entry in every listed inbox, and its sender
    /// cid outcome. Queued at once and answered once durable: the commit joins every
    /// other connection's commits queued meanwhile in one transaction and one flush (group
    /// commit), and the calling task never blocks on the engine or the disk. Commits queued by
    /// one caller are committed in the order queued.
    pub fn commit_durable(&self, sender: &str, device: &str, messages: Vec<NewMessage>, now_ms: u64) -> PendingCommit {
        let (sender, device) = (sender.to_owned(), device.to_owned());
        self.group_commit.commit(Box::new(move |tx| commit_in(tx, &sender, &device, &messages, now_ms)))
    }

    /// How long group commits spent applying their writes and syncing them.
    pub fn commit_timings(&self) -> &CommitTimings {
        self.group_commit.timings()
    }

    /// Highest seq of a user's inbox.
    pub fn inbox_latest(&self, user: &str) -> Result<u64, StoreError> {
        Ok(read_u64(self.kv.get(reads::inbox_head_key(user))?.as_deref().and_then(|v| v.get(..8))))
    }

    /// Up to `limit` inbox messages after `after`, as DELIVERs on the inbox stream.
    pub fn inbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<proto::Deliver>, StoreError> {
        let prefix = key(&[b"u/", user.as_bytes(), b"/i/"]);
        let start = key(&[&prefix, &be(after.saturating_add(1))]);
        let mut out = Vec::new();
        for (k, v) in self.kv.range(&start, None, false, limit)? {
            if !k.starts_with(&prefix) {
                break;
            }
            let seq = k.get(prefix.len()..).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes);
            let (conv, conv_seq) = match (v.get(..8), v.get(8..16)) {
                (Some(c), Some(s)) => (read_u64(Some(c)), read_u64(Some(s))),
                _ => return Err(StoreError::Corrupt(String::from_utf8_lossy(&k).into_owned())),
            };
            let Some(seq) = seq else {
                return Err(StoreError::Corrupt(String::from_utf8_lossy(&k).into_owned()));
            };
            // A message removed by retention keeps its place in the stream, without content
            // (REQ-SYN-010), so the device's stream stays continuous.
            let mut d = self.message(conv, conv_seq)?.unwrap_or_else(|| proto::Deliver {
                conversation_id: conv,
                conversation_seq: conv_seq,
                topic: format!("conv/{conv}"),
                qos: 2,
                payload_omitted: true,
                ..Default::default()
            });
            d.stream = Some(StreamId::Inbox.to_proto());
            d.seq = seq;
            out.push(d);
        }
        Ok(out)
    }

    fn message(&self, conv: u64, seq: u64) -> Result<Option<proto::Deliver>, StoreError> {
        let k = key(&[b"c/", &be(conv), b"/m/", &be(seq)]);
        match self.kv.get(&k)? {
            None => Ok(None),
            Some(v) => proto::Deliver::decode(v.as_ref())
                .map(Some)
                .map_err(|_| StoreError::Corrupt(String::from_utf8_lossy(&k).into_owned())),
        }
    }

    /// A page of a conversation's history, newest first (REQ-SYN-004): entries with seq below
    /// `before` (0: from the newest), and the `next_before_seq` to ask for next.
    pub fn history(&self, conv: u64, before: u64, limit: usize) -> Result<(Vec<proto::HistoryEntry>, u64), StoreError> {
        let prefix = key(&[b"c/", &be(conv), b"/m/"]);
        let end = if before == 0 { key(&[&prefix, &be(u64::MAX)]) } else { key(&[&prefix, &be(before)]) };
        let mut entries = Vec::new();
        for (k, v) in self.kv.range(&prefix, Some(&end), true, limit)? {
            let d = proto::Deliver::decode(v.as_ref())
                .map_err(|_| StoreError::Corrupt(String::from_utf8_lossy(&k).into_owned()))?;
            entries.push(history_entry(d));
        }
        let next = entries.last().map_or(0, |e| if e.seq > 1 { e.seq } else { 0 });
        Ok((entries, next))
    }

    /// The device's inbox sync point; a device seen for the first time starts at the inbox's
    /// latest seq (spec 8.1).
    pub fn cursor(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        let k = device_key(user, device, b"cursor");
        if let Some(seq) = self.held_sync_point(&k)? {
            return Ok(seq);
        }
        let latest = self.inbox_latest(user)?;
        self.kv.transaction(|tx| match tx.get(&k)? {
            Some(v) => Ok(read_u64(Some(v))),
            None => {
                tx.insert(&k, be(latest))?;
                Ok(latest)
            }
        })
    }

    /// Advances the device's inbox sync point (never backwards) and writes it at once; returns
    /// the previous one, counting an advance held and not yet written ([`Self::cursor`]'s view).
    pub fn advance_cursor(&self, user: &str, device: &str, seq: u64) -> Result<u64, StoreError> {
        let k = device_key(user, device, b"cursor");
        // Read before the transaction: a held advance leaves the hold only once written.
        let held = self.group_commit.held(&k).unwrap_or(0);
        self.kv.transaction(|tx| {
            let cur = read_u64(tx.get(&k)?).max(held);
            tx.insert(&k, be(cur.max(seq)))?;
            Ok(cur)
        })
    }

    /// Advances the device's inbox sync point (never backwards) without waiting: the advance is
    /// held in memory, readable at once, and written by the group committer within
    /// `SYNC_POINT_HOLD` (`held.rs`), so the caller never blocks on the engine's writer.
    pub fn advance_cursor_later(&self, user: &str, device: &str, seq: u64) {
        self.group_commit.advance(device_key(user, device, b"cursor"), seq);
    }

    /// A sync point as stored, or as advanced and held not yet written (the higher); `None`
    /// when neither has one.
    fn held_sync_point(&self, k: &[u8]) -> Result<Option<u64>, StoreError> {
        // Held first: an advance leaves the held ones only after it is readable from the engine.
        let held = self.group_commit.held(k);
        let stored = self.kv.get(k)?.map(|v| read_u64(Some(v)));
        Ok(stored.max(held))
    }

    /// Waits until every write queued or held before this call (sync points advanced without
    /// waiting, say) is applied and readable from the engine.
    pub async fn applied(&self) {
        self.group_commit.applied().await;
    }

    /// Raw payload size of the store on disk, for metrics.
    pub fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }
}

/// Commits one sender's messages with their cid outcomes (inside a transaction).
fn commit_in(
    tx: &Tx<'_>,
    sender: &str,
    device: &str,
    messages: &[NewMessage],
    now_ms: u64,
) -> TxResult<Vec<Committed>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let committed = commit_one(tx, sender, m, now_ms)?;
        ledger::record_outcome_tx(tx, sender, device, &committed.ack)?;
        out.push(committed);
    }
    Ok(out)
}

/// Stores one message in its conversation and in every listed inbox (inside a transaction);
/// the caller records the sender's outcome.
pub(crate) fn commit_one(tx: &Tx<'_>, sender: &str, m: &NewMessage, now_ms: u64) -> TxResult<Committed> {
    let conv = m.conversation_id;
    let seq = bump(tx, &key(&[b"c/", &be(conv), b"/last"]))?;
    let msg_id = bump(tx, b"g/msg_id")?;
    let mut stored = m.message.clone();
    stored.conversation_id = conv;
    stored.conversation_seq = seq;
    stored.msg_id = msg_id;
    stored.server_time_ms = now_ms;
    stored.stream = None;
    stored.seq = seq;
    tx.insert(key(&[b"c/", &be(conv), b"/m/", &be(seq)]), stored.encode_to_vec())?;
    if !m.inboxes.is_empty() && m.message.topic.starts_with("group/") {
        // Written to every member's inbox: if the group later switches to read
        // fan-out, members' conversation sync points start after this seq (REQ-GRP-002).
        tx.insert(groups::write_fanout_key(conv), be(seq))?;
    }
    let mut deliveries = Vec::with_capacity(m.inboxes.len());
    for (user, mut d) in m.inboxes.iter().zip(crate::copies(stored, m.inboxes.len())) {
        let inbox_seq = reads::next_inbox_seq(tx, user)?;
        reads::touch(tx, user, sender, conv, seq, now_ms, &m.message.topic)?;
        tx.insert(key(&[b"u/", user.as_bytes(), b"/i/", &be(inbox_seq)]), key(&[&be(conv), &be(seq)]))?;
        d.stream = Some(StreamId::Inbox.to_proto());
        d.seq = inbox_seq;
        deliveries.push((user.clone(), d));
    }
    let ack = proto::PubAck { cid: m.cid, reason: 0, msg_id, conversation_id: conv, seq };
    Ok(Committed { ack, deliveries })
}
