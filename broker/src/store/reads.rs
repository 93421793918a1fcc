//! Per-user conversation state: read markers, unread counts (per conversation and total) and
//! the recent-conversations list, all updated in the same transactions as the messages.
//!
//! Keys:
//! - `uc/{user}/{conv}` → read_seq, unread, last activity (ms), last seq (8 bytes each), then
//!   the conversation's topic as this user sees it
//! - `u/{user}/last` → the user's inbox head: the last inbox seq, then the total unread over the
//!   user's conversations (8 bytes each; one value, so a message costs one write for both)
//!
//! Stores written before the inbox head held the total kept it under `ut/{user}` (and a recency
//! index under `ur/`, no longer read or written: the recent list is sorted from `uc/`); the first
//! write of a head takes the total over and removes that key.

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

/// The key of a user's inbox head.
pub(super) fn inbox_head_key(user: &str) -> Vec<u8> {
    key(&[b"u/", user.as_bytes(), b"/last"])
}

/// Where a store written before the inbox head held a user's total unread.
fn legacy_total_key(user: &str) -> Vec<u8> {
    key(&[b"ut/", user.as_bytes()])
}

/// A user's inbox head (`u/{user}/last`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct InboxHead {
    /// The last seq of the user's inbox stream.
    pub(super) last: u64,
    /// Total unread over the user's conversations.
    pub(super) unread_total: u64,
}

impl InboxHead {
    /// Decodes a stored head, and whether it is a legacy one; `legacy_total` reads the total of
    /// a head stored as the inbox seq alone (the total was written only beside such a head).
    pub(super) fn decode(
        v: Option<&[u8]>,
        legacy_total: impl FnOnce() -> TxResult<Option<Vec<u8>>>,
    ) -> TxResult<(InboxHead, bool)> {
        let last = read_u64(v.and_then(|v| v.get(..8)));
        match v.map(|v| v.get(8..16)) {
            None => Ok((InboxHead::default(), false)),
            Some(Some(total)) => Ok((InboxHead { last, unread_total: read_u64(Some(total)) }, false)),
            Some(None) => Ok((InboxHead { last, unread_total: read_u64(legacy_total()?) }, true)),
        }
    }

    fn encode(self) -> Vec<u8> {
        key(&[&be(self.last), &be(self.unread_total)])
    }
}

fn get_head(tx: &Tx<'_>, user: &str) -> TxResult<(InboxHead, bool)> {
    let v = tx.get(inbox_head_key(user))?;
    InboxHead::decode(v.as_deref(), || tx.get(legacy_total_key(user)))
}

/// Changes `user`'s inbox head inside a transaction.
fn update_head(tx: &Tx<'_>, user: &str, change: impl FnOnce(&mut InboxHead)) -> TxResult<InboxHead> {
    let (mut head, legacy) = get_head(tx, user)?;
    change(&mut head);
    tx.insert(inbox_head_key(user), head.encode())?;
    if legacy {
        tx.remove(legacy_total_key(user))?;
    }
    Ok(head)
}

/// Inside a commit: the next seq of `user`'s inbox stream.
pub(super) fn next_inbox_seq(tx: &Tx<'_>, user: &str) -> TxResult<u64> {
    Ok(update_head(tx, user, |h| h.last += 1)?.last)
}

fn get_uc(tx: &Tx<'_>, user: &str, conv: u64) -> TxResult<Option<UserConversation>> {
    Ok(tx.get(uc_key(user, conv))?.and_then(|v| UserConversation::decode(&v)))
}

fn add_total(tx: &Tx<'_>, user: &str, delta: i64) -> TxResult<()> {
    update_head(tx, user, |h| h.unread_total = h.unread_total.saturating_add_signed(delta)).map(|_| ())
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
    let mut new = get_uc(tx, user, conv)?.unwrap_or_default();
    new.last_ms = now_ms;
    new.last_seq = seq;
    name_for(&mut new.topic, user, sender, topic);
    if user == sender {
        // Sending implies having read everything before it.
        add_total(tx, user, -i64::try_from(new.unread).unwrap_or(i64::MAX))?;
        new.unread = 0;
        new.read_seq = seq;
    } else {
        new.unread += 1;
        add_total(tx, user, 1)?;
    }
    tx.insert(uc_key(user, conv), new.encode())
}

/// Sets `name` to how `user` names a conversation that a message to `topic` from `sender`
/// belongs to (left as it is when it already says so: the usual case, with no allocation).
fn name_for(name: &mut String, user: &str, sender: &str, topic: &str) {
    match topic.strip_prefix("user/") {
        // A 1:1 conversation is named after the other side.
        Some(_) if user != sender => {
            if name.strip_prefix("user/") != Some(sender) {
                name.clear();
                name.push_str("user/");
                name.push_str(sender);
            }
        }
        Some(_) | None => {
            if name != topic {
                topic.clone_into(name);
            }
        }
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
                Ok((counts, get_head(tx, user)?.0.unread_total))
            })?;
            return Ok(out);
        }
        // A scan is not transactional: retry until the total did not move during it.
        let mut attempt = 0;
        loop {
            let before = self.unread_total(user)?;
            let mut counts = Vec::new();
            for (k, v) in self.kv.scan_prefix(&key(&[b"uc/", user.as_bytes(), b"/"]))? {
                let conv = k.get(k.len().saturating_sub(8)..).map_or(0, |b| read_u64(Some(b)));
                counts.push((conv, UserConversation::decode(&v).map_or(0, |u| u.unread)));
            }
            let sum: u64 = counts.iter().map(|c| c.1).sum();
            let after = self.unread_total(user)?;
            attempt += 1;
            if (before == after && after == sum) || attempt >= 8 {
                return Ok((counts, sum));
            }
        }
    }

    /// The user's total unread, outside a transaction.
    fn unread_total(&self, user: &str) -> Result<u64, StoreError> {
        let v = self.kv.get(inbox_head_key(user))?;
        Ok(InboxHead::decode(v.as_deref(), || self.kv.get(legacy_total_key(user)))?.0.unread_total)
    }

    /// The user's conversations by last activity, newest first (ties by conversation id), from
    /// `before_ms` (0: newest). Sorted from the user's conversation states at query time: an
    /// index by time would cost every message two more writes per inbox, for a list asked for
    /// when a device opens.
    pub fn recent(
        &self,
        user: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<(Vec<proto::ConversationSummary>, u64), StoreError> {
        let mut listed: Vec<(u64, UserConversation)> = self
            .kv
            .scan_prefix(&key(&[b"uc/", user.as_bytes(), b"/"]))?
            .into_iter()
            .filter_map(|(k, v)| {
                let conv = k.get(k.len().saturating_sub(8)..).map_or(0, |b| read_u64(Some(b)));
                UserConversation::decode(&v).map(|uc| (conv, uc))
            })
            .filter(|(_, uc)| before_ms == 0 || uc.last_ms < before_ms)
            .collect();
        listed.sort_by_key(|(conv, uc)| (std::cmp::Reverse(uc.last_ms), *conv));
        let more = listed.len() > limit;
        let mut out = Vec::with_capacity(limit.min(listed.len()));
        for (conv, uc) in listed.into_iter().take(limit) {
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

#[cfg(test)]
mod tests {
    use super::name_for;

    #[test]
    fn a_conversation_is_named_after_the_other_side_of_a_pair_and_after_its_topic_otherwise() {
        let mut name = String::new();
        name_for(&mut name, "bob", "alice", "user/bob");
        assert_eq!(name, "user/alice", "the receiver names it after the sender");
        name_for(&mut name, "bob", "carol", "user/bob");
        assert_eq!(name, "user/carol", "a stale name is replaced");
        name_for(&mut name, "alice", "alice", "user/bob");
        assert_eq!(name, "user/bob", "the sender names it after the receiver");
        name_for(&mut name, "bob", "alice", "group/team");
        assert_eq!(name, "group/team");
        let before = name.as_ptr();
        name_for(&mut name, "carol", "alice", "group/team");
        assert_eq!((name.as_str(), name.as_ptr()), ("group/team", before), "an unchanged name is kept as it is");
    }
}
