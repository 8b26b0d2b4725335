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
        transient_code(&self.code)
    }
}

/// Whether a `batch` sub-command's error code is worth another try: limits and server trouble.
pub fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "QUERY_LIMIT_EXCEEDED" | "OPERATION_TIME_LIMIT" | "INTERNAL_SERVER_ERROR"
    )
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
    let contact_id = primary_contact(&items).or_else(|| {
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

/// The deal's primary contact among its linked ones (`IS_PRIMARY=Y`, else the first).
fn primary_contact(items: &[Value]) -> Option<String> {
    items
        .iter()
        .find(|i| i.get("IS_PRIMARY").and_then(Value::as_str) == Some("Y"))
        .or(items.first())
        .and_then(|i| i.get("CONTACT_ID"))
        .and_then(as_id)
}

/// Round 1 of a lookup for several deals at once: each deal's linked contacts, one command per
/// deal, keyed by the deal's position (`d0`, `d1`…). At most 50 deals: `batch`'s limit.
pub fn deal_contacts_batch(deal_ids: &[&str]) -> Vec<(String, String)> {
    deal_ids
        .iter()
        .enumerate()
        .map(|(i, deal)| {
            (
                format!("d{i}"),
                format!("crm.deal.contact.items.get?id={deal}"),
            )
        })
        .collect()
}

/// Reads [`deal_contacts_batch`]'s answer: the primary contact of each deal, in the order sent.
/// `None` where the deal has no contact linked, or its command failed: that deal's own lookup
/// finds out why (the deal's own `CONTACT_ID`, the error to report), by the usual rules.
pub fn read_deal_contacts_batch(batch: &BatchResult, deals: usize) -> Vec<Option<String>> {
    (0..deals)
        .map(|i| {
            let key = format!("d{i}");
            if batch.errors.contains_key(&key) {
                return None;
            }
            let items = batch.result.get(&key)?.as_array()?;
            // The id goes into the next batch's query string: digits only.
            primary_contact(items).filter(|id| id.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// Round 2: each contact once (`c<id>` → `crm.contact.get?id=<id>`); two deals of one contact
/// share its command.
pub fn contacts_batch(contact_ids: &[&str]) -> Vec<(String, String)> {
    let mut seen = std::collections::BTreeSet::new();
    contact_ids
        .iter()
        .filter(|id| seen.insert(**id))
        .map(|id| (format!("c{id}"), format!("crm.contact.get?id={id}")))
        .collect()
}

/// The phone of a contact fetched by [`contacts_batch`], if the contact was read and has one.
pub fn contact_phone_in(batch: &BatchResult, contact_id: &str) -> Option<String> {
    let key = format!("c{contact_id}");
    if batch.errors.contains_key(&key) {
        return None;
    }
    pick_phone(batch.result.get(&key)?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(result: Value, errors: Value) -> BatchResult {
        BatchResult::read(&json!({ "result": result, "result_error": errors }))
    }

    #[test]
    fn round_one_asks_for_each_deals_contacts_by_position() {
        assert_eq!(
            deal_contacts_batch(&["17", "4"]),
            vec![
                (
                    "d0".to_owned(),
                    "crm.deal.contact.items.get?id=17".to_owned()
                ),
                (
                    "d1".to_owned(),
                    "crm.deal.contact.items.get?id=4".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn each_deal_gets_its_primary_contact_else_its_first_and_none_without_one() {
        let batch = answer(
            json!({
                "d0": [
                    { "CONTACT_ID": 5, "IS_PRIMARY": "N" },
                    { "CONTACT_ID": "9", "IS_PRIMARY": "Y" }
                ],
                "d1": [{ "CONTACT_ID": 7, "IS_PRIMARY": "N" }],
                "d2": [],
                "d4": [{ "CONTACT_ID": "7&id=1", "IS_PRIMARY": "Y" }]
            }),
            json!({ "d3": { "error": "ACCESS_DENIED", "error_description": "Access denied" } }),
        );
        assert_eq!(
            read_deal_contacts_batch(&batch, 6),
            vec![
                Some("9".to_owned()),
                Some("7".to_owned()),
                None,
                None,
                None, // not digits: never put into a query string
                None, // not answered at all
            ]
        );
    }

    #[test]
    fn round_two_fetches_a_shared_contact_once() {
        assert_eq!(
            contacts_batch(&["9", "7", "9"]),
            vec![
                ("c9".to_owned(), "crm.contact.get?id=9".to_owned()),
                ("c7".to_owned(), "crm.contact.get?id=7".to_owned()),
            ]
        );
    }

    #[test]
    fn a_fetched_contacts_phone_is_mobile_first_and_a_failed_or_phoneless_one_has_none() {
        let batch = answer(
            json!({
                "c9": { "PHONE": [
                    { "VALUE": "+7 495 540-44-44", "VALUE_TYPE": "WORK" },
                    { "VALUE": "8 900 123-45-67", "VALUE_TYPE": "MOBILE" }
                ] },
                "c7": { "PHONE": [] }
            }),
            json!({ "c3": { "error": "NOT_FOUND", "error_description": "Not found" } }),
        );
        assert_eq!(
            contact_phone_in(&batch, "9").as_deref(),
            Some("8 900 123-45-67")
        );
        assert_eq!(contact_phone_in(&batch, "7"), None);
        assert_eq!(contact_phone_in(&batch, "3"), None);
        assert_eq!(contact_phone_in(&batch, "1"), None);
    }
}
