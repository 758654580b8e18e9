//! The healer's Prometheus metrics (served with `--metrics ADDR`): whether
//! this instance leads, its epoch, the repair queue by class, objects by
//! redundancy left, and counters of what repairs did.

use crate::audit::Class;
use crate::status::HealerStatus;
use std::time::Duration;
use tessera_metrics::global;

const CLASSES: [Class; 6] = [
    Class::Lost,
    Class::Missing,
    Class::Dirty,
    Class::Bad,
    Class::DeadNode,
    Class::Rebalance,
];
const LEVELS: [&str; 4] = ["lost", "0", "+1", "+2"];

/// A repair ended with `result` (done, failed, waiting, changed).
pub fn repair(result: &'static str) {
    global()
        .counter(
            "tessera_healer_repairs_total",
            "Repairs by result.",
            &[("result", result)],
        )
        .inc();
}

pub fn shards(rebuilt: u64, moved: u64) {
    let r = global();
    r.counter(
        "tessera_healer_shards_rebuilt_total",
        "Shards rebuilt or copied.",
        &[],
    )
    .add(rebuilt);
    r.counter(
        "tessera_healer_shards_moved_total",
        "Shards moved by rebalancing or draining.",
        &[],
    )
    .add(moved);
}

pub fn bytes(n: u64) {
    global()
        .counter(
            "tessera_healer_bytes_total",
            "Bytes repairs read and wrote.",
            &[],
        )
        .add(n);
}

pub fn orphans_deleted(n: u64) {
    global()
        .counter(
            "tessera_healer_orphans_deleted_total",
            "Orphan shards deleted.",
            &[],
        )
        .add(n);
}

pub fn wal_finished(n: u64) {
    global()
        .counter(
            "tessera_healer_wal_entries_finished_total",
            "WAL entries the healer finished.",
            &[],
        )
        .add(n);
}

pub fn pass(took: Duration) {
    global()
        .histogram(
            "tessera_healer_pass_seconds",
            "Duration of a healer pass, seconds.",
            &[],
        )
        .observe_duration(took);
}

fn leading_gauge(on: bool) {
    leading(on)
}

/// Whether this instance leads now.
pub fn leading(on: bool) {
    global()
        .gauge(
            "tessera_healer_leader",
            "1 while this instance holds the healer lease.",
            &[],
        )
        .set(if on { 1.0 } else { 0.0 });
}

/// Gauges from the status the leader publishes (and `leading`).
pub fn status(st: &HealerStatus, leading: bool) {
    let r = global();
    leading_gauge(leading);
    r.gauge(
        "tessera_healer_epoch",
        "The lease epoch of this instance's last grant.",
        &[],
    )
    .set(st.epoch as f64);
    for c in CLASSES {
        r.gauge(
            "tessera_healer_queue_objects",
            "Objects waiting for repair at the last audit, by class.",
            &[("class", c.name())],
        )
        .set(*st.queue.get(c.name()).unwrap_or(&0) as f64);
    }
    for l in LEVELS {
        r.gauge(
            "tessera_healer_objects",
            "Objects at the last audit by redundancy left (spare shards).",
            &[("redundancy", l)],
        )
        .set(*st.by_redundancy.get(l).unwrap_or(&0) as f64);
    }
}
