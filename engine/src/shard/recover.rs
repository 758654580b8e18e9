//! Recovery: rebuild a shard's index from its checkpoint and the log
//! written after it, deciding at each stop whether it is a clean end, a torn
//! tail (cut and sealed) or rot inside the log (salvaged). See
//! ARCHITECTURE.md, "Recovery", for the rules and why they are safe.

use super::{
    apply, free_name, io_err, parse_name, segment_name, Entry, PendingBatch, Segment, Shard,
    CHECKPOINT_FILE, CHECKPOINT_TMP_FILE,
};
use crate::checkpoint::{self, Checkpoint, CheckpointSegment};
use crate::device::{Device, DeviceFile};
use crate::error::Result;
use crate::format::{
    decode_record, BatchHeader, RecordKind, BATCH_HEADER_BYTES, BATCH_MAGIC, FLAG_FIRST, FLAG_LAST,
    FLAG_PIPELINED, FLAG_SEAL,
};
use crate::limits::*;
use crate::reader::{align_down, SegReader};
use std::collections::BTreeMap;
use std::rc::Rc;

pub(super) struct ParsedFlush {
    id: u64,
    end: u64,
    records: Vec<(Box<[u8]>, Entry)>,
    sealed: bool,
}

pub(super) struct ScanOutcome {
    sealed: bool,
    end: u64,
    min_seq: u64,
    torn: bool,
    corrupt_regions: u64,
}

impl<D: Device> Shard<D> {
    pub(super) async fn recover(&self) -> Result<()> {
        let names = self
            .dev
            .list()
            .map_err(io_err("listing the shard directory"))?;
        let mut seg_ids = Vec::new();
        let mut free_ids = Vec::new();
        let mut has_ckpt = false;
        for n in &names {
            if let Some(id) = parse_name(n, "seg-") {
                seg_ids.push(id);
            } else if let Some(id) = parse_name(n, "free-") {
                free_ids.push(id);
            } else if n == CHECKPOINT_FILE {
                has_ckpt = true;
            } else if n == CHECKPOINT_TMP_FILE {
                let _ = self.dev.remove(n).await;
            }
        }
        seg_ids.sort_unstable();
        let max_id = seg_ids
            .iter()
            .chain(free_ids.iter())
            .copied()
            .max()
            .unwrap_or(0);

        let ckpt = if has_ckpt {
            self.load_checkpoint().await
        } else {
            None
        };
        let (wm_seg, wm_off) = ckpt
            .as_ref()
            .map_or((0, 0), |c| (c.watermark_segment, c.watermark_offset));

        // Open segment files; drop ones too small to hold anything.
        let mut files: BTreeMap<u64, Rc<D::File>> = BTreeMap::new();
        for &id in &seg_ids {
            let f = self
                .dev
                .open(&segment_name(id))
                .await
                .map_err(io_err(format!("opening segment {id}")))?;
            if f.len() < SEGMENT_HEADER_BYTES + IO_ALIGN_BYTES {
                tracing::warn!(
                    shard = self.index_no,
                    segment = id,
                    len = f.len(),
                    "segment file too short to be one of ours (created but never synced, or truncated); moving it aside as damaged-*"
                );
                // Never delete what might hold bytes: set it aside for an
                // operator; nothing in it is served.
                self.dev
                    .rename(&segment_name(id), &format!("damaged-{}", segment_name(id)))
                    .await
                    .map_err(io_err("moving a short segment aside"))?;
                continue;
            }
            files.insert(id, Rc::new(f));
        }

        let mut st_next_seq = 1u64;
        let mut st_next_flush = 1u64;
        if let Some(c) = &ckpt {
            st_next_seq = c.next_seq;
            st_next_flush = c.next_flush_id;
            let mut st = self.st.borrow_mut();
            let known: std::collections::HashMap<u64, &CheckpointSegment> =
                c.segments.iter().map(|s| (s.id, s)).collect();
            for (&id, f) in &files {
                if id <= wm_seg {
                    if let Some(cs) = known.get(&id) {
                        st.segments.insert(
                            id,
                            Segment {
                                file: f.clone(),
                                size: f.len(),
                                end: cs.end,
                                live_bytes: 0,
                                min_seq: cs.min_seq,
                                compacting: false,
                            },
                        );
                    }
                }
            }
            for (id, e) in c.entries.iter() {
                if st.segments.contains_key(&e.segment) {
                    st.index.insert(id.clone(), *e);
                }
            }
        }

        // Segments the checkpoint does not vouch for: below the watermark and
        // unknown to it, they were freed but the rename was lost; recycle them.
        let mut to_scan = Vec::new();
        for (&id, f) in &files {
            if ckpt.is_some() && id < wm_seg && !self.st.borrow().segments.contains_key(&id) {
                free_ids.push(id);
                self.dev
                    .rename(&segment_name(id), &free_name(id))
                    .await
                    .map_err(io_err("recycling a stale segment"))?;
                continue;
            }
            if ckpt.is_some() && id == wm_seg && self.st.borrow().segments.contains_key(&id) {
                to_scan.push((id, f.clone(), wm_off));
            } else if id >= wm_seg || ckpt.is_none() {
                to_scan.push((id, f.clone(), SEGMENT_HEADER_BYTES));
            }
        }

        // A segment is the tail unless a newer one holds a first batch.
        let mut has_data = Vec::with_capacity(to_scan.len());
        for (id, f, _) in &to_scan {
            has_data.push(self.first_batch_valid(*id, f).await?);
        }

        let mut last_flush = st_next_flush.saturating_sub(1);
        let mut max_seq = st_next_seq.saturating_sub(1);
        let mut newest_needs_seal = false;
        let mut newest_sealed = false;
        for i in 0..to_scan.len() {
            let (id, ref f, from) = to_scan[i];
            let is_tail = !has_data[i + 1..].iter().any(|&d| d);
            let out = self
                .scan_segment(id, f, from, is_tail, &mut last_flush, &mut max_seq)
                .await?;
            newest_needs_seal = out.torn;
            newest_sealed = out.sealed;
            let mut st = self.st.borrow_mut();
            st.stats.torn_tails_cut += out.torn as u64;
            st.stats.corrupt_regions += out.corrupt_regions;
            let seg = st.segments.entry(id).or_insert(Segment {
                file: f.clone(),
                size: f.len(),
                end: from,
                live_bytes: 0,
                min_seq: u64::MAX,
                compacting: false,
            });
            seg.end = out.end;
            seg.min_seq = seg.min_seq.min(out.min_seq);
        }

        // Recompute live bytes and the tombstone count from the index.
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            for seg in st.segments.values_mut() {
                seg.live_bytes = 0;
            }
            st.tombs = 0;
            for e in st.index.values() {
                if let Some(seg) = st.segments.get_mut(&e.segment) {
                    seg.live_bytes += e.rec_len as u64;
                }
                st.tombs += e.tomb as u64;
            }
            st.next_seq = max_seq + 1;
            st.next_flush_id = last_flush.max(self.seen_flush_max.get()) + 1;
            st.last_committed_flush = last_flush;
            st.next_segment_id = max_id.max(
                ckpt.as_ref()
                    .map_or(0, |c| c.next_segment_id.saturating_sub(1)),
            ) + 1;
            free_ids.sort_unstable();
            free_ids.dedup();
            st.free = free_ids;
        }

        // Continue in the newest segment, after its last intact flush —
        // unless it is sealed, or a torn tail was just cut there: then seal
        // it (so the torn remnants are never read again) and move on.
        let last = self
            .st
            .borrow()
            .segments
            .iter()
            .next_back()
            .map(|(&id, s)| (id, s.end, s.file.clone()));
        match last {
            Some((id, end, file)) if newest_needs_seal || newest_sealed => {
                if newest_needs_seal && end + (BATCH_HEADER_BYTES as u64) <= file.len() {
                    self.seal_segment(id, end, &file).await?;
                }
                let mut st = self.st.borrow_mut();
                st.cursor_segment = st.next_segment_id;
                st.next_segment_id += 1;
                st.cursor_pos = SEGMENT_HEADER_BYTES;
            }
            Some((id, end, file)) => {
                let tail = read_tail(&*file, end).await?;
                let mut st = self.st.borrow_mut();
                st.cursor_segment = id;
                st.cursor_pos = end;
                st.tail = (id, tail);
            }
            None => {
                let mut st = self.st.borrow_mut();
                st.cursor_segment = st.next_segment_id;
                st.next_segment_id += 1;
                st.cursor_pos = SEGMENT_HEADER_BYTES;
            }
        }
        self.dev
            .sync_dir()
            .await
            .map_err(io_err("syncing the shard directory"))?;
        let st = self.st.borrow();
        tracing::info!(
            shard = self.index_no,
            shards = st.index.len(),
            segments = st.segments.len(),
            checkpoint = ckpt.is_some(),
            torn_tails_cut = st.stats.torn_tails_cut,
            corrupt_regions = st.stats.corrupt_regions,
            "engine shard opened"
        );
        Ok(())
    }

    /// Writes a SEAL flush at `end` of segment `id` and syncs it.
    async fn seal_segment(&self, id: u64, end: u64, file: &D::File) -> Result<()> {
        let tail = read_tail(file, end).await?;
        self.st.borrow_mut().tail = (id, tail);
        let mut seal = PendingBatch::new(id, end);
        seal.close(true);
        let plan = {
            let mut st = self.st.borrow_mut();
            self.plan_flush(&mut st, id)
        };
        let tail = self
            .write_flush(id, std::slice::from_mut(&mut seal), FLAG_SEAL, &plan)
            .await?;
        self.commit_batches(id, plan.flush_id, vec![seal], tail);
        Ok(())
    }

    async fn first_batch_valid(&self, id: u64, f: &D::File) -> Result<bool> {
        let b = f
            .read_at(SEGMENT_HEADER_BYTES, IO_ALIGN_BYTES as usize)
            .await
            .map_err(io_err("reading a segment"))?;
        Ok(BatchHeader::decode(b.as_ref())
            .is_some_and(|h| h.segment_id == id && h.flags & FLAG_FIRST != 0))
    }

    async fn load_checkpoint(&self) -> Option<Checkpoint> {
        let f = self.dev.open(CHECKPOINT_FILE).await.ok()?;
        if f.len() > CHECKPOINT_MAX_BYTES {
            tracing::warn!(shard = self.index_no, "checkpoint larger than {CHECKPOINT_MAX_BYTES} bytes; ignoring it and scanning the log");
            return None;
        }
        let mut r = SegReader::new(&f, f.len());
        let bytes = r.bytes(0, f.len() as usize).await.ok()??.to_vec();
        match checkpoint::decode(&bytes, self.index_no as u32) {
            Ok(c) => Some(c),
            Err(why) => {
                tracing::warn!(shard = self.index_no, %why, "checkpoint unusable; scanning the whole log instead");
                None
            }
        }
    }

    /// Replays one segment from `from`, applying every intact flush.
    async fn scan_segment(
        &self,
        seg_id: u64,
        f: &D::File,
        from: u64,
        is_tail: bool,
        last_flush: &mut u64,
        max_seq: &mut u64,
    ) -> Result<ScanOutcome> {
        let size = f.len();
        let mut r = SegReader::new(f, size);
        let mut pos = from;
        let mut out = ScanOutcome {
            sealed: false,
            end: from,
            min_seq: u64::MAX,
            torn: false,
            corrupt_regions: 0,
        };
        loop {
            if let Some(f) = self.parse_flush(&mut r, seg_id, pos, *last_flush).await? {
                *last_flush = f.id;
                self.apply_scanned(seg_id, f.records, &mut out, max_seq);
                pos = f.end;
                if f.sealed {
                    out.sealed = true;
                    break;
                }
                continue;
            }
            // No intact flush at pos: a clean end, a torn tail, or corruption.
            let head = r
                .bytes(pos, BATCH_HEADER_BYTES)
                .await
                .map_err(io_err("scanning a segment"))?;
            let clean = match head {
                None => true,
                Some(h) => {
                    h.iter().all(|&b| b == 0)
                        || BatchHeader::decode(h).is_some_and(|bh| bh.segment_id != seg_id)
                }
            };
            if clean {
                // Zeros here can still hide the remnants of a torn flush
                // whose first sectors never landed, and of a flush
                // pipelined behind it that landed whole. Neither was
                // acknowledged, but if the log went on over them, a later
                // scan (once this segment is no longer the tail) would
                // salvage them, stale records with sequence numbers that
                // beat newer, acknowledged ones. So a clean-looking end of
                // the tail is a torn tail (cut and sealed) if a batch of
                // this segment newer than the last intact flush lies
                // within reach of the flushes that can be in flight.
                if is_tail && self.remnant_after(&mut r, seg_id, pos, *last_flush).await? {
                    out.torn = true;
                    tracing::warn!(
                        shard = self.index_no,
                        segment = seg_id,
                        at = pos,
                        "torn tail cut (remnants of unacknowledged flushes after a zeroed start)"
                    );
                }
                break;
            }
            // Is there an intact flush further on? Then what lies between was
            // durable once and has rotted: salvage it.
            let later = self
                .find_later_flush(&mut r, seg_id, pos, *last_flush)
                .await?;
            // A crash with two flushes in flight: the older torn, the newer
            // (issued alongside it) intact. Neither was acknowledged.
            if let Some(p2) = later {
                if is_tail
                    && self
                        .torn_with_pipelined(&mut r, seg_id, p2, *last_flush)
                        .await?
                {
                    out.torn = true;
                    tracing::warn!(
                        shard = self.index_no,
                        segment = seg_id,
                        at = pos,
                        "torn tail cut (two unacknowledged flushes in flight at the crash)"
                    );
                    break;
                }
            }
            match later {
                Some(p2) => {
                    out.corrupt_regions += 1;
                    tracing::error!(
                        shard = self.index_no,
                        segment = seg_id,
                        from = pos,
                        to = p2,
                        "corrupt region inside the log; salvaging the records that still verify"
                    );
                    self.salvage(&mut r, seg_id, pos, p2, last_flush, &mut out, max_seq)
                        .await?;
                    pos = p2;
                }
                None if !is_tail => {
                    out.corrupt_regions += 1;
                    tracing::error!(
                        shard = self.index_no,
                        segment = seg_id,
                        at = pos,
                        "corrupt end of a sealed segment; salvaging the records that still verify"
                    );
                    self.salvage(&mut r, seg_id, pos, size, last_flush, &mut out, max_seq)
                        .await?;
                    break;
                }
                None => {
                    out.torn = true;
                    tracing::warn!(
                        shard = self.index_no,
                        segment = seg_id,
                        at = pos,
                        "torn tail cut (an unacknowledged flush)"
                    );
                    break;
                }
            }
        }
        out.end = pos;
        Ok(out)
    }

    fn apply_scanned(
        &self,
        seg_id: u64,
        records: Vec<(Box<[u8]>, Entry)>,
        out: &mut ScanOutcome,
        max_seq: &mut u64,
    ) {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        for (id, mut e) in records {
            e.segment = seg_id;
            *max_seq = (*max_seq).max(e.seq);
            out.min_seq = out.min_seq.min(e.seq);
            apply(&mut st.index, &mut st.segments, &mut st.tombs, id, e, None);
        }
    }

    /// Parses the flush starting at `pos` if it is intact and newer than
    /// `last_flush`: returns its id, end and records.
    async fn parse_flush(
        &self,
        r: &mut SegReader<'_, D::File>,
        seg_id: u64,
        pos: u64,
        last_flush: u64,
    ) -> Result<Option<ParsedFlush>> {
        let mut p = pos;
        let mut records = Vec::new();
        let mut flush_id = None;
        loop {
            let Some(hb) = r
                .bytes(p, BATCH_HEADER_BYTES)
                .await
                .map_err(io_err("scanning a segment"))?
            else {
                return Ok(None);
            };
            let Some(h) = BatchHeader::decode(hb) else {
                return Ok(None);
            };
            if h.segment_id != seg_id {
                return Ok(None);
            }
            self.seen_flush_max
                .set(self.seen_flush_max.get().max(h.flush_id));
            match flush_id {
                None if h.flags & FLAG_FIRST == 0 || h.flush_id <= last_flush => return Ok(None),
                Some(fid) if h.flags & FLAG_FIRST != 0 || h.flush_id != fid => return Ok(None),
                _ => {}
            }
            flush_id = Some(h.flush_id);
            if h.body_len as usize > SHARD_SIZE_MAX_BYTES + BATCH_BUFFER_BYTES + (1 << 20) {
                return Ok(None);
            }
            let body_at = p + BATCH_HEADER_BYTES as u64;
            let Some(body) = r
                .bytes(body_at, h.body_len as usize)
                .await
                .map_err(io_err("scanning a segment"))?
            else {
                return Ok(None);
            };
            if crc32c::crc32c(body) != h.body_crc {
                return Ok(None);
            }
            if !parse_records(body, body_at, h.table_len as usize, &mut records, true) {
                return Ok(None);
            }
            p += h.span();
            if h.flags & FLAG_LAST != 0 {
                return Ok(Some(ParsedFlush {
                    id: h.flush_id,
                    end: p,
                    records,
                    sealed: h.flags & FLAG_SEAL != 0,
                }));
            }
        }
    }

    /// True if the intact flush at `p2` is the newest of the segment, was
    /// issued while the flush before it was in flight (FLAG_PIPELINED), and
    /// exactly that one flush (`last_flush + 1`) is missing before it: the
    /// picture a crash leaves with two flushes in flight. (Rot of the older
    /// one followed by the newer one as the very last flush looks the same;
    /// like rot in the very last flush, it is cut — see ARCHITECTURE.md.)
    async fn torn_with_pipelined(
        &self,
        r: &mut SegReader<'_, D::File>,
        seg_id: u64,
        p2: u64,
        last_flush: u64,
    ) -> Result<bool> {
        let Some(hb) = r
            .bytes(p2, BATCH_HEADER_BYTES)
            .await
            .map_err(io_err("scanning a segment"))?
        else {
            return Ok(false);
        };
        let Some(h) = BatchHeader::decode(hb) else {
            return Ok(false);
        };
        if h.flags & FLAG_PIPELINED == 0 || h.flush_id != last_flush + 2 {
            return Ok(false);
        }
        let Some(f) = self.parse_flush(r, seg_id, p2, last_flush).await? else {
            return Ok(false);
        };
        // A flush issued after it would mean the missing one had completed.
        if self.parse_flush(r, seg_id, f.end, f.id).await?.is_some()
            || self
                .find_later_flush(r, seg_id, f.end, f.id)
                .await?
                .is_some()
        {
            return Ok(false);
        }
        Ok(true)
    }

    /// True if a batch header of segment `seg_id` with a flush id above
    /// `last_flush` decodes anywhere in `(from, from + TORN_REMNANT_WINDOW_BYTES)`.
    /// Its flush id counts as seen, so it is never issued again. (A payload
    /// holding such a header by chance makes this a false alarm, which only
    /// seals the segment early.)
    async fn remnant_after(
        &self,
        r: &mut SegReader<'_, D::File>,
        seg_id: u64,
        from: u64,
        last_flush: u64,
    ) -> Result<bool> {
        let end = r
            .limit()
            .min(from.saturating_add(TORN_REMNANT_WINDOW_BYTES));
        let mut at = from + 1;
        let mut found = false;
        while let Some((hits, next)) = magic_hits(r, at, end).await? {
            for h in hits {
                let Some(hb) = r
                    .bytes(h, BATCH_HEADER_BYTES)
                    .await
                    .map_err(io_err("scanning a segment"))?
                else {
                    continue;
                };
                if let Some(bh) = BatchHeader::decode(hb)
                    .filter(|bh| bh.segment_id == seg_id && bh.flush_id > last_flush)
                {
                    self.seen_flush_max
                        .set(self.seen_flush_max.get().max(bh.flush_id));
                    found = true;
                }
            }
            at = next;
        }
        Ok(found)
    }

    async fn find_later_flush(
        &self,
        r: &mut SegReader<'_, D::File>,
        seg_id: u64,
        from: u64,
        last_flush: u64,
    ) -> Result<Option<u64>> {
        let size = r.limit();
        let mut at = from + 1;
        while let Some((hits, next)) = magic_hits(r, at, size).await? {
            for h in hits {
                if let Some(hb) = r
                    .bytes(h, BATCH_HEADER_BYTES)
                    .await
                    .map_err(io_err("scanning a segment"))?
                {
                    if BatchHeader::decode(hb).is_some_and(|bh| {
                        bh.segment_id == seg_id
                            && bh.flags & FLAG_FIRST != 0
                            && bh.flush_id > last_flush
                    }) && self.parse_flush(r, seg_id, h, last_flush).await?.is_some()
                    {
                        return Ok(Some(h));
                    }
                }
            }
            at = next;
        }
        Ok(None)
    }

    /// Applies every record in `[from, to)` whose batch header and record
    /// header still verify (payloads are verified when read).
    #[allow(clippy::too_many_arguments)]
    async fn salvage(
        &self,
        r: &mut SegReader<'_, D::File>,
        seg_id: u64,
        from: u64,
        to: u64,
        last_flush: &mut u64,
        out: &mut ScanOutcome,
        max_seq: &mut u64,
    ) -> Result<()> {
        let magic = BATCH_MAGIC.to_le_bytes();
        let mut at = from;
        let floor = *last_flush;
        while at + BATCH_HEADER_BYTES as u64 <= to {
            let Some(hb) = r
                .bytes(at, BATCH_HEADER_BYTES)
                .await
                .map_err(io_err("salvaging"))?
            else {
                break;
            };
            let h = if hb[0..4] == magic {
                BatchHeader::decode(hb)
            } else {
                None
            };
            match h {
                Some(h) if h.segment_id == seg_id && h.flush_id > floor && at + h.span() <= to => {
                    *last_flush = (*last_flush).max(h.flush_id);
                    let body_at = at + BATCH_HEADER_BYTES as u64;
                    if let Some(body) = r
                        .bytes(body_at, h.body_len as usize)
                        .await
                        .map_err(io_err("salvaging"))?
                    {
                        let mut recs = Vec::new();
                        parse_records(body, body_at, h.table_len as usize, &mut recs, false);
                        self.apply_scanned(seg_id, recs, out, max_seq);
                    }
                    at += h.span();
                }
                _ => at += 1,
            }
        }
        Ok(())
    }
}

/// Where a batch's magic starts in the next step of `[at, end)` (a step
/// of [`SCAN_READ_BYTES`]), and where the step after it starts (3 bytes
/// back, so a magic across the boundary is found); `None` past the end.
async fn magic_hits<F: DeviceFile>(
    r: &mut SegReader<'_, F>,
    at: u64,
    end: u64,
) -> Result<Option<(Vec<u64>, u64)>> {
    if at + BATCH_HEADER_BYTES as u64 > end {
        return Ok(None);
    }
    let magic = BATCH_MAGIC.to_le_bytes();
    let step = (SCAN_READ_BYTES as u64).min(end - at) as usize;
    let Some(chunk) = r
        .bytes(at, step)
        .await
        .map_err(io_err("scanning a segment"))?
    else {
        return Ok(None);
    };
    let hits = (0..chunk.len().saturating_sub(3))
        .filter(|&i| chunk[i..i + 4] == magic)
        .map(|i| at + i as u64)
        .collect();
    Ok(Some((hits, at + step.saturating_sub(3).max(1) as u64)))
}

/// The bytes `[align_down(end), end)` of `file`: the durable part of the
/// block the next flush rewrites.
async fn read_tail<F: DeviceFile>(file: &F, end: u64) -> Result<Vec<u8>> {
    let keep = (end % IO_ALIGN_BYTES) as usize;
    if keep == 0 {
        return Ok(Vec::new());
    }
    let b = file
        .read_at(align_down(end), IO_ALIGN_BYTES as usize)
        .await
        .map_err(io_err("reading the log tail"))?;
    match b.as_ref().get(..keep) {
        Some(t) => Ok(t.to_vec()),
        None => Err(crate::error::Error::Layout(format!(
            "segment file ends inside its last block ({} bytes read at {}); the file was truncated outside the engine",
            b.as_ref().len(),
            align_down(end)
        ))),
    }
}

/// Parses the header table of a batch body (the first `table_len` bytes).
/// `strict` (a body whose crc verified): false if any entry is malformed or
/// points outside the body, which means a bug or a crafted body. Not strict
/// (salvage of a body whose crc failed): keeps each entry whose header
/// verifies and stops at the first that does not.
fn parse_records(
    body: &[u8],
    body_at: u64,
    table_len: usize,
    out: &mut Vec<(Box<[u8]>, Entry)>,
    strict: bool,
) -> bool {
    let Some(table) = body.get(..table_len) else {
        return false;
    };
    let mut off = 0usize;
    while off < table.len() {
        let Ok((h, id)) = decode_record(&table[off..]) else {
            return !strict;
        };
        let put = h.kind == RecordKind::Put;
        let p_end = h.payload_off as usize + h.payload_len as usize;
        if (put && (h.payload_off as usize) < table_len) || p_end > body.len() {
            return !strict;
        }
        let at = if put {
            h.payload_off as u64
        } else {
            off as u64
        };
        out.push((
            id.into(),
            Entry {
                segment: 0,
                offset: (body_at + at) as u32,
                rec_len: h.record_len() as u32,
                payload_len: h.payload_len,
                crc: h.payload_crc,
                seq: h.seq,
                tomb: !put,
            },
        ));
        off += h.table_len();
    }
    true
}
