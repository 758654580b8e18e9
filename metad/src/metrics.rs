//! metad's Prometheus metrics (served with `--metrics ADDR`): requests by
//! operation and result with their latency, and per raft group the term,
//! the last log and applied indexes, whether this replica leads, and how
//! often the leader changed.

use crate::replica::Replica;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_metrics::global;

/// How often the raft gauges are refreshed.
pub const RAFT_GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Records one request of `op` that started at `started`; `err` is the
/// failure kind's name, if it failed.
pub fn observe(op: &'static str, started: Instant, err: Option<&'static str>) {
    tessera_metrics::observe_request("metad", op, started, err.unwrap_or("ok"));
}

/// Refreshes the raft gauges every [`RAFT_GAUGES_EVERY`] until the replica
/// is dropped elsewhere (runs on the replica's LocalSet).
pub async fn raft_gauges(rep: Rc<Replica>) {
    let reg = global();
    let mut last_leader: HashMap<u32, Option<u64>> = HashMap::new();
    loop {
        for g in &rep.groups {
            let m = g.raft.metrics().borrow().clone();
            let group = g.id.to_string();
            let l = [("group", group.as_str())];
            reg.gauge(
                "tessera_metad_raft_term",
                "Current raft term, per group.",
                &l,
            )
            .set(m.current_term as f64);
            reg.gauge(
                "tessera_metad_raft_last_log_index",
                "Last log index, per group.",
                &l,
            )
            .set(m.last_log_index.unwrap_or(0) as f64);
            reg.gauge(
                "tessera_metad_raft_applied_index",
                "Last applied index, per group.",
                &l,
            )
            .set(m.last_applied.map_or(0, |x| x.index) as f64);
            reg.gauge(
                "tessera_metad_raft_log_bytes",
                "Encoded bytes of log entries held in memory (and written into every log checkpoint), per group.",
                &l,
            )
            .set(rep.log_bytes(g.id) as f64);
            reg.gauge(
                "tessera_metad_raft_is_leader",
                "1 when this replica leads the group.",
                &l,
            )
            .set(if m.current_leader == Some(rep.id) {
                1.0
            } else {
                0.0
            });
            let prev = last_leader.insert(g.id, m.current_leader);
            if prev.is_some_and(|p| p != m.current_leader) {
                reg.counter(
                    "tessera_metad_raft_leader_changes_total",
                    "Leader changes seen by this replica, per group.",
                    &l,
                )
                .inc();
            }
        }
        // WAL lag, as this replica's state shows it: what gateways logged
        // and have not finished yet (the healer finishes what they leave).
        for p in 0..rep.wal_partitions {
            let Some(g) = rep.wal_group(p) else { continue };
            let (unfinished, bytes, next) = g.sm.with(|d| {
                let w = &d.wal;
                (
                    w.entries.values().filter(|r| !r.finished).count(),
                    w.unfinished_bytes,
                    w.next_offset,
                )
            });
            let part = p.to_string();
            let l = [("partition", part.as_str())];
            reg.gauge(
                "tessera_metad_wal_unfinished_entries",
                "WAL entries appended and not yet finished, per partition.",
                &l,
            )
            .set(unfinished as f64);
            reg.gauge(
                "tessera_metad_wal_unfinished_bytes",
                "Bytes of unfinished WAL entries, per partition.",
                &l,
            )
            .set(bytes as f64);
            reg.gauge(
                "tessera_metad_wal_next_offset",
                "Offset the next WAL append gets, per partition.",
                &l,
            )
            .set(next as f64);
        }
        tokio::time::sleep(RAFT_GAUGES_EVERY).await;
    }
}

/// Counts a refused authentication or call, by reason.
pub fn auth_refused(reason: &'static str) {
    global()
        .counter(
            "tessera_metad_auth_refusals_total",
            "Calls and authentications refused, by reason.",
            &[("reason", reason)],
        )
        .inc();
}

/// Counts a raft message served from a peer, by the transport it came on
/// (`framed`, or `capnp` from a replica that does not speak the framed one).
pub fn raft_message_served(transport: &'static str) {
    global()
        .counter(
            "tessera_metad_raft_messages_total",
            "Raft messages served from peer replicas, by transport (framed or capnp).",
            &[("transport", transport)],
        )
        .inc();
}
