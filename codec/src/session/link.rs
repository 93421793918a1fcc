//! What both session machines keep per connection: the frame reader, the fragmenting writer and
//! the outgoing bytes.

use bytes::{Bytes, BytesMut};

use crate::error::{ApiError, PeerError, ProtocolViolation};
use crate::fragment::{Fragmenter, FrameReader};
use crate::frame::{Direction, Frame};
use crate::limits::MIN_MESSAGE_SIZE;
use crate::proto;
use crate::reason::ReasonCode;

/// Frames sent and received, by frame type byte, since they were last taken (for metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameCounts {
    /// Sent frames (logical frames: a fragmented body counts once, as its own type).
    pub sent: [u64; 64],
    /// Received frames (reassembled bodies count once).
    pub received: [u64; 64],
}

impl Default for FrameCounts {
    fn default() -> Self {
        FrameCounts { sent: [0; 64], received: [0; 64] }
    }
}

/// Counters a driver takes from a session machine now and then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Frames by type.
    pub frames: FrameCounts,
    /// DELIVERs sent again (retransmission timer or resume).
    pub retransmits: u64,
}

/// One connection's codec state. Dropped and rebuilt on every new connection.
#[derive(Debug)]
pub(crate) struct Link {
    reader: FrameReader,
    writer: Fragmenter,
    out: BytesMut,
    /// The peer's `max_message_size`; MIN until the handshake says otherwise.
    pub(crate) peer_max_message_size: usize,
    /// This side sent DISCONNECT or saw the peer's: nothing more is read or written.
    pub(crate) closed: bool,
    /// Which role receives on this link (for the direction check).
    receives: Direction,
    pub(crate) counts: FrameCounts,
}

impl Link {
    pub(crate) fn new(own_max_message_size: usize, receives: Direction) -> Self {
        Link {
            reader: FrameReader::new(own_max_message_size),
            writer: Fragmenter::new(),
            out: BytesMut::new(),
            peer_max_message_size: MIN_MESSAGE_SIZE as usize,
            closed: false,
            receives,
            counts: FrameCounts::default(),
        }
    }

    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.reader.extend(bytes);
        }
    }

    /// Next received frame, with the direction rule applied [REQ-FRM-007].
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, PeerError> {
        if self.closed {
            return Ok(None);
        }
        let Some(frame) = self.reader.next_frame()? else {
            return Ok(None);
        };
        let dir = frame.frame_type().direction();
        if dir != Direction::Both && dir != self.receives {
            return Err(ProtocolViolation::new(
                "REQ-FRM-007",
                ReasonCode::UnexpectedFrame,
                format!("{} may not be sent in this direction", frame.frame_type().name()),
            )
            .into());
        }
        if let Some(c) = self.counts.received.get_mut(frame.frame_type() as usize) {
            *c += 1;
        }
        Ok(Some(frame))
    }

    /// Queues a frame, fragmenting it if needed.
    pub(crate) fn send(&mut self, frame: &Frame) -> Result<(), ApiError> {
        if self.closed {
            return Err(ApiError::NotConnected);
        }
        self.writer.encode(frame, self.peer_max_message_size, &mut self.out)?;
        if let Some(c) = self.counts.sent.get_mut(frame.frame_type() as usize) {
            *c += 1;
        }
        Ok(())
    }

    /// Queues a small control frame (PING, PONG, PUBACK, DELIVER_ACK, SYNC, CONNACK ...).
    /// These are a few dozen bytes, far below any peer limit, so the only possible failure is
    /// a closed link, after which nothing is sent by design: there is nothing to report.
    pub(crate) fn send_control(&mut self, frame: &Frame) {
        let _ = self.send(frame);
    }

    /// Queues DISCONNECT and stops the link [REQ-HSK-014].
    pub(crate) fn close(&mut self, reason: ReasonCode, detail: String) {
        if self.closed {
            return;
        }
        let d = proto::Disconnect {
            reason: u32::from(reason as u8),
            detail,
            retry_after_ms: 0,
            server_reference: String::new(),
        };
        self.send_control(&Frame::Disconnect(d));
        self.closed = true;
    }

    /// Bytes to write to the transport, if any.
    pub(crate) fn take_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }
}

/// The reason code of a received DISCONNECT (unknown values fall back to PROTOCOL_ERROR).
pub(crate) fn disconnect_reason(d: &proto::Disconnect) -> ReasonCode {
    ReasonCode::from_u32(d.reason).unwrap_or(ReasonCode::ProtocolError)
}

/// Wire value of a reason code.
pub(crate) fn wire(reason: ReasonCode) -> u32 {
    u32::from(reason as u8)
}
