//! The gateway's Prometheus metrics (served with `--metrics ADDR`):
//! requests by operation and result, and their latency.

use crate::error::Error;
use std::time::Instant;

fn result_name(e: Option<&Error>) -> &'static str {
    match e {
        None => "ok",
        Some(Error::NotFound(_)) => "not_found",
        Some(Error::Invalid(_)) => "invalid",
        Some(Error::TooLarge(_)) => "too_large",
        Some(Error::Unavailable(_)) => "unavailable",
        Some(Error::Conflict(_)) => "conflict",
        Some(Error::InsufficientNodes(_)) => "insufficient_nodes",
        Some(Error::DataLoss(_)) => "data_loss",
        Some(Error::Internal(_)) => "internal",
        Some(Error::Unauthenticated(_)) => "unauthenticated",
        Some(Error::PermissionDenied(_)) => "permission_denied",
    }
}

/// Records one request of `op` that started at `started`.
pub fn observe(op: &'static str, started: Instant, err: Option<&Error>) {
    tessera_metrics::observe_request("gateway", op, started, result_name(err));
}
