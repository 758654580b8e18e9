//! One engine shard: the segment files, index and write path owned by one
//! core. Everything here runs on a single thread; state lives in a `RefCell`
//! that is never borrowed across an `.await`.
//!
//! Invariants:
//! - the index only points at records whose flush has completed its
//!   fdatasync (a put is acknowledged after that, never before);
//! - flushes are serialized and each covers batches of one segment only, so
//!   only the last flush of the newest segment can be torn by a crash;
//! - sequence numbers and flush ids grow with log position, so replaying the
//!   log in order (checkpoint, then the tail) rebuilds the same index;
//! - after a failed write or fsync the shard is poisoned: it refuses writes
//!   until reopened.

use crate::device::{Device, DeviceFile};
use crate::error::{Error, Result};
use crate::format::{
    BatchHeader, RecordKind, SegmentHeader, BATCH_HEADER_BYTES, FLAG_FIRST, FLAG_LAST,
    FLAG_PIPELINED, RECORD_HEADER_BYTES,
};
use crate::limits::*;
use crate::reader::{align_down, align_up};
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::StreamExt;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

mod batch;
mod checkpoint_io;
mod compact;
mod prepare;
mod recover;
mod scrub;

use batch::{PayloadCrc, PendingBatch, Stage};

/// A pending batch of a shard over device `D`.
type Batch<D> = PendingBatch<<<D as Device>::File as DeviceFile>::Buf>;
pub use compact::CompactReport;

pub(crate) const CHECKPOINT_FILE: &str = "index.ckpt";
const CHECKPOINT_TMP_FILE: &str = "index.ckpt.tmp";

fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.log")
}
fn free_name(id: u64) -> String {
    format!("free-{id:016x}.log")
}
fn parse_name(name: &str, prefix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(".log")?;
    u64::from_str_radix(hex, 16).ok()
}

/// Tunables of one shard. Limits that are not tunable are in [`crate::limits`].
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Size of each segment file (multiple of 4 KiB).
    pub segment_size_bytes: u64,
    /// Write an index checkpoint after this many bytes were appended.
    pub checkpoint_interval_bytes: u64,
    /// Segments whose live bytes are below this fraction of their used bytes
    /// are compacted.
    pub compaction_live_ratio: f64,
    /// How often background compaction looks for work; `None` = only when
    /// asked.
    pub compaction_interval: Option<Duration>,
    /// Scrubber read budget in bytes per second.
    pub scrub_bytes_per_sec: u64,
    /// Pause between scrub passes; `None` = only when asked.
    pub scrub_interval: Option<Duration>,
    /// Freed segment files kept for reuse (overwriting is cheaper than
    /// allocating fresh blocks).
    pub free_segments_keep: usize,
    /// Spare segments written with zeros ahead of need while the shard is
    /// quiet (0 turns preparation off).
    pub prepared_segments: usize,
    /// Target size of one group-commit batch (see [`BATCH_BUFFER_BYTES`]).
    pub batch_bytes: usize,
    /// Backlog from which an unpipelined flush takes only half (see
    /// [`FLUSH_SPLIT_MIN_BYTES`]).
    pub flush_split_min_bytes: usize,
    /// Smallest whole-block first payload for which a batch stages its
    /// payloads in an aligned buffer (see [`STAGED_PAYLOAD_MIN_BYTES`]).
    pub staged_payload_min_bytes: usize,
    /// Writes in one flush from which it writes them all without O_DSYNC and
    /// then issues one fdatasync (see [`FLUSH_ONE_SYNC_MIN_WRITES`]); 0 never
    /// does.
    pub flush_one_sync_min_writes: usize,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT_BYTES,
            checkpoint_interval_bytes: 1 << 30,
            compaction_live_ratio: 0.5,
            compaction_interval: Some(Duration::from_secs(10)),
            scrub_bytes_per_sec: 64 << 20,
            scrub_interval: Some(Duration::from_secs(24 * 3600)),
            free_segments_keep: 6,
            prepared_segments: 4,
            batch_bytes: BATCH_BUFFER_BYTES,
            flush_split_min_bytes: FLUSH_SPLIT_MIN_BYTES,
            staged_payload_min_bytes: STAGED_PAYLOAD_MIN_BYTES,
            flush_one_sync_min_writes: FLUSH_ONE_SYNC_MIN_WRITES,
        }
    }
}

impl ShardConfig {
    /// Checks the configuration, saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        let s = self.segment_size_bytes;
        if !(SEGMENT_SIZE_MIN_BYTES..=SEGMENT_SIZE_MAX_BYTES).contains(&s)
            || s % IO_ALIGN_BYTES != 0
        {
            return Err(Error::Config(format!(
                "segment_size_bytes is {s}; it must be a multiple of {IO_ALIGN_BYTES} between {SEGMENT_SIZE_MIN_BYTES} and {SEGMENT_SIZE_MAX_BYTES}"
            )));
        }
        if !(0.0..=1.0).contains(&self.compaction_live_ratio) {
            return Err(Error::Config(format!(
                "compaction_live_ratio is {}; it must be between 0 and 1",
                self.compaction_live_ratio
            )));
        }
        if self.scrub_bytes_per_sec == 0 {
            return Err(Error::Config("scrub_bytes_per_sec must be above 0".into()));
        }
        if !(IO_ALIGN_BYTES as usize..=BATCH_BUFFER_BYTES).contains(&self.batch_bytes) {
            return Err(Error::Config(format!(
                "batch_bytes is {}; it must be between {IO_ALIGN_BYTES} and {BATCH_BUFFER_BYTES}",
                self.batch_bytes
            )));
        }
        Ok(())
    }

    /// Largest payload this configuration can store for an id of `id_len`.
    pub fn payload_max(&self, id_len: usize) -> usize {
        // Room in an empty segment, less the largest gap before an aligned payload.
        let room = self.segment_size_bytes
            - SEGMENT_HEADER_BYTES
            - BATCH_HEADER_BYTES as u64
            - (IO_ALIGN_BYTES - 1);
        let room = room.saturating_sub((RECORD_HEADER_BYTES + id_len) as u64) as usize;
        room.min(SHARD_SIZE_MAX_BYTES)
    }
}

/// Where a live record (or tombstone) is, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub segment: u64,
    pub offset: u32,
    pub rec_len: u32,
    pub payload_len: u32,
    pub crc: u32,
    pub seq: u64,
    pub tomb: bool,
}

/// What `stat` tells about a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardStat {
    pub len: u32,
    pub crc: u32,
    pub seq: u64,
}

/// One line of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryItem {
    pub id: Vec<u8>,
    pub len: u32,
    pub crc: u32,
}

/// A shard whose stored bytes failed their checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadShard {
    pub id: Vec<u8>,
    pub shard: usize,
    pub segment: u64,
    pub offset: u64,
    pub reason: String,
}

/// Progress of the scrubber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubProgress {
    pub passes_done: u64,
    pub running: bool,
    pub pass_bytes_total: u64,
    pub pass_bytes_done: u64,
    pub records_verified: u64,
    pub bad_found: u64,
    pub reports_dropped: u64,
}

/// Counters and gauges of one shard (summed over shards by the engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub live_shards: u64,
    pub tombstones: u64,
    pub live_bytes: u64,
    pub dead_bytes: u64,
    pub segments: u64,
    pub free_segments: u64,
    pub puts: u64,
    pub gets: u64,
    pub deletes: u64,
    pub checksum_errors: u64,
    pub io_errors: u64,
    pub flushes: u64,
    /// Flushes that went to disk while the one before was still in flight.
    pub pipelined_flushes: u64,
    /// Flushes that took half of a large backlog, leaving the rest to follow
    /// pipelined.
    pub split_flushes: u64,
    /// Batches written from the aligned buffer their payloads were staged
    /// in (no copy at flush time).
    pub staged_batches: u64,
    /// Flushes of several writes that end in one fdatasync instead of
    /// O_DSYNC on each write (counted when the fdatasync is issued, so a
    /// failed one counts too).
    pub one_sync_flushes: u64,
    pub flushed_bytes: u64,
    /// Time spent in flush writes and in their fdatasync (microseconds).
    pub flush_write_micros: u64,
    pub flush_sync_micros: u64,
    pub compactions: u64,
    pub compacted_bytes: u64,
    pub checkpoints: u64,
    /// Spare segments being written with zeros right now.
    pub preparing: u64,
    pub torn_tails_cut: u64,
    pub corrupt_regions: u64,
    /// Shards refusing writes after a failed write or fsync (until reopen).
    pub poisoned_shards: u64,
    pub scrub: ScrubProgress,
}

impl Stats {
    /// Adds another shard's figures to these.
    pub fn add(&mut self, o: &Stats) {
        self.live_shards += o.live_shards;
        self.tombstones += o.tombstones;
        self.live_bytes += o.live_bytes;
        self.dead_bytes += o.dead_bytes;
        self.segments += o.segments;
        self.free_segments += o.free_segments;
        self.puts += o.puts;
        self.gets += o.gets;
        self.deletes += o.deletes;
        self.checksum_errors += o.checksum_errors;
        self.io_errors += o.io_errors;
        self.flushes += o.flushes;
        self.split_flushes += o.split_flushes;
        self.staged_batches += o.staged_batches;
        self.one_sync_flushes += o.one_sync_flushes;
        self.pipelined_flushes += o.pipelined_flushes;
        self.flushed_bytes += o.flushed_bytes;
        self.flush_write_micros += o.flush_write_micros;
        self.flush_sync_micros += o.flush_sync_micros;
        self.compactions += o.compactions;
        self.compacted_bytes += o.compacted_bytes;
        self.checkpoints += o.checkpoints;
        self.preparing += o.preparing;
        self.torn_tails_cut += o.torn_tails_cut;
        self.corrupt_regions += o.corrupt_regions;
        self.poisoned_shards += o.poisoned_shards;
        let (a, b) = (&mut self.scrub, &o.scrub);
        a.passes_done += b.passes_done;
        a.running |= b.running;
        a.pass_bytes_total += b.pass_bytes_total;
        a.pass_bytes_done += b.pass_bytes_done;
        a.records_verified += b.records_verified;
        a.bad_found += b.bad_found;
        a.reports_dropped += b.reports_dropped;
    }
}

struct Segment<F> {
    file: Rc<F>,
    size: u64,
    /// Durable end of the data (start of the next batch).
    end: u64,
    live_bytes: u64,
    min_seq: u64,
    compacting: bool,
}

struct State<F: DeviceFile> {
    index: BTreeMap<Box<[u8]>, Entry>,
    segments: BTreeMap<u64, Segment<F>>,
    free: Vec<u64>,
    next_seq: u64,
    next_flush_id: u64,
    next_segment_id: u64,
    /// Segment and position where the next batch goes.
    cursor_segment: u64,
    cursor_pos: u64,
    /// Bytes `[align_down(end), end)` of the cursor segment's durable end.
    tail: (u64, Vec<u8>),
    /// Segment and end of the newest flush issued and not yet committed.
    issued: Option<(u64, u64)>,
    /// Id of the newest committed flush (what a checkpoint may claim).
    last_committed_flush: u64,
    pending: VecDeque<PendingBatch<F::Buf>>,
    /// Tombstones in the index (kept in step by `apply` and compaction).
    tombs: u64,
    /// Records per id waiting in `pending`.
    pending_ids: std::collections::HashMap<Box<[u8]>, u32>,
    poisoned: Option<String>,
    bytes_since_checkpoint: u64,
    stats: Stats,
}

/// One core's shard of the engine.
pub struct Shard<D: Device> {
    index_no: usize,
    dev: D,
    cfg: ShardConfig,
    st: RefCell<State<D::File>>,
    kick: async_channel::Sender<()>,
    kick_rx: async_channel::Receiver<()>,
    /// Flushes on their way to disk.
    flushing: Cell<usize>,
    checkpointing: Cell<bool>,
    compacting: Cell<bool>,
    /// Highest flush id seen in any header during recovery (even in a torn
    /// flush), so new flush ids never repeat one left on disk.
    seen_flush_max: Cell<u64>,
    fg_inflight: Cell<usize>,
    /// When the last foreground request finished.
    last_fg: Cell<std::time::Instant>,
    preparing: Cell<bool>,
    bad_tx: async_channel::Sender<BadShard>,
    scrub: Cell<ScrubProgress>,
}

/// Counts a foreground operation in flight so background work can yield.
struct Fg<'a>(&'a Cell<usize>, &'a Cell<std::time::Instant>);
impl<'a> Fg<'a> {
    fn new(c: &'a Cell<usize>, last: &'a Cell<std::time::Instant>) -> Self {
        c.set(c.get() + 1);
        Fg(c, last)
    }
}
impl Drop for Fg<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
        self.1.set(std::time::Instant::now());
    }
}

fn io_err(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let op = op.into();
    move |e| Error::io(op, e)
}

impl<D: Device> Shard<D> {
    /// Opens the shard on `dev`, rebuilding the index from the checkpoint
    /// and the log. Start the background tasks with [`Shard::run_flusher`]
    /// (required for writes), [`Shard::run_compactor`] and
    /// [`Shard::run_scrubber`].
    pub async fn open(
        index_no: usize,
        dev: D,
        cfg: ShardConfig,
        bad_tx: async_channel::Sender<BadShard>,
    ) -> Result<Rc<Self>> {
        cfg.validate()?;
        let (kick, kick_rx) = async_channel::bounded(1);
        let st = State {
            index: BTreeMap::new(),
            segments: BTreeMap::new(),
            free: Vec::new(),
            next_seq: 1,
            next_flush_id: 1,
            next_segment_id: 1,
            cursor_segment: 0,
            cursor_pos: SEGMENT_HEADER_BYTES,
            tail: (0, Vec::new()),
            issued: None,
            last_committed_flush: 0,
            pending: VecDeque::new(),
            tombs: 0,
            pending_ids: std::collections::HashMap::new(),
            poisoned: None,
            bytes_since_checkpoint: 0,
            stats: Stats::default(),
        };
        let shard = Rc::new(Shard {
            index_no,
            dev,
            cfg,
            st: RefCell::new(st),
            kick,
            kick_rx,
            flushing: Cell::new(0),
            checkpointing: Cell::new(false),
            compacting: Cell::new(false),
            seen_flush_max: Cell::new(0),
            fg_inflight: Cell::new(0),
            last_fg: Cell::new(std::time::Instant::now()),
            preparing: Cell::new(false),
            bad_tx,
            scrub: Cell::new(ScrubProgress::default()),
        });
        shard.recover().await?;
        Ok(shard)
    }

    // ------------------------------------------------------------------
    // Foreground API
    // ------------------------------------------------------------------

    fn check_id(id: &[u8]) -> Result<()> {
        if id.is_empty() || id.len() > ID_LEN_MAX_BYTES {
            return Err(Error::IdLength {
                len: id.len(),
                max: ID_LEN_MAX_BYTES,
            });
        }
        Ok(())
    }

    /// Stores `payload` under `id`, replacing any earlier version. Returns
    /// once the record is durable.
    pub async fn put(&self, id: &[u8], payload: &[u8]) -> Result<()> {
        Self::check_id(id)?;
        let max = self.cfg.payload_max(id.len());
        if payload.len() > max {
            return Err(Error::ShardTooLarge {
                len: payload.len(),
                max,
            });
        }
        let _fg = Fg::new(&self.fg_inflight, &self.last_fg);
        let crc = crc32c::crc32c(payload);
        let rx = self
            .append(RecordKind::Put, id, payload, PayloadCrc::of(crc), None)?
            .ok_or(Error::Closed)?;
        self.st.borrow_mut().stats.puts += 1;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Deletes `id`. Returns whether it existed. Durable on return.
    pub async fn delete(&self, id: &[u8]) -> Result<bool> {
        Self::check_id(id)?;
        let _fg = Fg::new(&self.fg_inflight, &self.last_fg);
        // A put still waiting for its flush counts: the tombstone goes after
        // it in the log, so the delete wins whatever order they land in.
        let exists = {
            let st = self.st.borrow();
            matches!(st.index.get(id), Some(e) if !e.tomb) || st.pending_ids.contains_key(id)
        };
        if !exists {
            return Ok(false);
        }
        let rx = self
            .append(RecordKind::Tombstone, id, &[], PayloadCrc::of(0), None)?
            .ok_or(Error::Closed)?;
        self.st.borrow_mut().stats.deletes += 1;
        rx.await.map_err(|_| Error::Closed)??;
        Ok(true)
    }

    /// Size, checksum and sequence of `id`, without reading it.
    pub fn stat(&self, id: &[u8]) -> Result<ShardStat> {
        Self::check_id(id)?;
        match self.st.borrow().index.get(id) {
            Some(e) if !e.tomb => Ok(ShardStat {
                len: e.payload_len,
                crc: e.crc,
                seq: e.seq,
            }),
            _ => Err(Error::NotFound),
        }
    }

    /// Reads `id`; the bytes are returned only after their crc32c verifies.
    pub async fn get(&self, id: &[u8]) -> Result<Vec<u8>> {
        self.get_with(id, |p, _| p.to_vec()).await
    }

    /// Reads `id` and hands its verified payload and crc32c to `f` (no copy
    /// out of the read buffer); `f` runs only if the payload verifies.
    pub async fn get_with<R>(&self, id: &[u8], f: impl FnOnce(&[u8], u32) -> R) -> Result<R> {
        Self::check_id(id)?;
        let _fg = Fg::new(&self.fg_inflight, &self.last_fg);
        self.st.borrow_mut().stats.gets += 1;
        let mut attempt = 0;
        let mut f = Some(f);
        loop {
            let (e, file) = {
                let st = self.st.borrow();
                match st.index.get(id) {
                    Some(e) if !e.tomb => {
                        let Some(seg) = st.segments.get(&e.segment) else {
                            return Err(Error::NotFound);
                        };
                        (*e, seg.file.clone())
                    }
                    _ => return Err(Error::NotFound),
                }
            };
            match read_payload_with(&*file, &e, &mut f).await {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {
                    // The record may have moved (compaction) between lookup
                    // and read; only a second failure at the same place is rot.
                    let moved = self.st.borrow().index.get(id).is_some_and(|now| *now != e);
                    if moved && attempt == 0 {
                        attempt += 1;
                        continue;
                    }
                    self.report_bad(id, &e, "checksum mismatch on read");
                    return Err(Error::Checksum {
                        segment: e.segment,
                        offset: e.offset as u64,
                    });
                }
                Err(err) => {
                    self.st.borrow_mut().stats.io_errors += 1;
                    return Err(Error::io(format!("reading segment {}", e.segment), err));
                }
            }
        }
    }

    /// Up to `limit` inventory lines for ids after `start_after`, in id order.
    pub fn inventory(&self, start_after: Option<&[u8]>, limit: usize) -> Vec<InventoryItem> {
        let st = self.st.borrow();
        let range = match start_after {
            Some(s) => st
                .index
                .range::<[u8], _>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded)),
            None => st.index.range::<[u8], _>(..),
        };
        range
            .filter(|(_, e)| !e.tomb)
            .take(limit)
            .map(|(id, e)| InventoryItem {
                id: id.to_vec(),
                len: e.payload_len,
                crc: e.crc,
            })
            .collect()
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        let st = self.st.borrow();
        let mut s = st.stats;
        s.tombstones = st.tombs;
        s.live_shards = st.index.len() as u64 - st.tombs;
        s.segments = st.segments.len() as u64;
        s.free_segments = st.free.len() as u64;
        s.live_bytes = st.segments.values().map(|g| g.live_bytes).sum();
        let used: u64 = st
            .segments
            .values()
            .map(|g| g.end - SEGMENT_HEADER_BYTES)
            .sum();
        s.dead_bytes = used.saturating_sub(s.live_bytes);
        s.scrub = self.scrub.get();
        s.preparing = self.preparing.get() as u64;
        s.poisoned_shards = st.poisoned.is_some() as u64;
        s
    }

    fn report_bad(&self, id: &[u8], e: &Entry, reason: &str) {
        let mut st = self.st.borrow_mut();
        st.stats.checksum_errors += 1;
        let bad = BadShard {
            id: id.to_vec(),
            shard: self.index_no,
            segment: e.segment,
            offset: e.offset as u64,
            reason: reason.into(),
        };
        if self.bad_tx.try_send(bad).is_err() {
            let mut p = self.scrub.get();
            p.reports_dropped += 1;
            self.scrub.set(p);
        }
    }

    // ------------------------------------------------------------------
    // Write path: append into pending batches, flush with group commit
    // ------------------------------------------------------------------

    fn append(
        &self,
        kind: RecordKind,
        id: &[u8],
        payload: &[u8],
        crc: PayloadCrc,
        cond: Option<(u64, u32)>,
    ) -> Result<Option<oneshot::Receiver<Result<()>>>> {
        let mut st = self.st.borrow_mut();
        if let Some(cause) = &st.poisoned {
            return Err(Error::Poisoned {
                cause: cause.clone(),
            });
        }
        let st = &mut *st;
        if let Some((seg, off)) = cond {
            // A compaction copy is only worth writing if the original is
            // still the live version and nothing newer for this id is queued
            // (else the copy could outrank it when the log is replayed).
            let here = st
                .index
                .get(id)
                .is_some_and(|e| e.segment == seg && e.offset == off);
            if !here || st.pending_ids.contains_key(id) {
                return Ok(None);
            }
        }
        // An existing segment keeps the size it was made with.
        let seg_size = st
            .segments
            .get(&st.cursor_segment)
            .map_or(self.cfg.segment_size_bytes, |s| s.size);
        let hdr = BATCH_HEADER_BYTES as u64;

        // Reuse the open batch if the record fits in it and in the segment.
        let fits_open = st.pending.back().is_some_and(|b| {
            let bound = b.bound_with(id.len(), payload.len());
            !b.closed
                && b.segment == st.cursor_segment
                && (b.is_empty() || bound <= self.cfg.batch_bytes)
                && b.start + hdr + bound as u64 <= seg_size
        });
        if !fits_open {
            if let Some(b) = st.pending.back_mut() {
                if !b.closed {
                    b.close(true);
                    st.cursor_pos = b.end();
                }
            }
            let single = Batch::<D>::single_bound(id.len(), payload.len()) as u64;
            let mut start = st.cursor_pos;
            if start + hdr + single > seg_size {
                if SEGMENT_HEADER_BYTES + hdr + single > self.cfg.segment_size_bytes {
                    return Err(Error::ShardTooLarge {
                        len: payload.len(),
                        max: self.cfg.payload_max(id.len()),
                    });
                }
                st.cursor_segment = st.next_segment_id;
                st.next_segment_id += 1;
                start = SEGMENT_HEADER_BYTES;
            }
            st.pending
                .push_back(PendingBatch::new(st.cursor_segment, start));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let b = st.pending.back_mut().expect("a batch was just ensured");
        let (tx, rx) = oneshot::channel();
        let stage = Stage {
            min_payload: self.cfg.staged_payload_min_bytes,
            bytes: self.cfg.batch_bytes,
        };
        b.push(kind, id, payload, crc, seq, cond, tx, stage, |n| {
            self.dev.alloc(n)
        });
        st.cursor_pos = b.start + hdr + b.bound() as u64;
        *st.pending_ids.entry(id.into()).or_insert(0) += 1;
        let _ = self.kick.try_send(());
        Ok(Some(rx))
    }

    /// The group-commit loop: run it as a task on the shard's executor.
    ///
    /// Up to [`FLUSHES_INFLIGHT_MAX`] flushes are on their way to disk at
    /// once. A second one starts only while the first is in the same,
    /// existing segment and ended on a block boundary (so the two never
    /// write the same block), and carries [`FLAG_PIPELINED`]. Flushes
    /// complete in issue order: a flush is acknowledged only after every
    /// flush before it, so a crash can tear at most the two newest, neither
    /// acknowledged (recovery cuts both; see `recover.rs`).
    pub async fn run_flusher(self: Rc<Self>) {
        let mut last_batch = 0usize;
        let mut inflight = futures::stream::FuturesOrdered::new();
        loop {
            let mut gathered = false;
            while inflight.len() < FLUSHES_INFLIGHT_MAX {
                let pipelined = !inflight.is_empty();
                if !self.may_start_flush(pipelined) {
                    break;
                }
                // Writers acknowledged by the last flush are about to send
                // their next record; if fewer than last time are queued, give
                // them a moment so one flush carries them all.
                let pending = self.pending_records();
                if !gathered && pending < last_batch && self.fg_inflight.get() > pending {
                    gathered = true;
                    let timer = Box::pin(glommio::timer::sleep(Duration::from_micros(
                        FLUSH_GATHER_MICROS,
                    )));
                    if pipelined {
                        if let Either::Left((Some((job, r)), _)) =
                            select(inflight.next(), timer).await
                        {
                            self.finish_flush(job, r);
                        }
                    } else {
                        timer.await;
                    }
                    continue;
                }
                gathered = false;
                let Some(job) = self.take_flush(pipelined) else {
                    break;
                };
                last_batch = job.batches.iter().map(|b| b.records.len()).sum();
                self.flushing.set(self.flushing.get() + 1);
                let me = self.clone();
                inflight.push_back(async move {
                    let mut job = job;
                    let r = me
                        .write_flush(job.seg_id, &mut job.batches, job.flags, &job.plan)
                        .await;
                    (job, r)
                });
            }
            if inflight.is_empty() {
                self.maybe_checkpoint().await;
                if self.kick_rx.recv().await.is_err() {
                    return;
                }
                continue;
            }
            let kick = Box::pin(self.kick_rx.recv());
            match select(inflight.next(), kick).await {
                Either::Left((Some((job, r)), _)) => self.finish_flush(job, r),
                Either::Left((None, _)) | Either::Right((Ok(()), _)) => {}
                Either::Right((Err(_), _)) => {
                    while let Some((job, r)) = inflight.next().await {
                        self.finish_flush(job, r);
                    }
                    return;
                }
            }
        }
    }

    fn pending_records(&self) -> usize {
        self.st
            .borrow()
            .pending
            .iter()
            .map(|b| b.records.len())
            .sum()
    }

    /// Whether a flush may start now (`pipelined`: while another is in
    /// flight).
    fn may_start_flush(&self, pipelined: bool) -> bool {
        let st = self.st.borrow();
        let Some(first) = st.pending.front() else {
            return false;
        };
        if !pipelined {
            return true;
        }
        match st.issued {
            Some((seg, end)) => {
                st.poisoned.is_none()
                    && first.segment == seg
                    && first.start == end
                    && end % IO_ALIGN_BYTES == 0
                    && st.segments.contains_key(&seg)
            }
            None => false,
        }
    }

    /// Takes the batches of the first pending segment (up to the limit) as
    /// one flush and fixes its place, id and flags.
    fn take_flush(&self, pipelined: bool) -> Option<FlushJob<Batch<D>>> {
        let mut st = self.st.borrow_mut();
        let seg_id = st.pending.front()?.segment;
        let mut taken: Vec<Batch<D>> = Vec::new();
        let mut bytes = 0usize;
        let mut records = 0usize;
        // With no flush in flight, a large backlog goes out as two flushes,
        // the second pipelined behind the first: when the first comes back
        // its writers queue their next records while the disk still works
        // on the second, instead of all writers and the disk taking turns.
        let (backlog, batches) = st
            .pending
            .iter()
            .take_while(|b| b.segment == seg_id)
            .fold((0usize, 0usize), |(n, k), b| (n + b.bound(), k + 1));
        let target = if !pipelined && batches >= 2 && backlog >= self.cfg.flush_split_min_bytes {
            backlog.min(FLUSH_MAX_BYTES).div_ceil(2)
        } else {
            FLUSH_MAX_BYTES
        };
        while let Some(b) = st.pending.front() {
            if b.segment != seg_id
                || (bytes > 0 && (bytes + b.bound() > FLUSH_MAX_BYTES || bytes >= target))
            {
                break;
            }
            bytes += b.bound();
            records += b.records.len();
            taken.push(st.pending.pop_front().expect("front exists"));
        }
        if taken.len() < batches && bytes >= target {
            st.stats.split_flushes += 1;
        }
        let start = taken.first()?.start;
        let last = taken.last_mut()?;
        if !last.closed {
            // The open batch ends this flush. Padded to a block boundary, the
            // next flush may go to disk while this one is still on its way;
            // unpadded, the next flush rewrites this one's last block and
            // must wait. Pad when several writers share the flush (more will
            // follow) and the padding costs at most a quarter of it.
            last.close(false);
            let end = last.end();
            let pad = align_up(end) - end;
            if pad > 0 && records >= 2 && pad * 4 <= end - start {
                last.close(true);
            }
            st.cursor_pos = last.end();
        }
        let end = taken.last()?.end();
        let plan = self.plan_flush(&mut st, seg_id);
        st.issued = Some((seg_id, end));
        Some(FlushJob {
            seg_id,
            batches: taken,
            flags: if pipelined { FLAG_PIPELINED } else { 0 },
            plan,
        })
    }

    /// The id of the next flush in `seg_id`, where it must start, and the
    /// durable bytes of its first block it rewrites.
    fn plan_flush(&self, st: &mut State<D::File>, seg_id: u64) -> FlushPlan {
        let flush_id = st.next_flush_id;
        st.next_flush_id += 1;
        match st.issued {
            // Behind a flush in flight: it ended on a block boundary.
            Some((seg, end)) if seg == seg_id => FlushPlan {
                flush_id,
                start: end,
                tail: Vec::new(),
            },
            _ => FlushPlan {
                flush_id,
                start: st
                    .segments
                    .get(&seg_id)
                    .map_or(SEGMENT_HEADER_BYTES, |s| s.end),
                tail: if st.tail.0 == seg_id {
                    st.tail.1.clone()
                } else {
                    Vec::new()
                },
            },
        }
    }

    /// Acknowledges (or fails) a flush that came back from the disk; flushes
    /// come back in issue order.
    fn finish_flush(&self, job: FlushJob<Batch<D>>, r: Result<Vec<u8>>) {
        self.flushing.set(self.flushing.get() - 1);
        if self.flushing.get() == 0 {
            self.st.borrow_mut().issued = None;
        }
        let poisoned = self.st.borrow().poisoned.clone();
        match (r, poisoned) {
            (Ok(tail), None) => {
                if job.flags & FLAG_PIPELINED != 0 {
                    self.st.borrow_mut().stats.pipelined_flushes += 1;
                }
                self.commit_batches(job.seg_id, job.plan.flush_id, job.batches, tail)
            }
            // Written, but a flush before it failed: never acknowledge what
            // follows a failure.
            (Ok(_), Some(cause)) => self.fail_batches(job.batches, Error::Poisoned { cause }),
            (Err(err), _) => {
                self.st.borrow_mut().issued = None;
                self.fail_batches(job.batches, err)
            }
        }
    }

    async fn ensure_segment(&self, seg_id: u64) -> Result<Rc<D::File>> {
        if let Some(s) = self.st.borrow().segments.get(&seg_id) {
            return Ok(s.file.clone());
        }
        let size = self.cfg.segment_size_bytes;
        let recycled = { self.st.borrow_mut().free.pop() };
        let file = match recycled {
            Some(old) => {
                let f = async {
                    self.dev
                        .rename(&free_name(old), &segment_name(seg_id))
                        .await?;
                    self.dev.open(&segment_name(seg_id)).await
                }
                .await;
                match f {
                    Ok(f) if f.len() == size => f,
                    Ok(_) | Err(_) => {
                        let _ = self.dev.remove(&segment_name(seg_id)).await;
                        self.create_segment_file(seg_id, size).await?
                    }
                }
            }
            None => self.create_segment_file(seg_id, size).await?,
        };
        let mut hb = file.alloc(SEGMENT_HEADER_BYTES as usize);
        hb.as_mut().fill(0);
        SegmentHeader {
            segment_id: seg_id,
            shard: self.index_no as u32,
            segment_bytes: size,
        }
        .encode(hb.as_mut());
        file.write_at(hb, 0)
            .await
            .map_err(io_err("writing a segment header"))?;
        file.sync().await.map_err(io_err("syncing a new segment"))?;
        self.dev
            .sync_dir()
            .await
            .map_err(io_err("syncing the shard directory"))?;
        let file = Rc::new(file);
        self.st.borrow_mut().segments.insert(
            seg_id,
            Segment {
                file: file.clone(),
                size,
                end: SEGMENT_HEADER_BYTES,
                live_bytes: 0,
                min_seq: u64::MAX,
                compacting: false,
            },
        );
        Ok(file)
    }

    async fn create_segment_file(&self, seg_id: u64, size: u64) -> Result<D::File> {
        match self.dev.create(&segment_name(seg_id), size).await {
            Ok(f) => Ok(f),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOSPC)
                    || e.raw_os_error() == Some(libc::EDQUOT) =>
            {
                Err(Error::DiskFull {
                    segment_bytes: size,
                    source: e,
                })
            }
            Err(e) => Err(Error::io(format!("creating segment {seg_id}"), e)),
        }
    }

    /// Writes one flush (all `batches`, one segment) and syncs it; returns
    /// the bytes of its final partial block, which the next flush rewrites.
    async fn write_flush(
        &self,
        seg_id: u64,
        batches: &mut [Batch<D>],
        extra_flags: u16,
        plan: &FlushPlan,
    ) -> Result<Vec<u8>> {
        let file = match self.ensure_segment(seg_id).await {
            Ok(f) => f,
            Err(e @ Error::DiskFull { .. }) => return Err(e),
            Err(e) => {
                // A half-made segment may be on disk: start over after reopen.
                let mut st = self.st.borrow_mut();
                st.stats.io_errors += 1;
                st.poisoned = Some(e.to_string());
                return Err(e);
            }
        };
        let (flush_id, tail, seg_end) = (plan.flush_id, &plan.tail, plan.start);
        let mut new_tail = Vec::new();
        let n = batches.len();
        // Several durable writes cost one cache flush each on a disk without
        // FUA; from a few on, plain writes and one fdatasync cost less.
        let n_writes: usize = batches
            .iter()
            .map(|b| 1 + usize::from(b.staged_at().is_some()))
            .sum();
        let min = self.cfg.flush_one_sync_min_writes;
        let one_sync = file.writes_are_durable() && min > 0 && n_writes >= min;
        let f = &file;
        let write = move |buf, pos| async move {
            if one_sync {
                f.write_at_unsynced(buf, pos).await
            } else {
                f.write_at(buf, pos).await
            }
        };
        let mut writes = Vec::with_capacity(n_writes);
        for (i, b) in batches.iter_mut().enumerate() {
            if i == 0 && b.start != seg_end {
                return Err(self.poison_layout(format!(
                    "flush at {} but segment {seg_id} ends at {seg_end}",
                    b.start
                )));
            }
            let lead: &[u8] = if i == 0 && b.start % IO_ALIGN_BYTES != 0 {
                if tail.len() as u64 != b.start % IO_ALIGN_BYTES {
                    return Err(
                        self.poison_layout(format!("log tail of segment {seg_id} out of step"))
                    );
                }
                &tail[..]
            } else {
                &[]
            };
            let at = align_down(b.start);
            let hs = (b.start - at) as usize;
            let body_at = hs + BATCH_HEADER_BYTES;
            let body_end = body_at + b.body_len();
            // A staged batch goes out as two writes: header and table from
            // here up to the block where its staged payloads start, then
            // the staged buffer itself. Any other batch is one write.
            let staged_at = b.staged_at().map(|h| body_at + h);
            let head_end = staged_at.unwrap_or((align_up(b.end()) - at) as usize);
            debug_assert_eq!(head_end % IO_ALIGN_BYTES as usize, 0);
            let mut buf = file.alloc(head_end);
            let dst = buf.as_mut();
            dst[..lead.len()].copy_from_slice(lead);
            let mut flags = extra_flags;
            if i == 0 {
                flags |= FLAG_FIRST;
            }
            if i + 1 == n {
                flags |= FLAG_LAST;
            }
            let body_crc = b.write_body(&mut dst[body_at..staged_at.unwrap_or(body_end)]);
            let h = BatchHeader {
                flags,
                segment_id: seg_id,
                flush_id,
                body_len: b.body_len() as u32,
                pad_len: b.pad,
                table_len: b.table_len() as u32,
                body_crc,
            };
            h.encode(&mut dst[hs..body_at]);
            let end = (b.end() - at) as usize;
            match b.take_stage() {
                None => {
                    // Padding and the rest of the last block are zeros on disk.
                    dst[body_end..].fill(0);
                    debug_assert_eq!(body_crc, crc32c::crc32c(&dst[body_at..body_end]));
                    if i + 1 == n {
                        new_tail = dst[end & !(IO_ALIGN_BYTES as usize - 1)..end].to_vec();
                    }
                    writes.push(write(buf, at));
                }
                Some((mut stage, used)) => {
                    self.st.borrow_mut().stats.staged_batches += 1;
                    let write_len = align_up(used as u64) as usize;
                    stage.as_mut()[used..write_len].fill(0);
                    <D::File as DeviceFile>::shrink(&mut stage, write_len);
                    debug_assert_eq!(
                        body_crc,
                        crc32c::crc32c_append(
                            crc32c::crc32c(&dst[body_at..head_end]),
                            &stage.as_ref()[..used]
                        )
                    );
                    debug_assert_eq!(head_end + write_len, (align_up(b.end()) - at) as usize);
                    if i + 1 == n {
                        let from = (end & !(IO_ALIGN_BYTES as usize - 1)) - head_end;
                        new_tail = stage.as_ref()[from..end - head_end].to_vec();
                    }
                    writes.push(write(buf, at));
                    writes.push(write(stage, at + head_end as u64));
                }
            }
        }
        let t0 = std::time::Instant::now();
        let results = futures::future::join_all(writes).await;
        for r in results {
            r.map_err(|e| self.poison(format!("write to segment {seg_id} failed: {e}"), e))?;
        }
        let t1 = std::time::Instant::now();
        if one_sync || !file.writes_are_durable() {
            if one_sync {
                self.st.borrow_mut().stats.one_sync_flushes += 1;
            }
            file.sync().await.map_err(|e| {
                self.poison(format!("fdatasync of segment {seg_id} failed: {e}"), e)
            })?;
        }
        {
            let mut st = self.st.borrow_mut();
            st.stats.flush_write_micros += (t1 - t0).as_micros() as u64;
            st.stats.flush_sync_micros += t1.elapsed().as_micros() as u64;
        }
        Ok(new_tail)
    }

    fn poison_layout(&self, what: String) -> Error {
        let cause = format!("internal log position error: {what}");
        self.st.borrow_mut().poisoned = Some(cause.clone());
        tracing::error!(shard = self.index_no, %cause, "engine shard poisoned");
        Error::Layout(cause)
    }

    fn poison(&self, cause: String, e: std::io::Error) -> Error {
        let mut st = self.st.borrow_mut();
        st.stats.io_errors += 1;
        tracing::error!(shard = self.index_no, %cause, "engine shard poisoned: refusing writes until reopened");
        st.poisoned = Some(cause.clone());
        Error::Io {
            op: cause,
            source: e,
        }
    }

    fn commit_batches(
        &self,
        seg_id: u64,
        flush_id: u64,
        batches: Vec<Batch<D>>,
        new_tail: Vec<u8>,
    ) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        st.last_committed_flush = st.last_committed_flush.max(flush_id);
        let mut bytes = 0u64;
        let last_end = batches.last().map_or(SEGMENT_HEADER_BYTES, |b| b.end());
        for b in batches {
            bytes += b.end() - b.start;
            let body_at = b.start + BATCH_HEADER_BYTES as u64;
            for r in b.records {
                let e = r.entry(seg_id, body_at);
                if let Some(seg) = st.segments.get_mut(&seg_id) {
                    seg.min_seq = seg.min_seq.min(r.seq);
                }
                unpend(&mut st.pending_ids, &r.id);
                apply(
                    &mut st.index,
                    &mut st.segments,
                    &mut st.tombs,
                    r.id,
                    e,
                    r.cond,
                );
                if let Some(w) = r.waiter {
                    let _ = w.send(Ok(()));
                }
            }
        }
        if let Some(seg) = st.segments.get_mut(&seg_id) {
            seg.end = last_end;
        }
        st.tail = (seg_id, new_tail);
        st.stats.flushes += 1;
        st.stats.flushed_bytes += bytes;
        st.bytes_since_checkpoint += bytes;
    }

    fn fail_batches(&self, batches: Vec<Batch<D>>, err: Error) {
        let disk_full = matches!(err, Error::DiskFull { .. });
        let msg = err.to_string();
        let mut st = self.st.borrow_mut();
        // Everything queued behind the failed flush was placed after it, so
        // it fails too.
        let in_flush = batches.len();
        let mut all: Vec<Batch<D>> = batches;
        all.extend(st.pending.drain(..));
        let failed_seg = all.first().map(|b| b.segment);
        for (i, b) in all.into_iter().enumerate() {
            for r in b.records {
                unpend(&mut st.pending_ids, &r.id);
                if let Some(w) = r.waiter {
                    let e = if i < in_flush && !disk_full {
                        // The writes of the failed flush get the I/O error itself.
                        Error::Io {
                            op: msg.clone(),
                            source: std::io::Error::other(msg.clone()),
                        }
                    } else if disk_full {
                        Error::DiskFull {
                            segment_bytes: self.cfg.segment_size_bytes,
                            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                        }
                    } else if let Some(c) = &st.poisoned {
                        Error::Poisoned { cause: c.clone() }
                    } else {
                        Error::Io {
                            op: msg.clone(),
                            source: std::io::Error::other(msg.clone()),
                        }
                    };
                    let _ = w.send(Err(e));
                }
            }
        }
        if st.poisoned.is_none() {
            // Nothing was written (the new segment could not be made): go
            // back to the newest durable position and try again next time.
            match st.segments.iter().next_back().map(|(&id, s)| (id, s.end)) {
                Some((id, end)) => {
                    st.cursor_segment = id;
                    st.cursor_pos = end;
                }
                None => {
                    st.cursor_segment = failed_seg.unwrap_or(st.cursor_segment);
                    st.cursor_pos = SEGMENT_HEADER_BYTES;
                }
            }
        }
    }
}

/// Reads the payload of `e` and, if its crc32c matches the index, gives it
/// (and the crc) to `f` — taken from the option, so it runs at most once.
/// `Ok(None)` if it does not match.
pub(crate) async fn read_payload_with<F: DeviceFile, R>(
    file: &F,
    e: &Entry,
    f: &mut Option<impl FnOnce(&[u8], u32) -> R>,
) -> std::io::Result<Option<R>> {
    if e.payload_len == 0 {
        if crc32c::crc32c(&[]) != e.crc {
            return Ok(None);
        }
        return Ok(f.take().map(|f| f(&[], e.crc)));
    }
    let at = align_down(e.offset as u64);
    let end = align_up(e.offset as u64 + e.payload_len as u64);
    let buf = file.read_at(at, (end - at) as usize).await?;
    let b = buf.as_ref();
    let off = (e.offset as u64 - at) as usize;
    match b.get(off..off + e.payload_len as usize) {
        Some(p) if payload_ok(p, e) => Ok(f.take().map(|f| f(p, e.crc))),
        _ => Ok(None),
    }
}

/// True when `p` is the payload `e` describes.
pub(crate) fn payload_ok(p: &[u8], e: &Entry) -> bool {
    p.len() == e.payload_len as usize && crc32c::crc32c(p) == e.crc
}

fn unpend(pending_ids: &mut std::collections::HashMap<Box<[u8]>, u32>, id: &[u8]) {
    if let Some(n) = pending_ids.get_mut(id) {
        *n -= 1;
        if *n == 0 {
            pending_ids.remove(id);
        }
    }
}

/// Applies one durable record to the index. `cond` (compaction copies) makes
/// it conditional on the index still pointing at the old place. While
/// scanning, a tombstone for an unknown id shadows nothing and is dropped.
fn apply<F>(
    index: &mut BTreeMap<Box<[u8]>, Entry>,
    segments: &mut BTreeMap<u64, Segment<F>>,
    tombs: &mut u64,
    id: Box<[u8]>,
    e: Entry,
    cond: Option<(u64, u32)>,
) -> bool {
    let cur = index.get(&id).copied();
    match (cur, cond) {
        (Some(c), Some((seg, off))) if c.segment != seg || c.offset != off => return false,
        (None, Some(_)) => return false,
        (Some(c), _) if c.seq > e.seq => return false,
        (None, None) if e.tomb => return false,
        _ => {}
    }
    if let Some(c) = cur {
        if let Some(s) = segments.get_mut(&c.segment) {
            s.live_bytes = s.live_bytes.saturating_sub(c.rec_len as u64);
        }
        // Saturating: while replaying over a checkpoint the count is rebuilt
        // afterwards (checkpoint entries are not counted as they load).
        *tombs = tombs.saturating_sub(c.tomb as u64);
    }
    if let Some(s) = segments.get_mut(&e.segment) {
        s.live_bytes += e.rec_len as u64;
    }
    *tombs += e.tomb as u64;
    index.insert(id, e);
    true
}

impl<D: Device> Shard<D> {
    /// Waits until every queued write has been flushed (or failed).
    pub async fn drain(&self) {
        let mut waited = 0u64;
        while !self.st.borrow().pending.is_empty() || self.flushing.get() > 0 {
            glommio::timer::sleep(Duration::from_micros(200)).await;
            waited += 1;
            if waited % 50_000 == 0 {
                tracing::warn!(
                    shard = self.index_no,
                    "still waiting for queued writes to flush"
                );
            }
        }
    }

    /// Flushes what is queued and writes a checkpoint, so the next open
    /// replays nothing.
    pub async fn close(&self) -> Result<()> {
        self.drain().await;
        if self.st.borrow().poisoned.is_some() {
            return Ok(());
        }
        self.checkpoint().await
    }

    /// This shard's number.
    pub fn index_no(&self) -> usize {
        self.index_no
    }
}

/// Where a flush goes and what it rewrites (fixed when it is taken from the
/// queue, so ids and places follow issue order).
pub(crate) struct FlushPlan {
    pub flush_id: u64,
    /// File offset of its first batch header.
    pub start: u64,
    /// Durable bytes before `start` in its first block.
    pub tail: Vec<u8>,
}

/// A flush on its way to disk.
struct FlushJob<B> {
    seg_id: u64,
    batches: Vec<B>,
    flags: u16,
    plan: FlushPlan,
}
