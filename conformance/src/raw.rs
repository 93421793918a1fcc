//! A small raw-byte frame builder, independent of `tern-codec`'s encoder, so that the frames the
//! suite sends in negative cases (and the bytes it compares against) cannot share a bug with the
//! implementation under test. It writes protobuf fields by hand: varints (optionally padded to
//! a non-minimal length), length-delimited fields, and the 4-byte frame header.

/// Protobuf wire types.
const VARINT: u8 = 0;
const LEN: u8 = 2;

/// A frame body under construction, field by field, in the order the caller writes them.
#[derive(Debug, Clone, Default)]
pub struct Body(Vec<u8>);

/// Appends `v` as a minimal varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Body {
    /// An empty body.
    pub fn new() -> Body {
        Body(Vec::new())
    }

    fn key(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }

    /// A varint field (uint32/uint64/bool/enum).
    pub fn uint(mut self, field: u32, v: u64) -> Body {
        self.key(field, VARINT);
        put_varint(&mut self.0, v);
        self
    }

    /// A varint field whose value is padded with `extra` redundant continuation bytes: the same
    /// number, encoded non-minimally.
    pub fn uint_padded(mut self, field: u32, v: u64, extra: usize) -> Body {
        self.key(field, VARINT);
        let mut enc = Vec::new();
        put_varint(&mut enc, v);
        if let Some(last) = enc.last_mut() {
            *last |= 0x80;
        }
        enc.extend(std::iter::repeat_n(0x80, extra.saturating_sub(1)));
        enc.push(0x00);
        self.0.extend(enc);
        self
    }

    /// A length-delimited field (string/bytes/embedded message).
    pub fn bytes(mut self, field: u32, v: &[u8]) -> Body {
        self.key(field, LEN);
        put_varint(&mut self.0, v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    /// A string field.
    pub fn str(self, field: u32, v: &str) -> Body {
        self.bytes(field, v.as_bytes())
    }

    /// An embedded message field.
    pub fn msg(self, field: u32, m: Body) -> Body {
        self.bytes(field, &m.0)
    }

    /// Arbitrary bytes appended as they are (for trailing garbage).
    pub fn raw(mut self, bytes: &[u8]) -> Body {
        self.0.extend_from_slice(bytes);
        self
    }

    /// The body bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The body framed with type `ty` and flags 0.
    pub fn frame(self, ty: u8) -> Vec<u8> {
        frame_with(ty, 0, &self.0)
    }
}

/// A frame with an explicit flags byte and the body's real length.
pub fn frame_with(ty: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = header(ty, flags, body.len() as u16).to_vec();
    out.extend_from_slice(body);
    out
}

/// A bare 4-byte header announcing `len` body bytes.
pub fn header(ty: u8, flags: u8, len: u16) -> [u8; 4] {
    let [hi, lo] = len.to_be_bytes();
    [ty, flags, hi, lo]
}

/// Frame type bytes (spec/03-frames.md), restated here rather than taken from the codec.
pub mod ty {
    /// CONNECT.
    pub const CONNECT: u8 = 0x01;
    /// CONNACK.
    pub const CONNACK: u8 = 0x02;
    /// PING.
    pub const PING: u8 = 0x03;
    /// DISCONNECT.
    pub const DISCONNECT: u8 = 0x05;
    /// PUBLISH.
    pub const PUBLISH: u8 = 0x06;
    /// DELIVER.
    pub const DELIVER: u8 = 0x08;
    /// FRAGMENT.
    pub const FRAGMENT: u8 = 0x13;
}

/// A PING body (`nonce` = field 1).
pub fn ping(nonce: u64) -> Vec<u8> {
    Body::new().uint(1, nonce).frame(ty::PING)
}

/// A PUBLISH body: cid 1, qos 2, topic 3, payload 4.
pub fn publish(cid: u64, qos: u64, topic: &str, payload: &[u8]) -> Body {
    Body::new().uint(1, cid).uint(2, qos).str(3, topic).bytes(4, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builder agrees with the first PING vector of spec/vectors (a shared fact, checked
    /// from the spec's bytes, not from the codec).
    #[test]
    fn ping_matches_the_spec_vector() {
        assert_eq!(ping(7), vec![0x03, 0x00, 0x00, 0x02, 0x08, 0x07]);
    }

    #[test]
    fn padded_varint_is_the_same_number_in_more_bytes() {
        let body = Body::new().uint_padded(1, 7, 2).into_bytes();
        assert_eq!(body, vec![0x08, 0x87, 0x80, 0x00]);
        let mut big = Vec::new();
        put_varint(&mut big, 300);
        assert_eq!(big, vec![0xAC, 0x02]);
    }
}
