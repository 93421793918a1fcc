//! The wire transcript of a case: every frame sent and received, in hex with its decoded
//! fields, kept for the report of every case that does not pass.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use serde::Serialize;

/// One line of a transcript.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Milliseconds since the case started.
    pub t_ms: u64,
    /// Which connection (the role the runner played on it, e.g. `sender`).
    pub conn: String,
    /// `send`, `recv` or `note`.
    pub dir: &'static str,
    /// The frame bytes in hex (empty for notes).
    pub hex: String,
    /// The frame decoded (`PUBLISH { cid: 1, ... }`), or a note.
    pub decoded: String,
}

/// A shared, append-only transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    start: Instant,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Default for Transcript {
    fn default() -> Self {
        Transcript { start: Instant::now(), lines: Arc::default() }
    }
}

impl Transcript {
    fn push(&self, conn: &str, dir: &'static str, hex: String, decoded: String) {
        let t_ms = self.start.elapsed().as_millis() as u64;
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(Line { t_ms, conn: conn.to_string(), dir, hex, decoded });
        }
    }

    /// Records one whole frame (header included) sent or received on `conn`.
    pub fn frame(&self, conn: &str, dir: &'static str, bytes: &[u8]) {
        self.push(conn, dir, hex::encode(bytes), describe(bytes));
    }

    /// Records a note (a connection opened or closed, a TLS event, a shim's output).
    pub fn note(&self, conn: &str, text: impl Into<String>) {
        self.push(conn, "note", String::new(), text.into());
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// A frame's type name and fields, decoded by the codec for reading only; bytes that do not
/// decode are described by the error.
pub fn describe(bytes: &[u8]) -> String {
    let mut buf = BytesMut::from(bytes);
    match tern_codec::decode_frame(&mut buf) {
        Ok(Some(frame)) => {
            let name = frame.frame_type().name();
            let fields = format!("{frame:?}");
            // `Publish(Publish { .. })` reads better as `PUBLISH { .. }`.
            let inner = fields.split_once('(').map_or(fields.as_str(), |(_, rest)| rest);
            let inner = inner.strip_suffix(')').unwrap_or(inner);
            let inner = inner.split_once(' ').map_or("", |(_, rest)| rest);
            format!("{name} {inner}")
        }
        Ok(None) => format!("incomplete frame ({} bytes)", bytes.len()),
        Err(e) => format!("undecodable: {e}"),
    }
}
