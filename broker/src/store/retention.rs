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
        for (k, v) in self.kv.scan_prefix(b"c/")? {
            // Only the `c/{conv}/last` counters name conversations.
            let Some(conv) = k.strip_suffix(b"/last").and_then(|c| c.get(2..)).filter(|c| c.len() == 8) else {
                continue;
            };
            let conv = read_u64(Some(conv));
            let last = read_u64(Some(v));
            let keep_from = retention.max_count.map_or(1, |n| last.saturating_sub(n) + 1);
            let prefix = key(&[b"c/", &be(conv), b"/m/"]);
            for (mk, mv) in self.kv.scan_prefix(&prefix)? {
                let seq = mk.get(prefix.len()..).map_or(0, |s| read_u64(Some(s)));
                let too_old =
                    cutoff_ms.is_some_and(|c| proto::Deliver::decode(mv.as_ref()).is_ok_and(|d| d.server_time_ms < c));
                if seq < keep_from || too_old {
                    self.kv.transaction(|tx| tx.remove(&mk))?;
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
