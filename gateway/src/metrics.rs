//! The gateway's Prometheus metrics (served with `--metrics ADDR`):
//! requests by operation and result, their latency, the steps of a write
//! the client waits for, and object bytes in and out.

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

/// A step of a write that its client waits for, timed in
/// `tessera_gateway_write_stage_seconds{stage}`: where a slow write spends
/// its time (metad's WAL group, the chunk servers, or metad's metadata
/// group), seen from the gateway, waits in its batches included. Writes
/// completed by WAL replay are timed too (rare: replay abandons a blob
/// write that was not committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStage {
    /// The WAL append of the write's intent (of a document: the document).
    Wal = 0,
    /// The shard writes the answer waits for: every replica of a replicated
    /// object; for an erasure-coded one (or a document's cold part), the
    /// stripes still being written once its last byte has arrived (earlier
    /// stripes are written while the client is still sending).
    Shards = 1,
    /// The compare-and-set commit of the record in metad.
    Commit = 2,
}

impl WriteStage {
    /// Every stage, in the order a write goes through them.
    pub const ALL: [WriteStage; 3] = [WriteStage::Wal, WriteStage::Shards, WriteStage::Commit];

    /// The `stage` label.
    pub fn name(self) -> &'static str {
        match self {
            WriteStage::Wal => "wal",
            WriteStage::Shards => "shards",
            WriteStage::Commit => "commit",
        }
    }
}

/// Records that `stage` of one write, begun at `started`, is over (whatever
/// its outcome).
pub fn write_stage(stage: WriteStage, started: Instant) {
    thread_local! {
        static STAGES: [std::sync::Arc<tessera_metrics::Histogram>; 3] = WriteStage::ALL.map(|s| {
            tessera_metrics::global().histogram(
                "tessera_gateway_write_stage_seconds",
                "Steps of a write its client waits for (wal: the WAL append; \
                 shards: the shard writes left once the last byte arrived; \
                 commit: the record's compare-and-set), seconds.",
                &[("stage", s.name())],
            )
        });
    }
    let took = started.elapsed();
    STAGES.with(|h| h[stage as usize].observe_duration(took));
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
