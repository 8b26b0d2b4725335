//! The signed page token that replaces a session cookie: who opened the page, as vouched for by
//! Bitrix24 when it was opened. Free of I/O, so forging and expiry are unit-tested here;
//! [`super::authorise`] checks it on every later request of the page.

use crate::crypto::Cipher;
use crate::portal::Lang;

/// How long a page token lets the opened page save and ask Mango: the access token Bitrix24
/// hands the iframe lives an hour too, so a page older than that should be reopened anyway.
pub const PAGE_TOKEN_TTL_SECS: i64 = 3600;

/// Form field and header that carry the page token. Cookies are not an option: inside the
/// portal's iframe our page is a third-party context where browsers drop them.
pub const PAGE_TOKEN_FIELD: &str = "page_token";
pub const PAGE_TOKEN_HEADER: &str = "X-Page-Token";

/// Who opened the page, as vouched for by Bitrix24 (`app.info` + `user.admin`) when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub member_id: String,
    pub user_id: u64,
    pub admin: bool,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
}

/// Why a presented page token is refused; both mean "reopen the app".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error("the page token is missing, malformed or forged")]
    Invalid,
    #[error("the page token has expired")]
    Expired,
}

impl PageTokenError {
    /// The user-facing text: the only remedy is reopening the app from the portal.
    pub fn message(self, lang: Lang) -> &'static str {
        match self {
            PageTokenError::Expired => lang.t(
                "Страница открыта слишком давно. Откройте приложение в Битрикс24 заново.",
                "This page has been open too long. Please reopen the app in Bitrix24.",
            ),
            PageTokenError::Invalid => lang.t(
                "Не удалось подтвердить, что запрос пришёл со страницы приложения. Откройте приложение в Битрикс24 заново.",
                "Could not confirm that this request came from the app page. Please reopen the app in Bitrix24.",
            ),
        }
    }
}

impl PageToken {
    pub fn new(member_id: &str, user_id: u64, admin: bool, now_unix: i64) -> PageToken {
        PageToken {
            member_id: member_id.to_owned(),
            user_id,
            admin,
            expires_at: now_unix + PAGE_TOKEN_TTL_SECS,
        }
    }

    /// What the MAC covers. A label and version keep it from ever verifying as another MAC made
    /// with the same key.
    fn payload(&self) -> String {
        format!(
            "page-token|v1|{}|{}|{}|{}",
            self.member_id,
            self.user_id,
            u8::from(self.admin),
            self.expires_at
        )
    }

    /// `member_id.user_id.admin.expires.mac` — every part is URL- and header-safe.
    pub fn encode(&self, cipher: &Cipher) -> String {
        format!(
            "{}.{}.{}.{}.{}",
            self.member_id,
            self.user_id,
            u8::from(self.admin),
            self.expires_at,
            cipher.mac(self.payload().as_bytes())
        )
    }

    /// Parses and checks a presented token: the MAC first (in constant time), then the expiry.
    pub fn decode(cipher: &Cipher, raw: &str, now_unix: i64) -> Result<PageToken, PageTokenError> {
        let parts: Vec<&str> = raw.trim().split('.').collect();
        let [member_id, user_id, admin, expires_at, mac] = parts[..] else {
            return Err(PageTokenError::Invalid);
        };
        let valid_member = !member_id.is_empty()
            && member_id.len() <= 64
            && member_id.bytes().all(|b| b.is_ascii_alphanumeric());
        let token = PageToken {
            member_id: member_id.to_owned(),
            user_id: user_id.parse().map_err(|_| PageTokenError::Invalid)?,
            admin: match admin {
                "1" => true,
                "0" => false,
                _ => return Err(PageTokenError::Invalid),
            },
            expires_at: expires_at.parse().map_err(|_| PageTokenError::Invalid)?,
        };
        if !valid_member || !cipher.verify_mac(token.payload().as_bytes(), mac) {
            return Err(PageTokenError::Invalid);
        }
        if now_unix >= token.expires_at {
            return Err(PageTokenError::Expired);
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_token_round_trips_and_refuses_tampering_and_expiry() {
        let c = Cipher::new(&crate::crypto::SecretKey::generate());
        let t = PageToken::new("abc123", 7, true, 1000);
        let raw = t.encode(&c);
        assert_eq!(PageToken::decode(&c, &raw, 1001), Ok(t.clone()));
        let forged = raw
            .replacen(".1.", ".0.", 1)
            .replacen("abc123", "abc124", 1);
        assert_eq!(
            PageToken::decode(&c, &forged, 1001),
            Err(PageTokenError::Invalid)
        );
        let other_key = Cipher::new(&crate::crypto::SecretKey::generate());
        assert_eq!(
            PageToken::decode(&other_key, &raw, 1001),
            Err(PageTokenError::Invalid)
        );
        assert_eq!(
            PageToken::decode(&c, &raw, 1000 + PAGE_TOKEN_TTL_SECS),
            Err(PageTokenError::Expired)
        );
        for junk in ["", "a.b", "x.y.z.w.v.u", "abc123.x.1.2000.mac"] {
            assert_eq!(
                PageToken::decode(&c, junk, 0),
                Err(PageTokenError::Invalid),
                "{junk}"
            );
        }
    }
}
