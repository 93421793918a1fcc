//! The context a client-mode case runs in: the shim command, the transcript, and TLS material
//! for playing a TLS broker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{proto, Frame, ReasonCode};

use crate::case::Stop;
use crate::peer::Peer;
use crate::shim::{Shim, ShimTask, ShimTls};
use crate::transcript::Transcript;

/// Everything a client-mode case needs.
pub struct ClientCx {
    /// The shim command (program and leading arguments).
    pub cmd: Vec<String>,
    /// The case being run (passed to the shim).
    pub case_id: &'static str,
    /// The run's seed.
    pub seed: u64,
    /// `--timeout-scale`.
    pub scale: f64,
    /// This case's transcript.
    pub transcript: Transcript,
}

impl ClientCx {
    /// A context for one run of one case.
    pub fn new(cmd: Vec<String>, case_id: &'static str, seed: u64, scale: f64) -> ClientCx {
        ClientCx { cmd, case_id, seed, scale, transcript: Transcript::default() }
    }

    /// `secs` seconds, scaled.
    pub fn wait(&self, secs: f64) -> Duration {
        Duration::from_secs_f64(secs * self.scale)
    }

    /// The default wait for a prompt reaction.
    pub fn prompt(&self) -> Duration {
        self.wait(5.0)
    }

    /// Starts the shim on plain TCP.
    pub async fn start(&self, task: ShimTask) -> Result<Shim, Stop> {
        Shim::start(&self.cmd, self.case_id, &task, None, &self.transcript).await
    }

    /// Starts the shim against a TLS listener presenting a self-signed certificate for
    /// `cert_name`, telling the shim to trust that certificate and verify `server_name`.
    pub async fn start_tls(
        &self,
        task: ShimTask,
        cert_name: &str,
        server_name: &str,
    ) -> Result<(Shim, Arc<rustls::ServerConfig>), Stop> {
        let harness = |e: String| Stop::Harness(format!("TLS setup: {e}"));
        let certified =
            rcgen::generate_simple_self_signed(vec![cert_name.to_string()]).map_err(|e| harness(e.to_string()))?;
        let ca_file = temp_file(self.case_id, "ca.pem");
        std::fs::write(&ca_file, certified.cert.pem()).map_err(|e| harness(e.to_string()))?;
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der())
            .map_err(|e| harness(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(crate::target::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| harness(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .map_err(|e| harness(e.to_string()))?;
        config.alpn_protocols = vec![b"tern/1".to_vec()];
        let config = Arc::new(config);
        let tls = ShimTls { config: config.clone(), ca_file, server_name: server_name.to_string() };
        let shim = Shim::start(&self.cmd, self.case_id, &task, Some(tls), &self.transcript).await?;
        Ok((shim, config))
    }

    /// Accepts the shim's next connection; its absence is a violation of `req`.
    pub async fn accept(&self, shim: &mut Shim, req: &'static str) -> Result<Peer, Stop> {
        let wait = self.wait(15.0);
        shim.accept(wait).await?.ok_or_else(|| Stop::Violation {
            req,
            detail: format!("the client did not connect (or exited) within {:.0} s", wait.as_secs_f64()),
        })
    }

    /// Reads the CONNECT that opens a connection.
    pub async fn read_connect(&self, peer: &mut Peer) -> Result<proto::Connect, Stop> {
        peer.expect(self.prompt(), "REQ-HSK-001", "CONNECT", |f| match f {
            Frame::Connect(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// Accepts a connection, reads CONNECT and answers with `ack` (defaults filled in).
    pub async fn accept_session(&self, shim: &mut Shim, ack: proto::ConnAck) -> Result<(Peer, proto::Connect), Stop> {
        let mut peer = self.accept(shim, "REQ-HSK-001").await?;
        let connect = self.read_connect(&mut peer).await?;
        peer.send(&Frame::ConnAck(ack)).await?;
        Ok((peer, connect))
    }
}

/// A CONNACK accepting a session, with short reconnect backoff so resumption cases are quick.
pub fn connack() -> proto::ConnAck {
    proto::ConnAck {
        reason: ReasonCode::Success as u32,
        version: 1,
        session_id: Bytes::from_static(b"conformance-session"),
        session_present: false,
        keepalive_secs: 60,
        max_message_size: 64 * 1024,
        receive_window: 32,
        last_cid: 0,
        server_time_ms: 1,
        user_id: crate::shim::SHIM_USER.to_string(),
        backoff_min_ms: 10,
        backoff_max_ms: 50,
        inbox_acked_seq: 0,
    }
}

fn temp_file(case_id: &str, name: &str) -> PathBuf {
    let safe: String = case_id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    std::env::temp_dir().join(format!("tern-conformance-{}-{safe}-{name}", std::process::id()))
}
