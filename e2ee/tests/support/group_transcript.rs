//! Frozen account and group transcripts for `spec/vectors/e2ee/group_test.json`.
#![allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use tern_e2ee::devices;
use tern_e2ee::group::{OutboundGroupSession, Roster};
use tern_e2ee::primitives::{DhSecret, SigningKey, Suite};
use tern_e2ee::x3dh::DeviceIdentity;

use super::transcript::{hex32, ScriptedRng};

pub struct GroupInputs {
    pub suite: Suite,
    pub alice_aik_seed: [u8; 32],
    pub alice_sig_seed: [u8; 32],
    pub alice_dh: [u8; 32],
    pub bob_aik_seed: [u8; 32],
    pub created_ms: u64,
    pub members: Vec<String>,
    /// The sender chain's randomness: chain key (32 bytes), chain id (4), signing seed (32).
    pub chain_random: Vec<[u8; 32]>,
    pub messages: Vec<String>,
}

pub struct Built {
    pub aik: SigningKey,
    pub device_sig: SigningKey,
    pub identity: DeviceIdentity,
    pub cert: tern_codec::proto::DeviceCert,
    pub list: tern_codec::proto::DeviceList,
}

impl GroupInputs {
    pub fn to_json(&self) -> Value {
        let h = hex::encode;
        json!({
            "suite": self.suite.id(),
            "alice": { "user": "alice", "device": "phone", "aik_seed": h(self.alice_aik_seed), "sig_seed": h(self.alice_sig_seed), "dh_secret": h(self.alice_dh) },
            "bob": { "user": "bob", "aik_seed": h(self.bob_aik_seed) },
            "created_ms": self.created_ms,
            "group": { "id": "crew", "members": self.members },
            "chain_random": self.chain_random.iter().map(hex::encode).collect::<Vec<_>>(),
            "messages": self.messages,
        })
    }

    pub fn from_json(v: &Value) -> GroupInputs {
        GroupInputs {
            suite: Suite::from_id(v["suite"].as_u64().unwrap() as u16).unwrap(),
            alice_aik_seed: hex32(&v["alice"]["aik_seed"]),
            alice_sig_seed: hex32(&v["alice"]["sig_seed"]),
            alice_dh: hex32(&v["alice"]["dh_secret"]),
            bob_aik_seed: hex32(&v["bob"]["aik_seed"]),
            created_ms: v["created_ms"].as_u64().unwrap(),
            members: v["group"]["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap().to_string())
                .collect(),
            chain_random: v["chain_random"].as_array().unwrap().iter().map(hex32).collect(),
            messages: v["messages"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect(),
        }
    }

    pub fn build(&self) -> Built {
        let aik = SigningKey::from_seed(self.alice_aik_seed).unwrap();
        let device_sig = SigningKey::from_seed(self.alice_sig_seed).unwrap();
        let identity = DeviceIdentity {
            user: "alice".into(),
            device: "phone".into(),
            sig_pub: device_sig.public(),
            dh_pub: DhSecret::from_bytes(self.alice_dh).public(),
        };
        let cert = devices::issue_cert(&aik, &device_sig, &identity, &[self.suite.id()], self.created_ms, 0).unwrap();
        let list = devices::sign_list(&aik, "alice", 1, self.created_ms, std::slice::from_ref(&cert)).unwrap();
        Built { aik, device_sig, identity, cert, list }
    }

    pub fn sender(&self) -> OutboundGroupSession {
        let mut rng = ScriptedRng::new(&self.chain_random);
        OutboundGroupSession::new(self.suite, "crew", 1, "alice", "phone", &mut rng).unwrap()
    }

    pub fn run(&self) -> Value {
        let b = self.build();
        let bob_aik = SigningKey::from_seed(self.bob_aik_seed).unwrap();
        let mut op = Roster::propose_create("crew", "alice", "phone", &self.members, self.created_ms).unwrap();
        op.sign(&b.device_sig).unwrap();
        let roster = Roster::create(&op, &b.identity.sig_pub).unwrap();
        let mut sender = self.sender();
        let distribution = sender.distribution();
        let messages: Vec<String> = self
            .messages
            .iter()
            .map(|m| hex::encode(sender.encrypt(m.as_bytes()).unwrap().to_bytes().unwrap()))
            .collect();
        json!({
            "aik_pub": hex::encode(b.aik.public()),
            "device_sig_pub": hex::encode(b.identity.sig_pub),
            "device_dh_pub": hex::encode(b.identity.dh_pub),
            "cert_aik_sig": hex::encode(&b.cert.aik_sig),
            "cert_dev_sig": hex::encode(&b.cert.dev_sig),
            "cert_hash": hex::encode(devices::cert_hash(&b.cert).unwrap()),
            "list_aik_sig": hex::encode(&b.list.aik_sig),
            "safety_number": devices::safety_number(&b.aik.public(), "alice", &bob_aik.public(), "bob"),
            "create_op": hex::encode(op.to_bytes().unwrap()),
            "create_op_hash": hex::encode(op.hash().unwrap()),
            "roster": roster.members().iter().cloned().collect::<Vec<_>>(),
            "distribution": hex::encode(distribution.to_bytes().unwrap().as_slice()),
            "messages": messages,
        })
    }
}
