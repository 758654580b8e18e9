//! The one error type of the metad crate.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "log segment {path} is damaged at byte {offset}: {reason}. This replica's log cannot be \
         trusted: stop it, move its data directory away, and add it back as a new replica \
         (it copies the state from its peers)"
    )]
    LogCorrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error(
        "snapshot {path} is damaged: {reason}. Move this replica's data directory away and add it \
         back as a new replica"
    )]
    SnapshotCorrupt { path: PathBuf, reason: String },

    #[error("configuration: {0}")]
    Config(String),

    #[error("data directory {path}: {reason}")]
    Identity { path: PathBuf, reason: String },

    #[error("raft: {0}")]
    Raft(String),

    /// A replica answered with a typed error (the message says what to do).
    #[error("{message}")]
    Remote { kind: RemoteKind, message: String },

    /// No replica answered in time; `last` is the last failure seen.
    #[error("no metad replica answered within {waited_ms} ms ({attempts} attempts); last failure: {last}")]
    GaveUp {
        attempts: u32,
        waited_ms: u64,
        last: String,
    },
}

/// The kinds of error a replica returns (the schema's `Error.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    InvalidArgument,
    NotLeader,
    Unavailable,
    Conflict,
    TooLarge,
    Internal,
    Stale,
    /// A WAL partition is at its limit of unfinished bytes.
    Full,
    /// No node certificate and no (valid) admin access key.
    Unauthenticated,
}

/// How a replica's access check begins a refusal. The check answers before
/// any method runs, so the refusal travels as a failed call, not a typed
/// error; clients recognise it by this prefix (`client.rs`) and return it
/// as [`RemoteKind::Unauthenticated`] instead of retrying it.
pub const REFUSAL_PREFIX: &str = "unauthenticated: ";

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
