//! A raw MQTT 3.1.1 / 5 client for the MQTT cases (spec chapter 15): packets are built by
//! hand here, byte by byte after the OASIS standards, so the runner judges a broker without
//! trusting any MQTT library; every packet is logged in the transcript.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::case::Stop;
use crate::transcript::Transcript;

/// MQTT packet types (the high nibble of the first byte).
pub mod kind {
    /// CONNACK.
    pub const CONNACK: u8 = 2;
    /// PUBLISH.
    pub const PUBLISH: u8 = 3;
    /// PUBACK.
    pub const PUBACK: u8 = 4;
    /// PUBREC.
    pub const PUBREC: u8 = 5;
    /// PUBCOMP.
    pub const PUBCOMP: u8 = 7;
    /// SUBACK.
    pub const SUBACK: u8 = 9;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 14;
}

/// MQTT protocol level: 4 for 3.1.1, 5 for MQTT 5.
pub type Level = u8;

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.put_slice(s);
}

fn put_varint(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = u8::try_from(n % 128).unwrap_or(0);
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(first);
    put_varint(&mut out, body.len());
    out.put_slice(body);
    out.to_vec()
}

/// What a CONNECT carries.
#[derive(Debug, Clone, Default)]
pub struct Connect {
    /// Client identifier.
    pub client_id: String,
    /// User name, when sent.
    pub username: Option<String>,
    /// Password (the token), when sent.
    pub password: Option<String>,
    /// Clean Session (3.1.1) / Clean Start (5).
    pub clean: bool,
    /// MQTT 5 Session Expiry Interval, when sent.
    pub session_expiry: Option<u32>,
}

/// A CONNECT packet at `level` ("MQIsdp" for level 3, "MQTT" otherwise).
pub fn connect(level: Level, c: &Connect) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_str(&mut body, if level == 3 { b"MQIsdp" } else { b"MQTT" });
    body.put_u8(level);
    let mut flags = 0u8;
    if c.clean {
        flags |= 0x02;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    body.put_u8(flags);
    body.put_u16(60);
    if level == 5 {
        let mut props = BytesMut::new();
        if let Some(e) = c.session_expiry {
            props.put_u8(0x11);
            props.put_u32(e);
        }
        put_varint(&mut body, props.len());
        body.put_slice(&props);
    }
    put_str(&mut body, c.client_id.as_bytes());
    if let Some(u) = &c.username {
        put_str(&mut body, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_str(&mut body, p.as_bytes());
    }
    packet(0x10, &body)
}

/// A PUBLISH.
pub fn publish(level: Level, topic: &str, qos: u8, pkid: u16, payload: &[u8], retain: bool, dup: bool) -> Vec<u8> {
    let mut body = BytesMut::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.put_u16(pkid);
    }
    if level == 5 {
        body.put_u8(0);
    }
    body.put_slice(payload);
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    packet(first, &body)
}

/// PUBACK, PUBREL or PUBCOMP for `pkid` (reason Success, which both levels encode alike).
pub fn ack(kind: u8, pkid: u16) -> Vec<u8> {
    let first = (kind << 4) | if kind == 6 { 0x02 } else { 0 };
    packet(first, &pkid.to_be_bytes())
}

/// A SUBSCRIBE of `filters` with their QoS.
pub fn subscribe(level: Level, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(pkid);
    if level == 5 {
        body.put_u8(0);
    }
    for (f, q) in filters {
        put_str(&mut body, f.as_bytes());
        body.put_u8(*q);
    }
    packet(0x82, &body)
}

/// DISCONNECT (normal).
pub fn disconnect() -> Vec<u8> {
    packet(0xE0, &[])
}

/// A packet from the broker.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Packet type.
    pub kind: u8,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Everything after the fixed header.
    pub body: Vec<u8>,
}

impl Packet {
    /// CONNACK: (session present, return/reason code).
    pub fn connack(&self) -> Option<(bool, u8)> {
        match (self.kind, self.body.first(), self.body.get(1)) {
            (kind::CONNACK, Some(flags), Some(code)) => Some((flags & 1 == 1, *code)),
            _ => None,
        }
    }

    /// The packet identifier of an acknowledgement.
    pub fn pkid(&self) -> u16 {
        be16(&self.body).unwrap_or(0)
    }

    /// An acknowledgement's reason code (0 when the short form leaves it out).
    pub fn ack_reason(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }

    /// SUBACK return codes at `level`.
    pub fn suback_codes(&self, level: Level) -> Vec<u8> {
        let mut b = self.body.get(2..).unwrap_or_default();
        if level == 5 {
            let (len, used) = varint(b);
            b = b.get(used + len..).unwrap_or_default();
        }
        b.to_vec()
    }

    /// A DISCONNECT's reason code.
    pub fn disconnect_reason(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    /// PUBLISH: (topic, qos, pkid, payload) at `level`.
    pub fn publish(&self, level: Level) -> Option<(String, u8, u16, Vec<u8>)> {
        if self.kind != kind::PUBLISH {
            return None;
        }
        let mut b = self.body.as_slice();
        if b.len() < 2 {
            return None;
        }
        let tlen = usize::from(b.get_u16());
        let topic = String::from_utf8_lossy(b.get(..tlen)?).into_owned();
        b = b.get(tlen..)?;
        let qos = (self.flags >> 1) & 3;
        let mut pkid = 0;
        if qos > 0 {
            if b.len() < 2 {
                return None;
            }
            pkid = b.get_u16();
        }
        if level == 5 {
            let (len, used) = varint(b);
            b = b.get(used + len..)?;
        }
        Some((topic, qos, pkid, b.to_vec()))
    }

    /// Whether an MQTT 5 CONNACK carries property `id` with the one-byte value `value`.
    pub fn connack_property_byte(&self, id: u8, value: u8) -> bool {
        let props = self.body.get(2..).unwrap_or_default();
        let (len, used) = varint(props);
        let mut p = props.get(used..used + len).unwrap_or_default();
        while let Some((&pid, rest)) = p.split_first() {
            let size = match pid {
                0x24 | 0x25 | 0x28 | 0x29 | 0x2A | 0x17 | 0x19 => 1,
                0x21 | 0x22 | 0x13 => 2,
                0x11 | 0x27 => 4,
                // Strings and binary data: two-byte length.
                0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 2 + usize::from(be16(rest).unwrap_or(0)),
                0x26 => {
                    let k = 2 + usize::from(be16(rest).unwrap_or(0));
                    k + 2 + usize::from(be16(rest.get(k..).unwrap_or_default()).unwrap_or(0))
                }
                _ => return false,
            };
            if pid == id && size == 1 {
                return rest.first() == Some(&value);
            }
            p = rest.get(size..).unwrap_or_default();
        }
        false
    }
}

/// A big-endian u16 at the start of `b`.
fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// A variable byte integer: (value, bytes used).
fn varint(b: &[u8]) -> (usize, usize) {
    let (mut value, mut shift) = (0usize, 0);
    for (i, &byte) in b.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
        shift += 7;
    }
    (value, b.len())
}

/// One MQTT connection of the runner.
pub struct MqttPeer {
    label: String,
    stream: TcpStream,
    input: BytesMut,
    transcript: Transcript,
    /// The protocol level it connected with.
    pub level: Level,
}

/// What arrived.
#[derive(Debug)]
pub enum Got {
    /// A packet.
    Packet(Packet),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the wait.
    Nothing,
}

impl MqttPeer {
    /// Opens a TCP connection to `addr`.
    pub async fn open(addr: &str, label: &str, level: Level, transcript: &Transcript) -> Result<MqttPeer, Stop> {
        let stream =
            TcpStream::connect(addr).await.map_err(|e| Stop::Harness(format!("cannot connect to {addr}: {e}")))?;
        transcript.note(label, format!("MQTT connection open (level {level})"));
        Ok(MqttPeer { label: label.into(), stream, input: BytesMut::new(), transcript: transcript.clone(), level })
    }

    /// Sends one packet's bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.transcript.frame(&self.label, "send", bytes);
        if let Err(e) = self.stream.write_all(bytes).await {
            self.transcript.note(&self.label, format!("write failed: {e}"));
        }
    }

    /// The next packet within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.take_packet() {
                return Got::Packet(p);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)).await {
                Err(_) => return Got::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.transcript.note(&self.label, "broker closed the connection");
                    return Got::Closed;
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    fn take_packet(&mut self) -> Option<Packet> {
        let first = *self.input.first()?;
        let (len, used) = varint(self.input.get(1..)?);
        if self.input.get(1..1 + used)?.last()? & 0x80 != 0 || self.input.len() < 1 + used + len {
            return None;
        }
        let raw = self.input.split_to(1 + used + len);
        self.transcript.frame(&self.label, "recv", &raw);
        Some(Packet { kind: first >> 4, flags: first & 0x0f, body: raw.get(1 + used..).unwrap_or_default().to_vec() })
    }

    /// The next packet of `kind` within `wait`, skipping others; a violation of `req` if none.
    pub async fn expect(&mut self, wait: Duration, kind: u8, req: &'static str) -> Result<Packet, Stop> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Got::Packet(p) if p.kind == kind => return Ok(p),
                Got::Packet(_) => continue,
                Got::Closed => {
                    return Err(crate::violated!(req, "connection closed while waiting for packet type {kind}"))
                }
                Got::Nothing => return Err(crate::violated!(req, "no packet of type {kind} within {wait:?}")),
            }
        }
    }

    /// Whether the broker closes the connection within `wait` (after any packets).
    pub async fn closes(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Got::Packet(_) => continue,
                Got::Closed => return true,
                Got::Nothing => return false,
            }
        }
    }
}
