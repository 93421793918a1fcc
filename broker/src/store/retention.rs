//! Retention: a maximum age and/or count of messages per conversation, enforced by a
//! background compaction pass. Inbox entries keep their place; a DELIVER for a removed message
//! carries no payload (REQ-SYN-010).

use std::time::Duration;

use prost::Message;
use tern_codec::proto;

use super::{be, key, read_u64, Store, StoreError};

/// How long and how many messages each conversation keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Remove messages older than this.
    pub max_age: Option<Duration>,
    /// Keep at most this many of the newest messages per conversation.
    pub max_count: Option<u64>,
}

impl Store {
    /// One compaction pass at `now_ms`; returns how many messages were removed.
    pub fn compact(&self, retention: Retention, now_ms: u64) -> Result<u64, StoreError> {
        if retention == Retention::default() {
            return Ok(0);
        }
        let cutoff_ms =
            retention.max_age.map(|a| now_ms.saturating_sub(u64::try_from(a.as_millis()).unwrap_or(u64::MAX)));
        let mut removed = 0;
        for item in self.tree.scan_prefix(b"c/") {
            let (k, v) = item?;
            // Only the `c/{conv}/last` counters name conversations.
            let Some(conv) = k.strip_suffix(b"/last").and_then(|c| c.get(2..)).filter(|c| c.len() == 8) else {
                continue;
            };
            let conv = read_u64(Some(conv.into()));
            let last = read_u64(Some(v));
            let keep_from = retention.max_count.map_or(1, |n| last.saturating_sub(n) + 1);
            let prefix = key(&[b"c/", &be(conv), b"/m/"]);
            for entry in self.tree.scan_prefix(&prefix) {
                let (mk, mv) = entry?;
                let seq = mk.get(prefix.len()..).map_or(0, |s| read_u64(Some(s.into())));
                let too_old =
                    cutoff_ms.is_some_and(|c| proto::Deliver::decode(mv.as_ref()).is_ok_and(|d| d.server_time_ms < c));
                if seq < keep_from || too_old {
                    self.tree.remove(&mk)?;
                    removed += 1;
                } else {
                    // Messages are in seq order, so time order: the rest are newer.
                    break;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewMessage;

    fn message(text: &str) -> proto::Deliver {
        proto::Deliver {
            topic: "user/bob".into(),
            sender_user: "alice".into(),
            qos: 2,
            payload: text.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn count_and_age_limits_remove_old_messages_and_inboxes_stay_continuous() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let conv = store.conversation_for_pair("alice", "bob").unwrap();
        for (i, t) in [(1u64, 1_000u64), (2, 2_000), (3, 3_000), (4, 4_000), (5, 5_000)] {
            let m = NewMessage {
                cid: i,
                conversation_id: conv,
                inboxes: vec!["bob".into()],
                message: message(&format!("m{i}")),
            };
            store.commit("alice", "phone", &[m], t).unwrap();
        }
        // Keep the newest 3 (3, 4, 5), and nothing older than 1.5 s at t = 5 s: only 4 and 5 remain.
        let retention = Retention { max_age: Some(Duration::from_millis(1_500)), max_count: Some(3) };
        assert_eq!(store.compact(retention, 5_000).unwrap(), 3);
        let (page, _) = store.history(conv, 0, 10).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 4]);
        let inbox = store.inbox_after("bob", 0, 10).unwrap();
        assert_eq!(inbox.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert!(inbox[..3].iter().all(|d| d.payload_omitted && d.payload.is_empty()));
        assert_eq!(&inbox[3].payload[..], b"m4");
        // A second pass finds nothing more to do.
        assert_eq!(store.compact(retention, 5_000).unwrap(), 0);
    }
}
