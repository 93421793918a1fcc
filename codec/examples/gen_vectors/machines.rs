//! Ordered-receive and package-reorder vectors, produced by running the codec's machines.

use serde_json::{json, Value};
use tern_codec::proto;

pub(crate) fn ordered() -> Vec<Value> {
    use tern_codec::delivery::{Arrival, OrderedReceiver};
    let cases: Vec<(&str, &[&str], u64, Vec<u64>)> = vec![
        ("in order", &["REQ-QOS-011"], 8, vec![1, 2, 3, 4]),
        ("duplicates are dropped", &["REQ-QOS-011"], 8, vec![1, 1, 2, 1, 2, 3]),
        ("one swapped pair", &["REQ-ORD-001"], 8, vec![2, 1, 3]),
        ("reversed within the window", &["REQ-ORD-001"], 8, vec![5, 4, 3, 2, 1]),
        ("gap repaired later", &["REQ-ORD-001"], 8, vec![1, 2, 5, 6, 3, 4, 7]),
        ("duplicate of a held item", &["REQ-ORD-001", "REQ-QOS-011"], 8, vec![1, 3, 3, 2]),
        ("beyond the window is dropped", &["REQ-ORD-001", "REQ-QOS-012"], 4, vec![1, 6, 2, 5, 3, 4, 6]),
        ("two gaps", &["REQ-ORD-001"], 16, vec![2, 4, 6, 1, 3, 5]),
    ];
    let tests: Vec<Value> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (comment, covers, window, arrivals))| {
            let mut r = OrderedReceiver::new(1, window);
            let mut released = Vec::new();
            let mut outcomes = Vec::new();
            let mut gaps = Vec::new();
            for &n in &arrivals {
                let mut out = Vec::new();
                let a = r.receive(n, n, &mut out);
                released.extend(out.into_iter().map(|(k, _)| k));
                outcomes.push(match a {
                    Arrival::Duplicate => "duplicate",
                    Arrival::Released => "released",
                    Arrival::Buffered { missing_from, missing_to, first } => {
                        if first {
                            gaps.push(json!([missing_from, missing_to]));
                        }
                        "held"
                    }
                    Arrival::BeyondWindow => "beyond_window",
                });
            }
            json!({
                "tcId": i + 1, "comment": comment, "covers": covers, "flags": [],
                "window": window, "arrivals": arrivals, "outcomes": outcomes,
                "released": released, "gaps_reported": gaps, "acked_through": r.released(),
            })
        })
        .collect();
    vec![json!({ "type": "OrderedReceive", "first": 1, "tests": tests })]
}

pub(crate) fn packages() -> Vec<Value> {
    use std::time::{Duration, Instant};
    use tern_codec::delivery::{PackageBuffer, PackageInsert};
    type Step = (u64, Option<(u64, u32, u32)>);
    let cases: Vec<(&str, &[&str], Vec<Step>)> = vec![
        ("in index order", &["REQ-PKG-003"], vec![(0, Some((1, 0, 3))), (1, Some((1, 1, 3))), (2, Some((1, 2, 3)))]),
        (
            "reversed arrival, released in index order",
            &["REQ-PKG-003"],
            vec![(0, Some((1, 2, 3))), (5, Some((1, 1, 3))), (9, Some((1, 0, 3)))],
        ),
        ("single-member package", &["REQ-PKG-003"], vec![(0, Some((4, 0, 1)))]),
        (
            "two packages interleaved",
            &["REQ-PKG-003"],
            vec![(0, Some((1, 1, 2))), (0, Some((2, 0, 2))), (1, Some((1, 0, 2))), (2, Some((2, 1, 2)))],
        ),
        (
            "timeout with one member missing",
            &["REQ-PKG-004"],
            vec![(0, Some((1, 0, 2))), (30_000, None), (30_001, Some((1, 1, 2)))],
        ),
        (
            "not yet timed out one millisecond before",
            &["REQ-PKG-004"],
            vec![(0, Some((1, 0, 2))), (29_999, None), (29_999, Some((1, 1, 2)))],
        ),
        ("duplicate index", &["REQ-PKG-007"], vec![(0, Some((1, 0, 3))), (1, Some((1, 0, 3)))]),
        ("count changes between members", &["REQ-PKG-007"], vec![(0, Some((1, 0, 3))), (1, Some((1, 1, 2)))]),
        (
            "an id below the highest opened is closed",
            &["REQ-PKG-005"],
            vec![(0, Some((5, 0, 1))), (1, Some((3, 0, 2)))],
        ),
    ];
    let tests: Vec<Value> = cases
        .into_iter()
        .enumerate()
        .map(|(i, (comment, covers, steps))| {
            let t0 = Instant::now();
            let mut b = PackageBuffer::new(Duration::from_secs(30));
            let mut item = 0u32;
            let mut out_steps = Vec::new();
            for (at, member) in steps {
                let now = t0 + Duration::from_millis(at);
                match member {
                    Some((id, index, count)) => {
                        item += 1;
                        let pkg = proto::PackageRef { package_id: id, index, count };
                        let expect = match b.insert(now, &pkg, format!("m{item}")) {
                            Ok(PackageInsert::Pending) => json!("pending"),
                            Ok(PackageInsert::Complete(items)) => json!({ "complete": id, "items": items }),
                            Ok(PackageInsert::Expired) => json!("refused_expired"),
                            Err(v) => json!({ "error": v.reason.name() }),
                        };
                        out_steps.push(json!({ "at_ms": at, "insert": { "package_id": id, "index": index, "count": count, "item": format!("m{item}") }, "expect": expect }));
                    }
                    None => {
                        let expired: Vec<Value> = b.handle_timeout(now).into_iter().map(|(id, items)| json!({ "package_id": id.0, "items": items })).collect();
                        out_steps.push(json!({ "at_ms": at, "tick": true, "expect": { "expired": expired } }));
                    }
                }
            }
            json!({ "tcId": i + 1, "comment": comment, "covers": covers, "flags": [], "steps": out_steps })
        })
        .collect();
    vec![json!({ "type": "PackageReorder", "timeout_ms": 30_000, "tests": tests })]
}
