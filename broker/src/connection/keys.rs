//! REQUESTs of the E2EE key directory (spec 9.2): publish, query, claim, and group operations.

use std::collections::HashMap;
use std::sync::Mutex;

use tern_codec::proto::{self, response::Result as R};
use tern_codec::ReasonCode;

use super::{Bucket, Conn};

/// Most users one KeyQuery may name.
const MAX_QUERY_USERS: usize = 64;
/// Buckets kept before idle ones are dropped.
const MAX_TRACKED_PAIRS: usize = 100_000;

/// Claim budgets per (claimant user, target user, target device), shared by all connections so
/// that reconnecting does not reset them (REQ-E2E-003).
#[derive(Default)]
pub(crate) struct ClaimLimiter {
    buckets: Mutex<HashMap<(String, String, String), Bucket>>,
}

impl ClaimLimiter {
    /// Takes one claim from the pair's budget (`rate` per second, up to `burst`).
    fn allow(&self, claimant: &str, user: &str, device: &str, budget: (f64, f64)) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED_PAIRS {
            // A full bucket carries no information: forget those first.
            buckets.retain(|_, b| !b.is_full());
        }
        let k = (claimant.to_owned(), user.to_owned(), device.to_owned());
        buckets.entry(k).or_insert_with(|| Bucket::new(budget)).take(1.0)
    }
}

impl Conn {
    /// Answers a key-directory operation into `resp`.
    pub(super) fn key_request(&mut self, user: &str, device: &str, op: proto::request::Op, resp: &mut proto::Response) {
        use proto::request::Op;
        let store = &self.shared.store;
        let outcome: Result<Option<R>, ReasonCode> = match op {
            Op::KeyPublish(p) => match store.publish_keys(user, device, &p) {
                Ok(Ok(left)) => Ok(Some(R::KeyPublished(proto::KeyPublished { one_time_prekeys_remaining: left }))),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err(ReasonCode::StoreUnavailable),
            },
            Op::KeyQuery(q) if q.user_ids.len() > MAX_QUERY_USERS => Err(ReasonCode::InvalidRequest),
            Op::KeyQuery(q) => match store.query_keys(&q.user_ids) {
                Ok(users) => Ok(Some(R::Keys(proto::KeyListing { users }))),
                Err(_) => Err(ReasonCode::StoreUnavailable),
            },
            Op::KeyClaim(c) => {
                if !self.shared.claims.allow(user, &c.user_id, &c.device_id, self.shared.options.claim_rate) {
                    Err(ReasonCode::RateLimited)
                } else {
                    match store.claim_bundle(&c.user_id, &c.device_id) {
                        Ok(Ok(bundle)) => Ok(Some(R::KeyBundle(Box::new(bundle)))),
                        Ok(Err(reason)) => Err(reason),
                        Err(_) => Err(ReasonCode::StoreUnavailable),
                    }
                }
            }
            Op::GroupOpSubmit(g) => self.group_op(user, &g),
            _ => Err(ReasonCode::InvalidRequest),
        };
        match outcome {
            Ok(result) => resp.result = result,
            Err(reason) => resp.reason = super::wire(reason),
        }
    }

    /// Sequences a signed membership operation of a group the user belongs to (REQ-E2E-005).
    fn group_op(&self, user: &str, g: &proto::GroupOpSubmit) -> Result<Option<R>, ReasonCode> {
        let store = &self.shared.store;
        let conv = store.group_conversation(&g.group_id).map_err(|_| ReasonCode::StoreUnavailable)?;
        let conv = conv.ok_or(ReasonCode::NotFound)?;
        if !store.is_member(conv, user).map_err(|_| ReasonCode::StoreUnavailable)? {
            return Err(ReasonCode::NotAMember);
        }
        match store.submit_group_op(&g.group_id, g.epoch, &g.signed_op) {
            Ok(Ok(epoch)) => Ok(Some(R::GroupOp(proto::GroupOpAccepted { epoch }))),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(ReasonCode::StoreUnavailable),
        }
    }
}
