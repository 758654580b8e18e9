//! `tessera-bench engine`: the engine and fio on the same file system in one
//! run, each figure next to its ceiling.
//!
//! | figure | engine | ceiling (fio, same run) |
//! |---|---|---|
//! | seq_put_1mib | 8 writers of 1 MiB durable puts | sequential 1 MiB writes, QD 8, written blocks |
//! | runtime_rand_read_4kib | bare glommio reads, QD 32, one executor (no engine) | random 4 KiB reads, QD 32 |
//! | rand_get_4kib | 32 readers of random 4 KiB shards | random 4 KiB reads, QD 32 |
//! | durable_put_4kib_c32 | 32 writers of 4 KiB durable puts | 4 KiB write + fdatasync, QD 1 |
//! | scrub | one unthrottled scrub pass | sequential 1 MiB reads, QD 8 |
//! | reopen_1m_shards | reopen after 1M shards (checkpoint) | none |
//!
//! The disk here is shared and its speed swings by 2x between minutes, so
//! each paired figure runs in rounds (fio, then the engine, back to back)
//! and the report gives the round whose ratio is the median, with every
//! round's ratio in its note.

use crate::fio;
use crate::report::Report;
use anyhow::{Context, Result};
use futures::executor::block_on;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_engine::{Engine, EngineConfig};

/// Most rounds of a paired figure one run takes (each round of the full
/// plan is about a minute of disk time).
pub const ROUNDS_MAX: usize = 15;

/// Sizes of one run.
pub struct Plan {
    pub seq_bytes: u64,
    pub rand_set_bytes: u64,
    pub seconds: u64,
    pub reopen_shards: u64,
    /// Rounds of each paired figure (fio, then the engine); the report
    /// gives the round with the median ratio.
    pub rounds: usize,
}

impl Plan {
    pub fn full() -> Self {
        Plan {
            seq_bytes: 2 << 30,
            rand_set_bytes: 1 << 30,
            seconds: 10,
            reopen_shards: 1_000_000,
            rounds: 3,
        }
    }
    pub fn quick() -> Self {
        Plan {
            seq_bytes: 256 << 20,
            rand_set_bytes: 64 << 20,
            seconds: 2,
            reopen_shards: 50_000,
            rounds: 1,
        }
    }
}

pub(crate) struct Load {
    pub ops: u64,
    pub elapsed: Duration,
    pub lat_us: Vec<u32>,
}

impl Load {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    pub fn pct(&mut self, p: f64) -> u32 {
        if self.lat_us.is_empty() {
            return 0;
        }
        self.lat_us.sort_unstable();
        self.lat_us[((self.lat_us.len() - 1) as f64 * p) as usize]
    }
}

/// Runs `op(n)` from `conc` concurrent tasks until `max_ops` ops or `dur`.
pub(crate) fn drive<F, Fut>(conc: usize, dur: Duration, max_ops: u64, op: F) -> Result<Load>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = tessera_engine::Result<()>>,
{
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + dur;
    let tasks = (0..conc).map(|_| async {
        let mut lat = Vec::new();
        loop {
            let n = next.fetch_add(1, Ordering::Relaxed);
            if n >= max_ops || Instant::now() >= deadline {
                return Ok::<_, tessera_engine::Error>(lat);
            }
            let t = Instant::now();
            op(n).await?;
            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
    });
    let results = block_on(futures::future::join_all(tasks));
    let elapsed = start.elapsed();
    let mut lat_us = Vec::new();
    for r in results {
        lat_us.extend(r?);
    }
    Ok(Load {
        ops: lat_us.len() as u64,
        elapsed,
        lat_us,
    })
}

/// Waits (at most a minute) until the engine's background segment
/// preparation is done, so it disturbs neither fio's ceiling nor the next
/// figure.
pub(crate) fn settle(e: &Engine) -> Result<()> {
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    loop {
        let s = block_on(e.stats())?;
        if s.preparing == 0 && s.free_segments >= 4 * e.shards() as u64 {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            eprintln!("  (segment preparation still running after 60 s; going on)");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// IOPS of `qd` concurrent random 4 KiB `read_at_aligned` calls on one
/// glommio executor over the first `span` bytes of `file`, for `dur`.
fn raw_glommio_randread(file: &Path, span: u64, qd: usize, dur: Duration) -> Result<f64> {
    let file = file.to_path_buf();
    let blocks = (span / 4096).max(1);
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("raw-glommio-read")
        .spawn(move || async move {
            let f = std::rc::Rc::new(glommio::io::DmaFile::open(&file).await?);
            let done = std::rc::Rc::new(std::cell::Cell::new(0u64));
            let start = Instant::now();
            let deadline = start + dur;
            let tasks: Vec<_> = (0..qd as u64)
                .map(|k| {
                    let (f, done) = (f.clone(), done.clone());
                    glommio::spawn_local(async move {
                        let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k + 1);
                        while Instant::now() < deadline {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            f.read_at_aligned((x % blocks) * 4096, 4096).await?;
                            done.set(done.get() + 1);
                        }
                        Ok::<(), glommio::GlommioError<()>>(())
                    })
                })
                .collect();
            for t in tasks {
                t.await?;
            }
            Ok::<f64, glommio::GlommioError<()>>(done.get() as f64 / start.elapsed().as_secs_f64())
        })
        .map_err(|e| anyhow::anyhow!("starting the raw glommio executor: {e}"))?;
    let iops = handle
        .join()
        .map_err(|e| anyhow::anyhow!("raw glommio reader: {e:?}"))?
        .map_err(|e| anyhow::anyhow!("raw glommio read: {e}"))?;
    Ok(iops)
}

/// What one local operation does: get `id`, or put `payload` under it.
type Work = Arc<dyn Fn(usize, u64) -> (Vec<u8>, Option<Arc<Vec<u8>>>) + Send + Sync>;

/// Like [`drive`], but the load runs on each shard's own executor thread
/// (`conc` tasks per shard, `max_ops` per shard), the way the chunk server
/// serves: no thread hop per operation. `work(shard, n)` must name ids that
/// shard owns.
fn drive_local(e: &Engine, conc: usize, dur: Duration, max_ops: u64, work: Work) -> Result<Load> {
    let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<Vec<u32>, String>>();
    let start = Instant::now();
    let deadline = start + dur;
    for shard in 0..e.shards() {
        let (tx, work) = (tx.clone(), work.clone());
        e.spawn_on_shard(shard, move |ops| {
            Box::pin(async move {
                let next = std::rc::Rc::new(std::cell::Cell::new(0u64));
                let tasks: Vec<_> = (0..conc)
                    .map(|_| {
                        let (ops, next, work) = (ops.clone(), next.clone(), work.clone());
                        glommio::spawn_local(async move {
                            let mut lat = Vec::new();
                            loop {
                                let n = next.get();
                                next.set(n + 1);
                                if n >= max_ops || Instant::now() >= deadline {
                                    return Ok(lat);
                                }
                                let (id, payload) = work(shard, n);
                                let t = Instant::now();
                                match payload {
                                    Some(p) => ops.put(&id, &p).await.map_err(|e| e.to_string())?,
                                    None => {
                                        ops.get(&id).await.map(|_| ()).map_err(|e| e.to_string())?
                                    }
                                }
                                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                            }
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    match t.await {
                        Ok(l) => all.extend(l),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(all));
            })
        })?;
    }
    drop(tx);
    let mut lat_us = Vec::new();
    for _ in 0..e.shards() {
        lat_us.extend(
            rx.recv()
                .context("a shard's load task stopped")?
                .map_err(anyhow::Error::msg)?,
        );
    }
    Ok(Load {
        ops: lat_us.len() as u64,
        elapsed: start.elapsed(),
        lat_us,
    })
}

/// The `n`-th id with `prefix` that shard `shard` of `shards` owns.
fn owned_id(prefix: &str, shard: usize, shards: usize, n: u64) -> Vec<u8> {
    let mut k = n * shards as u64;
    loop {
        let id = shard_id(prefix, k);
        if tessera_engine::route(&id, shards) == shard {
            return id;
        }
        k += 1;
    }
}

pub(crate) fn shard_id(prefix: &str, n: u64) -> Vec<u8> {
    // Shaped like a gateway shard id: 16-byte version id, stripe, index.
    let mut id = Vec::with_capacity(21);
    id.extend_from_slice(prefix.as_bytes());
    id.extend_from_slice(&n.to_be_bytes());
    id
}

pub(crate) fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(crate) async fn put(e: &Engine, id: Vec<u8>, v: Vec<u8>) -> tessera_engine::Result<()> {
    e.put(&id, v).await
}

pub(crate) fn open(dir: &Path, shards: usize) -> Result<Engine> {
    Engine::open(
        dir,
        EngineConfig {
            shards,
            ..EngineConfig::default()
        },
    )
    .context("opening the engine")
}

/// Prints how the puts between two stats snapshots were flushed.
fn print_flushes(before: &tessera_engine::Stats, after: &tessera_engine::Stats, puts: u64) {
    let flushes = (after.flushes - before.flushes).max(1);
    eprintln!(
        "  ({} flushes, {} of them pipelined, {} with one fdatasync, {:.1} puts each; per flush: write {} µs, fdatasync {} µs)",
        flushes,
        after.pipelined_flushes - before.pipelined_flushes,
        after.one_sync_flushes - before.one_sync_flushes,
        puts as f64 / flushes as f64,
        (after.flush_write_micros - before.flush_write_micros) / flushes,
        (after.flush_sync_micros - before.flush_sync_micros) / flushes
    );
}

/// The engine figure and its ceiling from each round of one phase, fio and
/// the engine alternating, so both see the same slice of this shared
/// disk's weather.
#[derive(Default)]
struct Rounds {
    pairs: Vec<(f64, f64)>,
    notes: Vec<String>,
}

impl Rounds {
    fn push(&mut self, value: f64, ceiling: f64, note: String) {
        eprintln!(
            "    round {}: {value:.1} against {ceiling:.1} ({:.2})",
            self.pairs.len() + 1,
            value / ceiling.max(f64::MIN_POSITIVE)
        );
        self.pairs.push((value, ceiling));
        self.notes.push(note);
    }

    /// Reports the round whose ratio is the median (the lower middle for
    /// an even count), so value / ceiling is that median ratio, and lists
    /// every round's ratio in the note.
    fn report(&self, rep: &mut Report, name: &str, unit: &str, what: &str) {
        if self.pairs.is_empty() {
            return;
        }
        let ratio = |i: usize| self.pairs[i].0 / self.pairs[i].1.max(f64::MIN_POSITIVE);
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
        let mid = order[(order.len() - 1) / 2];
        let all: Vec<String> = (0..self.pairs.len())
            .map(|i| format!("{:.2}", ratio(i)))
            .collect();
        let (value, ceiling) = self.pairs[mid];
        let mut note = what.to_string();
        if !self.notes[mid].is_empty() {
            note.push_str("; ");
            note.push_str(&self.notes[mid]);
        }
        if self.pairs.len() > 1 {
            note.push_str(&format!("; median of round ratios {}", all.join(" ")));
        }
        rep.add(name, value, unit, Some(ceiling), note);
    }
}

/// Runs every figure; returns the report.
pub fn run(root: &Path, plan: &Plan, shards: usize) -> Result<Report> {
    fio::ensure_fio()?;
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let mut rep = Report::default();
    let fio_file: PathBuf = root.join("fio.dat");
    let edir = root.join("engine");
    let _ = std::fs::remove_file(&fio_file);
    let e = open(&edir, shards)?;
    seq_phase(&e, plan, &fio_file, &mut rep)?;
    rand_phase(&e, plan, &fio_file, &mut rep)?;
    durable_phase(&e, plan, &fio_file, &mut rep)?;
    scrub_phase(&e, plan, &fio_file, &mut rep)?;
    e.close()?;
    let _ = std::fs::remove_dir_all(&edir);
    let _ = std::fs::remove_file(&fio_file);
    reopen_phase(root, plan, shards, &mut rep)?;
    let _ = std::fs::remove_dir_all(root);
    Ok(rep)
}

/// Sequential 1 MiB puts at 8 in flight vs fio sequential write QD 8.
/// fio's first pass lays its file out (fresh blocks); the ceiling is a later
/// pass over written blocks, as the engine writes into spare segments it
/// prepared while idle.
fn seq_phase(e: &Engine, plan: &Plan, fio_file: &Path, rep: &mut Report) -> Result<()> {
    let seq_args = [
        "--rw=write",
        "--bs=1m",
        "--iodepth=8",
        &format!("--size={}", plan.seq_bytes),
        "--end_fsync=1",
    ];
    let fresh = fio::run("seqwrite-fresh", fio_file, &seq_args)?;
    eprintln!(
        "  (fio laid out its file at {:.0} MB/s)",
        fresh.bytes_per_sec / 1e6
    );
    // Writers on each shard's executor (how the chunk server serves), 8 in
    // flight in all, each putting the same shared 1 MiB payload.
    let shards = e.shards();
    let one_mib = Arc::new(payload(1 << 20, 7));
    let n = plan.seq_bytes >> 20;
    let mut rounds = Rounds::default();
    for round in 0..plan.rounds {
        settle(e)?;
        let seq = fio::run("seqwrite", fio_file, &seq_args)?;
        let prefix = format!("seq{round}-");
        let work: Work = {
            let one_mib = one_mib.clone();
            Arc::new(move |shard, i| (owned_id(&prefix, shard, shards, i), Some(one_mib.clone())))
        };
        let before = block_on(e.stats())?;
        let load = drive_local(
            e,
            (8 / shards).max(1),
            Duration::from_secs(600),
            n / shards as u64,
            work,
        )?;
        print_flushes(&before, &block_on(e.stats())?, load.ops);
        let mbps = (load.ops << 20) as f64 / load.elapsed.as_secs_f64() / 1e6;
        rounds.push(mbps, seq.bytes_per_sec / 1e6, String::new());
    }
    rounds.report(
        rep,
        "seq_put_1mib",
        "MB/s",
        "fio seq write 1 MiB QD8 over written blocks",
    );
    // The same from one caller thread through the handle, which takes an
    // owned payload (one copy per put on the caller's side); one round, its
    // ceiling the last round's fio figure.
    settle(e)?;
    let load = drive(8, Duration::from_secs(600), n, |i| {
        put(e, shard_id("seqh-", i), one_mib.to_vec())
    })?;
    let mbps = (load.ops << 20) as f64 / load.elapsed.as_secs_f64() / 1e6;
    rep.add(
        "seq_put_1mib_via_handle",
        mbps,
        "MB/s",
        rounds.pairs.last().map(|p| p.1),
        "same, from a caller thread (one round)",
    );
    Ok(())
}

/// Random 4 KiB gets at 32 in flight vs fio random read QD 32, and bare
/// glommio reads of fio's file (the runtime's own ceiling).
fn rand_phase(e: &Engine, plan: &Plan, fio_file: &Path, rep: &mut Report) -> Result<()> {
    let dur = Duration::from_secs(plan.seconds);
    let shards = e.shards();
    let set = plan.rand_set_bytes / 4096;
    let four_k = payload(4096, 9);
    let fill = drive(64, Duration::from_secs(600), set, |i| {
        put(e, shard_id("rnd-", i), four_k.clone())
    })?;
    eprintln!(
        "  (filled {} 4 KiB shards at {:.0} puts/s)",
        fill.ops,
        fill.per_sec()
    );
    // Readers on each shard's executor (how the chunk server serves), 32 in
    // flight in all, over the ids each shard owns.
    let per_shard = (32 / shards).max(1);
    let mut owned: Vec<Vec<Vec<u8>>> = vec![Vec::new(); shards];
    for i in 0..set {
        let id = shard_id("rnd-", i);
        owned[tessera_engine::route(&id, shards)].push(id);
    }
    let owned = Arc::new(owned);
    let work: Work = Arc::new(move |shard, n| {
        let ids = &owned[shard];
        let k = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % ids.len();
        (ids[k].clone(), None)
    });
    let (mut engine, mut runtime) = (Rounds::default(), Rounds::default());
    for _ in 0..plan.rounds {
        settle(e)?;
        let rr = fio::run(
            "randread",
            fio_file,
            &[
                "--rw=randread",
                "--bs=4k",
                "--iodepth=32",
                &format!("--size={}", plan.rand_set_bytes),
                "--time_based",
                &format!("--runtime={}", plan.seconds),
            ],
        )?;
        // Separates what the engine costs from what the runtime's reactor
        // costs on this machine.
        let raw = raw_glommio_randread(fio_file, plan.rand_set_bytes, 32, dur)?;
        runtime.push(raw, rr.iops, String::new());
        let mut load = drive_local(e, per_shard, dur, u64::MAX, work.clone())?;
        let (p50, p99) = (load.pct(0.5), load.pct(0.99));
        engine.push(
            load.per_sec(),
            rr.iops,
            format!("engine p50 {p50} µs p99 {p99} µs"),
        );
    }
    runtime.report(
        rep,
        "runtime_rand_read_4kib",
        "IOPS",
        "bare glommio DmaFile reads, QD32, one executor, same fio file",
    );
    engine.report(rep, "rand_get_4kib", "IOPS", "fio randread 4 KiB QD32");
    // The same through the thread-safe handle (one thread hop each way).
    let mut load = drive(32, dur, u64::MAX, |i| {
        let id = shard_id("rnd-", (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % set);
        async move { e.get(&id).await.map(|_| ()) }
    })?;
    let (p50, p99) = (load.pct(0.5), load.pct(0.99));
    rep.add(
        "rand_get_4kib_via_handle",
        load.per_sec(),
        "IOPS",
        engine.pairs.last().map(|p| p.1),
        format!("same, from a caller thread (one round); p50 {p50} µs p99 {p99} µs"),
    );
    Ok(())
}

/// Durable 4 KiB puts from 32 writers vs fio write+fdatasync QD 1.
fn durable_phase(e: &Engine, plan: &Plan, fio_file: &Path, rep: &mut Report) -> Result<()> {
    let dur = Duration::from_secs(plan.seconds);
    let shards = e.shards();
    let per_shard = (32 / shards).max(1);
    let four_k = payload(4096, 9);
    let payload4k = Arc::new(four_k.clone());
    let mut rounds = Rounds::default();
    for round in 0..plan.rounds {
        settle(e)?;
        let sync1 = fio::run(
            "fsync4k",
            fio_file,
            &[
                "--rw=write",
                "--bs=4k",
                "--iodepth=1",
                "--fdatasync=1",
                &format!("--size={}", plan.seq_bytes),
                "--time_based",
                &format!("--runtime={}", plan.seconds),
            ],
        )?;
        settle(e)?;
        let before = block_on(e.stats())?;
        let prefix = format!("dur{round}-");
        let p = payload4k.clone();
        let work: Work =
            Arc::new(move |shard, n| (owned_id(&prefix, shard, shards, n), Some(p.clone())));
        let mut load = drive_local(e, per_shard, dur, u64::MAX, work)?;
        print_flushes(&before, &block_on(e.stats())?, load.ops);
        let (p50, p99) = (load.pct(0.5), load.pct(0.99));
        rounds.push(
            load.per_sec(),
            sync1.iops,
            format!("engine p50 {p50} µs p99 {p99} µs"),
        );
    }
    rounds.report(
        rep,
        "durable_put_4kib_c32",
        "ops/s",
        "fio 4 KiB write+fdatasync QD1",
    );
    settle(e)?;
    let mut load = drive(32, dur, u64::MAX, |i| {
        put(e, shard_id("duh-", i), four_k.clone())
    })?;
    let (p50, p99) = (load.pct(0.5), load.pct(0.99));
    rep.add(
        "durable_put_4kib_c32_via_handle",
        load.per_sec(),
        "ops/s",
        rounds.pairs.last().map(|p| p.1),
        format!("same, from a caller thread (one round); p50 {p50} µs p99 {p99} µs"),
    );
    Ok(())
}

/// One unthrottled scrub pass per round vs fio sequential read QD 8.
fn scrub_phase(e: &Engine, plan: &Plan, fio_file: &Path, rep: &mut Report) -> Result<()> {
    let mut rounds = Rounds::default();
    for _ in 0..plan.rounds {
        settle(e)?;
        let sr = fio::run(
            "seqread",
            fio_file,
            &[
                "--rw=read",
                "--bs=1m",
                "--iodepth=8",
                &format!("--size={}", plan.seq_bytes),
            ],
        )?;
        let stats = block_on(e.stats())?;
        let t = Instant::now();
        let p = block_on(e.scrub(Some(u64::MAX)))?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            p.bad_found == 0,
            "scrub found {} bad shards on a healthy store",
            p.bad_found
        );
        rounds.push(
            stats.live_bytes as f64 / secs / 1e6,
            sr.bytes_per_sec / 1e6,
            format!("{} records verified", p.records_verified),
        );
    }
    rounds.report(rep, "scrub", "MB/s", "fio seq read 1 MiB QD8");
    Ok(())
}

/// Reopen with a million shards: after a clean close (checkpoint), and from
/// the log alone (checkpoint removed).
fn reopen_phase(root: &Path, plan: &Plan, shards: usize, rep: &mut Report) -> Result<()> {
    let rdir = root.join("reopen");
    let e = open(&rdir, shards)?;
    let small = payload(64, 11);
    let fill = drive(256, Duration::from_secs(900), plan.reopen_shards, |i| {
        put(&e, shard_id("many-", i), small.clone())
    })?;
    eprintln!(
        "  (stored {} shards of 64 B at {:.0} puts/s)",
        fill.ops,
        fill.per_sec()
    );
    e.close()?;
    let t = Instant::now();
    let e = open(&rdir, shards)?;
    let secs = t.elapsed().as_secs_f64();
    let live = block_on(e.stats())?.live_shards;
    anyhow::ensure!(
        live == plan.reopen_shards,
        "reopen found {live} shards, expected {}",
        plan.reopen_shards
    );
    e.close()?;
    rep.add(
        "reopen_1m_shards",
        secs,
        "s",
        None,
        format!("{live} shards, from the checkpoint"),
    );
    for shard in std::fs::read_dir(&rdir)? {
        let p = shard?.path().join("index.ckpt");
        let _ = std::fs::remove_file(p);
    }
    let t = Instant::now();
    let e = open(&rdir, shards)?;
    let secs = t.elapsed().as_secs_f64();
    let live = block_on(e.stats())?.live_shards;
    drop(e);
    rep.add(
        "reopen_1m_shards_no_ckpt",
        secs,
        "s",
        None,
        format!("{live} shards, full log scan"),
    );
    Ok(())
}
