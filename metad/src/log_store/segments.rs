//! The log's files and the task that writes them: preallocated,
//! zero-filled segment files written with O_DIRECT and O_DSYNC through
//! io_uring (a [`super::ring::RingDevice`] driven by the replica's own
//! thread, or any engine device in tests), one frame per flush; retired
//! segments are kept and reused.
//!
//! Owns: `<dir>/log-N.seg` (segments; N only grows), `<dir>/spare-N.seg`
//! (retired segments waiting for reuse; one is prepared on open if there is
//! none), `<dir>/prep-N.seg` (a spare being prepared), the frame format, the replay of
//! segment images and the migration of a log in the first format
//! (`seg-N.log`, see [`super::legacy`]).
//!
//! A frame (one flush) is a 24-byte header — magic `TLG2`, payload length
//! (u32), the segment's number N (u64), crc32c of length, N and payload
//! (u32), 4 zero bytes — then the payload, then zeros up to the next 4 KiB
//! boundary.
//!
//! Invariants:
//! - A frame starts on a 4 KiB boundary and fills whole blocks, so writing
//!   one never touches a block that holds an acknowledged frame: a torn
//!   write can damage only itself.
//! - One frame write is in flight at a time, acknowledged only once it
//!   completed with O_DSYNC (or write + fdatasync on a device without it):
//!   only the newest segment's last frame can be torn.
//! - Frames of segment N are written only into a file durably named
//!   `log-N.seg` (a spare is renamed and the directory synced before its
//!   first frame), and N only grows, so what a reused file held before
//!   never passes for a frame of its new life.
//! - Segment files are written in full with zeros when created (except the
//!   spare prepared on open, which is only allocated), so an
//!   append overwrites allocated blocks and its O_DSYNC write commits no
//!   file-system metadata (about 1.8× the durable appends per second of
//!   appending to a growing file on this disk; LIMITS.md).
//! - Replay starts at the newest segment that begins with a checkpoint. A
//!   frame that fails its checks ends its segment; it is damage (the
//!   replica refuses to start) if a valid frame of the same segment follows
//!   it, or if it names its segment in an older segment (an older segment
//!   was complete before the next one began). Otherwise it is the torn
//!   last write, never acknowledged, and the next flush overwrites it.
//!   Known limit: if that next flush is shorter, the torn frame's later
//!   blocks stay; only a payload that itself holds a well-formed frame of
//!   this segment, on a 4 KiB boundary, could then be read as "a valid
//!   frame after a bad one" at a later start — the replica would refuse to
//!   start (never serve wrong data).
//! - After a failed write nothing more is written (fjall's rule: a retry
//!   could report durable what is not).

use super::{apply_record, is_checkpoint, records, GroupLog, Record, ReplayReport};
use crate::error::{Error, Result};
use crate::limits::LOG_RECORD_MAX_BYTES;
use futures::StreamExt;
use std::io;
use std::path::{Path, PathBuf};
use tessera_engine::device::{Device, DeviceFile};
use tokio::sync::oneshot;

/// Bytes of a frame header.
pub(super) const FRAME_HEADER_BYTES: usize = 24;
/// Frames start on this boundary and fill whole blocks of it (the disk's
/// physical sector; O_DIRECT's alignment).
pub(super) const FRAME_ALIGN_BYTES: u64 = 4096;
/// Segment sizes are multiples of this.
pub(super) const SEGMENT_ALIGN_BYTES: u64 = 1 << 20;
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TLG2");
/// Bytes per write, and writes in flight, when a new segment is zero-filled.
const ZERO_FILL_CHUNK_BYTES: usize = 1 << 20;
const ZERO_FILL_IN_FLIGHT: usize = 8;
/// Bytes per read when a segment is replayed.
const READ_CHUNK_BYTES: usize = 4 << 20;
/// Retired segments kept for reuse (the next rotation needs one); older
/// ones past this are deleted.
pub(super) const LOG_SPARES_MAX: usize = 1;

fn align_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Bytes a frame of `payload` bytes takes in its segment.
pub(super) fn frame_len(payload: usize) -> u64 {
    align_up((FRAME_HEADER_BYTES + payload) as u64, FRAME_ALIGN_BYTES)
}

/// Size of a new segment: room for `rotate_at` bytes of frames and for
/// twice its first frame (the checkpoint), so it is never rewritten into
/// the next segment at once.
pub(super) fn segment_capacity(rotate_at: u64, checkpoint_frame: u64) -> u64 {
    align_up(rotate_at.max(2 * checkpoint_frame), SEGMENT_ALIGN_BYTES)
}

fn segment_name(seq: u64) -> String {
    format!("log-{seq:020}.seg")
}

fn spare_name(seq: u64) -> String {
    format!("spare-{seq:020}.seg")
}

fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

fn crc_of(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut head = [0u8; 12];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&seq.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), payload)
}

/// Writes the frame of `payload` for segment `seq` into `out`, which is
/// exactly `frame_len(payload.len())` bytes.
pub(super) fn encode_frame(out: &mut [u8], seq: u64, payload: &[u8]) {
    debug_assert_eq!(out.len() as u64, frame_len(payload.len()));
    let len = payload.len() as u32;
    out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&crc_of(len, seq, payload).to_le_bytes());
    out[20..24].fill(0);
    out[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload.len()].copy_from_slice(payload);
    out[FRAME_HEADER_BYTES + payload.len()..].fill(0);
}

/// What is at one frame position of a segment.
enum FrameCheck {
    Valid {
        len: usize,
    },
    Invalid {
        reason: String,
        /// The header is this segment's (magic and number match): a frame
        /// was written here and is damaged or torn, rather than never
        /// written.
        names_segment: bool,
    },
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or_default())
}

fn check_frame(data: &[u8], off: usize, seq: u64) -> FrameCheck {
    let rest = &data[off.min(data.len())..];
    if rest.len() < FRAME_HEADER_BYTES {
        return FrameCheck::Invalid {
            reason: "the segment ends here".into(),
            names_segment: false,
        };
    }
    if le_u32(&rest[0..4]) != FRAME_MAGIC {
        return FrameCheck::Invalid {
            reason: "no frame here".into(),
            names_segment: false,
        };
    }
    let len = le_u32(&rest[4..8]) as usize;
    let hseq = u64::from_le_bytes(rest[8..16].try_into().unwrap_or_default());
    if hseq != seq {
        return FrameCheck::Invalid {
            reason: format!("a frame of segment {hseq} (what the reused file held before)"),
            names_segment: false,
        };
    }
    if len > LOG_RECORD_MAX_BYTES || len > rest.len() - FRAME_HEADER_BYTES {
        return FrameCheck::Invalid {
            reason: format!("a frame of {len} bytes runs past the end of its segment"),
            names_segment: true,
        };
    }
    let payload = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    if crc_of(len as u32, seq, payload) != le_u32(&rest[16..20]) {
        return FrameCheck::Invalid {
            reason: "a frame fails its crc32c".into(),
            names_segment: true,
        };
    }
    FrameCheck::Valid { len }
}

/// The frames of one segment image that replay uses.
#[derive(Debug)]
pub(super) struct SegmentScan {
    /// Payload ranges of the valid frames, in order.
    pub frames: Vec<std::ops::Range<usize>>,
    /// Where the next frame goes.
    pub end: u64,
    /// Bytes of a torn last frame (newest segment only).
    pub torn_bytes: u64,
}

/// Reads the frames of segment `seq` out of its image `data`, deciding
/// whether an invalid frame is the torn last write or damage.
pub(super) fn scan_segment(
    data: &[u8],
    seq: u64,
    newest: bool,
    path: &Path,
) -> Result<SegmentScan> {
    let mut frames = Vec::new();
    let mut off = 0usize;
    let bad = loop {
        match check_frame(data, off, seq) {
            FrameCheck::Valid { len } => {
                frames.push(off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len);
                off += frame_len(len) as usize;
            }
            FrameCheck::Invalid {
                reason,
                names_segment,
            } => break (reason, names_segment),
        }
    };
    let (reason, names_segment) = bad;
    let corrupt = |reason: String| Error::LogCorrupt {
        path: path.to_path_buf(),
        offset: off as u64,
        reason,
    };
    let mut p = off + FRAME_ALIGN_BYTES as usize;
    while p + FRAME_HEADER_BYTES <= data.len() {
        if let FrameCheck::Valid { .. } = check_frame(data, p, seq) {
            return Err(corrupt(format!(
                "{reason}, with a valid frame of this segment at byte {p} after it (not a torn last write)"
            )));
        }
        p += FRAME_ALIGN_BYTES as usize;
    }
    if names_segment && !newest {
        return Err(corrupt(format!(
            "{reason} in a segment that is not the newest"
        )));
    }
    let torn_bytes = if names_segment {
        let claimed = le_u32(&data[off + 4..off + 8]) as usize;
        frame_len(claimed).min((data.len() - off) as u64)
    } else {
        0
    };
    Ok(SegmentScan {
        frames,
        end: off as u64,
        torn_bytes,
    })
}

/// Reads all of `f`.
async fn read_all<F: DeviceFile>(f: &F) -> io::Result<Vec<u8>> {
    let len = f.len() as usize;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let want =
            READ_CHUNK_BYTES.min(align_up((len - out.len()) as u64, FRAME_ALIGN_BYTES) as usize);
        let got = f.read_at(out.len() as u64, want).await?;
        let got = got.as_ref();
        if got.is_empty() {
            break;
        }
        let take = got.len().min(len - out.len());
        out.extend_from_slice(&got[..take]);
    }
    Ok(out)
}

/// Work for the writer thread.
pub(super) enum Job {
    /// Writes the frame of `payload` at `pos` of the current segment.
    Append {
        pos: u64,
        payload: Vec<u8>,
        /// Gets the result and `payload` back (its buffer gathers the
        /// records of a later flush).
        done: oneshot::Sender<(io::Result<()>, Vec<u8>)>,
    },
    /// Starts segment `seq` of at least `capacity` bytes with the frame of
    /// `payload` (a checkpoint), then retires the older segments.
    Rotate {
        seq: u64,
        capacity: u64,
        payload: Vec<u8>,
        /// As for `Append` (a checkpoint's buffer above the kept size is
        /// freed by the log).
        done: oneshot::Sender<(io::Result<()>, Vec<u8>)>,
    },
}

/// What the writer found on open.
pub(super) struct Opened {
    pub groups: Vec<GroupLog>,
    pub report: ReplayReport,
    pub seq: u64,
    /// Next write offset in segment `seq`.
    pub pos: u64,
    pub capacity: u64,
    /// Frame bytes of the checkpoint that starts segment `seq` (0 if none).
    pub checkpoint_bytes: u64,
}

struct Writer<D: Device> {
    dev: D,
    dir: PathBuf,
    file: D::File,
    seq: u64,
    capacity: u64,
    failed: Option<String>,
}

fn prep_name(seq: u64) -> String {
    format!("prep-{seq:020}.seg")
}

/// Runs the writer: opens and replays the log on `dev`, reports what it
/// found through `opened`, then serves `jobs` until the log is dropped.
pub(super) async fn run<D: Device>(
    dev: D,
    dir: PathBuf,
    groups: u32,
    segment_bytes: u64,
    opened: tokio::sync::oneshot::Sender<Result<Opened>>,
    mut jobs: futures::channel::mpsc::UnboundedReceiver<Job>,
) {
    let mut w = match Writer::open(dev, dir, groups, segment_bytes).await {
        Ok((mut w, o)) => {
            // Before serving: the first rotation after a start then neither
            // waits for a segment of zeros nor allocates space (a full disk
            // cannot stop it), and a running log does not grow (unless a
            // checkpoint outgrows half a segment).
            w.prepare_spare(segment_bytes).await;
            let _ = opened.send(Ok(o));
            w
        }
        Err(e) => {
            let _ = opened.send(Err(e));
            return;
        }
    };
    let log = w
        .dir
        .file_name()
        .map_or_else(|| "log".into(), |n| n.to_string_lossy().into_owned());
    let reg = tessera_metrics::global();
    let labels = [("log", log.as_str())];
    let write_seconds = reg.histogram(
        "tessera_metad_log_write_seconds",
        "Time of one durable log write (a flush of many records), per log.",
        &labels,
    );
    let written = reg.counter(
        "tessera_metad_log_written_bytes_total",
        "Bytes written durably to the log (frames, with padding), per log.",
        &labels,
    );
    let rotations = reg.counter(
        "tessera_metad_log_rotations_total",
        "Segments started with a checkpoint, per log.",
        &labels,
    );
    while let Some(job) = jobs.next().await {
        let started = std::time::Instant::now();
        let (done, res, bytes, payload) = match job {
            Job::Append { pos, payload, done } => {
                let bytes = frame_len(payload.len());
                (done, w.append(pos, &payload).await, bytes, payload)
            }
            Job::Rotate {
                seq,
                capacity,
                payload,
                done,
            } => {
                rotations.inc();
                let bytes = frame_len(payload.len());
                (
                    done,
                    w.rotate(seq, capacity, &payload).await,
                    bytes,
                    payload,
                )
            }
        };
        if res.is_ok() {
            write_seconds.observe_duration(started.elapsed());
            written.add(bytes);
        }
        if let Err(e) = &res {
            w.failed.get_or_insert_with(|| e.to_string());
        }
        let _ = done.send((res, payload));
    }
}

fn names_by<'a>(names: &'a [String], prefix: &str, suffix: &str) -> Vec<(u64, &'a str)> {
    let mut v: Vec<(u64, &str)> = names
        .iter()
        .filter_map(|n| parse_numbered(n, prefix, suffix).map(|s| (s, n.as_str())))
        .collect();
    v.sort();
    v
}

impl<D: Device> Writer<D> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn open(dev: D, dir: PathBuf, groups: u32, segment_bytes: u64) -> Result<(Self, Opened)> {
        let io_err = |name: &str, e: io::Error| Error::io(&dir.join(name), e);
        let names = dev.list().map_err(|e| Error::io(&dir, e))?;
        let legacy = names_by(&names, "seg-", ".log");
        let segs = names_by(&names, "log-", ".seg");
        // Read the segments from the newest back to the first that starts
        // with a checkpoint: nothing older matters.
        let mut images: Vec<(u64, String, Vec<u8>)> = Vec::new();
        for (seq, name) in segs.iter().rev() {
            let f = dev.open(name).await.map_err(|e| io_err(name, e))?;
            let data = read_all(&f).await.map_err(|e| io_err(name, e))?;
            let starts_with_checkpoint = match check_frame(&data, 0, *seq) {
                FrameCheck::Valid { len } => {
                    records(&data[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len])
                        .ok()
                        .and_then(|r| r.first().map(|body| is_checkpoint(body)))
                        .unwrap_or(false)
                }
                FrameCheck::Invalid { .. } => false,
            };
            images.push((*seq, name.to_string(), data));
            if starts_with_checkpoint {
                break;
            }
        }
        images.reverse();
        let any_valid = images
            .iter()
            .any(|(seq, _, d)| matches!(check_frame(d, 0, *seq), FrameCheck::Valid { .. }));
        if !legacy.is_empty() && !any_valid {
            // The first format: migrate (again, if a migration was cut
            // short before its checkpoint was durable).
            for (_, name) in &segs {
                dev.remove(name).await.map_err(|e| io_err(name, e))?;
            }
            return Self::migrate(dev, dir, groups, segment_bytes, &legacy).await;
        }
        let mut state = vec![GroupLog::default(); groups as usize];
        let mut report = ReplayReport {
            segments: images.len(),
            ..Default::default()
        };
        let Some(newest) = images.last().map(|(s, _, _)| *s) else {
            // A new log. Its number follows any spare's, so no reused
            // file ever holds frames of the number it is given.
            let seq = names_by(&names, "spare-", ".seg")
                .last()
                .map_or(1, |(s, _)| s + 1);
            let w = Self::fresh(dev, dir, seq, segment_capacity(segment_bytes, 0)).await?;
            let capacity = w.capacity;
            return Ok((
                w,
                Opened {
                    groups: state,
                    report,
                    seq,
                    pos: 0,
                    capacity,
                    checkpoint_bytes: 0,
                },
            ));
        };
        let mut pos = 0;
        let mut checkpoint_bytes = 0;
        for (seq, name, data) in &images {
            let path = dir.join(name);
            let scan = scan_segment(data, *seq, *seq == newest, &path)?;
            for (i, range) in scan.frames.iter().enumerate() {
                let corrupt = |reason: String| Error::LogCorrupt {
                    path: path.clone(),
                    offset: (range.start - FRAME_HEADER_BYTES) as u64,
                    reason,
                };
                for body in records(&data[range.clone()]).map_err(corrupt)? {
                    let rec: Record = bincode::deserialize(body).map_err(|e| {
                        corrupt(format!("a record in a good frame does not decode: {e}"))
                    })?;
                    if i == 0 && *seq == newest && matches!(rec, Record::Checkpoint { .. }) {
                        checkpoint_bytes = frame_len(range.len());
                    }
                    apply_record(&mut state, rec).map_err(corrupt)?;
                    report.records += 1;
                }
            }
            if *seq == newest {
                pos = scan.end;
                report.torn_tail_bytes = scan.torn_bytes;
                if scan.torn_bytes > 0 {
                    tracing::warn!(path = %path.display(), offset = scan.end, torn = scan.torn_bytes, "the log's last write was torn by a crash; it was never acknowledged and is overwritten");
                }
            }
        }
        let name = segment_name(newest);
        let file = dev.open(&name).await.map_err(|e| io_err(&name, e))?;
        let capacity = file.len();
        for (_, name) in &legacy {
            // Left over from a migration whose checkpoint is durable.
            dev.remove(name).await.map_err(|e| io_err(name, e))?;
        }
        if !legacy.is_empty() {
            dev.sync_dir().await.map_err(|e| Error::io(&dir, e))?;
        }
        Ok((
            Writer {
                dev,
                dir,
                file,
                seq: newest,
                capacity,
                failed: None,
            },
            Opened {
                groups: state,
                report,
                seq: newest,
                pos,
                capacity,
                checkpoint_bytes,
            },
        ))
    }

    /// A writer on a new, empty segment `seq`.
    async fn fresh(dev: D, dir: PathBuf, seq: u64, capacity: u64) -> Result<Self> {
        let name = segment_name(seq);
        let file = create_zeroed(&dev, &name, capacity)
            .await
            .map_err(|e| Error::io(&dir.join(&name), e))?;
        dev.sync_dir().await.map_err(|e| Error::io(&dir, e))?;
        Ok(Writer {
            dev,
            dir,
            file,
            seq,
            capacity,
            failed: None,
        })
    }

    /// Replays a log in the first format and rewrites it as one checkpoint
    /// in segment 1, then deletes the old files.
    async fn migrate(
        dev: D,
        dir: PathBuf,
        groups: u32,
        segment_bytes: u64,
        legacy: &[(u64, &str)],
    ) -> Result<(Self, Opened)> {
        let mut images = Vec::with_capacity(legacy.len());
        for (_, name) in legacy {
            let f = dev
                .open(name)
                .await
                .map_err(|e| Error::io(&dir.join(name), e))?;
            let data = read_all(&f)
                .await
                .map_err(|e| Error::io(&dir.join(name), e))?;
            images.push((dir.join(name), data));
        }
        let (state, report) = super::legacy::replay(&images, groups)?;
        let mut payload = Vec::new();
        super::encode_record(&mut payload, &super::CheckpointRef(&state));
        let checkpoint_bytes = frame_len(payload.len());
        let capacity = segment_capacity(segment_bytes, checkpoint_bytes);
        let mut w = Self::fresh(dev, dir, 1, capacity).await?;
        w.append(0, &payload)
            .await
            .map_err(|e| Error::io(&w.path(&segment_name(1)), e))?;
        for (_, name) in legacy {
            w.dev
                .remove(name)
                .await
                .map_err(|e| Error::io(&w.dir.join(name), e))?;
        }
        w.dev.sync_dir().await.map_err(|e| Error::io(&w.dir, e))?;
        tracing::info!(dir = %w.dir.display(), files = legacy.len(), records = report.records, "migrated the log to preallocated O_DIRECT segments");
        Ok((
            w,
            Opened {
                groups: state,
                report,
                seq: 1,
                pos: checkpoint_bytes,
                capacity,
                checkpoint_bytes,
            },
        ))
    }

    /// Removes spares left half-made by a crash, then, if the log has no
    /// spare, allocates one of a segment's size (for a small checkpoint)
    /// under a temporary name and names it a spare once it is durable. A
    /// failure is logged and given up: the next rotation then creates its
    /// segment itself, as it would without a spare.
    async fn prepare_spare(&mut self, rotate_bytes: u64) {
        let names = match self.dev.list() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list the log's files to prepare a spare segment");
                return;
            }
        };
        for (_, name) in names_by(&names, "prep-", ".seg") {
            if let Err(e) = self.dev.remove(name).await {
                tracing::warn!(file = %self.path(name).display(), error = %e, "cannot remove a half-prepared spare segment");
            }
        }
        if names_by(&names, "spare-", ".seg").len() >= LOG_SPARES_MAX {
            return;
        }
        // Numbered like a retired segment of the current number: below
        // every number a later segment gets, so nothing it holds is ever
        // read as that segment's frames.
        let (prep, spare) = (prep_name(self.seq), spare_name(self.seq));
        let len = segment_capacity(rotate_bytes, 0);
        let res = async {
            // Allocated, not zero-filled: writing 64 MiB of zeros per log at
            // every fresh start saturated the disk when many replicas
            // started at once (a membership test stalled under CI's
            // parallel load). The cost moves to the one segment that reuses
            // this file: its appends convert extents (slower) until it is
            // retired, written, and becomes the next spare.
            let f = self.dev.create(&prep, len).await?;
            f.sync().await?;
            drop(f);
            self.dev.rename(&prep, &spare).await?;
            self.dev.sync_dir().await
        }
        .await;
        if let Err(e) = res {
            tracing::warn!(dir = %self.dir.display(), error = %e, "preparing a spare log segment failed; the next rotation creates its own");
            let _ = self.dev.remove(&prep).await;
        }
    }

    fn refuse_if_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some(why) => Err(io::Error::other(format!(
                "the log refuses writes after a failed write: {why}"
            ))),
            None => Ok(()),
        }
    }

    async fn append(&mut self, pos: u64, payload: &[u8]) -> io::Result<()> {
        self.refuse_if_failed()?;
        let len = frame_len(payload.len());
        if pos % FRAME_ALIGN_BYTES != 0 || pos + len > self.capacity {
            return Err(io::Error::other(format!(
                "a frame of {len} bytes at {pos} does not fit segment {} of {} bytes",
                self.seq, self.capacity
            )));
        }
        let mut buf = self.file.alloc(len as usize);
        encode_frame(buf.as_mut(), self.seq, payload);
        self.file.write_at(buf, pos).await?;
        if !self.file.writes_are_durable() {
            self.file.sync().await?;
        }
        Ok(())
    }

    async fn rotate(&mut self, seq: u64, capacity: u64, payload: &[u8]) -> io::Result<()> {
        self.refuse_if_failed()?;
        if seq <= self.seq {
            return Err(io::Error::other(format!(
                "segment {seq} would not follow segment {}",
                self.seq
            )));
        }
        let name = segment_name(seq);
        let file = self.take_spare(&name, capacity).await?;
        let file = match file {
            Some(f) => f,
            None => create_zeroed(&self.dev, &name, capacity).await?,
        };
        // The name must be durable before a frame of segment `seq` is in
        // the file (see the module's invariants).
        self.dev.sync_dir().await?;
        self.file = file;
        self.seq = seq;
        self.capacity = capacity;
        self.append(0, payload).await?;
        // The checkpoint is durable: older segments are not needed.
        let names = self.dev.list()?;
        let mut spares = names_by(&names, "spare-", ".seg").len();
        for (old, name) in names_by(&names, "log-", ".seg") {
            if old >= seq {
                continue;
            }
            if spares < LOG_SPARES_MAX {
                self.dev.rename(name, &spare_name(old)).await?;
                spares += 1;
            } else {
                self.dev.remove(name).await?;
            }
        }
        self.dev.sync_dir().await
    }

    /// Renames a spare of at least `capacity` bytes to `name` and returns
    /// it open (an open file survives its rename); deletes spares too
    /// small to use.
    async fn take_spare(&self, name: &str, capacity: u64) -> io::Result<Option<D::File>> {
        let names = self.dev.list()?;
        for (_, spare) in names_by(&names, "spare-", ".seg") {
            let f = self.dev.open(spare).await?;
            if f.len() >= capacity {
                self.dev.rename(spare, name).await?;
                return Ok(Some(f));
            }
            drop(f);
            self.dev.remove(spare).await?;
        }
        Ok(None)
    }
}

/// Creates `name` with `len` bytes, all written with zeros and durable.
async fn create_zeroed<D: Device>(dev: &D, name: &str, len: u64) -> io::Result<D::File> {
    let f = dev.create(name, len).await?;
    let mut pos = 0u64;
    while pos < len {
        let mut writes = Vec::with_capacity(ZERO_FILL_IN_FLIGHT);
        while pos < len && writes.len() < ZERO_FILL_IN_FLIGHT {
            let n = (ZERO_FILL_CHUNK_BYTES as u64).min(len - pos) as usize;
            let mut buf = f.alloc(n);
            buf.as_mut().fill(0);
            writes.push(f.write_at_unsynced(buf, pos));
            pos += n as u64;
        }
        futures::future::try_join_all(writes).await?;
    }
    // One fdatasync for all of it (each O_DSYNC write would pay a cache
    // flush of its own).
    f.sync().await?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An image of segment `seq` holding frames of `sizes` bytes (payload
    /// byte = frame number), then `tail` bytes of zeros.
    fn image(seq: u64, sizes: &[usize], tail: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut starts = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            starts.push(out.len());
            let mut f = vec![0u8; frame_len(n) as usize];
            encode_frame(&mut f, seq, &vec![i as u8 + 1; n]);
            out.extend(f);
        }
        out.resize(out.len() + tail, 0);
        (out, starts)
    }

    fn scan(data: &[u8], seq: u64, newest: bool) -> Result<SegmentScan> {
        scan_segment(data, seq, newest, Path::new("log-test.seg"))
    }

    #[test]
    fn frames_of_an_older_life_end_the_segment() {
        // A reused file: segment 9's frames, then what segment 4 left.
        let (mut data, _) = image(9, &[100, 5000], 0);
        let (old, _) = image(4, &[300, 300, 70_000], 8192);
        let end = data.len();
        data.extend_from_slice(&old[..]);
        let s = scan(&data, 9, true).unwrap();
        assert_eq!(s.frames.len(), 2);
        assert_eq!(s.end as usize, end);
        assert_eq!(s.torn_bytes, 0);
    }

    #[test]
    fn damage_is_told_apart_from_a_torn_last_write() {
        let sizes = [10, 4000, 9000, 20, 3];
        let (clean, starts) = image(3, &sizes, 4096);
        for (frame, newest, ok) in [
            (1, true, false),  // valid frames follow it
            (4, true, true),   // the last write: torn
            (4, false, false), // an older segment was complete
        ] {
            let mut data = clean.clone();
            data[starts[frame] + FRAME_HEADER_BYTES + 1] ^= 4;
            match scan(&data, 3, newest) {
                Ok(s) => {
                    assert!(ok, "frame {frame} newest={newest} accepted");
                    assert_eq!(s.frames.len(), frame);
                    assert_eq!(s.end as usize, starts[frame]);
                    assert!(s.torn_bytes > 0);
                }
                Err(e) => {
                    assert!(!ok, "frame {frame} newest={newest}: {e}");
                    let why = if newest {
                        "not a torn last write"
                    } else {
                        "not the newest"
                    };
                    assert!(e.to_string().contains(why), "{e}");
                }
            }
        }
    }

    proptest! {
        /// The last frame torn at any subset of its 512-byte sectors, over
        /// zeros or over a reused file's old frames: replay keeps every
        /// earlier frame, and the last one exactly when it is intact.
        #[test]
        fn any_torn_last_frame_is_cut_never_damage(
            sizes in proptest::collection::vec(0usize..20_000, 1..6),
            kept in proptest::collection::vec(any::<bool>(), 64),
            reused in any::<bool>(),
        ) {
            let (full, starts) = image(7, &sizes, 0);
            let last = *starts.last().unwrap();
            let under: Vec<u8> = if reused {
                let (old, _) = image(6, &[777, 30_000, 1], 0);
                old.into_iter().cycle().take(full.len() + 4096).collect()
            } else {
                vec![0; full.len() + 4096]
            };
            let mut data = under.clone();
            data[..last].copy_from_slice(&full[..last]);
            for (i, chunk) in full[last..].chunks(512).enumerate() {
                let at = last + i * 512;
                if kept[i % kept.len()] {
                    data[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
            // Padding is not checked: the frame is intact when its header
            // and payload are.
            let used = last + FRAME_HEADER_BYTES + sizes[sizes.len() - 1];
            let intact = data[last..used] == full[last..used];
            let s = scan(&data, 7, true).unwrap();
            let want = if intact { sizes.len() } else { sizes.len() - 1 };
            prop_assert_eq!(s.frames.len(), want);
            for (i, r) in s.frames.iter().enumerate() {
                prop_assert_eq!(r.len(), sizes[i]);
                prop_assert!(data[r.clone()].iter().all(|&b| b == i as u8 + 1));
            }
        }
    }
}
