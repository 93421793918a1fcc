//! Frozen session transcripts for `spec/vectors/e2ee/`: fixed keys and fixed randomness in,
//! every public value out. Shared by the generator (`examples/gen_e2ee_vectors.rs`) and the test
//! that replays the vectors (`tests/vectors.rs`).
#![allow(
    dead_code,
    missing_docs,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::VecDeque;

use rand_core::{CryptoRng, RngCore};
use serde_json::{json, Value};
use tern_e2ee::primitives::{DhSecret, SigningKey, Suite};
use tern_e2ee::ratchet::Session;
use tern_e2ee::x3dh::{self, Bundle, DeviceIdentity, OneTimePrekey, SignedPrekey};

/// Serves the given bytes as the party's randomness, in order (each value is 32 bytes; a draw
/// of fewer bytes, like a 4-byte chain id, takes the next bytes of the stream).
pub struct ScriptedRng(VecDeque<u8>);

impl ScriptedRng {
    pub fn new(values: &[[u8; 32]]) -> Self {
        ScriptedRng(values.iter().flatten().copied().collect())
    }
}

impl RngCore for ScriptedRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest.iter_mut() {
            *b = self.0.pop_front().expect("the transcript's randomness ran out");
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ScriptedRng {}

/// The fixed inputs of one transcript.
pub struct Inputs {
    pub suite: Suite,
    pub alice_sig_seed: [u8; 32],
    pub alice_dh: [u8; 32],
    pub bob_sig_seed: [u8; 32],
    pub bob_dh: [u8; 32],
    pub spk: [u8; 32],
    pub spk_id: u32,
    pub spk_created_ms: u64,
    pub opk: Option<(u32, [u8; 32])>,
    pub now_ms: u64,
    /// Alice draws: EK, then one ratchet key per DH step she takes.
    pub alice_random: Vec<[u8; 32]>,
    /// Bob draws one ratchet key per DH step he takes.
    pub bob_random: Vec<[u8; 32]>,
    /// (sender 'a' or 'b', plaintext), in sending order; each is delivered at once.
    pub messages: Vec<(char, String)>,
}

pub fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

impl Inputs {
    pub fn to_json(&self) -> Value {
        let h = hex::encode;
        json!({
            "suite": self.suite.id(),
            "alice": { "user": "alice", "device": "phone", "sig_seed": h(self.alice_sig_seed), "dh_secret": h(self.alice_dh) },
            "bob": { "user": "bob", "device": "laptop", "sig_seed": h(self.bob_sig_seed), "dh_secret": h(self.bob_dh) },
            "signed_prekey": { "id": self.spk_id, "secret": h(self.spk), "created_ms": self.spk_created_ms },
            "one_time_prekey": self.opk.map(|(id, s)| json!({ "id": id, "secret": h(s) })),
            "now_ms": self.now_ms,
            "alice_random": self.alice_random.iter().map(hex::encode).collect::<Vec<_>>(),
            "bob_random": self.bob_random.iter().map(hex::encode).collect::<Vec<_>>(),
            "messages": self.messages.iter().map(|(f, p)| json!({ "from": f.to_string(), "plaintext": p })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Inputs {
        Inputs {
            suite: Suite::from_id(v["suite"].as_u64().unwrap() as u16).unwrap(),
            alice_sig_seed: hex32(&v["alice"]["sig_seed"]),
            alice_dh: hex32(&v["alice"]["dh_secret"]),
            bob_sig_seed: hex32(&v["bob"]["sig_seed"]),
            bob_dh: hex32(&v["bob"]["dh_secret"]),
            spk: hex32(&v["signed_prekey"]["secret"]),
            spk_id: v["signed_prekey"]["id"].as_u64().unwrap() as u32,
            spk_created_ms: v["signed_prekey"]["created_ms"].as_u64().unwrap(),
            opk: v["one_time_prekey"].as_object().map(|o| (o["id"].as_u64().unwrap() as u32, hex32(&o["secret"]))),
            now_ms: v["now_ms"].as_u64().unwrap(),
            alice_random: v["alice_random"].as_array().unwrap().iter().map(hex32).collect(),
            bob_random: v["bob_random"].as_array().unwrap().iter().map(hex32).collect(),
            messages: v["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (m["from"].as_str().unwrap().chars().next().unwrap(), m["plaintext"].as_str().unwrap().to_string())
                })
                .collect(),
        }
    }

    /// The identities, the published bundle and its secrets.
    fn parties(&self) -> (DeviceIdentity, DhSecret, DeviceIdentity, DhSecret, Bundle) {
        let (a_sig, b_sig) =
            (SigningKey::from_seed(self.alice_sig_seed).unwrap(), SigningKey::from_seed(self.bob_sig_seed).unwrap());
        let (a_dh, b_dh) = (DhSecret::from_bytes(self.alice_dh), DhSecret::from_bytes(self.bob_dh));
        let alice = DeviceIdentity {
            user: "alice".into(),
            device: "phone".into(),
            sig_pub: a_sig.public(),
            dh_pub: a_dh.public(),
        };
        let bob = DeviceIdentity {
            user: "bob".into(),
            device: "laptop".into(),
            sig_pub: b_sig.public(),
            dh_pub: b_dh.public(),
        };
        let mut spk = SignedPrekey {
            id: self.spk_id,
            public: DhSecret::from_bytes(self.spk).public(),
            created_ms: self.spk_created_ms,
            sig: [0; 64],
        };
        x3dh::sign_spk(&b_sig, "bob", "laptop", &mut spk).unwrap();
        let opk = self.opk.map(|(id, s)| {
            let mut o = OneTimePrekey { id, public: DhSecret::from_bytes(s).public(), sig: [0; 64] };
            x3dh::sign_opk(&b_sig, "bob", "laptop", &mut o).unwrap();
            o
        });
        let bundle = Bundle { identity: bob.clone(), signed_prekey: spk, one_time_prekey: opk };
        (alice, a_dh, bob, b_dh, bundle)
    }

    /// The bundle Bob publishes (for negative vectors that alter it).
    pub fn bundle(&self) -> Bundle {
        self.parties().4
    }

    /// Runs the transcript and returns every public value, as the vectors store them.
    pub fn run(&self) -> Value {
        let (alice, a_dh, bob, b_dh, bundle) = self.parties();
        let (mut a_rng, mut b_rng) = (ScriptedRng::new(&self.alice_random), ScriptedRng::new(&self.bob_random));
        let init = x3dh::initiate(self.suite, &alice, &a_dh, &bundle, self.now_ms, &mut a_rng).unwrap();
        let spk = DhSecret::from_bytes(self.spk);
        let opk = self.opk.map(|(_, s)| DhSecret::from_bytes(s));
        let (sk, ad) = x3dh::respond(self.suite, &bob, &b_dh, &spk, opk.as_ref(), &alice, &init.ek_pub).unwrap();
        assert_eq!(*sk, *init.shared);
        let mut a =
            Session::initiator(self.suite, &init.shared, init.ad.clone(), &bundle.signed_prekey.public, &mut a_rng)
                .unwrap();
        let mut b = Session::responder(self.suite, &sk, ad.clone(), spk);
        let mut messages = Vec::new();
        for (from, text) in &self.messages {
            let (tx, rx, rx_rng) =
                if *from == 'a' { (&mut a, &mut b, &mut b_rng) } else { (&mut b, &mut a, &mut a_rng) };
            let m = tx.encrypt(text.as_bytes()).unwrap();
            assert_eq!(rx.decrypt(&m, rx_rng).unwrap(), text.as_bytes());
            messages.push(json!({
                "from": from.to_string(), "dh_pub": hex::encode(m.dh_pub), "pn": m.pn, "n": m.n,
                "ciphertext": hex::encode(&m.ciphertext),
            }));
        }
        // The four agreements, recomputed here from the secrets (Alice's first draw is EK).
        let ek = DhSecret::from_bytes(self.alice_random[0]);
        let spk_pub = bundle.signed_prekey.public;
        let dh1 = DhSecret::from_bytes(self.alice_dh).dh(&spk_pub).unwrap();
        let dh2 = ek.dh(&bob.dh_pub).unwrap();
        let dh3 = ek.dh(&spk_pub).unwrap();
        let dh4 = bundle.one_time_prekey.as_ref().map(|o| hex::encode(*ek.dh(&o.public).unwrap()));
        assert_eq!(ek.public(), init.ek_pub, "EK is Alice's first draw");
        json!({
            "dh1": hex::encode(*dh1), "dh2": hex::encode(*dh2), "dh3": hex::encode(*dh3), "dh4": dh4,
            "alice_sig_pub": hex::encode(alice.sig_pub), "alice_dh_pub": hex::encode(alice.dh_pub),
            "bob_sig_pub": hex::encode(bob.sig_pub), "bob_dh_pub": hex::encode(bob.dh_pub),
            "spk_pub": hex::encode(bundle.signed_prekey.public), "spk_sig": hex::encode(bundle.signed_prekey.sig),
            "opk_pub": bundle.one_time_prekey.as_ref().map(|o| hex::encode(o.public)),
            "opk_sig": bundle.one_time_prekey.as_ref().map(|o| hex::encode(o.sig)),
            "ek_pub": hex::encode(init.ek_pub),
            "shared_key": hex::encode(*init.shared),
            "associated_data": hex::encode(&init.ad),
            "messages": messages,
        })
    }
}
