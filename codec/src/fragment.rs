//! Fragmentation and reassembly of bodies larger than one frame (spec/02-framing.md,
//! "Fragmentation").
//!
//! A body over 1396 bytes travels as 2 or more FRAGMENT frames sent back to back in index
//! order; other frames may come between them, but never pieces of another fragmented body.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::error::{PeerError, ProtocolViolation};
use crate::frame::{body_bytes, decode_body, encode_frame, Frame, FrameType};
use crate::limits::{MAX_BODY_LEN, MIN_FRAGMENT_CHUNK};
use crate::proto;
use crate::reason::ReasonCode;

/// Encodes frames, splitting large bodies into FRAGMENT frames. One per connection direction:
/// it numbers fragmented bodies [REQ-FRG-008].
#[derive(Debug, Default)]
pub struct Fragmenter {
    next_fragment_id: u32,
}

/// Largest chunk that keeps a FRAGMENT frame within 1400 bytes, given its other fields.
fn chunk_capacity(header: &proto::Fragment) -> usize {
    // chunk: 1 tag byte + a 2-byte length (every chunk length is 128..=1396) + the bytes.
    MAX_BODY_LEN - header.encoded_len() - 3
}

impl Fragmenter {
    /// A fragmenter whose first fragmented body gets id 1.
    pub fn new() -> Self {
        Fragmenter { next_fragment_id: 1 }
    }

    /// Appends `frame` to `dst` as one frame, or as FRAGMENT frames when its body exceeds
    /// 1396 bytes [REQ-FRG-001]. `max_message_size` is the peer's negotiated limit; a larger
    /// body is refused and nothing is written.
    pub fn encode(
        &mut self,
        frame: &Frame,
        max_message_size: usize,
        dst: &mut BytesMut,
    ) -> Result<usize, crate::ApiError> {
        let len = frame.body_len();
        if len <= MAX_BODY_LEN {
            encode_frame(frame, dst).map_err(|_| crate::ApiError::MessageTooLarge { size: len, max: MAX_BODY_LEN })?;
            return Ok(1);
        }
        if len > max_message_size || !frame.frame_type().fragmentable() {
            return Err(crate::ApiError::MessageTooLarge { size: len, max: max_message_size.min(MAX_BODY_LEN) });
        }
        let body = body_bytes(frame);
        let fragment_id = self.next_fragment_id.max(1);
        self.next_fragment_id = fragment_id.wrapping_add(1);
        // Every chunk but the last is as large as a frame allows; count is fixed up front.
        let total_length =
            u32::try_from(len).map_err(|_| crate::ApiError::MessageTooLarge { size: len, max: max_message_size })?;
        let probe = proto::Fragment {
            fragment_id,
            index: u32::MAX,
            count: u32::MAX,
            frame_type: u32::from(frame.frame_type() as u8),
            total_length,
            chunk: Bytes::new(),
        };
        let per_chunk = chunk_capacity(&probe);
        let count = len.div_ceil(per_chunk);
        let count32 = u32::try_from(count).unwrap_or(u32::MAX);
        let mut written = 0;
        for (index, start) in (0..len).step_by(per_chunk).enumerate() {
            let end = (start + per_chunk).min(len);
            let fragment = proto::Fragment {
                fragment_id,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                count: count32,
                frame_type: u32::from(frame.frame_type() as u8),
                total_length: if index == 0 { total_length } else { 0 },
                chunk: body.slice(start..end),
            };
            // Sized by chunk_capacity above, so each piece fits one frame.
            encode_frame(&Frame::Fragment(fragment), dst)
                .map_err(|e| crate::ApiError::MessageTooLarge { size: e.0, max: MAX_BODY_LEN })?;
            written += 1;
        }
        Ok(written)
    }
}

/// Reassembles FRAGMENT frames into the frames they carry, enforcing every FRG rule.
#[derive(Debug)]
pub struct Reassembler {
    max_message_size: usize,
    last_fragment_id: u32,
    open: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    fragment_id: u32,
    frame_type: FrameType,
    count: u32,
    next_index: u32,
    total_length: usize,
    buf: BytesMut,
}

fn sequence_error(req: &'static str, detail: &str) -> PeerError {
    ProtocolViolation::new(req, ReasonCode::FragmentSequenceError, detail).into()
}

impl Reassembler {
    /// A reassembler accepting bodies up to `max_message_size` (what this side announced).
    pub fn new(max_message_size: usize) -> Self {
        Reassembler { max_message_size, last_fragment_id: 0, open: None }
    }

    /// Forgets a partial body; called when the connection closes [REQ-FRG-010].
    pub fn reset(&mut self) {
        self.open = None;
        self.last_fragment_id = 0;
    }

    /// Takes one FRAGMENT; returns the carried frame when it is complete.
    pub fn push(&mut self, f: proto::Fragment) -> Result<Option<Frame>, PeerError> {
        let chunk_len = f.chunk.len();
        let partial = match self.open.take() {
            None => self.start(&f)?,
            Some(p) => {
                let consistent = f.fragment_id == p.fragment_id
                    && f.index == p.next_index
                    && f.count == p.count
                    && f.frame_type == u32::from(p.frame_type as u8);
                if !consistent {
                    return Err(sequence_error("REQ-FRG-002", "fragment does not continue the open body"));
                }
                p
            }
        };
        let mut p = partial;
        let last = f.index + 1 == p.count;
        if !last && chunk_len < MIN_FRAGMENT_CHUNK {
            return Err(sequence_error("REQ-FRG-004", "non-final chunk shorter than 1024 bytes"));
        }
        if p.buf.len() + chunk_len > p.total_length {
            return Err(sequence_error("REQ-FRG-005", "chunks exceed total_length"));
        }
        p.buf.extend_from_slice(&f.chunk);
        if !last {
            p.next_index += 1;
            self.open = Some(p);
            return Ok(None);
        }
        if p.buf.len() != p.total_length {
            return Err(sequence_error("REQ-FRG-005", "chunks add up to less than total_length"));
        }
        let frame = decode_body(p.frame_type, p.buf.freeze()).map_err(PeerError::Malformed)?;
        Ok(Some(frame))
    }

    fn start(&mut self, f: &proto::Fragment) -> Result<Partial, PeerError> {
        if f.index != 0 {
            return Err(sequence_error("REQ-FRG-002", "first fragment of a body must have index 0"));
        }
        if f.fragment_id <= self.last_fragment_id {
            return Err(sequence_error("REQ-FRG-008", "fragment_id did not increase"));
        }
        let frame_type = u8::try_from(f.frame_type)
            .ok()
            .and_then(FrameType::from_u8)
            .filter(|t| t.fragmentable())
            .ok_or_else(|| sequence_error("REQ-FRG-007", "frame_type may not be fragmented"))?;
        let total_length = f.total_length as usize;
        if total_length <= MAX_BODY_LEN {
            return Err(sequence_error("REQ-FRG-001", "a body that fits one frame must not be fragmented"));
        }
        if total_length > self.max_message_size {
            return Err(ProtocolViolation::new(
                "REQ-FRG-003",
                ReasonCode::MessageTooLarge,
                format!("{total_length} bytes exceeds max_message_size {}", self.max_message_size),
            )
            .into());
        }
        // Every chunk but the last carries at least 1024 bytes, which bounds count.
        let max_count = total_length.div_ceil(MIN_FRAGMENT_CHUNK);
        if f.count as usize > max_count {
            return Err(sequence_error("REQ-FRG-006", "count too large for total_length"));
        }
        self.last_fragment_id = f.fragment_id;
        Ok(Partial {
            fragment_id: f.fragment_id,
            frame_type,
            count: f.count,
            next_index: 0,
            total_length,
            buf: BytesMut::with_capacity(total_length),
        })
    }
}

/// Decodes a frame stream: frames out, FRAGMENTs reassembled. The decoding half of a
/// connection, shared by both session machines.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    reassembler: Reassembler,
}

impl FrameReader {
    /// A reader accepting reassembled bodies up to `max_message_size`.
    pub fn new(max_message_size: usize) -> Self {
        FrameReader { buf: BytesMut::new(), reassembler: Reassembler::new(max_message_size) }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, PeerError> {
        loop {
            match crate::frame::decode_frame(&mut self.buf).map_err(PeerError::from)? {
                None => return Ok(None),
                Some(Frame::Fragment(f)) => {
                    if let Some(frame) = self.reassembler.push(f)? {
                        return Ok(Some(frame));
                    }
                }
                Some(frame) => return Ok(Some(frame)),
            }
        }
    }

    /// Drops buffered bytes and any partial body (the connection closed).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.reassembler.reset();
    }
}
