//! Frames: the fixed 4-byte header, the protobuf body, and their decoder and encoder
//! (spec/02-framing.md, spec/03-frames.md).
//!
//! ```text
//! Frame {
//!   Type (8),
//!   Flags (8) = 0,
//!   Body Length (16),          // big-endian, <= 1396
//!   Body (8 * Body Length),    // canonical protobuf of the type's message
//! }
//! ```

mod validate;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::error::DecodeError;
use crate::limits::{HEADER_LEN, MAX_BODY_LEN};
use crate::proto;

pub use validate::validate;
pub(crate) use validate::validate_deliver;

macro_rules! frame_types {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $wire:literal, $msg:ty, $dir:ident;)*) => {
        /// The type byte of a frame header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $($(#[$doc])* $name = $code,)*
        }

        impl FrameType {
            /// Every defined type.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$name,)*];

            /// Looks up a type byte.
            pub fn from_u8(b: u8) -> Option<Self> {
                match b {
                    $($code => Some(FrameType::$name),)*
                    _ => None,
                }
            }

            /// The spec's name, e.g. `PUBLISH`.
            pub fn name(self) -> &'static str {
                match self { $(FrameType::$name => $wire,)* }
            }

            /// Looks up a type by its spec name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($wire => Some(FrameType::$name),)* _ => None }
            }

            /// Name of the body message in package `tern.v1`, e.g. `Publish`.
            pub fn message_name(self) -> &'static str {
                let path: &'static str = match self { $(FrameType::$name => stringify!($msg),)* };
                path.rsplit(':').next().unwrap_or(path).trim()
            }

            /// Who may send it [REQ-FRM-007].
            pub fn direction(self) -> Direction {
                match self { $(FrameType::$name => Direction::$dir,)* }
            }
        }

        /// A decoded frame: its type and its body message.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Frame {
            $($(#[$doc])* $name($msg),)*
        }

        impl Frame {
            /// The frame's type byte.
            pub fn frame_type(&self) -> FrameType {
                match self { $(Frame::$name(_) => FrameType::$name,)* }
            }

            /// Length of the encoded body.
            pub fn body_len(&self) -> usize {
                match self { $(Frame::$name(m) => m.encoded_len(),)* }
            }

            /// Appends the body's protobuf encoding; `dst` must have room for `body_len()`.
            fn encode_body(&self, dst: &mut impl BufMut) {
                // Encoding into a buffer with enough capacity cannot fail.
                let _ = match self { $(Frame::$name(m) => m.encode(dst),)* };
            }

            /// Decodes a body of the given type (not yet validated).
            fn decode_body(ty: FrameType, body: Bytes) -> Result<Frame, prost::DecodeError> {
                Ok(match ty { $(FrameType::$name => Frame::$name(<$msg>::decode(body)?),)* })
            }
        }
    };
}

/// Which role may send a frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to broker only.
    ToBroker,
    /// Broker to client only.
    ToClient,
    /// Either.
    Both,
}

frame_types! {
    /// Opens a session.
    Connect = 0x01, "CONNECT", proto::Connect, ToBroker;
    /// Answers CONNECT.
    ConnAck = 0x02, "CONNACK", proto::ConnAck, ToClient;
    /// Keepalive probe.
    Ping = 0x03, "PING", proto::Ping, Both;
    /// Keepalive answer.
    Pong = 0x04, "PONG", proto::Ping, Both;
    /// Closes a connection with a reason.
    Disconnect = 0x05, "DISCONNECT", proto::Disconnect, Both;
    /// A message from a client.
    Publish = 0x06, "PUBLISH", proto::Publish, ToBroker;
    /// The broker's outcome for one PUBLISH.
    PubAck = 0x07, "PUBACK", proto::PubAck, ToClient;
    /// A message to a client, numbered in a stream.
    Deliver = 0x08, "DELIVER", proto::Deliver, ToClient;
    /// Cumulative acknowledgement of a stream.
    DeliverAck = 0x09, "DELIVER_ACK", proto::DeliverAck, ToBroker;
    /// A stream has news.
    Notify = 0x0A, "NOTIFY", proto::Notify, ToClient;
    /// Pull a stream from a sync point.
    Sync = 0x0B, "SYNC", proto::Sync, ToBroker;
    /// End of a SYNC answer.
    SyncDone = 0x0C, "SYNC_DONE", proto::SyncDone, ToClient;
    /// Ask for a page of history.
    HistoryRequest = 0x0D, "HISTORY", proto::HistoryRequest, ToBroker;
    /// A page of history.
    HistoryPage = 0x0E, "HISTORY_PAGE", proto::HistoryPage, ToClient;
    /// Subscribe to topic filters.
    Subscribe = 0x0F, "SUBSCRIBE", proto::Subscribe, ToBroker;
    /// Answers SUBSCRIBE.
    SubAck = 0x10, "SUBACK", proto::SubAck, ToClient;
    /// Remove subscriptions.
    Unsubscribe = 0x11, "UNSUBSCRIBE", proto::Unsubscribe, ToBroker;
    /// Answers UNSUBSCRIBE.
    UnsubAck = 0x12, "UNSUBACK", proto::SubAck, ToClient;
    /// A piece of a large body.
    Fragment = 0x13, "FRAGMENT", proto::Fragment, Both;
    /// Read marker.
    ReadMark = 0x14, "READ", proto::ReadMark, ToBroker;
    /// Read receipt.
    Receipt = 0x15, "RECEIPT", proto::Receipt, ToClient;
    /// Presence change.
    Presence = 0x16, "PRESENCE", proto::Presence, ToClient;
    /// A non-message request (groups, keys, unread counts ...).
    Request = 0x20, "REQUEST", proto::Request, ToBroker;
    /// Answers REQUEST.
    Response = 0x21, "RESPONSE", proto::Response, ToClient;
}

impl FrameType {
    /// Whether a body of this type may be split into FRAGMENT frames [REQ-FRG-007].
    pub fn fragmentable(self) -> bool {
        matches!(
            self,
            FrameType::Publish | FrameType::Deliver | FrameType::HistoryPage | FrameType::Request | FrameType::Response
        )
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub frame_type: FrameType,
    /// Body length in bytes.
    pub body_len: usize,
}

/// Parses a header from the first 4 bytes. Checks, in order: length [REQ-FRM-002], type
/// [REQ-FRM-004], flags [REQ-FRM-003]; the length comes first so an oversize frame is refused
/// before anything is buffered.
pub fn parse_header(bytes: [u8; HEADER_LEN]) -> Result<Header, DecodeError> {
    let [ty, flags, hi, lo] = bytes;
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    if body_len > MAX_BODY_LEN {
        return Err(DecodeError::FrameTooLarge(body_len));
    }
    let frame_type = FrameType::from_u8(ty).ok_or(DecodeError::UnknownFrameType(ty))?;
    if flags != 0 {
        return Err(DecodeError::ReservedBits(flags));
    }
    Ok(Header { frame_type, body_len })
}

/// Decodes one frame from the front of `buf`, removing its bytes.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (nothing is consumed). The
/// frame is fully checked: header, canonical body and field rules. FRAGMENT frames come back
/// as [`Frame::Fragment`]; feed them to a [`crate::fragment::Reassembler`].
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut header_bytes = [0u8; HEADER_LEN];
    header_bytes.copy_from_slice(head);
    let header = parse_header(header_bytes)?;
    if buf.len() < HEADER_LEN + header.body_len {
        buf.reserve(HEADER_LEN + header.body_len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(header.body_len).freeze();
    decode_body(header.frame_type, body).map(Some)
}

/// Decodes and checks a body of a known type (an unfragmented body or a reassembled one).
pub fn decode_body(ty: FrameType, body: Bytes) -> Result<Frame, DecodeError> {
    let len = body.len();
    let frame = Frame::decode_body(ty, body.clone()).map_err(|e| DecodeError::Body(e.to_string()))?;
    check_canonical(&frame, &body, len)?;
    validate(&frame)?;
    Ok(frame)
}

/// A body is canonical when re-encoding the decoded message reproduces it byte for byte: this
/// rejects non-minimal varints, explicit default values, repeated or out-of-order fields and
/// unknown fields in one rule [REQ-FRM-005] [REQ-FRM-008].
fn check_canonical(frame: &Frame, body: &[u8], len: usize) -> Result<(), DecodeError> {
    if frame.body_len() != len {
        return Err(DecodeError::NonCanonical);
    }
    let same = if len <= MAX_BODY_LEN {
        // The common case re-encodes on the stack: no allocation per frame.
        let mut scratch = [0u8; MAX_BODY_LEN];
        let mut out: &mut [u8] = &mut scratch[..];
        frame.encode_body(&mut out);
        scratch.get(..len) == Some(body)
    } else {
        let mut out = Vec::with_capacity(len);
        frame.encode_body(&mut out);
        out == body
    };
    if same {
        Ok(())
    } else {
        Err(DecodeError::NonCanonical)
    }
}

/// Appends one whole frame. Fails, writing nothing, when the body does not fit one frame; use
/// [`crate::fragment::Fragmenter`] for bodies that may be larger.
pub fn encode_frame(frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameTooLong> {
    let len = frame.body_len();
    let Ok(len16) = u16::try_from(len) else {
        return Err(FrameTooLong(len));
    };
    if len > MAX_BODY_LEN {
        return Err(FrameTooLong(len));
    }
    dst.reserve(HEADER_LEN + len);
    dst.put_u8(frame.frame_type() as u8);
    dst.put_u8(0);
    dst.put_u16(len16);
    frame.encode_body(dst);
    Ok(())
}

/// The body (given length) does not fit in one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("body of {0} bytes does not fit in one frame")]
pub struct FrameTooLong(pub usize);

/// Encodes a frame's body alone (used by the fragmenter).
pub(crate) fn body_bytes(frame: &Frame) -> Bytes {
    let mut out = BytesMut::with_capacity(frame.body_len());
    frame.encode_body(&mut out);
    out.freeze()
}

#[cfg(test)]
mod tests;
