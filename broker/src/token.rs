//! Auth tokens: `tern1:{user}:{device}:{expiry}:{mac}` where `mac` is the hex HMAC-SHA256 of
//! `tern1:{user}:{device}:{expiry}` under the broker's secret (spec 4.1, "Authentication").
//! Identifiers cannot contain `:`, so the fields split unambiguously.

use ring::hmac;
use tern_codec::ids::check_identifier;
use tern_codec::ReasonCode;

const PREFIX: &str = "tern1";

/// Reads the signing secret from `dir/secret.key`, creating it (32 random bytes, mode 0600) on
/// first use. It is a file of its own, not in the store, so `tern token issue` works while the
/// broker holds the store open.
pub fn load_or_create_secret(dir: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use std::io::Write;
    let path = dir.join("secret.key");
    if let Ok(bytes) = std::fs::read(&path) {
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| std::io::Error::other(format!("{} is not 32 bytes", path.display())));
    }
    std::fs::create_dir_all(dir)?;
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("no system randomness"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut f) => {
            f.write_all(&secret)?;
            f.sync_all()?;
            Ok(secret)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_secret(dir),
        Err(e) => Err(e),
    }
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Mints and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from the broker's 32-byte secret.
    pub fn new(secret: &[u8; 32]) -> Self {
        TokenKey { key: hmac::Key::new(hmac::HMAC_SHA256, secret) }
    }

    /// Mints a token for `user` on `device`, valid until `expires_at` (Unix seconds).
    pub fn issue(&self, user: &str, device: &str, expires_at: u64) -> Result<String, String> {
        check_identifier("user", user).map_err(|e| e.to_string())?;
        check_identifier("device", device).map_err(|e| e.to_string())?;
        let body = format!("{PREFIX}:{user}:{device}:{expires_at}");
        let tag = hmac::sign(&self.key, body.as_bytes());
        Ok(format!("{body}:{}", hex::encode(tag.as_ref())))
    }

    /// Verifies a token presented in CONNECT for `device` at time `now` (Unix seconds):
    /// BAD_TOKEN when it does not verify or names another device, TOKEN_EXPIRED when expired.
    pub fn verify(&self, token: &[u8], device: &str, now: u64) -> Result<Claims, ReasonCode> {
        let claims = self.verify_token(token, now)?;
        if claims.device != device {
            return Err(ReasonCode::BadToken);
        }
        Ok(claims)
    }

    /// Verifies a token on its own, whatever device it names (an MQTT CONNECT names the
    /// device by the token, spec 15.1).
    pub fn verify_token(&self, token: &[u8], now: u64) -> Result<Claims, ReasonCode> {
        let text = std::str::from_utf8(token).map_err(|_| ReasonCode::BadToken)?;
        let (body, mac_hex) = text.rsplit_once(':').ok_or(ReasonCode::BadToken)?;
        let mac = hex::decode(mac_hex).map_err(|_| ReasonCode::BadToken)?;
        hmac::verify(&self.key, body.as_bytes(), &mac).map_err(|_| ReasonCode::BadToken)?;
        let mut parts = body.split(':');
        let (Some(PREFIX), Some(user), Some(dev), Some(exp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ReasonCode::BadToken);
        };
        let expires_at: u64 = exp.parse().map_err(|_| ReasonCode::BadToken)?;
        if now >= expires_at {
            return Err(ReasonCode::TokenExpired);
        }
        Ok(Claims { user: user.to_owned(), device: dev.to_owned(), expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_verifies_and_refuses() {
        let key = TokenKey::new(&[7; 32]);
        let t = key.issue("alice", "phone", 1_000).unwrap();
        assert_eq!(key.verify(t.as_bytes(), "phone", 999).unwrap().user, "alice");
        assert_eq!(key.verify(t.as_bytes(), "phone", 1_000), Err(ReasonCode::TokenExpired));
        assert_eq!(key.verify(t.as_bytes(), "laptop", 1), Err(ReasonCode::BadToken));
        let forged = t.replace("alice", "mallory");
        assert_eq!(key.verify(forged.as_bytes(), "phone", 1), Err(ReasonCode::BadToken));
        let other = TokenKey::new(&[8; 32]);
        assert_eq!(other.verify(t.as_bytes(), "phone", 1), Err(ReasonCode::BadToken));
        assert!(key.issue("a:b", "phone", 1).is_err());
    }
}
