//! Groups, rooms and conversation streams (read fan-out): membership, and the per-device sync points
//! on conversation streams.

use tern_codec::ids::{ConversationId, StreamId};
use tern_codec::proto;
use tern_codec::ReasonCode;

use super::{be, bump, device_key, key, member_key, read_u64, Store, StoreError};

fn group_key(group: &str) -> Vec<u8> {
    key(&[b"g/", group.as_bytes()])
}

fn user_group_key(user: &str, group: &str) -> Vec<u8> {
    key(&[b"ug/", user.as_bytes(), b"/", group.as_bytes()])
}

/// The last seq of a group conversation stored under write fan-out.
pub(super) fn write_fanout_key(conv: u64) -> Vec<u8> {
    key(&[b"c/", &be(conv), b"/wf"])
}

fn conv_last_key(conv: u64) -> Vec<u8> {
    key(&[b"c/", &be(conv), b"/last"])
}

/// Group operations return `Ok(Err(reason))` for a refusal sent back in RESPONSE, and
/// `Err(StoreError)` for a store failure.
impl Store {
    /// Creates `group` with `creator` and `members`; ALREADY_EXISTS if the id is taken.
    pub fn create_group(
        &self,
        group: &str,
        creator: &str,
        members: &[String],
    ) -> Result<Result<u64, ReasonCode>, StoreError> {
        let gk = group_key(group);
        let result = self.kv.transaction(|tx| {
            if tx.get(&gk)?.is_some() {
                return Ok(Err(ReasonCode::AlreadyExists));
            }
            let conv = bump(tx, b"g/next_conv")?;
            tx.insert(gk.as_slice(), be(conv))?;
            for m in members.iter().map(String::as_str).chain(std::iter::once(creator)) {
                tx.insert(member_key(conv, m), be(0))?;
                tx.insert(user_group_key(m, group), &[][..])?;
            }
            Ok(Ok(conv))
        })?;
        Ok(result)
    }

    /// The group's conversation id, if it exists.
    pub fn group_conversation(&self, group: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.kv.get(group_key(group))?.map(|v| read_u64(Some(v))))
    }

    /// The members of a conversation, in id order.
    pub fn members(&self, conv: u64) -> Result<Vec<String>, StoreError> {
        let prefix = key(&[b"r/m/", &be(conv), b"/"]);
        let mut out = Vec::new();
        for (k, _) in self.kv.scan_prefix(&prefix)? {
            out.push(String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default()).into_owned());
        }
        Ok(out)
    }

    /// Adds or removes members; only a member may change the group (NOT_A_MEMBER), or the
    /// operator (`by` = `None`, the admin API). A member joins at the conversation's current
    /// seq: later messages are theirs (REQ-GRP-003).
    pub fn change_members(
        &self,
        group: &str,
        by: Option<&str>,
        members: &[String],
        add: bool,
    ) -> Result<Result<u64, ReasonCode>, StoreError> {
        let gk = group_key(group);
        let result = self.kv.transaction(|tx| {
            let Some(conv) = tx.get(&gk)?.map(|v| read_u64(Some(v))) else {
                return Ok(Err(ReasonCode::NotFound));
            };
            if let Some(by) = by {
                if tx.get(member_key(conv, by))?.is_none() {
                    return Ok(Err(ReasonCode::NotAMember));
                }
            }
            let joined_at = read_u64(tx.get(conv_last_key(conv))?);
            for m in members {
                if add {
                    if tx.get(member_key(conv, m))?.is_none() {
                        tx.insert(member_key(conv, m), be(joined_at))?;
                        tx.insert(user_group_key(m, group), &[][..])?;
                    }
                } else {
                    tx.remove(member_key(conv, m))?;
                    tx.remove(user_group_key(m, group))?;
                }
            }
            Ok(Ok(conv))
        })?;
        Ok(result)
    }

    /// The groups `user` belongs to.
    pub fn groups_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let prefix = key(&[b"ug/", user.as_bytes(), b"/"]);
        let mut out = Vec::new();
        for (k, _) in self.kv.scan_prefix(&prefix)? {
            out.push(String::from_utf8_lossy(k.get(prefix.len()..).unwrap_or_default()).into_owned());
        }
        Ok(out)
    }

    /// The conversation of room `room`, created when `create` and absent.
    pub fn room(&self, room: &str, create: bool) -> Result<Option<u64>, StoreError> {
        self.named_conversation(key(&[b"room/", room.as_bytes()]), create)
    }

    /// The conversation that numbers the telemetry of `user`'s devices (spec 5.2), created on
    /// first use; like a room it keeps only its count.
    pub fn telemetry_conversation(&self, user: &str) -> Result<u64, StoreError> {
        let conv = self.named_conversation(key(&[b"tele/", user.as_bytes()]), true)?;
        conv.ok_or_else(|| StoreError::Corrupt(format!("tele/{user}")))
    }

    fn named_conversation(&self, rk: Vec<u8>, create: bool) -> Result<Option<u64>, StoreError> {
        if let Some(v) = self.kv.get(&rk)? {
            return Ok(Some(read_u64(Some(v))));
        }
        if !create {
            return Ok(None);
        }
        let conv = self.kv.transaction(|tx| {
            if let Some(v) = tx.get(&rk)? {
                return Ok(read_u64(Some(v)));
            }
            let conv = bump(tx, b"g/next_conv")?;
            tx.insert(rk.as_slice(), be(conv))?;
            Ok(conv)
        })?;
        Ok(Some(conv))
    }

    /// Makes `user` a member of conversation `conv` (rooms).
    pub fn join(&self, conv: u64, user: &str) -> Result<(), StoreError> {
        let latest = self.conversation_latest(conv)?;
        let k = member_key(conv, user);
        self.kv.transaction(|tx| {
            if tx.get(&k)?.is_none() {
                tx.insert(&k, be(latest))?;
            }
            Ok(())
        })
    }

    /// Removes `user` from conversation `conv` (rooms).
    pub fn leave(&self, conv: u64, user: &str) -> Result<(), StoreError> {
        self.kv.transaction(|tx| tx.remove(member_key(conv, user)))
    }

    /// Reserves the next `n` seqs of a live conversation (a room, or a user's telemetry), which
    /// keeps no messages, only its count: returns the first. The broker numbers messages from
    /// the block in memory, so the store is written once per block, not once per message.
    pub fn reserve_live_seqs(&self, conv: u64, n: u64) -> Result<u64, StoreError> {
        let k = conv_last_key(conv);
        self.kv.transaction(|tx| {
            let last = read_u64(tx.get(&k)?);
            tx.insert(&k, be(last + n))?;
            Ok(last + 1)
        })
    }

    /// Whether two users have a 1:1 conversation or a group in common.
    pub fn share_conversation(&self, a: &str, b: &str) -> Result<bool, StoreError> {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        if self.kv.get(key(&[b"r/pair/", lo.as_bytes(), b"\0", hi.as_bytes()]))?.is_some() {
            return Ok(true);
        }
        let theirs: std::collections::HashSet<String> = self.groups_of(b)?.into_iter().collect();
        Ok(self.groups_of(a)?.iter().any(|g| theirs.contains(g)))
    }

    /// Highest seq of a conversation.
    pub fn conversation_latest(&self, conv: u64) -> Result<u64, StoreError> {
        Ok(read_u64(self.kv.get(conv_last_key(conv))?))
    }

    /// Up to `limit` messages of a conversation after `after`, as DELIVERs on its stream.
    pub fn conversation_after(&self, conv: u64, after: u64, limit: usize) -> Result<Vec<proto::Deliver>, StoreError> {
        let latest = self.conversation_latest(conv)?;
        let mut out = Vec::new();
        let mut seq = after;
        while seq < latest && out.len() < limit {
            seq += 1;
            if let Some(mut d) = self.message(conv, seq)? {
                d.stream = Some(StreamId::Conversation(ConversationId(conv)).to_proto());
                d.seq = seq;
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The device's sync point on a conversation stream; without one, the seq at which the
    /// user joined (so a new member starts at their join, REQ-GRP-003).
    pub fn conversation_cursor(&self, user: &str, device: &str, conv: u64) -> Result<u64, StoreError> {
        if let Some(seq) = self.held_sync_point(&device_key(user, device, &key(&[b"conv/", &be(conv)])))? {
            return Ok(seq);
        }
        // No acknowledgement on the stream yet: the member has everything up to when it joined
        // and everything that reached its inbox while the group used write fan-out.
        let joined_at = read_u64(self.kv.get(member_key(conv, user))?);
        Ok(joined_at.max(read_u64(self.kv.get(write_fanout_key(conv))?)))
    }

    /// Advances the device's sync point on a conversation stream (never backwards), without
    /// waiting: like [`Store::advance_cursor_later`], the advance is held and written later.
    pub fn advance_conversation_cursor(&self, user: &str, device: &str, conv: u64, seq: u64) {
        self.group_commit.advance(device_key(user, device, &key(&[b"conv/", &be(conv)])), seq);
    }
}
