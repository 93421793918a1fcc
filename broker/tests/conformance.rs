//! The conformance suite (`tern-conformance`) against this repository's broker, over TCP and
//! TLS, and against the Rust client library through its shim; and proof that the suite catches
//! planted faults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{start_with, TestBroker};
use tern_broker::TlsOptions;
use tern_conformance::case::Outcome;
use tern_conformance::runner::{self, Report, RunOptions, Subject};
use tern_conformance::target::{client_config, roots_from_pem, Declared, Provision, Target, TlsTarget};
use tern_conformance::{cases, requirement_index};

/// Fan-out threshold and retention of the broker under test, declared to the runner.
const THRESHOLD: usize = 3;
const RETENTION: u64 = 20;

async fn broker(tls: Option<&std::path::Path>, retention: Option<u64>) -> TestBroker {
    let certs = tls.map(|dir| tern_broker::tls::write_dev_cert(dir, &["localhost".to_string()]).unwrap());
    start_with(|o| {
        o.write_fanout_threshold = THRESHOLD;
        o.retention.max_count = retention;
        o.compaction_interval = Duration::from_millis(100);
        o.mqtt_listen = Some("127.0.0.1:0".parse().unwrap());
        if let Some((cert, key)) = certs {
            o.tls = Some(TlsOptions { listen: "127.0.0.1:0".parse().unwrap(), cert, key });
        }
    })
    .await
}

fn declared(retention: Option<u64>) -> Declared {
    Declared { read_fanout_threshold: Some(THRESHOLD), retention_max_count: retention, ..Declared::default() }
}

fn in_process_tokens(t: &TestBroker) -> Provision {
    let secret = tern_broker::token::load_or_create_secret(t.dir.path()).unwrap();
    let key = tern_broker::token::TokenKey::new(&secret);
    Provision::Func(Arc::new(move |user: &str, device: &str| {
        let expires = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
        key.issue(user, device, expires)
    }))
}

/// Lists every non-PASS case with its transcript, for the assertion message.
fn failures(report: &Report) -> String {
    report
        .cases
        .iter()
        .filter(|c| c.outcome != Outcome::Pass)
        .map(tern_conformance::report::transcript_text)
        .collect::<Vec<_>>()
        .join("\n")
}

async fn run(subject: Subject, tests: &[&str]) -> Report {
    let opts = RunOptions {
        tests: tests.iter().map(|s| s.to_string()).collect(),
        timeout_scale: 2.0,
        ..RunOptions::default()
    };
    runner::run(&cases::all(), requirement_index(), &subject, &opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_passes_against_the_broker_over_tcp() {
    let t = broker(None, None).await;
    let mut claims = declared(None);
    claims.mqtt = t.broker.mqtt_addr().map(|a| a.to_string());
    let target = Target {
        addr: t.broker.local_addr().to_string(),
        tls: None,
        provision: in_process_tokens(&t),
        declared: claims,
    };
    let report = run(Subject::Broker(Arc::new(target)), &[]).await;
    assert_eq!(report.exit_code, 0, "{}", failures(&report));
    let unsupported: Vec<&str> =
        report.cases.iter().filter(|c| c.outcome == Outcome::Unsupported).map(|c| c.id.as_str()).collect();
    assert!(unsupported.iter().all(|id| id.starts_with("tls.") || id.starts_with("retention.")), "{unsupported:?}");
    assert_eq!(unsupported.len(), 4, "{unsupported:?}");
    assert!(report.cases.len() >= 50, "{} cases ran", report.cases.len());

    // Retention changes what old messages look like, so its case runs on a broker of its own.
    let t = broker(None, Some(RETENTION)).await;
    let target = Target {
        addr: t.broker.local_addr().to_string(),
        tls: None,
        provision: in_process_tokens(&t),
        declared: declared(Some(RETENTION)),
    };
    let report = run(Subject::Broker(Arc::new(target)), &["retention.*"]).await;
    assert_eq!(report.exit_code, 0, "{}", failures(&report));
    assert_eq!(report.summary.get("PASS"), Some(&1), "{}", failures(&report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_passes_against_the_broker_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let t = broker(Some(certs.path()), None).await;
    let pem = std::fs::read(certs.path().join("cert.pem")).unwrap();
    let roots = Arc::new(roots_from_pem(&pem).unwrap());
    let tls = TlsTarget {
        config: Arc::new(client_config(roots.clone(), &[b"tern/1"]).unwrap()),
        server_name: rustls::pki_types::ServerName::try_from("localhost").unwrap(),
        roots,
    };
    // Tokens through the documented command contract: `tern token provision ... <user> <device>`.
    let data_dir = t.dir.path().to_str().unwrap().to_string();
    let provision = Provision::Command(vec![
        env!("CARGO_BIN_EXE_tern").into(),
        "token".into(),
        "provision".into(),
        "--data-dir".into(),
        data_dir,
    ]);
    let target =
        Target { addr: t.broker.tls_addr().unwrap().to_string(), tls: Some(tls), provision, declared: declared(None) };
    let report = run(Subject::Broker(Arc::new(target)), &[]).await;
    assert_eq!(report.exit_code, 0, "{}", failures(&report));
    let passed: Vec<&str> = report.cases.iter().filter(|c| c.outcome == Outcome::Pass).map(|c| c.id.as_str()).collect();
    for id in ["tls.version.1-3-only@broker", "tls.alpn@broker", "tls.suites-and-no-early-data@broker"] {
        assert!(passed.contains(&id), "{id} did not pass:\n{}", failures(&report));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_suite_passes_against_the_rust_client_shim() {
    let shim = vec![env!("CARGO_BIN_EXE_tern-conformance-shim").to_string()];
    tern_conformance::shim::self_check(&shim, Duration::from_secs(30)).await.unwrap();
    let report = run(Subject::Client(shim), &[]).await;
    assert_eq!(report.exit_code, 0, "{}", failures(&report));
    let passed = report.cases.iter().filter(|c| c.outcome == Outcome::Pass).count();
    assert_eq!(passed, report.cases.len(), "{}", failures(&report));
    assert!(report.cases.len() >= 15, "{} client cases ran", report.cases.len());
}

/// A fault planted between the runner and a correct broker, by a relaying proxy.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Swallows any client frame announcing more than 1396 body bytes and keeps the connection
    /// open: as if the broker accepted a 1401-byte frame.
    AcceptsOversize,
    /// Gives every repeated PUBACK for a cid a new msg_id and seq: as if the broker stored the
    /// retransmitted PUBLISH again.
    StoresRetransmissionTwice,
}

/// Splits whole frames off `buf` by their headers.
fn whole_frames(buf: &mut bytes::BytesMut) -> Vec<bytes::BytesMut> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if buf.len() < len {
            break;
        }
        out.push(buf.split_to(len));
    }
    out
}

async fn proxy(upstream: std::net::SocketAddr, fault: Fault) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                let mut skip = 0usize;
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match cr.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let drop = skip.min(buf.len());
                    let _ = buf.split_to(drop);
                    skip -= drop;
                    if fault == Fault::AcceptsOversize && buf.len() >= 4 {
                        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                        if len > 1396 {
                            let have = buf.len().min(4 + len);
                            let _ = buf.split_to(have);
                            skip = 4 + len - have;
                            continue;
                        }
                    }
                    for f in whole_frames(&mut buf) {
                        if sw.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = sw.shutdown().await;
            });
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                let mut seen = std::collections::HashSet::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match sr.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    for mut f in whole_frames(&mut buf) {
                        if fault == Fault::StoresRetransmissionTwice {
                            if let Ok(Some(tern_codec::Frame::PubAck(mut a))) = tern_codec::decode_frame(&mut f.clone())
                            {
                                if !seen.insert(a.cid) {
                                    a.msg_id += 1000;
                                    a.seq += 1;
                                    f.clear();
                                    tern_codec::encode_frame(&tern_codec::Frame::PubAck(a), &mut f).unwrap();
                                }
                            }
                        }
                        if cw.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_faults_are_caught_by_the_cases_that_target_them() {
    let t = broker(None, None).await;
    for (fault, case) in [
        (Fault::AcceptsOversize, "framing.oversize.1401-bytes@broker"),
        (Fault::StoresRetransmissionTwice, "qos.duplicate-cid.same-puback@broker"),
    ] {
        let addr = proxy(t.broker.local_addr(), fault).await;
        let target =
            Target { addr: addr.to_string(), tls: None, provision: in_process_tokens(&t), declared: declared(None) };
        let target = Subject::Broker(Arc::new(target));
        let opts =
            RunOptions { tests: vec![case.into(), "keepalive.ping-pong@broker".into()], ..RunOptions::default() };
        let report = runner::run(&cases::all(), requirement_index(), &target, &opts).await;
        assert_eq!(report.exit_code, 1, "{case}: {}", failures(&report));
        assert_eq!(report.verdict, "NON_CONFORMANT");
        let outcome = |id: &str| report.cases.iter().find(|c| c.id == id).map(|c| c.outcome);
        assert_eq!(outcome(case), Some(Outcome::Fail), "{}", failures(&report));
        // The proxy is otherwise faithful: an unrelated case still passes through it.
        assert_eq!(outcome("keepalive.ping-pong@broker"), Some(Outcome::Pass), "{}", failures(&report));
        let failed = report.cases.iter().find(|c| c.id == case).unwrap();
        assert!(failed.transcript.as_ref().is_some_and(|t| t.iter().any(|l| !l.hex.is_empty())), "no wire transcript");

        // Declaring the deviation makes the run conformant, and the entry is not stale.
        let mut opts = opts.clone();
        opts.expectations = tern_conformance::expectations::Expectations::parse(&format!(
            "[[deviation]]\ncase = \"{case}\"\nreason = \"planted fault\"\n"
        ))
        .unwrap();
        let report = runner::run(&cases::all(), requirement_index(), &target, &opts).await;
        assert_eq!(report.exit_code, 0, "{}", failures(&report));
        assert!(report.stale_expectations.is_empty());
    }

    // Against the correct broker, the same expectation is reported stale.
    let target = Target {
        addr: t.broker.local_addr().to_string(),
        tls: None,
        provision: in_process_tokens(&t),
        declared: declared(None),
    };
    let opts = RunOptions {
        tests: vec!["framing.oversize.1401-bytes@broker".into()],
        expectations: tern_conformance::expectations::Expectations::parse(
            "[[deviation]]\ncase = \"framing.oversize.*\"\nreason = \"x\"\n[[deviation]]\ncase = \"no.such.case\"\nreason = \"y\"\n",
        )
        .unwrap(),
        ..RunOptions::default()
    };
    let report = runner::run(&cases::all(), requirement_index(), &Subject::Broker(Arc::new(target)), &opts).await;
    assert_eq!(report.exit_code, 0);
    assert_eq!(report.stale_expectations, vec!["framing.oversize.*".to_string()]);
    assert_eq!(report.unmatched_expectations, vec!["no.such.case".to_string()]);
}
