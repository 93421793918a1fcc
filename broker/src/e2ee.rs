//! End-to-end encryption over the client library: a [`tern_e2ee::account::Account`] driven
//! through a [`Client`] — key publication, key queries and bundle claims through the key
//! directory, one envelope per recipient device, sender-key distribution for groups, and a
//! key store file. `tern send --e2ee` and `tern listen` use it.

use std::collections::VecDeque;
use std::path::Path;

use prost::Message;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tern_codec::proto::{self, request::Op, response::Result as R};
use tern_codec::{Frame, ReasonCode};
use tern_e2ee::account::{Account, AccountError, Received, CONTENT_TYPE, OP_CONTENT_TYPE};

use crate::client::{Client, ClientError, Incoming};

/// Why an E2EE operation failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    /// The connection failed or closed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The cryptographic layer refused something.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The broker refused a key-directory request.
    #[error("the key directory refused the request: {0}")]
    Refused(String),
    /// The key store file could not be read or written.
    #[error("key store {path}: {reason}")]
    Store {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// What arrived for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A decrypted 1:1 message.
    Text {
        /// Sender user.
        from_user: String,
        /// Sender device.
        from_device: String,
        /// Plaintext.
        text: Vec<u8>,
    },
    /// A decrypted group message.
    Group {
        /// The group.
        group: String,
        /// Sender user.
        from_user: String,
        /// Sender device.
        from_device: String,
        /// Plaintext.
        text: Vec<u8>,
    },
    /// A message that is not end-to-end encrypted, as delivered.
    Plain(Box<proto::Deliver>),
}

/// A client with end-to-end encryption.
pub struct E2eeClient {
    /// This device's E2EE state.
    pub account: Account,
    /// The connection.
    pub client: Client,
    rng: ChaCha20Rng,
    backlog: VecDeque<proto::Deliver>,
    /// Group messages that arrived before their sender's key (keys travel on the pairwise
    /// streams, group messages on the group's): retried when a key or operation arrives.
    waiting: VecDeque<proto::Deliver>,
}

/// Group messages kept while waiting for keys.
const MAX_WAITING: usize = 1000;

fn now_ms() -> u64 {
    crate::unix_now_ms()
}

impl E2eeClient {
    /// Wraps a connected client; `seed` seeds the randomness (draw it from the system).
    pub fn new(client: Client, account: Account, seed: [u8; 32]) -> E2eeClient {
        E2eeClient {
            account,
            client,
            rng: ChaCha20Rng::from_seed(seed),
            backlog: VecDeque::new(),
            waiting: VecDeque::new(),
        }
    }

    /// The account and the connection, e.g. to go offline and come back with the same state.
    pub fn into_parts(self) -> (Account, Client) {
        (self.account, self.client)
    }

    /// Sends a REQUEST and returns its RESPONSE; messages arriving meanwhile are kept.
    pub async fn request(&mut self, op: Op) -> Result<proto::Response, E2eeError> {
        let id = self.client.send(Frame::Request(proto::Request { request_id: 0, op: Some(op) })).await?;
        loop {
            match self.client.next().await.ok_or(ClientError::Closed)? {
                Incoming::Frame(f) => {
                    if let Frame::Response(r) = *f {
                        if r.request_id == id {
                            return Ok(r);
                        }
                    }
                }
                Incoming::Message(m) => self.backlog.push_back(m),
                Incoming::Package(ms) => self.backlog.extend(ms),
                Incoming::Connected { .. } => {}
            }
        }
    }

    async fn request_ok(&mut self, op: Op) -> Result<proto::Response, E2eeError> {
        let r = self.request(op).await?;
        if r.reason != 0 {
            let reason = ReasonCode::from_u32(r.reason).map_or_else(|| format!("code {}", r.reason), |c| c.to_string());
            return Err(E2eeError::Refused(reason));
        }
        Ok(r)
    }

    /// Publishes this device's public keys to the directory, and refills its one-time
    /// prekeys when the directory reports the pool running low.
    pub async fn publish_keys(&mut self) -> Result<(), E2eeError> {
        let r = self.request_ok(Op::KeyPublish(Box::new(self.account.key_publish()))).await?;
        self.account.published();
        let remaining = match r.result {
            Some(R::KeyPublished(k)) => k.one_time_prekeys_remaining,
            _ => 0,
        };
        if self.account.top_up_prekeys(remaining, &mut self.rng)? > 0 {
            self.request_ok(Op::KeyPublish(Box::new(self.account.key_publish()))).await?;
            self.account.published();
        }
        Ok(())
    }

    /// Fetches and verifies the devices of `users`.
    pub async fn learn(&mut self, users: &[String]) -> Result<(), E2eeError> {
        let r = self.request_ok(Op::KeyQuery(proto::KeyQuery { user_ids: users.to_vec() })).await?;
        if let Some(R::Keys(listing)) = r.result {
            for keys in listing.users.iter().filter(|k| k.device_list.is_some()) {
                self.account.learn(keys)?;
            }
        }
        Ok(())
    }

    async fn bundle(&mut self, user: &str, device: &str) -> Result<Option<proto::KeyBundle>, E2eeError> {
        if !self.account.needs_bundle(user, device) {
            return Ok(None);
        }
        let op = Op::KeyClaim(proto::KeyClaim { user_id: user.into(), device_id: device.into() });
        match self.request_ok(op).await?.result {
            Some(R::KeyBundle(b)) => Ok(Some(*b)),
            _ => Err(E2eeError::Refused(format!("no bundle for {user}/{device}"))),
        }
    }

    /// Encrypts `text` for every verified device of `peer` and this user's other devices, one
    /// PUBLISH each on `user/{peer}`. Returns how many devices it was encrypted for.
    pub async fn send(&mut self, peer: &str, text: &[u8]) -> Result<usize, E2eeError> {
        let me = self.account.identity().user.clone();
        self.learn(&[peer.to_owned(), me.clone()]).await?;
        let mut targets: Vec<(String, String)> =
            self.account.devices_of(peer).into_iter().map(|d| (peer.to_owned(), d)).collect();
        if peer != me {
            targets.extend(self.account.devices_of(&me).into_iter().map(|d| (me.clone(), d)));
        }
        if self.account.devices_of(peer).is_empty() {
            return Err(E2eeError::Refused(format!("{peer} has published no E2EE keys")));
        }
        for (user, device) in &targets {
            let bundle = self.bundle(user, device).await?;
            let env = self.account.encrypt(user, device, bundle.as_ref(), text, now_ms(), &mut self.rng)?;
            self.client.publish_typed(&format!("user/{peer}"), env.encode_to_vec(), 2, CONTENT_TYPE).await?;
        }
        Ok(targets.len())
    }

    /// Sends a group message, first distributing this device's sender key to the roster's
    /// verified devices that lack it. Returns the group envelope.
    pub async fn send_group(&mut self, group: &str, text: &[u8]) -> Result<proto::E2eeEnvelope, E2eeError> {
        let members = self.account.group_members(group).ok_or_else(|| AccountError::NotAMember(group.into()))?;
        self.learn(&members).await?;
        let (distributions, env) = self.account.group_encrypt(group, text, &mut self.rng)?;
        for d in distributions {
            let bundle = self.bundle(&d.user, &d.device).await?;
            let skdm = self.account.encrypt_distribution(
                &d.user,
                &d.device,
                bundle.as_ref(),
                &d.inner,
                now_ms(),
                &mut self.rng,
            )?;
            self.client.publish_typed(&format!("user/{}", d.user), skdm.encode_to_vec(), 2, CONTENT_TYPE).await?;
        }
        self.client.publish_typed(&format!("group/{group}"), env.encode_to_vec(), 2, CONTENT_TYPE).await?;
        Ok(env)
    }

    /// Submits a signed membership operation to the broker (which sequences its epoch) and
    /// relays it to the group's members.
    pub async fn submit_group_op(&mut self, op: &tern_e2ee::group::GroupOp) -> Result<(), E2eeError> {
        let bytes = op.to_bytes().map_err(AccountError::from)?;
        let submit =
            proto::GroupOpSubmit { group_id: op.group_id.clone(), epoch: op.epoch, signed_op: bytes.clone().into() };
        self.request_ok(Op::GroupOpSubmit(submit)).await?;
        self.client.publish_typed(&format!("group/{}", op.group_id), bytes, 2, OP_CONTENT_TYPE).await?;
        Ok(())
    }

    /// The next delivered message, raw (from the backlog first).
    pub async fn next_deliver(&mut self) -> Option<proto::Deliver> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        loop {
            match self.client.next().await? {
                Incoming::Message(m) => return Some(m),
                Incoming::Package(ms) => {
                    self.backlog.extend(ms);
                    if let Some(m) = self.backlog.pop_front() {
                        return Some(m);
                    }
                }
                _ => continue,
            }
        }
    }

    /// Handles one delivered message: applies group operations and sender keys, decrypts
    /// what is addressed to this device. `Ok(None)` when there is nothing for the application.
    pub async fn handle(&mut self, m: proto::Deliver) -> Result<Option<Event>, E2eeError> {
        if m.content_type == OP_CONTENT_TYPE {
            self.learn(std::slice::from_ref(&m.sender_user)).await?;
            self.account.apply_group_op(&m.payload)?;
            self.retry_waiting();
            return Ok(None);
        }
        if m.content_type != CONTENT_TYPE {
            return Ok(Some(Event::Plain(Box::new(m))));
        }
        let env = proto::E2eeEnvelope::decode(m.payload.as_ref()).map_err(|_| AccountError::Malformed("envelope"))?;
        let mut got = self.account.decrypt(&m.sender_user, &env, &mut self.rng);
        if let Err(AccountError::UnknownDevice(user, _)) = &got {
            self.learn(std::slice::from_ref(user)).await?;
            got = self.account.decrypt(&m.sender_user, &env, &mut self.rng);
        }
        let got = match got {
            // A group message ahead of its key: keep it for when the key arrives.
            Err(AccountError::Group(tern_e2ee::group::GroupError::UnknownChain) | AccountError::NotAMember(_))
                if matches!(env.body, Some(proto::e2ee_envelope::Body::SenderKey(_))) =>
            {
                self.waiting.push_back(m);
                if self.waiting.len() > MAX_WAITING {
                    self.waiting.pop_front();
                }
                return Ok(None);
            }
            other => other?,
        };
        if matches!(got, Received::GroupKey(_)) {
            self.retry_waiting();
        }
        let (from_user, from_device) = (m.sender_user, env.sender_device);
        Ok(match got {
            Received::NotForThisDevice | Received::GroupKey(_) => None,
            Received::Text(text) => Some(Event::Text { from_user, from_device, text }),
            Received::GroupText { group, text } => Some(Event::Group { group, from_user, from_device, text }),
        })
    }

    /// Puts the group messages that waited for keys back in front of the queue.
    fn retry_waiting(&mut self) {
        while let Some(m) = self.waiting.pop_back() {
            self.backlog.push_front(m);
        }
    }

    /// The next event for the application; `None` when the connection has ended.
    pub async fn receive(&mut self) -> Option<Result<Event, E2eeError>> {
        loop {
            let m = self.next_deliver().await?;
            match self.handle(m).await {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Loads the key store at `path`, or creates a new account (the device's first use).
/// Returns the account and whether it was created.
pub fn load_or_create(path: &Path, user: &str, device: &str, seed: [u8; 32]) -> Result<(Account, bool), E2eeError> {
    let err = |reason: String| E2eeError::Store { path: path.display().to_string(), reason };
    match std::fs::read(path) {
        Ok(bytes) => {
            let account = Account::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
            if account.identity().user != user || account.identity().device != device {
                return Err(err(format!(
                    "belongs to {}/{}, not {user}/{device}",
                    account.identity().user,
                    account.identity().device
                )));
            }
            Ok((account, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut rng = ChaCha20Rng::from_seed(seed);
            let account = Account::new_primary(tern_e2ee::Suite::Aes256Gcm, user, device, now_ms(), &mut rng)?;
            Ok((account, true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the key store atomically (a temporary file, then a rename), readable by its owner
/// only.
pub fn save(path: &Path, account: &Account) -> Result<(), E2eeError> {
    let err = |reason: String| E2eeError::Store { path: path.display().to_string(), reason };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(|e| err(e.to_string()))?;
        file.write_all(&account.to_bytes()).and_then(|()| file.sync_all()).map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}
