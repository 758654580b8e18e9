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
    }
}

/// Records one request of `op` that started at `started`.
pub fn observe(op: &'static str, started: Instant, err: Option<&Error>) {
    let reg = tessera_metrics::global();
    reg.histogram(
        "tessera_gateway_request_seconds",
        "Gateway request latency by operation, seconds.",
        &[("op", op)],
    )
    .observe_duration(started.elapsed());
    reg.counter(
        "tessera_gateway_requests_total",
        "Gateway requests by operation and result.",
        &[("op", op), ("result", result_name(err))],
    )
    .inc();
}
