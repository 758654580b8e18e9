//! Where S3 things live in Tessera's one flat key space, and what the
//! front keeps in an object's attributes.
//!
//! - object `KEY` of bucket `B` → gateway key `B/KEY` (bucket names hold
//!   no `/`, so buckets never overlap, and a key limited to prefix `B/`
//!   is a key for bucket `B`);
//! - bucket `B` exists when the marker `.s3/buckets/B` does (bucket names
//!   start with a letter or digit, so `.s3` is never a bucket);
//! - multipart upload `U` into bucket `B`: its record `.s3/uploads/B/U`
//!   (JSON, [`Upload`]; its attributes name the object key, for listings)
//!   and its parts `.s3/parts/U/NNNNN`.
//!
//! Invariants: every gateway key made here is at most the gateway's
//! [`GATEWAY_KEY_MAX_BYTES`] (longer S3 keys are refused with
//! `KeyTooLongError`); attributes are at most [`ATTRS_MAX_BYTES`] and user
//! metadata at most [`USER_METADATA_MAX_BYTES`] (S3's limit).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The gateway's longest key.
pub const GATEWAY_KEY_MAX_BYTES: usize = 1000;
/// The gateway's largest attribute blob.
pub const ATTRS_MAX_BYTES: usize = 8 << 10;
/// S3's limit on user metadata (names and values, `x-amz-meta-*`).
pub const USER_METADATA_MAX_BYTES: usize = 2 << 10;
pub const BUCKET_MARKER_PREFIX: &str = ".s3/buckets/";
pub const UPLOAD_PREFIX: &str = ".s3/uploads/";
pub const PARTS_PREFIX: &str = ".s3/parts/";
/// S3's part numbers.
pub const PART_NUMBER_MAX: i32 = 10_000;

pub fn object_key(bucket: &str, key: &str) -> Option<String> {
    let k = format!("{bucket}/{key}");
    (k.len() <= GATEWAY_KEY_MAX_BYTES && !key.is_empty() && !key.contains('\0')).then_some(k)
}

pub fn bucket_prefix(bucket: &str) -> String {
    format!("{bucket}/")
}

pub fn bucket_marker(bucket: &str) -> String {
    format!("{BUCKET_MARKER_PREFIX}{bucket}")
}

pub fn upload_record(bucket: &str, upload_id: &str) -> String {
    format!("{UPLOAD_PREFIX}{bucket}/{upload_id}")
}

/// Where a bucket's upload records are listed.
pub fn uploads_prefix(bucket: &str) -> String {
    format!("{UPLOAD_PREFIX}{bucket}/")
}

/// What an upload record's attributes say, so that a listing of uploads
/// needs no read per upload: the object key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadAttrs {
    #[serde(rename = "k")]
    pub key: String,
}

pub fn parts_prefix(upload_id: &str) -> String {
    format!("{PARTS_PREFIX}{upload_id}/")
}

pub fn part_key(upload_id: &str, part: i32) -> String {
    format!("{PARTS_PREFIX}{upload_id}/{part:05}")
}

/// An upload id: 32 hex digits (checked before it names any key).
pub fn new_upload_id() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn check_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the front keeps with each object (JSON in the gateway's attrs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectAttrs {
    /// The ETag without quotes: MD5 hex, or `MD5-N` for a multipart object.
    #[serde(rename = "e", default)]
    pub etag: String,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(rename = "ce", default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(rename = "cd", default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(rename = "cc", default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(rename = "cl", default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(rename = "m", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Parts of a multipart object (0: a single put).
    #[serde(rename = "p", default, skip_serializing_if = "is_zero")]
    pub parts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ObjectAttrs {
    /// Parses what the gateway returns; attributes not written by this
    /// front (an object stored through the Cap'n Proto API) read as none.
    pub fn parse(bytes: &[u8]) -> ObjectAttrs {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let user: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if user > USER_METADATA_MAX_BYTES {
            return Err(format!(
                "user metadata is {user} bytes; S3 allows at most {USER_METADATA_MAX_BYTES}"
            ));
        }
        let b = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        if b.len() > ATTRS_MAX_BYTES {
            return Err(format!(
                "the object's headers take {} bytes; at most {ATTRS_MAX_BYTES}",
                b.len()
            ));
        }
        Ok(b)
    }
}

/// A multipart upload in progress (the record at `.s3/uploads/ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub bucket: String,
    pub key: String,
    /// The access key that started it ("" on an --insecure front): only
    /// it may add parts, complete or abort.
    pub owner: String,
    pub created_unix_millis: u64,
    /// Headers of the object to be (content type, user metadata…).
    pub attrs: ObjectAttrs,
}

pub use tessera_auth::keys::hex;

/// The multipart ETag: MD5 of the parts' binary MD5s, `-N`.
pub fn multipart_etag(part_etags: &[String]) -> Option<String> {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for e in part_etags {
        if e.len() != 32 {
            return None;
        }
        for i in (0..32).step_by(2) {
            h.update([u8::from_str_radix(&e[i..i + 2], 16).ok()?]);
        }
    }
    Some(format!("{}-{}", hex(&h.finalize()), part_etags.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn multipart_etag_matches_s3() {
        // md5("a") and md5("b"); S3's ETag of the two as parts.
        let parts = [
            "0cc175b9c0f1b6a831c399e269772661".to_string(),
            "92eb5ffee6ae2fec3ad71c777531578f".to_string(),
        ];
        let e = multipart_etag(&parts).unwrap();
        assert!(e.ends_with("-2"), "{e}");
        assert_eq!(e.len(), 34);
        assert_eq!(multipart_etag(&["xyz".into()]), None);
    }

    proptest! {
        /// Attributes round-trip; user metadata over S3's limit is refused;
        /// anything else in the attribute bytes reads as no attributes.
        #[test]
        fn attrs_round_trip(etag in "[0-9a-f]{32}", ct in proptest::option::of("[a-z]{1,10}/[a-z]{1,10}"),
                            meta in proptest::collection::btree_map("[a-z]{1,20}", "[ -~]{0,100}", 0..40),
                            junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let a = ObjectAttrs { etag, content_type: ct, metadata: meta.clone(), ..Default::default() };
            let user: usize = meta.iter().map(|(k, v)| k.len() + v.len()).sum();
            match a.encode() {
                Ok(b) => {
                    prop_assert!(user <= USER_METADATA_MAX_BYTES);
                    prop_assert_eq!(ObjectAttrs::parse(&b), a);
                }
                Err(_) => prop_assert!(user > USER_METADATA_MAX_BYTES),
            }
            let _ = ObjectAttrs::parse(&junk);
        }

        /// Gateway keys stay within the gateway's limit and inside their bucket.
        #[test]
        fn object_keys_are_bounded(bucket in "[a-z0-9]{3,63}", key in "\\PC{0,1100}") {
            match object_key(&bucket, &key) {
                Some(k) => {
                    prop_assert!(k.len() <= GATEWAY_KEY_MAX_BYTES);
                    prop_assert!(k.starts_with(&bucket_prefix(&bucket)));
                }
                None => prop_assert!(key.is_empty() || bucket.len() + 1 + key.len() > GATEWAY_KEY_MAX_BYTES || key.contains('\0')),
            }
        }
    }
}
