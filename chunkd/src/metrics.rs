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

/// How often the engine gauges are refreshed.
pub const ENGINE_GAUGES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The engine's totals as gauges and (mirrored) counters.
pub fn engine(s: &tessera_engine::Stats) {
    let r = tessera_metrics::global();
    for (name, help, v) in [
        (
            "tessera_chunkd_live_bytes",
            "Bytes of live shards.",
            s.live_bytes,
        ),
        (
            "tessera_chunkd_dead_bytes",
            "Bytes of replaced or deleted shards not yet compacted.",
            s.dead_bytes,
        ),
        ("tessera_chunkd_live_shards", "Live shards.", s.live_shards),
        (
            "tessera_chunkd_scrub_bytes_verified",
            "Bytes the current (or last) scrub pass has verified.",
            s.scrub.pass_bytes_done,
        ),
        (
            "tessera_chunkd_scrub_bytes_total",
            "Live bytes the current (or last) scrub pass covers.",
            s.scrub.pass_bytes_total,
        ),
        (
            "tessera_chunkd_scrub_running",
            "1 while a scrub pass runs.",
            s.scrub.running as u64,
        ),
        (
            "tessera_chunkd_scrub_passes",
            "Scrub passes completed since start.",
            s.scrub.passes_done,
        ),
        (
            "tessera_chunkd_scrub_bad_found",
            "Bad shards scrubs found since start.",
            s.scrub.bad_found,
        ),
        (
            "tessera_chunkd_segments",
            "Segment files in use.",
            s.segments,
        ),
        (
            "tessera_chunkd_free_segments",
            "Segment files ready for reuse.",
            s.free_segments,
        ),
    ] {
        r.gauge(name, help, &[]).set(v as f64);
    }
    for (name, help, v) in [
        (
            "tessera_chunkd_checksum_errors_total",
            "Shards that failed their crc32c on read or scrub.",
            s.checksum_errors,
        ),
        (
            "tessera_chunkd_io_errors_total",
            "Disk requests that failed.",
            s.io_errors,
        ),
        (
            "tessera_chunkd_compactions_total",
            "Segments compacted.",
            s.compactions,
        ),
        (
            "tessera_chunkd_compacted_bytes_total",
            "Bytes moved by compaction.",
            s.compacted_bytes,
        ),
        (
            "tessera_chunkd_flushed_bytes_total",
            "Bytes written by group commits.",
            s.flushed_bytes,
        ),
    ] {
        r.counter(name, help, &[]).mirror(v);
    }
}

/// Counts a connection refused at the TLS handshake (no certificate, one
/// from another CA, or no TLS at all).
pub fn tls_refused() {
    tessera_metrics::global()
        .counter(
            "tessera_chunkd_auth_refusals_total",
            "Connections refused, by reason.",
            &[("reason", "tls_handshake")],
        )
        .inc();
}
