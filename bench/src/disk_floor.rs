//! `disk-floor`: the least a durable broker must do per message, to show what this machine's
//! disk allows. Records arrive at a fixed rate (evenly spread); one committer appends whatever
//! has arrived to a journal file and `fdatasync`s it (group commit); a record's latency runs from
//! its arrival to the end of the sync that made it durable. Optionally a background thread
//! writes table-sized files and syncs each, as an LSM store's flushes and compactions do.
//!
//! No network, no parsing, no index: its send-to-durable p99 is the floor for the p99
//! send-to-PUBACK of any broker that fsyncs before acknowledging, on this disk.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory for the journal and the background files (on the disk under test).
    #[arg(long)]
    dir: PathBuf,
    /// Records per second.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// Bytes appended to the journal per record.
    #[arg(long, default_value_t = 700)]
    record: usize,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// MB per second written by the background thread (0: none).
    #[arg(long, default_value_t = 0.0)]
    background_mb_per_sec: f64,
    /// Size of each background file in MiB (a table written at once, then synced).
    #[arg(long, default_value_t = 16)]
    table_mib: usize,
}

/// Arrival times of the records not yet committed.
type Arrivals = Arc<(Mutex<Vec<Instant>>, Condvar)>;

/// Runs the measurement and prints one JSON line.
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be positive");
    std::fs::create_dir_all(&args.dir)?;
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration + 1);
    let done = Arc::new(AtomicBool::new(false));
    let background = (args.background_mb_per_sec > 0.0).then(|| {
        let (dir, mb, mib, done) = (args.dir.clone(), args.background_mb_per_sec, args.table_mib, done.clone());
        std::thread::spawn(move || write_tables(&dir, mb, mib, &done))
    });
    let arrivals: Arrivals = Arc::default();
    let producer = {
        let (arrivals, done, rate) = (arrivals.clone(), done.clone(), args.rate);
        std::thread::spawn(move || arrive(&arrivals, &done, rate, start, end))
    };

    let journal_path = args.dir.join("journal");
    let journal = std::fs::File::create(&journal_path)?;
    let mut offset = 0u64;
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut sync_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut groups, mut records) = (0u64, 0u64);
    let mut buf = Vec::new();
    let measure_from = start + Duration::from_secs(1);
    loop {
        let batch = {
            let (queue, ready) = &*arrivals;
            let mut q = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while q.is_empty() && !done.load(Ordering::Acquire) {
                q = ready.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            std::mem::take(&mut *q)
        };
        if batch.is_empty() {
            break;
        }
        buf.resize(args.record * batch.len(), 0x5a);
        journal.write_all_at(&buf, offset)?;
        offset += buf.len() as u64;
        let t = Instant::now();
        journal.sync_data()?;
        let synced = Instant::now();
        if t >= measure_from {
            let _ = sync_us.record(synced.duration_since(t).as_micros() as u64);
            groups += 1;
        }
        for arrived in batch.into_iter().filter(|a| *a >= measure_from) {
            let _ = latency_us.record(synced.duration_since(arrived).as_micros() as u64);
            records += 1;
        }
    }
    let _ = producer.join();
    if let Some(b) = background {
        b.join().map_err(|_| anyhow::anyhow!("the background writer panicked"))??;
    }
    let _ = std::fs::remove_file(&journal_path);
    let result = serde_json::json!({
        "scenario": "disk-floor", "rate": args.rate, "record_bytes": args.record,
        "background_mb_per_sec": args.background_mb_per_sec, "table_mib": args.table_mib,
        "records": records, "groups": groups,
        "records_per_group": if groups > 0 { records as f64 / groups as f64 } else { 0.0 },
        "msgs_per_sec": records as f64 / args.duration as f64,
        // Arrival to durable: what a broker's ack after its fsync would be timed at, at best.
        "ack_latency_us": { "p50": latency_us.value_at_quantile(0.5), "p99": latency_us.value_at_quantile(0.99),
                            "max": latency_us.max() },
        "fdatasync_us": { "p50": sync_us.value_at_quantile(0.5), "p99": sync_us.value_at_quantile(0.99),
                          "max": sync_us.max() },
    });
    println!("{result}");
    Ok(())
}

/// Queues one arrival per 1/rate second until `end`, then says it is done.
fn arrive(arrivals: &Arrivals, done: &AtomicBool, rate: u32, start: Instant, end: Instant) {
    let every = Duration::from_secs(1) / rate;
    let (queue, ready) = &**arrivals;
    for n in 0u32.. {
        let due = start + every * n;
        if due >= end {
            break;
        }
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // The scheduled time, not the wake-up: a late wake-up is latency a broker would see too.
        queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(due);
        ready.notify_one();
    }
    done.store(true, Ordering::Release);
    ready.notify_one();
}

/// Writes `table_mib` files at `mb_per_sec` on average, each synced once written.
fn write_tables(dir: &std::path::Path, mb_per_sec: f64, table_mib: usize, done: &AtomicBool) -> std::io::Result<()> {
    let chunk = vec![0xa5u8; 1 << 20];
    let mut n = 0usize;
    while !done.load(Ordering::Acquire) {
        let path = dir.join(format!("table-{}", n % 4));
        n += 1;
        let started = Instant::now();
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..table_mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
        let pace = Duration::from_secs_f64(table_mib as f64 * 1.048_576 / mb_per_sec);
        if let Some(rest) = pace.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    for i in 0..4 {
        let _ = std::fs::remove_file(dir.join(format!("table-{i}")));
    }
    Ok(())
}
