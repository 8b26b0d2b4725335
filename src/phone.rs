//! Client phone numbers, normalised for Mango: digits only, E.164 without '+'.
//!
//! Numbers come from CRM contacts typed by people ("8 (900) 123-45-67", "+7 495 540-44-44 доб. 12"),
//! and Mango answers a malformed `to` with a 3xxx code that counts toward its two-minute API
//! lockout. So every number is parsed here, before any request, and an unusable one becomes a
//! [`PhoneError`] that can be shown to the manager in Russian.
//!
//! Rules, in order:
//! 1. An extension suffix is dropped: `доб.`/`добавочный`, `вн.`, `ext`/`extension` or `#`,
//!    followed by digits at the end. Mango cannot dial an extension after the client answers,
//!    so the main number is the best we can do; the suffix is not silently mistaken for digits.
//! 2. Spaces (including NBSP and other Unicode spaces), dashes, dots, parentheses and one
//!    leading '+' are removed. Any other character → [`PhoneError::Letters`].
//! 3. An international prefix is removed: `00`, or Russia's `8 10` when there is no '+'.
//! 4. Russian (zone 7) forms: 11 digits `8XXXXXXXXXX` → `7XXXXXXXXXX` (also when typed "+8…",
//!    a common slip), when the next digit starts a Russian national number (3, 4, 8 or 9);
//!    10 digits starting with 9 (mobile) or 3/4/8 (area codes) get a `7`.
//! 5. A number in zone 7 has exactly 11 digits. Others are kept as written if they have 10–15
//!    digits with '+'/`00`/`810`, or 11–15 digits without (so that normalising an already
//!    normalised number returns it unchanged).

/// A dialable number: ASCII digits only, E.164 without '+', e.g. `79001234567`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs and UI: every digit but the last four replaced with '*', e.g. `*******4567`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks all but the last 4 characters of a stored number (call log, logs).
pub fn mask(digits: &str) -> String {
    let keep_from = digits.chars().count().saturating_sub(4);
    digits
        .chars()
        .enumerate()
        .map(|(i, c)| if i < keep_from { '*' } else { c })
        .collect()
}

/// Why a string is not a usable phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("the phone number is empty")]
    Empty,
    #[error("the phone number contains letters or other characters that are not part of a number")]
    Letters,
    #[error(
        "the phone number is too short (a full number with its country or area code is needed)"
    )]
    TooShort,
    #[error("the phone number is too long (more than 15 digits)")]
    TooLong,
}

impl PhoneError {
    /// The same message in Russian, for the deal timeline and the settings UI.
    pub fn message_ru(&self) -> &'static str {
        match self {
            PhoneError::Empty => "Номер телефона не указан",
            PhoneError::Letters => "Номер телефона содержит буквы или посторонние символы",
            PhoneError::TooShort => "Номер телефона слишком короткий (нужен полный номер с кодом)",
            PhoneError::TooLong => "Номер телефона слишком длинный (больше 15 цифр)",
        }
    }
}

/// E.164 allows at most 15 digits.
const MAX_DIGITS: usize = 15;
/// Below this nothing we dial is complete (a Russian national number alone has 10).
const MIN_DIGITS: usize = 10;
/// Input longer than this is not a phone number, whatever it contains; bounds the work.
const MAX_INPUT_CHARS: usize = 100;

/// Parses a human-typed number into a [`Phone`] (see the module docs for the rules).
pub fn normalize(raw: &str) -> Result<Phone, PhoneError> {
    if raw.chars().count() > MAX_INPUT_CHARS {
        return Err(PhoneError::TooLong);
    }
    // Lower-casing only affects letters, which are either an extension marker or an error.
    let lowered = raw.to_lowercase();
    let main = strip_extension(&lowered);

    let mut digits = String::with_capacity(main.len());
    let mut plus = false;
    for c in main.chars() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if digits.is_empty() && !plus => plus = true,
            ' ' | '-' | '.' | '(' | ')' | '\u{2010}'..='\u{2015}' | '\u{2212}' => {}
            c if c.is_whitespace() => {}
            _ => return Err(PhoneError::Letters),
        }
    }
    if digits.is_empty() {
        return Err(PhoneError::Empty);
    }

    let mut international = plus;
    if let Some(rest) = digits.strip_prefix("00") {
        digits = rest.to_owned();
        international = true;
    } else if !plus && digits.len() > 11 && digits.starts_with("810") {
        // Russia's old international access code, "8 10 <country> <number>". No Russian national
        // number starts with 1, and the length check keeps an 11-digit "810…" out of this branch.
        digits = digits["810".len()..].to_owned();
        international = true;
    }

    if digits.len() == 11 && digits.starts_with('8') && starts_russian_national(&digits[1..]) {
        // Domestic trunk prefix 8 (or "+8…", a common slip). The check on the next digit keeps
        // real country codes 81 (Japan), 82, 84, 86 untouched.
        digits.replace_range(0..1, "7");
    } else if !international && digits.len() == 10 && starts_russian_national(&digits) {
        digits.insert(0, '7');
    }

    if digits.len() > MAX_DIGITS {
        return Err(PhoneError::TooLong);
    }
    if digits.len() < MIN_DIGITS {
        return Err(PhoneError::TooShort);
    }
    if digits.starts_with('7') {
        // Zone 7 (Russia, Kazakhstan) numbers are exactly 11 digits.
        return match digits.len() {
            11 => Ok(Phone(digits)),
            n if n < 11 => Err(PhoneError::TooShort),
            _ => Err(PhoneError::TooLong),
        };
    }
    if !international && digits.len() < 11 {
        // Ten digits that are not a Russian national number: the country code is missing.
        return Err(PhoneError::TooShort);
    }
    Ok(Phone(digits))
}

/// A Russian national (10-digit) number starts with 9 (mobile) or 3, 4, 8 (geographic, toll-free).
fn starts_russian_national(national: &str) -> bool {
    matches!(national.as_bytes().first(), Some(b'3' | b'4' | b'8' | b'9'))
}

/// Cuts a trailing extension ("доб. 12", "ext 5", "#12", "(вн. 3)") if there is one.
///
/// Only a marker followed by nothing but separators and digits to the end counts, so a stray
/// word elsewhere is still reported as [`PhoneError::Letters`] rather than swallowed.
fn strip_extension(lowered: &str) -> &str {
    const MARKERS: [&str; 4] = ["доб", "ext", "вн", "#"];
    for marker in MARKERS {
        let Some(at) = lowered.rfind(marker) else {
            continue;
        };
        let head = &lowered[..at];
        let tail = &lowered[at + marker.len()..];
        if head.chars().any(|c| c.is_ascii_digit()) && is_extension_tail(tail) {
            return head;
        }
    }
    lowered
}

/// `[letters]* [.:)( and spaces]* digits [) and spaces]*` — the rest of "добавочный: 12)".
fn is_extension_tail(tail: &str) -> bool {
    let rest = tail.trim_start_matches(char::is_alphabetic);
    let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '.' | ':' | '-'));
    let rest = rest.trim_end_matches(|c: char| c.is_whitespace() || c == ')');
    !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_world_inputs_normalise_as_expected() {
        use PhoneError::*;
        let table: &[(&str, Result<&str, PhoneError>)] = &[
            ("8 (900) 123-45-67", Ok("79001234567")),
            ("+7 900 123 45 67", Ok("79001234567")),
            ("9001234567", Ok("79001234567")),
            ("79001234567", Ok("79001234567")),
            (" +7 900 1234567 ", Ok("79001234567")),
            ("+7\u{a0}900\u{a0}123\u{a0}45\u{a0}67", Ok("79001234567")),
            ("8.900.123.45.67", Ok("79001234567")),
            ("+8 900 123-45-67", Ok("79001234567")),
            ("+7(495)540-44-44 доб. 12", Ok("74955404444")),
            ("+7 (495) 540-44-44 (добавочный 123)", Ok("74955404444")),
            ("+7 900 123-45-67 ext 5", Ok("79001234567")),
            ("+7 900 123-45-67 #12", Ok("79001234567")),
            ("8 (812) 123-45-67 Вн. 3", Ok("78121234567")),
            ("4955404444", Ok("74955404444")),
            ("3812123456", Ok("73812123456")),
            ("8-800-555-35-35", Ok("78005553535")),
            ("+375 29 123-45-67", Ok("375291234567")),
            ("375291234567", Ok("375291234567")),
            ("+49 30 1234567", Ok("49301234567")),
            ("00 49 30 1234567", Ok("49301234567")),
            ("810 49 30 1234567", Ok("49301234567")),
            ("+1 (415) 555-2671", Ok("14155552671")),
            ("+81 3 1234 5678", Ok("81312345678")),
            ("+47 12 34 56 78", Ok("4712345678")),
            ("+7 (900) 123-45-6", Err(TooShort)),
            ("+7 900 123 45 678", Err(TooLong)),
            ("12345", Err(TooShort)),
            ("123-45-67", Err(TooShort)),
            ("5001234567", Err(TooShort)),
            ("1234567890123456", Err(TooLong)),
            ("abc", Err(Letters)),
            ("тел. 8 900 123 45 67", Err(Letters)),
            ("8 900 123 45 67, 8 900 765 43 21", Err(Letters)),
            ("7 900 + 123", Err(Letters)),
            ("", Err(Empty)),
            ("   ", Err(Empty)),
            ("+()", Err(Empty)),
        ];
        for (input, expected) in table {
            let got = normalize(input);
            let expected = expected.clone().map(|s| Phone(s.to_owned()));
            assert_eq!(got, expected, "input: {input:?}");
        }
    }

    #[test]
    fn normalising_a_normalised_number_changes_nothing() {
        for raw in [
            "8 (900) 123-45-67",
            "+375 29 123-45-67",
            "+1 415 555 2671",
            "+49 30 1234567",
        ] {
            let once = normalize(raw).expect("valid");
            assert_eq!(normalize(once.as_str()), Ok(once.clone()), "input: {raw:?}");
        }
    }

    #[test]
    fn masked_keeps_only_the_last_four_digits() {
        let phone = normalize("+7 900 123 45 67").expect("valid");
        assert_eq!(phone.masked(), "*******4567");
    }

    #[test]
    fn every_error_has_an_english_and_a_russian_message() {
        for err in [
            PhoneError::Empty,
            PhoneError::Letters,
            PhoneError::TooShort,
            PhoneError::TooLong,
        ] {
            assert!(!err.to_string().is_empty());
            assert!(err.message_ru().chars().any(|c| ('а'..='я').contains(&c)));
        }
    }

    #[test]
    fn absurdly_long_input_is_refused_without_work() {
        assert_eq!(normalize(&"1".repeat(10_000)), Err(PhoneError::TooLong));
    }
}
