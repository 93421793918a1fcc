use super::*;
use bytes::BytesMut;

#[test]
fn header_checks_length_before_type_and_flags() {
    assert_eq!(parse_header([0x06, 0, 0x05, 0x75]), Err(DecodeError::FrameTooLarge(1397)));
    assert_eq!(parse_header([0x7F, 0, 0, 0]), Err(DecodeError::UnknownFrameType(0x7F)));
    assert_eq!(parse_header([0x03, 0x01, 0, 0]), Err(DecodeError::ReservedBits(1)));
    assert_eq!(parse_header([0x03, 0, 0x05, 0x74]).map(|h| h.body_len), Ok(1396));
}

#[test]
fn incomplete_input_is_none_and_consumes_nothing() {
    let mut out = BytesMut::new();
    encode_frame(&Frame::Ping(proto::Ping { nonce: 7 }), &mut out).unwrap();
    for cut in 0..out.len() {
        let mut part = BytesMut::from(&out[..cut]);
        assert_eq!(decode_frame(&mut part), Ok(None));
        assert_eq!(part.len(), cut);
    }
    assert_eq!(decode_frame(&mut out), Ok(Some(Frame::Ping(proto::Ping { nonce: 7 }))));
    assert!(out.is_empty());
}

#[test]
fn non_minimal_varint_is_non_canonical() {
    // PING nonce=1 canonically is 08 01; 08 81 00 is the same value, overlong.
    let mut buf = BytesMut::from(&[0x03, 0, 0, 3, 0x08, 0x81, 0x00][..]);
    assert_eq!(decode_frame(&mut buf), Err(DecodeError::NonCanonical));
    // Explicit default value: nonce = 0 must be omitted.
    let mut buf = BytesMut::from(&[0x03, 0, 0, 2, 0x08, 0x00][..]);
    assert_eq!(decode_frame(&mut buf), Err(DecodeError::NonCanonical));
    // Unknown field 2.
    let mut buf = BytesMut::from(&[0x03, 0, 0, 4, 0x08, 0x01, 0x10, 0x01][..]);
    assert_eq!(decode_frame(&mut buf), Err(DecodeError::NonCanonical));
}

#[test]
fn direction_table_covers_every_type() {
    for &t in FrameType::ALL {
        assert_eq!(FrameType::from_u8(t as u8), Some(t));
        assert_eq!(FrameType::from_name(t.name()), Some(t));
    }
    assert_eq!(FrameType::Publish.direction(), Direction::ToBroker);
}
