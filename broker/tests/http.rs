//! The operations listener: health, Prometheus metrics that move with traffic, and dispatch.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{next_message, start_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(addr: std::net::SocketAddr, request: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[tokio::test]
async fn health_metrics_and_dispatch() {
    let t = start_with(|o| o.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let web = t.broker.http_addr().unwrap();
    let (status, body) = http(web, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok\n"));

    let (_, before) = http(web, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(metric(&before, "tern_messages_stored_total"), 0);
    let mut alice = t.client("alice", "phone").await;
    let mut bob = t.client("bob", "laptop").await;
    let ack = alice.publish("user/bob", "counted").await.unwrap();
    next_message(&mut bob).await;
    // Both devices got the message (alice's own copy too) and acknowledged it before sending
    // this request on the same connection, so once the answers are back the broker has
    // processed both acks.
    next_message(&mut alice).await;
    for c in [&mut alice, &mut bob] {
        let op = tern_codec::proto::request::Op::OpenConversation(tern_codec::proto::OpenConversation {
            peer_user: "x".into(),
        });
        common::request(c, op).await;
    }
    let (_, after) = http(web, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(metric(&after, "tern_messages_stored_total"), 1);
    assert_eq!(metric(&after, "tern_connections"), 2);
    assert_eq!(metric(&after, "tern_store_commit_seconds_count"), 1);
    // The publish's group was applied and synced (sessions' own writes may add more groups).
    assert!(metric(&after, "tern_store_group_apply_seconds_count") >= 1);
    assert!(metric(&after, "tern_store_sync_seconds_count") >= 1);
    assert_eq!(metric(&after, "tern_deliver_seconds_count"), 2);
    assert_eq!(metric(&after, "tern_frames_received_total{type=\"PUBLISH\"}"), 1);
    assert_eq!(metric(&after, "tern_frames_sent_total{type=\"PUBACK\"}"), 1);
    assert_eq!(metric(&after, "tern_frames_received_total{type=\"DELIVER_ACK\"}"), 2);
    assert_eq!(metric(&after, "tern_frames_sent_total{type=\"CONNACK\"}"), 2);
    assert_eq!(metric(&after, "tern_retransmits_total"), 0);
    assert!(metric(&after, "tern_store_bytes") > 0);
    assert_eq!(metric(&after, "tern_publish_to_ack_seconds_count"), 1);
    assert!(alice.publish("nowhere/x", "refused").await.is_err());
    let (_, later) = http(web, "GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(metric(&later, "tern_messages_refused_total{reason=\"NOT_FOUND\"}"), 1);
    assert!(metric(&after, "tern_deliveries_total") >= 2, "bob's copy and alice's own");
    assert_eq!(
        metric(&after, &format!("tern_hot_conversation_messages_total{{conversation=\"{}\"}}", ack.conversation_id)),
        1
    );

    let (status, body) = http(web, "GET /v1/dispatch HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains(&format!("\"address\":\"{}\"", t.broker.local_addr())), "{body}");
    assert!(body.contains("\"connections\":2"), "{body}");

    assert_eq!(http(web, "GET /nope HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 404 Not Found");
    assert_eq!(http(web, "POST /metrics HTTP/1.1\r\n\r\n").await.0, "HTTP/1.1 405 Method Not Allowed");
}

async fn admin(
    t: &common::TestBroker,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (String, serde_json::Value) {
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len());
    let (status, body) = http(t.broker.http_addr().unwrap(), &req).await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn the_admin_api_mints_tokens_and_manages_groups_and_rooms() {
    let t = start_with(|o| o.http = Some("127.0.0.1:0".parse().unwrap())).await;
    let key = t.broker.admin_key();
    let (status, _) = admin(&t, "POST", "/v1/admin/tokens", None, r#"{"user":"a","device":"d"}"#).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");
    let (status, _) = admin(&t, "POST", "/v1/admin/tokens", Some("00ff"), r#"{"user":"a","device":"d"}"#).await;
    assert_eq!(status, "HTTP/1.1 401 Unauthorized");

    let (status, token) =
        admin(&t, "POST", "/v1/admin/tokens", Some(&key), r#"{"user":"alice","device":"phone","ttl_secs":60}"#).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let opts =
        tern_broker::client::ClientOptions::new(t.broker.local_addr(), "phone", token["token"].as_str().unwrap());
    let alice = tern_broker::client::Client::connect(opts).await.unwrap();

    let (status, g) =
        admin(&t, "POST", "/v1/admin/groups", Some(&key), r#"{"group_id":"ops","creator":"alice","members":["bob"]}"#)
            .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(g["members"], serde_json::json!(["alice", "bob"]));
    let (status, _) =
        admin(&t, "POST", "/v1/admin/groups", Some(&key), r#"{"group_id":"ops","creator":"alice"}"#).await;
    assert_eq!(status, "HTTP/1.1 409 Conflict");
    let (status, _) =
        admin(&t, "POST", "/v1/admin/groups", Some(&key), r#"{"group_id":"a/b","creator":"alice"}"#).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    let (status, _) = admin(&t, "POST", "/v1/admin/groups", Some(&key), r#"{"group":"x"}"#).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    alice.publish("group/ops", "provisioned").await.unwrap();
    // Members in bulk, by the operator (no member acts): the answer counts, it does not list.
    let (status, m) = admin(
        &t,
        "POST",
        "/v1/admin/groups/ops/members",
        Some(&key),
        r#"{"add":["carol","dave","erin"],"remove":["bob"]}"#,
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!((m["member_count"].clone(), m["read_fanout"].clone()), (serde_json::json!(4), serde_json::json!(false)));
    let (_, g) = admin(&t, "GET", "/v1/admin/groups/ops", Some(&key), "").await;
    assert_eq!(g["members"], serde_json::json!(["alice", "carol", "dave", "erin"]));
    let (status, _) = admin(&t, "POST", "/v1/admin/groups/none/members", Some(&key), r#"{"add":["x"]}"#).await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = admin(&t, "POST", "/v1/admin/groups/ops/members", Some(&key), r#"{"add":["a b"]}"#).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    let (status, r) =
        admin(&t, "POST", "/v1/admin/rooms", Some(&key), r#"{"room_id":"hall","members":["alice"]}"#).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(r["conversation_id"].as_u64().unwrap() > 0);

    let (status, u) = admin(&t, "GET", "/v1/admin/users/bob", Some(&key), "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!((u["groups"].clone(), u["unread_total"].clone()), (serde_json::json!([]), serde_json::json!(1)));
    let (status, _) = admin(&t, "GET", "/v1/admin/groups/none", Some(&key), "").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
