//! One pass's view of the chunk servers: the registry's states, one
//! inventory per live chunk server (paginated by the chunk client, never
//! one request per shard), the scrubbers' bad-shard reports and each
//! server's scrub progress.

use crate::audit::{NodeState, View};
use crate::bad_copies::BadCopies;
use crate::error::{Error, Result};
use crate::limits::*;
use crate::status::NodeScrub;
use futures::future::join_all;
use std::time::Duration;
use tessera_gateway::nodes::Nodes;
use tessera_gateway::placement::Candidate;

/// Builds the view: draining nodes (`tessera node drain`) are live but
/// take no new copies; removed ones are not in the table (so dead).
/// With `take_reports` the chunk servers' bad-shard reports are taken
/// (they leave the servers' queues) into `bad`; a preview leaves them.
pub async fn take_view(
    nodes: &Nodes,
    dead_grace: Duration,
    bad: &mut BadCopies,
    take_reports: bool,
) -> Result<(View, Vec<NodeScrub>)> {
    nodes.refresh().await?;
    let table = nodes.all();
    let draining = nodes.draining();
    let mut view = View::default();
    for n in &table {
        let state = if n.live {
            NodeState::Live
        } else if n.last_heartbeat_ago_ms < dead_grace.as_millis() as u64 {
            NodeState::Suspect
        } else {
            NodeState::Dead
        };
        view.states.insert(n.node_id.clone(), state);
        if n.live && !draining.contains(&n.node_id) {
            view.candidates.push(Candidate {
                node_id: n.node_id.clone(),
                weight: (n.capacity >> 30).max(1),
                zone: n.zone.clone(),
            });
        }
    }
    let live: Vec<_> = table.iter().filter(|n| n.live).collect();
    let answers = join_all(live.iter().map(|n| async move {
        let c = nodes.client(&n.node_id).await?;
        let inv = c.inventory_all().await?;
        let reports = if take_reports {
            c.bad_shards(BAD_SHARDS_PAGE)
                .await
                .map(|r| r.0)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let scrub = c.scrub_status().await.ok();
        Ok::<_, Error>((inv, reports, scrub))
    }))
    .await;
    let mut total = 0usize;
    let mut scrubs = Vec::new();
    for (n, a) in table.iter().filter(|n| n.live).zip(answers) {
        let mut ns = NodeScrub {
            node_id: n.node_id.clone(),
            state: if draining.contains(&n.node_id) {
                "draining".into()
            } else {
                "live".into()
            },
            ..Default::default()
        };
        match a {
            Ok((inv, reports, scrub)) => {
                total += inv.len();
                if total > INVENTORY_SHARDS_MAX {
                    return Err(Error::Internal(format!(
                        "the inventories hold over {INVENTORY_SHARDS_MAX} shards, more than one pass keeps in memory"
                    )));
                }
                ns.shards = inv.len() as u64;
                let i = view.add_inventoried(&n.node_id);
                for s in inv {
                    view.add_shard(i, s.id);
                }
                for (id, reason) in reports {
                    tracing::info!(node = %n.node_id, shard = %hex(&id), %reason, "bad shard reported");
                    bad.insert(n.node_id.clone(), id);
                }
                if let Some(s) = scrub {
                    ns.scrub_running = s.running;
                    ns.scrub_passes = s.passes;
                    ns.scrub_bytes_verified = s.bytes_verified;
                    ns.scrub_bytes_total = s.bytes_total;
                    ns.scrub_bad_found = s.bad_found;
                }
            }
            Err(e) => {
                // Its shards are pending this pass: neither trusted nor
                // rebuilt.
                tracing::warn!(node = %n.node_id, error = %e, "inventory failed");
                ns.state = "unreachable".into();
            }
        }
        scrubs.push(ns);
    }
    for n in table.iter().filter(|n| !n.live) {
        scrubs.push(NodeScrub {
            node_id: n.node_id.clone(),
            state: match view.state(&n.node_id) {
                NodeState::Suspect => "suspect".into(),
                _ => "dead".into(),
            },
            ..Default::default()
        });
    }
    view.bad = bad.set.clone();
    Ok((view, scrubs))
}

/// Lower-case hex of `b`, for logs.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
