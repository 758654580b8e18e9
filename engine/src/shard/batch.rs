//! One group-commit batch being built: its records, its payload bytes, and
//! the layout of its body on disk.
//!
//! Body layout: the table of record headers (each with its id) first, then
//! the payloads in append order; a payload that is a whole number of 4 KiB
//! blocks starts on a block boundary of the file, the gap before it is
//! zeros. Until [`PendingBatch::close`] the exact layout is unknown (the
//! table grows), so appends are checked against an upper bound
//! ([`PendingBatch::bound_with`]).
//!
//! Where payloads wait ([`Payloads`]): a batch whose first payload is a
//! large whole-block one stages its payloads in an aligned device buffer,
//! laid out exactly as they will lie on disk from that first payload on
//! (its block boundary does not depend on the table's final length, and
//! every later offset keeps its alignment relative to it), and that buffer
//! is written as is: one copy of each payload fewer. Other batches copy
//! payloads into a vector, and into the write buffer at flush. Both give
//! the same bytes on disk.

use super::{Entry, Result};
use crate::format::{
    encode_record_header, is_block_payload, RecordKind, BATCH_HEADER_BYTES, RECORD_HEADER_BYTES,
};
use crate::limits::IO_ALIGN_BYTES;
use crate::reader::align_up;
use futures::channel::oneshot;

/// Most bytes of zeros one block-aligned payload can need before it.
const ALIGN_GAP_MAX: usize = IO_ALIGN_BYTES as usize - 1;

/// Zeros for the crc of the gap before a block-aligned payload.
static ZEROS: [u8; ALIGN_GAP_MAX] = [0; ALIGN_GAP_MAX];

/// The crc a record is stored with, and the crc of the bytes actually
/// queued. They differ only for a compaction copy of a rotten record, which
/// keeps its stored crc (it stays detectably rotten) while the batch's body
/// crc must cover the bytes really written.
#[derive(Clone, Copy, Debug)]
pub(super) struct PayloadCrc {
    pub stored: u32,
    pub of_bytes: u32,
}

impl PayloadCrc {
    /// A payload whose stored crc is that of its bytes.
    pub fn of(crc: u32) -> Self {
        PayloadCrc {
            stored: crc,
            of_bytes: crc,
        }
    }
}

pub(super) struct PendingRecord {
    pub id: Box<[u8]>,
    pub tomb: bool,
    /// Where its payload is in [`PendingBatch::payloads`].
    pub payload_at: usize,
    pub payload_len: u32,
    pub crc: u32,
    /// crc32c of the queued payload bytes (see [`PayloadCrc`]).
    pub bytes_crc: u32,
    pub seq: u64,
    /// Offsets in the body, set by `close`.
    pub hdr_off: u32,
    pub payload_off: u32,
    /// For compaction copies: only live if the index still points here.
    pub cond: Option<(u64, u32)>,
    pub waiter: Option<oneshot::Sender<Result<()>>>,
}

impl PendingRecord {
    /// The index entry this record makes once durable in `segment`, with the
    /// batch body starting at `body_at`.
    pub fn entry(&self, segment: u64, body_at: u64) -> Entry {
        let off = if self.tomb {
            self.hdr_off
        } else {
            self.payload_off
        };
        Entry {
            segment,
            offset: (body_at + off as u64) as u32,
            rec_len: (RECORD_HEADER_BYTES + self.id.len()) as u32 + self.payload_len,
            payload_len: self.payload_len,
            crc: self.crc,
            seq: self.seq,
            tomb: self.tomb,
        }
    }
}

/// When a batch stages its payloads, and in how large a buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stage {
    /// Smallest whole-block first payload that makes a batch staged.
    pub min_payload: usize,
    /// Size of the staging buffer (the payload's own, if larger).
    pub bytes: usize,
}

/// Where a batch's payload bytes wait for their flush.
enum Payloads<B> {
    /// Copied here, and into the write buffer at flush time.
    Copied(Vec<u8>),
    /// Staged in an aligned buffer whose byte 0 lies on the block boundary
    /// where the first payload goes; written from there as is. `None` once
    /// taken for the write.
    Staged { buf: Option<B>, len: usize },
}

pub(super) struct PendingBatch<B> {
    pub segment: u64,
    /// File offset of the batch header.
    pub start: u64,
    pub records: Vec<PendingRecord>,
    payloads: Payloads<B>,
    /// Sum of the payload lengths.
    payload_bytes: usize,
    table_len: usize,
    aligned: usize,
    body_len: usize,
    pub pad: u32,
    pub closed: bool,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> PendingBatch<B> {
    pub fn new(segment: u64, start: u64) -> Self {
        PendingBatch {
            segment,
            start,
            records: Vec::new(),
            payloads: Payloads::Copied(Vec::new()),
            payload_bytes: 0,
            table_len: 0,
            aligned: 0,
            body_len: 0,
            pad: 0,
            closed: false,
        }
    }

    /// Upper bound of the body length if a record with an id of `id_len`
    /// bytes and a payload of `payload_len` bytes were added.
    pub fn bound_with(&self, id_len: usize, payload_len: usize) -> usize {
        let aligned = self.aligned + is_block_payload(payload_len) as usize;
        self.table_len
            + RECORD_HEADER_BYTES
            + id_len
            + self.payload_bytes
            + payload_len
            + aligned * ALIGN_GAP_MAX
    }

    /// Upper bound of the body length as it is.
    pub fn bound(&self) -> usize {
        self.table_len + self.payload_bytes + self.aligned * ALIGN_GAP_MAX
    }

    /// Body bound of a batch holding just this one record.
    pub fn single_bound(id_len: usize, payload_len: usize) -> usize {
        RECORD_HEADER_BYTES
            + id_len
            + payload_len
            + is_block_payload(payload_len) as usize * ALIGN_GAP_MAX
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Queues a record. `alloc` gives an aligned device buffer, used when
    /// this is the batch's first payload and it is a whole-block one of at
    /// least `stage.min_payload`: the batch then stages its payloads in a
    /// buffer of `stage.bytes` (or the payload's own size, if larger).
    /// Callers keep the body within `stage.bytes` by checking
    /// [`PendingBatch::bound_with`] first.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        kind: RecordKind,
        id: &[u8],
        payload: &[u8],
        crc: PayloadCrc,
        seq: u64,
        cond: Option<(u64, u32)>,
        waiter: oneshot::Sender<Result<()>>,
        stage: Stage,
        alloc: impl FnOnce(usize) -> B,
    ) {
        debug_assert!(!self.closed);
        let block = is_block_payload(payload.len());
        // (The scan for an earlier payload runs only for large payloads,
        // which batches hold few of.)
        if block && payload.len() >= stage.min_payload && self.records.iter().all(|r| r.tomb) {
            let cap = align_up(payload.len().max(stage.bytes) as u64) as usize;
            self.payloads = Payloads::Staged {
                buf: Some(alloc(cap)),
                len: 0,
            };
        }
        let payload_at = match &mut self.payloads {
            Payloads::Copied(v) => {
                v.extend_from_slice(payload);
                v.len() - payload.len()
            }
            Payloads::Staged { buf, len } => {
                let dst = buf.as_mut().expect("staged until the flush").as_mut();
                let at = if block {
                    align_up(*len as u64) as usize
                } else {
                    *len
                };
                assert!(
                    at + payload.len() <= dst.len(),
                    "staged payloads overran their buffer: bound_with was not checked"
                );
                dst[*len..at].fill(0);
                dst[at..at + payload.len()].copy_from_slice(payload);
                *len = at + payload.len();
                at
            }
        };
        self.payload_bytes += payload.len();
        self.table_len += RECORD_HEADER_BYTES + id.len();
        self.aligned += block as usize;
        self.records.push(PendingRecord {
            id: id.into(),
            tomb: kind == RecordKind::Tombstone,
            payload_at,
            payload_len: payload.len() as u32,
            crc: crc.stored,
            bytes_crc: crc.of_bytes,
            seq,
            hdr_off: 0,
            payload_off: 0,
            cond,
            waiter: Some(waiter),
        });
    }

    /// Fixes the layout; with `pad`, the batch ends on a block boundary (it
    /// is followed by another batch of the same flush).
    pub fn close(&mut self, pad: bool) {
        let body_at = self.start + BATCH_HEADER_BYTES as u64;
        let mut hdr = 0u32;
        let mut pos = self.table_len as u64;
        for r in &mut self.records {
            r.hdr_off = hdr;
            hdr += (RECORD_HEADER_BYTES + r.id.len()) as u32;
            if r.tomb {
                continue;
            }
            if is_block_payload(r.payload_len as usize) {
                pos = align_up(body_at + pos) - body_at;
            }
            r.payload_off = pos as u32;
            pos += r.payload_len as u64;
        }
        self.body_len = pos as usize;
        if let Some(head) = self.staged_at() {
            debug_assert!(self
                .records
                .iter()
                .filter(|r| !r.tomb)
                .all(|r| r.payload_off as usize == head + r.payload_at));
        }
        let end = body_at + pos;
        self.pad = if pad { (align_up(end) - end) as u32 } else { 0 };
        self.closed = true;
    }

    /// Body length (after `close`).
    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// Bytes of the header table.
    pub fn table_len(&self) -> usize {
        self.table_len
    }

    /// File offset just past the batch and its padding (after `close`).
    pub fn end(&self) -> u64 {
        self.start + BATCH_HEADER_BYTES as u64 + self.body_len as u64 + self.pad as u64
    }

    /// For a staged batch (after `close`): where in the body its staged
    /// buffer starts (a block boundary of the file).
    pub fn staged_at(&self) -> Option<usize> {
        match self.payloads {
            Payloads::Staged { .. } => self
                .records
                .iter()
                .find(|r| !r.tomb)
                .map(|r| r.payload_off as usize - r.payload_at),
            Payloads::Copied(_) => None,
        }
    }

    /// Takes a staged batch's buffer for the write (after `close`), with
    /// the bytes of it the body uses.
    pub fn take_stage(&mut self) -> Option<(B, usize)> {
        match &mut self.payloads {
            Payloads::Staged { buf, len } => buf.take().map(|b| (b, *len)),
            Payloads::Copied(_) => None,
        }
    }

    /// Writes the body (after `close`) into `dst` and returns the body's
    /// crc32c. `dst` is the whole body (`body_len` bytes), or for a staged
    /// batch the part before its staged buffer (`staged_at` bytes: the
    /// table and the zeros after it).
    ///
    /// The crc is folded from the table's, the zero gaps' and the payloads'
    /// own crcs (computed when each was queued) rather than by reading the
    /// body again: one pass over the payload bytes fewer. Torn writes are
    /// caught all the same (the crc is that of the intended body); a payload
    /// damaged in memory after its crc was taken fails its record crc on
    /// every read.
    pub fn write_body(&self, dst: &mut [u8]) -> u32 {
        let mut table = Vec::with_capacity(self.table_len);
        for r in &self.records {
            let kind = if r.tomb {
                RecordKind::Tombstone
            } else {
                RecordKind::Put
            };
            encode_record_header(
                &mut table,
                kind,
                &r.id,
                r.payload_len,
                r.crc,
                r.seq,
                r.payload_off,
            );
        }
        dst[..table.len()].copy_from_slice(&table);
        let mut crc = crc32c::crc32c(&table);
        let copied = match &self.payloads {
            Payloads::Copied(v) => Some(v),
            Payloads::Staged { .. } => None,
        };
        let mut filled = table.len();
        for r in self.records.iter().filter(|r| !r.tomb) {
            let (at, len) = (r.payload_off as usize, r.payload_len as usize);
            crc = crc32c::crc32c_append(crc, &ZEROS[..at - filled]);
            crc = crate::crc::combine(crc, r.bytes_crc, len);
            if let Some(payloads) = copied {
                dst[filled..at].fill(0);
                dst[at..at + len].copy_from_slice(&payloads[r.payload_at..r.payload_at + len]);
            }
            filled = at + len;
        }
        // The rest is zeros: after the last payload, or (staged) after the
        // table up to the staged buffer.
        let rest = if copied.is_some() {
            filled
        } else {
            table.len()
        };
        dst[rest..].fill(0);
        crc
    }
}
