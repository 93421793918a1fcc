//! `tern-bench`: load for a Tern broker, measured the way the comparison with other brokers
//! needs it: messages per second, send-to-delivery latency percentiles (HdrHistogram, one
//! monotonic clock: the send time travels in the payload), and CPU per delivered message of the
//! broker process (`--broker-pid`, from `/proc/<pid>/schedstat`) and of the generator itself.
//!
//! The generator runs on one thread (a current-thread runtime) so that it competes with the
//! broker for as little of the machine as possible; its own CPU is reported beside every figure.
//! `p2p` and `mqtt-fanout` drive all their sockets from one hand-rolled mio poll loop.
//!
//! Scenarios: `p2p` (Tern's native protocol, `p2p.rs`), `group-read` (a group in read fan-out,
//! Tern only, `group_read.rs`), and for any MQTT 3.1.1 broker
//! `mqtt-p2p` (pairs, QoS 1; `mqtt_p2p.rs`), `mqtt-fanout` (one topic, M subscribers;
//! `mqtt_fanout.rs`) and `mqtt-connections` (idle connections, accept rate, reconnect storm;
//! `mqtt_connections.rs`). `floor-broker` is not a load but a minimal fan-out server, the
//! machine's floor for `mqtt-fanout` (`floor_broker.rs`).

mod disk_floor;
mod floor_broker;
mod group_read;
mod mqtt_connections;
mod mqtt_fanout;
mod mqtt_p2p;
mod mqtt_wire;
mod p2p;
mod pairs;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tern-bench", version, about = "Load generator for Tern")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Point to point: N sender/receiver pairs, QoS 2.
    P2p {
        /// The broker's native address.
        #[arg(long, default_value = "127.0.0.1:7420")]
        addr: std::net::SocketAddr,
        /// Token command, run as `CMD <user> <device>` (e.g. 'tern token provision --data-dir D').
        #[arg(long, required_unless_present = "data_dir")]
        provision_cmd: Option<String>,
        /// Or mint tokens directly with the secret in the broker's data directory (same machine).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        load: pairs::Load,
        /// The broker's process id, for its CPU time.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// Prefix of the user names (vary it between runs against one broker).
        #[arg(long, default_value = "bench")]
        prefix: String,
    },
    /// MQTT connections (any MQTT 3.1.1 broker): K idle persistent sessions (accept rate and
    /// broker memory per connection), then a reconnect storm with one stored message each.
    MqttConnections(mqtt_connections::Args),
    /// MQTT point to point (any MQTT 3.1.1 broker): N pairs, QoS 1 or 2, closed loop or fixed rate.
    MqttP2p(mqtt_p2p::Args),
    /// MQTT fan-out (any MQTT 3.1.1 broker): M subscribers of one topic, one publisher at a rate.
    MqttFanout(mqtt_fanout::Args),
    /// Tern only: a group above the read fan-out threshold (NOTIFY, then SYNC by its online
    /// members), senders publishing to it.
    GroupRead(group_read::Args),
    /// Not a load: the least an MQTT broker can do for `mqtt-fanout` (forward each PUBLISH to
    /// every subscriber, one write each, nothing else), to show this machine's floor.
    FloorBroker(floor_broker::Args),
    /// Not a load: group commit (append, fdatasync) at a fixed rate on the disk alone, the floor
    /// for a durable broker's send-to-ack latency on this machine.
    DiskFloor(disk_floor::Args),
}

/// CPU time of a process's threads, read from each thread's `schedstat` (nanoseconds; the
/// process-level file covers only the main thread).
pub(crate) struct CpuSample(std::collections::HashMap<String, u64>);

impl CpuSample {
    /// The threads of `pid` now (`"self"`: this process); None if the process is gone.
    pub(crate) fn of(pid: &str) -> Option<CpuSample> {
        let mut threads = std::collections::HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            // A thread may exit between the listing and the read: it is skipped.
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
            if let Some(ns) = stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
                threads.insert(task.file_name().to_string_lossy().into_owned(), ns);
            }
        }
        Some(CpuSample(threads))
    }

    /// CPU µs per item spent between `earlier` and `later` by the threads alive at `later`. A
    /// thread that exited in between takes its time with it; comparing process totals instead
    /// went negative when one did (the broker's blocking-pool threads exit when idle).
    pub(crate) fn us_per(earlier: Option<&CpuSample>, later: Option<&CpuSample>, items: u64) -> Option<f64> {
        let (earlier, later) = (earlier?, later?);
        if items == 0 {
            return None;
        }
        let ns: u64 = later.0.iter().map(|(tid, ns)| ns.saturating_sub(earlier.0.get(tid).copied().unwrap_or(0))).sum();
        Some(ns as f64 / 1000.0 / items as f64)
    }
}

/// Where tokens come from.
pub(crate) enum Tokens {
    Command(Vec<String>),
    Key(tern_broker::token::TokenKey),
}

pub(crate) fn token(tokens: &Tokens, user: &str, device: &str) -> anyhow::Result<String> {
    let cmd = match tokens {
        Tokens::Key(key) => {
            let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
            return key.issue(user, device, expires).map_err(anyhow::Error::msg);
        }
        Tokens::Command(cmd) => cmd,
    };
    let (prog, args) = cmd.split_first().context("empty --provision-cmd")?;
    let out = std::process::Command::new(prog).args(args).arg(user).arg(device).output()?;
    if !out.status.success() {
        bail!("{prog} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// Tokens from `--provision-cmd` or the data directory's secret.
fn tokens(provision_cmd: Option<String>, data_dir: Option<std::path::PathBuf>) -> anyhow::Result<Option<Tokens>> {
    Ok(match (provision_cmd, data_dir) {
        (Some(cmd), _) => Some(Tokens::Command(cmd.split_whitespace().map(str::to_string).collect())),
        (None, Some(dir)) => {
            Some(Tokens::Key(tern_broker::token::TokenKey::new(&tern_broker::token::load_or_create_secret(&dir)?)))
        }
        (None, None) => None,
    })
}

/// Resident memory of a process in bytes (`VmRSS`).
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        match cli.scenario {
            Scenario::P2p { addr, provision_cmd, data_dir, load, broker_pid, prefix } => {
                let Some(tokens) = tokens(provision_cmd, data_dir)? else {
                    bail!("give --provision-cmd or --data-dir")
                };
                p2p::run(addr, tokens, load, broker_pid, prefix)
            }
            Scenario::MqttFanout(args) => {
                let tokens = tokens(args.target.provision_cmd.clone(), args.target.data_dir.clone())?;
                mqtt_fanout::run(args, tokens).await
            }
            Scenario::MqttP2p(args) => {
                let tokens = tokens(args.target.provision_cmd.clone(), args.target.data_dir.clone())?;
                mqtt_p2p::run(args, tokens).await
            }
            Scenario::GroupRead(args) => group_read::run(args).await,
            // Its own threads and blocking I/O; nothing else runs on this runtime meanwhile.
            Scenario::FloorBroker(args) => floor_broker::run(args),
            Scenario::DiskFloor(args) => disk_floor::run(&args),
            Scenario::MqttConnections(args) => {
                let tokens = tokens(args.target.provision_cmd.clone(), args.target.data_dir.clone())?;
                mqtt_connections::run(args, tokens).await
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::CpuSample;

    fn sample(threads: &[(&str, u64)]) -> CpuSample {
        CpuSample(threads.iter().map(|(t, ns)| ((*t).to_owned(), *ns)).collect())
    }

    #[test]
    fn cpu_per_item_counts_the_threads_alive_at_the_end() {
        // Thread 2 exited (its 5 ms are gone), thread 3 is new: 2,000 + 1,000 ns over 3 items.
        let earlier = sample(&[("1", 1_000), ("2", 5_000_000)]);
        let later = sample(&[("1", 3_000), ("3", 1_000)]);
        assert_eq!(CpuSample::us_per(Some(&earlier), Some(&later), 3), Some(1.0));
        assert_eq!(CpuSample::us_per(Some(&earlier), Some(&later), 0), None);
        assert_eq!(CpuSample::us_per(None, Some(&later), 3), None);
        // This process has at least one thread with CPU time.
        assert!(CpuSample::of("self").is_some_and(|s| !s.0.is_empty()));
    }
}
