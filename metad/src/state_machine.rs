//! One group's state machine: keys with versions, leases, the node
//! registry, and the results of recent writes (so a retried write applies
//! once). Also its snapshots, on disk at `<data>/groups/<g>/snapshot.bin`.
//!
//! Invariants:
//! - `apply` is deterministic: it reads no clock but the command's
//!   `now_ms`, folded into a state-machine clock that never goes back.
//! - A key's version is the log index that last wrote it, so versions grow
//!   and a compare-and-set names exactly one state.
//! - A lease is held by at most one holder at any state-machine time, and
//!   every new grant of a name has a larger epoch than the last.
//! - The snapshot file is replaced atomically (write, fsync, rename, fsync
//!   directory) and carries a crc32c; a damaged one refuses to load.
//! - A client's request applies at most once: a retry finds its result,
//!   and once the client has settled a seq (`Op::Settle`, its watermark:
//!   every seq below has its answer or was given up) the result is
//!   forgotten and a late copy is refused, never applied. So the results
//!   held are the clients' unsettled ones (plus, bounded by
//!   `DEDUP_ENTRIES_MAX`, those of clients that never settle), and
//!   snapshots stay small however fast requests come.

use crate::error::{Error, Result};
use crate::limits::{
    CLIENT_SESSIONS_MAX, DEDUP_ENTRIES_MAX, WAL_PARTITION_ENTRIES_MAX,
    WAL_PARTITION_UNFINISHED_BYTES_MAX,
};
use crate::types::{
    Command, CommandResult, Entry, KeyWrite, LeaseState, LogId, Op, SharedBytes, SnapshotMeta,
    StorageError, StoredMembership, TypeConfig, WriteOutcome, VERSIONS_PER_ENTRY,
};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const SNAPSHOT_MAGIC: &[u8; 8] = b"TSRSNAP1";
const SNAPSHOT_HEADER_BYTES: usize = 8 + 4 + 8;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub version: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub addr: String,
    pub capacity: u64,
    pub used: u64,
    pub zone: String,
    pub ttl_ms: u32,
    /// State-machine time of the last register or heartbeat.
    pub last_heartbeat_ms: u64,
    pub registered_version: u64,
}

/// Results of recent requests by (client, seq).
///
/// Invariants: every key of `results` is in `order` (oldest first; `order`
/// may also hold ids already forgotten, at most about as many again as
/// `results` plus [`DEDUP_ORDER_SLACK`]); `results.len()` is at most
/// [`DEDUP_ENTRIES_MAX`]. (A `BTreeMap` so that one client's seqs below a
/// watermark are one range; bincode codes it as it coded the `HashMap`
/// before, so older snapshots still decode.)
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct Dedup {
    results: BTreeMap<(u64, u64), CommandResult>,
    order: VecDeque<(u64, u64)>,
}

/// Forgotten ids `order` may carry beyond twice the results before it is
/// compacted (amortized: one pass per this many forgotten results).
const DEDUP_ORDER_SLACK: usize = 1024;

impl Dedup {
    fn remember(&mut self, rid: (u64, u64), result: &CommandResult) {
        self.results.insert(rid, result.clone());
        self.order.push_back(rid);
        while self.results.len() > DEDUP_ENTRIES_MAX {
            match self.order.pop_front() {
                Some(old) => {
                    self.results.remove(&old);
                }
                None => break,
            }
        }
        self.compact();
    }

    /// Forgets `client`'s results for seqs below `below`.
    fn forget_below(&mut self, client: u64, below: u64) {
        let gone: Vec<(u64, u64)> = self
            .results
            .range((client, 0)..(client, below))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.results.remove(&k);
        }
        self.compact();
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.results.len() + DEDUP_ORDER_SLACK {
            let results = &self.results;
            self.order.retain(|id| results.contains_key(id));
        }
    }
}

/// What a group remembers of a client that settles its requests.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientSession {
    /// Every seq below this has been settled by the client.
    pub settled_below: u64,
    /// State-machine time of its last `Settle`.
    pub last_ms: u64,
}

/// One WAL entry as the state machine holds it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub gateway: String,
    #[serde(with = "crate::types::shared_bytes")]
    pub data: SharedBytes,
    pub is_intent: bool,
    pub finished: bool,
}

/// A WAL partition's state (empty in metadata groups).
///
/// Invariants: offsets are assigned from 1 without gaps; `entries` holds
/// every unfinished offset (a finished entry is dropped at once) and at
/// most [`WAL_PARTITION_ENTRIES_MAX`]; `truncated_before` is the lowest
/// unfinished offset (`next_offset` when there is none), so every offset
/// below it is finished; `unfinished_bytes` is the data of the entries.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WalState {
    pub entries: BTreeMap<u64, WalRecord>,
    pub next_offset: u64,
    pub truncated_before: u64,
    pub unfinished_bytes: u64,
    pub positions: BTreeMap<String, u64>,
}

impl Default for WalState {
    fn default() -> Self {
        WalState {
            entries: BTreeMap::new(),
            next_offset: 1,
            truncated_before: 1,
            unfinished_bytes: 0,
            positions: BTreeMap::new(),
        }
    }
}

impl WalState {
    fn append(&mut self, gateway: &str, data: &SharedBytes, is_intent: bool) -> CommandResult {
        if self.entries.len() >= WAL_PARTITION_ENTRIES_MAX {
            let oldest = self.entries.keys().next().copied().unwrap_or(0);
            return CommandResult::WalFull(format!(
                "the partition holds {} unfinished entries (limit {WAL_PARTITION_ENTRIES_MAX}), the \
                 oldest at offset {oldest}: finish or claim them (the healer claims the entries of a \
                 gateway that is gone), or retry later",
                self.entries.len()
            ));
        }
        if self.unfinished_bytes + data.len() as u64 > WAL_PARTITION_UNFINISHED_BYTES_MAX {
            return CommandResult::WalFull(format!(
                "the partition holds {} unfinished bytes (limit {WAL_PARTITION_UNFINISHED_BYTES_MAX}); finish \
                 entries or retry later",
                self.unfinished_bytes
            ));
        }
        let offset = self.next_offset;
        self.next_offset += 1;
        self.unfinished_bytes += data.len() as u64;
        self.entries.insert(
            offset,
            WalRecord {
                gateway: gateway.to_string(),
                // The entry's own bytes, not a copy.
                data: data.clone(),
                is_intent,
                finished: false,
            },
        );
        CommandResult::WalAppended { offset }
    }

    fn finish(&mut self, offsets: &[u64]) -> CommandResult {
        for o in offsets {
            // Nobody replays a finished entry, so it is not kept: behind
            // one stuck entry (a gateway that died, a write the healer has
            // yet to finish) finished ones would otherwise pile up in
            // memory and in every snapshot.
            if let Some(r) = self.entries.remove(o) {
                if !r.finished {
                    self.unfinished_bytes -= r.data.len() as u64;
                }
            }
        }
        // Records an earlier version kept finished behind an unfinished
        // one leave once they lead.
        while let Some(e) = self.entries.first_entry() {
            if !e.get().finished {
                break;
            }
            e.remove();
        }
        self.truncated_before = self
            .entries
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_offset);
        CommandResult::WalFinished {
            truncated_before: self.truncated_before,
        }
    }

    fn claim(&mut self, from: &str, to: &str) -> CommandResult {
        let mut count = 0;
        for r in self.entries.values_mut() {
            if !r.finished && r.gateway == from {
                r.gateway = to.to_string();
                count += 1;
            }
        }
        CommandResult::WalClaimed { count }
    }
}

/// Everything a group's state machine holds (the snapshot's contents).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
    pub kv: BTreeMap<Vec<u8>, Versioned>,
    pub leases: BTreeMap<Vec<u8>, LeaseState>,
    pub nodes: BTreeMap<String, NodeState>,
    pub clock_ms: u64,
    dedup: Dedup,
    #[serde(default)]
    pub wal: WalState,
    /// Clients' settled watermarks, at most [`CLIENT_SESSIONS_MAX`]. Last
    /// field: a snapshot written before it has none ([`decode_sm_data`]).
    pub sessions: BTreeMap<u64, ClientSession>,
}

/// `SmData` as snapshots before client sessions coded it (bincode has no
/// field names, so a missing last field is a short read, not a default).
#[derive(Deserialize)]
struct SmDataBeforeSessions {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    kv: BTreeMap<Vec<u8>, Versioned>,
    leases: BTreeMap<Vec<u8>, LeaseState>,
    nodes: BTreeMap<String, NodeState>,
    clock_ms: u64,
    dedup: Dedup,
    wal: WalState,
}

/// Decodes a snapshot's state: the current layout, or the one before
/// client sessions.
pub(crate) fn decode_sm_data(raw: &[u8]) -> std::result::Result<SmData, bincode::Error> {
    match bincode::deserialize::<SmData>(raw) {
        Ok(d) => Ok(d),
        Err(now) => match bincode::deserialize::<SmDataBeforeSessions>(raw) {
            Ok(o) => Ok(SmData {
                last_applied: o.last_applied,
                last_membership: o.last_membership,
                kv: o.kv,
                leases: o.leases,
                nodes: o.nodes,
                clock_ms: o.clock_ms,
                dedup: o.dedup,
                wal: o.wal,
                sessions: BTreeMap::new(),
            }),
            Err(_) => Err(now),
        },
    }
}

impl SmData {
    fn version_of(&self, key: &[u8]) -> u64 {
        self.kv.get(key).map_or(0, |v| v.version)
    }

    fn apply_writes(&mut self, index: u64, ops: &[KeyWrite]) -> CommandResult {
        for (i, op) in ops.iter().enumerate() {
            if let Some(expected) = op.expected {
                let current = self.version_of(&op.key);
                if current != expected {
                    return CommandResult::Conflict { index: i, current };
                }
            }
        }
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            let previous_version = self.version_of(&op.key);
            match &op.value {
                Some(v) => {
                    self.kv.insert(
                        op.key.clone(),
                        Versioned {
                            value: v.clone(),
                            version: index,
                        },
                    );
                    out.push(WriteOutcome {
                        version: index,
                        previous_version,
                    });
                }
                None => {
                    self.kv.remove(&op.key);
                    out.push(WriteOutcome {
                        version: 0,
                        previous_version,
                    });
                }
            }
        }
        CommandResult::Written(out)
    }

    fn apply_op(&mut self, index: u64, op: &Op) -> CommandResult {
        let now = self.clock_ms;
        match op {
            Op::Write(ops) => self.apply_writes(index, ops),
            // Handled by `apply_command` before the results are looked up.
            Op::Settle { .. } => CommandResult::Done,
            Op::AcquireLease {
                name,
                holder,
                ttl_ms,
            } => {
                let cur = self.leases.get(name).cloned();
                match cur {
                    Some(l)
                        if !l.holder.is_empty() && l.expires_at_ms > now && &l.holder != holder =>
                    {
                        CommandResult::Lease {
                            ok: false,
                            lease: l,
                        }
                    }
                    Some(l) if !l.holder.is_empty() && l.expires_at_ms > now => {
                        // The holder asking again: a renewal, same epoch.
                        let lease = LeaseState {
                            ttl_ms: *ttl_ms,
                            expires_at_ms: now + *ttl_ms as u64,
                            ..l
                        };
                        self.leases.insert(name.clone(), lease.clone());
                        CommandResult::Lease { ok: true, lease }
                    }
                    other => {
                        let epoch = other.map_or(0, |l| l.epoch) + 1;
                        let lease = LeaseState {
                            holder: holder.clone(),
                            epoch,
                            ttl_ms: *ttl_ms,
                            expires_at_ms: now + *ttl_ms as u64,
                        };
                        self.leases.insert(name.clone(), lease.clone());
                        CommandResult::Lease { ok: true, lease }
                    }
                }
            }
            Op::RenewLease {
                name,
                holder,
                epoch,
                ttl_ms,
            } => match self.leases.get(name).cloned() {
                Some(l) if &l.holder == holder && l.epoch == *epoch && l.expires_at_ms > now => {
                    let lease = LeaseState {
                        ttl_ms: *ttl_ms,
                        expires_at_ms: now + *ttl_ms as u64,
                        ..l
                    };
                    self.leases.insert(name.clone(), lease.clone());
                    CommandResult::Lease { ok: true, lease }
                }
                Some(l) => CommandResult::Lease {
                    ok: false,
                    lease: l,
                },
                None => CommandResult::Lease {
                    ok: false,
                    lease: LeaseState {
                        holder: Vec::new(),
                        epoch: 0,
                        ttl_ms: 0,
                        expires_at_ms: 0,
                    },
                },
            },
            Op::ReleaseLease {
                name,
                holder,
                epoch,
            } => {
                if let Some(l) = self.leases.get_mut(name) {
                    if &l.holder == holder && l.epoch == *epoch {
                        l.holder.clear();
                        l.expires_at_ms = now;
                    }
                }
                CommandResult::Done
            }
            Op::RegisterNode {
                node_id,
                addr,
                capacity,
                zone,
                ttl_ms,
            } => {
                let used = self.nodes.get(node_id).map_or(0, |n| n.used);
                self.nodes.insert(
                    node_id.clone(),
                    NodeState {
                        addr: addr.clone(),
                        capacity: *capacity,
                        used,
                        zone: zone.clone(),
                        ttl_ms: *ttl_ms,
                        last_heartbeat_ms: now,
                        registered_version: index,
                    },
                );
                CommandResult::Done
            }
            Op::WalAppend {
                gateway,
                data,
                is_intent,
            } => self.wal.append(gateway, data, *is_intent),
            Op::WalFinish { offsets } => self.wal.finish(offsets),
            Op::WalClaim { from, to } => self.wal.claim(from, to),
            Op::WalSetPosition { gateway, offset } => {
                self.wal.positions.insert(gateway.clone(), *offset);
                CommandResult::Done
            }
            Op::Heartbeat {
                node_id,
                used,
                capacity,
            } => match self.nodes.get_mut(node_id) {
                Some(n) => {
                    n.used = *used;
                    n.capacity = *capacity;
                    n.last_heartbeat_ms = now;
                    CommandResult::Done
                }
                None => CommandResult::Refused(format!(
                    "node {node_id:?} is not registered: call registerNode first (or again, if the \
                     registry was reset)"
                )),
            },
        }
    }

    /// Applies one command; a key it writes gets `version`.
    pub fn apply_command(&mut self, version: u64, cmd: &Command) -> CommandResult {
        let index = version;
        self.clock_ms = self.clock_ms.max(cmd.now_ms);
        if let Op::Settle { below } = cmd.op {
            return self.settle(cmd.client, below);
        }
        let rid = (cmd.client, cmd.seq);
        if cmd.client != 0 {
            if let Some(r) = self.dedup.results.get(&rid) {
                return r.clone();
            }
            if let Some(s) = self.sessions.get(&cmd.client) {
                if cmd.seq < s.settled_below {
                    return CommandResult::AlreadySettled;
                }
            }
        }
        let result = self.apply_op(index, &cmd.op);
        if cmd.client != 0 {
            self.dedup.remember(rid, &result);
        }
        result
    }

    /// Records that `client` settled every seq below `below`.
    fn settle(&mut self, client: u64, below: u64) -> CommandResult {
        if client == 0 {
            return CommandResult::Done;
        }
        let now = self.clock_ms;
        let s = self.sessions.entry(client).or_default();
        s.last_ms = now;
        if below > s.settled_below {
            s.settled_below = below;
            self.dedup.forget_below(client, below);
        }
        if self.sessions.len() > CLIENT_SESSIONS_MAX {
            let idle = self
                .sessions
                .iter()
                .filter(|(c, _)| **c != client)
                .min_by_key(|(c, s)| (s.last_ms, **c))
                .map(|(c, _)| *c);
            if let Some(c) = idle {
                self.sessions.remove(&c);
            }
        }
        CommandResult::Done
    }
}

struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// One group's state machine and its snapshot.
pub struct GroupSm {
    dir: PathBuf,
    data: RefCell<SmData>,
    current: RefCell<Option<StoredSnapshot>>,
}

/// The snapshot file's bytes: header, then `(meta, data)` in bincode, with
/// `data` written as one blob (serde's default for a `&[u8]` is element by
/// element, which was ~11 % of a WAL leader's CPU with snapshots of MiBs;
/// bincode lays both out the same, so files written before still read).
fn encode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let body = (meta, serde_bytes::Bytes::new(data));
    // Sized first and written once: no zero-fill, no second copy of MiBs.
    let size = bincode::serialized_size(&body).map_or(0, |n| n as usize);
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + size);
    out.extend_from_slice(&[0u8; SNAPSHOT_HEADER_BYTES]);
    bincode::serialize_into(&mut out, &body)
        .map_err(|e| std::io::Error::other(format!("encoding a snapshot: {e}")))?;
    let len = out.len() - SNAPSHOT_HEADER_BYTES;
    let crc = crc32c::crc32c(&out[SNAPSHOT_HEADER_BYTES..]);
    out[..8].copy_from_slice(SNAPSHOT_MAGIC);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out[12..20].copy_from_slice(&(len as u64).to_le_bytes());
    Ok(out)
}

fn decode_snapshot(bytes: &[u8]) -> std::result::Result<(SnapshotMeta, Vec<u8>), String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err("it does not start with a snapshot header".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if body.len() as u64 != len {
        return Err(format!(
            "the header says {len} bytes, the file has {}",
            body.len()
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err("its crc32c does not match".into());
    }
    let (meta, data): (SnapshotMeta, serde_bytes::ByteBuf) =
        bincode::deserialize(body).map_err(|e| format!("it does not decode: {e}"))?;
    Ok((meta, data.into_vec()))
}

/// Writes `bytes` to `path` atomically and durably.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl GroupSm {
    /// Opens the group's state machine in `dir`, loading its snapshot.
    pub fn open(dir: &Path) -> Result<Rc<Self>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("snapshot.bin");
        let (data, current) = match std::fs::read(&path) {
            Ok(bytes) => {
                let (meta, raw) =
                    decode_snapshot(&bytes).map_err(|reason| Error::SnapshotCorrupt {
                        path: path.clone(),
                        reason,
                    })?;
                let data: SmData = decode_sm_data(&raw).map_err(|e| Error::SnapshotCorrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                (data, Some(StoredSnapshot { meta, data: raw }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (SmData::default(), None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(Rc::new(GroupSm {
            dir: dir.to_path_buf(),
            data: RefCell::new(data),
            current: RefCell::new(current),
        }))
    }

    /// Reads the state (callers check leadership or staleness first).
    pub fn with<R>(&self, f: impl FnOnce(&SmData) -> R) -> R {
        f(&self.data.borrow())
    }

    pub fn has_snapshot(&self) -> bool {
        self.current.borrow().is_some()
    }

    async fn persist(
        &self,
        meta: &SnapshotMeta,
        raw: &[u8],
    ) -> std::result::Result<(), StorageError> {
        let sig = meta.signature();
        let bytes = encode_snapshot(meta, raw)
            .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), &e))?;
        let path = self.dir.join("snapshot.bin");
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| {
                StorageIOError::write_snapshot(
                    Some(sig.clone()),
                    &std::io::Error::other(e.to_string()),
                )
            })?
            .map_err(|e| StorageIOError::write_snapshot(Some(sig), &e))?;
        Ok(())
    }
}

/// The state machine handle openraft drives.
#[derive(Clone)]
pub struct SmStore(pub Rc<GroupSm>);

impl RaftSnapshotBuilder<TypeConfig> for SmStore {
    async fn build_snapshot(&mut self) -> std::result::Result<Snapshot<TypeConfig>, StorageError> {
        let (raw, meta) = {
            let d = self.0.data.borrow();
            let raw =
                bincode::serialize(&*d).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let id = match d.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, d.clock_ms),
                None => format!("empty-{}", d.clock_ms),
            };
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.last_membership.clone(),
                snapshot_id: id,
            };
            (raw, meta)
        };
        self.0.persist(&meta, &raw).await?;
        *self.0.current.borrow_mut() = Some(StoredSnapshot {
            meta: meta.clone(),
            data: raw.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(raw)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SmStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<(Option<LogId>, StoredMembership), StorageError> {
        let d = self.0.data.borrow();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        let mut d = self.0.data.borrow_mut();
        let mut out = Vec::new();
        for e in entries {
            d.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(ref p) => {
                    let base = e.log_id.index.saturating_mul(VERSIONS_PER_ENTRY);
                    p.0.iter()
                        .enumerate()
                        .map(|(i, cmd)| d.apply_command(base + i as u64, cmd))
                        .collect()
                }
                EntryPayload::Membership(ref m) => {
                    d.last_membership = StoredMembership::new(Some(e.log_id), m.clone());
                    Vec::new()
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> std::result::Result<(), StorageError> {
        let raw = snapshot.into_inner();
        let data = decode_sm_data(&raw)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.0.persist(meta, &raw).await?;
        *self.0.data.borrow_mut() = data;
        *self.0.current.borrow_mut() = Some(StoredSnapshot {
            meta: meta.clone(),
            data: raw,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.0.current.borrow().as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd(now_ms: u64, op: Op) -> Command {
        Command {
            client: 0,
            seq: 0,
            now_ms,
            op,
        }
    }

    fn acquire(holder: &str, ttl_ms: u32) -> Op {
        Op::AcquireLease {
            name: b"l".to_vec(),
            holder: holder.as_bytes().to_vec(),
            ttl_ms,
        }
    }

    #[derive(Debug, Clone)]
    enum LeaseStep {
        Acquire(u8, u32),
        Renew(u8, u32),
        Release(u8),
        Advance(u64),
    }

    fn step() -> impl Strategy<Value = LeaseStep> {
        prop_oneof![
            (0u8..3, 100u32..2000).prop_map(|(h, t)| LeaseStep::Acquire(h, t)),
            (0u8..3, 100u32..2000).prop_map(|(h, t)| LeaseStep::Renew(h, t)),
            (0u8..3).prop_map(LeaseStep::Release),
            (0u64..3000).prop_map(LeaseStep::Advance),
        ]
    }

    proptest! {
        /// Whatever the sequence of lease calls and clock jumps: at any
        /// time one holder at most, and a new holder always gets a larger
        /// epoch than every earlier grant.
        #[test]
        fn one_holder_and_growing_epochs(steps in proptest::collection::vec(step(), 1..200)) {
            let mut d = SmData::default();
            let mut now = 1_000u64;
            let mut last_grant: Option<(Vec<u8>, u64, u64)> = None; // holder, epoch, expires
            let mut max_epoch = 0u64;
            for (i, s) in steps.into_iter().enumerate() {
                let idx = i as u64 + 1;
                let holder = |h: u8| format!("h{h}").into_bytes();
                let r = match s {
                    LeaseStep::Advance(ms) => { now += ms; continue; }
                    LeaseStep::Acquire(h, t) => d.apply_command(idx, &cmd(now, Op::AcquireLease { name: b"l".to_vec(), holder: holder(h), ttl_ms: t })),
                    LeaseStep::Renew(h, t) => {
                        let epoch = d.leases.get(&b"l"[..]).map_or(0, |l| l.epoch);
                        d.apply_command(idx, &cmd(now, Op::RenewLease { name: b"l".to_vec(), holder: holder(h), epoch, ttl_ms: t }))
                    }
                    LeaseStep::Release(h) => {
                        let epoch = d.leases.get(&b"l"[..]).map_or(0, |l| l.epoch);
                        d.apply_command(idx, &cmd(now, Op::ReleaseLease { name: b"l".to_vec(), holder: holder(h), epoch }))
                    }
                };
                if let CommandResult::Lease { ok: true, lease } = r {
                    if let Some((h, e, exp)) = &last_grant {
                        if *h != lease.holder {
                            // A different holder only after the last one expired or released.
                            let l = d.leases.get(&b"l"[..]).unwrap();
                            prop_assert!(now >= *exp || l.epoch > *e);
                            prop_assert!(lease.epoch > *e, "new holder must get a larger epoch");
                        }
                    }
                    prop_assert!(lease.epoch >= max_epoch);
                    max_epoch = lease.epoch;
                    last_grant = Some((lease.holder.clone(), lease.epoch, lease.expires_at_ms));
                }
                if let Some(l) = d.leases.get(&b"l"[..]) {
                    if l.holder.is_empty() { last_grant = None; }
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum WalStep {
        Append(u8, usize),
        Finish(Vec<u64>),
        Claim(u8, u8),
    }

    fn wal_step() -> impl Strategy<Value = WalStep> {
        prop_oneof![
            3 => (0u8..3, 0usize..64).prop_map(|(g, n)| WalStep::Append(g, n)),
            2 => proptest::collection::vec(1u64..80, 0..8).prop_map(WalStep::Finish),
            1 => (0u8..3, 0u8..3).prop_map(|(a, b)| WalStep::Claim(a, b)),
        ]
    }

    proptest! {
        /// Truncation never drops an unfinished entry; offsets are gap-free;
        /// the unfinished byte count is exact; a retried append applies once.
        #[test]
        fn wal_never_drops_unfinished_entries(steps in proptest::collection::vec(wal_step(), 1..120)) {
            let mut d = SmData::default();
            let mut unfinished: BTreeMap<u64, (String, usize)> = BTreeMap::new();
            let mut seq = 0u64;
            for s in steps {
                seq += 1;
                match s {
                    WalStep::Append(g, n) => {
                        let c = Command { client: 9, seq, now_ms: 0, op: Op::WalAppend { gateway: format!("g{g}"), data: vec![7; n].into(), is_intent: false } };
                        let r = d.apply_command(seq, &c);
                        let again = d.apply_command(seq + 1_000_000, &c);
                        prop_assert_eq!(&r, &again, "a retried append must return the same offset");
                        if let CommandResult::WalAppended { offset } = r {
                            unfinished.insert(offset, (format!("g{g}"), n));
                        }
                    }
                    WalStep::Finish(offs) => {
                        d.apply_command(seq, &cmd(0, Op::WalFinish { offsets: offs.clone() }));
                        for o in offs { unfinished.remove(&o); }
                    }
                    WalStep::Claim(a, b) => {
                        d.apply_command(seq, &cmd(0, Op::WalClaim { from: format!("g{a}"), to: format!("g{b}") }));
                        for v in unfinished.values_mut() { if v.0 == format!("g{a}") { v.0 = format!("g{b}"); } }
                    }
                }
                for (o, (gw, n)) in &unfinished {
                    let r = d.wal.entries.get(o);
                    prop_assert!(r.is_some_and(|r| !r.finished && &r.gateway == gw && r.data.len() == *n), "unfinished entry {} lost or changed", o);
                }
                let total: u64 = unfinished.values().map(|v| v.1 as u64).sum();
                prop_assert_eq!(d.wal.unfinished_bytes, total);
                // Exactly the unfinished entries are held, and every
                // offset below `truncated_before` is finished.
                let keys: Vec<u64> = d.wal.entries.keys().copied().collect();
                let want: Vec<u64> = unfinished.keys().copied().collect();
                prop_assert_eq!(keys, want);
                prop_assert_eq!(d.wal.truncated_before, unfinished.keys().next().copied().unwrap_or(d.wal.next_offset));
            }
        }
    }

    /// Behind one stuck entry, finished ones are not kept (memory and
    /// snapshots stay small, appends go on); past the limit of unfinished
    /// entries appends are refused with a message naming the oldest.
    #[test]
    fn a_stuck_entry_holds_nothing_behind_it_and_unfinished_entries_are_bounded() {
        let mut w = WalState::default();
        assert!(matches!(
            w.append("gone", &SharedBytes::from(&[1; 100][..]), false),
            CommandResult::WalAppended { offset: 1 }
        ));
        for i in 0..100_000u64 {
            let r = w.append("g", &SharedBytes::from(&[2; 8][..]), false);
            assert!(matches!(r, CommandResult::WalAppended { offset } if offset == i + 2));
            w.finish(&[i + 2]);
        }
        assert_eq!(w.entries.len(), 1);
        assert_eq!(w.unfinished_bytes, 100);
        assert_eq!(w.truncated_before, 1);
        for _ in 1..WAL_PARTITION_ENTRIES_MAX {
            assert!(matches!(
                w.append("g", &SharedBytes::from(&[][..]), true),
                CommandResult::WalAppended { .. }
            ));
        }
        match w.append("g", &SharedBytes::from(&[3; 8][..]), false) {
            CommandResult::WalFull(why) => assert!(why.contains("offset 1"), "{why}"),
            other => panic!("expected full, got {other:?}"),
        }
        w.finish(&[1]);
        assert_eq!(w.truncated_before, 100_002);
        assert!(matches!(
            w.append("g", &SharedBytes::from(&[3; 8][..]), false),
            CommandResult::WalAppended { .. }
        ));
    }

    #[test]
    fn held_lease_refuses_another_holder_until_expiry() {
        let mut d = SmData::default();
        let r = d.apply_command(1, &cmd(1000, acquire("a", 500)));
        assert!(matches!(r, CommandResult::Lease { ok: true, ref lease } if lease.epoch == 1));
        let r = d.apply_command(2, &cmd(1400, acquire("b", 500)));
        assert!(matches!(r, CommandResult::Lease { ok: false, .. }));
        // A clock going back (a new leader behind the old one) does not
        // shorten the lease.
        let r = d.apply_command(3, &cmd(900, acquire("b", 500)));
        assert!(matches!(r, CommandResult::Lease { ok: false, .. }));
        let r = d.apply_command(4, &cmd(1501, acquire("b", 500)));
        assert!(matches!(r, CommandResult::Lease { ok: true, ref lease } if lease.epoch == 2));
    }

    #[test]
    fn batch_applies_all_or_nothing_and_retries_apply_once() {
        let mut d = SmData::default();
        let put = |k: &str, exp: Option<u64>| KeyWrite {
            key: k.into(),
            expected: exp,
            value: Some(b"v".to_vec()),
        };
        let c = Command {
            client: 7,
            seq: 1,
            now_ms: 1,
            op: Op::Write(vec![put("a", Some(0)), put("b", None)]),
        };
        assert_eq!(
            d.apply_command(5, &c),
            CommandResult::Written(vec![
                WriteOutcome {
                    version: 5,
                    previous_version: 0
                },
                WriteOutcome {
                    version: 5,
                    previous_version: 0
                },
            ])
        );
        // The same request again (a client retry): same answer, no new write.
        assert_eq!(
            d.apply_command(6, &c),
            CommandResult::Written(vec![
                WriteOutcome {
                    version: 5,
                    previous_version: 0
                },
                WriteOutcome {
                    version: 5,
                    previous_version: 0
                },
            ])
        );
        let c2 = Command {
            client: 7,
            seq: 2,
            now_ms: 1,
            op: Op::Write(vec![put("b", None), put("a", Some(0))]),
        };
        assert_eq!(
            d.apply_command(7, &c2),
            CommandResult::Conflict {
                index: 1,
                current: 5
            }
        );
        assert_eq!(d.kv[&b"b"[..]].version, 5, "a failed batch writes nothing");
    }

    proptest! {
        /// The blob coding of a snapshot's data writes exactly the bytes of
        /// the element-wise coding it replaced, and reads back what it wrote.
        #[test]
        fn snapshot_blob_keeps_the_element_wise_format(
            raw in proptest::collection::vec(any::<u8>(), 0..20_000),
            index in 0u64..1_000_000,
        ) {
            let meta = SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), index)),
                ..SnapshotMeta::default()
            };
            let bytes = encode_snapshot(&meta, &raw).unwrap();
            let old_body = bincode::serialize(&(&meta, &raw[..])).unwrap();
            prop_assert_eq!(&bytes[SNAPSHOT_HEADER_BYTES..], &old_body[..]);
            let (m, d) = decode_snapshot(&bytes).unwrap();
            prop_assert_eq!(m, meta);
            prop_assert_eq!(d, raw);
        }
    }

    #[test]
    fn damaged_snapshot_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta::default();
        let raw = bincode::serialize(&SmData::default()).unwrap();
        let mut bytes = encode_snapshot(&meta, &raw).unwrap();
        write_atomic(&dir.path().join("snapshot.bin"), &bytes).unwrap();
        assert!(GroupSm::open(dir.path()).is_ok());
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        write_atomic(&dir.path().join("snapshot.bin"), &bytes).unwrap();
        let err = GroupSm::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("crc32c"), "{err}");
    }

    fn from(client: u64, seq: u64, op: Op) -> Command {
        Command {
            client,
            seq,
            now_ms: 1,
            op,
        }
    }

    fn wal_append(tag: u64) -> Op {
        Op::WalAppend {
            gateway: "g".into(),
            data: SharedBytes::from(&tag.to_le_bytes()[..]),
            is_intent: false,
        }
    }

    /// What one client request did to the state, as a test sees it.
    #[derive(Debug, Clone)]
    enum Step {
        /// Issue a new request (next seq), send it once.
        Issue,
        /// Send again the outstanding request at this position (a retry).
        Retry(usize),
        /// The answer of the outstanding request at this position arrives:
        /// the client settles it (it is never sent again by the client).
        Answer(usize),
        /// A late copy of some already settled request arrives.
        LateCopy(usize),
        /// The leader proposes the client's current watermark.
        Settle,
    }

    fn client_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Issue),
            2 => any::<usize>().prop_map(Step::Retry),
            3 => any::<usize>().prop_map(Step::Answer),
            2 => any::<usize>().prop_map(Step::LateCopy),
            2 => Just(Step::Settle),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the order of retries, answers, late copies and settled
        /// watermarks, each request applies at most once (one WAL entry per
        /// applied seq, a retry gets the first offset back), a late copy of
        /// a settled request is refused, and the results held are only the
        /// unsettled ones (so they stay as few as the requests in flight).
        #[test]
        fn each_request_applies_once_and_settled_results_are_forgotten(
            steps in proptest::collection::vec(client_step(), 1..300),
        ) {
            const CLIENT: u64 = 7;
            let mut d = SmData::default();
            let mut next = 0u64;
            let mut outstanding: Vec<u64> = Vec::new();
            let mut settled: Vec<u64> = Vec::new();
            let mut offsets: BTreeMap<u64, u64> = BTreeMap::new();
            let mut proposed_below = 0u64;
            let mut version = 0u64;
            for st in steps {
                version += 1;
                match st {
                    Step::Issue | Step::Retry(_) => {
                        let seq = match st {
                            Step::Retry(i) if !outstanding.is_empty() => {
                                outstanding[i % outstanding.len()]
                            }
                            _ => {
                                next += 1;
                                outstanding.push(next);
                                next
                            }
                        };
                        let r = d.apply_command(version, &from(CLIENT, seq, wal_append(seq)));
                        let CommandResult::WalAppended { offset } = r else {
                            return Err(TestCaseError::fail(format!("seq {seq}: {r:?}")));
                        };
                        if let Some(first) = offsets.get(&seq) {
                            prop_assert_eq!(*first, offset, "a retry applied again");
                        }
                        offsets.insert(seq, offset);
                    }
                    Step::Answer(i) if !outstanding.is_empty() => {
                        let seq = outstanding.remove(i % outstanding.len());
                        settled.push(seq);
                    }
                    Step::LateCopy(i) if !settled.is_empty() => {
                        let seq = settled[i % settled.len()];
                        let before = d.wal.next_offset;
                        let r = d.apply_command(version, &from(CLIENT, seq, wal_append(seq)));
                        match r {
                            // Not yet below the proposed watermark: the
                            // remembered result, or (never sent before) a
                            // first apply.
                            CommandResult::WalAppended { offset } => {
                                prop_assert!(seq >= proposed_below);
                                if let Some(first) = offsets.get(&seq) {
                                    prop_assert_eq!(*first, offset);
                                }
                                offsets.insert(seq, offset);
                            }
                            CommandResult::AlreadySettled => {
                                prop_assert!(seq < proposed_below);
                                prop_assert_eq!(d.wal.next_offset, before);
                            }
                            other => return Err(TestCaseError::fail(format!("{other:?}"))),
                        }
                    }
                    Step::Settle => {
                        let below = outstanding.iter().min().copied().unwrap_or(next + 1);
                        d.apply_command(version, &from(CLIENT, 0, Op::Settle { below }));
                        proposed_below = proposed_below.max(below);
                    }
                    _ => {}
                }
                // One WAL entry per seq ever applied.
                prop_assert_eq!(d.wal.next_offset - 1, offsets.len() as u64);
                // Only unsettled results are held, and `order` covers them
                // within its slack.
                for (c, s) in d.dedup.results.keys() {
                    prop_assert!(*c != CLIENT || *s >= proposed_below);
                    prop_assert!(d.dedup.order.contains(&(*c, *s)));
                }
                prop_assert!(d.dedup.order.len() <= 2 * d.dedup.results.len() + DEDUP_ORDER_SLACK + 1);
            }
        }
    }

    /// With a watermark proposed every so often, a long run of requests
    /// keeps a few results, not `DEDUP_ENTRIES_MAX`, and so small snapshots.
    #[test]
    fn settled_clients_keep_few_results() {
        let mut d = SmData::default();
        for seq in 1..=50_000u64 {
            d.apply_command(seq, &from(9, seq, wal_append(seq)));
            d.wal.finish(&[seq]);
            if seq % 128 == 0 {
                d.apply_command(seq, &from(9, 0, Op::Settle { below: seq - 64 }));
            }
        }
        assert!(d.dedup.results.len() <= 192, "{}", d.dedup.results.len());
        assert!(d.dedup.order.len() <= 2 * 192 + DEDUP_ORDER_SLACK);
        let raw = bincode::serialize(&d).unwrap();
        assert!(raw.len() < 64 << 10, "snapshot of {} bytes", raw.len());
        // A client that never settles is still bounded, oldest first.
        for seq in 1..=(DEDUP_ENTRIES_MAX as u64 + 10) {
            d.apply_command(seq, &from(11, seq, wal_append(seq)));
            d.wal.finish(&[d.wal.next_offset - 1]);
        }
        assert!(d.dedup.results.len() <= DEDUP_ENTRIES_MAX);
        assert!(!d.dedup.results.contains_key(&(11, 1)));
        assert!(d
            .dedup
            .results
            .contains_key(&(11, DEDUP_ENTRIES_MAX as u64 + 10)));
    }

    /// Past `CLIENT_SESSIONS_MAX` clients, the one heard from least recently
    /// is forgotten.
    #[test]
    fn client_sessions_are_bounded_least_recent_first() {
        let mut d = SmData::default();
        let max = CLIENT_SESSIONS_MAX as u64;
        let settle = |c: u64, now_ms: u64| Command {
            now_ms,
            ..from(c, 0, Op::Settle { below: 5 })
        };
        for c in 1..=max {
            d.apply_command(c, &settle(c, 1_000 + c));
        }
        // Client 1 is heard from again: client 2 is now the least recent.
        d.apply_command(max + 1, &settle(1, 1_000 + max + 1));
        d.apply_command(max + 2, &settle(max + 1, 1_000 + max + 2));
        assert_eq!(d.sessions.len(), CLIENT_SESSIONS_MAX);
        assert!(d.sessions.contains_key(&1));
        assert!(!d.sessions.contains_key(&2));
        assert!(d.sessions.contains_key(&3));
        assert!(d.sessions.contains_key(&(max + 1)));
    }

    /// A snapshot written before client sessions existed still loads (with
    /// none), and one written now keeps them.
    #[test]
    fn snapshots_before_client_sessions_still_load() {
        let mut d = SmData::default();
        d.apply_command(1, &from(5, 1, wal_append(1)));
        d.kv.insert(
            b"k".to_vec(),
            Versioned {
                value: b"v".to_vec(),
                version: 3,
            },
        );
        // The old layout: the same fields, without the last one.
        let old = bincode::serialize(&(
            &d.last_applied,
            &d.last_membership,
            &d.kv,
            &d.leases,
            &d.nodes,
            d.clock_ms,
            &d.dedup,
            &d.wal,
        ))
        .unwrap();
        let back = decode_sm_data(&old).unwrap();
        assert_eq!(back.kv, d.kv);
        assert_eq!(back.wal.entries, d.wal.entries);
        assert!(back.dedup.results.contains_key(&(5, 1)));
        assert!(back.sessions.is_empty());

        d.apply_command(2, &from(5, 0, Op::Settle { below: 2 }));
        let now = bincode::serialize(&d).unwrap();
        let back = decode_sm_data(&now).unwrap();
        assert_eq!(back.sessions, d.sessions);
        assert_eq!(back.sessions[&5].settled_below, 2);
        assert!(!back.dedup.results.contains_key(&(5, 1)));
        // Garbage is still an error, not an empty state.
        assert!(decode_sm_data(&now[..now.len() / 2]).is_err());
    }
}
