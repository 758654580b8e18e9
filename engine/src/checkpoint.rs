//! The index checkpoint: a snapshot of one shard's index, so that a restart
//! replays only the log written after it.
//!
//! Layout (little-endian): header `[magic u64][version u16][pad u16][shard
//! u32][content_len u64][next_seq u64][next_flush_id u64][next_segment_id
//! u64][watermark_segment u64][watermark_offset u64][segments u32][entries
//! u64]`, then per segment `[id u64][end u64][min_seq u64]`, then per entry
//! `[id_len u16][id][segment u64][offset u32][rec_len u32][payload_len
//! u32][crc u32][seq u64][tomb u8]`, then the crc32c of all of it. The file is
//! padded with zeros to the I/O alignment; `content_len` says where it ends.
//!
//! Invariant: the snapshot holds only durable records, and the watermark is
//! the durable end of the newest segment when it was taken; everything after
//! the watermark is replayed from the log.

use crate::limits::ID_LEN_MAX_BYTES;
use crate::shard::Entry;

const MAGIC: u64 = u64::from_le_bytes(*b"TSCKPT01");
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 76;
const SEGMENT_BYTES: usize = 24;
const ENTRY_FIXED_BYTES: usize = 2 + 8 + 4 + 4 + 4 + 4 + 8 + 1;

/// A segment as the checkpoint saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointSegment {
    pub id: u64,
    pub end: u64,
    pub min_seq: u64,
}

/// A decoded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub shard: u32,
    pub next_seq: u64,
    pub next_flush_id: u64,
    pub next_segment_id: u64,
    pub watermark_segment: u64,
    pub watermark_offset: u64,
    pub segments: Vec<CheckpointSegment>,
    pub entries: Vec<(Box<[u8]>, Entry)>,
}

/// Everything about the checkpoint except its entries, for [`encode`].
pub struct CheckpointHead<'a> {
    pub shard: u32,
    pub next_seq: u64,
    pub next_flush_id: u64,
    pub next_segment_id: u64,
    pub watermark_segment: u64,
    pub watermark_offset: u64,
    pub segments: &'a [CheckpointSegment],
}

/// Encodes a checkpoint of `entries` (count given up front).
pub fn encode<'e>(
    head: &CheckpointHead<'_>,
    count: u64,
    entries: impl Iterator<Item = (&'e [u8], &'e Entry)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        HEADER_BYTES + head.segments.len() * SEGMENT_BYTES + count as usize * 48,
    );
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&head.shard.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // content_len, patched below
    for v in [
        head.next_seq,
        head.next_flush_id,
        head.next_segment_id,
        head.watermark_segment,
        head.watermark_offset,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(head.segments.len() as u32).to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_BYTES);
    for s in head.segments {
        for v in [s.id, s.end, s.min_seq] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut n = 0u64;
    for (id, e) in entries {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id);
        out.extend_from_slice(&e.segment.to_le_bytes());
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.rec_len.to_le_bytes());
        out.extend_from_slice(&e.payload_len.to_le_bytes());
        out.extend_from_slice(&e.crc.to_le_bytes());
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.push(e.tomb as u8);
        n += 1;
    }
    assert_eq!(n, count, "checkpoint entry count must match the index");
    let content_len = out.len() as u64 + 4;
    out[16..24].copy_from_slice(&content_len.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("checkpoint truncated")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| "short")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "short")?,
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "short")?,
        ))
    }
}

/// Decodes and verifies a checkpoint of shard `shard`; says why not.
pub fn decode(b: &[u8], shard: u32) -> Result<Checkpoint, String> {
    let mut c = Cur { b, at: 0 };
    if c.u64()? != MAGIC {
        return Err("bad magic".into());
    }
    if c.u16()? != VERSION {
        return Err("unknown checkpoint version".into());
    }
    c.u16()?;
    let got_shard = c.u32()?;
    if got_shard != shard {
        return Err(format!(
            "checkpoint belongs to shard {got_shard}, not {shard}"
        ));
    }
    let content_len = c.u64()? as usize;
    if content_len < HEADER_BYTES + 4 || content_len > b.len() {
        return Err("checkpoint length out of range".into());
    }
    let body = &b[..content_len - 4];
    let want = u32::from_le_bytes(
        b[content_len - 4..content_len]
            .try_into()
            .map_err(|_| "short")?,
    );
    if crc32c::crc32c(body) != want {
        return Err("checkpoint checksum mismatch".into());
    }
    let mut c = Cur { b: body, at: 24 };
    let next_seq = c.u64()?;
    let next_flush_id = c.u64()?;
    let next_segment_id = c.u64()?;
    let watermark_segment = c.u64()?;
    let watermark_offset = c.u64()?;
    let nseg = c.u32()? as usize;
    let nent = c.u64()? as usize;
    if nseg * SEGMENT_BYTES > body.len() || nent.saturating_mul(ENTRY_FIXED_BYTES + 1) > body.len()
    {
        return Err("checkpoint counts exceed its size".into());
    }
    let mut segments = Vec::with_capacity(nseg);
    for _ in 0..nseg {
        segments.push(CheckpointSegment {
            id: c.u64()?,
            end: c.u64()?,
            min_seq: c.u64()?,
        });
    }
    let mut entries = Vec::with_capacity(nent);
    for _ in 0..nent {
        let id_len = c.u16()? as usize;
        if id_len == 0 || id_len > ID_LEN_MAX_BYTES {
            return Err("checkpoint entry id length out of range".into());
        }
        let id: Box<[u8]> = c.take(id_len)?.into();
        let e = Entry {
            segment: c.u64()?,
            offset: c.u32()?,
            rec_len: c.u32()?,
            payload_len: c.u32()?,
            crc: c.u32()?,
            seq: c.u64()?,
            tomb: c.u8()? != 0,
        };
        entries.push((id, e));
    }
    if c.at != body.len() {
        return Err("trailing bytes in checkpoint".into());
    }
    Ok(Checkpoint {
        shard,
        next_seq,
        next_flush_id,
        next_segment_id,
        watermark_segment,
        watermark_offset,
        segments,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip_and_corruption(ids in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..40), 0..50),
                                    flip in any::<usize>()) {
            let entries: Vec<(Box<[u8]>, Entry)> = ids.into_iter().enumerate().map(|(i, id)| (id.into_boxed_slice(), Entry {
                segment: i as u64, offset: 4096 + i as u32, rec_len: 100, payload_len: 60, crc: i as u32, seq: i as u64 + 1, tomb: i % 3 == 0 })).collect();
            let segs = [CheckpointSegment { id: 1, end: 8192, min_seq: 1 }];
            let head = CheckpointHead { shard: 2, next_seq: 99, next_flush_id: 7, next_segment_id: 3, watermark_segment: 1, watermark_offset: 8192, segments: &segs };
            let bytes = encode(&head, entries.len() as u64, entries.iter().map(|(k, e)| (&k[..], e)));
            let mut padded = bytes.clone();
            padded.resize(bytes.len().div_ceil(4096) * 4096, 0);
            let got = decode(&padded, 2).unwrap();
            prop_assert_eq!(&got.entries, &entries);
            prop_assert_eq!(got.next_seq, 99);
            prop_assert!(decode(&padded, 3).is_err());
            let mut bad = bytes.clone();
            let bit = flip % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&bad, 2).is_err());
        }
    }
}
