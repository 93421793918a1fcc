//! The E2EE key directory (spec 9.2), against a broker. The key material is random bytes of
//! the right sizes: the broker cannot verify signatures (clients do), so none are needed here.

use bytes::Bytes;
use tern_codec::proto::{self, request::Op, response::Result as R};
use tern_codec::ReasonCode;

use super::{broker, Case};
use crate::case::{CaseFuture, Feature, Stop};
use crate::check;
use crate::cx::Cx;
use crate::peer::{reason_name, Peer};

pub(super) const CASES: &[Case] = &[
    broker(
        "e2ee.directory.one-time-prekey-once@broker",
        &["REQ-E2E-002"],
        "racing claims from two users get each one-time prekey at most once, then bundles without one",
        prekey_once,
    )
    .needs(Feature::KeyDirectory),
    broker(
        "e2ee.directory.claims-rate-limited@broker",
        &["REQ-E2E-003"],
        "one claimant's repeated claims for a device are refused with RATE_LIMITED before its prekeys run out",
        claims_limited,
    )
    .needs(Feature::KeyDirectory),
    broker(
        "e2ee.directory.device-list-version@broker",
        &["REQ-E2E-004"],
        "a device list is accepted only with a version above the stored one (an identical repeat changes nothing)",
        device_list_version,
    )
    .needs(Feature::KeyDirectory),
    broker(
        "e2ee.directory.publish-refused-whole@broker",
        &["REQ-E2E-007"],
        "a KeyPublish naming another user, or replacing the account key, is refused and stores nothing",
        publish_refused_whole,
    )
    .needs(Feature::KeyDirectory),
    broker(
        "e2ee.directory.group-op-epoch@broker",
        &["REQ-E2E-005"],
        "a group operation is accepted only at the current epoch plus one",
        group_op_epoch,
    )
    .needs(Feature::KeyDirectory),
];

/// Deterministic filler bytes (key material the broker only stores).
fn bytes(seed: u64, tag: u64, n: usize) -> Bytes {
    let mut x = seed ^ tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn cert(cx: &Cx, user: &str, device: &str) -> proto::DeviceCert {
    proto::DeviceCert {
        user_id: user.into(),
        device_id: device.into(),
        suites: vec![1],
        dik_sig_pub: bytes(cx.seed, 1, 32),
        dik_dh_pub: bytes(cx.seed, 2, 32),
        created_ms: 1,
        flags: 0,
        aik_sig: bytes(cx.seed, 3, 64),
        dev_sig: bytes(cx.seed, 4, 64),
    }
}

/// A publish of `device`'s certificate, a signed prekey and `n` one-time prekeys (ids 1..=n).
fn key_publish(cx: &Cx, user: &str, device: &str, n: u32) -> proto::KeyPublish {
    proto::KeyPublish {
        account_key: bytes(cx.seed, 5, 32),
        device_cert: Some(cert(cx, user, device)),
        device_list: None,
        signed_prekey: Some(proto::SignedPrekey {
            spk_id: 1,
            spk_pub: bytes(cx.seed, 6, 32),
            created_ms: 1,
            sig: bytes(cx.seed, 7, 64),
        }),
        one_time_prekeys: (1..=n)
            .map(|i| proto::OneTimePrekey {
                opk_id: i,
                opk_pub: bytes(cx.seed, 100 + u64::from(i), 32),
                sig: bytes(cx.seed, 7, 64),
            })
            .collect(),
    }
}

async fn publish(cx: &Cx, p: &mut Peer, kp: proto::KeyPublish) -> Result<proto::Response, Stop> {
    p.request(cx.prompt(), cx.request_id(), Op::KeyPublish(Box::new(kp))).await
}

async fn claim(cx: &Cx, p: &mut Peer, user: &str, device: &str) -> Result<proto::Response, Stop> {
    let op = Op::KeyClaim(proto::KeyClaim { user_id: user.into(), device_id: device.into() });
    p.request(cx.prompt(), cx.request_id(), op).await
}

fn prekey_once(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (owner, a, b) = (cx.name("opk-o"), cx.name("opk-a"), cx.name("opk-b"));
        let (mut po, _) = cx.session("owner", &owner, "d1").await?;
        let r = publish(cx, &mut po, key_publish(cx, &owner, "d1", 3)).await?;
        check!(r.reason == 0, "REQ-E2E-002", "KeyPublish refused: {}", reason_name(r.reason));
        check!(
            matches!(r.result, Some(R::KeyPublished(k)) if k.one_time_prekeys_remaining == 3),
            "REQ-E2E-002",
            "KeyPublished does not report 3 one-time prekeys: {:?}",
            r.result
        );
        let (mut pa, _) = cx.session("claimant-a", &a, "d1").await?;
        let (mut pb, _) = cx.session("claimant-b", &b, "d1").await?;
        // Both claimants pipeline two claims each, at the same time.
        let (ra, rb) = tokio::join!(
            async { Ok::<_, Stop>((claim(cx, &mut pa, &owner, "d1").await?, claim(cx, &mut pa, &owner, "d1").await?)) },
            async { Ok::<_, Stop>((claim(cx, &mut pb, &owner, "d1").await?, claim(cx, &mut pb, &owner, "d1").await?)) },
        );
        let (ra, rb) = (ra?, rb?);
        let mut ids = Vec::new();
        let mut without = 0;
        for r in [ra.0, ra.1, rb.0, rb.1] {
            check!(r.reason == 0, "REQ-E2E-002", "claim refused: {}", reason_name(r.reason));
            let Some(R::KeyBundle(bundle)) = r.result else {
                return Err(crate::violated!("REQ-E2E-002", "claim answered without a bundle"));
            };
            check!(
                bundle.device_cert.is_some() && bundle.signed_prekey.is_some(),
                "REQ-E2E-002",
                "bundle lacks its certificate or signed prekey"
            );
            match bundle.one_time_prekey {
                Some(opk) => ids.push(opk.opk_id),
                None => without += 1,
            }
        }
        ids.sort_unstable();
        check!(
            ids == vec![1, 2, 3] && without == 1,
            "REQ-E2E-002",
            "four racing claims of three one-time prekeys got {ids:?} and {without} bundle(s) without one"
        );
        for p in [&mut po, &mut pa, &mut pb] {
            p.close().await?;
        }
        Ok(())
    })
}

fn claims_limited(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (owner, attacker) = (cx.name("lim-o"), cx.name("lim-x"));
        let (mut po, _) = cx.session("owner", &owner, "d1").await?;
        let r = publish(cx, &mut po, key_publish(cx, &owner, "d1", 100)).await?;
        check!(r.reason == 0, "REQ-E2E-002", "KeyPublish of 100 one-time prekeys refused: {}", reason_name(r.reason));
        let (mut px, _) = cx.session("attacker", &attacker, "d1").await?;
        let mut handed_out = 0;
        for _ in 0..100 {
            let r = claim(cx, &mut px, &owner, "d1").await?;
            if r.reason == ReasonCode::RateLimited as u32 {
                po.close().await?;
                return px.close().await;
            }
            check!(r.reason == 0, "REQ-E2E-003", "claim answered {}", reason_name(r.reason));
            if matches!(r.result, Some(R::KeyBundle(b)) if b.one_time_prekey.is_some()) {
                handed_out += 1;
            }
        }
        Err(crate::violated!(
            "REQ-E2E-003",
            "100 back-to-back claims by one user were all served ({handed_out} one-time prekeys handed out)"
        ))
    })
}

fn device_list_version(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let user = cx.name("dl");
        let (mut p, _) = cx.session("owner", &user, "d1").await?;
        let list = |version: u64, issued_at_ms: u64| proto::KeyPublish {
            device_list: Some(proto::DeviceList {
                user_id: user.clone(),
                version,
                issued_at_ms,
                entries: vec![proto::DeviceListEntry { device_id: "d1".into(), cert_hash: bytes(cx.seed, 9, 32) }],
                aik_sig: bytes(cx.seed, 10, 64),
            }),
            ..Default::default()
        };
        // (version, issued_at, accepted): a new list at the same version is refused, the
        // identical list again is a harmless repeat, an older version is refused.
        for (version, issued, accept) in [(2, 2, true), (2, 5, false), (2, 2, true), (1, 1, false), (3, 3, true)] {
            let r = publish(cx, &mut p, list(version, issued)).await?;
            let accepted = r.reason == 0;
            check!(
                accepted == accept,
                "REQ-E2E-004",
                "device list version {version} (issued {issued}) was {} ({})",
                if accepted { "accepted" } else { "refused" },
                reason_name(r.reason)
            );
        }
        let r = p
            .request_ok(cx.prompt(), cx.request_id(), Op::KeyQuery(proto::KeyQuery { user_ids: vec![user.clone()] }))
            .await?;
        let served = match r.result {
            Some(R::Keys(k)) => k.users.first().and_then(|u| u.device_list.as_ref()).map(|l| l.version),
            _ => None,
        };
        check!(served == Some(3), "REQ-E2E-004", "KeyQuery serves device list version {served:?}, expected 3");
        p.close().await
    })
}

fn group_op_epoch(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (owner, group) = (cx.name("gop"), cx.name("gop-g"));
        let (mut p, _) = cx.session("owner", &owner, "d1").await?;
        let create = proto::GroupCreate { group_id: group.clone(), members: vec![cx.name("gop-m")] };
        p.request_ok(cx.prompt(), cx.request_id(), Op::GroupCreate(create)).await?;
        for (epoch, accept) in [(1, true), (1, false), (3, false), (2, true)] {
            let op = proto::GroupOpSubmit { group_id: group.clone(), epoch, signed_op: bytes(cx.seed, 20 + epoch, 96) };
            let r = p.request(cx.prompt(), cx.request_id(), Op::GroupOpSubmit(op)).await?;
            if accept {
                check!(
                    r.reason == 0 && matches!(r.result, Some(R::GroupOp(g)) if g.epoch == epoch),
                    "REQ-E2E-005",
                    "epoch {epoch} (current + 1) answered {} {:?}",
                    reason_name(r.reason),
                    r.result
                );
            } else {
                check!(
                    r.reason == ReasonCode::EpochMismatch as u32,
                    "REQ-E2E-005",
                    "epoch {epoch} (not current + 1) answered {}",
                    reason_name(r.reason)
                );
            }
        }
        p.close().await
    })
}

fn publish_refused_whole(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (user, other) = (cx.name("pub"), cx.name("pub-other"));
        let (mut p, _) = cx.session("owner", &user, "d1").await?;
        let first = key_publish(cx, &user, "d1", 0);
        let r = publish(cx, &mut p, first.clone()).await?;
        check!(r.reason == 0, "REQ-E2E-007", "a valid KeyPublish was refused: {}", reason_name(r.reason));
        // Another user's certificate, with two one-time prekeys riding along.
        let mut foreign = key_publish(cx, &other, "d1", 2);
        foreign.account_key = first.account_key.clone();
        let r = publish(cx, &mut p, foreign).await?;
        check!(
            r.reason == ReasonCode::InvalidRequest as u32,
            "REQ-E2E-007",
            "a KeyPublish with another user's certificate answered {}",
            reason_name(r.reason)
        );
        let mut reset = key_publish(cx, &user, "d1", 2);
        reset.account_key = bytes(cx.seed, 99, 32);
        let r = publish(cx, &mut p, reset).await?;
        check!(
            r.reason == ReasonCode::AlreadyExists as u32,
            "REQ-E2E-007",
            "a KeyPublish replacing the account key answered {}",
            reason_name(r.reason)
        );
        // Nothing of either was stored: the device still has no one-time prekey.
        let (mut c, _) = cx.session("claimant", &cx.name("pub-c"), "d1").await?;
        let r = claim(cx, &mut c, &user, "d1").await?;
        let opk = match r.result {
            Some(R::KeyBundle(b)) => b.one_time_prekey.map(|k| k.opk_id),
            other => return Err(crate::violated!("REQ-E2E-007", "claim answered {} {other:?}", reason_name(r.reason))),
        };
        check!(opk.is_none(), "REQ-E2E-007", "a refused KeyPublish stored one-time prekey {opk:?}");
        let listing = p
            .request_ok(cx.prompt(), cx.request_id(), Op::KeyQuery(proto::KeyQuery { user_ids: vec![other.clone()] }))
            .await?;
        let certs = match listing.result {
            Some(R::Keys(k)) => k.users.first().map_or(0, |u| u.device_certs.len()),
            _ => 0,
        };
        check!(certs == 0, "REQ-E2E-007", "the other user's certificate was stored");
        p.close().await?;
        c.close().await
    })
}
