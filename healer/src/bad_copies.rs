//! Copies reported bad (by a scrubber or a read) that are not repaired
//! yet, and their record in metad so that a new leader goes on with them.
//!
//! A chunk server hands its reports over once (`badShards` takes them off
//! its queue), so the leader that took them is the only one that knows.
//! The leader therefore writes the set it remembers under
//! [`BAD_COPIES_KEY`] (fenced, like every change it makes) right after
//! taking new reports and whenever repairs shrink it; a new leader loads
//! it before its first pass.
//!
//! Invariants:
//! - The stored record is at most [`BAD_COPIES_STORED_MAX_BYTES`], so it
//!   fits in one metad value; copies past that are remembered only in the
//!   leader's memory (the next scrub finds them again if it dies).
//! - What is stored is a subset of what the leader remembers, written in
//!   the order of the copies (node, shard id) so that the same set always
//!   encodes the same bytes and an unchanged set is not written again.
//! - A stored record that does not decode is reported and ignored: it
//!   only delays repairs until the next scrub, it never stops the healer.
//!
//! The window left: reports taken and not yet written when the leader dies
//! (one metad write, milliseconds) are lost until a scrub or a read finds
//! those copies again.

use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::limits::*;
use std::collections::HashSet;
use tessera_gateway::bridge::MetaBridge;
use tessera_metad::client::Consistency;

/// Record format tag (version 1).
const MAGIC: &[u8; 4] = b"TBC1";
/// Longest node id stored (longer ones are kept in memory only).
const NODE_ID_STORED_MAX_BYTES: usize = 255;
/// Longest shard id stored.
const SHARD_ID_STORED_MAX_BYTES: usize = 255;

/// Bad copies (node id, shard id), kept until repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BadCopies {
    pub set: HashSet<(String, Vec<u8>)>,
}

impl BadCopies {
    /// Adds a report unless [`BAD_SHARDS_REMEMBERED_MAX`] are remembered.
    pub fn insert(&mut self, node: String, id: Vec<u8>) {
        if self.set.len() < BAD_SHARDS_REMEMBERED_MAX {
            self.set.insert((node, id));
        }
    }

    /// The stored form: magic, count (u32 LE), then per copy the node id
    /// and the shard id, each with a one-byte length; sorted, as many as
    /// fit in [`BAD_COPIES_STORED_MAX_BYTES`]. `None` for an empty set (the
    /// key is deleted).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let mut copies: Vec<&(String, Vec<u8>)> = self
            .set
            .iter()
            .filter(|(n, id)| {
                n.len() <= NODE_ID_STORED_MAX_BYTES && id.len() <= SHARD_ID_STORED_MAX_BYTES
            })
            .collect();
        if copies.is_empty() {
            return None;
        }
        copies.sort();
        let mut out = Vec::with_capacity((8 + copies.len() * 64).min(BAD_COPIES_STORED_MAX_BYTES));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for (n, id) in copies {
            if out.len() + 2 + n.len() + id.len() > BAD_COPIES_STORED_MAX_BYTES {
                break;
            }
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
            out.push(id.len() as u8);
            out.extend_from_slice(id);
            count += 1;
        }
        out[4..8].copy_from_slice(&count.to_le_bytes());
        Some(out)
    }

    /// Reads the stored form back; any damage is an `Invalid` error naming
    /// what is wrong.
    pub fn decode(b: &[u8]) -> Result<BadCopies> {
        let bad = |what: &str| {
            Error::Invalid(format!(
                "the stored bad-copy record ({} bytes) is damaged: {what}",
                b.len()
            ))
        };
        let rest = b
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("wrong magic"))?;
        let (count, mut rest) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("no count"))?;
        let count = u32::from_le_bytes(*count) as usize;
        // Each copy takes at least its two length bytes.
        if count > rest.len() / 2 {
            return Err(bad(&format!(
                "it counts {count} copies in {} bytes",
                rest.len()
            )));
        }
        let mut take = |what: &str| -> Result<Vec<u8>> {
            let (&len, r) = rest.split_first().ok_or_else(|| bad(what))?;
            let len = len as usize;
            if r.len() < len {
                return Err(bad(what));
            }
            let (v, r) = r.split_at(len);
            rest = r;
            Ok(v.to_vec())
        };
        let mut out = BadCopies::default();
        for _ in 0..count {
            let node = String::from_utf8(take("a node id is cut short")?)
                .map_err(|_| bad("a node id is not UTF-8"))?;
            let id = take("a shard id is cut short")?;
            out.set.insert((node, id));
        }
        if !rest.is_empty() {
            return Err(bad("bytes after the last copy"));
        }
        Ok(out)
    }

    /// The record a previous leader stored (empty if none).
    pub async fn load(bridge: &MetaBridge) -> Result<BadCopies> {
        let v = bridge
            .call("reading the stored bad copies", |c| async move {
                c.get(BAD_COPIES_KEY, Consistency::Linearizable).await
            })
            .await?;
        match v {
            Some(v) => BadCopies::decode(&v.value),
            None => Ok(BadCopies::default()),
        }
    }
}

/// Writes the leader's bad copies to metad when they differ from what it
/// wrote last (fenced: a leader that lost its epoch writes nothing).
#[derive(Debug, Default)]
pub struct BadCopiesRecord {
    /// The encoding last written (`Some(None)`: the key was deleted).
    written: Option<Option<Vec<u8>>>,
}

impl BadCopiesRecord {
    /// Forgets what was written (a new leader writes its first set).
    pub fn reset(&mut self) {
        self.written = None;
    }

    /// Writes `enc` ([`BadCopies::encode`]) unless it is what this leader
    /// wrote last.
    pub async fn save(&mut self, fence: &Fence, enc: Option<Vec<u8>>) -> Result<()> {
        if self.written.as_ref() == Some(&enc) {
            return Ok(());
        }
        fence.commit(BAD_COPIES_KEY, enc.clone(), None).await?;
        self.written = Some(enc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn copies() -> impl Strategy<Value = BadCopies> {
        proptest::collection::hash_set(
            (
                "[a-z0-9-]{1,40}",
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            0..200,
        )
        .prop_map(|set| BadCopies { set })
    }

    proptest! {
        /// What is stored reads back as the same set (under the cap), and
        /// the same set always encodes the same bytes.
        #[test]
        fn stored_copies_read_back(b in copies()) {
            match b.encode() {
                None => prop_assert!(b.set.is_empty()),
                Some(enc) => {
                    prop_assert!(enc.len() <= tessera_metad::limits::VALUE_LEN_MAX_BYTES);
                    prop_assert_eq!(BadCopies::decode(&enc).unwrap(), b.clone());
                    let again = BadCopies { set: b.set.iter().cloned().collect() };
                    prop_assert_eq!(again.encode(), Some(enc));
                }
            }
        }

        /// Damaged records are refused with an error, never a panic, and
        /// a cut record never reads as a smaller valid one.
        #[test]
        fn damaged_records_are_refused(b in copies(), cut in any::<prop::sample::Index>(), junk in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = BadCopies::decode(&junk);
            if let Some(enc) = b.encode() {
                let at = cut.index(enc.len());
                prop_assert!(BadCopies::decode(&enc[..at]).is_err());
                let mut longer = enc.clone();
                longer.push(0);
                prop_assert!(BadCopies::decode(&longer).is_err());
            }
        }
    }

    #[test]
    fn the_cap_fits_one_metad_value() {
        let mut b = BadCopies::default();
        for i in 0..BAD_COPIES_STORED_MAX_BYTES / 400 {
            b.insert(
                format!("{:0>255}", i % 7),
                (i as u64).to_be_bytes().repeat(32)[..255].to_vec(),
            );
        }
        let enc = b.encode().unwrap();
        assert!(enc.len() <= BAD_COPIES_STORED_MAX_BYTES, "{}", enc.len());
        const _: () =
            assert!(BAD_COPIES_STORED_MAX_BYTES < tessera_metad::limits::VALUE_LEN_MAX_BYTES);
        let back = BadCopies::decode(&enc).unwrap();
        // 2 + 255 + 2 + 255 bytes a copy: all that fit are there.
        assert_eq!(back.set.len(), (BAD_COPIES_STORED_MAX_BYTES - 8) / 512);
        assert!(back.set.is_subset(&b.set));
    }
}
