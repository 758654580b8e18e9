//! The thread-per-core engine: one glommio executor thread per shard, each
//! owning its shard's files and index. Callers on any thread hold a cheap,
//! `Send` handle; a request goes to the owning shard (by crc32c of the id)
//! over that shard's bounded queue and its answer comes back on a oneshot.
//! No lock is shared between shards on the hot path.

use crate::device::{Device, FaultPlan, FaultyDevice, SimFs, UringDevice};
use crate::error::{Error, Result};
use crate::limits::{BAD_SHARD_QUEUE_DEPTH, SHARDS_MAX, SHARD_INFLIGHT_MAX, SHARD_QUEUE_DEPTH};
use crate::shard::{
    BadShard, CompactReport, InventoryItem, ScrubProgress, Shard, ShardConfig, ShardStat, Stats,
};
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Makes the device of each shard, on that shard's own thread.
pub trait DeviceFactory: Send + Sync + 'static {
    /// The device type.
    type Device: Device;
    /// Opens the device of shard `shard`.
    fn open(&self, shard: usize) -> impl Future<Output = io::Result<Self::Device>>;
}

/// Real io_uring devices under one root directory (`shard-N/` each).
pub struct UringFactory {
    root: PathBuf,
}

impl UringFactory {
    /// Devices under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        UringFactory { root: root.into() }
    }
}

impl DeviceFactory for UringFactory {
    type Device = UringDevice;
    async fn open(&self, shard: usize) -> io::Result<UringDevice> {
        UringDevice::open(self.root.join(format!("shard-{shard}"))).await
    }
}

/// Simulated devices on one [`SimFs`] (tests).
pub struct SimFactory(pub SimFs);

impl DeviceFactory for SimFactory {
    type Device = crate::device::SimDevice;
    async fn open(&self, shard: usize) -> io::Result<Self::Device> {
        Ok(self.0.device(shard))
    }
}

/// Any factory's devices wrapped in a [`FaultyDevice`] (tests).
pub struct FaultyFactory<F> {
    inner: F,
    plan: Arc<FaultPlan>,
}

impl<F> FaultyFactory<F> {
    /// Wraps `inner`'s devices, breaking them as `plan` says.
    pub fn new(inner: F, plan: Arc<FaultPlan>) -> Self {
        FaultyFactory { inner, plan }
    }
}

impl<F: DeviceFactory> DeviceFactory for FaultyFactory<F> {
    type Device = FaultyDevice<F::Device>;
    async fn open(&self, shard: usize) -> io::Result<Self::Device> {
        Ok(FaultyDevice::new(
            self.inner.open(shard).await?,
            self.plan.clone(),
        ))
    }
}

/// How to run the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Shards (= executor threads) for a new data directory; 0 means one
    /// per available core. An existing directory keeps its own count.
    pub shards: usize,
    /// Pin each shard's thread to a core.
    pub pin_to_cores: bool,
    /// Per-shard tunables.
    pub shard: ShardConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: 0,
            pin_to_cores: true,
            shard: ShardConfig::default(),
        }
    }
}

enum Req {
    Put {
        id: Vec<u8>,
        payload: Vec<u8>,
        tx: oneshot::Sender<Result<()>>,
    },
    Get {
        id: Vec<u8>,
        tx: oneshot::Sender<Result<(Vec<u8>, u32)>>,
    },
    Delete {
        id: Vec<u8>,
        tx: oneshot::Sender<Result<bool>>,
    },
    Stat {
        id: Vec<u8>,
        tx: oneshot::Sender<Result<ShardStat>>,
    },
    Inventory {
        start_after: Option<Vec<u8>>,
        limit: usize,
        tx: oneshot::Sender<Vec<InventoryItem>>,
    },
    Stats {
        tx: oneshot::Sender<Stats>,
    },
    Compact {
        tx: oneshot::Sender<Result<CompactReport>>,
    },
    Scrub {
        rate: Option<u64>,
        tx: oneshot::Sender<Result<ScrubProgress>>,
    },
    Checkpoint {
        tx: oneshot::Sender<Result<()>>,
    },
    Close {
        tx: oneshot::Sender<Result<()>>,
    },
    Local {
        task: LocalTask,
    },
}

/// A job to run on a shard's own executor thread (see
/// [`Engine::spawn_on_shard`]).
pub type LocalTask = Box<dyn FnOnce(Rc<dyn ShardOps>) -> LocalBoxFuture<'static, ()> + Send>;

/// One shard, seen from its own executor thread: the foreground operations
/// without any thread hop. Object-safe so that a caller (the chunk server)
/// need not know the device type.
pub trait ShardOps {
    /// This shard's number.
    fn index_no(&self) -> usize;
    /// See [`Shard::put`].
    fn put<'a>(&'a self, id: &'a [u8], payload: &'a [u8]) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`Shard::get`].
    fn get<'a>(&'a self, id: &'a [u8]) -> LocalBoxFuture<'a, Result<Vec<u8>>>;
    /// See [`Shard::get_with`]: `f` sees the verified payload and its
    /// crc32c in the read buffer, without a copy.
    fn get_with<'a>(
        &'a self,
        id: &'a [u8],
        f: &'a mut dyn FnMut(&[u8], u32),
    ) -> LocalBoxFuture<'a, Result<()>>;
    /// See [`Shard::delete`].
    fn delete<'a>(&'a self, id: &'a [u8]) -> LocalBoxFuture<'a, Result<bool>>;
    /// See [`Shard::stat`].
    fn stat(&self, id: &[u8]) -> Result<ShardStat>;
}

impl<D: Device> ShardOps for Shard<D> {
    fn index_no(&self) -> usize {
        Shard::index_no(self)
    }
    fn put<'a>(&'a self, id: &'a [u8], payload: &'a [u8]) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(Shard::put(self, id, payload))
    }
    fn get<'a>(&'a self, id: &'a [u8]) -> LocalBoxFuture<'a, Result<Vec<u8>>> {
        Box::pin(Shard::get(self, id))
    }
    fn get_with<'a>(
        &'a self,
        id: &'a [u8],
        f: &'a mut dyn FnMut(&[u8], u32),
    ) -> LocalBoxFuture<'a, Result<()>> {
        Box::pin(Shard::get_with(self, id, f))
    }
    fn delete<'a>(&'a self, id: &'a [u8]) -> LocalBoxFuture<'a, Result<bool>> {
        Box::pin(Shard::delete(self, id))
    }
    fn stat(&self, id: &[u8]) -> Result<ShardStat> {
        Shard::stat(self, id)
    }
}

/// A running engine: owns its executor threads. Its request methods are
/// those of [`EngineHandle`] (through `Deref`); [`Engine::handle`] gives
/// cloneable handles for other threads and tasks.
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// A cloneable, `Send` handle to a running engine; every method is async and
/// runtime-agnostic. Calls fail with [`Error::Closed`] once the engine is
/// closed.
#[derive(Clone)]
pub struct EngineHandle {
    txs: Arc<Vec<async_channel::Sender<Req>>>,
    bad_rx: async_channel::Receiver<BadShard>,
}

impl std::ops::Deref for Engine {
    type Target = EngineHandle;
    fn deref(&self) -> &EngineHandle {
        &self.handle
    }
}

const MANIFEST_FILE: &str = "ENGINE";

fn read_manifest(root: &Path) -> Result<Option<usize>> {
    let p = root.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", p.display()), e)),
    };
    let mut lines = text.lines();
    if lines.next() != Some("tessera-engine 1") {
        return Err(Error::Layout(format!(
            "{} is not a tessera engine manifest (version 1)",
            p.display()
        )));
    }
    let shards = lines
        .find_map(|l| l.strip_prefix("shards = "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| (1..=SHARDS_MAX).contains(&n))
        .ok_or_else(|| Error::Layout(format!("{} has no valid `shards = N` line", p.display())))?;
    Ok(Some(shards))
}

fn write_manifest(root: &Path, shards: usize) -> Result<()> {
    let tmp = root.join(format!("{MANIFEST_FILE}.tmp"));
    let body = format!("tessera-engine 1\nshards = {shards}\n");
    let w = || -> io::Result<()> {
        std::fs::write(&tmp, body.as_bytes())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, root.join(MANIFEST_FILE))?;
        std::fs::File::open(root)?.sync_all()
    };
    w().map_err(|e| Error::io(format!("writing the manifest in {}", root.display()), e))
}

/// Where a shard id lives.
pub fn route(id: &[u8], shards: usize) -> usize {
    (crc32c::crc32c(id) as usize) % shards
}

impl Engine {
    /// Opens (or creates) an engine in `dir` on real io_uring devices.
    pub fn open(dir: impl AsRef<Path>, cfg: EngineConfig) -> Result<Engine> {
        let root = dir.as_ref();
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let shards = match read_manifest(root)? {
            Some(n) => {
                if cfg.shards != 0 && cfg.shards != n {
                    tracing::warn!(
                        existing = n,
                        asked = cfg.shards,
                        "data directory keeps its shard count"
                    );
                }
                n
            }
            None => {
                let n = if cfg.shards == 0 {
                    default_shards()
                } else {
                    cfg.shards
                };
                if !(1..=SHARDS_MAX).contains(&n) {
                    return Err(Error::Config(format!(
                        "shards is {n}; it must be 1..={SHARDS_MAX}"
                    )));
                }
                write_manifest(root, n)?;
                n
            }
        };
        Self::open_with(UringFactory::new(root), shards, cfg)
    }

    /// Opens an engine of `shards` shards on devices from `factory`.
    pub fn open_with<F: DeviceFactory>(
        factory: F,
        shards: usize,
        cfg: EngineConfig,
    ) -> Result<Engine> {
        cfg.shard.validate()?;
        if !(1..=SHARDS_MAX).contains(&shards) {
            return Err(Error::Config(format!(
                "shards is {shards}; it must be 1..={SHARDS_MAX}"
            )));
        }
        crate::rlimit::raise_memlock()?;
        crate::rlimit::raise_open_files();
        let factory = Arc::new(factory);
        let (bad_tx, bad_rx) = async_channel::bounded(BAD_SHARD_QUEUE_DEPTH);
        let cores = default_shards();
        let mut txs = Vec::with_capacity(shards);
        let mut threads = Vec::with_capacity(shards);
        let mut readies = Vec::with_capacity(shards);
        for i in 0..shards {
            let (tx, rx) = async_channel::bounded::<Req>(SHARD_QUEUE_DEPTH);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
            let placement = if cfg.pin_to_cores {
                Placement::Fixed(i % cores)
            } else {
                Placement::Unbound
            };
            let (factory, shard_cfg, bad_tx) = (factory.clone(), cfg.shard.clone(), bad_tx.clone());
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("tessera-engine-{i}"))
                .spawn(move || shard_main(i, factory, shard_cfg, bad_tx, rx, ready_tx))
                .map_err(|e| Error::Runtime(format!("starting the executor of shard {i}: {e}")))?;
            txs.push(tx);
            threads.push(handle);
            readies.push(ready_rx);
        }
        let engine = Engine {
            handle: EngineHandle {
                txs: Arc::new(txs),
                bad_rx,
            },
            threads,
        };
        for (i, r) in readies.into_iter().enumerate() {
            match r.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::Runtime(format!(
                        "shard {i} thread stopped while opening"
                    )))
                }
            }
        }
        Ok(engine)
    }

    /// A cloneable handle for other threads and tasks.
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Finishes in-flight requests, flushes, checkpoints and stops.
    pub fn close(mut self) -> Result<()> {
        let mut first_err = None;
        for s in 0..self.txs.len() {
            let r = futures::executor::block_on(self.call(s, |tx| Req::Close { tx }));
            if let Err(e) = r.and_then(|r| r) {
                first_err.get_or_insert(e);
            }
        }
        for tx in self.handle.txs.iter() {
            tx.close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl EngineHandle {
    /// Number of shards (executor threads).
    pub fn shards(&self) -> usize {
        self.txs.len()
    }

    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Req,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.txs[shard]
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    fn owner(&self, id: &[u8]) -> usize {
        route(id, self.txs.len())
    }

    /// Stores `payload` under `id`; returns once it is durable.
    pub async fn put(&self, id: &[u8], payload: Vec<u8>) -> Result<()> {
        let id = id.to_vec();
        self.call(self.owner(&id), |tx| Req::Put { id, payload, tx })
            .await?
    }

    /// Reads `id`; bytes come back only after their crc32c verifies.
    pub async fn get(&self, id: &[u8]) -> Result<Vec<u8>> {
        Ok(self.get_checked(id).await?.0)
    }

    /// Reads `id` and returns it with the crc32c it was verified against.
    pub async fn get_checked(&self, id: &[u8]) -> Result<(Vec<u8>, u32)> {
        let id = id.to_vec();
        self.call(self.owner(&id), |tx| Req::Get { id, tx }).await?
    }

    /// Deletes `id`; true if it existed. Durable on return.
    pub async fn delete(&self, id: &[u8]) -> Result<bool> {
        let id = id.to_vec();
        self.call(self.owner(&id), |tx| Req::Delete { id, tx })
            .await?
    }

    /// Length, crc32c and sequence of `id`.
    pub async fn stat(&self, id: &[u8]) -> Result<ShardStat> {
        let id = id.to_vec();
        self.call(self.owner(&id), |tx| Req::Stat { id, tx })
            .await?
    }

    /// Up to `limit` shards after `start_after`, in id order across all
    /// shards (page through by passing the last id back).
    pub async fn inventory(
        &self,
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<InventoryItem>> {
        let mut all = Vec::new();
        for s in 0..self.txs.len() {
            let start_after = start_after.map(<[u8]>::to_vec);
            all.extend(
                self.call(s, |tx| Req::Inventory {
                    start_after,
                    limit,
                    tx,
                })
                .await?,
            );
        }
        all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        all.truncate(limit);
        Ok(all)
    }

    /// Figures summed over shards.
    pub async fn stats(&self) -> Result<Stats> {
        let mut total = Stats::default();
        for s in 0..self.txs.len() {
            total.add(&self.call(s, |tx| Req::Stats { tx }).await?);
        }
        Ok(total)
    }

    /// Compacts every shard now.
    pub async fn compact(&self) -> Result<CompactReport> {
        let mut total = CompactReport::default();
        for s in 0..self.txs.len() {
            total.add(&self.call(s, |tx| Req::Compact { tx }).await??);
        }
        Ok(total)
    }

    /// One scrub pass on every shard (at most `bytes_per_sec` each, or the
    /// configured budget); bad shards go to [`Engine::bad_shards`].
    pub async fn scrub(&self, bytes_per_sec: Option<u64>) -> Result<ScrubProgress> {
        let mut waits = Vec::new();
        for s in 0..self.txs.len() {
            waits.push(self.call(s, |tx| Req::Scrub {
                rate: bytes_per_sec,
                tx,
            }));
        }
        let mut total = Stats::default();
        for r in futures::future::join_all(waits).await {
            let p = r??;
            total.add(&Stats {
                scrub: p,
                ..Stats::default()
            });
        }
        Ok(total.scrub)
    }

    /// Writes an index checkpoint on every shard now.
    pub async fn checkpoint(&self) -> Result<()> {
        for s in 0..self.txs.len() {
            self.call(s, |tx| Req::Checkpoint { tx }).await??;
        }
        Ok(())
    }

    /// Runs `task` on the executor thread of shard `shard`, with direct
    /// access to it (no thread hop per operation). The chunk server runs its
    /// listeners this way; ids must still be routed with [`route`] — a task
    /// may only touch ids its shard owns.
    pub fn spawn_on_shard<F>(&self, shard: usize, task: F) -> Result<()>
    where
        F: FnOnce(Rc<dyn ShardOps>) -> LocalBoxFuture<'static, ()> + Send + 'static,
    {
        let tx = self.txs.get(shard).ok_or_else(|| {
            Error::Config(format!(
                "no shard {shard}; the engine has {}",
                self.txs.len()
            ))
        })?;
        tx.send_blocking(Req::Local {
            task: Box::new(task),
        })
        .map_err(|_| Error::Closed)
    }

    /// Reports of shards whose checksum failed (on read or scrub).
    pub fn bad_shards(&self) -> async_channel::Receiver<BadShard> {
        self.bad_rx.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Without close(): stop the threads; acknowledged writes are durable
        // already, queued ones are dropped like in a crash.
        for tx in self.handle.txs.iter() {
            tx.close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SHARDS_MAX)
}

async fn shard_main<F: DeviceFactory>(
    i: usize,
    factory: Arc<F>,
    cfg: ShardConfig,
    bad_tx: async_channel::Sender<BadShard>,
    rx: async_channel::Receiver<Req>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let opened = async {
        let dev = factory
            .open(i)
            .await
            .map_err(|e| Error::io(format!("opening the device of shard {i}"), e))?;
        Shard::open(i, dev, cfg, bad_tx).await
    }
    .await;
    let shard = match opened {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            // Let the reactor close what the failed open had opened.
            for _ in 0..FD_CLOSE_TURNS {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let bg = glommio::executor().create_task_queue(
        Shares::Static(100),
        Latency::NotImportant,
        "engine-background",
    );
    let flusher = glommio::spawn_local(shard.clone().run_flusher());
    let compactor = glommio::spawn_local_into(shard.clone().run_compactor(), bg).ok();
    let scrubber = glommio::spawn_local_into(shard.clone().run_scrubber(), bg).ok();
    let preparer = glommio::spawn_local_into(shard.clone().run_preparer(), bg).ok();
    let sem = Rc::new(glommio::sync::Semaphore::new(SHARD_INFLIGHT_MAX as u64));
    while let Ok(req) = rx.recv().await {
        let req = match req {
            Req::Close { tx } => {
                let _ = sem.acquire(SHARD_INFLIGHT_MAX as u64).await;
                let _ = tx.send(shard.close().await);
                break;
            }
            Req::Local { task } => {
                // Long-lived by design (a listener, a load driver): it takes
                // no in-flight permit.
                let ops: Rc<dyn ShardOps> = shard.clone();
                glommio::spawn_local(task(ops)).detach();
                continue;
            }
            other => other,
        };
        let Ok(permit) = sem.acquire_static_permit(1).await else {
            break;
        };
        let shard = shard.clone();
        let bg_job = matches!(req, Req::Compact { .. } | Req::Scrub { .. });
        let job = async move {
            serve(&shard, req).await;
            drop(permit);
        };
        if bg_job {
            match glommio::spawn_local_into(job, bg) {
                Ok(t) => {
                    t.detach();
                }
                Err(e) => {
                    tracing::error!(shard = i, error = %e, "could not start a background job")
                }
            }
        } else {
            glommio::spawn_local(job).detach();
        }
    }
    drop(flusher);
    drop(compactor);
    drop(scrubber);
    drop(preparer);
    // glommio closes a dropped file on the reactor's next I/O cycle: give it
    // those cycles before the executor ends, or the descriptors leak.
    let weak = Rc::downgrade(&shard);
    drop(shard);
    for _ in 0..FD_CLOSE_TURNS {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    if weak.upgrade().is_some() {
        tracing::warn!(
            shard = i,
            "a task on this shard's executor still holds it; its files close when the task ends"
        );
    }
}

/// Reactor turns given to pending file closes when a shard stops.
const FD_CLOSE_TURNS: usize = 3;

async fn serve<D: Device>(shard: &Rc<Shard<D>>, req: Req) {
    match req {
        Req::Put { id, payload, tx } => {
            let _ = tx.send(shard.put(&id, &payload).await);
        }
        Req::Get { id, tx } => {
            let _ = tx.send(shard.get_with(&id, |p, crc| (p.to_vec(), crc)).await);
        }
        Req::Delete { id, tx } => {
            let _ = tx.send(shard.delete(&id).await);
        }
        Req::Stat { id, tx } => {
            let _ = tx.send(shard.stat(&id));
        }
        Req::Inventory {
            start_after,
            limit,
            tx,
        } => {
            let _ = tx.send(shard.inventory(start_after.as_deref(), limit));
        }
        Req::Stats { tx } => {
            let _ = tx.send(shard.stats());
        }
        Req::Compact { tx } => {
            let _ = tx.send(shard.compact().await);
        }
        Req::Scrub { rate, tx } => {
            let _ = tx.send(shard.scrub_pass(rate).await);
        }
        Req::Checkpoint { tx } => {
            let _ = tx.send(shard.checkpoint().await);
        }
        Req::Close { tx } => {
            let _ = tx.send(shard.close().await);
        }
        Req::Local { task } => {
            let ops: Rc<dyn ShardOps> = shard.clone();
            task(ops).await;
        }
    }
}
