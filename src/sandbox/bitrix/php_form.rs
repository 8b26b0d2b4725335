//! PHP's view of values and forms: bracketed form keys, case-insensitive keys, numbers sent as
//! strings, numeric maps as arrays, and encoding forms as Bitrix24 does.

use serde_json::{Map, Value};

use super::*;

pub(super) fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

pub(super) fn upper_keys(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
        .collect()
}

pub(super) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// PHP's integer reading, as far as the simulator needs it: a number or a numeric string.
pub(super) fn as_u64(v: &Value) -> Option<u64> {
    crate::json::int(v)
}

pub(super) fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !(s.is_empty() || s == "0" || s.eq_ignore_ascii_case("false")),
        _ => false,
    }
}

/// A JSON array, or a PHP-style map with keys `0..n`, as a list.
pub(super) fn as_list(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a.clone()),
        Value::Object(m) => (0..m.len())
            .map(|i| m.get(&i.to_string()).cloned())
            .collect(),
        _ => None,
    }
}

/// Serialises ordered pairs as PHP's `json_encode` would: empty → `[]`, keys `0..n` → array.
pub(super) fn php_map(pairs: Vec<(String, Value)>) -> Value {
    if pairs.is_empty() {
        return Value::Array(Vec::new());
    }
    let sequential = pairs
        .iter()
        .enumerate()
        .all(|(i, (k, _))| *k == i.to_string());
    if sequential {
        Value::Array(pairs.into_iter().map(|(_, v)| v).collect())
    } else {
        Value::Object(pairs.into_iter().collect())
    }
}

pub(super) fn normalize_method(raw: &str) -> String {
    let m = raw.trim_matches('/').to_ascii_lowercase();
    m.strip_suffix(".json").map(str::to_string).unwrap_or(m)
}

/// Parses a PHP-style query string / form body (`a[b][0]=x`, brackets plain or `%5B%5D`).
pub(super) fn parse_php(input: &str) -> Result<Map<String, Value>, ApiErr> {
    if input.trim().is_empty() {
        return Ok(Map::new());
    }
    let fixed = input.replace("%5b", "%5B").replace("%5d", "%5D");
    serde_qs::Config::new()
        .max_depth(8)
        .use_form_encoding(true)
        .deserialize_str::<Map<String, Value>>(&fixed)
        .map_err(|e| api_err(400, "INVALID_REQUEST", format!("Malformed parameters: {e}")))
}

pub(super) fn request_params(
    query: &str,
    ctype: &str,
    body: &[u8],
) -> Result<Map<String, Value>, ApiErr> {
    let mut params = parse_php(query)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let body_params = if ctype.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(api_err(400, "INVALID_REQUEST", "JSON object expected")),
            Err(e) => return Err(api_err(400, "INVALID_REQUEST", format!("Bad JSON: {e}"))),
        }
    } else {
        let s = std::str::from_utf8(body)
            .map_err(|_| api_err(400, "INVALID_REQUEST", "Body is not UTF-8"))?;
        parse_php(s)?
    };
    params.extend(body_params);
    Ok(params)
}

/// Order of the batch commands as sent: PHP runs them in insertion order, so `$result[...]`
/// references depend on it.
pub(super) fn batch_order(query: &str, ctype: &str, body: &[u8]) -> Vec<String> {
    let mut order = Vec::new();
    let mut scan = |raw: &str| {
        for pair in raw.split('&') {
            let key = pair.split('=').next().unwrap_or("").replace('+', " ");
            let key: String = url::form_urlencoded::parse(format!("{key}=").as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if let Some(rest) = key.strip_prefix("cmd[") {
                if let Some((k, _)) = rest.split_once(']') {
                    if !order.iter().any(|o: &String| o == k) {
                        order.push(k.to_string());
                    }
                }
            }
        }
    };
    scan(query);
    // A JSON body needs no scan: serde_json's `preserve_order` keeps the `cmd` keys as sent.
    if !ctype.starts_with("application/json") {
        if let Ok(s) = std::str::from_utf8(body) {
            scan(s);
        }
    }
    order
}

/// Replaces `$result[key][0][FIELD]` references in every string of `v` with earlier batch results.
pub(super) fn substitute_value(v: Value, done: &Map<String, Value>) -> Value {
    match v {
        Value::String(s) if s.contains("$result[") => Value::String(substitute(&s, done)),
        Value::Array(a) => Value::Array(a.into_iter().map(|x| substitute_value(x, done)).collect()),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, substitute_value(x, done)))
                .collect(),
        ),
        other => other,
    }
}

pub(super) fn substitute(s: &str, done: &Map<String, Value>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find("$result[") {
        out.push_str(&rest[..pos]);
        let mut tail = &rest[pos + "$result".len()..];
        let mut segs: Vec<&str> = Vec::new();
        while let Some(inner) = tail.strip_prefix('[') {
            match inner.find(']') {
                Some(end) => {
                    segs.push(&inner[..end]);
                    tail = &inner[end + 1..];
                }
                None => break,
            }
        }
        let mut cur: Option<&Value> = segs.first().and_then(|k| done.get(*k));
        for seg in segs.iter().skip(1) {
            cur = match cur {
                Some(Value::Object(m)) => m.get(*seg),
                Some(Value::Array(a)) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            };
        }
        out.push_str(&cur.and_then(scalar_string).unwrap_or_default());
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Form-encodes pairs; brackets in keys stay plain unless `encode_brackets`.
pub(super) fn encode_pairs(pairs: &[(String, String)], encode_brackets: bool) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut key: String = url::form_urlencoded::byte_serialize(k.as_bytes()).collect();
            if !encode_brackets {
                key = key.replace("%5B", "[").replace("%5D", "]");
            }
            let val: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
            format!("{key}={val}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `data[...]` key for an event data entry; `FIELDS[ID]` becomes `data[FIELDS][ID]`.
pub(super) fn data_key(k: &str) -> String {
    match k.split_once('[') {
        Some((head, tail)) => format!("data[{head}][{tail}"),
        None => format!("data[{k}]"),
    }
}
