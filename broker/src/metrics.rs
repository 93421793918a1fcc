//! Counters and histograms for `/metrics` (Prometheus text format): the seeds' "QPS, latency
//! and failure rate per unit", plus the hottest conversations.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tern_codec::ReasonCode;

/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0];

/// A Prometheus histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bucket, count) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bucket {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Appends the histogram in the Prometheus text format.
    pub(crate) fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bucket, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bucket}\"}} {}", count.load(Ordering::Relaxed));
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// One counter per frame type byte.
#[derive(Debug)]
struct FrameTable([AtomicU64; 64]);

impl Default for FrameTable {
    fn default() -> Self {
        FrameTable(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Every metric the broker exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted.
    pub connections_total: AtomicU64,
    /// Sessions accepted (CONNACK SUCCESS).
    pub sessions_total: AtomicU64,
    /// Sessions resumed.
    pub resumes_total: AtomicU64,
    /// Bytes received and sent on protocol connections.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// QoS 1/2 messages stored.
    pub messages_stored: AtomicU64,
    /// From a PUBLISH (or a whole package) reaching the broker to its PUBACK.
    pub publish_to_ack_seconds: Histogram,
    /// DELIVERs handed to sessions (pushes, SYNC answers, backlog).
    pub deliveries: AtomicU64,
    /// DELIVERs sent again (retransmission timer or resume).
    pub retransmits: AtomicU64,
    frames_sent: FrameTable,
    frames_received: FrameTable,
    /// Store commit + flush latency (what a PUBLISH waits for before its PUBACK).
    pub commit_seconds: Histogram,
    /// From the store commit to the recipient device's DELIVER_ACK (send-to-deliver).
    pub deliver_seconds: Histogram,
    closes: Mutex<HashMap<&'static str, u64>>,
    refused: Mutex<HashMap<&'static str, u64>>,
    hot: Mutex<HashMap<u64, u64>>,
}

impl Metrics {
    /// Adds a session's frame and retransmission counts.
    pub fn add_session(&self, c: &tern_codec::session::SessionCounters) {
        for (total, n) in
            self.frames_sent.0.iter().zip(&c.frames.sent).chain(self.frames_received.0.iter().zip(&c.frames.received))
        {
            if *n > 0 {
                total.fetch_add(*n, Ordering::Relaxed);
            }
        }
        // Skipped when zero, as above: these counters are shared by every connection, and an
        // atomic add moves the cache line between cores even when it adds nothing.
        if c.retransmits > 0 {
            self.retransmits.fetch_add(c.retransmits, Ordering::Relaxed);
        }
    }

    /// Counts a connection closed for `reason` (`none` when the transport just ended).
    pub fn closed(&self, reason: Option<ReasonCode>) {
        let name = reason.map_or("none", ReasonCode::name);
        let mut closes = self.closes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *closes.entry(name).or_default() += 1;
    }

    /// Counts a PUBLISH refused with `reason` (nothing stored).
    pub fn refused(&self, reason: ReasonCode) {
        let mut refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *refused.entry(reason.name()).or_default() += 1;
    }

    /// Counts a message stored in `conversation`.
    pub fn stored(&self, conversation: u64) {
        self.messages_stored.fetch_add(1, Ordering::Relaxed);
        let mut hot = self.hot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *hot.entry(conversation).or_default() += 1;
        // Bound the table: keep the busiest half when it grows large.
        if hot.len() > 10_000 {
            let mut counts: Vec<u64> = hot.values().copied().collect();
            counts.sort_unstable();
            let cut = counts.get(counts.len() / 2).copied().unwrap_or(0);
            hot.retain(|_, c| *c > cut);
        }
    }

    /// The Prometheus text exposition, with `connections` open right now.
    pub fn render(&self, connections: u64) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Ordering::Relaxed));
        };
        let _ = writeln!(out, "# HELP tern_connections Open protocol connections.\n# TYPE tern_connections gauge\ntern_connections {connections}");
        counter(&mut out, "tern_connections_total", "Connections accepted.", &self.connections_total);
        counter(&mut out, "tern_sessions_total", "Sessions accepted.", &self.sessions_total);
        counter(&mut out, "tern_session_resumes_total", "Sessions resumed after a dropped link.", &self.resumes_total);
        counter(&mut out, "tern_bytes_received_total", "Protocol bytes received.", &self.bytes_in);
        counter(&mut out, "tern_bytes_sent_total", "Protocol bytes sent.", &self.bytes_out);
        counter(&mut out, "tern_messages_stored_total", "QoS 1/2 messages stored.", &self.messages_stored);
        counter(&mut out, "tern_deliveries_total", "DELIVERs handed to sessions.", &self.deliveries);
        self.commit_seconds.render(
            "tern_store_commit_seconds",
            "Store commit and flush latency before a PUBACK.",
            &mut out,
        );
        self.deliver_seconds.render(
            "tern_deliver_seconds",
            "From the store commit to the recipient device's DELIVER_ACK.",
            &mut out,
        );
        counter(&mut out, "tern_retransmits_total", "DELIVERs sent again (timer or resume).", &self.retransmits);
        for (name, help, table) in [
            (
                "tern_frames_sent_total",
                "Frames sent, by type (acknowledgements are PUBACK and DELIVER_ACK).",
                &self.frames_sent,
            ),
            ("tern_frames_received_total", "Frames received, by type.", &self.frames_received),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (code, n) in table.0.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                let ty = u8::try_from(code).ok().and_then(tern_codec::FrameType::from_u8);
                if let (Some(ty), true) = (ty, n > 0) {
                    let _ = writeln!(out, "{name}{{type=\"{}\"}} {n}", ty.name());
                }
            }
        }
        self.publish_to_ack_seconds.render(
            "tern_publish_to_ack_seconds",
            "From a PUBLISH reaching the broker to its PUBACK.",
            &mut out,
        );
        let _ = writeln!(out, "# HELP tern_messages_refused_total PUBLISHes refused, by reason code.");
        let _ = writeln!(out, "# TYPE tern_messages_refused_total counter");
        let refused = self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut refused: Vec<_> = refused.iter().collect();
        refused.sort();
        for (reason, n) in refused {
            let _ = writeln!(out, "tern_messages_refused_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tern_closes_total Connections closed, by reason code.\n# TYPE tern_closes_total counter"
        );
        let closes = self.closes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut closes: Vec<_> = closes.iter().collect();
        closes.sort();
        for (reason, n) in closes {
            let _ = writeln!(out, "tern_closes_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP tern_hot_conversation_messages_total Messages stored in the 10 busiest conversations.\n# TYPE tern_hot_conversation_messages_total counter");
        let hot = self.hot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut hot: Vec<(u64, u64)> = hot.iter().map(|(c, n)| (*c, *n)).collect();
        hot.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (conv, n) in hot.into_iter().take(10) {
            let _ = writeln!(out, "tern_hot_conversation_messages_total{{conversation=\"{conv}\"}} {n}");
        }
        out
    }
}
