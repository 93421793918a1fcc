//! Every limit and timer of spec/12-limits.md, with its default.

use std::time::Duration;

/// Largest frame on the wire, header included [REQ-FRM-001].
pub const MAX_FRAME_LEN: usize = 1400;
/// Fixed header length.
pub const HEADER_LEN: usize = 4;
/// Largest body of one frame.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// Smallest chunk a non-final FRAGMENT may carry [REQ-FRG-004].
pub const MIN_FRAGMENT_CHUNK: usize = 1024;
/// Smallest `max_message_size` a peer may announce.
pub const MIN_MESSAGE_SIZE: u32 = MAX_BODY_LEN as u32;
/// Default `max_message_size`.
pub const DEFAULT_MESSAGE_SIZE: u32 = 64 * 1024;
/// Largest `max_message_size` a peer may announce.
pub const MAX_MESSAGE_SIZE: u32 = 1024 * 1024;
/// Default receive window.
pub const DEFAULT_RECEIVE_WINDOW: u32 = 32;
/// Largest receive window.
pub const MAX_RECEIVE_WINDOW: u32 = 1024;
/// Default keepalive interval.
pub const DEFAULT_KEEPALIVE_SECS: u32 = 30;
/// Smallest keepalive a broker grants.
pub const MIN_KEEPALIVE_SECS: u32 = 5;
/// Largest keepalive a broker grants.
pub const MAX_KEEPALIVE_SECS: u32 = 3600;
/// Nothing received for this many keepalive intervals (in tenths) closes the link [REQ-KAL-002].
pub const KEEPALIVE_TIMEOUT_TENTHS: u32 = 15;
/// Time a client waits for CONNACK.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retransmission timeout for unacknowledged PUBLISH and DELIVER frames.
pub const INITIAL_RTO: Duration = Duration::from_secs(2);
/// Retransmission timeout ceiling (doubling per attempt).
pub const MAX_RTO: Duration = Duration::from_secs(60);
/// Time a package may stay incomplete at its receiver [REQ-PKG-004].
pub const PACKAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most members in one package.
pub const MAX_PACKAGE_COUNT: u32 = 32;
/// Default and largest SYNC batch.
pub const DEFAULT_SYNC_LIMIT: u32 = 100;
/// Largest SYNC batch.
pub const MAX_SYNC_LIMIT: u32 = 500;
/// Default and largest history page.
pub const DEFAULT_HISTORY_LIMIT: u32 = 10;
/// Largest history page.
pub const MAX_HISTORY_LIMIT: u32 = 100;
/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;
/// Most levels in a topic.
pub const MAX_TOPIC_LEVELS: usize = 8;
/// Longest identifier (user, device, group, room), in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Most filters in one SUBSCRIBE.
pub const MAX_FILTERS_PER_SUBSCRIBE: usize = 16;
/// Longest auth token, in bytes.
pub const MAX_TOKEN_LEN: usize = 512;
/// Interval of the periodic inbox SYNC that catches anything a push missed [REQ-SYN-005].
pub const SAFETY_SYNC_INTERVAL: Duration = Duration::from_secs(300);
