//! Per-user conversation state: read markers, unread counts (per conversation and total) and
//! the recent-conversations list, all updated in the same transactions as the messages.
//!
//! Keys:
//! - `uc/{user}/{conv}` → read_seq, unread, last activity (ms), last seq (8 bytes each), then
//!   the conversation's topic as this user sees it
//! - `ut/{user}` → total unread over the user's conversations
//! - `ur/{user}/{u64::MAX - last_ms}/{conv}` → recency index (ascending = newest first)

use super::kv::Tx;
use prost::Message;
use tern_codec::proto;

use super::{be, key, read_u64, Store, StoreError, TxResult};

/// A user's view of one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserConversation {
    /// Highest seq the user has read.
    pub read_seq: u64,
    /// Messages after the read marker not sent by the user.
    pub unread: u64,
    /// Time of the last message (ms).
    pub last_ms: u64,
    /// Seq of the last message.
    pub last_seq: u64,
    /// `user/{peer}` or `group/{group}`.
    pub topic: String,
}

impl UserConversation {
    fn encode(&self) -> Vec<u8> {
        key(&[&be(self.read_seq), &be(self.unread), &be(self.last_ms), &be(self.last_seq), self.topic.as_bytes()])
    }

    fn decode(v: &[u8]) -> Option<UserConversation> {
        let field = |i: usize| v.get(i * 8..i * 8 + 8).map(|b| read_u64(Some(b)));
        Some(UserConversation {
            read_seq: field(0)?,
            unread: field(1)?,
            last_ms: field(2)?,
            last_seq: field(3)?,
            topic: String::from_utf8_lossy(v.get(32..)?).into_owned(),
        })
    }
}

fn uc_key(user: &str, conv: u64) -> Vec<u8> {
    key(&[b"uc/", user.as_bytes(), b"/", &be(conv)])
}

fn total_key(user: &str) -> Vec<u8> {
    key(&[b"ut/", user.as_bytes()])
}

fn recency_key(user: &str, last_ms: u64, conv: u64) -> Vec<u8> {
    key(&[b"ur/", user.as_bytes(), b"/", &be(u64::MAX - last_ms), &be(conv)])
}

fn get_uc(tx: &Tx<'_>, user: &str, conv: u64) -> TxResult<Option<UserConversation>> {
    Ok(tx.get(uc_key(user, conv))?.and_then(|v| UserConversation::decode(&v)))
}

fn put_uc(tx: &Tx<'_>, user: &str, conv: u64, old: Option<&UserConversation>, new: &UserConversation) -> TxResult<()> {
    if let Some(old) = old {
        tx.remove(recency_key(user, old.last_ms, conv))?;
    }
    tx.insert(recency_key(user, new.last_ms, conv), &[][..])?;
    tx.insert(uc_key(user, conv), new.encode())?;
    Ok(())
}

fn add_total(tx: &Tx<'_>, user: &str, delta: i64) -> TxResult<()> {
    let k = total_key(user);
    let total = read_u64(tx.get(&k)?).saturating_add_signed(delta);
    tx.insert(k, be(total))?;
    Ok(())
}

/// Inside a commit: a new message `seq` in `conv` reached `user`'s inbox.
pub(super) fn touch(
    tx: &Tx<'_>,
    user: &str,
    sender: &str,
    conv: u64,
    seq: u64,
    now_ms: u64,
    topic: &str,
) -> TxResult<()> {
    let old = get_uc(tx, user, conv)?;
    let mut new = old.clone().unwrap_or_default();
    new.last_ms = now_ms;
    new.last_seq = seq;
    new.topic = topic.to_owned();
    if user == sender {
        // Sending implies having read everything before it.
        add_total(tx, user, -i64::try_from(new.unread).unwrap_or(i64::MAX))?;
        new.unread = 0;
        new.read_seq = seq;
    } else {
        new.unread += 1;
        add_total(tx, user, 1)?;
    }
    put_uc(tx, user, conv, old.as_ref(), &new)
}

/// How `user` names a conversation that a message to `topic` from `sender` belongs to.
pub(super) fn topic_for(user: &str, sender: &str, topic: &str) -> String {
    match topic.strip_prefix("user/") {
        Some(_) if user != sender => format!("user/{sender}"),
        _ => topic.to_owned(),
    }
}

impl Store {
    /// Moves `user`'s read marker in `conv` forward to `seq` (a lower seq is ignored) and
    /// recounts the conversation's unread messages, adjusting the total in the same
    /// transaction. Returns the new marker, or `None` when nothing changed.
    pub fn mark_read(&self, user: &str, conv: u64, seq: u64) -> Result<Option<u64>, StoreError> {
        let result = self.kv.transaction(|tx| {
            let Some(old) = get_uc(tx, user, conv)? else {
                return Ok(None);
            };
            let read_seq = seq.min(old.last_seq);
            if read_seq <= old.read_seq {
                return Ok(None);
            }
            let mut unread = 0;
            for s in read_seq + 1..=old.last_seq {
                let Some(v) = tx.get(key(&[b"c/", &be(conv), b"/m/", &be(s)]))? else {
                    continue;
                };
                if proto::Deliver::decode(v.as_ref()).is_ok_and(|d| d.sender_user != user) {
                    unread += 1;
                }
            }
            let delta = i64::try_from(unread).unwrap_or(i64::MAX) - i64::try_from(old.unread).unwrap_or(i64::MAX);
            add_total(tx, user, delta)?;
            let new = UserConversation { read_seq, unread, ..old.clone() };
            tx.insert(uc_key(user, conv), new.encode())?;
            Ok(Some(read_seq))
        })?;
        Ok(result)
    }

    /// Unread counts for `convs` (all of the user's conversations when empty) and the total,
    /// read at one instant: the total always equals the sum over all conversations.
    pub fn unread(&self, user: &str, convs: &[u64]) -> Result<(Vec<(u64, u64)>, u64), StoreError> {
        if !convs.is_empty() {
            let out = self.kv.transaction(|tx| {
                let mut counts = Vec::with_capacity(convs.len());
                for &c in convs {
                    counts.push((c, get_uc(tx, user, c)?.map_or(0, |u| u.unread)));
                }
                Ok((counts, read_u64(tx.get(total_key(user))?)))
            })?;
            return Ok(out);
        }
        // A scan is not transactional: retry until the total did not move during it.
        let mut attempt = 0;
        loop {
            let before = read_u64(self.kv.get(total_key(user))?);
            let mut counts = Vec::new();
            for (k, v) in self.kv.scan_prefix(&key(&[b"uc/", user.as_bytes(), b"/"]))? {
                let conv = k.get(k.len().saturating_sub(8)..).map_or(0, |b| read_u64(Some(b)));
                counts.push((conv, UserConversation::decode(&v).map_or(0, |u| u.unread)));
            }
            let sum: u64 = counts.iter().map(|c| c.1).sum();
            let after = read_u64(self.kv.get(total_key(user))?);
            attempt += 1;
            if (before == after && after == sum) || attempt >= 8 {
                return Ok((counts, sum));
            }
        }
    }

    /// The user's conversations by last activity, newest first, from `before_ms` (0: newest).
    pub fn recent(
        &self,
        user: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<(Vec<proto::ConversationSummary>, u64), StoreError> {
        let prefix = key(&[b"ur/", user.as_bytes(), b"/"]);
        // Keys hold u64::MAX - last_ms: "before" starts just past that time.
        let start = if before_ms == 0 { prefix.clone() } else { key(&[&prefix, &be(u64::MAX - before_ms + 1)]) };
        let mut out = Vec::new();
        let mut more = false;
        // One more than asked for tells whether there is a next page.
        for (k, _) in self.kv.range(&start, None, false, limit.saturating_add(1))? {
            if !k.starts_with(&prefix) {
                break;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            let conv = k.get(k.len().saturating_sub(8)..).map_or(0, |b| read_u64(Some(b)));
            let Some(uc) = self.kv.get(uc_key(user, conv))?.and_then(|v| UserConversation::decode(&v)) else {
                continue;
            };
            let last_message = self.message(conv, uc.last_seq)?.map(super::history_entry);
            out.push(proto::ConversationSummary {
                conversation_id: conv,
                topic: uc.topic,
                last_seq: uc.last_seq,
                last_activity_ms: uc.last_ms,
                unread: uc.unread,
                read_seq: uc.read_seq,
                last_message,
            });
        }
        let next = if more { out.last().map_or(0, |s| s.last_activity_ms) } else { 0 };
        Ok((out, next))
    }
}
