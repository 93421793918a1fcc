//! Codec benchmark: decode and encode throughput per core, bytes per second, and heap
//! allocations per frame; plus the broker session machine's cost per PUBLISH and per DELIVER.
//!
//! `cargo bench -p tern-codec --bench codec` prints a Markdown table for BENCHMARKS.md. Each
//! figure is the median of 7 runs; allocations are counted exactly with an instrumented
//! allocator (they do not vary between runs).
// Benchmark code: a panic is a broken benchmark, not a user-facing error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tern_codec::ids::StreamId;
use tern_codec::proto;
use tern_codec::session::{Accept, BrokerConfig, BrokerEvent, BrokerSession, LedgerSnapshot};
use tern_codec::{decode_frame, encode_frame, Frame};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const FRAMES: usize = 20_000;
const RUNS: usize = 7;

fn publish(payload: usize, cid: u64) -> Frame {
    Frame::Publish(proto::Publish {
        cid,
        qos: 2,
        topic: "user/bob".into(),
        payload: Bytes::from(vec![0x61; payload]),
        ..Default::default()
    })
}

fn deliver(payload: usize, seq: u64) -> Frame {
    Frame::Deliver(proto::Deliver {
        stream: Some(StreamId::Inbox.to_proto()),
        seq,
        msg_id: 0x0123_4567_89AB_CDEF + seq,
        conversation_id: 7,
        conversation_seq: seq,
        topic: "user/bob".into(),
        sender_user: "alice".into(),
        sender_device: "phone".into(),
        qos: 2,
        payload: Bytes::from(vec![0x62; payload]),
        server_time_ms: 1_767_225_600_000,
        ..Default::default()
    })
}

fn ack(seq: u64) -> Frame {
    Frame::DeliverAck(proto::DeliverAck { stream: Some(StreamId::Inbox.to_proto()), seq })
}

struct Figure {
    frames_per_sec: f64,
    bytes_per_sec: f64,
    allocs_per_frame: f64,
    bytes_per_frame: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Builds the i-th frame of a benchmark stream.
type MakeFrame = fn(u64) -> Frame;

fn bench_decode(make: &MakeFrame) -> Figure {
    let mut wire = BytesMut::new();
    for i in 0..FRAMES as u64 {
        encode_frame(&make(i + 1), &mut wire).unwrap();
    }
    let wire = wire.freeze();
    let mut rates = Vec::new();
    let mut allocs = 0;
    for _ in 0..RUNS {
        let mut buf = BytesMut::from(&wire[..]);
        let region = Region::new(GLOBAL);
        let start = Instant::now();
        let mut n = 0;
        while let Some(f) = decode_frame(&mut buf).unwrap() {
            black_box(&f);
            n += 1;
        }
        let took = start.elapsed();
        allocs = region.change().allocations;
        assert_eq!(n, FRAMES);
        rates.push(n as f64 / took.as_secs_f64());
    }
    let fps = median(rates);
    let per = wire.len() / FRAMES;
    Figure {
        frames_per_sec: fps,
        bytes_per_sec: fps * per as f64,
        allocs_per_frame: allocs as f64 / FRAMES as f64,
        bytes_per_frame: per,
    }
}

fn bench_encode(make: &MakeFrame) -> Figure {
    let frames: Vec<Frame> = (0..FRAMES as u64).map(|i| make(i + 1)).collect();
    let mut out = BytesMut::with_capacity(FRAMES * 1400);
    let mut rates = Vec::new();
    let mut allocs = 0;
    for _ in 0..RUNS {
        out.clear();
        let region = Region::new(GLOBAL);
        let start = Instant::now();
        for f in &frames {
            encode_frame(f, &mut out).unwrap();
        }
        let took = start.elapsed();
        allocs = region.change().allocations;
        black_box(&out);
        rates.push(FRAMES as f64 / took.as_secs_f64());
    }
    let fps = median(rates);
    let per = out.len() / FRAMES;
    Figure {
        frames_per_sec: fps,
        bytes_per_sec: fps * per as f64,
        allocs_per_frame: allocs as f64 / FRAMES as f64,
        bytes_per_frame: per,
    }
}

/// PUBLISH in → dedup/order → event → ack_publish → PUBACK out, through the broker machine.
/// A broker session past its handshake, with a client window of 1024.
fn accepted_session(t0: Instant) -> BrokerSession {
    let mut b = BrokerSession::new(t0, BrokerConfig { receive_window: 1024, ..BrokerConfig::default() });
    let mut connect = BytesMut::new();
    let hello =
        proto::Connect { versions: vec![1], device_id: "bench".into(), receive_window: 1024, ..Default::default() };
    encode_frame(&Frame::Connect(hello), &mut connect).unwrap();
    b.handle_bytes(t0, &connect);
    let _ = b.poll_event();
    let accept = Accept {
        user_id: "u".into(),
        session_id: Bytes::from_static(b"s"),
        ledger: LedgerSnapshot::default(),
        inbox_acked_seq: 0,
        server_time_ms: 0,
    };
    b.accept(t0, accept).unwrap();
    let _ = b.poll_transmit();
    b
}

/// PUBLISH in, PUBACK out: frames per second and heap allocations per frame.
fn bench_broker_session() -> (f64, f64) {
    let t0 = Instant::now();
    let mut wire = BytesMut::new();
    for cid in 1..=FRAMES as u64 {
        encode_frame(&publish(64, cid), &mut wire).unwrap();
    }
    let mut rates = Vec::new();
    let mut allocs = 0;
    for _ in 0..RUNS {
        let mut b = accepted_session(t0);
        let region = Region::new(GLOBAL);
        let start = Instant::now();
        // Feed in 1400-byte reads, as a socket would deliver them.
        for chunk in wire.chunks(1400) {
            b.handle_bytes(t0, chunk);
            while let Some(ev) = b.poll_event() {
                if let BrokerEvent::Publish(p) = ev {
                    b.ack_publish(proto::PubAck {
                        cid: p.cid,
                        reason: 0,
                        msg_id: p.cid,
                        conversation_id: 1,
                        seq: p.cid,
                    })
                    .unwrap();
                }
            }
            black_box(b.poll_transmit());
        }
        let took = start.elapsed();
        allocs = region.change().allocations;
        rates.push(FRAMES as f64 / took.as_secs_f64());
    }
    (median(rates), allocs as f64 / FRAMES as f64)
}

/// DELIVER out, DELIVER_ACK in, 256 at a time (within the client's window): frames per second
/// and heap allocations per frame, the message built outside the measured region's count.
fn bench_broker_deliver() -> (f64, f64) {
    const BATCH: u64 = 256;
    let t0 = Instant::now();
    let messages: Vec<proto::Deliver> = (1..=FRAMES as u64)
        .map(|seq| match deliver(64, seq) {
            Frame::Deliver(d) => d,
            _ => unreachable!(),
        })
        .collect();
    let mut acks = Vec::new();
    for first in (1..=FRAMES as u64).step_by(BATCH as usize) {
        let mut wire = BytesMut::new();
        for seq in first..(first + BATCH).min(FRAMES as u64 + 1) {
            encode_frame(&ack(seq), &mut wire).unwrap();
        }
        acks.push(wire);
    }
    let mut rates = Vec::new();
    let mut allocs = 0;
    for _ in 0..RUNS {
        let mut b = accepted_session(t0);
        let mut batches = messages.clone().into_iter();
        let region = Region::new(GLOBAL);
        let start = Instant::now();
        for wire in &acks {
            for d in batches.by_ref().take(BATCH as usize) {
                b.deliver(t0, d).unwrap();
            }
            black_box(b.poll_transmit());
            b.handle_bytes(t0, wire);
            while let Some(ev) = b.poll_event() {
                black_box(ev);
            }
        }
        let took = start.elapsed();
        allocs = region.change().allocations;
        rates.push(FRAMES as f64 / took.as_secs_f64());
    }
    (median(rates), allocs as f64 / FRAMES as f64)
}

fn main() {
    // `cargo test --benches` runs this in test mode: keep that quick and quiet.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    println!("| operation | frame | bytes/frame | frames/s (median of {RUNS}) | MB/s | heap allocs/frame |");
    println!("|---|---|---:|---:|---:|---:|");
    let cases: Vec<(&str, MakeFrame)> = vec![
        ("PUBLISH 64 B payload", |i| publish(64, i)),
        ("PUBLISH 512 B payload", |i| publish(512, i)),
        ("DELIVER 64 B payload", |i| deliver(64, i)),
        ("DELIVER 512 B payload", |i| deliver(512, i)),
        ("DELIVER_ACK", ack),
    ];
    for (name, make) in &cases {
        for (op, fig) in [("decode", bench_decode(make)), ("encode", bench_encode(make))] {
            println!(
                "| {op} | {name} | {} | {:.0} | {:.1} | {:.2} |",
                fig.bytes_per_frame,
                fig.frames_per_sec,
                fig.bytes_per_sec / 1e6,
                fig.allocs_per_frame
            );
        }
    }
    let (rate, allocs) = bench_broker_session();
    println!("| broker session: PUBLISH → PUBACK | PUBLISH 64 B payload | — | {rate:.0} | — | {allocs:.2} |");
    let (rate, allocs) = bench_broker_deliver();
    println!("| broker session: DELIVER → DELIVER_ACK | DELIVER 64 B payload | — | {rate:.0} | — | {allocs:.2} |");
    let (insert, fire) = bench_timer_wheel();
    println!();
    println!("| timing wheel, 1,000,000 timers over 60 s (100 ms ticks, 4096 slots) | ops/s (median of {RUNS}) |");
    println!("|---|---:|");
    println!("| insert | {insert:.0} |");
    println!("| advance and fire (per timer) | {fire:.0} |");
}

/// Inserts a million deadlines spread over a minute, then advances through them.
fn bench_timer_wheel() -> (f64, f64) {
    use tern_codec::timer::TimerWheel;
    const N: u64 = 1_000_000;
    let (mut inserts, mut fires) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0, Duration::from_millis(100), 4096);
        let start = Instant::now();
        for i in 0..N {
            // A cheap spread of deadlines over 60 s.
            let at = t0 + Duration::from_millis(i.wrapping_mul(2_654_435_761) % 60_000);
            black_box(wheel.insert(at, i));
        }
        inserts.push(N as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut out = Vec::with_capacity(N as usize);
        for step in 1..=600u64 {
            wheel.advance(t0 + Duration::from_millis(step * 100), &mut out);
        }
        assert_eq!(out.len() as u64, N);
        fires.push(N as f64 / start.elapsed().as_secs_f64());
    }
    (median(inserts), median(fires))
}
