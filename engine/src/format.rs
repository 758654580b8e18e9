//! On-disk formats: segment header, batch header, record header.
//!
//! A segment file is `[segment header (4 KiB)][batch][batch]...`. A *batch*
//! is one group-commit buffer: `[batch header][body][zero padding]`, and its
//! body is a table of record headers followed by the payloads:
//! `[record header + id]...[payload]...`. A payload that is a whole number of
//! 4 KiB blocks starts on a block boundary (zeros fill the gap before it), so
//! reading a 4 KiB shard reads one block.
//! One *flush* writes one or more batches of one segment and then issues one
//! fdatasync; its batches share a flush id and carry FIRST/LAST flags, so the
//! recovery scan can tell a flush that fully landed from a torn one.
//! A *record* is its header and id in the table, plus its payload, whose
//! offset in the body the header gives.
//!
//! All integers are little-endian. Every header carries its own crc32c; the
//! batch header carries the crc32c of its body (all its records), and each
//! record the crc32c of its payload. Decoders never panic on any input.

use crate::limits::ID_LEN_MAX_BYTES;

/// Magic of a segment header ("TSSEGv01").
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"TSSEGv01");
/// Magic of a batch header ("TSB1").
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"TSB1");
/// Magic of a record header ("TSR1").
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TSR1");
/// On-disk format version written in segment and batch headers.
pub const FORMAT_VERSION: u16 = 1;

/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 44;
/// Size of the fixed part of a record header (the id follows it).
pub const RECORD_HEADER_BYTES: usize = 32;
/// Bytes of the segment header that are meaningful (rest is zero).
pub const SEGMENT_HEADER_USED_BYTES: usize = 36;

/// Batch flag: first batch of its flush.
pub const FLAG_FIRST: u16 = 1;
/// Batch flag: last batch of its flush.
pub const FLAG_LAST: u16 = 2;
/// Batch flag: nothing after this batch in the segment belongs to the log
/// (written after a torn tail was cut, so its remnants are never read again).
pub const FLAG_SEAL: u16 = 4;
/// Batch flag: this flush went to disk while the flush before it was still
/// in flight (it started on a block boundary after it). Recovery uses it to
/// tell a crash that tore both (cut) from rot (salvaged).
pub const FLAG_PIPELINED: u16 = 8;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header at the start of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segment_id: u64,
    pub shard: u32,
    pub segment_bytes: u64,
}

impl SegmentHeader {
    /// Encodes into the first bytes of `out` (at least
    /// [`SEGMENT_HEADER_USED_BYTES`] long).
    pub fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[10..12].copy_from_slice(&0u16.to_le_bytes());
        out[12..16].copy_from_slice(&self.shard.to_le_bytes());
        out[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        out[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes, or `None` when magic, version or crc do not match.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < SEGMENT_HEADER_USED_BYTES {
            return None;
        }
        if u64_at(b, 0) != SEGMENT_MAGIC || u16_at(b, 8) != FORMAT_VERSION {
            return None;
        }
        if crc32c::crc32c(&b[0..32]) != u32_at(b, 32) {
            return None;
        }
        Some(SegmentHeader {
            shard: u32_at(b, 12),
            segment_id: u64_at(b, 16),
            segment_bytes: u64_at(b, 24),
        })
    }
}

/// The header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub flags: u16,
    pub segment_id: u64,
    pub flush_id: u64,
    pub body_len: u32,
    pub pad_len: u32,
    /// Bytes of the record-header table at the start of the body.
    pub table_len: u32,
    pub body_crc: u32,
}

impl BatchHeader {
    /// Encodes into `out[..BATCH_HEADER_BYTES]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.segment_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.flush_id.to_le_bytes());
        out[24..28].copy_from_slice(&self.body_len.to_le_bytes());
        out[28..32].copy_from_slice(&self.pad_len.to_le_bytes());
        out[32..36].copy_from_slice(&self.table_len.to_le_bytes());
        out[36..40].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..40]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a header whose magic, version and crc are right, or `None`.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < BATCH_HEADER_BYTES
            || u32_at(b, 0) != BATCH_MAGIC
            || u16_at(b, 4) != FORMAT_VERSION
        {
            return None;
        }
        if crc32c::crc32c(&b[0..40]) != u32_at(b, 40) {
            return None;
        }
        let table_len = u32_at(b, 32);
        if table_len > u32_at(b, 24) {
            return None;
        }
        Some(BatchHeader {
            flags: u16_at(b, 6),
            segment_id: u64_at(b, 8),
            flush_id: u64_at(b, 16),
            body_len: u32_at(b, 24),
            pad_len: u32_at(b, 28),
            table_len,
            body_crc: u32_at(b, 36),
        })
    }

    /// Bytes from the start of this header to the start of the next batch.
    pub fn span(&self) -> u64 {
        BATCH_HEADER_BYTES as u64 + self.body_len as u64 + self.pad_len as u64
    }
}

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A shard's bytes.
    Put = 1,
    /// The shard is deleted.
    Tombstone = 2,
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub id_len: u16,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub seq: u64,
    /// Where the payload starts, from the start of the batch body.
    pub payload_off: u32,
}

impl RecordHeader {
    /// Total bytes of the record (header, id, payload).
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.id_len as usize + self.payload_len as usize
    }
    /// Bytes of its entry in the header table.
    pub fn table_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.id_len as usize
    }
}

/// Bytes a record with this id and payload length occupies.
pub fn record_len(id_len: usize, payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + id_len + payload_len
}

/// True for a payload that is laid out on a block boundary.
pub fn is_block_payload(len: usize) -> bool {
    len > 0 && len % crate::limits::IO_ALIGN_BYTES as usize == 0
}

/// Appends a record header and id (one entry of a batch's header table).
pub fn encode_record_header(
    out: &mut Vec<u8>,
    kind: RecordKind,
    id: &[u8],
    payload_len: u32,
    payload_crc: u32,
    seq: u64,
    payload_off: u32,
) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.push(kind as u8);
    out.push(0);
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload_crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&payload_off.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 28]), id);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(id);
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the header says.
    Truncated,
    /// Wrong magic, kind or id length, or the header crc does not match.
    BadHeader,
}

/// Decodes the record header at the start of `b` and its id. The payload is
/// elsewhere in the body (`payload_off`) and is *not* verified here.
pub fn decode_record(b: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
    if b.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::Truncated);
    }
    if u32_at(b, 0) != RECORD_MAGIC {
        return Err(RecordError::BadHeader);
    }
    let kind = match b[4] {
        1 => RecordKind::Put,
        2 => RecordKind::Tombstone,
        _ => return Err(RecordError::BadHeader),
    };
    let id_len = u16_at(b, 6);
    if id_len == 0 || id_len as usize > ID_LEN_MAX_BYTES {
        return Err(RecordError::BadHeader);
    }
    let id_end = RECORD_HEADER_BYTES + id_len as usize;
    if b.len() < id_end {
        return Err(RecordError::Truncated);
    }
    let id = &b[RECORD_HEADER_BYTES..id_end];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[0..28]), id);
    if crc != u32_at(b, 28) {
        return Err(RecordError::BadHeader);
    }
    let h = RecordHeader {
        kind,
        id_len,
        payload_len: u32_at(b, 8),
        payload_crc: u32_at(b, 12),
        seq: u64_at(b, 16),
        payload_off: u32_at(b, 24),
    };
    if kind == RecordKind::Tombstone && h.payload_len != 0 {
        return Err(RecordError::BadHeader);
    }
    Ok((h, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_header_roundtrip(id in proptest::collection::vec(any::<u8>(), 1..=ID_LEN_MAX_BYTES),
                                   len in any::<u32>(), crc in any::<u32>(), seq in any::<u64>(), off in any::<u32>()) {
            let mut out = Vec::new();
            encode_record_header(&mut out, RecordKind::Put, &id, len, crc, seq, off);
            prop_assert_eq!(out.len(), RECORD_HEADER_BYTES + id.len());
            let (h, got_id) = decode_record(&out).unwrap();
            prop_assert_eq!(got_id, &id[..]);
            prop_assert_eq!((h.payload_len, h.payload_crc, h.seq, h.payload_off), (len, crc, seq, off));
            prop_assert_eq!(h.table_len(), out.len());
        }

        /// Any single flipped bit in a record header or id is detected.
        #[test]
        fn record_header_bitflip_detected(id in proptest::collection::vec(any::<u8>(), 1..64),
                                          bit in 0usize..(RECORD_HEADER_BYTES + 64) * 8) {
            let mut out = Vec::new();
            encode_record_header(&mut out, RecordKind::Put, &id, 7, crc32c::crc32c(b"payload"), 7, 100);
            let bit = bit % (out.len() * 8);
            out[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode_record(&out).is_err());
        }

        /// Decoding arbitrary bytes never panics.
        #[test]
        fn decoders_total(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&b);
            let _ = BatchHeader::decode(&b);
            let _ = SegmentHeader::decode(&b);
        }

        #[test]
        fn batch_header_bitflip_detected(bit in 0usize..BATCH_HEADER_BYTES * 8) {
            let h = BatchHeader { flags: FLAG_FIRST, segment_id: 3, flush_id: 9, body_len: 100, pad_len: 12, table_len: 40, body_crc: 5 };
            let mut b = [0u8; BATCH_HEADER_BYTES];
            h.encode(&mut b);
            prop_assert_eq!(BatchHeader::decode(&b), Some(h));
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(BatchHeader::decode(&b).is_none());
        }
    }
}
