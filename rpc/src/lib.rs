//! Connection setup and the typed async clients of Tessera's Cap'n Proto
//! services (today: [`ChunkClient`] for chunk servers).
//!
//! Everything here runs on a glommio executor, the runtime of every Tessera
//! data-plane process: a Cap'n Proto connection is single-threaded, so each
//! executor keeps its own connections. The wire bindings live in
//! [`tessera_schema`] (generated code committed there, checked by a test).

pub mod chunk;
pub mod conn;
pub mod error;
pub mod limits;

pub use chunk::{ChunkClient, ClientOptions, NodeInfo, ScrubStatus, ShardInfo};
pub use error::{Error, RemoteKind, Result};
pub use tessera_schema::chunk_capnp;
