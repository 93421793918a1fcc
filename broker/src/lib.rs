//! `tern-broker`: the Tern broker, its tokio client library and the `tern` command.
//!
//! The broker only moves bytes, timers and channels; every protocol rule lives in
//! `tern-codec`'s sans-IO machines, which it drives.
//!
//! # Layout
//! - [`config`]: `tern serve` settings (TOML file, environment, flags).
//! - [`server`]: listener, shared state, the router from users to live connections.
//! - `connection`: one task per connection, driving a `BrokerSession`.
//! - `mqtt`: MQTT 3.1.1/5 connections for IoT devices (spec chapter 15; feature `mqtt`).
//! - `http`, [`metrics`], [`admin`]: `/healthz`, `/metrics`, `/v1/dispatch`, `/v1/admin/`.
//! - [`store`]: the embedded sled store (messages, inboxes, sync points, dedup ledger).
//! - [`token`]: HMAC-SHA256 auth tokens.
//! - [`tls`]: the TLS 1.3 profile (rustls, ring) and development certificates.
//! - [`client`]: the tokio client library (`tern send`/`tern listen` and the tests use it).
#![forbid(unsafe_code)]

pub mod admin;
pub mod client;
pub mod config;
mod connection;
pub mod e2ee;
mod http;
mod members;
pub mod metrics;
#[cfg(feature = "mqtt")]
mod mqtt;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;

pub use server::{Broker, BrokerOptions, TlsOptions};

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sleeps until `deadline`, or forever when there is none (a `select!` branch that never fires).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// `n` copies of `value` for `n` recipients: clones for all but the last, which gets `value`
/// itself (a message fanned out to one recipient is never copied).
pub(crate) fn copies<T: Clone>(value: T, n: usize) -> impl Iterator<Item = T> {
    let mut value = Some(value);
    (0..n).filter_map(move |i| if i + 1 == n { value.take() } else { value.clone() })
}

#[cfg(test)]
mod tests {
    use super::copies;
    use std::rc::Rc;

    #[test]
    fn copies_moves_the_value_into_the_last_and_clones_for_the_others() {
        let shared = Rc::new(());
        let out: Vec<Rc<()>> = copies(shared.clone(), 3).collect();
        assert_eq!(out.len(), 3);
        // The three copies and our own handle: the one passed in was moved, not cloned again.
        assert_eq!(Rc::strong_count(&shared), 4);
        drop(out);
        let moved: Vec<Rc<()>> = copies(shared.clone(), 1).collect();
        assert_eq!(Rc::strong_count(&shared), 2);
        drop(moved);
        assert_eq!(copies(shared.clone(), 0).count(), 0);
        assert_eq!(Rc::strong_count(&shared), 1, "nobody to receive it: dropped");
    }
}
