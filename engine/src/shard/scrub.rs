//! The scrubber: re-reads every live record, verifies its checksums, and
//! reports each bad shard. Throttled by a byte budget per second, and it
//! steps aside while foreground requests are in flight.

use super::{payload_ok, Entry, ScrubProgress, Shard};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::reader::SegReader;
use std::time::{Duration, Instant};

impl<D: Device> Shard<D> {
    /// One full pass over every live record. `bytes_per_sec` overrides the
    /// configured budget (for an operator's "scrub now, fast").
    pub async fn scrub_pass(&self, bytes_per_sec: Option<u64>) -> Result<ScrubProgress> {
        let rate = bytes_per_sec.unwrap_or(self.cfg.scrub_bytes_per_sec).max(1);
        let segments: Vec<(u64, std::rc::Rc<D::File>, u64)> = self
            .st
            .borrow()
            .segments
            .iter()
            .map(|(&id, s)| (id, s.file.clone(), s.end))
            .collect();
        let total: u64 = self
            .st
            .borrow()
            .segments
            .values()
            .map(|s| s.live_bytes)
            .sum();
        self.update_scrub(|p| {
            p.running = true;
            p.pass_bytes_total = total;
            p.pass_bytes_done = 0;
        });
        let started = Instant::now();
        let mut read = 0u64;
        for (seg_id, file, end) in segments {
            let mut entries: Vec<(Box<[u8]>, Entry)> = self
                .st
                .borrow()
                .index
                .iter()
                .filter(|(_, e)| e.segment == seg_id && !e.tomb)
                .map(|(k, e)| (k.clone(), *e))
                .collect();
            entries.sort_unstable_by_key(|(_, e)| e.offset);
            let mut reader = SegReader::new(&*file, end);
            for (id, e) in entries {
                self.yield_to_foreground().await;
                let before = reader.bytes_read;
                // Verified in place, in the read window: no copy.
                let ok = match reader.bytes(e.offset as u64, e.payload_len as usize).await {
                    Ok(r) => r.is_some_and(|p| payload_ok(p, &e)),
                    Err(err) => {
                        self.st.borrow_mut().stats.io_errors += 1;
                        self.update_scrub(|p| p.running = false);
                        return Err(Error::io(format!("scrubbing segment {seg_id}"), err));
                    }
                };
                read += reader.bytes_read - before;
                // Only report what is still the live version at that place.
                let still = self.st.borrow().index.get(&id).is_some_and(|now| *now == e);
                if !ok && still {
                    self.report_bad(&id, &e, "checksum mismatch found by scrub");
                    self.update_scrub(|p| p.bad_found += 1);
                }
                self.update_scrub(|p| {
                    p.records_verified += 1;
                    p.pass_bytes_done += e.rec_len as u64;
                });
                // Throttle: never ahead of `rate` bytes per second.
                let due = Duration::from_secs_f64(read as f64 / rate as f64);
                let spent = started.elapsed();
                if due > spent {
                    glommio::timer::sleep(due - spent).await;
                }
            }
        }
        self.update_scrub(|p| {
            p.running = false;
            p.passes_done += 1;
        });
        Ok(self.scrub.get())
    }

    /// Background loop: a pass every configured interval.
    pub async fn run_scrubber(self: std::rc::Rc<Self>) {
        let Some(every) = self.cfg.scrub_interval else {
            return;
        };
        loop {
            glommio::timer::sleep(every).await;
            if let Err(e) = self.scrub_pass(None).await {
                tracing::warn!(shard = self.index_no, error = %e, "scrub pass stopped");
            }
        }
    }

    fn update_scrub(&self, f: impl FnOnce(&mut ScrubProgress)) {
        let mut p = self.scrub.get();
        f(&mut p);
        self.scrub.set(p);
    }
}
