//! The healer's limits and defaults, with their units.

use std::time::Duration;

/// The lease only the working healer holds.
pub const LEASE_NAME: &[u8] = b"healer";
/// Its time to live (DESIGN.md: 15 s).
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// The leader renews this often: two renewals can fail before it stops.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(4);
/// The leader stops this long before the TTL runs out by its own clock
/// (measured from when it sent the grant or renewal), so that clock drift
/// between it and metad cannot make two leaders.
pub const LEASE_SAFETY_MARGIN: Duration = Duration::from_secs(2);
/// A standby asks for the lease this often.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// Seconds between the end of one pass and the start of the next.
pub const PASS_INTERVAL_DEFAULT_SECS: u64 = 30;
/// A node whose heartbeat lease expired this long ago is dead: its shards
/// are rebuilt elsewhere.
pub const DEAD_GRACE_DEFAULT_SECS: u64 = 60;
/// An orphan shard (named by no record, no unfinished WAL intent) is
/// deleted once two audits this far apart found it orphaned; a WAL entry
/// whose write never committed is finished after this long.
pub const GC_GRACE_DEFAULT_SECS: u64 = 3_600;
/// Objects repaired at once.
pub const REPAIR_CONCURRENCY_DEFAULT: usize = 4;
pub const REPAIR_CONCURRENCY_MAX: usize = 64;
/// Bytes per second that repairs read and write, together.
pub const REPAIR_BYTES_PER_SEC_DEFAULT: u64 = 256 << 20;
/// Below this the healer would never catch up with a lost node.
pub const REPAIR_BYTES_PER_SEC_MIN: u64 = 1 << 20;

/// Shards one pass keeps in memory from all inventories.
pub const INVENTORY_SHARDS_MAX: usize = 50_000_000;
/// Records one pass audits (the rest wait for the next pass).
pub const AUDIT_RECORDS_MAX: usize = 10_000_000;
/// Records per metadata listing page.
pub const LIST_PAGE_RECORDS: u32 = 1_000;
/// WAL entries per read.
pub const WAL_PAGE_ENTRIES: u32 = 1_000;
/// Bad-shard reports taken from a chunk server per call.
pub const BAD_SHARDS_PAGE: usize = 10_000;
/// Bad-shard reports remembered across passes until repaired.
pub const BAD_SHARDS_REMEMBERED_MAX: usize = 1_000_000;
/// The bad copies a leader stores in metad for the next leader: one
/// value, under metad's 256 KiB value limit (about 4 000 copies of
/// 36-byte node ids and 21-byte shard ids).
pub const BAD_COPIES_STORED_MAX_BYTES: usize = 240 << 10;
/// Orphans deleted per pass; the rest wait.
pub const GC_DELETES_PER_PASS_MAX: usize = 100_000;
/// Orphans tracked between passes.
pub const GC_TRACKED_MAX: usize = 10_000_000;
/// Shard deletes in flight at once.
pub const DELETES_IN_FLIGHT_MAX: usize = 32;
/// Nodes a write of one rebuilt shard tries before the repair gives up.
pub const SHARD_WRITE_TRIES: usize = 3;

/// Where the leader publishes its status (JSON, see [`crate::status`]).
pub const STATUS_KEY: &[u8] = b"healer/status";
/// Where the leader stores the bad copies it has not repaired yet (see
/// [`crate::bad_copies`]).
pub const BAD_COPIES_KEY: &[u8] = b"healer/bad-copies";
/// Where `tessera repair` asks for a repair (JSON, see [`crate::status`]).
pub const REQUEST_KEY: &[u8] = b"healer/request";
/// Fence keys: `healer/fence/{tN}`, one per metadata group.
pub const FENCE_KEY_PREFIX: &str = "healer/fence/";
/// Tags tried to find a fence key for each group.
pub const FENCE_TAG_TRIES_MAX: u32 = 1_000_000;
/// How often the leader publishes progress during repairs.
pub const STATUS_PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often the leader looks for a repair request between passes.
pub const REQUEST_POLL: Duration = Duration::from_secs(1);
/// Length of a shard id the gateway makes: version (16), stripe (4),
/// index (1). Other ids are not the healer's to judge or delete.
pub const SHARD_ID_BYTES: usize = 21;
/// Length of a version id.
pub const VERSION_ID_BYTES: usize = 16;
/// Tries of a compare-and-set that lost a race before giving up.
pub const COMMIT_RETRIES_MAX: usize = 8;
