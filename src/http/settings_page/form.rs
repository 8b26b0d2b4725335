//! The settings form: what was typed, echoed back on errors, and its server-side validation.
//! Free of I/O, so every validation rule is unit-tested here.

use std::collections::HashMap;

use super::hours_form::{validate_hours, HoursErrors, HoursInput, ValidHours};
use super::retry_form::{validate_retry, RetryErrors, RetryInput, ValidRetry};
use crate::crypto::Cipher;
use crate::portal::{Lang, PortalSettings};

/// The settings form as typed, echoed back on errors. The salt is deliberately absent: it is
/// write-only and never rendered, not even the value the admin just typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsInput {
    pub mango_api_key: String,
    pub line_number: String,
    pub trainee_extension: String,
    pub experienced_extension: String,
    pub duplicate_window_minutes: String,
    pub contact_wait_seconds: String,
    pub hours: HoursInput,
    pub retry: RetryInput,
    /// "The robot waits for the call's outcome" (a checkbox: absent from the form when off).
    pub wait_for_outcome: bool,
    /// Minutes to wait for Mango's summary before the outcome is `unknown`; empty keeps the
    /// stored value (a form from before the field existed).
    pub outcome_wait_minutes: String,
}

impl SettingsInput {
    /// What the form shows for stored settings.
    pub fn from_settings(s: &PortalSettings) -> SettingsInput {
        SettingsInput {
            mango_api_key: s.mango_api_key.clone().unwrap_or_default(),
            line_number: s.line_number.clone(),
            trainee_extension: s.trainee_extension.clone(),
            experienced_extension: s.experienced_extension.clone(),
            duplicate_window_minutes: s.duplicate_window_minutes.to_string(),
            contact_wait_seconds: s.contact_wait_seconds.to_string(),
            hours: HoursInput::from_settings(s),
            retry: RetryInput::from_settings(s),
            wait_for_outcome: s.wait_for_outcome,
            outcome_wait_minutes: s.outcome_wait_minutes.to_string(),
        }
    }

    pub fn from_form(form: &HashMap<String, String>) -> SettingsInput {
        let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        SettingsInput {
            mango_api_key: get("mango_api_key"),
            line_number: get("line_number"),
            trainee_extension: get("trainee_extension"),
            experienced_extension: get("experienced_extension"),
            duplicate_window_minutes: get("duplicate_window_minutes"),
            contact_wait_seconds: get("contact_wait_seconds"),
            hours: HoursInput::from_form(form),
            retry: RetryInput::from_form(form),
            wait_for_outcome: matches!(get("wait_for_outcome").as_str(), "on" | "1" | "true"),
            outcome_wait_minutes: get("outcome_wait_minutes"),
        }
    }
}

/// Messages next to the fields that are wrong; empty means the form is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors {
    pub mango_api_key: Option<String>,
    pub mango_api_salt: Option<String>,
    pub line_number: Option<String>,
    pub trainee_extension: Option<String>,
    pub experienced_extension: Option<String>,
    pub duplicate_window_minutes: Option<String>,
    pub contact_wait_seconds: Option<String>,
    pub hours: HoursErrors,
    pub retry: RetryErrors,
    pub outcome_wait_minutes: Option<String>,
}

impl FieldErrors {
    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    /// Names of the wrong fields, for the log line (never their values).
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("mango_api_key", &self.mango_api_key),
            ("mango_api_salt", &self.mango_api_salt),
            ("line_number", &self.line_number),
            ("trainee_extension", &self.trainee_extension),
            ("experienced_extension", &self.experienced_extension),
            ("duplicate_window_minutes", &self.duplicate_window_minutes),
            ("contact_wait_seconds", &self.contact_wait_seconds),
            ("outcome_wait_minutes", &self.outcome_wait_minutes),
        ]
        .into_iter()
        .filter(|(_, e)| e.is_some())
        .map(|(n, _)| n)
        .chain(self.hours.names())
        .chain(self.retry.names())
        .collect()
    }
}

/// A Mango key or salt as typed: printable ASCII without spaces, at most 128 characters.
fn valid_secret(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A group's short number: 1–10 digits, kept as a string so "002" stays "002".
fn valid_extension(s: &str) -> bool {
    (1..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// A Mango line: a number, or a SIP line's name, e.g. `74951234567` or `sip.line-1`.
fn valid_line(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn bounded_int(s: &str, max: i32) -> Option<i32> {
    // Only plain digits: "+5", "1e3" or "10.0" are rejected rather than guessed at.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| (0..=max).contains(n))
}

/// Checks the form against the stored settings and returns the settings to save, or the errors.
///
/// `salt` is the typed salt (empty keeps the stored one); the result carries it unsealed, so the
/// caller seals it before saving. Nothing is half-applied: either every field is valid or none
/// is used.
pub fn validate(
    input: &SettingsInput,
    salt: &str,
    stored: &PortalSettings,
    lang: Lang,
) -> Result<ValidSettings, Box<FieldErrors>> {
    let mut e = FieldErrors::default();
    let msg = |ru: &str, en: &str| Some(lang.t(ru, en).to_owned());
    if input.mango_api_key.is_empty() {
        e.mango_api_key = msg(
            "Укажите ключ API из личного кабинета Mango Office",
            "Enter the API key from your Mango Office account",
        );
    } else if !valid_secret(&input.mango_api_key) {
        e.mango_api_key = msg(
            "Ключ — до 128 латинских букв, цифр и знаков, без пробелов",
            "The key is up to 128 Latin letters, digits and symbols, without spaces",
        );
    }
    let salt = salt.trim();
    if salt.is_empty() {
        if stored.mango_api_salt.is_none() {
            e.mango_api_salt = msg(
                "Укажите ключ для подписи (соль) из личного кабинета Mango Office",
                "Enter the signing key (salt) from your Mango Office account",
            );
        }
    } else if !valid_secret(salt) {
        e.mango_api_salt = msg(
            "Ключ для подписи — до 128 латинских букв, цифр и знаков, без пробелов",
            "The signing key is up to 128 Latin letters, digits and symbols, without spaces",
        );
    }
    if input.line_number.is_empty() {
        e.line_number = msg(
            "Укажите линию, с которой Mango будет звонить",
            "Enter the line Mango calls from",
        );
    } else if !valid_line(&input.line_number) {
        e.line_number = msg(
            "Линия — до 64 символов: цифры, латинские буквы, точка, дефис, подчёркивание",
            "A line is up to 64 characters: digits, Latin letters, dot, dash, underscore",
        );
    }
    let ext_msg = || {
        msg(
            "Внутренний номер группы — от 1 до 10 цифр",
            "A group extension is 1 to 10 digits",
        )
    };
    if !valid_extension(&input.trainee_extension) {
        e.trainee_extension = ext_msg();
    }
    if !valid_extension(&input.experienced_extension) {
        e.experienced_extension = ext_msg();
    }
    let window = bounded_int(&input.duplicate_window_minutes, 1440);
    if window.is_none() {
        e.duplicate_window_minutes = msg(
            "Целое число минут от 0 до 1440",
            "A whole number of minutes from 0 to 1440",
        );
    }
    let wait = bounded_int(&input.contact_wait_seconds, 600);
    if wait.is_none() {
        e.contact_wait_seconds = msg(
            "Целое число секунд от 0 до 600",
            "A whole number of seconds from 0 to 600",
        );
    }
    let outcome_wait = if input.outcome_wait_minutes.is_empty() {
        Some(stored.outcome_wait_minutes)
    } else {
        bounded_int(&input.outcome_wait_minutes, 1440).filter(|m| *m >= 1)
    };
    if outcome_wait.is_none() {
        e.outcome_wait_minutes = msg(
            "Целое число минут от 1 до 1440",
            "A whole number of minutes from 1 to 1440",
        );
    }
    let hours = validate_hours(&input.hours, lang).map_err(|h| e.hours = h);
    let retry = validate_retry(&input.retry, lang).map_err(|r| e.retry = r);
    match (window, wait, outcome_wait, hours, retry) {
        (Some(window), Some(wait), Some(outcome_wait), Ok(hours), Ok(retry)) if e.is_empty() => {
            Ok(ValidSettings {
                mango_api_key: input.mango_api_key.clone(),
                new_salt: (!salt.is_empty()).then(|| salt.to_owned()),
                line_number: input.line_number.clone(),
                trainee_extension: input.trainee_extension.clone(),
                experienced_extension: input.experienced_extension.clone(),
                duplicate_window_minutes: window,
                contact_wait_seconds: wait,
                hours,
                retry,
                wait_for_outcome: input.wait_for_outcome,
                outcome_wait_minutes: outcome_wait,
            })
        }
        _ => Err(Box::new(e)),
    }
}

/// A form that passed [`validate`].
#[derive(Clone, PartialEq, Eq)]
pub struct ValidSettings {
    pub mango_api_key: String,
    /// `None` keeps the stored salt.
    pub new_salt: Option<String>,
    pub line_number: String,
    pub trainee_extension: String,
    pub experienced_extension: String,
    pub duplicate_window_minutes: i32,
    pub contact_wait_seconds: i32,
    /// `None` keeps the stored working hours (a form without their section).
    pub hours: Option<ValidHours>,
    /// `None` keeps the stored retry rules (a form without their section).
    pub retry: Option<ValidRetry>,
    pub wait_for_outcome: bool,
    pub outcome_wait_minutes: i32,
}

impl std::fmt::Debug for ValidSettings {
    // Hand-written so that the salt cannot reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidSettings")
            .field("line_number", &self.line_number)
            .field("trainee_extension", &self.trainee_extension)
            .field("experienced_extension", &self.experienced_extension)
            .field("new_salt", &self.new_salt.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl ValidSettings {
    /// The row to save: the stored one with the form applied. Changed keys forget the last Mango
    /// status, which described the old keys.
    pub fn apply(
        self,
        mut stored: PortalSettings,
        cipher: &Cipher,
        now: chrono::NaiveDateTime,
    ) -> PortalSettings {
        let keys_changed =
            stored.mango_api_key.as_deref() != Some(&self.mango_api_key) || self.new_salt.is_some();
        if keys_changed {
            stored.mango_last_error = None;
            stored.mango_checked_at = None;
        }
        stored.mango_api_key = Some(self.mango_api_key);
        if let Some(salt) = &self.new_salt {
            let slot = crate::crypto::Slot::mango_api_salt(&stored.member_id);
            stored.mango_api_salt = Some(cipher.seal(slot, salt));
        }
        stored.line_number = self.line_number;
        stored.trainee_extension = self.trainee_extension;
        stored.experienced_extension = self.experienced_extension;
        stored.duplicate_window_minutes = self.duplicate_window_minutes;
        stored.contact_wait_seconds = self.contact_wait_seconds;
        if let Some(hours) = self.hours {
            hours.apply(&mut stored);
        }
        if let Some(retry) = self.retry {
            retry.apply(&mut stored);
        }
        stored.wait_for_outcome = self.wait_for_outcome;
        stored.outcome_wait_minutes = self.outcome_wait_minutes;
        stored.updated_at = now;
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> PortalSettings {
        PortalSettings::defaults("m1", chrono::NaiveDateTime::default())
    }

    fn good() -> SettingsInput {
        SettingsInput {
            mango_api_key: "key1".into(),
            line_number: "74951234567".into(),
            trainee_extension: "002".into(),
            experienced_extension: "001".into(),
            duplicate_window_minutes: "10".into(),
            contact_wait_seconds: "60".into(),
            hours: HoursInput::default(),
            retry: RetryInput::default(),
            wait_for_outcome: true,
            outcome_wait_minutes: "45".into(),
        }
    }

    #[test]
    fn valid_form_keeps_leading_zeros_and_needs_a_salt_only_once() {
        let e = validate(&good(), "", &stored(), Lang::En).expect_err("no salt");
        assert!(e.mango_api_salt.is_some());
        assert_eq!(e.names(), vec!["mango_api_salt"]);
        let v = validate(&good(), "salt1", &stored(), Lang::En).expect("valid");
        assert_eq!(v.trainee_extension, "002");
        let c = Cipher::new(&crate::crypto::SecretKey::generate());
        let saved = v.apply(stored(), &c, chrono::NaiveDateTime::default());
        assert!(validate(&good(), "", &saved, Lang::En).is_ok());
    }

    #[test]
    fn every_bad_field_gets_its_own_message() {
        let bad = SettingsInput {
            mango_api_key: "has space".into(),
            line_number: String::new(),
            trainee_extension: "12345678901".into(),
            experienced_extension: "1a".into(),
            duplicate_window_minutes: "1441".into(),
            contact_wait_seconds: "-1".into(),
            hours: HoursInput::default(),
            retry: RetryInput::default(),
            wait_for_outcome: true,
            outcome_wait_minutes: "0".into(),
        };
        let e = validate(&bad, "ok", &stored(), Lang::Ru).expect_err("all bad");
        assert_eq!(e.names().len(), 7, "{e:?}");
        for (m, ok) in [
            ("1", true),
            ("1440", true),
            ("1441", false),
            ("", true),
            ("x", false),
        ] {
            let mut i = good();
            i.outcome_wait_minutes = m.into();
            let v = validate(&i, "s", &stored(), Lang::En);
            assert_eq!(v.is_ok(), ok, "{m}");
            if m.is_empty() {
                assert_eq!(
                    v.map(|v| v.outcome_wait_minutes).ok(),
                    Some(30),
                    "empty keeps the stored bound"
                );
            }
        }
        for (w, ok) in [("0", true), ("1440", true), ("10.5", false), ("+3", false)] {
            let mut i = good();
            i.duplicate_window_minutes = w.into();
            assert_eq!(validate(&i, "s", &stored(), Lang::En).is_ok(), ok, "{w}");
        }
        let mut i = good();
        i.line_number = "sip.line_1-a".into();
        assert!(validate(&i, "s", &stored(), Lang::En).is_ok());
        i.line_number = "a/b".into();
        assert!(validate(&i, "s", &stored(), Lang::En).is_err());
    }
}
