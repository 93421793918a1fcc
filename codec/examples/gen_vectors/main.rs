//! Reference generator for `spec/vectors/`: `cargo run -p tern-codec --example gen_vectors`.
//!
//! Valid vectors are built with the codec's encoder and described in the proto3 JSON mapping;
//! invalid ones are byte-level edits written out by hand here, so each names exactly the rule
//! it breaks. `codec/tests/vectors.rs` verifies every file independently of this program.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod fragments;
mod frames;
mod machines;

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{json, Value};
use tern_codec::proto;
use tern_codec::{encode_frame, Frame, FrameType};

const SPEC_VERSION: &str = "1.0-draft";

fn pool() -> DescriptorPool {
    DescriptorPool::decode(tern_codec::FILE_DESCRIPTOR_SET).expect("descriptor set")
}

/// The proto3 JSON mapping of a frame body.
pub(crate) fn body_json(pool: &DescriptorPool, ty: FrameType, body: &[u8]) -> Value {
    let desc = pool.get_message_by_name(&format!("tern.v1.{}", ty.message_name())).expect("message");
    let msg = DynamicMessage::decode(desc, body).expect("decode");
    serde_json::to_value(&msg).expect("json")
}

pub(crate) fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(f, &mut out).expect("fits one frame");
    out.to_vec()
}

pub(crate) fn raw(ty: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty, flags];
    v.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    v.extend_from_slice(body);
    v
}

pub(crate) struct Tests {
    pub(crate) pool: DescriptorPool,
    pub(crate) tests: Vec<Value>,
}

impl Tests {
    pub(crate) fn push(&mut self, mut t: Value) {
        let id = self.tests.len() + 1;
        t["tcId"] = json!(id);
        if t.get("flags").is_none() {
            t["flags"] = json!([]);
        }
        self.tests.push(t);
    }

    pub(crate) fn valid(&mut self, comment: &str, covers: &[&str], f: &Frame) {
        let bytes = frame_bytes(f);
        let body = body_json(&self.pool, f.frame_type(), bytes.get(4..).unwrap_or_default());
        self.push(json!({
            "comment": comment, "covers": covers, "input": hex::encode(&bytes),
            "result": "valid", "frame_type": f.frame_type().name(), "body": body,
        }));
    }

    pub(crate) fn invalid(&mut self, comment: &str, covers: &[&str], input: &[u8], error: &str) {
        self.push(json!({
            "comment": comment, "covers": covers, "input": hex::encode(input), "result": "invalid", "expected_error": error,
        }));
    }

    pub(crate) fn incomplete(&mut self, comment: &str, covers: &[&str], input: &[u8]) {
        self.push(json!({ "comment": comment, "covers": covers, "input": hex::encode(input), "result": "incomplete" }));
    }
}

fn write(dir: &Path, name: &str, schema: &str, notes: Value, groups: Vec<Value>) {
    let count: usize = groups.iter().map(|g| g["tests"].as_array().map_or(0, Vec::len)).sum();
    let doc = json!({
        "schema": schema,
        "spec_version": SPEC_VERSION,
        "generator": { "name": "tern-codec/examples/gen_vectors.rs", "version": env!("CARGO_PKG_VERSION") },
        "numberOfTests": count,
        "notes": notes,
        "testGroups": groups,
    });
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json") + "\n").expect("write");
    println!("{} ({count} tests)", path.display());
}

pub(crate) fn stream_inbox() -> Option<proto::StreamRef> {
    Some(proto::StreamRef { kind: proto::StreamKind::Inbox as i32, id: 0 })
}

pub(crate) fn publish(cid: u64, payload: &[u8]) -> proto::Publish {
    proto::Publish {
        cid,
        qos: if cid == 0 { 0 } else { 2 },
        topic: "user/bob".into(),
        payload: Bytes::copy_from_slice(payload),
        ..Default::default()
    }
}

fn main() {
    let root: PathBuf = std::env::args()
        .nth(1)
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/vectors"), PathBuf::from);
    let pool = pool();
    let notes = json!({
        "result": "valid: decodes to frame_type and body (proto3 JSON mapping) and re-encodes to input; invalid: the receiver closes with expected_error; incomplete: more bytes are needed, nothing is consumed",
    });
    write(&root, "frames/frame_codec_test.json", "frame_codec_v1", notes, frames::frame_codec(pool.clone()));
    write(
        &root,
        "fragments/reassembly_test.json",
        "reassembly_v1",
        json!({
            "frames": "FRAGMENT (and other) frames in arrival order on one connection",
            "error_at": "index into frames of the frame whose arrival is refused",
        }),
        fragments::fragments(&pool),
    );
    write(
        &root,
        "delivery/ordered_receive_test.json",
        "ordered_receive_v1",
        json!({
            "outcomes": "per arrival: released, held (a gap precedes it), duplicate, beyond_window",
            "gaps_reported": "[first missing, last missing] for each gap when first seen (one SYNC each)",
            "acked_through": "the cumulative DELIVER_ACK value after the last arrival",
        }),
        machines::ordered(),
    );
    write(
        &root,
        "packages/package_reorder_test.json",
        "package_reorder_v1",
        json!({
            "steps": "insert a member at at_ms, or tick: let at_ms pass and expire packages",
        }),
        machines::packages(),
    );
}
