//! Loads every file in `spec/vectors/` and checks the codec agrees with each vector.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{json, Value};
use tern_codec::delivery::{Arrival, OrderedReceiver, PackageBuffer, PackageInsert};
use tern_codec::fragment::FrameReader;
use tern_codec::{decode_frame, encode_frame, proto, Frame, FrameType, PeerError};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read spec/vectors") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") && !path.to_string_lossy().contains("schemas") {
            out.push(path);
        }
    }
}

fn body_json(pool: &DescriptorPool, frame: &Frame) -> Value {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out).ok();
    let body = if out.is_empty() {
        // Reassembled bodies are larger than one frame: encode the message alone.
        match frame {
            Frame::Publish(p) => prost::Message::encode_to_vec(p),
            Frame::HistoryPage(h) => prost::Message::encode_to_vec(h),
            other => panic!("unexpected large {:?}", other.frame_type()),
        }
    } else {
        out.get(4..).expect("body").to_vec()
    };
    let name = format!("tern.v1.{}", frame.frame_type().message_name());
    let desc = pool.get_message_by_name(&name).expect("message in descriptor set");
    serde_json::to_value(DynamicMessage::decode(desc, body.as_slice()).expect("reflect decode")).expect("json")
}

fn error_name(e: &PeerError) -> &'static str {
    e.reason().name()
}

fn tests_of(doc: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    doc["testGroups"]
        .as_array()
        .expect("testGroups")
        .iter()
        .flat_map(|g| g["tests"].as_array().expect("tests").iter().map(move |t| (g, t)))
}

fn check_frame_codec(pool: &DescriptorPool, t: &Value, ctx: &str) {
    let input = hex::decode(t["input"].as_str().expect("input")).expect("hex");
    let mut buf = BytesMut::from(input.as_slice());
    let got = decode_frame(&mut buf);
    match t["result"].as_str().expect("result") {
        "valid" => {
            let frame = got.unwrap_or_else(|e| panic!("{ctx}: {e}")).unwrap_or_else(|| panic!("{ctx}: incomplete"));
            assert!(buf.is_empty(), "{ctx}: bytes left over");
            assert_eq!(frame.frame_type().name(), t["frame_type"], "{ctx}");
            assert_eq!(body_json(pool, &frame), t["body"], "{ctx}: decoded fields");
            let mut again = BytesMut::new();
            encode_frame(&frame, &mut again).expect("encode");
            assert_eq!(again.as_ref(), input.as_slice(), "{ctx}: re-encoding differs");
        }
        "invalid" => {
            let err = got.expect_err(ctx);
            assert_eq!(err.reason().name(), t["expected_error"], "{ctx}: {err}");
        }
        "incomplete" => {
            assert_eq!(got, Ok(None), "{ctx}");
            assert_eq!(buf.len(), input.len(), "{ctx}: consumed bytes");
        }
        other => panic!("{ctx}: unknown result {other}"),
    }
}

fn check_reassembly(pool: &DescriptorPool, g: &Value, t: &Value, ctx: &str) {
    let max = g["max_message_size"].as_u64().expect("max") as usize;
    let mut reader = FrameReader::new(max);
    let frames: Vec<Vec<u8>> = t["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|h| hex::decode(h.as_str().expect("hex")).expect("hex"))
        .collect();
    let mut produced = Vec::new();
    let mut failure = None;
    for (i, f) in frames.iter().enumerate() {
        reader.extend(f);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => produced.push(frame),
                Ok(None) => break,
                Err(e) => {
                    failure = Some((i, e));
                    break;
                }
            }
        }
        if failure.is_some() {
            break;
        }
    }
    match t["result"].as_str().expect("result") {
        "valid" => {
            assert!(failure.is_none(), "{ctx}: {failure:?}");
            let big: Vec<&Frame> = produced.iter().filter(|f| !matches!(f, Frame::Ping(_))).collect();
            assert_eq!(big.len(), 1, "{ctx}: one reassembled frame");
            assert_eq!(big[0].frame_type().name(), t["frame_type"], "{ctx}");
            assert_eq!(body_json(pool, big[0]), t["body"], "{ctx}: decoded fields");
        }
        "invalid" => {
            let (at, e) = failure.unwrap_or_else(|| panic!("{ctx}: accepted"));
            assert_eq!(error_name(&e), t["expected_error"], "{ctx}: {e}");
            assert_eq!(json!(at), t["error_at"], "{ctx}: refused at the wrong frame");
        }
        other => panic!("{ctx}: unknown result {other}"),
    }
}

fn check_ordered(g: &Value, t: &Value, ctx: &str) {
    let mut r = OrderedReceiver::new(g["first"].as_u64().expect("first"), t["window"].as_u64().expect("window"));
    let (mut released, mut outcomes, mut gaps) = (vec![], vec![], vec![]);
    for n in t["arrivals"].as_array().expect("arrivals").iter().map(|v| v.as_u64().expect("u64")) {
        let mut out = Vec::new();
        let outcome = match r.receive(n, (), &mut out) {
            Arrival::Duplicate => "duplicate",
            Arrival::Released => "released",
            Arrival::Buffered { missing_from, missing_to, first } => {
                if first {
                    gaps.push(json!([missing_from, missing_to]));
                }
                "held"
            }
            Arrival::BeyondWindow => "beyond_window",
        };
        outcomes.push(outcome);
        released.extend(out.into_iter().map(|(k, ())| k));
    }
    assert_eq!(json!(outcomes), t["outcomes"], "{ctx}");
    assert_eq!(json!(released), t["released"], "{ctx}");
    assert_eq!(json!(gaps), t["gaps_reported"], "{ctx}");
    assert_eq!(json!(r.released()), t["acked_through"], "{ctx}");
}

fn check_packages(g: &Value, t: &Value, ctx: &str) {
    let t0 = Instant::now();
    let mut b = PackageBuffer::new(Duration::from_millis(g["timeout_ms"].as_u64().expect("timeout")));
    for step in t["steps"].as_array().expect("steps") {
        let now = t0 + Duration::from_millis(step["at_ms"].as_u64().expect("at"));
        let got = if step.get("tick").is_some() {
            let expired: Vec<Value> = b
                .handle_timeout(now)
                .into_iter()
                .map(|(id, items)| json!({ "package_id": id.0, "items": items }))
                .collect();
            json!({ "expired": expired })
        } else {
            let m = &step["insert"];
            let pkg = proto::PackageRef {
                package_id: m["package_id"].as_u64().expect("id"),
                index: u32::try_from(m["index"].as_u64().expect("index")).expect("u32"),
                count: u32::try_from(m["count"].as_u64().expect("count")).expect("u32"),
            };
            match b.insert(now, &pkg, m["item"].as_str().expect("item").to_owned()) {
                Ok(PackageInsert::Pending) => json!("pending"),
                Ok(PackageInsert::Complete(items)) => {
                    json!({ "complete": pkg.package_id, "items": items })
                }
                Ok(PackageInsert::Expired) => json!("refused_expired"),
                Err(v) => json!({ "error": v.reason.name() }),
            }
        };
        assert_eq!(got, step["expect"], "{ctx} at {}", step["at_ms"]);
    }
}

#[test]
fn codec_agrees_with_every_vector() {
    let pool = DescriptorPool::decode(tern_codec::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut paths = Vec::new();
    files(&vectors_dir(), &mut paths);
    paths.sort();
    assert!(paths.len() >= 4, "vector files missing: {paths:?}");
    let mut total = 0;
    let mut types_seen = HashSet::new();
    for path in &paths {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json");
        let schema = doc["schema"].as_str().expect("schema").to_owned();
        // The E2EE vectors are replayed by tern-e2ee (e2ee/tests/vectors.rs), not by the codec.
        if schema.starts_with("e2ee_") {
            continue;
        }
        let mut ids = HashSet::new();
        let mut count = 0;
        for (g, t) in tests_of(&doc) {
            count += 1;
            let id = t["tcId"].as_u64().expect("tcId");
            assert!(ids.insert(id), "{}: duplicate tcId {id}", path.display());
            assert!(
                !t["covers"].as_array().expect("covers").is_empty(),
                "{}: tcId {id} covers nothing",
                path.display()
            );
            let ctx = format!("{} tcId {id} ({})", path.display(), t["comment"]);
            match schema.as_str() {
                "frame_codec_v1" => {
                    if t["result"] == "valid" {
                        types_seen.insert(t["frame_type"].as_str().expect("type").to_owned());
                    }
                    check_frame_codec(&pool, t, &ctx);
                }
                "reassembly_v1" => check_reassembly(&pool, g, t, &ctx),
                "ordered_receive_v1" => check_ordered(g, t, &ctx),
                "package_reorder_v1" => check_packages(g, t, &ctx),
                other => panic!("{}: unknown schema {other}", path.display()),
            }
        }
        assert_eq!(json!(count), doc["numberOfTests"], "{}: numberOfTests", path.display());
        total += count;
    }
    for ty in FrameType::ALL {
        assert!(types_seen.contains(ty.name()), "no valid vector for {}", ty.name());
    }
    assert!(total > 100, "only {total} vectors");
}
