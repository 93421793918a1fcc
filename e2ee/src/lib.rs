//! `tern-e2ee`: the client side of Tern's end-to-end encryption (spec/09-e2ee.md), with no I/O.
//!
//! Randomness is injected ([`rand_core::RngCore`] + [`rand_core::CryptoRng`]) so that tests and
//! vectors are deterministic; [`SystemRng`] adapts ring's `SystemRandom` for real use. Every
//! secret is zeroized on drop.
//!
//! # Layout
//! - [`primitives`]: the suites' AEADs, HKDF/HMAC-SHA-256, X25519 with the key-validity rules
//!   (high-bit and all-zero checks), Ed25519 signing and strict verification.
//! - [`x3dh`]: session setup against a claimed bundle.
//! - [`ratchet`]: the Double Ratchet for 1:1 messages.
//! - [`devices`]: device certificates, signed device lists, safety numbers.
//! - [`group`]: sender keys for groups and client-signed membership operations.
//! - [`account`]: one device's whole state, tying the above to the wire envelopes.
#![forbid(unsafe_code)]

pub mod account;
pub mod devices;
pub mod group;
pub mod persist;
pub mod primitives;
pub mod ratchet;
pub mod x3dh;

pub use primitives::{CryptoError, Suite, SystemRng};
