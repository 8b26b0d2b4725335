//! The deal's client phone in CRM terms: the deal → contact → phone `batch`, and reading its
//! answer (the deal's sub-command errors, primary contact, the deal's own `CONTACT_ID`, MOBILE
//! before WORK).

use serde_json::Value;

use super::client::BatchResult;

/// What the phone batch found.
pub enum DealContact {
    /// The batch fetched the contact to read the phone from.
    Fetched(Value),
    /// The primary contact is not the one the batch fetched: fetch this id with `crm.contact.get`.
    Other(String),
    /// No contact linked (yet).
    NoContact,
    /// Bitrix24 did not let the deal be read (deleted, access denied): its sub-command's error.
    Unreadable(SubError),
}

/// A `batch` sub-command's entry in `result_error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubError {
    pub method: String,
    pub code: String,
    pub description: String,
}

impl SubError {
    /// Limits and server trouble pass; a missing deal or a denied access does not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.code.as_str(),
            "QUERY_LIMIT_EXCEEDED" | "OPERATION_TIME_LIMIT" | "INTERNAL_SERVER_ERROR"
        )
    }
}

impl std::fmt::Display for SubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code.is_empty(), self.description.is_empty()) {
            (true, _) => write!(f, "{}: {}", self.method, self.description),
            (false, true) => write!(f, "{}: {}", self.method, self.code),
            (false, false) => write!(f, "{}: {} {}", self.method, self.code, self.description),
        }
    }
}

/// The client phone found for a deal, or why there is none.
pub enum PhoneLookup {
    Found(String),
    /// No contact linked (yet).
    NoContact,
    /// A contact without any phone.
    NoPhone,
    /// Bitrix24 did not let the deal be read.
    Unreadable(SubError),
}

impl PhoneLookup {
    /// The phone of a fetched contact.
    pub fn of_contact(contact: &Value) -> PhoneLookup {
        pick_phone(contact).map_or(PhoneLookup::NoPhone, PhoneLookup::Found)
    }
}

/// Deal → primary contact → phone, as the commands of one `batch`.
pub fn phone_batch(deal_id: &str) -> Vec<(String, String)> {
    // The portal runs the commands in the order sent (serde_json keeps it: `preserve_order`),
    // so `items` must come before the `$result[items]` that uses it.
    vec![
        (
            "items".to_owned(),
            format!("crm.deal.contact.items.get?id={deal_id}"),
        ),
        ("deal".to_owned(), format!("crm.deal.get?id={deal_id}")),
        (
            "contact".to_owned(),
            "crm.contact.get?id=$result[items][0][CONTACT_ID]".to_owned(),
        ),
    ]
}

/// Reads the answer of [`phone_batch`]. An error of a command that reads the deal itself means the
/// deal cannot be read; the contact command's error is expected when no contact is linked.
pub fn read_phone_batch(batch: &BatchResult) -> DealContact {
    for (key, method) in [
        ("items", "crm.deal.contact.items.get"),
        ("deal", "crm.deal.get"),
    ] {
        if let Some(e) = batch.errors.get(key) {
            let text = |field: &str| {
                e.get(field)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            return DealContact::Unreadable(SubError {
                method: method.to_owned(),
                code: text("error"),
                description: text("error_description"),
            });
        }
    }
    let items = batch
        .result
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let primary = items
        .iter()
        .find(|i| i.get("IS_PRIMARY").and_then(Value::as_str) == Some("Y"))
        .or(items.first());
    let contact_id = primary
        .and_then(|i| i.get("CONTACT_ID"))
        .and_then(as_id)
        .or_else(|| {
            batch
                .result
                .get("deal")
                .and_then(|d| d.get("CONTACT_ID"))
                .and_then(as_id)
        });
    let Some(contact_id) = contact_id else {
        return DealContact::NoContact;
    };
    let first_item = items
        .first()
        .and_then(|i| i.get("CONTACT_ID"))
        .and_then(as_id);
    // The batch fetched the first linked contact; the primary one may be another.
    match batch.result.get("contact") {
        Some(c) if first_item.as_deref() == Some(contact_id.as_str()) => {
            DealContact::Fetched(c.clone())
        }
        _ => DealContact::Other(contact_id),
    }
}

fn as_id(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() && s != "0" => Some(s.clone()),
        _ => None,
    }
}

/// MOBILE first, then WORK, then whatever comes first.
fn pick_phone(contact: &Value) -> Option<String> {
    let phones = contact.get("PHONE")?.as_array()?;
    let value_of = |p: &Value| {
        p.get("VALUE")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    for wanted in ["MOBILE", "WORK"] {
        if let Some(v) = phones
            .iter()
            .filter(|p| p.get("VALUE_TYPE").and_then(Value::as_str) == Some(wanted))
            .find_map(value_of)
        {
            return Some(v);
        }
    }
    phones.iter().find_map(value_of)
}
