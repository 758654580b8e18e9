//! The control plane: metadata in G openraft groups sharded by key hash,
//! the node registry and leases, served over Cap'n Proto.
//!
//! One replica process hosts every group on one thread (a tokio current-
//! thread runtime with a `LocalSet`; see ARCHITECTURE.md for why tokio and
//! not glommio here). Modules:
//! - [`types`]: raft type configuration and the commands groups apply;
//! - [`keys`]: key -> group;
//! - [`log_store`]: the raft log of all groups, one group-committed file set
//!   written with O_DIRECT through an io_uring this thread drives;
//! - [`state_machine`]: a group's keys, leases, node registry, snapshots;
//! - [`net`]: Cap'n Proto connections and the replica-to-replica transport;
//! - [`raft_wire`]: the framed wire raft messages between replicas ride;
//! - [`replica`]: a replica's data directory and groups;
//! - [`service`]: the `Metad` interface;
//! - [`server`]: the listener, connection limits and graceful shutdown;
//! - [`client`]: the client library (leader discovery, retries);
//! - [`config`]: TOML config and flags.

mod batcher;
pub mod client;
pub mod config;
pub mod error;
pub mod keys;
#[cfg(test)]
mod leader_flush_tests;
pub mod limits;
pub mod log_store;
pub mod metrics;
pub mod net;
pub mod raft_wire;
pub mod replica;
pub mod runtime;
pub mod server;
pub mod service;
pub mod state_machine;
pub mod types;

pub use error::{Error, Result};
