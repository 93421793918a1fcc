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
//!
//! # Example
//!
//! Encoding and decoding one frame (PING, nonce 7: the first vector of
//! `spec/vectors/frames/frame_codec_test.json` for PING):
//!
//! ```
//! use bytes::BytesMut;
//! use tern_codec::{decode_frame, encode_frame, proto, Frame, ReasonCode};
//!
//! let mut wire = BytesMut::new();
//! encode_frame(&Frame::Ping(proto::Ping { nonce: 7 }), &mut wire).unwrap();
//! assert_eq!(&wire[..], &[0x03, 0x00, 0x00, 0x02, 0x08, 0x07]);
//!
//! // Incomplete input is not an error: nothing is consumed until the frame is whole.
//! let mut partial = BytesMut::from(&wire[..3]);
//! assert_eq!(decode_frame(&mut partial), Ok(None));
//!
//! assert_eq!(decode_frame(&mut wire), Ok(Some(Frame::Ping(proto::Ping { nonce: 7 }))));
//!
//! // A header announcing a 1401-byte frame is refused before the body is read.
//! let mut oversize = BytesMut::from(&[0x06, 0x00, 0x05, 0x75][..]);
//! let err = decode_frame(&mut oversize).unwrap_err();
//! assert_eq!(err.reason(), ReasonCode::FrameTooLarge);
//! assert_eq!(err.requirement().0, "REQ-FRM-002");
//! ```
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
