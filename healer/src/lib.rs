//! The healer: one leader-elected daemon that keeps every object at full
//! redundancy (DESIGN.md, "Control").
//!
//! - [`lease`] holds the `healer` lease in metad (15 s TTL): only the
//!   holder works, and it stops on its own clock before the lease can be
//!   granted to anyone else;
//! - [`fence`] makes every metadata change of a leader conditional on its
//!   lease epoch still being the newest, in the same atomic batch;
//! - [`inventory`] takes one inventory per chunk server per pass (never one
//!   request per shard) and the scrubbers' bad-shard reports;
//! - [`bad_copies`] remembers reported copies until they are repaired, in
//!   metad too, so that a new leader goes on with them;
//! - [`audit`] diffs records against the inventories (pure: tested over
//!   generated clusters) into repair tasks, moves and garbage;
//! - [`repair`] carries them out: replicas copied, stripes rebuilt from any
//!   k shards, shards moved, all under a bytes/s [`throttle`];
//! - [`healer`] is the loop: passes in priority order, WAL entries
//!   finished, garbage collected after a grace period, status published;
//! - [`status`] is what the leader publishes for `tessera status`.
//!
//! Invariant: a repair never deletes the last good copy of anything. A
//! move writes the new copy, commits the record, and only then deletes the
//! old one; garbage is deleted only after two audits at least a grace
//! period apart found no record and no unfinished WAL intent naming it.

pub mod audit;
pub mod bad_copies;
pub mod config;
pub mod error;
pub mod fence;
pub mod healer;
pub mod inventory;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod repair;
pub mod status;
pub mod throttle;

pub use error::{Error, Result};
