//! The `ChunkServer` interface over the engine.
//!
//! Every request is checked against the limits of the contract before it
//! touches the engine; every failure is answered with a typed `Error`
//! (kind + a message saying what to do), never by dropping the connection.
//! A request for an id owned by this executor's engine shard is served on
//! this thread; others cross to their shard through the engine handle.
//! While the server drains for shutdown, new requests get `unavailable`.

use futures::future::LocalBoxFuture;
use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tessera_engine::{route, EngineHandle, ShardOps};
use tessera_rpc::frames::{CallError, Failed, FrameService, Hello, ShardIn};
use tessera_rpc::limits::*;
use tessera_rpc::RemoteKind;
use tessera_schema::chunk_capnp::{byte_sink, chunk_server, error as wire_error, shard_sink};

/// Process-wide facts every executor shares.
pub struct NodeState {
    pub node_id: String,
    pub data_dir: PathBuf,
    pub started: Instant,
    pub scrub_running: AtomicBool,
    pub last_scrub_end_unix_millis: AtomicU64,
    pub scrub_passes_started: AtomicU64,
    /// Shard requests served on the core that owns the id.
    pub local_requests: AtomicU64,
    /// Shard requests passed to the owning core from another one.
    pub forwarded_requests: AtomicU64,
}

/// What one executor's connections share.
pub struct Local {
    pub shard: Rc<dyn ShardOps>,
    pub engine: EngineHandle,
    pub node: Arc<NodeState>,
    /// Requests being served on this executor.
    pub inflight: Rc<Cell<usize>>,
    /// Bytes streamed puts may still reserve on this executor.
    pub stream_budget: Rc<Cell<u64>>,
    /// Set when shutdown begins.
    pub draining: Rc<Cell<bool>>,
}

/// A typed failure to put on the wire.
#[derive(Debug)]
pub struct Failure {
    pub kind: RemoteKind,
    pub message: String,
}

fn fail(kind: RemoteKind, message: impl Into<String>) -> Failure {
    Failure {
        kind,
        message: message.into(),
    }
}

impl From<tessera_engine::Error> for Failure {
    fn from(e: tessera_engine::Error) -> Self {
        use tessera_engine::Error as E;
        let kind = match &e {
            E::IdLength { .. } => RemoteKind::InvalidArgument,
            E::ShardTooLarge { .. } => RemoteKind::TooLarge,
            E::NotFound => RemoteKind::NotFound,
            E::Checksum { .. } => RemoteKind::Checksum,
            E::Poisoned { .. } | E::Closed => RemoteKind::Unavailable,
            E::DiskFull { .. } => RemoteKind::DiskFull,
            E::Io { .. } => RemoteKind::Io,
            E::Config(_) | E::Layout(_) | E::Runtime(_) => RemoteKind::Internal,
        };
        fail(kind, e.to_string())
    }
}

fn write_failure(mut b: wire_error::Builder<'_>, f: &Failure) {
    b.set_kind(f.kind.to_wire());
    b.set_message(f.message.as_str());
}

/// Counts a request as in flight until dropped.
struct InflightGuard(Rc<Cell<usize>>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn check_id(id: &[u8]) -> Result<(), Failure> {
    if id.is_empty() || id.len() > ID_LEN_MAX_BYTES {
        return Err(fail(
            RemoteKind::InvalidArgument,
            format!(
                "shard id is {} bytes; ids must be 1..={ID_LEN_MAX_BYTES} bytes",
                id.len()
            ),
        ));
    }
    Ok(())
}

fn check_crc(data: &[u8], crc: u32) -> Result<(), Failure> {
    let got = crc32c::crc32c(data);
    if got != crc {
        return Err(fail(
            RemoteKind::InvalidArgument,
            format!(
                "data crc32c is {got:08x} but the request says {crc:08x}: corrupted in transit, nothing stored — send it again"
            ),
        ));
    }
    Ok(())
}

/// `[offset, offset+len)` of a shard of `total` bytes (`len` 0: to the end).
fn range(total: usize, offset: u32, len: u32) -> Result<(usize, usize), Failure> {
    let off = offset as usize;
    if off > total {
        return Err(fail(
            RemoteKind::InvalidArgument,
            format!("offset {off} is beyond the shard's {total} bytes"),
        ));
    }
    let end = if len == 0 { total } else { off + len as usize };
    if end > total {
        return Err(fail(
            RemoteKind::InvalidArgument,
            format!("range {off}..{end} is beyond the shard's {total} bytes"),
        ));
    }
    Ok((off, end))
}

/// The `ChunkServer` of one executor.
#[derive(Clone)]
pub struct ChunkService {
    local: Rc<Local>,
}

impl ChunkService {
    pub fn new(local: Rc<Local>) -> Self {
        ChunkService { local }
    }

    fn begin(&self) -> Result<InflightGuard, Failure> {
        if self.local.draining.get() {
            return Err(fail(
                RemoteKind::Unavailable,
                "the chunk server is shutting down; retry on another replica or after restart",
            ));
        }
        let c = &self.local.inflight;
        c.set(c.get() + 1);
        Ok(InflightGuard(c.clone()))
    }

    fn is_local(&self, id: &[u8]) -> bool {
        let local = route(id, self.local.engine.shards()) == self.local.shard.index_no();
        let n = &self.local.node;
        if local {
            n.local_requests.fetch_add(1, Ordering::Relaxed);
        } else {
            n.forwarded_requests.fetch_add(1, Ordering::Relaxed);
        }
        local
    }

    async fn put(&self, id: &[u8], data: &[u8]) -> Result<(), Failure> {
        if self.is_local(id) {
            Ok(self.local.shard.put(id, data).await?)
        } else {
            Ok(self.local.engine.put(id, data.to_vec()).await?)
        }
    }

    /// The shard and the crc32c it was verified against.
    async fn get(&self, id: &[u8]) -> Result<(Vec<u8>, u32), Failure> {
        if self.is_local(id) {
            let mut got = (Vec::new(), 0);
            self.local
                .shard
                .get_with(id, &mut |p, crc| got = (p.to_vec(), crc))
                .await?;
            Ok(got)
        } else {
            Ok(self.local.engine.get_checked(id).await?)
        }
    }
}

impl ChunkService {
    /// `putShards`, over either transport: the call as a whole refused
    /// before anything is stored, or each shard's own outcome (by
    /// position). Every shard is checked and stored as `putShard` would;
    /// stored concurrently, so they share the engine's durable writes.
    async fn store_shards(
        &self,
        shards: &[ShardIn<'_>],
    ) -> Result<Vec<Result<(), Failure>>, Failure> {
        let _g = self.begin()?;
        let n = shards.len();
        if n == 0 || n > PUT_BATCH_SHARDS_MAX {
            return Err(too_many_shards(n));
        }
        let total = shards
            .iter()
            .fold(0usize, |t, s| t.saturating_add(s.data.len()));
        if total > PUT_BATCH_DATA_MAX_BYTES {
            return Err(fail(
                RemoteKind::TooLarge,
                format!(
                    "putShards carries {total} bytes of data; at most {PUT_BATCH_DATA_MAX_BYTES} per call — send fewer shards per call"
                ),
            ));
        }
        let puts = shards.iter().map(|s| async move {
            check_id(s.id)?;
            check_crc(s.data, s.crc32c)?;
            self.put(s.id, s.data).await
        });
        Ok(futures::future::join_all(puts).await)
    }
}

fn too_many_shards(n: usize) -> Failure {
    fail(
        RemoteKind::InvalidArgument,
        format!("putShards carries {n} shards; send 1..={PUT_BATCH_SHARDS_MAX} per call"),
    )
}

/// Counts a `putShards` call, and each of its shards as a put (as if sent
/// alone).
fn observe_put_shards(started: std::time::Instant, r: &Result<Vec<Result<(), Failure>>, Failure>) {
    match r {
        Ok(outcomes) => {
            for r in outcomes {
                crate::metrics::observe("put", started, r.as_ref().err().map(|f| f.kind));
            }
            crate::metrics::observe("put_shards", started, None);
        }
        Err(f) => crate::metrics::observe("put_shards", started, Some(f.kind)),
    }
}

/// The framed transport's requests ([`tessera_rpc::frames`]): small shard
/// writes, served exactly as the Cap'n Proto `putShards`.
impl FrameService for ChunkService {
    fn hello(&self) -> Hello {
        Hello {
            serving_shard: self.local.shard.index_no() as u32,
            engine_shards: self.local.engine.shards() as u32,
            node_id: self.local.node.node_id.clone(),
        }
    }

    fn put_shards<'a>(
        &'a self,
        shards: Vec<ShardIn<'a>>,
    ) -> LocalBoxFuture<'a, Result<Vec<Failed>, CallError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let r = self.store_shards(&shards).await;
            observe_put_shards(started, &r);
            match r {
                Ok(outcomes) => Ok(outcomes
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        r.err().map(|f| Failed {
                            index: i as u32,
                            kind: f.kind,
                            message: f.message,
                        })
                    })
                    .collect()),
                Err(f) => Err(CallError {
                    kind: f.kind,
                    message: f.message,
                }),
            }
        })
    }
}

/// Receives one streamed put; its reservation of the stream budget is
/// returned when it is dropped (finished, failed or abandoned).
struct PutSink {
    service: ChunkService,
    id: Vec<u8>,
    length: usize,
    crc: u32,
    buf: std::cell::RefCell<Vec<u8>>,
    reserved: u64,
    finished: Cell<bool>,
}

impl Drop for PutSink {
    fn drop(&mut self) {
        let b = &self.service.local.stream_budget;
        b.set(b.get() + self.reserved);
    }
}

impl shard_sink::Server for PutSink {
    fn write(
        self: Rc<Self>,
        params: shard_sink::WriteParams,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let chunk = params.get()?.get_chunk()?;
            if self.finished.get() {
                return Err(capnp::Error::failed("write after finish".into()));
            }
            if chunk.len() > STREAM_CHUNK_MAX_BYTES {
                return Err(capnp::Error::failed(format!(
                    "stream chunk of {} bytes is over {STREAM_CHUNK_MAX_BYTES}",
                    chunk.len()
                )));
            }
            let mut buf = self.buf.borrow_mut();
            if buf.len() + chunk.len() > self.length {
                return Err(capnp::Error::failed(format!(
                    "stream carries more than the {} bytes announced",
                    self.length
                )));
            }
            buf.extend_from_slice(chunk);
            Ok(())
        })();
        std::future::ready(r)
    }

    #[allow(clippy::manual_async_fn)] // the trait's signature (capnp 0.27)
    fn finish(
        self: Rc<Self>,
        _: shard_sink::FinishParams,
        mut results: shard_sink::FinishResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        async move {
            if self.finished.replace(true) {
                return Err(capnp::Error::failed("finish called twice".into()));
            }
            let data = std::mem::take(&mut *self.buf.borrow_mut());
            let r = async {
                let _g = self.service.begin()?;
                if data.len() != self.length {
                    return Err(fail(
                        RemoteKind::InvalidArgument,
                        format!(
                            "stream ended after {} of the {} bytes announced; nothing stored",
                            data.len(),
                            self.length
                        ),
                    ));
                }
                check_crc(&data, self.crc)?;
                self.service.put(&self.id, &data).await
            }
            .await;
            if let Err(f) = r {
                write_failure(results.get().init_error(), &f);
            }
            Ok(())
        }
    }
}

impl chunk_server::Server for ChunkService {
    fn put_shard(
        self: Rc<Self>,
        params: chunk_server::PutShardParams,
        mut results: chunk_server::PutShardResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let _g = this.begin()?;
                let p = params.get()?;
                let (id, data) = (p.get_id()?, p.get_data()?);
                check_id(id)?;
                if data.len() > INLINE_DATA_MAX_BYTES {
                    return Err(fail(
                        RemoteKind::TooLarge,
                        format!(
                            "putShard carries {} bytes; at most {INLINE_DATA_MAX_BYTES} inline — use putShardStream",
                            data.len()
                        ),
                    ));
                }
                check_crc(data, p.get_crc32c())?;
                this.put(id, data).await
            }
            .await;
            crate::metrics::observe("put", started, r.as_ref().err().map(|f: &Failure| f.kind));
            if let Err(f) = r {
                write_failure(results.get().init_error(), &f);
            }
            Ok(())
        }
    }

    fn put_shards(
        self: Rc<Self>,
        params: chunk_server::PutShardsParams,
        mut results: chunk_server::PutShardsResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let p = params.get()?;
                let list = p.get_shards()?;
                if list.len() as usize > PUT_BATCH_SHARDS_MAX {
                    return Err(too_many_shards(list.len() as usize));
                }
                let mut shards = Vec::with_capacity(list.len() as usize);
                for s in list.iter() {
                    shards.push(ShardIn {
                        id: s.get_id()?,
                        data: s.get_data()?,
                        crc32c: s.get_crc32c(),
                    });
                }
                this.store_shards(&shards).await
            }
            .await;
            observe_put_shards(started, &r);
            match r {
                Ok(outcomes) => {
                    let failed: Vec<(u32, Failure)> = outcomes
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, r)| r.err().map(|f| (i as u32, f)))
                        .collect();
                    let mut list = results.get().init_failed(failed.len() as u32);
                    for (j, (i, f)) in failed.iter().enumerate() {
                        let mut b = list.reborrow().get(j as u32);
                        b.set_index(*i);
                        write_failure(b.init_error(), f);
                    }
                }
                Err(f) => write_failure(results.get().init_error(), &f),
            }
            Ok(())
        }
    }

    fn put_shard_stream(
        self: Rc<Self>,
        params: chunk_server::PutShardStreamParams,
        mut results: chunk_server::PutShardStreamResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let r = (|| {
            let _g = self.begin()?;
            let p = params.get()?;
            let id = p.get_id()?;
            check_id(id)?;
            let length = p.get_length() as usize;
            if length > SHARD_SIZE_MAX_BYTES {
                return Err(fail(
                    RemoteKind::TooLarge,
                    format!("shard of {length} bytes is over the limit of {SHARD_SIZE_MAX_BYTES}; split it"),
                ));
            }
            let budget = &self.local.stream_budget;
            if budget.get() < length as u64 {
                return Err(fail(
                    RemoteKind::Unavailable,
                    "too many streamed puts in progress on this core; retry shortly",
                ));
            }
            budget.set(budget.get() - length as u64);
            let sink = PutSink {
                service: (*self).clone(),
                id: id.to_vec(),
                length,
                crc: p.get_crc32c(),
                buf: std::cell::RefCell::new(Vec::new()),
                reserved: length as u64,
                finished: Cell::new(false),
            };
            Ok(sink)
        })();
        match r {
            Ok(sink) => {
                let client: shard_sink::Client = capnp_rpc::new_client(sink);
                results.get().set_sink(client);
            }
            Err(f) => write_failure(results.get().init_error(), &f),
        }
        std::future::ready(Ok(()))
    }

    fn get_shard(
        self: Rc<Self>,
        params: chunk_server::GetShardParams,
        mut results: chunk_server::GetShardResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let _g = this.begin()?;
                let p = params.get()?;
                let id = p.get_id()?;
                check_id(id)?;
                let (offset, len) = (p.get_offset(), p.get_length());
                if len as usize > INLINE_DATA_MAX_BYTES {
                    return Err(fail(
                        RemoteKind::TooLarge,
                        format!("getShard returns at most {INLINE_DATA_MAX_BYTES} bytes; use getShardStream for {len}"),
                    ));
                }
                // The answer is written straight from the engine's read
                // buffer when this core owns the id (no copy in between).
                let mut out: Result<(), Failure> = Ok(());
                let mut fill = |data: &[u8], crc: u32| {
                    out = range(data.len(), offset, len).map(|(start, end)| {
                        let end = if len == 0 {
                            end.min(start + INLINE_DATA_MAX_BYTES)
                        } else {
                            end
                        };
                        let mut b = results.get();
                        b.set_data(&data[start..end]);
                        b.set_shard_length(data.len() as u32);
                        b.set_crc32c(crc);
                    });
                };
                if this.is_local(id) {
                    this.local.shard.get_with(id, &mut fill).await?;
                } else {
                    let (data, crc) = this.local.engine.get_checked(id).await?;
                    fill(&data, crc);
                }
                out
            }
            .await;
            crate::metrics::observe("get", started, r.as_ref().err().map(|f: &Failure| f.kind));
            if let Err(f) = r {
                write_failure(results.get().init_error(), &f);
            }
            Ok(())
        }
    }

    fn get_shard_stream(
        self: Rc<Self>,
        params: chunk_server::GetShardStreamParams,
        mut results: chunk_server::GetShardStreamResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let r = async {
                let _g = this.begin()?;
                let p = params.get()?;
                let id = p.get_id()?;
                check_id(id)?;
                let sink: byte_sink::Client = p.get_sink()?;
                let chunk = match p.get_chunk_bytes() as usize {
                    0 => STREAM_CHUNK_DEFAULT_BYTES,
                    n if n > STREAM_CHUNK_MAX_BYTES => {
                        return Err(fail(
                            RemoteKind::InvalidArgument,
                            format!("chunkBytes {n} is over {STREAM_CHUNK_MAX_BYTES}"),
                        ))
                    }
                    n => n,
                };
                let (data, crc) = this.get(id).await?;
                let (start, end) = range(data.len(), p.get_offset(), p.get_length())?;
                for part in data[start..end].chunks(chunk) {
                    let mut w = sink.write_request();
                    w.get().set_chunk(part);
                    w.send().await?;
                }
                sink.done_request().send().promise.await?;
                Ok((data.len(), crc, end - start))
            }
            .await;
            match r {
                Ok((total, crc, sent)) => {
                    let mut b = results.get();
                    b.set_shard_length(total as u32);
                    b.set_crc32c(crc);
                    b.set_sent(sent as u32);
                }
                Err(f) => write_failure(results.get().init_error(), &f),
            }
            Ok(())
        }
    }

    fn delete_shard(
        self: Rc<Self>,
        params: chunk_server::DeleteShardParams,
        mut results: chunk_server::DeleteShardResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let _g = this.begin()?;
                let id = params.get()?.get_id()?;
                check_id(id)?;
                if this.is_local(id) {
                    Ok(this.local.shard.delete(id).await?)
                } else {
                    Ok(this.local.engine.delete(id).await?)
                }
            }
            .await;
            crate::metrics::observe(
                "delete",
                started,
                r.as_ref().err().map(|f: &Failure| f.kind),
            );
            match r {
                Ok(existed) => results.get().set_existed(existed),
                Err(f) => write_failure(results.get().init_error(), &f),
            }
            Ok(())
        }
    }

    fn stat_shard(
        self: Rc<Self>,
        params: chunk_server::StatShardParams,
        mut results: chunk_server::StatShardResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let started = std::time::Instant::now();
            let r = async {
                let _g = this.begin()?;
                let id = params.get()?.get_id()?.to_vec();
                check_id(&id)?;
                let s = if this.is_local(&id) {
                    this.local.shard.stat(&id)?
                } else {
                    this.local.engine.stat(&id).await?
                };
                Ok((id, s))
            }
            .await;
            crate::metrics::observe("stat", started, r.as_ref().err().map(|f: &Failure| f.kind));
            match r {
                Ok((id, s)) => {
                    let mut i = results.get().init_info();
                    i.set_id(&id);
                    i.set_length(s.len);
                    i.set_crc32c(s.crc);
                }
                Err(f) => write_failure(results.get().init_error(), &f),
            }
            Ok(())
        }
    }

    fn inventory(
        self: Rc<Self>,
        params: chunk_server::InventoryParams,
        mut results: chunk_server::InventoryResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let r = async {
                let _g = this.begin()?;
                let p = params.get()?;
                let after = p.get_start_after()?;
                let limit = p.get_limit() as usize;
                if limit == 0 || limit > INVENTORY_PAGE_MAX {
                    return Err(fail(
                        RemoteKind::InvalidArgument,
                        format!(
                            "inventory limit {limit}; pages hold 1..={INVENTORY_PAGE_MAX} items"
                        ),
                    ));
                }
                if after.len() > ID_LEN_MAX_BYTES {
                    return Err(fail(
                        RemoteKind::InvalidArgument,
                        format!("startAfter is {} bytes, longer than any id", after.len()),
                    ));
                }
                let after = (!after.is_empty()).then_some(after);
                let mut items = this.local.engine.inventory(after, limit + 1).await?;
                let more = items.len() > limit;
                items.truncate(limit);
                Ok((items, more))
            }
            .await;
            match r {
                Ok((items, more)) => {
                    let mut b = results.get();
                    b.set_more(more);
                    let mut list = b.init_items(items.len() as u32);
                    for (k, it) in items.iter().enumerate() {
                        let mut e = list.reborrow().get(k as u32);
                        e.set_id(&it.id);
                        e.set_length(it.len);
                        e.set_crc32c(it.crc);
                    }
                }
                Err(f) => write_failure(results.get().init_error(), &f),
            }
            Ok(())
        }
    }

    fn scrub_status(
        self: Rc<Self>,
        _: chunk_server::ScrubStatusParams,
        mut results: chunk_server::ScrubStatusResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let s = this
                .local
                .engine
                .stats()
                .await
                .map_err(|e| capnp::Error::failed(e.to_string()))?
                .scrub;
            let node = &this.local.node;
            let mut b = results.get().init_status();
            b.set_passes(s.passes_done);
            b.set_running(s.running || node.scrub_running.load(Ordering::Relaxed));
            b.set_bytes_verified(s.pass_bytes_done);
            b.set_bytes_total(s.pass_bytes_total);
            b.set_bad_found(s.bad_found);
            b.set_last_pass_ended_unix_millis(
                node.last_scrub_end_unix_millis.load(Ordering::Relaxed),
            );
            Ok(())
        }
    }

    fn start_scrub(
        self: Rc<Self>,
        params: chunk_server::StartScrubParams,
        mut results: chunk_server::StartScrubResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let rate = match params.get() {
            Ok(p) => p.get_bytes_per_sec(),
            Err(e) => return std::future::ready(Err(e)),
        };
        if let Err(f) = self.begin() {
            write_failure(results.get().init_error(), &f);
            return std::future::ready(Ok(()));
        }
        let node = self.local.node.clone();
        if node.scrub_running.swap(true, Ordering::AcqRel) {
            results.get().set_started(false);
            return std::future::ready(Ok(()));
        }
        node.scrub_passes_started.fetch_add(1, Ordering::Relaxed);
        let engine = self.local.engine.clone();
        glommio::spawn_local(async move {
            let r = engine.scrub((rate > 0).then_some(rate)).await;
            if let Err(e) = r {
                tracing::error!(error = %e, "scrub pass failed");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            node.last_scrub_end_unix_millis
                .store(now, Ordering::Relaxed);
            node.scrub_running.store(false, Ordering::Release);
        })
        .detach();
        results.get().set_started(true);
        std::future::ready(Ok(()))
    }

    fn bad_shards(
        self: Rc<Self>,
        params: chunk_server::BadShardsParams,
        mut results: chunk_server::BadShardsResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let limit = (params.get()?.get_limit() as usize).clamp(1, BAD_SHARDS_PAGE_MAX);
            let rx = this.local.engine.bad_shards();
            let mut taken = Vec::new();
            while taken.len() < limit {
                match rx.try_recv() {
                    Ok(b) => taken.push(b),
                    Err(_) => break,
                }
            }
            let dropped = this
                .local
                .engine
                .stats()
                .await
                .map(|s| s.scrub.reports_dropped)
                .unwrap_or(0);
            let mut b = results.get();
            b.set_dropped(dropped);
            let mut list = b.init_reports(taken.len() as u32);
            for (k, t) in taken.iter().enumerate() {
                let mut e = list.reborrow().get(k as u32);
                e.set_id(&t.id);
                e.set_reason(
                    format!(
                        "{} (engine shard {}, segment {}, offset {})",
                        t.reason, t.shard, t.segment, t.offset
                    )
                    .as_str(),
                );
            }
            Ok(())
        }
    }

    fn node_info(
        self: Rc<Self>,
        _: chunk_server::NodeInfoParams,
        mut results: chunk_server::NodeInfoResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        let this = self;
        async move {
            let stats = this
                .local
                .engine
                .stats()
                .await
                .map_err(|e| capnp::Error::failed(e.to_string()))?;
            let node = &this.local.node;
            let (capacity, available) = fs_space(&node.data_dir).unwrap_or((0, 0));
            let mut i = results.get().init_info();
            i.set_node_id(node.node_id.as_str());
            i.set_version(env!("CARGO_PKG_VERSION"));
            i.set_capacity_bytes(capacity);
            i.set_available_bytes(available);
            i.set_live_bytes(stats.live_bytes);
            i.set_dead_bytes(stats.dead_bytes);
            i.set_shards(stats.live_shards);
            i.set_engine_shards(this.local.engine.shards() as u32);
            i.set_uptime_secs(node.started.elapsed().as_secs());
            i.set_writable(stats.poisoned_shards == 0 && !this.local.draining.get());
            i.set_io_errors(stats.io_errors);
            i.set_serving_shard(this.local.shard.index_no() as u32);
            i.set_local_requests(node.local_requests.load(Ordering::Relaxed));
            i.set_forwarded_requests(node.forwarded_requests.load(Ordering::Relaxed));
            Ok(())
        }
    }
}

/// Total and available bytes of the file system holding `dir`.
pub fn fs_space(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

impl From<capnp::Error> for Failure {
    fn from(e: capnp::Error) -> Self {
        fail(
            RemoteKind::InvalidArgument,
            format!("malformed request: {e}"),
        )
    }
}
