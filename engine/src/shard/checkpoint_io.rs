//! Writing the index checkpoint of a shard: snapshot under one borrow, write
//! to a temporary file, sync, rename over the old one, sync the directory.

use super::{io_err, Shard, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use crate::checkpoint::{self, CheckpointHead, CheckpointSegment};
use crate::device::{Device, DeviceFile};
use crate::error::Result;
use crate::limits::{IO_ALIGN_BYTES, SEGMENT_HEADER_BYTES};
use crate::reader::align_up;

/// Bytes one checkpoint write request carries.
const CHECKPOINT_WRITE_BYTES: usize = 4 << 20;

impl<D: Device> Shard<D> {
    pub(crate) async fn maybe_checkpoint(&self) {
        let due = self.st.borrow().bytes_since_checkpoint >= self.cfg.checkpoint_interval_bytes;
        if due {
            if let Err(e) = self.checkpoint().await {
                tracing::warn!(shard = self.index_no, error = %e, "index checkpoint failed; the log still has everything");
            }
        }
    }

    /// Writes an index checkpoint now.
    pub async fn checkpoint(&self) -> Result<()> {
        if self.checkpointing.replace(true) {
            return Ok(());
        }
        let r = self.checkpoint_inner().await;
        self.checkpointing.set(false);
        if r.is_ok() {
            self.st.borrow_mut().stats.checkpoints += 1;
        }
        r
    }

    async fn checkpoint_inner(&self) -> Result<()> {
        let bytes = {
            let mut st = self.st.borrow_mut();
            let (wm_seg, wm_off) = st
                .segments
                .iter()
                .next_back()
                .map_or((0, SEGMENT_HEADER_BYTES), |(&id, s)| (id, s.end));
            let segs: Vec<CheckpointSegment> = st
                .segments
                .iter()
                .map(|(&id, s)| CheckpointSegment {
                    id,
                    end: s.end,
                    min_seq: s.min_seq,
                })
                .collect();
            let head = CheckpointHead {
                shard: self.index_no as u32,
                next_seq: st.next_seq,
                // Not `next_flush_id`: flushes in flight have ids already but
                // lie beyond the watermark; replay must accept them.
                next_flush_id: st.last_committed_flush + 1,
                next_segment_id: st.next_segment_id,
                watermark_segment: wm_seg,
                watermark_offset: wm_off,
                segments: &segs,
            };
            let b = checkpoint::encode(
                &head,
                st.index.len() as u64,
                st.index.iter().map(|(k, e)| (&k[..], e)),
            );
            st.bytes_since_checkpoint = 0;
            b
        };
        let _ = self.dev.remove(CHECKPOINT_TMP_FILE).await;
        let len = align_up(bytes.len() as u64).max(IO_ALIGN_BYTES);
        let f = self
            .dev
            .create(CHECKPOINT_TMP_FILE, len)
            .await
            .map_err(io_err("creating the checkpoint"))?;
        let mut writes = Vec::new();
        let mut at = 0usize;
        while (at as u64) < len {
            let n = CHECKPOINT_WRITE_BYTES.min(len as usize - at);
            let mut buf = f.alloc(n);
            buf.as_mut().fill(0);
            let src_end = (at + n).min(bytes.len());
            if at < src_end {
                buf.as_mut()[..src_end - at].copy_from_slice(&bytes[at..src_end]);
            }
            // Durable by the one fdatasync below, before the rename.
            writes.push(f.write_at_unsynced(buf, at as u64));
            at += n;
        }
        for w in futures::future::join_all(writes).await {
            w.map_err(io_err("writing the checkpoint"))?;
        }
        f.sync().await.map_err(io_err("syncing the checkpoint"))?;
        drop(f);
        self.dev
            .rename(CHECKPOINT_TMP_FILE, CHECKPOINT_FILE)
            .await
            .map_err(io_err("installing the checkpoint"))?;
        self.dev
            .sync_dir()
            .await
            .map_err(io_err("syncing the shard directory"))?;
        Ok(())
    }
}
