//! JSON documents split into a hot and a cold part (DESIGN.md, "Classes").
//!
//! The hot part is the top-level fields named hot — or, when none are
//! named, the fields whose JSON is at most [`HOT_FIELD_MAX_BYTES`] — as one
//! JSON object; the cold part is the other fields. Both are encoded
//! canonically (keys sorted), so the same cold fields always give the same
//! bytes and the same SHA-256. A document that is not an object is all
//! cold. Invariant (tested over generated documents): `merge(split(d))`
//! equals `d` as a JSON value.

use crate::error::{Error, Result};
use crate::limits::{HOT_FIELD_MAX_BYTES, HOT_PART_MAX_BYTES};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Most hot field names one request may give, and their longest name.
pub const HOT_NAMES_MAX: usize = 1_000;
pub const HOT_NAME_LEN_MAX_BYTES: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The hot fields as a JSON object (`{}` when none).
    pub hot: Vec<u8>,
    /// The cold part's JSON (empty when there is none).
    pub cold: Vec<u8>,
    /// SHA-256 of `cold` (empty when there is none).
    pub cold_sha256: Vec<u8>,
    pub whole_cold: bool,
}

fn encode(v: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v)
        .map_err(|e| Error::Internal(format!("a parsed JSON document did not encode again: {e}")))
}

/// Splits the document `json` (see the module docs).
pub fn split(json: &str, hot: &[String]) -> Result<Split> {
    if hot.len() > HOT_NAMES_MAX || hot.iter().any(|h| h.len() > HOT_NAME_LEN_MAX_BYTES) {
        return Err(Error::Invalid(format!(
            "name at most {HOT_NAMES_MAX} hot fields of at most {HOT_NAME_LEN_MAX_BYTES} bytes each"
        )));
    }
    let value: Value = serde_json::from_str(json).map_err(|e| {
        Error::Invalid(format!(
            "the document is not valid JSON: {e}; fix it, or store the bytes as a blob with put"
        ))
    })?;
    let Value::Object(fields) = value else {
        let cold = encode(&value)?;
        return Ok(Split {
            hot: b"{}".to_vec(),
            cold_sha256: Sha256::digest(&cold).to_vec(),
            cold,
            whole_cold: true,
        });
    };
    let (mut h, mut c) = (Map::new(), Map::new());
    for (k, v) in fields {
        let is_hot = if hot.is_empty() {
            encode(&v)?.len() <= HOT_FIELD_MAX_BYTES
        } else {
            hot.contains(&k)
        };
        if is_hot {
            h.insert(k, v);
        } else {
            c.insert(k, v);
        }
    }
    let hot_bytes = encode(&Value::Object(h))?;
    if hot_bytes.len() > HOT_PART_MAX_BYTES {
        return Err(Error::TooLarge(format!(
            "the hot fields take {} bytes; at most {HOT_PART_MAX_BYTES} fit in the record: name fewer or smaller hot fields",
            hot_bytes.len()
        )));
    }
    let (cold, cold_sha256) = if c.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let cold = encode(&Value::Object(c))?;
        let sha = Sha256::digest(&cold).to_vec();
        (cold, sha)
    };
    Ok(Split {
        hot: hot_bytes,
        cold,
        cold_sha256,
        whole_cold: false,
    })
}

/// The document from its parts.
pub fn merge(hot: &[u8], cold: &[u8], whole_cold: bool) -> Result<String> {
    let bad = |what: &str, e: serde_json::Error| {
        Error::DataLoss(format!(
            "the stored {what} part of this document does not parse: {e}"
        ))
    };
    if whole_cold {
        let v: Value = serde_json::from_slice(cold).map_err(|e| bad("cold", e))?;
        return Ok(v.to_string());
    }
    let mut doc: Map<String, Value> = serde_json::from_slice(hot).map_err(|e| bad("hot", e))?;
    if !cold.is_empty() {
        let c: Map<String, Value> = serde_json::from_slice(cold).map_err(|e| bad("cold", e))?;
        doc.extend(c);
    }
    Ok(Value::Object(doc).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9 ]{0,400}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 40, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Splitting and merging gives back the same JSON value, with or
        /// without named hot fields; the cold hash depends on the cold
        /// fields only.
        #[test]
        fn merge_of_split_is_the_document(doc in json_value(), pick in any::<u8>()) {
            let text = doc.to_string();
            let names: Vec<String> = match &doc {
                Value::Object(m) => m.keys().filter(|k| k.len() as u8 % 3 == pick % 3).cloned().collect(),
                _ => Vec::new(),
            };
            for hot in [Vec::new(), names] {
                let s = split(&text, &hot).unwrap();
                let back: Value = serde_json::from_str(&merge(&s.hot, &s.cold, s.whole_cold).unwrap()).unwrap();
                prop_assert_eq!(&back, &doc);
                if let (Value::Object(_), false) = (&doc, hot.is_empty()) {
                    // Changing a hot field leaves the cold hash alone.
                    let mut d2 = doc.clone();
                    d2[hot[0].as_str()] = Value::from("changed");
                    let s2 = split(&d2.to_string(), &hot).unwrap();
                    prop_assert_eq!(&s2.cold_sha256, &s.cold_sha256);
                }
            }
        }
    }

    #[test]
    fn small_fields_are_hot_large_ones_cold() {
        let big = "x".repeat(300);
        let s = split(&format!(r#"{{"id":7,"body":"{big}"}}"#), &[]).unwrap();
        assert_eq!(s.hot, br#"{"id":7}"#);
        assert!(String::from_utf8(s.cold).unwrap().contains("body"));
    }

    #[test]
    fn invalid_json_says_where() {
        let e = split(r#"{"a": 1,"#, &[]).unwrap_err().to_string();
        assert!(e.contains("not valid JSON") && e.contains("line 1"), "{e}");
    }
}
