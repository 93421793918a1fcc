//! The three error classes of STYLE.md: malformed bytes, protocol violations, API misuse.

use crate::reason::ReasonCode;

/// A requirement ID from `spec/requirements.toml`, e.g. `REQ-FRM-002`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReqId(pub &'static str);

impl std::fmt::Display for ReqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Bytes that do not form a valid frame. Always fatal for the connection: the receiver sends
/// DISCONNECT with [`DecodeError::reason`] and stops reading [REQ-FRM-010].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announced a body longer than fits in 1400 bytes.
    #[error("frame body of {0} bytes exceeds the 1396-byte limit")]
    FrameTooLarge(usize),
    /// The type byte names no frame of this version.
    #[error("unknown frame type 0x{0:02X}")]
    UnknownFrameType(u8),
    /// The flags byte is not zero.
    #[error("reserved flag bits set: 0x{0:02X}")]
    ReservedBits(u8),
    /// The body is not a protobuf encoding of the frame's message.
    #[error("body does not parse: {0}")]
    Body(String),
    /// The body parses but is not its canonical encoding.
    #[error("body is not canonically encoded")]
    NonCanonical,
    /// A field violates a rule of its frame.
    #[error("invalid field `{field}`: {why} [{req}]")]
    InvalidField {
        /// Field path, e.g. `publish.topic`.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
        /// The requirement broken.
        req: ReqId,
    },
}

impl DecodeError {
    /// The reason code to send in DISCONNECT.
    pub fn reason(&self) -> ReasonCode {
        match self {
            DecodeError::FrameTooLarge(_) => ReasonCode::FrameTooLarge,
            DecodeError::UnknownFrameType(_) => ReasonCode::UnknownFrameType,
            DecodeError::ReservedBits(_) => ReasonCode::ReservedBitsSet,
            DecodeError::Body(_) => ReasonCode::MalformedFrame,
            DecodeError::NonCanonical => ReasonCode::NonCanonicalEncoding,
            DecodeError::InvalidField { .. } => ReasonCode::InvalidField,
        }
    }

    /// The requirement the input broke.
    pub fn requirement(&self) -> ReqId {
        match self {
            DecodeError::FrameTooLarge(_) => ReqId("REQ-FRM-002"),
            DecodeError::UnknownFrameType(_) => ReqId("REQ-FRM-004"),
            DecodeError::ReservedBits(_) => ReqId("REQ-FRM-003"),
            DecodeError::Body(_) => ReqId("REQ-FRM-006"),
            DecodeError::NonCanonical => ReqId("REQ-FRM-005"),
            DecodeError::InvalidField { req, .. } => *req,
        }
    }
}

/// A well-formed frame that is illegal now. Fatal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail} [{req}]")]
pub struct ProtocolViolation {
    /// The requirement broken.
    pub req: ReqId,
    /// The reason code to send in DISCONNECT.
    pub reason: ReasonCode,
    /// What happened, for logs.
    pub detail: String,
}

impl ProtocolViolation {
    pub(crate) fn new(req: &'static str, reason: ReasonCode, detail: impl Into<String>) -> Self {
        ProtocolViolation { req: ReqId(req), reason, detail: detail.into() }
    }
}

/// Any error that ends a connection because of what the peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Bytes that do not parse.
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// A frame illegal in the current state.
    #[error(transparent)]
    Violation(#[from] ProtocolViolation),
}

impl PeerError {
    /// The reason code to send in DISCONNECT.
    pub fn reason(&self) -> ReasonCode {
        match self {
            PeerError::Malformed(e) => e.reason(),
            PeerError::Violation(v) => v.reason,
        }
    }

    /// The requirement the peer broke.
    pub fn requirement(&self) -> ReqId {
        match self {
            PeerError::Malformed(e) => e.requirement(),
            PeerError::Violation(v) => v.req,
        }
    }
}

/// The local caller used the API wrongly; nothing was sent and no state changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The message exceeds the peer's negotiated `max_message_size`.
    #[error("message of {size} bytes exceeds the negotiated maximum of {max}")]
    MessageTooLarge {
        /// Encoded body size.
        size: usize,
        /// Negotiated maximum.
        max: usize,
    },
    /// A field value the protocol forbids (for example an invalid topic).
    #[error("invalid argument: {0}")]
    InvalidArgument(#[from] DecodeError),
    /// The operation needs an established session.
    #[error("not connected")]
    NotConnected,
    /// A package must have between 1 and 32 members.
    #[error("a package needs 1..={max} members, got {got}")]
    PackageSize {
        /// Members given.
        got: usize,
        /// Largest allowed.
        max: usize,
    },
    /// The frame type cannot be sent by this role.
    #[error("frame type {0} cannot be sent by this role")]
    WrongDirection(&'static str),
    /// `connect` was called while a link is still open.
    #[error("a link is already open")]
    LinkOpen,
    /// QoS must be 0, 1 or 2 (and 1 or 2 in a package).
    #[error("invalid qos {0}")]
    InvalidQos(u32),
    /// `ack_publish` named a cid that is not waiting for an outcome.
    #[error("cid {0} is not waiting for an outcome")]
    NotAwaitingOutcome(u64),
}
