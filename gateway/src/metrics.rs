//! The gateway's Prometheus metrics (served with `--metrics ADDR`):
//! requests by operation and result, their latency, and object bytes in
//! and out.

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
        Some(Error::PreconditionFailed(_)) => "precondition_failed",
    }
}

/// Records one request of `op` that started at `started`.
pub fn observe(op: &'static str, started: Instant, err: Option<&Error>) {
    tessera_metrics::observe_request("gateway", op, started, result_name(err));
}

/// Object bytes received from clients (`in`) or sent to them (`out`).
pub fn bytes(direction: &'static str, n: u64) {
    thread_local! {
        static COUNTERS: [std::sync::Arc<tessera_metrics::Counter>; 2] = ["in", "out"].map(|d| {
            tessera_metrics::global().counter(
                "tessera_gateway_object_bytes_total",
                "Object bytes received from clients (in) and sent to them (out).",
                &[("direction", d)],
            )
        });
    }
    let i = usize::from(direction == "out");
    COUNTERS.with(|c| c[i].add(n));
}
