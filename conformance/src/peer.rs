//! One connection the runner holds: raw bytes in and out, frames split by their headers and
//! recorded in the transcript, bodies decoded (and fragments reassembled) for the checks.

use std::time::Duration;

use bytes::BytesMut;
use tern_codec::fragment::{Fragmenter, FrameReader};
use tern_codec::limits::MAX_BODY_LEN;
use tern_codec::{proto, Frame, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::case::Stop;
use crate::transcript::Transcript;

/// Any byte stream (TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What the other side did next.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // short-lived, one at a time: boxing would only add allocations
pub enum Event {
    /// A whole frame (fragments reassembled).
    Frame(Frame),
    /// The connection closed (EOF or reset).
    Closed,
    /// Nothing arrived within the wait.
    Silent,
    /// The peer sent bytes that are not a valid frame.
    Garbage(String),
}

/// A connection and its reading state.
pub struct Peer {
    /// The role the runner plays on this connection (`sender`, `recipient`, ...).
    pub label: String,
    stream: Box<dyn Stream>,
    transcript: Transcript,
    input: BytesMut,
    reader: FrameReader,
    fragmenter: Fragmenter,
    closed: bool,
    /// Answer PING with PONG while waiting for something else.
    pub auto_pong: bool,
}

/// Receive limit for reassembled bodies: generous, since the runner judges sizes itself.
const READER_LIMIT: usize = 4 * 1024 * 1024;

impl Peer {
    /// Wraps an open stream.
    pub fn new(label: &str, stream: Box<dyn Stream>, transcript: Transcript) -> Peer {
        transcript.note(label, "connection open");
        Peer {
            label: label.to_string(),
            stream,
            transcript,
            input: BytesMut::new(),
            reader: FrameReader::new(READER_LIMIT),
            fragmenter: Fragmenter::new(),
            closed: false,
            auto_pong: true,
        }
    }

    /// Sends a well-formed frame (fragmented when its body is over 1396 bytes).
    pub async fn send(&mut self, frame: &Frame) -> Result<(), Stop> {
        let mut wire = BytesMut::new();
        self.fragmenter
            .encode(frame, READER_LIMIT, &mut wire)
            .map_err(|e| Stop::Harness(format!("cannot encode {:?}: {e}", frame.frame_type())))?;
        self.write_frames(&wire).await
    }

    /// Sends bytes as they are (hand-built frames for negative cases).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.write_frames(bytes).await
    }

    async fn write_frames(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        for frame in split_frames(bytes) {
            self.transcript.frame(&self.label, "send", frame);
        }
        // A peer that already closed can make the write fail; that is for the reads to report.
        if let Err(e) = self.stream.write_all(bytes).await {
            self.transcript.note(&self.label, format!("write failed: {e}"));
        }
        let _ = self.stream.flush().await;
        Ok(())
    }

    /// Closes the write side (TCP FIN / TLS close_notify) without a DISCONNECT.
    pub async fn shutdown(&mut self) {
        self.transcript.note(&self.label, "runner closed the connection");
        let _ = self.stream.shutdown().await;
    }

    /// The next event within `wait`. PINGs are answered on the way when `auto_pong` is set.
    pub async fn recv(&mut self, wait: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.reader.next_frame() {
                Ok(Some(Frame::Ping(p))) if self.auto_pong => {
                    let _ = self.send(&Frame::Pong(p)).await;
                    continue;
                }
                Ok(Some(frame)) => return Event::Frame(frame),
                Ok(None) => {}
                Err(e) => return Event::Garbage(e.to_string()),
            }
            if self.closed {
                return Event::Closed;
            }
            if let Some(frame) = self.take_frame_bytes() {
                self.transcript.frame(&self.label, "recv", &frame);
                self.reader.extend(&frame);
                continue;
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return Event::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    self.transcript.note(&self.label, "connection closed by peer");
                    if !self.input.is_empty() {
                        let rest = self.input.split();
                        self.transcript.frame(&self.label, "recv", &rest);
                        return Event::Garbage(format!("{} trailing bytes before close", rest.len()));
                    }
                }
                Ok(Ok(n)) => self.input.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    }

    /// Splits one whole frame off the input, by its header's length.
    fn take_frame_bytes(&mut self) -> Option<BytesMut> {
        let len = match self.input.get(..4) {
            Some(&[_, _, hi, lo]) => usize::from(u16::from_be_bytes([hi, lo])),
            _ => return None,
        };
        // An oversize header is handed on whole so the reader reports it.
        if len > MAX_BODY_LEN {
            return Some(self.input.split());
        }
        (self.input.len() >= 4 + len).then(|| self.input.split_to(4 + len))
    }

    /// Reads until `pick` accepts a frame, skipping others. A close, silence or garbage is a
    /// violation of `req`, described with `what` was awaited.
    pub async fn expect<T>(
        &mut self,
        wait: Duration,
        req: &'static str,
        what: &str,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> Result<T, Stop> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Event::Frame(f) => {
                    if let Some(t) = pick(&f) {
                        return Ok(t);
                    }
                }
                Event::Closed => {
                    return Err(Stop::Violation { req, detail: format!("connection closed while waiting for {what}") })
                }
                Event::Silent => {
                    return Err(Stop::Violation {
                        req,
                        detail: format!("no {what} within {:.1} s", wait.as_secs_f64()),
                    })
                }
                Event::Garbage(e) => {
                    return Err(Stop::Violation { req, detail: format!("invalid bytes while waiting for {what}: {e}") })
                }
            }
        }
    }

    /// Expects the peer to close because of our input: DISCONNECT with `reason` (REQ-ERR-003),
    /// then nothing more and the connection closed (REQ-HSK-014). Other frames before the
    /// DISCONNECT are allowed (answers to earlier, valid input).
    pub async fn expect_close(&mut self, wait: Duration, req: &'static str, reason: ReasonCode) -> Result<(), Stop> {
        let got = loop {
            match self.recv(wait).await {
                Event::Frame(Frame::Disconnect(d)) => break d,
                Event::Frame(_) => continue,
                Event::Closed => {
                    return Err(Stop::Violation {
                        req: "REQ-ERR-003",
                        detail: format!("connection closed without DISCONNECT (expected {reason})"),
                    })
                }
                Event::Silent => {
                    return Err(Stop::Violation {
                        req,
                        detail: format!(
                            "connection still open {:.1} s later; expected DISCONNECT {reason}",
                            wait.as_secs_f64()
                        ),
                    })
                }
                Event::Garbage(e) => return Err(Stop::Violation { req, detail: format!("invalid bytes: {e}") }),
            }
        };
        if got.reason != reason as u32 {
            return Err(Stop::Violation {
                req,
                detail: format!("DISCONNECT reason {} ({}), expected {reason}", reason_name(got.reason), got.reason),
            });
        }
        self.expect_eof(wait).await
    }

    /// After a DISCONNECT: nothing more, then the close (REQ-HSK-014).
    pub async fn expect_eof(&mut self, wait: Duration) -> Result<(), Stop> {
        match self.recv(wait).await {
            Event::Closed => Ok(()),
            Event::Frame(f) => Err(Stop::Violation {
                req: "REQ-HSK-014",
                detail: format!("{} sent after DISCONNECT", f.frame_type().name()),
            }),
            Event::Silent => Err(Stop::Violation {
                req: "REQ-HSK-014",
                detail: format!("connection not closed {:.1} s after DISCONNECT", wait.as_secs_f64()),
            }),
            Event::Garbage(e) => {
                Err(Stop::Violation { req: "REQ-HSK-014", detail: format!("bytes after DISCONNECT: {e}") })
            }
        }
    }

    /// Round trip: PING with `nonce`, wait for its PONG. Proves the peer is still processing
    /// this connection (a barrier for "nothing happened" checks).
    pub async fn ping(&mut self, wait: Duration, req: &'static str, nonce: u64) -> Result<(), Stop> {
        self.send(&Frame::Ping(proto::Ping { nonce })).await?;
        self.expect(wait, req, "PONG", |f| matches!(f, Frame::Pong(p) if p.nonce == nonce).then_some(())).await
    }
}

/// The registry name of a reason value, or `unknown`.
pub fn reason_name(v: u32) -> &'static str {
    ReasonCode::from_u32(v).map_or("unknown", ReasonCode::name)
}

/// Splits a byte string into frames by their headers (for the transcript); a tail that is
/// not a whole frame is returned as its own piece.
pub fn split_frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = match bytes.get(..4) {
            Some(&[_, _, hi, lo]) => 4 + usize::from(u16::from_be_bytes([hi, lo])),
            _ => bytes.len(),
        };
        let (frame, rest) = bytes.split_at(len.min(bytes.len()));
        out.push(frame);
        bytes = rest;
    }
    out
}
