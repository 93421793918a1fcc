//! What a session asks the broker to do: store and route messages, answer SYNC, HISTORY and
//! REQUEST, record read markers.

use tern_codec::ids::{check_identifier, Cid, StreamId};
use tern_codec::limits::{DEFAULT_SYNC_LIMIT, MAX_HISTORY_LIMIT, MAX_SYNC_LIMIT};
use tern_codec::proto;
use tern_codec::{Frame, ReasonCode};

use super::{now, wire, Conn};
use crate::server::Shared;
use crate::store::NewMessage;

/// A PUBLISH (or package) queued for commit, not yet durable, acknowledged or delivered.
pub(super) struct StagedPublish {
    received: std::time::Instant,
    started: std::time::Instant,
    pending: crate::store::PendingCommit,
    notify_members: Vec<(u64, crate::members::MemberSet)>,
}

impl Conn {
    /// Queues QoS 1/2 messages (one, or a whole package atomically) for commit without waiting:
    /// the caller stages what one read brought, then completes each in order once durable
    /// ([`Conn::complete_publishes`]): acknowledged, then pushed to every device of every
    /// recipient. Refusals and rooms are handled here, after the earlier staged messages are
    /// completed, so PUBACKs keep cid order.
    pub(super) async fn stage_publish(&mut self, messages: Vec<proto::Publish>, staged: &mut Vec<StagedPublish>) {
        let Some(me) = &self.me else { return };
        let (user, device) = (me.user.clone(), me.device.clone());
        let received = std::time::Instant::now();
        // Per-connection rate limit: a burst, then a sustained rate (a package costs its size).
        if !self.publish_budget.take(messages.len() as f64) {
            self.complete_publishes(staged).await;
            let cids: Vec<Cid> = messages.iter().filter(|p| p.qos > 0).map(|p| Cid(p.cid)).collect();
            return self.refuse(&cids, ReasonCode::RateLimited).await;
        }
        if messages.first().is_some_and(|p| super::rooms::is_ephemeral(&p.topic)) {
            self.complete_publishes(staged).await;
            return self.on_ephemeral_publish(&user, &device, messages).await;
        }
        if messages.iter().all(|p| p.qos == 0) {
            // QoS 0 outside rooms and telemetry has no store and no ack: dropped.
            return;
        }
        let mut batch = Vec::with_capacity(messages.len());
        let mut notify_members: Vec<(u64, crate::members::MemberSet)> = Vec::new();
        let mut refused = Vec::new();
        for p in messages {
            match route(&self.shared, &user, &p.topic) {
                Ok(Route { conversation_id, inboxes, notify }) => {
                    if let Some(members) = notify {
                        notify_members.push((conversation_id, members));
                    }
                    batch.push(NewMessage {
                        cid: p.cid,
                        conversation_id,
                        inboxes,
                        message: proto::Deliver {
                            topic: p.topic,
                            sender_user: user.clone(),
                            sender_device: device.clone(),
                            qos: p.qos,
                            payload: p.payload,
                            package: p.package,
                            content_type: p.content_type,
                            ..Default::default()
                        },
                    });
                }
                Err(reason) => refused.push((Cid(p.cid), reason)),
            }
        }
        if !refused.is_empty() {
            self.complete_publishes(staged).await;
            // One member of a package refused refuses the whole package: nothing partial.
            let reason = refused.first().map_or(ReasonCode::NotFound, |r| r.1);
            let all: Vec<(Cid, ReasonCode)> = batch.iter().map(|m| (Cid(m.cid), reason)).chain(refused).collect();
            for (cid, reason) in all {
                self.refuse(&[cid], reason).await;
            }
            return;
        }
        let started = std::time::Instant::now();
        let pending = self.shared.store.commit_durable(&user, &device, batch, crate::unix_now_ms());
        staged.push(StagedPublish { received, started, pending, notify_members });
    }

    /// Waits for the staged commits to be durable (the store commits and flushes whatever was
    /// queued meanwhile together), then acknowledges and delivers them in order: nothing is
    /// acknowledged or delivered before it is on disk.
    pub(super) async fn complete_publishes(&mut self, staged: &mut Vec<StagedPublish>) {
        if staged.is_empty() {
            return;
        }
        let Some(user) = self.me.as_ref().map(|m| m.user.clone()) else { return };
        for StagedPublish { received, started, pending, notify_members } in std::mem::take(staged) {
            let committed = match pending.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "commit failed");
                    // Not acknowledged: the client retransmits, and the cid ledger answers any
                    // message that was in fact stored with its first outcome (REQ-QOS-005).
                    self.machine.close(ReasonCode::StoreUnavailable, "store unavailable");
                    return;
                }
            };
            self.shared.metrics.commit_seconds.observe(started.elapsed());
            for c in &committed {
                self.shared.metrics.stored(c.ack.conversation_id);
            }
            for (conversation_id, members) in notify_members {
                self.shared.router().notify(&members, conversation_id);
            }
            self.shared.metrics.publish_to_ack_seconds.observe(received.elapsed());
            for c in committed {
                let _ = self.machine.ack_publish(c.ack);
                for (to, d) in c.deliveries {
                    if to == user {
                        // This device gets its own copy through its own machine, in order.
                        self.deliver(d.clone());
                        self.shared.router().push(&to, Some(self.conn_id), d, now());
                    } else {
                        self.shared.router().push(&to, None, d, now());
                    }
                }
            }
        }
    }

    /// Records and sends an outcome that stored nothing.
    pub(super) async fn refuse(&mut self, cids: &[Cid], reason: ReasonCode) {
        let Some(me) = &self.me else { return };
        for &Cid(cid) in cids {
            let ack = proto::PubAck { cid, reason: wire(reason), ..Default::default() };
            self.shared.metrics.refused(reason);
            if let Err(e) = self.shared.store.record_outcome(&me.user, &me.device, &ack) {
                tracing::error!(error = %e, "outcome not recorded");
                continue;
            }
            let _ = self.machine.ack_publish(ack);
        }
        let _ = self.shared.store.flush().await;
    }

    pub(super) fn on_frame(&mut self, frame: Frame) {
        let Some(me) = &self.me else { return };
        let user = me.user.clone();
        match frame {
            Frame::Sync(s) => self.on_sync(&user, s),
            Frame::HistoryRequest(h) => {
                let limit = match h.limit {
                    0 => tern_codec::limits::DEFAULT_HISTORY_LIMIT,
                    l => l.min(MAX_HISTORY_LIMIT),
                } as usize;
                let mut page = proto::HistoryPage {
                    request_id: h.request_id,
                    conversation_id: h.conversation_id,
                    ..Default::default()
                };
                match self.shared.store.is_member(h.conversation_id, &user) {
                    Ok(true) => match self.shared.store.history(h.conversation_id, h.before_seq, limit) {
                        Ok((entries, next)) => {
                            page.entries = entries;
                            page.next_before_seq = next;
                        }
                        Err(_) => page.reason = wire(ReasonCode::StoreUnavailable),
                    },
                    Ok(false) => page.reason = wire(ReasonCode::NotAuthorized),
                    Err(_) => page.reason = wire(ReasonCode::StoreUnavailable),
                }
                let _ = self.machine.send(&Frame::HistoryPage(page));
            }
            Frame::Request(r) => self.on_request(&user, r),
            Frame::ReadMark(r) => self.on_read(&user, r),
            Frame::Subscribe(s) => {
                let reasons = s.filters.iter().map(|f| wire(self.subscribe(&user, f))).collect();
                let _ = self.machine.send(&Frame::SubAck(proto::SubAck { request_id: s.request_id, reasons }));
            }
            Frame::Unsubscribe(s) => {
                let reasons = s.filters.iter().map(|f| wire(self.unsubscribe(&user, f))).collect();
                let _ = self.machine.send(&Frame::UnsubAck(proto::SubAck { request_id: s.request_id, reasons }));
            }
            _ => {}
        }
    }

    fn on_sync(&mut self, user: &str, s: proto::Sync) {
        let limit = match s.limit {
            0 => DEFAULT_SYNC_LIMIT,
            l => l.min(MAX_SYNC_LIMIT),
        } as usize;
        let mut done =
            proto::SyncDone { request_id: s.request_id, stream: s.stream, last_seq: s.after_seq, ..Default::default() };
        let store = &self.shared.store;
        let answer = match StreamId::from_proto(s.stream.as_ref()) {
            Some(StreamId::Inbox) => Some((store.inbox_latest(user), store.inbox_after(user, s.after_seq, limit))),
            Some(StreamId::Conversation(conv)) if store.is_member(conv.0, user).unwrap_or(false) => {
                Some((store.conversation_latest(conv.0), store.conversation_after(conv.0, s.after_seq, limit)))
            }
            // Not a member (or no such stream): nothing is readable (REQ-SYN-006).
            _ => None,
        };
        match answer {
            Some((Ok(latest), Ok(batch))) => {
                for d in batch {
                    done.last_seq = done.last_seq.max(d.seq);
                    self.deliver(d);
                }
                done.more = done.last_seq < latest;
            }
            Some(_) => done.reason = wire(ReasonCode::StoreUnavailable),
            None => done.reason = wire(ReasonCode::NotAuthorized),
        }
        let _ = self.machine.send(&Frame::SyncDone(done));
    }

    fn on_request(&mut self, user: &str, r: proto::Request) {
        use proto::request::Op;
        let mut resp = proto::Response { request_id: r.request_id, ..Default::default() };
        match r.op {
            Some(Op::GroupCreate(g)) => match self.shared.store.create_group(&g.group_id, user, &g.members) {
                Ok(Ok(_)) => resp.result = self.group_info(&g.group_id).map(proto::response::Result::Group),
                Ok(Err(reason)) => resp.reason = wire(reason),
                Err(_) => resp.reason = wire(ReasonCode::StoreUnavailable),
            },
            Some(op @ (Op::GroupAdd(_) | Op::GroupRemove(_))) => {
                let (g, add) = match op {
                    Op::GroupAdd(g) => (g, true),
                    Op::GroupRemove(g) => (g, false),
                    _ => unreachable_op(),
                };
                match self.shared.store.change_members(&g.group_id, Some(user), &g.members, add) {
                    Ok(Ok(conv)) => {
                        self.shared.members.changed(conv);
                        resp.result = self.group_info(&g.group_id).map(proto::response::Result::Group);
                    }
                    Ok(Err(reason)) => resp.reason = wire(reason),
                    Err(_) => resp.reason = wire(ReasonCode::StoreUnavailable),
                }
            }
            Some(Op::RoomJoin(r)) => {
                if let Err(reason) = self.room_membership(user, &r.room_id, true) {
                    resp.reason = wire(reason);
                }
            }
            Some(Op::RoomLeave(r)) => {
                if let Err(reason) = self.room_membership(user, &r.room_id, false) {
                    resp.reason = wire(reason);
                }
            }
            Some(Op::UnreadQuery(q)) => match self.shared.store.unread(user, &q.conversation_ids) {
                Ok((counts, total)) => {
                    let conversations = counts
                        .into_iter()
                        .map(|(conversation_id, unread)| proto::UnreadCount { conversation_id, unread })
                        .collect();
                    resp.result = Some(proto::response::Result::Unread(proto::UnreadCounts { conversations, total }));
                }
                Err(_) => resp.reason = wire(ReasonCode::StoreUnavailable),
            },
            Some(Op::RecentConversations(q)) => {
                let limit = match q.limit {
                    0 => 20,
                    l => l.min(100),
                } as usize;
                match self.shared.store.recent(user, q.before_ms, limit) {
                    Ok((conversations, next_before_ms)) => {
                        resp.result = Some(proto::response::Result::RecentConversations(proto::ConversationList {
                            conversations,
                            next_before_ms,
                        }));
                    }
                    Err(_) => resp.reason = wire(ReasonCode::StoreUnavailable),
                }
            }
            Some(Op::SetPresence(p)) => {
                use proto::PresenceStatus as Status;
                match Status::try_from(p.status) {
                    Ok(status @ (Status::Online | Status::Away)) => {
                        let device = self.me.as_ref().map(|m| m.device.clone()).unwrap_or_default();
                        let now = crate::unix_now_ms();
                        let mut router = self.shared.router();
                        if let Some(live) = router.live.get_mut(user).and_then(|d| d.get_mut(&device)) {
                            live.status = status;
                            live.since_ms = now;
                        }
                        router.announce(user, &device, status, now);
                    }
                    _ => resp.reason = wire(ReasonCode::InvalidRequest),
                }
            }
            Some(Op::PresenceQuery(q)) => {
                let mut entries = Vec::new();
                let mut router = self.shared.router();
                for target in &q.user_ids {
                    // Only users who share a conversation with the asker (spec 10.6).
                    if target != user && !self.shared.store.share_conversation(user, target).unwrap_or(false) {
                        continue;
                    }
                    entries.extend(router.presence_of(target));
                    router.watchers.entry(target.clone()).or_default().insert(self.conn_id, self.tx.clone());
                }
                resp.result = Some(proto::response::Result::Presence(proto::PresenceListing { entries }));
            }
            Some(Op::GroupList(_)) => match self.shared.store.groups_of(user) {
                Ok(ids) => {
                    let groups = ids.iter().filter_map(|g| self.group_info(g)).collect();
                    resp.result = Some(proto::response::Result::Groups(proto::GroupListing { groups }));
                }
                Err(_) => resp.reason = wire(ReasonCode::StoreUnavailable),
            },
            Some(Op::OpenConversation(o)) => {
                if check_identifier("peer_user", &o.peer_user).is_err() {
                    resp.reason = wire(ReasonCode::InvalidRequest);
                } else {
                    match self.shared.store.conversation_for_pair(user, &o.peer_user) {
                        Ok(id) => {
                            resp.result = Some(proto::response::Result::Conversation(proto::ConversationInfo {
                                conversation_id: id,
                                topic: format!("user/{}", o.peer_user),
                                latest_seq: 0,
                            }))
                        }
                        Err(_) => resp.reason = wire(ReasonCode::StoreUnavailable),
                    }
                }
            }
            // Groups, unread counts, presence, rooms and the key directory are not built yet.
            Some(op @ (Op::KeyPublish(_) | Op::KeyQuery(_) | Op::KeyClaim(_) | Op::GroupOpSubmit(_))) => {
                let device = self.me.as_ref().map(|m| m.device.clone()).unwrap_or_default();
                self.key_request(user, &device, op, &mut resp);
            }
            _ => resp.reason = wire(ReasonCode::InvalidRequest),
        }
        let _ = self.machine.send(&Frame::Response(resp));
    }

    /// A read marker: unread counts follow in the same commit; the user's other devices and,
    /// below the receipt threshold, the other members get a RECEIPT (REQ-GRP-008).
    fn on_read(&mut self, user: &str, r: proto::ReadMark) {
        let store = &self.shared.store;
        if !store.is_member(r.conversation_id, user).unwrap_or(false) {
            return;
        }
        let seq = match store.mark_read(user, r.conversation_id, r.seq) {
            Ok(Some(seq)) => seq,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "read marker not stored");
                return;
            }
        };
        let members = store.members(r.conversation_id).unwrap_or_default();
        let receipt =
            Frame::Receipt(proto::Receipt { conversation_id: r.conversation_id, reader: user.to_owned(), seq });
        let router = self.shared.router();
        if members.len() <= self.shared.options.receipt_threshold {
            router.send_frame(&members, Some(self.conn_id), &receipt);
        } else {
            router.send_frame(&[user.to_owned()], Some(self.conn_id), &receipt);
        }
    }

    /// Tells this device that a read fan-out conversation has news (REQ-SYN-001), at once or,
    /// within the stream's NOTIFY window, once when the window ends (spec 8.2).
    pub(super) fn notify(&mut self, conversation_id: u64) {
        if self.notify_windows.admit(conversation_id, std::time::Instant::now()) {
            self.send_notify(conversation_id);
        }
    }

    /// A NOTIFY with the stream's latest seq and this device's sync point on it.
    pub(super) fn send_notify(&mut self, conversation_id: u64) {
        let Some(me) = &self.me else { return };
        let store = &self.shared.store;
        let latest = store.conversation_latest(conversation_id).unwrap_or(0);
        let acked_seq = store.conversation_cursor(&me.user, &me.device, conversation_id).unwrap_or(0);
        let stream = Some(StreamId::Conversation(tern_codec::ids::ConversationId(conversation_id)).to_proto());
        let _ = self.machine.send(&Frame::Notify(proto::Notify { stream, latest_seq: latest, acked_seq }));
    }

    fn group_info(&self, group: &str) -> Option<proto::GroupInfo> {
        let store = &self.shared.store;
        let conversation_id = store.group_conversation(group).ok()??;
        let members = store.members(conversation_id).ok()?;
        let read_fanout = members.len() > self.shared.options.write_fanout_threshold;
        Some(proto::GroupInfo { group_id: group.to_owned(), conversation_id, members, read_fanout })
    }
}

/// Resolves a topic to a conversation, the inboxes it writes to (write fan-out) and the
/// members told by NOTIFY instead (read fan-out), checking access (spec 5.2, 10.2).
pub(crate) fn route(shared: &Shared, user: &str, topic: &str) -> Result<Route, ReasonCode> {
    let store = &shared.store;
    let unavailable = |_| ReasonCode::StoreUnavailable;
    if let Some(peer) = topic.strip_prefix("user/") {
        check_identifier("topic", peer).map_err(|_| ReasonCode::NotFound)?;
        let conversation_id = store.conversation_for_pair(user, peer).map_err(unavailable)?;
        let mut inboxes = vec![peer.to_owned()];
        if peer != user {
            inboxes.push(user.to_owned());
        }
        return Ok(Route { conversation_id, inboxes, notify: None });
    }
    if let Some(group) = topic.strip_prefix("group/") {
        let conversation_id = store.group_conversation(group).map_err(unavailable)?.ok_or(ReasonCode::NotFound)?;
        let members = shared.members.get(store, conversation_id).map_err(unavailable)?;
        if !members.contains(user) {
            return Err(ReasonCode::NotAMember);
        }
        // Write fan-out up to the threshold, read fan-out above it (REQ-GRP-002).
        return Ok(if members.len() <= shared.options.write_fanout_threshold {
            let mut inboxes: Vec<String> = members.iter().cloned().collect();
            inboxes.sort_unstable();
            Route { conversation_id, inboxes, notify: None }
        } else {
            Route { conversation_id, inboxes: Vec::new(), notify: Some(members) }
        });
    }
    // Rooms, conversations by id and device telemetry are not routed yet.
    Err(ReasonCode::NotFound)
}

/// Where a message goes.
pub(crate) struct Route {
    pub(crate) conversation_id: u64,
    /// Users whose inbox gets a copy (write fan-out).
    pub(crate) inboxes: Vec<String>,
    /// Members told by NOTIFY, who pull the conversation stream (read fan-out).
    pub(crate) notify: Option<crate::members::MemberSet>,
}

fn unreachable_op() -> ! {
    unreachable!("matched GroupAdd or GroupRemove above")
}
