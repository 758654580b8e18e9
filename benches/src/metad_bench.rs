//! `tessera-bench metad`: three metad replicas against three etcd members
//! (Debian's `etcd-server`, fsync on, its defaults) on 127.0.0.1, one after
//! the other in the same run, under the same closed-loop load: 256-byte
//! puts at 1, 16 and 64 in flight, and linearizable 256-byte gets at 64.
//!
//! Both clients run on one current-thread tokio runtime. The etcd client
//! talks to the etcd leader directly (its best case: no forwarding hop);
//! Tessera's client finds each group's leader itself.
//!
//! Figures: ops/s (ratio = Tessera / etcd, higher is better) and p99 in
//! milliseconds (ratio = Tessera / etcd, lower is better).

use crate::report::Report;
use anyhow::{bail, Context, Result};
use rand::Rng;
use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Value size of every operation.
const VALUE_BYTES: usize = 256;
/// Keys the puts spread over.
const PUT_KEYSPACE: u32 = 10_000;
/// Keys written before the get phase and read by it.
const GET_KEYSPACE: u32 = 1_000;

pub struct Plan {
    pub duration: Duration,
    pub warmup: Duration,
    pub replicas: usize,
    pub groups: u32,
    pub with_etcd: bool,
    /// WAL partitions passed to metad; 0 = its default.
    pub wal_partitions: u32,
    /// WAL phases to run as (entry bytes, in flight); empty = all six.
    pub wal_phases: Vec<(usize, usize)>,
    /// Replicas and the bench reach each other over Unix sockets in
    /// `DIR/sockets` (metad's `--local-socket-dir`), as a `tessera dev`
    /// cluster's do, instead of TCP.
    pub local_sockets: bool,
}

/// Parses `SIZE_KIB:IN_FLIGHT` (`4:64`).
pub fn parse_wal_phase(s: &str) -> Result<(usize, usize)> {
    let (a, b) = s
        .split_once(':')
        .with_context(|| format!("WAL phase {s:?}: expected SIZE_KIB:IN_FLIGHT, e.g. 4:64"))?;
    let kib: usize = a
        .parse()
        .with_context(|| format!("WAL phase {s:?}: size"))?;
    let conc: usize = b
        .parse()
        .with_context(|| format!("WAL phase {s:?}: in flight"))?;
    if !(1..=1024).contains(&kib) || !(1..=1024).contains(&conc) {
        bail!("WAL phase {s:?}: size must be 1..=1024 KiB and in flight 1..=1024");
    }
    Ok((kib << 10, conc))
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            replicas: 3,
            groups: 8,
            with_etcd: true,
            wal_partitions: 0,
            wal_phases: Vec::new(),
            local_sockets: false,
        }
    }
    pub fn quick() -> Self {
        Plan {
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            replicas: 3,
            groups: 8,
            with_etcd: true,
            wal_partitions: 0,
            wal_phases: Vec::new(),
            local_sockets: false,
        }
    }
}

/// What one phase measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Runs `concurrency` closed loops of `op` for `plan.warmup + plan.duration`,
/// measuring only after the warm-up.
pub async fn closed_loop<F, Fut>(plan: &Plan, concurrency: usize, op: F) -> Phase
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = bool> + 'static,
{
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let lat: Rc<RefCell<Vec<u32>>> = Rc::new(RefCell::new(Vec::with_capacity(1 << 20)));
    let errors = Rc::new(RefCell::new(0u64));
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let op = op.clone();
        let lat = lat.clone();
        let errors = errors.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                n += 1;
                let ok = op((t as u64) << 40 | n).await;
                let t1 = Instant::now();
                if t0 >= measure_from && t1 <= end {
                    if ok {
                        lat.borrow_mut()
                            .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    } else {
                        *errors.borrow_mut() += 1;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut l = std::mem::take(&mut *lat.borrow_mut());
    l.sort_unstable();
    let errors = *errors.borrow();
    Phase {
        ops_per_sec: l.len() as f64 / plan.duration.as_secs_f64(),
        p50_ms: percentile(&l, 0.50),
        p99_ms: percentile(&l, 0.99),
        errors,
    }
}

pub fn value(seed: u64) -> Vec<u8> {
    let mut v = vec![b'v'; VALUE_BYTES];
    v[..8].copy_from_slice(&seed.to_le_bytes());
    v
}

pub fn put_key(_seed: u64) -> String {
    format!("bench/{:08}", rand::thread_rng().gen_range(0..PUT_KEYSPACE))
}

pub fn get_key(_seed: u64) -> String {
    format!("read/{:08}", rand::thread_rng().gen_range(0..GET_KEYSPACE))
}

fn free_port() -> Result<u16> {
    Ok(tessera_rpc::ports::pick_listen_port()?)
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
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

fn metad_binary() -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("metad");
    if !p.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release -p tessera-metad`",
            p.display()
        );
    }
    Ok(p)
}

/// What one replica's WAL log did, from its `/metrics`: durable writes,
/// seconds spent in them, bytes written.
#[derive(Debug, Default, Clone, Copy)]
struct LogCounters {
    writes: f64,
    seconds: f64,
    bytes: f64,
}

fn scrape_wal_log(addr: &str) -> LogCounters {
    let text = tessera_metrics::scrape(addr).unwrap_or_default();
    let get = |name: &str| tessera_metrics::sample(&text, name, "log=\"wal-log\"").unwrap_or(0.0);
    LogCounters {
        writes: get("tessera_metad_log_write_seconds_count"),
        seconds: get("tessera_metad_log_write_seconds_sum"),
        bytes: get("tessera_metad_log_written_bytes_total"),
    }
}

/// Prints what each replica's WAL log did between two scrapes.
fn print_log_deltas(before: &[LogCounters], after: &[LogCounters], secs: f64) {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let writes = a.writes - b.writes;
        eprintln!(
            "    replica {}: {:.0} log writes/s, {:.2} ms each, {:.1} KiB each",
            i + 1,
            writes / secs,
            if writes > 0.0 {
                (a.seconds - b.seconds) * 1e3 / writes
            } else {
                0.0
            },
            if writes > 0.0 {
                (a.bytes - b.bytes) / writes / 1024.0
            } else {
                0.0
            },
        );
    }
}

/// The bench's metad client options (over the local sockets when asked).
fn client_options(dir: &Path, plan: &Plan) -> tessera_metad::client::ClientOptions {
    tessera_metad::client::ClientOptions {
        security: tessera_metad::net::Security {
            local_socket_dir: plan.local_sockets.then(|| dir.join("sockets")),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Starts `plan.replicas` metad processes with fresh data directories;
/// returns them, their ids, addresses and metrics addresses.
#[allow(clippy::type_complexity)]
fn start_metad(dir: &Path, plan: &Plan) -> Result<(Vec<Proc>, Vec<u64>, Vec<String>, Vec<String>)> {
    let bin = metad_binary()?;
    let ids: Vec<u64> = (1..=plan.replicas as u64).collect();
    let addrs: Vec<String> = ids
        .iter()
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let metrics: Vec<String> = ids
        .iter()
        .map(|_| free_port().map(|p| format!("127.0.0.1:{p}")))
        .collect::<Result<_>>()?;
    let peers = ids
        .iter()
        .zip(&addrs)
        .map(|(i, a)| format!("{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let data = dir.join(format!("metad-{id}"));
        let _ = std::fs::remove_dir_all(&data);
        let mut child = Command::new(&bin)
            // Plaintext, as the etcd it is compared with runs here.
            .arg("--insecure")
            .args([
                "--id",
                &id.to_string(),
                "--listen",
                &addrs[i],
                "--peers",
                &peers,
                "--metrics",
                &metrics[i],
            ])
            .args(if plan.wal_partitions > 0 {
                vec![
                    "--wal-partitions".to_string(),
                    plan.wal_partitions.to_string(),
                ]
            } else {
                Vec::new()
            })
            .args([
                "--groups",
                &plan.groups.to_string(),
                "--log",
                &std::env::var("TESSERA_BENCH_METAD_LOG")
                    .unwrap_or_else(|_| "warn,openraft=off".into()),
            ])
            .arg("--data")
            .arg(&data)
            .args(if plan.local_sockets {
                vec![
                    "--local-socket-dir".into(),
                    dir.join("sockets").into_os_string(),
                ]
            } else {
                Vec::new()
            })
            // A metad config file (e.g. `[raft]` tuning) for experiments.
            .args(
                std::env::var("TESSERA_BENCH_METAD_CONFIG")
                    .map(|f| vec!["--config".to_string(), f])
                    .unwrap_or_default(),
            )
            .stdout(Stdio::piped())
            .spawn()
            .context("starting metad")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let line = lines.next().transpose()?.unwrap_or_default();
        if !line.contains("listening") {
            bail!("metad {id} did not start: {line:?}");
        }
        std::thread::spawn(move || for _ in lines {});
        procs.push(Proc(child));
    }
    Ok((procs, ids, addrs, metrics))
}

/// The four phases against Tessera's metad.
fn run_metad(dir: &Path, plan: &Plan) -> Result<[Phase; 4]> {
    let (procs, ids, addrs, _) = start_metad(dir, plan)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let phases = tokio::task::LocalSet::new().block_on(&rt, async {
        use tessera_metad::client::{Consistency, MetaClient};
        let c = MetaClient::connect(&addrs, client_options(dir, plan)).await?;
        // Every group has a leader before the clock starts.
        for g in 0..c.groups() {
            let mut k = 0u32;
            while c.group_of(format!("warm/{k}").as_bytes()) != g {
                k += 1;
            }
            c.put(format!("warm/{k}").as_bytes(), b"x").await?;
        }
        for k in 0..GET_KEYSPACE {
            c.put(format!("read/{k:08}").as_bytes(), &value(k as u64))
                .await?;
        }
        let mut out = [Phase::default(); 4];
        for (i, conc) in [1usize, 16, 64].into_iter().enumerate() {
            let c = c.clone();
            out[i] = closed_loop(plan, conc, move |seed| {
                let c = c.clone();
                async move { c.put(put_key(seed).as_bytes(), &value(seed)).await.is_ok() }
            })
            .await;
            eprintln!("  metad put c{conc}: {:?}", out[i]);
        }
        let c2 = c.clone();
        out[3] = closed_loop(plan, 64, move |seed| {
            let c = c2.clone();
            async move {
                c.get(get_key(seed).as_bytes(), Consistency::Linearizable)
                    .await
                    .is_ok_and(|v| v.is_some())
            }
        })
        .await;
        eprintln!("  metad get c64: {:?}", out[3]);
        Ok::<_, anyhow::Error>(out)
    })?;
    drop(procs);
    for id in &ids {
        let _ = std::fs::remove_dir_all(dir.join(format!("metad-{id}")));
    }
    Ok(phases)
}

#[cfg(feature = "etcd")]
fn ensure_etcd() -> Result<PathBuf> {
    let have = || {
        Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() {
        eprintln!("installing etcd-server with apt-get (the peer this benchmark compares with)");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    if !have() {
        bail!("etcd is missing and apt-get could not install it: `apt-get install -y etcd-server`");
    }
    Ok(PathBuf::from("etcd"))
}

/// The same four phases against etcd.
#[cfg(feature = "etcd")]
fn run_etcd(dir: &Path, plan: &Plan) -> Result<[Phase; 4]> {
    use etcd_client::Client;
    let bin = ensure_etcd()?;
    let n = plan.replicas;
    let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
    let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_>>()?;
    let cluster = (0..n)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", peer_ports[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Vec::new();
    for i in 0..n {
        let data = dir.join(format!("etcd-{i}"));
        let _ = std::fs::remove_dir_all(&data);
        let child = Command::new(&bin)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", client_ports[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", client_ports[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", peer_ports[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", peer_ports[i]),
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args([
                "--initial-cluster-token",
                "tessera-bench",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcd")?;
        procs.push(Proc(child));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let phases = tokio::task::LocalSet::new().block_on(&rt, async {
        // Find the leader (bounded wait for the cluster to form).
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader_url = loop {
            let mut found = None;
            for p in &client_ports {
                let url = format!("http://127.0.0.1:{p}");
                if let Ok(mut c) = Client::connect([url.as_str()], None).await {
                    if let Ok(s) = c.status().await {
                        if s.leader() != 0 && s.header().map(|h| h.member_id()) == Some(s.leader())
                        {
                            found = Some(url);
                        }
                    }
                }
            }
            if let Some(u) = found {
                break u;
            }
            if Instant::now() > deadline {
                bail!("etcd did not elect a leader within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let client = Client::connect([leader_url.as_str()], None).await?;
        let mut kv = client.kv_client();
        for k in 0..GET_KEYSPACE {
            kv.put(format!("read/{k:08}"), value(k as u64), None)
                .await?;
        }
        let mut out = [Phase::default(); 4];
        for (i, conc) in [1usize, 16, 64].into_iter().enumerate() {
            let kv = kv.clone();
            out[i] = closed_loop(plan, conc, move |seed| {
                let mut kv = kv.clone();
                async move { kv.put(put_key(seed), value(seed), None).await.is_ok() }
            })
            .await;
            eprintln!("  etcd put c{conc}: {:?}", out[i]);
        }
        let kv2 = kv.clone();
        out[3] = closed_loop(plan, 64, move |seed| {
            let mut kv = kv2.clone();
            async move {
                kv.get(get_key(seed), None)
                    .await
                    .is_ok_and(|r| !r.kvs().is_empty())
            }
        })
        .await;
        eprintln!("  etcd get c64: {:?}", out[3]);
        Ok::<_, anyhow::Error>(out)
    })?;
    drop(procs);
    for i in 0..n {
        let _ = std::fs::remove_dir_all(dir.join(format!("etcd-{i}")));
    }
    Ok(phases)
}

#[cfg(not(feature = "etcd"))]
fn run_etcd(_dir: &Path, _plan: &Plan) -> Result<[Phase; 4]> {
    bail!("built without the `etcd` feature: run benches/run-metad-bench (or `cargo run --release -p tessera-bench --features etcd -- metad`)")
}

fn bail_none() -> Result<[Phase; 4]> {
    bail!("skipped (--no-etcd)")
}

pub fn run(dir: &Path, plan: &Plan) -> Result<Report> {
    std::fs::create_dir_all(dir)?;
    eprintln!("etcd, {} members, fsync on:", plan.replicas);
    let etcd = match if plan.with_etcd {
        run_etcd(dir, plan)
    } else {
        bail_none()
    } {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("  no etcd figures: {e:#}");
            None
        }
    };
    eprintln!("metad, {} replicas, {} groups:", plan.replicas, plan.groups);
    let ours = run_metad(dir, plan)?;
    let mut r = Report::default();
    let names = [
        "put_256b_c1",
        "put_256b_c16",
        "put_256b_c64",
        "get_256b_c64",
    ];
    for (i, name) in names.iter().enumerate() {
        let peer = etcd.map(|e| e[i]);
        let note = format!(
            "etcd, same run (higher is better); p50 {:.1} ms vs {}; errors {}",
            ours[i].p50_ms,
            peer.map_or("-".into(), |p| format!("{:.1} ms", p.p50_ms)),
            ours[i].errors
        );
        r.add(
            name,
            ours[i].ops_per_sec,
            "ops/s",
            peer.map(|p| p.ops_per_sec),
            note,
        );
        r.add(
            &format!("{name}_p99"),
            ours[i].p99_ms,
            "ms",
            peer.map(|p| p.p99_ms),
            "etcd p99, same run (lower is better)",
        );
    }
    Ok(r)
}

/// `tessera-bench wal`: appends of 4 KiB and 64 KiB at 1, 16 and 64 in
/// flight against three metad replicas (4 WAL partitions unless
/// `--wal-partitions`), each append to a partition picked at random (as
/// the appends of many gateways, one partition each, arrive), next to fio's
/// 4 KiB write + fdatasync at queue depth 1 on the same file system, same
/// run. A background consumer finishes appended entries every 20 ms (as
/// gateways would), so the partitions never reach their byte limit.
pub fn run_wal(dir: &Path, plan: &Plan) -> Result<Report> {
    std::fs::create_dir_all(dir)?;
    crate::fio::ensure_fio()?;
    let fio_file = dir.join("wal-fio.dat");
    let fio = crate::fio::run(
        "fsync4k",
        &fio_file,
        &[
            "--rw=write",
            "--bs=4k",
            "--iodepth=1",
            "--fdatasync=1",
            "--size=256m",
            "--time_based",
            &format!("--runtime={}", plan.duration.as_secs().max(2)),
        ],
    )?;
    let _ = std::fs::remove_file(&fio_file);
    eprintln!("fio 4 KiB write+fdatasync QD1: {:.0} IOPS", fio.iops);
    let (procs, ids, addrs, metrics) = start_metad(dir, plan)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let phases = tokio::task::LocalSet::new().block_on(&rt, async {
        use tessera_metad::client::MetaClient;
        let c = MetaClient::connect(&addrs, client_options(dir, plan)).await?;
        let parts = c.wal_partitions().max(1);
        // Replicas start together, so some groups' first elections fail
        // (peers not yet listening) and a second round follows up to one
        // election timeout (2 s) later: let it settle before measuring.
        // The warm-up entries are finished like every other (an entry left
        // unfinished holds every later one in the partition until it is).
        for p in 0..parts {
            let off = c.wal_append(p, "bench", b"warm", false).await?;
            c.wal_finish(p, &[off]).await?;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        for p in 0..parts {
            let off = c.wal_append(p, "bench", b"warm", false).await?;
            c.wal_finish(p, &[off]).await?;
        }
        let done: Rc<RefCell<Vec<(u32, u64)>>> = Rc::default();
        let stop = Rc::new(std::cell::Cell::new(false));
        let finisher = {
            let (c, done, stop) = (c.clone(), done.clone(), stop.clone());
            tokio::task::spawn_local(async move {
                while !stop.get() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let batch = std::mem::take(&mut *done.borrow_mut());
                    for p in 0..parts {
                        let offs: Vec<u64> =
                            batch.iter().filter(|x| x.0 == p).map(|x| x.1).collect();
                        for chunk in offs.chunks(5000) {
                            let _ = c.wal_finish(p, chunk).await;
                        }
                    }
                }
            })
        };
        let mut out = Vec::new();
        let phases: Vec<(usize, usize)> = if plan.wal_phases.is_empty() {
            [4usize << 10, 64 << 10]
                .into_iter()
                .flat_map(|s| [1usize, 16, 64].map(|c| (s, c)))
                .collect()
        } else {
            plan.wal_phases.clone()
        };
        for (size, conc) in phases {
            {
                let (c, done) = (c.clone(), done.clone());
                let payload = Rc::new(vec![0xA5u8; size]);
                let before: Vec<LogCounters> = metrics.iter().map(|m| scrape_wal_log(m)).collect();
                let started = std::time::Instant::now();
                let ph = closed_loop(plan, conc, move |_seed| {
                    let (c, done, payload) = (c.clone(), done.clone(), payload.clone());
                    async move {
                        // Each append picks a partition at random, as the
                        // appends of many gateways (one partition each)
                        // arrive: `task + iteration` kept the appends that
                        // finished together on one partition forever
                        // (lock-step), so one call carried all of them.
                        let p = rand::thread_rng().gen_range(0..parts);
                        match c.wal_append(p, "bench", &payload, false).await {
                            Ok(off) => {
                                done.borrow_mut().push((p, off));
                                true
                            }
                            Err(_) => false,
                        }
                    }
                })
                .await;
                let secs = started.elapsed().as_secs_f64();
                let after: Vec<LogCounters> = metrics.iter().map(|m| scrape_wal_log(m)).collect();
                eprintln!("  wal append {} KiB c{conc}: {ph:?}", size >> 10);
                print_log_deltas(&before, &after, secs);
                out.push((size, conc, ph));
            }
        }
        stop.set(true);
        let _ = finisher.await;
        Ok::<_, anyhow::Error>(out)
    })?;
    drop(procs);
    for id in &ids {
        let _ = std::fs::remove_dir_all(dir.join(format!("metad-{id}")));
    }
    let mut r = Report::default();
    for (size, conc, ph) in phases {
        let name = format!("append_{}kib_c{conc}", size >> 10);
        r.add(
            &name,
            ph.ops_per_sec,
            "ops/s",
            Some(fio.iops),
            format!(
                "fio 4 KiB write+fdatasync QD1, same run; p50 {:.1} ms; errors {}",
                ph.p50_ms, ph.errors
            ),
        );
        r.add(&format!("{name}_p99"), ph.p99_ms, "ms", None, "");
    }
    Ok(r)
}
