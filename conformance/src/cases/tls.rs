//! The TLS profile (spec/13-tls.md), against a broker's TLS listener.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::{broker, Case};
use crate::case::{CaseFuture, Feature, Stop};
use crate::check;
use crate::cx::Cx;
use crate::target::{client_config, provider, TlsTarget};

pub(super) const CASES: &[Case] = &[
    broker("tls.version.1-3-only@broker", &["REQ-TLS-001"], "a client offering only TLS 1.2 is refused", tls12_refused)
        .needs(Feature::Tls),
    broker(
        "tls.alpn@broker",
        &["REQ-TLS-002"],
        "ALPN tern/1 is selected, and a client offering only h2 is refused",
        alpn,
    )
    .needs(Feature::Tls),
    broker(
        "tls.suites-and-no-early-data@broker",
        &["REQ-TLS-005"],
        "the negotiated suite and group are in the profile, and resumed connections get no 0-RTT",
        suites,
    )
    .needs(Feature::Tls),
];

fn tls_target(cx: &Cx) -> Result<&TlsTarget, Stop> {
    cx.target.tls.as_ref().ok_or_else(|| Stop::Unsupported("not testing a TLS listener".into()))
}

type TlsResult = Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error>;

async fn handshake(
    cx: &Cx,
    config: rustls::ClientConfig,
    name: ServerName<'static>,
    early: bool,
) -> Result<TlsResult, Stop> {
    let tcp = TcpStream::connect(&cx.target.addr).await.map_err(|e| Stop::Harness(format!("connect: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config)).early_data(early);
    let result = tokio::time::timeout(cx.prompt(), connector.connect(name, tcp))
        .await
        .map_err(|_| crate::violated!("REQ-TLS-001", "TLS handshake did not finish"))?;
    cx.transcript.note(
        "tls",
        format!(
            "handshake: {}",
            match &result {
                Ok(_) => "completed".to_string(),
                Err(e) => format!("failed: {e}"),
            }
        ),
    );
    Ok(result)
}

fn tls12_refused(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let t = tls_target(cx)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .map_err(|e| Stop::Harness(e.to_string()))?
            .with_root_certificates(t.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"tern/1".to_vec()];
        let result = handshake(cx, config, t.server_name.clone(), false).await?;
        check!(result.is_err(), "REQ-TLS-001", "a TLS 1.2-only client completed the handshake");
        Ok(())
    })
}

fn alpn(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        let t = tls_target(cx)?;
        let good = client_config(t.roots.clone(), &[b"tern/1"]).map_err(Stop::Harness)?;
        let stream = handshake(cx, good, t.server_name.clone(), false)
            .await?
            .map_err(|e| crate::violated!("REQ-TLS-002", "handshake offering tern/1 failed: {e}"))?;
        let chosen = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        check!(
            chosen.as_deref() == Some(b"tern/1".as_slice()),
            "REQ-TLS-002",
            "ALPN selected {chosen:?}, expected tern/1"
        );
        let wrong = client_config(t.roots.clone(), &[b"h2"]).map_err(Stop::Harness)?;
        let result = handshake(cx, wrong, t.server_name.clone(), false).await?;
        match result {
            Ok(_) => Err(crate::violated!("REQ-TLS-002", "a client offering only h2 completed the handshake")),
            Err(e) => {
                check!(
                    format!("{e:?}").contains("NoApplicationProtocol"),
                    "REQ-TLS-002",
                    "refused with {e:?}, expected the no_application_protocol alert"
                );
                Ok(())
            }
        }
    })
}

fn suites(cx: &Cx) -> CaseFuture<'_> {
    Box::pin(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let t = tls_target(cx)?;
        let mut config = client_config(t.roots.clone(), &[b"tern/1"]).map_err(Stop::Harness)?;
        config.enable_early_data = true;
        let allowed = ["TLS13_AES_128_GCM_SHA256", "TLS13_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"];
        let mut stream = handshake(cx, config.clone(), t.server_name.clone(), false)
            .await?
            .map_err(|e| Stop::Harness(format!("TLS handshake failed: {e}")))?;
        let conn = stream.get_ref().1;
        let suite = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
        check!(allowed.contains(&suite.as_str()), "REQ-TLS-005", "negotiated cipher suite {suite}");
        let group = conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())).unwrap_or_default();
        check!(group == "X25519", "REQ-TLS-005", "key exchange group {group}, expected X25519 (offered first)");
        // Exchange application data so the broker's session tickets arrive, then resume.
        let connect = cx.connect_frame(&cx.name("tls"), "d1").await?;
        let mut wire = bytes::BytesMut::new();
        tern_codec::encode_frame(&tern_codec::Frame::Connect(connect), &mut wire)
            .map_err(|e| Stop::Harness(format!("{e:?}")))?;
        let _ = stream.write_all(&wire).await;
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(cx.prompt(), stream.read(&mut buf)).await;
        let _ = stream.shutdown().await;
        let resumed = handshake(cx, config, t.server_name.clone(), true)
            .await?
            .map_err(|e| Stop::Harness(format!("resumed TLS handshake failed: {e}")))?;
        check!(!resumed.get_ref().1.is_early_data_accepted(), "REQ-TLS-005", "the broker accepted 0-RTT early data");
        Ok(())
    })
}
