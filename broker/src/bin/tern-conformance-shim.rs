//! The conformance shim for Tern's Rust client library (`tern_broker::client`): run by
//! `tern-conformance client --shim ...` once per case, as `tern-conformance-shim <case-id>
//! <host:port>` with the task in `TERN_*` variables (contract: `tern_conformance::shim`).
//!
//! Exit status: 0 the action succeeded, 1 it failed, 127 the action is not supported.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_broker::client::{Client, ClientError, ClientOptions, Incoming};

const UNSUPPORTED: u8 = 127;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let action = env("TERN_ACTION");
    if !matches!(action.as_str(), "connect" | "publish" | "receive" | "idle") {
        eprintln!("unsupported action {action:?} for case {:?}", args.get(1));
        return ExitCode::from(UNSUPPORTED);
    }
    let Some(addr) = args.get(2).and_then(|a| a.parse().ok()) else {
        eprintln!("usage: tern-conformance-shim <case-id> <host:port>");
        return ExitCode::from(2);
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return ExitCode::from(2);
    };
    match runtime.block_on(run(&action, addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{action} failed: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn options(addr: std::net::SocketAddr) -> anyhow::Result<ClientOptions> {
    let mut opts = ClientOptions::new(addr, &env("TERN_DEVICE"), &env("TERN_TOKEN"));
    if env("TERN_TLS") == "1" {
        let config = tern_broker::tls::client_config(std::path::Path::new(&env("TERN_CA")))?;
        let name = rustls::pki_types::ServerName::try_from(env("TERN_SERVER_NAME"))?;
        opts.tls = Some((name, config));
    }
    Ok(opts)
}

async fn run(action: &str, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut client = Client::connect(options(addr)?).await?;
    match action {
        "connect" => {}
        "publish" => return publish(client).await,
        "receive" => receive(&mut client).await?,
        // "idle": wait until the broker ends the session (the client stops on NORMAL_DISCONNECT).
        _ => while client.next().await.is_some() {},
    }
    client.close().await;
    Ok(())
}

async fn publish(client: Client) -> anyhow::Result<()> {
    let topic = env("TERN_TOPIC");
    let count: usize = env("TERN_COUNT").parse().unwrap_or(1);
    let pad: usize = env("TERN_PAYLOAD_BYTES").parse().unwrap_or(0);
    // `m1`, `m2`, ..., padded on the right with '.' to `pad` bytes.
    let payloads: Vec<Bytes> = (1..=count).map(|i| Bytes::from(format!("{:.<pad$}", format!("m{i}")))).collect();
    let client = Arc::new(client);
    let outcome: Result<(), ClientError> = if env("TERN_PACKAGE") == "1" {
        client.publish_package(&topic, payloads).await.map(|_| ())
    } else {
        // All in flight at once, as an application publishing quickly would have them.
        let mut tasks = tokio::task::JoinSet::new();
        for payload in payloads {
            let (client, topic) = (client.clone(), topic.clone());
            tasks.spawn(async move { client.publish(&topic, payload).await.map(|_| ()) });
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                result = Err(e);
            }
        }
        result
    };
    if let Ok(client) = Arc::try_unwrap(client) {
        tokio::time::timeout(Duration::from_secs(5), client.close()).await.ok();
    }
    outcome.map_err(Into::into)
}

async fn receive(client: &mut Client) -> anyhow::Result<()> {
    let count: usize = env("TERN_COUNT").parse().unwrap_or(1);
    let mut seen = 0;
    while seen < count {
        match client.next().await {
            Some(Incoming::Message(m)) => {
                println!(
                    "MESSAGE {} {} {}",
                    m.conversation_id,
                    m.conversation_seq,
                    String::from_utf8_lossy(&m.payload)
                );
                seen += 1;
            }
            Some(Incoming::Package(members)) => {
                let first = members.first().and_then(|m| m.package.as_ref());
                println!("PACKAGE {} {}", first.map_or(0, |p| p.package_id), members.len());
                for m in &members {
                    println!(
                        "MESSAGE {} {} {}",
                        m.conversation_id,
                        m.conversation_seq,
                        String::from_utf8_lossy(&m.payload)
                    );
                }
                seen += members.len();
            }
            Some(_) => {}
            None => anyhow::bail!("the session ended after {seen} of {count} messages"),
        }
    }
    // Stay until the broker dismisses the session, so late duplicates would still be seen.
    while let Some(event) = client.next().await {
        if let Incoming::Message(m) = event {
            println!("MESSAGE {} {} {}", m.conversation_id, m.conversation_seq, String::from_utf8_lossy(&m.payload));
        }
    }
    Ok(())
}
