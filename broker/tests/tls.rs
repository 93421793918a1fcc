//! The TLS listener: a message over TLS 1.3 with ALPN `tern/1`, certificate verification, and
//! no plaintext on the TLS port.
// Test code: a panic is how it reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::{next_message, start_with};
use rustls::pki_types::ServerName;
use tern_broker::client::{Client, ClientError};
use tern_broker::TlsOptions;

#[tokio::test]
async fn messages_flow_over_tls_and_plaintext_is_refused_on_the_tls_port() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = tern_broker::tls::write_dev_cert(certs.path(), &["localhost".to_string()]).unwrap();
    let t =
        start_with(|o| o.tls = Some(TlsOptions { listen: "127.0.0.1:0".parse().unwrap(), cert: cert.clone(), key }))
            .await;
    let tls_addr = t.broker.tls_addr().unwrap();
    let client_config = tern_broker::tls::client_config(&cert).unwrap();
    let over_tls = |user: &str, device: &str| {
        let mut o = t.options(user, device);
        o.addr = tls_addr;
        o.tls = Some((ServerName::try_from("localhost").unwrap(), client_config.clone()));
        o
    };
    let alice = Client::connect(over_tls("alice", "phone")).await.unwrap();
    let mut bob = Client::connect(over_tls("bob", "laptop")).await.unwrap();
    alice.publish("user/bob", "sealed").await.unwrap();
    assert_eq!(&next_message(&mut bob).await.payload[..], b"sealed");

    // The wrong server name fails verification, and there is no fallback to plain TCP.
    let mut wrong = over_tls("carol", "phone");
    wrong.tls = Some((ServerName::try_from("tern.example").unwrap(), client_config.clone()));
    assert!(matches!(Client::connect(wrong).await, Err(ClientError::Io(_))));

    // A plaintext client on the TLS port never gets a session.
    let mut plain = t.options("carol", "phone");
    plain.addr = tls_addr;
    assert!(Client::connect(plain).await.is_err());
}
