//! The log's first format (`seg-N.log`: appended with buffered writes and
//! fdatasync, each flush a frame `[len u32][crc32c u32][records]`, the file
//! ending where the last frame does). Read once, to migrate a data directory
//! written by an earlier version into preallocated segments
//! ([`super::segments`]); never written.
//!
//! Its replay rules: a bad frame is the torn last write (dropped, never
//! acknowledged) only if it is the newest file's last frame — it claims to
//! end past the end of the file, or only zeros follow it. A bad frame with
//! data after it, or in an older file, is damage and the replica refuses to
//! start.

use super::{apply_record, records, GroupLog, Record, ReplayReport};
use crate::error::{Error, Result};
use crate::limits::LOG_RECORD_MAX_BYTES;
use std::path::PathBuf;

const FRAME_HEADER_BYTES: usize = 8;

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().unwrap_or_default())
}

/// Why the frame at `off` of `data` is unreadable, if it is, and whether
/// its shape is that of a torn last write.
fn frame_problem(data: &[u8], off: usize) -> Option<(String, bool)> {
    let rest = &data[off..];
    if rest.len() < FRAME_HEADER_BYTES {
        return Some(("a frame header is cut short".into(), true));
    }
    let len = le_u32(&rest[0..4]) as usize;
    let crc = le_u32(&rest[4..8]);
    if len == 0 {
        let zeros = rest.iter().all(|&b| b == 0);
        return Some(("an empty frame".into(), zeros));
    }
    if len > LOG_RECORD_MAX_BYTES {
        return Some((
            format!("a frame length of {len} bytes is impossible"),
            rest.iter().skip(8).all(|&b| b == 0),
        ));
    }
    if len > rest.len() - FRAME_HEADER_BYTES {
        return Some((
            format!("a frame of {len} bytes runs past the end of the file"),
            true,
        ));
    }
    if crc32c::crc32c(&rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len]) != crc {
        let last = rest[FRAME_HEADER_BYTES + len..].iter().all(|&b| b == 0);
        return Some(("a frame fails its crc32c".into(), last));
    }
    None
}

/// Replays the files of a first-format log, oldest first.
pub(super) fn replay(
    images: &[(PathBuf, Vec<u8>)],
    groups: u32,
) -> Result<(Vec<GroupLog>, ReplayReport)> {
    let mut state = vec![GroupLog::default(); groups as usize];
    let mut report = ReplayReport {
        segments: images.len(),
        ..Default::default()
    };
    for (i, (path, data)) in images.iter().enumerate() {
        let is_last = i + 1 == images.len();
        let mut off = 0usize;
        while off < data.len() {
            if let Some((reason, torn_shape)) = frame_problem(data, off) {
                if !is_last || !torn_shape {
                    let reason = if is_last {
                        format!("{reason}, with more data after it (not a torn last write)")
                    } else {
                        format!("{reason} in a segment that is not the newest")
                    };
                    return Err(Error::LogCorrupt {
                        path: path.clone(),
                        offset: off as u64,
                        reason,
                    });
                }
                report.torn_tail_bytes = (data.len() - off) as u64;
                break;
            }
            let len = le_u32(&data[off..]) as usize;
            let payload = &data[off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len];
            let corrupt = |reason: String| Error::LogCorrupt {
                path: path.clone(),
                offset: off as u64,
                reason,
            };
            for body in records(payload).map_err(corrupt)? {
                let rec: Record = bincode::deserialize(body).map_err(|e| {
                    corrupt(format!("a record in a good frame does not decode: {e}"))
                })?;
                apply_record(&mut state, rec).map_err(corrupt)?;
                report.records += 1;
            }
            off += FRAME_HEADER_BYTES + len;
        }
    }
    Ok((state, report))
}

/// Encodes `records` as one first-format frame (tests build old logs).
#[cfg(test)]
pub(super) fn frame(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + records.len());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(records).to_le_bytes());
    out.extend_from_slice(records);
    out
}
