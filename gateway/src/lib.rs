//! The gateway: Tessera's object API. It turns a key and its bytes into
//! shards on chunk servers and a metadata record in metad, and back.
//!
//! - [`meta`] is the object record stored in metad and the WAL intent;
//! - [`placement`] chooses the chunk servers of each stripe (weighted
//!   rendezvous hashing over the live nodes of the registry);
//! - [`cache`] keeps recently read or written stripes for reads;
//! - [`codec`] is the erasure code behind a trait (Reed-Solomon);
//! - [`bridge`] is the metad client of a glommio executor, run on that
//!   executor;
//! - [`nodes`] keeps the node table and a chunk client per node;
//! - [`objects`] is the write and read paths (WAL first, parallel shard
//!   writes, compare-and-set commit, degraded reads) and WAL replay;
//! - [`service`] serves the Cap'n Proto `Gateway` interface;
//! - [`memory`] keeps freed memory with the process and takes the read
//!   cache's memory at start;
//! - [`warm`] prepares large stripe buffers on a helper thread, so that the
//!   executor does not fault in the memory a growing read cache takes.

pub mod admission;
pub mod auth;
pub mod bridge;
pub mod cache;
pub mod codec;
pub mod config;
pub mod doc;
pub mod error;
pub mod gf256;
pub mod limits;
pub mod memory;
pub mod meta;
pub mod metrics;
pub mod nodes;
pub mod objects;
pub mod placement;
pub mod service;
pub mod warm;

pub use error::{Error, Result};
