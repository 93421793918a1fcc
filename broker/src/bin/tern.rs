//! The `tern` command: run the broker, mint tokens, send and listen.
#![forbid(unsafe_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tern_broker::client::{Client, ClientOptions, Incoming};
use tern_broker::config::{resolve, FileConfig, FileTls, Overrides};
use tern_broker::e2ee::{load_or_create, save, E2eeClient, Event};
use tern_broker::token::{load_or_create_secret, TokenKey};
use tern_broker::Broker;
use tern_codec::{proto, Frame, ReasonCode};

/// jemalloc, not the C library's malloc. Measured (BENCHMARKS.md): glibc kept about 1,000
/// bytes per idle MQTT connection where jemalloc keeps about 720. Tokio's tasks are 128-byte
/// aligned, and glibc 2.36 cannot reuse a freed aligned block for the next aligned request,
/// so every connection's short-lived task left a hole behind; jemalloc serves aligned sizes
/// from its size classes, without per-block headers. The durable path also ran faster.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// TOML config file (flags and environment variables override it).
        #[arg(long, env = "TERN_CONFIG")]
        config: Option<PathBuf>,
        /// Native protocol listener [default: 127.0.0.1:7420] (port 0 picks a free port; the
        /// bound address is printed).
        #[arg(long, env = "TERN_LISTEN")]
        listen: Option<SocketAddr>,
        /// Directory of the store and the token secret [default: tern-data].
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Store engine: fjall, sled or redb [default: the one the data directory holds; fjall
        /// for a new one].
        #[arg(long, env = "TERN_STORE", value_parser = ["fjall", "sled", "redb"])]
        store: Option<String>,
        /// Log format [default: text].
        #[arg(long, env = "TERN_LOG_FORMAT", value_parser = ["text", "json"])]
        log_format: Option<String>,
        /// Operations HTTP listener: /healthz, /metrics, /v1/dispatch [default: 127.0.0.1:7480].
        #[arg(long, env = "TERN_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
        /// TLS listener (TLS 1.3, ALPN tern/1); needs --tls-cert and --tls-key.
        #[arg(long, env = "TERN_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
        tls_listen: Option<SocketAddr>,
        /// Certificate chain for the TLS listener (PEM).
        #[arg(long, env = "TERN_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// Private key for the TLS listener (PEM).
        #[arg(long, env = "TERN_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// MQTT 3.1.1/5 listener for IoT devices [default: 127.0.0.1:1883].
        #[arg(long, env = "TERN_MQTT_LISTEN", conflicts_with = "no_mqtt")]
        mqtt_listen: Option<SocketAddr>,
        /// MQTT-over-TLS listener (uses the --tls-cert certificate).
        #[arg(long, env = "TERN_MQTT_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"], conflicts_with = "no_mqtt")]
        mqtt_tls_listen: Option<SocketAddr>,
        /// Run without the MQTT listener.
        #[arg(long)]
        no_mqtt: bool,
    },
    /// Certificates for local use.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Manage auth tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Send one message (from the argument, or stdin when it is absent).
    Send {
        #[command(flatten)]
        conn: Connection,
        /// Destination topic, e.g. `user/bob`.
        #[arg(long)]
        to: String,
        /// Encrypt end to end for every device of the recipient (a `user/{peer}` topic).
        #[arg(long)]
        e2ee: bool,
        /// The message; read from stdin when absent.
        message: Option<String>,
    },
    /// Print messages as they arrive: `seq`, sender and payload. Encrypted messages are
    /// decrypted when this device has a key store (`--e2ee` creates one and publishes its keys).
    Listen {
        #[command(flatten)]
        conn: Connection,
        /// Receive end-to-end encrypted messages: create the key store if there is none.
        #[arg(long)]
        e2ee: bool,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Also receive live messages matching this filter: `room/{room}`, or device telemetry
        /// below `device/{your user}/` (`+` and `#` allowed). Repeatable.
        #[arg(long = "subscribe", value_name = "FILTER")]
        subscribe: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed certificate and key (`cert.pem`, `key.pem`) for local TLS.
    Dev {
        /// Output directory.
        #[arg(long, default_value = "tern-data/tls")]
        out_dir: PathBuf,
        /// Host names and addresses the certificate is for.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
}

/// How `send` and `listen` reach the broker.
#[derive(clap::Args)]
struct Connection {
    /// Broker address.
    #[arg(long, env = "TERN_SERVER", default_value = "127.0.0.1:7420")]
    server: SocketAddr,
    /// Auth token (`tern token issue`).
    #[arg(long, env = "TERN_TOKEN")]
    token: String,
    /// This device's id (must match the token).
    #[arg(long, env = "TERN_DEVICE")]
    device: String,
    /// Connect with TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, env = "TERN_CA")]
    ca: Option<PathBuf>,
    /// Server name to verify with TLS.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// This device's E2EE key store, created (and its public keys published) on first use
    /// [default: tern-keys/<user>-<device>.keys].
    #[arg(long, env = "TERN_KEYS")]
    keys: Option<PathBuf>,
}

impl Connection {
    fn options(&self) -> anyhow::Result<ClientOptions> {
        let mut opts = ClientOptions::new(self.server, &self.device, &self.token);
        if let Some(ca) = &self.ca {
            let name =
                rustls::pki_types::ServerName::try_from(self.server_name.clone()).context("invalid --server-name")?;
            opts.tls = Some((name, tern_broker::tls::client_config(ca)?));
        }
        Ok(opts)
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print the admin API key (`Authorization: Bearer <key>` for /v1/admin/).
    Admin {
        /// Directory holding the secret (the broker's data directory).
        #[arg(long, env = "TERN_DATA_DIR", default_value = "tern-data")]
        data_dir: PathBuf,
    },
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
    /// Print a token for USER's DEVICE (one hour): the provisioning command of
    /// `tern-conformance server --provision-cmd 'tern token provision --data-dir DIR'`.
    Provision {
        /// Directory holding the secret (the broker's data directory).
        #[arg(long, env = "TERN_DATA_DIR", default_value = "tern-data")]
        data_dir: PathBuf,
        /// User id.
        user: String,
        /// Device id.
        device: String,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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
            config,
            listen,
            data_dir,
            store,
            log_format,
            http_listen,
            tls_listen,
            tls_cert,
            tls_key,
            mqtt_listen,
            mqtt_tls_listen,
            no_mqtt,
        } => {
            let file = match &config {
                Some(path) => FileConfig::load(path)?,
                None => FileConfig::default(),
            };
            let tls = match (tls_listen, tls_cert, tls_key) {
                (Some(listen), Some(cert), Some(key)) => Some(FileTls { listen, cert, key }),
                _ => None,
            };
            let overrides = Overrides {
                listen,
                data_dir,
                http_listen,
                log_format,
                store,
                tls,
                mqtt_listen,
                mqtt_tls_listen,
                no_mqtt,
            };
            let (options, json_logs) = resolve(file, overrides)?;
            init_logs(json_logs);
            let data_dir = options.data_dir.clone();
            let broker = Broker::start(options)
                .await
                .with_context(|| format!("starting with data dir {}", data_dir.display()))?;
            say(format_args!(
                "tern: listening on {} (native protocol), data in {}",
                broker.local_addr(),
                data_dir.display()
            ));
            if let Some(addr) = broker.tls_addr() {
                say(format_args!("tern: listening on {addr} (TLS)"));
            }
            if let Some(addr) = broker.mqtt_addr() {
                say(format_args!("tern: listening on {addr} (MQTT)"));
            }
            if let Some(addr) = broker.mqtt_tls_addr() {
                say(format_args!("tern: listening on {addr} (MQTT over TLS)"));
            }
            if let Some(addr) = broker.http_addr() {
                say(format_args!("tern: listening on {addr} (HTTP: /healthz /metrics /v1/dispatch)"));
            }
            wait_for_signal().await?;
            say(format_args!("tern: shutting down"));
            broker.shutdown().await?;
        }
        Command::Cert { command: CertCommand::Dev { out_dir, hosts } } => {
            let (cert, key) = tern_broker::tls::write_dev_cert(&out_dir, &hosts)?;
            println!("wrote {} and {} (self-signed, for local use only)", cert.display(), key.display());
        }
        Command::Token { command: TokenCommand::Admin { data_dir } } => {
            let secret = load_or_create_secret(&data_dir)
                .with_context(|| format!("reading the secret in {}", data_dir.display()))?;
            println!("{}", tern_broker::admin::admin_key(&secret));
        }
        Command::Token { command: TokenCommand::Provision { data_dir, user, device } } => {
            let secret = load_or_create_secret(&data_dir)
                .with_context(|| format!("reading the secret in {}", data_dir.display()))?;
            let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + 3600;
            println!("{}", TokenKey::new(&secret).issue(&user, &device, expires).map_err(anyhow::Error::msg)?);
        }
        Command::Token { command: TokenCommand::Issue { user, device, ttl, data_dir } } => {
            let secret = load_or_create_secret(&data_dir)
                .with_context(|| format!("reading the secret in {}", data_dir.display()))?;
            let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() + ttl;
            let token = TokenKey::new(&secret).issue(&user, &device, expires).map_err(anyhow::Error::msg)?;
            println!("{token}");
        }
        Command::Send { conn, to, e2ee, message } => {
            let body = match message {
                Some(m) => m.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    buf
                }
            };
            let client = Client::connect(conn.options()?).await?;
            if e2ee {
                let peer = to.strip_prefix("user/").context("--e2ee sends to a user/{peer} topic")?.to_owned();
                let (mut e2ee, path) = open_e2ee(&conn, client).await?;
                let devices = e2ee.send(&peer, &body).await;
                save(&path, &e2ee.account)?;
                println!("encrypted for {} device(s) of {peer} and your other devices", devices?);
                e2ee.client.close().await;
            } else {
                let ack = client.publish(&to, body).await?;
                println!("stored: conversation {} seq {} msg_id {}", ack.conversation_id, ack.seq, ack.msg_id);
                client.close().await;
            }
        }
        Command::Listen { conn, e2ee, count, subscribe } => {
            let mut client = Client::connect(conn.options()?).await?;
            if !subscribe.is_empty() {
                let filters = subscribe.join(" ");
                subscribe_all(&mut client, subscribe).await?;
                eprintln!("subscribed to {filters}");
            }
            // With a key store (or --e2ee, which creates one and publishes its keys) encrypted
            // messages are decrypted; plain messages print as they are either way.
            let keys = key_store_path(&conn, client.user());
            if !(e2ee || keys.exists()) {
                return listen_plain(client, count).await;
            }
            let (mut e2ee, path) = open_e2ee(&conn, client).await?;
            eprintln!(
                "listening as {}/{} (e2ee keys in {})",
                e2ee.account.identity().user,
                conn.device,
                path.display()
            );
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let Some(m) = e2ee.next_deliver().await else { bail!("connection closed") };
                let (seq, conversation) = (m.seq, m.conversation_id);
                let event = e2ee.handle(m).await;
                save(&path, &e2ee.account)?;
                match event {
                    Ok(None) => continue,
                    Ok(Some(Event::Plain(m))) => println!(
                        "seq={seq} from={}/{} conversation={conversation}: {}",
                        m.sender_user,
                        m.sender_device,
                        String::from_utf8_lossy(&m.payload)
                    ),
                    Ok(Some(Event::Text { from_user, from_device, text })) => println!(
                        "seq={seq} from={from_user}/{from_device} conversation={conversation} (e2ee): {}",
                        String::from_utf8_lossy(&text)
                    ),
                    Ok(Some(Event::Group { group, from_user, from_device, text })) => println!(
                        "seq={seq} from={from_user}/{from_device} group={group} (e2ee): {}",
                        String::from_utf8_lossy(&text)
                    ),
                    Err(e) => eprintln!("seq={seq}: cannot decrypt: {e}"),
                }
                seen += 1;
            }
            e2ee.client.close().await;
        }
    }
    Ok(())
}

/// The key store of this device: `--keys`, or `tern-keys/<user>-<device>.keys`.
fn key_store_path(conn: &Connection, user: &str) -> PathBuf {
    conn.keys.clone().unwrap_or_else(|| PathBuf::from(format!("tern-keys/{user}-{}.keys", conn.device)))
}

/// `tern listen` without end-to-end encryption.
/// SUBSCRIBE and wait for SUBACK; a refused filter is an error that names its reason.
async fn subscribe_all(client: &mut Client, filters: Vec<String>) -> anyhow::Result<()> {
    let sent = filters.clone();
    let id = client.send(Frame::Subscribe(proto::Subscribe { request_id: 0, filters })).await?;
    loop {
        match client.next().await {
            Some(Incoming::Frame(f)) => {
                if let Frame::SubAck(a) = *f {
                    if a.request_id != id {
                        continue;
                    }
                    for (filter, reason) in sent.iter().zip(a.reasons) {
                        if reason != 0 {
                            let name = ReasonCode::from_u32(reason).map_or("unknown reason", ReasonCode::name);
                            bail!("subscribing to {filter} refused: {name}");
                        }
                    }
                    return Ok(());
                }
            }
            Some(_) => {}
            None => bail!("connection closed before SUBACK"),
        }
    }
}

async fn listen_plain(mut client: Client, count: Option<usize>) -> anyhow::Result<()> {
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        match client.next().await {
            Some(Incoming::Message(m)) => {
                seen += 1;
                let topic = if m.qos == 0 { format!(" topic={}", m.topic) } else { String::new() };
                println!(
                    "seq={} from={}/{} conversation={}{topic}: {}",
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
    Ok(())
}

/// This device's E2EE client: the key store, created on first use; the device's public keys
/// are (re-)published every time, so a new or restored broker learns them.
async fn open_e2ee(conn: &Connection, client: Client) -> anyhow::Result<(E2eeClient, PathBuf)> {
    let user = client.user().to_owned();
    let path = key_store_path(conn, &user);
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let (account, created) = load_or_create(&path, &user, &conn.device, seed)?;
    if created {
        eprintln!("created the E2EE key store {}", path.display());
    }
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let mut e2ee = E2eeClient::new(client, account, seed);
    if created {
        save(&path, &e2ee.account)?;
    }
    e2ee.publish_keys().await?;
    Ok((e2ee, path))
}

/// Prints a line for the operator; a closed stdout (`tern serve | head -1`) must not stop the
/// broker, so write errors are ignored.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
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
