//! One metad replica: its identity, its shared log, and a raft instance
//! per group, all on one thread (a tokio `LocalSet`).
//!
//! Owns: the data directory layout
//! ```text
//! <data>/identity.toml    replica id and group count (fixed at creation)
//! <data>/log/seg-*.log    the raft log of every group (see log_store)
//! <data>/groups/<g>/      group g's snapshot
//! <data>/wal-log/seg-*.log the raft log of every WAL partition (its own
//!                         file set and writer thread: WAL appends never
//!                         queue behind metadata flushes, nor the reverse)
//! <data>/groups/wal-<p>/  WAL partition p's snapshot
//! ```
//! Raft group ids: metadata groups are 0..G, WAL partition p is G + p.
//! ```text
//! ```
//! Invariants: a replica never starts with an id or group count other than
//! the ones its directory was created with; a group is initialised (given
//! its first membership) only on a replica that has never seen it and was
//! not started with `join`.

use crate::error::{Error, Result};
use crate::limits::{
    PROPOSALS_INFLIGHT_MAX, PROPOSALS_QUEUED_MAX, PROPOSAL_BYTES_MAX, PROPOSAL_COMMANDS_MAX,
    READS_WAITING_MAX, SETTLE_STEP_SEQS,
};
use crate::log_store::SharedLog;
use crate::net::{GroupNetworkFactory, Peers};
use crate::state_machine::{GroupSm, SmStore};
use crate::types::{Command, CommandResult, NodeId, Op, Proposal, Raft};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Raft timing and compaction, settable in the TOML config.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many applied entries.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (a briefly lagging replica
    /// catches up from them instead of from a snapshot).
    pub entries_kept_after_snapshot: u64,
    /// A group whose entries held in memory pass this many (encoded) bytes
    /// snapshots and purges its log up to the snapshot, however few
    /// entries that is: entry counts alone let WAL groups, whose entries
    /// carry payloads, hold hundreds of MiB in memory and write all of it
    /// into every log checkpoint.
    pub log_bytes_snapshot_at: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            // openraft 0.9 also uses this as the append RPC timeout; at
            // 100 ms, appends of a few MiB behind a busy flush timed out.
            heartbeat_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_after_entries: 20_000,
            entries_kept_after_snapshot: 1000,
            log_bytes_snapshot_at: LOG_BYTES_SNAPSHOT_AT_DEFAULT,
        }
    }
}

/// Default of [`RaftTuning::log_bytes_snapshot_at`]: 8 MiB per group (12
/// groups by default, so about 100 MiB of log per replica at most).
pub const LOG_BYTES_SNAPSHOT_AT_DEFAULT: u64 = 8 << 20;
/// How often every group's in-memory log is checked against
/// [`RaftTuning::log_bytes_snapshot_at`]. Every check of a log over the
/// bound purges it up to its newest snapshot, so this is how long a
/// finished snapshot waits to free the log before it. At 100 ms (and a
/// purge only when a snapshot was asked for) a WAL partition taking 4 KiB
/// appends at 64 in flight (~130 MB/s of log) held far more than its
/// 8 MiB bound, and every log rotation copies the live log into its
/// checkpoint: ~1.2 KiB more log per 4 KiB append than with four times
/// fewer rotations. At 20 ms, half that, and WAL appends +10 %
/// (docs/BENCHMARKS.md, "WAL log checkpoints"). A check reads each
/// group's metrics, a few microseconds.
const LOG_BOUND_CHECK_EVERY: Duration = Duration::from_millis(20);
/// Least time between two snapshot requests for one group. Every check
/// purges up to the newest snapshot, so the log grows past the bound by
/// about one gap's worth of appends plus a snapshot's build; openraft
/// ignores a snapshot request while one is being built, so a
/// short gap costs no extra snapshots. (500 ms let a WAL partition taking
/// 16 KiB appends reach 6.9 MB over a 256 KiB bound once appends got
/// faster.)
const LOG_BOUND_TRIGGER_GAP: Duration = Duration::from_millis(100);

/// What a replica needs to start.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The address peers and clients reach this replica at.
    pub advertise: String,
    /// The initial voters (id -> address), this replica included. Ignored
    /// once the groups exist.
    pub peers: BTreeMap<NodeId, String>,
    pub groups: u32,
    /// WAL partitions (raft groups of their own, after the metadata groups).
    pub wal_partitions: u32,
    /// Start empty and wait to be added (do not initialise groups).
    pub join: bool,
    pub raft: RaftTuning,
    /// TLS to peer replicas (with this replica's node certificate).
    pub peer_security: crate::net::Security,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    replica_id: NodeId,
    groups: u32,
    #[serde(default = "default_wal_partitions")]
    wal_partitions: u32,
}

/// WAL partitions unless configured.
pub const WAL_PARTITIONS_DEFAULT: u32 = 4;

fn default_wal_partitions() -> u32 {
    WAL_PARTITIONS_DEFAULT
}

/// How long a read waits for a restarted replica to apply its old log.
const RESTART_CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Coalesces linearizable reads: one leadership confirmation at a time per
/// group; reads arriving while one runs wait for the next, which serves
/// them all.
#[derive(Default)]
pub struct ReadBarrier {
    running: bool,
    waiting: Vec<oneshot::Sender<std::result::Result<(), String>>>,
}

/// Why a proposal failed.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// This replica stopped leading the group.
    NotLeader,
    /// The group stopped (shutdown or a storage failure).
    Stopped(String),
    /// Too many commands are waiting; the caller should back off.
    Overloaded(String),
    /// Anything else (a bug).
    Other(String),
}

type Pending = (
    Command,
    oneshot::Sender<std::result::Result<CommandResult, ProposeError>>,
);

/// Commands waiting to be proposed, and how many proposals are in flight.
#[derive(Default)]
pub struct Proposals {
    queue: VecDeque<(Pending, usize)>,
    inflight: usize,
}

fn command_bytes(c: &Command) -> usize {
    match &c.op {
        Op::Write(ws) => ws
            .iter()
            .map(|w| w.key.len() + w.value.as_ref().map_or(0, |v| v.len()))
            .sum(),
        _ => 64,
    }
}

/// One group on this replica.
pub struct Group {
    pub id: u32,
    pub raft: Raft,
    pub sm: Rc<GroupSm>,
    /// When this replica last accepted an append from its leader (follower
    /// reads use it to bound staleness).
    pub last_leader_contact: Cell<Option<Instant>>,
    pub reads: RefCell<ReadBarrier>,
    pub proposals: RefCell<Proposals>,
    /// The last log index this replica had when it started. Until its state
    /// machine has applied that far it serves no linearizable read: openraft
    /// 0.9 restores a restarted leader as leader at once, and its committed
    /// id (written lazily) may be behind what was committed before the
    /// crash; reading before re-committing its tail would be stale.
    pub startup_last_index: u64,
    pub caught_up: Cell<bool>,
    /// When the log bound last asked this group to snapshot and purge.
    pub log_bound_asked: Cell<Option<Instant>>,
    /// The settled watermark this replica last proposed per client, while
    /// leader (local, not replicated; at most [`SETTLE_CLIENTS_MAX`], then
    /// cleared, which costs one extra `Settle` per client).
    pub settle_proposed: RefCell<HashMap<u64, u64>>,
}

/// Clients whose last proposed watermark a leader keeps per group.
const SETTLE_CLIENTS_MAX: usize = 4096;

impl Group {
    /// Proposes `cmd` and returns its result once applied. Commands that
    /// arrive while [`PROPOSALS_INFLIGHT_MAX`] entries are in flight are
    /// gathered into one entry (group commit).
    pub async fn propose(
        self: &Rc<Self>,
        cmd: Command,
    ) -> std::result::Result<CommandResult, ProposeError> {
        let rx = self.enqueue(cmd)?;
        rx.await
            .map_err(|_| ProposeError::Stopped("the group stopped while proposing".into()))?
    }

    /// Queues `cmd` for the proposer (starting one when fewer than
    /// [`PROPOSALS_INFLIGHT_MAX`] are out); its result arrives on the
    /// receiver.
    fn enqueue(
        self: &Rc<Self>,
        cmd: Command,
    ) -> std::result::Result<
        oneshot::Receiver<std::result::Result<CommandResult, ProposeError>>,
        ProposeError,
    > {
        let (tx, rx) = oneshot::channel();
        let bytes = command_bytes(&cmd);
        let start = {
            let mut p = self.proposals.borrow_mut();
            if p.queue.len() >= PROPOSALS_QUEUED_MAX {
                return Err(ProposeError::Overloaded(format!(
                    "group {} has {PROPOSALS_QUEUED_MAX} commands waiting to be proposed; retry shortly",
                    self.id
                )));
            }
            p.queue.push_back(((cmd, tx), bytes));
            if p.inflight < PROPOSALS_INFLIGHT_MAX {
                p.inflight += 1;
                true
            } else {
                false
            }
        };
        if start {
            let g = self.clone();
            tokio::task::spawn_local(async move { g.proposer().await });
        }
        Ok(rx)
    }

    /// A request of `client` said every seq below `below` is settled: once
    /// that is [`SETTLE_STEP_SEQS`] past what this leader last proposed,
    /// queue an `Op::Settle` ahead of the request (no one waits for it; a
    /// lost one is made good by the next).
    pub fn note_settled(self: &Rc<Self>, client: u64, below: u64, now_ms: u64) {
        {
            let mut sent = self.settle_proposed.borrow_mut();
            let last = sent.get(&client).copied().unwrap_or(0);
            if below < last.saturating_add(SETTLE_STEP_SEQS) && last != 0 {
                return;
            }
            if sent.len() >= SETTLE_CLIENTS_MAX && !sent.contains_key(&client) {
                sent.clear();
            }
            sent.insert(client, below);
        }
        let cmd = Command {
            client,
            seq: 0,
            now_ms,
            op: Op::Settle { below },
        };
        // Overloaded: the watermark waits for a later request.
        if self.enqueue(cmd).is_err() {
            self.settle_proposed.borrow_mut().remove(&client);
        }
    }

    async fn proposer(self: Rc<Self>) {
        loop {
            let batch: Vec<Pending> = {
                let mut p = self.proposals.borrow_mut();
                let mut out = Vec::new();
                let mut bytes = 0usize;
                while let Some((pending, b)) = p.queue.pop_front() {
                    if !out.is_empty()
                        && (out.len() >= PROPOSAL_COMMANDS_MAX || bytes + b > PROPOSAL_BYTES_MAX)
                    {
                        p.queue.push_front((pending, b));
                        break;
                    }
                    bytes += b;
                    out.push(pending);
                }
                if out.is_empty() {
                    p.inflight -= 1;
                    return;
                }
                out
            };
            let (cmds, txs): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            match self.raft.client_write(Proposal(cmds.into())).await {
                Ok(resp) if resp.data.len() == txs.len() => {
                    for (tx, r) in txs.into_iter().zip(resp.data) {
                        let _ = tx.send(Ok(r));
                    }
                }
                Ok(resp) => {
                    let e = ProposeError::Other(format!(
                        "{} results for {} commands",
                        resp.data.len(),
                        txs.len()
                    ));
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    let e = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                            ProposeError::NotLeader
                        }
                        RaftError::APIError(e) => ProposeError::Other(e.to_string()),
                        RaftError::Fatal(e) => ProposeError::Stopped(e.to_string()),
                    };
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

pub struct Replica {
    pub id: NodeId,
    pub advertise: String,
    /// Metadata groups, then WAL partitions.
    pub groups: Vec<Rc<Group>>,
    pub meta_groups: u32,
    pub wal_partitions: u32,
    pub peers: Rc<Peers>,
    pub log: Rc<SharedLog>,
    pub wal_log: Rc<SharedLog>,
    pub started: Instant,
}

fn check_identity(dir: &Path, id: NodeId, groups: u32, wal_partitions: u32) -> Result<()> {
    let path = dir.join("identity.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let ident: Identity = toml::from_str(&text).map_err(|e| Error::Identity {
                path: path.clone(),
                reason: format!("unreadable: {e}"),
            })?;
            if ident.replica_id != id {
                return Err(Error::Identity {
                    path,
                    reason: format!(
                        "it belongs to replica {}, not {id}: start with --id {} or use another --data",
                        ident.replica_id, ident.replica_id
                    ),
                });
            }
            if ident.groups != groups {
                return Err(Error::Identity {
                    path,
                    reason: format!(
                        "it was created with {} groups and cannot change to {groups}: start with --groups {}",
                        ident.groups, ident.groups
                    ),
                });
            }
            if ident.wal_partitions != wal_partitions {
                return Err(Error::Identity {
                    path,
                    reason: format!(
                        "it was created with {} WAL partitions and cannot change to {wal_partitions}: start \
                         with --wal-partitions {}",
                        ident.wal_partitions, ident.wal_partitions
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let text = toml::to_string(&Identity {
                replica_id: id,
                groups,
                wal_partitions,
            })
            .expect("toml of three integers");
            let tmp = dir.join("identity.toml.tmp");
            std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
            std::fs::File::open(dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io(dir, e))?;
            Ok(())
        }
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// WAL groups snapshot after, and keep after a snapshot, this many times
/// fewer entries than metadata groups (a WAL entry can be a megabyte).
const WAL_GROUP_DIVISOR: u64 = 10;

fn raft_config(t: &RaftTuning, wal: bool) -> Result<Arc<Config>> {
    // A WAL entry can be a megabyte: its groups snapshot (and so purge
    // their in-memory log) ten times as often.
    let div = if wal { WAL_GROUP_DIVISOR } else { 1 };
    let c = Config {
        cluster_name: if wal {
            "tessera-wal".into()
        } else {
            "tessera-metad".into()
        },
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast((t.snapshot_after_entries / div).max(1)),
        // Logs are purged by `bound_logs` alone (see there why): with this,
        // openraft's own purge after a snapshot never finds anything to do.
        max_in_snapshot_log_to_keep: u64::MAX,
        install_snapshot_timeout: 2000,
        // One append RPC carries at most this many entries. A WAL entry can
        // hold 1 MiB of commands; openraft 0.9 gives an append RPC one
        // heartbeat interval to answer, and 16 MiB appends (tried) missed
        // it under load and were sent again and again.
        max_payload_entries: if wal { 4 } else { 300 },
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(|e| {
        Error::Config(format!("raft settings: {e}"))
    })?))
}

impl Replica {
    /// Opens the data directory and starts every group. Must run inside a
    /// tokio `LocalSet`.
    pub async fn start(cfg: ReplicaConfig) -> Result<Rc<Replica>> {
        if cfg.groups == 0 || cfg.groups > crate::limits::GROUPS_MAX {
            return Err(Error::Config(format!(
                "groups must be 1..={}, got {}",
                crate::limits::GROUPS_MAX,
                cfg.groups
            )));
        }
        if cfg.id == 0 {
            return Err(Error::Config(
                "replica ids start at 1 (0 means \"unknown\" on the wire)".into(),
            ));
        }
        if cfg.wal_partitions > crate::limits::WAL_PARTITIONS_MAX {
            return Err(Error::Config(format!(
                "WAL partitions must be 0..={}, got {}",
                crate::limits::WAL_PARTITIONS_MAX,
                cfg.wal_partitions
            )));
        }
        if cfg.raft.log_bytes_snapshot_at == 0 {
            return Err(Error::Config(
                "raft.log_bytes_snapshot_at must be above 0 bytes".into(),
            ));
        }
        check_identity(&cfg.data_dir, cfg.id, cfg.groups, cfg.wal_partitions)?;
        let (log, report) = SharedLog::open(&cfg.data_dir.join("log"), cfg.groups).await?;
        let (wal_log, wal_report) =
            SharedLog::open(&cfg.data_dir.join("wal-log"), cfg.wal_partitions.max(1)).await?;
        tracing::info!(
            segments = wal_report.segments,
            records = wal_report.records,
            torn = wal_report.torn_tail_bytes,
            "WAL log replayed"
        );
        tracing::info!(
            segments = report.segments,
            records = report.records,
            torn = report.torn_tail_bytes,
            "log replayed"
        );
        let config = raft_config(&cfg.raft, false)?;
        let wal_config = raft_config(&cfg.raft, true)?;
        let peers = Rc::new(Peers::new(cfg.peer_security.clone()));
        let members: BTreeMap<NodeId, BasicNode> = cfg
            .peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        if !cfg.join && !members.contains_key(&cfg.id) {
            return Err(Error::Config(format!(
                "--peers must list this replica ({}) too, or start it with --join to be added later",
                cfg.id
            )));
        }
        let total = cfg.groups + cfg.wal_partitions;
        let mut groups = Vec::with_capacity(total as usize);
        for g in 0..total {
            let is_wal = g >= cfg.groups;
            let (glog, local, dir, conf) = if is_wal {
                let p = g - cfg.groups;
                (&wal_log, p, format!("wal-{p}"), &wal_config)
            } else {
                (&log, g, g.to_string(), &config)
            };
            let sm = GroupSm::open(&cfg.data_dir.join("groups").join(dir))?;
            let fresh = glog.group_is_empty(local) && !sm.has_snapshot();
            let raft = Raft::new(
                cfg.id,
                conf.clone(),
                GroupNetworkFactory {
                    peers: peers.clone(),
                    group: g,
                },
                glog.group(local),
                SmStore(sm.clone()),
            )
            .await
            .map_err(|e| Error::Raft(format!("group {g} failed to start: {e}")))?;
            if fresh && !cfg.join {
                // Every initial replica proposes the same first membership
                // (log id 0), so it is safe that all of them do.
                if let Err(e) = raft.initialize(members.clone()).await {
                    tracing::debug!(group = g, error = %e, "initialize skipped");
                }
            }
            groups.push(Rc::new(Group {
                id: g,
                raft,
                sm,
                last_leader_contact: Cell::new(None),
                reads: RefCell::new(ReadBarrier::default()),
                proposals: RefCell::new(Proposals::default()),
                startup_last_index: glog.last_index(local),
                caught_up: Cell::new(false),
                log_bound_asked: Cell::new(None),
                settle_proposed: RefCell::new(HashMap::new()),
            }));
        }
        let rep = Rc::new(Replica {
            id: cfg.id,
            advertise: cfg.advertise,
            groups,
            meta_groups: cfg.groups,
            wal_partitions: cfg.wal_partitions,
            peers,
            log,
            wal_log,
            started: Instant::now(),
        });
        tokio::task::spawn_local(bound_logs(
            Rc::downgrade(&rep),
            cfg.raft.log_bytes_snapshot_at,
            cfg.raft.entries_kept_after_snapshot,
            cfg.raft.entries_kept_after_snapshot / WAL_GROUP_DIVISOR,
        ));
        Ok(rep)
    }

    /// Encoded bytes of group `g`'s log entries held in memory.
    pub fn log_bytes(&self, g: u32) -> u64 {
        if g < self.meta_groups {
            self.log.live_bytes(g)
        } else {
            self.wal_log.live_bytes(g - self.meta_groups)
        }
    }

    /// The number of metadata groups (keys hash over these).
    pub fn group_count(&self) -> u32 {
        self.meta_groups
    }

    /// The raft group of WAL partition `p`, if it exists.
    pub fn wal_group(&self, p: u32) -> Option<&Rc<Group>> {
        if p < self.wal_partitions {
            self.groups.get((self.meta_groups + p) as usize)
        } else {
            None
        }
    }

    /// Confirms this replica leads `group` with a quorum and that its state
    /// machine has applied everything committed before the call.
    pub async fn read_barrier(&self, group: &Rc<Group>) -> std::result::Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = group.reads.borrow_mut();
            if b.waiting.len() >= READS_WAITING_MAX {
                return Err(format!(
                    "{READS_WAITING_MAX} reads of group {} are already waiting for a leadership check; retry shortly",
                    group.id
                ));
            }
            b.waiting.push(tx);
            !std::mem::replace(&mut b.running, true)
        };
        if start {
            let g = group.clone();
            tokio::task::spawn_local(async move {
                loop {
                    let batch = {
                        let mut b = g.reads.borrow_mut();
                        if b.waiting.is_empty() {
                            b.running = false;
                            break;
                        }
                        std::mem::take(&mut b.waiting)
                    };
                    let mut r = g
                        .raft
                        .ensure_linearizable()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    if r.is_ok() && !g.caught_up.get() {
                        r = g
                            .raft
                            .wait(Some(RESTART_CATCH_UP_WAIT))
                            .applied_index_at_least(
                                Some(g.startup_last_index),
                                "entries from before the restart",
                            )
                            .await
                            .map(|_| g.caught_up.set(true))
                            .map_err(|e| {
                                format!("still applying the log from before the restart: {e}")
                            });
                    }
                    for w in batch {
                        let _ = w.send(r.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| "the read was dropped while shutting down".to_string())?
    }

    /// Stops every group and waits for the log to be durable.
    pub async fn shutdown(&self) {
        for g in &self.groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = g.id, error = %e, "group did not stop cleanly");
            }
        }
        for log in [&self.log, &self.wal_log] {
            if let Err(e) = log.sync().await {
                tracing::error!(error = %e, "final log sync failed");
            }
        }
    }
}

/// What [`bound_logs`] does with one group's log this check: the index to
/// purge up to, and whether to ask for a snapshot. Under `bound` bytes: up
/// to `keep` entries before the snapshot, no snapshot asked. Over it: up to
/// the newest snapshot at *every* check — also one built since the last
/// request (waiting for the next request left the log up to two gaps'
/// worth of appends long) — and a snapshot asked when none was lately and
/// the snapshot is behind what was applied.
fn purge_plan(
    bytes: u64,
    bound: u64,
    applied: u64,
    snapshot: u64,
    keep: u64,
    asked_lately: bool,
) -> (u64, bool) {
    if bytes > bound {
        (snapshot, !asked_lately && snapshot < applied)
    } else {
        (snapshot.saturating_sub(keep), false)
    }
}

/// Purges every group's log, the one place that does (openraft's own
/// purge after a snapshot is switched off in [`raft_config`]): normally up
/// to `keep` entries before its snapshot (`entries_kept_after_snapshot`,
/// a tenth of it for WAL groups); past `at` bytes in memory, the group is
/// asked to snapshot (when its snapshot is behind what it applied; at most
/// once per [`LOG_BOUND_TRIGGER_GAP`]) and, at every check while over, is
/// purged up to its newest snapshot — a follower that far behind catches
/// up from the snapshot. Ends when the replica is dropped.
///
/// Why one place: openraft asserts that the purge point it schedules never
/// moves back. Its own policy after a new snapshot (`snapshot - keep`)
/// could fall below a purge up to an earlier snapshot asked for here, and
/// a debug build then panicked the group (seen in
/// `wal_partition_logs_stay_under_their_byte_bound`).
async fn bound_logs(rep: std::rc::Weak<Replica>, at: u64, keep_meta: u64, keep_wal: u64) {
    loop {
        tokio::time::sleep(LOG_BOUND_CHECK_EVERY).await;
        let Some(rep) = rep.upgrade() else { return };
        for g in &rep.groups {
            let m = g.raft.metrics().borrow().clone();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let snapshot = m.snapshot.map_or(0, |l| l.index);
            let purged = m.purged.map_or(0, |l| l.index);
            let keep = if g.id < rep.meta_groups {
                keep_meta
            } else {
                keep_wal
            };
            let asked_lately = g
                .log_bound_asked
                .get()
                .is_some_and(|t| t.elapsed() < LOG_BOUND_TRIGGER_GAP);
            let bytes = rep.log_bytes(g.id);
            let (upto, ask) = purge_plan(bytes, at, applied, snapshot, keep, asked_lately);
            if ask {
                g.log_bound_asked.set(Some(Instant::now()));
                tracing::debug!(
                    group = g.id,
                    bytes,
                    applied,
                    snapshot,
                    purged,
                    "log over its byte bound"
                );
                if let Err(e) = g.raft.trigger().snapshot().await {
                    tracing::warn!(group = g.id, error = %e, "could not ask for a snapshot");
                }
            }
            // An index at or below what is already scheduled is ignored by
            // openraft, so a stale `purged` here does no harm.
            if purged < upto {
                if let Err(e) = g.raft.trigger().purge_log(upto).await {
                    tracing::warn!(group = g.id, error = %e, "could not ask for a log purge");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::purge_plan;
    use proptest::prelude::*;

    proptest! {
        /// A purge never passes the snapshot (entries not in a snapshot are
        /// never dropped); over the bound the log is purged up to the
        /// snapshot at every check, whether or not a snapshot was asked for
        /// lately; under it, `keep` entries stay behind the snapshot; a
        /// snapshot is asked for only over the bound, not twice within the
        /// gap, and only when there is something new to put in it.
        #[test]
        fn purges_stop_at_the_snapshot_and_reach_it_when_over_the_bound(
            bytes in 0u64..1 << 30,
            bound in 1u64..1 << 30,
            snapshot in 0u64..1_000_000,
            ahead in 0u64..1_000,
            keep in 0u64..10_000,
            asked_lately: bool,
        ) {
            let applied = snapshot + ahead;
            let (upto, ask) = purge_plan(bytes, bound, applied, snapshot, keep, asked_lately);
            prop_assert!(upto <= snapshot);
            if bytes > bound {
                prop_assert_eq!(upto, snapshot);
                prop_assert_eq!(ask, !asked_lately && ahead > 0);
            } else {
                prop_assert_eq!(upto, snapshot.saturating_sub(keep));
                prop_assert!(!ask);
            }
        }
    }
}
