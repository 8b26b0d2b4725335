//! JSON values our peers type loosely: Bitrix24 and Mango send the same integer as a JSON number
//! on one endpoint and as a string (`"1000"`, `" 42 "`) on another, so every integer we read
//! from them goes through [`int`] (or [`lenient_int`] inside a serde struct).

use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An integer sent as a JSON number or a numeric string (surrounding spaces allowed). Anything
/// else — a float, a number that does not fit `T`, a bool, null, an array — is `None`: a value
/// we cannot read exactly is treated as absent rather than rounded or wrapped.
pub fn int<T>(v: &Value) -> Option<T>
where
    T: FromStr + TryFrom<i64> + TryFrom<u64>,
{
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| T::try_from(n).ok())
            .or_else(|| n.as_u64().and_then(|n| T::try_from(n).ok())),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// [`int`] for `#[serde(default, deserialize_with = "crate::json::lenient_int")]` on an
/// `Option<T>` field: an absent, null or unreadable value is `None`, never a decoding error.
pub fn lenient_int<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + TryFrom<i64> + TryFrom<u64>,
{
    Ok(Option::<Value>::deserialize(d)?.as_ref().and_then(int))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_json_number_is_read() {
        assert_eq!(int::<u64>(&json!(3600)), Some(3600));
        assert_eq!(int::<i32>(&json!(1000)), Some(1000));
    }

    #[test]
    fn a_numeric_string_is_read_with_its_spaces_trimmed() {
        assert_eq!(int::<u64>(&json!("3600")), Some(3600));
        assert_eq!(int::<i32>(&json!(" \t1000 ")), Some(1000));
    }

    #[test]
    fn a_float_is_not_an_integer() {
        assert_eq!(int::<u64>(&json!(1.5)), None);
        assert_eq!(int::<u64>(&json!(3600.0)), None);
        assert_eq!(int::<u64>(&json!("1.5")), None);
    }

    #[test]
    fn a_negative_number_is_read_only_into_a_signed_type() {
        assert_eq!(int::<i32>(&json!(-5)), Some(-5));
        assert_eq!(int::<i32>(&json!("-5")), Some(-5));
        assert_eq!(int::<u64>(&json!(-5)), None);
        assert_eq!(int::<u64>(&json!("-5")), None);
    }

    #[test]
    fn a_number_that_does_not_fit_the_type_is_none() {
        assert_eq!(int::<i32>(&json!(i64::from(i32::MAX) + 1)), None);
        assert_eq!(int::<u32>(&json!("4294967296")), None);
        assert_eq!(int::<i64>(&json!(u64::MAX)), None);
        assert_eq!(int::<u64>(&json!(u64::MAX)), Some(u64::MAX));
        assert_eq!(int::<u64>(&json!("18446744073709551616")), None);
    }

    #[test]
    fn a_bool_null_empty_string_or_container_is_none() {
        for v in [
            json!(true),
            json!(null),
            json!(""),
            json!(" "),
            json!([1]),
            json!({"a": 1}),
        ] {
            assert_eq!(int::<i64>(&v), None, "{v}");
        }
    }

    #[test]
    fn the_serde_helper_reads_loosely_and_never_fails() {
        #[derive(Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "lenient_int")]
            n: Option<u64>,
        }
        let read = |v: Value| serde_json::from_value::<T>(v).map(|t| t.n).ok();
        assert_eq!(read(json!({"n": 7})), Some(Some(7)));
        assert_eq!(read(json!({"n": "7"})), Some(Some(7)));
        assert_eq!(read(json!({"n": "seven"})), Some(None));
        assert_eq!(read(json!({"n": null})), Some(None));
        assert_eq!(read(json!({})), Some(None));
    }
}
