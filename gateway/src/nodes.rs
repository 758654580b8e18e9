//! The chunk servers the gateway knows: the registry's node table (read
//! from metad every [`NODES_REFRESH_MILLIS`]), one chunk client per node
//! (made on first use, again when the node's address changes) and each
//! node's read latency (an exponentially weighted mean) for choosing the
//! fastest replica.
//!
//! Operators' node states ([`NodeStates`], one metad key read with the
//! table): a *draining* node takes no new shards (the healer moves its
//! shards away); a *removed* node is dropped from the table altogether.

use crate::bridge::MetaBridge;
use crate::error::{Error, Result};
use crate::limits::NODES_REFRESH_MILLIS;
use crate::placement::Candidate;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_metad::client::NodeEntry;
use tessera_rpc::{ChunkClient, ClientOptions};

/// Weight of a new latency sample in a node's mean.
const LATENCY_EWMA_WEIGHT: f64 = 0.2;
/// A chunk server call's limit: past it a shard counts as missing and the
/// stripe is rebuilt or written elsewhere.
const CHUNK_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to a chunk server gives up after this.
const CHUNK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Shard read latencies kept for the hedging threshold.
const RECENT_READS_MAX: usize = 1024;
/// Hedging waits at least this long (and this long before any sample).
const HEDGE_MIN: Duration = Duration::from_millis(2);
/// Hedging waits at most this long.
const HEDGE_MAX: Duration = Duration::from_millis(500);

/// How stale a replica's copy of the node states may be when read with
/// the table (a drain takes effect within this plus the refresh interval).
const NODE_STATES_STALENESS_MAX: Duration = Duration::from_secs(1);

/// The metad key holding [`NodeStates`] (JSON).
pub const NODE_STATES_KEY: &[u8] = b"cluster/nodes";

/// What operators said about chunk servers (`tessera node drain|remove`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStates {
    #[serde(default)]
    pub draining: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

impl NodeStates {
    /// The states in `bytes`; an unreadable value counts as none (and is
    /// logged), so that a damaged key never stops reads and writes.
    pub fn decode(bytes: &[u8]) -> NodeStates {
        serde_json::from_slice(bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the node states key does not decode; ignoring it");
            NodeStates::default()
        })
    }
}

pub struct Nodes {
    bridge: MetaBridge,
    /// The latest shard read latencies, microseconds (a ring).
    recent_us: RefCell<std::collections::VecDeque<u32>>,
    /// The p95 of `recent_us`, recomputed every 64 samples.
    p95: std::cell::Cell<Duration>,
    samples: std::cell::Cell<u64>,
    table: RefCell<Vec<NodeEntry>>,
    draining: RefCell<std::collections::HashSet<String>>,
    refreshed: RefCell<Option<Instant>>,
    clients: RefCell<HashMap<String, (String, Rc<ChunkClient>)>>,
    latency_us: RefCell<HashMap<String, f64>>,
    /// TLS to chunk servers.
    tls: Option<tessera_tls::Connector>,
    /// The local socket directory of this machine (see `ClientOptions`).
    local_socket_dir: Option<std::path::PathBuf>,
}

impl Nodes {
    pub fn new(
        bridge: MetaBridge,
        tls: Option<tessera_tls::Connector>,
        local_socket_dir: Option<std::path::PathBuf>,
    ) -> Rc<Self> {
        Rc::new(Nodes {
            bridge,
            tls,
            local_socket_dir,
            recent_us: RefCell::new(std::collections::VecDeque::with_capacity(RECENT_READS_MAX)),
            p95: std::cell::Cell::new(HEDGE_MIN),
            samples: std::cell::Cell::new(0),
            table: RefCell::new(Vec::new()),
            draining: RefCell::new(Default::default()),
            refreshed: RefCell::new(None),
            clients: RefCell::new(HashMap::new()),
            latency_us: RefCell::new(HashMap::new()),
        })
    }

    /// Reads the node table from the registry now.
    pub async fn refresh(&self) -> Result<()> {
        let (mut nodes, states) = self
            .bridge
            .call("listing chunk servers", |c| async move {
                let nodes = c.list_nodes().await?;
                let states = c
                    .get(
                        NODE_STATES_KEY,
                        tessera_metad::client::Consistency::Follower {
                            max_staleness: NODE_STATES_STALENESS_MAX,
                        },
                    )
                    .await
                    .ok()
                    .flatten();
                Ok((nodes, states))
            })
            .await?;
        let states = states
            .map(|v| NodeStates::decode(&v.value))
            .unwrap_or_default();
        nodes.retain(|n| !states.removed.contains(&n.node_id));
        *self.table.borrow_mut() = nodes;
        *self.draining.borrow_mut() = states.draining.into_iter().collect();
        *self.refreshed.borrow_mut() = Some(Instant::now());
        Ok(())
    }

    /// Refreshes the table when it is older than the refresh interval.
    pub async fn refresh_if_stale(&self) -> Result<()> {
        let stale = self.refreshed.borrow().map_or(true, |t| {
            t.elapsed() > Duration::from_millis(NODES_REFRESH_MILLIS)
        });
        if stale {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Every registered node, live or not.
    pub fn all(&self) -> Vec<NodeEntry> {
        self.table.borrow().clone()
    }

    /// Nodes being drained (live, but they take no new shards).
    pub fn draining(&self) -> std::collections::HashSet<String> {
        self.draining.borrow().clone()
    }

    /// Live nodes that are not draining, as placement candidates (weight:
    /// capacity in GiB).
    pub fn candidates(&self) -> Vec<Candidate> {
        let draining = self.draining.borrow();
        self.table
            .borrow()
            .iter()
            .filter(|n| n.live && !draining.contains(&n.node_id))
            .map(|n| Candidate {
                node_id: n.node_id.clone(),
                weight: (n.capacity >> 30).max(1),
                zone: n.zone.clone(),
            })
            .collect()
    }

    pub fn is_live(&self, node_id: &str) -> bool {
        self.table
            .borrow()
            .iter()
            .any(|n| n.node_id == node_id && n.live)
    }

    /// The chunk client of `node_id`; `Unavailable` when the registry does
    /// not list it as live or it cannot be reached.
    pub async fn client(&self, node_id: &str) -> Result<Rc<ChunkClient>> {
        let addr = {
            let t = self.table.borrow();
            match t.iter().find(|n| n.node_id == node_id) {
                Some(n) if n.live => n.addr.clone(),
                Some(_) => {
                    return Err(Error::Unavailable(format!(
                        "chunk server {node_id} is not live in the registry"
                    )))
                }
                None => {
                    return Err(Error::Unavailable(format!(
                        "chunk server {node_id} is not registered"
                    )))
                }
            }
        };
        if let Some((a, c)) = self.clients.borrow().get(node_id) {
            if *a == addr {
                return Ok(c.clone());
            }
        }
        let sa: SocketAddr = addr.parse().map_err(|_| {
            Error::Unavailable(format!(
                "chunk server {node_id} registered an address that is not ip:port: {addr:?}"
            ))
        })?;
        let opts = ClientOptions {
            connect_timeout: CHUNK_CONNECT_TIMEOUT,
            call_timeout: CHUNK_CALL_TIMEOUT,
            attempts: crate::limits::CHUNK_CALL_ATTEMPTS,
            expect_node_id: Some(node_id.to_string()),
            tls: self.tls.clone(),
            local_socket_dir: self.local_socket_dir.clone(),
            ..Default::default()
        };
        let c =
            Rc::new(ChunkClient::connect(sa, opts).await.map_err(|e| {
                Error::Unavailable(format!("chunk server {node_id} at {addr}: {e}"))
            })?);
        self.clients
            .borrow_mut()
            .insert(node_id.to_string(), (addr, c.clone()));
        Ok(c)
    }

    /// How long a stripe read waits before hedging: the p95 of recent
    /// shard reads, within [`HEDGE_MIN`]..=[`HEDGE_MAX`].
    pub fn read_p95(&self) -> Duration {
        self.p95.get()
    }

    /// Records a read that took `took` on `node_id`.
    pub fn observe(&self, node_id: &str, took: Duration) {
        {
            let mut r = self.recent_us.borrow_mut();
            if r.len() == RECENT_READS_MAX {
                r.pop_front();
            }
            r.push_back(took.as_micros().min(u32::MAX as u128) as u32);
            self.samples.set(self.samples.get() + 1);
            if self.samples.get() % 64 == 0 {
                let mut v: Vec<u32> = r.iter().copied().collect();
                let i = v.len() * 95 / 100;
                let (_, p, _) = v.select_nth_unstable(i);
                let d = Duration::from_micros(*p as u64);
                self.p95.set(d.clamp(HEDGE_MIN, HEDGE_MAX));
            }
        }
        let us = took.as_secs_f64() * 1e6;
        let mut l = self.latency_us.borrow_mut();
        let e = l.entry(node_id.to_string()).or_insert(us);
        *e = *e * (1.0 - LATENCY_EWMA_WEIGHT) + us * LATENCY_EWMA_WEIGHT;
    }

    /// `ids` ordered for reading: live nodes first, fastest first (unknown
    /// latency counts as fast, so every node gets measured).
    pub fn order_for_read(&self, ids: &mut [(usize, String)]) {
        let l = self.latency_us.borrow();
        let key = |id: &str| (!self.is_live(id), l.get(id).copied().unwrap_or(0.0));
        // Keys once per node, not once per comparison.
        let mut keyed: Vec<((bool, f64), (usize, String))> =
            ids.iter().map(|x| (key(&x.1), x.clone())).collect();
        keyed.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        for (slot, (_, x)) in ids.iter_mut().zip(keyed) {
            *slot = x;
        }
    }
}
