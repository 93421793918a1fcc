//! The TLS profile from the client side: the runner plays a TLS broker to the shim.

use tern_codec::Frame;

use super::{client, Case};
use crate::case::{CaseFuture, Stop};
use crate::check;
use crate::client_cx::{connack, ClientCx};
use crate::peer::Peer;
use crate::shim::ShimTask;

pub(super) const CASES: &[Case] = &[
    client(
        "tls.sni-alpn-and-verification@client",
        &["REQ-TLS-003", "REQ-TLS-002"],
        "the client sends SNI with the broker's name, offers ALPN tern/1 and completes the handshake",
        sni_alpn,
    ),
    client(
        "tls.wrong-name-refused@client",
        &["REQ-TLS-003"],
        "the client refuses a certificate that does not name the broker",
        wrong_name,
    ),
];

fn connect_task() -> ShimTask {
    ShimTask { action: "connect", ..Default::default() }
}

fn sni_alpn(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut shim, config) = cx.start_tls(connect_task(), "localhost", "localhost").await?;
        let tcp = shim
            .accept_tcp(cx.wait(15.0))
            .await?
            .ok_or_else(|| crate::violated!("REQ-TLS-003", "the client did not connect"))?;
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(|e| crate::violated!("REQ-TLS-003", "no TLS ClientHello: {e}"))?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(str::to_string);
        let alpn: Vec<Vec<u8>> = hello.alpn().map(|a| a.map(<[u8]>::to_vec).collect()).unwrap_or_default();
        cx.transcript.note(
            "tls",
            format!(
                "ClientHello: SNI {sni:?}, ALPN {:?}",
                alpn.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>()
            ),
        );
        check!(sni.as_deref() == Some("localhost"), "REQ-TLS-003", "SNI {sni:?}, expected \"localhost\"");
        check!(alpn.iter().any(|a| a == b"tern/1"), "REQ-TLS-002", "the client did not offer ALPN tern/1");
        let stream =
            start.into_stream(config).await.map_err(|e| crate::violated!("REQ-TLS-003", "handshake failed: {e}"))?;
        let mut p = Peer::new("shim#1", Box::new(stream), cx.transcript.clone());
        cx.read_connect(&mut p).await?;
        p.send(&Frame::ConnAck(connack())).await?;
        shim.expect_success(cx.prompt(), "REQ-TLS-003").await
    })
}

fn wrong_name(cx: &ClientCx) -> CaseFuture<'_> {
    Box::pin(async move {
        let (mut shim, _) = cx.start_tls(connect_task(), "wrong.invalid", "localhost").await?;
        match shim.accept(cx.wait(15.0)).await {
            Ok(Some(mut p)) => {
                // The handshake completed on our side; the client must still not go on.
                let got = p.recv(cx.prompt()).await;
                if let crate::peer::Event::Frame(f) = got {
                    return Err(crate::violated!(
                        "REQ-TLS-003",
                        "the client sent {} to a broker whose certificate names another host",
                        f.frame_type().name()
                    ));
                }
            }
            Ok(None) | Err(Stop::Harness(_)) => {}
            Err(e) => return Err(e),
        }
        shim.expect_failure(cx.prompt(), "REQ-TLS-003").await
    })
}
