//! The object record (what metad stores under an object's key) and the WAL
//! intent a write logs before anything else.
//!
//! Invariants:
//! - a record names every node it uses once, in `nodes`; stripes refer to
//!   them by index, and [`NO_NODE`] marks a shard that did not land (the
//!   record is then `dirty`);
//! - every stripe but the last holds `k × shard_bytes` object bytes; the
//!   last holds the rest, cut into k shards of `last_shard_bytes` (zero
//!   padded, a multiple of [`SHARD_ALIGN_BYTES`]);
//! - records are encoded with a leading format byte; an unknown format is
//!   an error, never a guess.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Format bytes of [`ObjectMeta`] and [`WalIntent`] encodings: v2 added
/// JSON documents, v3 the application's attributes; v1 and v2 records and
/// intents still decode.
const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;
const FORMAT_V3: u8 = 3;
/// Marks a shard with no node (it did not land).
pub const NO_NODE: u16 = u16::MAX;
/// Shards are a multiple of this many bytes (the codec's requirement).
pub const SHARD_ALIGN_BYTES: u32 = 64;
/// Prefix of object records in metad's key space.
pub const OBJECT_KEY_PREFIX: &[u8] = b"o/";

/// Which erasure code a record's stripes were made with: recorded per
/// object so that every object stays readable when a pool changes codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodecId {
    /// Reed-Solomon over GF(2^16) (the `reed-solomon-simd` crate).
    RsSimd,
    /// Reed-Solomon over GF(2^8), Cauchy matrix ([`crate::gf256`]).
    Cauchy256,
}

impl CodecId {
    pub fn parse(s: &str) -> Option<CodecId> {
        match s {
            "cauchy256" => Some(CodecId::Cauchy256),
            "rs-simd" => Some(CodecId::RsSimd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CodecId::RsSimd => "rs-simd",
            CodecId::Cauchy256 => "cauchy256",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// `replicas` hold the whole object (node indexes).
    Replicated { replicas: Vec<u16> },
    Erasure {
        codec: CodecId,
        k: u8,
        m: u8,
        shard_bytes: u32,
        /// Per stripe, the node of each of its k + m shards.
        stripes: Vec<Vec<u16>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(with = "serde_bytes")]
    pub version_id: Vec<u8>,
    pub size: u64,
    pub created_unix_millis: u64,
    /// Some shard or replica is missing: the healer completes it.
    pub dirty: bool,
    pub layout: Layout,
    /// Node ids the layout refers to by index.
    pub nodes: Vec<String>,
    /// Set for a JSON document: `layout` and `size` then describe its cold
    /// part.
    pub doc: Option<DocMeta>,
    /// The application's opaque attributes (at most
    /// [`crate::limits::OBJECT_ATTRS_MAX_BYTES`]), as given to put.
    #[serde(with = "serde_bytes")]
    pub attrs: Vec<u8>,
}

/// The v2 record (no attributes).
#[derive(Deserialize)]
struct ObjectMetaV2 {
    #[serde(with = "serde_bytes")]
    version_id: Vec<u8>,
    size: u64,
    created_unix_millis: u64,
    dirty: bool,
    layout: Layout,
    nodes: Vec<String>,
    doc: Option<DocMeta>,
}

impl From<ObjectMetaV2> for ObjectMeta {
    fn from(v: ObjectMetaV2) -> Self {
        ObjectMeta {
            version_id: v.version_id,
            size: v.size,
            created_unix_millis: v.created_unix_millis,
            dirty: v.dirty,
            layout: v.layout,
            nodes: v.nodes,
            doc: v.doc,
            attrs: Vec::new(),
        }
    }
}

/// The hot part of a JSON document and what identifies its cold part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocMeta {
    /// The hot fields as a JSON object, kept in the record itself: metad
    /// replicates it three times and a read of hot fields costs one
    /// metadata read.
    #[serde(with = "serde_bytes")]
    pub hot_json: Vec<u8>,
    /// SHA-256 of the cold part's canonical JSON (empty when there is none).
    #[serde(with = "serde_bytes")]
    pub cold_sha256: Vec<u8>,
    /// The version whose shards hold the cold part: an update with the same
    /// cold part reuses the previous version's stripes.
    #[serde(with = "serde_bytes")]
    pub cold_shards_version: Vec<u8>,
    /// The document is not an object: it is all cold.
    pub whole_cold: bool,
}

/// The v1 record (no documents).
#[derive(Deserialize)]
struct ObjectMetaV1 {
    #[serde(with = "serde_bytes")]
    version_id: Vec<u8>,
    size: u64,
    created_unix_millis: u64,
    dirty: bool,
    layout: Layout,
    nodes: Vec<String>,
}

/// Bytes of each shard of stripe `s` of an object of `size` bytes coded
/// with `k` data shards of `shard_bytes`: (object bytes in the stripe,
/// shard length).
pub fn stripe_geometry(size: u64, k: u8, shard_bytes: u32, s: u64) -> (u64, u32) {
    let stripe = k as u64 * shard_bytes as u64;
    let start = s * stripe;
    let len = size.saturating_sub(start).min(stripe);
    let per = len.div_ceil(k as u64).max(1);
    let aligned = per.div_ceil(SHARD_ALIGN_BYTES as u64) * SHARD_ALIGN_BYTES as u64;
    (
        len,
        aligned
            .min(shard_bytes as u64)
            .max(SHARD_ALIGN_BYTES as u64) as u32,
    )
}

/// Stripes of an object of `size` bytes (at least one, even when empty).
pub fn stripe_count(size: u64, k: u8, shard_bytes: u32) -> u64 {
    let stripe = k as u64 * shard_bytes as u64;
    size.div_ceil(stripe).max(1)
}

/// The chunk-server id of shard `index` of stripe `stripe` of a version:
/// version id (16 bytes), stripe (4, big endian), index (1).
pub fn shard_id(version_id: &[u8], stripe: u32, index: u8) -> Vec<u8> {
    let mut id = Vec::with_capacity(version_id.len() + 5);
    id.extend_from_slice(version_id);
    id.extend_from_slice(&stripe.to_be_bytes());
    id.push(index);
    id
}

/// metad key of an object.
pub fn object_key(key: &str) -> Vec<u8> {
    let mut k = OBJECT_KEY_PREFIX.to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V3];
    bincode::serialize_into(&mut out, v).expect("bincode into a Vec");
    out
}

/// Decodes `bytes` as `V3`, or as `V2` or `V1` converted: the format byte
/// says which.
fn decode<V3, V2, V1>(what: &str, bytes: &[u8]) -> Result<V3>
where
    V3: for<'de> Deserialize<'de>,
    V2: for<'de> Deserialize<'de> + Into<V3>,
    V1: for<'de> Deserialize<'de> + Into<V3>,
{
    use bincode::Options;
    let opts = || {
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(crate::limits::RECORD_DECODE_MAX_BYTES)
    };
    let bad = |e: bincode::Error| Error::Internal(format!("{what} does not decode: {e}"));
    match bytes.split_first() {
        Some((&FORMAT_V3, rest)) => opts().deserialize(rest).map_err(bad),
        Some((&FORMAT_V2, rest)) => opts().deserialize::<V2>(rest).map(Into::into).map_err(bad),
        Some((&FORMAT_V1, rest)) => opts().deserialize::<V1>(rest).map(Into::into).map_err(bad),
        Some((f, _)) => Err(Error::Internal(format!(
            "{what} has format {f}, which this gateway does not know: upgrade the gateway"
        ))),
        None => Err(Error::Internal(format!("{what} is empty"))),
    }
}

impl From<ObjectMetaV1> for ObjectMeta {
    fn from(v: ObjectMetaV1) -> Self {
        ObjectMeta {
            version_id: v.version_id,
            size: v.size,
            created_unix_millis: v.created_unix_millis,
            dirty: v.dirty,
            layout: v.layout,
            nodes: v.nodes,
            doc: None,
            attrs: Vec::new(),
        }
    }
}

impl ObjectMeta {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let m: ObjectMeta =
            decode::<ObjectMeta, ObjectMetaV2, ObjectMetaV1>("an object record", bytes)?;
        m.check()?;
        Ok(m)
    }

    /// Checks the invariants a decoded record must hold before it is used
    /// to read (indexes in range, geometry consistent).
    fn check(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Internal(format!(
                "an object record is damaged: {why}"
            )))
        };
        let n = self.nodes.len();
        let ok_idx = |i: u16| i == NO_NODE || (i as usize) < n;
        match &self.layout {
            Layout::Replicated { replicas } => {
                if replicas.iter().any(|&i| !ok_idx(i)) {
                    return bad("a replica names no node".into());
                }
                if replicas.is_empty() && !(self.doc.is_some() && self.size == 0) {
                    return bad("an object with no replica".into());
                }
            }
            Layout::Erasure {
                k,
                m,
                shard_bytes,
                stripes,
                ..
            } => {
                if *k == 0 || *shard_bytes == 0 || shard_bytes % SHARD_ALIGN_BYTES != 0 {
                    return bad(format!("k {k}, shard bytes {shard_bytes}"));
                }
                let want = stripe_count(self.size, *k, *shard_bytes);
                if stripes.len() as u64 != want {
                    return bad(format!(
                        "{} stripes for {} bytes, want {want}",
                        stripes.len(),
                        self.size
                    ));
                }
                let w = *k as usize + *m as usize;
                if stripes
                    .iter()
                    .any(|s| s.len() != w || s.iter().any(|&i| !ok_idx(i)))
                {
                    return bad("a stripe has the wrong shard count or node".into());
                }
            }
        }
        Ok(())
    }

    /// The version whose shard ids hold this record's bytes.
    pub fn shards_version(&self) -> &[u8] {
        match &self.doc {
            Some(d) if !d.cold_shards_version.is_empty() => &d.cold_shards_version,
            _ => &self.version_id,
        }
    }

    /// "replicated x3" / "rs 4+2 (1048576-byte shards)" / "json doc: …".
    pub fn layout_name(&self) -> String {
        if let Some(d) = &self.doc {
            let cold = match &self.layout {
                Layout::Erasure { k, m, .. } => format!("{} cold bytes rs {k}+{m}", self.size),
                Layout::Replicated { .. } => "no cold part".into(),
            };
            return format!(
                "json doc: {} hot bytes in the record, {cold}",
                d.hot_json.len()
            );
        }
        match &self.layout {
            Layout::Replicated { replicas } => format!("replicated x{}", replicas.len()),
            Layout::Erasure {
                codec,
                k,
                m,
                shard_bytes,
                ..
            } => format!("rs {k}+{m} ({shard_bytes}-byte shards, {})", codec.name()),
        }
    }

    pub fn stripes(&self) -> u32 {
        match &self.layout {
            Layout::Replicated { .. } => 1,
            Layout::Erasure { stripes, .. } => stripes.len() as u32,
        }
    }
}

/// What a write logs in the WAL before it touches a chunk server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalIntent {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub version_id: Vec<u8>,
    pub size: u64,
    pub created_unix_millis: u64,
    /// The live nodes placement ranked over (abandoning a write deletes
    /// its shards where placement put them).
    pub candidates: Vec<String>,
    /// (k, m, shard bytes) or None for replication.
    pub erasure: Option<(u8, u8, u32)>,
    /// A document's JSON when small enough: replay can finish the write.
    /// Blob intents carry no bytes (entries of earlier gateways may; replay
    /// completes those).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub has_payload: bool,
    /// For a JSON document: the hot field names asked for (the payload,
    /// when present, is the document's JSON).
    pub doc_hot: Option<Vec<String>>,
    /// The application's attributes, in entries of earlier gateways whose
    /// blob intents carried their bytes (replay completes those with
    /// them); empty now, since replay abandons every uncommitted blob
    /// write.
    #[serde(with = "serde_bytes")]
    pub attrs: Vec<u8>,
}

/// The v2 intent (no attributes).
#[derive(Deserialize)]
struct WalIntentV2 {
    key: String,
    #[serde(with = "serde_bytes")]
    version_id: Vec<u8>,
    size: u64,
    created_unix_millis: u64,
    candidates: Vec<String>,
    erasure: Option<(u8, u8, u32)>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    has_payload: bool,
    doc_hot: Option<Vec<String>>,
}

impl From<WalIntentV2> for WalIntent {
    fn from(v: WalIntentV2) -> Self {
        WalIntent {
            key: v.key,
            version_id: v.version_id,
            size: v.size,
            created_unix_millis: v.created_unix_millis,
            candidates: v.candidates,
            erasure: v.erasure,
            payload: v.payload,
            has_payload: v.has_payload,
            doc_hot: v.doc_hot,
            attrs: Vec::new(),
        }
    }
}

/// The v1 intent (no documents).
#[derive(Deserialize)]
struct WalIntentV1 {
    key: String,
    #[serde(with = "serde_bytes")]
    version_id: Vec<u8>,
    size: u64,
    created_unix_millis: u64,
    candidates: Vec<String>,
    erasure: Option<(u8, u8, u32)>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    has_payload: bool,
}

impl From<WalIntentV1> for WalIntent {
    fn from(v: WalIntentV1) -> Self {
        WalIntent {
            key: v.key,
            version_id: v.version_id,
            size: v.size,
            created_unix_millis: v.created_unix_millis,
            candidates: v.candidates,
            erasure: v.erasure,
            payload: v.payload,
            has_payload: v.has_payload,
            doc_hot: None,
            attrs: Vec::new(),
        }
    }
}

impl WalIntent {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        decode::<WalIntent, WalIntentV2, WalIntentV1>("a WAL intent", bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Stripes tile the object exactly, each shard is aligned and no
        /// larger than the shard size, and k shards hold the stripe.
        #[test]
        fn geometry_tiles_the_object(size in 0u64..(64 << 20), k in 1u8..12, sb_kib in 1u32..64) {
            let shard_bytes = sb_kib * 1024;
            let n = stripe_count(size, k, shard_bytes);
            let mut total = 0;
            for s in 0..n {
                let (len, sl) = stripe_geometry(size, k, shard_bytes, s);
                prop_assert!(sl % SHARD_ALIGN_BYTES == 0 && sl <= shard_bytes && sl > 0);
                prop_assert!(len <= k as u64 * sl as u64);
                if s + 1 < n { prop_assert_eq!(len, k as u64 * shard_bytes as u64); }
                total += len;
            }
            prop_assert_eq!(total, size);
        }

        /// A record decodes to itself; a flipped format byte or truncation
        /// is an error, never a different record.
        #[test]
        fn record_round_trips(size in 0u64..(1 << 30), nodes in 1usize..10, cut in 0usize..40) {
            let k = 4u8;
            let sb = 1 << 20;
            let stripes = (0..stripe_count(size, k, sb)).map(|s| (0..6).map(|i| ((s as usize + i) % nodes) as u16).collect()).collect();
            let m = ObjectMeta {
                version_id: vec![7; 16],
                size,
                created_unix_millis: 1,
                dirty: false,
                layout: Layout::Erasure { codec: CodecId::RsSimd, k, m: 2, shard_bytes: sb, stripes },
                nodes: (0..nodes).map(|i| format!("n{i}")).collect(),
                doc: (cut % 2 == 0).then(|| DocMeta {
                    hot_json: br#"{"a":1}"#.to_vec(),
                    cold_sha256: vec![1; 32],
                    cold_shards_version: vec![2; 16],
                    whole_cold: false,
                }),
                attrs: if cut % 3 == 0 { Vec::new() } else { vec![b'a'; cut] },
            };
            let b = m.encode();
            prop_assert_eq!(ObjectMeta::decode(&b).unwrap(), m.clone());
            // v2 (no attrs) and v1 (no doc either) encodings still decode.
            if m.attrs.is_empty() {
                let mut v2 = b.clone();
                v2[0] = 2;
                v2.truncate(v2.len() - 8); // the v3 attrs length
                prop_assert_eq!(ObjectMeta::decode(&v2).unwrap(), m.clone());
                if m.doc.is_none() {
                    let mut v1 = v2.clone();
                    v1[0] = 1;
                    v1.truncate(v1.len() - 1); // the v2 `None` tag
                    prop_assert_eq!(ObjectMeta::decode(&v1).unwrap(), m.clone());
                }
            }
            let mut bad = b.clone();
            bad[0] = 9;
            prop_assert!(ObjectMeta::decode(&bad).is_err());
            if cut < b.len() {
                prop_assert!(ObjectMeta::decode(&b[..cut]).is_err());
            }
        }
    }
}
