//! Secrets at rest (AES-256-GCM sealing of tokens and the Mango salt, each bound to the place it
//! is stored) and signed page tokens (HMAC).
//!
//! Both keys are derived from `APP_SECRET_KEY` with distinct labels, so one configured secret
//! serves both purposes without one use weakening the other.
//!
//! # Formats
//! - `v2:` + base64(nonce ‖ ciphertext), sealed with the table, column and portal of the value as
//!   AEAD associated data ([`Slot`]): a value copied into another column, table or portal's row
//!   does not open. This is the only format [`Cipher::open`] reads.
//! - `v1:` (before #8): the same layout without associated data, under a key hashed from the
//!   configured text. [`Cipher::open_for_reseal`] still reads it, but only to re-seal it as `v2:`
//!   (at start-up, [`crate::portal::reseal::upgrade_legacy`], and in `rotate-key`). Letting
//!   `open` read `v1:` forever would keep a downgrade path: anyone able to write the database
//!   could put an old unbound value into any row. Upgrading once at start-up closes it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

const SEAL_PREFIX: &str = "v2:";
const LEGACY_PREFIX: &str = "v1:";

/// Key material below this many bytes is refused: AES-256 wants 256 bits of entropy.
pub const MIN_KEY_BYTES: usize = 32;

/// What a valid `APP_SECRET_KEY` is, phrased for the one-line configuration error.
pub const KEY_REQUIREMENT: &str = "expected at least 32 random bytes as hex (64+ chars) or base64 (44+ chars); generate one with `openssl rand -hex 32`";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("stored secret is not in the sealed format")]
    Format,
    #[error("stored secret cannot be opened with this APP_SECRET_KEY in this place")]
    Open,
}

/// A checked `APP_SECRET_KEY`: at least [`MIN_KEY_BYTES`] bytes decoded from hex or base64.
///
/// Parsing rather than hashing any string means a passphrase or a placeholder such as `changeme`
/// cannot silently become the key that protects every portal's tokens.
#[derive(Clone)]
pub struct SecretKey {
    /// Decoded key material: what the `v2:` sealing key and the page-token key come from.
    material: Vec<u8>,
    /// The text exactly as configured (untrimmed, as the code before #8 used it): `v1:` values
    /// were sealed under a hash of it.
    text: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    /// Reads a key given as hex (64+ characters) or base64 (standard or URL-safe, padded or
    /// not). Surrounding whitespace is ignored. The error never repeats the key.
    pub fn parse(configured: &str) -> Result<SecretKey, String> {
        let text = configured.trim();
        // Hex first: a hex string is also valid base64, and whoever typed 64 hex digits meant hex.
        let looks_hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit());
        let material = if looks_hex {
            hex::decode(text).ok()
        } else {
            [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
        };
        let Some(material) = material.filter(|m| m.len() >= MIN_KEY_BYTES) else {
            return Err(KEY_REQUIREMENT.to_owned());
        };
        // 32 random bytes have about 30 distinct values; a handful means `0000…` or `abab…`.
        let mut seen = [false; 256];
        for b in &material {
            seen[usize::from(*b)] = true;
        }
        if seen.iter().filter(|s| **s).count() < 8 {
            return Err(format!("{KEY_REQUIREMENT} (this one is not random)"));
        }
        Ok(SecretKey {
            material,
            text: configured.to_owned(),
        })
    }

    /// A key from before #8, for `rotate-key --old-key` only: such a key may be any text, and
    /// only `v1:` values can have been sealed with it. A valid key is read as [`SecretKey::parse`]
    /// reads it.
    pub fn parse_old(configured: &str) -> Result<SecretKey, String> {
        if configured.trim().is_empty() {
            return Err("the old key is empty".into());
        }
        Ok(SecretKey::parse(configured).unwrap_or_else(|_| SecretKey {
            material: configured.as_bytes().to_vec(),
            text: configured.to_owned(),
        }))
    }

    /// 32 fresh random bytes, written as lowercase hex (what `openssl rand -hex 32` prints).
    pub fn generate() -> SecretKey {
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        SecretKey {
            material: bytes.to_vec(),
            text: hex::encode(bytes),
        }
    }

    /// The key as text, for writing the generated key file (and reading it back, trimmed, as
    /// the code before #8 read it).
    pub fn expose_text(&self) -> &str {
        &self.text
    }
}

/// A column that holds sealed values. Each has one [`Slot`] constructor; the table and column
/// names go into the associated data, so they must never change once values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SealedColumn {
    AccessToken,
    RefreshToken,
    ApplicationToken,
    MangoApiSalt,
}

impl SealedColumn {
    /// Every sealed column: what `rotate-key` and the `v1:` upgrade walk through.
    pub const ALL: [SealedColumn; 4] = [
        SealedColumn::AccessToken,
        SealedColumn::RefreshToken,
        SealedColumn::ApplicationToken,
        SealedColumn::MangoApiSalt,
    ];

    pub fn table(self) -> &'static str {
        match self {
            SealedColumn::AccessToken
            | SealedColumn::RefreshToken
            | SealedColumn::ApplicationToken => "portals",
            SealedColumn::MangoApiSalt => "portal_settings",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            SealedColumn::AccessToken => "access_token",
            SealedColumn::RefreshToken => "refresh_token",
            SealedColumn::ApplicationToken => "application_token",
            SealedColumn::MangoApiSalt => "mango_api_salt",
        }
    }
}

impl std::fmt::Display for SealedColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.table(), self.column())
    }
}

/// Where a sealed value lives: its column and its portal. [`Cipher::seal`] and [`Cipher::open`]
/// take one, so no call site can seal or open a value without saying where it belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot<'a> {
    pub column: SealedColumn,
    pub member_id: &'a str,
}

impl<'a> Slot<'a> {
    pub fn new(column: SealedColumn, member_id: &'a str) -> Slot<'a> {
        Slot { column, member_id }
    }
    /// `portals.access_token` of this portal.
    pub fn access_token(member_id: &'a str) -> Slot<'a> {
        Slot::new(SealedColumn::AccessToken, member_id)
    }
    /// `portals.refresh_token` of this portal.
    pub fn refresh_token(member_id: &'a str) -> Slot<'a> {
        Slot::new(SealedColumn::RefreshToken, member_id)
    }
    /// `portals.application_token` of this portal.
    pub fn application_token(member_id: &'a str) -> Slot<'a> {
        Slot::new(SealedColumn::ApplicationToken, member_id)
    }
    /// `portal_settings.mango_api_salt` of this portal.
    pub fn mango_api_salt(member_id: &'a str) -> Slot<'a> {
        Slot::new(SealedColumn::MangoApiSalt, member_id)
    }

    /// The associated data: a version label, then table, column and portal, NUL-separated.
    /// Table and column come from a fixed list and the portal id is last, so no two slots
    /// share an encoding.
    fn associated_data(&self) -> Vec<u8> {
        [
            "mango-callback/seal/v2",
            self.column.table(),
            self.column.column(),
            self.member_id,
        ]
        .join("\0")
        .into_bytes()
    }
}

/// A value read for re-sealing, and whether it was in the old `v1:` format.
pub struct Opened {
    pub plain: String,
    pub legacy: bool,
}

/// Seals and opens secrets stored in the database.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
    /// The pre-#8 key, kept only to read `v1:` values once for re-sealing.
    legacy: Aes256Gcm,
    mac_key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

/// HMAC-SHA256 of the label under the key material: a PRF, so the sealing key and the
/// page-token key reveal nothing about each other or the material.
fn derive(material: &[u8], label: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(material)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(label.as_bytes());
    m.finalize().into_bytes().into()
}

/// The pre-#8 derivation (a plain hash of label and text), needed to read `v1:` values.
fn derive_legacy(label: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

impl Cipher {
    pub fn new(key: &SecretKey) -> Cipher {
        Cipher {
            aead: Aes256Gcm::new(&derive(&key.material, "mango-callback/seal/v2").into()),
            legacy: Aes256Gcm::new(&derive_legacy("mango-callback/seal", &key.text).into()),
            mac_key: derive(&key.material, "mango-callback/page-token/v2"),
        }
    }

    /// `v2:` + base64(nonce ‖ ciphertext), bound to `slot`; a fresh random nonce each time.
    pub fn seal(&self, slot: Slot<'_>, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = slot.associated_data();
        // Encryption with a valid key and a 12-byte nonce cannot fail for our sizes.
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("{SEAL_PREFIX}{}", STANDARD_NO_PAD.encode(out))
    }

    pub fn seal_opt(&self, slot: Slot<'_>, plain: Option<&str>) -> Option<String> {
        plain.map(|p| self.seal(slot, p))
    }

    /// Opens a `v2:` value sealed for exactly this slot.
    pub fn open(&self, slot: Slot<'_>, sealed: &str) -> Result<String, CryptoError> {
        let (nonce, ct) = split(sealed, SEAL_PREFIX)?;
        let plain = self
            .aead
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: &slot.associated_data(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain).map_err(|_| CryptoError::Open)
    }

    /// Opens a value to re-seal it: `v2:` for this slot, or an old unbound `v1:` value.
    /// Only the upgrade and `rotate-key` call this; everything else uses [`Cipher::open`].
    pub fn open_for_reseal(&self, slot: Slot<'_>, sealed: &str) -> Result<Opened, CryptoError> {
        if !is_legacy(sealed) {
            return self.open(slot, sealed).map(|plain| Opened {
                plain,
                legacy: false,
            });
        }
        let (nonce, ct) = split(sealed, LEGACY_PREFIX)?;
        let plain = self
            .legacy
            .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
            .map_err(|_| CryptoError::Open)?;
        let plain = String::from_utf8(plain).map_err(|_| CryptoError::Open)?;
        Ok(Opened {
            plain,
            legacy: true,
        })
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

/// Stands in for a secret in hand-written `Debug` impls: says whether it is there, never what
/// (not even sealed: a sealed value in a log is one more copy to protect).
pub struct Redacted<'a, T>(pub &'a Option<T>);

impl<T> std::fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Some(<redacted>)"
        } else {
            "None"
        })
    }
}

/// Whether a stored value is in the pre-#8 `v1:` format.
pub fn is_legacy(sealed: &str) -> bool {
    sealed.starts_with(LEGACY_PREFIX)
}

fn split(sealed: &str, prefix: &str) -> Result<([u8; 12], Vec<u8>), CryptoError> {
    let raw = sealed
        .strip_prefix(prefix)
        .and_then(|b| STANDARD_NO_PAD.decode(b).ok())
        .filter(|b| b.len() > 12)
        .ok_or(CryptoError::Format)?;
    let (nonce, ct) = raw.split_at(12);
    let mut n = [0u8; 12];
    n.copy_from_slice(nonce);
    Ok((n, ct.to_vec()))
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

    /// A `v1:` value as the code before #8 sealed it: no associated data, key hashed from text.
    fn legacy_seal(key_text: &str, plain: &str) -> String {
        let aead = Aes256Gcm::new(&derive_legacy("mango-callback/seal", key_text).into());
        let nonce = [7u8; 12];
        let ct = aead
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .expect("seals");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        format!("v1:{}", STANDARD_NO_PAD.encode(out))
    }

    #[test]
    fn sealed_secret_opens_with_the_same_key_only() {
        let c = Cipher::new(&SecretKey::generate());
        let slot = Slot::refresh_token("portal-a");
        let s = c.seal(slot, "refresh-token-123");
        assert!(s.starts_with("v2:"), "{s}");
        assert!(!s.contains("refresh-token-123"));
        assert_eq!(c.open(slot, &s).ok().as_deref(), Some("refresh-token-123"));
        assert!(Cipher::new(&SecretKey::generate()).open(slot, &s).is_err());
        assert_ne!(s, c.seal(slot, "refresh-token-123"), "nonces must differ");
    }

    #[test]
    fn a_sealed_value_moved_to_another_column_table_or_portal_does_not_open() {
        let c = Cipher::new(&SecretKey::generate());
        let sealed = c.seal(Slot::access_token("portal-a"), "token");
        for other in [
            Slot::refresh_token("portal-a"),
            Slot::application_token("portal-a"),
            Slot::mango_api_salt("portal-a"),
            Slot::access_token("portal-b"),
            Slot::access_token("portal-a\0"),
            Slot::access_token(""),
        ] {
            assert!(c.open(other, &sealed).is_err(), "{other:?} opened it");
            assert!(c.open_for_reseal(other, &sealed).is_err(), "{other:?}");
        }
    }

    #[test]
    fn an_old_unbound_value_opens_only_for_resealing() {
        let key = SecretKey::generate();
        let c = Cipher::new(&key);
        let old = legacy_seal(key.expose_text(), "salt");
        let slot = Slot::mango_api_salt("p");
        assert!(c.open(slot, &old).is_err(), "v1 is not read in normal use");
        let opened = c.open_for_reseal(slot, &old).expect("readable once");
        assert_eq!((opened.plain.as_str(), opened.legacy), ("salt", true));
        // A key from before #8 may be any text; rotate-key still reads its values.
        let weak = SecretKey::parse_old("a passphrase from 2025").expect("old key");
        let old = legacy_seal("a passphrase from 2025", "refresh");
        let opened = Cipher::new(&weak)
            .open_for_reseal(slot, &old)
            .expect("readable");
        assert_eq!(opened.plain, "refresh");
    }

    #[test]
    fn a_short_or_non_random_key_is_refused_without_being_echoed() {
        for bad in [
            "",
            "abc",
            "my-password-12345",
            &"f".repeat(64),
            &"ab".repeat(31),
        ] {
            let err = SecretKey::parse(bad).expect_err("refused");
            assert!(
                err.starts_with("expected at least 32 random bytes"),
                "{err}"
            );
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        assert!(SecretKey::parse(SecretKey::generate().expose_text()).is_ok());
    }

    #[test]
    fn the_sealing_and_page_token_keys_differ() {
        let key = SecretKey::generate();
        let c = Cipher::new(&key);
        assert_ne!(
            derive(&key.material, "mango-callback/seal/v2"),
            c.mac_key,
            "label-separated"
        );
    }

    #[test]
    fn mac_rejects_tampered_data() {
        let c = Cipher::new(&SecretKey::generate());
        let m = c.mac(b"portal|1|100");
        assert!(c.verify_mac(b"portal|1|100", &m));
        assert!(!c.verify_mac(b"portal|1|101", &m));
    }
}
