//! What the leader publishes under [`crate::limits::STATUS_KEY`] after each
//! step of a pass, and what `tessera repair` writes under
//! [`crate::limits::REQUEST_KEY`]. Both are JSON so that operators can read
//! them with any metad client.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One chunk server as the last pass saw it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeScrub {
    pub node_id: String,
    /// live, suspect or dead.
    pub state: String,
    pub shards: u64,
    pub scrub_running: bool,
    pub scrub_passes: u64,
    pub scrub_bytes_verified: u64,
    pub scrub_bytes_total: u64,
    pub scrub_bad_found: u64,
}

/// The healer's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HealerStatus {
    /// The leader that wrote this.
    pub leader: String,
    pub epoch: u64,
    pub updated_unix_millis: u64,
    /// Passes this leader finished.
    pub passes: u64,
    /// audit, repair, gc, idle.
    pub phase: String,
    pub pass_started_unix_millis: u64,
    pub last_pass_secs: f64,
    /// Objects audited in the last complete audit.
    pub objects: u64,
    /// Objects by redundancy left: "+2", "+1", "0", "lost" (shards beyond
    /// what a read needs, at the last audit).
    pub by_redundancy: BTreeMap<String, u64>,
    /// Objects waiting for repair, by class (see [`crate::audit::Class`]).
    pub queue: BTreeMap<String, u64>,
    /// Repairs of the current pass: done and planned.
    pub repairs_done: u64,
    pub repairs_planned: u64,
    pub repairs_failed: u64,
    /// Repairs that could not place every missing shard: too few live
    /// chunk servers outside the stripe (they wait for nodes).
    pub repairs_waiting: u64,
    /// The leader's dead grace period (a preview uses the same).
    pub dead_grace_secs: u64,
    /// Since this leader started.
    pub shards_rebuilt: u64,
    pub shards_moved: u64,
    pub bytes_repaired: u64,
    pub orphans_tracked: u64,
    pub orphans_deleted: u64,
    pub wal_entries_finished: u64,
    /// The last request served (see [`RepairRequest`]) and whether done.
    pub request_id: u64,
    pub request_done: bool,
    pub nodes: Vec<NodeScrub>,
    /// The last error that stopped a step, if any.
    pub last_error: String,
}

/// A request from `tessera repair`: run a pass now, over every object or
/// only the named keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepairRequest {
    pub id: u64,
    /// Empty: every object.
    pub keys: Vec<String>,
}

/// "+2" for two spare shards, "0" for none, "lost" below zero.
pub fn redundancy_label(left: i32) -> String {
    if left < 0 {
        "lost".into()
    } else if left == 0 {
        "0".into()
    } else {
        format!("+{left}")
    }
}
