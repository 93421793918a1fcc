//! What the point-to-point scenarios share (`p2p` over Tern's protocol, `mqtt-p2p` over MQTT):
//! the load parameters, the counters, and the measured window with its result fields.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::CpuSample;

/// The offered load.
#[derive(clap::Args)]
pub(crate) struct Load {
    /// Sender/receiver pairs.
    #[arg(long, default_value_t = 100)]
    pub(crate) pairs: usize,
    /// Payload bytes (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) payload: usize,
    /// Closed loop: messages in flight per sender.
    #[arg(long, default_value_t = 8)]
    pub(crate) window: usize,
    /// Fixed total rate in messages per second instead of the closed loop.
    #[arg(long)]
    pub(crate) rate: Option<u64>,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    pub(crate) duration: u64,
}

impl Load {
    /// Sender `i`'s schedule at a fixed rate (`None`: closed loop): its interval, and the delay
    /// of its first send. The senders' first sends are spread over one interval, so the offered
    /// load is even instead of a burst from every sender at the same instant.
    pub(crate) fn schedule(&self, i: usize) -> Option<(Duration, Duration)> {
        let every = Duration::from_secs_f64(self.pairs as f64 / self.rate?.max(1) as f64);
        Some((every, every.mul_f64(i as f64 / self.pairs.max(1) as f64)))
    }

    /// The fields every point-to-point result line has.
    pub(crate) fn fields(&self) -> serde_json::Value {
        serde_json::json!({
            "pairs": self.pairs, "payload": self.payload, "window": self.window, "rate": self.rate,
            "mode": if self.rate.is_some() { "fixed-rate" } else { "closed-loop" },
        })
    }
}

/// Counters of a run (one thread: `Rc<RefCell<…>>`).
pub(crate) struct Stats {
    latency_us: Histogram<u64>,
    /// Send to PUBACK, where the scenario records it (the durable path's bar is on this).
    ack_latency_us: Histogram<u64>,
    delivered: u64,
    /// The slowest PUBACK since the last progress line (µs): shows when a tail happens.
    slowest_ack_us: u64,
    measuring: bool,
    /// Other events a scenario counts (NOTIFYs, SYNCs, PUBACKs, …), reported per second.
    events: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    pub(crate) fn new() -> anyhow::Result<Stats> {
        Ok(Stats {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            ack_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            delivered: 0,
            slowest_ack_us: 0,
            measuring: false,
            events: std::collections::BTreeMap::new(),
        })
    }

    pub(crate) fn shared() -> anyhow::Result<Rc<RefCell<Stats>>> {
        Ok(Rc::new(RefCell::new(Stats::new()?)))
    }

    /// One progress line: messages delivered in the measured window so far, and the slowest
    /// PUBACK since the previous line (where the scenario records PUBACKs).
    pub(crate) fn progress(&mut self, second: u64) -> String {
        let slowest = std::mem::take(&mut self.slowest_ack_us);
        let mut line = format!("{second:>3} s: {} delivered", self.delivered);
        if slowest > 0 {
            line.push_str(&format!(", slowest PUBACK {:.1} ms", slowest as f64 / 1000.0));
        }
        line
    }

    /// Counts one `event` if the measured window is open.
    pub(crate) fn count(&mut self, event: &'static str) {
        if self.measuring {
            *self.events.entry(event).or_default() += 1;
        }
    }

    /// A PUBACK for a PUBLISH sent at `sent`.
    pub(crate) fn acked(&mut self, sent: Instant) {
        if self.measuring {
            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.slowest_ack_us = self.slowest_ack_us.max(us);
            let _ = self.ack_latency_us.record(us);
        }
    }

    /// A delivery whose payload starts with its send time (ns since `start`).
    pub(crate) fn delivered(&mut self, payload: &[u8], start: Instant) {
        let Some(stamp) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { return };
        if self.measuring {
            let now_ns = start.elapsed().as_nanos() as u64;
            self.delivered += 1;
            let _ = self.latency_us.record(now_ns.saturating_sub(u64::from_be_bytes(stamp)) / 1000);
        }
    }
}

/// A payload of `len` bytes starting with the send time (ns since `start`).
pub(crate) fn stamped(len: usize, start: Instant) -> Vec<u8> {
    let mut body = vec![0u8; len];
    if let Some(stamp) = body.get_mut(..8) {
        stamp.copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
    }
    body
}

/// One second of warm-up, then `duration` measured seconds with progress on stderr: the
/// throughput, latency and CPU-per-message fields of the result line.
pub(crate) async fn measure(stats: &Rc<RefCell<Stats>>, duration: u64, broker_pid: Option<u32>) -> serde_json::Value {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let window = Window::open(&mut stats.borrow_mut(), broker_pid);
    for second in 1..=duration {
        tokio::time::sleep_until((window.t0 + Duration::from_secs(second)).into()).await;
        eprintln!("{}", stats.borrow_mut().progress(second));
    }
    window.close(&stats.borrow())
}

/// The measured window: opened after the warm-up, closed into the result fields.
pub(crate) struct Window {
    pub(crate) t0: Instant,
    pid: Option<String>,
    broker0: Option<CpuSample>,
    self0: Option<CpuSample>,
}

impl Window {
    /// Starts measuring now: the counters restart, CPU is sampled.
    pub(crate) fn open(stats: &mut Stats, broker_pid: Option<u32>) -> Window {
        let pid = broker_pid.map(|p| p.to_string());
        let (broker0, self0) = (pid.as_deref().and_then(CpuSample::of), CpuSample::of("self"));
        stats.latency_us.reset();
        stats.ack_latency_us.reset();
        stats.delivered = 0;
        stats.events.clear();
        stats.measuring = true;
        Window { t0: Instant::now(), pid, broker0, self0 }
    }

    /// Ends the window now: the throughput, latency and CPU-per-message fields.
    pub(crate) fn close(self, s: &Stats) -> serde_json::Value {
        let elapsed = self.t0.elapsed().as_secs_f64();
        let (broker1, self1) = (self.pid.as_deref().and_then(CpuSample::of), CpuSample::of("self"));
        let per_msg =
            |a: &Option<CpuSample>, b: &Option<CpuSample>| CpuSample::us_per(a.as_ref(), b.as_ref(), s.delivered);
        let mut events = serde_json::Map::new();
        for (name, n) in &s.events {
            events.insert(format!("{name}_per_sec"), serde_json::json!(*n as f64 / elapsed));
        }
        let quantiles = |h: &Histogram<u64>| {
            serde_json::json!({ "p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99),
                                "p999": h.value_at_quantile(0.999), "max": h.max() })
        };
        let acks = (!s.ack_latency_us.is_empty()).then(|| quantiles(&s.ack_latency_us));
        serde_json::json!({
            "events": events, "ack_latency_us": acks,
            "seconds": elapsed, "delivered": s.delivered, "msgs_per_sec": s.delivered as f64 / elapsed,
            "latency_us": quantiles(&s.latency_us),
            "broker_cpu_us_per_msg": per_msg(&self.broker0, &broker1),
            "generator_cpu_us_per_msg": per_msg(&self.self0, &self1),
        })
    }
}

/// Prints one JSON line made of `parts` (objects, merged left to right).
pub(crate) fn print_result(parts: &[serde_json::Value]) {
    let mut out = serde_json::Map::new();
    for p in parts {
        if let Some(o) = p.as_object() {
            out.extend(o.clone());
        }
    }
    println!("{}", serde_json::Value::Object(out));
}
