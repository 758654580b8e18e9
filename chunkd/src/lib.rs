//! The chunk server: one `tessera-engine` shard per core behind the
//! `ChunkServer` Cap'n Proto interface. It knows nothing of the cluster.
//!
//! Filled by the chunk-server issue; empty until then.
