//! Connection setup and the typed async clients of Tessera's Cap'n Proto
//! services: [`ChunkClient`] for chunk servers, [`GatewayClient`] for the
//! object API (the client library applications use).
//!
//! Everything here runs on a glommio executor, the runtime of every Tessera
//! data-plane process: a Cap'n Proto connection is single-threaded, so each
//! executor keeps its own connections. The wire bindings live in
//! [`tessera_schema`] (generated code committed there, checked by a test).

pub mod chunk;
pub mod cluster;
pub mod conn;
pub mod error;
pub mod frames;
pub mod gateway;
pub mod limits;
pub mod local;
pub mod ports;

pub use chunk::{ChunkClient, ClientOptions, NodeInfo, PutBatchStats, ScrubStatus, ShardInfo};
pub use error::{Error, GatewayErrorKind, RemoteKind, Result};
pub use gateway::{
    ConnectOptions, Credentials, GatewayClient, KeyInfo, NodeScrub, ObjectInfo, PutIf, PutOutcome,
};
pub use tessera_schema::chunk_capnp;
