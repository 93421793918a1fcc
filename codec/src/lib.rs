//! `tern-codec`: the sans-IO implementation of the Tern protocol (`spec/`).
//!
//! Nothing here does I/O, reads a clock or draws randomness: time is an argument (`now`) and
//! randomness is an injected [`rand_core::RngCore`]. The broker, the client library and the
//! conformance suite all speak through this crate.
//!
//! # Layout
//! - [`frame`]: the 4-byte header, protobuf bodies, decode/encode and field rules.
//! - [`fragment`]: splitting bodies over 1396 bytes into FRAGMENT frames and reassembling them.
//! - [`delivery`]: the ordered receiver (dedup, gap detection), the retransmitting sender and
//!   the package reorder buffer.
//! - [`session`]: the client and broker session machines (handshake, keepalive, resume).
//! - [`timer`]: a hashed timing wheel for scheduling millions of session deadlines in O(1).
//! - [`reason`], [`error`], [`limits`], [`ids`]: the registry, error classes, limits and
//!   identifier rules shared by all of the above.
#![forbid(unsafe_code)]

pub mod delivery;
pub mod error;
pub mod fragment;
pub mod frame;
pub mod ids;
pub mod limits;
pub mod reason;
pub mod session;
pub mod timer;

/// Generated protobuf messages of `spec/proto/tern.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/tern.v1.rs"));
}

/// The encoded `FileDescriptorSet` of `spec/proto/tern.proto`, for decoding bodies by
/// reflection (JSON test vectors, conformance transcripts).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tern.bin"));

pub use error::{ApiError, DecodeError, PeerError, ProtocolViolation, ReqId};
pub use frame::{decode_frame, encode_frame, Frame, FrameType};
pub use reason::{ReasonClass, ReasonCode};
