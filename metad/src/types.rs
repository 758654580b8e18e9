//! The raft type configuration and the commands the state machine applies.
//!
//! A [`Command`] is what a leader proposes: the operation, the leader's
//! wall-clock time (the state machine's only clock, so every replica decides
//! lease expiry the same way) and an optional request id for retries.

use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;

/// A replica's id; also its raft node id in every group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Metad's raft types: commands in, results out, nodes are addresses.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// What one raft entry carries: the commands a leader gathered while its
/// previous entries were being written (openraft 0.9 writes one entry's
/// log IO at a time, so batching here is what makes group commit work).
///
/// Shared, not copied: openraft clones an entry each time it reads it from
/// the log (once per follower it replicates to, once to apply it), and a
/// WAL entry can carry a MiB. Encoded exactly as the `Vec<Command>` it
/// replaced (serde codes an `Arc<[T]>` as its slice), so logs written
/// before still decode.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Proposal(pub Arc<[Command]>);

impl Default for Proposal {
    fn default() -> Self {
        Proposal(Arc::from(Vec::new()))
    }
}

/// An immutable byte string shared by reference (a WAL payload: the raft
/// entry that carries it and the WAL state that keeps it until finished
/// hold the same bytes). Coded as one blob, like `serde_bytes`.
pub type SharedBytes = Arc<[u8]>;

/// `#[serde(with = "shared_bytes")]` for [`SharedBytes`]: the bytes bincode
/// writes for a `serde_bytes` `Vec<u8>`.
pub mod shared_bytes {
    use super::SharedBytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &SharedBytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Copies the bytes once, from the input straight into the shared
    /// buffer (through a `Vec` first, `Arc<[u8]>::from` copied them twice:
    /// ~4 % of a WAL follower's CPU decoding appends).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SharedBytes, D::Error> {
        d.deserialize_bytes(SharedBytesVisitor)
    }

    struct SharedBytesVisitor;

    impl<'de> serde::de::Visitor<'de> for SharedBytesVisitor {
        type Value = SharedBytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SharedBytes, E> {
            Ok(SharedBytes::from(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<SharedBytes, E> {
            Ok(SharedBytes::from(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<SharedBytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(SharedBytes::from(v))
        }
    }
}

/// Versions per log entry: the command at position `p` of the entry at
/// log index `i` writes version `i * VERSIONS_PER_ENTRY + p`, so versions
/// are unique and grow even when one entry holds many commands.
pub const VERSIONS_PER_ENTRY: u64 = 4096;

/// One command. `client == 0` means no retry protection.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub client: u64,
    pub seq: u64,
    /// The proposing leader's wall clock, milliseconds since the Unix epoch.
    pub now_ms: u64,
    pub op: Op,
}

/// One key write; `value == None` deletes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyWrite {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Required current version (0 = absent), or any.
    pub expected: Option<u64>,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// All preconditions hold and all writes apply, or nothing does.
    Write(Vec<KeyWrite>),
    AcquireLease {
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        holder: Vec<u8>,
        ttl_ms: u32,
    },
    RenewLease {
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        holder: Vec<u8>,
        epoch: u64,
        ttl_ms: u32,
    },
    ReleaseLease {
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        holder: Vec<u8>,
        epoch: u64,
    },
    RegisterNode {
        node_id: String,
        addr: String,
        capacity: u64,
        zone: String,
        ttl_ms: u32,
    },
    Heartbeat {
        node_id: String,
        used: u64,
        capacity: u64,
    },
    /// Appends to this WAL partition.
    WalAppend {
        gateway: String,
        // One blob, not byte by byte (bincode writes the same bytes either
        // way; element-wise coding of WAL payloads was ~17 % of metad's CPU
        // in the WAL bench).
        #[serde(with = "shared_bytes")]
        data: SharedBytes,
        is_intent: bool,
    },
    /// Marks entries finished (unknown or truncated offsets are ignored).
    WalFinish {
        offsets: Vec<u64>,
    },
    /// Moves `from`'s unfinished entries to `to`.
    WalClaim {
        from: String,
        to: String,
    },
    WalSetPosition {
        gateway: String,
        offset: u64,
    },
    /// The command's client has the answer to (or gave up on) every one of
    /// its requests with a seq below `below`: the group forgets their
    /// results and refuses a late copy of one. Proposed by a leader from
    /// the watermark a request carries; the command's own seq is unused.
    /// (Last variant: logs written before it still decode.)
    Settle {
        below: u64,
    },
}

/// What a key write did.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    pub version: u64,
    pub previous_version: u64,
}

/// A lease as the state machine holds it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// Empty when released or never granted.
    #[serde(with = "serde_bytes")]
    pub holder: Vec<u8>,
    pub epoch: u64,
    pub ttl_ms: u32,
    /// State-machine time the lease runs out.
    pub expires_at_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// Raft's own entries (blank, membership).
    None,
    Written(Vec<WriteOutcome>),
    /// Op `index` of the batch failed its precondition: the key's version
    /// is `current`.
    Conflict {
        index: usize,
        current: u64,
    },
    Lease {
        ok: bool,
        lease: LeaseState,
    },
    /// The operation was refused; the text says why.
    Refused(String),
    WalAppended {
        offset: u64,
    },
    WalFinished {
        truncated_before: u64,
    },
    WalClaimed {
        count: u64,
    },
    /// The partition is at its limit of unfinished bytes.
    WalFull(String),
    Done,
    /// A late copy of a request its client had already settled: nothing
    /// was applied. (Last variant: results stored before it still decode.)
    AlreadySettled,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A WAL payload decodes to the same bytes whether bincode reads
        /// from a slice (borrowed bytes, the raft messages' path) or from
        /// a reader (a byte buffer).
        #[test]
        fn shared_bytes_decode_from_slices_and_readers(
            data in proptest::collection::vec(any::<u8>(), 0..70_000),
            is_intent in any::<bool>(),
        ) {
            let op = Op::WalAppend {
                gateway: "gw".into(),
                data: SharedBytes::from(&data[..]),
                is_intent,
            };
            let bytes = bincode::serialize(&op).unwrap();
            let from_slice: Op = bincode::deserialize(&bytes).unwrap();
            let from_reader: Op = bincode::deserialize_from(std::io::Cursor::new(&bytes)).unwrap();
            prop_assert_eq!(&from_slice, &op);
            prop_assert_eq!(&from_reader, &op);
            // A truncated payload is an error, not a short value.
            let cut: Result<Op, _> = bincode::deserialize(&bytes[..bytes.len() - 1]);
            prop_assert!(cut.is_err());
        }
    }

    /// Byte fields coded as one blob (`serde_bytes`) have exactly the bytes
    /// bincode wrote for them as a sequence, so logs and snapshots written
    /// before the change still decode.
    #[test]
    fn blob_coding_keeps_the_sequence_format() {
        #[derive(Serialize)]
        enum Old {
            WalAppend {
                gateway: String,
                data: Vec<u8>,
                is_intent: bool,
            },
        }
        let data: Vec<u8> = (0..=255).collect();
        let old = bincode::serialize(&Old::WalAppend {
            gateway: "g".into(),
            data: data.clone(),
            is_intent: true,
        })
        .unwrap();
        let new_op = Op::WalAppend {
            gateway: "g".into(),
            data: data.into(),
            is_intent: true,
        };
        let new = bincode::serialize(&new_op).unwrap();
        // Same body after the variant tag (which differs: Old has one
        // variant).
        assert_eq!(old[4..], new[4..]);
        let back: Op = bincode::deserialize(&new).unwrap();
        assert!(matches!(back, Op::WalAppend { ref data, .. } if data.len() == 256));
    }

    /// A shared proposal has exactly the bytes of the `Vec<Command>` it
    /// replaced, both ways, so raft logs written before still decode.
    #[test]
    fn shared_proposals_keep_the_vec_format() {
        #[derive(Serialize, Deserialize)]
        struct Old(Vec<Command>);
        let cmds: Vec<Command> = (0..3u8)
            .map(|i| Command {
                client: 7,
                seq: i as u64,
                now_ms: 1,
                op: Op::WalAppend {
                    gateway: "g".into(),
                    data: vec![i; 100 * i as usize].into(),
                    is_intent: i == 1,
                },
            })
            .collect();
        let old = bincode::serialize(&Old(cmds.clone())).unwrap();
        let new = bincode::serialize(&Proposal(cmds.clone().into())).unwrap();
        assert_eq!(old, new);
        let back: Proposal = bincode::deserialize(&old).unwrap();
        assert_eq!(&back.0[..], &cmds[..]);
    }
}
