//! MQTT 3.1.1 and 5 packets, version-neutral: the broker's MQTT connection reads and writes
//! these, and the rumqtt project's `mqttbytes` codec (from the `rumqttc` crate) does the bytes.
//!
//! Why that codec and not rumqttd's own `protocol` module: rumqttd 0.20 keeps the QoS and
//! packet identifier of its `Publish` crate-private, so code outside rumqttd cannot acknowledge
//! a QoS 1/2 PUBLISH with it. `mqttbytes` is the same project's codec with public fields.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4b, v4};
use rumqttc::v5::mqttbytes::{self as m5b, v5};

/// The MQTT protocol level of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// A Will, as CONNECT carries it.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) content_type: String,
}

/// What the broker needs of a CONNECT.
#[derive(Debug, Clone)]
pub(crate) struct ConnectIn {
    pub(crate) client_id: String,
    /// 3.1.1 Clean Session, 5 Clean Start.
    pub(crate) clean: bool,
    pub(crate) keep_alive: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) will: Option<Will>,
    /// MQTT 5 Session Expiry Interval (0 when absent; 3.1.1 has none).
    pub(crate) session_expiry: u32,
    /// MQTT 5 Receive Maximum.
    pub(crate) receive_max: Option<u16>,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub(crate) max_packet_size: Option<u32>,
}

/// A PUBLISH from the device.
#[derive(Debug, Clone)]
pub(crate) struct PublishIn {
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) pkid: u16,
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) content_type: String,
}

/// A packet from the device.
#[derive(Debug, Clone)]
pub(crate) enum Incoming {
    Connect(Box<ConnectIn>),
    Publish(PublishIn),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet only a server sends, or AUTH (not offered): a protocol error.
    Unexpected(&'static str),
}

/// Why bytes could not become a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The packet is longer than the broker accepts.
    TooLarge,
    /// Anything else malformed.
    Malformed(String),
}

/// The protocol level of a complete or partial first packet, once enough bytes are there
/// (`Ok(None)`: need more). The first packet must be CONNECT.
pub(crate) fn peek_level(buf: &[u8]) -> Result<Option<u8>, DecodeError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if first != 0x10 {
        return Err(DecodeError::Malformed("the first packet must be CONNECT".into()));
    }
    // Remaining length: up to 4 bytes of 7 bits each.
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else { return Ok(None) };
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(DecodeError::Malformed("malformed remaining length".into()));
        }
    }
    let (Some(&hi), Some(&lo)) = (buf.get(at), buf.get(at + 1)) else { return Ok(None) };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    match buf.get(at + 2 + name_len) {
        None => Ok(None),
        Some(&level) => Ok(Some(level)),
    }
}

/// Decodes the next packet of a connection at `version` (`Ok(None)`: need more bytes).
pub(crate) fn decode(version: Version, buf: &mut BytesMut, max: usize) -> Result<Option<Incoming>, DecodeError> {
    match version {
        Version::V4 => match v4::Packet::read(buf, max) {
            Ok(p) => Ok(Some(from_v4(p))),
            Err(m4b::Error::InsufficientBytes(_)) => Ok(None),
            Err(m4b::Error::PayloadSizeLimitExceeded(_)) => Err(DecodeError::TooLarge),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
        Version::V5 => match v5::Packet::read(buf, Some(u32::try_from(max).unwrap_or(u32::MAX))) {
            Ok(p) => Ok(Some(from_v5(p))),
            Err(m5b::Error::InsufficientBytes(_)) => Ok(None),
            Err(m5b::Error::PayloadSizeLimitExceeded { .. }) => Err(DecodeError::TooLarge),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
    }
}

fn from_v4(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::Connect(c) => Incoming::Connect(Box::new(ConnectIn {
            client_id: c.client_id,
            clean: c.clean_session,
            keep_alive: c.keep_alive,
            username: c.login.as_ref().map(|l| l.username.clone()).filter(|u| !u.is_empty()),
            password: c.login.map(|l| l.password),
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: w.qos as u8,
                content_type: String::new(),
            }),
            session_expiry: 0,
            receive_max: None,
            max_packet_size: None,
        })),
        v4::Packet::Publish(p) => Incoming::Publish(PublishIn {
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
            topic: p.topic,
            payload: p.payload,
            content_type: String::new(),
        }),
        v4::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
        v4::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v4::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| (f.path, f.qos as u8)).collect(),
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe { pkid: u.pkid, filters: u.topics },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect,
        v4::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v4::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v4::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v4::Packet::PingResp => Incoming::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    match p {
        v5::Packet::Connect(c, will, login) => {
            let props = c.properties.unwrap_or_default();
            Incoming::Connect(Box::new(ConnectIn {
                client_id: c.client_id,
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                username: login.as_ref().map(|l| l.username.clone()).filter(|u| !u.is_empty()),
                password: login.map(|l| l.password),
                will: will.map(|w| Will {
                    topic: String::from_utf8_lossy(&w.topic).into_owned(),
                    payload: w.message,
                    qos: w.qos as u8,
                    content_type: w.properties.and_then(|p| p.content_type).unwrap_or_default(),
                }),
                session_expiry: props.session_expiry_interval.unwrap_or(0),
                receive_max: props.receive_maximum,
                max_packet_size: props.max_packet_size,
            }))
        }
        v5::Packet::Publish(p) => Incoming::Publish(PublishIn {
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            content_type: p.properties.and_then(|p| p.content_type).unwrap_or_default(),
        }),
        v5::Packet::PubAck(a) => Incoming::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Incoming::PubRec(a.pkid),
        v5::Packet::PubRel(a) => Incoming::PubRel(a.pkid),
        v5::Packet::PubComp(a) => Incoming::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| (f.path, f.qos as u8)).collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe { pkid: u.pkid, filters: u.filters },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(_) => Incoming::Disconnect,
        v5::Packet::ConnAck(_) => Incoming::Unexpected("CONNACK"),
        v5::Packet::SubAck(_) => Incoming::Unexpected("SUBACK"),
        v5::Packet::UnsubAck(_) => Incoming::Unexpected("UNSUBACK"),
        v5::Packet::PingResp(_) => Incoming::Unexpected("PINGRESP"),
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
    }
}

/// CONNACK outcomes, each with its 3.1.1 return code and MQTT 5 reason code (spec 15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectOutcome {
    Accepted,
    /// 3.1.1 0x02, 5 0x85.
    BadClientId,
    /// 3.1.1 0x04, 5 0x86.
    BadUserName,
    /// 3.1.1 0x05, 5 0x87.
    NotAuthorized,
    /// 3.1.1 0x03, 5 0x89 (Server busy).
    Busy,
}

/// What the broker tells a device in CONNACK besides the outcome (MQTT 5 properties).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnAckInfo {
    pub(crate) session_present: bool,
    pub(crate) receive_max: u16,
    pub(crate) max_packet_size: u32,
    /// The session expiry the broker uses, when it differs from the one asked for.
    pub(crate) session_expiry: Option<u32>,
}

/// A message to the device.
#[derive(Debug, Clone, Default)]
pub(crate) struct PublishOut {
    pub(crate) qos: u8,
    pub(crate) dup: bool,
    pub(crate) pkid: u16,
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) content_type: String,
    pub(crate) user_properties: Vec<(String, String)>,
}

/// An acknowledgement's outcome: success, or a refusal (MQTT 5 reason code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckReason {
    Success,
    NotAuthorized,
    TopicNameInvalid,
    /// PUBREL / PUBCOMP for an identifier the receiver does not hold.
    PacketIdNotFound,
    /// Over the device's PUBLISH rate (MQTT 5 0x97).
    QuotaExceeded,
}

/// Why a SUBSCRIBE filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubRefusal {
    /// 3.1.1 0x80, 5 0x87.
    NotAuthorized,
    /// Allowed but not offered over MQTT (a read fan-out group): 3.1.1 0x80, 5 0x83.
    Unsupported,
}

/// A packet to the device.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    ConnAck(ConnectOutcome, ConnAckInfo),
    Publish(Box<PublishOut>),
    PubAck(u16, AckReason),
    PubRec(u16, AckReason),
    PubRel(u16),
    PubComp(u16, AckReason),
    /// Per filter: granted QoS, or refused (REQ-MQT-007).
    SubAck(u16, Vec<Result<u8, SubRefusal>>),
    /// Per filter: whether a subscription existed.
    UnsubAck(u16, Vec<bool>),
    PingResp,
    /// MQTT 5 only (3.1.1 servers just close).
    Disconnect(v5::DisconnectReasonCode),
}

fn qos4(q: u8) -> m4b::QoS {
    match q {
        0 => m4b::QoS::AtMostOnce,
        1 => m4b::QoS::AtLeastOnce,
        _ => m4b::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> m5b::QoS {
    match q {
        0 => m5b::QoS::AtMostOnce,
        1 => m5b::QoS::AtLeastOnce,
        _ => m5b::QoS::ExactlyOnce,
    }
}

/// Appends a packet's bytes; packets that do not exist in `version` (DISCONNECT under 3.1.1)
/// write nothing.
pub(crate) fn encode(version: Version, packet: Outgoing, out: &mut BytesMut) -> Result<(), String> {
    let unlimited = usize::MAX;
    let written = match version {
        Version::V4 => {
            let p = match packet {
                Outgoing::ConnAck(outcome, info) => v4::Packet::ConnAck(v4::ConnAck {
                    session_present: info.session_present && outcome == ConnectOutcome::Accepted,
                    code: match outcome {
                        ConnectOutcome::Accepted => v4::ConnectReturnCode::Success,
                        ConnectOutcome::BadClientId => v4::ConnectReturnCode::BadClientId,
                        ConnectOutcome::BadUserName => v4::ConnectReturnCode::BadUserNamePassword,
                        ConnectOutcome::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                        ConnectOutcome::Busy => v4::ConnectReturnCode::ServiceUnavailable,
                    },
                }),
                Outgoing::Publish(p) => v4::Packet::Publish(v4::Publish {
                    dup: p.dup,
                    qos: qos4(p.qos),
                    retain: false,
                    topic: p.topic,
                    pkid: if p.qos == 0 { 0 } else { p.pkid },
                    payload: p.payload,
                }),
                Outgoing::PubAck(pkid, _) => v4::Packet::PubAck(v4::PubAck { pkid }),
                Outgoing::PubRec(pkid, _) => v4::Packet::PubRec(v4::PubRec { pkid }),
                Outgoing::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel { pkid }),
                Outgoing::PubComp(pkid, _) => v4::Packet::PubComp(v4::PubComp { pkid }),
                Outgoing::SubAck(pkid, granted) => v4::Packet::SubAck(v4::SubAck {
                    pkid,
                    return_codes: granted
                        .into_iter()
                        .map(|g| {
                            g.map_or(v4::SubscribeReasonCode::Failure, |q| v4::SubscribeReasonCode::Success(qos4(q)))
                        })
                        .collect(),
                }),
                Outgoing::UnsubAck(pkid, _) => v4::Packet::UnsubAck(v4::UnsubAck { pkid }),
                Outgoing::PingResp => v4::Packet::PingResp,
                Outgoing::Disconnect(_) => return Ok(()),
            };
            p.write(out, unlimited).map_err(|e| e.to_string())?
        }
        Version::V5 => {
            let p = match packet {
                Outgoing::ConnAck(outcome, info) => v5::Packet::ConnAck(v5::ConnAck {
                    session_present: info.session_present && outcome == ConnectOutcome::Accepted,
                    code: match outcome {
                        ConnectOutcome::Accepted => v5::ConnectReturnCode::Success,
                        ConnectOutcome::BadClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                        ConnectOutcome::BadUserName => v5::ConnectReturnCode::BadUserNamePassword,
                        ConnectOutcome::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                        ConnectOutcome::Busy => v5::ConnectReturnCode::ServerBusy,
                    },
                    properties: (outcome == ConnectOutcome::Accepted).then(|| v5::ConnAckProperties {
                        session_expiry_interval: info.session_expiry,
                        receive_max: Some(info.receive_max),
                        max_qos: None,
                        retain_available: Some(0),
                        max_packet_size: Some(info.max_packet_size),
                        assigned_client_identifier: None,
                        topic_alias_max: Some(0),
                        reason_string: None,
                        user_properties: Vec::new(),
                        wildcard_subscription_available: Some(1),
                        subscription_identifiers_available: Some(0),
                        shared_subscription_available: Some(0),
                        server_keep_alive: None,
                        response_information: None,
                        server_reference: None,
                        authentication_method: None,
                        authentication_data: None,
                    }),
                }),
                Outgoing::Publish(p) => {
                    let props =
                        (!p.content_type.is_empty() || !p.user_properties.is_empty()).then(|| v5::PublishProperties {
                            content_type: (!p.content_type.is_empty()).then(|| p.content_type.clone()),
                            user_properties: p.user_properties.clone(),
                            ..Default::default()
                        });
                    v5::Packet::Publish(v5::Publish {
                        dup: p.dup,
                        qos: qos5(p.qos),
                        retain: false,
                        topic: Bytes::from(p.topic.into_bytes()),
                        pkid: if p.qos == 0 { 0 } else { p.pkid },
                        payload: p.payload,
                        properties: props,
                    })
                }
                Outgoing::PubAck(pkid, reason) => v5::Packet::PubAck(v5::PubAck {
                    pkid,
                    reason: match reason {
                        AckReason::NotAuthorized => v5::PubAckReason::NotAuthorized,
                        AckReason::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
                        AckReason::QuotaExceeded => v5::PubAckReason::QuotaExceeded,
                        AckReason::Success | AckReason::PacketIdNotFound => v5::PubAckReason::Success,
                    },
                    properties: None,
                }),
                Outgoing::PubRec(pkid, reason) => v5::Packet::PubRec(v5::PubRec {
                    pkid,
                    reason: match reason {
                        AckReason::NotAuthorized => v5::PubRecReason::NotAuthorized,
                        AckReason::TopicNameInvalid => v5::PubRecReason::TopicNameInvalid,
                        AckReason::QuotaExceeded => v5::PubRecReason::QuotaExceeded,
                        AckReason::Success | AckReason::PacketIdNotFound => v5::PubRecReason::Success,
                    },
                    properties: None,
                }),
                Outgoing::PubRel(pkid) => {
                    v5::Packet::PubRel(v5::PubRel { pkid, reason: v5::PubRelReason::Success, properties: None })
                }
                Outgoing::PubComp(pkid, reason) => v5::Packet::PubComp(v5::PubComp {
                    pkid,
                    reason: if reason == AckReason::PacketIdNotFound {
                        v5::PubCompReason::PacketIdentifierNotFound
                    } else {
                        v5::PubCompReason::Success
                    },
                    properties: None,
                }),
                Outgoing::SubAck(pkid, granted) => v5::Packet::SubAck(v5::SubAck {
                    pkid,
                    return_codes: granted
                        .into_iter()
                        .map(|g| match g {
                            Ok(q) => v5::SubscribeReasonCode::Success(qos5(q)),
                            Err(SubRefusal::NotAuthorized) => v5::SubscribeReasonCode::NotAuthorized,
                            Err(SubRefusal::Unsupported) => v5::SubscribeReasonCode::ImplementationSpecific,
                        })
                        .collect(),
                    properties: None,
                }),
                Outgoing::UnsubAck(pkid, existed) => v5::Packet::UnsubAck(v5::UnsubAck {
                    pkid,
                    reasons: existed
                        .into_iter()
                        .map(
                            |e| if e { v5::UnsubAckReason::Success } else { v5::UnsubAckReason::NoSubscriptionExisted },
                        )
                        .collect(),
                    properties: None,
                }),
                Outgoing::PingResp => v5::Packet::PingResp(v5::PingResp),
                Outgoing::Disconnect(reason_code) => {
                    v5::Packet::Disconnect(v5::Disconnect { reason_code, properties: None })
                }
            };
            p.write(out, None).map_err(|e| e.to_string())?
        }
    };
    let _ = written;
    Ok(())
}

/// The CONNACK that refuses an unsupported protocol level: 3.1.1's layout, return code 0x01,
/// which is what a client of any level understands (REQ-MQT-001).
pub(crate) const CONNACK_UNSUPPORTED_LEVEL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn the_level_of_a_connect_is_found_before_the_whole_packet_is_there() {
        // CONNECT, remaining length 16, "MQTT", level 5 ...
        let bytes = [0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02];
        assert_eq!(peek_level(&bytes[..3]), Ok(None));
        assert_eq!(peek_level(&bytes[..8]), Ok(None));
        assert_eq!(peek_level(&bytes), Ok(Some(5)));
        // MQTT 3.1 ("MQIsdp", level 3).
        let old = [0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03];
        assert_eq!(peek_level(&old), Ok(Some(3)));
        assert!(peek_level(&[0x30, 0x00]).is_err(), "a PUBLISH first is refused");
    }

    #[test]
    fn packets_round_trip_through_both_versions() {
        for version in [Version::V4, Version::V5] {
            let mut buf = BytesMut::new();
            let out = PublishOut {
                qos: 2,
                pkid: 7,
                topic: "user/bob".into(),
                payload: Bytes::from_static(b"hi"),
                ..Default::default()
            };
            encode(version, Outgoing::Publish(Box::new(out)), &mut buf).unwrap();
            // Read it back as if a device had sent it.
            match decode(version, &mut buf, 1024).unwrap().unwrap() {
                Incoming::Publish(p) => {
                    assert_eq!((p.qos, p.pkid, p.topic.as_str(), &p.payload[..]), (2, 7, "user/bob", &b"hi"[..]));
                }
                other => panic!("{other:?}"),
            }
            assert!(buf.is_empty());
            encode(version, Outgoing::PubRel(9), &mut buf).unwrap();
            assert!(matches!(decode(version, &mut buf, 1024).unwrap(), Some(Incoming::PubRel(9))));
        }
    }

    #[test]
    fn an_oversized_packet_is_refused_from_its_header() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0x03][..]);
        assert_eq!(decode(Version::V4, &mut buf, 1024).unwrap_err(), DecodeError::TooLarge);
    }
}
