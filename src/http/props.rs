//! Properties of `parse_form`, the bracketed-form parser every Bitrix24 route starts with:
//! arbitrary bytes give a value or a 400, never a panic; what Bitrix24 sends (flat fields,
//! `auth[...]` blocks, brackets literal or percent-encoded in either case) reads back unchanged.

use std::collections::HashMap;

use actix_web::ResponseError;
use proptest::prelude::*;
use serde::Deserialize;

use super::request::{parse_form, AuthBlock};

pub(crate) fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        max_shrink_iters: 2048,
        ..ProptestConfig::default()
    }
}

/// How a sender writes `[` and `]` in keys: PHP leaves them, some encoders escape them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Brackets {
    Literal,
    Upper,
    Lower,
}

pub(crate) fn brackets() -> impl Strategy<Value = Brackets> {
    prop_oneof![
        Just(Brackets::Literal),
        Just(Brackets::Upper),
        Just(Brackets::Lower)
    ]
}

/// Encodes pairs as `application/x-www-form-urlencoded`, with the keys' brackets in `style`.
pub(crate) fn encode(pairs: &[(String, String)], style: Brackets) -> String {
    let esc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    pairs
        .iter()
        .map(|(k, v)| {
            let key = match style {
                Brackets::Literal => k.clone(),
                Brackets::Upper => k.replace('[', "%5B").replace(']', "%5D"),
                Brackets::Lower => k.replace('[', "%5b").replace(']', "%5d"),
            };
            format!("{key}={}", esc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Bytes a client may send: anything, or text made of the characters that matter to the parser.
pub(crate) fn hostile_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        "[a-z_\\[\\]%=&+;0-9A-F.\u{0}-\u{1f}\u{80}-\u{10ffff}]{0,200}".prop_map(String::into_bytes),
        // Deep, wide and numerically absurd brackets.
        "(([a-z]{1,3})(\\[[a-z0-9]{0,20}\\]){0,12}=[a-z0-9%]{0,8}&){0,20}"
            .prop_map(String::into_bytes),
    ]
}

/// A field value: any text, including what breaks naive parsers.
pub(crate) fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[&=\\[\\]%+; a-z]{0,20}",
        Just("%5b%5d".to_owned()),
        Just("99999999999999999999999".to_owned()),
        Just("' OR 1=1 --".to_owned()),
        Just("<script>alert(1)</script>".to_owned()),
    ]
    .prop_filter("non-empty", |v| !v.is_empty())
}

#[derive(Debug, Deserialize)]
struct WithAuth {
    auth: Option<AuthBlock>,
}

const AUTH_FIELDS: [&str; 11] = [
    "member_id",
    "application_token",
    "access_token",
    "refresh_token",
    "expires_in",
    "domain",
    "client_endpoint",
    "server_endpoint",
    "scope",
    "status",
    "user_id",
];

fn auth_field(a: &AuthBlock, name: &str) -> Option<String> {
    match name {
        "member_id" => a.member_id.clone(),
        "application_token" => a.application_token.clone(),
        "access_token" => a.access_token.clone(),
        "refresh_token" => a.refresh_token.clone(),
        "expires_in" => a.expires_in.clone(),
        "domain" => a.domain.clone(),
        "client_endpoint" => a.client_endpoint.clone(),
        "server_endpoint" => a.server_endpoint.clone(),
        "scope" => a.scope.clone(),
        "status" => a.status.clone(),
        "user_id" => a.user_id.clone(),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_body_gives_a_form_or_a_400(body in hostile_body()) {
        if let Err(e) = parse_form::<HashMap<String, String>>(&body) {
            prop_assert_eq!(e.status_code().as_u16(), 400, "{}", e);
        }
        if let Err(e) = parse_form::<WithAuth>(&body) {
            prop_assert_eq!(e.status_code().as_u16(), 400, "{}", e);
        }
    }

    #[test]
    fn a_flat_form_reads_back_as_sent(
        fields in prop::collection::hash_map("[A-Za-z_][A-Za-z0-9_]{0,15}", value(), 0..12),
    ) {
        let pairs: Vec<(String, String)> = fields.clone().into_iter().collect();
        let parsed: HashMap<String, String> = parse_form(encode(&pairs, Brackets::Literal).as_bytes())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed, fields);
    }

    #[test]
    fn an_auth_block_reads_back_as_sent_whatever_the_bracket_encoding(
        fields in prop::collection::hash_map(prop::sample::select(&AUTH_FIELDS[..]), value(), 1..11),
        style in brackets(),
    ) {
        let pairs: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (format!("auth[{k}]"), v.clone()))
            .collect();
        let parsed: WithAuth = parse_form(encode(&pairs, style).as_bytes())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let auth = parsed.auth.unwrap_or_default();
        for name in AUTH_FIELDS {
            prop_assert_eq!(auth_field(&auth, name), fields.get(name).cloned(), "auth[{}]", name);
        }
    }
}
