//! The one error type of the RPC layer: what the server said (typed), or
//! what went wrong on the way.

use std::net::SocketAddr;
use std::time::Duration;
use tessera_schema::chunk_capnp;

/// Result alias for the RPC layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds of error a Tessera server reports (mirrors `Error.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RemoteKind {
    NotFound,
    Checksum,
    TooLarge,
    InvalidArgument,
    DiskFull,
    Unavailable,
    Io,
    Internal,
}

impl RemoteKind {
    pub(crate) fn from_wire(k: chunk_capnp::error::Kind) -> Self {
        use chunk_capnp::error::Kind as K;
        match k {
            K::NotFound => RemoteKind::NotFound,
            K::Checksum => RemoteKind::Checksum,
            K::TooLarge => RemoteKind::TooLarge,
            K::InvalidArgument => RemoteKind::InvalidArgument,
            K::DiskFull => RemoteKind::DiskFull,
            K::Unavailable => RemoteKind::Unavailable,
            K::Io => RemoteKind::Io,
            K::Internal => RemoteKind::Internal,
        }
    }

    /// This kind as one byte (the framed transport's encoding).
    pub fn to_u8(self) -> u8 {
        match self {
            RemoteKind::NotFound => 0,
            RemoteKind::Checksum => 1,
            RemoteKind::TooLarge => 2,
            RemoteKind::InvalidArgument => 3,
            RemoteKind::DiskFull => 4,
            RemoteKind::Unavailable => 5,
            RemoteKind::Io => 6,
            RemoteKind::Internal => 7,
        }
    }

    /// The kind of a byte from [`to_u8`](Self::to_u8); one this version
    /// does not know is `Internal`.
    pub fn from_u8(b: u8) -> Self {
        match b {
            0 => RemoteKind::NotFound,
            1 => RemoteKind::Checksum,
            2 => RemoteKind::TooLarge,
            3 => RemoteKind::InvalidArgument,
            4 => RemoteKind::DiskFull,
            5 => RemoteKind::Unavailable,
            6 => RemoteKind::Io,
            _ => RemoteKind::Internal,
        }
    }

    /// The wire value of this kind.
    pub fn to_wire(self) -> chunk_capnp::error::Kind {
        use chunk_capnp::error::Kind as K;
        match self {
            RemoteKind::NotFound => K::NotFound,
            RemoteKind::Checksum => K::Checksum,
            RemoteKind::TooLarge => K::TooLarge,
            RemoteKind::InvalidArgument => K::InvalidArgument,
            RemoteKind::DiskFull => K::DiskFull,
            RemoteKind::Unavailable => K::Unavailable,
            RemoteKind::Io => K::Io,
            RemoteKind::Internal => K::Internal,
        }
    }
}

/// The kinds of error a gateway answers with (the schema's `Error.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayErrorKind {
    NotFound,
    InvalidArgument,
    TooLarge,
    Unavailable,
    Conflict,
    InsufficientNodes,
    DataLoss,
    Internal,
    /// No, a wrong, or a revoked access key.
    Unauthenticated,
    /// The key lacks the permission or prefix the call needs.
    PermissionDenied,
    /// A conditional write's precondition did not hold; nothing was stored.
    PreconditionFailed,
}

impl GatewayErrorKind {
    pub(crate) fn from_wire(k: tessera_schema::gateway_capnp::error::Kind) -> Self {
        use tessera_schema::gateway_capnp::error::Kind as K;
        match k {
            K::NotFound => Self::NotFound,
            K::InvalidArgument => Self::InvalidArgument,
            K::TooLarge => Self::TooLarge,
            K::Unavailable => Self::Unavailable,
            K::Conflict => Self::Conflict,
            K::InsufficientNodes => Self::InsufficientNodes,
            K::DataLoss => Self::DataLoss,
            K::Internal => Self::Internal,
            K::Unauthenticated => Self::Unauthenticated,
            K::PermissionDenied => Self::PermissionDenied,
            K::PreconditionFailed => Self::PreconditionFailed,
        }
    }
}

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused or failed the request and said why.
    #[error("{kind:?} from {addr}: {message}")]
    Remote {
        addr: SocketAddr,
        kind: RemoteKind,
        message: String,
    },
    /// The request breaks a limit of the contract; nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {source} — is the server running and listening there?")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The call took longer than its timeout (after all attempts).
    #[error("{what} to {addr} timed out after {after:?}")]
    Timeout {
        addr: SocketAddr,
        what: &'static str,
        after: Duration,
    },
    /// The connection failed or the peer sent something that is not our
    /// protocol (after all attempts, for retried calls).
    #[error("transport error talking to {addr}: {source}")]
    Transport {
        addr: SocketAddr,
        source: capnp::Error,
    },
    /// A gateway refused or failed the request and said why (the message
    /// says what to do).
    #[error("{message}")]
    Gateway {
        addr: SocketAddr,
        kind: GatewayErrorKind,
        message: String,
    },
    /// The server at the address is another node than the one asked for
    /// (the node was replaced and its address reused): nothing was sent
    /// to it.
    #[error("the chunk server at {addr} is {found}, not {expected} (the node was replaced); refresh the node table")]
    WrongNode {
        addr: SocketAddr,
        expected: String,
        found: String,
    },
    /// The bytes received do not match the checksum the server sent.
    #[error("data from {addr} failed its crc32c in transit (expected {expected:08x}, got {got:08x}); retry or read another replica")]
    TransitChecksum {
        addr: SocketAddr,
        expected: u32,
        got: u32,
    },
    /// No free listening port below the ephemeral range (see `ports`).
    #[error("no free port on 127.0.0.1 in {lo}..{hi} after {attempts} tries; stop some listening processes and retry")]
    NoFreePort { lo: u16, hi: u16, attempts: usize },
}

impl Error {
    /// The server's error kind, if the server answered with one.
    pub fn remote_kind(&self) -> Option<RemoteKind> {
        match self {
            Error::Remote { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// True if the shard does not exist on that server.
    pub fn is_not_found(&self) -> bool {
        self.remote_kind() == Some(RemoteKind::NotFound)
    }

    /// The same error again, for each of several callers one call failed
    /// for (an I/O error's kind and text are kept).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Remote {
                addr,
                kind,
                message,
            } => Error::Remote {
                addr: *addr,
                kind: *kind,
                message: message.clone(),
            },
            Error::Invalid(m) => Error::Invalid(m.clone()),
            Error::Connect { addr, source } => Error::Connect {
                addr: *addr,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            Error::Timeout { addr, what, after } => Error::Timeout {
                addr: *addr,
                what,
                after: *after,
            },
            Error::Transport { addr, source } => Error::Transport {
                addr: *addr,
                source: source.clone(),
            },
            Error::Gateway {
                addr,
                kind,
                message,
            } => Error::Gateway {
                addr: *addr,
                kind: *kind,
                message: message.clone(),
            },
            Error::WrongNode {
                addr,
                expected,
                found,
            } => Error::WrongNode {
                addr: *addr,
                expected: expected.clone(),
                found: found.clone(),
            },
            Error::TransitChecksum {
                addr,
                expected,
                got,
            } => Error::TransitChecksum {
                addr: *addr,
                expected: *expected,
                got: *got,
            },
            Error::NoFreePort { lo, hi, attempts } => Error::NoFreePort {
                lo: *lo,
                hi: *hi,
                attempts: *attempts,
            },
        }
    }

    /// Worth another attempt (on a fresh connection) for an idempotent call.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } | Error::TransitChecksum { .. } => true,
            Error::Transport { source, .. } => matches!(
                source.kind,
                capnp::ErrorKind::Disconnected | capnp::ErrorKind::Overloaded
            ),
            Error::Remote { .. }
            | Error::Invalid(_)
            | Error::Gateway { .. }
            | Error::WrongNode { .. }
            | Error::NoFreePort { .. } => false,
        }
    }
}
