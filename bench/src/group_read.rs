//! Scenario `group-read` (Tern only): a group above the read fan-out threshold — `--members`
//! members, `--online` of them connected — and `--senders` members publishing to it. Messages
//! of such a group are stored once; online members get a NOTIFY and pull the conversation
//! stream with SYNC (spec 8.2, 8.3, 10; Tern's client library pulls by itself). Reported: sends
//! acknowledged per second, NOTIFYs and answered SYNCs per second, deliveries (messages pulled
//! by members) per second, send-to-pull latency, and broker CPU per delivery.
//!
//! The group is created through the admin API (`--http`, the operations listener; the admin
//! key comes from the data directory's secret), its members added in bulk.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tern_broker::client::{Client, ClientError, ClientOptions, Incoming};
use tern_codec::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pairs::{measure, print_result, stamped, Load, Stats};
use crate::{token, Tokens};

/// Command-line parameters.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The broker's native address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    addr: std::net::SocketAddr,
    /// The broker's operations (HTTP) address, for the admin API.
    #[arg(long, default_value = "127.0.0.1:7480")]
    http: std::net::SocketAddr,
    /// The broker's data directory (tokens and the admin key come from its secret).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Members of the group.
    #[arg(long, default_value_t = 100_000)]
    members: usize,
    /// Members connected (they pull what they are notified of).
    #[arg(long, default_value_t = 2_000)]
    online: usize,
    /// Members publishing to the group.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Payload bytes (at least 8: the send time).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Closed loop: messages in flight per sender.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Fixed total send rate in messages per second instead of the closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The broker's process id, for its CPU time.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Prefix of the group and user names (vary it between runs against one broker).
    #[arg(long, default_value = "gr")]
    prefix: String,
}

/// Runs the scenario and prints one JSON line.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.payload >= 8, "--payload must be at least 8 bytes (the send time)");
    anyhow::ensure!(args.online <= args.members, "--online cannot exceed --members");
    let secret = tern_broker::token::load_or_create_secret(&args.data_dir)?;
    let tokens = Tokens::Key(tern_broker::token::TokenKey::new(&secret));
    let admin_key = tern_broker::admin::admin_key(&secret);
    let group = format!("{}-g", args.prefix);
    let sender = |i: usize| format!("{}-s{i}", args.prefix);
    let member = |i: usize| format!("{}-m{i}", args.prefix);

    let setup = Instant::now();
    let senders: Vec<String> = (0..args.senders.max(1)).map(sender).collect();
    let (creator, others) = senders.split_first().context("no sender")?;
    let body = serde_json::json!({ "group_id": group, "creator": creator, "members": others });
    admin(args.http, &admin_key, "/v1/admin/groups", &body).await?;
    // Bulk additions in request-sized chunks (the admin API takes bodies up to 64 KiB).
    let mut added = 0;
    while added < args.members {
        let chunk: Vec<String> = (added..args.members.min(added + 3_000)).map(member).collect();
        added += chunk.len();
        let answer = admin(
            args.http,
            &admin_key,
            &format!("/v1/admin/groups/{group}/members"),
            &serde_json::json!({ "add": chunk }),
        )
        .await?;
        if added == args.members {
            anyhow::ensure!(
                answer.get("read_fanout") == Some(&serde_json::Value::Bool(true)),
                "the group is not above the read fan-out threshold: {answer}"
            );
        }
    }
    eprintln!(
        "group {group}: {} members in {:.1} s; connecting {} …",
        added + senders.len(),
        setup.elapsed().as_secs_f64(),
        args.online
    );

    let start = Instant::now();
    let stats = Stats::shared()?;
    for i in 0..args.online {
        let user = member(i);
        let client = Client::connect(ClientOptions::new(args.addr, "d", &token(&tokens, &user, "d")?))
            .await
            .with_context(|| format!("connecting {user}"))?;
        tokio::task::spawn_local(pull(client, stats.clone(), start));
    }
    let load = Load {
        pairs: senders.len(),
        payload: args.payload,
        window: args.window,
        rate: args.rate,
        duration: args.duration,
    };
    let topic = format!("group/{group}");
    for (i, s) in senders.iter().enumerate() {
        let client = Arc::new(Client::connect(ClientOptions::new(args.addr, "d", &token(&tokens, s, "d")?)).await?);
        start_sender(&client, &topic, &load, i, &stats, start);
    }
    let measured = measure(&stats, args.duration, args.broker_pid).await;
    let own = serde_json::json!({
        "scenario": "group-read", "broker": "tern", "members": args.members, "online": args.online,
        "senders": senders.len(), "window": args.window, "rate": args.rate, "payload": args.payload,
        "mode": if args.rate.is_some() { "fixed-rate" } else { "closed-loop" },
    });
    print_result(&[own, measured]);
    std::process::exit(0)
}

/// An online member. Tern's client machine pulls by itself: on a NOTIFY above its sync point it
/// sends SYNC, and again while SYNC_DONE says there is more (REQ-SYN-001, REQ-SYN-002); this
/// task only counts NOTIFYs, answered SYNCs and the messages pulled.
async fn pull(mut client: Client, stats: Rc<RefCell<Stats>>, start: Instant) {
    while let Some(event) = client.next().await {
        match event {
            Incoming::Message(d) => stats.borrow_mut().delivered(&d.payload, start),
            Incoming::Frame(f) => match *f {
                Frame::Notify(_) => stats.borrow_mut().count("notifies"),
                Frame::SyncDone(_) => stats.borrow_mut().count("syncs"),
                _ => {}
            },
            _ => {}
        }
    }
}

/// One admin API call (HTTP/1.1, one connection per call); the JSON answer, or an error with the
/// status line and body.
async fn admin(
    http: std::net::SocketAddr,
    key: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(http).await.with_context(|| format!("admin API at {http}"))?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let (head, json) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        bail!("{path}: {status} {json}");
    }
    Ok(serde_json::from_str(json)?)
}

/// Starts sender `i` of `load` publishing to `topic`: closed loop (`window` lanes, each
/// publishing again once its PUBACK is in) or open loop at its share of the fixed rate. PUBACKs
/// are counted as `sends_acked` / `sends_refused` events, and timed from the send.
pub(crate) fn start_sender(
    client: &Arc<Client>,
    topic: &str,
    load: &Load,
    i: usize,
    stats: &Rc<RefCell<Stats>>,
    start: Instant,
) {
    let payload = load.payload;
    let publish = {
        let (client, topic, stats) = (client.clone(), topic.to_owned(), stats.clone());
        move || {
            let (client, topic, stats) = (client.clone(), topic.clone(), stats.clone());
            async move {
                let sent = Instant::now();
                let result = client.publish(&topic, stamped(payload, start)).await;
                let mut stats = stats.borrow_mut();
                match result {
                    Ok(ack) => {
                        stats.acked(sent);
                        stats.count(if ack.reason == 0 { "sends_acked" } else { "sends_refused" });
                    }
                    // Refused (over the broker's rate limit, say): counted, and the lane goes on.
                    Err(ClientError::Rejected(_)) => stats.count("sends_refused"),
                    // The connection is gone: this lane ends.
                    Err(_) => return None,
                }
                Some(())
            }
        }
    };
    match load.schedule(i) {
        None => {
            for _ in 0..load.window.max(1) {
                let publish = publish.clone();
                tokio::task::spawn_local(async move { while publish().await.is_some() {} });
            }
        }
        // Open loop: one PUBLISH every interval, whether or not the earlier ones are
        // acknowledged (each awaits its PUBACK in its own task), the first after the stagger.
        Some((every, first)) => {
            tokio::task::spawn_local(async move {
                let mut next = tokio::time::Instant::now() + first;
                loop {
                    tokio::time::sleep_until(next).await;
                    next += every;
                    tokio::task::spawn_local(publish());
                }
            });
        }
    }
}
