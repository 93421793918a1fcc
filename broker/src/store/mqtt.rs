//! What the store keeps for MQTT devices (spec chapter 15): persistent sessions (their
//! subscriptions and expiry) and the packet identifiers of QoS 2 PUBLISHes stored but not yet
//! released, so that a retransmission is stored once even across a broker restart
//! (REQ-MQT-009). The inbox position is the device's ordinary cursor (`d/{user}/{device}/cursor`).
//!
//! Keys:
//! - `q/{user}/{device}/s` → the persistent session ([`MqttSessionRecord`], JSON)
//! - `q/{user}/{device}/p/{pkid}` → msg_id of the QoS 2 message stored under that identifier

use serde::{Deserialize, Serialize};

use super::{be, commit_one, key, NewMessage, PendingCommit, Store, StoreError};

/// A persistent MQTT session as stored between connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttSessionRecord {
    /// Granted subscriptions: filter and QoS.
    pub subscriptions: Vec<(String, u8)>,
    /// Seconds the session outlives a disconnect (`u32::MAX`: never expires).
    pub expiry_secs: u32,
    /// When the last connection of the session ended (ms since the epoch; 0 while connected).
    pub disconnected_ms: u64,
}

impl MqttSessionRecord {
    /// Whether the session has outlived its expiry interval at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.disconnected_ms != 0
            && self.expiry_secs != u32::MAX
            && now_ms.saturating_sub(self.disconnected_ms) > u64::from(self.expiry_secs) * 1000
    }
}

fn session_key(user: &str, device: &str) -> Vec<u8> {
    key(&[b"q/", user.as_bytes(), b"/", device.as_bytes(), b"/s"])
}

fn pkid_prefix(user: &str, device: &str) -> Vec<u8> {
    key(&[b"q/", user.as_bytes(), b"/", device.as_bytes(), b"/p/"])
}

fn pkid_key(user: &str, device: &str, pkid: u16) -> Vec<u8> {
    key(&[&pkid_prefix(user, device), &pkid.to_be_bytes()])
}

impl Store {
    /// Queues one message from an MQTT device for the next group commit; answered (with the
    /// message, or nothing) once durable. With `qos2_pkid`, the identifier is recorded in the
    /// same transaction, and a message already stored under it (not yet released) is not stored
    /// again: the answer is then empty.
    pub fn commit_mqtt(
        &self,
        sender: &str,
        device: &str,
        message: NewMessage,
        qos2_pkid: Option<u16>,
        now_ms: u64,
    ) -> PendingCommit {
        let sender = sender.to_owned();
        let marker = qos2_pkid.map(|p| pkid_key(&sender, device, p));
        self.group_commit.commit(Box::new(move |tx| {
            if let Some(k) = &marker {
                if tx.get(k)?.is_some() {
                    return Ok(Vec::new());
                }
            }
            let committed = commit_one(tx, &sender, &message, now_ms)?;
            if let Some(k) = &marker {
                tx.insert(k, be(committed.ack.msg_id))?;
            }
            Ok(vec![committed])
        }))
    }

    /// Whether a QoS 2 message is stored under `pkid` and not yet released.
    pub fn mqtt_pkid_held(&self, user: &str, device: &str, pkid: u16) -> Result<bool, StoreError> {
        Ok(self.kv.get(pkid_key(user, device, pkid))?.is_some())
    }

    /// PUBREL: the identifier may be used for a new message. Answered once durable, so that a
    /// PUBCOMP sent after it can never meet a stale identifier after a crash (the device would
    /// reuse it for a new message, which would be taken for the old one).
    pub fn release_mqtt_pkid(&self, user: &str, device: &str, pkid: u16) -> PendingCommit {
        let k = pkid_key(user, device, pkid);
        self.group_commit.commit(Box::new(move |tx| tx.remove(&k).map(|()| Vec::new())))
    }

    /// The device's persistent session, if it has one.
    pub fn mqtt_session(&self, user: &str, device: &str) -> Result<Option<MqttSessionRecord>, StoreError> {
        let k = session_key(user, device);
        match self.kv.get(&k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.as_ref())
                .map(Some)
                .map_err(|_| StoreError::Corrupt(String::from_utf8_lossy(&k).into_owned())),
        }
    }

    /// Stores (replaces) the device's persistent session.
    pub fn save_mqtt_session(&self, user: &str, device: &str, session: &MqttSessionRecord) -> Result<(), StoreError> {
        let k = session_key(user, device);
        let v = serde_json::to_vec(session).map_err(|_| StoreError::Corrupt("mqtt session".into()))?;
        self.kv.transaction(|tx| tx.insert(&k, v.clone()))
    }

    /// Ends the device's MQTT session state: subscriptions and unreleased QoS 2 identifiers.
    pub fn drop_mqtt_session(&self, user: &str, device: &str) -> Result<(), StoreError> {
        let held: Vec<Vec<u8>> = self.kv.scan_prefix(&pkid_prefix(user, device))?.into_iter().map(|(k, _)| k).collect();
        let k = session_key(user, device);
        if held.is_empty() && self.kv.get(&k)?.is_none() {
            // Nothing to drop: no write (clean sessions connect often).
            return Ok(());
        }
        self.kv.transaction(|tx| {
            tx.remove(&k)?;
            for h in &held {
                tx.remove(h)?;
            }
            Ok(())
        })
    }
}
