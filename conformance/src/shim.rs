//! Client mode: the runner plays the broker and starts the implementation's shim once per case.
//!
//! # The shim contract
//! The shim is run as `SHIM... <case-id> <host:port>` with these environment variables:
//!
//! | variable | meaning |
//! |---|---|
//! | `TERN_ACTION` | what to do: `connect`, `publish`, `receive` or `idle` |
//! | `TERN_USER`, `TERN_DEVICE`, `TERN_TOKEN` | who to be (the runner accepts the token) |
//! | `TERN_TOPIC`, `TERN_COUNT` | `publish`: where and how many messages (`m1`, `m2`, ...) |
//! | `TERN_PACKAGE` | `publish`: `1` to send the messages as one package |
//! | `TERN_PAYLOAD_BYTES` | `publish`: when set, each message (`m1`, `m2`, ...) is padded with `.` to this many bytes |
//! | `TERN_TLS`, `TERN_CA`, `TERN_SERVER_NAME` | `TERN_TLS=1`: connect with TLS, trusting the PEM file `TERN_CA`, verifying `TERN_SERVER_NAME` |
//!
//! Actions: `connect` opens a session and closes it normally; `publish` publishes
//! `TERN_COUNT` QoS 2 messages and waits for every PUBACK (reconnecting and resuming as the
//! client library does); `receive` prints each message handed to the application as a line
//! `MESSAGE <conversation_id> <conversation_seq> <payload>` (a package first prints
//! `PACKAGE <package_id> <count>`), until `TERN_COUNT` messages, then closes; `idle` stays
//! connected until the broker closes the session with NORMAL_DISCONNECT.
//!
//! Exit status: 0 when the action succeeded, 1 when it failed (refused, closed, an error
//! reported to the application), 127 when the shim does not support the action or case.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::case::Stop;
use crate::peer::{Peer, Stream};
use crate::transcript::Transcript;

/// What the runner asks the shim to do.
#[derive(Debug, Clone, Default)]
pub struct ShimTask {
    /// `TERN_ACTION`.
    pub action: &'static str,
    /// `TERN_TOPIC`.
    pub topic: String,
    /// `TERN_COUNT`.
    pub count: u32,
    /// `TERN_PACKAGE`.
    pub package: bool,
    /// `TERN_PAYLOAD_BYTES` (0: not set, the messages are not padded).
    pub payload_bytes: u32,
}

/// How the shim ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ShimExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by a signal or could not be waited for.
    Abnormal(String),
    /// Still running when the wait ended (it was killed).
    Running,
}

/// TLS material for playing a TLS broker.
#[derive(Clone)]
pub struct ShimTls {
    /// The server configuration the runner presents.
    pub config: Arc<rustls::ServerConfig>,
    /// PEM file of the CA the shim is told to trust.
    pub ca_file: std::path::PathBuf,
    /// The name the shim is told to verify.
    pub server_name: String,
}

/// A started shim and the listener it connects to.
pub struct Shim {
    listener: TcpListener,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    transcript: Transcript,
    tls: Option<ShimTls>,
    /// Connections accepted so far.
    pub accepted: usize,
}

/// The user and device every shim plays.
pub const SHIM_USER: &str = "shim-user";
/// See [`SHIM_USER`].
pub const SHIM_DEVICE: &str = "shim-device";

impl Shim {
    /// Binds a listener on 127.0.0.1:0 and starts `cmd <case-id> <addr>` with the task's
    /// environment.
    pub async fn start(
        cmd: &[String],
        case_id: &str,
        task: &ShimTask,
        tls: Option<ShimTls>,
        transcript: &Transcript,
    ) -> Result<Shim, Stop> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| Stop::Harness(format!("cannot listen: {e}")))?;
        let addr = listener.local_addr().map_err(|e| Stop::Harness(e.to_string()))?;
        let (prog, args) = cmd.split_first().ok_or_else(|| Stop::Harness("empty shim command".into()))?;
        let mut command = tokio::process::Command::new(prog);
        command
            .args(args)
            .arg(case_id)
            .arg(addr.to_string())
            .env("TERN_ACTION", task.action)
            .env("TERN_USER", SHIM_USER)
            .env("TERN_DEVICE", SHIM_DEVICE)
            .env("TERN_TOKEN", "conformance-token")
            .env("TERN_TOPIC", &task.topic)
            .env("TERN_COUNT", task.count.to_string())
            .env("TERN_PACKAGE", if task.package { "1" } else { "0" })
            .env("TERN_PAYLOAD_BYTES", task.payload_bytes.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(t) = &tls {
            command.env("TERN_TLS", "1").env("TERN_CA", &t.ca_file).env("TERN_SERVER_NAME", &t.server_name);
        }
        transcript.note("shim", format!("start {cmd:?} {case_id} {addr} action={}", task.action));
        let mut child = command.spawn().map_err(|e| Stop::Harness(format!("cannot start shim {prog}: {e}")))?;
        let (tx, lines) = mpsc::unbounded_channel();
        if let Some(out) = child.stdout.take() {
            let (tx, transcript) = (tx.clone(), transcript.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(out).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    transcript.note("shim", format!("stdout: {line}"));
                    let _ = tx.send(line);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let transcript = transcript.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(err).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    transcript.note("shim", format!("stderr: {line}"));
                }
            });
        }
        Ok(Shim { listener, child, lines, transcript: transcript.clone(), tls, accepted: 0 })
    }

    /// Waits for the shim's next connection (and completes the TLS handshake when playing a TLS
    /// broker). `Ok(None)` when the shim exited, or nothing connected within `wait`.
    pub async fn accept(&mut self, wait: Duration) -> Result<Option<Peer>, Stop> {
        let accepted = tokio::select! {
            // Cancel-safe: an accept that loses the race leaves no connection half-taken.
            r = tokio::time::timeout(wait, self.listener.accept()) => r,
            // The shim exiting ends the wait early (its status stays available).
            _ = self.child.wait() => return Ok(None),
        };
        let Ok(accepted) = accepted else { return Ok(None) };
        let (tcp, _) = accepted.map_err(|e| Stop::Harness(format!("accept: {e}")))?;
        let _ = tcp.set_nodelay(true);
        self.accepted += 1;
        let label = format!("shim#{}", self.accepted);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(t) => match tokio_rustls::TlsAcceptor::from(t.config.clone()).accept(tcp).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    self.transcript.note(&label, format!("TLS handshake failed: {e}"));
                    return Err(Stop::Harness(format!("TLS handshake with the shim failed: {e}")));
                }
            },
        };
        Ok(Some(Peer::new(&label, stream, self.transcript.clone())))
    }

    /// The raw TCP listener, for cases that run the TLS handshake themselves.
    pub async fn accept_tcp(&mut self, wait: Duration) -> Result<Option<tokio::net::TcpStream>, Stop> {
        let accepted = tokio::select! {
            // Cancel-safe, as in `accept`.
            r = tokio::time::timeout(wait, self.listener.accept()) => r,
            _ = self.child.wait() => return Ok(None),
        };
        let Ok(accepted) = accepted else { return Ok(None) };
        self.accepted += 1;
        Ok(Some(accepted.map_err(|e| Stop::Harness(format!("accept: {e}")))?.0))
    }

    /// The next line the shim printed, within `wait`.
    pub async fn line(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.lines.recv()).await.ok().flatten()
    }

    /// Lines printed so far, without waiting.
    pub fn lines_now(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.lines.try_recv().ok()).collect()
    }

    /// Waits up to `wait` for the shim to exit; kills it otherwise.
    pub async fn finish(&mut self, wait: Duration) -> ShimExit {
        let exit = match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(Ok(status)) => status.code().map_or_else(|| ShimExit::Abnormal(status.to_string()), ShimExit::Code),
            Ok(Err(e)) => ShimExit::Abnormal(e.to_string()),
            Err(_) => {
                let _ = self.child.kill().await;
                ShimExit::Running
            }
        };
        self.transcript.note("shim", format!("exit: {exit:?}"));
        exit
    }

    /// Waits for the shim to exit 0; anything else is a violation of `req`.
    pub async fn expect_success(&mut self, wait: Duration, req: &'static str) -> Result<(), Stop> {
        match self.finish(wait).await {
            ShimExit::Code(0) => Ok(()),
            ShimExit::Code(127) => Err(Stop::Unsupported("the shim does not support this case (exit 127)".into())),
            other => Err(Stop::Violation { req, detail: format!("the shim reported failure: {other:?}") }),
        }
    }

    /// Waits for the shim to exit non-zero (the client reported the failure to the
    /// application); exit 0 is a violation of `req`.
    pub async fn expect_failure(&mut self, wait: Duration, req: &'static str) -> Result<(), Stop> {
        match self.finish(wait).await {
            ShimExit::Code(127) => Err(Stop::Unsupported("the shim does not support this case (exit 127)".into())),
            ShimExit::Code(0) => {
                Err(Stop::Violation { req, detail: "the shim reported success where the client must fail".into() })
            }
            _ => Ok(()),
        }
    }
}

/// Runs the self-check: the shim must exit 127 for a case id and action it cannot know.
pub async fn self_check(cmd: &[String], wait: Duration) -> Result<(), String> {
    let transcript = Transcript::default();
    let task = ShimTask { action: "no-such-action", ..Default::default() };
    let mut shim = Shim::start(cmd, "selfcheck.unknown-case@client", &task, None, &transcript)
        .await
        .map_err(|e| format!("{e:?}"))?;
    match shim.finish(wait).await {
        ShimExit::Code(127) => Ok(()),
        other => Err(format!(
            "the shim must exit 127 for an unknown case; it ended with {other:?}\n{}",
            transcript.lines().iter().map(|l| l.decoded.clone()).collect::<Vec<_>>().join("\n")
        )),
    }
}
