//! `tessera-bench chunkd`: a real chunkd process over loopback against the
//! engine's own figures from the same run (the ceiling a network server can
//! reach on this machine).
//!
//! | figure | chunkd (client over 127.0.0.1) | ceiling (same run) |
//! |---|---|---|
//! | put_1mib | 8 clients' 1 MiB puts in flight | engine handle, 8 puts in flight |
//! | get_1mib | 8 random 1 MiB gets in flight | engine handle, same |
//! | get_4kib_cN | N random 4 KiB gets in flight (N = 1, 16, 64), p50/p99 | engine handle, N in flight |
//!
//! The engine phase runs first in this process (then closes); chunkd then
//! runs on a fresh directory with the same shard count, and the client runs
//! on one glommio executor of this process.

use crate::engine_bench::{drive, open, payload, settle, shard_id, Load};
use crate::report::Report;
use anyhow::{anyhow, bail, Context, Result};
use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_rpc::{ChunkClient, ClientOptions};

/// Sizes of one run.
pub struct Plan {
    pub seq_bytes: u64,
    pub small_shards: u64,
    pub seconds: u64,
    /// Client executors (threads) driving chunkd.
    pub client_executors: usize,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            seq_bytes: 2 << 30,
            small_shards: 131_072,
            seconds: 10,
            client_executors: 1,
        }
    }
    pub fn quick() -> Self {
        Plan {
            seq_bytes: 256 << 20,
            small_shards: 16_384,
            seconds: 2,
            client_executors: 1,
        }
    }
}

/// In-flight counts of the 4 KiB get figures.
const GET_4K_DEPTHS: &[usize] = &[1, 16, 64];

/// One phase's figures, engine or chunkd.
struct Figures {
    put_1mib_mbps: f64,
    get_1mib_mbps: f64,
    get_4kib: Vec<(usize, f64, u32, u32)>,
}

fn mix(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11
}

fn engine_phase(dir: &Path, plan: &Plan, shards: usize) -> Result<(Figures, usize)> {
    let e = open(dir, shards)?;
    settle(&e)?;
    let dur = Duration::from_secs(plan.seconds);
    let one_mib = payload(1 << 20, 7);
    let load = drive(8, dur, plan.seq_bytes >> 20, |i| {
        crate::engine_bench::put(&e, shard_id("big-", i), one_mib.clone())
    })?;
    let stored = load.ops.max(1);
    let put = mbps(&load);
    let load = drive(8, dur, u64::MAX, |i| {
        let id = shard_id("big-", mix(i) % stored);
        let e = &e;
        async move { e.get(&id).await.map(|_| ()) }
    })?;
    let get = mbps(&load);
    let four_k = payload(4096, 9);
    drive(64, Duration::from_secs(600), plan.small_shards, |i| {
        crate::engine_bench::put(&e, shard_id("small-", i), four_k.clone())
    })?;
    settle(&e)?;
    let mut small = Vec::new();
    for &depth in GET_4K_DEPTHS {
        let mut load = drive(depth, dur, u64::MAX, |i| {
            let id = shard_id("small-", mix(i) % plan.small_shards);
            let e = &e;
            async move { e.get(&id).await.map(|_| ()) }
        })?;
        small.push((depth, load.per_sec(), load.pct(0.5), load.pct(0.99)));
    }
    let n = e.shards();
    e.close()?;
    Ok((
        Figures {
            put_1mib_mbps: put,
            get_1mib_mbps: get,
            get_4kib: small,
        },
        n,
    ))
}

fn mbps(l: &Load) -> f64 {
    (l.ops << 20) as f64 / l.elapsed.as_secs_f64() / 1e6
}

/// The chunkd binary next to this one (cargo builds both into one
/// directory).
fn chunkd_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name("chunkd");
    if !p.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p tessera-chunkd`",
            p.display()
        );
    }
    Ok(p)
}

struct ChunkdProcess(Child);

impl Drop for ChunkdProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn start_chunkd(dir: &Path, shards: usize) -> Result<(ChunkdProcess, SocketAddr)> {
    let mut child = Command::new(chunkd_binary()?)
        .arg("--data")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--log", "warn", "--insecure"])
        .args(["--shards", &shards.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting chunkd")?;
    let out = child.stdout.take().expect("piped stdout");
    let proc = ChunkdProcess(child);
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line)
        .context("reading chunkd's first line")?;
    // Keep reading what it prints, so its stdout never fills or breaks.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("chunkd did not start: {line:?}"))?;
    Ok((proc, addr))
}

/// Runs `op(n)` from `conc` tasks on one glommio executor with a client
/// connected to `addr`, until `max_ops` or `dur`.
/// Like [`drive_client1`] from `n` client executors (threads, each with its
/// own client and connections), `conc / n` in flight on each.
fn drive_client<F, Fut>(
    addr: SocketAddr,
    n: usize,
    conc: usize,
    dur: Duration,
    max_ops: u64,
    op: F,
) -> Result<Load>
where
    F: Fn(Rc<ChunkClient>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = tessera_rpc::Result<()>> + 'static,
{
    if n <= 1 || conc < n {
        return drive_client1(addr, conc, dur, max_ops, op);
    }
    let op = Arc::new(op);
    let start = Instant::now();
    let threads: Vec<_> = (0..n as u64)
        .map(|k| {
            let op = op.clone();
            std::thread::spawn(move || {
                drive_client1(addr, conc / n, dur, max_ops / n as u64, move |c, i| {
                    op(c, i * n as u64 + k)
                })
            })
        })
        .collect();
    let mut lat_us = Vec::new();
    for t in threads {
        let load = t
            .join()
            .map_err(|_| anyhow!("a client executor thread panicked"))??;
        lat_us.extend(load.lat_us);
    }
    Ok(Load {
        ops: lat_us.len() as u64,
        elapsed: start.elapsed(),
        lat_us,
    })
}

fn drive_client1<F, Fut>(
    addr: SocketAddr,
    conc: usize,
    dur: Duration,
    max_ops: u64,
    op: F,
) -> Result<Load>
where
    F: Fn(Rc<ChunkClient>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = tessera_rpc::Result<()>> + 'static,
{
    let op = Arc::new(op);
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("bench-client")
        .spawn(move || async move {
            let client = Rc::new(ChunkClient::connect(addr, ClientOptions::default()).await?);
            let next = Rc::new(Cell::new(0u64));
            let start = Instant::now();
            let deadline = start + dur;
            let tasks: Vec<_> = (0..conc)
                .map(|_| {
                    let (client, next, op) = (client.clone(), next.clone(), op.clone());
                    glommio::spawn_local(async move {
                        let mut lat = Vec::new();
                        loop {
                            let n = next.get();
                            next.set(n + 1);
                            if n >= max_ops || Instant::now() >= deadline {
                                return Ok::<_, tessera_rpc::Error>(lat);
                            }
                            let t = Instant::now();
                            op(client.clone(), n).await?;
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                    })
                })
                .collect();
            let mut lat_us = Vec::new();
            for t in tasks {
                lat_us.extend(t.await?);
            }
            Ok::<_, tessera_rpc::Error>(Load {
                ops: lat_us.len() as u64,
                elapsed: start.elapsed(),
                lat_us,
            })
        })
        .map_err(|e| anyhow!("starting the client executor: {e}"))?;
    let load = handle
        .join()
        .map_err(|e| anyhow!("client executor: {e:?}"))??;
    Ok(load)
}

fn chunkd_phase(dir: &Path, plan: &Plan, shards: usize) -> Result<Figures> {
    let (_proc, addr) = start_chunkd(dir, shards)?;
    // Let the new engine prepare its spare segments, as the engine phase did.
    std::thread::sleep(Duration::from_secs(3));
    let dur = Duration::from_secs(plan.seconds);
    let one_mib = Arc::new(payload(1 << 20, 7));
    let load = drive_client(
        addr,
        plan.client_executors,
        8,
        dur,
        plan.seq_bytes >> 20,
        move |c, i| {
            let v = one_mib.clone();
            async move { c.put(&shard_id("big-", i), &v).await }
        },
    )?;
    let stored = load.ops.max(1);
    let put = mbps(&load);
    let load = drive_client(
        addr,
        plan.client_executors,
        8,
        dur,
        u64::MAX,
        move |c, i| async move { c.get(&shard_id("big-", mix(i) % stored)).await.map(|_| ()) },
    )?;
    let get = mbps(&load);
    let four_k = Arc::new(payload(4096, 9));
    drive_client(
        addr,
        plan.client_executors,
        64,
        Duration::from_secs(600),
        plan.small_shards,
        move |c, i| {
            let v = four_k.clone();
            async move { c.put(&shard_id("small-", i), &v).await }
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let mut small = Vec::new();
    let n_small = plan.small_shards;
    for &depth in GET_4K_DEPTHS {
        let mut load = drive_client(
            addr,
            plan.client_executors,
            depth,
            dur,
            u64::MAX,
            move |c, i| async move {
                c.get(&shard_id("small-", mix(i) % n_small))
                    .await
                    .map(|_| ())
            },
        )?;
        small.push((depth, load.per_sec(), load.pct(0.5), load.pct(0.99)));
    }
    Ok(Figures {
        put_1mib_mbps: put,
        get_1mib_mbps: get,
        get_4kib: small,
    })
}

/// Runs every figure; returns the report.
pub fn run(root: &Path, plan: &Plan, shards: usize) -> Result<Report> {
    chunkd_binary()?;
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let (eng, shards) = engine_phase(&root.join("engine"), plan, shards)?;
    let _ = std::fs::remove_dir_all(root.join("engine"));
    let net = chunkd_phase(&root.join("chunkd"), plan, shards)?;
    let mut rep = Report::default();
    rep.add(
        "put_1mib",
        net.put_1mib_mbps,
        "MB/s",
        Some(eng.put_1mib_mbps),
        "engine handle, 8 durable 1 MiB puts in flight, same run",
    );
    rep.add(
        "get_1mib",
        net.get_1mib_mbps,
        "MB/s",
        Some(eng.get_1mib_mbps),
        "engine handle, 8 random 1 MiB gets in flight, same run",
    );
    for (k, &(depth, ops, p50, p99)) in net.get_4kib.iter().enumerate() {
        let (_, e_ops, e50, e99) = eng.get_4kib[k];
        rep.add(
            &format!("get_4kib_c{depth}"),
            ops,
            "ops/s",
            Some(e_ops),
            format!(
                "engine handle at {depth} in flight (p50 {e50} µs, p99 {e99} µs); chunkd p50 {p50} µs, p99 {p99} µs"
            ),
        );
    }
    let _ = std::fs::remove_dir_all(root);
    Ok(rep)
}
