//! Properties of what a Mango notification is made of: `code_of` reads every code Mango may send
//! (number or string) and nothing else, and a signature verifies exactly when it was made with
//! the same key, salt and `json` text.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::code_of;
use crate::http::props::config;
use crate::mango::{sign, verify, Credentials};

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[ 0-9+\\-.e]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_code_is_read_from_a_number_or_a_padded_string(
        n in any::<i32>(),
        pad in "[ \t]{0,3}",
    ) {
        prop_assert_eq!(code_of(&json!(n)), Some(n));
        prop_assert_eq!(code_of(&json!(format!("{pad}{n}{pad}"))), Some(n));
    }

    #[test]
    fn a_code_outside_i32_or_of_another_type_is_none(
        big in prop_oneof![i64::MIN..i64::from(i32::MIN), i64::from(i32::MAX) + 1..=i64::MAX],
        other in json_value(),
    ) {
        prop_assert_eq!(code_of(&json!(big)), None);
        prop_assert_eq!(code_of(&json!(big.to_string())), None);
        let got = code_of(&other);
        match &other {
            Value::Number(n) => prop_assert_eq!(got, n.as_i64().and_then(|n| i32::try_from(n).ok())),
            Value::String(s) => prop_assert_eq!(got, s.trim().parse::<i32>().ok()),
            _ => prop_assert_eq!(got, None),
        }
    }

    #[test]
    fn a_signature_verifies_only_with_the_same_key_salt_and_json(
        key in any::<String>(),
        salt in any::<String>(),
        other_salt in any::<String>(),
        json in prop_oneof![any::<String>(), json_value().prop_map(|v| v.to_string())],
        upper in any::<bool>(),
    ) {
        let creds = Credentials::new(key.clone(), salt.clone());
        let signature = sign(&key, &json, &salt);
        let presented = if upper { signature.to_ascii_uppercase() } else { signature.clone() };
        prop_assert!(verify(&creds, &key, &json, &presented));
        let (other_key, other_json) = (format!("{key}x"), format!("{json} "));
        prop_assert!(!verify(&creds, &other_key, &json, &signature));
        prop_assert!(!verify(&creds, &key, &other_json, &signature));
        if other_salt != salt {
            prop_assert!(!verify(&Credentials::new(key.clone(), other_salt), &key, &json, &signature));
        }
    }

    #[test]
    fn any_presented_signature_is_checked_without_panicking(
        key in any::<String>(),
        json in any::<String>(),
        presented in any::<String>(),
    ) {
        let creds = Credentials::new("the-key", "the-salt");
        let _ = verify(&creds, &key, &json, &presented);
    }
}
