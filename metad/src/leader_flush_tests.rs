//! The leader's own log flush and the commit quorum, on three in-process
//! replicas of one group over an in-memory network, each log on a simulated
//! disk whose syncs can be stalled.
//!
//! openraft 0.9 is patched (vendor/README.md) so that a leader replicates
//! its entries while its own flush runs. These tests pin what the patch must
//! keep and what it buys:
//! - an entry the leader has not flushed does not count for the leader: with
//!   one follower unreachable and the leader's disk stalled, a write is never
//!   acknowledged (one durable copy of three is not a quorum);
//! - an entry both followers have flushed is committed even while the
//!   leader's flush has not completed (unpatched, the leader did not even
//!   send it until its own flush completed);
//! - a leader that crashed after its followers acknowledged entries its own
//!   log then lost does not lead again in the same term (it would reuse
//!   those entries' log ids for others); every acknowledged write survives
//!   on every replica;
//! - a commit reaches the followers with the next entries, not by a
//!   heartbeat of its own (the heartbeat deferral), and the last commit still
//!   reaches them within a bounded wait when no entries follow.

use crate::log_store::SharedLog;
use crate::runtime::run_local;
use crate::state_machine::{GroupSm, SmStore};
use crate::types::{Command, KeyWrite, NodeId, Op, Proposal, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tessera_engine::device::{FaultPlan, FaultyDevice, SimFs};

/// Segment size of the simulated logs.
const ROTATE_BYTES: u64 = 1 << 20;
/// Longest wait for an election or a write that must complete.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// How long a write that must not complete is watched.
const MUST_NOT_ANSWER_FOR: Duration = Duration::from_millis(1500);
/// The tests' heartbeat interval (elections take 6 to 12 of them).
const HEARTBEAT_MILLIS: u64 = 50;

/// Which replicas exist and which are cut off.
#[derive(Default)]
struct Routes {
    rafts: BTreeMap<NodeId, Raft>,
    down: BTreeSet<NodeId>,
    /// AppendEntries requests sent without entries (heartbeats).
    empty_appends: u64,
}

#[derive(Clone)]
struct MemNetwork {
    routes: Rc<RefCell<Routes>>,
    source: NodeId,
    target: NodeId,
}

impl MemNetwork {
    /// The target's handle, unless the test cut either end off.
    fn target(&self) -> Option<Raft> {
        let r = self.routes.borrow();
        // Cut off both ways: a cut replica's own vote requests would
        // otherwise depose the leader.
        if r.down.contains(&self.target) || r.down.contains(&self.source) {
            return None;
        }
        r.rafts.get(&self.target).cloned()
    }
}

fn cut_off<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "cut off by the test",
    )))
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl MemNetwork {
    /// Runs `rpc` on the target's handle: unreachable when cut off, a
    /// remote error when the target answers with one.
    async fn call<R, E, F, Fut>(&self, rpc: F) -> Result<R, RpcErr<E>>
    where
        E: std::error::Error,
        F: FnOnce(Raft) -> Fut,
        Fut: std::future::Future<Output = Result<R, RaftError<NodeId, E>>>,
    {
        let raft = self.target().ok_or_else(cut_off)?;
        rpc(raft)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for MemNetwork {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        if req.entries.is_empty() {
            self.routes.borrow_mut().empty_appends += 1;
        }
        self.call(|raft| async move { raft.append_entries(req).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(|raft| async move { raft.install_snapshot(req).await })
            .await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(|raft| async move { raft.vote(req).await }).await
    }
}

struct MemNetworkFactory {
    routes: Rc<RefCell<Routes>>,
    source: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for MemNetworkFactory {
    type Network = MemNetwork;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> MemNetwork {
        MemNetwork {
            routes: self.routes.clone(),
            source: self.source,
            target,
        }
    }
}

struct Cluster {
    routes: Rc<RefCell<Routes>>,
    plans: BTreeMap<NodeId, Arc<FaultPlan>>,
    disks: BTreeMap<NodeId, SimFs>,
    sms: BTreeMap<NodeId, Rc<GroupSm>>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    config: Arc<openraft::Config>,
}

impl Cluster {
    /// Starts three replicas with heartbeats every `heartbeat_ms` (election
    /// timeouts 6 to 12 of them).
    async fn start_with_heartbeat(heartbeat_ms: u64) -> Cluster {
        let config = Arc::new(
            openraft::Config {
                heartbeat_interval: heartbeat_ms,
                election_timeout_min: 6 * heartbeat_ms,
                election_timeout_max: 12 * heartbeat_ms,
                ..Default::default()
            }
            .validate()
            .expect("a valid raft config"),
        );
        let mut c = Cluster {
            routes: Rc::new(RefCell::new(Routes::default())),
            plans: BTreeMap::new(),
            disks: BTreeMap::new(),
            sms: BTreeMap::new(),
            dirs: BTreeMap::new(),
            config,
        };
        for id in 1..=3u64 {
            c.disks.insert(id, SimFs::new());
            c.dirs
                .insert(id, tempfile::tempdir().expect("a temporary directory"));
            c.open(id).await;
        }
        let members: BTreeMap<NodeId, BasicNode> =
            (1..=3u64).map(|id| (id, BasicNode::default())).collect();
        c.raft(1)
            .initialize(members)
            .await
            .expect("the group initializes");
        c
    }

    /// Opens replica `id` on its disk and state-machine directory, with a
    /// fresh fault plan.
    async fn open(&mut self, id: NodeId) {
        let (fs, plan) = (self.disks[&id].clone(), FaultPlan::new());
        self.plans.insert(id, plan.clone());
        let (log, _) = SharedLog::open_on(
            Path::new("sim"),
            move || async move { Ok(FaultyDevice::new(fs.device(0), plan)) },
            1,
            ROTATE_BYTES,
        )
        .await
        .expect("a simulated log opens");
        let sm = GroupSm::open(self.dirs[&id].path()).expect("a state machine opens");
        self.sms.insert(id, sm.clone());
        let raft = Raft::new(
            id,
            self.config.clone(),
            MemNetworkFactory {
                routes: self.routes.clone(),
                source: id,
            },
            log.group(0),
            SmStore(sm),
        )
        .await
        .expect("raft starts");
        self.routes.borrow_mut().rafts.insert(id, raft);
    }

    /// Power loss on replica `id`: its raft stops, and of its log only what
    /// a completed sync made durable survives.
    async fn crash(&mut self, id: NodeId) {
        let raft = self
            .routes
            .borrow_mut()
            .rafts
            .remove(&id)
            .expect("a replica");
        let _ = raft.shutdown().await;
        // Every write not yet synced is lost: `SimFs::crash` draws its keep
        // ratio first, from [0, 0.5, 1]; take a seed whose first draw is 0.
        let mut rng = (0u64..)
            .map(rand::rngs::StdRng::seed_from_u64)
            .find(|r| r.clone().gen_range(0..3) == 0)
            .expect("a seed");
        self.disks[&id].crash(&mut rng);
    }

    fn raft(&self, id: NodeId) -> Raft {
        self.routes.borrow().rafts[&id].clone()
    }

    async fn leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            let raft = self.raft(1);
            if let Some(l) = raft.metrics().borrow().current_leader {
                let lr = self.raft(l);
                let m = lr.metrics().borrow().clone();
                if m.current_leader == Some(l) && m.last_applied.is_some() {
                    return l;
                }
            }
            assert!(tokio::time::Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the three replicas, waits for a leader and makes one write
    /// through it with every replica up; returns the cluster and the
    /// leader's id.
    async fn start_with_one_write() -> (Cluster, NodeId) {
        Cluster::start_with_one_write_heartbeat(HEARTBEAT_MILLIS).await
    }

    async fn start_with_one_write_heartbeat(heartbeat_ms: u64) -> (Cluster, NodeId) {
        let c = Cluster::start_with_heartbeat(heartbeat_ms).await;
        let leader = c.leader().await;
        c.raft(leader)
            .client_write(put(1))
            .await
            .expect("a write with every replica up");
        (c, leader)
    }

    fn set_down(&self, id: NodeId, down: bool) {
        let mut r = self.routes.borrow_mut();
        if down {
            r.down.insert(id);
        } else {
            r.down.remove(&id);
        }
    }
}

fn put(seq: u64) -> Proposal {
    Proposal(Arc::from(vec![Command {
        client: 7,
        seq,
        now_ms: 0,
        op: Op::Write(vec![KeyWrite {
            key: format!("k{seq}").into_bytes(),
            expected: None,
            value: Some(vec![seq as u8; 64]),
        }]),
    }]))
}

#[test]
fn a_leaders_unflushed_entry_does_not_count_toward_commit() {
    run_local(async {
        let (c, leader) = Cluster::start_with_one_write().await;
        let raft = c.raft(leader);

        let cut = (1..=3u64).find(|&id| id != leader).expect("a follower");
        c.set_down(cut, true);
        c.plans[&leader].stall_syncs(true);
        let writer = raft.clone();
        let write = tokio::task::spawn_local(async move { writer.client_write(put(2)).await });
        tokio::time::sleep(MUST_NOT_ANSWER_FOR).await;
        assert!(
            !write.is_finished(),
            "a write was acknowledged while only one of three replicas had it durably"
        );

        c.plans[&leader].stall_syncs(false);
        tokio::time::timeout(WAIT_LIMIT, write)
            .await
            .expect("the write completes once the leader's flush does")
            .expect("the writer task")
            .expect("the write succeeds");
        c.set_down(cut, false);
    });
}

#[test]
fn followers_commit_an_entry_while_the_leaders_flush_is_stalled() {
    run_local(async {
        let (c, leader) = Cluster::start_with_one_write().await;
        let raft = c.raft(leader);

        c.plans[&leader].stall_syncs(true);
        let answered = tokio::time::timeout(WAIT_LIMIT, raft.client_write(put(2))).await;
        c.plans[&leader].stall_syncs(false);
        answered
            .expect("two durable followers commit an entry without the leader's flush")
            .expect("the write succeeds");
    });
}

/// A leader that crashed with entries its followers hold but its own log
/// lost must not lead again in the same term: it would append different
/// entries under the same log ids, and the followers would keep theirs.
#[test]
fn a_crashed_leader_does_not_resume_its_term_over_entries_it_lost() {
    run_local(async {
        let (mut c, leader) = Cluster::start_with_one_write().await;

        // Acknowledged by the two followers while the leader's flush stalls.
        c.plans[&leader].stall_syncs(true);
        for seq in 2..=3 {
            tokio::time::timeout(WAIT_LIMIT, c.raft(leader).client_write(put(seq)))
                .await
                .expect("two durable followers commit")
                .expect("the write succeeds");
        }
        c.crash(leader).await;
        c.open(leader).await;

        // Writes go on through whoever leads now; then every replica must
        // hold the acknowledged writes.
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        let mut seq = 4;
        while seq <= 6 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no write after the restart"
            );
            let l = c.leader().await;
            if c.raft(l).client_write(put(seq)).await.is_ok() {
                seq += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let l = c.leader().await;
        let last = c.raft(l).metrics().borrow().last_log_index;
        for id in 1..=3u64 {
            let mut metrics = c.raft(id).metrics();
            tokio::time::timeout(
                WAIT_LIMIT,
                metrics.wait_for(|m| m.last_applied.map(|x| x.index) >= last),
            )
            .await
            .expect("every replica applies the log")
            .expect("metrics");
            for seq in 1..=6u64 {
                let key = format!("k{seq}").into_bytes();
                assert!(
                    c.sms[&id].with(|d| d.kv.contains_key(&key)),
                    "replica {id} lost acknowledged write k{seq} (leader before the crash: {leader})"
                );
            }
        }
    });
}

/// A commit is told to the followers by the next entries when they follow
/// at once (vendor/README.md, the heartbeat deferral), not by a heartbeat
/// of its own per follower: over sequential writes, the heartbeats sent
/// are the timer's and at most a few more. Unpatched, every commit sent
/// one heartbeat to each follower (about two per write here).
#[test]
fn commits_ride_on_the_next_entries() {
    const WRITES: u64 = 40;
    run_local(async {
        let (c, leader) = Cluster::start_with_one_write().await;
        let raft = c.raft(leader);
        let start = tokio::time::Instant::now();
        c.routes.borrow_mut().empty_appends = 0;
        for seq in 2..2 + WRITES {
            tokio::time::timeout(WAIT_LIMIT, raft.client_write(put(seq)))
                .await
                .expect("a write with every replica up completes")
                .expect("the write succeeds");
        }
        let empty = c.routes.borrow().empty_appends;
        // The timer's heartbeats to two followers over the run, and one
        // deferred heartbeat per follower that may fire at the end.
        let timer = 2 * (start.elapsed().as_millis() as u64 / HEARTBEAT_MILLIS + 2);
        assert!(
            empty <= timer + WRITES / 4,
            "{empty} heartbeats over {WRITES} sequential writes (timer's: about {timer}): \
             commits are not riding on the next entries"
        );
    });
}

/// The deferral is bounded: after a last write, the followers learn its
/// commit (and apply it) long before the next timer heartbeat.
#[test]
fn followers_learn_the_last_commit_without_more_writes() {
    /// Heartbeats far apart, so that only the deferred one can tell them.
    const SLOW_HEARTBEAT_MILLIS: u64 = 2_000;
    /// Well under a heartbeat interval, well over the deferral (1 ms).
    const LEARN_WITHIN: Duration = Duration::from_millis(500);
    run_local(async {
        let (c, leader) = Cluster::start_with_one_write_heartbeat(SLOW_HEARTBEAT_MILLIS).await;
        let raft = c.raft(leader);
        let written = raft
            .client_write(put(2))
            .await
            .expect("a write with every replica up")
            .log_id;
        let deadline = tokio::time::Instant::now() + LEARN_WITHIN;
        for id in (1..=3u64).filter(|&id| id != leader) {
            let mut metrics = c.raft(id).metrics();
            loop {
                if metrics.borrow().last_applied >= Some(written) {
                    break;
                }
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                assert!(
                    tokio::time::timeout(wait, metrics.changed()).await.is_ok(),
                    "follower {id} had not applied the last write {LEARN_WITHIN:?} after it was acknowledged"
                );
            }
        }
    });
}
