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

/// How often the read cache's counters are copied into the registry.
pub const CACHE_METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies the warm-buffer pool's counters into the registry (see
/// [`crate::warm`]; copied with the cache's).
pub fn warm(s: &crate::warm::WarmStats, ready_bytes: usize) {
    let r = tessera_metrics::global();
    for (result, v) in [("hit", s.hits), ("miss", s.misses)] {
        r.counter(
            "tessera_gateway_warm_buffers_total",
            "Large stripe buffers handed out already faulted in by the helper \
             thread (hit) or allocated on the executor (miss: none of that \
             capacity was ready).",
            &[("result", result)],
        )
        .mirror(v);
    }
    r.gauge(
        "tessera_gateway_warm_buffers_ready_bytes",
        "Bytes of stripe buffers the helper thread holds ready.",
        &[],
    )
    .set(ready_bytes as f64);
}

/// Records the bytes of the read cache's memory taken at start (see
/// [`crate::memory`]; 0 until the pretouch ends, and when it is off).
pub fn cache_memory_taken(bytes: u64) {
    tessera_metrics::global()
        .gauge(
            "tessera_gateway_cache_memory_taken_bytes",
            "Bytes of memory the gateway touched once at start for its read \
             cache, so that filling it takes no page faults (0: not yet, or \
             --cache-lazy-memory).",
            &[],
        )
        .set(bytes as f64);
}

/// Copies the read cache's counters into the registry (they are kept by
/// the executor's cache, which the metrics thread cannot read).
pub fn cache(s: &crate::cache::CacheStats) {
    let r = tessera_metrics::global();
    for (event, v) in [
        ("hit", s.hits),
        ("miss", s.misses),
        ("inserted", s.inserted),
        ("evicted", s.evicted),
        ("rejected", s.rejected),
    ] {
        r.counter(
            "tessera_gateway_cache_events_total",
            "Read cache lookups (hit, miss) and entries inserted, evicted from \
             the main part, or rejected by the admission filter (used less \
             often than the entry they would have evicted).",
            &[("event", event)],
        )
        .mirror(v);
    }
    for (name, help, v) in [
        (
            "tessera_gateway_cache_bytes",
            "Bytes the read cache holds.",
            s.bytes,
        ),
        (
            "tessera_gateway_cache_capacity_bytes",
            "Bytes the read cache may hold (0: off).",
            s.capacity_bytes,
        ),
    ] {
        r.gauge(name, help, &[]).set(v as f64);
    }
}
