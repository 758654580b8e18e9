//! Segment preparation: while the shard is quiet, create spare segment files
//! and write zeros over them, so that later appends overwrite written blocks
//! instead of converting unwritten extents (on ext4 that conversion makes
//! each fdatasync a journal commit: about 2x the latency of an overwrite
//! here). Prepared files join the free pool that compaction also fills.
//!
//! The preparer only works while no foreground request has been in flight
//! for [`PREPARE_QUIET_MILLIS`], and checks again before every chunk, so it
//! never competes with foreground I/O for the disk.

use super::{free_name, io_err, Shard};
use crate::device::{Device, DeviceFile};
use crate::error::Result;
use std::time::Duration;

/// Quiet time required before (and during) preparation.
pub const PREPARE_QUIET_MILLIS: u64 = 50;
/// Bytes of zeros written per step.
const PREPARE_CHUNK_BYTES: usize = 4 << 20;

impl<D: Device> Shard<D> {
    /// Background loop: keep `prepared_segments` spare segments ready.
    pub async fn run_preparer(self: std::rc::Rc<Self>) {
        if self.cfg.prepared_segments == 0 {
            return;
        }
        loop {
            glommio::timer::sleep(Duration::from_millis(PREPARE_QUIET_MILLIS)).await;
            let need = {
                let st = self.st.borrow();
                st.poisoned.is_none()
                    && st.free.len() < self.cfg.prepared_segments.min(self.cfg.free_segments_keep)
            };
            if need && self.quiet() {
                if let Err(e) = self.prepare_one().await {
                    tracing::warn!(shard = self.index_no, error = %e, "segment preparation failed; retrying later");
                    glommio::timer::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    fn quiet(&self) -> bool {
        self.fg_inflight.get() == 0
            && self.last_fg.get().elapsed() >= Duration::from_millis(PREPARE_QUIET_MILLIS)
    }

    async fn prepare_one(&self) -> Result<()> {
        let id = {
            let mut st = self.st.borrow_mut();
            let id = st.next_segment_id;
            st.next_segment_id += 1;
            id
        };
        let size = self.cfg.segment_size_bytes;
        let name = free_name(id);
        let file = self
            .dev
            .create(&name, size)
            .await
            .map_err(io_err("creating a spare segment"))?;
        self.preparing.set(true);
        let r = async {
            let mut at = 0u64;
            while at < size {
                while !self.quiet() {
                    glommio::timer::sleep(Duration::from_millis(PREPARE_QUIET_MILLIS)).await;
                }
                let n = (PREPARE_CHUNK_BYTES as u64).min(size - at) as usize;
                let mut zeros = file.alloc(n);
                zeros.as_mut().fill(0);
                // Zeros: durable by the one fdatasync below (a cache flush
                // per chunk would buy nothing).
                file.write_at_unsynced(zeros, at)
                    .await
                    .map_err(io_err("zeroing a spare segment"))?;
                at += n as u64;
            }
            file.sync()
                .await
                .map_err(io_err("syncing a spare segment"))?;
            self.dev
                .sync_dir()
                .await
                .map_err(io_err("syncing the shard directory"))
        }
        .await;
        self.preparing.set(false);
        if r.is_err() {
            let _ = self.dev.remove(&name).await;
            return r;
        }
        self.st.borrow_mut().free.push(id);
        Ok(())
    }
}
