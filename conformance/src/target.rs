//! The broker under test and how the runner reaches it: address, optional TLS, the
//! provisioning contract that gives the runner tokens for its test users, and the limits the
//! implementation declares.
//!
//! # Provisioning contract
//! The runner needs a token for each (user, device) it plays. An implementation meets the
//! contract in one of two ways (README, "Running the conformance suite"):
//! - a command: `--provision-cmd 'CMD ARGS'` is run as `CMD ARGS <user> <device>` and prints
//!   the token on the first line of its standard output, exiting 0;
//! - HTTP: `--provision-http http://HOST:PORT` receives `POST /v1/admin/tokens` with body
//!   `{"user":..,"device":..}` and `Authorization: Bearer <--admin-key>`, and answers 200 with
//!   `{"token":".."}`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::case::{Feature, Stop};
use crate::peer::{Peer, Stream};
use crate::transcript::Transcript;

/// Mints a token for (user, device); `Err` carries the reason for the report.
pub type TokenFn = Arc<dyn Fn(&str, &str) -> Result<String, String> + Send + Sync>;

/// How the runner obtains tokens.
#[derive(Clone)]
pub enum Provision {
    /// Run a command with the user and device appended; the token is its first stdout line.
    Command(Vec<String>),
    /// `POST {url}/v1/admin/tokens` with a bearer key.
    Http {
        /// `http://host:port`.
        url: String,
        /// The bearer key.
        key: String,
    },
    /// An in-process function (for embedding the runner in tests).
    Func(TokenFn),
}

impl std::fmt::Debug for Provision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provision::Command(c) => write!(f, "command {c:?}"),
            Provision::Http { url, .. } => write!(f, "http {url}"),
            Provision::Func(_) => write!(f, "in-process function"),
        }
    }
}

impl Provision {
    /// A token for `user`'s `device`.
    pub async fn token(&self, user: &str, device: &str) -> Result<String, Stop> {
        let fail = |e: String| Stop::Harness(format!("provisioning a token for {user}/{device}: {e}"));
        match self {
            Provision::Func(f) => f(user, device).map_err(fail),
            Provision::Command(cmd) => {
                let (prog, args) = cmd.split_first().ok_or_else(|| fail("empty command".into()))?;
                let out = tokio::process::Command::new(prog)
                    .args(args)
                    .arg(user)
                    .arg(device)
                    .output()
                    .await
                    .map_err(|e| fail(format!("cannot run {prog}: {e}")))?;
                if !out.status.success() {
                    return Err(fail(format!(
                        "{prog} exited {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let token = text.lines().next().unwrap_or("").trim().to_string();
                if token.is_empty() {
                    return Err(fail(format!("{prog} printed no token")));
                }
                Ok(token)
            }
            Provision::Http { url, key } => http_token(url, key, user, device).await.map_err(fail),
        }
    }
}

/// A minimal HTTP/1.1 POST (the runner needs nothing more, and no HTTP stack).
async fn http_token(url: &str, key: &str, user: &str, device: &str) -> Result<String, String> {
    let host = url.strip_prefix("http://").ok_or("only http:// provisioning URLs are supported")?;
    let host = host.trim_end_matches('/');
    let body = serde_json::json!({ "user": user, "device": device }).to_string();
    let request = format!(
        "POST /v1/admin/tokens HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(host).await.map_err(|e| format!("connect {host}: {e}"))?;
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("HTTP {}", head.lines().next().unwrap_or("")));
    }
    let json: serde_json::Value = serde_json::from_str(body.trim()).map_err(|e| format!("response body: {e}"))?;
    json.get("token").and_then(|t| t.as_str()).map(str::to_string).ok_or_else(|| "no \"token\" in response".into())
}

/// TLS settings for reaching the broker.
#[derive(Clone)]
pub struct TlsTarget {
    /// Client configuration (trust roots from `--ca`, TLS 1.3, ALPN `tern/1`).
    pub config: Arc<rustls::ClientConfig>,
    /// The name to send as SNI and verify.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// The trust roots, for cases that build their own client configurations.
    pub roots: Arc<rustls::RootCertStore>,
}

/// Limits and feature claims of the implementation under test.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// The write/read fan-out threshold (group size at or below which write fan-out is used).
    pub read_fanout_threshold: Option<usize>,
    /// The retention policy's per-conversation message count, if one is configured.
    pub retention_max_count: Option<u64>,
    /// Rooms are not claimed.
    pub no_rooms: bool,
    /// The E2EE key directory is not claimed.
    pub no_key_directory: bool,
    /// `host:port` of the MQTT listener (spec chapter 15), when MQTT is claimed.
    pub mqtt: Option<String>,
}

impl Declared {
    /// Whether `feature` is claimed.
    pub fn claims(&self, feature: Feature, tls: bool) -> bool {
        match feature {
            Feature::Tls => tls,
            Feature::Rooms => !self.no_rooms,
            Feature::ReadFanout => self.read_fanout_threshold.is_some(),
            Feature::Retention => self.retention_max_count.is_some(),
            Feature::KeyDirectory => !self.no_key_directory,
            Feature::Mqtt => self.mqtt.is_some(),
        }
    }
}

/// The broker under test.
#[derive(Clone)]
pub struct Target {
    /// `host:port` of the native listener (plain TCP, or TLS when `tls` is set).
    pub addr: String,
    /// TLS, when testing the TLS listener.
    pub tls: Option<TlsTarget>,
    /// Where tokens come from.
    pub provision: Provision,
    /// Declared limits and features.
    pub declared: Declared,
}

impl Target {
    /// Opens a transport connection (TCP, then TLS when configured).
    pub async fn open(&self, label: &str, transcript: &Transcript) -> Result<Peer, Stop> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Stop::Harness(format!("cannot connect to {}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|e| Stop::Harness(format!("TLS handshake with {} failed: {e}", self.addr)))?;
                Box::new(stream)
            }
        };
        Ok(Peer::new(label, stream, transcript.clone()))
    }
}

/// The crypto provider every runner-side TLS configuration uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads PEM certificates into a root store.
pub fn roots_from_pem(pem: &[u8]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the CA file".into());
    }
    Ok(roots)
}

/// The runner's client configuration for the profile: TLS 1.3, ALPN `tern/1`.
pub fn client_config(roots: Arc<rustls::RootCertStore>, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Generous bound for setup steps that are not under test.
pub const SETUP_WAIT: Duration = Duration::from_secs(10);
