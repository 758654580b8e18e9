//! The chunk server: one `tessera-engine` shard per core behind the
//! `ChunkServer` Cap'n Proto interface (`schema/capnp/chunk.capnp`). It knows
//! nothing of the cluster: it stores shards durably, serves them only after
//! their crc32c verifies, and reports what its scrubber finds.
//!
//! Threads: the engine runs one glommio executor per shard; the server runs
//! its listeners and connections on those same executors (one SO_REUSEPORT
//! listener each, so the kernel spreads connections over cores). A request
//! for an id another shard owns crosses to that shard's thread through the
//! engine handle; one for the local shard does not leave the thread.
//!
//! Modules: [`config`] (TOML and flags), [`service`] (the interface),
//! [`server`] (listeners, connection limits, graceful drain).

pub mod config;
pub mod error;
pub mod metrics;
pub mod registration;
pub mod server;
pub mod service;

pub use config::Config;
pub use error::{Error, Result};
pub use server::Server;
