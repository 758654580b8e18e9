//! The gateway's error: what went wrong and what to do, mapped onto the
//! wire's `Error.Kind`.

use thiserror::Error;

#[derive(Debug, Error, Clone)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InsufficientNodes(String),
    #[error("{0}")]
    DataLoss(String),
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A conditional write's precondition did not hold; nothing was stored.
    #[error("{0}")]
    PreconditionFailed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A metad failure seen by the gateway.
    pub fn from_metad(what: &str, e: tessera_metad::Error) -> Self {
        use tessera_metad::error::RemoteKind as K;
        use tessera_metad::Error as M;
        match e {
            M::Remote {
                kind: K::InvalidArgument | K::TooLarge,
                message,
            } => Error::Invalid(format!("{what}: metad refused it: {message}")),
            M::Remote {
                kind: K::Conflict,
                message,
            } => Error::Conflict(format!("{what}: {message}")),
            M::Remote {
                kind: K::Full,
                message,
            } => Error::Unavailable(format!(
                "{what}: the write-ahead log is full ({message}); retry when the healer has caught up"
            )),
            M::Remote {
                kind: K::Unauthenticated,
                message,
            } => Error::Unauthenticated(format!(
                "{what}: metad refused this client ({message}); use a node certificate or an admin access key"
            )),
            other => Error::Unavailable(format!("{what}: metad: {other}")),
        }
    }
}
