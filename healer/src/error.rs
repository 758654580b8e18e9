//! The healer's error: what went wrong and whether the leader may go on.

use thiserror::Error;

#[derive(Debug, Error, Clone)]
pub enum Error {
    /// This healer no longer holds the lease (or a newer epoch fenced it
    /// out): it must stop working at once.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A record changed while it was being repaired; the next pass sees
    /// the new one.
    #[error("changed: {0}")]
    Changed(String),
    /// Too few good shards remain to rebuild a stripe.
    #[error("data loss: {0}")]
    DataLoss(String),
    /// Too few live chunk servers to place what is missing: the repair
    /// waits for nodes (not a failure).
    #[error("waiting for nodes: {0}")]
    NoPlace(String),
    /// A chunk server or metad could not be reached or refused.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tessera_gateway::Error> for Error {
    fn from(e: tessera_gateway::Error) -> Self {
        use tessera_gateway::Error as G;
        match e {
            G::Conflict(m) | G::PreconditionFailed(m) => Error::Changed(m),
            G::Invalid(m) | G::TooLarge(m) => Error::Invalid(m),
            G::DataLoss(m) => Error::DataLoss(m),
            G::Internal(m) | G::Unauthenticated(m) | G::PermissionDenied(m) => Error::Internal(m),
            G::NotFound(m) | G::Unavailable(m) | G::InsufficientNodes(m) => Error::Unavailable(m),
        }
    }
}

impl From<tessera_rpc::Error> for Error {
    fn from(e: tessera_rpc::Error) -> Self {
        Error::Unavailable(e.to_string())
    }
}
