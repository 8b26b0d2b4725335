//! Request signing and the form body: the exact bytes Mango hashes and receives.
//!
//! Mango's `sign` is a plain SHA-256 over `vpbx_api_key + json + vpbx_api_salt` (not an HMAC),
//! computed over the very `json` string that goes on the wire. Any re-serialisation between
//! signing and sending breaks the signature, which Mango answers with 3102 — and repeated 3xxx
//! answers lock the API for two minutes. So callers build the JSON once and pass the same `&str`
//! to [`form_body`].

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The two secrets of one Mango PBX ("API коннектор" in Mango's personal account).
///
/// `api_key` travels in every request; `api_salt` never leaves this process. `Debug` is written
/// by hand so that neither can reach a log line in full.
#[derive(Clone)]
pub struct Credentials {
    /// `vpbx_api_key`, "the unique code of your PBX"; sent as a form field.
    pub api_key: SecretString,
    /// `vpbx_api_salt`, the signing secret; only ever hashed.
    pub api_salt: SecretString,
}

impl Credentials {
    pub fn new(api_key: impl Into<String>, api_salt: impl Into<String>) -> Self {
        Self {
            api_key: SecretString::from(api_key.into()),
            api_salt: SecretString::from(api_salt.into()),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Four characters are enough to tell two PBXs apart in a log, far too few to use.
        // Counted in chars, not bytes, so a non-ASCII key cannot make this panic.
        let prefix: String = self.api_key.expose_secret().chars().take(4).collect();
        f.debug_struct("Credentials")
            .field("api_key", &format_args!("{prefix}…"))
            .field("api_salt", &format_args!("<redacted>"))
            .finish()
    }
}

/// `sign` as Mango defines it: lowercase hex of `sha256(api_key + json + api_salt)`.
pub fn sign(api_key: &str, json: &str, api_salt: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(api_key.as_bytes());
    hasher.update(json.as_bytes());
    hasher.update(api_salt.as_bytes());
    hex::encode(hasher.finalize())
}

/// Checks a signed form that Mango sent us (events and `/result/*` callbacks).
///
/// `json` must be the URL-decoded form field exactly as received, never a re-serialisation.
/// Both the key and the signature are compared in constant time; the signature is accepted in
/// either hex case because nothing in Mango's documentation promises lowercase on their side.
pub fn verify(creds: &Credentials, vpbx_api_key: &str, json: &str, received_sign: &str) -> bool {
    let expected = sign(
        creds.api_key.expose_secret(),
        json,
        creds.api_salt.expose_secret(),
    );
    let received = received_sign.to_ascii_lowercase();
    let key_ok = creds
        .api_key
        .expose_secret()
        .as_bytes()
        .ct_eq(vpbx_api_key.as_bytes());
    let sign_ok = expected.as_bytes().ct_eq(received.as_bytes());
    bool::from(key_ok & sign_ok)
}

/// The POST body `vpbx_api_key=…&sign=…&json=…`, signed over `json` as given.
///
/// Encoded byte-for-byte like PHP's `http_build_query` and Python's `urlencode`, the two
/// encoders Mango's examples were produced with, so our wire body can be diffed against theirs.
pub fn form_body(creds: &Credentials, json: &str) -> String {
    let signature = sign(
        creds.api_key.expose_secret(),
        json,
        creds.api_salt.expose_secret(),
    );
    let mut out = String::with_capacity(json.len() * 3 + creds.api_key.expose_secret().len() + 96);
    out.push_str("vpbx_api_key=");
    urlencode_into(&mut out, creds.api_key.expose_secret());
    out.push_str("&sign=");
    out.push_str(&signature);
    out.push_str("&json=");
    urlencode_into(&mut out, json);
    out
}

/// `application/x-www-form-urlencoded` value encoding.
///
/// Kept: ASCII letters, digits and `-_.`; space becomes `+`; every other byte is `%XX` upper-case.
/// This is PHP `urlencode` exactly. Python's `quote_plus` differs only on `~` (kept there) and the
/// `form_urlencoded` crate differs on `*` (kept there); all three decode to the same bytes, but
/// writing our own keeps the body byte-for-byte the body PHP's `http_build_query` sends.
fn urlencode_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "<YOUR_API_KEY>";
    const SALT: &str = "<YOUR_API_SALT>";
    const VECTOR_1_JSON: &str = r#"{"command_id":"your-command-id","from":{"extension":"<extension>","number":""},"to_number":"<to_number>"}"#;

    #[test]
    fn the_four_official_php_ex_vectors_reproduce() {
        let vectors = [
            (
                VECTOR_1_JSON,
                "afdeb462cd5e0e422a9c9220390124608df06a4472cb1add6ebd6e24184bd15a",
            ),
            (
                r#"{"command_id":"your-command-id","call_id":"<CALL_ID>"}"#,
                "2d1d01246f52cec1fdb44f2a4d7091dc54f67e318369c0628201d66b5d336ef0",
            ),
            (
                r#"{"date_from":"1445288400","date_to":"1445374859","from":{"extension":"","number":""},"to":{"extension":"","number":""}}"#,
                "94e263aa0aa65d77481b86e9224fa2230265faa387322e40716389406982c0fb",
            ),
            (
                r#"{"key":"<REQUEST_KEY>"}"#,
                "515069b8c079df62f408e36dd7933912b8e86d833c5927ee77eb4b68d766c4f5",
            ),
        ];
        for (json, expected) in vectors {
            assert_eq!(sign(KEY, json, SALT), expected, "json: {json}");
        }
    }

    #[test]
    fn the_go_mango_empty_key_vector_reproduces() {
        assert_eq!(
            sign("", "{}", ""),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn the_callback_group_vector_reproduces() {
        let json =
            r#"{"command_id":"cbk1","from":"1234","to":"74955404444","line_number":"74951234567"}"#;
        assert_eq!(
            sign("test-key", json, "test-salt"),
            "18ea23c77f72359c5fe78bf40ad7be189cdc69b1db8a99e89cbb509c11f6f280"
        );
    }

    #[test]
    fn form_body_matches_the_php_ex_wire_body_byte_for_byte() {
        let creds = Credentials::new(KEY, SALT);
        let expected = "vpbx_api_key=%3CYOUR_API_KEY%3E\
            &sign=afdeb462cd5e0e422a9c9220390124608df06a4472cb1add6ebd6e24184bd15a\
            &json=%7B%22command_id%22%3A%22your-command-id%22%2C%22from%22%3A%7B%22extension%22%3A%22%3Cextension%3E%22%2C%22number%22%3A%22%22%7D%2C%22to_number%22%3A%22%3Cto_number%3E%22%7D";
        assert_eq!(form_body(&creds, VECTOR_1_JSON), expected);
    }

    #[test]
    fn form_body_decodes_back_to_the_signed_json() {
        let creds = Credentials::new("k ey+~*", "salt");
        let json = r#"{"to":"a b&c=d/é~*"}"#;
        let body = form_body(&creds, json);
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_str(&body).expect("our own body decodes");
        assert_eq!(fields[0], ("vpbx_api_key".into(), "k ey+~*".into()));
        assert_eq!(fields[1].1, sign("k ey+~*", json, "salt"));
        assert_eq!(fields[2], ("json".into(), json.into()));
    }

    #[test]
    fn verify_accepts_a_correct_signature_and_rejects_tampering() {
        let creds = Credentials::new("key", "salt");
        let json = r#"{"command_id":"x","result":"1000"}"#;
        let good = sign("key", json, "salt");
        assert!(verify(&creds, "key", json, &good));
        assert!(verify(&creds, "key", json, &good.to_ascii_uppercase()));
        assert!(!verify(&creds, "other", json, &good));
        assert!(!verify(
            &creds,
            "key",
            r#"{"command_id":"y","result":"1000"}"#,
            &good
        ));
        assert!(!verify(&creds, "key", json, ""));
    }

    #[test]
    fn debug_shows_four_key_characters_and_never_the_salt() {
        let creds = Credentials::new("9ipl5monmwkkyg3adfx2s6frz7b", "super-secret-salt");
        let printed = format!("{creds:?}");
        assert!(printed.contains("9ipl…"), "{printed}");
        assert!(!printed.contains("9ipl5"), "{printed}");
        assert!(!printed.contains("super-secret-salt"), "{printed}");
        // A short non-ASCII key must not panic on a byte boundary.
        let short = format!("{:?}", Credentials::new("ключ", "s"));
        assert!(short.contains("ключ…"), "{short}");
    }
}
