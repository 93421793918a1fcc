//! `tern serve` configuration: a TOML file, overridden by environment variables, overridden by
//! flags. Every key is optional; what is not set anywhere takes the documented default.
//!
//! ```toml
//! listen = "0.0.0.0:7420"
//! data_dir = "/var/lib/tern"
//! store = "fjall"           # or "sled", "redb" (default: what the data dir holds)
//! http_listen = "127.0.0.1:7480"
//! log_format = "json"
//! write_fanout_threshold = 500
//! receipt_threshold = 100
//! max_connections = 19000
//! resume_grace_secs = 120
//! publish_rate_per_sec = 1000
//! publish_burst = 2000
//! retention_max_age_secs = 7776000   # 90 days
//! retention_max_count = 100000
//! mqtt = true                        # the MQTT listener for IoT devices (spec chapter 15)
//! mqtt_listen = "127.0.0.1:1883"
//! mqtt_tls_listen = "0.0.0.0:8883"   # uses the [tls] certificate
//!
//! [tls]
//! listen = "0.0.0.0:7421"
//! cert = "/etc/tern/cert.pem"
//! key = "/etc/tern/key.pem"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::{BrokerOptions, TlsOptions};

/// Default native protocol address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";
/// Default HTTP operations address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7480";
/// Default MQTT address (spec chapter 15).
pub const DEFAULT_MQTT_LISTEN: &str = "127.0.0.1:1883";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "tern-data";

/// The file's keys; unknown keys are an error, so a typo does not go unnoticed.
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Native protocol listener.
    pub listen: Option<SocketAddr>,
    /// Store and secret directory.
    pub data_dir: Option<PathBuf>,
    /// Store engine: `fjall`, `sled` or `redb` (default: the one the data directory holds, fjall
    /// for a new one).
    pub store: Option<String>,
    /// Operations HTTP listener.
    pub http_listen: Option<SocketAddr>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Groups up to this size use write fan-out.
    pub write_fanout_threshold: Option<usize>,
    /// Conversations up to this size get read receipts.
    pub receipt_threshold: Option<usize>,
    /// Most simultaneous connections.
    pub max_connections: Option<usize>,
    /// How long a dropped session stays resumable.
    pub resume_grace_secs: Option<u64>,
    /// PUBLISHes per second one connection may sustain.
    pub publish_rate_per_sec: Option<f64>,
    /// PUBLISHes one connection may send in a burst.
    pub publish_burst: Option<f64>,
    /// Remove messages older than this many seconds (per conversation).
    pub retention_max_age_secs: Option<u64>,
    /// Keep at most this many messages per conversation.
    pub retention_max_count: Option<u64>,
    /// The TLS listener.
    pub tls: Option<FileTls>,
    /// Whether the MQTT listener runs [default: true].
    pub mqtt: Option<bool>,
    /// MQTT listener address.
    pub mqtt_listen: Option<SocketAddr>,
    /// MQTT-over-TLS listener address (off unless set).
    pub mqtt_tls_listen: Option<SocketAddr>,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Address.
    pub listen: SocketAddr,
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// What flags and environment variables said (`None`: not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / `TERN_LISTEN`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` / `TERN_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--http-listen` / `TERN_HTTP_LISTEN`.
    pub http_listen: Option<SocketAddr>,
    /// `--log-format`.
    pub log_format: Option<String>,
    /// `--store`.
    pub store: Option<String>,
    /// `--tls-listen`, `--tls-cert`, `--tls-key`.
    pub tls: Option<FileTls>,
    /// `--mqtt-listen` / `TERN_MQTT_LISTEN`.
    pub mqtt_listen: Option<SocketAddr>,
    /// `--mqtt-tls-listen` / `TERN_MQTT_TLS_LISTEN`.
    pub mqtt_tls_listen: Option<SocketAddr>,
    /// `--no-mqtt`.
    pub no_mqtt: bool,
}

/// The resolved settings: flags over environment over file over defaults.
pub fn resolve(file: FileConfig, over: Overrides) -> anyhow::Result<(BrokerOptions, bool)> {
    let parse = |s: &str| s.parse::<SocketAddr>().context("built-in default address");
    let listen = over.listen.or(file.listen).map_or_else(|| parse(DEFAULT_LISTEN), Ok)?;
    let data_dir = over.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let mut options = BrokerOptions::new(listen, data_dir);
    if let Some(engine) = over.store.or(file.store) {
        options.engine = Some(engine.parse().map_err(anyhow::Error::msg)?);
    }
    options.http = Some(over.http_listen.or(file.http_listen).map_or_else(|| parse(DEFAULT_HTTP_LISTEN), Ok)?);
    if let Some(t) = over.tls.or(file.tls) {
        options.tls = Some(TlsOptions { listen: t.listen, cert: t.cert, key: t.key });
    }
    if !over.no_mqtt && file.mqtt != Some(false) {
        options.mqtt_listen =
            Some(over.mqtt_listen.or(file.mqtt_listen).map_or_else(|| parse(DEFAULT_MQTT_LISTEN), Ok)?);
        options.mqtt_tls_listen = over.mqtt_tls_listen.or(file.mqtt_tls_listen);
    }
    if let Some(n) = file.write_fanout_threshold {
        options.write_fanout_threshold = n;
    }
    if let Some(n) = file.receipt_threshold {
        options.receipt_threshold = n;
    }
    if let Some(n) = file.max_connections {
        options.max_connections = n;
    }
    if let Some(s) = file.resume_grace_secs {
        options.resume_grace = Duration::from_secs(s);
    }
    if let Some(r) = file.publish_rate_per_sec {
        options.publish_rate.0 = r;
    }
    if let Some(b) = file.publish_burst {
        options.publish_rate.1 = b;
    }
    options.retention.max_age = file.retention_max_age_secs.map(Duration::from_secs);
    options.retention.max_count = file.retention_max_count;
    let json = match over.log_format.or(file.log_format).as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => anyhow::bail!("log_format must be \"text\" or \"json\", not {other:?}"),
    };
    Ok((options, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: FileConfig = toml::from_str(
            r#"
            listen = "0.0.0.0:9000"
            data_dir = "/srv/tern"
            write_fanout_threshold = 50
            log_format = "json"
            [tls]
            listen = "0.0.0.0:9001"
            cert = "c.pem"
            key = "k.pem"
            "#,
        )
        .unwrap();
        let over = Overrides { listen: Some("127.0.0.1:1".parse().unwrap()), ..Overrides::default() };
        let (o, json) = resolve(file, over).unwrap();
        assert_eq!(o.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(o.data_dir, PathBuf::from("/srv/tern"));
        assert_eq!(o.write_fanout_threshold, 50);
        assert_eq!(o.http, Some(DEFAULT_HTTP_LISTEN.parse().unwrap()));
        assert_eq!(o.tls.unwrap().listen, "0.0.0.0:9001".parse().unwrap());
        assert!(json);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<FileConfig>("listn = \"x\"").is_err());
        let file = FileConfig { log_format: Some("yaml".into()), ..FileConfig::default() };
        assert!(resolve(file, Overrides::default()).is_err());
    }
}
