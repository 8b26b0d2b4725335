//! Secrets at rest (AES-256-GCM sealing of tokens and the Mango salt) and signed page tokens (HMAC).
//!
//! Both keys are derived from `APP_SECRET_KEY` with distinct labels, so one configured secret
//! serves both purposes without one use weakening the other.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const SEAL_PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("stored secret is not in the sealed format")]
    Format,
    #[error("stored secret cannot be opened with this APP_SECRET_KEY")]
    Open,
}

/// Seals and opens secrets stored in the database.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
    mac_key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

fn derive(label: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

impl Cipher {
    pub fn new(app_secret_key: &str) -> Cipher {
        let key = derive("mango-callback/seal", app_secret_key);
        Cipher {
            aead: Aes256Gcm::new(&key.into()),
            mac_key: derive("mango-callback/page-token", app_secret_key),
        }
    }

    /// `v1:` + base64(nonce ‖ ciphertext); a fresh random nonce each time.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and a 12-byte nonce cannot fail for our sizes.
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{SEAL_PREFIX}{}", STANDARD_NO_PAD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<String, CryptoError> {
        let raw = sealed
            .strip_prefix(SEAL_PREFIX)
            .and_then(|b| STANDARD_NO_PAD.decode(b).ok())
            .filter(|b| b.len() > 12)
            .ok_or(CryptoError::Format)?;
        let (nonce, ct) = raw.split_at(12);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Open)
    }

    pub fn seal_opt(&self, plain: Option<&str>) -> Option<String> {
        plain.map(|p| self.seal(p))
    }

    /// HMAC-SHA256 over `data`, URL-safe base64.
    pub fn mac(&self, data: &[u8]) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.mac_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(data);
        URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
    }

    /// Constant-time check of a MAC made by [`Cipher::mac`].
    pub fn verify_mac(&self, data: &[u8], mac: &str) -> bool {
        constant_time_eq(self.mac(data).as_bytes(), mac.as_bytes())
    }
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Lowercase hex SHA-256, used to name per-account buckets without storing the key itself.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secret_opens_with_the_same_key_only() {
        let c = Cipher::new("k1");
        let s = c.seal("refresh-token-123");
        assert!(!s.contains("refresh-token-123"));
        assert_eq!(c.open(&s).ok().as_deref(), Some("refresh-token-123"));
        assert!(Cipher::new("k2").open(&s).is_err());
        assert_ne!(s, c.seal("refresh-token-123"), "nonces must differ");
    }

    #[test]
    fn mac_rejects_tampered_data() {
        let c = Cipher::new("k");
        let m = c.mac(b"portal|1|100");
        assert!(c.verify_mac(b"portal|1|100", &m));
        assert!(!c.verify_mac(b"portal|1|101", &m));
    }
}
