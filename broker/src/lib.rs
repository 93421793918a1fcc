//! `tern-broker`: the Tern broker.
//!
//! This crate is a placeholder until the single-node broker issue lands: it builds the `tern`
//! binary, which says so and exits. The broker will drive `tern-codec`'s
//! [`BrokerSession`](tern_codec::session::BrokerSession) machines over tokio sockets.
#![forbid(unsafe_code)]

/// What `tern serve` prints until the broker exists.
pub const NOT_YET: &str =
    "tern: the broker is not implemented yet (see the single-node broker issue); \
the protocol codec is in codec/ and the spec in spec/";
