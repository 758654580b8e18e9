//! The chunk server's one error type (start-up and configuration; request
//! errors travel as typed `Error` structs on the wire, see [`crate::service`]).

/// Result alias for the chunk server.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop the chunk server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file or a flag is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The storage engine failed to open or run.
    #[error(transparent)]
    Engine(#[from] tessera_engine::Error),
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source} — is another process using it? pick another with --listen")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The node identity file is unreadable.
    #[error("node id file {path}: {source}")]
    NodeId {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
