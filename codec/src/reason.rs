//! The reason-code registry (spec/11-reason-codes.md): one byte-sized code space shared by
//! every frame that reports an outcome, partitioned into classes by range.

/// Who or what a reason code blames, derived from its range [REQ-ERR-001].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReasonClass {
    /// 0x00..=0x0F: the operation succeeded, possibly with a note.
    Success,
    /// 0x80..=0x8F: bytes that do not parse as a frame.
    Malformed,
    /// 0x90..=0x9F: a well-formed frame that is illegal in the current state.
    Protocol,
    /// 0xA0..=0xAF: authentication, authorisation and moderation.
    Auth,
    /// 0xB0..=0xBF: a limit was exceeded.
    Limit,
    /// 0xC0..=0xCF: a condition of the server, not of the client's input.
    Server,
    /// 0xD0..=0xDF: a request that was understood but cannot be carried out.
    Request,
    /// Any other value: unassigned in this version.
    Unassigned,
}

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $wire:literal;)*) => {
        /// A reason code as carried on the wire in `reason` fields.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// Every assigned code, in numeric order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$name,)*];

            /// Looks up an assigned code.
            pub fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $($value => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }

            /// The registry name, e.g. `FRAME_TOO_LARGE`.
            pub fn name(self) -> &'static str {
                match self {
                    $(ReasonCode::$name => $wire,)*
                }
            }

            /// Looks up a code by its registry name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($wire => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    /// The operation succeeded.
    Success = 0x00, "SUCCESS";
    /// A PUBLISH repeated a cid already stored; the original outcome follows.
    Duplicate = 0x01, "DUPLICATE";
    /// A frame could not be parsed.
    MalformedFrame = 0x80, "MALFORMED_FRAME";
    /// A frame header announced more than 1400 bytes.
    FrameTooLarge = 0x81, "FRAME_TOO_LARGE";
    /// The frame type is not defined by the negotiated version.
    UnknownFrameType = 0x82, "UNKNOWN_FRAME_TYPE";
    /// A reserved header bit was set.
    ReservedBitsSet = 0x83, "RESERVED_BITS_SET";
    /// The body is not the canonical encoding of its message.
    NonCanonicalEncoding = 0x84, "NON_CANONICAL_ENCODING";
    /// A field is outside its allowed values.
    InvalidField = 0x85, "INVALID_FIELD";
    /// A generic protocol violation.
    ProtocolError = 0x90, "PROTOCOL_ERROR";
    /// The frame is not allowed in this state or direction.
    UnexpectedFrame = 0x91, "UNEXPECTED_FRAME";
    /// A peer sent beyond the receive window.
    ReceiveWindowExceeded = 0x92, "RECEIVE_WINDOW_EXCEEDED";
    /// FRAGMENT frames arrived out of sequence or inconsistent.
    FragmentSequenceError = 0x93, "FRAGMENT_SEQUENCE_ERROR";
    /// Package fields are inconsistent.
    PackageInvalid = 0x94, "PACKAGE_INVALID";
    /// Nothing arrived within the keepalive timeout.
    KeepaliveTimeout = 0x95, "KEEPALIVE_TIMEOUT";
    /// No protocol version in common.
    UnsupportedVersion = 0x96, "UNSUPPORTED_VERSION";
    /// An acknowledgement named something never sent.
    AckOutOfRange = 0x97, "ACK_OUT_OF_RANGE";
    /// The CONNACK did not arrive in time.
    ConnectTimeout = 0x98, "CONNECT_TIMEOUT";
    /// Not allowed by the access rules.
    NotAuthorized = 0xA0, "NOT_AUTHORIZED";
    /// The token does not verify.
    BadToken = 0xA1, "BAD_TOKEN";
    /// The token has expired.
    TokenExpired = 0xA2, "TOKEN_EXPIRED";
    /// The user or device is banned.
    Banned = 0xA3, "BANNED";
    /// The user is muted in this conversation.
    Muted = 0xA4, "MUTED";
    /// The user is not a member of the group or room.
    NotAMember = 0xA5, "NOT_A_MEMBER";
    /// The content filter refused the message.
    ContentRejected = 0xA6, "CONTENT_REJECTED";
    /// The reassembled message exceeds the negotiated maximum.
    MessageTooLarge = 0xB0, "MESSAGE_TOO_LARGE";
    /// Too many requests; slow down.
    RateLimited = 0xB1, "RATE_LIMITED";
    /// A storage or membership quota is full.
    QuotaExceeded = 0xB2, "QUOTA_EXCEEDED";
    /// Too many subscriptions.
    TooManySubscriptions = 0xB3, "TOO_MANY_SUBSCRIPTIONS";
    /// No one-time prekeys are left for the device.
    PrekeysExhausted = 0xB4, "PREKEYS_EXHAUSTED";
    /// The server is overloaded; retry later.
    ServerBusy = 0xC0, "SERVER_BUSY";
    /// The server is shutting down.
    ServerShuttingDown = 0xC1, "SERVER_SHUTTING_DOWN";
    /// The same device connected again elsewhere.
    SessionTakenOver = 0xC2, "SESSION_TAKEN_OVER";
    /// The store could not commit; nothing was stored.
    StoreUnavailable = 0xC3, "STORE_UNAVAILABLE";
    /// An internal error.
    InternalError = 0xC4, "INTERNAL_ERROR";
    /// Connect to `server_reference` instead.
    UseAnotherServer = 0xC5, "USE_ANOTHER_SERVER";
    /// The client closed normally.
    NormalDisconnect = 0xC6, "NORMAL_DISCONNECT";
    /// The named object does not exist.
    NotFound = 0xD0, "NOT_FOUND";
    /// The object already exists.
    AlreadyExists = 0xD1, "ALREADY_EXISTS";
    /// A group operation named the wrong epoch.
    EpochMismatch = 0xD2, "EPOCH_MISMATCH";
    /// The package did not complete within the package timeout; nothing of it was stored.
    PackageTimeout = 0xD3, "PACKAGE_TIMEOUT";
    /// The request is well-formed but not meaningful.
    InvalidRequest = 0xD4, "INVALID_REQUEST";
}

impl ReasonCode {
    /// The class of this code.
    pub fn class(self) -> ReasonClass {
        class_of(self as u32)
    }
}

/// The class of any code value, assigned or not: receivers classify unknown codes by range
/// [REQ-ERR-002].
pub fn class_of(value: u32) -> ReasonClass {
    match value {
        0x00..=0x0F => ReasonClass::Success,
        0x80..=0x8F => ReasonClass::Malformed,
        0x90..=0x9F => ReasonClass::Protocol,
        0xA0..=0xAF => ReasonClass::Auth,
        0xB0..=0xBF => ReasonClass::Limit,
        0xC0..=0xCF => ReasonClass::Server,
        0xD0..=0xDF => ReasonClass::Request,
        _ => ReasonClass::Unassigned,
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:02X})", self.name(), *self as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_round_trip_and_classes_match_ranges() {
        for &code in ReasonCode::ALL {
            assert_eq!(ReasonCode::from_u32(code as u32), Some(code));
            assert_eq!(ReasonCode::from_name(code.name()), Some(code));
            assert_ne!(code.class(), ReasonClass::Unassigned, "{code}");
        }
        assert_eq!(ReasonCode::FrameTooLarge.class(), ReasonClass::Malformed);
        assert_eq!(class_of(0xAF), ReasonClass::Auth);
        assert_eq!(class_of(0x50), ReasonClass::Unassigned);
    }
}
