//! A parsed JSON document for the JSON functions: what `serde_json::Value` holds, but an object
//! is its fields in order in a `Vec` instead of an ordered hash map.
//!
//! The functions read a few fields of each document once, so hashing every key of every object
//! while parsing (and allocating each object's hash table) cost more than it saved: a GA4 row has
//! about 30 objects, most of them a parameter's `{"key", "value"}` pair. Lookups compare names in
//! order; a document's text, `json_length` and duplicate keys behave as they do for
//! `serde_json::Value` with `preserve_order` (a repeated key keeps its first place and its last
//! value).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Number;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Doc {
    Null,
    Bool(bool),
    Number(Number),
    String(Box<str>),
    Array(Vec<Doc>),
    Object(Vec<(Box<str>, Doc)>),
}

impl Doc {
    /// Parses one JSON text; None when it is not JSON (or nests deeper than serde_json allows).
    pub(super) fn parse(text: &str) -> Option<Doc> {
        serde_json::from_str(text).ok()
    }

    /// Field `key` of an object.
    pub(super) fn field(&self, key: &str) -> Option<&Doc> {
        match self {
            Doc::Object(fields) => fields.iter().find(|(k, _)| &**k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Doc::String(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn is_null(&self) -> bool {
        matches!(self, Doc::Null)
    }
}

/// Compact JSON text, as `serde_json::Value` writes it. A number, boolean or null (what the
/// JSON functions write for most non-string values) is written straight into the formatter.
impl fmt::Display for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Doc::Null => f.write_str("null"),
            Doc::Bool(b) => f.write_str(if *b { "true" } else { "false" }),
            Doc::Number(n) => fmt::Display::fmt(n, f),
            _ => f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?),
        }
    }
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Null => s.serialize_unit(),
            Doc::Bool(b) => s.serialize_bool(*b),
            Doc::Number(n) => n.serialize(s),
            Doc::String(v) => s.serialize_str(v),
            Doc::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Doc, E> {
        Ok(Doc::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Doc, E> {
        Ok(Doc::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Doc, E> {
        Ok(Doc::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        Number::from_f64(v)
            .map(Doc::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Doc, E> {
        Ok(Doc::String(v.into()))
    }

    fn visit_string<E>(self, v: String) -> Result<Doc, E> {
        Ok(Doc::String(v.into_boxed_str()))
    }

    fn visit_unit<E>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_none<E>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Doc, D::Error> {
        Doc::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut fields: Vec<(Box<str>, Doc)> = Vec::new();
        while let Some(key) = map.next_key::<Key>()? {
            let value = map.next_value()?;
            fields.push((key.0, value));
        }
        Ok(Doc::Object(without_repeated_keys(fields)))
    }
}

/// An object key, taken as the text it is (`Box<str>` alone would refuse an escaped key).
struct Key(Box<str>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Key, E> {
                Ok(Key(v.into_boxed_str()))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Objects up to this many fields look for a repeated key by comparing every pair.
const PAIRWISE_MAX: usize = 8;

/// The fields with each repeated key once, in its first place with its last value (what
/// `serde_json::Map` with `preserve_order` keeps). Objects almost never repeat a key, so the
/// check comes first and allocates only for a large object.
fn without_repeated_keys(fields: Vec<(Box<str>, Doc)>) -> Vec<(Box<str>, Doc)> {
    let repeats = if fields.len() <= PAIRWISE_MAX {
        (1..fields.len()).any(|i| fields[..i].iter().any(|(k, _)| *k == fields[i].0))
    } else {
        let mut order: Vec<&str> = fields.iter().map(|(k, _)| &**k).collect();
        order.sort_unstable();
        order.windows(2).any(|w| w[0] == w[1])
    };
    if !repeats {
        return fields;
    }
    let mut kept: Vec<(Box<str>, Doc)> = Vec::with_capacity(fields.len());
    let mut at: std::collections::HashMap<Box<str>, usize> = std::collections::HashMap::new();
    for (k, v) in fields {
        match at.get(&k) {
            Some(&i) => kept[i].1 = v,
            None => {
                at.insert(k.clone(), kept.len());
                kept.push((k, v));
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The document's text and shape are serde_json's for the same input.
    fn same_as_serde_json(text: &str) {
        let doc = Doc::parse(text);
        let value: Option<Value> = serde_json::from_str(text).ok();
        assert_eq!(doc.is_some(), value.is_some(), "{text}");
        if let (Some(doc), Some(value)) = (doc, value) {
            assert_eq!(doc.to_string(), value.to_string(), "{text}");
        }
    }

    #[test]
    fn documents_read_and_write_like_serde_json_values() {
        for text in [
            r#"{"a": 1, "b": [true, false, null], "c": {"d": "x\"y\u00e9\n"}}"#,
            r#"{"big": 18446744073709551615, "neg": -9223372036854775808, "f": 1.5e300}"#,
            r#"{"f": 0.1, "g": -0.0, "h": 1e-7, "i": 100.0}"#,
            r#"{"a": 1, "b": 2, "a": 3}"#,
            r#"{"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k2":"again"}"#,
            r#"{"esc\u0061ped": "k", "\ud83d\ude00": [{}]}"#,
            r#"[1, "two", {"three": 3}]"#,
            r#""just a string""#,
            "42",
            "-7",
            "2.5e-3",
            "true",
            "null",
            r#"{"a": 1,}"#,
            r#"{"a": 1} trailing"#,
            "{\"a\": \"\u{0}\"}",
            "not json",
            "",
        ] {
            same_as_serde_json(text);
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        same_as_serde_json(&deep);
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value() {
        let doc = Doc::parse(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(doc.field("a"), Some(&Doc::Number(3.into())));
        let Doc::Object(fields) = &doc else {
            panic!("{doc:?} is not an object")
        };
        let keys: Vec<&str> = fields.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["a", "b"]);
    }
}
