//! The raft log of every group a replica hosts, in one file set with group
//! commit.
//!
//! Owns: each group's entries, vote, committed id and purge point (in
//! memory, rebuilt from the segments on start), the records that change
//! them, and the batching of records into flushes. The files and the
//! thread that writes them are [`segments`]'s (O_DIRECT + O_DSYNC through
//! io_uring into preallocated, reused segments); a log in the first format
//! is read by [`legacy`] and migrated.
//!
//! Why one log for all groups: a write is durable only after it reaches the
//! disk's stable storage, and on this class of disk one durable write costs
//! about as much as a few hundred small buffered ones. Appends from all G
//! groups that arrive while a flush runs go out together in the next one
//! (like etcd's single WAL), instead of G files each paying for their own.
//!
//! Invariants:
//! - `append` acknowledges (`LogFlushed`) only after the frame holding the
//!   entries is durable; `save_vote` returns only after the vote is.
//! - Each flush is one frame of records, a record being `[len u32][bincode
//!   body]`; one flush is in flight at a time, so only the last can be torn.
//! - A segment past its rotation point is replaced by a new one that starts
//!   with a checkpoint of all live state; older segments are retired only
//!   after the checkpoint is durable.
//! - After a failed write nothing more is written (the device may have
//!   dropped the failed blocks; retrying could report data durable that is
//!   not): every later append fails and the replica stops.

mod legacy;
mod ring;
mod segments;

use crate::error::{Error, Result};
use crate::limits::LOG_SEGMENT_ROTATE_BYTES;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use ring::RingDevice;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::rc::Rc;
use tessera_engine::device::Device;
use tokio::sync::{oneshot, Notify};

const RECORD_HEADER_BYTES: usize = 4;
/// Largest records buffer kept from one flush for the next, in bytes of
/// capacity; a larger one (after a burst, or a checkpoint's) is freed.
const PENDING_KEPT_BYTES_MAX: usize = 8 << 20;
/// bincode's tag of [`Record::Checkpoint`] (the variant index, a u32,
/// written first).
const CHECKPOINT_VARIANT: u32 = 5;

/// True when a record body is a checkpoint, without decoding it.
fn is_checkpoint(body: &[u8]) -> bool {
    body.get(..4) == Some(&CHECKPOINT_VARIANT.to_le_bytes()[..])
}

/// One group's log as held in memory.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct GroupLog {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
}

#[derive(Serialize, Deserialize, Debug)]
enum Record {
    Append {
        group: u32,
        entries: Vec<Entry>,
    },
    Vote {
        group: u32,
        vote: Vote,
    },
    Committed {
        group: u32,
        log_id: Option<LogId>,
    },
    /// Removes entries at and after `from_index`.
    Truncate {
        group: u32,
        from_index: u64,
    },
    /// Removes entries up to and including `upto`.
    Purge {
        group: u32,
        upto: LogId,
    },
    /// Replaces all state (first record of a rotated segment).
    Checkpoint {
        groups: Vec<GroupLog>,
    },
}

/// The serialised form of [`Record::Append`] without copying the entries
/// (bincode encodes a slice and a Vec alike).
#[derive(Serialize)]
enum RecordRef<'a> {
    Append { group: u32, entries: &'a [Entry] },
}

/// The serialised form of [`Record::Checkpoint`] without copying every
/// group's log first (a checkpoint can hold tens of MiB, and the copy ran
/// on the thread that drives every group).
struct CheckpointRef<'a>(&'a [GroupLog]);

impl Serialize for CheckpointRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStructVariant;
        let mut v = s.serialize_struct_variant("Record", CHECKPOINT_VARIANT, "Checkpoint", 1)?;
        v.serialize_field("groups", self.0)?;
        v.end()
    }
}

/// The encoded size of one entry, as a checkpoint or append writes it.
fn entry_bytes(e: &Entry) -> u64 {
    // Sizing plain data cannot fail; 0 would only under-count.
    bincode::serialized_size(e).unwrap_or(0)
}

fn entries_bytes<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> u64 {
    entries.into_iter().map(entry_bytes).sum()
}

fn encode_record<T: Serialize>(out: &mut Vec<u8>, rec: &T) {
    // Room for all of it first: growing by doubling copied a flush's
    // records up to twice more (a WAL entry carries its data).
    let size = bincode::serialized_size(rec).unwrap_or(0) as usize;
    out.reserve(RECORD_HEADER_BYTES + size);
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    // Serialising plain data into a Vec cannot fail.
    bincode::serialize_into(&mut *out, rec).expect("bincode into a Vec");
    let body_len = out.len() - start - RECORD_HEADER_BYTES;
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
}

/// Splits a frame's payload into record bodies.
fn records(payload: &[u8]) -> std::result::Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        if payload.len() - off < RECORD_HEADER_BYTES {
            return Err("a record header is cut short inside a good frame".into());
        }
        let len = u32::from_le_bytes(payload[off..off + 4].try_into().unwrap_or_default()) as usize;
        if len > payload.len() - off - RECORD_HEADER_BYTES {
            return Err(format!("a record of {len} bytes overruns its frame"));
        }
        out.push(&payload[off + RECORD_HEADER_BYTES..off + RECORD_HEADER_BYTES + len]);
        off += RECORD_HEADER_BYTES + len;
    }
    Ok(out)
}

enum Waiter {
    Flushed(LogFlushed<TypeConfig>),
    Notify(oneshot::Sender<io::Result<()>>),
}

struct Inner {
    groups: Vec<GroupLog>,
    /// Encoded bytes of each group's entries held in memory (what a
    /// checkpoint would write for them); see [`SharedLog::live_bytes`].
    live_bytes: Vec<u64>,
    pending: Vec<u8>,
    /// The buffer of the last completed flush, emptied, to gather the
    /// records after the next one: a fresh buffer each flush cost page
    /// faults on never-touched memory (a replica's largest single cost
    /// under WAL appends). At most [`PENDING_KEPT_BYTES_MAX`] of capacity.
    spare: Vec<u8>,
    waiters: Vec<Waiter>,
    /// Next write offset in the current segment.
    segment_bytes: u64,
    segment_capacity: u64,
    segment_seq: u64,
    last_checkpoint_bytes: u64,
    rotate_bytes: u64,
    failed: Option<String>,
}

/// The shared log; one per replica.
pub struct SharedLog {
    inner: RefCell<Inner>,
    wake: Notify,
    jobs: futures::channel::mpsc::UnboundedSender<segments::Job>,
}

/// What replaying the segments found.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayReport {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut off the newest segment (a write torn by a crash).
    pub torn_tail_bytes: u64,
}

fn record_group(rec: &Record) -> Option<u32> {
    match rec {
        Record::Append { group, .. }
        | Record::Vote { group, .. }
        | Record::Committed { group, .. }
        | Record::Truncate { group, .. }
        | Record::Purge { group, .. } => Some(*group),
        Record::Checkpoint { .. } => None,
    }
}

fn apply_record(groups: &mut [GroupLog], rec: Record) -> std::result::Result<(), String> {
    if let Some(g) = record_group(&rec) {
        if g as usize >= groups.len() {
            return Err(format!(
                "a record for group {g}, but this replica has {} groups",
                groups.len()
            ));
        }
    }
    match rec {
        Record::Append { group, entries } => {
            let gl = &mut groups[group as usize];
            for e in entries {
                gl.entries.insert(e.log_id.index, e);
            }
        }
        Record::Vote { group, vote } => groups[group as usize].vote = Some(vote),
        Record::Committed { group, log_id } => groups[group as usize].committed = log_id,
        Record::Truncate { group, from_index } => {
            groups[group as usize].entries.split_off(&from_index);
        }
        Record::Purge { group, upto } => {
            let gl = &mut groups[group as usize];
            gl.entries = gl.entries.split_off(&(upto.index + 1));
            gl.purged = Some(upto);
        }
        Record::Checkpoint { groups: cp } => {
            if cp.len() != groups.len() {
                return Err(format!(
                    "a checkpoint of {} groups, but this replica has {}",
                    cp.len(),
                    groups.len()
                ));
            }
            groups.clone_from_slice(&cp);
        }
    }
    Ok(())
}

impl SharedLog {
    /// Opens (creating if needed) the log in `dir` for `groups` groups on
    /// the real device (io_uring, O_DIRECT) and replays it. Must be called
    /// inside a tokio `LocalSet`: the writer, the task that batches flushes
    /// and the ring's reaper are local tasks of the calling thread.
    pub async fn open(dir: &Path, groups: u32) -> Result<(Rc<Self>, ReplayReport)> {
        Self::open_rotating_at(dir, groups, LOG_SEGMENT_ROTATE_BYTES).await
    }

    /// [`SharedLog::open`] with segments rotating past `rotate_bytes`.
    pub async fn open_rotating_at(
        dir: &Path,
        groups: u32,
        rotate_bytes: u64,
    ) -> Result<(Rc<Self>, ReplayReport)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // Its message says how to raise the limit.
        tessera_engine::raise_memlock().map_err(|e| Error::Config(e.to_string()))?;
        let at = dir.to_path_buf();
        Self::open_on(
            dir,
            move || async move { RingDevice::open(&at) },
            groups,
            rotate_bytes,
        )
        .await
    }

    /// Opens the log on the device `make_device` returns, rotating segments
    /// past `rotate_bytes`. `dir` names the files in errors. Tests use
    /// simulated devices and small segments.
    pub async fn open_on<D, F, Fut>(
        dir: &Path,
        make_device: F,
        groups: u32,
        rotate_bytes: u64,
    ) -> Result<(Rc<Self>, ReplayReport)>
    where
        D: Device,
        F: FnOnce() -> Fut + 'static,
        Fut: Future<Output = io::Result<D>> + 'static,
    {
        let (opened_tx, opened_rx) = oneshot::channel();
        let (jobs_tx, jobs_rx) = futures::channel::mpsc::unbounded();
        let dir_owned = dir.to_path_buf();
        tokio::task::spawn_local(async move {
            let dev = match make_device().await {
                Ok(d) => d,
                Err(e) => {
                    let _ = opened_tx.send(Err(Error::io(&dir_owned, e)));
                    return;
                }
            };
            segments::run(dev, dir_owned, groups, rotate_bytes, opened_tx, jobs_rx).await
        });
        let opened = opened_rx.await.map_err(|_| {
            Error::io(
                dir,
                io::Error::other("the log writer stopped while opening"),
            )
        })??;
        let live_bytes = opened
            .groups
            .iter()
            .map(|g| entries_bytes(g.entries.values()))
            .collect();
        let log = Rc::new(SharedLog {
            inner: RefCell::new(Inner {
                groups: opened.groups,
                live_bytes,
                pending: Vec::new(),
                spare: Vec::new(),
                waiters: Vec::new(),
                segment_bytes: opened.pos,
                segment_capacity: opened.capacity,
                segment_seq: opened.seq,
                last_checkpoint_bytes: opened.checkpoint_bytes,
                rotate_bytes,
                failed: None,
            }),
            wake: Notify::new(),
            jobs: jobs_tx,
        });
        let flusher = log.clone();
        tokio::task::spawn_local(async move { flusher.flush_loop().await });
        Ok((log, opened.report))
    }

    /// Appends `entries` to `group`; returns once they are durable.
    pub async fn append(&self, group: u32, entries: Vec<Entry>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.append_with(group, entries, Waiter::Notify(tx))?;
        rx.await
            .map_err(|_| io::Error::other("the log writer stopped"))?
    }

    fn append_with(&self, group: u32, entries: Vec<Entry>, waiter: Waiter) -> io::Result<()> {
        self.push(
            &RecordRef::Append {
                group,
                entries: &entries,
            },
            Some(waiter),
        )?;
        let mut inner = self.inner.borrow_mut();
        let (mut added, mut removed) = (0, 0);
        let g = &mut inner.groups[group as usize];
        for e in entries {
            added += entry_bytes(&e);
            if let Some(old) = g.entries.insert(e.log_id.index, e) {
                removed += entry_bytes(&old);
            }
        }
        let b = &mut inner.live_bytes[group as usize];
        *b = (*b + added).saturating_sub(removed);
        Ok(())
    }

    /// Records `vote` for `group`; returns once it is durable.
    pub async fn save_vote(&self, group: u32, vote: Vote) -> io::Result<()> {
        self.inner.borrow_mut().groups[group as usize].vote = Some(vote);
        self.push_and_wait(&Record::Vote { group, vote }).await
    }

    /// Removes `group`'s entries at and after `from_index` (durable with the
    /// next flush).
    pub fn truncate(&self, group: u32, from_index: u64) -> io::Result<()> {
        {
            let mut inner = self.inner.borrow_mut();
            let gone = inner.groups[group as usize].entries.split_off(&from_index);
            let b = &mut inner.live_bytes[group as usize];
            *b = b.saturating_sub(entries_bytes(gone.values()));
        }
        self.push(&Record::Truncate { group, from_index }, None)
    }

    /// Removes `group`'s entries up to and including `upto` (durable with
    /// the next flush).
    pub fn purge(&self, group: u32, upto: LogId) -> io::Result<()> {
        {
            let mut inner = self.inner.borrow_mut();
            let g = &mut inner.groups[group as usize];
            let kept = g.entries.split_off(&(upto.index + 1));
            let gone = std::mem::replace(&mut g.entries, kept);
            g.purged = Some(upto);
            let b = &mut inner.live_bytes[group as usize];
            *b = b.saturating_sub(entries_bytes(gone.values()));
        }
        self.push(&Record::Purge { group, upto }, None)
    }

    /// Encoded bytes of `group`'s entries held in memory: what the group
    /// costs in RAM and in every checkpoint until raft purges them. The
    /// replica bounds it (`RaftTuning::log_bytes_snapshot_at`).
    pub fn live_bytes(&self, group: u32) -> u64 {
        self.inner.borrow().live_bytes[group as usize]
    }

    /// `group`'s (first index, last index, vote, purged) — for tests and status.
    pub fn describe(&self, group: u32) -> (Vec<LogId>, Option<Vote>, Option<LogId>) {
        let inner = self.inner.borrow();
        let g = &inner.groups[group as usize];
        (
            g.entries.values().map(|e| e.log_id).collect(),
            g.vote,
            g.purged,
        )
    }

    /// The index of `group`'s last entry (0 if none).
    pub fn last_index(&self, group: u32) -> u64 {
        let inner = self.inner.borrow();
        let g = &inner.groups[group as usize];
        g.entries
            .keys()
            .next_back()
            .copied()
            .or(g.purged.map(|p| p.index))
            .unwrap_or(0)
    }

    /// The store raft uses for `group`.
    pub fn group(self: &Rc<Self>, group: u32) -> GroupLogStore {
        GroupLogStore {
            log: self.clone(),
            group,
        }
    }

    /// True when the group has no vote, entries or purge point (never
    /// initialised on this replica).
    pub fn group_is_empty(&self, group: u32) -> bool {
        let inner = self.inner.borrow();
        let g = &inner.groups[group as usize];
        g.vote.is_none() && g.entries.is_empty() && g.purged.is_none()
    }

    fn push<T: Serialize>(
        &self,
        rec: &T,
        waiter: Option<Waiter>,
    ) -> std::result::Result<(), io::Error> {
        let mut inner = self.inner.borrow_mut();
        if let Some(why) = &inner.failed {
            return Err(io::Error::other(format!(
                "the log refuses writes after a failed write: {why}"
            )));
        }
        encode_record(&mut inner.pending, rec);
        // A record nobody waits for (committed id, truncation, purge) rides
        // with the next flush instead of costing an fdatasync of its own.
        if let Some(w) = waiter {
            inner.waiters.push(w);
            drop(inner);
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn push_and_wait<T: Serialize>(&self, rec: &T) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.push(rec, Some(Waiter::Notify(tx)))?;
        rx.await
            .map_err(|_| io::Error::other("the log writer stopped"))?
    }

    /// Waits until everything pushed so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner.borrow_mut();
            if let Some(why) = &inner.failed {
                return Err(io::Error::other(why.clone()));
            }
            inner.waiters.push(Waiter::Notify(tx));
        }
        self.wake.notify_one();
        rx.await
            .map_err(|_| io::Error::other("the log writer stopped"))?
    }

    async fn flush_loop(self: Rc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let (job, rx, waiters) = {
                    let mut inner = self.inner.borrow_mut();
                    if inner.pending.is_empty() && inner.waiters.is_empty() {
                        break;
                    }
                    let waiters = std::mem::take(&mut inner.waiters);
                    if inner.pending.is_empty() {
                        // Nothing new: every earlier flush has completed, so
                        // the waiters' records are already durable.
                        let failed = inner.failed.clone();
                        drop(inner);
                        complete(
                            waiters,
                            &failed.map_or(Ok(()), |f| Err(io::Error::other(f))),
                        );
                        continue;
                    }
                    let (tx, rx) = oneshot::channel();
                    let rotate_at = inner.rotate_bytes.max(inner.last_checkpoint_bytes * 2);
                    let end = inner.segment_bytes + segments::frame_len(inner.pending.len());
                    let job = if end > rotate_at.min(inner.segment_capacity) {
                        // The checkpoint holds the effect of every pending
                        // record, so they need not be written separately.
                        inner.pending.clear();
                        let mut payload = Vec::new();
                        encode_record(&mut payload, &CheckpointRef(&inner.groups));
                        let frame = segments::frame_len(payload.len());
                        let capacity = segments::segment_capacity(inner.rotate_bytes, frame);
                        inner.segment_seq += 1;
                        inner.segment_bytes = frame;
                        inner.segment_capacity = capacity;
                        inner.last_checkpoint_bytes = frame;
                        segments::Job::Rotate {
                            seq: inner.segment_seq,
                            capacity,
                            payload,
                            done: tx,
                        }
                    } else {
                        let pos = inner.segment_bytes;
                        inner.segment_bytes = end;
                        segments::Job::Append {
                            pos,
                            payload: {
                                let next = std::mem::take(&mut inner.spare);
                                std::mem::replace(&mut inner.pending, next)
                            },
                            done: tx,
                        }
                    };
                    (job, rx, waiters)
                };
                let res = match self.jobs.unbounded_send(job) {
                    Ok(()) => match rx.await {
                        Ok((res, mut payload)) => {
                            if payload.capacity() <= PENDING_KEPT_BYTES_MAX {
                                payload.clear();
                                self.inner.borrow_mut().spare = payload;
                            }
                            res
                        }
                        Err(_) => Err(io::Error::other("the log writer stopped")),
                    },
                    Err(_) => Err(io::Error::other("the log writer stopped")),
                };
                if let Err(e) = &res {
                    tracing::error!(error = %e, "log write failed; this replica refuses further writes");
                    self.inner.borrow_mut().failed = Some(e.to_string());
                }
                complete(waiters, &res);
            }
        }
    }
}

fn complete(waiters: Vec<Waiter>, res: &io::Result<()>) {
    for w in waiters {
        let r = match res {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        match w {
            Waiter::Flushed(cb) => cb.log_io_completed(r),
            Waiter::Notify(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// One group's view of the shared log: what openraft calls the log store.
#[derive(Clone)]
pub struct GroupLogStore {
    log: Rc<SharedLog>,
    group: u32,
}

fn write_err(e: io::Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry>, StorageError> {
        let inner = self.log.inner.borrow();
        Ok(inner.groups[self.group as usize]
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> std::result::Result<LogState<TypeConfig>, StorageError> {
        let inner = self.log.inner.borrow();
        let g = &inner.groups[self.group as usize];
        let last = g
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(g.purged);
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> std::result::Result<(), StorageError> {
        self.log
            .save_vote(self.group, *vote)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> std::result::Result<Option<Vote>, StorageError> {
        Ok(self.log.inner.borrow().groups[self.group as usize].vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId>,
    ) -> std::result::Result<(), StorageError> {
        // Need not be durable: a lost committed id is learned again from the
        // leader; it only lets a restart apply entries without waiting.
        self.log.inner.borrow_mut().groups[self.group as usize].committed = committed;
        self.log
            .push(
                &Record::Committed {
                    group: self.group,
                    log_id: committed,
                },
                None,
            )
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> std::result::Result<Option<LogId>, StorageError> {
        Ok(self.log.inner.borrow().groups[self.group as usize].committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry>,
    {
        self.log
            .append_with(
                self.group,
                entries.into_iter().collect(),
                Waiter::Flushed(callback),
            )
            .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        // Not waited for: if a crash loses it, the entries it removed come
        // back, which is the state before this call and still a valid log;
        // the leader truncates them again.
        self.log
            .truncate(self.group, log_id.index)
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> std::result::Result<(), StorageError> {
        self.log.purge(self.group, log_id).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, KeyWrite, Op, Proposal};
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::*;
    use std::path::PathBuf;
    use std::sync::Arc;
    use tessera_engine::device::{FaultPlan, FaultyDevice, SimFs};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        let value = vec![index as u8; (index % 97) as usize * 13];
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Proposal(
                vec![Command {
                    client: 0,
                    seq: 0,
                    now_ms: 0,
                    op: Op::Write(vec![KeyWrite {
                        key: b"k".to_vec(),
                        expected: None,
                        value: Some(value),
                    }]),
                }]
                .into(),
            )),
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Append { g: u32, n: u64, term: u64 },
        Truncate { g: u32, back: u64 },
        Purge { g: u32, forward: u64 },
        Vote { g: u32, term: u64 },
    }

    const GROUPS: u32 = 3;

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => (0..GROUPS, 1u64..20, 1u64..4).prop_map(|(g, n, term)| Step::Append { g, n, term }),
            1 => (0..GROUPS, 0u64..10).prop_map(|(g, back)| Step::Truncate { g, back }),
            1 => (0..GROUPS, 0u64..10).prop_map(|(g, forward)| Step::Purge { g, forward }),
            1 => (0..GROUPS, 1u64..9).prop_map(|(g, term)| Step::Vote { g, term }),
        ]
    }

    type Model = Vec<(Vec<LogId>, Option<Vote>, Option<LogId>)>;

    fn model_apply(m: &mut Model, s: &Step) {
        match *s {
            Step::Append { g, n, term } => {
                let gm = &mut m[g as usize];
                let next =
                    gm.0.last()
                        .map(|l| l.index + 1)
                        .or(gm.2.map(|p| p.index + 1))
                        .unwrap_or(1);
                for i in next..next + n {
                    gm.0.push(log_id(term, i));
                }
            }
            Step::Truncate { g, back } => {
                let gm = &mut m[g as usize];
                let keep = gm.0.len().saturating_sub(back as usize);
                gm.0.truncate(keep);
            }
            Step::Purge { g, forward } => {
                let gm = &mut m[g as usize];
                if let Some(upto) = gm.0.get(forward as usize).copied() {
                    gm.0.retain(|l| l.index > upto.index);
                    gm.2 = Some(upto);
                }
            }
            Step::Vote { g, term } => m[g as usize].1 = Some(Vote::new(term, 1)),
        }
    }

    /// Performs `s` on the log exactly as the model did (same indices);
    /// returns once it is durable.
    async fn log_apply(log: &SharedLog, before: &Model, s: &Step) -> io::Result<()> {
        match *s {
            Step::Append { g, n, term } => {
                let gm = &before[g as usize];
                let next =
                    gm.0.last()
                        .map(|l| l.index + 1)
                        .or(gm.2.map(|p| p.index + 1))
                        .unwrap_or(1);
                log.append(g, (next..next + n).map(|i| entry(term, i)).collect())
                    .await
            }
            Step::Truncate { g, back } => {
                let gm = &before[g as usize];
                let keep = gm.0.len().saturating_sub(back as usize);
                if let Some(first_gone) = gm.0.get(keep) {
                    log.truncate(g, first_gone.index)?;
                }
                log.sync().await
            }
            Step::Purge { g, forward } => {
                if let Some(upto) = before[g as usize].0.get(forward as usize).copied() {
                    log.purge(g, upto)?;
                }
                log.sync().await
            }
            Step::Vote { g, term } => log.save_vote(g, Vote::new(term, 1)).await,
        }
    }

    use crate::runtime::run_local;

    /// What the live entries of `m`'s group `g` weigh, encoded.
    fn model_bytes(m: &Model, g: u32) -> u64 {
        m[g as usize]
            .0
            .iter()
            .map(|l| entry_bytes(&entry(l.leader_id.term, l.index)))
            .sum()
    }

    /// Where a test's log lives: real files (io_uring, O_DIRECT) or a
    /// simulated disk that can crash, under a fault plan.
    #[derive(Clone)]
    enum Disk {
        Real(PathBuf),
        Sim(SimFs, Arc<FaultPlan>),
    }

    async fn open_log(disk: &Disk, rotate_bytes: u64) -> Result<(Rc<SharedLog>, ReplayReport)> {
        match disk {
            Disk::Real(dir) => SharedLog::open_rotating_at(dir, GROUPS, rotate_bytes).await,
            Disk::Sim(fs, plan) => {
                let (fs, plan) = (fs.clone(), plan.clone());
                SharedLog::open_on(
                    Path::new("sim"),
                    move || async move { Ok(FaultyDevice::new(fs.device(0), plan)) },
                    GROUPS,
                    rotate_bytes,
                )
                .await
            }
        }
    }

    fn reopen(disk: &Disk) -> Result<Model> {
        run_local(async {
            let (log, _) = open_log(disk, SMALL_ROTATE_BYTES).await?;
            let m: Model = (0..GROUPS).map(|g| log.describe(g)).collect();
            for g in 0..GROUPS {
                assert_eq!(
                    log.live_bytes(g),
                    model_bytes(&m, g),
                    "live bytes of group {g} after reopening"
                );
            }
            Ok(m)
        })
    }

    /// Rotation points of the tests: past 8 KiB (a rotation every few
    /// steps) or 2 MiB (rarely).
    const SMALL_ROTATE_BYTES: u64 = 8 << 10;
    const LARGE_ROTATE_BYTES: u64 = 2 << 20;

    /// Runs `steps`, checking the live state after each; returns the model
    /// before the first step and after each.
    fn run_steps(disk: &Disk, steps: &[Step], rotate_bytes: u64) -> Vec<Model> {
        run_local(async {
            let (log, _) = open_log(disk, rotate_bytes).await.unwrap();
            let mut m: Model = vec![(Vec::new(), None, None); GROUPS as usize];
            let mut after = vec![m.clone()];
            for s in steps {
                log_apply(&log, &m, s).await.unwrap();
                model_apply(&mut m, s);
                for g in 0..GROUPS {
                    assert_eq!(
                        log.describe(g),
                        m[g as usize],
                        "live state of group {g} after {s:?}"
                    );
                    assert_eq!(
                        log.live_bytes(g),
                        model_bytes(&m, g),
                        "live bytes of group {g} after {s:?}"
                    );
                }
                after.push(m.clone());
            }
            after
        })
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A new log has its spare before it serves (a half-prepared one from
    /// a crash is replaced), and its first rotation takes that very file:
    /// no file is created while the log runs, so its space is fixed.
    #[test]
    fn a_spare_is_prepared_on_open_and_the_first_rotation_reuses_it() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prep-00000000000000000007.seg"), b"torn").unwrap();
        let ino = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().ino();
        run_local(async {
            let (log, _) = SharedLog::open_rotating_at(dir.path(), GROUPS, SMALL_ROTATE_BYTES)
                .await
                .unwrap();
            let names = files(dir.path());
            assert_eq!(
                names,
                vec![
                    "log-00000000000000000001.seg".to_string(),
                    "spare-00000000000000000001.seg".to_string()
                ],
                "one segment and one prepared spare, the torn one gone"
            );
            let spare = ino("spare-00000000000000000001.seg");
            let first = ino("log-00000000000000000001.seg");
            // Up to the first rotation (the small rotation point is a few
            // frames away).
            let mut i = 0;
            while files(dir.path())
                .iter()
                .any(|n| n == "log-00000000000000000001.seg")
            {
                i += 1;
                assert!(i <= 40, "no rotation after 40 appends");
                log.append(0, vec![entry(1, i)]).await.unwrap();
            }
            let names = files(dir.path());
            assert_eq!(names.len(), 2, "{names:?}");
            let newest = names
                .iter()
                .find(|n| n.starts_with("log-"))
                .unwrap()
                .clone();
            assert_eq!(ino(&newest), spare, "the rotation took the prepared spare");
            let retired = names
                .iter()
                .find(|n| n.starts_with("spare-"))
                .unwrap()
                .clone();
            assert_eq!(ino(&retired), first, "the old segment is the next spare");
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// Whatever the sequence of appends, truncations, purges and votes,
        /// with segments rotating or not, on real O_DIRECT files: a
        /// reopened log is exactly the state it acknowledged, and retired
        /// segments are reused rather than piling up.
        #[test]
        fn reopened_log_equals_what_was_acknowledged(steps in proptest::collection::vec(step(), 1..60), small in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let disk = Disk::Real(dir.path().to_path_buf());
            let after = run_steps(&disk, &steps, if small { SMALL_ROTATE_BYTES } else { LARGE_ROTATE_BYTES });
            let got = reopen(&disk).unwrap();
            prop_assert_eq!(&got, after.last().unwrap());
            let names = files(dir.path());
            let logs = names.iter().filter(|n| n.starts_with("log-")).count();
            let spares = names.iter().filter(|n| n.starts_with("spare-")).count();
            prop_assert!(logs == 1 && spares <= segments::LOG_SPARES_MAX, "one segment and at most {} spares: {:?}", segments::LOG_SPARES_MAX, names);
        }

        /// A crash while a flush is in flight (its sync fails, then power
        /// is lost with any subset of its 512-byte sectors on disk, also
        /// during a rotation): the log reopens to the state before that
        /// step or after it, never anything else, and every earlier
        /// acknowledged record is there.
        #[test]
        fn crash_during_a_flush_keeps_every_acknowledged_record(steps in proptest::collection::vec(step(), 1..40), at in any::<prop::sample::Index>(), small in any::<bool>(), seed in any::<u64>()) {
            use rand::SeedableRng;
            let fs = SimFs::new();
            let plan = FaultPlan::new();
            let disk = Disk::Sim(fs.clone(), plan.clone());
            let k = at.index(steps.len());
            let rotate = if small { SMALL_ROTATE_BYTES } else { LARGE_ROTATE_BYTES };
            let after = run_steps(&disk, &steps[..k], rotate);
            let before = after.last().unwrap().clone();
            let mut want_after = before.clone();
            model_apply(&mut want_after, &steps[k]);
            let failed = run_local(async {
                let (log, _) = open_log(&disk, rotate).await.unwrap();
                plan.fail_sync_after(0);
                log_apply(&log, &before, &steps[k]).await.is_err()
            });
            plan.fail_sync_after(-1);
            fs.crash(&mut rand::rngs::StdRng::seed_from_u64(seed));
            let got = reopen(&disk).unwrap();
            if failed {
                prop_assert!(got == before || got == want_after, "after a crash mid-step {:?}: {:?}\nbefore: {:?}\nafter: {:?}", steps[k], got, before, want_after);
            } else {
                // The step needed no flush of its own (nothing to
                // truncate or purge): it changed nothing.
                prop_assert_eq!(&got, &before);
            }
        }
    }

    #[test]
    fn damage_before_the_last_flush_refuses_to_start() {
        let steps: Vec<Step> = (0..6)
            .map(|i| Step::Append {
                g: i % GROUPS,
                n: 1,
                term: 1,
            })
            .collect();
        for (frame, refuses) in [(2u64, true), (5, false)] {
            let dir = tempfile::tempdir().unwrap();
            let disk = Disk::Real(dir.path().to_path_buf());
            let after = run_steps(&disk, &steps, LARGE_ROTATE_BYTES);
            let seg = dir.path().join(
                files(dir.path())
                    .into_iter()
                    .find(|n| n.starts_with("log-"))
                    .unwrap(),
            );
            // One small entry per flush: flush i is the frame at block i.
            let mut bytes = std::fs::read(&seg).unwrap();
            bytes[(frame * segments::FRAME_ALIGN_BYTES) as usize + 40] ^= 0x10;
            std::fs::write(&seg, &bytes).unwrap();
            if refuses {
                let err = reopen(&disk).expect_err("acknowledged data is damaged");
                assert!(matches!(err, Error::LogCorrupt { .. }), "{err}");
                assert!(err.to_string().contains("not a torn last write"), "{err}");
            } else {
                // The same flip in the last flush is a torn write: dropped.
                assert_eq!(reopen(&disk).unwrap(), after[after.len() - 2]);
            }
        }
    }

    /// A data directory written by the first log format (buffered appends
    /// to `seg-N.log`) opens with its state and is migrated: afterwards
    /// only the new segments exist, and they hold the same state.
    #[test]
    fn a_first_format_log_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = Vec::new();
        let mut payload = Vec::new();
        encode_record(
            &mut payload,
            &Record::Append {
                group: 1,
                entries: (1..=4).map(|i| entry(2, i)).collect(),
            },
        );
        encode_record(
            &mut payload,
            &Record::Vote {
                group: 2,
                vote: Vote::new(3, 1),
            },
        );
        data.extend(legacy::frame(&payload));
        payload.clear();
        encode_record(
            &mut payload,
            &Record::Purge {
                group: 1,
                upto: log_id(2, 1),
            },
        );
        data.extend(legacy::frame(&payload));
        // A torn last write, never acknowledged.
        let torn = legacy::frame(&payload);
        data.extend(&torn[..torn.len() / 2]);
        std::fs::write(dir.path().join("seg-00000000000000000001.log"), &data).unwrap();
        let disk = Disk::Real(dir.path().to_path_buf());
        let want: Model = vec![
            (Vec::new(), None, None),
            (
                (2..=4).map(|i| log_id(2, i)).collect(),
                None,
                Some(log_id(2, 1)),
            ),
            (Vec::new(), Some(Vote::new(3, 1)), None),
        ];
        assert_eq!(reopen(&disk).unwrap(), want);
        let names = files(dir.path());
        assert!(
            names.iter().all(|n| !n.ends_with(".log")),
            "old files are removed: {names:?}"
        );
        assert_eq!(reopen(&disk).unwrap(), want, "the migrated log reopens");
    }

    /// A damaged first-format log is refused, not migrated.
    #[test]
    fn a_damaged_first_format_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut payload = Vec::new();
        encode_record(
            &mut payload,
            &Record::Vote {
                group: 0,
                vote: Vote::new(1, 1),
            },
        );
        let mut data = legacy::frame(&payload);
        data.extend(legacy::frame(&payload));
        data[10] ^= 1;
        std::fs::write(dir.path().join("seg-00000000000000000001.log"), &data).unwrap();
        let err = reopen(&Disk::Real(dir.path().to_path_buf())).expect_err("damaged");
        assert!(err.to_string().contains("not a torn last write"), "{err}");
        assert!(
            files(dir.path()).iter().any(|n| n.ends_with(".log")),
            "kept"
        );
    }

    #[test]
    fn checkpoint_records_are_recognised_without_decoding() {
        let mut out = Vec::new();
        encode_record(
            &mut out,
            &Record::Checkpoint {
                groups: vec![GroupLog::default()],
            },
        );
        assert!(is_checkpoint(&out[RECORD_HEADER_BYTES..]));
        let groups: Vec<GroupLog> = (0..3)
            .map(|g| {
                let mut gl = GroupLog::default();
                gl.entries.insert(g + 1, entry(1, g + 1));
                gl.vote = Some(Vote::new(g, 1));
                gl
            })
            .collect();
        let (mut owned, mut borrowed) = (Vec::new(), Vec::new());
        encode_record(
            &mut owned,
            &Record::Checkpoint {
                groups: groups.clone(),
            },
        );
        encode_record(&mut borrowed, &CheckpointRef(&groups));
        assert_eq!(
            owned, borrowed,
            "a borrowed checkpoint encodes as an owned one"
        );
        out.clear();
        encode_record(
            &mut out,
            &Record::Vote {
                group: 0,
                vote: Vote::new(1, 1),
            },
        );
        assert!(!is_checkpoint(&out[RECORD_HEADER_BYTES..]));
    }
}
