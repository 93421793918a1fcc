//! MQTT devices (spec chapter 15), tested with MQTT clients no one here wrote: Debian's
//! `mosquitto_pub` / `mosquitto_sub` and Python's paho-mqtt (`scripts/test` installs both), and
//! raw packets where a real client cannot be made to misbehave on purpose.
// Test code: a panic is how it reports a failure.
#![cfg(feature = "mqtt")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::raw_mqtt::{RawMqtt, PATIENCE};
use common::{next_message, start_with, TestBroker};
use rumqttc::mqttbytes::{v4, QoS};
use tern_broker::client::{Client, Incoming};
use tern_codec::{proto, Frame};

async fn mqtt_broker() -> TestBroker {
    start_with(|o| o.mqtt_listen = Some("127.0.0.1:0".parse().unwrap())).await
}

fn port(t: &TestBroker) -> String {
    t.broker.mqtt_addr().unwrap().port().to_string()
}

fn token(t: &TestBroker, user: &str, device: &str) -> String {
    t.broker.issue_token(user, device, Duration::from_secs(3600)).unwrap()
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().unwrap().status.success();
    assert!(found, "{name} is not installed: run scripts/test, which installs Debian's mosquitto-clients");
    Command::new(name)
}

/// A client process whose stdout lines arrive on a channel; killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Proc { child, lines }
    }

    /// Waits (off the async threads) for a line containing `needle`; all lines seen so far.
    async fn until(&mut self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match tokio::task::block_in_place(|| self.lines.recv_timeout(PATIENCE)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no line with {needle:?}; saw {seen:#?}"),
            }
        }
    }

    /// Waits for the process to exit; its remaining output.
    fn finish(mut self) -> (bool, Vec<String>) {
        let status = self.child.wait().unwrap();
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            rest.push(l);
        }
        (status.success(), rest)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn subscribe_native(c: &mut Client, filter: &str) {
    let id = c.send(Frame::Subscribe(proto::Subscribe { request_id: 0, filters: vec![filter.into()] })).await.unwrap();
    loop {
        if let Some(Incoming::Frame(f)) = c.next().await {
            if let Frame::SubAck(a) = *f {
                assert_eq!((a.request_id, a.reasons.as_slice()), (id, &[0u32][..]), "SUBACK for {filter}");
                return;
            }
        }
    }
}

async fn message_within(c: &mut Client) -> proto::Deliver {
    tokio::time::timeout(PATIENCE, next_message(c)).await.expect("no message arrived")
}

fn mosquitto_pub(t: &TestBroker, user: &str, device: &str, version: &str, args: &[&str]) -> (bool, Vec<String>) {
    let mut cmd = tool("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port(t), "-i", device, "-u", user, "-P", &token(t, user, device)])
        .args(["-V", version, "-d"])
        .args(args);
    Proc::spawn(cmd).finish()
}

#[tokio::test(flavor = "multi_thread")]
async fn telemetry_from_a_mosquitto_device_reaches_a_native_listener_over_both_versions() {
    let t = mqtt_broker().await;
    let mut phone = t.client("alice", "phone").await;
    subscribe_native(&mut phone, "device/alice/+/temp").await;
    for (version, reading) in [("mqttv311", "21.5"), ("mqttv5", "22.0")] {
        let (ok, out) = mosquitto_pub(
            &t,
            "alice",
            "sensor1",
            version,
            &["-t", "device/alice/sensor1/temp", "-m", reading, "-q", "1"],
        );
        assert!(ok, "{out:#?}");
        let m = message_within(&mut phone).await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("device/alice/sensor1/temp", reading.as_bytes()));
        assert_eq!((m.sender_user.as_str(), m.sender_device.as_str(), m.qos), ("alice", "sensor1", 0));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_native_send_reaches_a_device_subscribed_with_mosquitto_sub() {
    let t = mqtt_broker().await;
    let bob = t.client("bob", "laptop").await;
    for version in ["mqttv311", "mqttv5"] {
        tool("mosquitto_sub");
        // Line-buffered, so the SUBACK debug line arrives before the message does.
        let mut cmd = Command::new("stdbuf");
        cmd.args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port(&t),
            "-i",
            "sensor1",
            "-u",
            "alice",
            "-P",
            &token(&t, "alice", "sensor1"),
        ])
        .args(["-V", version, "-d", "-q", "2", "-t", "user/alice", "-C", "1", "-F", "MSG %t %q %p|%P"]);
        let mut sub = Proc::spawn(cmd);
        sub.until("SUBACK").await;
        let text = format!("hello {version}");
        bob.publish("user/alice", text.clone()).await.unwrap();
        let lines = sub.until("MSG ").await;
        // Stored at QoS 2 by the native client, granted QoS 2: delivered exactly once at QoS 2;
        // under MQTT 5 with the sender and the message's ids as user properties (spec 15.5).
        let (message, props) = lines.last().unwrap().split_once('|').unwrap();
        assert_eq!(message, format!("MSG user/alice 2 {text}"));
        if version == "mqttv5" {
            assert!(props.contains("tern-sender:bob/laptop") && props.contains("tern-msg-id:"), "{props}");
        } else {
            assert!(props.is_empty(), "3.1.1 has no properties: {props}");
        }
        let (ok, rest) = sub.finish();
        assert!(ok, "{rest:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_311_device_publishing_where_its_acl_forbids_is_acknowledged_and_nothing_is_delivered() {
    let t = mqtt_broker().await;
    let mut bob = t.client("bob", "laptop").await;
    subscribe_native(&mut bob, "device/bob/#").await;
    // alice's device may not publish under bob's devices (REQ-MQT-006, 3.1.1 behaviour).
    let (ok, out) =
        mosquitto_pub(&t, "alice", "sensor1", "mqttv311", &["-t", "device/bob/laptop/x", "-m", "forged", "-q", "1"]);
    assert!(ok, "{out:#?}");
    assert!(out.iter().any(|l| l.contains("received PUBACK")), "{out:#?}");
    // Then an allowed message from bob's own device: it is the first thing bob sees.
    let (ok, out) =
        mosquitto_pub(&t, "bob", "thermo", "mqttv311", &["-t", "device/bob/thermo/t", "-m", "ok", "-q", "1"]);
    assert!(ok, "{out:#?}");
    let m = message_within(&mut bob).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("device/bob/thermo/t", &b"ok"[..]));
}

fn require_paho() {
    let ok = Command::new("python3").args(["-c", "import paho.mqtt"]).status().unwrap().success();
    assert!(ok, "paho-mqtt is not installed: run scripts/test, which installs it from PyPI");
}

/// Runs a paho-mqtt script (Python); its stdout lines.
fn paho(script: &str, args: &[&str]) -> Vec<String> {
    require_paho();
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "paho script failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(str::to_owned).collect()
}

/// paho over MQTT 5: refused PUBLISH and SUBSCRIBE carry Not authorized (0x87), nothing is
/// delivered, and the connection stays usable.
const PAHO_V5_ACL: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
port, token = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor1", protocol=mqtt.MQTTv5)
c.username_pw_set("alice", token)
done = {}
events = {k: threading.Event() for k in ("conn", "pub1", "pub2", "sub")}
def on_connect(c, u, flags, rc, props): done["conn"] = rc.value; events["conn"].set()
def on_publish(c, u, mid, rc, props): done[mid] = rc.value; events["pub1" if len(done) == 2 else "pub2"].set()
def on_subscribe(c, u, mid, rcs, props): done["sub"] = [r.value for r in rcs]; events["sub"].set()
c.on_connect, c.on_publish, c.on_subscribe = on_connect, on_publish, on_subscribe
c.connect("127.0.0.1", port)
c.loop_start()
assert events["conn"].wait(20), "no CONNACK"
print("connack", done["conn"])
m1 = c.publish("device/bob/laptop/x", b"forged", qos=1).mid
assert events["pub1"].wait(20), "no PUBACK"
print("puback", done[m1])
c.subscribe([("device/bob/#", 1), ("device/alice/#", 1)])
assert events["sub"].wait(20), "no SUBACK"
print("suback", *done["sub"])
props = Properties(PacketTypes.PUBLISH)
props.ContentType = "text/plain"
m2 = c.publish("user/bob", b"allowed", qos=1, properties=props).mid
assert events["pub2"].wait(20), "no second PUBACK"
print("puback", done[m2])
c.disconnect()
c.loop_stop()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn paho_v5_gets_not_authorized_for_a_forbidden_publish_and_subscribe() {
    let t = mqtt_broker().await;
    let mut bob = t.client("bob", "laptop").await;
    subscribe_native(&mut bob, "device/bob/#").await;
    let p = port(&t);
    let tok = token(&t, "alice", "sensor1");
    let lines = tokio::task::spawn_blocking(move || paho(PAHO_V5_ACL, &[&p, &tok])).await.unwrap();
    assert_eq!(lines, ["connack 0", "puback 135", "suback 135 1", "puback 0"]);
    // The forged telemetry never arrived; the allowed 1:1 message did, with its content type.
    let m = message_within(&mut bob).await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.content_type.as_str()),
        ("user/bob", &b"allowed"[..], "text/plain")
    );
    assert_eq!((m.sender_user.as_str(), m.sender_device.as_str()), ("alice", "sensor1"));
}

/// paho over MQTT 3.1.1 with a persistent session: subscribe, go away, come back to find what
/// arrived meanwhile, in order, once (REQ-MQT-011).
const PAHO_PERSISTENT: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
port, token, phase, expect = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor1", clean_session=False, protocol=mqtt.MQTTv311)
c.username_pw_set("alice", token)
got, ready, subscribed, enough = [], threading.Event(), threading.Event(), threading.Event()
def on_connect(c, u, flags, rc, props):
    print("session_present", int(flags.session_present)); ready.set()
def on_subscribe(c, u, mid, rcs, props): subscribed.set()
def on_message(c, u, m):
    got.append(m.payload.decode())
    if len(got) >= expect: enough.set()
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_start()
assert ready.wait(20), "no CONNACK"
if phase == "subscribe":
    c.subscribe("user/alice", qos=1)
    assert subscribed.wait(20), "no SUBACK"
else:
    assert enough.wait(20), f"only {got}"
for p in got: print("msg", p)
c.disconnect()
c.loop_stop()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_paho_device_with_a_persistent_session_receives_what_arrived_while_it_was_away() {
    let t = mqtt_broker().await;
    let bob = t.client("bob", "laptop").await;
    let (p, tok) = (port(&t), token(&t, "alice", "sensor1"));
    let run = |phase: &'static str, expect: &'static str| {
        let (p, tok) = (p.clone(), tok.clone());
        tokio::task::spawn_blocking(move || paho(PAHO_PERSISTENT, &[&p, &tok, phase, expect]))
    };
    assert_eq!(run("subscribe", "0").await.unwrap(), ["session_present 0"]);
    for i in 1..=3 {
        bob.publish("user/alice", format!("while away {i}")).await.unwrap();
    }
    let lines = run("receive", "3").await.unwrap();
    assert_eq!(lines, ["session_present 1", "msg while away 1", "msg while away 2", "msg while away 3"]);
    // Acknowledged: a third connection finds nothing new.
    bob.publish("user/alice", "after").await.unwrap();
    assert_eq!(run("receive", "1").await.unwrap(), ["session_present 1", "msg after"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt_over_tls_with_mosquitto_pub() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tern_broker::tls::write_dev_cert(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let t = start_with(|o| {
        o.tls = Some(tern_broker::TlsOptions { listen: "127.0.0.1:0".parse().unwrap(), cert: cert.clone(), key });
        o.mqtt_tls_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let mut phone = t.client("alice", "phone").await;
    subscribe_native(&mut phone, "device/alice/#").await;
    let mut cmd = tool("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &t.broker.mqtt_tls_addr().unwrap().port().to_string()])
        .args([
            "--cafile",
            cert.to_str().unwrap(),
            "-i",
            "sensor1",
            "-u",
            "alice",
            "-P",
            &token(&t, "alice", "sensor1"),
        ])
        .args(["-V", "mqttv5", "-t", "device/alice/sensor1/secure", "-m", "over tls", "-q", "1"]);
    let (ok, out) = Proc::spawn(cmd).finish();
    assert!(ok, "{out:#?}");
    let m = message_within(&mut phone).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("device/alice/sensor1/secure", &b"over tls"[..]));
}

/// The payloads of a conversation's stored history, oldest first.
async fn history(c: &mut Client, conversation_id: u64) -> Vec<String> {
    let req = proto::HistoryRequest { request_id: 0, conversation_id, before_seq: 0, limit: 50 };
    let id = c.send(Frame::HistoryRequest(req)).await.unwrap();
    loop {
        if let Some(Incoming::Frame(f)) = tokio::time::timeout(PATIENCE, c.next()).await.unwrap() {
            if let Frame::HistoryPage(p) = *f {
                if p.request_id == id {
                    return p.entries.iter().rev().map(|e| String::from_utf8_lossy(&e.payload).into_owned()).collect();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qos2_retransmission_is_stored_once_across_a_reconnect_and_a_broker_restart() {
    let t = mqtt_broker().await;
    let mut bob = t.client("bob", "laptop").await;
    let (mut dev, ack) = RawMqtt::connect(&t, "alice", "sensor1", false).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    dev.send(RawMqtt::qos2("user/bob", 7, "once", false)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 7));
    // As far as the device knows the PUBREC was lost: it reconnects and retransmits.
    drop(dev);
    let (mut dev, ack) = RawMqtt::connect(&t, "alice", "sensor1", false).await;
    assert!(ack.session_present);
    dev.send(RawMqtt::qos2("user/bob", 7, "once", true)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 7));
    let conversation_id = message_within(&mut bob).await.conversation_id;
    // A second message, acknowledged with PUBREC just before the broker goes down.
    dev.send(RawMqtt::qos2("user/bob", 8, "survives restart", false)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 8));
    drop(dev);
    bob.close().await;
    let TestBroker { broker, dir } = t;
    broker.shutdown().await.unwrap();

    // Same data directory, a new broker: identifier 8 is still held until its PUBREL.
    let mut options = tern_broker::BrokerOptions::new("127.0.0.1:0".parse().unwrap(), dir.path().to_path_buf());
    options.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
    let t = TestBroker { broker: tern_broker::Broker::start(options).await.unwrap(), dir };
    let (mut dev, ack) = RawMqtt::connect(&t, "alice", "sensor1", false).await;
    assert!(ack.session_present);
    dev.send(RawMqtt::qos2("user/bob", 8, "survives restart", true)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 8));
    dev.send(v4::Packet::PubRel(v4::PubRel { pkid: 8 })).await;
    assert!(matches!(dev.next().await, v4::Packet::PubComp(r) if r.pkid == 8));
    // Released: the identifier now carries a new message.
    dev.send(RawMqtt::qos2("user/bob", 8, "new message", false)).await;
    assert!(matches!(dev.next().await, v4::Packet::PubRec(r) if r.pkid == 8));
    let mut bob = t.client("bob", "laptop").await;
    assert_eq!(history(&mut bob, conversation_id).await, ["once", "survives restart", "new message"]);
}

/// paho over MQTT 5: a Will on the device's own telemetry topic, and the presence topic.
/// The script prints the presence updates it sees, then leaves without DISCONNECT.
const PAHO_WILL_PRESENCE: &str = r#"
import os, sys, threading, json
import paho.mqtt.client as mqtt
port, token, expect = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sensor1", protocol=mqtt.MQTTv5)
c.username_pw_set("alice", token)
c.will_set("device/alice/sensor1/status", b"gone", qos=1)
seen, ready, enough = [], threading.Event(), threading.Event()
def on_connect(c, u, flags, rc, props): c.subscribe("presence/alice", qos=0)
def on_subscribe(c, u, mid, rcs, props): ready.set()
def on_message(c, u, m):
    p = json.loads(m.payload)
    seen.append(f"{m.topic} {p['device']} {p['status']}")
    print(seen[-1], flush=True)
    if len(seen) >= expect: enough.set()
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_start()
assert ready.wait(20), "no SUBACK"
print("subscribed", flush=True)
assert enough.wait(20), f"only {seen}"
os._exit(0)  # no DISCONNECT: the broker publishes the Will
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt_device_sees_presence_and_its_will_is_published_when_it_vanishes() {
    let t = mqtt_broker().await;
    let mut watcher = t.client("alice", "phone").await;
    subscribe_native(&mut watcher, "device/alice/sensor1/#").await;
    require_paho();
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg("-c").arg(PAHO_WILL_PRESENCE).args([&port(&t), &token(&t, "alice", "sensor1"), "4"]);
    let mut paho = Proc::spawn(cmd);
    let mut lines = paho.until("subscribed").await;
    // Another device of alice's comes and goes: the MQTT device sees it (spec 15.6).
    let laptop = t.client("alice", "laptop").await;
    laptop.close().await;
    lines.extend(paho.until("presence/alice laptop offline").await);
    let updates: Vec<&str> = lines.iter().map(String::as_str).filter(|l| l.starts_with("presence/")).collect();
    // First the current state (the phone and the device itself, in either order), then changes.
    let mut current = updates[..2].to_vec();
    current.sort_unstable();
    assert_eq!(current, ["presence/alice phone online", "presence/alice sensor1 online"], "{lines:#?}");
    assert_eq!(updates[2..], ["presence/alice laptop online", "presence/alice laptop offline"]);
    let (ok, rest) = paho.finish();
    assert!(ok, "{rest:#?}");
    // It left without DISCONNECT: its Will reaches alice's phone.
    let m = message_within(&mut watcher).await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("device/alice/sensor1/status", &b"gone"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_device_is_dropped_after_one_and_a_half_keep_alives_and_shutdown_closes_the_rest() {
    let t = mqtt_broker().await;
    let (mut silent, ack) = RawMqtt::connect_with_keep_alive(&t, "alice", "sensor1", true, 1).await;
    assert_eq!(ack.code, v4::ConnectReturnCode::Success);
    assert!(silent.closed().await, "a device silent past 1.5 × keep alive stayed connected");
    // A device that keeps quiet within its keep alive is closed by a graceful shutdown, which
    // does not wait for it.
    let (mut quiet, _) = RawMqtt::connect(&t, "alice", "sensor2", true).await;
    tokio::time::timeout(PATIENCE, t.broker.shutdown()).await.expect("shutdown waited on an MQTT device").unwrap();
    assert!(quiet.closed().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_over_its_publish_rate_stores_nothing_more() {
    let t = start_with(|o| {
        o.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
        o.publish_rate = (0.0001, 3.0);
    })
    .await;
    // MQTT 3.1.1: three PUBACKs, then the connection closes without acknowledging the fourth.
    let (mut dev, _) = RawMqtt::connect(&t, "alice", "sensor1", true).await;
    for pkid in 1..=4u16 {
        let mut p = v4::Publish::new("user/bob", QoS::AtLeastOnce, format!("m{pkid}").into_bytes());
        p.pkid = pkid;
        dev.send(v4::Packet::Publish(p)).await;
    }
    for pkid in 1..=3u16 {
        assert!(matches!(dev.next().await, v4::Packet::PubAck(a) if a.pkid == pkid));
    }
    assert!(dev.closed().await, "the fourth PUBLISH was not refused by closing");
    // MQTT 5: a new connection, a new budget; the fourth gets Quota exceeded (0x97).
    let transcript = tern_conformance::transcript::Transcript::default();
    let addr = t.broker.mqtt_addr().unwrap().to_string();
    let mut v5 = tern_conformance::mqtt::MqttPeer::open(&addr, "v5", 5, &transcript).await.unwrap();
    let connect = tern_conformance::mqtt::Connect {
        client_id: "sensor2".into(),
        password: Some(token(&t, "alice", "sensor2")),
        clean: true,
        ..Default::default()
    };
    v5.send(&tern_conformance::mqtt::connect(5, &connect)).await;
    let ack = v5.expect(PATIENCE, tern_conformance::mqtt::kind::CONNACK, "REQ-MQT-002").await.unwrap();
    assert_eq!(ack.connack(), Some((false, 0)));
    let mut reasons = Vec::new();
    for pkid in 1..=4u16 {
        v5.send(&tern_conformance::mqtt::publish(5, "user/bob", 1, pkid, b"v5", false, false)).await;
        let a = v5.expect(PATIENCE, tern_conformance::mqtt::kind::PUBACK, "REQ-MQT-006").await.unwrap();
        reasons.push(a.ack_reason());
    }
    assert_eq!(reasons, [0, 0, 0, 0x97]);
    // Six stored in all: three from each connection.
    let mut bob = t.client("bob", "laptop").await;
    let conv = {
        let r = common::request(
            &mut bob,
            tern_codec::proto::request::Op::OpenConversation(tern_codec::proto::OpenConversation {
                peer_user: "alice".into(),
            }),
        )
        .await;
        match r.result {
            Some(tern_codec::proto::response::Result::Conversation(c)) => c.conversation_id,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(history(&mut bob, conv).await, ["m1", "m2", "m3", "v5", "v5", "v5"]);
}
