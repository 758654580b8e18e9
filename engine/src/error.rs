//! The engine's one error type. Every variant says what failed and what the
//! caller can do about it.

use std::io;

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shard id is empty or longer than [`crate::limits::ID_LEN_MAX_BYTES`].
    #[error("shard id is {len} bytes; ids must be 1..={max} bytes — use a shorter id")]
    IdLength { len: usize, max: usize },

    /// The payload is larger than the engine accepts.
    #[error("shard payload is {len} bytes, over the limit of {max} bytes — split it into smaller shards")]
    ShardTooLarge { len: usize, max: usize },

    /// No shard with this id is stored.
    #[error("shard not found")]
    NotFound,

    /// The stored bytes no longer match their crc32c: the shard is corrupt on
    /// this node. It is never returned; repair it from another copy.
    #[error("checksum mismatch for shard in segment {segment} at offset {offset}: stored bytes are corrupt on this node — read another replica and repair this one")]
    Checksum { segment: u64, offset: u64 },

    /// A write or fsync failed earlier; what reached the disk is unknown, so
    /// the engine refuses further writes until it is reopened (which re-scans
    /// and cuts whatever is not intact). Reads still work.
    #[error(
        "the engine refuses writes after an earlier I/O failure ({cause}); reopen it to recover"
    )]
    Poisoned { cause: String },

    /// The disk has no room for a new segment. Nothing already stored is
    /// affected; deletes followed by compaction, or more disk, bring room back.
    #[error("disk full: could not allocate a new {segment_bytes}-byte segment ({source}) — free space or delete and compact")]
    DiskFull {
        segment_bytes: u64,
        source: io::Error,
    },

    /// The configuration is invalid.
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// The data directory holds something the engine cannot use.
    #[error("data directory problem: {0} — the engine serves nothing it cannot verify; inspect the directory or restore this node from its replicas")]
    Layout(String),

    /// The engine is shutting down or its shard thread has stopped.
    #[error("the engine is closed or its shard thread stopped; reopen it")]
    Closed,

    /// io_uring or its locked memory could not be set up.
    #[error("could not start the io_uring runtime: {0}")]
    Runtime(String),

    /// An I/O error from the device, with what the engine was doing.
    #[error("I/O error while {op}: {source} — check the device (kernel log, SMART); after a failed write or fsync the engine takes no writes until reopened, other shards keep serving")]
    Io { op: String, source: io::Error },
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    /// True for errors after which no write is attempted until reopen.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, Error::Poisoned { .. })
    }
}
