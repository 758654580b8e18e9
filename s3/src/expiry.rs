//! Expiry of abandoned multipart uploads.
//!
//! A client that dies between CreateMultipartUpload and Complete or Abort
//! leaves its parts stored for ever. Like S3's
//! `AbortIncompleteMultipartUpload` lifecycle rule (for every bucket), the
//! front aborts uploads initiated more than `--upload-expiry-secs` ago:
//! their parts, then their record.
//!
//! Invariants:
//! - Only upload records (under [`names::UPLOAD_PREFIX`]) initiated before
//!   the cutoff, and the parts of those uploads, are deleted.
//! - Parts go before the record: a sweep cut short leaves a record the
//!   next sweep finds again, never parts nothing names.
//! - Every sweep is bounded: at most [`UPLOADS_EXPIRED_PER_SWEEP_MAX`]
//!   uploads and [`UPLOAD_SWEEP_PAGES_MAX`] listing pages.
//! - Several fronts may sweep at once: deleting what is already gone is a
//!   no-op.

use crate::backend::Backend;
use crate::names;
use std::time::{Duration, SystemTime};

/// Default of `--upload-expiry-secs`: 7 days.
pub const UPLOAD_EXPIRY_DEFAULT_SECS: u64 = 7 * 24 * 3600;
/// Longest wait between two sweeps (shorter expiries sweep at half their
/// length).
pub const UPLOAD_SWEEP_EVERY_MAX: Duration = Duration::from_secs(600);
/// Shortest wait between two sweeps.
pub const UPLOAD_SWEEP_EVERY_MIN: Duration = Duration::from_secs(1);
/// Most uploads one sweep aborts (the next sweep goes on).
pub const UPLOADS_EXPIRED_PER_SWEEP_MAX: u64 = 1000;
/// Most listing pages of upload records one sweep reads.
pub const UPLOAD_SWEEP_PAGES_MAX: usize = 100;
/// Upload records per listing page.
const SWEEP_PAGE_ITEMS: u32 = 1000;

/// How long to wait between sweeps for uploads that expire after `expiry`.
pub fn sweep_every(expiry: Duration) -> Duration {
    (expiry / 2).clamp(UPLOAD_SWEEP_EVERY_MIN, UPLOAD_SWEEP_EVERY_MAX)
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Aborts every upload initiated before `now - expiry` (bounded; see the
/// module's invariants). Returns how many were aborted.
pub async fn sweep(backend: &Backend, expiry: Duration) -> Result<u64, String> {
    let cutoff = now_millis().saturating_sub(expiry.as_millis() as u64);
    backend
        .run(move |gw| async move {
            let mut after = String::new();
            let mut expired = 0u64;
            for _ in 0..UPLOAD_SWEEP_PAGES_MAX {
                let (items, more) = gw
                    .list(names::UPLOAD_PREFIX, &after, SWEEP_PAGE_ITEMS)
                    .await
                    .map_err(|e| format!("listing upload records: {e}"))?;
                for it in &items {
                    if it.created_unix_millis >= cutoff {
                        continue;
                    }
                    let Some(id) = it.key.rsplit('/').next().filter(|id| names::check_upload_id(id))
                    else {
                        continue;
                    };
                    let (parts, _) = gw
                        .list(
                            &names::parts_prefix(id),
                            "",
                            names::PART_NUMBER_MAX as u32,
                        )
                        .await
                        .map_err(|e| format!("listing the parts of upload {id}: {e}"))?;
                    for p in &parts {
                        gw.delete(&p.key)
                            .await
                            .map_err(|e| format!("deleting {}: {e}", p.key))?;
                    }
                    gw.delete(&it.key)
                        .await
                        .map_err(|e| format!("deleting {}: {e}", it.key))?;
                    tracing::info!(upload = id, record = %it.key, parts = parts.len(), "aborted an expired multipart upload");
                    expired += 1;
                    if expired >= UPLOADS_EXPIRED_PER_SWEEP_MAX {
                        return Ok(expired);
                    }
                }
                match items.last() {
                    Some(last) if more => after = last.key.clone(),
                    _ => break,
                }
            }
            Ok(expired)
        })
        .await
        .map_err(|_| "the gateway connection stopped".to_string())?
}

/// Sweeps for ever, every [`sweep_every`]`(expiry)`.
pub async fn run(backend: Backend, expiry: Duration) {
    let every = sweep_every(expiry);
    loop {
        tokio::time::sleep(every).await;
        match sweep(&backend, expiry).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(aborted = n, "expired multipart uploads"),
            Err(e) => {
                tracing::warn!(error = %e, "the upload expiry sweep failed; it runs again later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_at_half_the_expiry_within_bounds() {
        assert_eq!(sweep_every(Duration::from_secs(4)), Duration::from_secs(2));
        assert_eq!(
            sweep_every(Duration::from_millis(10)),
            UPLOAD_SWEEP_EVERY_MIN
        );
        assert_eq!(
            sweep_every(Duration::from_secs(UPLOAD_EXPIRY_DEFAULT_SECS)),
            UPLOAD_SWEEP_EVERY_MAX
        );
    }
}
