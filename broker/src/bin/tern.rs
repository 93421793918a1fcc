//! The `tern` command: run the broker, mint tokens, send and listen.
#![forbid(unsafe_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tern_broker::client::{Client, ClientOptions, Incoming};
use tern_broker::token::{load_or_create_secret, TokenKey};
use tern_broker::{Broker, BrokerOptions};

/// Tern: a protocol-first instant-messaging broker.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker on its embedded store.
    Serve {
        /// Native protocol listener (port 0 picks a free port; the bound address is printed).
        #[arg(long, env = "TERN_LISTEN", default_value = "127.0.0.1:7420")]
        listen: SocketAddr,
        /// Directory of the store and the token secret.
        #[arg(long, env = "TERN_DATA_DIR", default_value = "tern-data")]
        data_dir: PathBuf,
        /// Log format.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Manage auth tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Send one message (from the argument, or stdin when it is absent).
    Send {
        /// Broker address.
        #[arg(long, env = "TERN_SERVER", default_value = "127.0.0.1:7420")]
        server: SocketAddr,
        /// Auth token (`tern token issue`).
        #[arg(long, env = "TERN_TOKEN")]
        token: String,
        /// This device's id (must match the token).
        #[arg(long, env = "TERN_DEVICE")]
        device: String,
        /// Destination topic, e.g. `user/bob`.
        #[arg(long)]
        to: String,
        /// The message; read from stdin when absent.
        message: Option<String>,
    },
    /// Print messages as they arrive: `seq`, sender and payload.
    Listen {
        /// Broker address.
        #[arg(long, env = "TERN_SERVER", default_value = "127.0.0.1:7420")]
        server: SocketAddr,
        /// Auth token.
        #[arg(long, env = "TERN_TOKEN")]
        token: String,
        /// This device's id (must match the token).
        #[arg(long, env = "TERN_DEVICE")]
        device: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for a user's device (HMAC-SHA256 with the data directory's secret).
    Issue {
        /// User id.
        #[arg(long)]
        user: String,
        /// Device id.
        #[arg(long)]
        device: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl: u64,
        /// Directory holding the secret (the broker's data directory).
        #[arg(long, env = "TERN_DATA_DIR", default_value = "tern-data")]
        data_dir: PathBuf,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            log_format,
        } => {
            init_logs(log_format == "json");
            let broker = Broker::start(BrokerOptions::new(listen, data_dir.clone()))
                .await
                .with_context(|| format!("starting with data dir {}", data_dir.display()))?;
            println!(
                "tern: listening on {} (native protocol), data in {}",
                broker.local_addr(),
                data_dir.display()
            );
            wait_for_signal().await?;
            println!("tern: shutting down");
            broker.shutdown().await?;
        }
        Command::Token {
            command:
                TokenCommand::Issue {
                    user,
                    device,
                    ttl,
                    data_dir,
                },
        } => {
            let secret = load_or_create_secret(&data_dir)
                .with_context(|| format!("reading the secret in {}", data_dir.display()))?;
            let expires = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs()
                + ttl;
            let token = TokenKey::new(&secret)
                .issue(&user, &device, expires)
                .map_err(anyhow::Error::msg)?;
            println!("{token}");
        }
        Command::Send {
            server,
            token,
            device,
            to,
            message,
        } => {
            let body = match message {
                Some(m) => m.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            let client = Client::connect(ClientOptions::new(server, &device, &token)).await?;
            let ack = client.publish(&to, body).await?;
            println!(
                "stored: conversation {} seq {} msg_id {}",
                ack.conversation_id, ack.seq, ack.msg_id
            );
            client.close().await;
        }
        Command::Listen {
            server,
            token,
            device,
            count,
        } => {
            let mut client = Client::connect(ClientOptions::new(server, &device, &token)).await?;
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                match client.next().await {
                    Some(Incoming::Message(m)) => {
                        seen += 1;
                        println!(
                            "seq={} from={}/{} conversation={}: {}",
                            m.seq,
                            m.sender_user,
                            m.sender_device,
                            m.conversation_id,
                            String::from_utf8_lossy(&m.payload)
                        );
                    }
                    Some(Incoming::Package(members)) => {
                        for m in members {
                            seen += 1;
                            println!(
                                "seq={} from={}/{} package: {}",
                                m.seq,
                                m.sender_user,
                                m.sender_device,
                                String::from_utf8_lossy(&m.payload)
                            );
                        }
                    }
                    Some(_) => {}
                    None => bail!("connection closed"),
                }
            }
            client.close().await;
        }
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
