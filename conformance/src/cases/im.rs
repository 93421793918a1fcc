//! Access rules, groups in both fan-out modes, membership changes, unread counts, read
//! markers, receipts, recent conversations and presence, against a broker.

use tern_codec::proto::{self, request::Op, response::Result as R, PresenceStatus, StreamKind};
use tern_codec::{Frame, ReasonCode};

use super::sync::sync;
use super::{broker, Case};
use crate::case::{CaseFuture, Feature, Stop};
use crate::check;
use crate::cx::{conversation, Cx};
use crate::peer::{reason_name, Peer};

pub(super) const CASES: &[Case] = &[
    broker("acl.publish-to-foreign-group@broker", &["REQ-ACL-001", "REQ-ACL-002"],
        "a PUBLISH to a group the user is not in gets NOT_A_MEMBER, the connection stays open, and no member receives it", acl_publish),
    broker("acl.subscribe-per-filter@broker", &["REQ-ACL-003"],
        "SUBSCRIBE refuses the filter the user may not read and grants the other", acl_subscribe).needs(Feature::Rooms),
    broker("groups.fanout-switch@broker", &["REQ-GRP-002", "REQ-SYN-008", "REQ-SYN-001"],
        "a group crossing the fan-out threshold switches to read fan-out without losing or repeating a message", fanout_switch).needs(Feature::ReadFanout),
    broker("groups.membership-change@broker", &["REQ-GRP-003", "REQ-ACL-002"],
        "a removed member gets nothing stored after removal; an added member gets what is stored from the addition on", membership_change),
    broker("im.unread-and-read-marker@broker", &["REQ-GRP-005", "REQ-GRP-006"],
        "unread counts follow messages and READ; the total equals the sum; a lower READ is ignored", unread),
    broker("im.receipts@broker", &["REQ-GRP-008"],
        "READ in a 1:1 conversation sends RECEIPT to the other member's online device", receipts),
    broker("im.recent-conversations@broker", &["REQ-GRP-009"],
        "recent_conversations lists newest first, pages with next_before_ms, and is the same on every device", recent),
    broker("presence.online-offline@broker", &["REQ-PRS-001", "REQ-PRS-002"],
        "a watcher gets PRESENCE ONLINE when a device connects and OFFLINE when it closes", presence_online_offline),
    broker("im.telemetry.own-devices@broker", &["REQ-TOP-006", "REQ-ACL-001"],
        "device telemetry reaches the same user's matching filter as QoS 0, and another device or user cannot publish under it", telemetry),
    broker("presence.away@broker", &["REQ-PRS-003", "REQ-PRS-002"],
        "set_presence(AWAY) is announced to watchers; set_presence(OFFLINE) is refused with INVALID_REQUEST", presence_away),
];

async fn create_group(cx: &Cx, p: &mut Peer, group: &str, members: Vec<String>) -> Result<proto::GroupInfo, Stop> {
    let r = p
        .request_ok(
            cx.prompt(),
            cx.request_id(),
            Op::GroupCreate(proto::GroupCreate { group_id: group.into(), members }),
        )
        .await?;
    match r.result {
        Some(R::Group(g)) => Ok(g),
        other => Err(crate::violated!("REQ-GRP-007", "group_create answered with {other:?}")),
    }
}

async fn change_members(
    cx: &Cx,
    p: &mut Peer,
    group: &str,
    members: Vec<String>,
    add: bool,
) -> Result<proto::GroupInfo, Stop> {
    let m = proto::GroupMembers { group_id: group.into(), members };
    let r = p.request_ok(cx.prompt(), cx.request_id(), if add { Op::GroupAdd(m) } else { Op::GroupRemove(m) }).await?;
    match r.result {
        Some(R::Group(g)) => Ok(g),
        other => Err(crate::violated!("REQ-GRP-007", "group membership change answered with {other:?}")),
    }
}

/// The next fresh DELIVER's payload (acknowledged).
async fn next_payload(cx: &Cx, p: &mut Peer, req: &'static str) -> Result<Vec<u8>, Stop> {
    let d = p.fresh_deliver(cx.prompt(), req).await?;
    p.ack(d.stream.unwrap_or_default(), d.seq).await?;
    Ok(d.payload.to_vec())
}

fn acl_publish(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (owner, member, outsider, group) = (cx.name("acl-o"), cx.name("acl-m"), cx.name("acl-x"), cx.name("acl-g"));
        let (mut po, _) = cx.session("owner", &owner, "d1").await?;
        create_group(cx, &mut po, &group, vec![member.clone()]).await?;
        let (mut pm, _) = cx.session("member", &member, "d1").await?;
        let (mut px, _) = cx.session("outsider", &outsider, "d1").await?;
        let ack = px.publish(cx.prompt(), 1, &format!("group/{group}"), b"intrusion").await?;
        check!(
            ack.reason == ReasonCode::NotAMember as u32 || ack.reason == ReasonCode::NotAuthorized as u32,
            "REQ-ACL-001",
            "an outsider's PUBLISH to the group got {}",
            reason_name(ack.reason)
        );
        px.ping(cx.prompt(), "REQ-ACL-001", 11).await?;
        po.publish_ok(cx.prompt(), 1, &format!("group/{group}"), b"barrier").await?;
        let got = next_payload(cx, &mut pm, "REQ-ACL-002").await?;
        check!(
            got == b"barrier",
            "REQ-ACL-002",
            "a member received {:?} before the barrier",
            String::from_utf8_lossy(&got)
        );
        for p in [&mut po, &mut pm, &mut px] {
            p.close().await?;
        }
        Ok(())
    })
}

fn acl_subscribe(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (user, mine, other) = (cx.name("sub"), cx.name("room-mine"), cx.name("room-other"));
        let (mut owner, _) = cx.session("other-owner", &cx.name("sub-o"), "d1").await?;
        owner
            .request_ok(cx.prompt(), cx.request_id(), Op::RoomJoin(proto::RoomJoin { room_id: other.clone() }))
            .await?;
        let (mut p, _) = cx.session("client", &user, "d1").await?;
        p.request_ok(cx.prompt(), cx.request_id(), Op::RoomJoin(proto::RoomJoin { room_id: mine.clone() })).await?;
        let id = cx.request_id();
        p.send(&Frame::Subscribe(proto::Subscribe {
            request_id: id,
            filters: vec![format!("room/{other}"), format!("room/{mine}")],
        }))
        .await?;
        let sub = p
            .expect(cx.prompt(), "REQ-ACL-003", "SUBACK", |f| match f {
                Frame::SubAck(s) if s.request_id == id => Some(s.clone()),
                _ => None,
            })
            .await?;
        let refused = [ReasonCode::NotAMember as u32, ReasonCode::NotAuthorized as u32];
        let refused_first = sub.reasons.first().is_some_and(|r| refused.contains(r));
        check!(
            sub.reasons.len() == 2 && refused_first && sub.reasons.get(1) == Some(&0),
            "REQ-ACL-003",
            "SUBACK reasons {:?}: expected [NOT_A_MEMBER or NOT_AUTHORIZED, SUCCESS]",
            sub.reasons
        );
        owner.close().await?;
        p.close().await
    })
}

fn fanout_switch(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let threshold = cx.target.declared.read_fanout_threshold.unwrap_or(0);
        let (owner, member, group) = (cx.name("fan-o"), cx.name("fan-m"), cx.name("fan-g"));
        let mut members = vec![member.clone()];
        members.extend((2..threshold).map(|i| cx.name(&format!("f{i}"))));
        let (mut po, _) = cx.session("owner", &owner, "d1").await?;
        let info = create_group(cx, &mut po, &group, members).await?;
        check!(!info.read_fanout, "REQ-GRP-002", "a group of {} (the threshold) uses read fan-out", info.members.len());
        let (mut pm, _) = cx.session("member", &member, "d1").await?;
        let topic = format!("group/{group}");
        po.publish_ok(cx.prompt(), 1, &topic, b"before").await?;
        let d = pm.fresh_deliver(cx.prompt(), "REQ-GRP-002").await?;
        check!(
            d.stream.unwrap_or_default().kind == StreamKind::Inbox as i32,
            "REQ-GRP-002",
            "write fan-out message not on the inbox"
        );
        pm.ack(d.stream.unwrap_or_default(), d.seq).await?;
        let mut seen = vec![(d.conversation_seq, d.payload.to_vec())];
        let info = change_members(cx, &mut po, &group, vec![cx.name("fan-extra")], true).await?;
        check!(
            info.read_fanout,
            "REQ-GRP-002",
            "a group of {} (above the threshold {threshold}) still uses write fan-out",
            info.members.len()
        );
        po.publish_ok(cx.prompt(), 2, &topic, b"after").await?;
        // Read fan-out: a NOTIFY for the conversation stream, then SYNC from its acked_seq.
        let n = pm
            .expect(cx.prompt(), "REQ-GRP-002", "NOTIFY for the group's conversation stream", |f| match f {
                Frame::Notify(n) if n.stream.unwrap_or_default().kind == StreamKind::Conversation as i32 => Some(*n),
                Frame::Deliver(d) if d.payload.as_ref() == b"after" => {
                    Some(proto::Notify { stream: d.stream, latest_seq: d.seq, acked_seq: d.seq.saturating_sub(1) })
                }
                _ => None,
            })
            .await?;
        let stream = n.stream.unwrap_or_else(|| conversation(info.conversation_id));
        let (got, _) = sync(cx, &mut pm, stream, n.acked_seq, 0).await?;
        seen.extend(got.iter().map(|d| (d.conversation_seq, d.payload.to_vec())));
        seen.sort();
        let expected = vec![(1, b"before".to_vec()), (2, b"after".to_vec())];
        check!(
            seen == expected,
            "REQ-GRP-002",
            "across the switch the member saw {:?} (acked_seq {}), expected conversation seqs 1 and 2 once each",
            seen.iter().map(|(s, p)| format!("{s}:{}", String::from_utf8_lossy(p))).collect::<Vec<_>>(),
            n.acked_seq
        );
        po.close().await?;
        pm.close().await
    })
}

fn membership_change(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (owner, stays, leaves, joins, group) =
            (cx.name("mem-o"), cx.name("mem-s"), cx.name("mem-l"), cx.name("mem-j"), cx.name("mem-g"));
        cx.register(&joins, "d1").await?;
        let (mut po, _) = cx.session("owner", &owner, "d1").await?;
        create_group(cx, &mut po, &group, vec![stays.clone(), leaves.clone()]).await?;
        let (mut pl, _) = cx.session("leaver", &leaves, "d1").await?;
        let topic = format!("group/{group}");
        po.publish_ok(cx.prompt(), 1, &topic, b"m1").await?;
        check!(next_payload(cx, &mut pl, "REQ-GRP-003").await? == b"m1", "REQ-GRP-003", "member did not get m1 first");
        change_members(cx, &mut po, &group, vec![leaves.clone()], false).await?;
        change_members(cx, &mut po, &group, vec![joins.clone()], true).await?;
        po.publish_ok(cx.prompt(), 2, &topic, b"m2").await?;
        // Barriers: a 1:1 message to each, after m2 was stored.
        po.publish_ok(cx.prompt(), 3, &format!("user/{leaves}"), b"barrier").await?;
        po.publish_ok(cx.prompt(), 4, &format!("user/{joins}"), b"barrier").await?;
        let got = next_payload(cx, &mut pl, "REQ-GRP-003").await?;
        check!(
            got == b"barrier",
            "REQ-GRP-003",
            "a removed member received {:?} stored after the removal",
            String::from_utf8_lossy(&got)
        );
        let (mut pj, _) = cx.session("joiner", &joins, "d1").await?;
        let first = next_payload(cx, &mut pj, "REQ-GRP-003").await?;
        let second = next_payload(cx, &mut pj, "REQ-GRP-003").await?;
        check!(
            first == b"m2" && second == b"barrier",
            "REQ-GRP-003",
            "an added member got {:?} then {:?}; expected m2 (stored after the addition) then the barrier",
            String::from_utf8_lossy(&first),
            String::from_utf8_lossy(&second)
        );
        for p in [&mut po, &mut pl, &mut pj] {
            p.close().await?;
        }
        Ok(())
    })
}

async fn unread_of(cx: &Cx, p: &mut Peer, conv: u64) -> Result<(u64, u64), Stop> {
    let r = p
        .request_ok(cx.prompt(), cx.request_id(), Op::UnreadQuery(proto::UnreadQuery { conversation_ids: vec![conv] }))
        .await?;
    let Some(R::Unread(u)) = r.result else {
        return Err(crate::violated!("REQ-GRP-005", "unread_query answered without counts"));
    };
    let sum: u64 = u.conversations.iter().map(|c| c.unread).sum();
    let this = u.conversations.iter().find(|c| c.conversation_id == conv).map_or(0, |c| c.unread);
    // The user has only this conversation, so the total must equal its count.
    check!(u.total == sum, "REQ-GRP-005", "total {} is not the sum {} of the counts reported", u.total, sum);
    Ok((this, u.total))
}

fn unread(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (a, b) = (cx.name("unr-a"), cx.name("unr-b"));
        let (mut pa, _) = cx.session("sender", &a, "d1").await?;
        let acks = super::sync::publish_many(cx, &mut pa, &format!("user/{b}"), 1, 3, 3).await?;
        let conv = acks.first().map_or(0, |x| x.conversation_id);
        let (mut pb, _) = cx.session("reader", &b, "d1").await?;
        check!(unread_of(cx, &mut pb, conv).await? == (3, 3), "REQ-GRP-005", "unread after 3 messages is not 3");
        let (mine, _) = unread_of(cx, &mut pa, conv).await?;
        check!(mine == 0, "REQ-GRP-005", "the sender's own messages count as unread for the sender ({mine})");
        pb.send(&Frame::ReadMark(proto::ReadMark { conversation_id: conv, seq: 2 })).await?;
        let after = unread_of(cx, &mut pb, conv).await?;
        check!(after == (1, 1), "REQ-GRP-006", "unread/total after READ seq 2 of 3: {after:?}");
        pb.send(&Frame::ReadMark(proto::ReadMark { conversation_id: conv, seq: 1 })).await?;
        let after = unread_of(cx, &mut pb, conv).await?;
        check!(after == (1, 1), "REQ-GRP-006", "a lower READ moved the marker back: unread/total {after:?}");
        pa.close().await?;
        pb.close().await
    })
}

fn receipts(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (a, b) = (cx.name("rcp-a"), cx.name("rcp-b"));
        let (mut pa, _) = cx.session("sender", &a, "d1").await?;
        let ack = pa.publish_ok(cx.prompt(), 1, &format!("user/{b}"), b"read me").await?;
        let (mut pb, _) = cx.session("reader", &b, "d1").await?;
        pb.send(&Frame::ReadMark(proto::ReadMark { conversation_id: ack.conversation_id, seq: ack.seq })).await?;
        let r = pa
            .expect(cx.prompt(), "REQ-GRP-008", "RECEIPT", |f| match f {
                Frame::Receipt(r) => Some(r.clone()),
                _ => None,
            })
            .await?;
        check!(
            r.conversation_id == ack.conversation_id && r.reader == b && r.seq == ack.seq,
            "REQ-GRP-008",
            "RECEIPT {r:?}, expected conversation {} reader {b} seq {}",
            ack.conversation_id,
            ack.seq
        );
        pa.close().await?;
        pb.close().await
    })
}

async fn recent_list(cx: &Cx, p: &mut Peer, before_ms: u64, limit: u32) -> Result<proto::ConversationList, Stop> {
    let r = p
        .request_ok(
            cx.prompt(),
            cx.request_id(),
            Op::RecentConversations(proto::RecentConversations { before_ms, limit }),
        )
        .await?;
    match r.result {
        Some(R::RecentConversations(l)) => Ok(l),
        other => Err(crate::violated!("REQ-GRP-009", "recent_conversations answered with {other:?}")),
    }
}

fn recent(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (first, second, me) = (cx.name("rec-1"), cx.name("rec-2"), cx.name("rec-me"));
        cx.register(&me, "d1").await?;
        cx.register(&me, "d2").await?;
        let (mut p1, _) = cx.session("first-peer", &first, "d1").await?;
        p1.publish_ok(cx.prompt(), 1, &format!("user/{me}"), b"older").await?;
        let (mut d1, _) = cx.session("me-d1", &me, "d1").await?;
        // Activity times are milliseconds: make the second message visibly newer.
        let _ = next_payload(cx, &mut d1, "REQ-GRP-009").await?;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (mut p2, _) = cx.session("second-peer", &second, "d1").await?;
        p2.publish_ok(cx.prompt(), 1, &format!("user/{me}"), b"newer").await?;
        let _ = next_payload(cx, &mut d1, "REQ-GRP-009").await?;
        let list = recent_list(cx, &mut d1, 0, 0).await?;
        let topics: Vec<&str> = list.conversations.iter().map(|c| c.topic.as_str()).collect();
        check!(
            topics == vec![format!("user/{second}"), format!("user/{first}")],
            "REQ-GRP-009",
            "recent conversations {topics:?}, expected the newer peer first"
        );
        check!(list.next_before_ms == 0, "REQ-GRP-009", "next_before_ms {} with nothing more", list.next_before_ms);
        let page = recent_list(cx, &mut d1, 0, 1).await?;
        let head = page.conversations.first().map(|c| (c.topic.clone(), c.last_activity_ms));
        check!(
            page.conversations.len() == 1
                && head.as_ref().is_some_and(|(t, ms)| *t == format!("user/{second}") && *ms == page.next_before_ms),
            "REQ-GRP-009",
            "limit 1: {} entries, next_before_ms {} (head {head:?})",
            page.conversations.len(),
            page.next_before_ms
        );
        let (mut d2, _) = cx.session("me-d2", &me, "d2").await?;
        let other_device = recent_list(cx, &mut d2, 0, 0).await?;
        check!(other_device == list, "REQ-GRP-009", "a second device of the user sees a different list");
        for p in [&mut p1, &mut p2, &mut d1, &mut d2] {
            p.close().await?;
        }
        Ok(())
    })
}

async fn watch(cx: &Cx, p: &mut Peer, user: &str) -> Result<(), Stop> {
    p.request_ok(cx.prompt(), cx.request_id(), Op::PresenceQuery(proto::PresenceQuery { user_ids: vec![user.into()] }))
        .await?;
    Ok(())
}

async fn presence(cx: &Cx, p: &mut Peer, user: &str, status: PresenceStatus, req: &'static str) -> Result<(), Stop> {
    let got = p
        .expect(cx.wait(15.0), req, &format!("PRESENCE {} for {user}", status.as_str_name()), |f| match f {
            Frame::Presence(x) if x.user_id == user => Some(x.clone()),
            _ => None,
        })
        .await?;
    let valid = [PresenceStatus::Online, PresenceStatus::Away, PresenceStatus::Offline].map(|s| s as i32);
    check!(valid.contains(&got.status), "REQ-PRS-002", "PRESENCE status {} is not ONLINE, AWAY or OFFLINE", got.status);
    if got.status != status as i32 {
        return Err(Stop::Violation {
            req,
            detail: format!("PRESENCE status {}, expected {}", got.status, status.as_str_name()),
        });
    }
    Ok(())
}

fn presence_online_offline(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (watcher, user) = (cx.name("prs-w"), cx.name("prs-u"));
        let (mut pw, _) = cx.session("watcher", &watcher, "d1").await?;
        // Presence is visible to users who share a conversation (spec 10.6).
        pw.publish_ok(cx.prompt(), 1, &format!("user/{user}"), b"hello").await?;
        watch(cx, &mut pw, &user).await?;
        let (mut pu, _) = cx.session("watched", &user, "d1").await?;
        presence(cx, &mut pw, &user, PresenceStatus::Online, "REQ-PRS-001").await?;
        pu.close().await?;
        presence(cx, &mut pw, &user, PresenceStatus::Offline, "REQ-PRS-001").await?;
        pw.close().await
    })
}

fn presence_away(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (watcher, user) = (cx.name("away-w"), cx.name("away-u"));
        let (mut pu, _) = cx.session("watched", &user, "d1").await?;
        let (mut pw, _) = cx.session("watcher", &watcher, "d1").await?;
        pw.publish_ok(cx.prompt(), 1, &format!("user/{user}"), b"hello").await?;
        watch(cx, &mut pw, &user).await?;
        let set = |s: PresenceStatus| Op::SetPresence(proto::SetPresence { status: s as i32 });
        pu.request_ok(cx.prompt(), cx.request_id(), set(PresenceStatus::Away)).await?;
        presence(cx, &mut pw, &user, PresenceStatus::Away, "REQ-PRS-003").await?;
        let r = pu.request(cx.prompt(), cx.request_id(), set(PresenceStatus::Offline)).await?;
        check!(
            r.reason == ReasonCode::InvalidRequest as u32,
            "REQ-PRS-003",
            "set_presence(OFFLINE) answered {}",
            reason_name(r.reason)
        );
        pu.close().await?;
        pw.close().await
    })
}

fn telemetry(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (user, other) = (cx.name("tele"), cx.name("tele-x"));
        let (mut watcher, _) = cx.session("watcher", &user, "d1").await?;
        let id = cx.request_id();
        let filter = format!("device/{user}/+/t");
        watcher.send(&Frame::Subscribe(proto::Subscribe { request_id: id, filters: vec![filter.clone()] })).await?;
        let sub = watcher
            .expect(cx.prompt(), "REQ-TOP-006", "SUBACK", |f| match f {
                Frame::SubAck(s) if s.request_id == id => Some(s.clone()),
                _ => None,
            })
            .await?;
        check!(sub.reasons == [0], "REQ-TOP-006", "SUBSCRIBE {filter} by the user's own device got {:?}", sub.reasons);
        // Another user and another device may not publish under the sensor's topic.
        let topic = format!("device/{user}/d2/t");
        let (mut outsider, _) = cx.session("outsider", &other, "d2").await?;
        let ack = outsider.publish(cx.prompt(), 1, &topic, b"forged").await?;
        check!(
            ack.reason == ReasonCode::NotAuthorized as u32,
            "REQ-ACL-001",
            "another user's telemetry PUBLISH got {}",
            reason_name(ack.reason)
        );
        let (mut sensor, _) = cx.session("sensor", &user, "d2").await?;
        let ack = sensor.publish(cx.prompt(), 1, &format!("device/{user}/d1/t"), b"not mine").await?;
        check!(
            ack.reason == ReasonCode::NotAuthorized as u32,
            "REQ-ACL-001",
            "a PUBLISH under another device's prefix got {}",
            reason_name(ack.reason)
        );
        let ack = sensor.publish(cx.prompt(), 2, &topic, b"21.5").await?;
        check!(ack.reason == 0, "REQ-TOP-006", "the device's own telemetry PUBLISH got {}", reason_name(ack.reason));
        let d = watcher.deliver(cx.prompt(), "REQ-TOP-006").await?;
        check!(
            d.topic == topic && d.payload.as_ref() == b"21.5" && d.qos == 0 && d.sender_device == "d2",
            "REQ-TOP-006",
            "delivered {:?} on {} at QoS {} from {}, expected the sensor's reading at QoS 0",
            d.payload,
            d.topic,
            d.qos,
            d.sender_device
        );
        check!(
            d.stream.as_ref().is_some_and(|s| s.kind == StreamKind::Conversation as i32),
            "REQ-TOP-006",
            "telemetry DELIVER not on a conversation stream: {:?}",
            d.stream
        );
        sensor.close().await?;
        outsider.close().await?;
        watcher.close().await
    })
}
