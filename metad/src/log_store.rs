//! The raft log of every group a replica hosts, in one append-only file
//! set with group commit.
//!
//! Owns: the log segments under `<data>/log/`, each group's entries, vote,
//! committed id and purge point (in memory, rebuilt from the segments on
//! start), and the thread that writes and fdatasyncs.
//!
//! Why one log for all groups: a write is durable only after an fdatasync,
//! and on this class of disk one fdatasync costs about as much as a few
//! hundred small writes. Appends from all G groups that arrive while a sync
//! runs go out together in the next one (like etcd's single WAL), instead
//! of G files each paying for its own sync.
//!
//! Invariants:
//! - `append` acknowledges (`LogFlushed`) only after the bytes holding the
//!   entries are fdatasynced; `save_vote` returns only after the vote is.
//! - Each flush writes one frame, `[len u32][crc32c u32][records]`, a record
//!   being `[len u32][bincode body]`. On replay a bad frame is a torn write
//!   (cut off, never acknowledged) only if it is the newest segment's last
//!   frame: it claims to end at or past the end of the file, or it and all
//!   after it are zeros. A bad frame with data after it is damage, and the
//!   replica refuses to start rather than silently drop acknowledged
//!   entries (raft's safety rests on them).
//! - A segment past [`LOG_SEGMENT_ROTATE_BYTES`] is replaced by a new one
//!   that starts with a checkpoint of all live state; older segments are
//!   deleted only after the checkpoint is durable.
//! - After a failed write or fdatasync nothing more is written (the page
//!   cache may have dropped the failed pages; retrying could report data
//!   durable that is not): every later append fails and the replica stops.

use crate::error::{Error, Result};
use crate::limits::{LOG_RECORD_MAX_BYTES, LOG_SEGMENT_ROTATE_BYTES};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use tokio::sync::{oneshot, Notify};

const FRAME_HEADER_BYTES: usize = 8;
const RECORD_HEADER_BYTES: usize = 4;

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

/// The encoded size of one entry, as a checkpoint or append writes it.
fn entry_bytes(e: &Entry) -> u64 {
    // Sizing plain data cannot fail; 0 would only under-count.
    bincode::serialized_size(e).unwrap_or(0)
}

fn entries_bytes<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> u64 {
    entries.into_iter().map(entry_bytes).sum()
}

fn encode_record<T: Serialize>(out: &mut Vec<u8>, rec: &T) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    // Serialising plain data into a Vec cannot fail.
    bincode::serialize_into(&mut *out, rec).expect("bincode into a Vec");
    let body_len = out.len() - start - RECORD_HEADER_BYTES;
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
}

/// Wraps `records` in a frame (one flush).
fn frame(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + records.len());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(records).to_le_bytes());
    out.extend_from_slice(records);
    out
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

/// Why the frame at `off` of `data` is unreadable, if it is.
fn frame_problem(data: &[u8], off: usize) -> Option<(String, bool)> {
    // Returns (reason, is_torn_tail_shape).
    let rest = &data[off..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Some(("a frame header is cut short".into(), true));
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
    if len == 0 {
        let zeros = rest.iter().all(|&b| b == 0);
        return Some(("an empty frame".into(), zeros));
    }
    if len > LOG_RECORD_MAX_BYTES {
        return Some((
            format!("a frame length of {len} bytes is impossible"),
            rest.iter().skip(8).all(|&b| b == 0),
        ));
    }
    if len > rest.len() - FRAME_HEADER_BYTES {
        return Some((
            format!("a frame of {len} bytes runs past the end of the file"),
            true,
        ));
    }
    if crc32c::crc32c(&rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]) != crc {
        // The last write, possibly followed by zeros a crash left in an
        // extended file.
        let last = rest[FRAME_HEADER_BYTES + len..].iter().all(|&b| b == 0);
        return Some(("a frame fails its crc32c".into(), last));
    }
    None
}

enum Job {
    Append {
        bytes: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Rotate {
        seq: u64,
        bytes: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
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
    waiters: Vec<Waiter>,
    segment_bytes: u64,
    segment_seq: u64,
    last_checkpoint_bytes: u64,
    rotate_bytes: u64,
    failed: Option<String>,
}

/// The shared log; one per replica.
pub struct SharedLog {
    inner: RefCell<Inner>,
    wake: Notify,
    jobs: std::sync::mpsc::Sender<Job>,
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:020}.log")
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let ent = ent.map_err(|e| Error::io(dir, e))?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
        {
            if let Ok(seq) = num.parse::<u64>() {
                segs.push((seq, ent.path()));
            }
        }
    }
    segs.sort();
    Ok(segs)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
    /// Opens (creating if needed) the log in `dir` for `groups` groups and
    /// replays it. Must be called inside a tokio `LocalSet`: it spawns the
    /// task that batches flushes.
    pub fn open(dir: &Path, groups: u32) -> Result<(Rc<Self>, ReplayReport)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut state: Vec<GroupLog> = vec![GroupLog::default(); groups as usize];
        let segs = list_segments(dir)?;
        let mut report = ReplayReport {
            segments: segs.len(),
            ..Default::default()
        };
        let mut last_len = 0u64;
        let mut last_checkpoint_bytes = 0u64;
        for (i, (_, path)) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let mut off = 0usize;
            let mut bad: Option<(String, bool)> = None;
            while off < data.len() {
                if let Some(p) = frame_problem(&data, off) {
                    bad = Some(p);
                    break;
                }
                let len =
                    u32::from_le_bytes(data[off..off + 4].try_into().unwrap_or_default()) as usize;
                let payload = &data[off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len];
                let corrupt = |reason: String| Error::LogCorrupt {
                    path: path.clone(),
                    offset: off as u64,
                    reason,
                };
                for body in records(payload).map_err(corrupt)? {
                    let rec: Record = bincode::deserialize(body).map_err(|e| {
                        corrupt(format!("a record in a good frame does not decode: {e}"))
                    })?;
                    if matches!(rec, Record::Checkpoint { .. }) {
                        last_checkpoint_bytes = len as u64;
                    }
                    apply_record(&mut state, rec).map_err(corrupt)?;
                    report.records += 1;
                }
                off += FRAME_HEADER_BYTES + len;
            }
            if let Some((reason, torn_shape)) = bad {
                if !is_last || !torn_shape {
                    let reason = if is_last {
                        format!("{reason}, with more data after it (not a torn last write)")
                    } else {
                        format!("{reason} in a segment that is not the newest")
                    };
                    return Err(Error::LogCorrupt {
                        path: path.clone(),
                        offset: off as u64,
                        reason,
                    });
                }
                // A torn tail: the crash hit while this write was in flight,
                // so it was never acknowledged. Cut it off so new records
                // follow the last good one.
                report.torn_tail_bytes = (data.len() - off) as u64;
                tracing::warn!(path = %path.display(), offset = off, torn = report.torn_tail_bytes, %reason, "cutting a torn tail off the log");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                f.set_len(off as u64).map_err(|e| Error::io(path, e))?;
                f.sync_all().map_err(|e| Error::io(path, e))?;
            }
            if is_last {
                last_len = off as u64;
            }
        }
        let (seq, path) = match segs.last() {
            Some((seq, path)) => (*seq, path.clone()),
            None => {
                let p = dir.join(segment_name(1));
                File::create(&p).map_err(|e| Error::io(&p, e))?;
                fsync_dir(dir).map_err(|e| Error::io(dir, e))?;
                (1, p)
            }
        };
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let dir_owned = dir.to_path_buf();
        std::thread::Builder::new()
            .name("metad-log".into())
            .spawn(move || writer_thread(dir_owned, file, rx))
            .map_err(|e| Error::io(dir, e))?;
        let live_bytes = state
            .iter()
            .map(|g| entries_bytes(g.entries.values()))
            .collect();
        let log = Rc::new(SharedLog {
            inner: RefCell::new(Inner {
                groups: state,
                live_bytes,
                pending: Vec::new(),
                waiters: Vec::new(),
                segment_bytes: last_len,
                segment_seq: seq,
                last_checkpoint_bytes,
                rotate_bytes: LOG_SEGMENT_ROTATE_BYTES,
                failed: None,
            }),
            wake: Notify::new(),
            jobs: tx,
        });
        let flusher = log.clone();
        tokio::task::spawn_local(async move { flusher.flush_loop().await });
        Ok((log, report))
    }

    /// Rewrites the segment into a new one past `bytes` instead of
    /// [`LOG_SEGMENT_ROTATE_BYTES`] (tests use small segments).
    pub fn set_rotate_bytes(&self, bytes: u64) {
        self.inner.borrow_mut().rotate_bytes = bytes;
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
                    let job = if inner.segment_bytes + inner.pending.len() as u64 > rotate_at {
                        // The checkpoint holds the effect of every pending
                        // record, so they need not be written separately.
                        inner.pending.clear();
                        let mut rec = Vec::new();
                        encode_record(
                            &mut rec,
                            &Record::Checkpoint {
                                groups: inner.groups.clone(),
                            },
                        );
                        let bytes = frame(&rec);
                        inner.segment_seq += 1;
                        inner.segment_bytes = bytes.len() as u64;
                        inner.last_checkpoint_bytes = bytes.len() as u64;
                        Job::Rotate {
                            seq: inner.segment_seq,
                            bytes,
                            done: tx,
                        }
                    } else {
                        let bytes = frame(&std::mem::take(&mut inner.pending));
                        inner.segment_bytes += bytes.len() as u64;
                        Job::Append { bytes, done: tx }
                    };
                    (job, rx, waiters)
                };
                let res = match self.jobs.send(job) {
                    Ok(()) => rx
                        .await
                        .unwrap_or_else(|_| Err(io::Error::other("the log writer stopped"))),
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

fn writer_thread(dir: PathBuf, mut file: File, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut failed: Option<String> = None;
    while let Ok(job) = jobs.recv() {
        let (done, res) = match job {
            Job::Append { bytes, done } => {
                let res = match &failed {
                    Some(why) => Err(io::Error::other(why.clone())),
                    None => file.write_all(&bytes).and_then(|_| file.sync_data()),
                };
                (done, res)
            }
            Job::Rotate { seq, bytes, done } => {
                let res = match &failed {
                    Some(why) => Err(io::Error::other(why.clone())),
                    None => rotate(&dir, seq, &bytes).map(|f| file = f),
                };
                (done, res)
            }
        };
        if let Err(e) = &res {
            failed.get_or_insert_with(|| e.to_string());
        }
        let _ = done.send(res);
    }
}

/// Writes a new segment holding `bytes` (a checkpoint), makes it durable,
/// then deletes the older segments.
fn rotate(dir: &Path, seq: u64, bytes: &[u8]) -> io::Result<File> {
    let path = dir.join(segment_name(seq));
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fsync_dir(dir)?;
    for ent in std::fs::read_dir(dir)? {
        let ent = ent?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
        {
            if n.parse::<u64>().is_ok_and(|n| n < seq) {
                std::fs::remove_file(ent.path())?;
            }
        }
    }
    fsync_dir(dir)?;
    Ok(f)
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

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry {
        let value = vec![index as u8; (index % 97) as usize * 13];
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Proposal(vec![Command {
                client: 0,
                seq: 0,
                now_ms: 0,
                op: Op::Write(vec![KeyWrite {
                    key: b"k".to_vec(),
                    expected: None,
                    value: Some(value),
                }]),
            }])),
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

    /// Performs `s` on the log exactly as the model did (same indices).
    async fn log_apply(log: &SharedLog, before: &Model, s: &Step) {
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
                    .unwrap();
            }
            Step::Truncate { g, back } => {
                let gm = &before[g as usize];
                let keep = gm.0.len().saturating_sub(back as usize);
                if let Some(first_gone) = gm.0.get(keep) {
                    log.truncate(g, first_gone.index).unwrap();
                }
                log.sync().await.unwrap();
            }
            Step::Purge { g, forward } => {
                if let Some(upto) = before[g as usize].0.get(forward as usize).copied() {
                    log.purge(g, upto).unwrap();
                }
                log.sync().await.unwrap();
            }
            Step::Vote { g, term } => log.save_vote(g, Vote::new(term, 1)).await.unwrap(),
        }
    }

    fn run_local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    /// What the live entries of `m`'s group `g` weigh, encoded.
    fn model_bytes(m: &Model, g: u32) -> u64 {
        m[g as usize]
            .0
            .iter()
            .map(|l| entry_bytes(&entry(l.leader_id.term, l.index)))
            .sum()
    }

    fn reopen(dir: &Path) -> Result<Model> {
        run_local(async {
            let (log, _) = SharedLog::open(dir, GROUPS)?;
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

    fn segment(dir: &Path) -> PathBuf {
        list_segments(dir).unwrap().last().unwrap().1.clone()
    }

    /// Runs `steps`, returning the model after each and the segment length
    /// after each (when no rotation happened).
    fn run_steps(dir: &Path, steps: &[Step], rotate_bytes: u64) -> Vec<(Model, u64)> {
        run_local(async {
            let (log, _) = SharedLog::open(dir, GROUPS).unwrap();
            log.set_rotate_bytes(rotate_bytes);
            let mut m: Model = vec![(Vec::new(), None, None); GROUPS as usize];
            let mut after = vec![(m.clone(), 0)];
            for s in steps {
                log_apply(&log, &m, s).await;
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
                let len = std::fs::metadata(segment(dir))
                    .map(|md| md.len())
                    .unwrap_or(0);
                after.push((m.clone(), len));
            }
            after
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever the sequence of appends, truncations, purges and votes,
        /// with segments rotating or not: a reopened log is exactly the
        /// state it acknowledged.
        #[test]
        fn reopened_log_equals_what_was_acknowledged(steps in proptest::collection::vec(step(), 1..60), small in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let after = run_steps(dir.path(), &steps, if small { 2048 } else { 64 << 20 });
            let got = reopen(dir.path()).unwrap();
            prop_assert_eq!(&got, &after.last().unwrap().0);
            if small {
                prop_assert!(list_segments(dir.path()).unwrap().len() <= 2, "old segments are deleted after a rotation");
            }
        }

        /// A crash leaves any prefix of the last write (optionally followed
        /// by zeros, as a file system may after a crash): the log reopens to
        /// the state of the last complete flush.
        #[test]
        fn torn_tail_reopens_to_last_complete_flush(steps in proptest::collection::vec(step(), 1..40), cut in any::<prop::sample::Index>(), zeros in 0usize..5000) {
            let dir = tempfile::tempdir().unwrap();
            let after = run_steps(dir.path(), &steps, 64 << 20);
            let seg = segment(dir.path());
            let len = std::fs::metadata(&seg).unwrap().len();
            // Cut inside the last flush only: everything before it was
            // acknowledged and must survive.
            let prev_len = after[after.len() - 2].1;
            let at = prev_len + cut.index((len - prev_len + 1) as usize) as u64;
            let orig = std::fs::read(&seg).unwrap();
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(at).unwrap();
            if at < len {
                f.set_len(at + zeros as u64).unwrap();
            }
            drop(f);
            // The zeros may restore the very bytes cut (a record ending in
            // zero bytes): then nothing was lost.
            let now = std::fs::read(&seg).unwrap();
            let intact = now.len() >= orig.len() && now[..orig.len()] == orig[..];
            let got = reopen(dir.path()).unwrap();
            let want = if intact { &after.last().unwrap().0 } else { &after[after.len() - 2].0 };
            prop_assert_eq!(&got, want);
        }
    }

    #[test]
    fn damage_before_the_last_flush_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let steps: Vec<Step> = (0..6)
            .map(|i| Step::Append {
                g: i % GROUPS,
                n: 5,
                term: 1,
            })
            .collect();
        let after = run_steps(dir.path(), &steps, 64 << 20);
        let seg = segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        // A bit in the second flush: not a torn tail, acknowledged data.
        let at = after[1].1 as usize + 20;
        bytes[at] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        let err = reopen(dir.path()).expect_err("must refuse");
        assert!(matches!(err, Error::LogCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("not a torn last write"), "{err}");
        // The same flip in the last flush is a torn write: dropped.
        let dir2 = tempfile::tempdir().unwrap();
        let after = run_steps(dir2.path(), &steps, 64 << 20);
        let seg = segment(dir2.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = after[after.len() - 2].1 as usize + 20;
        bytes[at] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        assert_eq!(reopen(dir2.path()).unwrap(), after[after.len() - 2].0);
    }

    #[test]
    fn damage_in_an_older_segment_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let steps: Vec<Step> = (0..3)
            .map(|i| Step::Append {
                g: i % GROUPS,
                n: 5,
                term: 1,
            })
            .collect();
        run_steps(dir.path(), &steps, 64 << 20);
        // A second segment after the first, as a rotation leaves it.
        let first = segment(dir.path());
        std::fs::copy(&first, dir.path().join(segment_name(2))).unwrap();
        let mut bytes = std::fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&first, &bytes).unwrap();
        let err = reopen(dir.path()).expect_err("must refuse");
        assert!(err.to_string().contains("not the newest"), "{err}");
    }
}
