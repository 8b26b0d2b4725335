//! Why a callback ended without a call, as a value: the stored `error` text and the timeline
//! texts in Russian and English are all built from it where it is decided, so rewording one
//! language can never change (or break) the other.

use serde::{Deserialize, Serialize};

use super::{Group, Unusable};
use crate::phone::PhoneError;
use crate::portal::Lang;

/// Why a callback ended without a call. Built where the decision is made
/// ([`super::place_call`], [`super::lifecycle`]) and carried to the report in its job payload;
/// `callbacks.error` keeps [`Reason::stored_error`] for the call log and the business process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Another callback of the deal is active or started within the duplicate window.
    Duplicate,
    /// A verified robot call that cannot be acted on.
    Unusable { why: Unusable },
    /// A previous run stopped while sending the command, and neither it nor its resends got a
    /// result from Mango.
    Interrupted,
    /// The Mango key or salt is not set (or the salt does not open).
    MangoKeysMissing,
    /// The group's extension or the outgoing line is not set.
    GroupNotSet { group: Group },
    /// No contact was linked to the deal within the contact wait.
    NoContact { waited_s: i64 },
    /// The deal's contact has no phone at all.
    NoPhone,
    /// The phone found is not a number Mango can dial.
    BadPhone { error: PhoneError },
    /// Bitrix24 refused to let the deal be read (deleted, access denied): its sub-command error.
    Bitrix24ReadFailed { method: String, description: String },
    /// Mango answered the command with a result code other than 1000.
    MangoRefused { code: u32 },
    /// Mango did not answer the command nor its resends, and posted no result for any of them.
    MangoNoAnswer { detail: String },
    /// Any other Mango failure (access refused, unreadable answer, retries used up).
    MangoFailed { detail: String },
    /// The job gave up for a reason outside the cases above (a Bitrix24 or storage error);
    /// `detail` is that error's own text.
    GaveUp { detail: String },
}

impl Reason {
    /// The callback status this reason ends in.
    pub fn status(&self) -> super::Status {
        use super::Status;
        match self {
            Reason::Duplicate => Status::Duplicate,
            Reason::NoContact { .. } | Reason::NoPhone | Reason::BadPhone { .. } => Status::NoPhone,
            _ => Status::Failed,
        }
    }

    /// What `callbacks.error` keeps: English (logs, the business process's `error` value), except
    /// for an unusable robot call, whose reason goes to the business process in the portal's
    /// language.
    pub fn stored_error(&self, lang: Lang) -> String {
        match self {
            Reason::Unusable { why } => why.message(lang),
            other => other.text(Lang::En),
        }
    }

    /// The reason in `lang`, as the timeline comment shows it.
    pub fn text(&self, lang: Lang) -> String {
        match lang {
            Lang::Ru => self.ru(),
            Lang::En => self.en(),
        }
    }

    fn en(&self) -> String {
        match self {
            Reason::Duplicate => {
                "another callback for this deal is active or started recently".into()
            }
            Reason::Unusable { why } => why.message(Lang::En),
            Reason::Interrupted => {
                "the call was ordered again without a new answer, and Mango confirmed no order".into()
            }
            Reason::MangoKeysMissing => "Mango keys are not set in the app's settings".into(),
            Reason::GroupNotSet { group } => format!(
                "the {group} group extension or the outgoing line is not set in the app's settings"
            ),
            Reason::NoContact { waited_s } => {
                format!("no contact linked to the deal after {waited_s}s")
            }
            Reason::NoPhone => "the deal's contact has no phone number".into(),
            Reason::BadPhone { error } => format!("invalid phone number: {error}"),
            Reason::Bitrix24ReadFailed {
                method,
                description,
            } => format!("Bitrix24 could not read the deal: {method}: {description}"),
            Reason::MangoRefused { code } => {
                format!("Mango {code}: {}", crate::mango::describe_code(*code).1)
            }
            Reason::MangoNoAnswer { detail } => format!(
                "Mango did not answer and confirmed no order, also when ordered again (Mango unavailable: {detail})"
            ),
            Reason::MangoFailed { detail } | Reason::GaveUp { detail } => detail.clone(),
        }
    }

    fn ru(&self) -> String {
        match self {
            Reason::Duplicate => {
                "по этой сделке звонок уже заказан или недавно состоялся".into()
            }
            Reason::Unusable { why } => why.message(Lang::Ru),
            Reason::Interrupted => {
                "звонок заказан повторно, но Mango не подтвердил ни один заказ".into()
            }
            Reason::MangoKeysMissing => "в настройках приложения не заданы ключи Mango".into(),
            Reason::GroupNotSet { group } => {
                let group = match group {
                    Group::Trainee => "стажёров",
                    Group::Experienced => "опытных менеджеров",
                };
                format!("в настройках приложения не задан номер группы {group} или линия")
            }
            Reason::NoContact { waited_s } => {
                format!("за {waited_s} с к сделке не привязан контакт")
            }
            Reason::NoPhone => "у контакта сделки нет телефона".into(),
            Reason::BadPhone { error } => {
                format!("номер телефона клиента некорректен: {}", error.message_ru())
            }
            Reason::Bitrix24ReadFailed {
                method,
                description,
            } => format!(
                "Битрикс24 не дал прочитать сделку (удалена или нет доступа): {method}: {description}"
            ),
            Reason::MangoRefused { code } => {
                format!("Mango {code}: {}", crate::mango::describe_code(*code).0)
            }
            Reason::MangoNoAnswer { detail } => format!(
                "Mango не ответил и не подтвердил ни один заказ, в том числе повторный ({detail})"
            ),
            Reason::MangoFailed { detail } => format!("сбой Mango ({detail})"),
            Reason::GaveUp { detail } => format!("сбой при заказе звонка ({detail})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant; a new variant fails to compile in `every_reason_…` until listed.
    fn all() -> Vec<Reason> {
        vec![
            Reason::Duplicate,
            Reason::Unusable {
                why: Unusable::NotADeal("LEAD_5".into()),
            },
            Reason::Interrupted,
            Reason::MangoKeysMissing,
            Reason::GroupNotSet {
                group: Group::Experienced,
            },
            Reason::NoContact { waited_s: 60 },
            Reason::NoPhone,
            Reason::BadPhone {
                error: PhoneError::TooShort,
            },
            Reason::Bitrix24ReadFailed {
                method: "crm.deal.get".into(),
                description: "Not found".into(),
            },
            Reason::MangoRefused { code: 3102 },
            Reason::MangoNoAnswer {
                detail: "HTTP 502".into(),
            },
            Reason::MangoFailed {
                detail: "unexpected answer from Mango: redirect".into(),
            },
            Reason::GaveUp {
                detail: "Bitrix24 API error 401".into(),
            },
        ]
    }

    #[test]
    fn every_reason_has_a_russian_and_an_english_text() {
        for r in all() {
            // Exhaustive on purpose: a new variant must be added to `all()` too.
            match &r {
                Reason::Duplicate
                | Reason::Unusable { .. }
                | Reason::Interrupted
                | Reason::MangoKeysMissing
                | Reason::GroupNotSet { .. }
                | Reason::NoContact { .. }
                | Reason::NoPhone
                | Reason::BadPhone { .. }
                | Reason::Bitrix24ReadFailed { .. }
                | Reason::MangoRefused { .. }
                | Reason::MangoNoAnswer { .. }
                | Reason::MangoFailed { .. }
                | Reason::GaveUp { .. } => {}
            }
            let (ru, en) = (r.text(Lang::Ru), r.text(Lang::En));
            assert!(!en.is_empty(), "{r:?}");
            assert!(ru.chars().any(|c| ('а'..='я').contains(&c)), "{r:?}: {ru}");
            assert_ne!(ru, en, "{r:?}");
        }
    }

    /// The Russian text of each reason, written out: it is built from the reason's fields only,
    /// so no English wording can reach it (the old code matched on the start of English
    /// messages, and a reworded message silently dropped the translation).
    #[test]
    fn each_russian_text_comes_from_the_reason_alone() {
        let ru: Vec<String> = all().iter().map(|r| r.text(Lang::Ru)).collect();
        let expected = [
            "по этой сделке звонок уже заказан или недавно состоялся",
            "робот работает только в сделках, а запущен для \"LEAD_5\"",
            "звонок заказан повторно, но Mango не подтвердил ни один заказ",
            "в настройках приложения не заданы ключи Mango",
            "в настройках приложения не задан номер группы опытных менеджеров или линия",
            "за 60 с к сделке не привязан контакт",
            "у контакта сделки нет телефона",
            "номер телефона клиента некорректен: Номер телефона слишком короткий (нужен полный номер с кодом)",
            "Битрикс24 не дал прочитать сделку (удалена или нет доступа): crm.deal.get: Not found",
            &format!("Mango 3102: {}", crate::mango::describe_code(3102).0),
            "Mango не ответил и не подтвердил ни один заказ, в том числе повторный (HTTP 502)",
            "сбой Mango (unexpected answer from Mango: redirect)",
            "сбой при заказе звонка (Bitrix24 API error 401)",
        ];
        assert_eq!(ru, expected);
    }

    #[test]
    fn the_stored_error_is_english_except_for_an_unusable_call() {
        let r = Reason::NoContact { waited_s: 60 };
        assert_eq!(r.stored_error(Lang::Ru), r.text(Lang::En));
        let u = Reason::Unusable {
            why: Unusable::NoDocument,
        };
        assert_eq!(u.stored_error(Lang::Ru), u.text(Lang::Ru));
    }

    #[test]
    fn a_reason_survives_the_job_payload() {
        for r in all() {
            let json = serde_json::to_string(&r).unwrap_or_default();
            let back: Option<Reason> = serde_json::from_str(&json).ok();
            assert_eq!(back.as_ref(), Some(&r), "{json}");
        }
    }
}
