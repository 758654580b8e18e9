//! `tessera-bench load`: the load generator, against a running cluster
//! (`tessera dev`, or any gateway).
//!
//! For each object size it runs closed loops of PUTs (new keys each, so
//! every byte stored stays live), then GETs of what was written, at each
//! concurrency; then deletes what it wrote. Every phase is bounded in time
//! and in operations. Disk bytes per stored byte is the growth of the
//! chunk servers' live bytes (shards plus record headers, from `nodeInfo`)
//! over the object bytes acknowledged, measured across the PUT phases of a
//! size. With `--peer`, an S3 peer (Garage: 3 nodes, replication 3, fsync
//! off; benches/scripts/load-vs-garage.sh) is measured right after with
//! the same phases and its figures are the ceilings; without it, the
//! ceilings are Garage 2.5's figures from `../shared/anchors/LIMITS.md`,
//! measured on an earlier machine of this kind.

use crate::report::Report;
use anyhow::{bail, Context, Result};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tessera_rpc::{ChunkClient, GatewayClient};

/// Requests one gateway connection carries in a phase.
const IN_FLIGHT_PER_CONNECTION: usize = 8;
/// Most operations of one phase (besides its duration).
const PHASE_OPS_MAX: u64 = 1_000_000;
/// Most bytes the PUT phases of one size may store (the disk is shared).
const SIZE_BYTES_MAX: u64 = 6 << 30;
/// Most bytes a warm-up may write, and its longest run.
pub const WARMUP_BYTES_MAX: u64 = 16 << 30;
const WARMUP_DURATION_MAX: Duration = Duration::from_secs(300);
/// Objects a warm-up writes.
const WARMUP_OBJECT_BYTES: usize = 1 << 20;

pub struct Plan {
    pub duration: Duration,
    pub sizes: Vec<usize>,
    pub concurrency: Vec<usize>,
    /// Bytes of 1 MiB objects written before the measured phases and not
    /// measured (0: none). A gateway fresh from start spends its first
    /// few GiB of writes growing its read cache — fresh memory, a page
    /// fault per 4 KiB —; a warm-up of the cache's size measures a gateway
    /// that has been running (docs/BENCHMARKS.md, "steady state").
    pub warmup_bytes: u64,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            duration: Duration::from_secs(10),
            sizes: vec![4 << 10, 1 << 20, 16 << 20],
            concurrency: vec![8, 32],
            warmup_bytes: 0,
        }
    }
    pub fn quick() -> Self {
        Plan {
            duration: Duration::from_secs(3),
            ..Self::full()
        }
    }
}

/// Garage 2.5 on an earlier machine of this kind (LIMITS.md): (figure,
/// value). On the Intel machine of 2026-11-29 Garage measured in the same
/// run did 1.15–1.55x these (docs/BENCHMARKS.md): `--peer` is the honest
/// ratio.
fn garage(figure: &str) -> Option<(f64, &'static str)> {
    Some(match figure {
        "put_4kib" => (
            270.0,
            "Garage 2.5 4 KiB PUT ~200-340 ops/s (LIMITS.md, an earlier machine; --peer measures it); target >= 10x",
        ),
        "put_1mib" => (
            55.0,
            "Garage 2.5 1 MiB PUT ~55 MB/s (LIMITS.md, an earlier machine; --peer measures it); target >= 4x",
        ),
        "get_1mib" => (
            430.0,
            "Garage 2.5 1 MiB GET ~430 MB/s (LIMITS.md, an earlier machine; --peer measures it); target >= 1.5x",
        ),
        "disk_per_byte_1mib" => (3.0, "Garage 2.5: 3.0x for 1 MiB objects; target <= 1.55"),
        "disk_per_byte_4kib" => (10.0, "Garage 2.5: 10x for 4 KiB objects"),
        _ => return None,
    })
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Phase {
    pub(crate) ops_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
    pub(crate) ops: u64,
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

pub(crate) fn size_name(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{}mib", size >> 20)
    } else {
        format!("{}kib", size >> 10)
    }
}

/// Sum of the chunk servers' live bytes.
async fn live_bytes(nodes: &[ChunkClient]) -> Result<u64> {
    let mut total = 0;
    for n in nodes {
        total += n.node_info().await.context("nodeInfo")?.live_bytes;
    }
    Ok(total)
}

/// What one operation of a closed loop came to.
enum OpEnd {
    Done,
    Failed,
    /// The phase's byte budget is spent: this loop stops (not an error;
    /// the rate is over the time the phase actually ran).
    Budget,
}

/// Runs `conc` closed loops of `op(i)` for the plan's duration.
async fn closed_loop<F, Fut>(plan: &Plan, conc: usize, bytes_per_op: usize, op: F) -> Phase
where
    F: Fn(u64, usize) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = OpEnd> + 'static,
{
    let start = Instant::now();
    let deadline = start + plan.duration;
    let next = Rc::new(Cell::new(0u64));
    let lat: Rc<RefCell<Vec<u32>>> = Rc::default();
    let errors = Rc::new(Cell::new(0u64));
    let tasks: Vec<_> = (0..conc)
        .map(|w| {
            let (op, next, lat, errors) = (op.clone(), next.clone(), lat.clone(), errors.clone());
            glommio::spawn_local(async move {
                while Instant::now() < deadline {
                    let i = next.get();
                    if i >= PHASE_OPS_MAX {
                        break;
                    }
                    next.set(i + 1);
                    let t = Instant::now();
                    match op(i, w).await {
                        OpEnd::Done => lat
                            .borrow_mut()
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        OpEnd::Failed => errors.set(errors.get() + 1),
                        OpEnd::Budget => break,
                    }
                }
            })
            .detach()
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let secs = start.elapsed().as_secs_f64();
    let mut l = lat.borrow_mut();
    l.sort_unstable();
    let ops = l.len() as u64;
    Phase {
        ops_per_sec: ops as f64 / secs,
        mb_per_sec: ops as f64 * bytes_per_op as f64 / secs / 1e6,
        p50_ms: percentile(&l, 0.5),
        p99_ms: percentile(&l, 0.99),
        errors: errors.get(),
        ops,
    }
}

/// The live bytes (shards and their record headers) of every live chunk
/// server of a cluster: what `tessera-bench s3 --tessera-du` asks for.
pub fn cluster_live_bytes(target: crate::target::Target) -> Result<u64> {
    tessera_engine::raise_memlock()?;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let gw = GatewayClient::connect_with(target.gateway, target.opts.clone()).await?;
            let mut nodes = Vec::new();
            for n in gw.status().await?.nodes.iter().filter(|n| n.live) {
                nodes.push(ChunkClient::connect(n.addr.parse()?, target.chunk_options()).await?);
            }
            live_bytes(&nodes).await
        })
        .map_err(|e| anyhow::anyhow!("starting an executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("the executor failed: {e}"))?
}

pub fn run(gateway: crate::target::Target, plan: &Plan) -> Result<Report> {
    tessera_engine::raise_memlock()?;
    let sizes = plan.sizes.clone();
    let concs = plan.concurrency.clone();
    let dur = plan.duration;
    let warmup_bytes = plan.warmup_bytes;
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("load")
        .spawn(move || async move {
            let plan = Plan {
                duration: dur,
                sizes,
                concurrency: concs,
                warmup_bytes,
            };
            run_inner(&gateway, &plan).await
        })
        .map_err(|e| anyhow::anyhow!("starting the load executor: {e}"))?;
    handle
        .join()
        .map_err(|e| anyhow::anyhow!("the load executor failed: {e}"))?
}

async fn run_inner(target: &crate::target::Target, plan: &Plan) -> Result<Report> {
    let gateway = target.gateway;
    let conns_max = plan.concurrency.iter().max().copied().unwrap_or(1);
    let mut clients = Vec::new();
    for _ in 0..conns_max.div_ceil(IN_FLIGHT_PER_CONNECTION).max(1) {
        clients.push(Rc::new(
            GatewayClient::connect_with(gateway, target.opts.clone())
                .await
                .with_context(|| {
                    format!("no gateway at {gateway}: start a cluster with `tessera dev`")
                })?,
        ));
    }
    let status = clients[0].status().await?;
    let mut nodes = Vec::new();
    for n in status.nodes.iter().filter(|n| n.live) {
        nodes.push(ChunkClient::connect(n.addr.parse()?, target.chunk_options()).await?);
    }
    if nodes.is_empty() {
        bail!("the gateway sees no live chunk server");
    }
    eprintln!(
        "load against {}: {} live chunk servers, {}",
        match &target.opts.local_socket {
            Some(p) => format!("{} (local socket)", p.display()),
            None if target.opts.tls.is_some() => format!("{gateway} (TCP, TLS)"),
            None => format!("{gateway} (TCP)"),
        },
        nodes.len(),
        status.default_layout
    );
    let clients = Rc::new(clients);
    let mut r = Report::default();
    let run_id: u64 = rand::random();
    let warm_keys = warm_up(&clients, plan, run_id).await;
    for &size in &plan.sizes {
        let name = size_name(size);
        let payload = Rc::new({
            let mut v = vec![0u8; size];
            rand::Rng::fill(&mut rand::thread_rng(), &mut v[..]);
            v
        });
        let written: Rc<RefCell<Vec<String>>> = Rc::default();
        let stored = Rc::new(Cell::new(0u64));
        let live0 = live_bytes(&nodes).await?;
        for &conc in &plan.concurrency {
            let (clients, payload, written, stored) = (
                clients.clone(),
                payload.clone(),
                written.clone(),
                stored.clone(),
            );
            let tag = format!("load/{run_id:016x}/{name}/c{conc}");
            let ph = closed_loop(plan, conc, size, move |i, w| {
                let (clients, payload, written, stored) = (
                    clients.clone(),
                    payload.clone(),
                    written.clone(),
                    stored.clone(),
                );
                let key = format!("{tag}/{i:08}");
                async move {
                    if stored.get() + payload.len() as u64 > SIZE_BYTES_MAX {
                        return OpEnd::Budget;
                    }
                    let c = &clients[w / IN_FLIGHT_PER_CONNECTION % clients.len()];
                    match c.put(&key, &payload).await {
                        Ok(_) => {
                            stored.set(stored.get() + payload.len() as u64);
                            written.borrow_mut().push(key);
                            OpEnd::Done
                        }
                        Err(e) => {
                            tracing_err(&e);
                            OpEnd::Failed
                        }
                    }
                }
            })
            .await;
            report_phase(&mut r, "put", &name, conc, &ph);
        }
        // Deletes of replaced versions run in the background; nothing is
        // replaced here, so the growth is what the new objects take.
        let live1 = live_bytes(&nodes).await?;
        if stored.get() > 0 {
            let per = (live1.saturating_sub(live0)) as f64 / stored.get() as f64;
            let fig = format!("disk_per_byte_{name}");
            let g = garage(&fig);
            r.add(
                &fig,
                per,
                "x",
                g.map(|x| x.0),
                g.map_or(String::new(), |x| x.1.to_string()),
            );
        }
        let keys = Rc::new(written.borrow().clone());
        if keys.is_empty() {
            continue;
        }
        for &conc in &plan.concurrency {
            let (clients, keys) = (clients.clone(), keys.clone());
            let want = size;
            let ph = closed_loop(plan, conc, size, move |i, w| {
                let (clients, keys) = (clients.clone(), keys.clone());
                async move {
                    let key = &keys[(i as usize).wrapping_mul(2654435761) % keys.len()];
                    let c = &clients[w / IN_FLIGHT_PER_CONNECTION % clients.len()];
                    match c.get(key).await {
                        Ok(b) if b.len() == want => OpEnd::Done,
                        Ok(_) => OpEnd::Failed,
                        Err(e) => {
                            tracing_err(&e);
                            OpEnd::Failed
                        }
                    }
                }
            })
            .await;
            report_phase(&mut r, "get", &name, conc, &ph);
        }
        // Clean up so that the next size has the disk.
        for k in keys.iter() {
            let _ = clients[0].delete(k).await;
        }
    }
    for k in warm_keys.iter() {
        let _ = clients[0].delete(k).await;
    }
    Ok(r)
}

/// Writes `plan.warmup_bytes` of 1 MiB objects at the plan's highest
/// concurrency, for at most [`WARMUP_DURATION_MAX`]; not measured. Returns
/// the keys written (deleted after every phase, not before: deleting them
/// would hand the cache's memory back).
async fn warm_up(clients: &Rc<Vec<Rc<GatewayClient>>>, plan: &Plan, run_id: u64) -> Vec<String> {
    let target = plan.warmup_bytes.min(WARMUP_BYTES_MAX);
    if target == 0 {
        return Vec::new();
    }
    let start = Instant::now();
    let deadline = start + WARMUP_DURATION_MAX;
    let conc = plan.concurrency.iter().max().copied().unwrap_or(1);
    let payload = Rc::new(vec![0x5au8; WARMUP_OBJECT_BYTES]);
    let sent = Rc::new(Cell::new(0u64));
    let written: Rc<RefCell<Vec<String>>> = Rc::default();
    let tasks: Vec<_> = (0..conc)
        .map(|w| {
            let (clients, payload, sent, written) = (
                clients.clone(),
                payload.clone(),
                sent.clone(),
                written.clone(),
            );
            glommio::spawn_local(async move {
                while Instant::now() < deadline && sent.get() < target {
                    sent.set(sent.get() + payload.len() as u64);
                    let key = format!("load/{run_id:016x}/warmup/{:08}", sent.get() >> 20);
                    let c = &clients[w / IN_FLIGHT_PER_CONNECTION % clients.len()];
                    match c.put(&key, &payload).await {
                        Ok(_) => written.borrow_mut().push(key),
                        Err(e) => tracing_err(&e),
                    }
                }
            })
            .detach()
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let keys = std::mem::take(&mut *written.borrow_mut());
    eprintln!(
        "  warm-up: {} MiB in {} objects of 1 MiB in {:.1} s (not measured)",
        (keys.len() * WARMUP_OBJECT_BYTES) >> 20,
        keys.len(),
        start.elapsed().as_secs_f64()
    );
    keys
}

fn tracing_err(e: &tessera_rpc::Error) {
    thread_local!(static SHOWN: Cell<u32> = const { Cell::new(0) });
    SHOWN.with(|s| {
        if s.get() < 5 {
            s.set(s.get() + 1);
            eprintln!("  error: {e}");
        }
    });
}

fn report_phase(r: &mut Report, op: &str, name: &str, conc: usize, ph: &Phase) {
    let fig = format!("{op}_{name}_c{conc}");
    let key = format!("{op}_{name}");
    let g = garage(&key);
    let note = format!(
        "{}; p50 {:.1} ms, p99 {:.1} ms, {} ops, {} errors",
        g.map_or("no peer figure", |x| x.1),
        ph.p50_ms,
        ph.p99_ms,
        ph.ops,
        ph.errors
    );
    if name == "4kib" {
        r.add(&fig, ph.ops_per_sec, "ops/s", g.map(|x| x.0), note);
    } else {
        r.add(&fig, ph.mb_per_sec, "MB/s", g.map(|x| x.0), note);
    }
}
