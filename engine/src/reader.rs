//! Sequential reads of one segment through an aligned window, shared by the
//! recovery scan, compaction and the scrubber.
//!
//! Invariant: the window holds file bytes `[start, start + buf.len())`, with
//! `start` aligned; it holds at most the unconsumed rest of the last read
//! plus one request or one read-ahead (`SCAN_READ_BYTES * SCAN_READAHEAD`),
//! whichever is larger.

use crate::device::DeviceFile;
use crate::limits::{IO_ALIGN_BYTES, SCAN_READAHEAD, SCAN_READ_BYTES};
use std::io;

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(IO_ALIGN_BYTES - 1)
}

pub(crate) fn align_up(v: u64) -> u64 {
    (v + IO_ALIGN_BYTES - 1) & !(IO_ALIGN_BYTES - 1)
}

/// A forward-moving read window over one file.
pub(crate) struct SegReader<'a, F: DeviceFile> {
    file: &'a F,
    limit: u64,
    start: u64,
    buf: Vec<u8>,
    /// Bytes read from the device so far.
    pub bytes_read: u64,
}

impl<'a, F: DeviceFile> SegReader<'a, F> {
    /// Reads `file` up to `limit` bytes (its size, or less).
    pub fn new(file: &'a F, limit: u64) -> Self {
        SegReader {
            file,
            limit: limit.min(file.len()),
            start: 0,
            buf: Vec::new(),
            bytes_read: 0,
        }
    }

    /// The readable end.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The bytes `[pos, pos + len)`, or `None` if they lie past the limit.
    pub async fn bytes(&mut self, pos: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let end = pos + len as u64;
        if end > self.limit {
            return Ok(None);
        }
        let have_end = self.start + self.buf.len() as u64;
        if pos < self.start || pos > have_end {
            // Jump: restart the window at pos.
            self.start = align_down(pos);
            self.buf.clear();
        } else if end > have_end {
            // About to read more: first drop what lies before pos. Done only
            // now, when little is left unconsumed, so the shift is cheap
            // (shifting on every call moved the whole read-ahead window per
            // record and capped the scrubber near 1 GB/s).
            let drop = (align_down(pos) - self.start) as usize;
            self.buf.drain(..drop);
            self.start += drop as u64;
        }
        while self.start + (self.buf.len() as u64) < end {
            // Read ahead with several requests in flight: the disk reaches
            // its sequential speed only at a queue depth above one.
            let at = self.start + self.buf.len() as u64;
            let stop = align_up(self.limit);
            let need = align_up(end - at)
                .max((SCAN_READ_BYTES * SCAN_READAHEAD) as u64)
                .min(stop - at);
            let mut reads = Vec::new();
            let mut sizes = Vec::new();
            let mut p = at;
            while p < at + need {
                let n = (SCAN_READ_BYTES as u64).min(at + need - p) as usize;
                reads.push(self.file.read_at(p, n));
                sizes.push(n);
                p += n as u64;
            }
            let mut eof = need == 0;
            for (got, want) in futures::future::join_all(reads)
                .await
                .into_iter()
                .zip(sizes)
            {
                let got = got?;
                if eof {
                    continue;
                }
                let got = got.as_ref();
                self.bytes_read += got.len() as u64;
                self.buf.extend_from_slice(got);
                eof = got.len() < want;
            }
            if eof && self.start + (self.buf.len() as u64) < end {
                return Ok(None);
            }
        }
        let off = (pos - self.start) as usize;
        Ok(Some(&self.buf[off..off + len]))
    }
}
