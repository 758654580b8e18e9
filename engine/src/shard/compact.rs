//! Compaction: rewrite the live records of the emptiest sealed segments at
//! the head of the log, then free those segments.
//!
//! Crash safety: copies are ordinary appends (new sequence numbers) that are
//! acknowledged only once durable, and the index moves to a copy only if it
//! still points at the original (a concurrent put or delete wins). A segment
//! is freed only when none of its bytes are live, so a crash at any point
//! leaves either the original or the copy — both verify, the newer wins.
//! A tombstone is dropped only when no other segment is older than it, so no
//! stale put it hides can come back.

use super::{Entry, PayloadCrc, Shard};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::RecordKind;
use crate::limits::{BACKGROUND_YIELD_MAX_MILLIS, COMPACT_STEP_BYTES, SEGMENT_HEADER_BYTES};
use crate::reader::SegReader;
use std::time::Duration;

/// What one compaction run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub segments_freed: u64,
    pub records_copied: u64,
    pub bytes_copied: u64,
    pub tombstones_dropped: u64,
}

impl CompactReport {
    /// Adds another report to this one.
    pub fn add(&mut self, o: &CompactReport) {
        self.segments_freed += o.segments_freed;
        self.records_copied += o.records_copied;
        self.bytes_copied += o.bytes_copied;
        self.tombstones_dropped += o.tombstones_dropped;
    }
}

impl<D: Device> Shard<D> {
    /// Compacts every segment below the live ratio, one after another.
    pub async fn compact(&self) -> Result<CompactReport> {
        if self.compacting.replace(true) {
            return Ok(CompactReport::default());
        }
        let mut report = CompactReport::default();
        let mut r = Ok(());
        let mut tried = std::collections::HashSet::new();
        // Only segments older than the log's head at the start: the copies
        // this run writes go to newer segments, and if those were victims
        // too, a run whose output is sparse (records in small padded
        // batches, below the live ratio) would copy the same records on and
        // on and never end.
        let horizon = self.st.borrow().cursor_segment;
        while let Some(victim) = self.pick_victim(&tried, horizon) {
            tried.insert(victim);
            match self.compact_segment(victim).await {
                Ok(one) => report.add(&one),
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        self.compacting.set(false);
        let mut st = self.st.borrow_mut();
        st.stats.compactions += report.segments_freed;
        st.stats.compacted_bytes += report.bytes_copied;
        r.map(|()| report)
    }

    /// Background loop: compact whenever there is work, at the configured
    /// interval.
    pub async fn run_compactor(self: std::rc::Rc<Self>) {
        let Some(every) = self.cfg.compaction_interval else {
            return;
        };
        loop {
            glommio::timer::sleep(every).await;
            if let Err(e) = self.compact().await {
                tracing::warn!(shard = self.index_no, error = %e, "compaction stopped");
            }
        }
    }

    fn pick_victim(&self, tried: &std::collections::HashSet<u64>, horizon: u64) -> Option<u64> {
        let st = self.st.borrow();
        let newest = st.segments.keys().next_back().copied()?;
        st.segments
            .iter()
            .filter(|(&id, s)| {
                id != newest
                    && id < st.cursor_segment
                    && id < horizon
                    && !s.compacting
                    && !tried.contains(&id)
                    && s.end > SEGMENT_HEADER_BYTES
            })
            .map(|(&id, s)| {
                (
                    id,
                    s.live_bytes as f64 / (s.end - SEGMENT_HEADER_BYTES) as f64,
                )
            })
            .filter(|&(_, ratio)| ratio < self.cfg.compaction_live_ratio)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(id, _)| id)
    }

    pub(crate) async fn yield_to_foreground(&self) {
        let mut waited = 0;
        while self.fg_inflight.get() > 0 && waited < BACKGROUND_YIELD_MAX_MILLIS {
            glommio::timer::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
    }

    async fn compact_segment(&self, victim: u64) -> Result<CompactReport> {
        let (file, end, mut entries) = {
            let mut st = self.st.borrow_mut();
            let Some(seg) = st.segments.get_mut(&victim) else {
                return Ok(CompactReport::default());
            };
            seg.compacting = true;
            let (file, end) = (seg.file.clone(), seg.end);
            let entries: Vec<(Box<[u8]>, Entry)> = st
                .index
                .iter()
                .filter(|(_, e)| e.segment == victim)
                .map(|(k, e)| (k.clone(), *e))
                .collect();
            (file, end, entries)
        };
        entries.sort_unstable_by_key(|(_, e)| e.offset);
        let r = self.copy_live(victim, &file, end, &entries).await;
        let (report, keep) = {
            let mut st = self.st.borrow_mut();
            if let Some(seg) = st.segments.get_mut(&victim) {
                seg.compacting = false;
            }
            let (mut report, drop_tombs) = r?;
            // Drop the tombstones judged unneeded, if still the ones here.
            for id in drop_tombs {
                if let Some(e) = st.index.get(&id[..]).copied() {
                    if e.segment == victim && e.tomb {
                        st.index.remove(&id[..]);
                        st.tombs = st.tombs.saturating_sub(1);
                        if let Some(seg) = st.segments.get_mut(&victim) {
                            seg.live_bytes = seg.live_bytes.saturating_sub(e.rec_len as u64);
                        }
                        report.tombstones_dropped += 1;
                    }
                }
            }
            let live = st.segments.get(&victim).map_or(0, |s| s.live_bytes);
            if live != 0 {
                // A record skipped because a newer write for its id was still
                // queued: keep the segment; a later pass frees it.
                tracing::debug!(
                    shard = self.index_no,
                    segment = victim,
                    live,
                    "segment not freed yet"
                );
                return Ok(report);
            }
            st.segments.remove(&victim);
            (report, st.free.len() < self.cfg.free_segments_keep)
        };
        let mut report = report;
        let name = super::segment_name(victim);
        if keep {
            self.dev
                .rename(&name, &super::free_name(victim))
                .await
                .map_err(super::io_err("recycling a segment"))?;
        } else {
            self.dev
                .remove(&name)
                .await
                .map_err(super::io_err("removing a segment"))?;
        }
        self.dev
            .sync_dir()
            .await
            .map_err(super::io_err("syncing the shard directory"))?;
        if keep {
            self.st.borrow_mut().free.push(victim);
        }
        report.segments_freed += 1;
        Ok(report)
    }

    async fn copy_live(
        &self,
        victim: u64,
        file: &D::File,
        end: u64,
        entries: &[(Box<[u8]>, Entry)],
    ) -> Result<(CompactReport, Vec<Box<[u8]>>)> {
        let mut report = CompactReport::default();
        let mut drop_tombs = Vec::new();
        let mut reader = SegReader::new(file, end);
        let mut waiters = Vec::new();
        let mut queued = 0usize;
        for (id, e) in entries {
            if e.tomb {
                let needed = {
                    let st = self.st.borrow();
                    st.segments
                        .iter()
                        .any(|(&sid, s)| sid != victim && s.min_seq <= e.seq)
                };
                if !needed {
                    drop_tombs.push(id.clone());
                    continue;
                }
            }
            // Copy the payload bytes with the crc they were stored with: a
            // record that rotted stays detectably rotten in its new place.
            let payload: &[u8] = if e.tomb || e.payload_len == 0 {
                &[]
            } else {
                match reader
                    .bytes(e.offset as u64, e.payload_len as usize)
                    .await
                    .map_err(super::io_err("reading for compaction"))?
                {
                    Some(p) => p,
                    None => {
                        return Err(Error::Layout(format!(
                            "record at {} lies past the end of segment {victim}",
                            e.offset
                        )))
                    }
                }
            };
            let kind = if e.tomb {
                RecordKind::Tombstone
            } else {
                RecordKind::Put
            };
            let crc = PayloadCrc {
                stored: e.crc,
                of_bytes: crc32c::crc32c(payload),
            };
            if crc.of_bytes != crc.stored {
                // Read anyway to copy it: say so, as a get or the scrubber would.
                self.report_bad(id, e, "checksum mismatch found by compaction");
            }
            let Some(rx) = self.append(kind, id, payload, crc, Some((victim, e.offset)))? else {
                continue;
            };
            waiters.push(rx);
            report.records_copied += 1;
            report.bytes_copied += e.rec_len as u64;
            queued += e.rec_len as usize;
            if queued >= COMPACT_STEP_BYTES {
                for w in waiters.drain(..) {
                    w.await.map_err(|_| Error::Closed)??;
                }
                queued = 0;
                self.yield_to_foreground().await;
            }
        }
        for w in waiters {
            w.await.map_err(|_| Error::Closed)??;
        }
        Ok((report, drop_tombs))
    }
}
