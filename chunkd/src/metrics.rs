//! The chunk server's Prometheus metrics (served with `--metrics ADDR` or
//! the `metrics` key): shard requests by operation and result, their
//! latency, and the bytes they moved.

use std::time::Instant;
use tessera_rpc::RemoteKind;

fn result_name(e: Option<RemoteKind>) -> &'static str {
    match e {
        None => "ok",
        Some(RemoteKind::NotFound) => "not_found",
        Some(RemoteKind::Checksum) => "checksum",
        Some(RemoteKind::TooLarge) => "too_large",
        Some(RemoteKind::InvalidArgument) => "invalid",
        Some(RemoteKind::DiskFull) => "disk_full",
        Some(RemoteKind::Unavailable) => "unavailable",
        Some(RemoteKind::Io) => "io",
        Some(RemoteKind::Internal) => "internal",
    }
}

/// Records one request of `op` that started at `started`.
pub fn observe(op: &'static str, started: Instant, err: Option<RemoteKind>) {
    tessera_metrics::observe_request("chunkd", op, started, result_name(err));
}
