//! The retries part of the settings form (#11 item 4): how many times and how many minutes
//! apart a callback nobody answered, or whose client did not answer, is called again, and
//! whether a retry escalates to the experienced group. Free of I/O, unit-tested here; the rule
//! itself is `callback::retry`.

use std::collections::HashMap;

use crate::callback::retry::{MAX_RETRIES, MAX_RETRY_MINUTES};
use crate::portal::{Lang, PortalSettings};

/// The retry fields as typed, echoed back on errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryInput {
    /// The form had the retries section (its hidden `retry_form` field): a page opened before
    /// the section existed leaves the stored rules as they are.
    pub present: bool,
    pub no_answer_times: String,
    pub no_answer_minutes: String,
    pub escalate: bool,
    pub client_times: String,
    pub client_minutes: String,
}

impl RetryInput {
    pub fn from_settings(s: &PortalSettings) -> RetryInput {
        RetryInput {
            present: true,
            no_answer_times: s.retry_no_answer_times.to_string(),
            no_answer_minutes: s.retry_no_answer_minutes.to_string(),
            escalate: s.retry_escalate,
            client_times: s.retry_client_times.to_string(),
            client_minutes: s.retry_client_minutes.to_string(),
        }
    }

    pub fn from_form(form: &HashMap<String, String>) -> RetryInput {
        let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let on = |k: &str| form.get(k).is_some_and(|v| !v.is_empty());
        RetryInput {
            present: on("retry_form"),
            no_answer_times: get("retry_no_answer_times"),
            no_answer_minutes: get("retry_no_answer_minutes"),
            escalate: on("retry_escalate"),
            client_times: get("retry_client_times"),
            client_minutes: get("retry_client_minutes"),
        }
    }
}

/// Messages next to the wrong retry fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryErrors {
    pub no_answer_times: Option<String>,
    pub no_answer_minutes: Option<String>,
    pub client_times: Option<String>,
    pub client_minutes: Option<String>,
}

impl RetryErrors {
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("retry_no_answer_times", &self.no_answer_times),
            ("retry_no_answer_minutes", &self.no_answer_minutes),
            ("retry_client_times", &self.client_times),
            ("retry_client_minutes", &self.client_minutes),
        ]
        .into_iter()
        .filter(|(_, e)| e.is_some())
        .map(|(n, _)| n)
        .collect()
    }
}

/// Retry rules that passed [`validate_retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidRetry {
    pub no_answer_times: i32,
    pub no_answer_minutes: i32,
    pub escalate: bool,
    pub client_times: i32,
    pub client_minutes: i32,
}

impl ValidRetry {
    pub fn apply(self, s: &mut PortalSettings) {
        s.retry_no_answer_times = self.no_answer_times;
        s.retry_no_answer_minutes = self.no_answer_minutes;
        s.retry_escalate = self.escalate;
        s.retry_client_times = self.client_times;
        s.retry_client_minutes = self.client_minutes;
    }
}

/// A whole number in `min..=max`, digits only ("+1", "1.0", "1e1" are refused, not guessed at).
fn whole(s: &str, min: i32, max: i32) -> Option<i32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|n| (min..=max).contains(n))
}

/// Checks the retry fields; `Ok(None)` when the form had no such section.
pub fn validate_retry(input: &RetryInput, lang: Lang) -> Result<Option<ValidRetry>, RetryErrors> {
    if !input.present {
        return Ok(None);
    }
    let mut e = RetryErrors::default();
    let times_msg = || {
        Some(format!(
            "{} {MAX_RETRIES}",
            lang.t("Целое число от 0 до", "A whole number from 0 to")
        ))
    };
    let minutes_msg = || {
        Some(format!(
            "{} {MAX_RETRY_MINUTES}",
            lang.t(
                "Целое число минут от 1 до",
                "A whole number of minutes from 1 to"
            )
        ))
    };
    let no_answer_times = whole(&input.no_answer_times, 0, MAX_RETRIES);
    if no_answer_times.is_none() {
        e.no_answer_times = times_msg();
    }
    let no_answer_minutes = whole(&input.no_answer_minutes, 1, MAX_RETRY_MINUTES);
    if no_answer_minutes.is_none() {
        e.no_answer_minutes = minutes_msg();
    }
    let client_times = whole(&input.client_times, 0, MAX_RETRIES);
    if client_times.is_none() {
        e.client_times = times_msg();
    }
    let client_minutes = whole(&input.client_minutes, 1, MAX_RETRY_MINUTES);
    if client_minutes.is_none() {
        e.client_minutes = minutes_msg();
    }
    match (
        no_answer_times,
        no_answer_minutes,
        client_times,
        client_minutes,
    ) {
        (
            Some(no_answer_times),
            Some(no_answer_minutes),
            Some(client_times),
            Some(client_minutes),
        ) => Ok(Some(ValidRetry {
            no_answer_times,
            no_answer_minutes,
            escalate: input.escalate,
            client_times,
            client_minutes,
        })),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(times: &str, minutes: &str) -> RetryInput {
        RetryInput {
            present: true,
            no_answer_times: times.into(),
            no_answer_minutes: minutes.into(),
            escalate: true,
            client_times: "1".into(),
            client_minutes: "10".into(),
        }
    }

    #[test]
    fn valid_rules_are_stored_as_typed() {
        let v = validate_retry(&typed("3", "15"), Lang::Ru).expect("valid");
        let mut s = PortalSettings::defaults("m", chrono::NaiveDateTime::default());
        v.expect("present").apply(&mut s);
        assert_eq!(
            (
                s.retry_no_answer_times,
                s.retry_no_answer_minutes,
                s.retry_escalate
            ),
            (3, 15, true)
        );
    }

    #[test]
    fn out_of_range_or_malformed_numbers_get_their_own_message_in_both_languages() {
        for (times, minutes) in [
            ("6", "5"),
            ("-1", "5"),
            ("2", "0"),
            ("2", "1441"),
            ("1.5", "5"),
            ("", "5"),
        ] {
            let e = validate_retry(&typed(times, minutes), Lang::En).expect_err("refused");
            assert!(!e.names().is_empty(), "{times:?} {minutes:?}");
        }
        let e = validate_retry(&typed("9", "5"), Lang::Ru).expect_err("refused");
        assert_eq!(e.names(), ["retry_no_answer_times"]);
        assert_eq!(e.no_answer_times.as_deref(), Some("Целое число от 0 до 5"));
        let e = validate_retry(&typed("2", "0"), Lang::En).expect_err("refused");
        assert_eq!(
            e.no_answer_minutes.as_deref(),
            Some("A whole number of minutes from 1 to 1440")
        );
    }

    #[test]
    fn a_form_without_the_section_keeps_the_stored_rules() {
        assert_eq!(validate_retry(&RetryInput::default(), Lang::Ru), Ok(None));
    }
}
